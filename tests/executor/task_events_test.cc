// GET /v1/tasks/{id}/events: a task's progress live as Server-Sent Events. Against the real
// service in-process (memory backend, memory store, a handler that reports progress step by
// step): the event sequence (current progress, each new one, the final state, end of stream),
// the token, 400 without a store, 404 for an unknown task. And TaskEvents on a bare HTTP
// server: the bound on open streams, the slot of a client that left, the heartbeat.

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "config.h"
#include "eventbus/executor/handler.h"
#include "eventbus/memory/memory_event_stream.h"
#include "eventbus/registry.h"
#include "eventbus/taskstore/memory_task_store.h"
#include "http_server.h"
#include "json_log.h"
#include "raw_http_client.h"
#include "service.h"
#include "task_events.h"
#include "test_support.h"

namespace eventbus::executor::service {
namespace {

using nlohmann::json;
using testing::RawHttpClient;

struct SseMessage {
  std::string event;  // empty for a comment
  std::string data;
  std::string comment;
};

// Reads one streamed response off a raw socket: the header, then one message at a time.
class SseReader {
 public:
  SseReader(int port, const std::string& target, const std::string& extra = "")
      : client_(port, 10000) {
    EXPECT_TRUE(client_.Send(RawHttpClient::Request("GET", target, "", extra)));
  }

  // The status line and header lines; empty when the connection closed first.
  std::string Header() {
    size_t end;
    while ((end = buffer_.find("\r\n\r\n")) == std::string::npos) {
      if (!Fill()) return "";
    }
    std::string header = buffer_.substr(0, end + 4);
    buffer_.erase(0, end + 4);
    return header;
  }

  // The next message (comments included); nullopt once the server closed the stream.
  std::optional<SseMessage> Next() {
    size_t end;
    while ((end = buffer_.find("\n\n")) == std::string::npos) {
      if (!Fill()) return std::nullopt;
    }
    SseMessage message;
    for (absl::string_view line : absl::StrSplit(buffer_.substr(0, end), '\n')) {
      if (absl::ConsumePrefix(&line, "event: ")) message.event = std::string(line);
      else if (absl::ConsumePrefix(&line, "data: ")) message.data = std::string(line);
      else if (absl::ConsumePrefix(&line, ":")) message.comment = std::string(line);
    }
    buffer_.erase(0, end + 2);
    return message;
  }

  // The next message that is an event (comments skipped).
  std::optional<SseMessage> NextEvent() {
    while (true) {
      std::optional<SseMessage> message = Next();
      if (!message || !message->event.empty()) return message;
    }
  }

 private:
  bool Fill() {
    char chunk[4096];
    const ssize_t n = ::recv(client_.fd(), chunk, sizeof(chunk), 0);
    if (n <= 0) return false;
    buffer_.append(chunk, static_cast<size_t>(n));
    return true;
  }

  RawHttpClient client_;
  std::string buffer_;
};

// Reports progress step by step as the test releases it: 10, then {"step": "two", "done": 60},
// then succeeds. With {"quick": true} as input it succeeds at once without a report.
class SteppingHandler final : public TaskHandler {
 public:
  explicit SteppingHandler(::eventbus::executor::testing::Monitor* monitor, int* reached,
                           int* released)
      : monitor_(monitor), reached_(reached), released_(released) {}
  std::string type() const override { return "stepper"; }
  TaskOutcome Handle(TaskContext& context) override {
    if (context.input().value("quick", false)) return TaskOutcome::Succeeded(json{{"quick", true}});
    if (absl::Status s = context.ReportProgress(10); !s.ok()) return TaskOutcome::FromStatus(s);
    Step(1);
    if (absl::Status s = context.ReportProgress(json{{"step", "two"}, {"done", 60}}); !s.ok()) {
      return TaskOutcome::FromStatus(s);
    }
    Step(2);
    return TaskOutcome::Succeeded(json{{"answer", 42}});
  }

 private:
  void Step(int step) {
    monitor_->Update([&] { *reached_ = step; });
    monitor_->Await([&] { return *released_ >= step; });
  }
  ::eventbus::executor::testing::Monitor* monitor_;
  int* reached_;
  int* released_;
};

class TaskEventsServiceTest : public ::testing::Test {
 protected:
  void Start(Environment extra = {}) {
    ASSERT_TRUE(memory::RegisterMemoryBackend().ok());
    Environment env = {{"EVENT_STREAM_TYPE", "memory"},
                       {"EXECUTOR_HTTP_ADDR", "127.0.0.1:0"},
                       {"EXECUTOR_PROGRESS_INTERVAL", "10ms"},
                       {"LOG_LEVEL", "error"}};
    for (auto& [k, v] : extra) env[k] = v;
    auto config = ParseServiceConfig(env, BackendRegistry::Global().Names());
    ASSERT_TRUE(config.ok()) << config.status();
    service_ = std::make_unique<Service>(*config, env, &log_);
    ASSERT_TRUE(service_
                    ->RegisterHandler(
                        std::make_unique<SteppingHandler>(&monitor_, &reached_, &released_))
                    .ok());
    ASSERT_TRUE(service_->Start().ok());
  }
  void TearDown() override {
    Release(100);
    if (service_ != nullptr) service_->Stop();
  }

  void Release(int step) {
    monitor_.Update([&] { released_ = std::max(released_, step); });
  }
  bool AwaitReached(int step) {
    return monitor_.Await([&] { return reached_ >= step; });
  }

  std::optional<testing::RawResponse> Get(const std::string& target, const std::string& extra = "") {
    RawHttpClient client(service_->http_port());
    return client.RoundTrip(RawHttpClient::Request("GET", target, "", extra));
  }
  void Submit(const json& request) {
    RawHttpClient client(service_->http_port());
    auto response = client.RoundTrip(RawHttpClient::Request("POST", "/v1/tasks", request.dump()));
    ASSERT_TRUE(response.has_value());
    ASSERT_EQ(response->status, 202) << response->body;
  }
  // Waits (real time, bounded) until GET /v1/tasks/{id} shows `progress`.
  void AwaitStoredProgress(const std::string& id, const json& progress) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    json last;
    while (absl::Now() < deadline) {
      auto response = Get(absl::StrCat("/v1/tasks/", id));
      ASSERT_TRUE(response.has_value());
      if (response->status == 200) {
        last = json::parse(response->body);
        if (last["progress"] == progress) return;
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
    FAIL() << "task " << id << " never showed progress " << progress << "; last: " << last;
  }

  JsonLog log_{LogLevel::kError};
  std::unique_ptr<Service> service_;
  ::eventbus::executor::testing::Monitor monitor_;
  int reached_ = 0;   // guarded by monitor_
  int released_ = 0;  // guarded by monitor_
};

TEST_F(TaskEventsServiceTest, StreamsTheCurrentProgressThenEachNewOneThenTheFinalStateAndEnds) {
  ASSERT_NO_FATAL_FAILURE(Start());
  ASSERT_NO_FATAL_FAILURE(Submit({{"id", "watched"}, {"type", "stepper"}}));
  ASSERT_TRUE(AwaitReached(1));
  ASSERT_NO_FATAL_FAILURE(AwaitStoredProgress("watched", 10));

  SseReader reader(service_->http_port(), "/v1/tasks/watched/events");
  const std::string header = reader.Header();
  EXPECT_TRUE(absl::StartsWith(header, "HTTP/1.1 200")) << header;
  EXPECT_NE(header.find("Content-Type: text/event-stream"), std::string::npos) << header;

  std::optional<SseMessage> current = reader.NextEvent();
  ASSERT_TRUE(current.has_value());
  EXPECT_EQ(current->event, "progress");
  json data = json::parse(current->data);
  EXPECT_EQ(data["id"], "watched");
  EXPECT_EQ(data["state"], "running");
  EXPECT_EQ(data["progress"], 10);

  Release(1);
  std::optional<SseMessage> next = reader.NextEvent();
  ASSERT_TRUE(next.has_value());
  EXPECT_EQ(next->event, "progress");
  EXPECT_EQ(json::parse(next->data)["progress"], json({{"step", "two"}, {"done", 60}}));

  Release(2);
  std::optional<SseMessage> final_state = reader.NextEvent();
  ASSERT_TRUE(final_state.has_value());
  EXPECT_EQ(final_state->event, "final");
  data = json::parse(final_state->data);
  EXPECT_EQ(data["id"], "watched");
  EXPECT_EQ(data["state"], "succeeded");
  EXPECT_EQ(data["progress"], json({{"step", "two"}, {"done", 60}}));
  EXPECT_EQ(data["result"]["output"]["answer"], 42);
  EXPECT_FALSE(reader.NextEvent().has_value());  // the stream ended after the final state
}

TEST_F(TaskEventsServiceTest, AFinishedTaskGetsOnlyItsFinalState) {
  ASSERT_NO_FATAL_FAILURE(Start());
  ASSERT_NO_FATAL_FAILURE(
      Submit({{"id", "quick"}, {"type", "stepper"}, {"input", {{"quick", true}}}}));
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline) {
    auto task = Get("/v1/tasks/quick");
    ASSERT_TRUE(task.has_value());
    if (task->status == 200 && json::parse(task->body)["state"] == "succeeded") break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  SseReader reader(service_->http_port(), "/v1/tasks/quick/events");
  ASSERT_TRUE(absl::StartsWith(reader.Header(), "HTTP/1.1 200"));
  std::optional<SseMessage> only = reader.NextEvent();
  ASSERT_TRUE(only.has_value());
  EXPECT_EQ(only->event, "final");
  EXPECT_EQ(json::parse(only->data)["state"], "succeeded");
  EXPECT_FALSE(reader.NextEvent().has_value());
}

TEST_F(TaskEventsServiceTest, AnUnknownTaskIs404) {
  ASSERT_NO_FATAL_FAILURE(Start());
  auto response = Get("/v1/tasks/nobody/events");
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, 404);
  EXPECT_NE(response->body.find("no task \\\"nobody\\\""), std::string::npos) << response->body;
}

TEST_F(TaskEventsServiceTest, WithoutAStoreIs400NamingExecutorStore) {
  ASSERT_NO_FATAL_FAILURE(Start({{"EXECUTOR_STORE", "none"}}));
  auto response = Get("/v1/tasks/any/events");
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, 400);
  EXPECT_NE(response->body.find("GET /v1/tasks/{id}/events needs a task store"), std::string::npos)
      << response->body;
  EXPECT_NE(response->body.find("EXECUTOR_STORE"), std::string::npos) << response->body;
}

TEST_F(TaskEventsServiceTest, NeedsTheApiToken) {
  ASSERT_NO_FATAL_FAILURE(Start({{"EXECUTOR_API_TOKEN", "s3cret"}}));
  auto missing = Get("/v1/tasks/any/events");
  ASSERT_TRUE(missing.has_value());
  EXPECT_EQ(missing->status, 401);
  auto wrong = Get("/v1/tasks/any/events", "Authorization: Bearer nope\r\n");
  ASSERT_TRUE(wrong.has_value());
  EXPECT_EQ(wrong->status, 401);
  auto right = Get("/v1/tasks/any/events", "Authorization: Bearer s3cret\r\n");
  ASSERT_TRUE(right.has_value());
  EXPECT_EQ(right->status, 404);  // through the token, to a task that does not exist
}

// ---- TaskEvents on a bare server: the bound, a client that leaves, the heartbeat ---------

class TaskEventsLimitsTest : public ::testing::Test {
 protected:
  void Start(TaskEventsOptions options) {
    taskstore::TaskRecord record;
    record.id = "t";
    record.type = "x";
    record.state = taskstore::TaskState::kRunning;
    ASSERT_TRUE(store_->Create(record, absl::Now()).ok());
    events_ = std::make_unique<TaskEvents>(options, store_.get(),
                                           [](const taskstore::TaskRecord& r) {
                                             return json{{"id", r.id}}.dump();
                                           });
    server_ = std::make_unique<HttpServer>(HttpServerOptions{.host = "127.0.0.1", .port = 0});
    server_->RoutePrefix("GET", "/events/", {}, [this](HttpRequest&& request,
                                                       HttpResponder respond) {
      events_->Handle(request.path.substr(std::string("/events/").size()), respond);
    });
    ASSERT_TRUE(server_->Start().ok());
  }
  void TearDown() override {
    if (events_ != nullptr) events_->Stop();
    if (server_ != nullptr) server_->Stop();
  }
  bool AwaitOpenStreams(int n) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (absl::Now() < deadline) {
      if (events_->open_streams() == n) return true;
      absl::SleepFor(absl::Milliseconds(5));
    }
    return false;
  }

  std::unique_ptr<taskstore::TaskStore> store_ = taskstore::NewMemoryTaskStore();
  std::unique_ptr<TaskEvents> events_;
  std::unique_ptr<HttpServer> server_;
};

TEST_F(TaskEventsLimitsTest, BoundsOpenStreamsAndFreesTheSlotOfAClientThatLeft) {
  ASSERT_NO_FATAL_FAILURE(Start({.max_streams = 1,
                                 .poll_interval = absl::Milliseconds(20),
                                 .heartbeat_interval = absl::Seconds(30)}));
  auto first = std::make_unique<SseReader>(server_->port(), "/events/t");
  ASSERT_TRUE(absl::StartsWith(first->Header(), "HTTP/1.1 200"));
  EXPECT_EQ(events_->open_streams(), 1);

  RawHttpClient second(server_->port());
  auto refused = second.RoundTrip(RawHttpClient::Request("GET", "/events/t"));
  ASSERT_TRUE(refused.has_value());
  EXPECT_EQ(refused->status, 503);
  EXPECT_NE(refused->body.find("too many task event streams open (at most 1)"), std::string::npos)
      << refused->body;
  EXPECT_EQ(refused->Header("retry-after"), "5");

  first.reset();  // the client goes away
  ASSERT_TRUE(AwaitOpenStreams(0));
  SseReader third(server_->port(), "/events/t");
  EXPECT_TRUE(absl::StartsWith(third.Header(), "HTTP/1.1 200"));
}

// The last progress and the final state stored between two polls go out together: the stream
// must end only after both reached the client (it once closed with the final event queued).
TEST_F(TaskEventsLimitsTest, ProgressAndFinalStateStoredWithinOnePollBothReachTheClient) {
  ASSERT_NO_FATAL_FAILURE(Start({.max_streams = 4,
                                 .poll_interval = absl::Milliseconds(20),
                                 .heartbeat_interval = absl::Seconds(30)}));
  SseReader reader(server_->port(), "/events/t");
  ASSERT_TRUE(absl::StartsWith(reader.Header(), "HTTP/1.1 200"));
  ASSERT_TRUE(AwaitOpenStreams(1));
  taskstore::TaskUpdate done;
  done.now = absl::Now();
  done.progress = "100";
  done.state = taskstore::TaskState::kSucceeded;
  ASSERT_TRUE(store_->Update("t", done).ok());
  std::vector<std::string> events;
  while (auto message = reader.Next()) {
    if (!message->event.empty()) events.push_back(message->event);
  }
  EXPECT_THAT(events, ::testing::ElementsAre("progress", "final"));
}

TEST_F(TaskEventsLimitsTest, AnIdleStreamGetsAHeartbeatComment) {
  ASSERT_NO_FATAL_FAILURE(Start({.max_streams = 4,
                                 .poll_interval = absl::Milliseconds(10),
                                 .heartbeat_interval = absl::Milliseconds(50)}));
  SseReader reader(server_->port(), "/events/t");
  ASSERT_TRUE(absl::StartsWith(reader.Header(), "HTTP/1.1 200"));
  // One at once (the stream is open, nothing to report yet), then one per idle interval.
  for (int i = 0; i < 3; ++i) {
    std::optional<SseMessage> message = reader.Next();
    ASSERT_TRUE(message.has_value());
    EXPECT_EQ(message->event, "");
    EXPECT_EQ(message->comment, " keep-alive");
  }
}

}  // namespace
}  // namespace eventbus::executor::service
