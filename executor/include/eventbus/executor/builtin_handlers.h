#pragma once
// The built-in task types that need nothing outside the executor: `wait` and `inject`.

#include <memory>

#include "absl/status/status.h"
#include "eventbus/executor/handler.h"

namespace eventbus::executor {

// `wait`: input {"duration": "<ISO 8601 duration>"}. Completes once the clock has passed the
// request's time plus the duration; before that it asks for a delayed redelivery of exactly the
// remaining time, so no worker ever sleeps. Output {"duration", "requested_at", "completed_at"}.
std::unique_ptr<TaskHandler> NewWaitHandler();

// `inject`: input {"data": {...}} (a JSON object), optionally {"into": {...}} as well. Output:
// "into" with "data" merged over it (RFC 7386 JSON merge patch), or "data" alone.
std::unique_ptr<TaskHandler> NewInjectHandler();

// Registers wait and inject; plus call and set when the executor was built with its
// components (HTTP client, circuit breaker, jq).
absl::Status RegisterBuiltinHandlers(HandlerRegistry& registry);

}  // namespace eventbus::executor
