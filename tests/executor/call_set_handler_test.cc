// The `call` and `set` handlers on their own: `call` against a cpp-httplib server this test
// starts on 127.0.0.1, `set` with jq programs.

#include <dirent.h>

#include <atomic>
#include <condition_variable>
#include <iostream>
#include <mutex>
#include <vector>
#include <memory>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "eventbus/clock.h"
#include "eventbus/executor/call_handler.h"
#include "eventbus/executor/set_handler.h"
#include "eventbus/harness/server_process.h"
#include "components/slow_http_server.h"
#include "local_http_server.h"
#include "absl/strings/ascii.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace eventbus::executor {
namespace {

using ::nlohmann::json;
using ::testing::HasSubstr;
using Kind = TaskOutcome::Kind;
using testing::LocalHttpServer;

int ThreadsInProcess() {
  int n = 0;
  if (DIR* dir = opendir("/proc/self/task")) {
    while (dirent* entry = readdir(dir)) {
      if (entry->d_name[0] != '.') ++n;
    }
    closedir(dir);
  }
  return n;
}

TaskRequest Request(absl::string_view type, json input) {
  TaskRequest request;
  request.id = "t";
  request.type = std::string(type);
  request.input = std::make_shared<const json>(std::move(input));
  return request;
}

class CallHandlerTest : public ::testing::Test {
 protected:
  CallHandlerTest() {
    CallHandlerOptions options;
    options.clock = &clock_;
    options.breakers.breaker.failure_threshold = 2;
    options.breakers.breaker.open_duration = absl::Seconds(30);
    auto handler = NewCallHandler(options);
    EXPECT_TRUE(handler.ok()) << handler.status();
    handler_ = std::move(*handler);
  }

  TaskOutcome Run(json input) {
    const TaskRequest request = Request("call", std::move(input));
    EXPECT_TRUE(handler_->Supports(request).ok()) << handler_->Supports(request);
    TaskContext context(request, 1, clock_.Now(), clock_.Now() + absl::Seconds(30), &clock_);
    return handler_->Handle(context);
  }

  ManualClock clock_;
  LocalHttpServer server_;
  std::unique_ptr<TaskHandler> handler_;
};

TEST_F(CallHandlerTest, SuccessExtractsStatusHeadersAndJsonBody) {
  TaskOutcome outcome = Run({{"url", server_.Url("/ok")}, {"headers", {{"X-Test", "abc"}}}});
  ASSERT_EQ(outcome.kind(), Kind::kSucceeded) << outcome.error();
  const json& output = *outcome.output();
  EXPECT_EQ(output["status"], 200);
  EXPECT_EQ(output["headers"]["x-echo"], "abc");
  EXPECT_EQ(output["body"], json({{"hello", "world"}}));
}

TEST_F(CallHandlerTest, PostsAJsonBody) {
  TaskOutcome outcome =
      Run({{"method", "POST"}, {"url", server_.Url("/echo")}, {"body", {{"n", 1}}}});
  ASSERT_EQ(outcome.kind(), Kind::kSucceeded) << outcome.error();
  EXPECT_EQ((*outcome.output())["body"], json({{"n", 1}}));
}

TEST_F(CallHandlerTest, NotFoundIsPermanentWithTheResponseInTheOutput) {
  TaskOutcome outcome = Run({{"url", server_.Url("/missing")}});
  EXPECT_EQ(outcome.kind(), Kind::kPermanentFailure);
  EXPECT_THAT(outcome.error(), HasSubstr("answered HTTP 404"));
  EXPECT_EQ((*outcome.output())["body"], "nope");
}

TEST_F(CallHandlerTest, ErrorsNameTheHostButNeverTheQueryString) {
  TaskOutcome outcome = Run({{"url", server_.Url("/missing?token=s3cr3t")}});
  EXPECT_EQ(outcome.kind(), Kind::kPermanentFailure);
  EXPECT_THAT(outcome.error(), HasSubstr("http://127.0.0.1:"));
  EXPECT_THAT(outcome.error(), ::testing::Not(HasSubstr("s3cr3t")));
}

TEST_F(CallHandlerTest, ServerErrorIsTransient) {
  TaskOutcome outcome = Run({{"url", server_.Url("/broken")}});
  EXPECT_EQ(outcome.kind(), Kind::kTransientFailure);
  EXPECT_THAT(outcome.error(), HasSubstr("answered HTTP 500"));
}

TEST_F(CallHandlerTest, TimeoutIsTransient) {
  TaskOutcome outcome = Run({{"url", server_.Url("/slow")}, {"timeout", "PT0.3S"}});
  EXPECT_EQ(outcome.kind(), Kind::kTransientFailure);
  EXPECT_THAT(outcome.error(), HasSubstr("DEADLINE_EXCEEDED"));
}

TEST_F(CallHandlerTest, RefusedConnectionIsTransientAndOpensTheCircuit) {
  auto port = harness::FreeLoopbackPort();
  ASSERT_TRUE(port.ok());
  const std::string url = absl::StrCat("http://127.0.0.1:", *port, "/");
  TaskOutcome first = Run({{"url", url}});
  EXPECT_EQ(first.kind(), Kind::kTransientFailure);
  EXPECT_THAT(first.error(), HasSubstr("UNAVAILABLE"));
  EXPECT_EQ(Run({{"url", url}}).kind(), Kind::kTransientFailure);
  // Two failures opened the circuit: the third call is refused without touching the network.
  TaskOutcome rejected = Run({{"url", url}});
  EXPECT_EQ(rejected.kind(), Kind::kTransientFailure);
  EXPECT_THAT(rejected.error(), HasSubstr("circuit open"));
  // Another host is unaffected.
  EXPECT_EQ(Run({{"url", server_.Url("/ok")}}).kind(), Kind::kSucceeded);
}

TEST_F(CallHandlerTest, CircuitOpensHalfOpensOnTheClockAndClosesOnASuccessfulProbe) {
  // Two 500s from the host open its circuit (threshold 2 in this fixture).
  EXPECT_THAT(Run({{"url", server_.Url("/broken")}}).error(), HasSubstr("HTTP 500"));
  EXPECT_THAT(Run({{"url", server_.Url("/broken")}}).error(), HasSubstr("HTTP 500"));
  TaskOutcome rejected = Run({{"url", server_.Url("/ok")}});
  EXPECT_EQ(rejected.kind(), Kind::kTransientFailure);
  EXPECT_THAT(rejected.error(), HasSubstr("circuit open"));
  // Still open just before the cool-down ends (virtual time: nothing sleeps).
  clock_.Advance(absl::Seconds(30) - absl::Milliseconds(1));
  EXPECT_THAT(Run({{"url", server_.Url("/ok")}}).error(), HasSubstr("circuit open"));
  // Half-open at 30s: one probe goes through; its success closes the circuit.
  clock_.Advance(absl::Milliseconds(1));
  EXPECT_EQ(Run({{"url", server_.Url("/ok")}}).kind(), Kind::kSucceeded);
  EXPECT_EQ(Run({{"url", server_.Url("/ok")}}).kind(), Kind::kSucceeded);
  // A 404 means the host is up: it does not count towards opening the circuit.
  EXPECT_EQ(Run({{"url", server_.Url("/missing")}}).kind(), Kind::kPermanentFailure);
  EXPECT_EQ(Run({{"url", server_.Url("/missing")}}).kind(), Kind::kPermanentFailure);
  EXPECT_EQ(Run({{"url", server_.Url("/ok")}}).kind(), Kind::kSucceeded);
}

TEST_F(CallHandlerTest, FailedProbeReopensTheCircuit) {
  Run({{"url", server_.Url("/broken")}});
  Run({{"url", server_.Url("/broken")}});
  clock_.Advance(absl::Seconds(30));
  EXPECT_THAT(Run({{"url", server_.Url("/broken")}}).error(), HasSubstr("HTTP 500"));
  EXPECT_THAT(Run({{"url", server_.Url("/ok")}}).error(), HasSubstr("circuit open"));
}

TEST_F(CallHandlerTest, MalformedInputIsRejectedUpFront) {
  auto reason = [&](json input) {
    return std::string(handler_->Supports(Request("call", std::move(input))).message());
  };
  EXPECT_THAT(reason(json::object()), HasSubstr("input.url is required"));
  EXPECT_THAT(reason({{"url", "ftp://x/y"}}), HasSubstr("input.url"));
  EXPECT_THAT(reason({{"url", server_.Url("/ok")}, {"method", "TRACE"}}),
              HasSubstr("input.method"));
  EXPECT_THAT(reason({{"url", server_.Url("/ok")}, {"body", "x"}}),
              HasSubstr("not allowed with GET"));
  EXPECT_THAT(reason({{"url", server_.Url("/ok")}, {"headers", {{"A", 1}}}}),
              HasSubstr("input.headers.A"));
  EXPECT_THAT(reason({{"url", server_.Url("/ok")}, {"timeout", "soon"}}),
              HasSubstr("input.timeout"));
  EXPECT_THAT(reason({{"url", server_.Url("/ok")}, {"uri", "x"}}),
              HasSubstr("unknown input field \"uri\""));
}

// A server that shows what a `call` sent: GET /headers answers the request headers as JSON;
// GET /to-other redirects to `other` (another port: another host).
class HeaderEchoServer {
 public:
  HeaderEchoServer() {
    server_.Get("/headers", [](const httplib::Request& req, httplib::Response& res) {
      json headers = json::object();
      for (const auto& [name, value] : req.headers) headers[absl::AsciiStrToLower(name)] = value;
      res.set_content(headers.dump(), "application/json");
    });
    server_.Get("/to-self", [](const httplib::Request&, httplib::Response& res) {
      res.set_redirect("/headers");
    });
    // One request per connection: a kept-alive connection would hold stop() for seconds.
    server_.set_keep_alive_max_count(1);
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) std::this_thread::yield();
  }
  ~HeaderEchoServer() {
    server_.stop();
    thread_.join();
  }
  std::string Url(absl::string_view path) const {
    return absl::StrCat("http://127.0.0.1:", port_, path);
  }

 private:
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
};

TEST_F(CallHandlerTest, RunsAsynchronously) { EXPECT_TRUE(handler_->asynchronous()); }

TEST_F(CallHandlerTest, SendsAStableIdempotencyKeyFromTheTaskId) {
  HeaderEchoServer echo;
  TaskOutcome first = Run({{"url", echo.Url("/headers")}});
  ASSERT_EQ(first.kind(), Kind::kSucceeded) << first.error();
  EXPECT_EQ((*first.output())["body"]["idempotency-key"], "t");
  // A retry of the same task sends the same key.
  TaskOutcome retry = Run({{"url", echo.Url("/headers")}});
  EXPECT_EQ((*retry.output())["body"]["idempotency-key"], "t");
  // The task's own key wins.
  TaskOutcome own =
      Run({{"url", echo.Url("/headers")}, {"headers", {{"idempotency-key", "mine"}}}});
  EXPECT_EQ((*own.output())["body"]["idempotency-key"], "mine");
}

TEST_F(CallHandlerTest, RedirectIsNotFollowedUnlessTheTaskAsks) {
  HeaderEchoServer echo;
  TaskOutcome unfollowed = Run({{"url", echo.Url("/to-self")}});
  EXPECT_EQ(unfollowed.kind(), Kind::kPermanentFailure);
  EXPECT_THAT(unfollowed.error(), HasSubstr("answered HTTP 302"));
  TaskOutcome followed = Run({{"url", echo.Url("/to-self")}, {"follow_redirects", true}});
  ASSERT_EQ(followed.kind(), Kind::kSucceeded) << followed.error();
  EXPECT_EQ((*followed.output())["status"], 200);
  EXPECT_THAT(handler_->Supports(Request("call", {{"url", echo.Url("/x")},
                                                  {"follow_redirects", "yes"}}))
                  .message(),
              HasSubstr("input.follow_redirects"));
  EXPECT_THAT(handler_->Supports(Request("call", {{"url", echo.Url("/x")},
                                                  {"max_redirects", 99}}))
                  .message(),
              HasSubstr("input.max_redirects"));
}

TEST_F(CallHandlerTest, ErrorsNeverCarryTheUrlPath) {
  // Webhook tokens live in paths: /hooks/<token>.
  auto port = harness::FreeLoopbackPort();
  ASSERT_TRUE(port.ok());
  TaskOutcome refused =
      Run({{"url", absl::StrCat("http://127.0.0.1:", *port, "/hooks/s3cr3t-token?k=s3cr3t")}});
  EXPECT_EQ(refused.kind(), Kind::kTransientFailure);
  EXPECT_THAT(refused.error(), HasSubstr(absl::StrCat("http://127.0.0.1:", *port)));
  EXPECT_THAT(refused.error(), ::testing::Not(HasSubstr("s3cr3t")));
  EXPECT_THAT(refused.error(), ::testing::Not(HasSubstr("/hooks")));
  TaskOutcome answered = Run({{"url", server_.Url("/missing/s3cr3t-token")}});
  EXPECT_THAT(answered.error(), ::testing::Not(HasSubstr("s3cr3t")));
}

TEST(CallHandlerPolicyTest, DeniedDestinationIsPermanentAndLeavesTheCircuitClosed) {
  ManualClock clock;
  CallHandlerOptions options;
  options.clock = &clock;
  options.breakers.breaker.failure_threshold = 1;
  options.http.destinations.deny_private = true;
  auto handler = NewCallHandler(options);
  ASSERT_TRUE(handler.ok()) << handler.status();
  LocalHttpServer server;
  for (int i = 0; i < 2; ++i) {
    const TaskRequest request = Request("call", {{"url", server.Url("/ok")}});
    TaskContext context(request, 1, clock.Now(), clock.Now() + absl::Seconds(30), &clock);
    TaskOutcome outcome = (*handler)->Handle(context);
    EXPECT_EQ(outcome.kind(), Kind::kPermanentFailure);
    // Not "circuit open" the second time: a refusal says nothing about the host.
    EXPECT_THAT(outcome.error(), HasSubstr("denied by the call policy"));
    EXPECT_THAT(outcome.error(), HasSubstr("EXECUTOR_CALL_DENY_PRIVATE"));
  }
}

TEST(CallHandlerLoadTest, ThousandSlowCallsInFlightThroughHandleAsync) {
  constexpr int kTasks = 1000;
  ASSERT_GE(testing::RaiseOpenFileLimit(), static_cast<rlim_t>(2 * kTasks + 100));
  testing::SlowHttpServer server(std::chrono::milliseconds(1000));
  auto handler = NewCallHandler(CallHandlerOptions{});
  ASSERT_TRUE(handler.ok()) << handler.status();
  std::vector<TaskRequest> requests;
  requests.reserve(kTasks);
  for (int i = 0; i < kTasks; ++i) {
    requests.push_back(Request("call", {{"url", server.Url(absl::StrCat("/task/", i))}}));
    requests.back().id = absl::StrCat("task-", i);
  }
  Clock* clock = Clock::Real();
  std::vector<std::unique_ptr<TaskContext>> contexts;
  std::mutex mu;
  std::condition_variable cv;
  int completed = 0;
  int succeeded = 0;
  std::string first_error;
  const absl::Time start = absl::Now();
  for (const TaskRequest& request : requests) {
    contexts.push_back(std::make_unique<TaskContext>(request, 1, start, start + absl::Seconds(30),
                                                     clock));
    (*handler)->HandleAsync(*contexts.back(), [&](TaskOutcome outcome) {
      std::lock_guard<std::mutex> lock(mu);
      ++completed;
      if (outcome.ok()) {
        ++succeeded;
      } else if (first_error.empty()) {
        first_error = outcome.error();
      }
      cv.notify_all();
    });
  }
  ASSERT_TRUE(server.AwaitWaiting(kTasks, std::chrono::seconds(20)));
  const int threads = ThreadsInProcess();
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(60), [&] { return completed == kTasks; }));
  }
  const absl::Duration elapsed = absl::Now() - start;
  EXPECT_EQ(succeeded, kTasks) << first_error;
  EXPECT_LE(threads, 32);
  EXPECT_LT(elapsed, absl::Seconds(5));
  std::cout << kTasks << " call tasks against a 1 s server: " << absl::FormatDuration(elapsed)
            << ", " << static_cast<int>(kTasks / absl::ToDoubleSeconds(elapsed))
            << " tasks/s, " << threads << " threads in the process while in flight\n";
}

TEST(SetHandlerTest, AssignsEachFieldFromAnExpression) {
  ManualClock clock;
  auto handler = NewSetHandler();
  const TaskRequest request =
      Request("set", {{"data", {{"items", {1, 2, 3}}, {"name", "x"}}},
                      {"assign", {{"sum", ".items | add"}, {"upper", ".name | ascii_upcase"}}}});
  ASSERT_TRUE(handler->Supports(request).ok());
  TaskContext context(request, 1, clock.Now(), clock.Now() + absl::Seconds(5), &clock);
  TaskOutcome outcome = handler->Handle(context);
  ASSERT_TRUE(outcome.ok()) << outcome.error();
  EXPECT_EQ(*outcome.output(), json({{"sum", 6}, {"upper", "X"}}));
}

TEST(SetHandlerTest, ExpressionTransformsTheWholeDocument) {
  ManualClock clock;
  auto handler = NewSetHandler();
  const TaskRequest request =
      Request("set", {{"data", {{"a", 1}}}, {"expression", "{b: (.a + 1)}"}});
  TaskContext context(request, 1, clock.Now(), clock.Now() + absl::Seconds(5), &clock);
  TaskOutcome outcome = handler->Handle(context);
  ASSERT_TRUE(outcome.ok()) << outcome.error();
  EXPECT_EQ(*outcome.output(), json({{"b", 2}}));
}

TEST(SetHandlerTest, BadProgramsAreInvalidAndRuntimeErrorsPermanent) {
  ManualClock clock;
  auto handler = NewSetHandler();
  EXPECT_THAT(handler->Supports(Request("set", {{"expression", ".a | | ."}})).message(),
              HasSubstr("set: input.expression"));
  EXPECT_THAT(handler->Supports(Request("set", {{"expression", "."}, {"assign", {{"a", "."}}}}))
                  .message(),
              HasSubstr("exactly one of"));
  EXPECT_THAT(handler->Supports(Request("set", {{"assign", {{"a", 5}}}})).message(),
              HasSubstr("input.assign.a"));
  const TaskRequest failing =
      Request("set", {{"data", {{"a", "text"}}}, {"expression", ".a + 1"}});
  TaskContext context(failing, 1, clock.Now(), clock.Now() + absl::Seconds(5), &clock);
  TaskOutcome outcome = handler->Handle(context);
  EXPECT_EQ(outcome.kind(), Kind::kPermanentFailure);
  EXPECT_THAT(outcome.error(), HasSubstr("set: input.expression"));
}

TEST(SetHandlerTest, ARunawayProgramStopsAtTheDeadlineAsATransientFailure) {
  ManualClock clock;
  auto handler = NewSetHandler();
  const TaskRequest runaway = Request("set", {{"expression", "last(range(infinite))"}});
  ASSERT_TRUE(handler->Supports(runaway).ok());
  // The manual clock stands still: Remaining() stays 300 ms, which the worker pool measures in
  // real time (the worker burns real CPU).
  TaskContext context(runaway, 1, clock.Now(), clock.Now() + absl::Milliseconds(300), &clock);
  TaskOutcome outcome = handler->Handle(context);
  EXPECT_EQ(outcome.kind(), Kind::kTransientFailure);
  EXPECT_THAT(outcome.error(), HasSubstr("set: input.expression: jq program did not finish"));

  const TaskRequest normal = Request("set", {{"data", {{"a", 1}}}, {"expression", ".a + 1"}});
  TaskContext next(normal, 1, clock.Now(), clock.Now() + absl::Seconds(5), &clock);
  TaskOutcome done = handler->Handle(next);
  ASSERT_TRUE(done.ok()) << done.error();
  EXPECT_EQ(*done.output(), json(2));
}

TEST(SetHandlerTest, AProgramOverTheMemoryLimitIsAPermanentFailure) {
  if (!JqWorkerPool::MemoryLimitEnforced()) GTEST_SKIP() << "AddressSanitizer: no RLIMIT_AS";
  ManualClock clock;
  SetHandlerOptions options;
  options.jq.workers = 1;
  options.jq.memory_limit_bytes = size_t{64} << 20;
  auto handler = NewSetHandler(options);
  ASSERT_TRUE(handler.ok()) << handler.status();
  const TaskRequest huge = Request("set", {{"assign", {{"x", "{} | .a[1e9] = 1"}}}});
  TaskContext context(huge, 1, clock.Now(), clock.Now() + absl::Seconds(20), &clock);
  TaskOutcome outcome = (*handler)->Handle(context);
  EXPECT_EQ(outcome.kind(), Kind::kPermanentFailure);
  EXPECT_THAT(outcome.error(),
              HasSubstr("set: input.assign.x: jq program exceeded the memory limit of 64 MiB"));
}

TEST(SetHandlerTest, AMissingJqWorkerIsAStartUpErrorNamingIt) {
  SetHandlerOptions options;
  options.jq.worker_path = "/nonexistent/eventbus-jq-worker";
  auto handler = NewSetHandler(options);
  EXPECT_TRUE(absl::IsFailedPrecondition(handler.status())) << handler.status();
  EXPECT_THAT(handler.status().message(), HasSubstr("/nonexistent/eventbus-jq-worker"));
}

}  // namespace
}  // namespace eventbus::executor
