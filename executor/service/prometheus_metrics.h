#pragma once
// ExecutorMetrics on prometheus-cpp, served as text by /metrics.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "eventbus/executor/executor.h"
#include "eventbus/executor/metrics.h"

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace eventbus::executor::service {

// Thread-safe.
class PrometheusMetrics final : public ExecutorMetrics {
 public:
  PrometheusMetrics();
  ~PrometheusMetrics() override;

  void TaskFinished(absl::string_view type, absl::string_view outcome,
                    absl::Duration duration) override;
  void TaskRetried(absl::string_view type, absl::Duration backoff) override;
  void TaskDeadLettered(absl::string_view type) override;
  void ResultPublished(absl::string_view status) override;
  void InFlightChanged(int in_flight) override;
  void FetchLag(absl::Duration lag) override;
  void BackendError(absl::string_view operation) override;

  // Creates every series docs/tasks.md lists, at zero, for these task types (plus the
  // unknown-type label), so dashboards and alerts see them before the first event. The series
  // without a type label exist from construction.
  void Preregister(const std::vector<std::string>& task_types);

  // The executor's progress right now: eventbus_executor_stuck_workers,
  // eventbus_executor_fetch_stalled_seconds, and eventbus_executor_stalled (1 when
  // Executor::CheckProgress fails).
  void ProgressObserved(const ExecutorProgress& progress, bool stalled);

  // Accepted by POST /v1/tasks or /v1/tasks:batch.
  void TaskSubmitted(absl::string_view type, int count = 1);
  void CircuitChanged(absl::string_view to_state);
  // The scheduler re-queued a stuck task (eventbus_executor_stuck_tasks_requeued_total).
  void StuckTaskRequeued(absl::string_view type);
  // A write or delete of this instance's heartbeat record failed
  // (eventbus_executor_instance_heartbeat_failures_total).
  void InstanceHeartbeatFailed();
  // The task store's figures (GET /v1/stats), set on every scrape of /metrics.
  void StoredTasks(absl::string_view type, absl::string_view state, int64_t count);
  void OldestQueuedAge(absl::string_view type, absl::Duration age);

  // The Prometheus text exposition format (version 0.0.4).
  std::string Serialize() const;

 private:
  struct Families;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Families> families_;
};

}  // namespace eventbus::executor::service
