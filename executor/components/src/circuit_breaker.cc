#include "eventbus/executor/circuit_breaker.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace eventbus::executor {

absl::string_view CircuitStateName(CircuitState state) {
  switch (state) {
    case CircuitState::kClosed:
      return "closed";
    case CircuitState::kOpen:
      return "open";
    case CircuitState::kHalfOpen:
      return "half_open";
  }
  return "unknown";
}

absl::Status CircuitBreakerOptions::Validate() const {
  if (failure_threshold < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("circuit breaker failure_threshold must be >= 1, got ", failure_threshold));
  }
  if (open_duration <= absl::ZeroDuration() || open_duration == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("circuit breaker open_duration must be positive and finite, got ",
                     absl::FormatDuration(open_duration)));
  }
  if (half_open_max_probes < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "circuit breaker half_open_max_probes must be >= 1, got ", half_open_max_probes));
  }
  if (success_threshold < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("circuit breaker success_threshold must be >= 1, got ", success_threshold));
  }
  return absl::OkStatus();
}

// --- Permit ---------------------------------------------------------------------------------

CircuitBreaker::Permit::Permit(Permit&& other) noexcept
    : breaker_(std::move(other.breaker_)),
      generation_(other.generation_),
      probe_(other.probe_) {
  other.breaker_ = nullptr;
}

CircuitBreaker::Permit& CircuitBreaker::Permit::operator=(Permit&& other) noexcept {
  if (this != &other) {
    Finish(kReleased);
    breaker_ = std::move(other.breaker_);
    other.breaker_ = nullptr;
    generation_ = other.generation_;
    probe_ = other.probe_;
  }
  return *this;
}

CircuitBreaker::Permit::~Permit() { Finish(kReleased); }

void CircuitBreaker::Permit::RecordSuccess() { Finish(kSuccess); }
void CircuitBreaker::Permit::RecordFailure() { Finish(kFailure); }

void CircuitBreaker::Permit::Finish(Outcome outcome) {
  if (breaker_ == nullptr) return;
  std::shared_ptr<CircuitBreaker> breaker = std::move(breaker_);
  breaker_ = nullptr;
  breaker->Finish(generation_, probe_, outcome);
}

// --- CircuitBreaker -------------------------------------------------------------------------

absl::StatusOr<std::shared_ptr<CircuitBreaker>> CircuitBreaker::Create(
    std::string host, CircuitBreakerOptions options, Clock* clock,
    CircuitStateCallback on_state_change) {
  if (clock == nullptr) return absl::InvalidArgumentError("circuit breaker needs a clock");
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  return std::shared_ptr<CircuitBreaker>(
      new CircuitBreaker(std::move(host), options, clock, std::move(on_state_change)));
}

CircuitBreaker::CircuitBreaker(std::string host, CircuitBreakerOptions options, Clock* clock,
                               CircuitStateCallback on_state_change)
    : host_(std::move(host)),
      options_(options),
      clock_(clock),
      on_state_change_(std::move(on_state_change)) {}

void CircuitBreaker::TransitionLocked(CircuitState to) {
  const CircuitState from = state_;
  state_ = to;
  ++generation_;
  consecutive_failures_ = 0;
  probes_in_flight_ = 0;
  probe_successes_ = 0;
  if (to == CircuitState::kOpen) open_until_ = clock_->Now() + options_.open_duration;
  if (on_state_change_ && from != to) on_state_change_(host_, from, to);
}

void CircuitBreaker::MaybeHalfOpenLocked() {
  if (state_ == CircuitState::kOpen && clock_->Now() >= open_until_) {
    TransitionLocked(CircuitState::kHalfOpen);
  }
}

absl::StatusOr<CircuitBreaker::Permit> CircuitBreaker::Acquire() {
  std::lock_guard<std::mutex> lock(mu_);
  MaybeHalfOpenLocked();
  switch (state_) {
    case CircuitState::kClosed:
      ++permits_outstanding_;
      return Permit(shared_from_this(), generation_, /*probe=*/false);
    case CircuitState::kOpen:
      return absl::UnavailableError(absl::StrCat(
          "circuit open for host ", host_, " after ", options_.failure_threshold,
          " consecutive failures; next probe in ",
          absl::FormatDuration(std::max(absl::ZeroDuration(), open_until_ - clock_->Now()))));
    case CircuitState::kHalfOpen:
      if (probes_in_flight_ >= options_.half_open_max_probes) {
        return absl::UnavailableError(
            absl::StrCat("circuit half-open for host ", host_, ": ", probes_in_flight_,
                         " probe call(s) in flight, waiting for their outcome"));
      }
      ++probes_in_flight_;
      ++permits_outstanding_;
      return Permit(shared_from_this(), generation_, /*probe=*/true);
  }
  return absl::InternalError("circuit breaker in an unknown state");
}

void CircuitBreaker::Finish(uint64_t generation, bool probe, Outcome outcome) {
  std::lock_guard<std::mutex> lock(mu_);
  --permits_outstanding_;
  // A permit from an earlier state saw a host that may have changed since: ignore its outcome.
  if (generation != generation_) return;
  if (probe) --probes_in_flight_;
  switch (state_) {
    case CircuitState::kClosed:
      if (outcome == kSuccess) {
        consecutive_failures_ = 0;
      } else if (outcome == kFailure &&
                 ++consecutive_failures_ >= options_.failure_threshold) {
        TransitionLocked(CircuitState::kOpen);
      }
      break;
    case CircuitState::kHalfOpen:
      if (outcome == kFailure) {
        TransitionLocked(CircuitState::kOpen);
      } else if (outcome == kSuccess && ++probe_successes_ >= options_.success_threshold) {
        TransitionLocked(CircuitState::kClosed);
      }
      break;
    case CircuitState::kOpen:
      // Unreachable: opening bumps the generation and no permit is issued while open.
      break;
  }
}

CircuitState CircuitBreaker::state() {
  std::lock_guard<std::mutex> lock(mu_);
  MaybeHalfOpenLocked();
  return state_;
}

bool CircuitBreaker::Idle() {
  std::lock_guard<std::mutex> lock(mu_);
  return state_ == CircuitState::kClosed && consecutive_failures_ == 0 &&
         permits_outstanding_ == 0;
}

// --- CircuitBreakerRegistry -----------------------------------------------------------------

absl::StatusOr<std::unique_ptr<CircuitBreakerRegistry>> CircuitBreakerRegistry::Create(
    Options options, Clock* clock, CircuitStateCallback on_state_change) {
  if (clock == nullptr) return absl::InvalidArgumentError("circuit breaker registry needs a clock");
  if (absl::Status s = options.breaker.Validate(); !s.ok()) return s;
  if (options.max_hosts < 1) {
    return absl::InvalidArgumentError("circuit breaker registry max_hosts must be >= 1");
  }
  return std::unique_ptr<CircuitBreakerRegistry>(
      new CircuitBreakerRegistry(std::move(options), clock, std::move(on_state_change)));
}

CircuitBreakerRegistry::CircuitBreakerRegistry(Options options, Clock* clock,
                                               CircuitStateCallback on_state_change)
    : options_(std::move(options)), clock_(clock), on_state_change_(std::move(on_state_change)) {}

std::shared_ptr<CircuitBreaker> CircuitBreakerRegistry::ForHost(absl::string_view host) {
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = breakers_.find(host); it != breakers_.end()) return it->second;
  if (breakers_.size() >= options_.max_hosts) {
    // Only healthy, idle breakers are forgotten: an open circuit keeps protecting its host.
    absl::erase_if(breakers_, [](const auto& entry) { return entry.second->Idle(); });
  }
  std::shared_ptr<CircuitBreaker> breaker(
      new CircuitBreaker(std::string(host), options_.breaker, clock_, on_state_change_));
  breakers_.emplace(std::string(host), breaker);
  return breaker;
}

std::vector<std::pair<std::string, CircuitState>> CircuitBreakerRegistry::Snapshot() {
  std::vector<std::shared_ptr<CircuitBreaker>> breakers;
  {
    std::lock_guard<std::mutex> lock(mu_);
    breakers.reserve(breakers_.size());
    for (const auto& [host, breaker] : breakers_) breakers.push_back(breaker);
  }
  std::vector<std::pair<std::string, CircuitState>> snapshot;
  snapshot.reserve(breakers.size());
  for (const auto& breaker : breakers) snapshot.emplace_back(breaker->host(), breaker->state());
  std::sort(snapshot.begin(), snapshot.end());
  return snapshot;
}

}  // namespace eventbus::executor
