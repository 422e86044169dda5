// The --demo run: the service working on a few tasks of every type, end to end, through the
// same HTTP API users call.

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "eventbus/executor/builtin_handlers.h"
#include "eventbus/executor/task.h"
#include "service.h"

namespace eventbus::executor::service {
namespace {

using nlohmann::json;

struct DemoTask {
  json request;
  bool expect_success;
  std::string what;
};

std::vector<DemoTask> DemoTasks(const std::string& base_url) {
  std::vector<DemoTask> tasks = {
      {{{"id", "demo-inject"}, {"type", "inject"},
        {"input", {{"data", {{"greeting", "hello from eventbus"}, {"answer", 42}}}}}},
       true, "inject: static data becomes the output"},
      {{{"id", "demo-wait"}, {"type", "wait"}, {"input", {{"duration", "PT1S"}}}},
       true, "wait: PT1S as a delayed redelivery, no worker sleeps"},
  };
  if (HasCallAndSetHandlers()) {
    tasks.push_back(
        {{{"id", "demo-set"},
          {"type", "set"},
          {"input",
           {{"data", {{"order", {{"items", {{{"price", 5}, {"qty", 2}}, {{"price", 3}, {"qty", 1}}}}}}}},
            {"assign",
             {{"total", "[.order.items[] | .price * .qty] | add"},
              {"count", ".order.items | length"}}}}}},
         true, "set: jq expressions over the input"});
    tasks.push_back({{{"id", "demo-call"},
                      {"type", "call"},
                      {"input", {{"method", "GET"}, {"url", base_url + "/healthz"}}}},
                     true, "call: HTTP GET answered 200"});
    tasks.push_back({{{"id", "demo-call-404"},
                      {"type", "call"},
                      {"input", {{"method", "GET"}, {"url", base_url + "/v1/no-such-thing"}}},
                      {"retry", {{"max_attempts", 3}}}},
                     false, "call: HTTP 404 is permanent, straight to the dead-letter stream"});
  }
  return tasks;
}

// One POST on a fresh connection (a handful of requests: no pooling needed). Returns the status
// code and body.
absl::StatusOr<std::pair<int, std::string>> PostJson(const std::string& host, int port,
                                                     const std::string& target,
                                                     const std::string& body,
                                                     const std::string& token) {
  namespace net = boost::asio;
  namespace beast = boost::beast;
  namespace http = beast::http;
  net::io_context ioc;
  beast::tcp_stream stream(ioc);
  beast::error_code ec;
  net::ip::tcp::resolver resolver(ioc);
  auto endpoints = resolver.resolve(host, std::to_string(port), ec);
  if (!ec) stream.connect(endpoints, ec);
  http::request<http::string_body> request{http::verb::post, target, 11};
  request.set(http::field::host, host);
  request.set(http::field::content_type, "application/json");
  if (!token.empty()) request.set(http::field::authorization, "Bearer " + token);
  request.body() = body;
  request.prepare_payload();
  if (!ec) http::write(stream, request, ec);
  beast::flat_buffer buffer;
  http::response<http::string_body> response;
  if (!ec) http::read(stream, buffer, response, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("POST ", target, " on ", host, ":", port, " failed: ", ec.message()));
  }
  return std::make_pair(static_cast<int>(response.result_int()), std::move(response.body()));
}

}  // namespace

absl::Status RunDemo(Service& service) {
  const ExecutorOptions& options = service.config().executor;
  const std::string dlq_stream = options.dead_letter_stream.empty()
                                     ? absl::StrCat(options.request_stream, kDlqStreamSuffix)
                                     : options.dead_letter_stream;
  // Observers join before anything is submitted, so they see every result.
  SubscribeOptions observe_results{.stream = options.result_stream,
                                   .group = "demo-observer",
                                   .consumer = "demo"};
  SubscribeOptions observe_dlq{.stream = dlq_stream, .group = "demo-observer", .consumer = "demo"};
  auto results = service.stream()->Subscribe(observe_results);
  if (!results.ok()) return results.status();
  auto dead_letters = service.stream()->Subscribe(observe_dlq);
  if (!dead_letters.ok()) return dead_letters.status();

  std::string host = service.config().http_host;
  if (host == "0.0.0.0" || host == "::" || host.empty()) host = "127.0.0.1";
  const std::string base_url = absl::StrCat("http://", host, ":", service.http_port());

  const std::vector<DemoTask> tasks = DemoTasks(base_url);
  std::printf("== eventbus-executor demo on the %s backend (API %s)\n",
              std::string(service.stream()->backend_name()).c_str(), base_url.c_str());
  std::map<std::string, const DemoTask*> by_id;
  int expected_failures = 0;
  for (const DemoTask& task : tasks) {
    auto res = PostJson(host, service.http_port(), "/v1/tasks", task.request.dump(),
                        service.config().api_token);
    if (!res.ok()) return res.status();
    if (res->first != 202) {
      return absl::InternalError(
          absl::StrCat("POST /v1/tasks answered ", res->first, ": ", res->second));
    }
    std::printf("-> POST /v1/tasks %-14s 202 %s\n", task.request["id"].get<std::string>().c_str(),
                task.what.c_str());
    by_id[task.request["id"].get<std::string>()] = &task;
    if (!task.expect_success) ++expected_failures;
  }

  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  std::map<std::string, TaskResult> seen;
  int dead_lettered = 0;
  bool all_as_expected = true;
  while ((seen.size() < tasks.size() || dead_lettered < expected_failures) && absl::Now() < deadline) {
    auto fetched = (*results)->Fetch(16, absl::Milliseconds(200));
    if (!fetched.ok()) return fetched.status();
    for (const Delivery& delivery : *fetched) {
      (*results)->Ack(delivery).IgnoreError();
      auto result = ParseTaskResult(delivery.event.data());
      if (!result.ok() || !by_id.contains(result->task_id)) continue;
      const bool ok = result->status == TaskStatus::kSucceeded;
      const bool expected = ok == by_id[result->task_id]->expect_success;
      all_as_expected = all_as_expected && expected;
      std::printf("<- result %-14s %-9s attempts=%d %s%s\n", result->task_id.c_str(),
                  std::string(TaskStatusName(result->status)).c_str(), result->attempts,
                  ok ? "output=" : "error=",
                  ok ? (result->output ? result->output->dump().c_str() : "null")
                     : absl::StrCat(result->error_kind, ": ", result->error).c_str());
      seen[result->task_id] = *result;
    }
    auto dlq = (*dead_letters)->Fetch(16, absl::Milliseconds(10));
    if (!dlq.ok()) return dlq.status();
    for (const Delivery& delivery : *dlq) {
      (*dead_letters)->Ack(delivery).IgnoreError();
      const auto& headers = delivery.event.headers();
      auto reason = headers.find(std::string(kDlqReasonHeader));
      std::printf("<- dead letter on %s: task %s, reason: %s\n", dlq_stream.c_str(),
                  delivery.event.subject().c_str(),
                  reason == headers.end() ? "(none)" : reason->second.c_str());
      ++dead_lettered;
    }
  }
  std::fflush(stdout);
  if (seen.size() < tasks.size() || dead_lettered < expected_failures) {
    return absl::DeadlineExceededError(absl::StrCat("demo: saw ", seen.size(), " of ",
                                                    tasks.size(), " results and ", dead_lettered,
                                                    " of ", expected_failures, " dead letters"));
  }
  if (!all_as_expected) return absl::InternalError("demo: a task did not end as expected");
  std::printf("== demo done: %zu tasks, %d dead-lettered as expected; metrics at %s/metrics\n",
              tasks.size(), dead_lettered, base_url.c_str());
  return absl::OkStatus();
}

}  // namespace eventbus::executor::service
