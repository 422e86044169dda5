#pragma once
// The `call` task: one HTTP request, through a circuit breaker per host. Built only with the
// executor's components (EVENTBUS_EXECUTOR_HAS_COMPONENTS).

#include <memory>

#include "absl/status/statusor.h"
#include "eventbus/clock.h"
#include "eventbus/executor/circuit_breaker.h"
#include "eventbus/executor/handler.h"
#include "eventbus/executor/http_client.h"

namespace eventbus::executor {

struct CallHandlerOptions {
  HttpClientOptions http;
  CircuitBreakerRegistry::Options breakers;
  // Used when the task's input names no timeout (the processing deadline still bounds it).
  absl::Duration default_request_timeout = absl::Seconds(30);
  // The circuit breakers' clock; not owned; null = the real clock.
  Clock* clock = nullptr;
  // Told about every breaker state change (metrics, logs). May be null.
  CircuitStateCallback on_circuit_change;
  TaskPolicy policy;
};

// Input: {"url": "https://...", "method": "GET|POST|PUT|PATCH|DELETE" (default GET),
//         "headers": {"Name": "value"}, "body": "<text>" or any JSON value (sent as JSON),
//         "timeout": "PT10S"}.
// Output: {"status": 200, "headers": {"name": "value", ...}, "body": <JSON when the response is
//          JSON, else text>, "elapsed_ms": ...}.
// 2xx succeeds; 5xx, 408, 429, refused connections and timeouts are transient; other statuses,
// TLS verification failures and malformed requests are permanent. An open circuit is transient.
// InvalidArgument when the options do not validate.
absl::StatusOr<std::unique_ptr<TaskHandler>> NewCallHandler(CallHandlerOptions options);

}  // namespace eventbus::executor
