// The dashboard's server side in-process: the embedded page, the live snapshot stream (Server-
// Sent Events over the HTTP server's streamed responses), the DLQ endpoints and the token.

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "config.h"
#include "dashboard.h"
#include "eventbus/memory/memory_event_stream.h"
#include "eventbus/registry.h"
#include "eventbus/stream_inspector.h"
#include "json_log.h"
#include "raw_http_client.h"
#include "service.h"

namespace eventbus::executor::service {
namespace {

using nlohmann::json;
using testing::RawHttpClient;

class DashboardTest : public ::testing::Test {
 protected:
  void Start(Environment extra = {}) {
    ASSERT_TRUE(memory::RegisterMemoryBackend().ok());
    Environment env = {{"EVENT_STREAM_TYPE", "memory"},
                       {"EXECUTOR_HTTP_ADDR", "127.0.0.1:0"},
                       {"LOG_LEVEL", "error"}};
    for (auto& [k, v] : extra) env[k] = v;
    auto config = ParseServiceConfig(env, BackendRegistry::Global().Names());
    ASSERT_TRUE(config.ok()) << config.status();
    service_ = std::make_unique<Service>(*config, env, &log_);
    ASSERT_TRUE(service_->Start().ok());
  }
  void TearDown() override {
    if (service_ != nullptr) service_->Stop();
  }

  std::optional<testing::RawResponse> Get(const std::string& target, const std::string& extra = "") {
    RawHttpClient client(service_->http_port());
    return client.RoundTrip(RawHttpClient::Request("GET", target, "", extra));
  }
  std::optional<testing::RawResponse> Post(const std::string& target, const std::string& body) {
    RawHttpClient client(service_->http_port());
    return client.RoundTrip(RawHttpClient::Request("POST", target, body));
  }

  // A malformed request straight onto the request stream: the executor dead-letters it.
  void PublishMalformedRequest(const std::string& id) {
    Event event = MakeEvent("io.flunq.task.requested", "test", "{not json");
    event.set_id(id);
    ASSERT_TRUE(service_->stream()->PublishAndWait("io.flunq.task.requested", event).ok());
  }

  json WaitForDeadLetters(size_t count) {
    json body;
    for (int i = 0; i < 200; ++i) {
      auto response = Get("/v1/dlq");
      EXPECT_TRUE(response.has_value());
      if (!response) break;
      EXPECT_EQ(response->status, 200) << response->body;
      body = json::parse(response->body);
      if (body["dead_letters"].size() >= count) break;
      absl::SleepFor(absl::Milliseconds(25));
    }
    return body;
  }

  JsonLog log_{LogLevel::kError};
  std::unique_ptr<Service> service_;
};

TEST_F(DashboardTest, ServesTheEmbeddedPageAndItsFiles) {
  ASSERT_NO_FATAL_FAILURE(Start());
  auto page = Get("/ui");
  ASSERT_TRUE(page.has_value());
  EXPECT_EQ(page->status, 200);
  EXPECT_TRUE(absl::StartsWith(page->Header("content-type"), "text/html"));
  EXPECT_NE(page->body.find("<title>eventbus dashboard</title>"), std::string::npos);
  EXPECT_NE(page->Header("content-security-policy").find("default-src 'self'"), std::string::npos);
  auto script = Get("/ui/app.js");
  ASSERT_TRUE(script.has_value());
  EXPECT_EQ(script->status, 200);
  EXPECT_NE(script->body.find("/v1/dashboard/events"), std::string::npos);
  auto style = Get("/ui/style.css");
  ASSERT_TRUE(style.has_value());
  EXPECT_EQ(style->status, 200);
  EXPECT_TRUE(absl::StartsWith(style->Header("content-type"), "text/css"));
}

// Reads Server-Sent Events from a raw socket until `done` accepts a snapshot.
json ReadSnapshotsUntil(RawHttpClient& client, const std::function<bool(const json&)>& done) {
  std::string buffer;
  json last;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (absl::Now() < deadline) {
    char chunk[8192];
    const ssize_t n = ::recv(client.fd(), chunk, sizeof(chunk), 0);
    if (n <= 0) break;
    buffer.append(chunk, static_cast<size_t>(n));
    size_t end;
    while ((end = buffer.find("\n\n")) != std::string::npos) {
      std::string message = buffer.substr(0, end);
      buffer.erase(0, end + 2);
      const size_t data = message.find("data: ");
      if (data == std::string::npos) continue;
      last = json::parse(message.substr(data + 6));
      if (done(last)) return last;
    }
  }
  return last;
}

// The page's "failed" is final failures: a handler's failure or an invalid request, not a
// retry (counted apart), a wait's later redelivery, a shutdown give-back or a duplicate.
TEST(DashboardMetricsTest, FailedCountsOnlyFinalFailures) {
  ExecutorMetrics sink;
  DashboardMetrics metrics(&sink);
  for (absl::string_view outcome :
       {kOutcomeSucceeded, kOutcomeFailed, kOutcomeInvalid, kOutcomeRetried, kOutcomeDelayed,
        kOutcomeAbandoned, kOutcomeCancelled, kOutcomeEscalated, kOutcomeDuplicate}) {
    metrics.TaskFinished("wait", outcome, absl::Milliseconds(1));
  }
  metrics.TaskRetried("wait", absl::Seconds(1));
  const DashboardMetrics::Totals totals = metrics.totals();
  EXPECT_EQ(totals.succeeded, 1);
  EXPECT_EQ(totals.failed, 2);
  EXPECT_EQ(totals.retried, 1);
}

TEST_F(DashboardTest, LiveSnapshotsFollowTheExecutor) {
  ASSERT_NO_FATAL_FAILURE(Start());
  RawHttpClient client(service_->http_port());
  ASSERT_TRUE(client.Send(RawHttpClient::Request("GET", "/v1/dashboard/events")));
  // The header first: a stream, no length, closed at the end.
  std::string header;
  while (header.find("\r\n\r\n") == std::string::npos) {
    char c;
    ASSERT_EQ(::recv(client.fd(), &c, 1, 0), 1);
    header.push_back(c);
  }
  EXPECT_TRUE(absl::StartsWith(header, "HTTP/1.1 200")) << header;
  EXPECT_NE(header.find("Content-Type: text/event-stream"), std::string::npos) << header;
  EXPECT_EQ(header.find("Content-Length"), std::string::npos) << header;

  json first = ReadSnapshotsUntil(client, [](const json&) { return true; });
  ASSERT_TRUE(first.is_object());
  EXPECT_EQ(first["instance"]["backend"], "memory");
  EXPECT_EQ(first["instance"]["ready"], true);
  EXPECT_EQ(first["totals"]["succeeded"], 0);

  for (int i = 0; i < 3; ++i) {
    auto submitted = service_->Submit(R"({"type": "inject", "input": {"data": {"n": 1}}})");
    ASSERT_TRUE(submitted.ok()) << submitted.status();
  }
  PublishMalformedRequest("broken-1");
  json later = ReadSnapshotsUntil(client, [](const json& s) {
    return s["totals"]["succeeded"] == 3 && s["totals"]["dead_lettered"] == 1;
  });
  EXPECT_EQ(later["totals"]["succeeded"], 3);
  EXPECT_EQ(later["totals"]["dead_lettered"], 1);
  bool saw_dlq = false;
  for (const json& stream : later["streams"]) {
    if (stream["stream"] == "io.flunq.task.requested.dlq") saw_dlq = stream["length"] == 1;
  }
  EXPECT_TRUE(saw_dlq) << later.dump();
}

// The instances view tells this instance among the request group's members (as the broker
// lists them) by the consumer name the executor subscribed with.
TEST_F(DashboardTest, SnapshotNamesThisInstanceAndItsConsumerGroup) {
  ASSERT_NO_FATAL_FAILURE(
      Start({{"EXECUTOR_CONSUMER_NAME", "exec-a"}, {"EXECUTOR_CONSUMER_GROUP", "workers-a"}}));
  // Another instance on the same stream and group: the broker knows it by name.
  auto other = service_->stream()->Subscribe(SubscribeOptions{
      .stream = "io.flunq.task.requested", .group = "workers-a", .consumer = "exec-b"});
  ASSERT_TRUE(other.ok()) << other.status();
  RawHttpClient client(service_->http_port());
  ASSERT_TRUE(client.Send(RawHttpClient::Request("GET", "/v1/dashboard/events")));
  json snapshot = ReadSnapshotsUntil(client, [](const json& s) {
    for (const json& stream : s["streams"]) {
      if (stream["stream"] != "io.flunq.task.requested") continue;
      for (const json& group : stream["groups"]) {
        if (group["consumers"].size() == 2) return true;
      }
    }
    return false;
  });
  ASSERT_TRUE(snapshot.is_object());
  EXPECT_EQ(snapshot["instance"]["name"], "exec-a");
  EXPECT_EQ(snapshot["instance"]["group"], "workers-a");
  EXPECT_EQ(snapshot["instance"]["request_stream"], "io.flunq.task.requested");
  EXPECT_EQ(snapshot["instance"]["in_flight"], 0);
  json members;
  for (const json& stream : snapshot["streams"]) {
    if (stream["stream"] != "io.flunq.task.requested") continue;
    for (const json& group : stream["groups"]) {
      if (group["group"] == "workers-a") members = group["consumers"];
    }
  }
  ASSERT_TRUE(members.is_array()) << snapshot.dump();
  std::vector<std::string> names = members.get<std::vector<std::string>>();
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"exec-a", "exec-b"})) << snapshot.dump();
}

// With a task store (memory here), the instances view is the store's: every instance that
// reports into it, this one marked and live, the others as of their heartbeat, a silent one
// stale. Other processes are stood in for by records written straight into the store.
TEST_F(DashboardTest, SnapshotListsTheInstancesOfTheTaskStoreWithThisOneMarked) {
  ASSERT_NO_FATAL_FAILURE(Start({{"EXECUTOR_CONSUMER_NAME", "exec-a"}}));
  ASSERT_NE(service_->store(), nullptr);
  const absl::Time now = service_->stream()->clock()->Now();
  taskstore::InstanceRecord other;
  other.name = "exec-b";
  other.group = "io.flunq.executor";
  other.backend = "memory";
  other.ready = true;
  other.in_flight = 3;
  other.concurrency = 16;
  other.heartbeat_interval = absl::Seconds(5);
  ASSERT_TRUE(service_->store()->PutInstance(other, now, absl::Seconds(30)).ok());
  taskstore::InstanceRecord silent = other;
  silent.name = "exec-c";
  ASSERT_TRUE(service_->store()->PutInstance(silent, now - absl::Seconds(11), absl::Seconds(30)).ok());

  RawHttpClient client(service_->http_port());
  ASSERT_TRUE(client.Send(RawHttpClient::Request("GET", "/v1/dashboard/events")));
  json snapshot = ReadSnapshotsUntil(client, [](const json& s) {
    return s.contains("instances") && s["instances"].size() == 3 && s["instances"][0]["last_seen"].is_string();
  });
  ASSERT_TRUE(snapshot.contains("instances")) << snapshot.dump();
  const json& fleet = snapshot["instances"];
  ASSERT_EQ(fleet.size(), 3u) << snapshot.dump();
  EXPECT_EQ(fleet[0]["name"], "exec-a");
  EXPECT_EQ(fleet[0]["this"], true);
  EXPECT_EQ(fleet[0]["ready"], true);
  EXPECT_EQ(fleet[0]["stale"], false);
  EXPECT_EQ(fleet[0]["concurrency"], snapshot["instance"]["concurrency"]);
  EXPECT_EQ(fleet[0]["heartbeat_interval_seconds"], 5);
  EXPECT_EQ(fleet[1]["name"], "exec-b");
  EXPECT_EQ(fleet[1]["this"], false);
  EXPECT_EQ(fleet[1]["in_flight"], 3);
  EXPECT_EQ(fleet[1]["concurrency"], 16);
  EXPECT_EQ(fleet[1]["stale"], false);
  EXPECT_EQ(fleet[2]["name"], "exec-c");
  EXPECT_EQ(fleet[2]["stale"], true) << "silent for more than 2 of its 5 s intervals";
  EXPECT_GE(fleet[2]["last_seen_age_seconds"].get<double>(), 11);
  EXPECT_FALSE(snapshot.contains("instances_error"));
}

TEST_F(DashboardTest, WithoutATaskStoreTheSnapshotHasNoFleet) {
  ASSERT_NO_FATAL_FAILURE(Start({{"EXECUTOR_STORE", "none"}}));
  RawHttpClient client(service_->http_port());
  ASSERT_TRUE(client.Send(RawHttpClient::Request("GET", "/v1/dashboard/events")));
  json snapshot = ReadSnapshotsUntil(client, [](const json&) { return true; });
  ASSERT_TRUE(snapshot.is_object());
  EXPECT_FALSE(snapshot.contains("instances")) << snapshot.dump();
  EXPECT_EQ(snapshot["instance"]["ready"], true);
}

TEST_F(DashboardTest, DeadLettersAreListedWithTheirReasonAndRedrivenByHand) {
  ASSERT_NO_FATAL_FAILURE(Start());
  PublishMalformedRequest("broken-2");
  json listed = WaitForDeadLetters(1);
  ASSERT_EQ(listed["dead_letters"].size(), 1u) << listed.dump();
  const json& letter = listed["dead_letters"][0];
  EXPECT_EQ(letter["event"]["id"], "broken-2");
  EXPECT_NE(letter["event"]["headers"]["dlqreason"].get<std::string>().find("JSON"),
            std::string::npos)
      << letter.dump();
  auto filtered = Get("/v1/dlq?reason=no%20such%20reason");
  ASSERT_TRUE(filtered.has_value());
  EXPECT_EQ(json::parse(filtered->body)["dead_letters"].size(), 0u);

  // Nothing selected is refused rather than redriving everything.
  auto empty = Post("/v1/dlq:redrive", "{}");
  ASSERT_TRUE(empty.has_value());
  EXPECT_EQ(empty->status, 400);

  auto redrive = Post("/v1/dlq:redrive",
                      json{{"ids", {letter["stream_id"]}}}.dump());
  ASSERT_TRUE(redrive.has_value());
  ASSERT_EQ(redrive->status, 200) << redrive->body;
  EXPECT_EQ(json::parse(redrive->body)["redriven"], 1);

  // Still malformed: it comes back, now carrying its trip.
  json again = WaitForDeadLetters(1);
  for (int i = 0; i < 200; ++i) {
    again = WaitForDeadLetters(1);
    if (!again["dead_letters"].empty() &&
        again["dead_letters"][0]["event"]["headers"].contains("dlqredrives")) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(25));
  }
  ASSERT_EQ(again["dead_letters"].size(), 1u) << again.dump();
  const json& back = again["dead_letters"][0]["event"];
  EXPECT_EQ(back["id"], "broken-2");
  EXPECT_EQ(back["headers"]["dlqredrives"], "1");
  EXPECT_NE(back["headers"]["dlqhistory"].get<std::string>().find("JSON"), std::string::npos);
}

TEST_F(DashboardTest, TheApiNeedsTheTokenThePageDoesNot) {
  ASSERT_NO_FATAL_FAILURE(Start({{"EXECUTOR_API_TOKEN", "s3cret"}}));
  auto page = Get("/ui");
  ASSERT_TRUE(page.has_value());
  EXPECT_EQ(page->status, 200);
  for (const char* target : {"/v1/dlq", "/v1/streams", "/v1/dashboard/events"}) {
    auto refused = Get(target);
    ASSERT_TRUE(refused.has_value());
    EXPECT_EQ(refused->status, 401) << target;
  }
  auto allowed = Get("/v1/streams", "Authorization: Bearer s3cret\r\n");
  ASSERT_TRUE(allowed.has_value());
  EXPECT_EQ(allowed->status, 200) << allowed->body;
  EXPECT_TRUE(json::parse(allowed->body)["streams"].is_array());
}

}  // namespace
}  // namespace eventbus::executor::service
