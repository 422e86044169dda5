#pragma once
// StreamInspector on Redis (XINFO, XRANGE, XPENDING, XDEL) over a connection of its own, so
// operator reads never queue behind publishes or blocking fetches. Private to backends/redis.

#include <memory>

#include "eventbus/redis/redis_event_stream.h"
#include "eventbus/stream_inspector.h"

namespace eventbus::redis {

std::unique_ptr<StreamInspector> NewRedisInspector(const RedisOptions& options);

}  // namespace eventbus::redis
