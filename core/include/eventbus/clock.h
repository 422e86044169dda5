#pragma once
// Time for everything time-dependent (delays, leases, backoff, timeouts), injectable so tests
// run in virtual time without sleeping.

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"

#pragma GCC visibility push(default)

namespace eventbus {

// Keeps an advance listener registered; destroying it unregisters, and after the destructor
// returns the callback never runs again.
class ClockListener {
 public:
  virtual ~ClockListener() = default;
};

class Clock {
 public:
  virtual ~Clock() = default;

  // Thread-safe.
  virtual absl::Time Now() const = 0;

  // Registers `on_advance` to run after every jump of this clock (ManualClock::Advance), so
  // code that waits for a time (a delayed redelivery, a timeout) can re-check at once. The
  // real clock never calls it. The callback runs on the advancing thread and must not call
  // back into the clock. Thread-safe.
  [[nodiscard]] virtual std::unique_ptr<ClockListener> OnAdvance(
      std::function<void()> on_advance) = 0;

  // The process-wide wall clock. Never null, never destroyed.
  static Clock* Real();
};

// A virtual clock that moves only when told. Thread-safe.
class ManualClock final : public Clock {
 public:
  // Starts at a fixed, arbitrary instant so test output is reproducible.
  explicit ManualClock(absl::Time start = absl::FromUnixSeconds(1'700'000'000));

  absl::Time Now() const override;
  std::unique_ptr<ClockListener> OnAdvance(std::function<void()> on_advance) override;

  // Moves time forward by `d` (>= 0) and runs every listener before returning.
  void Advance(absl::Duration d);

 private:
  class Registration;
  void Unregister(uint64_t id);

  // std::mutex rather than absl::Mutex throughout: Debian's Abseil is not built for
  // ThreadSanitizer, which then reports false races around absl::Mutex.
  mutable std::mutex time_mu_;
  absl::Time now_;  // guarded by time_mu_

  // Held while listeners run: unregistering waits for a running callback to finish.
  std::mutex listeners_mu_;
  uint64_t next_id_ = 1;  // guarded by listeners_mu_
  absl::flat_hash_map<uint64_t, std::function<void()>> listeners_;  // guarded by listeners_mu_
};

}  // namespace eventbus

#pragma GCC visibility pop
