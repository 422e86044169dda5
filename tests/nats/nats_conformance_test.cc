// The conformance suite against a real nats-server (JetStream, file storage) that this binary
// starts on a free loopback port and stops at the end.
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "eventbus/clock.h"
#include "eventbus/conformance/conformance.h"
#include "eventbus/harness/nats_server.h"
#include "eventbus/nats/nats_event_stream.h"
#include "gtest/gtest.h"

namespace {

eventbus::harness::NatsServer* server = nullptr;

class NatsServerEnvironment : public testing::Environment {
 public:
  void SetUp() override {
    auto started = eventbus::harness::NatsServer::Start();
    // A server that cannot start is a failure, never a skip.
    if (!started.ok()) {
      std::fprintf(stderr, "cannot start nats-server: %s\n", started.status().ToString().c_str());
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
    testing::AddGlobalTestEnvironment(new NatsServerEnvironment);

eventbus::conformance::BackendUnderTest NatsOnRealServer() {
  eventbus::conformance::BackendUnderTest backend;
  backend.name = "nats";
  backend.make_stream = []() -> absl::StatusOr<std::unique_ptr<eventbus::EventStream>> {
    eventbus::nats::NatsOptions options;
    options.url = server->url();
    return eventbus::nats::NewNatsEventStream(options, eventbus::Clock::Real());
  };
  // Real time on a real server: the defaults' slack (2 s fetches, 0.5 s idle, 2 s delay).
  backend.fetch_wait = absl::Seconds(2);
  backend.quiet_wait = absl::Milliseconds(500);
  backend.nack_delay = absl::Seconds(2);
  backend.reclaim_idle = absl::Milliseconds(500);
  backend.events_per_publisher = 500;
  return backend;
}

EVENTBUS_INSTANTIATE_CONFORMANCE(Nats, NatsOnRealServer());

}  // namespace
