#include "eventbus/builtin_backends.h"

#include "eventbus/backends.h"
#include "eventbus/status_macros.h"
#if EVENTBUS_HAS_MEMORY_BACKEND
#include "eventbus/memory/memory_event_stream.h"
#endif
#if EVENTBUS_HAS_REDIS_BACKEND
#include "eventbus/redis/redis_event_stream.h"
#endif
#if EVENTBUS_HAS_KAFKA_BACKEND
#include "eventbus/kafka/kafka_event_stream.h"
#endif
#if EVENTBUS_HAS_NATS_BACKEND
#include "eventbus/nats/nats_event_stream.h"
#endif

namespace eventbus {

// A new backend adds one block here and declares its component BACKEND in its CMakeLists.txt.
absl::Status RegisterBuiltinBackends(BackendRegistry& registry) {
#if EVENTBUS_HAS_MEMORY_BACKEND
  EVENTBUS_RETURN_IF_ERROR(memory::RegisterMemoryBackend(registry));
#endif
#if EVENTBUS_HAS_REDIS_BACKEND
  EVENTBUS_RETURN_IF_ERROR(redis::RegisterRedisBackend(registry));
#endif
#if EVENTBUS_HAS_KAFKA_BACKEND
  EVENTBUS_RETURN_IF_ERROR(kafka::RegisterKafkaBackend(registry));
#endif
#if EVENTBUS_HAS_NATS_BACKEND
  EVENTBUS_RETURN_IF_ERROR(nats::RegisterNatsBackend(registry));
#endif
  return absl::OkStatus();
}

}  // namespace eventbus
