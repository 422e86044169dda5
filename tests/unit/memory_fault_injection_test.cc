// The memory backend's fault-injecting mode does exactly what a test asks, and nothing else.
#include "eventbus/memory/fault_injection.h"

#include <atomic>
#include <memory>
#include <thread>

#include "absl/time/clock.h"
#include "eventbus/clock.h"
#include "eventbus/memory/memory_event_stream.h"
#include "gtest/gtest.h"

namespace eventbus::memory {
namespace {

using Op = FaultInjector::Op;

class FaultInjectionTest : public ::testing::Test {
 protected:
  std::unique_ptr<Subscription> Subscribe(const std::string& consumer) {
    auto sub = stream_->Subscribe({.stream = "s", .group = "g", .consumer = consumer});
    EXPECT_TRUE(sub.ok()) << sub.status();
    return sub.ok() ? std::move(*sub) : nullptr;
  }

  ManualClock clock_;
  FaultInjector faults_;
  std::unique_ptr<EventStream> inner_ = NewMemoryEventStream(&clock_);
  std::unique_ptr<EventStream> stream_ = NewFaultInjectingEventStream(inner_.get(), &faults_);
};

TEST_F(FaultInjectionTest, FailsExactlyTheNextNCallsWithTheChosenStatus) {
  faults_.FailNext(Op::kPublish, 2, absl::ResourceExhaustedError("queue full"));
  EXPECT_EQ(stream_->PublishAndWait("s", MakeEvent("t", "/x")).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(stream_->PublishAndWait("s", MakeEvent("t", "/x")).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(stream_->PublishAndWait("s", MakeEvent("t", "/x")).ok());
  EXPECT_EQ(faults_.injected(Op::kPublish), 2);

  auto sub = Subscribe("c1");
  ASSERT_NE(sub, nullptr);
  faults_.FailNext(Op::kAck, 1, absl::UnavailableError("reset"));
  auto got = sub->Fetch(1, absl::ZeroDuration());
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(got->size(), 1u);
  EXPECT_TRUE(absl::IsUnavailable(sub->Ack((*got)[0])));
  // The failed ack never reached the backend: the delivery is still held, and can be acked.
  EXPECT_TRUE(sub->Ack((*got)[0]).ok());
}

TEST_F(FaultInjectionTest, ADroppedConnectionFailsOnlyThatConsumerUntilReconnect) {
  auto dropped = Subscribe("dropped");
  auto other = Subscribe("other");
  ASSERT_TRUE(stream_->PublishAndWait("s", MakeEvent("t", "/x")).ok());
  auto held = dropped->Fetch(1, absl::ZeroDuration());
  ASSERT_TRUE(held.ok());
  ASSERT_EQ(held->size(), 1u);
  faults_.DropConnection("dropped");
  EXPECT_TRUE(absl::IsUnavailable(dropped->Fetch(1, absl::ZeroDuration()).status()));
  EXPECT_TRUE(absl::IsUnavailable(dropped->Ack((*held)[0])));
  EXPECT_TRUE(other->Fetch(1, absl::ZeroDuration()).ok());
  EXPECT_TRUE(stream_->Ping(absl::Seconds(1)).ok());
  faults_.Reconnect();
  // The drop settled nothing: the handle is still good.
  EXPECT_TRUE(dropped->Ack((*held)[0]).ok());

  faults_.DropAllConnections();
  EXPECT_TRUE(absl::IsUnavailable(stream_->Ping(absl::Seconds(1))));
  EXPECT_TRUE(absl::IsUnavailable(stream_->Publish("s", MakeEvent("t", "/x"))));
  EXPECT_TRUE(absl::IsUnavailable(other->Fetch(1, absl::ZeroDuration()).status()));
  faults_.Reconnect();
  EXPECT_TRUE(stream_->Ping(absl::Seconds(1)).ok());
}

TEST_F(FaultInjectionTest, AStalledBackendBlocksUntilResumedAndPingTimesOut) {
  faults_.Stall();
  EXPECT_EQ(stream_->Ping(absl::Milliseconds(50)).code(), absl::StatusCode::kDeadlineExceeded);
  std::atomic<bool> published{false};
  std::thread publisher([&] {
    EXPECT_TRUE(stream_->PublishAndWait("s", MakeEvent("t", "/x")).ok());
    published = true;
  });
  absl::SleepFor(absl::Milliseconds(50));  // a stall is real time: give it a chance to leak
  EXPECT_FALSE(published);
  faults_.Resume();
  publisher.join();
  EXPECT_TRUE(published);
}

}  // namespace
}  // namespace eventbus::memory
