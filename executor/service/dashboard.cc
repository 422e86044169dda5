#include "dashboard.h"

#include <algorithm>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "dashboard_assets.h"
#include "eventbus/clock.h"
#include "eventbus/dead_letters.h"
#include "eventbus/executor/operator_json.h"
#include "eventbus/stream_inspector.h"
#include "http_server.h"
#include "instance_heartbeat.h"

namespace eventbus::executor::service {

using nlohmann::json;

namespace {

// Run times kept per snapshot window for the percentiles; beyond it every n-th is kept.
constexpr size_t kWindowSamples = 4096;
// Operator requests (stream reads, redrives) running at once; more are answered 503.
constexpr int kMaxOperatorRequests = 4;

double Percentile(std::vector<double>& values, double p) {
  if (values.empty()) return 0;
  const size_t index = std::min(values.size() - 1, static_cast<size_t>(p * values.size()));
  std::nth_element(values.begin(), values.begin() + index, values.end());
  return values[index];
}

HttpResponse Json(int status, const json& body) {
  HttpResponse response;
  response.status = status;
  response.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
  return response;
}

HttpResponse Asset(absl::string_view content_type, absl::string_view body) {
  HttpResponse response;
  response.content_type = std::string(content_type);
  response.body = std::string(body);
  response.headers.emplace_back("Cache-Control", "no-cache");
  // The page loads only its own files and talks only to this origin.
  response.headers.emplace_back("Content-Security-Policy",
                                "default-src 'self'; style-src 'self'; script-src 'self'");
  response.headers.emplace_back("X-Content-Type-Options", "nosniff");
  return response;
}

json TimeOrNull(absl::Time t) {
  if (t == absl::InfinitePast() || t == absl::InfiniteFuture()) return nullptr;
  return FormatTimeMillis(t);
}

// One entry per record in the store, by name. This instance's entry carries its live figures
// (those of `instance`), the others' are as of their last heartbeat; this one is listed even
// when its own record is missing (its heartbeat failing), with last_seen null.
json FleetJson(const std::vector<taskstore::InstanceRecord>& records, const json& instance,
               absl::Time now) {
  const std::string self = instance["name"].get<std::string>();
  json fleet = json::array();
  bool listed_self = false;
  for (const taskstore::InstanceRecord& r : records) {
    const bool is_self = r.name == self;
    listed_self = listed_self || is_self;
    json entry = {{"name", r.name},
                  {"group", r.group},
                  {"request_stream", r.request_stream},
                  {"backend", r.backend},
                  {"host", r.host},
                  {"version", r.version},
                  {"ready", r.ready},
                  {"in_flight", r.in_flight},
                  {"running", r.running},
                  {"stuck_workers", r.stuck_workers},
                  {"concurrency", r.concurrency},
                  {"started_at", TimeOrNull(r.started_at)},
                  {"heartbeat_interval_seconds", absl::ToDoubleSeconds(r.heartbeat_interval)},
                  {"last_seen", TimeOrNull(r.last_seen)},
                  {"last_seen_age_seconds",
                   absl::ToDoubleSeconds(std::max(absl::ZeroDuration(), now - r.last_seen))},
                  {"stale", IsStale(r, now)},
                  {"this", is_self}};
    if (is_self) {
      for (const char* live : {"ready", "in_flight", "running", "stuck_workers"}) {
        entry[live] = instance[live];
      }
    }
    fleet.push_back(std::move(entry));
  }
  if (!listed_self) {
    json entry = instance;
    entry["last_seen"] = nullptr;
    entry["last_seen_age_seconds"] = nullptr;
    entry["stale"] = false;
    entry["this"] = true;
    fleet.insert(fleet.begin(), std::move(entry));
  }
  return fleet;
}

}  // namespace

void DashboardMetrics::TaskFinished(absl::string_view type, absl::string_view outcome,
                                    absl::Duration duration) {
  next_->TaskFinished(type, outcome, duration);
  // Final outcomes only: a retry is counted by TaskRetried, and a wait's "delayed", a
  // shutdown's "abandoned", a redelivered "duplicate" or a cancellation are no failures.
  if (outcome == kOutcomeSucceeded) {
    succeeded_.fetch_add(1, std::memory_order_relaxed);
  } else if (outcome == kOutcomeFailed || outcome == kOutcomeInvalid) {
    failed_.fetch_add(1, std::memory_order_relaxed);
  }
  std::lock_guard lock(window_mu_);
  const uint64_t seen = ++window_seen_;
  const double ms = absl::ToDoubleMilliseconds(duration);
  if (window_ms_.size() < kWindowSamples) {
    window_ms_.push_back(ms);
  } else {
    window_ms_[seen % kWindowSamples] = ms;  // a cheap stand-in for reservoir sampling
  }
}

void DashboardMetrics::TaskRetried(absl::string_view type, absl::Duration backoff) {
  next_->TaskRetried(type, backoff);
  retried_.fetch_add(1, std::memory_order_relaxed);
}

void DashboardMetrics::TaskDeadLettered(absl::string_view type) {
  next_->TaskDeadLettered(type);
  dead_lettered_.fetch_add(1, std::memory_order_relaxed);
}

DashboardMetrics::Totals DashboardMetrics::totals() const {
  return Totals{succeeded_.load(), failed_.load(), dead_lettered_.load(), retried_.load()};
}

std::pair<double, double> DashboardMetrics::TakeLatencyPercentiles() {
  std::vector<double> window;
  {
    std::lock_guard lock(window_mu_);
    window.swap(window_ms_);
    window_seen_ = 0;
  }
  return {Percentile(window, 0.5), Percentile(window, 0.99)};
}

Dashboard::Dashboard(DashboardOptions options, EventStream* stream, const Executor* executor,
                     DashboardMetrics* metrics, std::function<bool()> ready,
                     std::function<std::string()> task_stats, InstanceLister instances)
    : options_(std::move(options)),
      stream_(stream),
      executor_(executor),
      metrics_(metrics),
      ready_(std::move(ready)),
      task_stats_(std::move(task_stats)),
      instances_(std::move(instances)),
      snapshots_([this] { SnapshotLoop(); }) {}

Dashboard::~Dashboard() { Stop(); }

void Dashboard::Stop() {
  std::vector<std::shared_ptr<HttpStream>> viewers;
  {
    std::lock_guard lock(mu_);
    if (stopping_ && !snapshots_.joinable()) return;
    stopping_ = true;
    viewers.swap(viewers_);
  }
  wake_.notify_all();
  if (snapshots_.joinable()) snapshots_.join();
  for (auto& viewer : viewers) viewer->End();
  std::unique_lock lock(mu_);
  wake_.wait(lock, [&] { return offloaded_ == 0; });
}

bool Dashboard::Offload(std::function<void()> work) {
  {
    std::lock_guard lock(mu_);
    if (stopping_ || offloaded_ >= kMaxOperatorRequests) return false;
    ++offloaded_;
  }
  std::thread([this, work = std::move(work)] {
    work();
    std::lock_guard lock(mu_);
    --offloaded_;
    wake_.notify_all();
  }).detach();
  return true;
}

std::string Dashboard::SnapshotJson() {
  const absl::Time now = stream_->clock()->Now();
  json snapshot;
  snapshot["time"] = FormatTimeMillis(now);
  const ExecutorOptions& executor_options = executor_->options();
  // The consumer name the executor subscribed with (generated when EXECUTOR_CONSUMER_NAME is
  // unset), so the page can tell this instance among the group's members.
  snapshot["instance"] = {{"name", executor_options.consumer_name.empty()
                                       ? options_.instance
                                       : executor_options.consumer_name},
                          {"group", executor_options.consumer_group},
                          {"request_stream", options_.request_stream},
                          {"backend", options_.backend},
                          {"ready", ready_ ? ready_() : true},
                          {"in_flight", executor_->in_flight()},
                          {"running", executor_->running()},
                          {"stuck_workers", executor_->stuck_workers()},
                          {"concurrency", options_.concurrency}};
  if (instances_) {
    absl::StatusOr<std::vector<taskstore::InstanceRecord>> records = instances_();
    if (!records.ok()) {
      snapshot["instances_error"] = absl::StrCat("task store: ", records.status().message());
    }
    snapshot["instances"] =
        FleetJson(records.ok() ? *records : std::vector<taskstore::InstanceRecord>{},
                  snapshot["instance"], now);
  }
  const DashboardMetrics::Totals totals = metrics_->totals();
  snapshot["totals"] = {{"succeeded", totals.succeeded},
                        {"failed", totals.failed},
                        {"dead_lettered", totals.dead_lettered},
                        {"retried", totals.retried}};
  const auto [p50, p99] = metrics_->TakeLatencyPercentiles();
  snapshot["latency_ms"] = {{"p50", p50}, {"p99", p99}};
  json streams = json::array();
  if (StreamInspector* inspector = stream_->inspector(); inspector != nullptr) {
    for (const std::string& name :
         {options_.request_stream, options_.dead_letter_stream, options_.result_stream}) {
      absl::StatusOr<StreamInfo> info = inspector->Describe(name);
      if (info.ok()) streams.push_back(StreamInfoToJson(*info, now));
    }
  }
  snapshot["streams"] = std::move(streams);
  if (task_stats_) {
    std::string stats = task_stats_();
    json parsed = json::parse(stats, nullptr, false);
    if (!parsed.is_discarded()) snapshot["tasks"] = std::move(parsed);
  }
  return snapshot.dump(-1, ' ', false, json::error_handler_t::replace);
}

void Dashboard::SnapshotLoop() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    // Snapshots cost broker round trips: only while someone watches.
    if (viewers_.empty()) {
      wake_.wait(lock, [&] { return stopping_ || !viewers_.empty(); });
      continue;
    }
    new_viewer_ = false;
    lock.unlock();
    const std::string message = absl::StrCat("event: snapshot\ndata: ", SnapshotJson(), "\n\n");
    lock.lock();
    std::erase_if(viewers_, [&](const std::shared_ptr<HttpStream>& viewer) {
      return !viewer->Send(message);
    });
    wake_.wait_for(lock, absl::ToChronoNanoseconds(options_.snapshot_interval),
                   [&] { return stopping_ || new_viewer_; });
  }
}

HttpResponse Dashboard::Busy() {
  return JsonError(503, absl::StrCat("too many operator requests at once (at most ",
                                     kMaxOperatorRequests, "); try again"));
}

void Dashboard::Streams(const HttpResponder& respond) {
  StreamInspector* inspector = stream_->inspector();
  if (inspector == nullptr) {
    return respond(JsonError(501, absl::StrCat("the ", stream_->backend_name(),
                                               " backend does not support stream inspection")));
  }
  absl::StatusOr<std::vector<std::string>> names = inspector->ListStreams();
  if (!names.ok()) return respond(JsonError(503, names.status().message()));
  const absl::Time now = stream_->clock()->Now();
  json streams = json::array();
  for (const std::string& name : *names) {
    absl::StatusOr<StreamInfo> info = inspector->Describe(name);
    if (info.ok()) streams.push_back(StreamInfoToJson(*info, now));
  }
  respond(Json(200, {{"streams", std::move(streams)}}));
}

void Dashboard::DeadLetters(const std::string& query, const HttpResponder& respond) {
  StreamInspector* inspector = stream_->inspector();
  if (inspector == nullptr) {
    return respond(JsonError(501, absl::StrCat("the ", stream_->backend_name(),
                                               " backend does not support stream inspection")));
  }
  std::string dlq = QueryParam(query, "stream");
  if (dlq.empty()) dlq = options_.dead_letter_stream;
  DeadLetterFilter filter;
  filter.reason = QueryParam(query, "reason");
  filter.type = QueryParam(query, "type");
  filter.limit = options_.max_dead_letters;
  json letters = json::array();
  absl::Status status = ForEachDeadLetter(*inspector, dlq, filter, [&](const StoredEvent& e) {
    letters.push_back({{"stream_id", e.id}, {"event", StoredEventToJson(e)}});
    return true;
  });
  if (!status.ok() && !absl::IsNotFound(status)) return respond(JsonError(503, status.message()));
  respond(Json(200, {{"stream", dlq}, {"dead_letters", std::move(letters)}}));
}

// {"stream"?: DLQ, "ids"?: [stream ids], "reason"?: substring, "all"?: true}: one of ids, reason
// or all, so an empty body never redrives everything by accident.
void Dashboard::Redrive(const std::string& text, const HttpResponder& respond) {
  json body = json::parse(text, nullptr, false);
  if (!body.is_object()) return respond(JsonError(400, "the body must be a JSON object"));
  DeadLetterFilter filter;
  filter.limit = options_.max_dead_letters;
  std::string dlq = options_.dead_letter_stream;
  if (body.contains("stream")) {
    if (!body["stream"].is_string()) return respond(JsonError(400, "\"stream\" must be a string"));
    if (!body["stream"].get<std::string>().empty()) dlq = body["stream"].get<std::string>();
  }
  bool selected = body.contains("all") && body["all"] == true;
  if (body.contains("ids")) {
    if (!body["ids"].is_array()) return respond(JsonError(400, "\"ids\" must be an array"));
    for (const json& id : body["ids"]) {
      if (!id.is_string()) return respond(JsonError(400, "\"ids\" must hold strings"));
      filter.ids.push_back(id.get<std::string>());
    }
    selected = selected || !filter.ids.empty();
  }
  if (body.contains("reason")) {
    if (!body["reason"].is_string()) return respond(JsonError(400, "\"reason\" must be a string"));
    filter.reason = body["reason"].get<std::string>();
    selected = selected || !filter.reason.empty();
  }
  if (!selected) {
    return respond(JsonError(400, "say what to redrive: \"ids\", \"reason\" or \"all\": true"));
  }
  absl::StatusOr<RedriveReport> report = RedriveDeadLetters(
      *stream_, dlq, filter, RedriveOptions{.max_redrives = options_.max_redrives});
  if (!report.ok()) return respond(JsonError(503, report.status().message()));
  json refused = json::array();
  for (const auto& r : report->refused) {
    refused.push_back({{"stream_id", r.stream_id}, {"id", r.event_id}, {"reason", r.reason}});
  }
  json out = {{"stream", dlq},
              {"redriven", report->redriven.size()},
              {"refused", std::move(refused)},
              {"failed", report->failed}};
  if (!report->first_error.empty()) out["error"] = report->first_error;
  if (!report->kept_because.empty()) out["kept_in_dlq_because"] = report->kept_because;
  respond(Json(report->failed > 0 ? 502 : 200, out));
}

void Dashboard::AddRoutes(HttpServer& server) {
  server.Route("GET", "/ui", {}, [](HttpRequest&&, HttpResponder respond) {
    respond(Asset("text/html; charset=utf-8", kDashboardIndexHtml));
  });
  server.Route("GET", "/ui/app.js", {}, [](HttpRequest&&, HttpResponder respond) {
    respond(Asset("text/javascript; charset=utf-8", kDashboardAppJs));
  });
  server.Route("GET", "/ui/style.css", {}, [](HttpRequest&&, HttpResponder respond) {
    respond(Asset("text/css; charset=utf-8", kDashboardStyleCss));
  });
  // Reads and writes of the broker run off the server's threads (Offload).
  server.Route("GET", "/v1/streams", {}, [this](HttpRequest&&, HttpResponder respond) {
    if (!Offload([this, respond] { Streams(respond); })) respond(Busy());
  });
  server.Route("GET", "/v1/dlq", {}, [this](HttpRequest&& request, HttpResponder respond) {
    if (!Offload([this, query = std::move(request.query), respond] { DeadLetters(query, respond); })) {
      respond(Busy());
    }
  });
  server.Route("POST", "/v1/dlq:redrive", {.max_body_bytes = 256 << 10},
               [this](HttpRequest&& request, HttpResponder respond) {
                 if (!Offload([this, body = std::move(request.body), respond] {
                       Redrive(body, respond);
                     })) {
                   respond(Busy());
                 }
               });
  server.Route("GET", "/v1/dashboard/events", {}, [this](HttpRequest&&, HttpResponder respond) {
    {
      std::lock_guard lock(mu_);
      if (stopping_) return respond(JsonError(503, "shutting down"));
      if (static_cast<int>(viewers_.size()) >= options_.max_viewers) {
        return respond(JsonError(503, absl::StrCat("too many dashboard viewers (at most ",
                                                   options_.max_viewers, ")")));
      }
    }
    HttpResponse response;
    response.content_type = "text/event-stream";
    response.on_open = [this](std::shared_ptr<HttpStream> viewer) {
      // The snapshot thread sends the first snapshot at once, then one per interval.
      viewer->Send("retry: 1000\n\n");
      {
        std::lock_guard lock(mu_);
        if (stopping_) return viewer->End();
        viewers_.push_back(std::move(viewer));
        new_viewer_ = true;
      }
      wake_.notify_all();
    };
    respond(std::move(response));
  });
}

}  // namespace eventbus::executor::service
