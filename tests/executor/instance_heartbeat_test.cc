// The instance heartbeat on a virtual clock and the memory store: a beat at start, the next an
// interval later (never earlier), the record gone after Stop, and a failed write reported and
// tried again rather than ending the loop.

#include "instance_heartbeat.h"

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "absl/time/clock.h"
#include "eventbus/clock.h"
#include "eventbus/taskstore/memory_task_store.h"

namespace eventbus::executor::service {
namespace {

using taskstore::InstanceRecord;

constexpr absl::Duration kInterval = absl::Seconds(5);

class InstanceHeartbeatTest : public ::testing::Test {
 protected:
  InstanceRecord Sample() {
    InstanceRecord r;
    {
      std::lock_guard lock(mu_);
      r.name = name_;
    }
    r.in_flight = in_flight_.load();
    r.concurrency = 8;
    r.ready = true;
    return r;
  }

  std::unique_ptr<InstanceHeartbeat> Make() {
    return std::make_unique<InstanceHeartbeat>(
        kInterval, store_.get(), &clock_, [this] { return Sample(); },
        [this](const absl::Status& error) {
          std::lock_guard lock(mu_);
          errors_.push_back(error);
        });
  }

  // The record as the store lists it at the clock's now; nullopt when there is none.
  std::optional<InstanceRecord> Stored() {
    auto listed = store_->ListInstances(clock_.Now());
    EXPECT_TRUE(listed.ok()) << listed.status();
    if (!listed.ok() || listed->empty()) return std::nullopt;
    return listed->front();
  }

  // Waits (for the heartbeat's thread, not for time: the clock is virtual) until the stored
  // record was seen at `at`.
  bool AwaitBeatAt(absl::Time at) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (absl::Now() < deadline) {
      std::optional<InstanceRecord> r = Stored();
      if (r && r->last_seen == at) return true;
      std::this_thread::yield();
    }
    return false;
  }

  size_t ErrorCount() {
    std::lock_guard lock(mu_);
    return errors_.size();
  }

  ManualClock clock_;
  std::unique_ptr<taskstore::TaskStore> store_ = taskstore::NewMemoryTaskStore();
  std::string name_ = "exec-a";  // guarded by mu_ once the heartbeat runs
  std::atomic<int> in_flight_{0};
  std::mutex mu_;
  std::vector<absl::Status> errors_;  // guarded by mu_
};

TEST_F(InstanceHeartbeatTest, BeatsAtStartThenEveryIntervalAndRemovesItsRecordOnStop) {
  const absl::Time t0 = clock_.Now();
  auto heartbeat = Make();
  in_flight_ = 2;
  heartbeat->Start();
  ASSERT_TRUE(AwaitBeatAt(t0));
  std::optional<InstanceRecord> first = Stored();
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->name, "exec-a");
  EXPECT_EQ(first->in_flight, 2);
  EXPECT_EQ(first->heartbeat_interval, kInterval);
  EXPECT_EQ(first->expires_at, t0 + kInstanceTtlIntervals * kInterval);

  in_flight_ = 5;
  clock_.Advance(kInterval - absl::Milliseconds(1));
  EXPECT_EQ(Stored()->last_seen, t0) << "no beat before the interval is up";
  clock_.Advance(absl::Milliseconds(1));
  ASSERT_TRUE(AwaitBeatAt(t0 + kInterval));
  EXPECT_EQ(Stored()->in_flight, 5);

  heartbeat->Stop();
  EXPECT_FALSE(Stored().has_value()) << "a graceful stop removes the record";
  EXPECT_EQ(heartbeat->Beat().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ErrorCount(), 0u);
}

TEST_F(InstanceHeartbeatTest, StaleAfterTwoIntervalsAndGoneAfterTheTtl) {
  const absl::Time t0 = clock_.Now();
  auto heartbeat = Make();
  ASSERT_TRUE(heartbeat->Beat().ok());  // one beat, then silence (a hung or dead process)
  std::optional<InstanceRecord> r = Stored();
  ASSERT_TRUE(r.has_value());
  EXPECT_FALSE(IsStale(*r, t0 + 2 * kInterval));
  EXPECT_TRUE(IsStale(*r, t0 + 2 * kInterval + absl::Milliseconds(1)));
  clock_.Advance(kInstanceTtlIntervals * kInterval - absl::Milliseconds(1));
  EXPECT_TRUE(Stored().has_value());
  clock_.Advance(absl::Milliseconds(1));
  EXPECT_FALSE(Stored().has_value()) << "expired";
}

TEST_F(InstanceHeartbeatTest, AFailedWriteIsReportedAndTheNextIntervalTriesAgain) {
  const absl::Time t0 = clock_.Now();
  name_ = "";  // the store refuses a record without a name: a real error of the real store
  auto heartbeat = Make();
  heartbeat->Start();
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (ErrorCount() < 1 && absl::Now() < deadline) std::this_thread::yield();
  ASSERT_EQ(ErrorCount(), 1u);
  {
    std::lock_guard lock(mu_);
    EXPECT_EQ(errors_[0].code(), absl::StatusCode::kInvalidArgument) << errors_[0];
  }
  // Still beating: the next interval writes.
  {
    std::lock_guard lock(mu_);
    name_ = "exec-a";
  }
  clock_.Advance(kInterval);
  ASSERT_TRUE(AwaitBeatAt(t0 + kInterval));
  heartbeat->Stop();
  EXPECT_EQ(ErrorCount(), 1u);
}

}  // namespace
}  // namespace eventbus::executor::service
