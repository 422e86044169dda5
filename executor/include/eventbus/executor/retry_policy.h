#pragma once
// Retries of transient failures: how many attempts, and how long to wait between them.

#include <memory>

#include "absl/status/status.h"
#include "absl/time/time.h"

#pragma GCC visibility push(default)

namespace eventbus::executor {

// Uniform numbers in [0, 1) for jitter. Injected so tests compute exact schedules.
// Implementations must be thread-safe: workers draw concurrently.
class RandomSource {
 public:
  virtual ~RandomSource() = default;
  virtual double Uniform01() = 0;
};

// A thread-safe source backed by absl::BitGen.
std::unique_ptr<RandomSource> NewDefaultRandomSource();

struct RetryPolicy {
  // Attempts in total, the first included (1 = never retry).
  int max_attempts = 3;
  // The wait after the first failed attempt; each further failure multiplies it.
  absl::Duration initial_backoff = absl::Seconds(1);
  double multiplier = 2.0;
  // No wait, jitter included, is ever longer than this.
  absl::Duration max_backoff = absl::Minutes(1);
  // Relative spread in [0, 1]: the wait is drawn uniformly from base * [1 - jitter, 1 + jitter)
  // so that tasks that failed together do not retry together.
  double jitter = 0.2;

  // InvalidArgument naming the field: max_attempts in [1, 1000], backoffs >= 0 and
  // initial <= max, multiplier >= 1, jitter in [0, 1].
  absl::Status Validate() const;

  // The delay before the next attempt after attempt `failed_attempt` (1-based) failed:
  // min(max_backoff, initial_backoff * multiplier^(failed_attempt - 1)) with jitter applied,
  // then capped at max_backoff again. Consumes one number from `random` when jitter > 0.
  absl::Duration Backoff(int failed_attempt, RandomSource& random) const;

  // Whether another attempt is allowed after `failed_attempt` failed.
  bool ShouldRetry(int failed_attempt) const { return failed_attempt < max_attempts; }
};

}  // namespace eventbus::executor

#pragma GCC visibility pop
