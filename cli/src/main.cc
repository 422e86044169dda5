// eventbus: the operator's command line (cli.h). Links every backend the package was built with
// and picks one from the environment, as eventbus-executor does.

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <iostream>

#include "absl/time/clock.h"
#include "cli.h"
#include "eventbus/clock.h"
#include "eventbus/builtin_backends.h"

namespace {

std::atomic<bool> interrupted{false};

}  // namespace

int main(int argc, char** argv) {
  if (absl::Status status = eventbus::RegisterBuiltinBackends(); !status.ok()) {
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
