#include "json_log.h"

#include <string_view>

#include <nlohmann/json.hpp>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "eventbus/log.h"

namespace eventbus::executor::service {
namespace {

spdlog::level::level_enum ToSpdlog(LogLevel level) {
  switch (level) {
    case LogLevel::kTrace: return spdlog::level::trace;
    case LogLevel::kDebug: return spdlog::level::debug;
    case LogLevel::kInfo: return spdlog::level::info;
    case LogLevel::kWarn: return spdlog::level::warn;
    case LogLevel::kError: return spdlog::level::err;
    case LogLevel::kOff: return spdlog::level::off;
  }
  return spdlog::level::info;
}

LogLevel FromRecord(TaskLogRecord::Level level) {
  switch (level) {
    case TaskLogRecord::Level::kDebug: return LogLevel::kDebug;
    case TaskLogRecord::Level::kInfo: return LogLevel::kInfo;
    case TaskLogRecord::Level::kWarning: return LogLevel::kWarn;
    case TaskLogRecord::Level::kError: return LogLevel::kError;
  }
  return LogLevel::kInfo;
}

}  // namespace

JsonLog::JsonLog(LogLevel level)
    : logger_(std::make_shared<spdlog::logger>(
          "eventbus-executor", std::make_shared<spdlog::sinks::stderr_sink_mt>())) {
  // The message itself completes the JSON object the pattern opens.
  logger_->set_pattern(R"({"ts":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l",%v)",
                       spdlog::pattern_time_type::utc);
  logger_->set_level(ToSpdlog(level));
  logger_->flush_on(spdlog::level::trace);
}

JsonLog::~JsonLog() {
  if (library_sink_) eventbus::SetLogSink(nullptr);
}

void JsonLog::InstallAsLibrarySink() {
  const spdlog::level::level_enum level = logger_->level();
  if (level == spdlog::level::off) return;
  const eventbus::LogLevel min = level <= spdlog::level::debug ? eventbus::LogLevel::kDebug
                                 : level == spdlog::level::info ? eventbus::LogLevel::kInfo
                                 : level == spdlog::level::warn ? eventbus::LogLevel::kWarning
                                                                : eventbus::LogLevel::kError;
  eventbus::SetLogSink(
      [this](const eventbus::LogRecord& record) {
        const LogLevel level = record.level == eventbus::LogLevel::kDebug     ? LogLevel::kDebug
                               : record.level == eventbus::LogLevel::kInfo    ? LogLevel::kInfo
                               : record.level == eventbus::LogLevel::kWarning ? LogLevel::kWarn
                                                                              : LogLevel::kError;
        Write(level, record.message, {{"component", std::string(record.component)}});
      },
      min);
  library_sink_ = true;
}

bool JsonLog::Enabled(LogLevel level) const { return logger_->should_log(ToSpdlog(level)); }

void JsonLog::Write(LogLevel level, absl::string_view message, const nlohmann::json& fields) {
  const auto spd_level = ToSpdlog(level);
  if (!logger_->should_log(spd_level)) return;
  nlohmann::json line = nlohmann::json::object();
  line["msg"] = std::string(message);
  if (fields.is_object()) {
    for (const auto& [key, value] : fields.items()) line[key] = value;
  }
  std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  // Drop the leading '{': the pattern already opened the object.
  logger_->log(spd_level, "{}", std::string_view(text).substr(1));
}

void JsonLog::Write(LogLevel level, absl::string_view message) {
  Write(level, message, nlohmann::json::object());
}

void JsonLog::WriteTask(const TaskLogRecord& record) {
  nlohmann::json fields = nlohmann::json::object();
  if (!record.task_id.empty()) fields["task_id"] = record.task_id;
  if (!record.task_type.empty()) fields["task_type"] = record.task_type;
  if (record.attempt > 0) fields["attempt"] = record.attempt;
  if (record.delivery_count > 0) fields["deliveries"] = record.delivery_count;
  if (!record.delivery_id.empty()) fields["delivery_id"] = record.delivery_id;
  if (!record.error.empty()) fields["error"] = record.error;
  Write(FromRecord(record.level), record.message, fields);
}

}  // namespace eventbus::executor::service
