#pragma once
// The eventbus-executor service: one event stream, a task store (EXECUTOR_STORE), the executor,
// and the HTTP endpoints (/healthz, /readyz, /metrics, POST /v1/tasks, POST /v1/tasks:batch,
// GET /v1/tasks/{id}, GET /v1/tasks/{id}/events (progress as Server-Sent Events),
// POST /v1/tasks/{id}:cancel, POST /v1/tasks/{id}:retry, GET /v1/stats,
// POST/GET /v1/schedules, GET/DELETE /v1/schedules/{id}; docs/tasks.md). With a task store it
// runs a scheduler (run-later tasks, recurring schedules) beside the executor.

#include <array>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "config.h"
#include "eventbus/event_stream.h"
#include "eventbus/executor/executor.h"
#include "eventbus/executor/handler.h"
#include "eventbus/executor/scheduler.h"
#include "eventbus/registry.h"
#include "eventbus/taskstore/task_store.h"
#include "json_log.h"
#include "dashboard.h"
#include "instance_heartbeat.h"
#include "prometheus_metrics.h"
#include "task_events.h"

namespace eventbus::executor::service {

class HttpServer;
struct HttpRequest;
struct HttpResponse;

// The payload of a 409 status naming the task that holds a unique key.
inline constexpr absl::string_view kExistingIdPayload = "eventbus.existing_task_id";

class Service {
 public:
  // `log` must outlive the service.
  Service(ServiceConfig config, Environment env, JsonLog* log);
  ~Service();  // Stop()

  // Before Start: runs `handler`'s task type beside the built-in ones (an embedding program's
  // own types; tests). AlreadyExists when the type is taken (Start then fails for a built-in
  // type).
  absl::Status RegisterHandler(std::unique_ptr<TaskHandler> handler);

  // Connects to the backend, starts the executor and the HTTP server. Errors name what failed
  // (the backend's configuration error, an address already in use, ...).
  absl::Status Start();

  // Graceful: stops taking new tasks over HTTP, shuts the executor down (running tasks finish
  // within the shutdown deadline, the rest are given back), flushes the stream. Idempotent.
  void Stop();

  // The port the HTTP server listens on (useful when configured with port 0).
  int http_port() const { return http_port_; }
  EventStream* stream() const { return stream_.get(); }
  // Null with EXECUTOR_STORE=none.
  taskstore::TaskStore* store() const { return store_.get(); }
  const ServiceConfig& config() const { return config_; }

  struct Submitted {
    std::string task_id;
    std::string event_id;  // empty for a task stored to run later (not published yet)
    absl::Time run_at = absl::InfinitePast();  // a run-later task's time
  };
  using SubmitCallback = std::function<void(absl::StatusOr<Submitted>)>;
  // What POST /v1/tasks does: validates the JSON request (filling a missing id), checks that its
  // type is registered and supports the input, and publishes it on the request stream without
  // waiting. `done` runs exactly once, inline or on a backend thread: InvalidArgument with the
  // reason for a bad request; the backend's error otherwise. Thread-safe.
  void SubmitAsync(absl::string_view body, SubmitCallback done);
  // With a task store, the task's record is created (state queued) before it is published:
  // AlreadyExists (409) when its unique_key is held by another task, naming that task (also in
  // the status payload kExistingIdPayload). An id submitted again is published again.
  // With run_at or run_after (which need a store), the record is created `scheduled` and the
  // scheduler publishes it when due; nothing is published now.
  // SubmitAsync, waiting up to 10 s (DeadlineExceeded after). Not for the HTTP path.
  absl::StatusOr<Submitted> Submit(absl::string_view body);

 private:
  struct Prepared;
  struct ReadinessProbe;
  absl::StatusOr<Prepared> Prepare(nlohmann::json& document) const;
  void InstallRoutes();
  void HandleSubmit(HttpRequest&& request, std::function<void(HttpResponse)> respond);
  void HandleBatch(HttpRequest&& request, std::function<void(HttpResponse)> respond);
  absl::Status OpenStore();
  // Creates the store record of a prepared task (with a store; true without one): true when
  // its request is to be published now, false for a run-later task.
  absl::StatusOr<bool> RegisterTask(const Prepared& prepared);
  // A registered task whose request could not be published: failed, its unique key freed.
  void MarkUnpublished(const std::string& id, const absl::Status& why);
  void HandleTaskGet(const std::string& id, std::function<void(HttpResponse)> respond);
  void HandleTaskCancel(const std::string& id, std::function<void(HttpResponse)> respond);
  void HandleTaskRetry(const std::string& id, std::function<void(HttpResponse)> respond);
  // GET /v1/stats's body: per type, tasks per state and the oldest queued age.
  absl::StatusOr<nlohmann::json> TaskStatsJson();
  void HandleStats(std::function<void(HttpResponse)> respond);
  void HandleScheduleCreate(HttpRequest&& request, std::function<void(HttpResponse)> respond);
  void HandleScheduleList(std::function<void(HttpResponse)> respond);
  void HandleScheduleGet(const std::string& id, std::function<void(HttpResponse)> respond);
  void HandleScheduleDelete(const std::string& id, std::function<void(HttpResponse)> respond);
  // The store's per-type counts as Prometheus gauges (one Stats call per scrape).
  void RefreshStoreGauges();
  // 400 naming EXECUTOR_STORE, for `feature`, when there is no store.
  std::optional<HttpResponse> RequireStore(absl::string_view feature) const;
  bool Authorized(absl::string_view authorization) const;
  // The /readyz verdict, asked synchronously (the executor's progress, then a backend Ping of
  // up to 1 s): for the dashboard and the instance heartbeat, never on an HTTP thread.
  bool ReadyNow() const;
  // This instance's heartbeat record as of now.
  taskstore::InstanceRecord InstanceNow() const;

  ServiceConfig config_;
  Environment env_;
  JsonLog* log_;
  PrometheusMetrics metrics_;
  DashboardMetrics dashboard_metrics_{&metrics_};  // counts for the dashboard, then metrics_
  std::unique_ptr<EventStream> stream_;
  std::unique_ptr<taskstore::TaskStore> store_;
  HandlerRegistry handlers_;
  std::unique_ptr<Executor> executor_;
  std::unique_ptr<Scheduler> scheduler_;  // with a store only
  std::array<unsigned char, 32> token_digest_{};  // SHA-256 of EXECUTOR_API_TOKEN
  std::unique_ptr<ReadinessProbe> readiness_;
  std::unique_ptr<Dashboard> dashboard_;
  std::unique_ptr<TaskEvents> task_events_;  // with a store only
  std::unique_ptr<InstanceHeartbeat> heartbeat_;  // with a store only
  absl::Time started_at_ = absl::InfinitePast();
  std::unique_ptr<HttpServer> http_;
  int http_port_ = 0;
  bool stopped_ = false;
};

// The --demo run: submits a few tasks of every type through POST /v1/tasks of the running
// service (one of them fails into the dead-letter stream), prints each result and the
// dead-letter entry to stdout, and reports whether everything came out as expected.
absl::Status RunDemo(Service& service);

}  // namespace eventbus::executor::service
