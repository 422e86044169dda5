#include "eventbus/log.h"

#include <atomic>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace eventbus {
namespace {

// Above every level: nothing passes while no sink is set.
constexpr int kOff = static_cast<int>(LogLevel::kError) + 1;

struct SinkState {
  std::mutex mu;
  std::shared_ptr<const LogSink> sink;  // guarded by mu
  // Read without the lock on every Log call, so a disabled level costs one atomic load.
  std::atomic<int> min_level{kOff};
};

SinkState& State() {
  static SinkState* state = new SinkState();  // never destroyed: logging during exit is safe
  return *state;
}

}  // namespace

absl::string_view LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarning:
      return "warning";
    case LogLevel::kError:
      return "error";
  }
  return "unknown";
}

void SetLogSink(LogSink sink, LogLevel min_level) {
  SinkState& state = State();
  std::lock_guard lock(state.mu);
  if (sink) {
    state.sink = std::make_shared<const LogSink>(std::move(sink));
    state.min_level.store(static_cast<int>(min_level), std::memory_order_release);
  } else {
    state.sink.reset();
    state.min_level.store(kOff, std::memory_order_release);
  }
}

LogSink StderrLogSink() {
  return [](const LogRecord& record) {
    // One write per line, so concurrent records do not interleave within a line.
    std::string line = absl::StrCat("eventbus ", LogLevelName(record.level), " ",
                                    record.component, ": ", record.message, "\n");
    std::fwrite(line.data(), 1, line.size(), stderr);
  };
}

bool LogEnabled(LogLevel level) {
  return static_cast<int>(level) >= State().min_level.load(std::memory_order_acquire);
}

void Log(LogLevel level, absl::string_view component, absl::string_view message) {
  if (!LogEnabled(level)) return;
  std::shared_ptr<const LogSink> sink;
  {
    SinkState& state = State();
    std::lock_guard lock(state.mu);
    sink = state.sink;
  }
  if (sink == nullptr) return;
  // Client libraries end their lines with a newline; a record is one line without it.
  while (!message.empty() && (message.back() == '\n' || message.back() == '\r')) {
    message.remove_suffix(1);
  }
  (*sink)(LogRecord{level, component, message});
}

}  // namespace eventbus
