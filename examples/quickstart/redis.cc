// Redis Streams: one consumer group on a Redis stream.
//   REDIS_URL=redis://127.0.0.1:6379 ./eventbus-quickstart-redis
// REDIS_OPTION_* variables tune the backend (docs/provisioning.md).
#include "eventbus/log.h"
#include "eventbus/redis/redis_event_stream.h"
#include "eventbus/session.h"
#include "roundtrip.h"

absl::Status Run() {
  // The library prints nothing by itself: show its warnings (reconnects, ...) on stderr.
  eventbus::SetLogSink(eventbus::StderrLogSink(), eventbus::LogLevel::kWarning);
  EVENTBUS_RETURN_IF_ERROR(eventbus::redis::RegisterRedisBackend());
  eventbus::Environment env = eventbus::ProcessEnvironment();  // REDIS_URL, REDIS_OPTION_*
  env["EVENT_STREAM_TYPE"] = "redis";
  EVENTBUS_ASSIGN_OR_RETURN(eventbus::StreamSession session,
                            eventbus::StreamSession::FromEnvironment(env));
  return quickstart::RoundTrip(session);
}

int main() { return quickstart::Report(Run()); }
