#pragma once
// The conformance suite every backend must pass, as a library. A backend instantiates it with
// a factory:
//
//   EVENTBUS_INSTANTIATE_CONFORMANCE(Redis, eventbus::conformance::BackendUnderTest{
//       .name = "redis", .make_stream = [] { return MakeRedisStreamForTest(); }});
//
// Cases a backend's Capabilities do not cover are skipped, and say which capability is missing;
// so are cases that need a hook the backend did not give (crash, restart_server, ...).
//
// Running the suite writes a JSON report per backend, <dir>/<name>.json, with dir from
// $EVENTBUS_CONFORMANCE_REPORT_DIR (default: the working directory): cases passed, failed and
// skipped (with the reason), timings, the declared capabilities and the hooks given.

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "eventbus/event_stream.h"
#include "gtest/gtest.h"

#pragma GCC visibility push(default)

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

  // How late a delayed nack may come back: redelivered within [delay, delay + nack_tolerance]
  // (on a virtual clock: once the delay has passed, at the next fetch).
  absl::Duration nack_tolerance = absl::Seconds(2);
  // A second, long delay for backends that keep long delays another way (Kafka's retry
  // topic); zero = the tolerance case checks nack_delay only.
  absl::Duration long_nack_delay = absl::ZeroDuration();

  // Optional failure hooks. A case that needs a hook not given here is skipped and names it.
  //
  // crash: the consumer behind the subscription dies as a crashed process would: no Close, no
  // further settle (in-process backends: AbandonSubscription below; out-of-process ones: kill
  // the process that holds it). The suite never touches the subscription again.
  std::function<void(std::unique_ptr<Subscription>)> crash;
  // restart_server: the server dies (SIGKILL) and starts again on the same address with its
  // data; returns once it serves. Clients must resume by themselves.
  std::function<absl::Status()> restart_server;
  // cut_connection: every client connection to the server is reset (the server keeps
  // running); clients may connect again at once. harness::TcpProxy does it for loopback servers.
  std::function<absl::Status()> cut_connection;
  // make_bounded_stream: like make_stream, but its publish queue (or retention) holds at most a
  // few hundred unconsumed events, so the back-pressure case can fill it.
  std::function<absl::StatusOr<std::unique_ptr<EventStream>>()> make_bounded_stream;

  // Writes `event` to `stream` the way this backend's wire carries it, without Publish's
  // checks, as a foreign producer (redis-cli, kcat, the nats CLI) could: the malformed-envelope
  // cases use it to put on the wire what Publish refuses. Null (a backend with no wire, like
  // memory) = those cases are skipped.
  std::function<absl::Status(const std::string& stream, const Event& event)> write_raw;
};

// A crash hook for in-process backends: keeps the subscription alive and unused until the
// process ends, which is what a consumer that died without Close looks like to its group.
void AbandonSubscription(std::unique_ptr<Subscription> subscription);

class EventStreamConformance : public testing::TestWithParam<BackendUnderTest> {};

std::string TestNameOf(const testing::TestParamInfo<BackendUnderTest>& info);

// Referenced by the instantiation macro so the linker keeps the suite's test definitions even
// when the suite comes from a static library (static registration is otherwise dropped).
int LinkConformanceSuite();
int LinkReadinessCases();  // the WaitReady cases (src/readiness_cases.cc)

}  // namespace eventbus::conformance

// Use at namespace scope (gtest pastes the suite name into identifiers, hence the using).
#define EVENTBUS_INSTANTIATE_CONFORMANCE(prefix, ...)                       \
  [[maybe_unused]] static const int eventbus_conformance_anchor_##prefix = \
      ::eventbus::conformance::LinkConformanceSuite() +                    \
      ::eventbus::conformance::LinkReadinessCases();                       \
  using ::eventbus::conformance::EventStreamConformance;                   \
  INSTANTIATE_TEST_SUITE_P(prefix, EventStreamConformance,                 \
                           ::testing::Values(__VA_ARGS__),                 \
                           ::eventbus::conformance::TestNameOf)

#pragma GCC visibility pop
