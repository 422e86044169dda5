// The executor with a task store, on the memory backend and the memory store in virtual time
// (ManualClock): the states it records, effectively-once settling of succeeded tasks, never
// running cancelled ones, cancelling running ones through their context, and one store read
// and write per fetched batch rather than per task.

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "eventbus/clock.h"
#include "eventbus/executor/executor.h"
#include "eventbus/executor/task.h"
#include "eventbus/memory/fault_injection.h"
#include "eventbus/memory/memory_event_stream.h"
#include "eventbus/stream_inspector.h"
#include "eventbus/taskstore/memory_task_store.h"
#include "eventbus/taskstore/task_store.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "forwarding_task_store.h"
#include "test_support.h"

namespace eventbus::executor {
namespace {

using ::nlohmann::json;
using ::testing::HasSubstr;
using Op = testing::SubscriptionCall::Op;
using taskstore::TaskRecord;
using taskstore::TaskState;

// Forwards to a real store and counts the calls, so tests can see how many round trips the
// executor made and of which kind.
class CountingStore final : public testing::ForwardingTaskStore {
 public:
  explicit CountingStore(std::unique_ptr<taskstore::TaskStore> inner)
      : ForwardingTaskStore(inner.get()), owned_(std::move(inner)) {}

  struct Counts {
    int get = 0, get_many = 0, get_many_ids = 0, update = 0, update_many = 0,
        update_many_updates = 0;
  };
  Counts counts() const {
    std::lock_guard<std::mutex> lock(mu_);
    return counts_;
  }

  absl::StatusOr<TaskRecord> Get(absl::string_view id) override {
    Count([](Counts& c) { ++c.get; });
    return ForwardingTaskStore::Get(id);
  }
  absl::StatusOr<std::vector<TaskRecord>> GetMany(absl::Span<const std::string> ids) override {
    Count([&](Counts& c) {
      ++c.get_many;
      c.get_many_ids += static_cast<int>(ids.size());
    });
    return ForwardingTaskStore::GetMany(ids);
  }
  absl::StatusOr<TaskRecord> Update(absl::string_view id,
                                    const taskstore::TaskUpdate& update) override {
    Count([](Counts& c) { ++c.update; });
    return ForwardingTaskStore::Update(id, update);
  }
  std::vector<absl::StatusOr<TaskRecord>> UpdateMany(
      absl::Span<const taskstore::TaskUpdateRequest> updates) override {
    Count([&](Counts& c) {
      ++c.update_many;
      c.update_many_updates += static_cast<int>(updates.size());
    });
    return ForwardingTaskStore::UpdateMany(updates);
  }

 private:
  template <typename F>
  void Count(F f) {
    std::lock_guard<std::mutex> lock(mu_);
    f(counts_);
  }
  std::unique_ptr<taskstore::TaskStore> owned_;
  mutable std::mutex mu_;
  Counts counts_;
};

// A handler whose outcome per call is scripted; counts its calls.
class CountingHandler final : public TaskHandler {
 public:
  using Script = std::function<TaskOutcome(TaskContext&, int call)>;
  CountingHandler(std::string type, Script script, TaskPolicy policy = {})
      : type_(std::move(type)), script_(std::move(script)), policy_(policy) {}
  std::string type() const override { return type_; }
  TaskPolicy DefaultPolicy() const override { return policy_; }
  TaskOutcome Handle(TaskContext& context) override {
    int call = 0;
    monitor_.Update([&] {
      call = ++calls_;
      ++running_;
    });
    TaskOutcome outcome = script_(context, call);
    monitor_.Update([&] {
      --running_;
      if (context.cancelled()) ++returned_cancelled_;
    });
    return outcome;
  }
  int calls() const { return monitor_.Read([&] { return calls_; }); }
  int returned_cancelled() const { return monitor_.Read([&] { return returned_cancelled_; }); }
  bool AwaitRunning(int n) const { return monitor_.Await([&] { return running_ >= n; }); }
  bool AwaitReturnedCancelled(int n) const {
    return monitor_.Await([&] { return returned_cancelled_ >= n; });
  }

 private:
  const std::string type_;
  const Script script_;
  const TaskPolicy policy_;
  testing::Monitor monitor_;
  int calls_ = 0;
  int running_ = 0;
  int returned_cancelled_ = 0;
};

class ExecutorStoreTest : public ::testing::Test {
 protected:
  ExecutorStoreTest()
      : memory_(memory::NewMemoryEventStream(&clock_)),
        stream_(testing::NewRecordingStream(memory_.get(), &log_)),
        store_(taskstore::NewMemoryTaskStore()),
        results_(memory_.get(), std::string(kDefaultResultStream)) {
    options_.consumer_name = "executor-1";
    options_.concurrency = 2;
    options_.fetch_block = absl::Milliseconds(5);
    options_.reclaim_enabled = false;
    options_.heartbeat_interval = absl::ZeroDuration();
    options_.cancel_poll_interval = absl::Seconds(1);
  }
  ~ExecutorStoreTest() override {
    if (executor_ != nullptr) executor_->Shutdown();
  }

  CountingHandler* AddHandler(std::string type, CountingHandler::Script script,
                              TaskPolicy policy = {}) {
    auto handler = std::make_unique<CountingHandler>(std::move(type), std::move(script), policy);
    CountingHandler* raw = handler.get();
    EXPECT_TRUE(handlers_.Register(std::move(handler)).ok());
    return raw;
  }

  void Start() {
    executor_ = std::make_unique<Executor>(
        stream_.get(), &handlers_, options_,
        ExecutorDependencies{.metrics = &metrics_, .random = &random_, .store = &store_});
    ASSERT_TRUE(executor_->Start().ok());
  }

  // What the service's POST /v1/tasks does: the record (queued), then the request event.
  void Submit(absl::string_view id, absl::string_view type) {
    TaskRecord record;
    record.id = std::string(id);
    record.type = std::string(type);
    record.state = TaskState::kQueued;
    record.request = RequestJson(id, type);
    record.created_at = clock_.Now();
    auto created = store_.Create(record, clock_.Now());
    ASSERT_TRUE(created.ok()) << created.status();
    ASSERT_EQ(created->kind, taskstore::CreateResult::Kind::kCreated);
    Publish(id, type);
  }
  // The request event alone (a redelivery, or a producer that bypasses the API).
  void Publish(absl::string_view id, absl::string_view type) {
    auto request = ParseTaskRequest(RequestJson(id, type));
    ASSERT_TRUE(request.ok());
    ASSERT_TRUE(
        memory_->PublishAndWait(kDefaultRequestStream, MakeTaskRequestEvent(*request, "test")).ok());
  }
  static std::string RequestJson(absl::string_view id, absl::string_view type) {
    return json{{"id", id}, {"type", type}, {"input", json::object()}}.dump();
  }

  TaskRecord Stored(absl::string_view id) {
    auto record = store_.Get(id);
    EXPECT_TRUE(record.ok()) << record.status();
    return record.ok() ? *record : TaskRecord{};
  }
  // Waits until the executor holds nothing: every store write and settle step is done.
  void AwaitSettled() { ASSERT_TRUE(metrics_.AwaitInFlight(0)); }

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
  CountingStore store_;
  testing::StreamReader results_;
  HandlerRegistry handlers_;
  testing::FixedRandom random_{0.5};
  testing::RecordingMetrics metrics_;
  ExecutorOptions options_;
  std::unique_ptr<Executor> executor_;
};

TaskPolicy NoJitter(int max_attempts) {
  TaskPolicy policy;
  policy.retry.max_attempts = max_attempts;
  policy.retry.initial_backoff = absl::Seconds(1);
  policy.retry.jitter = 0;
  policy.timeout = absl::Minutes(1);
  return policy;
}

TEST_F(ExecutorStoreTest, SucceededTaskIsRecordedWithItsResultAttemptsAndRetention) {
  AddHandler("echo", [](TaskContext&, int) { return TaskOutcome::Succeeded(json{{"x", 1}}); },
             NoJitter(3));
  Start();
  const absl::Time t0 = clock_.Now();
  Submit("t-1", "echo");
  ASSERT_EQ(AwaitResults(1).size(), 1u);
  AwaitSettled();

  const TaskRecord record = Stored("t-1");
  EXPECT_EQ(record.state, TaskState::kSucceeded);
  EXPECT_EQ(record.attempts, 1);
  EXPECT_EQ(record.started_at, t0);
  EXPECT_EQ(record.finished_at, t0);
  EXPECT_EQ(record.expires_at, t0 + options_.retention_succeeded);
  EXPECT_EQ(record.owner, absl::StrCat("executor-1 on ", kDefaultRequestStream));
  EXPECT_TRUE(record.last_error.empty());
  auto result = ParseTaskResult(record.result);
  ASSERT_TRUE(result.ok()) << record.result;
  EXPECT_EQ(result->status, TaskStatus::kSucceeded);
  ASSERT_NE(result->output, nullptr);
  EXPECT_EQ(*result->output, json({{"x", 1}}));
}

TEST_F(ExecutorStoreTest, TransientFailureIsRetryingWithItsErrorThenSucceeds) {
  AddHandler(
      "flaky",
      [](TaskContext&, int call) {
        return call == 1 ? TaskOutcome::Transient("upstream said 503")
                         : TaskOutcome::Succeeded(nullptr);
      },
      NoJitter(3));
  Start();
  Submit("t-flaky", "flaky");
  ASSERT_TRUE(log_.AwaitCount(Op::kNack, 1));
  TaskRecord retrying = Stored("t-flaky");
  EXPECT_EQ(retrying.state, TaskState::kRetrying);
  EXPECT_EQ(retrying.attempts, 1);
  EXPECT_EQ(retrying.last_error, "upstream said 503");
  auto history = json::parse(retrying.history.empty() ? "[]" : retrying.history);
  ASSERT_EQ(history.size(), 1u);
  EXPECT_EQ(history[0]["attempt"], 1);
  EXPECT_EQ(history[0]["error"], "upstream said 503");

  clock_.Advance(absl::Seconds(1));  // the backoff
  ASSERT_EQ(AwaitResults(1).size(), 1u);
  AwaitSettled();
  const TaskRecord done = Stored("t-flaky");
  EXPECT_EQ(done.state, TaskState::kSucceeded);
  EXPECT_EQ(done.attempts, 2);
}

TEST_F(ExecutorStoreTest, PermanentFailureIsDeadLetteredWithItsErrorAndRetention) {
  AddHandler("bad", [](TaskContext&, int) { return TaskOutcome::Permanent("boom"); },
             NoJitter(3));
  Start();
  const absl::Time t0 = clock_.Now();
  Submit("t-bad", "bad");
  ASSERT_TRUE(log_.AwaitCount(Op::kDeadLetter, 1));
  AwaitSettled();
  const TaskRecord record = Stored("t-bad");
  EXPECT_EQ(record.state, TaskState::kDeadLettered);
  EXPECT_THAT(record.last_error, HasSubstr("boom"));
  EXPECT_EQ(record.expires_at, t0 + options_.retention_failed);
  auto result = ParseTaskResult(record.result);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->status, TaskStatus::kFailed);
}

TEST_F(ExecutorStoreTest, RedeliveryOfASucceededTaskIsSettledWithTheStoredResultUnrun) {
  CountingHandler* echo = AddHandler(
      "echo", [](TaskContext&, int call) { return TaskOutcome::Succeeded(json{{"call", call}}); },
      NoJitter(3));
  Start();
  Submit("t-once", "echo");
  ASSERT_EQ(AwaitResults(1).size(), 1u);
  AwaitSettled();

  Publish("t-once", "echo");  // a duplicate delivery (crash before the ack, a rebalance)
  auto results = AwaitResults(2);
  ASSERT_EQ(results.size(), 2u);
  AwaitSettled();
  EXPECT_EQ(echo->calls(), 1);
  ASSERT_NE(results[1].output, nullptr);
  EXPECT_EQ(*results[1].output, json({{"call", 1}}));  // the stored result, not a new run
  EXPECT_EQ(log_.Count(Op::kAck), 2);
  EXPECT_EQ(metrics_.finished("echo", kOutcomeDuplicate), 1);
  EXPECT_EQ(Stored("t-once").attempts, 1);
}

TEST_F(ExecutorStoreTest, CancelledTaskIsNeverRun) {
  CountingHandler* echo =
      AddHandler("echo", [](TaskContext&, int) { return TaskOutcome::Succeeded(nullptr); });
  Start();
  TaskRecord record;
  record.id = "t-cancelled";
  record.type = "echo";
  record.state = TaskState::kQueued;
  record.request = RequestJson("t-cancelled", "echo");
  ASSERT_TRUE(store_.Create(record, clock_.Now()).ok());
  taskstore::TaskUpdate cancel;
  cancel.now = clock_.Now();
  cancel.state = TaskState::kCancelled;
  ASSERT_TRUE(store_.Update("t-cancelled", cancel).ok());
  Publish("t-cancelled", "echo");

  auto results = AwaitResults(1);
  ASSERT_EQ(results.size(), 1u);
  ASSERT_TRUE(log_.AwaitCount(Op::kAck, 1));
  AwaitSettled();
  EXPECT_EQ(echo->calls(), 0);
  EXPECT_EQ(results[0].status, TaskStatus::kFailed);
  EXPECT_EQ(results[0].error_kind, "cancelled");
  EXPECT_EQ(Stored("t-cancelled").state, TaskState::kCancelled);
}

TEST_F(ExecutorStoreTest, RunningTaskIsAskedToStopThroughItsContextAndEndsCancelled) {
  CountingHandler* slow = AddHandler(
      "slow",
      [](TaskContext& context, int) {
        // Stops only when asked to: the test fails by timeout otherwise (bounded in real time).
        const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
        while (!context.cancelled() && std::chrono::steady_clock::now() < give_up) {
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        return TaskOutcome::Succeeded(nullptr);
      },
      NoJitter(3));
  Start();
  Submit("t-slow", "slow");
  ASSERT_TRUE(slow->AwaitRunning(1));
  EXPECT_EQ(Stored("t-slow").state, TaskState::kRunning);

  taskstore::TaskUpdate request_cancel;
  request_cancel.from = {TaskState::kRunning};
  request_cancel.now = clock_.Now();
  request_cancel.cancel_requested = true;
  ASSERT_TRUE(store_.Update("t-slow", request_cancel).ok());
  clock_.Advance(options_.cancel_poll_interval);  // the executor looks once per interval

  ASSERT_TRUE(slow->AwaitReturnedCancelled(1));
  ASSERT_TRUE(log_.AwaitCount(Op::kAck, 1));
  AwaitSettled();
  EXPECT_EQ(log_.Count(Op::kNack), 0);
  const TaskRecord record = Stored("t-slow");
  EXPECT_EQ(record.state, TaskState::kCancelled);
  EXPECT_EQ(record.expires_at, clock_.Now() + options_.retention_cancelled);
  auto results = AwaitResults(1);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].error_kind, "cancelled");
  EXPECT_EQ(slow->calls(), 1);
}

TEST_F(ExecutorStoreTest, OneStoreReadAndBatchedWritesPerFetchedBatchNoPerTaskRoundTrip) {
  AddHandler("echo", [](TaskContext&, int) { return TaskOutcome::Succeeded(nullptr); });
  constexpr int kTasks = 20;
  for (int i = 0; i < kTasks; ++i) Submit(absl::StrCat("t-", i), "echo");
  Start();  // all 20 come in the first fetch (fetch_batch 64)
  ASSERT_EQ(AwaitResults(kTasks).size(), static_cast<size_t>(kTasks));
  AwaitSettled();
  const CountingStore::Counts counts = store_.counts();
  EXPECT_EQ(counts.get, 0);     // no single-task read ...
  EXPECT_EQ(counts.update, 0);  // ... or write on the way
  EXPECT_EQ(counts.get_many, 1);
  EXPECT_EQ(counts.get_many_ids, kTasks);
  // One UpdateMany marks the batch running; the settles' writes are group-committed.
  EXPECT_EQ(counts.update_many_updates, 2 * kTasks);
  EXPECT_LE(counts.update_many, 1 + kTasks);
  for (int i = 0; i < kTasks; ++i) {
    EXPECT_EQ(Stored(absl::StrCat("t-", i)).state, TaskState::kSucceeded) << i;
  }
}

// ---- escalation tiers -------------------------------------------------------------------

constexpr absl::string_view kSlowStream = "io.flunq.task.slow";

TEST_F(ExecutorStoreTest, TwoTiersWithTheirOwnRetryPoliciesThenDeadLetterWithTheFullHistory) {
  // Tier 1: two attempts, then the task goes on to the slow tier.
  CountingHandler* tier1 = AddHandler(
      "flaky", [](TaskContext&, int) { return TaskOutcome::Transient("still down"); },
      NoJitter(2));
  options_.escalate_to = std::string(kSlowStream);
  Start();
  Submit("t-tiers", "flaky");
  ASSERT_TRUE(log_.AwaitCount(Op::kNack, 1));
  clock_.Advance(absl::Seconds(1));  // tier 1's backoff
  ASSERT_TRUE(log_.AwaitCount(Op::kAck, 1));  // acked once the escalation was durable
  AwaitSettled();
  EXPECT_EQ(tier1->calls(), 2);
  EXPECT_EQ(log_.Count(Op::kDeadLetter), 0);
  EXPECT_EQ(metrics_.finished("flaky", kOutcomeEscalated), 1);
  EXPECT_EQ(metrics_.results("failed"), 0);  // not done: no result yet

  // The store: queued again, a fresh attempt count, the tier it left in the history.
  const TaskRecord escalated = Stored("t-tiers");
  EXPECT_EQ(escalated.state, TaskState::kQueued);
  EXPECT_EQ(escalated.attempts, 0);
  EXPECT_EQ(escalated.last_error, "still down");
  EXPECT_EQ(escalated.lease_until, absl::InfinitePast());
  json history = json::parse(escalated.history);
  ASSERT_EQ(history.size(), 2u);
  EXPECT_EQ(history[0]["stream"], std::string(kDefaultRequestStream));
  EXPECT_EQ(history[1]["stream"], std::string(kDefaultRequestStream));
  EXPECT_EQ(history[1]["escalated_to"], std::string(kSlowStream));
  EXPECT_EQ(history[1]["tier"], 2);

  // Tier 2: its own executor on the slow stream, three attempts, counted afresh, then the
  // dead-letter stream.
  HandlerRegistry slow_handlers;
  std::vector<int> tier2_attempts;
  std::mutex attempts_mu;
  auto slow = std::make_unique<CountingHandler>(
      "flaky",
      [&](TaskContext& context, int) {
        std::lock_guard<std::mutex> lock(attempts_mu);
        tier2_attempts.push_back(context.attempt());
        return TaskOutcome::Transient("slow tier down too");
      },
      NoJitter(3));
  CountingHandler* tier2 = slow.get();
  ASSERT_TRUE(slow_handlers.Register(std::move(slow)).ok());
  testing::CallLog slow_log;
  std::unique_ptr<EventStream> slow_stream = testing::NewRecordingStream(memory_.get(), &slow_log);
  testing::RecordingMetrics slow_metrics;
  ExecutorOptions slow_options = options_;
  slow_options.request_stream = std::string(kSlowStream);
  slow_options.consumer_name = "executor-2";
  slow_options.escalate_to.clear();  // the last tier
  testing::StreamReader dead_letters(memory_.get(), absl::StrCat(kSlowStream, ".dlq"));
  Executor slow_executor(slow_stream.get(), &slow_handlers, slow_options,
                         ExecutorDependencies{.metrics = &slow_metrics, .random = &random_,
                                              .store = &store_});
  ASSERT_TRUE(slow_executor.Start().ok());
  ASSERT_TRUE(slow_log.AwaitCount(Op::kNack, 1));
  EXPECT_EQ(Stored("t-tiers").state, TaskState::kRetrying);
  clock_.Advance(absl::Seconds(1));
  ASSERT_TRUE(slow_log.AwaitCount(Op::kNack, 2));
  clock_.Advance(absl::Seconds(2));  // tier 2's second backoff (multiplier 2)
  ASSERT_TRUE(slow_log.AwaitCount(Op::kDeadLetter, 1));
  ASSERT_TRUE(slow_metrics.AwaitInFlight(0));
  slow_executor.Shutdown();
  EXPECT_EQ(tier1->calls(), 2);
  EXPECT_EQ(tier2->calls(), 3);
  EXPECT_THAT(tier2_attempts, ::testing::ElementsAre(1, 2, 3));

  // The dead letter carries every tier: the earlier ones in its request, this one's in its
  // reason (and the reason sums the earlier ones up).
  std::vector<Event> dead = dead_letters.AwaitEvents(1);
  ASSERT_EQ(dead.size(), 1u);
  auto request = ParseTaskRequest(dead[0].data());
  ASSERT_TRUE(request.ok()) << request.status();
  ASSERT_EQ(request->escalations.size(), 1u);
  EXPECT_EQ(request->escalations[0].stream, kDefaultRequestStream);
  EXPECT_EQ(request->escalations[0].attempts, 2);
  EXPECT_EQ(request->escalations[0].error_kind, "transient");
  EXPECT_EQ(request->escalations[0].error, "still down");
  EXPECT_EQ(request->escalations[0].consumer, "executor-1");
  EXPECT_EQ(request->escalations[0].escalated_at, clock_.Now() - absl::Seconds(3));
  const std::string reason = HeaderValue(dead[0], kDlqReasonHeader);
  EXPECT_THAT(reason, HasSubstr("gave up after 3 attempts: slow tier down too"));
  EXPECT_THAT(reason, HasSubstr(absl::StrCat("earlier tier ", kDefaultRequestStream,
                                             ": 2 attempts, transient: still down")));

  const TaskRecord final_record = Stored("t-tiers");
  EXPECT_EQ(final_record.state, TaskState::kDeadLettered);
  EXPECT_EQ(final_record.attempts, 3);
  history = json::parse(final_record.history);
  ASSERT_EQ(history.size(), 5u);  // 2 attempts on tier 1, 3 on tier 2
  EXPECT_EQ(history[2]["stream"], std::string(kSlowStream));
  EXPECT_EQ(history[4]["stream"], std::string(kSlowStream));
  EXPECT_EQ(history[4]["consumer"], "executor-2");
  std::vector<TaskResult> results = AwaitResults(1);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].status, TaskStatus::kFailed);
  EXPECT_EQ(results[0].attempts, 3);
}

TEST_F(ExecutorStoreTest, AnEscalationNotPublishedLeavesTheOriginalUnackedAndTriesAgain) {
  CountingHandler* flaky = AddHandler(
      "flaky", [](TaskContext&, int) { return TaskOutcome::Transient("down"); }, NoJitter(1));
  options_.escalate_to = std::string(kSlowStream);
  memory::FaultInjector faults;
  std::unique_ptr<EventStream> faulty = memory::NewFaultInjectingEventStream(memory_.get(), &faults);
  testing::CallLog faulty_log;
  std::unique_ptr<EventStream> recorded = testing::NewRecordingStream(faulty.get(), &faulty_log);
  testing::StreamReader slow(memory_.get(), std::string(kSlowStream));
  TaskRecord record;
  record.id = "t-unpublished";
  record.type = "flaky";
  record.request = RequestJson("t-unpublished", "flaky");
  ASSERT_TRUE(store_.Create(record, clock_.Now()).ok());
  faults.FailNext(memory::FaultInjector::Op::kPublish, 1, absl::UnavailableError("broker down"));
  Executor executor(recorded.get(), &handlers_, options_,
                    ExecutorDependencies{.metrics = &metrics_, .random = &random_, .store = &store_});
  ASSERT_TRUE(executor.Start().ok());
  Publish("t-unpublished", "flaky");

  // The last attempt failed, the escalation's publish failed: the original is given back (no
  // failed attempt), never acked.
  ASSERT_TRUE(faulty_log.AwaitCount(Op::kNack, 1));
  EXPECT_EQ(faulty_log.Count(Op::kAck), 0);
  EXPECT_FALSE(faulty_log.Calls(Op::kNack)[0].failed);
  EXPECT_EQ(faults.injected(memory::FaultInjector::Op::kPublish), 1);

  // Redelivered after the back-off, its last attempt runs again and escalates.
  clock_.Advance(options_.fetch_error_backoff);
  ASSERT_TRUE(faulty_log.AwaitCount(Op::kAck, 1));
  ASSERT_TRUE(metrics_.AwaitInFlight(0));
  executor.Shutdown();
  EXPECT_EQ(flaky->calls(), 2);
  std::vector<Event> escalated = slow.AwaitEvents(1);
  ASSERT_EQ(escalated.size(), 1u);
  auto request = ParseTaskRequest(escalated[0].data());
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->id, "t-unpublished");
  ASSERT_EQ(request->escalations.size(), 1u);
  EXPECT_EQ(request->escalations[0].attempts, 1);
  EXPECT_EQ(Stored("t-unpublished").state, TaskState::kQueued);
}

TEST_F(ExecutorStoreTest, AnEscalationTheBackendRefusesIsDeadLetteredHereNotRerunForEver) {
  // The last error is so long that the escalated request (which carries it) exceeds the
  // backend's event size limit, while the request itself does not.
  const std::string long_error(3000, 'e');
  CountingHandler* flaky = AddHandler(
      "flaky", [&](TaskContext&, int) { return TaskOutcome::Transient(long_error); },
      NoJitter(1));
  options_.escalate_to = std::string(kSlowStream);
  testing::CallLog small_log;
  std::unique_ptr<EventStream> small =
      testing::NewRecordingStream(memory_.get(), &small_log, /*max_event_bytes=*/2500);
  testing::StreamReader slow(memory_.get(), std::string(kSlowStream));
  Executor executor(small.get(), &handlers_, options_,
                    ExecutorDependencies{.metrics = &metrics_, .random = &random_, .store = &store_});
  ASSERT_TRUE(executor.Start().ok());
  Submit("t-huge", "flaky");
  ASSERT_TRUE(small_log.AwaitCount(Op::kDeadLetter, 1));
  ASSERT_TRUE(metrics_.AwaitInFlight(0));
  executor.Shutdown();
  EXPECT_EQ(flaky->calls(), 1);
  EXPECT_EQ(small_log.Count(Op::kNack), 0);
  EXPECT_EQ(small_log.Count(Op::kAck), 0);
  // The store followed: from the queued the escalation recorded to dead_lettered.
  EXPECT_EQ(Stored("t-huge").state, TaskState::kDeadLettered);
  auto page = memory_->inspector()->Read(kSlowStream, "", 10);
  EXPECT_TRUE(absl::IsNotFound(page.status()) || (page.ok() && page->events.empty()));
}

TEST_F(ExecutorStoreTest, PermanentFailureIsDeadLetteredAtOnceEvenWithAnEscalationTier) {
  AddHandler("bad", [](TaskContext&, int) { return TaskOutcome::Permanent("boom"); },
             NoJitter(3));
  options_.escalate_to = std::string(kSlowStream);
  Start();
  Submit("t-perm", "bad");
  ASSERT_TRUE(log_.AwaitCount(Op::kDeadLetter, 1));
  AwaitSettled();
  EXPECT_EQ(Stored("t-perm").state, TaskState::kDeadLettered);
  EXPECT_EQ(metrics_.finished("bad", kOutcomeEscalated), 0);
}

TEST_F(ExecutorStoreTest, ATierCycleIsDeadLetteredInsteadOfEscalatedForEver) {
  AddHandler("flaky", [](TaskContext&, int) { return TaskOutcome::Transient("down"); },
             NoJitter(1));
  options_.escalate_to = std::string(kSlowStream);
  Start();
  // The request already came through the slow tier (whose executors escalate back here).
  TaskRecord record;
  record.id = "t-cycle";
  record.type = "flaky";
  record.request = RequestJson("t-cycle", "flaky");
  ASSERT_TRUE(store_.Create(record, clock_.Now()).ok());
  json request = json::parse(RequestJson("t-cycle", "flaky"));
  request["escalations"] = json::array({{{"stream", std::string(kSlowStream)}, {"attempts", 1}}});
  auto parsed = TaskRequestFromJson(request);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_TRUE(
      memory_->PublishAndWait(kDefaultRequestStream, MakeTaskRequestEvent(*parsed, "test")).ok());
  ASSERT_TRUE(log_.AwaitCount(Op::kDeadLetter, 1));
  AwaitSettled();
  const std::vector<testing::SubscriptionCall> dead = log_.Calls(Op::kDeadLetter);
  EXPECT_THAT(dead[0].reason, HasSubstr("EXECUTOR_ESCALATE_TO settings form a cycle"));
  EXPECT_EQ(Stored("t-cycle").state, TaskState::kDeadLettered);
}

TEST_F(ExecutorStoreTest, EscalatingToItsOwnRequestStreamIsRefusedAtStart) {
  options_.escalate_to = std::string(kDefaultRequestStream);
  Executor executor(stream_.get(), &handlers_, options_, ExecutorDependencies{.store = &store_});
  absl::Status started = executor.Start();
  EXPECT_TRUE(absl::IsInvalidArgument(started)) << started;
  EXPECT_THAT(started.message(), HasSubstr("escalate-to stream"));
  EXPECT_THAT(started.message(), HasSubstr("request stream"));
}

TEST_F(ExecutorStoreTest, RequestWithoutAStoreRecordRunsUntracked) {
  CountingHandler* echo =
      AddHandler("echo", [](TaskContext&, int) { return TaskOutcome::Succeeded(nullptr); });
  Start();
  Publish("t-raw", "echo");
  ASSERT_EQ(AwaitResults(1).size(), 1u);
  AwaitSettled();
  EXPECT_EQ(echo->calls(), 1);
  EXPECT_TRUE(absl::IsNotFound(store_.Get("t-raw").status()));
}

}  // namespace
}  // namespace eventbus::executor
