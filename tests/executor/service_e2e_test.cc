// End to end: the real eventbus-executor binary, driven over its HTTP API, against the memory
// backend and (when built) a real redis-server and Kafka broker the test starts itself.

#include <httplib.h>

#include <dirent.h>
#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "eventbus/executor/builtin_handlers.h"
#include "eventbus/executor/task.h"
#include "eventbus/harness/server_process.h"
#include "eventbus/registry.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "local_http_server.h"
#include "raw_http_client.h"
#ifdef EVENTBUS_E2E_WITH_REDIS
#include "eventbus/harness/redis_server.h"
#include "eventbus/redis/redis_event_stream.h"
#endif
#ifdef EVENTBUS_E2E_WITH_NATS
#include "eventbus/harness/nats_server.h"
#include "eventbus/nats/nats_event_stream.h"
#endif
#ifdef EVENTBUS_E2E_WITH_POSTGRES
#include "eventbus/harness/postgres_server.h"
#endif
#ifdef EVENTBUS_E2E_WITH_KAFKA
#include "eventbus/harness/kafka_broker.h"
#include "eventbus/kafka/kafka_event_stream.h"
#endif

namespace eventbus::executor {
namespace {

using ::nlohmann::json;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::RawHttpClient;
using testing::RawResponse;

std::string Post(absl::string_view target, absl::string_view body, absl::string_view extra = "") {
  return RawHttpClient::Request("POST", target, body, extra);
}

json JsonBody(const RawResponse& response) { return json::parse(response.body, nullptr, false); }

constexpr absl::Duration kSafety = absl::Seconds(60);

// The service binary on a free loopback port, with its log in a temp dir.
class ExecutorProcess {
 public:
  static std::unique_ptr<ExecutorProcess> Start(std::vector<std::string> env) {
    auto process = std::unique_ptr<ExecutorProcess>(new ExecutorProcess());
    auto port = harness::FreeLoopbackPort();
    EXPECT_TRUE(port.ok()) << port.status();
    auto dir = harness::MakeTempDir("eventbus-executor-e2e");
    EXPECT_TRUE(dir.ok()) << dir.status();
    if (!port.ok() || !dir.ok()) return nullptr;
    process->port_ = *port;
    process->dir_ = *dir;
    env.push_back(absl::StrCat("EXECUTOR_HTTP_ADDR=127.0.0.1:", *port));
    env.push_back("EXECUTOR_STREAM_BLOCK=100ms");
    env.push_back("EXECUTOR_SHUTDOWN_DEADLINE=5s");
    auto server = harness::ServerProcess::Start({.program = EVENTBUS_EXECUTOR_BINARY,
                                                 .args = {},
                                                 .log_path = *dir + "/executor.log",
                                                 .env = std::move(env)});
    EXPECT_TRUE(server.ok()) << server.status();
    if (!server.ok()) return nullptr;
    process->server_ = std::move(*server);
    absl::Status up = harness::WaitForTcpPort(*port, absl::Seconds(30));
    EXPECT_TRUE(up.ok()) << up << "\n" << process->server_->LogTail();
    if (!up.ok()) return nullptr;
    return process;
  }

  ~ExecutorProcess() {
    if (server_ != nullptr) server_->Stop(absl::Seconds(15));
    harness::RemoveTree(dir_);
  }

  httplib::Client Client() const {
    httplib::Client client("127.0.0.1", port_);
    client.set_read_timeout(20);
    return client;
  }

  // POSTs a task; returns the HTTP status and body.
  std::pair<int, json> Submit(const json& task) const { return SubmitRaw(task.dump()); }
  std::pair<int, json> SubmitRaw(const std::string& body) const {
    auto res = Client().Post("/v1/tasks", body, "application/json");
    if (!res) return {0, json()};
    return {res->status, json::parse(res->body, nullptr, false)};
  }

  // The value of one sample of /metrics ("name{labels}"), 0 when absent.
  double Metric(absl::string_view sample) const {
    auto res = Client().Get("/metrics");
    if (!res || res->status != 200) return -1;
    for (absl::string_view line : absl::StrSplit(res->body, '\n')) {
      if (absl::StartsWith(line, "#")) continue;
      const size_t space = line.rfind(' ');
      if (space == absl::string_view::npos || line.substr(0, space) != sample) continue;
      double value = 0;
      if (absl::SimpleAtod(line.substr(space + 1), &value)) return value;
    }
    return 0;
  }

  // Waits until the sample reaches `value`; false (and the log) after the safety bound.
  bool AwaitMetric(absl::string_view sample, double value) const {
    const absl::Time deadline = absl::Now() + kSafety;
    double seen = 0;
    while (absl::Now() < deadline) {
      seen = Metric(sample);
      if (seen >= value) return true;
      absl::SleepFor(absl::Milliseconds(50));  // polling a remote process: no event to wait on
    }
    ADD_FAILURE() << sample << " is " << seen << ", expected " << value << "\n" << LogTail();
    return false;
  }

  int port() const { return port_; }
  void Stop() { server_->Stop(absl::Seconds(15)); }
  pid_t pid() const { return server_->pid(); }
  std::string LogTail() const { return server_->LogTail(8000); }
  std::string Log() const {
    std::ifstream in(server_->log_path());
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }

 private:
  ExecutorProcess() = default;
  int port_ = 0;
  std::string dir_;
  std::unique_ptr<harness::ServerProcess> server_;
};

json InjectTask(int i) {
  return {{"id", absl::StrCat("e2e-", i)}, {"type", "inject"}, {"input", {{"data", {{"i", i}}}}}};
}

TEST(ServiceEndToEnd, MemoryBackendPublishesAResultForEverySubmittedTask) {
  auto service = ExecutorProcess::Start({"EVENT_STREAM_TYPE=memory", "LOG_LEVEL=info"});
  ASSERT_NE(service, nullptr);
  EXPECT_EQ(service->Client().Get("/healthz")->status, 200);
  EXPECT_EQ(service->Client().Get("/readyz")->status, 200);

  constexpr int kInject = 40;
  constexpr int kWait = 5;
  for (int i = 0; i < kInject; ++i) {
    auto [status, body] = service->Submit(InjectTask(i));
    ASSERT_EQ(status, 202) << body;
    EXPECT_EQ(body["id"], absl::StrCat("e2e-", i));
  }
  for (int i = 0; i < kWait; ++i) {
    auto [status, body] = service->Submit(
        {{"type", "wait"}, {"input", {{"duration", "PT0.2S"}}}});  // id filled in by the API
    ASSERT_EQ(status, 202) << body;
    EXPECT_FALSE(body["id"].get<std::string>().empty());
  }
  // Bad requests are refused at the door with a reason, and the service keeps going.
  auto [bad_status, bad_body] = service->SubmitRaw("{not json");
  EXPECT_EQ(bad_status, 400);
  EXPECT_THAT(bad_body["error"].get<std::string>(), HasSubstr("not valid JSON"));
  auto [unknown_status, unknown_body] = service->Submit({{"type", "teleport"}});
  EXPECT_EQ(unknown_status, 400);
  EXPECT_THAT(unknown_body["error"].get<std::string>(), HasSubstr("unknown task type"));
  auto [input_status, input_body] = service->Submit({{"type", "wait"}, {"input", json::object()}});
  EXPECT_EQ(input_status, 400);
  EXPECT_THAT(input_body["error"].get<std::string>(), HasSubstr("input.duration"));

  ASSERT_TRUE(service->AwaitMetric(
      R"(eventbus_executor_results_published_total{status="succeeded"})", kInject + kWait));
  EXPECT_EQ(service->Metric(R"(eventbus_executor_tasks_submitted_total{type="inject"})"), kInject);
  EXPECT_EQ(service->Metric(R"(eventbus_executor_tasks_submitted_total{type="wait"})"), kWait);
  EXPECT_EQ(service->Metric(R"(eventbus_executor_tasks_total{outcome="succeeded",type="inject"})"),
            kInject);
  EXPECT_EQ(service->Metric(R"(eventbus_executor_tasks_total{outcome="succeeded",type="wait"})"),
            kWait);
  EXPECT_EQ(service->Metric(R"(eventbus_executor_tasks_total{outcome="delayed",type="wait"})"),
            kWait);
  EXPECT_EQ(service->Metric(R"(eventbus_executor_results_published_total{status="failed"})"), 0);
  EXPECT_EQ(service->Metric("eventbus_executor_in_flight"), 0);
  EXPECT_EQ(service->Metric(R"(eventbus_executor_task_duration_seconds_count{type="inject"})"),
            kInject);

  service->Stop();
  const std::string log = service->Log();
  EXPECT_THAT(log, HasSubstr("\"msg\":\"stop signal received\""));
  EXPECT_THAT(log, HasSubstr("\"msg\":\"eventbus-executor stopped\""));
}

// Every family docs/tasks.md lists is in the first scrape, each labelled series at zero, so
// dashboards and alerts (rate of failures, dead letters, backend errors) work before the first
// event.
TEST(ServiceEndToEnd, FreshServiceExportsEveryDocumentedSeriesAtZero) {
  auto service = ExecutorProcess::Start({"EVENT_STREAM_TYPE=memory", "LOG_LEVEL=warn"});
  ASSERT_NE(service, nullptr);
  auto res = service->Client().Get("/metrics");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200);
  // "name{labels}" -> value, labels as prometheus-cpp writes them (sorted by name).
  std::map<std::string, std::string> samples;
  for (absl::string_view line : absl::StrSplit(res->body, '\n')) {
    if (line.empty() || absl::StartsWith(line, "#")) continue;
    const size_t space = line.rfind(' ');
    if (space == absl::string_view::npos) continue;
    samples[std::string(line.substr(0, space))] = std::string(line.substr(space + 1));
  }
  auto expect_zero = [&](const std::string& sample) {
    auto it = samples.find(sample);
    if (it == samples.end()) {
      ADD_FAILURE() << "missing from the first scrape: " << sample << "\n" << res->body;
      return;
    }
    double value = -1;
    EXPECT_TRUE(absl::SimpleAtod(it->second, &value)) << sample << " " << it->second;
    EXPECT_EQ(value, 0) << sample;
  };
  std::vector<std::string> types = {"inject", "wait"};
#ifdef EVENTBUS_EXECUTOR_HAS_COMPONENTS
  types.insert(types.end(), {"call", "set"});
#endif
  for (const std::string& type : types) {
    for (const char* outcome :
         {"succeeded", "failed", "retried", "delayed", "invalid", "abandoned", "escalated"}) {
      expect_zero(absl::StrCat("eventbus_executor_tasks_total{outcome=\"", outcome, "\",type=\"",
                               type, "\"}"));
    }
    expect_zero(absl::StrCat("eventbus_executor_task_duration_seconds_count{type=\"", type, "\"}"));
    expect_zero(absl::StrCat("eventbus_executor_retries_total{type=\"", type, "\"}"));
    expect_zero(absl::StrCat("eventbus_executor_dead_letters_total{type=\"", type, "\"}"));
    expect_zero(absl::StrCat("eventbus_executor_tasks_submitted_total{type=\"", type, "\"}"));
    expect_zero(
        absl::StrCat("eventbus_executor_stuck_tasks_requeued_total{type=\"", type, "\"}"));
  }
  expect_zero("eventbus_executor_tasks_total{outcome=\"invalid\",type=\"_unknown\"}");
  expect_zero("eventbus_executor_dead_letters_total{type=\"_unknown\"}");
  for (const char* status : {"succeeded", "failed"}) {
    expect_zero(absl::StrCat("eventbus_executor_results_published_total{status=\"", status, "\"}"));
  }
  for (const char* operation : {"fetch", "reclaim"}) {
    expect_zero(absl::StrCat("eventbus_executor_backend_errors_total{operation=\"", operation, "\"}"));
  }
#ifdef EVENTBUS_EXECUTOR_HAS_COMPONENTS
  for (const char* state : {"closed", "open", "half_open"}) {
    expect_zero(absl::StrCat("eventbus_executor_circuit_transitions_total{state=\"", state, "\"}"));
  }
#endif
  expect_zero("eventbus_executor_in_flight");
  expect_zero("eventbus_executor_fetch_lag_seconds_count");
  expect_zero("eventbus_executor_stuck_workers");
  expect_zero("eventbus_executor_stalled");
  expect_zero("eventbus_executor_instance_heartbeat_failures_total");
  ASSERT_TRUE(samples.contains("eventbus_executor_fetch_stalled_seconds")) << res->body;
  double stalled_seconds = -1;
  ASSERT_TRUE(absl::SimpleAtod(samples["eventbus_executor_fetch_stalled_seconds"], &stalled_seconds));
  EXPECT_LT(stalled_seconds, 5) << "a fresh service on memory fetches without stalling";
}

TEST(ServiceEndToEnd, KeepAliveConnectionAnswersEveryRequestWithoutDelayedAckStalls) {
  auto service = ExecutorProcess::Start({"LOG_LEVEL=warn"});
  ASSERT_NE(service, nullptr);
  RawHttpClient client(service->port());
  ASSERT_TRUE(client.connected());
  constexpr int kRequests = 200;
  const absl::Time start = absl::Now();
  for (int i = 0; i < kRequests; ++i) {
    auto response = client.RoundTrip(Post("/v1/tasks", InjectTask(i).dump()));
    ASSERT_TRUE(response.has_value()) << "request " << i << " got no answer";
    ASSERT_EQ(response->status, 202) << response->body;
    EXPECT_EQ(JsonBody(*response)["id"], absl::StrCat("e2e-", i));
    EXPECT_THAT(response->Header("connection"), Not(HasSubstr("close")));
  }
  // With Nagle on and the reply in two writes, each answer waited ~40 ms for the client's
  // delayed ACK: 200 of them took 8 s. A quarter of that leaves room for a loaded machine.
  EXPECT_LT(absl::Now() - start, absl::Seconds(2)) << "keep-alive replies are stalling";
  ASSERT_TRUE(service->AwaitMetric(
      R"(eventbus_executor_results_published_total{status="succeeded"})", kRequests));
}

TEST(ServiceEndToEnd, BatchEndpointTakesJsonArraysAndNdjsonWithPerItemResults) {
  auto service = ExecutorProcess::Start({"LOG_LEVEL=warn"});
  ASSERT_NE(service, nullptr);
  RawHttpClient client(service->port());
  // An array with a bad item among good ones: the good ones are published, in order.
  const json array = json::array(
      {InjectTask(1), {{"type", "teleport"}}, InjectTask(2), "not an object", InjectTask(3)});
  auto response = client.RoundTrip(Post("/v1/tasks:batch", array.dump()));
  ASSERT_TRUE(response.has_value());
  ASSERT_EQ(response->status, 200) << response->body;
  json body = JsonBody(*response);
  EXPECT_EQ(body["accepted"], 3);
  EXPECT_EQ(body["rejected"], 2);
  ASSERT_EQ(body["results"].size(), 5u);
  EXPECT_EQ(body["results"][0]["id"], "e2e-1");
  EXPECT_FALSE(body["results"][0]["event_id"].get<std::string>().empty());
  EXPECT_EQ(body["results"][1]["index"], 1);
  EXPECT_THAT(body["results"][1]["error"].get<std::string>(), HasSubstr("unknown task type"));
  EXPECT_EQ(body["results"][2]["id"], "e2e-2");
  EXPECT_EQ(body["results"][3]["index"], 3);
  EXPECT_EQ(body["results"][4]["id"], "e2e-3");

  // NDJSON, by content type and (curl's default form type) by the first character; a line that
  // is not JSON is one item's error.
  const std::string ndjson =
      absl::StrCat(InjectTask(4).dump(), "\n\n", "{broken\n", InjectTask(5).dump(), "\n");
  for (const char* type : {"application/x-ndjson", "application/x-www-form-urlencoded"}) {
    auto lines = client.RoundTrip(
        Post("/v1/tasks:batch", ndjson, absl::StrCat("Content-Type: ", type, "\r\n")));
    ASSERT_TRUE(lines.has_value());
    ASSERT_EQ(lines->status, 200) << type << ": " << lines->body;
    json result = JsonBody(*lines);
    EXPECT_EQ(result["accepted"], 2) << type;
    ASSERT_EQ(result["results"].size(), 3u);
    EXPECT_EQ(result["results"][0]["id"], "e2e-4");
    EXPECT_EQ(result["results"][1]["index"], 1);
    EXPECT_THAT(result["results"][1]["error"].get<std::string>(), HasSubstr("not valid JSON"));
    EXPECT_EQ(result["results"][2]["id"], "e2e-5");
  }

  // Too many items: 413 with the limit, nothing published.
  json too_many = json::array();
  for (int i = 0; i < 10'001; ++i) too_many.push_back({{"type", "inject"}});
  auto many = client.RoundTrip(Post("/v1/tasks:batch", too_many.dump()));
  ASSERT_TRUE(many.has_value());
  EXPECT_EQ(many->status, 413);
  EXPECT_THAT(JsonBody(*many)["error"].get<std::string>(), HasSubstr("at most 10000"));
  auto empty = client.RoundTrip(Post("/v1/tasks:batch", "[]"));
  ASSERT_TRUE(empty.has_value());
  EXPECT_EQ(empty->status, 400);
  auto garbage = client.RoundTrip(Post("/v1/tasks:batch", "[1,"));
  ASSERT_TRUE(garbage.has_value());
  EXPECT_EQ(garbage->status, 400);
  EXPECT_THAT(JsonBody(*garbage)["error"].get<std::string>(), HasSubstr("not valid JSON"));

  // Bodies over the limits: 413 with a JSON error whatever the content type.
  RawHttpClient big_batch(service->port());
  auto too_large = big_batch.RoundTrip(
      Post("/v1/tasks:batch", std::string((16 << 20) + 1, ' '),
           "Content-Type: application/x-www-form-urlencoded\r\n"));
  ASSERT_TRUE(too_large.has_value());
  EXPECT_EQ(too_large->status, 413);
  EXPECT_EQ(too_large->Header("content-type"), "application/json");
  EXPECT_THAT(JsonBody(*too_large)["error"].get<std::string>(), HasSubstr("16777216"));
  RawHttpClient big_single(service->port());
  auto single = big_single.RoundTrip(Post("/v1/tasks", std::string((1 << 20) + 1, ' ')));
  ASSERT_TRUE(single.has_value());
  EXPECT_EQ(single->status, 413);
  EXPECT_THAT(JsonBody(*single)["error"].get<std::string>(), HasSubstr("1048576"));

  ASSERT_TRUE(service->AwaitMetric(
      R"(eventbus_executor_results_published_total{status="succeeded"})", 7));
  EXPECT_EQ(service->Metric(R"(eventbus_executor_tasks_submitted_total{type="inject"})"), 7);
}

TEST(ServiceEndToEnd, JsonBodiesAreAcceptedWithAnyOrNoContentType) {
  auto service = ExecutorProcess::Start({"LOG_LEVEL=warn"});
  ASSERT_NE(service, nullptr);
  RawHttpClient client(service->port());
  int i = 0;
  for (const char* header : {"", "Content-Type: application/x-www-form-urlencoded\r\n",
                             "Content-Type: text/plain\r\n",
                             "Content-Type: application/json; charset=utf-8\r\n"}) {
    auto response = client.RoundTrip(Post("/v1/tasks", InjectTask(i++).dump(), header));
    ASSERT_TRUE(response.has_value());
    EXPECT_EQ(response->status, 202) << header << response->body;
  }
}

TEST(ServiceEndToEnd, UnknownRoutesAndWrongMethodsAreAnsweredInJson) {
  auto service = ExecutorProcess::Start({"LOG_LEVEL=warn"});
  ASSERT_NE(service, nullptr);
  RawHttpClient client(service->port());
  auto missing = client.RoundTrip(RawHttpClient::Request("GET", "/v2/nothing"));
  ASSERT_TRUE(missing.has_value());
  EXPECT_EQ(missing->status, 404);
  EXPECT_EQ(JsonBody(*missing)["error"], "no route GET /v2/nothing");
  auto wrong = client.RoundTrip(RawHttpClient::Request("GET", "/v1/tasks"));
  ASSERT_TRUE(wrong.has_value());
  EXPECT_EQ(wrong->status, 405);
  EXPECT_EQ(wrong->Header("allow"), "POST");
  auto wrong_health = client.RoundTrip(Post("/healthz", "{}"));
  ASSERT_TRUE(wrong_health.has_value());
  EXPECT_EQ(wrong_health->status, 405);
}

TEST(ServiceEndToEnd, BearerTokenGuardsTheApiButNotHealth) {
  const std::string token = "s3cret-token-e2e";
  auto service = ExecutorProcess::Start({"LOG_LEVEL=debug", "EXECUTOR_API_TOKEN=" + token});
  ASSERT_NE(service, nullptr);
  RawHttpClient client(service->port());
  const std::string task = InjectTask(1).dump();
  auto missing = client.RoundTrip(Post("/v1/tasks", task));
  ASSERT_TRUE(missing.has_value());
  EXPECT_EQ(missing->status, 401);
  EXPECT_EQ(missing->Header("www-authenticate"), "Bearer");
  EXPECT_THAT(JsonBody(*missing)["error"].get<std::string>(), HasSubstr("Authorization"));
  // Refused before its body was read: the body is not taken, the connection closes.
  EXPECT_EQ(missing->Header("connection"), "close");
  for (const std::string& wrong : {std::string("Bearer nope"), "Bearer " + token + "x",
                                   "Basic " + token, std::string("Bearer ")}) {
    RawHttpClient attempt(service->port());
    auto refused =
        attempt.RoundTrip(Post("/v1/tasks", task, absl::StrCat("Authorization: ", wrong, "\r\n")));
    ASSERT_TRUE(refused.has_value());
    EXPECT_EQ(refused->status, 401) << wrong;
  }
  // Unrouted /v1 paths are guarded too.
  RawHttpClient other(service->port());
  auto unrouted = other.RoundTrip(RawHttpClient::Request("GET", "/v1/other"));
  ASSERT_TRUE(unrouted.has_value());
  EXPECT_EQ(unrouted->status, 401);

  const std::string auth = absl::StrCat("Authorization: Bearer ", token, "\r\n");
  RawHttpClient authorized(service->port());
  auto accepted = authorized.RoundTrip(Post("/v1/tasks", task, auth));
  ASSERT_TRUE(accepted.has_value());
  EXPECT_EQ(accepted->status, 202) << accepted->body;
  auto lower_scheme = authorized.RoundTrip(
      Post("/v1/tasks:batch", json::array({InjectTask(2)}).dump(),
           absl::StrCat("Authorization: bearer ", token, "\r\n")));
  ASSERT_TRUE(lower_scheme.has_value());
  EXPECT_EQ(lower_scheme->status, 200) << lower_scheme->body;

  RawHttpClient anonymous(service->port());
  for (const char* open : {"/healthz", "/readyz", "/metrics"}) {
    auto response = anonymous.RoundTrip(RawHttpClient::Request("GET", open));
    ASSERT_TRUE(response.has_value());
    EXPECT_EQ(response->status, 200) << open;
  }
  service->Stop();
  EXPECT_THAT(service->Log(), Not(HasSubstr(token)));

  auto strict = ExecutorProcess::Start(
      {"EXECUTOR_API_TOKEN=" + token, "EXECUTOR_METRICS_REQUIRE_TOKEN=true"});
  ASSERT_NE(strict, nullptr);
  RawHttpClient metrics(strict->port());
  auto closed = metrics.RoundTrip(RawHttpClient::Request("GET", "/metrics"));
  ASSERT_TRUE(closed.has_value());
  EXPECT_EQ(closed->status, 401);
  auto opened = metrics.RoundTrip(RawHttpClient::Request("GET", "/metrics", "", auth));
  ASSERT_TRUE(opened.has_value());
  EXPECT_EQ(opened->status, 200);
  auto health = metrics.RoundTrip(RawHttpClient::Request("GET", "/healthz"));
  ASSERT_TRUE(health.has_value());
  EXPECT_EQ(health->status, 200);
}

TEST(ServiceEndToEnd, ConnectionsBeyondTheLimitAreRefusedWith503) {
  auto service = ExecutorProcess::Start({"LOG_LEVEL=warn", "EXECUTOR_HTTP_MAX_CONNECTIONS=2"});
  ASSERT_NE(service, nullptr);
  // WaitForTcpPort's probe connection may not be closed on the server side yet, so a first
  // client can be refused: keep trying until two connections are held.
  std::vector<std::unique_ptr<RawHttpClient>> held;
  for (int attempt = 0; attempt < 100 && held.size() < 2; ++attempt) {
    auto client = std::make_unique<RawHttpClient>(service->port());
    auto health = client->RoundTrip(RawHttpClient::Request("GET", "/healthz"));
    if (health.has_value() && health->status == 200) held.push_back(std::move(client));
  }
  ASSERT_EQ(held.size(), 2u);
  RawHttpClient third(service->port());
  auto refused = third.Read();
  ASSERT_TRUE(refused.has_value());
  EXPECT_EQ(refused->status, 503);
  EXPECT_THAT(JsonBody(*refused)["error"].get<std::string>(),
              HasSubstr("EXECUTOR_HTTP_MAX_CONNECTIONS=2"));
  // The held connections keep working.
  auto again = held[0]->RoundTrip(Post("/v1/tasks", InjectTask(1).dump()));
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->status, 202);
}

TEST(ServiceEndToEnd, CallTasksAgainstALocalHttpServer) {
  if (!HasCallAndSetHandlers()) GTEST_SKIP() << "built without the call/set components";
  testing::LocalHttpServer server;
  auto refused_port = harness::FreeLoopbackPort();
  ASSERT_TRUE(refused_port.ok());
  auto service = ExecutorProcess::Start({"LOG_LEVEL=debug"});
  ASSERT_NE(service, nullptr);
  const json fast_retry = {{"initial_backoff", "PT0.05S"}, {"max_backoff", "PT0.2S"}};
  const std::vector<json> tasks = {
      {{"id", "call-ok"}, {"type", "call"}, {"input", {{"url", server.Url("/ok")}}}},
      {{"id", "call-404"}, {"type", "call"}, {"input", {{"url", server.Url("/missing")}}}},
      {{"id", "call-flaky"},
       {"type", "call"},
       {"input", {{"url", server.Url("/flaky")}}},
       {"retry", fast_retry}},
      {{"id", "call-timeout"},
       {"type", "call"},
       {"input", {{"url", server.Url("/slow")}, {"timeout", "PT0.3S"}}},
       {"retry", {{"max_attempts", 1}}}},
      {{"id", "call-refused"},
       {"type", "call"},
       {"input", {{"url", absl::StrCat("http://127.0.0.1:", *refused_port, "/")}}},
       {"retry", {{"max_attempts", 2}, {"initial_backoff", "PT0.05S"}}}},
  };
  for (const json& task : tasks) {
    auto [status, body] = service->Submit(task);
    ASSERT_EQ(status, 202) << body;
  }
  ASSERT_TRUE(service->AwaitMetric(R"(eventbus_executor_dead_letters_total{type="call"})", 3));
  ASSERT_TRUE(service->AwaitMetric(
      R"(eventbus_executor_results_published_total{status="succeeded"})", 2));
  EXPECT_EQ(service->Metric(R"(eventbus_executor_results_published_total{status="failed"})"), 3);
  // flaky: one retry; refused: one retry before its second and last attempt.
  EXPECT_EQ(service->Metric(R"(eventbus_executor_retries_total{type="call"})"), 2);
  EXPECT_EQ(server.flaky_calls(), 2);
  const std::string log = service->Log();
  EXPECT_THAT(log, HasSubstr("answered HTTP 404"));
  EXPECT_THAT(log, HasSubstr("\"task_id\":\"call-timeout\""));
  EXPECT_THAT(log, HasSubstr("gave up after 2 attempts"));
}

// The service's child processes (its jq workers): pid -> state letter ('Z' = zombie).
std::map<int, char> ChildrenOf(pid_t parent) {
  std::map<int, char> children;
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return children;
  while (dirent* entry = readdir(proc)) {
    int pid = 0;
    if (!absl::SimpleAtoi(entry->d_name, &pid)) continue;
    std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
    std::string line;
    if (!std::getline(stat, line)) continue;
    const size_t paren = line.rfind(')');
    if (paren == std::string::npos) continue;
    std::vector<std::string> fields = absl::StrSplit(line.substr(paren + 2), ' ');
    int ppid = 0;
    if (fields.size() > 1 && absl::SimpleAtoi(fields[1], &ppid) && ppid == parent) {
      children[pid] = fields[0].empty() ? '?' : fields[0][0];
    }
  }
  closedir(proc);
  return children;
}

TEST(ServiceEndToEnd, RunawaySetTasksTimeOutAndTheServiceKeepsWorking) {
  if (!HasCallAndSetHandlers()) GTEST_SKIP() << "built without the call/set components";
  // As in the issue: concurrency 4, four programs that never end.
  auto service = ExecutorProcess::Start({"EXECUTOR_CONCURRENCY=4"});
  ASSERT_NE(service, nullptr);
  const std::vector<std::string> runaways = {"def f: f; f", "last(range(infinite))",
                                             "[repeat(1)]", "{} | .a[1e9] = 1"};
  for (size_t i = 0; i < runaways.size(); ++i) {
    auto [status, body] = service->Submit({{"id", absl::StrCat("runaway-", i)},
                                           {"type", "set"},
                                           {"timeout", "PT0.3S"},
                                           {"retry", {{"max_attempts", 1}}},
                                           {"input", {{"expression", runaways[i]}}}});
    ASSERT_EQ(status, 202) << body;
  }
  ASSERT_TRUE(service->AwaitMetric(R"(eventbus_executor_dead_letters_total{type="set"})", 4));
  auto [status, body] = service->Submit(
      {{"id", "after"}, {"type", "set"}, {"input", {{"data", {{"a", 1}}}, {"expression", ".a + 1"}}}});
  ASSERT_EQ(status, 202) << body;
  ASSERT_TRUE(service->AwaitMetric(
      R"(eventbus_executor_results_published_total{status="succeeded"})", 1));
  const std::map<int, char> children = ChildrenOf(service->pid());
  EXPECT_LE(children.size(), 4u);
  for (const auto& [pid, state] : children) EXPECT_NE(state, 'Z') << "zombie jq worker " << pid;

  service->Stop();  // SIGTERM is obeyed: no worker thread is stuck in jq
  EXPECT_THAT(service->Log(), HasSubstr("\"msg\":\"eventbus-executor stopped\""));
}

// Runs the service binary with `assignments` (shell words such as "X=1" or "'Y=a b'") in its
// environment until it exits; returns its exit code and stderr. For configurations that stop
// start-up: one that does not is killed after 60 s (exit code 124, timeout(1)'s).
std::pair<int, std::string> RunUntilExit(const std::string& dir, const std::string& assignments) {
  const std::string err = dir + "/stderr.txt";
  const std::string command = absl::StrCat("timeout 60 env ", assignments,
                                           " EXECUTOR_HTTP_ADDR=127.0.0.1:0 ",
                                           EVENTBUS_EXECUTOR_BINARY, " 2>", err);
  const int status = std::system(command.c_str());
  std::ifstream in(err);
  std::stringstream text;
  text << in.rdbuf();
  return std::make_pair(WIFEXITED(status) ? WEXITSTATUS(status) : -1, text.str());
}

TEST(ServiceEndToEnd, BadConfigurationStopsStartUpNamingTheSetting) {
  auto dir = harness::MakeTempDir("eventbus-executor-config");
  ASSERT_TRUE(dir.ok());
  auto run = [&](const std::string& assignment) { return RunUntilExit(*dir, assignment); };
  auto [bogus_code, bogus_err] = run("EVENT_STREAM_TYPE=bogus");
  EXPECT_EQ(bogus_code, 2);
  EXPECT_THAT(bogus_err, HasSubstr("EVENT_STREAM_TYPE=\"bogus\" is not a registered backend; "
                                   "valid types: "));
  EXPECT_THAT(bogus_err, HasSubstr("memory"));
  auto [batch_code, batch_err] = run("EXECUTOR_STREAM_BATCH=-1");
  EXPECT_EQ(batch_code, 2);
  EXPECT_THAT(batch_err, HasSubstr("EXECUTOR_STREAM_BATCH=\"-1\" is invalid"));
  auto [metrics_code, metrics_err] = run("EXECUTOR_METRICS_REQUIRE_TOKEN=true");
  EXPECT_EQ(metrics_code, 2);
  EXPECT_THAT(metrics_err, HasSubstr("needs EXECUTOR_API_TOKEN"));
  auto [limit_code, limit_err] = run("EXECUTOR_HTTP_MAX_CONNECTIONS=0");
  EXPECT_EQ(limit_code, 2);
  EXPECT_THAT(limit_err, HasSubstr("EXECUTOR_HTTP_MAX_CONNECTIONS=\"0\" is invalid"));
  auto [level_code, level_err] = run("LOG_LEVEL=chatty");
  EXPECT_EQ(level_code, 2);
  EXPECT_THAT(level_err, HasSubstr("LOG_LEVEL"));
  // Escalating onto the stream this executor consumes would only restart the attempt count.
  auto [tier_code, tier_err] = run("EXECUTOR_ESCALATE_TO=io.flunq.task.requested");
  EXPECT_EQ(tier_code, 2);
  EXPECT_THAT(tier_err, HasSubstr("EXECUTOR_ESCALATE_TO=\"io.flunq.task.requested\" is the stream "
                                  "this executor uses as EXECUTOR_REQUEST_STREAM"));
  harness::RemoveTree(*dir);
}

// Issue 9: a bad backend option exited 1 (a start-up failure) instead of 2; an empty value
// meant the default. Every configuration error exits 2 naming the setting, before connecting.
TEST(ServiceEndToEnd, BackendConfigurationErrorsExit2NamingTheSetting) {
  auto dir = harness::MakeTempDir("eventbus-executor-backend-config");
  ASSERT_TRUE(dir.ok());
  // The backends this binary was built with, from its --help.
  const std::string help_file = *dir + "/help.txt";
  ASSERT_EQ(std::system(absl::StrCat(EVENTBUS_EXECUTOR_BINARY, " --help >", help_file).c_str()), 0);
  std::ifstream help_in(help_file);
  std::stringstream help;
  help << help_in.rdbuf();
  auto built = [&](const std::string& backend) {
    return absl::StrContains(help.str(), backend + ",") ||
           absl::StrContains(help.str(), backend + ";");
  };
  struct Case {
    std::string backend;
    std::string assignments;
    std::string expected;   // in stderr
    std::string forbidden;  // never in stderr (a secret)
  };
  const std::vector<Case> cases = {
      {"memory", "MEMORY_OPTION_MAX_STREAM_EVENTS=0", "MEMORY_OPTION_MAX_STREAM_EVENTS", ""},
      {"memory", "MEMORY_OPTION_MAX_STREAM_BYTES=", "MEMORY_OPTION_MAX_STREAM_BYTES is set but empty", ""},
      {"memory", "MEMORY_OPTION_COLOUR=red", "MEMORY_OPTION_COLOUR", ""},
      {"memory", "EXECUTOR_API_TOKEN=", "EXECUTOR_API_TOKEN is set but empty", ""},
      {"memory", "EVENT_STREAM_TYPE=", "EVENT_STREAM_TYPE is set but empty", ""},
      {"redis", "EVENT_STREAM_TYPE=redis REDIS_OPTION_FETCH_SLICE=soon",
       "REDIS_OPTION_FETCH_SLICE", ""},
      {"redis", "EVENT_STREAM_TYPE=redis REDIS_URL=", "REDIS_URL is set but empty", ""},
      {"redis", "EVENT_STREAM_TYPE=redis 'REDIS_URL=redis://:p@ss@127.0.0.1:bad'", "REDIS_URL",
       "p@ss"},
      {"kafka", "EVENT_STREAM_TYPE=kafka KAFKA_OPTION_EVENTBUS_PARTITIONS=0",
       "KAFKA_OPTION_EVENTBUS_PARTITIONS", ""},
      {"kafka", "EVENT_STREAM_TYPE=kafka KAFKA_OPTION_SECURITY_PROTOCOL=carrier-pigeon",
       "KAFKA_OPTION_SECURITY_PROTOCOL", ""},
      {"kafka", "EVENT_STREAM_TYPE=kafka KAFKA_OPTION_SASL_PASWORD=hunter2",
       "KAFKA_OPTION_SASL_PASWORD", "hunter2"},
      {"nats", "EVENT_STREAM_TYPE=nats NATS_OPTION_ACK_WAIT=soon", "NATS_OPTION_ACK_WAIT", ""},
      {"nats", "EVENT_STREAM_TYPE=nats 'NATS_URL=nats://u:p@ss/w@:4222'", "NATS_URL", "ss/w"},
  };
  int ran = 0;
  for (const Case& c : cases) {
    if (!built(c.backend)) continue;
    ++ran;
    auto [code, err] = RunUntilExit(*dir, c.assignments);
    EXPECT_EQ(code, 2) << c.assignments << ": " << err;
    EXPECT_THAT(err, HasSubstr("configuration error")) << c.assignments;
    EXPECT_THAT(err, HasSubstr(c.expected)) << c.assignments;
    if (!c.forbidden.empty()) {
      EXPECT_THAT(err, Not(HasSubstr(c.forbidden))) << c.assignments;
    }
  }
  EXPECT_GE(ran, 5);
  if (built("redis")) {
    // A valid configuration whose server is unreachable is a start-up failure (1), and the
    // password (with a '/', which the old redaction took for the path) is not in its message.
    auto [code, err] =
        RunUntilExit(*dir, "EVENT_STREAM_TYPE=redis 'REDIS_URL=redis://:pa/ss@127.0.0.1:1'");
    EXPECT_EQ(code, 1) << err;
    EXPECT_THAT(err, HasSubstr("start-up failed"));
    EXPECT_THAT(err, Not(HasSubstr("pa/ss")));
  }
  harness::RemoveTree(*dir);
}

// Submits N tasks over HTTP to a service on `env` and reads N results from the result stream
// through `reader` (another client of the same backend).
void RoundTripThroughRealBackend(std::vector<std::string> env, EventStream& reader) {
  SubscribeOptions observe{.stream = std::string(kDefaultResultStream),
                           .group = "e2e-observer",
                           .consumer = "e2e"};
  auto results = reader.Subscribe(observe);
  ASSERT_TRUE(results.ok()) << results.status();
  SubscribeOptions observe_dlq{.stream = absl::StrCat(kDefaultRequestStream, kDlqStreamSuffix),
                               .group = "e2e-observer",
                               .consumer = "e2e"};
  auto dead_letters = reader.Subscribe(observe_dlq);
  ASSERT_TRUE(dead_letters.ok()) << dead_letters.status();
  auto service = ExecutorProcess::Start(std::move(env));
  ASSERT_NE(service, nullptr);
  ASSERT_EQ(service->Client().Get("/readyz")->status, 200);
  // Garbage on the wire, published by another client straight to the request stream: the
  // service dead-letters it with a reason and keeps going.
  ASSERT_TRUE(reader
                  .PublishAndWait(kDefaultRequestStream,
                                  MakeEvent(kTaskRequestedType, "e2e", std::string("\xff{not json")))
                  .ok());
  constexpr int kTasks = 30;
  for (int i = 0; i < kTasks; ++i) {
    auto [status, body] = service->Submit(InjectTask(i));
    ASSERT_EQ(status, 202) << body;
  }
  std::set<std::string> ids;
  const absl::Time deadline = absl::Now() + kSafety;
  while (ids.size() < kTasks && absl::Now() < deadline) {
    auto fetched = (*results)->Fetch(50, absl::Milliseconds(500));
    ASSERT_TRUE(fetched.ok()) << fetched.status();
    for (const Delivery& delivery : *fetched) {
      auto result = ParseTaskResult(delivery.event.data());
      ASSERT_TRUE(result.ok()) << result.status();
      EXPECT_EQ(result->status, TaskStatus::kSucceeded);
      EXPECT_EQ((*result->output)["i"].get<int>(),
                std::stoi(result->task_id.substr(result->task_id.find('-') + 1)));
      ids.insert(result->task_id);
      EXPECT_TRUE((*results)->Ack(delivery).ok());
    }
  }
  EXPECT_EQ(ids.size(), static_cast<size_t>(kTasks)) << service->LogTail();
  std::vector<Delivery> dead;
  const absl::Time dlq_deadline = absl::Now() + kSafety;
  while (dead.empty() && absl::Now() < dlq_deadline) {
    auto fetched = (*dead_letters)->Fetch(10, absl::Milliseconds(500));
    ASSERT_TRUE(fetched.ok()) << fetched.status();
    for (Delivery& d : *fetched) dead.push_back(std::move(d));
  }
  ASSERT_EQ(dead.size(), 1u) << service->LogTail();
  EXPECT_THAT(dead[0].event.headers().at(std::string(kDlqReasonHeader)),
              HasSubstr("invalid task request: task request is not valid JSON"));
  EXPECT_EQ(dead[0].event.data(), "\xff{not json");
  EXPECT_EQ(service->Metric(R"(eventbus_executor_tasks_total{outcome="invalid",type="_unknown"})"),
            1);
  EXPECT_EQ(service->Metric(R"(eventbus_executor_results_published_total{status="succeeded"})"),
            kTasks);
  EXPECT_EQ(service->Metric(R"(eventbus_executor_tasks_total{outcome="succeeded",type="inject"})"),
            kTasks);
}

// GET `target`: status and JSON body (null when not JSON).
std::pair<int, json> GetJson(const ExecutorProcess& service, const std::string& target) {
  auto res = service.Client().Get(target);
  if (!res) return {0, json()};
  return {res->status, json::parse(res->body, nullptr, false)};
}
std::pair<int, json> PostJson(const ExecutorProcess& service, const std::string& target) {
  auto res = service.Client().Post(target, "", "application/json");
  if (!res) return {0, json()};
  return {res->status, json::parse(res->body, nullptr, false)};
}

// Polls GET /v1/tasks/{id} until its state is `state`; returns the last body seen.
json AwaitTaskState(const ExecutorProcess& service, const std::string& id,
                    const std::string& state, int min_attempts = 0) {
  const absl::Time deadline = absl::Now() + kSafety;
  json body;
  while (absl::Now() < deadline) {
    auto [status, seen] = GetJson(service, "/v1/tasks/" + id);
    body = seen;
    if (status == 200 && seen.value("state", "") == state &&
        seen.value("attempts", 0) >= min_attempts) {
      return seen;
    }
    absl::SleepFor(absl::Milliseconds(20));  // polling a remote process: no event to wait on
  }
  ADD_FAILURE() << id << " never reached " << state << "; last: " << body << "\n"
                << service.LogTail();
  return body;
}

// Submit, query, unique 409, cancel of a queued task, stats: the task API on whatever store
// the service runs with.
void TaskApiLifecycle(const ExecutorProcess& service) {
  // State: a succeeded task with its attempts, timestamps and result.
  auto [submitted, body] = service.Submit(
      {{"id", "life-ok"}, {"type", "inject"}, {"input", {{"data", {{"n", 7}}}}}});
  ASSERT_EQ(submitted, 202) << body;
  json ok = AwaitTaskState(service, "life-ok", "succeeded");
  EXPECT_EQ(ok["attempts"], 1);
  EXPECT_EQ(ok["type"], "inject");
  EXPECT_TRUE(ok["created_at"].is_string()) << ok;
  EXPECT_TRUE(ok["started_at"].is_string()) << ok;
  EXPECT_TRUE(ok["finished_at"].is_string()) << ok;
  EXPECT_TRUE(ok["expires_at"].is_string()) << ok;
  EXPECT_TRUE(ok["last_error"].is_null()) << ok;
  EXPECT_EQ(ok["result"]["status"], "succeeded") << ok;
  EXPECT_EQ(ok["result"]["output"], json({{"n", 7}})) << ok;
  // The same id again (a client making sure) is published again and settled by the record:
  // the task stays succeeded with its one attempt.
  auto [again, again_body] = service.Submit(
      {{"id", "life-ok"}, {"type", "inject"}, {"input", {{"data", {{"n", 8}}}}}});
  EXPECT_EQ(again, 202) << again_body;
  ASSERT_TRUE(service.AwaitMetric(
      R"(eventbus_executor_tasks_total{outcome="duplicate",type="inject"})", 1));
  json still = AwaitTaskState(service, "life-ok", "succeeded");
  EXPECT_EQ(still["attempts"], 1) << still;
  EXPECT_EQ(still["result"]["output"], json({{"n", 7}})) << still;

  // Unique: a `wait` task holds its key while it waits (queued between its redeliveries).
  auto [first, first_body] = service.Submit({{"id", "life-wait-1"},
                                             {"type", "wait"},
                                             {"input", {{"duration", "PT1H"}}},
                                             {"unique_key", "nightly-report"}});
  ASSERT_EQ(first, 202) << first_body;
  // Queued again after its first run asked for a redelivery in an hour.
  AwaitTaskState(service, "life-wait-1", "queued", /*min_attempts=*/1);
  auto [second, second_body] = service.Submit({{"id", "life-wait-2"},
                                               {"type", "wait"},
                                               {"input", {{"duration", "PT1H"}}},
                                               {"unique_key", "nightly-report"}});
  EXPECT_EQ(second, 409) << second_body;
  EXPECT_EQ(second_body["existing_id"], "life-wait-1") << second_body;
  EXPECT_THAT(second_body.value("error", ""), HasSubstr("nightly-report")) << second_body;
  EXPECT_EQ(GetJson(service, "/v1/tasks/life-wait-2").first, 404);

  // Cancel: the waiting task ends cancelled and never runs again; its key is free again.
  auto [cancelled, cancelled_body] = PostJson(service, "/v1/tasks/life-wait-1:cancel");
  EXPECT_EQ(cancelled, 200) << cancelled_body;
  EXPECT_EQ(cancelled_body["state"], "cancelled") << cancelled_body;
  EXPECT_EQ(GetJson(service, "/v1/tasks/life-wait-1").second["state"], "cancelled");
  auto [twice, twice_body] = PostJson(service, "/v1/tasks/life-wait-1:cancel");
  EXPECT_EQ(twice, 409) << twice_body;
  auto [third, third_body] = service.Submit({{"id", "life-wait-3"},
                                             {"type", "wait"},
                                             {"input", {{"duration", "PT1H"}}},
                                             {"unique_key", "nightly-report"}});
  EXPECT_EQ(third, 202) << third_body;
  // Within unique_for, a finished task still holds its key.
  auto [windowed, windowed_body] = service.Submit({{"id", "life-window-1"},
                                                   {"type", "inject"},
                                                   {"input", {{"data", json::object()}}},
                                                   {"unique_key", "once-a-day"},
                                                   {"unique_for", "PT24H"}});
  ASSERT_EQ(windowed, 202) << windowed_body;
  AwaitTaskState(service, "life-window-1", "succeeded");
  auto [blocked, blocked_body] = service.Submit({{"id", "life-window-2"},
                                                 {"type", "inject"},
                                                 {"input", {{"data", json::object()}}},
                                                 {"unique_key", "once-a-day"}});
  EXPECT_EQ(blocked, 409) << blocked_body;
  EXPECT_EQ(blocked_body["existing_id"], "life-window-1") << blocked_body;

  // Retry by hand: a dead-lettered task runs again with a fresh attempt count.
  if (HasCallAndSetHandlers()) {
    auto [failing, failing_body] = service.Submit(
        {{"id", "life-fail"}, {"type", "set"}, {"input", {{"expression", "error(\"boom\")"}}}});
    ASSERT_EQ(failing, 202) << failing_body;
    json dead = AwaitTaskState(service, "life-fail", "dead_lettered");
    EXPECT_THAT(dead.value("last_error", ""), HasSubstr("boom")) << dead;
    EXPECT_EQ(dead["attempts"], 1) << dead;
    auto [retried, retried_body] = PostJson(service, "/v1/tasks/life-fail:retry");
    ASSERT_EQ(retried, 202) << retried_body;
    EXPECT_EQ(retried_body["state"], "queued") << retried_body;
    EXPECT_EQ(retried_body["attempts"], 0) << retried_body;
    json again = AwaitTaskState(service, "life-fail", "dead_lettered", /*min_attempts=*/1);
    // history: the first failure, the retry, the second failure.
    EXPECT_EQ(again["history"].size(), 3u) << again;
    EXPECT_EQ(again["attempts"], 1) << again;
  }
  auto [not_failed, not_failed_body] = PostJson(service, "/v1/tasks/life-ok:retry");
  EXPECT_EQ(not_failed, 409) << not_failed_body;

  // Unknown tasks and actions.
  EXPECT_EQ(GetJson(service, "/v1/tasks/no-such-task").first, 404);
  EXPECT_EQ(PostJson(service, "/v1/tasks/no-such-task:cancel").first, 404);
  EXPECT_EQ(PostJson(service, "/v1/tasks/life-ok:explode").first, 404);

  // Stats per type.
  auto [stats_status, stats] = GetJson(service, "/v1/stats");
  ASSERT_EQ(stats_status, 200) << stats;
  std::map<std::string, json> by_type;
  for (const json& entry : stats["types"]) by_type[entry["type"]] = entry;
  EXPECT_EQ(by_type["inject"]["succeeded"], 2) << stats;
  EXPECT_EQ(by_type["wait"]["cancelled"], 1) << stats;
  EXPECT_EQ(by_type["wait"]["queued"].get<int>() + by_type["wait"]["running"].get<int>(), 1)
      << stats;
  EXPECT_EQ(stats["total"]["succeeded"], 2) << stats;
  // The same figures as Prometheus gauges.
  EXPECT_EQ(service.Metric(R"(eventbus_executor_tasks_stored{state="succeeded",type="inject"})"),
            2);
  EXPECT_EQ(service.Metric(R"(eventbus_executor_tasks_stored{state="cancelled",type="wait"})"), 1);
}

// A `call` task succeeds once; its request published again straight to the stream (what a
// crash before the ack, or a rebalance, redelivers) is settled with the stored result without
// calling the remote side again.
void SucceededTaskRunsOnceDespiteADuplicateDelivery(const ExecutorProcess& service,
                                                     EventStream& stream,
                                                     const testing::LocalHttpServer& remote) {
  const json task = {{"id", "once-call"}, {"type", "call"}, {"input", {{"url", remote.Url("/ok")}}}};
  auto [status, body] = service.Submit(task);
  ASSERT_EQ(status, 202) << body;
  AwaitTaskState(service, "once-call", "succeeded");
  EXPECT_EQ(remote.ok_calls(), 1);
  auto request = TaskRequestFromJson(task);
  ASSERT_TRUE(request.ok()) << request.status();
  ASSERT_TRUE(
      stream.PublishAndWait(kDefaultRequestStream, MakeTaskRequestEvent(*request, "e2e")).ok());
  ASSERT_TRUE(
      service.AwaitMetric(R"(eventbus_executor_tasks_total{outcome="duplicate",type="call"})", 1));
  EXPECT_EQ(remote.ok_calls(), 1);  // the handler did not run again
  EXPECT_EQ(GetJson(service, "/v1/tasks/once-call").second["attempts"], 1);
}


std::pair<int, json> SendJson(const ExecutorProcess& service, const std::string& method,
                              const std::string& target, const json& body = nullptr) {
  httplib::Client client = service.Client();
  httplib::Result res = method == "POST"     ? client.Post(target, body.dump(), "application/json")
                        : method == "DELETE" ? client.Delete(target)
                                             : client.Get(target);
  if (!res) return {0, json()};
  return {res->status, json::parse(res->body, nullptr, false)};
}

// Run later (run_after) and a recurring schedule (every), with the API's refusals: on whatever
// store the service runs with (EXECUTOR_SCHEDULER_INTERVAL=100ms).
// A `wait` reports the share of it that has passed at each run; GET /v1/tasks/{id}/events
// streams what the store records (progress events), then the final state, then ends.
void WaitProgressOverSse(const ExecutorProcess& service) {
  auto [status, body] = service.Submit(
      {{"id", "progress-wait"}, {"type", "wait"}, {"input", {{"duration", "PT1S"}}}});
  ASSERT_EQ(status, 202) << body;
  auto events = service.Client().Get("/v1/tasks/progress-wait/events");  // ends with the task
  ASSERT_TRUE(events);
  ASSERT_EQ(events->status, 200) << events->body;
  std::vector<std::pair<std::string, json>> messages;
  for (absl::string_view message : absl::StrSplit(events->body, "\n\n", absl::SkipEmpty())) {
    std::string event;
    json data;
    for (absl::string_view line : absl::StrSplit(message, '\n')) {
      if (absl::ConsumePrefix(&line, "event: ")) event = std::string(line);
      if (absl::ConsumePrefix(&line, "data: ")) data = json::parse(line, nullptr, false);
    }
    if (!event.empty()) messages.emplace_back(event, data);  // not a ": keep-alive" comment
  }
  ASSERT_GE(messages.size(), 2u) << "progress, then the final state: " << events->body;
  for (size_t i = 0; i + 1 < messages.size(); ++i) {
    EXPECT_EQ(messages[i].first, "progress") << events->body;
    EXPECT_EQ(messages[i].second.value("id", ""), "progress-wait") << events->body;
  }
  EXPECT_EQ(messages.back().first, "final") << events->body;
  EXPECT_EQ(messages.back().second.value("state", ""), "succeeded") << events->body;
  EXPECT_EQ(messages.back().second.value("progress", json()), 100) << events->body;
}

void RunLaterAndSchedules(const ExecutorProcess& service) {
  auto [later, later_body] = service.Submit({{"id", "later-1"},
                                             {"type", "inject"},
                                             {"input", {{"data", {{"n", 1}}}}},
                                             {"run_after", "PT1.5S"}});
  ASSERT_EQ(later, 202) << later_body;
  EXPECT_EQ(later_body["state"], "scheduled") << later_body;
  EXPECT_TRUE(later_body["run_at"].is_string()) << later_body;
  json waiting = GetJson(service, "/v1/tasks/later-1").second;
  EXPECT_EQ(waiting["state"], "scheduled") << waiting;
  EXPECT_EQ(waiting["run_at"], later_body["run_at"]) << waiting;
  json done = AwaitTaskState(service, "later-1", "succeeded");
  EXPECT_EQ(done["attempts"], 1) << done;
  EXPECT_EQ(done["result"]["output"], json({{"n", 1}})) << done;

  auto [both, both_body] = service.Submit({{"type", "inject"},
                                           {"input", {{"data", json::object()}}},
                                           {"run_at", "2030-01-01T00:00:00Z"},
                                           {"run_after", "PT1S"}});
  EXPECT_EQ(both, 400) << both_body;
  EXPECT_THAT(both_body.value("error", ""), HasSubstr("\"run_at\" and \"run_after\""));

  const json schedule = {{"id", "every-second"},
                         {"every", "PT1S"},
                         {"task", {{"type", "inject"}, {"input", {{"data", {{"tick", true}}}}}}}};
  auto [created, created_body] = SendJson(service, "POST", "/v1/schedules", schedule);
  ASSERT_EQ(created, 201) << created_body;
  EXPECT_EQ(created_body["every"], "PT1S") << created_body;
  EXPECT_EQ(created_body["missed"], "skip") << created_body;
  EXPECT_TRUE(created_body["next_run_at"].is_string()) << created_body;
  auto [again, again_body] = SendJson(service, "POST", "/v1/schedules", schedule);
  EXPECT_EQ(again, 409) << again_body;
  EXPECT_EQ(again_body["existing_id"], "every-second") << again_body;
  auto [listed, listed_body] = SendJson(service, "GET", "/v1/schedules");
  ASSERT_EQ(listed, 200) << listed_body;
  ASSERT_EQ(listed_body["schedules"].size(), 1u) << listed_body;
  EXPECT_EQ(listed_body["schedules"][0]["id"], "every-second");

  // Its first fire runs as a task named by the schedule and the fire time.
  const absl::Time deadline = absl::Now() + kSafety;
  std::string fired;
  while (fired.empty() && absl::Now() < deadline) {
    json one = GetJson(service, "/v1/schedules/every-second").second;
    if (one["last_task_id"].is_string()) fired = one["last_task_id"].get<std::string>();
    if (fired.empty()) absl::SleepFor(absl::Milliseconds(20));  // polling a remote process
  }
  ASSERT_THAT(fired, ::testing::StartsWith("every-second@")) << service.LogTail();
  json run = AwaitTaskState(service, fired, "succeeded");
  EXPECT_EQ(run["result"]["output"], json({{"tick", true}})) << run;
  EXPECT_EQ(run["result"]["metadata"]["schedule_id"], "every-second") << run;
  EXPECT_EQ(run["schedule_id"], "every-second") << run;

  auto [deleted, deleted_body] = SendJson(service, "DELETE", "/v1/schedules/every-second");
  EXPECT_EQ(deleted, 200) << deleted_body;
  EXPECT_EQ(SendJson(service, "GET", "/v1/schedules/every-second").first, 404);
  EXPECT_EQ(SendJson(service, "DELETE", "/v1/schedules/every-second").first, 404);
  EXPECT_EQ(GetJson(service, "/v1/tasks/" + fired).second["state"], "succeeded");

  for (const auto& [body, message] : std::vector<std::pair<json, std::string>>{
           {{{"id", "bad"}, {"cron", "61 * * * *"}, {"task", {{"type", "inject"}}}},
            "cron minute field \"61\""},
           {{{"id", "bad"}, {"cron", "0 3 * * *"}, {"timezone", "Mars/Base"},
             {"task", {{"type", "inject"}}}},
            "\"timezone\": unknown time zone"},
           {{{"id", "bad"}, {"every", "PT1M"}, {"task", {{"type", "no-such-type"}}}},
            "\"task\": unknown task type \"no-such-type\""}}) {
    auto [status, error] = SendJson(service, "POST", "/v1/schedules", body);
    EXPECT_EQ(status, 400) << error;
    EXPECT_THAT(error.value("error", ""), HasSubstr(message)) << error;
  }
}

TEST(ServiceEndToEnd, TaskApiOnTheMemoryStore) {
  auto service = ExecutorProcess::Start({"EVENT_STREAM_TYPE=memory"});
  ASSERT_NE(service, nullptr);
  TaskApiLifecycle(*service);
}

// GET /v1/tasks/{id}/events from the binary: a finished task's stream is its final state alone,
// and then the server closes it (the built-in types report no progress; the progress events
// themselves are covered in-process by task_events_test.cc).
TEST(ServiceEndToEnd, TaskEventsOfAFinishedTaskAreItsFinalStateOnTheMemoryStore) {
  auto service = ExecutorProcess::Start({"EVENT_STREAM_TYPE=memory"});
  ASSERT_NE(service, nullptr);
  auto [status, body] = service->Submit(InjectTask(7));
  ASSERT_EQ(status, 202) << body;
  const absl::Time deadline = absl::Now() + kSafety;
  while (absl::Now() < deadline &&
         GetJson(*service, "/v1/tasks/e2e-7").second.value("state", "") != "succeeded") {
    absl::SleepFor(absl::Milliseconds(20));  // polling a remote process: no event to wait on
  }
  auto events = service->Client().Get("/v1/tasks/e2e-7/events");
  ASSERT_TRUE(events);
  EXPECT_EQ(events->status, 200);
  EXPECT_EQ(events->get_header_value("Content-Type"), "text/event-stream");
  ASSERT_TRUE(absl::StartsWith(events->body, "event: final\ndata: ")) << events->body;
  ASSERT_TRUE(absl::EndsWith(events->body, "\n\n")) << events->body;
  const std::string data =
      events->body.substr(std::string("event: final\ndata: ").size(),
                          events->body.size() - std::string("event: final\ndata: ").size() - 2);
  EXPECT_EQ(data.find('\n'), std::string::npos) << "one message only: " << events->body;
  json final_state = json::parse(data, nullptr, false);
  EXPECT_EQ(final_state.value("state", ""), "succeeded") << data;
  EXPECT_EQ(final_state.value("id", ""), "e2e-7") << data;
  EXPECT_EQ(GetJson(*service, "/v1/tasks/nobody/events").first, 404);
}

TEST(ServiceEndToEnd, RunLaterAndSchedulesOnTheMemoryStore) {
  auto service =
      ExecutorProcess::Start({"EVENT_STREAM_TYPE=memory", "EXECUTOR_SCHEDULER_INTERVAL=100ms"});
  ASSERT_NE(service, nullptr);
  RunLaterAndSchedules(*service);
  WaitProgressOverSse(*service);
}

TEST(ServiceEndToEnd, WithoutAStoreTheTaskApiIsRefusedNamingTheSettingAndTasksStillRun) {
  auto service = ExecutorProcess::Start({"EVENT_STREAM_TYPE=memory", "EXECUTOR_STORE=none"});
  ASSERT_NE(service, nullptr);
  for (const auto& [status, body] :
       {GetJson(*service, "/v1/tasks/x"), GetJson(*service, "/v1/tasks/x/events"),
       PostJson(*service, "/v1/tasks/x:cancel"),
        GetJson(*service, "/v1/stats"), GetJson(*service, "/v1/schedules"),
        SendJson(*service, "POST", "/v1/schedules",
                 {{"id", "s"}, {"every", "PT1M"}, {"task", {{"type", "inject"}}}}),
        service->Submit({{"type", "inject"},
                         {"input", {{"data", json::object()}}},
                         {"run_after", "PT1M"}})}) {
    EXPECT_EQ(status, 400) << body;
    EXPECT_THAT(body.value("error", ""), HasSubstr("EXECUTOR_STORE")) << body;
  }
  auto [unique, unique_body] =
      service->Submit({{"id", "u"}, {"type", "inject"}, {"input", {{"data", json::object()}}},
                       {"unique_key", "k"}});
  EXPECT_EQ(unique, 400) << unique_body;
  EXPECT_THAT(unique_body.value("error", ""), HasSubstr("EXECUTOR_STORE")) << unique_body;
  for (int i = 0; i < 3; ++i) {
    auto [status, body] = service->Submit(InjectTask(i));
    ASSERT_EQ(status, 202) << body;
  }
  ASSERT_TRUE(service->AwaitMetric(
      R"(eventbus_executor_results_published_total{status="succeeded"})", 3));
}

#ifdef EVENTBUS_E2E_WITH_REDIS
TEST(ServiceEndToEnd, RedisBackendPublishesAResultForEverySubmittedTask) {
  auto redis = harness::RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  ASSERT_TRUE(redis::RegisterRedisBackend().ok());
  auto reader = BackendRegistry::Global().Create("redis", BackendConfig{.url = (*redis)->url()});
  ASSERT_TRUE(reader.ok()) << reader.status();
  RoundTripThroughRealBackend({"EVENT_STREAM_TYPE=redis", "REDIS_URL=" + (*redis)->url()},
                              **reader);
}


// On Redis with the Redis store: the task API, and a duplicate delivery of a succeeded task
// (published again straight to the stream, as a crash before the ack would redeliver it) is
// settled with the stored result without calling the remote side again.
TEST(ServiceEndToEnd, RedisStoreTracksTasksAndNeverRunsASucceededTaskTwice) {
  if (!HasCallAndSetHandlers()) GTEST_SKIP() << "built without the call/set components";
  auto redis = harness::RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  ASSERT_TRUE(redis::RegisterRedisBackend().ok());
  auto reader = BackendRegistry::Global().Create("redis", BackendConfig{.url = (*redis)->url()});
  ASSERT_TRUE(reader.ok()) << reader.status();
  testing::LocalHttpServer remote;
  auto service = ExecutorProcess::Start(
      {"EVENT_STREAM_TYPE=redis", "REDIS_URL=" + (*redis)->url(), "LOG_LEVEL=info",
       "EXECUTOR_SCHEDULER_INTERVAL=100ms"});
  ASSERT_NE(service, nullptr);
  EXPECT_THAT(service->Log(), HasSubstr("task store ready"));
  TaskApiLifecycle(*service);
  SucceededTaskRunsOnceDespiteADuplicateDelivery(*service, **reader, remote);
  RunLaterAndSchedules(*service);
  WaitProgressOverSse(*service);
  auto [later, later_body] = service->Submit({{"id", "later-restart"},
                                              {"type", "inject"},
                                              {"input", {{"data", json::object()}}},
                                              {"run_after", "PT3S"}});
  ASSERT_EQ(later, 202) << later_body;

  // The store is Redis itself: a restarted service still knows the task, and publishes the
  // one scheduled before the restart when it is due.
  EXPECT_EQ(GetJson(*service, "/v1/tasks/later-restart").second["state"], "scheduled");
  service->Stop();
  service = ExecutorProcess::Start({"EVENT_STREAM_TYPE=redis", "REDIS_URL=" + (*redis)->url(),
                                    "EXECUTOR_SCHEDULER_INTERVAL=100ms"});
  ASSERT_NE(service, nullptr);
  EXPECT_EQ(GetJson(*service, "/v1/tasks/once-call").second["state"], "succeeded");
  EXPECT_EQ(AwaitTaskState(*service, "later-restart", "succeeded")["attempts"], 1);
}
#endif  // EVENTBUS_E2E_WITH_REDIS

#ifdef EVENTBUS_E2E_WITH_NATS
TEST(ServiceEndToEnd, NatsBackendPublishesAResultForEverySubmittedTask) {
  auto nats = harness::NatsServer::Start();
  ASSERT_TRUE(nats.ok()) << nats.status();
  ASSERT_TRUE(nats::RegisterNatsBackend().ok());
  auto reader = BackendRegistry::Global().Create("nats", BackendConfig{.url = (*nats)->url()});
  ASSERT_TRUE(reader.ok()) << reader.status();
  RoundTripThroughRealBackend({"EVENT_STREAM_TYPE=nats", "NATS_URL=" + (*nats)->url()},
                              **reader);
}
#endif  // EVENTBUS_E2E_WITH_NATS

#ifdef EVENTBUS_E2E_WITH_REDIS
TEST(ServiceEndToEnd, SigtermGivesRunningTasksBackToTheNextWorkerAndLosesNothing) {
  if (!HasCallAndSetHandlers()) GTEST_SKIP() << "built without the call/set components";
  auto redis = harness::RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  ASSERT_TRUE(redis::RegisterRedisBackend().ok());
  auto reader = BackendRegistry::Global().Create("redis", BackendConfig{.url = (*redis)->url()});
  ASSERT_TRUE(reader.ok()) << reader.status();
  SubscribeOptions observe{.stream = std::string(kDefaultResultStream),
                           .group = "e2e-observer",
                           .consumer = "e2e"};
  auto results = (*reader)->Subscribe(observe);
  ASSERT_TRUE(results.ok()) << results.status();
  testing::LocalHttpServer server;
  const std::vector<std::string> env = {"EVENT_STREAM_TYPE=redis",
                                        "REDIS_URL=" + (*redis)->url(),
                                        "EXECUTOR_CONCURRENCY=2",
                                        "EXECUTOR_SHUTDOWN_DEADLINE=1s",
                                        "EXECUTOR_TASK_TIMEOUT=PT60S"};
  auto first = ExecutorProcess::Start(env);
  ASSERT_NE(first, nullptr);
  // Two calls occupy both slots of the first worker; three more tasks wait in the stream.
  for (int i = 0; i < 2; ++i) {
    auto [status, body] = first->Submit({{"id", absl::StrCat("gate-", i)},
                                         {"type", "call"},
                                         {"input", {{"url", server.Url("/gate")}}}});
    ASSERT_EQ(status, 202) << body;
  }
  ASSERT_TRUE(server.AwaitGateArrivals(2)) << first->LogTail();
  for (int i = 0; i < 3; ++i) {
    auto [status, body] = first->Submit(InjectTask(i));
    ASSERT_EQ(status, 202) << body;
  }
  first->Stop();  // SIGTERM while both calls run: after 1s they are given back
  EXPECT_THAT(first->Log(), HasSubstr("still running at the shutdown deadline"));

  auto second = ExecutorProcess::Start(env);
  ASSERT_NE(second, nullptr);
  ASSERT_TRUE(server.AwaitGateArrivals(4)) << second->LogTail();
  server.OpenGate();
  std::map<std::string, TaskResult> seen;
  const absl::Time deadline = absl::Now() + kSafety;
  while (seen.size() < 5 && absl::Now() < deadline) {
    auto fetched = (*results)->Fetch(10, absl::Milliseconds(500));
    ASSERT_TRUE(fetched.ok()) << fetched.status();
    for (const Delivery& delivery : *fetched) {
      auto result = ParseTaskResult(delivery.event.data());
      ASSERT_TRUE(result.ok()) << result.status();
      seen[result->task_id] = *result;
      EXPECT_TRUE((*results)->Ack(delivery).ok());
    }
  }
  ASSERT_EQ(seen.size(), 5u) << second->LogTail();
  for (const auto& [id, result] : seen) {
    EXPECT_EQ(result.status, TaskStatus::kSucceeded) << id;
    // The given-back calls ran a second time on the second worker: a second delivery, and
    // still the first attempt (a shutdown give-back is no failure).
    if (absl::StartsWith(id, "gate-")) {
      EXPECT_EQ(result.deliveries, 2) << id;
      EXPECT_EQ(result.attempts, 1) << id;
    }
  }
}

// The first dashboard snapshot of `service` whose `instances` satisfy `done` (a fresh
// connection gets a snapshot at once, then one a second); the last one seen after 30 s.
json AwaitFleet(const ExecutorProcess& service, const std::function<bool(const json&)>& done) {
  json last;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  RawHttpClient client(service.port());
  if (!client.Send(RawHttpClient::Request("GET", "/v1/dashboard/events"))) return last;
  std::string buffer;
  while (absl::Now() < deadline) {
    char chunk[8192];
    const ssize_t n = ::recv(client.fd(), chunk, sizeof(chunk), 0);
    if (n <= 0) break;
    buffer.append(chunk, static_cast<size_t>(n));
    size_t end;
    while ((end = buffer.find("\n\n")) != std::string::npos) {
      const std::string message = buffer.substr(0, end);
      buffer.erase(0, end + 2);
      const size_t data = message.find("data: ");
      if (data == std::string::npos) continue;
      last = json::parse(message.substr(data + 6), nullptr, false);
      if (last.contains("instances") && done(last["instances"])) return last["instances"];
    }
  }
  ADD_FAILURE() << "the fleet never matched; last snapshot: " << last.dump();
  return last.value("instances", json());
}

// The entry of `name` in a snapshot's `instances`; null when it is not listed.
json FleetEntry(const json& fleet, absl::string_view name) {
  for (const json& entry : fleet) {
    if (entry.value("name", "") == name) return entry;
  }
  return nullptr;
}

// Two executor processes on one Redis store (and server), each on its own request stream so
// which one runs a task is certain: each one's dashboard lists the other with its in-flight
// count from the other's heartbeat, and a graceful stop removes the stopped one's record at
// once (long before its record would expire).
TEST(ServiceEndToEnd, TwoExecutorsOnOneRedisStoreSeeEachOthersInFlightCounts) {
  if (!HasCallAndSetHandlers()) GTEST_SKIP() << "built without the call/set components";
  auto redis = harness::RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  testing::LocalHttpServer remote;
  const std::vector<std::string> common = {"EVENT_STREAM_TYPE=redis",
                                           "REDIS_URL=" + (*redis)->url(),
                                           "EXECUTOR_CONCURRENCY=4", "EXECUTOR_TASK_TIMEOUT=PT60S"};
  std::vector<std::string> env_a = common;
  env_a.insert(env_a.end(), {"EXECUTOR_CONSUMER_NAME=exec-a", "EXECUTOR_INSTANCE_HEARTBEAT=200ms"});
  std::vector<std::string> env_b = common;
  // B's record would live 6 s after its last beat: gone at once after its stop only if removed.
  env_b.insert(env_b.end(), {"EXECUTOR_CONSUMER_NAME=exec-b", "EXECUTOR_INSTANCE_HEARTBEAT=1s",
                             "EXECUTOR_REQUEST_STREAM=tasks.tier-b"});
  auto a = ExecutorProcess::Start(env_a);
  ASSERT_NE(a, nullptr);
  auto b = ExecutorProcess::Start(env_b);
  ASSERT_NE(b, nullptr);
  auto gate_call = [&](const ExecutorProcess& on, int i) {
    auto [status, body] = on.Submit({{"id", absl::StrCat("fleet-gate-", i)},
                                     {"type", "call"},
                                     {"input", {{"url", remote.Url("/gate")}}}});
    ASSERT_EQ(status, 202) << body;
  };
  for (int i = 0; i < 2; ++i) ASSERT_NO_FATAL_FAILURE(gate_call(*a, i));
  ASSERT_NO_FATAL_FAILURE(gate_call(*b, 2));
  ASSERT_TRUE(remote.AwaitGateArrivals(3)) << a->LogTail() << b->LogTail();

  auto in_flight_is = [](absl::string_view name, int n) {
    return [name = std::string(name), n](const json& fleet) {
      const json entry = FleetEntry(fleet, name);
      return entry.is_object() && entry.value("in_flight", -1) == n;
    };
  };
  json seen_by_a = AwaitFleet(*a, in_flight_is("exec-b", 1));
  json b_from_a = FleetEntry(seen_by_a, "exec-b");
  ASSERT_TRUE(b_from_a.is_object()) << seen_by_a.dump();
  EXPECT_EQ(b_from_a["this"], false);
  EXPECT_EQ(b_from_a["ready"], true);
  EXPECT_EQ(b_from_a["stale"], false);
  EXPECT_EQ(b_from_a["concurrency"], 4);
  EXPECT_EQ(b_from_a["backend"], "redis");
  EXPECT_EQ(b_from_a["request_stream"], "tasks.tier-b");
  EXPECT_EQ(FleetEntry(seen_by_a, "exec-a")["this"], true) << seen_by_a.dump();
  EXPECT_EQ(FleetEntry(seen_by_a, "exec-a")["in_flight"], 2) << seen_by_a.dump();

  json seen_by_b = AwaitFleet(*b, in_flight_is("exec-a", 2));
  EXPECT_EQ(FleetEntry(seen_by_b, "exec-a")["this"], false) << seen_by_b.dump();
  EXPECT_EQ(FleetEntry(seen_by_b, "exec-b")["this"], true) << seen_by_b.dump();
  EXPECT_EQ(FleetEntry(seen_by_b, "exec-b")["in_flight"], 1) << seen_by_b.dump();

  remote.OpenGate();
  ASSERT_TRUE(a->AwaitMetric(
      "eventbus_executor_tasks_total{outcome=\"succeeded\",type=\"call\"}", 2));
  ASSERT_TRUE(b->AwaitMetric(
      "eventbus_executor_tasks_total{outcome=\"succeeded\",type=\"call\"}", 1));
  b->Stop();  // SIGTERM: drains, then removes its record
  json after = AwaitFleet(*a, [](const json&) { return true; });  // the first snapshot
  EXPECT_TRUE(FleetEntry(after, "exec-b").is_null()) << after.dump();
  EXPECT_EQ(FleetEntry(after, "exec-a")["in_flight"], 0) << after.dump();
  EXPECT_EQ(a->Metric("eventbus_executor_instance_heartbeat_failures_total"), 0);
}

#endif

#ifdef EVENTBUS_E2E_WITH_KAFKA
TEST(ServiceEndToEnd, KafkaBackendPublishesAResultForEverySubmittedTask) {
  auto kafka = harness::KafkaBroker::Start();
  ASSERT_TRUE(kafka.ok()) << kafka.status();
  ASSERT_TRUE(kafka::RegisterKafkaBackend().ok());
  auto reader =
      BackendRegistry::Global().Create("kafka", BackendConfig{.url = (*kafka)->bootstrap()});
  ASSERT_TRUE(reader.ok()) << reader.status();
  RoundTripThroughRealBackend(
      {"EVENT_STREAM_TYPE=kafka", "KAFKA_BROKERS=" + (*kafka)->bootstrap()}, **reader);
}

#ifdef EVENTBUS_E2E_WITH_POSTGRES
// Production's pairing: Kafka carries the work, PostgreSQL keeps the tasks' state.
TEST(ServiceEndToEnd, KafkaWithThePostgresStoreTracksTasksAndNeverRunsASucceededTaskTwice) {
  if (!HasCallAndSetHandlers()) GTEST_SKIP() << "built without the call/set components";
  auto postgres = harness::PostgresServer::Start();
  ASSERT_TRUE(postgres.ok()) << postgres.status();
  auto kafka = harness::KafkaBroker::Start();
  ASSERT_TRUE(kafka.ok()) << kafka.status();
  ASSERT_TRUE(kafka::RegisterKafkaBackend().ok());
  auto reader =
      BackendRegistry::Global().Create("kafka", BackendConfig{.url = (*kafka)->bootstrap()});
  ASSERT_TRUE(reader.ok()) << reader.status();
  testing::LocalHttpServer remote;
  const std::vector<std::string> env = {
      "EVENT_STREAM_TYPE=kafka", "KAFKA_BROKERS=" + (*kafka)->bootstrap(),
      "EXECUTOR_STORE=postgres", "EXECUTOR_STORE_URL=" + (*postgres)->url(),
      "EXECUTOR_SCHEDULER_INTERVAL=100ms"};
  auto service = ExecutorProcess::Start(env);
  ASSERT_NE(service, nullptr);
  TaskApiLifecycle(*service);
  SucceededTaskRunsOnceDespiteADuplicateDelivery(*service, **reader, remote);
  RunLaterAndSchedules(*service);
  WaitProgressOverSse(*service);
  auto [later, later_body] = service->Submit({{"id", "later-restart"},
                                              {"type", "inject"},
                                              {"input", {{"data", json::object()}}},
                                              {"run_after", "PT3S"}});
  ASSERT_EQ(later, 202) << later_body;
  EXPECT_EQ(GetJson(*service, "/v1/tasks/later-restart").second["state"], "scheduled");
  // The records are in PostgreSQL: a restarted service still knows them, and publishes the
  // task scheduled before the restart when it is due.
  service->Stop();
  service = ExecutorProcess::Start(env);
  ASSERT_NE(service, nullptr);
  EXPECT_EQ(GetJson(*service, "/v1/tasks/once-call").second["state"], "succeeded");
  EXPECT_EQ(AwaitTaskState(*service, "later-restart", "succeeded")["attempts"], 1);
}
#endif  // EVENTBUS_E2E_WITH_POSTGRES
#endif

}  // namespace
}  // namespace eventbus::executor
