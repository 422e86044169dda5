#include "eventbus/clock.h"

#include <utility>

#include "absl/time/clock.h"

namespace eventbus {
namespace {

class NoopListener final : public ClockListener {};

class RealClock final : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
  std::unique_ptr<ClockListener> OnAdvance(std::function<void()>) override {
    return std::make_unique<NoopListener>();
  }
};

}  // namespace

Clock* Clock::Real() {
  static RealClock* clock = new RealClock();
  return clock;
}

class ManualClock::Registration final : public ClockListener {
 public:
  Registration(ManualClock* clock, uint64_t id) : clock_(clock), id_(id) {}
  ~Registration() override { clock_->Unregister(id_); }

 private:
  ManualClock* clock_;
  uint64_t id_;
};

ManualClock::ManualClock(absl::Time start) : now_(start) {}

absl::Time ManualClock::Now() const {
  std::lock_guard lock(time_mu_);
  return now_;
}

std::unique_ptr<ClockListener> ManualClock::OnAdvance(std::function<void()> on_advance) {
  std::lock_guard lock(listeners_mu_);
  const uint64_t id = next_id_++;
  listeners_.emplace(id, std::move(on_advance));
  return std::make_unique<Registration>(this, id);
}

void ManualClock::Unregister(uint64_t id) {
  std::lock_guard lock(listeners_mu_);
  listeners_.erase(id);
}

void ManualClock::Advance(absl::Duration d) {
  if (d < absl::ZeroDuration()) d = absl::ZeroDuration();
  std::lock_guard listeners_lock(listeners_mu_);
  {
    std::lock_guard lock(time_mu_);
    now_ += d;
  }
  for (auto& [id, listener] : listeners_) listener();
}

}  // namespace eventbus
