// The shared conformance suite against a real Kafka broker.

#include "absl/strings/str_cat.h"
#include "eventbus/clock.h"
#include "eventbus/conformance/conformance.h"
#include "kafka_client.h"
#include "kafka_test_env.h"
#include "wire_format.h"

namespace eventbus::kafka::testing {
namespace {

[[maybe_unused]] ::testing::Environment* const kEnvironment =
    ::testing::AddGlobalTestEnvironment(new KafkaBrokerEnvironment);

absl::Status RestartBroker() {
  harness::KafkaBroker& broker = KafkaBrokerEnvironment::broker();
  broker.Kill();
  absl::Status restarted = broker.Restart(absl::Seconds(60));
  if (!restarted.ok()) {
    return absl::Status(restarted.code(),
                        absl::StrCat(restarted.message(), "\n", broker.LogTail()));
  }
  return restarted;
}

// librdkafka's producer queue holds 50 messages: Publish fails with ResourceExhausted beyond.
KafkaOptions BoundedOptions() {
  KafkaOptions options = TestOptions();
  options.properties["queue.buffering.max.messages"] = "50";
  return options;
}

// The record the backend's encoder writes, produced by a client of its own, as kcat would.
absl::Status ProduceRaw(const std::string& topic, const Event& event) {
  auto client = KafkaClient::Create(TestOptions(), Clock::Real());
  if (!client.ok()) return client.status();
  if (absl::Status s = (*client)->EnsureTopic(topic); !s.ok()) return s;
  auto record = EncodeEvent(event);
  if (!record.ok()) return record.status();
  return (*client)->ProduceAndWait(topic, *record).status();
}

EVENTBUS_INSTANTIATE_CONFORMANCE(
    Kafka, conformance::BackendUnderTest{
               .name = "kafka",
               .make_stream = [] { return NewTestStream(TestOptions()); },
               .let_time_pass = nullptr,  // real broker, real time
               // Group joins and rebalances take Kafka a few hundred milliseconds each.
               .fetch_wait = absl::Seconds(3),
               .quiet_wait = absl::Milliseconds(1500),
               .nack_delay = absl::Seconds(2),
               .reclaim_idle = absl::Milliseconds(500),
               .events_per_publisher = 250,
               // Local nack timers, checked at every poll.
               .nack_tolerance = absl::Seconds(1),
               // A broker restart costs ~10 s: only this instance gives the hook. No crash
               // hook (an abandoned consumer keeps heartbeating from librdkafka's thread) and no
               // cut_connection (clients connect to the advertised listener, past any proxy).
               .restart_server = RestartBroker,
               .make_bounded_stream = [] { return NewTestStream(BoundedOptions()); },
               .write_raw = ProduceRaw,
           });

// The per-key ordering mode (at most one event per key in flight) must pass the same suite,
// and with it the OrderIsKeptPerKey case it declares.
KafkaOptions OrderedOptions() {
  KafkaOptions options = TestOptions();
  options.ordered_per_key = true;
  return options;
}

EVENTBUS_INSTANTIATE_CONFORMANCE(
    KafkaOrdered, conformance::BackendUnderTest{
                      .name = "kafka_ordered_per_key",
                      .make_stream = [] { return NewTestStream(OrderedOptions()); },
                      .let_time_pass = nullptr,
                      .fetch_wait = absl::Seconds(3),
                      .quiet_wait = absl::Milliseconds(1500),
                      .nack_delay = absl::Seconds(2),
                      .reclaim_idle = absl::Milliseconds(500),
                      .events_per_publisher = 250,
                      .write_raw = ProduceRaw,
                  });

}  // namespace
}  // namespace eventbus::kafka::testing
