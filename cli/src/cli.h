#pragma once
// The `eventbus` command line: publish, tail, stats, dlq, task, bench. A library so tests run
// the commands in-process against a memory stream they hold, and against real servers through
// the binary (cli/src/main.cc).

#include <functional>
#include <iosfwd>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "eventbus/event_stream.h"
#include "eventbus/registry.h"

namespace eventbus::cli {

// Exit codes scripts can rely on (README, "The eventbus CLI").
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;  // the operation failed (or refused some events)
inline constexpr int kExitUsage = 2;    // bad arguments or configuration

struct CliContext {
  std::ostream* out = nullptr;
  std::ostream* err = nullptr;
  std::istream* in = nullptr;
  Environment env;
  // Opens the backend the environment names (EVENT_STREAM_TYPE, REDIS_URL, ...), as the
  // service does. Tests substitute a stream they hold (the memory backend lives in-process).
  std::function<absl::StatusOr<std::unique_ptr<EventStream>>(const Environment&)> open_stream;
  // When set, used instead of open_stream (not owned).
  EventStream* stream = nullptr;
  // Pacing of `dlq redrive --rate` and polling of `tail`: tests pass a virtual clock and a
  // sleep that advances it.
  Clock* clock = nullptr;
  std::function<void(absl::Duration)> sleep;
  // True once the user interrupted (SIGINT): `tail` stops following. Null: never.
  std::function<bool()> cancelled;
  // Draw a progress bar on `err` (a terminal): off in tests and when stderr is not a tty.
  bool progress = false;
};

// Runs one command line (argv[0] is the program name) and returns its exit code.
int RunCli(int argc, const char* const* argv, CliContext& context);

}  // namespace eventbus::cli
