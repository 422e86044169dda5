#pragma once
// The built-in task types that need nothing outside the executor: `wait` and `inject`.

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "eventbus/clock.h"
#include "eventbus/executor/handler.h"

#pragma GCC visibility push(default)

namespace eventbus::executor {

// `wait`: input {"duration": "<ISO 8601 duration>"}. Completes once the clock has passed the
// request's time plus the duration; before that it asks for a delayed redelivery of exactly the
// remaining time, so no worker ever sleeps. Output {"duration", "requested_at", "completed_at"}.
std::unique_ptr<TaskHandler> NewWaitHandler();

// `inject`: input {"data": {...}} (a JSON object), optionally {"into": {...}} as well. Output:
// "into" with "data" merged over it (RFC 7386 JSON merge patch), or "data" alone.
std::unique_ptr<TaskHandler> NewInjectHandler();

// Settings of the built-in handlers that have any (`call` and `set`).
struct BuiltinHandlerOptions {
  // The circuit breakers' clock; not owned; null = the real clock.
  Clock* clock = nullptr;
  // PEM CA bundle trusted for HTTPS calls instead of the system store; empty = system store.
  std::string ca_file;
  // Told about every circuit breaker state change: host, old and new state name ("closed",
  // "open", "half_open"). Runs under the breaker's lock: quick, no calls back. May be null.
  std::function<void(absl::string_view host, absl::string_view from, absl::string_view to)>
      on_circuit_change;
  // Where `call` may connect (the service's EXECUTOR_CALL_ALLOW, EXECUTOR_CALL_DENY and
  // EXECUTOR_CALL_DENY_PRIVATE): host names, *.suffix wildcards, addresses and CIDRs, checked
  // on the address actually connected to and on every redirect hop. Link-local addresses
  // (cloud metadata) are denied unless an allowed CIDR covers them. See destination_policy.h.
  std::vector<std::string> call_allow;
  std::vector<std::string> call_deny;
  bool call_deny_private = false;
  // `set`: its jq worker processes (JqWorkerPoolOptions): how many at most (<= 0: 4), the
  // binary (empty: $EXECUTOR_JQ_WORKER or found next to the running binary), and each one's
  // memory limit (0 = none).
  int jq_workers = 0;
  std::string jq_worker_path;
  size_t jq_memory_limit_bytes = size_t{512} << 20;
};

// True when `call` and `set` are built in (the executor was built with its components: libcurl
// HTTP client, circuit breaker, libjq).
bool HasCallAndSetHandlers();

// Registers wait and inject, plus call and set when HasCallAndSetHandlers(). Fails when a
// handler cannot start (FailedPrecondition naming the jq worker binary when it is missing).
absl::Status RegisterBuiltinHandlers(HandlerRegistry& registry,
                                     const BuiltinHandlerOptions& options = {});

}  // namespace eventbus::executor

#pragma GCC visibility pop
