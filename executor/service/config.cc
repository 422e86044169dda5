#include "config.h"

#include <unistd.h>

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#ifdef EVENTBUS_EXECUTOR_HAS_COMPONENTS
#include "eventbus/executor/destination_policy.h"
#endif
#include "eventbus/options.h"
#include "eventbus/status_macros.h"

namespace eventbus::executor::service {
namespace {

// The value of `name`, or null when it is unset. Set but empty is an error: it is usually a
// template or a secret store that failed to fill the variable in, not a wish for the default.
absl::StatusOr<const std::string*> Find(const Environment& env, absl::string_view name,
                                        absl::string_view expected = "a value") {
  auto it = env.find(name);
  if (it == env.end()) return nullptr;
  EVENTBUS_RETURN_IF_ERROR(RejectEmptySetting(name, it->second, expected));
  return &it->second;
}

bool IsSet(const Environment& env, absl::string_view name) { return env.contains(name); }

absl::Status ReadInt(const Environment& env, absl::string_view name, int min, int max, int* out) {
  auto it = env.find(name);
  if (it == env.end()) return absl::OkStatus();
  EVENTBUS_ASSIGN_OR_RETURN(const int64_t value, ParseIntSetting(name, it->second, min, max));
  *out = static_cast<int>(value);
  return absl::OkStatus();
}

absl::Status ReadDuration(const Environment& env, absl::string_view name, absl::Duration min,
                          absl::Duration max, absl::Duration* out) {
  auto it = env.find(name);
  if (it == env.end()) return absl::OkStatus();
  EVENTBUS_ASSIGN_OR_RETURN(*out, ParseDurationSetting(name, it->second, min, max));
  return absl::OkStatus();
}

absl::Status ReadBool(const Environment& env, absl::string_view name, bool* out) {
  auto it = env.find(name);
  if (it == env.end()) return absl::OkStatus();
  EVENTBUS_ASSIGN_OR_RETURN(*out, ParseBoolSetting(name, it->second));
  return absl::OkStatus();
}

absl::Status ReadName(const Environment& env, absl::string_view name, std::string* out) {
  constexpr absl::string_view kExpected = "a name of 1 to 200 bytes without whitespace";
  EVENTBUS_ASSIGN_OR_RETURN(const std::string* value, Find(env, name, kExpected));
  if (value == nullptr) return absl::OkStatus();
  if (absl::Status s = ValidateName(name, *value); !s.ok()) {
    return InvalidSetting(name, *value, kExpected);
  }
  *out = *value;
  return absl::OkStatus();
}

absl::Status ReadHttpAddr(const Environment& env, ServiceConfig& config) {
  constexpr absl::string_view kName = "EXECUTOR_HTTP_ADDR";
  constexpr absl::string_view kExpected =
      "host:port, e.g. 0.0.0.0:8080 or 127.0.0.1:9000 (port 0-65535)";
  EVENTBUS_ASSIGN_OR_RETURN(const std::string* value, Find(env, kName, kExpected));
  if (value == nullptr) return absl::OkStatus();
  const size_t colon = value->rfind(':');
  if (colon == std::string::npos || colon == 0) return InvalidSetting(kName, *value, kExpected);
  absl::StatusOr<int64_t> port =
      ParseIntSetting(kName, absl::string_view(*value).substr(colon + 1), 0, 65535);
  if (!port.ok()) return InvalidSetting(kName, *value, kExpected);
  std::string host = value->substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  config.http_host = host;
  config.http_port = static_cast<int>(*port);
  return absl::OkStatus();
}

absl::Status ReadLogLevel(const Environment& env, ServiceConfig& config) {
  auto it = env.find("LOG_LEVEL");
  if (it == env.end()) return absl::OkStatus();
  EVENTBUS_ASSIGN_OR_RETURN(
      config.log_level,
      ParseEnumSetting<LogLevel>("LOG_LEVEL", it->second,
                                 {{"trace", LogLevel::kTrace},
                                  {"debug", LogLevel::kDebug},
                                  {"info", LogLevel::kInfo},
                                  {"warn", LogLevel::kWarn},
                                  {"warning", LogLevel::kWarn},
                                  {"error", LogLevel::kError},
                                  {"off", LogLevel::kOff}}));
  return absl::OkStatus();
}

// EXECUTOR_CALL_ALLOW / EXECUTOR_CALL_DENY / EXECUTOR_CALL_DENY_PRIVATE.
absl::Status ReadCallPolicy(const Environment& env, ServiceConfig& config) {
  EVENTBUS_RETURN_IF_ERROR(ReadBool(env, "EXECUTOR_CALL_DENY_PRIVATE", &config.call_deny_private));
  for (auto [name, list] : {std::pair{"EXECUTOR_CALL_ALLOW", &config.call_allow},
                            std::pair{"EXECUTOR_CALL_DENY", &config.call_deny}}) {
    auto it = env.find(name);
    if (it == env.end()) continue;
    const std::string* value = &it->second;
#ifdef EVENTBUS_EXECUTOR_HAS_COMPONENTS
    EVENTBUS_ASSIGN_OR_RETURN(*list, ParseListSetting(name, *value));
    DestinationPolicyOptions options;
    options.allow = *list;
    if (absl::Status s = DestinationPolicy::Create(options).status(); !s.ok()) {
      // The policy's message says "allow entry 'x' is neither ...": keep the entry and why.
      return absl::InvalidArgumentError(absl::StrCat(name, "=\"", *value, "\" is invalid: ",
                                                     absl::StripPrefix(s.message(), "allow ")));
    }
#else
    return absl::InvalidArgumentError(absl::StrCat(
        name, " is set, but this executor was built without the `call` task type"));
#endif
  }
  return absl::OkStatus();
}

// EXECUTOR_STORE, EXECUTOR_STORE_URL and the store's retention and polling settings.
absl::Status ReadStore(const Environment& env, ServiceConfig& config) {
  if (config.stream_type == "memory") {
    config.store = "memory";
  } else if (config.stream_type == "redis") {
    config.store = "redis";
  }
  if (auto it = env.find("EXECUTOR_STORE"); it != env.end()) {
    EVENTBUS_ASSIGN_OR_RETURN(
        config.store,
        ParseEnumSetting<std::string>("EXECUTOR_STORE", it->second,
                                      {{"memory", "memory"},
                                       {"redis", "redis"},
                                       {"postgres", "postgres"},
                                       {"none", "none"}}));
  }
  EVENTBUS_ASSIGN_OR_RETURN(const std::string* url,
                            Find(env, "EXECUTOR_STORE_URL", "a store URL"));
  if (url != nullptr) {
    if (config.store == "none" || config.store == "memory") {
      return absl::InvalidArgumentError(absl::StrCat(
          "EXECUTOR_STORE_URL is set, but EXECUTOR_STORE is ", config.store,
          ", which takes no URL (set EXECUTOR_STORE=redis or postgres)"));
    }
    config.store_url = *url;
  } else if (config.store == "postgres") {
    return absl::InvalidArgumentError(
        "EXECUTOR_STORE=postgres needs EXECUTOR_STORE_URL (postgresql://user@host:port/db)");
  }
  if (config.store == "redis" && config.store_url.empty() && config.stream_type != "redis") {
    return absl::InvalidArgumentError(absl::StrCat(
        "EXECUTOR_STORE=redis needs EXECUTOR_STORE_URL (redis://host:port/db) when "
        "EVENT_STREAM_TYPE is ", config.stream_type, " (with redis it defaults to REDIS_URL)"));
  }
  ExecutorOptions& ex = config.executor;
  EVENTBUS_RETURN_IF_ERROR(ReadDuration(env, "EXECUTOR_RETENTION_SUCCEEDED", absl::Seconds(1),
                                        absl::Hours(24 * 3650), &ex.retention_succeeded));
  EVENTBUS_RETURN_IF_ERROR(ReadDuration(env, "EXECUTOR_RETENTION_FAILED", absl::Seconds(1),
                                        absl::Hours(24 * 3650), &ex.retention_failed));
  EVENTBUS_RETURN_IF_ERROR(ReadDuration(env, "EXECUTOR_RETENTION_CANCELLED", absl::Seconds(1),
                                        absl::Hours(24 * 3650), &ex.retention_cancelled));
  EVENTBUS_RETURN_IF_ERROR(ReadDuration(env, "EXECUTOR_CANCEL_POLL_INTERVAL",
                                        absl::Milliseconds(10), absl::Minutes(10),
                                        &ex.cancel_poll_interval));
  EVENTBUS_RETURN_IF_ERROR(ReadDuration(env, "EXECUTOR_SCHEDULER_INTERVAL", absl::Milliseconds(10),
                                        absl::Hours(1), &config.scheduler_interval));
  EVENTBUS_RETURN_IF_ERROR(ReadDuration(env, "EXECUTOR_INSTANCE_HEARTBEAT",
                                        absl::Milliseconds(100), absl::Minutes(10),
                                        &config.instance_heartbeat));
  EVENTBUS_RETURN_IF_ERROR(ReadDuration(env, "EXECUTOR_STUCK_GRACE", absl::Seconds(1),
                                        absl::Hours(24), &ex.store_lease_grace));
  return absl::OkStatus();
}

// EXECUTOR_ESCALATE_TO: the next tier's request stream, never one this executor already uses
// (escalating onto its own request stream would only restart the attempt count).
absl::Status ReadEscalateTo(const Environment& env, ExecutorOptions& ex) {
  EVENTBUS_RETURN_IF_ERROR(ReadName(env, "EXECUTOR_ESCALATE_TO", &ex.escalate_to));
  if (ex.escalate_to.empty()) return absl::OkStatus();
  const std::string dead_letters = ex.dead_letter_stream.empty()
                                       ? absl::StrCat(ex.request_stream, kDlqStreamSuffix)
                                       : ex.dead_letter_stream;
  for (const auto& [name, stream] :
       {std::pair<absl::string_view, absl::string_view>{"EXECUTOR_REQUEST_STREAM", ex.request_stream},
        {"EXECUTOR_RESULT_STREAM", ex.result_stream},
        {"EXECUTOR_PROGRESS_STREAM", ex.progress_stream},
        {"EXECUTOR_DLQ_STREAM", dead_letters}}) {
    if (ex.escalate_to == stream) {
      return absl::InvalidArgumentError(absl::StrCat(
          "EXECUTOR_ESCALATE_TO=\"", ex.escalate_to, "\" is the stream this executor uses as ",
          name, ": set it to the request stream of the next tier's executors (or unset it to "
          "dead-letter after the last attempt)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<std::string> KnownSettings() {
  std::vector<std::string> names = {
      "EVENT_STREAM_TYPE", "EXECUTOR_CA_FILE", "EXECUTOR_CALL_ALLOW", "EXECUTOR_CALL_DENY",
      "EXECUTOR_CALL_DENY_PRIVATE", "EXECUTOR_CONCURRENCY", "EXECUTOR_CONSUMER_GROUP",
      "EXECUTOR_CONSUMER_NAME", "EXECUTOR_DLQ_STREAM", "EXECUTOR_HEARTBEAT_INTERVAL",
      "EXECUTOR_HTTP_ADDR", "EXECUTOR_HTTP_MAX_CONNECTIONS", "EXECUTOR_API_TOKEN",
      "EXECUTOR_JQ_MEMORY_LIMIT_MIB", "EXECUTOR_JQ_WORKER", "EXECUTOR_JQ_WORKERS",
      "EXECUTOR_METRICS_REQUIRE_TOKEN", "EXECUTOR_MAX_ATTEMPTS", "EXECUTOR_MAX_DELIVERIES",
      "EXECUTOR_MAX_IN_FLIGHT", "EXECUTOR_WORKERS",
      "EXECUTOR_RECLAIM_ENABLED", "EXECUTOR_RECLAIM_INTERVAL", "EXECUTOR_RECLAIM_MIN_IDLE",
      "EXECUTOR_REQUEST_STREAM", "EXECUTOR_RESULT_STREAM", "EXECUTOR_SHUTDOWN_DEADLINE",
      "EXECUTOR_STREAM_BATCH", "EXECUTOR_STREAM_BLOCK", "EXECUTOR_TASK_TIMEOUT", "LOG_LEVEL",
      "EXECUTOR_STORE", "EXECUTOR_STORE_URL", "EXECUTOR_RETENTION_SUCCEEDED",
      "EXECUTOR_RETENTION_FAILED", "EXECUTOR_RETENTION_CANCELLED",
      "EXECUTOR_CANCEL_POLL_INTERVAL", "EXECUTOR_SCHEDULER_INTERVAL", "EXECUTOR_INSTANCE_HEARTBEAT",
      "EXECUTOR_PROGRESS_STREAM", "EXECUTOR_PROGRESS_INTERVAL", "EXECUTOR_ESCALATE_TO",
      "EXECUTOR_STUCK_GRACE"};
  std::sort(names.begin(), names.end());
  return names;
}

absl::Status CheckBackendConfig(absl::string_view type, const Environment& env,
                                const BackendRegistry& registry) {
  EVENTBUS_ASSIGN_OR_RETURN(BackendConfig config, registry.ConfigFromEnvironment(type, env));
  if (absl::Status s = registry.CheckConfig(type, config); !s.ok()) {
    return absl::Status(s.code(),
                        absl::StrCat("the ", type, " backend's configuration: ", s.message()));
  }
  return absl::OkStatus();
}

absl::string_view LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kTrace: return "trace";
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarn: return "warn";
    case LogLevel::kError: return "error";
    case LogLevel::kOff: return "off";
  }
  return "info";
}

absl::StatusOr<ServiceConfig> ParseServiceConfig(const Environment& env,
                                                 const std::vector<std::string>& backend_types) {
  const std::vector<std::string> known = KnownSettings();
  for (const auto& [name, value] : env) {
    if (absl::StartsWith(name, "EXECUTOR_") &&
        !std::binary_search(known.begin(), known.end(), name)) {
      std::vector<std::string> executor_settings;
      for (const auto& k : known) {
        if (absl::StartsWith(k, "EXECUTOR_")) executor_settings.push_back(k);
      }
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown setting ", name, "; valid EXECUTOR_* settings: ",
          absl::StrJoin(executor_settings, ", ")));
    }
  }

  ServiceConfig config;
  EVENTBUS_ASSIGN_OR_RETURN(
      const std::string* type,
      Find(env, kEventStreamTypeEnv, absl::StrCat("one of ", absl::StrJoin(backend_types, ", "))));
  if (type != nullptr) {
    if (std::find(backend_types.begin(), backend_types.end(), *type) == backend_types.end()) {
      return absl::InvalidArgumentError(absl::StrCat(kEventStreamTypeEnv, "=\"", *type,
                                                     "\" is not a registered backend; valid types: ",
                                                     absl::StrJoin(backend_types, ", ")));
    }
    config.stream_type = *type;
  }
  ExecutorOptions& ex = config.executor;
  ex.consumer_group = "eventbus-executor";
  EVENTBUS_RETURN_IF_ERROR(ReadInt(env, "EXECUTOR_CONCURRENCY", 1, 1024, &ex.concurrency));
  EVENTBUS_RETURN_IF_ERROR(ReadInt(env, "EXECUTOR_STREAM_BATCH", 1, 1000, &ex.fetch_batch));
  EVENTBUS_RETURN_IF_ERROR(ReadInt(env, "EXECUTOR_MAX_IN_FLIGHT", 1, 100'000, &ex.max_in_flight));
  EVENTBUS_RETURN_IF_ERROR(ReadInt(env, "EXECUTOR_WORKERS", 1, 1024, &ex.workers));
  EVENTBUS_RETURN_IF_ERROR(
      ReadInt(env, "EXECUTOR_MAX_DELIVERIES", 0, 1'000'000, &ex.max_deliveries));
  EVENTBUS_RETURN_IF_ERROR(ReadDuration(env, "EXECUTOR_STREAM_BLOCK", absl::Milliseconds(1),
                                        absl::Minutes(1), &ex.fetch_block));
  EVENTBUS_RETURN_IF_ERROR(ReadName(env, "EXECUTOR_CONSUMER_GROUP", &ex.consumer_group));
  EVENTBUS_RETURN_IF_ERROR(ReadName(env, "EXECUTOR_CONSUMER_NAME", &ex.consumer_name));
  EVENTBUS_RETURN_IF_ERROR(ReadName(env, "EXECUTOR_REQUEST_STREAM", &ex.request_stream));
  EVENTBUS_RETURN_IF_ERROR(ReadName(env, "EXECUTOR_RESULT_STREAM", &ex.result_stream));
  EVENTBUS_RETURN_IF_ERROR(ReadName(env, "EXECUTOR_DLQ_STREAM", &ex.dead_letter_stream));
  EVENTBUS_RETURN_IF_ERROR(ReadName(env, "EXECUTOR_PROGRESS_STREAM", &ex.progress_stream));
  EVENTBUS_RETURN_IF_ERROR(ReadDuration(env, "EXECUTOR_PROGRESS_INTERVAL", absl::Milliseconds(10),
                                        absl::Hours(1), &ex.progress_interval));
  EVENTBUS_RETURN_IF_ERROR(ReadEscalateTo(env, ex));
  EVENTBUS_RETURN_IF_ERROR(ReadBool(env, "EXECUTOR_RECLAIM_ENABLED", &ex.reclaim_enabled));
  EVENTBUS_RETURN_IF_ERROR(ReadDuration(env, "EXECUTOR_RECLAIM_MIN_IDLE", absl::Seconds(1),
                                        absl::Hours(24), &ex.reclaim_min_idle));
  EVENTBUS_RETURN_IF_ERROR(ReadDuration(env, "EXECUTOR_RECLAIM_INTERVAL", absl::Milliseconds(100),
                                        absl::Hours(1), &ex.reclaim_interval));
  EVENTBUS_RETURN_IF_ERROR(ReadDuration(env, "EXECUTOR_HEARTBEAT_INTERVAL", absl::ZeroDuration(),
                                        absl::Hours(1), &ex.heartbeat_interval));
  EVENTBUS_RETURN_IF_ERROR(ReadDuration(env, "EXECUTOR_SHUTDOWN_DEADLINE", absl::ZeroDuration(),
                                        absl::Hours(1), &ex.shutdown_deadline));
  if (ex.reclaim_enabled && ex.heartbeat_interval > absl::ZeroDuration() &&
      ex.heartbeat_interval >= ex.reclaim_min_idle) {
    return absl::InvalidArgumentError(absl::StrCat(
        "EXECUTOR_HEARTBEAT_INTERVAL (", absl::FormatDuration(ex.heartbeat_interval),
        ") must be shorter than EXECUTOR_RECLAIM_MIN_IDLE (",
        absl::FormatDuration(ex.reclaim_min_idle),
        "), or running tasks would be reclaimed by other workers"));
  }
  if (IsSet(env, "EXECUTOR_TASK_TIMEOUT")) {
    absl::Duration timeout;
    EVENTBUS_RETURN_IF_ERROR(ReadDuration(env, "EXECUTOR_TASK_TIMEOUT", absl::Milliseconds(1),
                                          ex.max_task_timeout, &timeout));
    config.task_timeout = timeout;
  }
  if (IsSet(env, "EXECUTOR_MAX_ATTEMPTS")) {
    int attempts = 0;
    EVENTBUS_RETURN_IF_ERROR(ReadInt(env, "EXECUTOR_MAX_ATTEMPTS", 1, 1000, &attempts));
    config.max_attempts = attempts;
  }
  EVENTBUS_RETURN_IF_ERROR(ReadHttpAddr(env, config));
  EVENTBUS_RETURN_IF_ERROR(ReadInt(env, "EXECUTOR_HTTP_MAX_CONNECTIONS", 1, 1'000'000,
                                   &config.http_max_connections));
  EVENTBUS_ASSIGN_OR_RETURN(
      const std::string* token,
      Find(env, "EXECUTOR_API_TOKEN",
           "a token (unset, the API runs without authentication: an empty value must not "
           "turn it off by accident)"));
  if (token != nullptr) {
    // Checked without echoing the value: it is a secret.
    const bool printable = std::all_of(token->begin(), token->end(), [](char c) {
      return c > ' ' && c < 0x7f;
    });
    if (!printable || token->size() > 4096) {
      return absl::InvalidArgumentError(
          "EXECUTOR_API_TOKEN is invalid: expected 1 to 4096 printable ASCII characters without "
          "spaces (the value is not shown)");
    }
    config.api_token = *token;
  }
  EVENTBUS_RETURN_IF_ERROR(
      ReadBool(env, "EXECUTOR_METRICS_REQUIRE_TOKEN", &config.metrics_require_token));
  if (config.metrics_require_token && config.api_token.empty()) {
    return absl::InvalidArgumentError(
        "EXECUTOR_METRICS_REQUIRE_TOKEN=true needs EXECUTOR_API_TOKEN to be set");
  }
  EVENTBUS_RETURN_IF_ERROR(ReadLogLevel(env, config));
  constexpr absl::string_view kCaExpected = "a readable PEM file of CA certificates";
  EVENTBUS_ASSIGN_OR_RETURN(const std::string* ca, Find(env, "EXECUTOR_CA_FILE", kCaExpected));
  if (ca != nullptr) {
    if (access(ca->c_str(), R_OK) != 0) return InvalidSetting("EXECUTOR_CA_FILE", *ca, kCaExpected);
    config.ca_file = *ca;
  }
  EVENTBUS_RETURN_IF_ERROR(ReadCallPolicy(env, config));
  // A `set` runs on a worker thread, so more jq processes than workers would sit idle.
  config.jq_workers = EffectiveWorkers(ex);
  EVENTBUS_RETURN_IF_ERROR(ReadInt(env, "EXECUTOR_JQ_WORKERS", 1, 1024, &config.jq_workers));
  constexpr absl::string_view kWorkerExpected = "the path of the eventbus-jq-worker binary";
  EVENTBUS_ASSIGN_OR_RETURN(const std::string* worker,
                            Find(env, "EXECUTOR_JQ_WORKER", kWorkerExpected));
  if (worker != nullptr) {
    if (access(worker->c_str(), X_OK) != 0) {
      return InvalidSetting("EXECUTOR_JQ_WORKER", *worker, kWorkerExpected);
    }
    config.jq_worker_path = *worker;
  }
  EVENTBUS_RETURN_IF_ERROR(
      ReadInt(env, "EXECUTOR_JQ_MEMORY_LIMIT_MIB", 0, 1 << 20, &config.jq_memory_limit_mib));
  if (config.jq_memory_limit_mib != 0 && config.jq_memory_limit_mib < 64) {
    return InvalidSetting("EXECUTOR_JQ_MEMORY_LIMIT_MIB", env.at("EXECUTOR_JQ_MEMORY_LIMIT_MIB"),
                          "0 (no limit) or 64..1048576");
  }
  EVENTBUS_RETURN_IF_ERROR(ReadStore(env, config));
  if (ex.result_stream == ex.request_stream) {
    return absl::InvalidArgumentError(
        "EXECUTOR_RESULT_STREAM must differ from EXECUTOR_REQUEST_STREAM");
  }
  if (ex.progress_stream == ex.request_stream || ex.progress_stream == ex.result_stream) {
    return absl::InvalidArgumentError(
        "EXECUTOR_PROGRESS_STREAM must differ from EXECUTOR_REQUEST_STREAM and "
        "EXECUTOR_RESULT_STREAM");
  }
  if (absl::Status s = ValidateExecutorOptions(ex); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("executor settings: ", s.message()));
  }
  return config;
}

}  // namespace eventbus::executor::service
