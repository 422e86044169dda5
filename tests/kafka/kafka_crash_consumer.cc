// A consumer process for kafka_consumer_test's crash case: joins `group` on `topic`, fetches one
// delivery, prints "delivered <id> <count>" and then waits to be killed (SIGKILL: no Close, no
// give-back, no final commit: a crash, as far as the group can tell).
//
//   kafka_crash_consumer BROKERS TOPIC GROUP
#include <unistd.h>

#include <cstdio>
#include <string>

#include "absl/time/clock.h"
#include "eventbus/kafka/kafka_event_stream.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s BROKERS TOPIC GROUP\n", argv[0]);
    return 2;
  }
  eventbus::kafka::KafkaOptions options;
  options.brokers = argv[1];
  options.partitions = 3;
  options.properties["log_level"] = "3";
  auto stream = eventbus::kafka::NewKafkaEventStream(options);
  if (!stream.ok()) {
    std::fprintf(stderr, "stream: %s\n", stream.status().ToString().c_str());
    return 1;
  }
  eventbus::SubscribeOptions sub_options;
  sub_options.stream = argv[2];
  sub_options.group = argv[3];
  sub_options.consumer = "crashing";
  sub_options.start_from_oldest = true;
  auto sub = (*stream)->Subscribe(sub_options);
  if (!sub.ok()) {
    std::fprintf(stderr, "subscribe: %s\n", sub.status().ToString().c_str());
    return 1;
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (absl::Now() < deadline) {
    auto batch = (*sub)->Fetch(1, absl::Milliseconds(500));
    if (!batch.ok()) {
      std::fprintf(stderr, "fetch: %s\n", batch.status().ToString().c_str());
      return 1;
    }
    if (batch->empty()) continue;
    std::printf("delivered %s %d\n", (*batch)[0].id.c_str(), (*batch)[0].delivery_count);
    std::fflush(stdout);
    // Held unsettled until the test kills this process (bounded, should it never).
    absl::SleepFor(absl::Seconds(120));
    _exit(3);
  }
  std::fprintf(stderr, "nothing delivered within 60 s\n");
  return 1;
}
