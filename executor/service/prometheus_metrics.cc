#include "prometheus_metrics.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include "eventbus/executor/task.h"
#ifdef EVENTBUS_EXECUTOR_HAS_COMPONENTS
#include "eventbus/executor/circuit_breaker.h"
#endif

namespace eventbus::executor::service {

using prometheus::Counter;
using prometheus::Family;
using prometheus::Gauge;
using prometheus::Histogram;

struct PrometheusMetrics::Families {
  explicit Families(prometheus::Registry& r)
      : tasks(prometheus::BuildCounter()
                  .Name("eventbus_executor_tasks_total")
                  .Help("Handler runs (and rejected requests) by task type and outcome: "
                        "succeeded, failed, retried, delayed, invalid, abandoned, cancelled, "
                        "duplicate, escalated")
                  .Register(r)),
        duration(prometheus::BuildHistogram()
                     .Name("eventbus_executor_task_duration_seconds")
                     .Help("Handler run time by task type")
                     .Register(r)),
        retries(prometheus::BuildCounter()
                    .Name("eventbus_executor_retries_total")
                    .Help("Transient failures scheduled for another attempt, by task type")
                    .Register(r)),
        dead_letters(prometheus::BuildCounter()
                         .Name("eventbus_executor_dead_letters_total")
                         .Help("Deliveries moved to the dead-letter stream, by task type")
                         .Register(r)),
        results(prometheus::BuildCounter()
                    .Name("eventbus_executor_results_published_total")
                    .Help("Result events published, by status")
                    .Register(r)),
        in_flight(prometheus::BuildGauge()
                      .Name("eventbus_executor_in_flight")
                      .Help("Deliveries held by this executor (queued or running)")
                      .Register(r)
                      .Add({})),
        fetch_lag(prometheus::BuildHistogram()
                      .Name("eventbus_executor_fetch_lag_seconds")
                      .Help("Time from publishing a task request to its first fetch")
                      .Register(r)
                      .Add({}, Histogram::BucketBoundaries{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1,
                                                           5, 10, 60, 300})),
        backend_errors(prometheus::BuildCounter()
                           .Name("eventbus_executor_backend_errors_total")
                           .Help("Failed fetch/reclaim calls to the event stream, by operation")
                           .Register(r)),
        submitted(prometheus::BuildCounter()
                      .Name("eventbus_executor_tasks_submitted_total")
                      .Help("Tasks accepted by POST /v1/tasks, by task type")
                      .Register(r)),
        circuit(prometheus::BuildCounter()
                    .Name("eventbus_executor_circuit_transitions_total")
                    .Help("Circuit breaker state changes of outbound HTTP hosts, by new state")
                    .Register(r)),
        stored(prometheus::BuildGauge()
                   .Name("eventbus_executor_tasks_stored")
                   .Help("Tasks in the task store, by type and state (GET /v1/stats), as of "
                         "this scrape")
                   .Register(r)),
        oldest_queued(prometheus::BuildGauge()
                          .Name("eventbus_executor_oldest_queued_age_seconds")
                          .Help("Age of the oldest queued task in the task store, by type (0 "
                                "when none is queued)")
                          .Register(r)),
        stuck_requeued(prometheus::BuildCounter()
                           .Name("eventbus_executor_stuck_tasks_requeued_total")
                           .Help("Tasks found running in the task store past their timeout plus "
                                 "EXECUTOR_STUCK_GRACE, with no consumer holding their delivery, "
                                 "and re-queued by this executor's scheduler, by task type")
                           .Register(r)),
        heartbeat_failures(prometheus::BuildCounter()
                               .Name("eventbus_executor_instance_heartbeat_failures_total")
                               .Help("Writes (and the removal at shutdown) of this instance's "
                                     "record in the task store that failed (the dashboard's "
                                     "fleet view shows it stale, then not at all)")
                               .Register(r)
                               .Add({})),
        stuck_workers(prometheus::BuildGauge()
                          .Name("eventbus_executor_stuck_workers")
                          .Help("Worker threads held by handlers that overran their timeout")
                          .Register(r)
                          .Add({})),
        fetch_stalled(prometheus::BuildGauge()
                          .Name("eventbus_executor_fetch_stalled_seconds")
                          .Help("How long the executor has wanted events without a fetch "
                                "completing (backend failing or hanging); 0 when fetches complete")
                          .Register(r)
                          .Add({})),
        stalled(prometheus::BuildGauge()
                    .Name("eventbus_executor_stalled")
                    .Help("1 when the executor cannot make progress (every worker stuck, or no "
                          "fetch completed for the fetch stall timeout); /readyz answers 503 then")
                    .Register(r)
                    .Add({})) {
    for (TaskStatus status : {TaskStatus::kSucceeded, TaskStatus::kFailed}) {
      results.Add({{"status", std::string(TaskStatusName(status))}});
    }
    for (absl::string_view operation : {kBackendFetch, kBackendReclaim}) {
      backend_errors.Add({{"operation", std::string(operation)}});
    }
#ifdef EVENTBUS_EXECUTOR_HAS_COMPONENTS
    for (CircuitState state : {CircuitState::kClosed, CircuitState::kOpen, CircuitState::kHalfOpen}) {
      circuit.Add({{"state", std::string(CircuitStateName(state))}});
    }
#endif
  }

  Family<Counter>& tasks;
  Family<Histogram>& duration;
  Family<Counter>& retries;
  Family<Counter>& dead_letters;
  Family<Counter>& results;
  Gauge& in_flight;
  Histogram& fetch_lag;
  Family<Counter>& backend_errors;
  Family<Counter>& submitted;
  Family<Counter>& circuit;
  Family<Gauge>& stored;
  Family<Gauge>& oldest_queued;
  Family<Counter>& stuck_requeued;
  Counter& heartbeat_failures;
  Gauge& stuck_workers;
  Gauge& fetch_stalled;
  Gauge& stalled;
};

void PrometheusMetrics::StoredTasks(absl::string_view type, absl::string_view state,
                                    int64_t count) {
  families_->stored.Add({{"type", std::string(type)}, {"state", std::string(state)}})
      .Set(static_cast<double>(count));
}

void PrometheusMetrics::OldestQueuedAge(absl::string_view type, absl::Duration age) {
  families_->oldest_queued.Add({{"type", std::string(type)}}).Set(absl::ToDoubleSeconds(age));
}

namespace {

const Histogram::BucketBoundaries& DurationBuckets() {
  static const auto* buckets = new Histogram::BucketBoundaries{
      0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
  return *buckets;
}

}  // namespace

PrometheusMetrics::PrometheusMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      families_(std::make_unique<Families>(*registry_)) {}

PrometheusMetrics::~PrometheusMetrics() = default;

void PrometheusMetrics::TaskFinished(absl::string_view type, absl::string_view outcome,
                                     absl::Duration duration) {
  families_->tasks.Add({{"type", std::string(type)}, {"outcome", std::string(outcome)}})
      .Increment();
  families_->duration.Add({{"type", std::string(type)}}, DurationBuckets())
      .Observe(absl::ToDoubleSeconds(duration));
}

void PrometheusMetrics::Preregister(const std::vector<std::string>& task_types) {
  std::vector<std::string> types = task_types;
  types.emplace_back(kUnknownTypeLabel);
  for (const std::string& type : types) {
    // Requests of an unknown type only ever end invalid (and dead-lettered).
    const bool unknown = type == kUnknownTypeLabel;
    for (absl::string_view outcome : kOutcomes) {
      if (unknown && outcome != kOutcomeInvalid) continue;
      families_->tasks.Add({{"type", type}, {"outcome", std::string(outcome)}});
    }
    families_->dead_letters.Add({{"type", type}});
    families_->duration.Add({{"type", type}}, DurationBuckets());
    if (unknown) continue;
    families_->retries.Add({{"type", type}});
    families_->submitted.Add({{"type", type}});
    families_->stuck_requeued.Add({{"type", type}});
  }
}

void PrometheusMetrics::ProgressObserved(const ExecutorProgress& progress, bool stalled) {
  families_->stuck_workers.Set(progress.stuck_workers);
  families_->fetch_stalled.Set(absl::ToDoubleSeconds(progress.fetch_stalled_for));
  families_->stalled.Set(stalled ? 1 : 0);
}

void PrometheusMetrics::TaskRetried(absl::string_view type, absl::Duration) {
  families_->retries.Add({{"type", std::string(type)}}).Increment();
}

void PrometheusMetrics::TaskDeadLettered(absl::string_view type) {
  families_->dead_letters.Add({{"type", std::string(type)}}).Increment();
}

void PrometheusMetrics::ResultPublished(absl::string_view status) {
  families_->results.Add({{"status", std::string(status)}}).Increment();
}

void PrometheusMetrics::InFlightChanged(int in_flight) { families_->in_flight.Set(in_flight); }

void PrometheusMetrics::FetchLag(absl::Duration lag) {
  families_->fetch_lag.Observe(absl::ToDoubleSeconds(lag));
}

void PrometheusMetrics::BackendError(absl::string_view operation) {
  families_->backend_errors.Add({{"operation", std::string(operation)}}).Increment();
}

void PrometheusMetrics::TaskSubmitted(absl::string_view type, int count) {
  families_->submitted.Add({{"type", std::string(type)}}).Increment(count);
}

void PrometheusMetrics::InstanceHeartbeatFailed() { families_->heartbeat_failures.Increment(); }

void PrometheusMetrics::StuckTaskRequeued(absl::string_view type) {
  families_->stuck_requeued.Add({{"type", std::string(type)}}).Increment();
}

void PrometheusMetrics::CircuitChanged(absl::string_view to_state) {
  families_->circuit.Add({{"state", std::string(to_state)}}).Increment();
}

std::string PrometheusMetrics::Serialize() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace eventbus::executor::service
