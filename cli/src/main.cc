// eventbus: the operator's command line (cli.h). Links every backend the package was built with
// and picks one from the environment, as eventbus-executor does.

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <iostream>

#include "absl/time/clock.h"
#include "cli.h"
#include "eventbus/clock.h"
#include "eventbus/memory/memory_event_stream.h"
#ifdef EVENTBUS_CLI_WITH_REDIS
#include "eventbus/redis/redis_event_stream.h"
#endif
#ifdef EVENTBUS_CLI_WITH_KAFKA
#include "eventbus/kafka/kafka_event_stream.h"
#endif
#ifdef EVENTBUS_CLI_WITH_NATS
#include "eventbus/nats/nats_event_stream.h"
#endif

namespace {

std::atomic<bool> interrupted{false};

absl::Status RegisterBackends() {
  absl::Status status = eventbus::memory::RegisterMemoryBackend();
#ifdef EVENTBUS_CLI_WITH_REDIS
  if (status.ok()) status = eventbus::redis::RegisterRedisBackend();
#endif
#ifdef EVENTBUS_CLI_WITH_KAFKA
  if (status.ok()) status = eventbus::kafka::RegisterKafkaBackend();
#endif
#ifdef EVENTBUS_CLI_WITH_NATS
  if (status.ok()) status = eventbus::nats::RegisterNatsBackend();
#endif
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  if (absl::Status status = RegisterBackends(); !status.ok()) {
    std::cerr << "eventbus: " << status.message() << "\n";
    return eventbus::cli::kExitFailure;
  }
  struct sigaction action = {};
  action.sa_handler = [](int) { interrupted = true; };
  sigaction(SIGINT, &action, nullptr);

  eventbus::cli::CliContext context;
  context.out = &std::cout;
  context.err = &std::cerr;
  context.in = &std::cin;
  context.env = eventbus::ProcessEnvironment();
  context.open_stream = [](const eventbus::Environment& env) {
    return eventbus::BackendRegistry::Global().CreateFromEnvironment(env);
  };
  context.clock = eventbus::Clock::Real();
  context.sleep = [](absl::Duration d) { absl::SleepFor(d); };
  context.cancelled = [] { return interrupted.load(); };
  context.progress = isatty(STDERR_FILENO) == 1;
  return eventbus::cli::RunCli(argc, argv, context);
}
