// The conformance suite against a real redis-server (AOF on) that this binary starts on a free
// loopback port and stops at the end.
#include <cstdlib>
#include <memory>

#include "eventbus/clock.h"
#include "eventbus/conformance/conformance.h"
#include "eventbus/harness/redis_server.h"
#include "eventbus/redis/redis_event_stream.h"
#include "gtest/gtest.h"

namespace {

eventbus::harness::RedisServer* server = nullptr;

class RedisServerEnvironment : public testing::Environment {
 public:
  void SetUp() override {
    auto started = eventbus::harness::RedisServer::Start();
    // A server that cannot start is a failure, never a skip.
    if (!started.ok()) {
      std::fprintf(stderr, "cannot start redis-server: %s\n", started.status().ToString().c_str());
      std::abort();
    }
    server = started->release();
  }
  void TearDown() override {
    delete server;
    server = nullptr;
  }
};

[[maybe_unused]] testing::Environment* const environment =
    testing::AddGlobalTestEnvironment(new RedisServerEnvironment);

eventbus::conformance::BackendUnderTest RedisOnRealServer() {
  eventbus::conformance::BackendUnderTest backend;
  backend.name = "redis";
  backend.make_stream = []() -> absl::StatusOr<std::unique_ptr<eventbus::EventStream>> {
    auto endpoint = eventbus::redis::ParseRedisUrl(server->url());
    if (!endpoint.ok()) return endpoint.status();
    eventbus::redis::RedisOptions options;
    options.endpoint = *endpoint;
    return eventbus::redis::NewRedisEventStream(options, eventbus::Clock::Real());
  };
  // Real time on a real server: the defaults' slack (2 s fetches, 0.5 s idle, 2 s delay).
  backend.fetch_wait = absl::Seconds(2);
  backend.quiet_wait = absl::Milliseconds(500);
  backend.nack_delay = absl::Seconds(2);
  backend.reclaim_idle = absl::Milliseconds(500);
  backend.events_per_publisher = 500;
  return backend;
}

EVENTBUS_INSTANTIATE_CONFORMANCE(Redis, RedisOnRealServer());

}  // namespace
