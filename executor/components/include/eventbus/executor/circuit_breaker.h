#pragma once
// A circuit breaker per outbound host, on the injectable eventbus::Clock (tests run it in
// virtual time).
//
//   closed --(failure_threshold consecutive failures)--> open
//   open --(open_duration elapsed; checked lazily on the next Acquire/state)--> half-open
//   half-open: at most half_open_max_probes calls in flight at once;
//     success_threshold successes --> closed, any failure --> open (cool-down restarts)
//
// Usage:
//   EVENTBUS_ASSIGN_OR_RETURN(CircuitBreaker::Permit permit, breaker->Acquire());
//   auto response = client.Send(request);
//   if (host_is_unhealthy) permit.RecordFailure(); else permit.RecordSuccess();
//
// What counts as a failure is the caller's choice. The executor counts transport errors
// (IsTransientHttpError) and transient HTTP statuses (5xx/408/429); a 404 means the host is
// up. A Permit dropped without a record (e.g. the task was cancelled) releases its probe slot
// and changes nothing.
//
// Outcomes are only counted for the state they were acquired in: a slow call started while
// closed that fails after the breaker already opened, or succeeds while a new half-open probe
// is in flight, does not move the state again.

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "eventbus/clock.h"

#pragma GCC visibility push(default)

namespace eventbus::executor {

enum class CircuitState { kClosed, kOpen, kHalfOpen };

// "closed", "open", "half_open" (for logs and metric labels).
absl::string_view CircuitStateName(CircuitState state);

struct CircuitBreakerOptions {
  // Consecutive failures (while closed) that open the circuit. >= 1.
  int failure_threshold = 5;
  // How long an open circuit rejects calls before letting probes through. > 0.
  absl::Duration open_duration = absl::Seconds(30);
  // Calls allowed in flight at once while half-open. >= 1.
  int half_open_max_probes = 1;
  // Successful probes needed to close again. >= 1.
  int success_threshold = 1;

  // InvalidArgument naming the field that is out of range.
  absl::Status Validate() const;
};

// Called on every state change with the host, the old and the new state. It runs on the
// thread that caused the change, while the breaker's lock is held (so a metrics gauge sees
// changes in order): it must be quick and must not call into any breaker or the registry.
using CircuitStateCallback =
    std::function<void(absl::string_view host, CircuitState from, CircuitState to)>;

// Thread-safe.
class CircuitBreaker : public std::enable_shared_from_this<CircuitBreaker> {
 private:
  enum Outcome { kReleased, kSuccess, kFailure };

 public:
  // Permission for one call. Move-only; record at most one outcome. Keeps the breaker alive.
  class [[nodiscard]] Permit {
   public:
    Permit(Permit&& other) noexcept;
    Permit& operator=(Permit&& other) noexcept;
    Permit(const Permit&) = delete;
    Permit& operator=(const Permit&) = delete;
    ~Permit();  // releases without an outcome if none was recorded

    void RecordSuccess();
    void RecordFailure();

   private:
    friend class CircuitBreaker;
    Permit(std::shared_ptr<CircuitBreaker> breaker, uint64_t generation, bool probe)
        : breaker_(std::move(breaker)), generation_(generation), probe_(probe) {}
    void Finish(Outcome outcome);

    std::shared_ptr<CircuitBreaker> breaker_;  // null once an outcome was recorded
    uint64_t generation_ = 0;
    bool probe_ = false;
  };

  // Must be held by a std::shared_ptr (use Create). `clock` must outlive the breaker.
  // InvalidArgument if `options` do not validate.
  static absl::StatusOr<std::shared_ptr<CircuitBreaker>> Create(
      std::string host, CircuitBreakerOptions options, Clock* clock,
      CircuitStateCallback on_state_change = nullptr);

  // OK with a Permit when a call may go ahead. Unavailable ("circuit open for host X, ...")
  // while open, or while half-open with every probe slot taken; the message says when the
  // next probe may go.
  absl::StatusOr<Permit> Acquire();

  // The current state (an open circuit whose cool-down has elapsed reports, and becomes,
  // half-open).
  CircuitState state();
  const std::string& host() const { return host_; }

 private:
  friend class CircuitBreakerRegistry;

  CircuitBreaker(std::string host, CircuitBreakerOptions options, Clock* clock,
                 CircuitStateCallback on_state_change);
  void Finish(uint64_t generation, bool probe, Outcome outcome);
  // Both need mu_ held.
  void MaybeHalfOpenLocked();
  void TransitionLocked(CircuitState to);
  // Closed, no failure counted, nothing in flight: forgetting it loses no information.
  bool Idle();

  const std::string host_;
  const CircuitBreakerOptions options_;
  Clock* const clock_;
  const CircuitStateCallback on_state_change_;

  // std::mutex, as in core: Debian's Abseil is not built for TSan (false races on absl::Mutex).
  std::mutex mu_;  // guards everything below
  CircuitState state_ = CircuitState::kClosed;
  // Bumped on every transition; a Permit's outcome counts only in its own generation.
  uint64_t generation_ = 0;
  int consecutive_failures_ = 0;
  int probes_in_flight_ = 0;
  int probe_successes_ = 0;
  int permits_outstanding_ = 0;
  absl::Time open_until_;
};

// One breaker per host key (use HttpHostKey from http_client.h), created on first use with
// shared options. Thread-safe.
class CircuitBreakerRegistry {
 public:
  struct Options {
    CircuitBreakerOptions breaker;
    // Beyond this many hosts, breakers that are closed with no recent failure are forgotten
    // (tasks may name any URL; memory stays bounded). >= 1.
    size_t max_hosts = 10'000;
  };

  // InvalidArgument if `options` do not validate. `clock` must outlive the registry and
  // every breaker it handed out.
  static absl::StatusOr<std::unique_ptr<CircuitBreakerRegistry>> Create(
      Options options, Clock* clock, CircuitStateCallback on_state_change = nullptr);

  // The breaker for `host`, created closed on first use. Never null.
  std::shared_ptr<CircuitBreaker> ForHost(absl::string_view host);

  // Every known host with its current state, sorted by host (for /metrics and tests).
  std::vector<std::pair<std::string, CircuitState>> Snapshot();

 private:
  CircuitBreakerRegistry(Options options, Clock* clock, CircuitStateCallback on_state_change);

  const Options options_;
  Clock* const clock_;
  const CircuitStateCallback on_state_change_;

  std::mutex mu_;  // guards breakers_
  absl::flat_hash_map<std::string, std::shared_ptr<CircuitBreaker>> breakers_;
};

}  // namespace eventbus::executor

#pragma GCC visibility pop
