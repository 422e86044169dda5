#pragma once
// Shared fixtures of the executor's deterministic tests: a recording decorator around any
// EventStream (what the executor asked the backend to do, exactly), metrics and randomness
// that tests can read and fix, and waits on conditions with a real-time safety bound.
// std::mutex throughout (not absl::Mutex): Debian's Abseil is not TSan-instrumented.

#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "eventbus/event_stream.h"
#include "eventbus/executor/metrics.h"
#include "eventbus/executor/retry_policy.h"

namespace eventbus::executor::testing {

// Generous: only reached when the behaviour under test is broken.
inline constexpr absl::Duration kSafetyTimeout = absl::Seconds(20);

// A mutex and a condition variable notified after every Update: state that tests wait on.
class Monitor {
 public:
  // Runs `f` under the lock and wakes every waiter.
  template <typename F>
  void Update(F f) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      f();
    }
    cv_.notify_all();
  }
  // Runs `f` under the lock and returns its result.
  template <typename F>
  auto Read(F f) const {
    std::lock_guard<std::mutex> lock(mu_);
    return f();
  }
  // Waits until `condition` (checked under the lock) holds; false after `timeout`.
  bool Await(const std::function<bool()>& condition, absl::Duration timeout = kSafetyTimeout) const;
  // Waits for `condition` and, still under the same lock, runs `then` (take a ticket, ...).
  bool AwaitThen(const std::function<bool()>& condition, const std::function<void()>& then,
                 absl::Duration timeout = kSafetyTimeout);

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
};

// What the executor asked of its subscription, in order.
struct SubscriptionCall {
  enum class Op { kAck, kNack, kDeadLetter, kExtend, kFetch, kReclaim };
  Op op;
  std::string delivery_id;
  int delivery_count = 0;
  absl::Duration delay;  // nack
  bool failed = false;   // nack: NackKind::kFailed
  std::string reason;    // dead letter
  int max_events = 0;    // fetch / reclaim
};

class CallLog {
 public:
  void Add(SubscriptionCall call);
  std::vector<SubscriptionCall> Calls() const;
  std::vector<SubscriptionCall> Calls(SubscriptionCall::Op op) const;
  int Count(SubscriptionCall::Op op) const;
  // Deliveries handed out and not yet settled (acked, nacked, dead-lettered), and the most
  // there ever were.
  int outstanding() const;
  int max_outstanding() const;
  void AddFetched(int n);
  // Waits until `count(op) >= n`; false after kSafetyTimeout.
  bool AwaitCount(SubscriptionCall::Op op, int n, absl::Duration timeout = kSafetyTimeout) const;

  // While `status` is an error, Fetch returns it without asking the backend (a backend that
  // is down or refuses); OK lets fetches through again.
  void FailFetches(absl::Status status);
  absl::Status fetch_failure() const;
  void AddFailedFetch();
  // Waits until at least `n` fetches failed by FailFetches; false after kSafetyTimeout.
  bool AwaitFailedFetches(int n, absl::Duration timeout = kSafetyTimeout) const;

  // Every Reclaim call, also those that found nothing (kReclaim records only the fruitful).
  void AddReclaimAttempt();
  int reclaim_attempts() const;
  bool AwaitReclaimAttempts(int n, absl::Duration timeout = kSafetyTimeout) const;

 private:
  Monitor monitor_;
  absl::Status fetch_failure_;
  int failed_fetches_ = 0;
  int reclaim_attempts_ = 0;
  std::vector<SubscriptionCall> calls_;
  int outstanding_ = 0;
  int max_outstanding_ = 0;
};

// Forwards everything to `inner`, recording each settling call in `log` once the inner call
// returned (so a test that sees the record may rely on its effect).
// `max_event_bytes` > 0 lowers the declared event size limit (Publish refuses larger events).
std::unique_ptr<EventStream> NewRecordingStream(EventStream* inner, CallLog* log,
                                                size_t max_event_bytes = 0);

class FixedRandom final : public RandomSource {
 public:
  explicit FixedRandom(double value) : value_(value) {}
  double Uniform01() override { return value_; }

 private:
  double value_;
};

class RecordingMetrics final : public ExecutorMetrics {
 public:
  void TaskFinished(absl::string_view type, absl::string_view outcome,
                    absl::Duration duration) override;
  void TaskRetried(absl::string_view type, absl::Duration backoff) override;
  void TaskDeadLettered(absl::string_view type) override;
  void ResultPublished(absl::string_view status) override;
  void InFlightChanged(int in_flight) override;

  int finished(absl::string_view type, absl::string_view outcome) const;
  int retried(absl::string_view type) const;
  int dead_lettered(absl::string_view type) const;
  int results(absl::string_view status) const;
  int max_in_flight() const;
  // Waits until the executor reports `n` deliveries in flight. The executor reports it after
  // everything else about a delivery, so in_flight 0 means every metric above is final.
  bool AwaitInFlight(int n, absl::Duration timeout = kSafetyTimeout) const;

 private:
  int Count(const std::string& key) const;

  Monitor monitor_;
  std::map<std::string, int> counts_;
  int in_flight_ = 0;
  int max_in_flight_ = 0;
};

// Reads a stream as its own consumer group and keeps everything it saw.
class StreamReader {
 public:
  // `stream` must outlive the reader.
  StreamReader(EventStream* stream, std::string stream_name);
  ~StreamReader();

  // Waits until at least `n` events were read (acking each); returns them all. Fails the
  // test (and returns what there is) after `timeout`.
  std::vector<Event> AwaitEvents(size_t n, absl::Duration timeout = kSafetyTimeout);

 private:
  std::unique_ptr<Subscription> subscription_;
  std::vector<Event> events_;
};


}  // namespace eventbus::executor::testing
