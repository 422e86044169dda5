#pragma once
// The one place the library's diagnostics go: its own (a topic created, a reconnect, a retry)
// and its client libraries' (librdkafka's log callback, hiredis and nats.c errors). Nothing in
// the libraries writes to stderr by itself; until a sink is set, diagnostics are dropped.
//
//   eventbus::SetLogSink(eventbus::StderrLogSink(), eventbus::LogLevel::kInfo);
//
// or forward to your own logger (the service forwards to spdlog).

#include <functional>

#include "absl/strings/string_view.h"

#pragma GCC visibility push(default)

namespace eventbus {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// "debug", "info", "warning", "error".
absl::string_view LogLevelName(LogLevel level);

struct LogRecord {
  LogLevel level;
  // Who speaks: "core", "memory", "redis", "kafka", "nats", or a client library ("librdkafka",
  // "nats.c"). Valid only during the call.
  absl::string_view component;
  absl::string_view message;  // one line, no trailing newline; valid only during the call
};

// Called from any thread the library or a client library runs (librdkafka's internal threads
// included), possibly concurrently: it must be thread-safe, must not block for long, and must
// not call back into eventbus.
using LogSink = std::function<void(const LogRecord&)>;

// Replaces the process-wide sink; records below `min_level` are dropped before they are built.
// An empty sink drops everything (the default). Thread-safe; a record being delivered while the
// sink is replaced may still reach the previous sink.
void SetLogSink(LogSink sink, LogLevel min_level = LogLevel::kInfo);

// A sink that writes "eventbus <level> <component>: <message>" lines to stderr (for programs
// that want exactly that; the library never installs it by itself).
LogSink StderrLogSink();

// True when a record of `level` would reach a sink: guard expensive messages with it.
bool LogEnabled(LogLevel level);

// Delivers one record to the sink (when one is set and `level` passes its minimum).
void Log(LogLevel level, absl::string_view component, absl::string_view message);

}  // namespace eventbus

#pragma GCC visibility pop
