#include "eventbus/executor/task.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "eventbus/event_stream.h"
#include "eventbus/executor/iso_duration.h"
#include "eventbus/status_macros.h"

namespace eventbus::executor {
namespace {

using nlohmann::json;

absl::Status Invalid(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("\"", field, "\": ", why));
}

absl::StatusOr<absl::Duration> DurationField(const json& value, absl::string_view field) {
  if (!value.is_string()) return Invalid(field, "must be an ISO 8601 duration string such as \"PT30S\"");
  auto parsed = ParseIsoDuration(value.get<std::string>());
  if (!parsed.ok()) return Invalid(field, parsed.status().message());
  return *parsed;
}

absl::Status ParseRetry(const json& value, RetryOverride& retry) {
  if (!value.is_object()) return Invalid("retry", "must be an object");
  for (const auto& [key, item] : value.items()) {
    if (key == "max_attempts") {
      if (!item.is_number_integer()) return Invalid("retry.max_attempts", "must be an integer");
      const int64_t n = item.get<int64_t>();
      if (n < 1 || n > 1000) return Invalid("retry.max_attempts", "must be in [1, 1000]");
      retry.max_attempts = static_cast<int>(n);
    } else if (key == "initial_backoff") {
      EVENTBUS_ASSIGN_OR_RETURN(retry.initial_backoff, DurationField(item, "retry.initial_backoff"));
    } else if (key == "max_backoff") {
      EVENTBUS_ASSIGN_OR_RETURN(retry.max_backoff, DurationField(item, "retry.max_backoff"));
    } else if (key == "multiplier") {
      if (!item.is_number()) return Invalid("retry.multiplier", "must be a number");
      retry.multiplier = item.get<double>();
    } else if (key == "jitter") {
      if (!item.is_number()) return Invalid("retry.jitter", "must be a number");
      retry.jitter = item.get<double>();
    } else {
      return Invalid(absl::StrCat("retry.", key),
                     "unknown field; valid: max_attempts, initial_backoff, max_backoff, "
                     "multiplier, jitter");
    }
  }
  return absl::OkStatus();
}

absl::Status CheckId(absl::string_view field, absl::string_view value);

absl::Status ParseEscalations(const json& value, std::vector<TierHistory>& out) {
  if (!value.is_array()) return Invalid("escalations", "must be an array of tier objects");
  if (value.size() > static_cast<size_t>(kMaxEscalations)) {
    return Invalid("escalations", absl::StrCat("has more than ", kMaxEscalations, " tiers"));
  }
  for (size_t i = 0; i < value.size(); ++i) {
    const std::string at = absl::StrCat("escalations[", i, "]");
    const json& item = value[i];
    if (!item.is_object()) return Invalid(at, "must be an object");
    TierHistory tier;
    for (const auto& [key, field] : item.items()) {
      const std::string name = absl::StrCat(at, ".", key);
      if (key == "stream") {
        if (!field.is_string()) return Invalid(name, "must be a string");
        tier.stream = field.get<std::string>();
        if (!ValidateName("stream", tier.stream).ok()) {
          return Invalid(name, "must be a stream name (1 to 200 bytes, no whitespace)");
        }
      } else if (key == "attempts") {
        if (!field.is_number_integer() || field.get<int64_t>() < 0 ||
            field.get<int64_t>() > 1'000'000) {
          return Invalid(name, "must be an integer in [0, 1000000]");
        }
        tier.attempts = field.get<int>();
      } else if (key == "error_kind" || key == "error" || key == "consumer") {
        if (!field.is_string()) return Invalid(name, "must be a string");
        (key == "error_kind" ? tier.error_kind : key == "error" ? tier.error : tier.consumer) =
            field.get<std::string>();
      } else if (key == "escalated_at") {
        if (!field.is_string()) return Invalid(name, "must be an RFC 3339 time string");
        auto time = ParseTimeAttribute(field.get<std::string>());
        if (!time.ok()) return Invalid(name, time.status().message());
        tier.escalated_at = *time;
      } else {
        return Invalid(name,
                       "unknown field; valid: stream, attempts, error_kind, error, consumer, "
                       "escalated_at");
      }
    }
    if (tier.stream.empty()) return Invalid(absl::StrCat(at, ".stream"), "is required");
    out.push_back(std::move(tier));
  }
  return absl::OkStatus();
}

absl::Status CheckId(absl::string_view field, absl::string_view value) {
  if (value.empty()) return Invalid(field, "must not be empty");
  if (value.size() > 200) return Invalid(field, "is longer than 200 bytes");
  for (char c : value) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return Invalid(field, "contains control characters");
    }
  }
  return absl::OkStatus();
}

// True when a value in `text` sits inside more than `max_depth` containers. A scan of the raw
// text rather than nlohmann's parser callback: with a callback, closing each object rescans
// every element of its parent, which makes a 10,000-item batch quadratic.
bool NestsDeeperThan(absl::string_view text, int max_depth) {
  int open = 0;
  bool in_string = false;
  bool escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    switch (c) {
      case ' ': case '\t': case '\r': case '\n': case ',': case ':':
        continue;
      case ']': case '}':
        if (open > 0) --open;
        continue;
      default:
        break;
    }
    // The start (or a byte) of a key or value, at the depth of the containers around it.
    if (open > max_depth) return true;
    if (c == '"') in_string = true;
    if (c == '[' || c == '{') ++open;
  }
  return false;
}

// Null when `text` is not JSON; sets `too_deep` when it nests deeper than `max_depth`.
json ParseJsonWithDepthLimit(absl::string_view text, int max_depth, bool& too_deep) {
  too_deep = NestsDeeperThan(text, max_depth);
  if (too_deep) return json::object();
  return json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
}

}  // namespace

RetryPolicy RetryOverride::ApplyTo(RetryPolicy policy) const {
  if (max_attempts) policy.max_attempts = *max_attempts;
  if (initial_backoff) policy.initial_backoff = *initial_backoff;
  if (max_backoff) policy.max_backoff = *max_backoff;
  if (multiplier) policy.multiplier = *multiplier;
  if (jitter) policy.jitter = *jitter;
  return policy;
}

const nlohmann::json& TaskRequest::Input() const {
  static const json* const kEmpty = new json(json::object());
  return input ? *input : *kEmpty;
}

absl::StatusOr<nlohmann::json> ParseUntrustedJson(absl::string_view text) {
  bool too_deep = false;
  json document = ParseJsonWithDepthLimit(text, kMaxJsonDepth, too_deep);
  if (document.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat("not valid JSON (", text.size(), " bytes)"));
  }
  if (too_deep) {
    return absl::InvalidArgumentError(
        absl::StrCat("JSON nested deeper than ", kMaxJsonDepth, " levels"));
  }
  return document;
}

absl::StatusOr<TaskRequest> ParseTaskRequest(absl::string_view json_text) {
  auto document = ParseUntrustedJson(json_text);
  if (!document.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("task request is ", document.status().message()));
  }
  return TaskRequestFromJson(*document);
}

absl::StatusOr<TaskRequest> TaskRequestFromJson(const nlohmann::json& document) {
  if (!document.is_object()) {
    return absl::InvalidArgumentError("task request must be a JSON object");
  }
  TaskRequest request;
  bool has_id = false;
  bool has_type = false;
  for (const auto& [key, value] : document.items()) {
    if (key == "id") {
      if (!value.is_string()) return Invalid("id", "must be a string");
      request.id = value.get<std::string>();
      EVENTBUS_RETURN_IF_ERROR(CheckId("id", request.id));
      has_id = true;
    } else if (key == "type") {
      if (!value.is_string()) return Invalid("type", "must be a string");
      request.type = value.get<std::string>();
      EVENTBUS_RETURN_IF_ERROR(CheckId("type", request.type));
      has_type = true;
    } else if (key == "input") {
      if (value.is_null()) continue;
      if (!value.is_object()) return Invalid("input", "must be a JSON object");
      request.input = std::make_shared<const json>(value);
    } else if (key == "timeout") {
      EVENTBUS_ASSIGN_OR_RETURN(absl::Duration timeout, DurationField(value, "timeout"));
      if (timeout <= absl::ZeroDuration()) return Invalid("timeout", "must be positive");
      request.timeout = timeout;
    } else if (key == "retry") {
      EVENTBUS_RETURN_IF_ERROR(ParseRetry(value, request.retry));
    } else if (key == "metadata") {
      if (!value.is_object()) return Invalid("metadata", "must be an object of strings");
      for (const auto& [name, label] : value.items()) {
        if (!label.is_string()) return Invalid(absl::StrCat("metadata.", name), "must be a string");
        request.metadata[name] = label.get<std::string>();
      }
    } else if (key == "unique_key") {
      if (!value.is_string()) return Invalid("unique_key", "must be a string");
      request.unique_key = value.get<std::string>();
      EVENTBUS_RETURN_IF_ERROR(CheckId("unique_key", request.unique_key));
    } else if (key == "unique_for") {
      EVENTBUS_ASSIGN_OR_RETURN(absl::Duration window, DurationField(value, "unique_for"));
      if (window < absl::ZeroDuration()) return Invalid("unique_for", "must not be negative");
      request.unique_for = window;
    } else if (key == "run_at") {
      if (!value.is_string()) {
        return Invalid("run_at", "must be an RFC 3339 time string such as \"2030-01-01T08:00:00Z\"");
      }
      auto at = ParseTimeAttribute(value.get<std::string>());
      if (!at.ok()) return Invalid("run_at", at.status().message());
      request.run_at = *at;
    } else if (key == "run_after") {
      EVENTBUS_ASSIGN_OR_RETURN(absl::Duration delay, DurationField(value, "run_after"));
      if (delay < absl::ZeroDuration()) return Invalid("run_after", "must not be negative");
      request.run_after = delay;
    } else if (key == "escalations") {
      EVENTBUS_RETURN_IF_ERROR(ParseEscalations(value, request.escalations));
    } else {
      return Invalid(key,
                     "unknown field; valid: id, type, input, timeout, retry, metadata, "
                     "unique_key, unique_for, run_at, run_after, escalations");
    }
  }
  if (!has_id) return absl::InvalidArgumentError("missing required field \"id\"");
  if (!has_type) return absl::InvalidArgumentError("missing required field \"type\"");
  if (request.unique_for && request.unique_key.empty()) {
    return Invalid("unique_for", "needs \"unique_key\"");
  }
  if (request.run_at && request.run_after) {
    return absl::InvalidArgumentError(
        "\"run_at\" and \"run_after\" exclude each other: give one of them");
  }
  if (!request.input) request.input = std::make_shared<const json>(json::object());
  return request;
}

std::optional<TaskRequest> SalvageTaskIdentity(absl::string_view json_text) {
  auto parsed = ParseUntrustedJson(json_text);
  if (!parsed.ok() || !parsed->is_object()) return std::nullopt;
  const json& document = *parsed;
  auto id = document.find("id");
  if (id == document.end() || !id->is_string() || !CheckId("id", id->get<std::string>()).ok()) {
    return std::nullopt;
  }
  TaskRequest request;
  request.id = id->get<std::string>();
  if (auto type = document.find("type");
      type != document.end() && type->is_string() && CheckId("type", type->get<std::string>()).ok()) {
    request.type = type->get<std::string>();
  }
  if (auto metadata = document.find("metadata"); metadata != document.end() && metadata->is_object()) {
    for (const auto& [name, label] : metadata->items()) {
      if (label.is_string()) request.metadata[name] = label.get<std::string>();
    }
  }
  request.input = std::make_shared<const json>(json::object());
  return request;
}

std::string TaskRequestToJson(const TaskRequest& request) {
  json document = {{"id", request.id}, {"type", request.type}, {"input", request.Input()}};
  if (request.timeout) document["timeout"] = FormatIsoDuration(*request.timeout);
  json retry = json::object();
  if (request.retry.max_attempts) retry["max_attempts"] = *request.retry.max_attempts;
  if (request.retry.initial_backoff) {
    retry["initial_backoff"] = FormatIsoDuration(*request.retry.initial_backoff);
  }
  if (request.retry.max_backoff) retry["max_backoff"] = FormatIsoDuration(*request.retry.max_backoff);
  if (request.retry.multiplier) retry["multiplier"] = *request.retry.multiplier;
  if (request.retry.jitter) retry["jitter"] = *request.retry.jitter;
  if (!retry.empty()) document["retry"] = std::move(retry);
  if (!request.metadata.empty()) document["metadata"] = request.metadata;
  if (!request.unique_key.empty()) document["unique_key"] = request.unique_key;
  if (request.unique_for) document["unique_for"] = FormatIsoDuration(*request.unique_for);
  if (!request.escalations.empty()) {
    json tiers = json::array();
    for (const TierHistory& tier : request.escalations) {
      json entry = {{"stream", tier.stream},
                    {"attempts", tier.attempts},
                    {"error_kind", tier.error_kind},
                    {"error", tier.error},
                    {"consumer", tier.consumer}};
      if (tier.escalated_at != absl::InfinitePast()) {
        entry["escalated_at"] = FormatTimeAttribute(tier.escalated_at);
      }
      tiers.push_back(std::move(entry));
    }
    document["escalations"] = std::move(tiers);
  }
  // Outputs carry text from the outside (HTTP bodies) that may not be UTF-8: never throw on it.
  return document.dump(-1, ' ', false, json::error_handler_t::replace);
}

Event MakeTaskRequestEvent(const TaskRequest& request, absl::string_view source) {
  Event event = MakeEvent(kTaskRequestedType, source, TaskRequestToJson(request));
  event.set_subject(request.id);
  event.set_key(request.id);
  event.set_data_content_type("application/json");
  return event;
}

absl::string_view TaskStatusName(TaskStatus status) {
  return status == TaskStatus::kSucceeded ? "succeeded" : "failed";
}

std::string TaskResultToJson(const TaskResult& result) {
  // Written member by member, in the order a json object (a std::map) dumps them, so the text
  // is what dumping one document would give: building that document deep-copied the output
  // (every result on the executor's hot path paid for it). Outputs carry text from the outside
  // (HTTP bodies) that may not be UTF-8: never throw on it.
  auto dump = [](const json& value) {
    return value.dump(-1, ' ', false, json::error_handler_t::replace);
  };
  // Ids, types and times are plain ASCII: quoted as they are (a dump allocates its writer).
  auto text = [&dump](const std::string& value) {
    const bool plain = std::all_of(value.begin(), value.end(), [](char c) {
      return c >= 0x20 && c < 0x7f && c != '"' && c != '\\';
    });
    return plain ? absl::StrCat("\"", value, "\"") : dump(json(value));
  };
  std::string out = "{";
  auto member = [&out](absl::string_view name, const std::string& value) {
    if (out.size() > 1) out.push_back(',');
    absl::StrAppend(&out, "\"", name, "\":", value);
  };
  member("attempts", absl::StrCat(result.attempts));
  member("completed_at", text(FormatTimeAttribute(result.completed_at)));
  member("deliveries", absl::StrCat(result.deliveries));
  member("duration_ms", dump(json(absl::ToDoubleMilliseconds(result.duration))));
  member("error", result.status == TaskStatus::kFailed
                      ? dump(json{{"kind", result.error_kind}, {"message", result.error}})
                      : std::string("null"));
  member("id", text(result.task_id));
  if (!result.metadata.empty()) member("metadata", dump(json(result.metadata)));
  member("output", result.output ? dump(*result.output) : std::string("null"));
  member("request_event_id", text(result.request_event_id));
  member("status", text(std::string(TaskStatusName(result.status))));
  member("type", text(result.type));
  out.push_back('}');
  return out;
}

absl::StatusOr<TaskResult> ParseTaskResult(absl::string_view json_text) {
  // Results come from the wire too: copying and serializing JSON recurse once per level. The
  // output a handler built from a kMaxJsonDepth-deep body nests a few levels deeper, hence 2x.
  bool too_deep = false;
  json document = ParseJsonWithDepthLimit(json_text, 2 * kMaxJsonDepth, too_deep);
  if (document.is_discarded() || !document.is_object()) {
    return absl::InvalidArgumentError("task result is not a JSON object");
  }
  if (too_deep) {
    return absl::InvalidArgumentError(
        absl::StrCat("task result JSON is nested deeper than ", 2 * kMaxJsonDepth, " levels"));
  }
  TaskResult result;
  try {
    result.task_id = document.at("id").get<std::string>();
    result.type = document.at("type").get<std::string>();
    const std::string status = document.at("status").get<std::string>();
    if (status == "succeeded") {
      result.status = TaskStatus::kSucceeded;
    } else if (status == "failed") {
      result.status = TaskStatus::kFailed;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown task status \"", status, "\""));
    }
    if (!document.at("output").is_null()) {
      result.output = std::make_shared<const json>(document.at("output"));
    }
    // get<int>() of 1e300 is undefined behaviour, and an infinite duration would be written
    // back as "duration_ms": null, which no reader accepts.
    const json& attempts = document.at("attempts");
    if (!attempts.is_number_integer() || attempts.get<int64_t>() < 0 ||
        attempts.get<int64_t>() > std::numeric_limits<int>::max()) {
      return absl::InvalidArgumentError("task result: \"attempts\" must be a non-negative int");
    }
    result.attempts = attempts.get<int>();
    // Absent in results of executors before it existed.
    if (auto it = document.find("deliveries"); it != document.end()) {
      if (!it->is_number_integer() || it->get<int64_t>() < 0 ||
          it->get<int64_t>() > std::numeric_limits<int>::max()) {
        return absl::InvalidArgumentError("task result: \"deliveries\" must be a non-negative int");
      }
      result.deliveries = it->get<int>();
    }
    result.duration = absl::Microseconds(document.at("duration_ms").get<double>() * 1000);
    if (result.duration == absl::InfiniteDuration() || result.duration == -absl::InfiniteDuration()) {
      return absl::InvalidArgumentError("task result: \"duration_ms\" is out of range");
    }
    result.request_event_id = document.value("request_event_id", "");
    std::string completed_at = document.value("completed_at", "");
    std::string error;
    if (!completed_at.empty() &&
        !absl::ParseTime(absl::RFC3339_full, completed_at, &result.completed_at, &error)) {
      return absl::InvalidArgumentError(absl::StrCat("completed_at: ", error));
    }
    if (const json& e = document.at("error"); e.is_object()) {
      result.error_kind = e.value("kind", "");
      result.error = e.value("message", "");
    }
    if (document.contains("metadata")) {
      result.metadata = document.at("metadata").get<std::map<std::string, std::string>>();
    }
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("task result: ", e.what()));
  }
  return result;
}

Event MakeTaskResultEvent(const TaskResult& result, absl::string_view source) {
  Event event = MakeEvent(kTaskCompletedType, source, TaskResultToJson(result));
  event.set_subject(result.task_id);
  event.set_key(result.task_id);
  event.set_data_content_type("application/json");
  return event;
}

}  // namespace eventbus::executor
