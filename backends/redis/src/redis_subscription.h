#pragma once
// A consumer's membership in a Redis consumer group. Private to backends/redis.

#include <memory>

#include "absl/status/statusor.h"
#include "eventbus/event_stream.h"
#include "eventbus/redis/redis_event_stream.h"

namespace eventbus::redis {

// Creates the group if needed (XGROUP CREATE .. MKSTREAM) and returns the subscription, which
// owns two connections of its own: one for Fetch/Reclaim (blocking reads), one for
// Ack/Nack/Extend/DeadLetter from any thread. `clock` must outlive it.
absl::StatusOr<std::unique_ptr<Subscription>> NewRedisSubscription(const RedisOptions& options,
                                                                   Clock* clock,
                                                                   const SubscribeOptions& sub);

}  // namespace eventbus::redis
