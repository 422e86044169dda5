#include "service.h"

#include <httplib.h>

#include <nlohmann/json.hpp>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "eventbus/clock.h"
#include "eventbus/executor/builtin_handlers.h"
#include "eventbus/executor/task.h"
#include "eventbus/status_macros.h"

namespace eventbus::executor::service {
namespace {

using nlohmann::json;

constexpr size_t kMaxRequestBytes = 1 << 20;

void SendJson(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

}  // namespace

Service::Service(ServiceConfig config, Environment env, JsonLog* log)
    : config_(std::move(config)), env_(std::move(env)), log_(log) {}

Service::~Service() { Stop(); }

absl::Status Service::Start() {
  auto stream = BackendRegistry::Global().CreateFromEnvironment(env_);
  if (!stream.ok()) {
    return absl::Status(stream.status().code(),
                        absl::StrCat("cannot create the ", config_.stream_type,
                                     " event stream: ", stream.status().message()));
  }
  stream_ = std::move(*stream);
  auto backend_config = BackendRegistry::Global().ConfigFromEnvironment(config_.stream_type, env_);
  log_->Write(LogLevel::kInfo, "event stream ready",
              {{"backend", std::string(stream_->backend_name())},
               {"url", backend_config.ok() ? RedactUrl(backend_config->url) : std::string()}});

  BuiltinHandlerOptions builtin;
  builtin.clock = stream_->clock();
  builtin.ca_file = config_.ca_file;
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

  ExecutorOptions options = config_.executor;
  if (config_.task_timeout || config_.max_attempts) {
    for (const std::string& type : handlers_.Types()) {
      TaskPolicy policy = handlers_.Find(type)->DefaultPolicy();
      if (config_.task_timeout) policy.timeout = *config_.task_timeout;
      if (config_.max_attempts) policy.retry.max_attempts = *config_.max_attempts;
      options.type_policies[type] = policy;
    }
  }
  executor_ = std::make_unique<Executor>(
      stream_.get(), &handlers_, options,
      ExecutorDependencies{.metrics = &metrics_,
                           .random = nullptr,
                           .log = [this](const TaskLogRecord& record) { log_->WriteTask(record); }});

  http_ = std::make_unique<httplib::Server>();
  http_->set_payload_max_length(kMaxRequestBytes);
  // Idle keep-alive connections hold a server thread until they time out, and stop() waits for
  // them: keep that short so shutdown is quick.
  http_->set_keep_alive_timeout(1);
  InstallRoutes();
  if (config_.http_port == 0) {
    http_port_ = http_->bind_to_any_port(config_.http_host);
  } else {
    http_port_ = http_->bind_to_port(config_.http_host, config_.http_port) ? config_.http_port : -1;
  }
  if (http_port_ <= 0) {
    return absl::UnavailableError(absl::StrCat("EXECUTOR_HTTP_ADDR: cannot listen on ",
                                               config_.http_host, ":", config_.http_port,
                                               " (address in use or not local?)"));
  }
  EVENTBUS_RETURN_IF_ERROR(executor_->Start());
  http_thread_ = std::thread([this] { http_->listen_after_bind(); });
  // httplib::Server::stop() before the listen loop started would be lost (Stop would hang).
  while (!http_->is_running()) std::this_thread::yield();
  log_->Write(LogLevel::kInfo, "eventbus-executor started",
              {{"http", absl::StrCat(config_.http_host, ":", http_port_)},
               {"backend", config_.stream_type},
               {"request_stream", options.request_stream},
               {"result_stream", options.result_stream},
               {"consumer_group", options.consumer_group},
               {"concurrency", options.concurrency},
               {"task_types", handlers_.Types()}});
  return absl::OkStatus();
}

void Service::Stop() {
  if (stopped_) return;
  stopped_ = true;
  log_->Write(LogLevel::kInfo, "shutting down");
  // New tasks are refused first; then the executor drains.
  if (http_ != nullptr) {
    http_->stop();
    if (http_thread_.joinable()) http_thread_.join();
  }
  if (executor_ != nullptr) executor_->Shutdown();
  if (stream_ != nullptr) {
    if (absl::Status s = stream_->Flush(absl::Seconds(10)); !s.ok()) {
      log_->Write(LogLevel::kWarn, "flushing the event stream failed", {{"error", s.ToString()}});
    }
  }
  log_->Write(LogLevel::kInfo, "eventbus-executor stopped");
}

absl::StatusOr<Service::Submitted> Service::Submit(absl::string_view body) {
  auto parsed = ParseUntrustedJson(body);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("request body is ", parsed.status().message()));
  }
  json& document = *parsed;
  if (document.is_object() && !document.contains("id")) document["id"] = NewEventId();
  EVENTBUS_ASSIGN_OR_RETURN(TaskRequest request, TaskRequestFromJson(document));
  const TaskHandler* handler = handlers_.Find(request.type);
  if (handler == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("unknown task type \"", request.type,
                                                   "\"; registered types: ",
                                                   absl::StrJoin(handlers_.Types(), ", ")));
  }
  EVENTBUS_RETURN_IF_ERROR(handler->Supports(request));
  Event event = MakeTaskRequestEvent(request, "eventbus-executor/http");
  EVENTBUS_ASSIGN_OR_RETURN(
      PublishReceipt receipt,
      stream_->PublishAndWait(config_.executor.request_stream, std::move(event), absl::Seconds(10)));
  metrics_.TaskSubmitted(request.type);
  log_->Write(LogLevel::kDebug, "task submitted",
              {{"task_id", request.id}, {"task_type", request.type}, {"event_id", receipt.id}});
  return Submitted{request.id, receipt.id};
}

void Service::InstallRoutes() {
  http_->Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });
  http_->Get("/readyz", [this](const httplib::Request&, httplib::Response& res) {
    absl::Status s = stream_->Ping(absl::Seconds(2));
    if (s.ok()) {
      res.set_content("ready\n", "text/plain");
    } else {
      res.status = 503;
      res.set_content(absl::StrCat("not ready: ", s.ToString(), "\n"), "text/plain");
    }
  });
  http_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_.Serialize(), "text/plain; version=0.0.4");
  });
  http_->Post("/v1/tasks", [this](const httplib::Request& req, httplib::Response& res) {
    auto submitted = Submit(req.body);
    if (submitted.ok()) {
      SendJson(res, 202, {{"id", submitted->task_id}, {"event_id", submitted->event_id},
                          {"stream", config_.executor.request_stream}});
      return;
    }
    const bool bad_request = submitted.status().code() == absl::StatusCode::kInvalidArgument;
    SendJson(res, bad_request ? 400 : 503, {{"error", std::string(submitted.status().message())}});
  });
  // Anything else is a clear 404 (the demo's failing `call` targets one).
  http_->set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (res.status == 404) {
      SendJson(res, 404, {{"error", absl::StrCat("no route ", req.method, " ", req.path)}});
    }
  });
}

}  // namespace eventbus::executor::service
