#pragma once
// The conformance suite every backend must pass, as a library. A backend instantiates it with
// a factory:
//
//   EVENTBUS_INSTANTIATE_CONFORMANCE(Redis, eventbus::conformance::BackendUnderTest{
//       .name = "redis", .make_stream = [] { return MakeRedisStreamForTest(); }});
//
// Cases a backend's Capabilities do not cover are skipped, and say which capability is missing.

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "eventbus/event_stream.h"
#include "gtest/gtest.h"

namespace eventbus::conformance {

struct BackendUnderTest {
  // Test-name suffix: letters, digits and '_' only.
  std::string name;
  // A new, connected stream. Called several times per case (a case may need two instances to
  // test persistence); all instances must share the same server / state.
  std::function<absl::StatusOr<std::unique_ptr<EventStream>>()> make_stream;
  // Lets `d` pass on the streams' clock: advance a ManualClock, or sleep for real brokers.
  // Default: sleep.
  std::function<void(absl::Duration)> let_time_pass;
  // How long one fetch may block when events are expected (slack for real brokers).
  absl::Duration fetch_wait = absl::Seconds(2);
  // How long to listen when asserting that nothing arrives.
  absl::Duration quiet_wait = absl::Milliseconds(300);
  // The delay and idle time used by the nack-delay and reclaim cases.
  absl::Duration nack_delay = absl::Seconds(2);
  absl::Duration reclaim_idle = absl::Milliseconds(500);
  // Size of the concurrency case (events per publisher; 4 publishers, 4 consumers).
  int events_per_publisher = 500;
  // Writes `event` to `stream` the way this backend's wire carries it, without Publish's
  // checks, as a foreign producer (redis-cli, kcat, the nats CLI) could: the malformed-envelope
  // cases use it to put on the wire what Publish refuses. Null (a backend with no wire, like
  // memory) = those cases are skipped.
  std::function<absl::Status(const std::string& stream, const Event& event)> write_raw;
};

class EventStreamConformance : public testing::TestWithParam<BackendUnderTest> {};

std::string TestNameOf(const testing::TestParamInfo<BackendUnderTest>& info);

// Referenced by the instantiation macro so the linker keeps the suite's test definitions even
// when the suite comes from a static library (static registration is otherwise dropped).
int LinkConformanceSuite();

}  // namespace eventbus::conformance

// Use at namespace scope (gtest pastes the suite name into identifiers, hence the using).
#define EVENTBUS_INSTANTIATE_CONFORMANCE(prefix, ...)                       \
  [[maybe_unused]] static const int eventbus_conformance_anchor_##prefix = \
      ::eventbus::conformance::LinkConformanceSuite();                     \
  using ::eventbus::conformance::EventStreamConformance;                   \
  INSTANTIATE_TEST_SUITE_P(prefix, EventStreamConformance,                 \
                           ::testing::Values(__VA_ARGS__),                 \
                           ::eventbus::conformance::TestNameOf)
