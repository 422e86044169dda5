#include "instance_heartbeat.h"

#include <algorithm>
#include <utility>

namespace eventbus::executor::service {
namespace {

// A real-time wait never sleeps longer than this between looks at the clock.
constexpr absl::Duration kMaxRealWait = absl::Milliseconds(100);

}  // namespace

bool IsStale(const taskstore::InstanceRecord& record, absl::Time now) {
  return now - record.last_seen > kInstanceStaleIntervals * record.heartbeat_interval;
}

InstanceHeartbeat::InstanceHeartbeat(absl::Duration interval, taskstore::TaskStore* store,
                                     Clock* clock,
                                     std::function<taskstore::InstanceRecord()> sample,
                                     std::function<void(const absl::Status&)> on_error)
    : interval_(interval),
      store_(store),
      clock_(clock),
      sample_(std::move(sample)),
      on_error_(std::move(on_error)) {}

InstanceHeartbeat::~InstanceHeartbeat() { Stop(); }

absl::Status InstanceHeartbeat::Beat() {
  taskstore::InstanceRecord record = sample_();
  record.heartbeat_interval = interval_;
  {
    std::lock_guard lock(mu_);
    if (stopped_) return absl::FailedPreconditionError("instance heartbeat stopped");
    name_ = record.name;
  }
  return store_->PutInstance(record, clock_->Now(), kInstanceTtlIntervals * interval_);
}

void InstanceHeartbeat::Start() {
  clock_listener_ = clock_->OnAdvance([this] {
    // Taking the lock orders the wake-up after the loop's look at the clock: none is lost.
    { std::lock_guard lock(mu_); }
    wake_.notify_all();
  });
  thread_ = std::thread([this] { Loop(); });
}

void InstanceHeartbeat::Stop() {
  {
    std::lock_guard lock(mu_);
    if (stopped_) return;
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  clock_listener_.reset();
  std::string name;
  {
    std::lock_guard lock(mu_);
    stopped_ = true;
    name = name_;
  }
  if (name.empty()) return;  // never written
  if (absl::Status s = store_->DeleteInstance(name); !s.ok() && on_error_) on_error_(s);
}

void InstanceHeartbeat::Loop() {
  std::unique_lock lock(mu_);
  while (!stop_) {
    // Due an interval after this beat began (the scheduler's loop explains why).
    const absl::Time began = clock_->Now();
    lock.unlock();
    if (absl::Status s = Beat(); !s.ok() && on_error_) on_error_(s);
    lock.lock();
    const absl::Time until = began + interval_;
    while (!stop_) {
      const absl::Time now = clock_->Now();
      if (now >= until) break;
      wake_.wait_for(lock, absl::ToChronoNanoseconds(std::min(until - now, kMaxRealWait)));
    }
  }
}

}  // namespace eventbus::executor::service
