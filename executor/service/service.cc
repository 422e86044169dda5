#include "service.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "eventbus/clock.h"
#include "eventbus/executor/builtin_handlers.h"
#include "eventbus/executor/iso_duration.h"
#include "eventbus/executor/scheduler.h"
#include "eventbus/executor/task.h"
#include "eventbus/redact.h"
#include "eventbus/status_macros.h"
#include "eventbus/version.h"
#include "http_server.h"

namespace eventbus::executor::service {
namespace {

using nlohmann::json;

// The API's limits (docs/tasks.md).
constexpr size_t kMaxRequestBytes = 1 << 20;
constexpr size_t kMaxBatchBytes = 16 << 20;
constexpr size_t kMaxBatchItems = 10'000;
constexpr absl::Duration kPublishTimeout = absl::Seconds(10);

std::string Dump(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

HttpResponse Json(int status, const json& body) {
  HttpResponse response;
  response.status = status;
  response.body = Dump(body);
  return response;
}

int StatusFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument: return 400;
    case absl::StatusCode::kAlreadyExists: return 409;
    default: return 503;
  }
}

// {"error": message}, plus "existing_id" for a 409 naming the task that holds an id or key.
HttpResponse ErrorResponse(const absl::Status& status) {
  json body = {{"error", std::string(status.message())}};
  if (auto existing = status.GetPayload(kExistingIdPayload)) body["existing_id"] = std::string(*existing);
  return Json(StatusFor(status), body);
}

// Null for a time that was never set (InfinitePast) or never ends (InfiniteFuture).
json TimeJson(absl::Time t) {
  if (t == absl::InfinitePast() || t == absl::InfiniteFuture()) return nullptr;
  return FormatTimeAttribute(t);
}

// Stored JSON text back as JSON; null when empty (and the raw text if it does not parse,
// which only a store written by something else could hold).
json StoredJson(const std::string& text) {
  if (text.empty()) return nullptr;
  auto parsed = ParseUntrustedJson(text);
  return parsed.ok() ? std::move(*parsed) : json(text);
}

json TaskJson(const taskstore::TaskRecord& record) {
  json history = StoredJson(record.history);
  return json{{"id", record.id},
              {"type", record.type},
              {"state", std::string(taskstore::TaskStateName(record.state))},
              {"attempts", record.attempts},
              {"created_at", TimeJson(record.created_at)},
              {"updated_at", TimeJson(record.updated_at)},
              {"started_at", TimeJson(record.started_at)},
              {"finished_at", TimeJson(record.finished_at)},
              {"expires_at", TimeJson(record.expires_at)},
              {"last_error", record.last_error.empty() ? json(nullptr) : json(record.last_error)},
              {"result", StoredJson(record.result)},
              {"progress", StoredJson(record.progress)},
              {"unique_key", record.unique_key.empty() ? json(nullptr) : json(record.unique_key)},
              {"unique_until", TimeJson(record.unique_until)},
              {"run_at", TimeJson(record.run_at)},
              {"schedule_id", record.schedule_id.empty() ? json(nullptr) : json(record.schedule_id)},
              {"cancel_requested", record.cancel_requested},
              {"history", history.is_null() ? json::array() : history},
              {"request", StoredJson(record.request)}};
}

// The task (or schedule) id in a path segment: percent-decoded. InvalidArgument for a bad
// escape.
absl::StatusOr<std::string> DecodePathSegment(absl::string_view segment,
                                              absl::string_view what = "task id") {
  std::string out;
  for (size_t i = 0; i < segment.size(); ++i) {
    if (segment[i] != '%') {
      out.push_back(segment[i]);
      continue;
    }
    int value = 0;
    if (i + 2 >= segment.size()) {
      return absl::InvalidArgumentError(absl::StrCat(what, " in the path has a truncated %-escape"));
    }
    for (int k = 1; k <= 2; ++k) {
      const char c = segment[i + k];
      const int digit = c >= '0' && c <= '9'   ? c - '0'
                        : c >= 'a' && c <= 'f' ? c - 'a' + 10
                        : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                               : -1;
      if (digit < 0) {
        return absl::InvalidArgumentError(absl::StrCat(what, " in the path has a bad %-escape"));
      }
      value = value * 16 + digit;
    }
    out.push_back(static_cast<char>(value));
    i += 2;
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat(what, " in the path is empty"));
  return out;
}

constexpr absl::string_view kTasksPrefix = "/v1/tasks/";
constexpr absl::string_view kSchedulesPath = "/v1/schedules";
constexpr absl::string_view kSchedulesPrefix = "/v1/schedules/";
// The last_error of a task whose request the API could not publish.
constexpr absl::string_view kNotPublished = "request not published: ";
constexpr absl::string_view kCancelSuffix = ":cancel";
constexpr absl::string_view kRetrySuffix = ":retry";
constexpr absl::string_view kEventsSuffix = "/events";

json ScheduleJson(const taskstore::Schedule& schedule) {
  return json{{"id", schedule.id},
              {"cron", schedule.cron.empty() ? json(nullptr) : json(schedule.cron)},
              {"timezone", schedule.cron.empty() ? json(nullptr) : json(schedule.time_zone)},
              {"every", schedule.cron.empty() ? json(FormatIsoDuration(schedule.interval))
                                              : json(nullptr)},
              {"missed", schedule.missed_policy},
              {"type", schedule.type},
              {"task", StoredJson(schedule.request)},
              {"next_run_at", TimeJson(schedule.next_run_at)},
              {"last_run_at", TimeJson(schedule.last_run_at)},
              {"last_task_id",
               schedule.last_task_id.empty() ? json(nullptr) : json(schedule.last_task_id)},
              {"created_at", TimeJson(schedule.created_at)}};
}

std::array<unsigned char, 32> Sha256(absl::string_view text) {
  std::array<unsigned char, 32> digest{};
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest.data());
  return digest;
}

}  // namespace

struct Service::Prepared {
  std::string id;
  std::string type;
  Event event;
  std::string unique_key;
  std::optional<absl::Duration> unique_for;
  absl::Time run_at = absl::InfinitePast();  // a run-later task's time; InfinitePast: now
};

// GET /readyz: Ping runs on this thread, so a slow or unreachable backend (up to the 2 s Ping
// timeout) never holds one of the two HTTP threads; probes arriving meanwhile share one Ping.
// Ready means the service can make progress: the executor's own check (workers not all stuck,
// fetches completing) and the backend answering.
struct Service::ReadinessProbe {
  ReadinessProbe(EventStream* s, std::function<absl::Status()> progress_check)
      : stream(s), progress(std::move(progress_check)), thread([this] { Run(); }) {}
  ~ReadinessProbe() {
    {
      std::lock_guard lock(mu);
      stopping = true;
    }
    changed.notify_all();
    thread.join();
    for (auto& respond : waiting) respond(JsonError(503, "shutting down"));
  }

  void Ask(HttpResponder respond) {
    {
      std::lock_guard lock(mu);
      waiting.push_back(std::move(respond));
    }
    changed.notify_all();
  }

  void Run() {
    std::unique_lock lock(mu);
    for (;;) {
      changed.wait(lock, [&] { return stopping || !waiting.empty(); });
      if (stopping) return;
      std::vector<HttpResponder> asking = std::move(waiting);
      waiting.clear();
      lock.unlock();
      absl::Status s = progress();
      if (s.ok()) s = stream->Ping(absl::Seconds(2));
      for (auto& respond : asking) {
        if (s.ok()) {
          respond(HttpResponse{.status = 200, .content_type = "text/plain", .body = "ready\n"});
        } else {
          respond(HttpResponse{.status = 503,
                               .content_type = "text/plain",
                               .body = absl::StrCat("not ready: ", s.ToString(), "\n")});
        }
      }
      lock.lock();
    }
  }

  EventStream* const stream;
  const std::function<absl::Status()> progress;
  std::mutex mu;
  std::condition_variable changed;
  std::vector<HttpResponder> waiting;  // guarded by mu
  bool stopping = false;               // guarded by mu
  std::thread thread;                  // last: starts once the rest is built
};

Service::Service(ServiceConfig config, Environment env, JsonLog* log)
    : config_(std::move(config)), env_(std::move(env)), log_(log) {
  if (!config_.api_token.empty()) token_digest_ = Sha256(config_.api_token);
}

Service::~Service() { Stop(); }

absl::Status Service::RegisterHandler(std::unique_ptr<TaskHandler> handler) {
  if (executor_ != nullptr) {
    return absl::FailedPreconditionError("RegisterHandler must be called before Start");
  }
  return handlers_.Register(std::move(handler));
}

absl::Status Service::Start() {
  auto stream = BackendRegistry::Global().CreateFromEnvironment(env_);
  if (!stream.ok()) {
    return absl::Status(stream.status().code(),
                        absl::StrCat("cannot create the ", config_.stream_type,
                                     " event stream: ", stream.status().message()));
  }
  stream_ = std::move(*stream);
  started_at_ = stream_->clock()->Now();
  auto backend_config = BackendRegistry::Global().ConfigFromEnvironment(config_.stream_type, env_);
  log_->Write(LogLevel::kInfo, "event stream ready",
              {{"backend", std::string(stream_->backend_name())},
               {"url", backend_config.ok() ? RedactUrl(backend_config->url) : std::string()}});

  BuiltinHandlerOptions builtin;
  builtin.clock = stream_->clock();
  builtin.ca_file = config_.ca_file;
  builtin.call_allow = config_.call_allow;
  builtin.call_deny = config_.call_deny;
  builtin.call_deny_private = config_.call_deny_private;
  builtin.jq_workers = config_.jq_workers;
  builtin.jq_worker_path = config_.jq_worker_path;
  builtin.jq_memory_limit_bytes = size_t(config_.jq_memory_limit_mib) << 20;
  builtin.on_circuit_change = [this](absl::string_view host, absl::string_view from,
                                     absl::string_view to) {
    metrics_.CircuitChanged(to);
    log_->Write(LogLevel::kWarn, "circuit breaker state changed",
                {{"host", std::string(host)}, {"from", std::string(from)}, {"to", std::string(to)}});
  };
  EVENTBUS_RETURN_IF_ERROR(RegisterBuiltinHandlers(handlers_, builtin));
  metrics_.Preregister(handlers_.Types());

  ExecutorOptions options = config_.executor;
  if (config_.task_timeout || config_.max_attempts) {
    for (const std::string& type : handlers_.Types()) {
      TaskPolicy policy = handlers_.Find(type)->DefaultPolicy();
      if (config_.task_timeout) policy.timeout = *config_.task_timeout;
      if (config_.max_attempts) policy.retry.max_attempts = *config_.max_attempts;
      options.type_policies[type] = policy;
    }
  }
  EVENTBUS_RETURN_IF_ERROR(OpenStore());
  executor_ = std::make_unique<Executor>(
      stream_.get(), &handlers_, options,
      ExecutorDependencies{.metrics = &dashboard_metrics_,
                           .random = nullptr,
                           .log = [this](const TaskLogRecord& record) { log_->WriteTask(record); },
                           .store = store_.get()});

  HttpServerOptions http_options;
  http_options.host = config_.http_host;
  http_options.port = config_.http_port;
  http_options.max_connections = config_.http_max_connections;
  http_options.response_timeout = kPublishTimeout;
  readiness_ = std::make_unique<ReadinessProbe>(stream_.get(), [this] {
    const absl::Status progress = executor_->CheckProgress();
    metrics_.ProgressObserved(executor_->progress(), !progress.ok());
    return progress;
  });
  dashboard_ = std::make_unique<Dashboard>(
      DashboardOptions{.instance = options.consumer_name.empty() ? "this executor"
                                                                 : options.consumer_name,
                       .backend = config_.stream_type,
                       .request_stream = options.request_stream,
                       .result_stream = options.result_stream,
                       .dead_letter_stream = options.dead_letter_stream.empty()
                                                 ? absl::StrCat(options.request_stream,
                                                                kDlqStreamSuffix)
                                                 : options.dead_letter_stream,
                       .concurrency = options.concurrency},
      stream_.get(), executor_.get(), &dashboard_metrics_, [this] { return ReadyNow(); },
      // The task store's figures (GET /v1/stats) when there is a store.
      [this]() -> std::string {
        if (store_ == nullptr) return "";
        absl::StatusOr<json> stats = TaskStatsJson();
        return stats.ok() ? stats->dump() : "";
      },
      store_ == nullptr ? Dashboard::InstanceLister()
                        : [this] { return store_->ListInstances(stream_->clock()->Now()); });
  if (store_ != nullptr) {
    task_events_ = std::make_unique<TaskEvents>(
        TaskEventsOptions{}, store_.get(),
        [](const taskstore::TaskRecord& record) { return Dump(TaskJson(record)); });
    SchedulerOptions scheduling;
    scheduling.request_stream = options.request_stream;
    scheduling.interval = config_.scheduler_interval;
    scheduling.owner = options.consumer_name;
    scheduling.publish_timeout = kPublishTimeout;
    scheduler_ = std::make_unique<Scheduler>(
        scheduling,
        SchedulerDependencies{
            .stream = stream_.get(),
            .store = store_.get(),
            .clock = stream_->clock(),
            .log =
                [this](absl::string_view message, absl::string_view id, absl::string_view error) {
                  log_->Write(LogLevel::kWarn, message,
                              {{"id", std::string(id)}, {"error", std::string(error)}});
                },
            .on_published = [this](absl::string_view type) { metrics_.TaskSubmitted(type); },
            .on_requeued = [this](absl::string_view type) { metrics_.StuckTaskRequeued(type); }});
  }
  http_ = std::make_unique<HttpServer>(http_options);
  InstallRoutes();
  EVENTBUS_RETURN_IF_ERROR(http_->Start());
  http_port_ = http_->port();
  EVENTBUS_RETURN_IF_ERROR(executor_->Start());
  if (scheduler_ != nullptr) EVENTBUS_RETURN_IF_ERROR(scheduler_->Start());
  if (store_ != nullptr) {
    heartbeat_ = std::make_unique<InstanceHeartbeat>(
        config_.instance_heartbeat, store_.get(), stream_->clock(), [this] { return InstanceNow(); },
        [this](const absl::Status& error) {
          metrics_.InstanceHeartbeatFailed();
          log_->Write(LogLevel::kWarn, "writing this instance's record to the task store failed",
                      {{"error", error.ToString()}});
        });
    heartbeat_->Start();
  }
  if (config_.api_token.empty() && config_.http_host != "127.0.0.1" &&
      config_.http_host != "localhost" && config_.http_host != "::1") {
    log_->Write(LogLevel::kWarn,
                "the HTTP API accepts tasks from anyone who reaches this address: bind "
                "EXECUTOR_HTTP_ADDR to 127.0.0.1 or set EXECUTOR_API_TOKEN",
                {{"http", absl::StrCat(config_.http_host, ":", http_port_)}});
  }
  log_->Write(LogLevel::kInfo, "eventbus-executor started",
              {{"http", absl::StrCat(config_.http_host, ":", http_port_)},
               {"backend", config_.stream_type},
               {"request_stream", options.request_stream},
               {"result_stream", options.result_stream},
               {"consumer_group", options.consumer_group},
               {"concurrency", options.concurrency},
               {"api_token", config_.api_token.empty() ? "none" : "required"},
               {"task_types", handlers_.Types()}});
  return absl::OkStatus();
}

absl::Status Service::OpenStore() {
  if (config_.store == "none") {
    log_->Write(LogLevel::kInfo, "no task store (EXECUTOR_STORE=none): tasks run untracked");
    return absl::OkStatus();
  }
  std::string url = config_.store_url;
  if (url.empty() && config_.store == "redis") {
    // The same server as the backend (config validation made sure the backend is redis).
    auto backend = BackendRegistry::Global().ConfigFromEnvironment(config_.stream_type, env_);
    if (backend.ok()) url = backend->url;
  }
  auto store = taskstore::OpenTaskStore(config_.store, url);
  if (!store.ok()) {
    return absl::Status(store.status().code(),
                        absl::StrCat("cannot open the task store (EXECUTOR_STORE=", config_.store,
                                     "): ", store.status().message()));
  }
  if (absl::Status s = (*store)->Migrate(); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("cannot create the task store's schema (EXECUTOR_STORE=",
                                               config_.store, "): ", s.message()));
  }
  store_ = std::move(*store);
  log_->Write(LogLevel::kInfo, "task store ready",
              {{"store", config_.store}, {"url", url.empty() ? std::string() : RedactUrl(url)}});
  return absl::OkStatus();
}

void Service::Stop() {
  if (stopped_) return;
  stopped_ = true;
  log_->Write(LogLevel::kInfo, "shutting down");
  // Live dashboard streams end first, then new tasks are refused; then the executor drains.
  if (dashboard_ != nullptr) dashboard_->Stop();
  if (task_events_ != nullptr) task_events_->Stop();
  if (http_ != nullptr) http_->Stop();
  readiness_.reset();
  // Nothing more is published from the store once the executor drains.
  if (scheduler_ != nullptr) scheduler_->Stop();
  if (executor_ != nullptr) executor_->Shutdown();
  // After the drain: the fleet sees this instance until its last task is settled.
  if (heartbeat_ != nullptr) heartbeat_->Stop();
  if (stream_ != nullptr) {
    if (absl::Status s = stream_->Flush(absl::Seconds(10)); !s.ok()) {
      log_->Write(LogLevel::kWarn, "flushing the event stream failed", {{"error", s.ToString()}});
    }
  }
  log_->Write(LogLevel::kInfo, "eventbus-executor stopped");
}

bool Service::ReadyNow() const {
  return executor_->CheckProgress().ok() && stream_->Ping(absl::Seconds(1)).ok();
}

taskstore::InstanceRecord Service::InstanceNow() const {
  const ExecutorOptions& options = executor_->options();
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  taskstore::InstanceRecord r;
  r.name = options.consumer_name;  // the executor's, generated when EXECUTOR_CONSUMER_NAME is unset
  r.group = options.consumer_group;
  r.request_stream = options.request_stream;
  r.backend = config_.stream_type;
  r.host = host;
  r.version = EVENTBUS_VERSION_STRING;
  r.ready = ReadyNow();
  r.in_flight = executor_->in_flight();
  r.running = executor_->running();
  r.stuck_workers = executor_->stuck_workers();
  r.concurrency = options.concurrency;
  r.started_at = started_at_;
  return r;
}

absl::StatusOr<Service::Prepared> Service::Prepare(json& document) const {
  if (document.is_object() && !document.contains("id")) document["id"] = NewEventId();
  EVENTBUS_ASSIGN_OR_RETURN(TaskRequest request, TaskRequestFromJson(document));
  const TaskHandler* handler = handlers_.Find(request.type);
  if (handler == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("unknown task type \"", request.type,
                                                   "\"; registered types: ",
                                                   absl::StrJoin(handlers_.Types(), ", ")));
  }
  EVENTBUS_RETURN_IF_ERROR(handler->Supports(request));
  if (store_ == nullptr && !request.unique_key.empty()) {
    return absl::InvalidArgumentError(
        "\"unique_key\" needs a task store, and EXECUTOR_STORE is none (set EXECUTOR_STORE to "
        "memory, redis or postgres)");
  }
  absl::Time run_at = absl::InfinitePast();
  if (request.run_at || request.run_after) {
    if (store_ == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"", request.run_at ? "run_at" : "run_after",
          "\" needs a task store, and EXECUTOR_STORE is none (set EXECUTOR_STORE to memory, "
          "redis or postgres)"));
    }
    run_at = request.run_at ? *request.run_at : stream_->clock()->Now() + *request.run_after;
    // To the microsecond, as the Redis and PostgreSQL stores keep it, so the answer shows the
    // time GET /v1/tasks/{id} will.
    run_at = absl::UnixEpoch() + absl::Floor(run_at - absl::UnixEpoch(), absl::Microseconds(1));
  }
  return Prepared{request.id,         request.type,
                  MakeTaskRequestEvent(request, "eventbus-executor/http"),
                  request.unique_key, request.unique_for,
                  run_at};
}

absl::StatusOr<bool> Service::RegisterTask(const Prepared& prepared) {
  if (store_ == nullptr) return true;
  const absl::Time now = stream_->clock()->Now();
  const bool later = prepared.run_at != absl::InfinitePast();
  taskstore::TaskRecord record;
  record.id = prepared.id;
  record.type = prepared.type;
  record.state = later ? taskstore::TaskState::kScheduled : taskstore::TaskState::kQueued;
  record.run_at = prepared.run_at;
  record.request = prepared.event.data();
  record.created_at = now;
  record.unique_key = prepared.unique_key;
  if (prepared.unique_for) record.unique_until = now + *prepared.unique_for;
  auto created = store_->Create(record, now);
  if (!created.ok()) {
    return absl::UnavailableError(
        absl::StrCat("task store (", store_->kind(), "): ", created.status().message()));
  }
  const taskstore::TaskRecord& holder = created->record;
  absl::Status taken;
  switch (created->kind) {
    case taskstore::CreateResult::Kind::kCreated:
      return !later;
    case taskstore::CreateResult::Kind::kIdTaken:
      // A run-later task is never published by its submission: the stored one is published
      // when due, or has been.
      if (later) return false;
      // Submitting an id again is how a client makes sure after an unconfirmed submit (a
      // 503): its request is published again, a duplicate delivery the executor settles by
      // the record (a succeeded task is not run again). One whose publish failed is queued
      // again first.
      if (holder.state == taskstore::TaskState::kFailed &&
          absl::StartsWith(holder.last_error, kNotPublished)) {
        taskstore::TaskUpdate again;
        again.expected_version = holder.version;
        again.now = now;
        again.state = taskstore::TaskState::kQueued;
        again.finished_at = absl::InfinitePast();
        again.expires_at = absl::InfiniteFuture();
        again.last_error = "";
        (void)store_->Update(holder.id, again);  // lost a race: the request is published anyway
      }
      return true;
    case taskstore::CreateResult::Kind::kUniqueKeyTaken:
      taken = absl::AlreadyExistsError(absl::StrCat(
          "unique_key \"", prepared.unique_key, "\" is held by task \"", holder.id, "\" (state ",
          taskstore::TaskStateName(holder.state), ")"));
      break;
  }
  taken.SetPayload(kExistingIdPayload, absl::Cord(holder.id));
  return taken;
}

void Service::MarkUnpublished(const std::string& id, const absl::Status& why) {
  if (store_ == nullptr) return;
  const absl::Time now = stream_->clock()->Now();
  taskstore::TaskUpdate update;
  update.from = {taskstore::TaskState::kQueued};
  update.now = now;
  update.state = taskstore::TaskState::kFailed;
  update.finished_at = now;
  update.expires_at = now + config_.executor.retention_failed;
  update.last_error = absl::StrCat(kNotPublished, why.message());
  if (auto s = store_->Update(id, update); !s.ok()) {
    log_->Write(LogLevel::kWarn, "recording an unpublished task failed",
                {{"task_id", id}, {"error", s.status().ToString()}});
  }
}

void Service::SubmitAsync(absl::string_view body, SubmitCallback done) {
  auto parsed = ParseUntrustedJson(body);
  if (!parsed.ok()) {
    return done(
        absl::InvalidArgumentError(absl::StrCat("request body is ", parsed.status().message())));
  }
  auto prepared = Prepare(*parsed);
  if (!prepared.ok()) return done(prepared.status());
  absl::StatusOr<bool> publish = RegisterTask(*prepared);
  if (!publish.ok()) return done(publish.status());
  if (!*publish) {
    if (log_->Enabled(LogLevel::kDebug)) {
      log_->Write(LogLevel::kDebug, "task scheduled",
                  {{"task_id", prepared->id}, {"run_at", FormatTimeAttribute(prepared->run_at)}});
    }
    return done(Submitted{prepared->id, "", prepared->run_at});
  }
  // Publish may fail at once or through the callback (never both, but one guard costs little).
  auto once = std::make_shared<std::atomic<bool>>(false);
  auto finish = [this, once, done, id = prepared->id,
                 type = prepared->type](absl::StatusOr<PublishReceipt> receipt) {
    if (once->exchange(true)) return;
    if (!receipt.ok()) {
      MarkUnpublished(id, receipt.status());
      return done(receipt.status());
    }
    metrics_.TaskSubmitted(type);
    if (log_->Enabled(LogLevel::kDebug)) {
      log_->Write(LogLevel::kDebug, "task submitted",
                  {{"task_id", id}, {"task_type", type}, {"event_id", receipt->id}});
    }
    done(Submitted{id, receipt->id});
  };
  absl::Status published =
      stream_->Publish(config_.executor.request_stream, std::move(prepared->event), finish);
  if (!published.ok()) finish(published);
}

absl::StatusOr<Service::Submitted> Service::Submit(absl::string_view body) {
  struct Outcome {
    std::mutex mu;
    std::condition_variable cv;
    std::optional<absl::StatusOr<Submitted>> result;
  };
  auto outcome = std::make_shared<Outcome>();  // the callback may outlive a timed-out wait
  SubmitAsync(body, [outcome](absl::StatusOr<Submitted> result) {
    std::lock_guard lock(outcome->mu);
    outcome->result = std::move(result);
    outcome->cv.notify_all();
  });
  std::unique_lock lock(outcome->mu);
  if (!outcome->cv.wait_for(lock, absl::ToChronoNanoseconds(kPublishTimeout),
                            [&] { return outcome->result.has_value(); })) {
    return absl::DeadlineExceededError(absl::StrCat(
        "publishing the task was not confirmed within ", absl::FormatDuration(kPublishTimeout)));
  }
  return *outcome->result;
}

bool Service::Authorized(absl::string_view authorization) const {
  absl::string_view value = absl::StripAsciiWhitespace(authorization);
  constexpr absl::string_view kScheme = "bearer ";
  if (value.size() <= kScheme.size() || !absl::StartsWithIgnoreCase(value, kScheme)) return false;
  // Digests of equal length, compared in constant time: neither the token's length nor where
  // a guess first differs shows in the timing.
  const auto given = Sha256(absl::StripLeadingAsciiWhitespace(value.substr(kScheme.size())));
  return CRYPTO_memcmp(given.data(), token_digest_.data(), given.size()) == 0;
}

void Service::HandleSubmit(HttpRequest&& request, std::function<void(HttpResponse)> respond) {
  SubmitAsync(request.body, [this, respond](absl::StatusOr<Submitted> submitted) {
    if (!submitted.ok()) {
      respond(ErrorResponse(submitted.status()));
      return;
    }
    if (submitted->event_id.empty()) {
      respond(Json(202, {{"id", submitted->task_id},
                         {"state", "scheduled"},
                         {"run_at", FormatTimeAttribute(submitted->run_at)}}));
      return;
    }
    respond(Json(202, {{"id", submitted->task_id},
                       {"event_id", submitted->event_id},
                       {"stream", config_.executor.request_stream}}));
  });
}

void Service::HandleBatch(HttpRequest&& request, std::function<void(HttpResponse)> respond) {
  // Parse every item first: the batch is answered only when the body as a whole is readable.
  absl::string_view body = request.body;
  const size_t first = body.find_first_not_of(" \t\r\n");
  if (first == absl::string_view::npos) return respond(JsonError(400, "batch body is empty"));
  const bool ndjson = absl::StartsWithIgnoreCase(
                          absl::StripLeadingAsciiWhitespace(request.content_type),
                          "application/x-ndjson") ||
                      body[first] != '[';
  std::vector<absl::StatusOr<json>> items;
  if (ndjson) {
    if (body[first] != '{') {
      return respond(JsonError(
          400, "batch body must be a JSON array of task requests or NDJSON (one JSON object "
               "per line)"));
    }
    for (absl::string_view line : absl::StrSplit(body, '\n')) {
      if (absl::StripAsciiWhitespace(line).empty()) continue;
      if (items.size() == kMaxBatchItems) {
        return respond(JsonError(413, absl::StrCat("batch has more than ", kMaxBatchItems,
                                                   " task requests")));
      }
      auto parsed = ParseUntrustedJson(line);
      if (parsed.ok()) {
        items.push_back(std::move(*parsed));
      } else {
        items.push_back(absl::InvalidArgumentError(
            absl::StrCat("line is ", parsed.status().message())));
      }
    }
  } else {
    auto parsed = ParseUntrustedJson(body);
    if (!parsed.ok()) {
      return respond(
          JsonError(400, absl::StrCat("batch body is ", parsed.status().message())));
    }
    if (parsed->size() > kMaxBatchItems) {
      return respond(JsonError(413, absl::StrCat("batch has ", parsed->size(),
                                                 " task requests; at most ", kMaxBatchItems)));
    }
    items.reserve(parsed->size());
    for (json& item : *parsed) items.push_back(std::move(item));
  }
  if (items.empty()) return respond(JsonError(400, "batch has no task requests"));

  // Every item's slots are written by its own completion only; the last one to finish
  // answers. Plain strings rather than JSON values per item: at 10,000 items it shows.
  struct Batch {
    explicit Batch(size_t n) : ids(n), event_ids(n), errors(n), types(n), run_ats(n) {}
    // run_ats: set for an item stored to run later (and then published by the scheduler).
    std::vector<std::string> ids, event_ids, errors, types, run_ats;
    std::atomic<size_t> pending{1};  // +1 held while publishing, so no early answer
    std::function<void(HttpResponse)> respond;
  };
  auto batch = std::make_shared<Batch>(items.size());
  batch->respond = std::move(respond);
  auto complete = [this](const std::shared_ptr<Batch>& b) {
    if (b->pending.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    const size_t n = b->ids.size();
    std::map<absl::string_view, int> submitted_by_type;
    std::string out;
    out.reserve(n * 80 + 64);
    out += "{\"results\":[";
    size_t accepted = 0;
    for (size_t i = 0; i < n; ++i) {
      if (i > 0) out += ',';
      if (!b->event_ids[i].empty()) {
        ++accepted;
        ++submitted_by_type[b->types[i]];
        absl::StrAppend(&out, "{\"id\":", Dump(b->ids[i]), ",\"event_id\":",
                        Dump(b->event_ids[i]), "}");
      } else if (!b->run_ats[i].empty()) {
        ++accepted;
        absl::StrAppend(&out, "{\"id\":", Dump(b->ids[i]), ",\"state\":\"scheduled\",\"run_at\":",
                        Dump(b->run_ats[i]), "}");
      } else {
        absl::StrAppend(&out, "{\"error\":", Dump(b->errors[i]), ",\"index\":", i, "}");
      }
    }
    absl::StrAppend(&out, "],\"accepted\":", accepted, ",\"rejected\":", n - accepted, "}");
    for (const auto& [type, count] : submitted_by_type) metrics_.TaskSubmitted(type, count);
    HttpResponse response;
    response.body = std::move(out);
    b->respond(std::move(response));
  };
  for (size_t i = 0; i < items.size(); ++i) {
    if (!items[i].ok()) {
      batch->errors[i] = std::string(items[i].status().message());
      continue;
    }
    auto prepared = Prepare(*items[i]);
    items[i] = json();  // free the parsed item now, while its memory is still warm
    if (!prepared.ok()) {
      batch->errors[i] = std::string(prepared.status().message());
      continue;
    }
    absl::StatusOr<bool> publish = RegisterTask(*prepared);
    if (!publish.ok()) {
      batch->errors[i] = std::string(publish.status().message());
      continue;
    }
    if (!*publish) {
      batch->ids[i] = std::move(prepared->id);
      batch->run_ats[i] = FormatTimeAttribute(prepared->run_at);
      continue;
    }
    batch->ids[i] = std::move(prepared->id);
    batch->types[i] = std::move(prepared->type);
    batch->pending.fetch_add(1, std::memory_order_relaxed);
    // Publish reports an outcome either through `done` or by its return value, never both
    // (EventStream's contract), so each item completes exactly once.
    auto done = [this, batch, complete, i](absl::StatusOr<PublishReceipt> receipt) {
      if (receipt.ok()) {
        batch->event_ids[i] = std::move(receipt->id);
      } else {
        MarkUnpublished(batch->ids[i], receipt.status());
        batch->errors[i] = absl::StrCat("publishing failed: ", receipt.status().message());
      }
      complete(batch);
    };
    absl::Status published =
        stream_->Publish(config_.executor.request_stream, std::move(prepared->event), done);
    if (!published.ok()) done(published);
  }
  if (log_->Enabled(LogLevel::kDebug)) {
    log_->Write(LogLevel::kDebug, "task batch submitted", {{"items", items.size()}});
  }
  complete(batch);
}

void Service::InstallRoutes() {
  HttpAdmission require_token;
  if (!config_.api_token.empty()) {
    require_token = [this](const HttpRequest& request) -> std::optional<HttpResponse> {
      if (Authorized(request.authorization)) return std::nullopt;
      HttpResponse refusal = JsonError(
          401, request.authorization.empty()
                   ? "missing Authorization: Bearer <token> (EXECUTOR_API_TOKEN is set)"
                   : "wrong bearer token");
      refusal.headers.emplace_back("WWW-Authenticate", "Bearer");
      return refusal;
    };
  }
  // Every /v1/* request, routed or not, so the API's shape is not visible without the token.
  if (require_token) http_->Guard("/v1/", require_token);
  http_->Route("GET", "/healthz", {}, [](HttpRequest&&, HttpResponder respond) {
    respond(HttpResponse{.status = 200, .content_type = "text/plain", .body = "ok\n"});
  });
  http_->Route("GET", "/readyz", {}, [this](HttpRequest&&, HttpResponder respond) {
    readiness_->Ask(std::move(respond));
  });
  http_->Route("GET", "/metrics",
               {.admission = config_.metrics_require_token ? require_token : nullptr},
               [this](HttpRequest&&, HttpResponder respond) {
                 RefreshStoreGauges();
                 metrics_.ProgressObserved(executor_->progress(), !executor_->CheckProgress().ok());
                 respond(HttpResponse{.status = 200,
                                      .content_type = "text/plain; version=0.0.4",
                                      .body = metrics_.Serialize()});
               });
  http_->Route("POST", "/v1/tasks",
               {.max_body_bytes = kMaxRequestBytes},
               [this](HttpRequest&& request, HttpResponder respond) {
                 HandleSubmit(std::move(request), std::move(respond));
               });
  dashboard_->AddRoutes(*http_);
  http_->Route("POST", "/v1/tasks:batch",
               {.max_body_bytes = kMaxBatchBytes},
               [this](HttpRequest&& request, HttpResponder respond) {
                 HandleBatch(std::move(request), std::move(respond));
               });
  http_->RoutePrefix("GET", std::string(kTasksPrefix), {},
                     [this](HttpRequest&& request, HttpResponder respond) {
                       absl::string_view rest =
                           absl::string_view(request.path).substr(kTasksPrefix.size());
                       // An id ending in "/events" is asked for as ...%2Fevents.
                       const bool events = absl::ConsumeSuffix(&rest, kEventsSuffix);
                       if (auto refusal = RequireStore(events ? "GET /v1/tasks/{id}/events"
                                                              : "GET /v1/tasks/{id}")) {
                         return respond(std::move(*refusal));
                       }
                       auto id = DecodePathSegment(rest);
                       if (!id.ok()) return respond(JsonError(400, id.status().message()));
                       if (events) return task_events_->Handle(*id, respond);
                       HandleTaskGet(*id, std::move(respond));
                     });
  http_->RoutePrefix("POST", std::string(kTasksPrefix), {.max_body_bytes = 4096},
                     [this](HttpRequest&& request, HttpResponder respond) {
                       absl::string_view rest =
                           absl::string_view(request.path).substr(kTasksPrefix.size());
                       const bool cancel = absl::ConsumeSuffix(&rest, kCancelSuffix);
                       if (!cancel && !absl::ConsumeSuffix(&rest, kRetrySuffix)) {
                         return respond(JsonError(
                             404, absl::StrCat("no route POST ", request.path,
                                               "; task actions: POST /v1/tasks/{id}:cancel, "
                                               "POST /v1/tasks/{id}:retry")));
                       }
                       if (auto refusal = RequireStore(cancel ? "POST /v1/tasks/{id}:cancel"
                                                              : "POST /v1/tasks/{id}:retry")) {
                         return respond(std::move(*refusal));
                       }
                       auto id = DecodePathSegment(rest);
                       if (!id.ok()) return respond(JsonError(400, id.status().message()));
                       if (cancel) return HandleTaskCancel(*id, std::move(respond));
                       HandleTaskRetry(*id, std::move(respond));
                     });
  http_->Route("GET", "/v1/stats", {}, [this](HttpRequest&&, HttpResponder respond) {
    if (auto refusal = RequireStore("GET /v1/stats")) return respond(std::move(*refusal));
    HandleStats(std::move(respond));
  });
  http_->Route("POST", std::string(kSchedulesPath), {.max_body_bytes = kMaxRequestBytes},
               [this](HttpRequest&& request, HttpResponder respond) {
                 if (auto refusal = RequireStore("POST /v1/schedules")) {
                   return respond(std::move(*refusal));
                 }
                 HandleScheduleCreate(std::move(request), std::move(respond));
               });
  http_->Route("GET", std::string(kSchedulesPath), {},
               [this](HttpRequest&&, HttpResponder respond) {
                 if (auto refusal = RequireStore("GET /v1/schedules")) {
                   return respond(std::move(*refusal));
                 }
                 HandleScheduleList(std::move(respond));
               });
  for (const char* method : {"GET", "DELETE"}) {
    http_->RoutePrefix(
        method, std::string(kSchedulesPrefix), {},
        [this, get = std::string(method) == "GET"](HttpRequest&& request, HttpResponder respond) {
          if (auto refusal = RequireStore(get ? "GET /v1/schedules/{id}"
                                              : "DELETE /v1/schedules/{id}")) {
            return respond(std::move(*refusal));
          }
          auto id = DecodePathSegment(
              absl::string_view(request.path).substr(kSchedulesPrefix.size()), "schedule id");
          if (!id.ok()) return respond(JsonError(400, id.status().message()));
          if (get) return HandleScheduleGet(*id, std::move(respond));
          HandleScheduleDelete(*id, std::move(respond));
        });
  }
}

std::optional<HttpResponse> Service::RequireStore(absl::string_view feature) const {
  if (store_ != nullptr) return std::nullopt;
  return JsonError(400, absl::StrCat(feature,
                                     " needs a task store, and EXECUTOR_STORE is none (set "
                                     "EXECUTOR_STORE to memory, redis or postgres)"));
}

void Service::HandleTaskGet(const std::string& id, HttpResponder respond) {
  auto record = store_->Get(id);
  if (!record.ok()) return respond(TaskLookupFailure(id, record.status()));
  respond(Json(200, TaskJson(*record)));
}

void Service::HandleTaskCancel(const std::string& id, HttpResponder respond) {
  // A task may move on between the read and the conditional write (the executor marks it
  // running): read again and decide on what it is then.
  for (int round = 0; round < 5; ++round) {
    auto record = store_->Get(id);
    if (absl::IsNotFound(record.status())) {
      return respond(JsonError(404, absl::StrCat("no task \"", id, "\"")));
    }
    if (!record.ok()) {
      return respond(JsonError(503, absl::StrCat("task store: ", record.status().message())));
    }
    const absl::Time now = stream_->clock()->Now();
    taskstore::TaskUpdate update;
    update.now = now;
    update.expected_version = record->version;
    if (taskstore::IsFinal(record->state)) {
      return respond(Json(409, {{"error", absl::StrCat("task \"", id, "\" is already ",
                                                       taskstore::TaskStateName(record->state))},
                                {"id", id},
                                {"state", std::string(taskstore::TaskStateName(record->state))}}));
    }
    const bool running = record->state == taskstore::TaskState::kRunning;
    if (running) {
      // The executor holding it sees the flag within EXECUTOR_CANCEL_POLL_INTERVAL, stops the
      // handler (TaskContext::cancelled()) and records `cancelled`.
      update.cancel_requested = true;
    } else {
      update.state = taskstore::TaskState::kCancelled;
      update.finished_at = now;
      update.expires_at = now + config_.executor.retention_cancelled;
      update.last_error = "cancelled through the task API";
    }
    auto written = store_->Update(id, update);
    if (absl::IsFailedPrecondition(written.status())) continue;
    if (!written.ok()) {
      return respond(JsonError(503, absl::StrCat("task store: ", written.status().message())));
    }
    log_->Write(LogLevel::kInfo, running ? "task cancel requested" : "task cancelled",
                {{"task_id", id}});
    return respond(Json(running ? 202 : 200, TaskJson(*written)));
  }
  respond(JsonError(503, absl::StrCat("task \"", id, "\" kept changing state; try again")));
}

void Service::HandleTaskRetry(const std::string& id, HttpResponder respond) {
  auto record = store_->Get(id);
  if (absl::IsNotFound(record.status())) {
    return respond(JsonError(404, absl::StrCat("no task \"", id, "\"")));
  }
  if (!record.ok()) {
    return respond(JsonError(503, absl::StrCat("task store: ", record.status().message())));
  }
  const std::string state(taskstore::TaskStateName(record->state));
  if (record->state != taskstore::TaskState::kFailed &&
      record->state != taskstore::TaskState::kDeadLettered) {
    return respond(Json(409, {{"error", absl::StrCat("task \"", id, "\" is ", state,
                                                     "; only failed and dead_lettered tasks "
                                                     "can be retried")},
                              {"id", id},
                              {"state", state}}));
  }
  auto document = ParseUntrustedJson(record->request);
  absl::StatusOr<TaskRequest> request =
      document.ok() ? TaskRequestFromJson(*document) : absl::StatusOr<TaskRequest>(document.status());
  if (!request.ok()) {
    return respond(JsonError(409, absl::StrCat("task \"", id, "\": its stored request is "
                                               "unusable: ", request.status().message())));
  }
  // A fresh attempt count; the history keeps the earlier attempts. The old dead letter stays
  // where it is: replaying it later finds the task's new state and is settled by it.
  const absl::Time now = stream_->clock()->Now();
  taskstore::TaskUpdate update;
  update.expected_version = record->version;
  update.now = now;
  update.state = taskstore::TaskState::kQueued;
  update.attempts = 0;
  update.finished_at = absl::InfinitePast();
  update.expires_at = absl::InfiniteFuture();
  update.result = "";
  update.append_history =
      json{{"retried_at", FormatTimeAttribute(now)}, {"from_state", state}, {"by", "api"}}.dump();
  auto written = store_->Update(id, update);
  if (absl::IsFailedPrecondition(written.status())) {
    return respond(JsonError(409, absl::StrCat("task \"", id, "\" changed meanwhile; try again")));
  }
  if (!written.ok()) {
    return respond(JsonError(503, absl::StrCat("task store: ", written.status().message())));
  }
  auto once = std::make_shared<std::atomic<bool>>(false);
  auto finish = [this, once, respond, id, type = request->type,
                 record = *written](absl::StatusOr<PublishReceipt> receipt) {
    if (once->exchange(true)) return;
    if (!receipt.ok()) {
      MarkUnpublished(id, receipt.status());
      return respond(ErrorResponse(receipt.status()));
    }
    metrics_.TaskSubmitted(type);
    log_->Write(LogLevel::kInfo, "task retried by hand", {{"task_id", id}});
    respond(Json(202, TaskJson(record)));
  };
  absl::Status published = stream_->Publish(
      config_.executor.request_stream, MakeTaskRequestEvent(*request, "eventbus-executor/http"),
      finish);
  if (!published.ok()) finish(published);
}

void Service::RefreshStoreGauges() {
  if (store_ == nullptr) return;
  auto stats = store_->Stats();
  if (!stats.ok()) return;  // the gauges keep their last values; /v1/stats says why
  const absl::Time now = stream_->clock()->Now();
  for (const taskstore::TypeStats& type : *stats) {
    for (taskstore::TaskState state : taskstore::kAllTaskStates) {
      metrics_.StoredTasks(type.type, taskstore::TaskStateName(state),
                           type.counts[static_cast<int>(state)]);
    }
    metrics_.OldestQueuedAge(type.type, type.oldest_queued_created_at == absl::InfiniteFuture()
                                            ? absl::ZeroDuration()
                                            : std::max(absl::ZeroDuration(),
                                                       now - type.oldest_queued_created_at));
  }
}

absl::StatusOr<json> Service::TaskStatsJson() {
  auto stats = store_->Stats();
  if (!stats.ok()) return absl::UnavailableError(absl::StrCat("task store: ", stats.status().message()));
  const absl::Time now = stream_->clock()->Now();
  json types = json::array();
  std::array<int64_t, taskstore::kTaskStateCount> totals{};
  for (const taskstore::TypeStats& type : *stats) {
    json entry = {{"type", type.type}};
    for (taskstore::TaskState state : taskstore::kAllTaskStates) {
      const int64_t n = type.counts[static_cast<int>(state)];
      entry[std::string(taskstore::TaskStateName(state))] = n;
      totals[static_cast<int>(state)] += n;
    }
    entry["oldest_queued_age_seconds"] =
        type.oldest_queued_created_at == absl::InfiniteFuture()
            ? json(nullptr)
            : json(absl::ToDoubleSeconds(std::max(absl::ZeroDuration(),
                                                  now - type.oldest_queued_created_at)));
    types.push_back(std::move(entry));
  }
  json total = json::object();
  for (taskstore::TaskState state : taskstore::kAllTaskStates) {
    total[std::string(taskstore::TaskStateName(state))] = totals[static_cast<int>(state)];
  }
  return json{{"types", std::move(types)}, {"total", std::move(total)}};
}

void Service::HandleStats(HttpResponder respond) {
  absl::StatusOr<json> stats = TaskStatsJson();
  if (!stats.ok()) return respond(JsonError(503, stats.status().message()));
  respond(Json(200, *stats));
}

void Service::HandleScheduleCreate(HttpRequest&& request, HttpResponder respond) {
  auto parsed = ParseUntrustedJson(request.body);
  if (!parsed.ok()) {
    return respond(JsonError(400, absl::StrCat("schedule body is ", parsed.status().message())));
  }
  const absl::Time now = stream_->clock()->Now();
  auto schedule = ScheduleFromJson(*parsed, now);
  if (!schedule.ok()) return respond(JsonError(400, schedule.status().message()));
  // The template must be a task this executor runs: the same checks as POST /v1/tasks.
  json probe = (*parsed)["task"];
  probe["id"] = ScheduledTaskId(schedule->id, now);
  if (auto prepared = Prepare(probe); !prepared.ok()) {
    return respond(JsonError(400, absl::StrCat("\"task\": ", prepared.status().message())));
  }
  auto created = store_->CreateSchedule(*schedule, now);
  if (absl::IsAlreadyExists(created.status())) {
    return respond(Json(409, {{"error", absl::StrCat("schedule \"", schedule->id,
                                                     "\" exists; DELETE it first to replace it")},
                              {"existing_id", schedule->id}}));
  }
  if (!created.ok()) {
    return respond(JsonError(503, absl::StrCat("task store: ", created.status().message())));
  }
  log_->Write(LogLevel::kInfo, "schedule created",
              {{"schedule_id", created->id},
               {"next_run_at", FormatTimeAttribute(created->next_run_at)}});
  respond(Json(201, ScheduleJson(*created)));
}

void Service::HandleScheduleList(HttpResponder respond) {
  auto schedules = store_->ListSchedules();
  if (!schedules.ok()) {
    return respond(JsonError(503, absl::StrCat("task store: ", schedules.status().message())));
  }
  json out = json::array();
  for (const taskstore::Schedule& schedule : *schedules) out.push_back(ScheduleJson(schedule));
  respond(Json(200, {{"schedules", std::move(out)}}));
}

void Service::HandleScheduleGet(const std::string& id, HttpResponder respond) {
  auto schedule = store_->GetSchedule(id);
  if (absl::IsNotFound(schedule.status())) {
    return respond(JsonError(404, absl::StrCat("no schedule \"", id, "\"")));
  }
  if (!schedule.ok()) {
    return respond(JsonError(503, absl::StrCat("task store: ", schedule.status().message())));
  }
  respond(Json(200, ScheduleJson(*schedule)));
}

void Service::HandleScheduleDelete(const std::string& id, HttpResponder respond) {
  absl::Status deleted = store_->DeleteSchedule(id);
  if (absl::IsNotFound(deleted)) {
    return respond(JsonError(404, absl::StrCat("no schedule \"", id, "\"")));
  }
  if (!deleted.ok()) return respond(JsonError(503, absl::StrCat("task store: ", deleted.message())));
  // Tasks it already made keep running and stay queryable.
  log_->Write(LogLevel::kInfo, "schedule deleted", {{"schedule_id", id}});
  respond(Json(200, {{"id", id}, {"deleted", true}}));
}

}  // namespace eventbus::executor::service
