// The executor's run loop on the memory backend in virtual time (ManualClock): every timing
// assertion is exact, and nothing sleeps to let time pass.

#include "eventbus/executor/executor.h"

#include <atomic>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "eventbus/clock.h"
#include "eventbus/executor/builtin_handlers.h"
#include "eventbus/executor/task.h"
#include "eventbus/memory/memory_event_stream.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_support.h"

namespace eventbus::executor {
namespace {

using ::nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Op = testing::SubscriptionCall::Op;

// A handler whose behaviour per call is scripted by the test; records every call.
class ScriptedHandler final : public TaskHandler {
 public:
  using Script = std::function<TaskOutcome(TaskContext&, int call)>;
  ScriptedHandler(std::string type, Script script, TaskPolicy policy = {})
      : type_(std::move(type)), script_(std::move(script)), policy_(policy) {}

  std::string type() const override { return type_; }
  TaskPolicy DefaultPolicy() const override { return policy_; }

  TaskOutcome Handle(TaskContext& context) override {
    int call = 0;
    monitor_.Update([&] {
      call = ++calls_;
      times_.push_back(context.clock()->Now());
      attempts_.push_back(context.attempt());
      delivery_counts_.push_back(context.delivery_count());
      ++running_;
      max_running_ = std::max(max_running_, running_);
    });
    TaskOutcome outcome = script_(context, call);
    monitor_.Update([&] {
      --running_;
      if (context.cancelled()) ++returned_cancelled_;
    });
    return outcome;
  }

  int calls() const { return monitor_.Read([&] { return calls_; }); }
  int running() const { return monitor_.Read([&] { return running_; }); }
  int max_running() const { return monitor_.Read([&] { return max_running_; }); }
  int returned_cancelled() const { return monitor_.Read([&] { return returned_cancelled_; }); }
  std::vector<absl::Time> times() const { return monitor_.Read([&] { return times_; }); }
  std::vector<int> attempts() const { return monitor_.Read([&] { return attempts_; }); }
  std::vector<int> delivery_counts() const {
    return monitor_.Read([&] { return delivery_counts_; });
  }
  bool AwaitRunning(int n) const { return monitor_.Await([&] { return running_ >= n; }); }
  bool AwaitIdle() const { return monitor_.Await([&] { return running_ == 0; }); }

 private:
  const std::string type_;
  const Script script_;
  const TaskPolicy policy_;
  testing::Monitor monitor_;
  int calls_ = 0;
  int running_ = 0;
  int max_running_ = 0;
  int returned_cancelled_ = 0;
  std::vector<absl::Time> times_;
  std::vector<int> attempts_;
  std::vector<int> delivery_counts_;
};

// Lets blocked handlers go, one at a time or all at once.
class Gate {
 public:
  // Blocks the calling handler until a ticket is released or the gate opened (within the
  // safety bound). Returns whether it was let through.
  bool Pass(const TaskContext&) {
    // Taking the ticket under the same lock as the check: one ticket lets exactly one through.
    return monitor_.AwaitThen([&] { return tickets_ > 0 || open_all_; },
                              [&] {
                                if (!open_all_) --tickets_;
                              });
  }
  void Release(int n = 1) { monitor_.Update([&] { tickets_ += n; }); }
  void OpenAll() { monitor_.Update([&] { open_all_ = true; }); }

 private:
  testing::Monitor monitor_;
  int tickets_ = 0;
  bool open_all_ = false;
};

json Task(absl::string_view id, absl::string_view type, json input = json::object()) {
  return json{{"id", id}, {"type", type}, {"input", std::move(input)}};
}

class ExecutorTest : public ::testing::Test {
 protected:
  ExecutorTest()
      : memory_(memory::NewMemoryEventStream(&clock_)),
        stream_(testing::NewRecordingStream(memory_.get(), &log_)),
        results_(memory_.get(), std::string(kDefaultResultStream)),
        dead_letters_(memory_.get(), absl::StrCat(kDefaultRequestStream, ".dlq")) {
    options_.consumer_name = "executor-1";
    options_.concurrency = 2;
    options_.fetch_block = absl::Milliseconds(5);  // real time: how soon a fetch loop re-checks
    options_.reclaim_enabled = false;
    options_.heartbeat_interval = absl::ZeroDuration();
    EXPECT_TRUE(RegisterBuiltinHandlers(handlers_).ok());
  }

  ~ExecutorTest() override {
    gate_.OpenAll();
    if (executor_ != nullptr) executor_->Shutdown();
  }

  ScriptedHandler* AddHandler(std::string type, ScriptedHandler::Script script,
                              TaskPolicy policy = {}) {
    auto handler = std::make_unique<ScriptedHandler>(std::move(type), std::move(script), policy);
    ScriptedHandler* raw = handler.get();
    EXPECT_TRUE(handlers_.Register(std::move(handler)).ok());
    return raw;
  }

  void Start() {
    executor_ = std::make_unique<Executor>(
        stream_.get(), &handlers_, options_,
        ExecutorDependencies{.metrics = &metrics_,
                             .random = &random_,
                             .log = [this](const TaskLogRecord& record) {
                               log_monitor_.Update(
                                   [&] { log_messages_.push_back(record.message); });
                             }});
    ASSERT_TRUE(executor_->Start().ok());
  }

  // Waits for a log line starting with `prefix`.
  bool AwaitLog(absl::string_view prefix) {
    return log_monitor_.Await([&] {
      for (const auto& message : log_messages_) {
        if (absl::StartsWith(message, prefix)) return true;
      }
      return false;
    });
  }

  void SubmitRaw(absl::string_view data) {
    Event event = MakeEvent(kTaskRequestedType, "test", data);
    ASSERT_TRUE(memory_->PublishAndWait(kDefaultRequestStream, std::move(event)).ok());
  }
  void Submit(const json& task) { SubmitRaw(task.dump()); }

  std::vector<TaskResult> AwaitResults(size_t n) {
    std::vector<TaskResult> out;
    for (const Event& event : results_.AwaitEvents(n)) {
      auto result = ParseTaskResult(event.data());
      EXPECT_TRUE(result.ok()) << result.status();
      if (result.ok()) out.push_back(*result);
    }
    return out;
  }

  ManualClock clock_;
  std::unique_ptr<EventStream> memory_;
  testing::CallLog log_;
  std::unique_ptr<EventStream> stream_;
  testing::StreamReader results_;
  testing::StreamReader dead_letters_;
  HandlerRegistry handlers_;
  testing::FixedRandom random_{0.25};
  testing::RecordingMetrics metrics_;
  ExecutorOptions options_;
  Gate gate_;
  testing::Monitor log_monitor_;
  std::vector<std::string> log_messages_;
  std::unique_ptr<Executor> executor_;
};

TEST_F(ExecutorTest, SuccessPublishesResultThenAcks) {
  Start();
  Submit(Task("t-1", "inject", {{"data", {{"greeting", "hello"}}}}));
  auto results = AwaitResults(1);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].task_id, "t-1");
  EXPECT_EQ(results[0].status, TaskStatus::kSucceeded);
  EXPECT_EQ(results[0].attempts, 1);
  ASSERT_NE(results[0].output, nullptr);
  EXPECT_EQ(*results[0].output, json({{"greeting", "hello"}}));
  ASSERT_TRUE(log_.AwaitCount(Op::kAck, 1));
  EXPECT_EQ(log_.Count(Op::kNack), 0);
  EXPECT_EQ(log_.Count(Op::kDeadLetter), 0);
  ASSERT_TRUE(metrics_.AwaitInFlight(0));
  EXPECT_EQ(metrics_.finished("inject", kOutcomeSucceeded), 1);
  EXPECT_EQ(metrics_.results("succeeded"), 1);
}

TEST_F(ExecutorTest, TransientFailuresFollowTheBackoffScheduleThenDeadLetter) {
  TaskPolicy policy;
  policy.retry = {.max_attempts = 4,
                  .initial_backoff = absl::Seconds(1),
                  .multiplier = 2.0,
                  .max_backoff = absl::Seconds(3),
                  .jitter = 0.5};
  ScriptedHandler* flaky = AddHandler(
      "flaky", [](TaskContext&, int) { return TaskOutcome::Transient("upstream said 503"); },
      policy);
  Start();
  const absl::Time t0 = clock_.Now();
  Submit(Task("t-retry", "flaky"));

  // random 0.25 with jitter 0.5 scales each base delay by 1 - 0.5 + 2 * 0.5 * 0.25 = 0.75;
  // the third base (4s) is capped at 3s before jitter.
  const std::vector<absl::Duration> expected = {absl::Milliseconds(750), absl::Milliseconds(1500),
                                                absl::Milliseconds(2250)};
  for (size_t i = 0; i < expected.size(); ++i) {
    ASSERT_TRUE(log_.AwaitCount(Op::kNack, static_cast<int>(i) + 1)) << "nack " << i + 1;
    const auto nacks = log_.Calls(Op::kNack);
    EXPECT_EQ(nacks[i].delay, expected[i]) << "after attempt " << i + 1;
    EXPECT_EQ(nacks[i].delivery_count, static_cast<int>(i) + 1);
    clock_.Advance(expected[i]);
  }
  ASSERT_TRUE(log_.AwaitCount(Op::kDeadLetter, 1));
  const auto dead = log_.Calls(Op::kDeadLetter);
  EXPECT_EQ(dead[0].delivery_count, 4);
  EXPECT_THAT(dead[0].reason, HasSubstr("gave up after 4 attempts"));
  EXPECT_THAT(dead[0].reason, HasSubstr("upstream said 503"));
  EXPECT_EQ(flaky->calls(), 4);
  EXPECT_THAT(flaky->attempts(), ElementsAre(1, 2, 3, 4));
  EXPECT_THAT(flaky->times(),
              ElementsAre(t0, t0 + absl::Milliseconds(750), t0 + absl::Milliseconds(2250),
                          t0 + absl::Milliseconds(4500)));

  auto results = AwaitResults(1);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].status, TaskStatus::kFailed);
  EXPECT_EQ(results[0].attempts, 4);
  EXPECT_EQ(results[0].error_kind, "transient");
  auto dlq = dead_letters_.AwaitEvents(1);
  ASSERT_EQ(dlq.size(), 1u);
  EXPECT_THAT(dlq[0].headers().at(std::string(kDlqReasonHeader)), HasSubstr("gave up"));
  ASSERT_TRUE(metrics_.AwaitInFlight(0));
  EXPECT_EQ(metrics_.retried("flaky"), 3);
  EXPECT_EQ(metrics_.finished("flaky", kOutcomeRetried), 3);
  EXPECT_EQ(metrics_.finished("flaky", kOutcomeFailed), 1);
  EXPECT_EQ(metrics_.dead_lettered("flaky"), 1);
}

// A handler that polls (RedeliverAfter) before it fails still gets its retries: delayed
// redeliveries are deliveries, not failed attempts.
TEST_F(ExecutorTest, PollingRedeliveriesDoNotUseUpRetryAttempts) {
  TaskPolicy policy;
  policy.retry.max_attempts = 2;
  policy.retry.initial_backoff = absl::Seconds(1);
  policy.retry.jitter = 0;
  ScriptedHandler* poller = AddHandler(
      "poller",
      [](TaskContext&, int call) {
        if (call <= 2) return TaskOutcome::RedeliverAfter(absl::Minutes(1));
        return TaskOutcome::Transient(absl::StrCat("failure ", call));
      },
      policy);
  Start();
  Submit(Task("t-poll", "poller"));
  // Two polls, each a redelivery a minute later; then a failure and its retry a second later.
  const absl::Duration waits[] = {absl::Minutes(1), absl::Minutes(1), absl::Seconds(1)};
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(log_.AwaitCount(Op::kNack, i + 1)) << "nack " << i + 1;
    clock_.Advance(waits[i]);
  }
  ASSERT_TRUE(log_.AwaitCount(Op::kDeadLetter, 1));
  EXPECT_EQ(poller->calls(), 4);
  EXPECT_THAT(poller->attempts(), ElementsAre(1, 1, 1, 2));
  EXPECT_THAT(poller->delivery_counts(), ElementsAre(1, 2, 3, 4));
  const auto nacks = log_.Calls(Op::kNack);
  ASSERT_EQ(nacks.size(), 3u);
  EXPECT_FALSE(nacks[0].failed) << "a poll is a give-back";
  EXPECT_FALSE(nacks[1].failed);
  EXPECT_TRUE(nacks[2].failed) << "a failure counts";
  const auto dead = log_.Calls(Op::kDeadLetter);
  EXPECT_THAT(dead[0].reason, HasSubstr("gave up after 2 attempts: failure 4"));
  auto results = AwaitResults(1);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].attempts, 2);
  EXPECT_EQ(results[0].deliveries, 4);
}

TEST_F(ExecutorTest, PerTaskRetryOverrideLimitsAttempts) {
  ScriptedHandler* flaky =
      AddHandler("flaky", [](TaskContext&, int) { return TaskOutcome::Transient("busy"); });
  Start();
  json task = Task("t-override", "flaky");
  task["retry"] = {{"max_attempts", 2}, {"initial_backoff", "PT10S"}, {"jitter", 0}};
  Submit(task);
  ASSERT_TRUE(log_.AwaitCount(Op::kNack, 1));
  EXPECT_EQ(log_.Calls(Op::kNack)[0].delay, absl::Seconds(10));
  clock_.Advance(absl::Seconds(10));
  ASSERT_TRUE(log_.AwaitCount(Op::kDeadLetter, 1));
  EXPECT_EQ(flaky->calls(), 2);
  EXPECT_THAT(log_.Calls(Op::kDeadLetter)[0].reason, HasSubstr("gave up after 2 attempts"));
}

TEST_F(ExecutorTest, PermanentFailureGoesStraightToTheDeadLetterStream) {
  ScriptedHandler* broken = AddHandler(
      "broken", [](TaskContext&, int) { return TaskOutcome::Permanent("HTTP 404 Not Found"); });
  Start();
  Submit(Task("t-perm", "broken"));
  ASSERT_TRUE(log_.AwaitCount(Op::kDeadLetter, 1));
  EXPECT_THAT(log_.Calls(Op::kDeadLetter)[0].reason,
              HasSubstr("permanent failure: HTTP 404 Not Found"));
  EXPECT_EQ(log_.Count(Op::kNack), 0);
  EXPECT_EQ(broken->calls(), 1);
  auto results = AwaitResults(1);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].status, TaskStatus::kFailed);
  EXPECT_EQ(results[0].error_kind, "permanent");
  EXPECT_EQ(results[0].error, "HTTP 404 Not Found");
  auto dlq = dead_letters_.AwaitEvents(1);
  ASSERT_EQ(dlq.size(), 1u);
  EXPECT_EQ(dlq[0].headers().at(std::string(kDlqDeliveryCountHeader)), "1");
}

TEST_F(ExecutorTest, HandlerStillRunningAtItsTimeoutIsATransientFailure) {
  ScriptedHandler* slow = AddHandler("slow", [this](TaskContext& context, int call) {
    if (call == 1) gate_.Pass(context);
    return TaskOutcome::Succeeded({{"call", call}});
  });
  Start();
  json task = Task("t-slow", "slow");
  task["timeout"] = "PT5S";
  task["retry"] = {{"max_attempts", 2}, {"initial_backoff", "PT1S"}, {"jitter", 0}};
  Submit(task);
  ASSERT_TRUE(slow->AwaitRunning(1));
  clock_.Advance(absl::Seconds(5) - absl::Milliseconds(1));
  clock_.Advance(absl::Milliseconds(1));
  // The executor gives up on the first run at exactly 5s and schedules the retry; the handler
  // is still blocked (its late outcome is discarded).
  ASSERT_TRUE(log_.AwaitCount(Op::kNack, 1));
  EXPECT_EQ(log_.Calls(Op::kNack)[0].delay, absl::Seconds(1));
  EXPECT_EQ(slow->running(), 1);
  gate_.Release();
  clock_.Advance(absl::Seconds(1));
  auto results = AwaitResults(1);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].status, TaskStatus::kSucceeded);
  EXPECT_EQ(results[0].attempts, 2);
  EXPECT_EQ(*results[0].output, json({{"call", 2}}));
  ASSERT_TRUE(slow->AwaitIdle());
  EXPECT_EQ(slow->returned_cancelled(), 1);
  ASSERT_TRUE(metrics_.AwaitInFlight(0));
  EXPECT_EQ(metrics_.results("succeeded"), 1);
  EXPECT_EQ(metrics_.results("failed"), 0);
}

TEST_F(ExecutorTest, TimeoutOnTheLastAttemptDeadLettersWithTimeoutReason) {
  ScriptedHandler* slow = AddHandler("slow", [this](TaskContext& context, int) {
    gate_.Pass(context);
    return TaskOutcome::Succeeded(nullptr);
  });
  Start();
  json task = Task("t-timeout", "slow");
  task["timeout"] = "PT2S";
  task["retry"] = {{"max_attempts", 1}};
  Submit(task);
  ASSERT_TRUE(slow->AwaitRunning(1));
  clock_.Advance(absl::Seconds(2));
  ASSERT_TRUE(log_.AwaitCount(Op::kDeadLetter, 1));
  EXPECT_THAT(log_.Calls(Op::kDeadLetter)[0].reason,
              HasSubstr("timeout failure, gave up after 1 attempt: processing timeout"));
  auto results = AwaitResults(1);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].error_kind, "timeout");
  gate_.OpenAll();
}

TEST_F(ExecutorTest, WaitTaskAsksForDelayedRedeliveryInsteadOfSleeping) {
  options_.concurrency = 1;
  Start();
  Submit(Task("t-wait", "wait", {{"duration", "PT2S"}}));
  ASSERT_TRUE(log_.AwaitCount(Op::kNack, 1));
  EXPECT_EQ(log_.Calls(Op::kNack)[0].delay, absl::Seconds(2));
  // The only worker is free while the wait is pending: another task completes meanwhile
  // without the clock moving.
  Submit(Task("t-inject", "inject", {{"data", {{"x", 1}}}}));
  auto first = AwaitResults(1);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].task_id, "t-inject");
  clock_.Advance(absl::Seconds(2));
  auto results = AwaitResults(2);
  ASSERT_EQ(results.size(), 2u);
  EXPECT_EQ(results[1].task_id, "t-wait");
  EXPECT_EQ(results[1].status, TaskStatus::kSucceeded);
  EXPECT_EQ((*results[1].output)["duration"], "PT2S");
  ASSERT_TRUE(metrics_.AwaitInFlight(0));
  EXPECT_EQ(metrics_.finished("wait", kOutcomeDelayed), 1);
  EXPECT_EQ(metrics_.finished("wait", kOutcomeSucceeded), 1);
}

TEST_F(ExecutorTest, WaitIsMeasuredFromTheRequestTimeNotTheDelivery) {
  Submit(Task("t-wait", "wait", {{"duration", "P1DT2H"}}));
  clock_.Advance(absl::Hours(1));  // the request sat in the stream for an hour
  Start();
  ASSERT_TRUE(log_.AwaitCount(Op::kNack, 1));
  EXPECT_EQ(log_.Calls(Op::kNack)[0].delay, absl::Hours(25));
  clock_.Advance(absl::Hours(25));
  auto results = AwaitResults(1);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].status, TaskStatus::kSucceeded);
  EXPECT_EQ(results[0].attempts, 1) << "waiting is no failed attempt";
  EXPECT_EQ(results[0].deliveries, 2);
}

TEST_F(ExecutorTest, ConcurrencyIsNeverExceeded) {
  options_.concurrency = 3;
  options_.workers = 3;  // the handlers block: one thread each
  options_.max_in_flight = 3;
  options_.fetch_batch = 10;
  ScriptedHandler* blocking = AddHandler("block", [this](TaskContext& context, int) {
    gate_.Pass(context);
    return TaskOutcome::Succeeded(nullptr);
  });
  for (int i = 0; i < 12; ++i) Submit(Task(absl::StrCat("t-", i), "block"));
  Start();
  ASSERT_TRUE(blocking->AwaitRunning(3));
  EXPECT_EQ(executor_->in_flight(), 3);
  // Let them through one at a time: each freed slot fetches exactly one more.
  for (int i = 0; i < 12; ++i) gate_.Release();
  auto results = AwaitResults(12);
  EXPECT_EQ(results.size(), 12u);
  std::set<std::string> ids;
  for (const auto& r : results) ids.insert(r.task_id);
  EXPECT_EQ(ids.size(), 12u);
  EXPECT_EQ(blocking->max_running(), 3);
  EXPECT_LE(log_.max_outstanding(), 3);
  EXPECT_LE(metrics_.max_in_flight(), 3);
  for (const auto& fetch : log_.Calls(Op::kFetch)) EXPECT_LE(fetch.max_events, 3);
}

TEST_F(ExecutorTest, GracefulShutdownFinishesOrGivesBackEverything) {
  options_.concurrency = 2;
  options_.max_in_flight = 2;  // nothing waits unstarted: shutdown gives back only what runs
  options_.shutdown_deadline = absl::Seconds(30);
  // A processing timeout far beyond the shutdown deadline: only shutdown may give it back.
  ScriptedHandler* blocking = AddHandler(
      "block",
      [this](TaskContext& context, int) {
        gate_.Pass(context);
        return TaskOutcome::Succeeded(nullptr);
      },
      TaskPolicy{.timeout = absl::Hours(24)});
  for (int i = 0; i < 5; ++i) Submit(Task(absl::StrCat("t-", i), "block"));
  Start();
  ASSERT_TRUE(blocking->AwaitRunning(2));

  std::atomic<bool> shut_down{false};
  std::thread stopper([&] {
    executor_->Shutdown();
    shut_down = true;
  });
  // Even when an assertion below fails: let the handlers and the deadline go, and join.
  absl::Cleanup join_stopper = [&] {
    gate_.OpenAll();
    clock_.Advance(absl::Hours(1));
    if (stopper.joinable()) stopper.join();
  };
  ASSERT_TRUE(AwaitLog("shutting down: fetching stopped"));
  // One running task finishes within the deadline: it completes normally.
  gate_.Release(1);
  ASSERT_TRUE(log_.AwaitCount(Op::kAck, 1));
  // The other is still running when the deadline passes: it is given back (Nack 0). Shutdown
  // starts its deadline on its own thread, so keep moving time until it has.
  const absl::Time bound = absl::Now() + testing::kSafetyTimeout;
  while (!log_.AwaitCount(Op::kNack, 1, absl::Milliseconds(20)) && absl::Now() < bound) {
    clock_.Advance(absl::Seconds(31));
  }
  ASSERT_EQ(log_.Count(Op::kNack), 1);
  EXPECT_EQ(log_.Calls(Op::kNack)[0].delay, absl::ZeroDuration());
  gate_.OpenAll();  // the abandoned handler returns; its outcome is discarded
  std::move(join_stopper).Invoke();
  EXPECT_TRUE(shut_down);
  EXPECT_EQ(metrics_.finished("block", kOutcomeAbandoned), 1);
  EXPECT_EQ(log_.outstanding(), 0) << [&] {
    std::string calls;
    for (const auto& c : log_.Calls()) {
      absl::StrAppend(&calls, static_cast<int>(c.op), ":", c.delivery_id, "/", c.max_events, " ");
    }
    return calls;
  }();

  // A second worker of the same group takes over what was given back and never started.
  options_.consumer_name = "executor-2";
  Start();
  auto results = AwaitResults(5);
  std::set<std::string> ids;
  for (const auto& r : results) {
    ids.insert(r.task_id);
    EXPECT_EQ(r.status, TaskStatus::kSucceeded);
  }
  EXPECT_EQ(results.size(), 5u);
  EXPECT_EQ(ids.size(), 5u);
}

TEST_F(ExecutorTest, MalformedRequestsAreDeadLetteredWithAReasonAndTheExecutorKeepsGoing) {
  options_.concurrency = 1;  // keeps the dead letters in submission order
  Start();
  SubmitRaw("this is not json");
  SubmitRaw(R"({"type": "inject", "input": {"data": {}}})");
  SubmitRaw(R"({"id": "t-typeless"})");
  Submit(Task("t-unknown", "teleport"));
  Submit(Task("t-bad-wait", "wait", {{"duration", "two seconds"}}));
  Submit(Task("t-bad-inject", "inject", {{"data", 5}}));
  json bad_retry = Task("t-bad-retry", "inject", {{"data", json::object()}});
  bad_retry["retry"] = {{"max_attempts", 0}};
  Submit(bad_retry);
  Submit(Task("t-good", "inject", {{"data", {{"ok", true}}}}));

  auto dlq = dead_letters_.AwaitEvents(7);
  ASSERT_EQ(dlq.size(), 7u);
  std::vector<std::string> reasons;
  for (const Event& e : dlq) reasons.push_back(e.headers().at(std::string(kDlqReasonHeader)));
  EXPECT_THAT(reasons[0], HasSubstr("not valid JSON"));
  EXPECT_THAT(reasons[1], HasSubstr("missing required field \"id\""));
  EXPECT_THAT(reasons[2], HasSubstr("missing required field \"type\""));
  EXPECT_THAT(reasons[3], HasSubstr("unknown task type \"teleport\"; registered types: "));
  EXPECT_THAT(reasons[4], HasSubstr("wait: input.duration"));
  EXPECT_THAT(reasons[5], HasSubstr("inject: input.data"));
  EXPECT_THAT(reasons[6], HasSubstr("\"retry.max_attempts\""));
  for (const auto& reason : reasons) EXPECT_THAT(reason, HasSubstr("invalid task request"));

  // Requests with a usable id also get a failed result, so a waiting caller learns why.
  auto results = AwaitResults(6);
  ASSERT_EQ(results.size(), 6u);
  const std::vector<std::string> expected_ids = {"t-typeless",   "t-unknown",   "t-bad-wait",
                                                 "t-bad-inject", "t-bad-retry", "t-good"};
  for (size_t i = 0; i < expected_ids.size(); ++i) {
    EXPECT_EQ(results[i].task_id, expected_ids[i]);
    if (i + 1 < expected_ids.size()) {
      EXPECT_EQ(results[i].status, TaskStatus::kFailed);
      EXPECT_EQ(results[i].error_kind, "invalid");
    }
  }
  EXPECT_EQ(results[5].status, TaskStatus::kSucceeded);
  ASSERT_TRUE(metrics_.AwaitInFlight(0));
  EXPECT_EQ(metrics_.finished(kUnknownTypeLabel, kOutcomeInvalid), 4);
  EXPECT_EQ(metrics_.finished("wait", kOutcomeInvalid), 1);
  EXPECT_EQ(metrics_.finished("inject", kOutcomeInvalid), 2);
}

TEST_F(ExecutorTest, ADeliveryBeyondTheLimitIsDeadLetteredWithoutRunning) {
  options_.max_deliveries = 2;
  Submit(Task("t-crashy", "inject", {{"data", json::object()}}));
  // Two workers took it and died (nothing settled it); each reclaim counts a delivery.
  SubscribeOptions dead_options{.stream = std::string(kDefaultRequestStream),
                                .group = options_.consumer_group,
                                .consumer = "dead-worker"};
  auto dead = memory_->Subscribe(dead_options);
  ASSERT_TRUE(dead.ok());
  ASSERT_EQ((*dead)->Fetch(1, absl::Seconds(5))->size(), 1u);
  clock_.Advance(absl::Minutes(10));
  ASSERT_EQ((*dead)->Reclaim(absl::Minutes(5), 1)->size(), 1u);
  clock_.Advance(absl::Minutes(10));
  options_.reclaim_enabled = true;
  options_.reclaim_min_idle = absl::Minutes(5);
  Start();
  ASSERT_TRUE(log_.AwaitCount(Op::kDeadLetter, 1));
  const auto dead_letters = log_.Calls(Op::kDeadLetter);
  EXPECT_EQ(dead_letters[0].delivery_count, 3);
  EXPECT_THAT(dead_letters[0].reason, HasSubstr("delivered 3 times without finishing"));
  auto results = AwaitResults(1);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].status, TaskStatus::kFailed);
}

TEST_F(ExecutorTest, AResultTooLargeToPublishIsAFailureDeadLetteredOnceNotARerun) {
  stream_ = testing::NewRecordingStream(memory_.get(), &log_, /*max_event_bytes=*/4096);
  ScriptedHandler* big = AddHandler("big", [](TaskContext&, int) {
    return TaskOutcome::Succeeded(json{{"blob", std::string(20'000, 'x')}});
  });
  Start();
  Submit(Task("t-big", "big"));
  auto results = AwaitResults(1);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].status, TaskStatus::kFailed);
  EXPECT_EQ(results[0].error_kind, "result_too_large");
  EXPECT_THAT(results[0].error, HasSubstr("bytes was refused by the backend"));
  EXPECT_EQ(results[0].output, nullptr);
  ASSERT_TRUE(log_.AwaitCount(Op::kDeadLetter, 1));
  EXPECT_THAT(log_.Calls(Op::kDeadLetter)[0].reason, HasSubstr("result not published"));
  EXPECT_EQ(log_.Count(Op::kNack), 0) << "the request was given back to run again";
  EXPECT_EQ(big->calls(), 1);
}

TEST_F(ExecutorTest, HandlerExceptionIsAPermanentFailureNotACrash) {
  AddHandler("throws", [](TaskContext&, int) -> TaskOutcome {
    throw std::runtime_error("bug in handler");
  });
  Start();
  Submit(Task("t-throw", "throws"));
  Submit(Task("t-after", "inject", {{"data", json::object()}}));
  ASSERT_TRUE(log_.AwaitCount(Op::kDeadLetter, 1));
  EXPECT_THAT(log_.Calls(Op::kDeadLetter)[0].reason, HasSubstr("handler threw: bug in handler"));
  auto results = AwaitResults(2);
  EXPECT_EQ(results.size(), 2u);
}

TEST_F(ExecutorTest, ReclaimTakesOverDeliveriesOfADeadConsumer) {
  options_.reclaim_enabled = true;
  options_.reclaim_min_idle = absl::Minutes(1);
  options_.reclaim_interval = absl::Seconds(10);
  Submit(Task("t-orphan", "inject", {{"data", {{"v", 1}}}}));
  // Another worker of the group takes the task and dies without settling it.
  SubscribeOptions dead_options{.stream = std::string(kDefaultRequestStream),
                                .group = options_.consumer_group,
                                .consumer = "dead-worker"};
  auto dead = memory_->Subscribe(dead_options);
  ASSERT_TRUE(dead.ok());
  auto taken = (*dead)->Fetch(1, absl::Seconds(5));
  ASSERT_TRUE(taken.ok());
  ASSERT_EQ(taken->size(), 1u);

  Start();
  clock_.Advance(absl::Seconds(59));
  clock_.Advance(absl::Seconds(11));  // idle 70s, and a reclaim round is due
  auto results = AwaitResults(1);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].task_id, "t-orphan");
  EXPECT_EQ(results[0].attempts, 1) << "nothing saw the dead consumer's run fail";
  EXPECT_EQ(results[0].deliveries, 2);
  EXPECT_GE(log_.Count(Op::kReclaim), 1);
}

TEST_F(ExecutorTest, ASaturatedSurvivorTakesOverEveryOrphanWithinMinIdlePlusInterval) {
  options_.reclaim_enabled = true;
  options_.reclaim_min_idle = absl::Minutes(1);
  options_.reclaim_interval = absl::Seconds(10);
  options_.concurrency = 2;
  options_.workers = 2;  // the handlers block: one thread each
  options_.fetch_batch = 2;
  options_.max_in_flight = 16;
  std::vector<std::string> started;
  testing::Monitor started_monitor;
  AddHandler("block", [&](TaskContext& context, int) {
    started_monitor.Update([&] { started.push_back(context.request().id); });
    gate_.Pass(context);
    return TaskOutcome::Succeeded(nullptr);
  });
  constexpr int kOrphans = 5;
  for (int i = 0; i < kOrphans; ++i) Submit(Task(absl::StrCat("orphan-", i), "block"));
  // A worker of the group takes them all and dies without settling any.
  auto dead = memory_->Subscribe({.stream = std::string(kDefaultRequestStream),
                                  .group = options_.consumer_group,
                                  .consumer = "dead-worker"});
  ASSERT_TRUE(dead.ok());
  auto taken = (*dead)->Fetch(kOrphans, absl::Seconds(5));
  ASSERT_TRUE(taken.ok());
  ASSERT_EQ(taken->size(), static_cast<size_t>(kOrphans));
  // The survivor starts at 59 s (its first reclaim finds the orphans not idle long enough)
  // and saturates itself with fresh work.
  clock_.Advance(absl::Seconds(59));
  for (int i = 0; i < 10; ++i) Submit(Task(absl::StrCat("fresh-", i), "block"));
  Start();
  // Saturated: both run slots busy and the prefetch queue full (concurrency + fetch_batch).
  ASSERT_TRUE(metrics_.AwaitInFlight(4));
  ASSERT_TRUE(started_monitor.Await([&] { return started.size() == 2u; }));
  // Orphans idle 70 s = min idle + interval, the survivor's own work 11 s: a reclaim is due.
  clock_.Advance(absl::Seconds(11));
  // Every orphan is taken over although no run slot freed.
  EXPECT_TRUE(metrics_.AwaitInFlight(4 + kOrphans)) << "in flight " << executor_->in_flight();
  // And they run before the fresh requests that were queued ahead of them.
  gate_.Release(kOrphans);
  ASSERT_TRUE(started_monitor.Await([&] { return started.size() == 2u + kOrphans; }));
  std::vector<std::string> next;
  started_monitor.Update([&] { next.assign(started.begin() + 2, started.end()); });
  for (const std::string& id : next) {
    EXPECT_TRUE(absl::StartsWith(id, "orphan-"))
        << id << " (start order " << absl::StrJoin(next, ",") << ")";
  }
  gate_.OpenAll();
  auto results = AwaitResults(10 + kOrphans);
  EXPECT_EQ(results.size(), 10u + kOrphans);
}

// A due reclaim that finds nothing while every run slot is busy waits for the next interval:
// it must not retry at once (that spun on the broker for as long as the survivor stayed busy).
TEST_F(ExecutorTest, ASaturatedConsumerWithNoOrphansReclaimsOncePerInterval) {
  options_.reclaim_enabled = true;
  options_.reclaim_min_idle = absl::Minutes(1);
  options_.reclaim_interval = absl::Seconds(10);
  options_.concurrency = 2;
  options_.workers = 2;
  options_.fetch_batch = 2;
  options_.max_in_flight = 16;
  AddHandler("block", [&](TaskContext& context, int) {
    gate_.Pass(context);
    return TaskOutcome::Succeeded(nullptr);
  });
  for (int i = 0; i < 6; ++i) Submit(Task(absl::StrCat("busy-", i), "block"));
  Start();
  ASSERT_TRUE(metrics_.AwaitInFlight(4));
  ASSERT_TRUE(log_.AwaitReclaimAttempts(1));  // the look at start-up
  clock_.Advance(absl::Seconds(11));
  ASSERT_TRUE(log_.AwaitReclaimAttempts(2));  // the one due now, finding nothing
  // No virtual time passes, so no further reclaim is due: any call now is a spin.
  const absl::Time watch_until = absl::Now() + absl::Milliseconds(200);
  while (absl::Now() < watch_until && log_.reclaim_attempts() == 2) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(log_.reclaim_attempts(), 2);
  clock_.Advance(absl::Seconds(10));
  EXPECT_TRUE(log_.AwaitReclaimAttempts(3));
  gate_.OpenAll();
  EXPECT_EQ(AwaitResults(6).size(), 6u);
}

TEST_F(ExecutorTest, LongHandlersAreExtendedOnEveryHeartbeat) {
  options_.heartbeat_interval = absl::Seconds(10);
  ScriptedHandler* slow = AddHandler(
      "slow",
      [this](TaskContext& context, int) {
        gate_.Pass(context);
        return TaskOutcome::Succeeded(nullptr);
      },
      TaskPolicy{.timeout = absl::Minutes(5)});
  Start();
  Submit(Task("t-long", "slow"));
  ASSERT_TRUE(slow->AwaitRunning(1));
  for (int i = 1; i <= 3; ++i) {
    clock_.Advance(absl::Seconds(10));
    ASSERT_TRUE(log_.AwaitCount(Op::kExtend, i)) << "heartbeat " << i;
  }
  gate_.Release();
  ASSERT_TRUE(log_.AwaitCount(Op::kAck, 1));
  EXPECT_EQ(log_.Count(Op::kExtend), 3);
}

// Waits (polling: the condition is another thread's state, no time has to pass) until `done`
// holds; false after the safety bound.
bool Eventually(const std::function<bool()>& done) {
  const absl::Time deadline = absl::Now() + testing::kSafetyTimeout;
  while (!done()) {
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return true;
}

TEST_F(ExecutorTest, ProgressCheckFailsWhileEveryWorkerIsStuckInAnOverrunHandler) {
  options_.workers = 1;
  ScriptedHandler* hung = AddHandler(
      "hung",
      [this](TaskContext& context, int) {
        gate_.Pass(context);  // ignores cancellation, as a wedged library call would
        return TaskOutcome::Succeeded(nullptr);
      },
      TaskPolicy{.timeout = absl::Seconds(1)});
  Start();
  EXPECT_TRUE(executor_->CheckProgress().ok()) << executor_->CheckProgress();
  Submit(Task("t-hung", "hung"));
  ASSERT_TRUE(hung->AwaitRunning(1));
  EXPECT_TRUE(executor_->CheckProgress().ok()) << "running within its timeout is progress";

  clock_.Advance(absl::Seconds(1));  // the timeout: the executor gives up, the thread stays
  ASSERT_TRUE(log_.AwaitCount(Op::kNack, 1));  // the timeout's retry
  const ExecutorProgress progress = executor_->progress();
  EXPECT_EQ(progress.stuck_workers, 1);
  EXPECT_EQ(progress.workers, 1);
  const absl::Status stuck = executor_->CheckProgress();
  EXPECT_TRUE(absl::IsUnavailable(stuck)) << stuck;
  EXPECT_THAT(stuck.message(), HasSubstr("all 1 worker threads are held by handlers"));

  gate_.Release();  // the handler returns at last: its worker is free again
  EXPECT_TRUE(Eventually([this] { return executor_->CheckProgress().ok(); }))
      << executor_->CheckProgress();
  EXPECT_EQ(executor_->progress().stuck_workers, 0);
}

TEST_F(ExecutorTest, ProgressCheckFailsOnceNoFetchCompletedForTheStallTimeout) {
  options_.fetch_stall_timeout = absl::Seconds(30);
  options_.fetch_error_backoff = absl::Seconds(1);
  Start();
  EXPECT_TRUE(executor_->CheckProgress().ok()) << executor_->CheckProgress();
  log_.FailFetches(absl::UnavailableError("connection refused"));
  ASSERT_TRUE(log_.AwaitFailedFetches(1));

  // The fetcher backs off 1 s after a failure. Step a second at a time until it fetched
  // again: a step may come before the fetcher computed its backoff deadline (a loaded machine).
  int stepped = 0;
  while (stepped < 10 && !log_.AwaitFailedFetches(2, absl::Milliseconds(100))) {
    clock_.Advance(absl::Seconds(1));
    ++stepped;
  }
  ASSERT_TRUE(log_.AwaitFailedFetches(2));  // still failing after the backoff
  clock_.Advance(absl::Seconds(29 - stepped));
  EXPECT_TRUE(executor_->CheckProgress().ok()) << "29 s is within the stall timeout";
  EXPECT_EQ(executor_->progress().fetch_stalled_for, absl::Seconds(29));

  clock_.Advance(absl::Seconds(1));
  const absl::Status stalled = executor_->CheckProgress();
  EXPECT_TRUE(absl::IsUnavailable(stalled)) << stalled;
  EXPECT_THAT(stalled.message(), HasSubstr("no fetch from io.flunq.task.requested completed for PT30S"));
  EXPECT_THAT(stalled.message(), HasSubstr("connection refused"));

  log_.FailFetches(absl::OkStatus());  // the backend is back
  // Step past the fetcher's backoff (wherever it started) until a fetch completes.
  EXPECT_TRUE(Eventually([this] {
    clock_.Advance(absl::Seconds(1));
    return executor_->CheckProgress().ok();
  })) << executor_->CheckProgress();
  // Fetches complete again: the stall and its error are gone (a fetch in flight may count
  // the virtual second this test just stepped).
  EXPECT_LE(executor_->progress().fetch_stalled_for, absl::Seconds(1));
  EXPECT_EQ(executor_->progress().fetch_error, "");
}

TEST_F(ExecutorTest, WaitingForFreeSlotsIsNoStall) {
  options_.concurrency = 1;
  options_.fetch_batch = 1;  // at most concurrency + batch = 2 unfinished: then no fetching
  options_.fetch_stall_timeout = absl::Seconds(30);
  ScriptedHandler* slow = AddHandler(
      "slow",
      [this](TaskContext& context, int) {
        gate_.Pass(context);
        return TaskOutcome::Succeeded(nullptr);
      },
      TaskPolicy{.timeout = absl::Hours(1)});
  Start();
  Submit(Task("t-1", "slow"));
  Submit(Task("t-2", "slow"));
  ASSERT_TRUE(slow->AwaitRunning(1));
  ASSERT_TRUE(Eventually([this] { return executor_->in_flight() == 2; }));
  clock_.Advance(absl::Minutes(5));
  EXPECT_TRUE(executor_->CheckProgress().ok()) << executor_->CheckProgress();
  EXPECT_EQ(executor_->progress().fetch_stalled_for, absl::ZeroDuration());
  gate_.OpenAll();
}

}  // namespace
}  // namespace eventbus::executor
