#pragma once
// The `call` task: one HTTP request, through a circuit breaker per host. Built only with the
// executor's components (EVENTBUS_EXECUTOR_HAS_COMPONENTS).

#include <memory>

#include "absl/status/statusor.h"
#include "eventbus/clock.h"
#include "eventbus/executor/circuit_breaker.h"
#include "eventbus/executor/handler.h"
#include "eventbus/executor/http_client.h"

#pragma GCC visibility push(default)

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
//         "timeout": "PT10S", "follow_redirects": false (default), "max_redirects": 5 (0-20)}.
// Output: {"status": 200, "headers": {"name": "value", ...}, "body": <JSON when the response is
//          JSON, else text>, "elapsed_ms": ...}.
// 2xx succeeds; 5xx, 408, 429, refused connections and timeouts are transient; other statuses
// (an unfollowed 3xx included), TLS verification failures, destinations denied by
// CallHandlerOptions::http.destinations, bad redirects and malformed requests are permanent.
// An open circuit is transient. Every request carries an Idempotency-Key header derived from
// the task id (stable across retries) unless the input sets one. Errors name the destination
// as scheme://host:port, never its path or query.
//
// Asynchronous (asynchronous() is true): HandleAsync starts the request and returns; the
// outcome arrives on the HTTP client's loop thread; context.Remaining() bounds the request and
// context.cancelled() stops it. Handle is HandleAsync plus a wait.
// InvalidArgument when the options do not validate.
absl::StatusOr<std::unique_ptr<TaskHandler>> NewCallHandler(CallHandlerOptions options);

}  // namespace eventbus::executor

#pragma GCC visibility pop
