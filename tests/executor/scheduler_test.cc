// The scheduler (executor/include/eventbus/executor/scheduler.h) on the memory backend and the
// memory task store in virtual time: run-later tasks are published once when due (also with
// two schedulers on one store, after a crash and after a restart), cancelled ones never;
// recurring schedules fire once per time, never overlap, and follow their missed-run policy.

#include "eventbus/executor/scheduler.h"

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "eventbus/clock.h"
#include "eventbus/executor/executor.h"
#include "eventbus/executor/handler.h"
#include "eventbus/executor/metrics.h"
#include "eventbus/executor/task.h"
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
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using taskstore::Schedule;
using taskstore::TaskRecord;
using taskstore::TaskState;

class SchedulerTest : public ::testing::Test {
 protected:
  SchedulerTest()
      : stream_(memory::NewMemoryEventStream(&clock_)), store_(taskstore::NewMemoryTaskStore()) {}

  std::unique_ptr<Scheduler> NewScheduler(std::string owner) {
    SchedulerOptions options;
    options.owner = std::move(owner);
    options.interval = absl::Seconds(1);
    options.lease = absl::Seconds(30);
    return std::make_unique<Scheduler>(
        options, SchedulerDependencies{.stream = stream_.get(), .store = store_.get()});
  }

  // What POST /v1/tasks with run_at does: the record, scheduled, and nothing published.
  void SubmitLater(const std::string& id, absl::Time run_at) {
    TaskRecord record;
    record.id = id;
    record.type = "echo";
    record.state = TaskState::kScheduled;
    record.run_at = run_at;
    record.request = json{{"id", id}, {"type", "echo"}, {"input", {{"n", 1}}}}.dump();
    auto created = store_->Create(record, clock_.Now());
    ASSERT_TRUE(created.ok()) << created.status();
    ASSERT_EQ(created->kind, taskstore::CreateResult::Kind::kCreated);
  }

  // The ids of the task requests on the request stream, in publish order.
  std::vector<std::string> Published() {
    auto page = stream_->inspector()->Read(kDefaultRequestStream, "", 10'000);
    std::vector<std::string> ids;
    if (absl::IsNotFound(page.status())) return ids;
    EXPECT_TRUE(page.ok()) << page.status();
    if (!page.ok()) return ids;
    for (const StoredEvent& stored : page->events) {
      auto request = ParseTaskRequest(stored.event.data());
      EXPECT_TRUE(request.ok()) << request.status();
      if (request.ok()) ids.push_back(request->id);
    }
    return ids;
  }

  TaskRecord Stored(absl::string_view id) {
    auto record = store_->Get(id);
    EXPECT_TRUE(record.ok()) << record.status();
    return record.ok() ? *record : TaskRecord{};
  }

  void Finish(absl::string_view id) {
    taskstore::TaskUpdate done;
    done.now = clock_.Now();
    done.state = TaskState::kSucceeded;
    done.finished_at = clock_.Now();
    ASSERT_TRUE(store_->Update(id, done).ok());
  }

  Schedule CreateSchedule(const json& body) {
    auto schedule = ScheduleFromJson(body, clock_.Now());
    EXPECT_TRUE(schedule.ok()) << schedule.status();
    if (!schedule.ok()) return {};
    auto created = store_->CreateSchedule(*schedule, clock_.Now());
    EXPECT_TRUE(created.ok()) << created.status();
    return created.ok() ? *created : Schedule{};
  }

  Schedule StoredSchedule(absl::string_view id) {
    auto schedule = store_->GetSchedule(id);
    EXPECT_TRUE(schedule.ok()) << schedule.status();
    return schedule.ok() ? *schedule : Schedule{};
  }

  // Starts at 2026-03-28 12:00 UTC (the day before Berlin's spring-forward change).
  ManualClock clock_{absl::FromUnixSeconds(1774699200)};
  std::unique_ptr<EventStream> stream_;
  std::unique_ptr<taskstore::TaskStore> store_;
};

TEST_F(SchedulerTest, NotPublishedBeforeRunAtThenOnceWhenDue) {
  auto scheduler = NewScheduler("s1");
  SubmitLater("later", clock_.Now() + absl::Minutes(10));
  EXPECT_EQ(scheduler->Tick().published, 0);
  clock_.Advance(absl::Minutes(10) - absl::Seconds(1));
  EXPECT_EQ(scheduler->Tick().published, 0);
  EXPECT_THAT(Published(), IsEmpty());
  EXPECT_EQ(Stored("later").state, TaskState::kScheduled);

  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(scheduler->Tick().published, 1);
  EXPECT_EQ(Stored("later").state, TaskState::kQueued);
  EXPECT_EQ(Stored("later").owner, "");
  for (int i = 0; i < 5; ++i) {
    clock_.Advance(absl::Minutes(1));
    EXPECT_EQ(scheduler->Tick().published, 0);
  }
  EXPECT_THAT(Published(), ElementsAre("later"));
}

TEST_F(SchedulerTest, DueTasksArePublishedInRunAtOrder) {
  auto scheduler = NewScheduler("s1");
  SubmitLater("third", clock_.Now() + absl::Seconds(30));
  SubmitLater("first", clock_.Now() + absl::Seconds(10));
  SubmitLater("second", clock_.Now() + absl::Seconds(20));
  SubmitLater("not-yet", clock_.Now() + absl::Hours(1));
  clock_.Advance(absl::Minutes(1));
  EXPECT_EQ(scheduler->Tick().published, 3);
  EXPECT_THAT(Published(), ElementsAre("first", "second", "third"));
}

TEST_F(SchedulerTest, TwoSchedulersOnOneStorePublishEachTaskOnce) {
  auto a = NewScheduler("a");
  auto b = NewScheduler("b");
  constexpr int kTasks = 40;
  for (int i = 0; i < kTasks; ++i) SubmitLater(absl::StrCat("t", i), clock_.Now() + absl::Seconds(5));
  clock_.Advance(absl::Seconds(5));
  // Both at once, each claiming in small batches so their passes interleave.
  SchedulerPass pass_a, pass_b;
  std::thread ta([&] {
    for (int i = 0; i < 10; ++i) pass_a.published += a->Tick().published;
  });
  std::thread tb([&] {
    for (int i = 0; i < 10; ++i) pass_b.published += b->Tick().published;
  });
  ta.join();
  tb.join();
  EXPECT_EQ(pass_a.published + pass_b.published, kTasks);
  std::vector<std::string> ids = Published();
  EXPECT_EQ(ids.size(), kTasks);
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(std::unique(ids.begin(), ids.end()), ids.end()) << "a task was published twice";
}

TEST_F(SchedulerTest, ATaskClaimedByACrashedSchedulerIsPublishedAfterItsLease) {
  SubmitLater("orphan", clock_.Now() + absl::Seconds(1));
  clock_.Advance(absl::Seconds(1));
  // A scheduler claims it and dies before publishing.
  auto claimed = store_->ClaimDue(clock_.Now(), absl::Seconds(30), 10, "dead");
  ASSERT_TRUE(claimed.ok());
  ASSERT_EQ(claimed->size(), 1u);
  auto survivor = NewScheduler("survivor");
  EXPECT_EQ(survivor->Tick().published, 0);
  clock_.Advance(absl::Seconds(29));
  EXPECT_EQ(survivor->Tick().published, 0);
  clock_.Advance(absl::Seconds(2));
  EXPECT_EQ(survivor->Tick().published, 1);
  EXPECT_THAT(Published(), ElementsAre("orphan"));
}

TEST_F(SchedulerTest, AScheduledTaskSurvivesARestart) {
  SubmitLater("durable", clock_.Now() + absl::Hours(2));
  {
    auto before = NewScheduler("executor-1");
    EXPECT_EQ(before->Tick().published, 0);
    clock_.Advance(absl::Hours(1));
    EXPECT_EQ(before->Tick().published, 0);
  }  // the executor stops; the store keeps the task
  clock_.Advance(absl::Hours(1));
  auto after = NewScheduler("executor-1-restarted");
  EXPECT_EQ(after->Tick().published, 1);
  EXPECT_THAT(Published(), ElementsAre("durable"));
}

TEST_F(SchedulerTest, ACancelledScheduledTaskIsNeverPublished) {
  auto scheduler = NewScheduler("s1");
  SubmitLater("cancel-me", clock_.Now() + absl::Minutes(5));
  SubmitLater("keep-me", clock_.Now() + absl::Minutes(5));
  // What POST /v1/tasks/{id}:cancel does to a task that is not running.
  taskstore::TaskUpdate cancel;
  cancel.from = {TaskState::kScheduled};
  cancel.now = clock_.Now();
  cancel.state = TaskState::kCancelled;
  cancel.finished_at = clock_.Now();
  ASSERT_TRUE(store_->Update("cancel-me", cancel).ok());
  clock_.Advance(absl::Hours(1));
  EXPECT_EQ(scheduler->Tick().published, 1);
  EXPECT_THAT(Published(), ElementsAre("keep-me"));
  EXPECT_EQ(Stored("cancel-me").state, TaskState::kCancelled);
}

TEST_F(SchedulerTest, StartedSchedulerPublishesWhenTheClockReachesRunAt) {
  auto scheduler = NewScheduler("s1");
  SubmitLater("threaded", clock_.Now() + absl::Minutes(3));
  ASSERT_TRUE(scheduler->Start().ok());
  EXPECT_FALSE(scheduler->Start().ok());
  testing::StreamReader requests(stream_.get(), std::string(kDefaultRequestStream));
  clock_.Advance(absl::Minutes(3));
  std::vector<Event> events = requests.AwaitEvents(1);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].subject(), "threaded");
  scheduler->Stop();
}

// Runs `echo` tasks (output = input) and counts its calls.
class CountingEcho final : public TaskHandler {
 public:
  std::string type() const override { return "echo"; }
  TaskOutcome Handle(TaskContext& context) override {
    calls_.fetch_add(1);
    return TaskOutcome::Succeeded(context.request().Input());
  }
  int calls() const { return calls_.load(); }

 private:
  std::atomic<int> calls_{0};
};

TEST_F(SchedulerTest, ADuplicatePublishAfterACrashRunsTheTaskOnce) {
  SubmitLater("once", clock_.Now() + absl::Minutes(1));
  clock_.Advance(absl::Minutes(1));
  // A scheduler claims the task, publishes it and dies before recording it queued.
  auto claimed = store_->ClaimDue(clock_.Now(), absl::Seconds(30), 10, "dead");
  ASSERT_TRUE(claimed.ok());
  ASSERT_EQ(claimed->size(), 1u);
  auto request = ParseTaskRequest((*claimed)[0].request);
  ASSERT_TRUE(request.ok());
  ASSERT_TRUE(
      stream_->PublishAndWait(kDefaultRequestStream, MakeTaskRequestEvent(*request, "dead")).ok());
  // Its claim runs out and another scheduler publishes the task again.
  clock_.Advance(absl::Seconds(31));
  auto survivor = NewScheduler("survivor");
  ASSERT_EQ(survivor->Tick().published, 1);
  ASSERT_THAT(Published(), ElementsAre("once", "once"));

  // Both copies arrive in the executor's first fetch: the first runs, the second is acked unrun
  // (apart, the second would be settled by the record: executor_store_test).
  HandlerRegistry handlers;
  auto echo = std::make_unique<CountingEcho>();
  CountingEcho* counter = echo.get();
  ASSERT_TRUE(handlers.Register(std::move(echo)).ok());
  ExecutorOptions options;
  options.consumer_name = "executor-1";
  options.concurrency = 1;
  options.fetch_block = absl::Milliseconds(5);
  options.reclaim_enabled = false;
  options.heartbeat_interval = absl::ZeroDuration();
  testing::RecordingMetrics metrics;
  testing::FixedRandom random{0.5};
  testing::StreamReader results(stream_.get(), std::string(kDefaultResultStream));
  Executor executor(stream_.get(), &handlers, options,
                    ExecutorDependencies{.metrics = &metrics, .random = &random,
                                         .store = store_.get()});
  ASSERT_TRUE(executor.Start().ok());
  std::vector<Event> events = results.AwaitEvents(1);
  ASSERT_TRUE(metrics.AwaitInFlight(0));  // both deliveries settled
  executor.Shutdown();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(counter->calls(), 1);
  EXPECT_EQ(metrics.finished("echo", kOutcomeDuplicate), 1);
  EXPECT_EQ(Stored("once").state, TaskState::kSucceeded);
  EXPECT_EQ(Stored("once").attempts, 1);
}

// ---- stuck tasks ----------------------------------------------------------------------

// Forwards to a real store; runs `after_find_stuck` once, between FindStuck returning and the
// caller acting on it: another scheduler's whole pass fits there, a race made deterministic.
class RacingStore final : public testing::ForwardingTaskStore {
 public:
  using ForwardingTaskStore::ForwardingTaskStore;
  std::function<void()> after_find_stuck;

  absl::StatusOr<std::vector<TaskRecord>> FindStuck(absl::Time now, int limit) override {
    auto found = ForwardingTaskStore::FindStuck(now, limit);
    if (auto hook = std::exchange(after_find_stuck, nullptr)) hook();
    return found;
  }
};

class StuckTaskTest : public SchedulerTest {
 protected:
  static constexpr absl::Duration kTimeout = absl::Minutes(1);
  static constexpr absl::Duration kGrace = absl::Minutes(1);

  StuckTaskTest() {
    SubscribeOptions options;
    options.stream = std::string(kDefaultRequestStream);
    options.group = "eventbus-executor";
    options.consumer = "executor-1";
    auto subscription = stream_->Subscribe(options);
    EXPECT_TRUE(subscription.ok()) << subscription.status();
    if (subscription.ok()) consumer_ = std::move(*subscription);
  }

  std::unique_ptr<Scheduler> NewStuckScheduler(std::string owner, taskstore::TaskStore* store,
                                               std::function<void(absl::string_view)> on_requeued) {
    SchedulerOptions options;
    options.owner = std::move(owner);
    options.lease = absl::Seconds(30);
    return std::make_unique<Scheduler>(
        options, SchedulerDependencies{.stream = stream_.get(),
                                       .store = store,
                                       .on_requeued = std::move(on_requeued)});
  }

  // What the API and an executor do up to a running attempt: the record, the request on the
  // stream, fetched by executor-1 and marked running with its store lease (timeout + grace).
  Delivery SubmitAndRun(const std::string& id) {
    TaskRecord record;
    record.id = id;
    record.type = "echo";
    record.request = json{{"id", id}, {"type", "echo"}, {"input", json::object()}}.dump();
    EXPECT_TRUE(store_->Create(record, clock_.Now()).ok());
    auto request = ParseTaskRequest(record.request);
    EXPECT_TRUE(request.ok());
    EXPECT_TRUE(
        stream_->PublishAndWait(kDefaultRequestStream, MakeTaskRequestEvent(*request, "api")).ok());
    auto fetched = consumer_->Fetch(1, absl::ZeroDuration());
    EXPECT_TRUE(fetched.ok() && fetched->size() == 1u);
    taskstore::TaskUpdate running;
    running.from = {TaskState::kQueued};
    running.now = clock_.Now();
    running.state = TaskState::kRunning;
    running.increment_attempts = true;
    running.started_at = clock_.Now();
    running.owner = absl::StrCat("executor-1 on ", kDefaultRequestStream);
    running.lease_until = clock_.Now() + kTimeout + kGrace;
    EXPECT_TRUE(store_->Update(id, running).ok());
    return fetched.ok() && !fetched->empty() ? (*fetched)[0] : Delivery{};
  }

  std::unique_ptr<Subscription> consumer_;
};

TEST_F(StuckTaskTest, RunningTaskWithNoDeliveryHeldIsRequeuedOnceEvenWithTwoSchedulers) {
  // The executor acked the delivery, but its store write was lost (the store was down): the
  // task stays running in the store with nothing on the stream that would ever finish it.
  const Delivery delivery = SubmitAndRun("lost");
  ASSERT_TRUE(consumer_->Ack(delivery).ok());

  std::map<std::string, int> requeued;  // by scheduler
  RacingStore racing(store_.get());
  auto first = NewStuckScheduler("s1", &racing, [&](absl::string_view) { ++requeued["s1"]; });
  auto second = NewStuckScheduler("s2", store_.get(), [&](absl::string_view) { ++requeued["s2"]; });

  clock_.Advance(kTimeout + kGrace - absl::Seconds(1));
  EXPECT_EQ(first->Tick().requeued, 0);  // within its timeout plus grace: not stuck yet
  clock_.Advance(absl::Seconds(2));
  // Both find it stuck; the second's whole pass runs between the first's FindStuck and its
  // claim. The first's claim then fails on the record's version.
  SchedulerPass second_pass;
  racing.after_find_stuck = [&] { second_pass = second->Tick(); };
  const SchedulerPass first_pass = first->Tick();
  EXPECT_EQ(second_pass.requeued, 1);
  EXPECT_EQ(first_pass.requeued, 0);
  EXPECT_EQ(first_pass.failed, 0);
  EXPECT_EQ(requeued["s2"], 1);
  EXPECT_EQ(requeued["s1"], 0);
  EXPECT_EQ(first->Tick().requeued + second->Tick().requeued, 0);
  EXPECT_THAT(Published(), ElementsAre("lost", "lost"));  // the original and one re-queue

  const TaskRecord record = Stored("lost");
  EXPECT_EQ(record.state, TaskState::kQueued);
  EXPECT_EQ(record.owner, "");
  EXPECT_EQ(record.lease_until, absl::InfinitePast());
  const json history = json::parse(record.history);
  ASSERT_EQ(history.size(), 1u);
  EXPECT_EQ(history[0]["by"], "s2");
  EXPECT_EQ(history[0]["stream"], std::string(kDefaultRequestStream));
  EXPECT_THAT(history[0]["reason"].get<std::string>(), HasSubstr("no consumer of"));

  // The re-queued request is delivered and runs.
  auto again = consumer_->Fetch(1, absl::ZeroDuration());
  ASSERT_TRUE(again.ok());
  ASSERT_EQ(again->size(), 1u);
  EXPECT_EQ(ParseTaskRequest((*again)[0].event.data())->id, "lost");
}

TEST_F(StuckTaskTest, RunningTaskWhoseDeliveryIsStillHeldIsNotRequeued) {
  // executor-1 hangs (or died): it still holds the delivery, which reclaim hands to another
  // consumer; re-queueing too would run the task twice.
  const Delivery delivery = SubmitAndRun("held");
  int requeued = 0;
  auto scheduler = NewStuckScheduler("s1", store_.get(), [&](absl::string_view) { ++requeued; });
  clock_.Advance(kTimeout + kGrace + absl::Minutes(10));
  SchedulerPass pass = scheduler->Tick();
  EXPECT_EQ(pass.requeued, 0);
  EXPECT_EQ(pass.stuck_held, 1);
  EXPECT_EQ(requeued, 0);
  EXPECT_EQ(Stored("held").state, TaskState::kRunning);
  EXPECT_THAT(Published(), ElementsAre("held"));

  // Once the delivery is settled (here: dead-lettered by the backend's own limit, as NATS's
  // MaxDeliver would) and the store still says running, it is re-queued.
  ASSERT_TRUE(consumer_->DeadLetter(delivery, "gone").ok());
  pass = scheduler->Tick();
  EXPECT_EQ(pass.requeued, 1);
  EXPECT_EQ(requeued, 1);
  EXPECT_EQ(Stored("held").state, TaskState::kQueued);
}

TEST_F(StuckTaskTest, RequeuedOntoTheStreamOfTheTierItRanOn) {
  TaskRecord record;
  record.id = "tier2";
  record.type = "echo";
  record.request = json{{"id", "tier2"}, {"type", "echo"}}.dump();
  ASSERT_TRUE(store_->Create(record, clock_.Now()).ok());
  taskstore::TaskUpdate running;
  running.now = clock_.Now();
  running.state = TaskState::kRunning;
  running.started_at = clock_.Now();
  running.owner = "executor-2 on io.flunq.task.slow";
  running.lease_until = clock_.Now() + kTimeout + kGrace;
  ASSERT_TRUE(store_->Update("tier2", running).ok());
  auto scheduler = NewStuckScheduler("s1", store_.get(), nullptr);
  clock_.Advance(kTimeout + kGrace + absl::Seconds(1));
  EXPECT_EQ(scheduler->Tick().requeued, 1);
  EXPECT_THAT(Published(), IsEmpty());  // not onto this scheduler's own request stream
  auto page = stream_->inspector()->Read("io.flunq.task.slow", "", 10);
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->events.size(), 1u);
  EXPECT_EQ(ParseTaskRequest(page->events[0].event.data())->id, "tier2");
}

// ---- recurring ----------------------------------------------------------------------

json NightlyBerlin() {
  return json{{"id", "nightly"},
              {"cron", "30 2 * * *"},
              {"timezone", "Europe/Berlin"},
              {"task", {{"type", "echo"}, {"input", {{"report", "daily"}}}}}};
}

TEST_F(SchedulerTest, CronScheduleFiresOncePerTimeWithATaskNamedByTheFire) {
  auto scheduler = NewScheduler("s1");
  const Schedule created = CreateSchedule(NightlyBerlin());
  // Tomorrow (2026-03-29) Berlin jumps from 02:00 to 03:00: the 02:30 run is at 03:00 CEST.
  const absl::Time first = absl::FromUnixSeconds(1774746000);  // 2026-03-29T01:00:00Z
  ASSERT_EQ(created.next_run_at, first);
  clock_.Advance(first - clock_.Now() - absl::Seconds(1));
  EXPECT_EQ(scheduler->Tick().fired, 0);
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(scheduler->Tick().fired, 1);
  EXPECT_EQ(scheduler->Tick().fired, 0);
  const std::string id = ScheduledTaskId("nightly", first);
  EXPECT_EQ(id, "nightly@2026-03-29T01:00:00Z");
  EXPECT_THAT(Published(), ElementsAre(id));
  const TaskRecord task = Stored(id);
  EXPECT_EQ(task.schedule_id, "nightly");
  EXPECT_EQ(task.attempts, 0);
  auto request = ParseTaskRequest(task.request);
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->Input()["report"], "daily");
  EXPECT_EQ(request->metadata.at("schedule_id"), "nightly");
  const Schedule advanced = StoredSchedule("nightly");
  EXPECT_EQ(advanced.last_task_id, id);
  EXPECT_EQ(advanced.next_run_at, absl::FromUnixSeconds(1774830600));  // 03-30T00:30Z (02:30 CEST)

  Finish(id);
  clock_.Advance(advanced.next_run_at - clock_.Now());
  EXPECT_EQ(scheduler->Tick().fired, 1);
  EXPECT_THAT(Published(), ElementsAre(id, "nightly@2026-03-30T00:30:00Z"));
}

TEST_F(SchedulerTest, TwoSchedulersFireAScheduleOnce) {
  auto a = NewScheduler("a");
  auto b = NewScheduler("b");
  CreateSchedule(json{{"id", "often"}, {"every", "PT1M"}, {"task", {{"type", "echo"}}}});
  for (int minute = 0; minute < 5; ++minute) {
    clock_.Advance(absl::Minutes(1));
    const int fired = a->Tick().fired + b->Tick().fired;
    EXPECT_EQ(fired, 1) << "minute " << minute;
    Finish(StoredSchedule("often").last_task_id);
  }
  EXPECT_EQ(Published().size(), 5u);
}

TEST_F(SchedulerTest, RunsOfOneScheduleNeverOverlapSkipMovesOn) {
  auto scheduler = NewScheduler("s1");
  CreateSchedule(json{{"id", "hourly"}, {"every", "PT1H"}, {"task", {{"type", "echo"}}}});
  clock_.Advance(absl::Hours(1));
  ASSERT_EQ(scheduler->Tick().fired, 1);
  const std::string first = StoredSchedule("hourly").last_task_id;
  // The first run is still going an hour later: the next fire is skipped, not run beside it.
  clock_.Advance(absl::Hours(1));
  const SchedulerPass pass = scheduler->Tick();
  EXPECT_EQ(pass.fired, 0);
  EXPECT_EQ(pass.skipped, 1);
  EXPECT_EQ(StoredSchedule("hourly").next_run_at, clock_.Now() + absl::Hours(1));
  EXPECT_EQ(Published().size(), 1u);
  Finish(first);
  clock_.Advance(absl::Hours(1));
  EXPECT_EQ(scheduler->Tick().fired, 1);
  EXPECT_EQ(Published().size(), 2u);
}

TEST_F(SchedulerTest, RunsOfOneScheduleNeverOverlapRunOnceWaitsForThePrevious) {
  auto scheduler = NewScheduler("s1");
  CreateSchedule(json{{"id", "hourly"},
                      {"every", "PT1H"},
                      {"missed", "run_once"},
                      {"task", {{"type", "echo"}}}});
  clock_.Advance(absl::Hours(1));
  ASSERT_EQ(scheduler->Tick().fired, 1);
  const std::string first = StoredSchedule("hourly").last_task_id;
  clock_.Advance(absl::Hours(1));
  EXPECT_EQ(scheduler->Tick().fired, 0);
  clock_.Advance(absl::Minutes(10));
  EXPECT_EQ(scheduler->Tick().fired, 0);
  EXPECT_EQ(Published().size(), 1u);
  Finish(first);
  // The held fire runs now, late, once; then the schedule is back on its times.
  EXPECT_EQ(scheduler->Tick().fired, 1);
  EXPECT_EQ(Published().size(), 2u);
  EXPECT_EQ(StoredSchedule("hourly").next_run_at, clock_.Now() + absl::Minutes(50));
}

TEST_F(SchedulerTest, MissedRunsAfterDowntimeSkip) {
  CreateSchedule(json{{"id", "hourly"}, {"every", "PT1H"}, {"task", {{"type", "echo"}}}});
  clock_.Advance(absl::Hours(5) + absl::Minutes(20));  // no executor ran meanwhile
  auto scheduler = NewScheduler("s1");
  const SchedulerPass pass = scheduler->Tick();
  EXPECT_EQ(pass.fired, 0);
  EXPECT_EQ(pass.skipped, 1);
  EXPECT_THAT(Published(), IsEmpty());
  EXPECT_EQ(StoredSchedule("hourly").next_run_at, clock_.Now() + absl::Minutes(40));
  clock_.Advance(absl::Minutes(40));
  EXPECT_EQ(scheduler->Tick().fired, 1);
  EXPECT_EQ(Published().size(), 1u);
}

TEST_F(SchedulerTest, MissedRunsAfterDowntimeRunOnce) {
  const Schedule created = CreateSchedule(json{
      {"id", "hourly"}, {"every", "PT1H"}, {"missed", "run_once"}, {"task", {{"type", "echo"}}}});
  clock_.Advance(absl::Hours(5) + absl::Minutes(20));
  auto scheduler = NewScheduler("s1");
  EXPECT_EQ(scheduler->Tick().fired, 1);  // one run for the five missed ones
  EXPECT_EQ(scheduler->Tick().fired, 0);
  // Named by the first missed time it stands for.
  EXPECT_THAT(Published(), ElementsAre(ScheduledTaskId("hourly", created.next_run_at)));
  EXPECT_EQ(StoredSchedule("hourly").next_run_at, clock_.Now() + absl::Minutes(40));
}

TEST_F(SchedulerTest, AFireMadeByACrashedSchedulerIsFinishedAsTheSameTask) {
  const Schedule created =
      CreateSchedule(json{{"id", "often"}, {"every", "PT1M"}, {"task", {{"type", "echo"}}}});
  clock_.Advance(absl::Minutes(1));
  // A scheduler claims the fire, creates its task and dies before publishing it.
  auto claimed = store_->ClaimDueSchedules(clock_.Now(), absl::Seconds(30), 10, "dead");
  ASSERT_TRUE(claimed.ok());
  ASSERT_EQ(claimed->size(), 1u);
  auto request = ScheduledTaskRequest(created, created.next_run_at);
  ASSERT_TRUE(request.ok());
  TaskRecord record;
  record.id = request->id;
  record.type = "echo";
  record.state = TaskState::kQueued;
  record.request = TaskRequestToJson(*request);
  ASSERT_TRUE(store_->Create(record, clock_.Now()).ok());
  auto survivor = NewScheduler("survivor");
  EXPECT_EQ(survivor->Tick().fired, 0);  // still claimed
  EXPECT_THAT(Published(), IsEmpty());
  // After the claim ran out the fire is late, yet it is finished (its task exists), once,
  // under the same id; the schedule moves on to the next minute after now.
  clock_.Advance(absl::Seconds(31));
  const SchedulerPass pass = survivor->Tick();
  EXPECT_EQ(pass.fired, 1);
  EXPECT_EQ(pass.skipped, 0);
  EXPECT_THAT(Published(), ElementsAre(ScheduledTaskId("often", created.next_run_at)));
  EXPECT_EQ(StoredSchedule("often").last_task_id, record.id);
  EXPECT_EQ(StoredSchedule("often").next_run_at, created.next_run_at + absl::Minutes(1));
}

TEST(ScheduleFromJson, ErrorsNameTheField) {
  const absl::Time now = absl::FromUnixSeconds(1'700'000'000);
  const json task = {{"type", "echo"}};
  struct Case {
    json body;
    const char* names;
  };
  for (const Case& c : std::vector<Case>{
           {json{{"cron", "* * * * *"}, {"task", task}}, "missing required field \"id\""},
           {json{{"id", "x"}, {"task", task}}, "give \"cron\" (5 fields) or \"every\""},
           {json{{"id", "x"}, {"cron", "* * * * *"}, {"every", "PT1M"}, {"task", task}},
            "\"cron\" and \"every\" exclude each other"},
           {json{{"id", "x"}, {"cron", "0 25 * * *"}, {"task", task}},
            "\"cron\": cron hour field \"25\""},
           {json{{"id", "x"}, {"cron", "* * * * *"}, {"timezone", "Nowhere/City"}, {"task", task}},
            "\"timezone\": unknown time zone \"Nowhere/City\""},
           {json{{"id", "x"}, {"every", "PT1M"}, {"timezone", "UTC"}, {"task", task}},
            "\"timezone\": applies to \"cron\" only"},
           {json{{"id", "x"}, {"every", "PT0.5S"}, {"task", task}}, "\"every\": must be at least"},
           {json{{"id", "x"}, {"every", "soon"}, {"task", task}}, "\"every\":"},
           {json{{"id", "x"}, {"every", "PT1M"}, {"missed", "all"}, {"task", task}},
            "\"missed\": must be \"skip\" or \"run_once\""},
           {json{{"id", "x"}, {"every", "PT1M"}}, "missing required field \"task\""},
           {json{{"id", "x"}, {"every", "PT1M"}, {"task", {{"type", "echo"}, {"id", "y"}}}},
            "\"task.id\": is not allowed"},
           {json{{"id", "x"}, {"every", "PT1M"}, {"task", {{"type", "echo"}, {"run_after", "PT1M"}}}},
            "\"task.run_after\": is not allowed"},
           {json{{"id", "x"}, {"every", "PT1M"}, {"task", {{"input", json::object()}}}},
            "\"task\": missing required field \"type\""},
           {json{{"id", "a/b"}, {"every", "PT1M"}, {"task", task}}, "\"id\": contains"},
           {json{{"id", "x"}, {"every", "PT1M"}, {"task", task}, {"paused", true}},
            "\"paused\": unknown field"}}) {
    auto schedule = ScheduleFromJson(c.body, now);
    ASSERT_FALSE(schedule.ok()) << c.body.dump();
    EXPECT_EQ(schedule.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(schedule.status().message(), HasSubstr(c.names)) << c.body.dump();
  }
}

TEST(ScheduleFromJson, DefaultsAndFirstFire) {
  const absl::Time now = absl::FromUnixSeconds(1'700'000'000);  // 2023-11-14T22:13:20Z
  auto cron = ScheduleFromJson(json{{"id", "c"}, {"cron", "0  3 * * *"}, {"task", {{"type", "echo"}}}}, now);
  ASSERT_TRUE(cron.ok()) << cron.status();
  EXPECT_EQ(cron->time_zone, "UTC");
  EXPECT_EQ(cron->missed_policy, "skip");
  EXPECT_EQ(cron->cron, "0 3 * * *");
  EXPECT_EQ(cron->type, "echo");
  EXPECT_EQ(cron->next_run_at, absl::FromUnixSeconds(1700017200));  // 2023-11-15T03:00:00Z
  auto every = ScheduleFromJson(json{{"id", "e"}, {"every", "PT15M"}, {"task", {{"type", "echo"}}}}, now);
  ASSERT_TRUE(every.ok()) << every.status();
  EXPECT_EQ(every->next_run_at, now + absl::Minutes(15));
  auto later = NextFireAfter(*every, now + absl::Minutes(31));
  ASSERT_TRUE(later.ok());
  EXPECT_EQ(*later, now + absl::Minutes(45));
}

TEST(RunLaterRequest, RunAtAndRunAfterAreParsedAndExclusive) {
  auto at = ParseTaskRequest(R"({"id":"a","type":"echo","run_at":"2030-01-01T08:00:00+01:00"})");
  ASSERT_TRUE(at.ok()) << at.status();
  EXPECT_EQ(*at->run_at, absl::FromUnixSeconds(1893481200));  // 07:00Z
  auto after = ParseTaskRequest(R"({"id":"a","type":"echo","run_after":"PT90S"})");
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(*after->run_after, absl::Seconds(90));
  // Consumed by the API: what is published runs at once.
  EXPECT_THAT(TaskRequestToJson(*after), ::testing::Not(HasSubstr("run_after")));

  auto both = ParseTaskRequest(
      R"({"id":"a","type":"echo","run_at":"2030-01-01T08:00:00Z","run_after":"PT1S"})");
  ASSERT_FALSE(both.ok());
  EXPECT_THAT(both.status().message(), HasSubstr("\"run_at\" and \"run_after\" exclude each other"));
  auto bad_at = ParseTaskRequest(R"({"id":"a","type":"echo","run_at":"tomorrow"})");
  ASSERT_FALSE(bad_at.ok());
  EXPECT_THAT(bad_at.status().message(), HasSubstr("\"run_at\":"));
  auto negative = ParseTaskRequest(R"({"id":"a","type":"echo","run_after":"-PT1S"})");
  ASSERT_FALSE(negative.ok());
  EXPECT_THAT(negative.status().message(), HasSubstr("\"run_after\":"));
}

}  // namespace
}  // namespace eventbus::executor
