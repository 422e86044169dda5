#include "eventbus/executor/retry_policy.h"

#include <algorithm>
#include <cmath>
#include <mutex>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"

namespace eventbus::executor {
namespace {

class BitGenRandomSource final : public RandomSource {
 public:
  double Uniform01() override {
    std::lock_guard<std::mutex> lock(mu_);
    return absl::Uniform<double>(gen_, 0.0, 1.0);
  }

 private:
  std::mutex mu_;
  absl::BitGen gen_;  // guarded by mu_
};

}  // namespace

std::unique_ptr<RandomSource> NewDefaultRandomSource() {
  return std::make_unique<BitGenRandomSource>();
}

absl::Status RetryPolicy::Validate() const {
  if (max_attempts < 1 || max_attempts > 1000) {
    return absl::InvalidArgumentError(
        absl::StrCat("retry max_attempts must be in [1, 1000], got ", max_attempts));
  }
  if (initial_backoff < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("retry initial_backoff must not be negative");
  }
  if (max_backoff < initial_backoff) {
    return absl::InvalidArgumentError(absl::StrCat(
        "retry max_backoff (", absl::FormatDuration(max_backoff),
        ") must not be shorter than initial_backoff (", absl::FormatDuration(initial_backoff), ")"));
  }
  if (!(multiplier >= 1.0) || !std::isfinite(multiplier)) {
    return absl::InvalidArgumentError(
        absl::StrCat("retry multiplier must be a number >= 1, got ", multiplier));
  }
  if (!(jitter >= 0.0 && jitter <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("retry jitter must be in [0, 1], got ", jitter));
  }
  return absl::OkStatus();
}

absl::Duration RetryPolicy::Backoff(int failed_attempt, RandomSource& random) const {
  const int exponent = std::max(0, failed_attempt - 1);
  // Computed in seconds as a double: multiplier^exponent may exceed any Duration; the cap
  // applies before converting back.
  const double cap = absl::ToDoubleSeconds(max_backoff);
  double base = absl::ToDoubleSeconds(initial_backoff) * std::pow(multiplier, exponent);
  if (!std::isfinite(base) || base > cap) base = cap;
  double delay = base;
  if (jitter > 0) {
    const double r = std::clamp(random.Uniform01(), 0.0, 1.0);
    delay = base * (1.0 - jitter + 2.0 * jitter * r);
  }
  delay = std::clamp(delay, 0.0, cap);
  // Whole microseconds keep schedules exact and comparable in tests.
  return absl::Microseconds(std::llround(delay * 1e6));
}

}  // namespace eventbus::executor
