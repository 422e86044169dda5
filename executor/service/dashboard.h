#pragma once
// The web dashboard (/ui) and the operator endpoints it reads: stream figures (GET
// /v1/streams), dead letters (GET /v1/dlq, POST /v1/dlq:redrive) and a snapshot a second as
// Server-Sent Events (GET /v1/dashboard/events). The page's files (executor/service/ui) are
// embedded in the binary; the /v1 endpoints sit behind the API token like the rest of /v1.

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "eventbus/event_stream.h"
#include "eventbus/executor/executor.h"
#include "eventbus/executor/metrics.h"
#include "eventbus/taskstore/task_store.h"

namespace eventbus::executor::service {

class HttpServer;
class HttpStream;
struct HttpResponse;
using HttpResponder = std::function<void(HttpResponse)>;

// Counts what the executor reports for the dashboard, and passes everything on to `next`.
class DashboardMetrics final : public ExecutorMetrics {
 public:
  explicit DashboardMetrics(ExecutorMetrics* next) : next_(next) {}

  void TaskFinished(absl::string_view type, absl::string_view outcome,
                    absl::Duration duration) override;
  void TaskRetried(absl::string_view type, absl::Duration backoff) override;
  void TaskDeadLettered(absl::string_view type) override;
  void ResultPublished(absl::string_view status) override { next_->ResultPublished(status); }
  void InFlightChanged(int in_flight) override { next_->InFlightChanged(in_flight); }
  void FetchLag(absl::Duration lag) override { next_->FetchLag(lag); }
  void BackendError(absl::string_view operation) override { next_->BackendError(operation); }

  struct Totals {
    int64_t succeeded = 0;
    int64_t failed = 0;
    int64_t dead_lettered = 0;
    int64_t retried = 0;
  };
  Totals totals() const;
  // The 50th and 99th percentile of the run times reported since the last call, in ms (zeros
  // when none), and starts a new window.
  std::pair<double, double> TakeLatencyPercentiles();

 private:
  ExecutorMetrics* const next_;
  std::atomic<int64_t> succeeded_{0}, failed_{0}, dead_lettered_{0}, retried_{0};
  std::mutex window_mu_;
  std::vector<double> window_ms_;  // guarded by window_mu_; bounded (every n-th kept beyond)
  uint64_t window_seen_ = 0;       // guarded by window_mu_
};

struct DashboardOptions {
  std::string instance;  // this executor's name (consumer name)
  std::string backend;   // EVENT_STREAM_TYPE
  std::string request_stream;
  std::string result_stream;
  std::string dead_letter_stream;
  int concurrency = 0;
  // How often live snapshots go out.
  absl::Duration snapshot_interval = absl::Seconds(1);
  // Open dashboard connections at most (each costs a stream read per snapshot... shared).
  int max_viewers = 32;
  // At most this many dead letters per GET /v1/dlq and per redrive request.
  int max_dead_letters = 500;
  // Redrive refuses events already redriven this many times.
  int max_redrives = 3;
};

class Dashboard {
 public:
  // The instance records in the task store (TaskStore::ListInstances at the clock's now).
  using InstanceLister = std::function<absl::StatusOr<std::vector<taskstore::InstanceRecord>>()>;

  // `stream`, `executor` and `metrics` are not owned and must outlive the dashboard; `ready`
  // tells whether the service can make progress (the /readyz verdict) and `task_stats`, when
  // set, gives the task store's figures as JSON text (GET /v1/stats), or "" without a store.
  // `instances`, set when there is a store, lists the fleet (the snapshot's `instances`).
  Dashboard(DashboardOptions options, EventStream* stream, const Executor* executor,
            DashboardMetrics* metrics, std::function<bool()> ready,
            std::function<std::string()> task_stats = nullptr, InstanceLister instances = nullptr);
  ~Dashboard();  // Stop()

  // Adds /ui, /ui/app.js, /ui/style.css, GET /v1/streams, GET /v1/dlq, POST /v1/dlq:redrive
  // and GET /v1/dashboard/events. Before the server starts.
  void AddRoutes(HttpServer& server);

  // Ends the live streams and joins the snapshot thread. Idempotent.
  void Stop();

  // The JSON of one snapshot (what /v1/dashboard/events sends each interval).
  std::string SnapshotJson();

 private:
  void SnapshotLoop();

  // Runs `work` (which reads or writes the broker) on a thread of its own, never on a server
  // thread. False when kMaxOperatorRequests already run or the dashboard stops.
  bool Offload(std::function<void()> work);
  static HttpResponse Busy();
  void Streams(const HttpResponder& respond);
  void DeadLetters(const std::string& query, const HttpResponder& respond);
  void Redrive(const std::string& body, const HttpResponder& respond);

  const DashboardOptions options_;
  EventStream* const stream_;
  const Executor* const executor_;
  DashboardMetrics* const metrics_;
  const std::function<bool()> ready_;
  const std::function<std::string()> task_stats_;
  const InstanceLister instances_;

  std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ = false;                            // guarded by mu_
  std::vector<std::shared_ptr<HttpStream>> viewers_;  // guarded by mu_
  bool new_viewer_ = false;                          // guarded by mu_: snapshot at once
  int offloaded_ = 0;                                // guarded by mu_: Offload threads running
  std::thread snapshots_;
};

}  // namespace eventbus::executor::service
