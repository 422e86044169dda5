#include "eventbus/executor/call_handler.h"

#include <algorithm>
#include <future>
#include <memory>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "eventbus/executor/iso_duration.h"
#include "eventbus/status_macros.h"

namespace eventbus::executor {
namespace {

using nlohmann::json;

constexpr int64_t kMaxRedirects = 20;

// Stable across retries and redeliveries of one task, so the remote side can deduplicate
// them: the task id, with anything outside visible ASCII (and '%') percent-encoded so it is a
// valid header value.
std::string IdempotencyKey(absl::string_view task_id) {
  std::string key;
  for (unsigned char c : task_id) {
    if (c > 0x20 && c < 0x7f && c != '%') {
      key.push_back(static_cast<char>(c));
    } else {
      absl::StrAppend(&key, "%", absl::Hex(c, absl::kZeroPad2));
    }
  }
  return key;
}

absl::Status Bad(absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("call: ", why));
}

// The request a task's input describes; the timeout is left to the caller.
absl::StatusOr<HttpRequest> RequestFromInput(const json& input,
                                             std::optional<absl::Duration>* timeout) {
  for (const auto& [key, value] : input.items()) {
    if (key != "url" && key != "method" && key != "headers" && key != "body" &&
        key != "timeout" && key != "follow_redirects" && key != "max_redirects") {
      return Bad(absl::StrCat("unknown input field \"", key,
                              "\"; valid: url, method, headers, body, timeout, "
                              "follow_redirects, max_redirects"));
    }
  }
  HttpRequest request;
  auto url = input.find("url");
  if (url == input.end() || !url->is_string()) return Bad("input.url is required (a string)");
  request.url = url->get<std::string>();
  if (absl::Status s = HttpHostKey(request.url).status(); !s.ok()) {
    return Bad(absl::StrCat("input.url: ", s.message()));
  }
  if (auto method = input.find("method"); method != input.end()) {
    if (!method->is_string()) return Bad("input.method must be a string");
    auto parsed = ParseHttpMethod(method->get<std::string>());
    if (!parsed.ok()) return Bad(absl::StrCat("input.method: ", parsed.status().message()));
    request.method = *parsed;
  }
  bool has_content_type = false;
  if (auto headers = input.find("headers"); headers != input.end()) {
    if (!headers->is_object()) return Bad("input.headers must be an object of strings");
    for (const auto& [name, value] : headers->items()) {
      if (!value.is_string()) return Bad(absl::StrCat("input.headers.", name, " must be a string"));
      if (absl::EqualsIgnoreCase(name, "content-type")) has_content_type = true;
      request.headers.emplace_back(name, value.get<std::string>());
    }
  }
  if (auto body = input.find("body"); body != input.end() && !body->is_null()) {
    if (body->is_string()) {
      request.body = body->get<std::string>();
    } else {
      request.body = body->dump();
      if (!has_content_type) request.headers.emplace_back("Content-Type", "application/json");
    }
    if (request.method == HttpMethod::kGet && !request.body.empty()) {
      return Bad("input.body is not allowed with GET");
    }
  }
  if (auto follow = input.find("follow_redirects"); follow != input.end()) {
    if (!follow->is_boolean()) return Bad("input.follow_redirects must be true or false");
    request.follow_redirects = follow->get<bool>();
  }
  if (auto hops = input.find("max_redirects"); hops != input.end()) {
    if (!hops->is_number_integer() || hops->get<int64_t>() < 0 ||
        hops->get<int64_t>() > kMaxRedirects) {
      return Bad(absl::StrCat("input.max_redirects must be an integer from 0 to ", kMaxRedirects));
    }
    request.max_redirects = static_cast<int>(hops->get<int64_t>());
  }
  if (auto t = input.find("timeout"); t != input.end()) {
    if (!t->is_string()) return Bad("input.timeout must be an ISO 8601 duration string");
    auto parsed = ParseIsoDuration(t->get<std::string>());
    if (!parsed.ok()) return Bad(absl::StrCat("input.timeout: ", parsed.status().message()));
    if (*parsed <= absl::ZeroDuration()) return Bad("input.timeout must be positive");
    *timeout = *parsed;
  }
  return request;
}

json ResponseOutput(const HttpResponse& response) {
  json headers = json::object();
  for (const auto& [name, value] : response.headers) {
    std::string key = absl::AsciiStrToLower(name);
    if (!headers.contains(key)) headers[key] = value;  // first occurrence, as Header() does
  }
  json body = response.body;
  const std::string content_type = absl::AsciiStrToLower(response.Header("content-type").value_or(""));
  if (absl::StrContains(content_type, "json")) {
    // A body that is not JSON after all (or absurdly deep) stays text.
    if (auto parsed = ParseUntrustedJson(response.body); parsed.ok()) body = *std::move(parsed);
  }
  return json{{"status", response.status},
              {"headers", std::move(headers)},
              {"body", std::move(body)},
              {"elapsed_ms", absl::ToDoubleMilliseconds(response.elapsed)}};
}

// What a transport result or a response means for the task and for the host's breaker.
TaskOutcome Interpret(HttpMethod method, const std::string& host, CircuitBreaker::Permit& permit,
                      absl::StatusOr<HttpResponse> response) {
  if (!response.ok()) {
    if (absl::IsCancelled(response.status())) {
      // Stopped by the executor (timeout, shutdown): says nothing about the host, so the
      // permit is dropped without an outcome; a half-open probe stays a probe.
      return TaskOutcome::Transient(
          absl::StrCat(HttpMethodName(method), " ", host, ": cancelled before an answer"));
    }
    const bool transient = IsTransientHttpError(response.status());
    if (transient) {
      permit.RecordFailure();
    } else {
      // A bad request, a bad certificate or a denied destination says nothing of the host.
      permit.RecordSuccess();
    }
    // The client's messages name scheme://host:port only, never the path or query.
    std::string error =
        absl::StrCat(HttpMethodName(method), " ", host, ": ", response.status().ToString());
    return transient ? TaskOutcome::Transient(std::move(error))
                     : TaskOutcome::Permanent(std::move(error));
  }
  json output = ResponseOutput(*response);
  // The host, not the URL: a path or query string may carry a token.
  const std::string summary =
      absl::StrCat(HttpMethodName(method), " ", host, " answered HTTP ", response->status);
  switch (ClassifyHttpResponse(*response)) {
    case HttpOutcome::kSuccess:
      permit.RecordSuccess();
      return TaskOutcome::Succeeded(std::move(output));
    case HttpOutcome::kTransient:
      permit.RecordFailure();
      return TaskOutcome::Transient(summary, std::move(output));
    case HttpOutcome::kPermanent:
      permit.RecordSuccess();  // the host is up; the request is wrong
      return TaskOutcome::Permanent(summary, std::move(output));
  }
  return TaskOutcome::Permanent(summary, std::move(output));
}

class CallHandler final : public TaskHandler {
 public:
  CallHandler(CallHandlerOptions options, std::unique_ptr<HttpClient> client,
              std::unique_ptr<CircuitBreakerRegistry> breakers)
      : options_(std::move(options)), client_(std::move(client)), breakers_(std::move(breakers)) {}

  std::string type() const override { return "call"; }
  TaskPolicy DefaultPolicy() const override { return options_.policy; }
  bool asynchronous() const override { return true; }

  absl::Status Supports(const TaskRequest& request) const override {
    std::optional<absl::Duration> timeout;
    return RequestFromInput(request.Input(), &timeout).status();
  }

  // Starts the request; `done` runs on the HTTP client's loop thread (or inline when the call
  // never starts: bad input, no time left, open circuit).
  void HandleAsync(TaskContext& context, TaskOutcomeCallback done) override {
    std::optional<absl::Duration> timeout;
    auto request = RequestFromInput(context.input(), &timeout);
    if (!request.ok()) return done(TaskOutcome::Permanent(std::string(request.status().message())));
    // Never outlive the processing deadline: the executor stops waiting then anyway.
    const absl::Duration remaining = context.Remaining();
    if (remaining <= absl::ZeroDuration()) {
      return done(TaskOutcome::Transient("call: no time left before the processing deadline"));
    }
    request->timeout = std::min(timeout.value_or(options_.default_request_timeout), remaining);
    request->connect_timeout = std::min(request->connect_timeout, request->timeout);
    // `context` outlives the call: the executor keeps it until `done` has run.
    request->cancelled = [&context] { return context.cancelled(); };
    const bool has_key = std::any_of(request->headers.begin(), request->headers.end(),
                                     [](const auto& header) {
                                       return absl::EqualsIgnoreCase(header.first,
                                                                     "idempotency-key");
                                     });
    if (!has_key) {
      request->headers.emplace_back("Idempotency-Key", IdempotencyKey(context.request().id));
    }

    auto host = HttpHostKey(request->url);
    if (!host.ok()) return done(TaskOutcome::Permanent(std::string(host.status().message())));
    auto permit = breakers_->ForHost(*host)->Acquire();
    if (!permit.ok()) {
      // The host is failing: not this task's fault, so it is retried after its backoff.
      return done(TaskOutcome::Transient(std::string(permit.status().message())));
    }
    // std::function needs a copyable callable; the permit is move-only.
    auto shared_permit = std::make_shared<CircuitBreaker::Permit>(*std::move(permit));
    const HttpMethod method = request->method;
    client_->SendAsync(*std::move(request),
                       [method, host = *std::move(host), permit = std::move(shared_permit),
                        done = std::move(done)](absl::StatusOr<HttpResponse> response) {
                         done(Interpret(method, host, *permit, std::move(response)));
                       });
  }

  // For executors that run every handler on a worker: the asynchronous path and a wait.
  TaskOutcome Handle(TaskContext& context) override {
    std::promise<TaskOutcome> outcome;
    std::future<TaskOutcome> result = outcome.get_future();
    HandleAsync(context, [&outcome](TaskOutcome o) { outcome.set_value(std::move(o)); });
    return result.get();
  }

 private:
  const CallHandlerOptions options_;
  std::unique_ptr<HttpClient> client_;
  std::unique_ptr<CircuitBreakerRegistry> breakers_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<TaskHandler>> NewCallHandler(CallHandlerOptions options) {
  if (options.clock == nullptr) options.clock = Clock::Real();
  if (options.default_request_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("call: default request timeout must be positive");
  }
  EVENTBUS_ASSIGN_OR_RETURN(std::unique_ptr<HttpClient> client, HttpClient::Create(options.http));
  EVENTBUS_ASSIGN_OR_RETURN(
      std::unique_ptr<CircuitBreakerRegistry> breakers,
      CircuitBreakerRegistry::Create(options.breakers, options.clock, options.on_circuit_change));
  return std::make_unique<CallHandler>(std::move(options), std::move(client), std::move(breakers));
}

}  // namespace eventbus::executor
