#pragma once
// The service's configuration: read once from the environment into a typed struct, every value
// validated, errors naming the setting and what it accepts.

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "eventbus/executor/executor.h"
#include "eventbus/registry.h"

namespace eventbus::executor::service {

enum class LogLevel { kTrace, kDebug, kInfo, kWarn, kError, kOff };

struct ServiceConfig {
  // EVENT_STREAM_TYPE: one of the registered backends (default "memory"). The backend's own
  // variables (REDIS_URL, KAFKA_BROKERS, NATS_URL, *_OPTION_*) are read by the registry.
  std::string stream_type = "memory";
  // EXECUTOR_CONCURRENCY, EXECUTOR_CONSUMER_GROUP, EXECUTOR_CONSUMER_NAME, EXECUTOR_STREAM_BATCH,
  // EXECUTOR_STREAM_BLOCK, EXECUTOR_RECLAIM_ENABLED, EXECUTOR_RECLAIM_MIN_IDLE,
  // EXECUTOR_RECLAIM_INTERVAL, EXECUTOR_HEARTBEAT_INTERVAL, EXECUTOR_SHUTDOWN_DEADLINE,
  // EXECUTOR_REQUEST_STREAM, EXECUTOR_RESULT_STREAM, EXECUTOR_DLQ_STREAM,
  // EXECUTOR_MAX_DELIVERIES, EXECUTOR_PROGRESS_STREAM, EXECUTOR_PROGRESS_INTERVAL,
  // EXECUTOR_ESCALATE_TO, EXECUTOR_STUCK_GRACE (the store lease grace).
  ExecutorOptions executor;
  // EXECUTOR_TASK_TIMEOUT / EXECUTOR_MAX_ATTEMPTS: when set, the processing timeout and the
  // attempts of every task type (otherwise each type's default; requests may still override).
  std::optional<absl::Duration> task_timeout;
  std::optional<int> max_attempts;
  // EXECUTOR_HTTP_ADDR, "host:port" (default 0.0.0.0:8080; port 0 = any free port).
  // The default listens on every interface: bind 127.0.0.1 or set EXECUTOR_API_TOKEN when the
  // host is reachable from outside.
  std::string http_host = "0.0.0.0";
  int http_port = 8080;
  // EXECUTOR_HTTP_MAX_CONNECTIONS: open HTTP connections at most (default 1024); the next ones
  // are answered 503 and closed.
  int http_max_connections = 1024;
  // EXECUTOR_API_TOKEN: when set, every /v1/* request needs "Authorization: Bearer <token>"
  // (401 otherwise). /healthz and /readyz stay open; /metrics too unless
  // EXECUTOR_METRICS_REQUIRE_TOKEN=true (which needs a token). Never logged.
  std::string api_token;
  bool metrics_require_token = false;
  // LOG_LEVEL: trace, debug, info, warn, error, off (default info).
  LogLevel log_level = LogLevel::kInfo;
  // EXECUTOR_CA_FILE: PEM CA bundle for HTTPS `call` tasks (default: the system store).
  std::string ca_file;
  // EXECUTOR_CALL_ALLOW / EXECUTOR_CALL_DENY: comma-separated host names, *.suffix wildcards,
  // IP addresses and CIDRs where `call` tasks may / may not connect (default: no list).
  // EXECUTOR_CALL_DENY_PRIVATE (default false): also deny private, loopback and CGNAT
  // addresses. Link-local (169.254.0.0/16, fe80::/10: cloud metadata) is always denied unless
  // an EXECUTOR_CALL_ALLOW CIDR covers it. Checked on the address connected to, every hop.
  std::vector<std::string> call_allow;
  std::vector<std::string> call_deny;
  bool call_deny_private = false;
  // EXECUTOR_JQ_WORKERS: most jq worker processes for `set` tasks (1..1024, default
  // the executor's worker threads: a `set` runs on one). EXECUTOR_JQ_WORKER: the eventbus-jq-worker binary (default: found
  // next to the service, in ../libexec or the build tree). EXECUTOR_JQ_MEMORY_LIMIT_MIB: each
  // worker's address-space limit (0 = none, else 64..1048576; default 512).
  int jq_workers = 0;
  std::string jq_worker_path;
  int jq_memory_limit_mib = 512;
  // EXECUTOR_STORE: the task store (memory, redis, postgres or none). Default: memory with the
  // memory backend, redis (on the backend's server) with the redis backend, none otherwise.
  // With none, the task API that needs a store (GET /v1/tasks/{id}, cancel, unique_key, stats)
  // answers 400 naming EXECUTOR_STORE; submitting and running tasks work as without it.
  std::string store = "none";
  // EXECUTOR_STORE_URL: redis://host:port/db or postgresql://user@host:port/db. Default for
  // redis: the backend's REDIS_URL. EXECUTOR_RETENTION_SUCCEEDED / _FAILED / _CANCELLED and
  // EXECUTOR_CANCEL_POLL_INTERVAL land in `executor`.
  std::string store_url;
  // EXECUTOR_SCHEDULER_INTERVAL (with a store): how often the scheduler publishes due run-later
  // tasks and fires due schedules (default PT1S; PT0.01S..PT1H). A task is published at most
  // this late; a fire later than twice this counts as missed.
  absl::Duration scheduler_interval = absl::Seconds(1);
  // EXECUTOR_INSTANCE_HEARTBEAT (with a store): how often this instance writes its record for
  // the dashboard's fleet view (default PT5S; PT0.1S..PT10M). The record expires after 6
  // intervals; one older than 2 intervals is shown as not reporting.
  absl::Duration instance_heartbeat = absl::Seconds(5);
};

// Every variable ParseServiceConfig reads (besides the backends'), sorted.
std::vector<std::string> KnownSettings();

// Reads `env` (values parsed by eventbus/options.h). InvalidArgument naming the variable, the
// bad value and the valid ones, for any malformed, out-of-range or empty value (set but empty
// never means the default), an unknown EVENT_STREAM_TYPE (listing `backend_types`), or an
// unknown EXECUTOR_* variable (a typo would otherwise be ignored silently). The backend's own
// variables are CheckBackendConfig's.
absl::StatusOr<ServiceConfig> ParseServiceConfig(const Environment& env,
                                                 const std::vector<std::string>& backend_types);

// The backend `type`'s own settings (its URL variable and *_OPTION_* variables) as
// BackendRegistry::ConfigFromEnvironment reads them, checked by the backend without
// connecting: InvalidArgument naming the setting for a bad, empty or unknown one.
absl::Status CheckBackendConfig(absl::string_view type, const Environment& env,
                                const BackendRegistry& registry);

// "debug", "info", ...
absl::string_view LogLevelName(LogLevel level);

}  // namespace eventbus::executor::service
