#pragma once
// One real Kafka broker per test binary, started by a gtest Environment before any test and
// stopped after the last. A broker that cannot start fails the run (never a skip).

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "eventbus/event_stream.h"
#include "eventbus/harness/kafka_broker.h"
#include "eventbus/kafka/kafka_event_stream.h"
#include "gtest/gtest.h"

namespace eventbus::kafka::testing {

class KafkaBrokerEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    const absl::Time start = absl::Now();
    auto broker = harness::KafkaBroker::Start();
    ASSERT_TRUE(broker.ok()) << broker.status();
    broker_ = std::move(broker).value();
    std::fprintf(stderr, "Kafka broker at %s started in %s\n", broker_->bootstrap().c_str(),
                 absl::FormatDuration(absl::Now() - start).c_str());
  }
  void TearDown() override { broker_.reset(); }

  static harness::KafkaBroker& broker() { return *broker_; }

 private:
  static inline std::unique_ptr<harness::KafkaBroker> broker_;
};

// Options for the test broker: small partitions count, local nacks below 30 s.
inline KafkaOptions TestOptions() {
  KafkaOptions options;
  options.brokers = KafkaBrokerEnvironment::broker().bootstrap();
  options.partitions = 3;
  // librdkafka logs every reconnect attempt; tests that restart the broker expect them.
  options.properties["log_level"] = "3";
  return options;
}

inline absl::StatusOr<std::unique_ptr<EventStream>> NewTestStream(KafkaOptions options) {
  return NewKafkaEventStream(std::move(options));
}

}  // namespace eventbus::kafka::testing
