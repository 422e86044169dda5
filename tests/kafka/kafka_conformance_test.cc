// The shared conformance suite against a real Kafka broker.

#include "eventbus/conformance/conformance.h"
#include "kafka_test_env.h"

namespace eventbus::kafka::testing {
namespace {

[[maybe_unused]] ::testing::Environment* const kEnvironment =
    ::testing::AddGlobalTestEnvironment(new KafkaBrokerEnvironment);

EVENTBUS_INSTANTIATE_CONFORMANCE(
    Kafka, conformance::BackendUnderTest{
               .name = "kafka",
               .make_stream = [] { return NewTestStream(TestOptions()); },
               .let_time_pass = nullptr,  // real broker, real time
               // Group joins and rebalances take Kafka a few hundred milliseconds each.
               .fetch_wait = absl::Seconds(3),
               .quiet_wait = absl::Milliseconds(1500),
               .nack_delay = absl::Seconds(2),
               .reclaim_idle = absl::Milliseconds(500),
               .events_per_publisher = 250,
           });

// The per-key ordering mode (at most one event per key in flight) must pass the same suite,
// and with it the OrderIsKeptPerKey case it declares.
KafkaOptions OrderedOptions() {
  KafkaOptions options = TestOptions();
  options.ordered_per_key = true;
  return options;
}

EVENTBUS_INSTANTIATE_CONFORMANCE(
    KafkaOrdered, conformance::BackendUnderTest{
                      .name = "kafka_ordered_per_key",
                      .make_stream = [] { return NewTestStream(OrderedOptions()); },
                      .let_time_pass = nullptr,
                      .fetch_wait = absl::Seconds(3),
                      .quiet_wait = absl::Milliseconds(1500),
                      .nack_delay = absl::Seconds(2),
                      .reclaim_idle = absl::Milliseconds(500),
                      .events_per_publisher = 250,
                  });

}  // namespace
}  // namespace eventbus::kafka::testing
