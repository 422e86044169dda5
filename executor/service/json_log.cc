#include "json_log.h"

#include <string_view>

#include <nlohmann/json.hpp>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

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

JsonLog::~JsonLog() = default;

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

std::string RedactUrl(absl::string_view url) {
  std::vector<std::string> parts;
  for (absl::string_view part : absl::StrSplit(url, ',')) {
    std::string out(part);
    const size_t scheme = out.find("://");
    const size_t authority = scheme == std::string::npos ? 0 : scheme + 3;
    const size_t at = out.find('@', authority);
    const size_t slash = out.find('/', authority);
    if (at != std::string::npos && (slash == std::string::npos || at < slash)) {
      const size_t colon = out.find(':', authority);
      if (colon != std::string::npos && colon < at) {
        out.replace(colon + 1, at - colon - 1, "***");
      } else {
        // A lone userinfo may itself be a token (redis://secret@host).
        out.replace(authority, at - authority, "***");
      }
    }
    parts.push_back(std::move(out));
  }
  return absl::StrJoin(parts, ",");
}

}  // namespace eventbus::executor::service
