#pragma once
// Structured logs: one JSON object per line on stderr, through spdlog.

#include <memory>
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "absl/strings/string_view.h"
#include "config.h"
#include "eventbus/executor/executor.h"

namespace spdlog {
class logger;
}  // namespace spdlog

namespace eventbus::executor::service {

// Thread-safe.
class JsonLog {
 public:
  explicit JsonLog(LogLevel level);
  ~JsonLog();

  // {"ts": ..., "level": ..., "msg": message, <fields>}. `fields` must be a JSON object.
  void Write(LogLevel level, absl::string_view message, const nlohmann::json& fields);
  void Write(LogLevel level, absl::string_view message);

  // Whether a line at `level` would be written (skip building fields on hot paths).
  bool Enabled(LogLevel level) const;

  // Renders the executor's per-task records (task_id, type, attempt, delivery_id, error).
  void WriteTask(const TaskLogRecord& record);

  // Makes this the eventbus library's log sink (eventbus/log.h: the backends' and their client
  // libraries' diagnostics), at this log's level, with a "component" field. Undone by the
  // destructor.
  void InstallAsLibrarySink();

 private:
  std::shared_ptr<spdlog::logger> logger_;
  bool library_sink_ = false;
};

}  // namespace eventbus::executor::service
