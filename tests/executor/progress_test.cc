// Progress reports (TaskContext::ReportProgress): what a report may be, and how the executor
// publishes and records them, on the memory backend and the memory store in virtual time
// (ManualClock): the first report at once, the rest coalesced to one per progress_interval
// (the latest wins), the last one of a run sent when the run ends, before its final state.

#include <cmath>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "eventbus/clock.h"
#include "eventbus/executor/executor.h"
#include "eventbus/executor/handler.h"
#include "eventbus/executor/task.h"
#include "eventbus/memory/memory_event_stream.h"
#include "eventbus/stream_inspector.h"
#include "eventbus/taskstore/memory_task_store.h"
#include "eventbus/taskstore/task_store.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_support.h"

namespace eventbus::executor {
namespace {

using ::nlohmann::json;
using ::testing::HasSubstr;
using taskstore::TaskRecord;
using taskstore::TaskState;

// ---- the context API --------------------------------------------------------------------

class ReportProgressTest : public ::testing::Test {
 protected:
  ReportProgressTest() : request_(*ParseTaskRequest(R"({"id":"t1","type":"x"})")) {}

  TaskContext Context() {
    return TaskContext(request_, 1, clock_.Now(), clock_.Now() + absl::Seconds(30), &clock_);
  }

  ManualClock clock_;
  TaskRequest request_;
};

TEST_F(ReportProgressTest, AcceptsAPercentageOrAnObjectAndHandsOnItsJson) {
  TaskContext context = Context();
  std::vector<std::string> sent;
  context.set_progress_sink([&](std::string text) {
    sent.push_back(std::move(text));
    return absl::OkStatus();
  });
  EXPECT_TRUE(context.ReportProgress(0).ok());
  EXPECT_TRUE(context.ReportProgress(42.5).ok());
  EXPECT_TRUE(context.ReportProgress(100).ok());
  EXPECT_TRUE(context.ReportProgress(json{{"done", 3}, {"total", 9}, {"step", "upload"}}).ok());
  EXPECT_THAT(sent, ::testing::ElementsAre("0", "42.5", "100",
                                           R"({"done":3,"step":"upload","total":9})"));
}

TEST_F(ReportProgressTest, RefusesOtherTypesOutOfRangeNumbersAndLargeValuesSayingWhy) {
  TaskContext context = Context();
  int sent = 0;
  context.set_progress_sink([&](std::string) {
    ++sent;
    return absl::OkStatus();
  });
  for (const json& bad : {json("half"), json::array({1, 2}), json(nullptr), json(true)}) {
    absl::Status s = context.ReportProgress(bad);
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << bad.dump();
    EXPECT_THAT(s.message(), HasSubstr("number from 0 to 100 or a JSON object"));
  }
  for (const json& bad : {json(-1), json(100.5), json(std::nan(""))}) {
    absl::Status s = context.ReportProgress(bad);
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << bad.dump();
    EXPECT_THAT(s.message(), HasSubstr("from 0 to 100"));
  }
  absl::Status large = context.ReportProgress(json{{"log", std::string(kMaxProgressBytes, 'x')}});
  EXPECT_TRUE(absl::IsInvalidArgument(large));
  EXPECT_THAT(large.message(), HasSubstr("at most 4096"));
  EXPECT_EQ(sent, 0);
}

TEST_F(ReportProgressTest, WithoutAnExecutorAValidReportGoesNowhere) {
  TaskContext context = Context();
  EXPECT_TRUE(context.ReportProgress(50).ok());
  EXPECT_TRUE(absl::IsInvalidArgument(context.ReportProgress("50")));
}

// ---- the executor -----------------------------------------------------------------------

// Runs `script` for each call; the test steers it through a Monitor.
class ScriptedHandler final : public TaskHandler {
 public:
  using Script = std::function<TaskOutcome(TaskContext&)>;
  ScriptedHandler(Script script, TaskPolicy policy) : script_(std::move(script)), policy_(policy) {}
  std::string type() const override { return "progressing"; }
  TaskPolicy DefaultPolicy() const override { return policy_; }
  TaskOutcome Handle(TaskContext& context) override { return script_(context); }

 private:
  const Script script_;
  const TaskPolicy policy_;
};

class ExecutorProgressTest : public ::testing::Test {
 protected:
  ExecutorProgressTest()
      : memory_(memory::NewMemoryEventStream(&clock_)),
        store_(taskstore::NewMemoryTaskStore()),
        progress_(memory_.get(), std::string(kDefaultProgressStream)),
        results_(memory_.get(), std::string(kDefaultResultStream)) {
    options_.consumer_name = "executor-1";
    options_.concurrency = 1;
    options_.fetch_block = absl::Milliseconds(5);
    options_.reclaim_enabled = false;
    options_.heartbeat_interval = absl::ZeroDuration();
    options_.progress_interval = absl::Seconds(1);
  }
  ~ExecutorProgressTest() override {
    Release(1000);
    if (executor_ != nullptr) executor_->Shutdown();
  }

  void Start(ScriptedHandler::Script script, TaskPolicy policy = {}) {
    ASSERT_TRUE(
        handlers_.Register(std::make_unique<ScriptedHandler>(std::move(script), policy)).ok());
    executor_ = std::make_unique<Executor>(
        memory_.get(), &handlers_, options_,
        ExecutorDependencies{.metrics = &metrics_, .random = &random_, .store = store_.get()});
    ASSERT_TRUE(executor_->Start().ok());
  }

  // What POST /v1/tasks does: the record (queued), then the request event.
  void Submit(const std::string& id) {
    const std::string text = json{{"id", id}, {"type", "progressing"}}.dump();
    TaskRecord record;
    record.id = id;
    record.type = "progressing";
    record.request = text;
    ASSERT_TRUE(store_->Create(record, clock_.Now()).ok());
    auto request = ParseTaskRequest(text);
    ASSERT_TRUE(request.ok());
    ASSERT_TRUE(memory_
                    ->PublishAndWait(kDefaultRequestStream,
                                     MakeTaskRequestEvent(*request, "test"))
                    .ok());
  }

  // The handler's side of a step-by-step script: signals that it reached `step`, then waits
  // until the test released it.
  void Reached(int step) {
    monitor_.Update([&] { reached_ = step; });
    monitor_.Await([&] { return released_ >= step; });
  }
  void Mark(int step) {
    monitor_.Update([&] { reached_ = step; });
  }
  bool AwaitReached(int step) {
    return monitor_.Await([&] { return reached_ >= step; });
  }
  void Release(int step) {
    monitor_.Update([&] { released_ = std::max(released_, step); });
  }

  static json Progress(const Event& event) { return json::parse(event.data())["progress"]; }

  // Every progress event ever published (the stream's length: not only those read so far).
  int64_t ProgressEventsPublished() {
    EXPECT_TRUE(memory_->Flush(absl::Seconds(5)).ok());
    auto info = memory_->inspector()->Describe(kDefaultProgressStream);
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? info->length : -1;
  }

  ManualClock clock_;
  std::unique_ptr<EventStream> memory_;
  std::unique_ptr<taskstore::TaskStore> store_;
  testing::StreamReader progress_;
  testing::StreamReader results_;
  HandlerRegistry handlers_;
  testing::FixedRandom random_{0.5};
  testing::RecordingMetrics metrics_;
  ExecutorOptions options_;
  std::unique_ptr<Executor> executor_;
  testing::Monitor monitor_;
  int reached_ = 0;   // guarded by monitor_
  int released_ = 0;  // guarded by monitor_
};

TEST_F(ExecutorProgressTest, ATightLoopIsCoalescedToOneReportPerIntervalAndTheLastOneIsKept) {
  std::vector<absl::Status> statuses;
  ASSERT_NO_FATAL_FAILURE(Start([&](TaskContext& context) {
    statuses.push_back(context.ReportProgress(0));
    Reached(1);
    // All within the interval after the first send: held back, each replacing the last.
    for (int i = 1; i <= 1000; ++i) statuses.push_back(context.ReportProgress(i / 10.0));
    Reached(2);
    statuses.push_back(context.ReportProgress(json{{"step", "b"}}));
    statuses.push_back(context.ReportProgress(json{{"step", "c"}}));
    return TaskOutcome::Succeeded(json{{"ok", true}});
  }));
  ASSERT_NO_FATAL_FAILURE(Submit("t1"));
  ASSERT_TRUE(AwaitReached(1));
  // The first report goes out at once.
  std::vector<Event> events = progress_.AwaitEvents(1);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(Progress(events[0]), 0);
  EXPECT_EQ(events[0].type(), kTaskProgressType);
  EXPECT_EQ(events[0].subject(), "t1");
  EXPECT_EQ(json::parse(events[0].data())["task_id"], "t1");
  EXPECT_EQ(json::parse(events[0].data())["attempt"], 1);

  Release(1);
  ASSERT_TRUE(AwaitReached(2));
  EXPECT_EQ(ProgressEventsPublished(), 1);  // the clock has not moved: the loop is held back
  clock_.Advance(absl::Seconds(1));
  events = progress_.AwaitEvents(2);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(Progress(events[1]), 100);  // the latest of the loop

  // The run ends within the interval: its held-back report goes out at once, before the result.
  Release(2);
  ASSERT_EQ(results_.AwaitEvents(1).size(), 1u);
  ASSERT_TRUE(metrics_.AwaitInFlight(0));
  events = progress_.AwaitEvents(3);
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(Progress(events[2]), json({{"step", "c"}}));

  auto record = store_->Get("t1");
  ASSERT_TRUE(record.ok());
  EXPECT_EQ(record->state, TaskState::kSucceeded);
  EXPECT_EQ(json::parse(record->progress), json({{"step", "c"}}));
  EXPECT_EQ(statuses.size(), 1003u);
  for (const absl::Status& s : statuses) EXPECT_TRUE(s.ok()) << s;
  executor_->Shutdown();
  // 1,003 reports cost three events.
  EXPECT_EQ(ProgressEventsPublished(), 3);
}

TEST_F(ExecutorProgressTest, AValueEqualToTheLastOneSentIsNotSentAgain) {
  ASSERT_NO_FATAL_FAILURE(Start([&](TaskContext& context) {
    EXPECT_TRUE(context.ReportProgress(50).ok());
    Reached(1);
    EXPECT_TRUE(context.ReportProgress(50).ok());
    return TaskOutcome::Succeeded(json::object());
  }));
  ASSERT_NO_FATAL_FAILURE(Submit("t1"));
  ASSERT_TRUE(AwaitReached(1));
  ASSERT_EQ(progress_.AwaitEvents(1).size(), 1u);
  clock_.Advance(absl::Seconds(5));
  Release(1);
  ASSERT_EQ(results_.AwaitEvents(1).size(), 1u);
  ASSERT_TRUE(metrics_.AwaitInFlight(0));
  executor_->Shutdown();
  EXPECT_EQ(ProgressEventsPublished(), 1);
}

TEST_F(ExecutorProgressTest, AReportAfterTheExecutorGaveUpTheRunIsRefused) {
  TaskPolicy policy;
  policy.timeout = absl::Seconds(10);
  policy.retry.max_attempts = 1;
  absl::Status late;
  ASSERT_NO_FATAL_FAILURE(Start(
      [&](TaskContext& context) {
        EXPECT_TRUE(context.ReportProgress(10).ok());
        Reached(1);
        late = context.ReportProgress(20);
        Mark(2);
        return TaskOutcome::Succeeded(json::object());
      },
      policy));
  ASSERT_NO_FATAL_FAILURE(Submit("t1"));
  ASSERT_TRUE(AwaitReached(1));
  ASSERT_EQ(progress_.AwaitEvents(1).size(), 1u);
  clock_.Advance(absl::Seconds(11));  // past the timeout: the run is given up
  ASSERT_EQ(results_.AwaitEvents(1).size(), 1u);
  Release(1);
  ASSERT_TRUE(AwaitReached(2));
  ASSERT_TRUE(metrics_.AwaitInFlight(0));
  executor_->Shutdown();
  EXPECT_TRUE(absl::IsFailedPrecondition(late)) << late;
  EXPECT_THAT(late.message(), HasSubstr("given up this run"));
  EXPECT_EQ(ProgressEventsPublished(), 1);
  auto record = store_->Get("t1");
  ASSERT_TRUE(record.ok());
  EXPECT_EQ(record->progress, "10");
}

TEST(ExecutorProgressOptionsTest, TheProgressStreamMustDifferFromTheOthers) {
  ExecutorOptions options;
  EXPECT_EQ(options.progress_stream, "io.flunq.task.progress");
  EXPECT_TRUE(ValidateExecutorOptions(options).ok());
  options.progress_stream = options.result_stream;
  EXPECT_THAT(ValidateExecutorOptions(options).message(), HasSubstr("progress stream"));
  options.progress_stream = "progress";
  options.progress_interval = absl::ZeroDuration();
  EXPECT_THAT(ValidateExecutorOptions(options).message(), HasSubstr("progress interval"));
}

}  // namespace
}  // namespace eventbus::executor
