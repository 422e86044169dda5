#pragma once
// What the executor reports about its work. The service binds it to Prometheus; the default
// does nothing. Implementations must be thread-safe.

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#pragma GCC visibility push(default)

namespace eventbus::executor {

// Outcomes of one delivery, the `outcome` label.
inline constexpr absl::string_view kOutcomeSucceeded = "succeeded";
inline constexpr absl::string_view kOutcomeFailed = "failed";        // dead-lettered by a handler failure
inline constexpr absl::string_view kOutcomeRetried = "retried";      // transient, will run again
inline constexpr absl::string_view kOutcomeDelayed = "delayed";      // asked for a later redelivery
inline constexpr absl::string_view kOutcomeInvalid = "invalid";      // malformed request, dead-lettered
inline constexpr absl::string_view kOutcomeAbandoned = "abandoned";  // given back at shutdown
inline constexpr absl::string_view kOutcomeCancelled = "cancelled";  // cancelled through the task store
// Out of attempts on this tier and handed to the next one (ExecutorOptions::escalate_to).
inline constexpr absl::string_view kOutcomeEscalated = "escalated";
// Redelivered after it had succeeded (task store): settled with the stored result, not run.
inline constexpr absl::string_view kOutcomeDuplicate = "duplicate";
// Every `outcome` label value, so exporters can create each series at zero up front.
inline constexpr absl::string_view kOutcomes[] = {kOutcomeSucceeded, kOutcomeFailed,
                                                  kOutcomeRetried,   kOutcomeDelayed,
                                                  kOutcomeInvalid,   kOutcomeAbandoned,
                                                  kOutcomeCancelled, kOutcomeDuplicate,
                                                  kOutcomeEscalated};
// The `type` label for requests whose type is not registered (bounded label cardinality).
inline constexpr absl::string_view kUnknownTypeLabel = "_unknown";
// The `operation` label of BackendError.
inline constexpr absl::string_view kBackendFetch = "fetch";
inline constexpr absl::string_view kBackendReclaim = "reclaim";

class ExecutorMetrics {
 public:
  virtual ~ExecutorMetrics() = default;
  // One handler run (or one rejected request) ended with `outcome`; `duration` is the run time.
  virtual void TaskFinished(absl::string_view type, absl::string_view outcome,
                            absl::Duration duration) {}
  // A transient failure was scheduled for another attempt after `backoff`.
  virtual void TaskRetried(absl::string_view type, absl::Duration backoff) {}
  // A delivery went to the dead-letter stream.
  virtual void TaskDeadLettered(absl::string_view type) {}
  // A result event was published (`status` "succeeded" or "failed").
  virtual void ResultPublished(absl::string_view status) {}
  // The number of deliveries held by this executor (running or queued) changed.
  virtual void InFlightChanged(int in_flight) {}
  // A fetch returned a delivery that had waited `lag` since it was published.
  virtual void FetchLag(absl::Duration lag) {}
  // A fetch or reclaim against the backend failed.
  virtual void BackendError(absl::string_view operation) {}
};

}  // namespace eventbus::executor

#pragma GCC visibility pop
