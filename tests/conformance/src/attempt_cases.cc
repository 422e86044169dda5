// Conformance cases for the two counts a delivery carries: delivery_count (every delivery)
// and failed_attempts (Nacks with NackKind::kFailed only), which must travel with the event
// across redeliveries and reclaims on every backend.

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "eventbus/conformance/conformance.h"

namespace eventbus::conformance {

int LinkAttemptCases() { return 0; }

namespace {

std::string UniqueStreamName(absl::string_view prefix) {
  thread_local absl::BitGen gen;
  return absl::StrFormat("conf.%s.%016x", prefix, absl::Uniform<uint64_t>(gen));
}

class AttemptFixture {
 public:
  explicit AttemptFixture(const BackendUnderTest& backend) : backend_(backend) {
    auto made = backend.make_stream();
    EXPECT_TRUE(made.ok()) << made.status();
    if (made.ok()) stream_ = std::move(made).value();
  }

  EventStream* stream() { return stream_.get(); }

  std::unique_ptr<Subscription> Join(const std::string& name, const std::string& consumer) {
    SubscribeOptions options;
    options.stream = name;
    options.group = "g";
    options.consumer = consumer;
    auto sub = stream_->Subscribe(options);
    EXPECT_TRUE(sub.ok()) << sub.status();
    return sub.ok() ? std::move(sub).value() : nullptr;
  }

  // The next delivery, within the patience; nullopt after it.
  std::optional<Delivery> Next(Subscription& sub) {
    const absl::Time deadline = absl::Now() + patience();
    while (absl::Now() < deadline) {
      auto batch = sub.Fetch(1, backend_.fetch_wait);
      EXPECT_TRUE(batch.ok()) << batch.status();
      if (!batch.ok()) return std::nullopt;
      if (!batch->empty()) return std::move(batch->front());
    }
    return std::nullopt;
  }

  void LetTimePass(absl::Duration d) {
    if (backend_.let_time_pass) {
      backend_.let_time_pass(d);
    } else {
      absl::SleepFor(d);
    }
  }

  absl::Duration patience() const { return std::max(backend_.fetch_wait * 10, absl::Seconds(5)); }

 private:
  const BackendUnderTest& backend_;
  std::unique_ptr<EventStream> stream_;
};

TEST_P(EventStreamConformance, OnlyFailedNacksCountAsFailedAttempts) {
  AttemptFixture f(GetParam());
  ASSERT_NE(f.stream(), nullptr);
  const std::string name = UniqueStreamName("attempts");
  ASSERT_TRUE(f.stream()->PublishAndWait(name, MakeEvent("io.eventbus.conformance", "/c")).ok());
  auto sub = f.Join(name, "c1");
  ASSERT_NE(sub, nullptr);

  std::optional<Delivery> d = f.Next(*sub);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->delivery_count, 1);
  EXPECT_EQ(d->failed_attempts, 0);
  ASSERT_TRUE(sub->Nack(*d, absl::ZeroDuration(), NackKind::kFailed).ok());

  d = f.Next(*sub);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->delivery_count, 2);
  EXPECT_EQ(d->failed_attempts, 1) << "a failed attempt";
  ASSERT_TRUE(sub->Nack(*d, absl::ZeroDuration()).ok());  // a give-back

  d = f.Next(*sub);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->delivery_count, 3);
  EXPECT_EQ(d->failed_attempts, 1) << "a give-back is no failed attempt";
  absl::Notification nacked;
  absl::Status async_status;
  sub->NackAsync(*d, absl::ZeroDuration(), NackKind::kFailed, [&](absl::Status s) {
    async_status = s;
    nacked.Notify();
  });
  ASSERT_TRUE(nacked.WaitForNotificationWithTimeout(f.patience()));
  ASSERT_TRUE(async_status.ok()) << async_status;

  d = f.Next(*sub);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->delivery_count, 4);
  EXPECT_EQ(d->failed_attempts, 2) << "NackAsync counts the same way";
  ASSERT_TRUE(sub->Ack(*d).ok());
}

TEST_P(EventStreamConformance, FailedAttemptsSurviveADelayedRedelivery) {
  AttemptFixture f(GetParam());
  ASSERT_NE(f.stream(), nullptr);
  const std::string name = UniqueStreamName("attemptsdelay");
  ASSERT_TRUE(f.stream()->PublishAndWait(name, MakeEvent("io.eventbus.conformance", "/c")).ok());
  auto sub = f.Join(name, "c1");
  ASSERT_NE(sub, nullptr);
  std::optional<Delivery> d = f.Next(*sub);
  ASSERT_TRUE(d.has_value());
  ASSERT_TRUE(sub->Nack(*d, GetParam().nack_delay, NackKind::kFailed).ok());
  f.LetTimePass(GetParam().nack_delay);
  d = f.Next(*sub);
  ASSERT_TRUE(d.has_value()) << "not redelivered after the delay";
  EXPECT_EQ(d->delivery_count, 2);
  EXPECT_EQ(d->failed_attempts, 1);
  ASSERT_TRUE(sub->Ack(*d).ok());
}

TEST_P(EventStreamConformance, FailedAttemptsTravelWithAReclaimedDelivery) {
  AttemptFixture f(GetParam());
  ASSERT_NE(f.stream(), nullptr);
  if (!f.stream()->capabilities().reclaim_from_other_consumers) {
    GTEST_SKIP() << "backend does not declare Capabilities::reclaim_from_other_consumers";
  }
  const std::string name = UniqueStreamName("attemptsreclaim");
  ASSERT_TRUE(f.stream()->PublishAndWait(name, MakeEvent("io.eventbus.conformance", "/c")).ok());
  auto dead = f.Join(name, "dead");
  auto alive = f.Join(name, "alive");
  ASSERT_NE(dead, nullptr);
  ASSERT_NE(alive, nullptr);
  std::optional<Delivery> d = f.Next(*dead);
  ASSERT_TRUE(d.has_value());
  ASSERT_TRUE(dead->Nack(*d, absl::ZeroDuration(), NackKind::kFailed).ok());
  d = f.Next(*dead);  // redelivered to the same consumer (the only one fetching), then it dies
  ASSERT_TRUE(d.has_value());
  ASSERT_EQ(d->failed_attempts, 1);

  const absl::Duration idle = GetParam().reclaim_idle;
  f.LetTimePass(idle);
  std::vector<Delivery> reclaimed;
  const absl::Time deadline = absl::Now() + f.patience();
  while (reclaimed.empty() && absl::Now() < deadline) {
    auto got = alive->Reclaim(idle, 1);
    ASSERT_TRUE(got.ok()) << got.status();
    reclaimed = *std::move(got);
    if (reclaimed.empty()) {
      auto fetched = alive->Fetch(1, GetParam().fetch_wait);
      ASSERT_TRUE(fetched.ok()) << fetched.status();
      reclaimed = *std::move(fetched);
    }
  }
  ASSERT_EQ(reclaimed.size(), 1u);
  EXPECT_EQ(reclaimed[0].id, d->id);
  EXPECT_EQ(reclaimed[0].delivery_count, 3);
  EXPECT_EQ(reclaimed[0].failed_attempts, 1) << "the failed-attempt count is the event's";
  ASSERT_TRUE(alive->Ack(reclaimed[0]).ok());
}

}  // namespace
}  // namespace eventbus::conformance
