// The cases every TaskStore must pass. Each case makes a fresh, empty store. Times are virtual:
// every call gets its `now` from the case, so leases, windows and expiry are exact.

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "eventbus/taskstore/conformance.h"

namespace eventbus::taskstore::conformance {

int LinkTaskStoreConformanceSuite() { return 1; }

std::string TestNameOf(const testing::TestParamInfo<TaskStoreUnderTest>& info) {
  return info.param.name;
}

namespace {

// A fixed, whole-millisecond origin for every case's virtual time.
const absl::Time kT0 = absl::FromUnixMillis(1'800'000'000'000);
absl::Time At(int seconds) { return kT0 + absl::Seconds(seconds); }

// JSON text without whitespace outside strings (a store may normalise `history`).
std::string Compact(absl::string_view json) {
  std::string out;
  bool in_string = false;
  bool escaped = false;
  for (char c : json) {
    if (in_string) {
      out.push_back(c);
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
      out.push_back(c);
    } else if (c != ' ' && c != '\n' && c != '\t' && c != '\r') {
      out.push_back(c);
    }
  }
  return out;
}

void ExpectSameTask(const TaskRecord& got, const TaskRecord& want) {
  SCOPED_TRACE(absl::StrCat("task ", want.id));
  EXPECT_EQ(got.id, want.id);
  EXPECT_EQ(got.type, want.type);
  EXPECT_EQ(TaskStateName(got.state), TaskStateName(want.state));
  EXPECT_EQ(got.request, want.request);
  EXPECT_EQ(got.attempts, want.attempts);
  EXPECT_EQ(got.created_at, want.created_at);
  EXPECT_EQ(got.updated_at, want.updated_at);
  EXPECT_EQ(got.run_at, want.run_at);
  EXPECT_EQ(got.started_at, want.started_at);
  EXPECT_EQ(got.finished_at, want.finished_at);
  EXPECT_EQ(got.expires_at, want.expires_at);
  EXPECT_EQ(got.last_error, want.last_error);
  EXPECT_EQ(got.result, want.result);
  EXPECT_EQ(got.progress, want.progress);
  EXPECT_EQ(Compact(got.history), Compact(want.history));
  EXPECT_EQ(got.unique_key, want.unique_key);
  EXPECT_EQ(got.unique_until, want.unique_until);
  EXPECT_EQ(got.schedule_id, want.schedule_id);
  EXPECT_EQ(got.owner, want.owner);
  EXPECT_EQ(got.lease_until, want.lease_until);
  EXPECT_EQ(got.cancel_requested, want.cancel_requested);
  EXPECT_EQ(got.version, want.version);
}

void ExpectSameSchedule(const Schedule& got, const Schedule& want) {
  SCOPED_TRACE(absl::StrCat("schedule ", want.id));
  EXPECT_EQ(got.id, want.id);
  EXPECT_EQ(got.request, want.request);
  EXPECT_EQ(got.type, want.type);
  EXPECT_EQ(got.cron, want.cron);
  EXPECT_EQ(got.time_zone, want.time_zone);
  EXPECT_EQ(got.interval, want.interval);
  EXPECT_EQ(got.missed_policy, want.missed_policy);
  EXPECT_EQ(got.next_run_at, want.next_run_at);
  EXPECT_EQ(got.last_run_at, want.last_run_at);
  EXPECT_EQ(got.last_task_id, want.last_task_id);
  EXPECT_EQ(got.created_at, want.created_at);
  EXPECT_EQ(got.paused, want.paused);
  EXPECT_EQ(got.owner, want.owner);
  EXPECT_EQ(got.lease_until, want.lease_until);
  EXPECT_EQ(got.version, want.version);
}

std::vector<std::string> IdsOf(const std::vector<TaskRecord>& tasks) {
  std::vector<std::string> ids;
  for (const TaskRecord& t : tasks) ids.push_back(t.id);
  return ids;
}

TaskRecord NewTask(absl::string_view id, TaskState state = TaskState::kQueued,
                   absl::string_view type = "call") {
  TaskRecord t;
  t.id = std::string(id);
  t.type = std::string(type);
  t.state = state;
  t.request = absl::StrCat(R"({"id":")", id, R"(","type":")", type, R"("})");
  return t;
}

class Fixture {
 public:
  explicit Fixture(const TaskStoreUnderTest& param) : param_(param) {
    auto made = param_.make_store();
    if (!made.ok()) {
      ADD_FAILURE() << "make_store: " << made.status();
      return;
    }
    store_ = *std::move(made);
    absl::Status migrated = store_->Migrate();
    EXPECT_TRUE(migrated.ok()) << "Migrate: " << migrated;
  }
  bool ok() const { return store_ != nullptr; }
  TaskStore& store() { return *store_; }

  // One handle per concurrent worker: its own when the store can be opened again.
  std::vector<TaskStore*> Handles(int n) {
    std::vector<TaskStore*> handles;
    for (int i = 0; i < n; ++i) {
      if (param_.open_again) {
        auto again = param_.open_again(*store_);
        EXPECT_TRUE(again.ok()) << "open_again: " << again.status();
        if (!again.ok()) return {};
        extra_.push_back(*std::move(again));
        handles.push_back(extra_.back().get());
      } else {
        handles.push_back(store_.get());
      }
    }
    return handles;
  }

  // Creates `t` at `now`, expecting kCreated; returns the stored record.
  TaskRecord Create(const TaskRecord& t, absl::Time now) {
    auto created = store_->Create(t, now);
    EXPECT_TRUE(created.ok()) << created.status();
    if (!created.ok()) return {};
    EXPECT_EQ(created->kind, CreateResult::Kind::kCreated) << "creating " << t.id;
    return created->record;
  }

  TaskRecord MustUpdate(absl::string_view id, const TaskUpdate& u) {
    auto updated = store_->Update(id, u);
    EXPECT_TRUE(updated.ok()) << "update " << id << ": " << updated.status();
    return updated.ok() ? *updated : TaskRecord{};
  }

  TaskRecord MustGet(absl::string_view id) {
    auto got = store_->Get(id);
    EXPECT_TRUE(got.ok()) << "get " << id << ": " << got.status();
    return got.ok() ? *got : TaskRecord{};
  }

  // Moves a task to a final state at `now`.
  TaskRecord Finish(absl::string_view id, TaskState state, absl::Time now,
                    absl::Time expires_at = absl::InfiniteFuture()) {
    TaskUpdate u;
    u.now = now;
    u.state = state;
    u.finished_at = now;
    u.expires_at = expires_at;
    return MustUpdate(id, u);
  }

 private:
  const TaskStoreUnderTest& param_;
  std::unique_ptr<TaskStore> store_;
  std::vector<std::unique_ptr<TaskStore>> extra_;
};

#define FIXTURE(f)         \
  Fixture f(GetParam());   \
  if (!f.ok()) return

// --- Migrate, Create, Get ---------------------------------------------------------------------

TEST_P(TaskStoreConformance, MigrateIsIdempotent) {
  FIXTURE(f);
  EXPECT_TRUE(f.store().Migrate().ok());
  f.Create(NewTask("t1"), At(0));
  EXPECT_TRUE(f.store().Migrate().ok());
  EXPECT_EQ(f.MustGet("t1").id, "t1");
}

TEST_P(TaskStoreConformance, CreateThenGetRoundTripsEveryField) {
  FIXTURE(f);
  TaskRecord t = NewTask("task:1/with spaces", TaskState::kScheduled, "set");
  t.request = "{\"data\":\"quotes \\\" newline \\n unicode \xc3\xa9 \xe2\x82\xac\",\"n\":[1,2]}";
  t.attempts = 3;
  t.run_at = At(60) + absl::Milliseconds(123);
  t.started_at = At(-10);
  t.finished_at = At(-5);
  t.expires_at = At(3600);
  t.last_error = "boom: \"bad\"\nsecond line";
  t.result = R"({"ok":true})";
  t.progress = R"({"pct":50})";
  t.history = R"([{"attempt":1,"error":"x"}])";
  t.unique_key = "k:1";
  t.unique_until = At(600);
  t.schedule_id = "sched-1";
  t.owner = "exec-a";
  t.lease_until = At(30);
  t.cancel_requested = true;

  auto created = f.store().Create(t, At(0));
  ASSERT_TRUE(created.ok()) << created.status();
  ASSERT_EQ(created->kind, CreateResult::Kind::kCreated);
  EXPECT_GT(created->record.version, 0);

  TaskRecord want = t;
  want.created_at = At(0);
  want.updated_at = At(0);
  want.version = created->record.version;
  ExpectSameTask(created->record, want);
  ExpectSameTask(f.MustGet(t.id), want);
}

TEST_P(TaskStoreConformance, DefaultTimesRoundTrip) {
  FIXTURE(f);
  TaskRecord t = NewTask("t1");
  TaskRecord stored = f.Create(t, At(0));
  TaskRecord got = f.MustGet("t1");
  EXPECT_EQ(got.run_at, absl::InfinitePast());
  EXPECT_EQ(got.started_at, absl::InfinitePast());
  EXPECT_EQ(got.finished_at, absl::InfinitePast());
  EXPECT_EQ(got.expires_at, absl::InfiniteFuture());
  EXPECT_EQ(got.unique_until, absl::InfinitePast());
  EXPECT_EQ(got.lease_until, absl::InfinitePast());
  EXPECT_EQ(got.attempts, 0);
  EXPECT_FALSE(got.cancel_requested);
  EXPECT_TRUE(got.history.empty());
  ExpectSameTask(got, stored);
}

TEST_P(TaskStoreConformance, CreateRejectsMalformedRecords) {
  FIXTURE(f);
  EXPECT_EQ(f.store().Create(NewTask(""), At(0)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.store().Create(NewTask(std::string(201, 'x')), At(0)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.store().Create(NewTask("no-type", TaskState::kQueued, ""), At(0)).status().code(),
            absl::StatusCode::kInvalidArgument);
  // 200 bytes is allowed.
  f.Create(NewTask(std::string(200, 'y')), At(0));
}

TEST_P(TaskStoreConformance, CreateWithATakenIdReturnsTheStoredTask) {
  FIXTURE(f);
  TaskRecord first = f.Create(NewTask("t1", TaskState::kQueued, "call"), At(0));
  TaskRecord second = NewTask("t1", TaskState::kScheduled, "set");
  auto again = f.store().Create(second, At(5));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->kind, CreateResult::Kind::kIdTaken);
  ExpectSameTask(again->record, first);
  ExpectSameTask(f.MustGet("t1"), first);
}

TEST_P(TaskStoreConformance, UniqueKeyIsHeldWhileTheHolderIsNotFinal) {
  FIXTURE(f);
  TaskRecord a = NewTask("a");
  a.unique_key = "order-7";
  f.Create(a, At(0));

  for (TaskState state : {TaskState::kQueued, TaskState::kRunning, TaskState::kRetrying}) {
    TaskUpdate u;
    u.now = At(1);
    u.state = state;
    f.MustUpdate("a", u);
    TaskRecord b = NewTask(absl::StrCat("b-", TaskStateName(state)));
    b.unique_key = "order-7";
    auto taken = f.store().Create(b, At(2));
    ASSERT_TRUE(taken.ok()) << taken.status();
    EXPECT_EQ(taken->kind, CreateResult::Kind::kUniqueKeyTaken) << TaskStateName(state);
    EXPECT_EQ(taken->record.id, "a");
    EXPECT_EQ(f.store().Get(b.id).status().code(), absl::StatusCode::kNotFound);
  }

  // Other keys and no key never conflict.
  TaskRecord other = NewTask("other");
  other.unique_key = "order-8";
  f.Create(other, At(3));
  f.Create(NewTask("keyless-1"), At(3));
  f.Create(NewTask("keyless-2"), At(3));

  // Once the holder is final (and unique_until has passed: it was never set), the key is free.
  f.Finish("a", TaskState::kSucceeded, At(10));
  TaskRecord c = NewTask("c");
  c.unique_key = "order-7";
  f.Create(c, At(11));
  // ... and now c holds it.
  TaskRecord d = NewTask("d");
  d.unique_key = "order-7";
  auto taken = f.store().Create(d, At(12));
  ASSERT_TRUE(taken.ok());
  EXPECT_EQ(taken->kind, CreateResult::Kind::kUniqueKeyTaken);
  EXPECT_EQ(taken->record.id, "c");
}

TEST_P(TaskStoreConformance, UniqueKeyIsHeldUntilUniqueUntilAfterTheHolderIsFinal) {
  FIXTURE(f);
  TaskRecord a = NewTask("a");
  a.unique_key = "k";
  a.unique_until = At(60);
  f.Create(a, At(0));
  f.Finish("a", TaskState::kFailed, At(10));

  TaskRecord b = NewTask("b");
  b.unique_key = "k";
  auto early = f.store().Create(b, At(59));
  ASSERT_TRUE(early.ok());
  EXPECT_EQ(early->kind, CreateResult::Kind::kUniqueKeyTaken);
  EXPECT_EQ(early->record.id, "a");
  // unique_until is exclusive: at that instant the key is free.
  f.Create(b, At(60));
}

TEST_P(TaskStoreConformance, UniqueKeyIsHeldByANonFinalTaskPastUniqueUntil) {
  FIXTURE(f);
  TaskRecord a = NewTask("a");
  a.unique_key = "k";
  a.unique_until = At(10);
  f.Create(a, At(0));
  TaskRecord b = NewTask("b");
  b.unique_key = "k";
  auto taken = f.store().Create(b, At(100));
  ASSERT_TRUE(taken.ok());
  EXPECT_EQ(taken->kind, CreateResult::Kind::kUniqueKeyTaken);
  EXPECT_EQ(taken->record.id, "a");
}

TEST_P(TaskStoreConformance, PurgeFreesTheUniqueKey) {
  FIXTURE(f);
  TaskRecord a = NewTask("a");
  a.unique_key = "k";
  a.unique_until = absl::InfiniteFuture();
  f.Create(a, At(0));
  f.Finish("a", TaskState::kSucceeded, At(1), /*expires_at=*/At(5));
  TaskRecord b = NewTask("b");
  b.unique_key = "k";
  auto taken = f.store().Create(b, At(4));
  ASSERT_TRUE(taken.ok());
  EXPECT_EQ(taken->kind, CreateResult::Kind::kUniqueKeyTaken);

  auto purged = f.store().PurgeExpired(At(5), 100);
  ASSERT_TRUE(purged.ok()) << purged.status();
  EXPECT_EQ(*purged, 1);
  f.Create(b, At(6));
}

TEST_P(TaskStoreConformance, GetOfAMissingTaskIsNotFound) {
  FIXTURE(f);
  EXPECT_EQ(f.store().Get("nope").status().code(), absl::StatusCode::kNotFound);
}

TEST_P(TaskStoreConformance, GetManyReturnsTheTasksThatExist) {
  FIXTURE(f);
  std::vector<std::string> ids;
  std::map<std::string, TaskRecord> stored;
  for (int i = 0; i < 120; ++i) {
    const std::string id = absl::StrFormat("t%03d", i);
    stored[id] = f.Create(NewTask(id), At(i));
    ids.push_back(id);
    if (i % 10 == 0) ids.push_back(absl::StrCat("missing-", i));
  }
  auto got = f.store().GetMany(ids);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), 120u);
  std::set<std::string> seen;
  for (const TaskRecord& t : *got) {
    ASSERT_TRUE(stored.count(t.id)) << t.id;
    EXPECT_TRUE(seen.insert(t.id).second) << "twice: " << t.id;
    ExpectSameTask(t, stored[t.id]);
  }
  auto none = f.store().GetMany({});
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

// --- Update ------------------------------------------------------------------------------------

TEST_P(TaskStoreConformance, UpdateSetsEveryFieldAndBumpsTheVersion) {
  FIXTURE(f);
  TaskRecord before = f.Create(NewTask("t1", TaskState::kScheduled), At(0));
  TaskUpdate u;
  u.now = At(7);
  u.state = TaskState::kRunning;
  u.attempts = 4;
  u.run_at = At(1);
  u.started_at = At(2);
  u.finished_at = At(3);
  u.expires_at = At(4);
  u.last_error = "timeout after 30s";
  u.result = R"({"status":200})";
  u.progress = R"({"step":"2/3"})";
  u.owner = "exec-b";
  u.lease_until = At(40);
  u.cancel_requested = true;
  TaskRecord after = f.MustUpdate("t1", u);

  TaskRecord want = before;
  want.state = TaskState::kRunning;
  want.attempts = 4;
  want.updated_at = At(7);
  want.run_at = At(1);
  want.started_at = At(2);
  want.finished_at = At(3);
  want.expires_at = At(4);
  want.last_error = "timeout after 30s";
  want.result = R"({"status":200})";
  want.progress = R"({"step":"2/3"})";
  want.owner = "exec-b";
  want.lease_until = At(40);
  want.cancel_requested = true;
  EXPECT_GT(after.version, before.version);
  want.version = after.version;
  ExpectSameTask(after, want);
  ExpectSameTask(f.MustGet("t1"), want);

  // Fields can be cleared again.
  TaskUpdate clear;
  clear.now = At(8);
  clear.owner = "";
  clear.lease_until = absl::InfinitePast();
  clear.last_error = "";
  clear.cancel_requested = false;
  clear.expires_at = absl::InfiniteFuture();
  TaskRecord cleared = f.MustUpdate("t1", clear);
  EXPECT_EQ(cleared.owner, "");
  EXPECT_EQ(cleared.lease_until, absl::InfinitePast());
  EXPECT_EQ(cleared.last_error, "");
  EXPECT_FALSE(cleared.cancel_requested);
  EXPECT_EQ(cleared.expires_at, absl::InfiniteFuture());
  EXPECT_GT(cleared.version, after.version);
}

TEST_P(TaskStoreConformance, UpdateLeavesUnsetFieldsAsStored) {
  FIXTURE(f);
  TaskRecord t = NewTask("t1");
  t.attempts = 2;
  t.last_error = "e";
  t.result = "r";
  t.progress = "p";
  t.owner = "o";
  t.lease_until = At(9);
  t.cancel_requested = true;
  TaskRecord before = f.Create(t, At(0));
  TaskUpdate u;
  u.now = At(3);
  u.progress = R"({"pct":10})";
  TaskRecord after = f.MustUpdate("t1", u);
  TaskRecord want = before;
  want.progress = R"({"pct":10})";
  want.updated_at = At(3);
  want.version = after.version;
  ExpectSameTask(after, want);
}

TEST_P(TaskStoreConformance, UpdateAppliesOnlyFromTheListedStates) {
  FIXTURE(f);
  TaskRecord before = f.Create(NewTask("t1", TaskState::kRunning), At(0));
  TaskUpdate u;
  u.now = At(1);
  u.from = {TaskState::kQueued, TaskState::kScheduled};
  u.state = TaskState::kCancelled;
  auto refused = f.store().Update("t1", u);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("running"), absl::string_view::npos)
      << "the message names the stored state: " << refused.status();
  ExpectSameTask(f.MustGet("t1"), before);

  u.from = {TaskState::kQueued, TaskState::kRunning};
  TaskRecord after = f.MustUpdate("t1", u);
  EXPECT_EQ(after.state, TaskState::kCancelled);
}

TEST_P(TaskStoreConformance, UpdateAppliesOnlyAtTheExpectedVersion) {
  FIXTURE(f);
  TaskRecord before = f.Create(NewTask("t1"), At(0));
  TaskUpdate u;
  u.now = At(1);
  u.expected_version = before.version + 1;
  u.state = TaskState::kRunning;
  EXPECT_EQ(f.store().Update("t1", u).status().code(), absl::StatusCode::kFailedPrecondition);
  ExpectSameTask(f.MustGet("t1"), before);

  u.expected_version = before.version;
  TaskRecord after = f.MustUpdate("t1", u);
  EXPECT_EQ(after.state, TaskState::kRunning);
  // The version moved on: the same expectation no longer holds.
  EXPECT_EQ(f.store().Update("t1", u).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_P(TaskStoreConformance, UpdateOfAMissingTaskIsNotFound) {
  FIXTURE(f);
  TaskUpdate u;
  u.now = At(1);
  u.state = TaskState::kRunning;
  EXPECT_EQ(f.store().Update("nope", u).status().code(), absl::StatusCode::kNotFound);
  // NotFound wins over a condition.
  u.from = {TaskState::kQueued};
  u.expected_version = 3;
  EXPECT_EQ(f.store().Update("nope", u).status().code(), absl::StatusCode::kNotFound);
}

TEST_P(TaskStoreConformance, IncrementAttemptsAddsOneAfterAnAttemptsReset) {
  FIXTURE(f);
  TaskRecord t = NewTask("t1");
  t.attempts = 5;
  f.Create(t, At(0));
  TaskUpdate inc;
  inc.now = At(1);
  inc.increment_attempts = true;
  EXPECT_EQ(f.MustUpdate("t1", inc).attempts, 6);
  TaskUpdate reset_and_inc = inc;
  reset_and_inc.attempts = 0;
  EXPECT_EQ(f.MustUpdate("t1", reset_and_inc).attempts, 1);
}

TEST_P(TaskStoreConformance, ConcurrentIncrementsAreNotLost) {
  FIXTURE(f);
  f.Create(NewTask("t1"), At(0));
  const int threads = std::max(2, GetParam().threads);
  constexpr int kPerThread = 50;
  std::vector<TaskStore*> handles = f.Handles(threads);
  ASSERT_EQ(static_cast<int>(handles.size()), threads);
  std::atomic<int> failures{0};
  std::vector<std::thread> workers;
  for (TaskStore* handle : handles) {
    workers.emplace_back([handle, &failures] {
      TaskUpdate inc;
      inc.now = At(1);
      inc.increment_attempts = true;
      for (int i = 0; i < kPerThread; ++i) {
        if (!handle->Update("t1", inc).ok()) ++failures;
      }
    });
  }
  for (std::thread& w : workers) w.join();
  EXPECT_EQ(failures.load(), 0);
  TaskRecord after = f.MustGet("t1");
  EXPECT_EQ(after.attempts, threads * kPerThread);
}

TEST_P(TaskStoreConformance, ConcurrentConditionalUpdatesLetExactlyOneWin) {
  FIXTURE(f);
  constexpr int kTasks = 40;
  for (int i = 0; i < kTasks; ++i) f.Create(NewTask(absl::StrCat("t", i)), At(0));
  const int threads = std::max(2, GetParam().threads);
  std::vector<TaskStore*> handles = f.Handles(threads);
  ASSERT_EQ(static_cast<int>(handles.size()), threads);
  std::mutex mu;
  std::map<std::string, std::vector<std::string>> winners;
  std::atomic<int> unexpected{0};
  std::vector<std::thread> workers;
  for (int w = 0; w < threads; ++w) {
    workers.emplace_back([&, w] {
      const std::string owner = absl::StrCat("exec-", w);
      for (int i = 0; i < kTasks; ++i) {
        TaskUpdate start;
        start.now = At(1);
        start.from = {TaskState::kQueued};
        start.state = TaskState::kRunning;
        start.owner = owner;
        auto r = handles[w]->Update(absl::StrCat("t", i), start);
        if (r.ok()) {
          std::lock_guard lock(mu);
          winners[r->id].push_back(owner);
        } else if (r.status().code() != absl::StatusCode::kFailedPrecondition) {
          ++unexpected;
        }
      }
    });
  }
  for (std::thread& w : workers) w.join();
  EXPECT_EQ(unexpected.load(), 0);
  ASSERT_EQ(winners.size(), static_cast<size_t>(kTasks));
  for (const auto& [id, owners] : winners) {
    ASSERT_EQ(owners.size(), 1u) << id;
    EXPECT_EQ(f.MustGet(id).owner, owners[0]);
  }
}

TEST_P(TaskStoreConformance, HistoryIsAppendedAndReplaced) {
  FIXTURE(f);
  f.Create(NewTask("t1"), At(0));
  TaskUpdate a;
  a.now = At(1);
  a.append_history = R"({"attempt":1,"error":"e1"})";
  EXPECT_EQ(Compact(f.MustUpdate("t1", a).history), R"([{"attempt":1,"error":"e1"}])");
  TaskUpdate b;
  b.now = At(2);
  b.append_history = R"({"attempt":2,"error":"e, \"quoted\" ]"})";
  EXPECT_EQ(Compact(f.MustUpdate("t1", b).history),
            R"([{"attempt":1,"error":"e1"},{"attempt":2,"error":"e, \"quoted\" ]"}])");
  EXPECT_EQ(Compact(f.MustGet("t1").history),
            R"([{"attempt":1,"error":"e1"},{"attempt":2,"error":"e, \"quoted\" ]"}])");
  // Replace, then append in the same update.
  TaskUpdate c;
  c.now = At(3);
  c.history = "[]";
  c.append_history = R"({"attempt":3})";
  EXPECT_EQ(Compact(f.MustUpdate("t1", c).history), R"([{"attempt":3}])");
  TaskUpdate d;
  d.now = At(4);
  d.history = R"([{"tier":"a"}])";
  EXPECT_EQ(Compact(f.MustUpdate("t1", d).history), R"([{"tier":"a"}])");
}

TEST_P(TaskStoreConformance, UpdateManyResultsAreInOrderAndIndependent) {
  FIXTURE(f);
  f.Create(NewTask("a"), At(0));
  TaskRecord b = f.Create(NewTask("b", TaskState::kRunning), At(0));
  f.Create(NewTask("c"), At(0));

  std::vector<TaskUpdateRequest> batch(5);
  batch[0].id = "a";
  batch[0].update.now = At(1);
  batch[0].update.increment_attempts = true;
  batch[1].id = "missing";
  batch[1].update.now = At(1);
  batch[1].update.state = TaskState::kRunning;
  batch[2].id = "b";
  batch[2].update.now = At(1);
  batch[2].update.from = {TaskState::kQueued};
  batch[2].update.state = TaskState::kSucceeded;
  batch[3].id = "c";
  batch[3].update.now = At(1);
  batch[3].update.from = {TaskState::kQueued};
  batch[3].update.state = TaskState::kRunning;
  batch[3].update.owner = "x";
  // The same task again: it sees the first update of the batch.
  batch[4].id = "a";
  batch[4].update.now = At(2);
  batch[4].update.increment_attempts = true;
  batch[4].update.append_history = R"({"n":2})";

  std::vector<absl::StatusOr<TaskRecord>> results = f.store().UpdateMany(batch);
  ASSERT_EQ(results.size(), 5u);
  ASSERT_TRUE(results[0].ok()) << results[0].status();
  EXPECT_EQ(results[0]->id, "a");
  EXPECT_EQ(results[0]->attempts, 1);
  EXPECT_EQ(results[1].status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(results[2].status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(results[3].ok()) << results[3].status();
  EXPECT_EQ(results[3]->id, "c");
  EXPECT_EQ(results[3]->state, TaskState::kRunning);
  EXPECT_EQ(results[3]->owner, "x");
  ASSERT_TRUE(results[4].ok()) << results[4].status();
  EXPECT_EQ(results[4]->attempts, 2);
  EXPECT_GT(results[4]->version, results[0]->version);
  EXPECT_EQ(results[4]->updated_at, At(2));

  ExpectSameTask(f.MustGet("a"), *results[4]);
  ExpectSameTask(f.MustGet("b"), b);
  ExpectSameTask(f.MustGet("c"), *results[3]);

  EXPECT_TRUE(f.store().UpdateMany({}).empty());
}

TEST_P(TaskStoreConformance, UpdateManyOfManyTasks) {
  FIXTURE(f);
  std::vector<TaskUpdateRequest> batch;
  for (int i = 0; i < 300; ++i) {
    const std::string id = absl::StrCat("t", i);
    f.Create(NewTask(id), At(0));
    TaskUpdateRequest r;
    r.id = id;
    r.update.now = At(1);
    r.update.from = {TaskState::kQueued};
    r.update.state = i % 2 == 0 ? TaskState::kSucceeded : TaskState::kFailed;
    r.update.result = absl::StrCat(R"({"i":)", i, "}");
    batch.push_back(r);
  }
  std::vector<absl::StatusOr<TaskRecord>> results = f.store().UpdateMany(batch);
  ASSERT_EQ(results.size(), batch.size());
  for (size_t i = 0; i < results.size(); ++i) {
    ASSERT_TRUE(results[i].ok()) << i << ": " << results[i].status();
    EXPECT_EQ(results[i]->id, batch[i].id);
    EXPECT_EQ(results[i]->result, *batch[i].update.result);
  }
  // A second run of the same batch fails everywhere: the tasks are no longer queued.
  for (const auto& r : f.store().UpdateMany(batch)) {
    EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  }
}

// --- ClaimDue, FindStuck -----------------------------------------------------------------------

TaskRecord ScheduledAt(absl::string_view id, absl::Time run_at) {
  TaskRecord t = NewTask(id, TaskState::kScheduled);
  t.run_at = run_at;
  return t;
}

TEST_P(TaskStoreConformance, ClaimDueTakesDueUnheldScheduledTasksEarliestFirst) {
  FIXTURE(f);
  f.Create(ScheduledAt("s-late", At(10)), At(0));
  f.Create(ScheduledAt("s-early", At(5)), At(0));
  f.Create(ScheduledAt("s-future", At(100)), At(0));
  f.Create(ScheduledAt("s-now", At(20)), At(0));  // run_at == now is due
  TaskRecord queued = NewTask("queued");
  queued.run_at = At(1);
  f.Create(queued, At(0));
  TaskRecord retrying = NewTask("retrying", TaskState::kRetrying);
  retrying.run_at = At(1);
  f.Create(retrying, At(0));

  auto claimed = f.store().ClaimDue(At(20), absl::Seconds(30), 10, "exec-a");
  ASSERT_TRUE(claimed.ok()) << claimed.status();
  EXPECT_EQ(IdsOf(*claimed), (std::vector<std::string>{"s-early", "s-late", "s-now"}));
  for (const TaskRecord& t : *claimed) {
    EXPECT_EQ(t.owner, "exec-a");
    EXPECT_EQ(t.lease_until, At(50));
    EXPECT_EQ(t.state, TaskState::kScheduled);
    EXPECT_EQ(t.updated_at, At(20));
    ExpectSameTask(f.MustGet(t.id), t);
  }

  // Held: nobody else claims them while the lease runs, even once they are long due.
  auto none = f.store().ClaimDue(At(49), absl::Seconds(30), 10, "exec-b");
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty()) << IdsOf(*none).size();

  // The lease ran out (the claimer crashed before publishing): claimable again.
  auto again = f.store().ClaimDue(At(51), absl::Seconds(30), 2, "exec-b");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(IdsOf(*again), (std::vector<std::string>{"s-early", "s-late"}));
  for (const TaskRecord& t : *again) {
    EXPECT_EQ(t.owner, "exec-b");
    EXPECT_EQ(t.lease_until, At(81));
  }
  auto rest = f.store().ClaimDue(At(51), absl::Seconds(30), 10, "exec-c");
  ASSERT_TRUE(rest.ok());
  EXPECT_EQ(IdsOf(*rest), (std::vector<std::string>{"s-now"}));
}

TEST_P(TaskStoreConformance, ClaimedTaskMovedToQueuedIsNotClaimedAgain) {
  FIXTURE(f);
  f.Create(ScheduledAt("s1", At(1)), At(0));
  auto claimed = f.store().ClaimDue(At(2), absl::Seconds(10), 10, "exec-a");
  ASSERT_TRUE(claimed.ok());
  ASSERT_EQ(claimed->size(), 1u);
  TaskUpdate published;
  published.now = At(3);
  published.from = {TaskState::kScheduled};
  published.expected_version = (*claimed)[0].version;
  published.state = TaskState::kQueued;
  published.owner = "";
  published.lease_until = absl::InfinitePast();
  f.MustUpdate("s1", published);
  auto later = f.store().ClaimDue(At(100), absl::Seconds(10), 10, "exec-b");
  ASSERT_TRUE(later.ok());
  EXPECT_TRUE(later->empty());
}

TEST_P(TaskStoreConformance, RescheduledTaskIsClaimedAtItsNewTime) {
  FIXTURE(f);
  f.Create(ScheduledAt("s1", At(10)), At(0));
  TaskUpdate later;
  later.now = At(1);
  later.run_at = At(50);
  f.MustUpdate("s1", later);
  auto early = f.store().ClaimDue(At(20), absl::Seconds(10), 10, "x");
  ASSERT_TRUE(early.ok());
  EXPECT_TRUE(early->empty());
  auto due = f.store().ClaimDue(At(50), absl::Seconds(10), 10, "x");
  ASSERT_TRUE(due.ok());
  EXPECT_EQ(IdsOf(*due), (std::vector<std::string>{"s1"}));
  // A task scheduled by an update (e.g. a retry for later) is found too.
  f.Create(NewTask("q1"), At(0));
  TaskUpdate schedule;
  schedule.now = At(51);
  schedule.state = TaskState::kScheduled;
  schedule.run_at = At(55);
  f.MustUpdate("q1", schedule);
  auto q = f.store().ClaimDue(At(55), absl::Seconds(10), 10, "x");
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(IdsOf(*q), (std::vector<std::string>{"q1"}));
}

TEST_P(TaskStoreConformance, ClaimDueNeverGivesOneTaskToTwoClaimers) {
  FIXTURE(f);
  constexpr int kTasks = 300;
  for (int i = 0; i < kTasks; ++i) {
    f.Create(ScheduledAt(absl::StrFormat("s%03d", i), At(i % 17)), At(0));
  }
  const int threads = std::max(2, GetParam().threads);
  std::vector<TaskStore*> handles = f.Handles(threads);
  ASSERT_EQ(static_cast<int>(handles.size()), threads);
  std::mutex mu;
  std::map<std::string, std::vector<std::string>> claims;
  int batches = 0;  // guarded by mu
  std::atomic<int> errors{0};
  std::vector<std::thread> workers;
  for (int w = 0; w < threads; ++w) {
    workers.emplace_back([&, w] {
      const std::string owner = absl::StrCat("exec-", w);
      for (;;) {
        auto claimed = handles[w]->ClaimDue(At(100), absl::Minutes(5), 7, owner);
        if (!claimed.ok()) {
          ++errors;
          return;
        }
        if (claimed->empty()) return;
        std::lock_guard lock(mu);
        for (const TaskRecord& t : *claimed) claims[t.id].push_back(owner);
        // A store that hands out held tasks would never run dry: stop, and let the
        // checks below fail.
        if (++batches > 4 * kTasks) return;
      }
    });
  }
  for (std::thread& w : workers) w.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(claims.size(), static_cast<size_t>(kTasks));
  for (const auto& [id, owners] : claims) {
    ASSERT_EQ(owners.size(), 1u) << id << " claimed by several executors";
    EXPECT_EQ(f.MustGet(id).owner, owners[0]);
  }
}

TEST_P(TaskStoreConformance, FindStuckReturnsRunningTasksPastTheirLeaseOldestFirst) {
  FIXTURE(f);
  auto running = [&](absl::string_view id, absl::Time lease_until) {
    TaskRecord t = NewTask(id, TaskState::kRunning);
    t.owner = "exec-a";
    t.lease_until = lease_until;
    f.Create(t, At(0));
  };
  running("r-10", At(10));
  running("r-5", At(5));
  running("r-100", At(100));
  running("r-20", At(20));  // lease_until == now is not stuck yet
  TaskRecord queued = NewTask("queued");
  queued.lease_until = At(1);
  f.Create(queued, At(0));
  TaskRecord scheduled = ScheduledAt("scheduled", At(1));
  scheduled.lease_until = At(1);
  f.Create(scheduled, At(0));
  TaskRecord before = f.MustGet("r-5");

  auto stuck = f.store().FindStuck(At(20), 10);
  ASSERT_TRUE(stuck.ok()) << stuck.status();
  EXPECT_EQ(IdsOf(*stuck), (std::vector<std::string>{"r-5", "r-10"}));
  auto first = f.store().FindStuck(At(20), 1);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(IdsOf(*first), (std::vector<std::string>{"r-5"}));
  // Finding is not claiming: nothing changed.
  ExpectSameTask(f.MustGet("r-5"), before);

  // A renewed lease takes a task off the list; a finished task is never stuck.
  TaskUpdate renew;
  renew.now = At(21);
  renew.lease_until = At(200);
  f.MustUpdate("r-5", renew);
  f.Finish("r-10", TaskState::kSucceeded, At(21));
  auto after = f.store().FindStuck(At(150), 10);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(IdsOf(*after), (std::vector<std::string>{"r-20", "r-100"}));
}

// --- List, Stats, PurgeExpired -----------------------------------------------------------------

TEST_P(TaskStoreConformance, ListPagesNewestFirstWithACursor) {
  FIXTURE(f);
  std::vector<std::string> want;  // newest first
  // 23 tasks; groups of three share a created_at, so ties are ordered by id (descending).
  for (int i = 0; i < 23; ++i) {
    f.Create(NewTask(absl::StrFormat("t%02d", i)), At(i / 3));
  }
  for (int i = 22; i >= 0; --i) want.push_back(absl::StrFormat("t%02d", i));

  for (int limit : {1, 5, 10, 23, 100}) {
    SCOPED_TRACE(absl::StrCat("limit ", limit));
    std::vector<std::string> got;
    ListQuery query;
    query.limit = limit;
    int pages = 0;
    for (;;) {
      auto page = f.store().List(query);
      ASSERT_TRUE(page.ok()) << page.status();
      ASSERT_LE(static_cast<int>(page->tasks.size()), limit);
      for (const TaskRecord& t : page->tasks) got.push_back(t.id);
      ++pages;
      ASSERT_LE(pages, 30);
      if (page->next_cursor.empty()) break;
      query.cursor = page->next_cursor;
    }
    EXPECT_EQ(got, want);
    EXPECT_EQ(pages, (23 + limit - 1) / limit) << "an exactly full last page has no cursor";
  }
}

TEST_P(TaskStoreConformance, ListFiltersByStateTypeAndSchedule) {
  FIXTURE(f);
  f.Create(NewTask("q-call", TaskState::kQueued, "call"), At(1));
  f.Create(NewTask("q-set", TaskState::kQueued, "set"), At(2));
  f.Create(NewTask("r-call", TaskState::kRunning, "call"), At(3));
  TaskRecord s1 = NewTask("sched-run-1", TaskState::kSucceeded, "call");
  s1.schedule_id = "hourly";
  f.Create(s1, At(4));
  TaskRecord s2 = NewTask("sched-run-2", TaskState::kQueued, "call");
  s2.schedule_id = "hourly";
  f.Create(s2, At(5));
  TaskRecord s3 = NewTask("other-sched", TaskState::kQueued, "call");
  s3.schedule_id = "daily";
  f.Create(s3, At(6));

  auto ids = [&](ListQuery q) {
    auto page = f.store().List(q);
    EXPECT_TRUE(page.ok()) << page.status();
    return page.ok() ? IdsOf(page->tasks) : std::vector<std::string>{};
  };
  ListQuery by_state;
  by_state.state = TaskState::kQueued;
  EXPECT_EQ(ids(by_state),
            (std::vector<std::string>{"other-sched", "sched-run-2", "q-set", "q-call"}));
  ListQuery by_type;
  by_type.type = "set";
  EXPECT_EQ(ids(by_type), (std::vector<std::string>{"q-set"}));
  ListQuery by_schedule;
  by_schedule.schedule_id = "hourly";
  EXPECT_EQ(ids(by_schedule), (std::vector<std::string>{"sched-run-2", "sched-run-1"}));
  ListQuery all_three;
  all_three.state = TaskState::kQueued;
  all_three.type = "call";
  all_three.schedule_id = "hourly";
  EXPECT_EQ(ids(all_three), (std::vector<std::string>{"sched-run-2"}));
  ListQuery none;
  none.state = TaskState::kDeadLettered;
  EXPECT_TRUE(ids(none).empty());

  // Filters page too: the state changes after creation are seen.
  TaskUpdate u;
  u.now = At(7);
  u.state = TaskState::kQueued;
  f.MustUpdate("r-call", u);
  ListQuery paged;
  paged.state = TaskState::kQueued;
  paged.type = "call";
  paged.limit = 2;
  auto p1 = f.store().List(paged);
  ASSERT_TRUE(p1.ok());
  EXPECT_EQ(IdsOf(p1->tasks), (std::vector<std::string>{"other-sched", "sched-run-2"}));
  ASSERT_FALSE(p1->next_cursor.empty());
  paged.cursor = p1->next_cursor;
  auto p2 = f.store().List(paged);
  ASSERT_TRUE(p2.ok());
  EXPECT_EQ(IdsOf(p2->tasks), (std::vector<std::string>{"r-call", "q-call"}));
  EXPECT_TRUE(p2->next_cursor.empty());
}

TEST_P(TaskStoreConformance, ListRejectsABadLimitOrCursor) {
  FIXTURE(f);
  f.Create(NewTask("t1"), At(0));
  for (int limit : {0, -1, 1001}) {
    ListQuery q;
    q.limit = limit;
    EXPECT_EQ(f.store().List(q).status().code(), absl::StatusCode::kInvalidArgument) << limit;
  }
  ListQuery max;
  max.limit = 1000;
  EXPECT_TRUE(f.store().List(max).ok());
  ListQuery garbage;
  garbage.cursor = "not a cursor";
  EXPECT_EQ(f.store().List(garbage).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(TaskStoreConformance, StatsCountPerTypeAndStateWithTheOldestQueued) {
  FIXTURE(f);
  auto empty = f.store().Stats();
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE(empty->empty());

  f.Create(NewTask("c1", TaskState::kQueued, "call"), At(10));
  f.Create(NewTask("c2", TaskState::kQueued, "call"), At(5));
  f.Create(NewTask("c3", TaskState::kRunning, "call"), At(1));
  f.Create(NewTask("c4", TaskState::kQueued, "call"), At(7));
  f.Finish("c4", TaskState::kDeadLettered, At(8));
  f.Create(ScheduledAt("c5", At(100)), At(2));
  f.Create(NewTask("s1", TaskState::kRunning, "set"), At(3));
  f.Create(NewTask("s2", TaskState::kRetrying, "set"), At(3));
  f.Create(NewTask("s3", TaskState::kQueued, "set"), At(3));
  f.Finish("s3", TaskState::kSucceeded, At(4));
  f.Create(NewTask("s4", TaskState::kQueued, "set"), At(3));
  f.Finish("s4", TaskState::kCancelled, At(4));
  f.Create(NewTask("w1", TaskState::kQueued, "wait"), At(3));
  f.Finish("w1", TaskState::kFailed, At(4));

  auto stats = f.store().Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  std::map<std::string, TypeStats> by_type;
  for (const TypeStats& s : *stats) {
    EXPECT_TRUE(by_type.emplace(s.type, s).second) << "type twice: " << s.type;
  }
  ASSERT_EQ(by_type.size(), 3u);
  auto count = [&](const std::string& type, TaskState state) {
    return by_type[type].counts[static_cast<int>(state)];
  };
  EXPECT_EQ(count("call", TaskState::kQueued), 2);
  EXPECT_EQ(count("call", TaskState::kRunning), 1);
  EXPECT_EQ(count("call", TaskState::kDeadLettered), 1);
  EXPECT_EQ(count("call", TaskState::kScheduled), 1);
  EXPECT_EQ(count("call", TaskState::kSucceeded), 0);
  EXPECT_EQ(by_type["call"].oldest_queued_created_at, At(5));
  EXPECT_EQ(count("set", TaskState::kRunning), 1);
  EXPECT_EQ(count("set", TaskState::kRetrying), 1);
  EXPECT_EQ(count("set", TaskState::kSucceeded), 1);
  EXPECT_EQ(count("set", TaskState::kCancelled), 1);
  EXPECT_EQ(count("set", TaskState::kQueued), 0);
  EXPECT_EQ(by_type["set"].oldest_queued_created_at, absl::InfiniteFuture());
  EXPECT_EQ(count("wait", TaskState::kFailed), 1);
  int64_t total = 0;
  for (const auto& [type, s] : by_type) {
    for (int64_t c : s.counts) total += c;
  }
  EXPECT_EQ(total, 10);

  // Counts follow transitions and purges.
  TaskUpdate start;
  start.now = At(20);
  start.state = TaskState::kRunning;
  f.MustUpdate("c2", start);
  auto purged = f.store().PurgeExpired(At(30), 100);  // nothing expires (kept forever)
  ASSERT_TRUE(purged.ok());
  EXPECT_EQ(*purged, 0);
  f.Finish("w1", TaskState::kFailed, At(21), /*expires_at=*/At(22));
  ASSERT_EQ(*f.store().PurgeExpired(At(30), 100), 1);
  auto later = f.store().Stats();
  ASSERT_TRUE(later.ok());
  by_type.clear();
  for (const TypeStats& s : *later) by_type.emplace(s.type, s);
  EXPECT_EQ(by_type.count("wait"), 0u) << "a type with no tasks is absent";
  EXPECT_EQ(count("call", TaskState::kQueued), 1);
  EXPECT_EQ(count("call", TaskState::kRunning), 2);
  EXPECT_EQ(by_type["call"].oldest_queued_created_at, At(10));
}

TEST_P(TaskStoreConformance, PurgeExpiredDeletesOnlyExpiredFinalTasks) {
  FIXTURE(f);
  for (TaskState final_state : {TaskState::kSucceeded, TaskState::kFailed,
                                TaskState::kDeadLettered, TaskState::kCancelled}) {
    const std::string id = absl::StrCat("old-", TaskStateName(final_state));
    f.Create(NewTask(id), At(0));
    f.Finish(id, final_state, At(1), /*expires_at=*/At(10));
  }
  f.Create(NewTask("young"), At(0));
  f.Finish("young", TaskState::kSucceeded, At(1), /*expires_at=*/At(11));
  f.Create(NewTask("kept"), At(0));
  f.Finish("kept", TaskState::kSucceeded, At(1));  // expires_at = InfiniteFuture
  // Not final: never purged, whatever expires_at says.
  TaskRecord running = NewTask("running", TaskState::kRunning);
  running.expires_at = At(2);
  f.Create(running, At(0));

  auto first = f.store().PurgeExpired(At(10), 3);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(*first, 3);
  auto second = f.store().PurgeExpired(At(10), 3);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(*second, 1);
  EXPECT_EQ(*f.store().PurgeExpired(At(10), 3), 0);
  for (TaskState final_state : {TaskState::kSucceeded, TaskState::kFailed,
                                TaskState::kDeadLettered, TaskState::kCancelled}) {
    EXPECT_EQ(f.store().Get(absl::StrCat("old-", TaskStateName(final_state))).status().code(),
              absl::StatusCode::kNotFound);
  }
  EXPECT_TRUE(f.store().Get("young").ok());
  EXPECT_TRUE(f.store().Get("kept").ok());
  EXPECT_TRUE(f.store().Get("running").ok());
  EXPECT_EQ(*f.store().PurgeExpired(At(11), 100), 1);
  EXPECT_EQ(f.store().Get("young").status().code(), absl::StatusCode::kNotFound);

  // Purged tasks are gone from every query, and their id is free again.
  ListQuery all;
  auto page = f.store().List(all);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(IdsOf(page->tasks), (std::vector<std::string>{"running", "kept"}));
  auto many = f.store().GetMany({"young", "old-failed", "kept"});
  ASSERT_TRUE(many.ok());
  EXPECT_EQ(IdsOf(*many), (std::vector<std::string>{"kept"}));
  f.Create(NewTask("young"), At(20));
}

TEST_P(TaskStoreConformance, ManualRetryMovesAFinalTaskOutAgain) {
  FIXTURE(f);
  TaskRecord t = NewTask("t1");
  t.attempts = 3;
  f.Create(t, At(0));
  f.Finish("t1", TaskState::kDeadLettered, At(5), /*expires_at=*/At(100));
  TaskUpdate retry;
  retry.now = At(10);
  retry.from = {TaskState::kFailed, TaskState::kDeadLettered};
  retry.state = TaskState::kQueued;
  retry.attempts = 0;
  retry.finished_at = absl::InfinitePast();
  retry.expires_at = absl::InfiniteFuture();
  TaskRecord retried = f.MustUpdate("t1", retry);
  EXPECT_EQ(retried.state, TaskState::kQueued);
  EXPECT_EQ(retried.attempts, 0);
  // No longer final: not purged at its old expiry.
  EXPECT_EQ(*f.store().PurgeExpired(At(200), 100), 0);
  EXPECT_TRUE(f.store().Get("t1").ok());
}

// --- Schedules ---------------------------------------------------------------------------------

Schedule NewSchedule(absl::string_view id, absl::Time next_run_at) {
  Schedule s;
  s.id = std::string(id);
  s.type = "call";
  s.request = absl::StrCat(R"({"type":"call","schedule":")", id, R"("})");
  s.interval = absl::Minutes(5);
  s.next_run_at = next_run_at;
  return s;
}

TEST_P(TaskStoreConformance, ScheduleCreateGetListDelete) {
  FIXTURE(f);
  Schedule cron = NewSchedule("nightly", At(3600));
  cron.cron = "30 2 * * 1-5";
  cron.time_zone = "Europe/Berlin";
  cron.interval = absl::ZeroDuration();
  cron.missed_policy = "run_once";
  cron.last_run_at = At(-86400);
  cron.last_task_id = "nightly@2026-12-01T01:30:00Z";
  cron.paused = true;
  auto created = f.store().CreateSchedule(cron, At(0));
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_GT(created->version, 0);
  Schedule want = cron;
  want.created_at = At(0);
  want.version = created->version;
  ExpectSameSchedule(*created, want);
  auto got = f.store().GetSchedule("nightly");
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSameSchedule(*got, want);

  Schedule every = NewSchedule("every-5m", At(300));
  every.interval = absl::Minutes(5) + absl::Milliseconds(250);
  auto second = f.store().CreateSchedule(every, At(1));
  ASSERT_TRUE(second.ok()) << second.status();
  auto got_every = f.store().GetSchedule("every-5m");
  ASSERT_TRUE(got_every.ok());
  EXPECT_EQ(got_every->interval, absl::Minutes(5) + absl::Milliseconds(250));
  EXPECT_EQ(got_every->missed_policy, "skip");
  EXPECT_EQ(got_every->last_run_at, absl::InfinitePast());
  EXPECT_EQ(got_every->lease_until, absl::InfinitePast());

  Schedule duplicate = NewSchedule("nightly", At(5));
  EXPECT_EQ(f.store().CreateSchedule(duplicate, At(2)).status().code(),
            absl::StatusCode::kAlreadyExists);
  ExpectSameSchedule(*f.store().GetSchedule("nightly"), want);
  EXPECT_EQ(f.store().CreateSchedule(NewSchedule("", At(5)), At(2)).status().code(),
            absl::StatusCode::kInvalidArgument);

  auto listed = f.store().ListSchedules();
  ASSERT_TRUE(listed.ok()) << listed.status();
  std::set<std::string> ids;
  for (const Schedule& s : *listed) ids.insert(s.id);
  EXPECT_EQ(ids, (std::set<std::string>{"nightly", "every-5m"}));

  EXPECT_TRUE(f.store().DeleteSchedule("nightly").ok());
  EXPECT_EQ(f.store().GetSchedule("nightly").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(f.store().DeleteSchedule("nightly").code(), absl::StatusCode::kNotFound);
  auto after = f.store().ListSchedules();
  ASSERT_TRUE(after.ok());
  ASSERT_EQ(after->size(), 1u);
  EXPECT_EQ((*after)[0].id, "every-5m");
  // A deleted schedule's id can be used again.
  EXPECT_TRUE(f.store().CreateSchedule(NewSchedule("nightly", At(10)), At(3)).ok());
}

TEST_P(TaskStoreConformance, ClaimDueSchedulesSkipsPausedHeldAndFutureOnes) {
  FIXTURE(f);
  ASSERT_TRUE(f.store().CreateSchedule(NewSchedule("late", At(10)), At(0)).ok());
  ASSERT_TRUE(f.store().CreateSchedule(NewSchedule("early", At(5)), At(0)).ok());
  ASSERT_TRUE(f.store().CreateSchedule(NewSchedule("future", At(100)), At(0)).ok());
  Schedule paused = NewSchedule("paused", At(1));
  paused.paused = true;
  ASSERT_TRUE(f.store().CreateSchedule(paused, At(0)).ok());

  auto claimed = f.store().ClaimDueSchedules(At(10), absl::Seconds(30), 10, "exec-a");
  ASSERT_TRUE(claimed.ok()) << claimed.status();
  ASSERT_EQ(claimed->size(), 2u);
  EXPECT_EQ((*claimed)[0].id, "early");
  EXPECT_EQ((*claimed)[1].id, "late");
  for (const Schedule& s : *claimed) {
    EXPECT_EQ(s.owner, "exec-a");
    EXPECT_EQ(s.lease_until, At(40));
    ExpectSameSchedule(*f.store().GetSchedule(s.id), s);
  }
  auto held = f.store().ClaimDueSchedules(At(39), absl::Seconds(30), 10, "exec-b");
  ASSERT_TRUE(held.ok());
  EXPECT_TRUE(held->empty());
  auto expired = f.store().ClaimDueSchedules(At(41), absl::Seconds(30), 1, "exec-b");
  ASSERT_TRUE(expired.ok());
  ASSERT_EQ(expired->size(), 1u);
  EXPECT_EQ((*expired)[0].id, "early");
  EXPECT_EQ((*expired)[0].owner, "exec-b");
}

TEST_P(TaskStoreConformance, AdvanceScheduleChecksTheVersionAndReleasesTheClaim) {
  FIXTURE(f);
  ASSERT_TRUE(f.store().CreateSchedule(NewSchedule("s", At(10)), At(0)).ok());
  auto claimed = f.store().ClaimDueSchedules(At(10), absl::Seconds(30), 10, "exec-a");
  ASSERT_TRUE(claimed.ok());
  ASSERT_EQ(claimed->size(), 1u);
  const Schedule mine = (*claimed)[0];

  EXPECT_EQ(f.store()
                .AdvanceSchedule("s", mine.version + 1, At(310), At(10), "s@10", At(11))
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(f.store().AdvanceSchedule("nope", 1, At(310), At(10), "x", At(11)).status().code(),
            absl::StatusCode::kNotFound);

  auto advanced = f.store().AdvanceSchedule("s", mine.version, At(310), At(10), "s@10", At(11));
  ASSERT_TRUE(advanced.ok()) << advanced.status();
  EXPECT_EQ(advanced->next_run_at, At(310));
  EXPECT_EQ(advanced->last_run_at, At(10));
  EXPECT_EQ(advanced->last_task_id, "s@10");
  EXPECT_EQ(advanced->owner, "");
  EXPECT_EQ(advanced->lease_until, absl::InfinitePast());
  EXPECT_GT(advanced->version, mine.version);
  ExpectSameSchedule(*f.store().GetSchedule("s"), *advanced);
  // The same claim cannot advance twice.
  EXPECT_EQ(f.store()
                .AdvanceSchedule("s", mine.version, At(610), At(310), "s@310", At(12))
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);

  // Released: due again at its next time, although the old lease (At(40)) would still run.
  auto early = f.store().ClaimDueSchedules(At(309), absl::Seconds(30), 10, "exec-b");
  ASSERT_TRUE(early.ok());
  EXPECT_TRUE(early->empty());
  auto next = f.store().ClaimDueSchedules(At(310), absl::Seconds(30), 10, "exec-b");
  ASSERT_TRUE(next.ok());
  ASSERT_EQ(next->size(), 1u);
  EXPECT_EQ((*next)[0].owner, "exec-b");

  // A schedule deleted and created again is another schedule: the old claim cannot advance it.
  ASSERT_TRUE(f.store().DeleteSchedule("s").ok());
  ASSERT_TRUE(f.store().CreateSchedule(NewSchedule("s", At(400)), At(320)).ok());
  EXPECT_EQ(f.store()
                .AdvanceSchedule("s", (*next)[0].version, At(999), At(310), "s@310", At(321))
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_P(TaskStoreConformance, ClaimDueSchedulesNeverGivesOneRunToTwoClaimers) {
  FIXTURE(f);
  constexpr int kSchedules = 60;
  for (int i = 0; i < kSchedules; ++i) {
    ASSERT_TRUE(
        f.store().CreateSchedule(NewSchedule(absl::StrCat("s", i), At(i % 7)), At(0)).ok());
  }
  const int threads = std::max(2, GetParam().threads);
  std::vector<TaskStore*> handles = f.Handles(threads);
  ASSERT_EQ(static_cast<int>(handles.size()), threads);
  std::mutex mu;
  std::map<std::string, std::vector<std::string>> claims;
  int batches = 0;  // guarded by mu
  std::atomic<int> errors{0};
  std::vector<std::thread> workers;
  for (int w = 0; w < threads; ++w) {
    workers.emplace_back([&, w] {
      const std::string owner = absl::StrCat("exec-", w);
      for (;;) {
        auto claimed = handles[w]->ClaimDueSchedules(At(10), absl::Minutes(1), 3, owner);
        if (!claimed.ok()) {
          ++errors;
          return;
        }
        if (claimed->empty()) return;
        std::lock_guard lock(mu);
        for (const Schedule& s : *claimed) claims[s.id].push_back(owner);
        if (++batches > 4 * kSchedules) return;
      }
    });
  }
  for (std::thread& w : workers) w.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(claims.size(), static_cast<size_t>(kSchedules));
  for (const auto& [id, owners] : claims) {
    EXPECT_EQ(owners.size(), 1u) << id << " claimed by several executors";
  }
}

// --- Executor instances ------------------------------------------------------------------------

InstanceRecord NewInstance(absl::string_view name, int in_flight = 0) {
  InstanceRecord r;
  r.name = std::string(name);
  r.group = "workers";
  r.request_stream = "io.flunq.task.requested";
  r.backend = "redis";
  r.host = "host-1";
  r.version = "0.1.0";
  r.ready = true;
  r.in_flight = in_flight;
  r.running = in_flight / 2;
  r.stuck_workers = 1;
  r.concurrency = 64;
  r.started_at = At(-100);
  r.heartbeat_interval = absl::Seconds(5);
  return r;
}

std::vector<std::string> NamesOf(const absl::StatusOr<std::vector<InstanceRecord>>& listed) {
  std::vector<std::string> names;
  EXPECT_TRUE(listed.ok()) << listed.status();
  if (!listed.ok()) return names;
  for (const InstanceRecord& r : *listed) names.push_back(r.name);
  return names;
}

TEST_P(TaskStoreConformance, PutInstanceThenListRoundTripsEveryField) {
  Fixture f(GetParam());
  ASSERT_TRUE(f.ok());
  InstanceRecord want = NewInstance("exec a/1", 7);
  want.ready = false;
  ASSERT_TRUE(f.store().PutInstance(want, At(0), absl::Seconds(30)).ok());
  auto listed = f.store().ListInstances(At(1));
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 1u);
  const InstanceRecord& got = (*listed)[0];
  EXPECT_EQ(got.name, want.name);
  EXPECT_EQ(got.group, want.group);
  EXPECT_EQ(got.request_stream, want.request_stream);
  EXPECT_EQ(got.backend, want.backend);
  EXPECT_EQ(got.host, want.host);
  EXPECT_EQ(got.version, want.version);
  EXPECT_EQ(got.ready, false);
  EXPECT_EQ(got.in_flight, 7);
  EXPECT_EQ(got.running, 3);
  EXPECT_EQ(got.stuck_workers, 1);
  EXPECT_EQ(got.concurrency, 64);
  EXPECT_EQ(got.started_at, want.started_at);
  EXPECT_EQ(got.heartbeat_interval, absl::Seconds(5));
  EXPECT_EQ(got.last_seen, At(0));
  EXPECT_EQ(got.expires_at, At(30));
}

TEST_P(TaskStoreConformance, PutInstanceReplacesTheRecordOfItsName) {
  Fixture f(GetParam());
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE(f.store().PutInstance(NewInstance("exec-a", 1), At(0), absl::Seconds(30)).ok());
  ASSERT_TRUE(f.store().PutInstance(NewInstance("exec-a", 3), At(5), absl::Seconds(30)).ok());
  auto listed = f.store().ListInstances(At(6));
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].in_flight, 3);
  EXPECT_EQ((*listed)[0].last_seen, At(5));
  EXPECT_EQ((*listed)[0].expires_at, At(35));
}

TEST_P(TaskStoreConformance, InstancesExpireAfterTheirTtlAndTheNextPutDeletesThem) {
  Fixture f(GetParam());
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE(f.store().PutInstance(NewInstance("short"), At(0), absl::Seconds(10)).ok());
  ASSERT_TRUE(f.store().PutInstance(NewInstance("long"), At(0), absl::Seconds(30)).ok());
  EXPECT_EQ(NamesOf(f.store().ListInstances(At(9))), (std::vector<std::string>{"long", "short"}));
  // Gone at expires_at itself.
  EXPECT_EQ(NamesOf(f.store().ListInstances(At(10))), (std::vector<std::string>{"long"}));
  EXPECT_EQ(NamesOf(f.store().ListInstances(At(30))), std::vector<std::string>{});
  // Listing deletes nothing: asked about an earlier time, both are there ...
  EXPECT_EQ(NamesOf(f.store().ListInstances(At(5))), (std::vector<std::string>{"long", "short"}));
  // ... but a put at 20 s deletes the one that expired by then (a dead process's name).
  ASSERT_TRUE(f.store().PutInstance(NewInstance("fresh"), At(20), absl::Seconds(30)).ok());
  EXPECT_EQ(NamesOf(f.store().ListInstances(At(5))), (std::vector<std::string>{"fresh", "long"}));
}

TEST_P(TaskStoreConformance, SeveralInstancesAreListedByNameAndDeletedOneByOne) {
  Fixture f(GetParam());
  ASSERT_TRUE(f.ok());
  for (const char* name : {"exec-c", "exec-a", "exec-b"}) {
    ASSERT_TRUE(f.store().PutInstance(NewInstance(name), At(0), absl::Seconds(30)).ok());
  }
  EXPECT_EQ(NamesOf(f.store().ListInstances(At(1))),
            (std::vector<std::string>{"exec-a", "exec-b", "exec-c"}));
  EXPECT_TRUE(f.store().DeleteInstance("exec-b").ok());
  EXPECT_EQ(NamesOf(f.store().ListInstances(At(1))),
            (std::vector<std::string>{"exec-a", "exec-c"}));
  EXPECT_TRUE(f.store().DeleteInstance("exec-b").ok()) << "deleting again is no error";
  EXPECT_TRUE(f.store().DeleteInstance("never-there").ok());
  EXPECT_EQ(NamesOf(f.store().ListInstances(At(1))),
            (std::vector<std::string>{"exec-a", "exec-c"}));
}

TEST_P(TaskStoreConformance, PutInstanceRejectsABadNameOrTtl) {
  Fixture f(GetParam());
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f.store().PutInstance(NewInstance(""), At(0), absl::Seconds(30)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.store().PutInstance(NewInstance(std::string(201, 'x')), At(0), absl::Seconds(30))
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.store().PutInstance(NewInstance("exec-a"), At(0), absl::ZeroDuration()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(NamesOf(f.store().ListInstances(At(0))), std::vector<std::string>{});
}

TEST_P(TaskStoreConformance, ConcurrentHeartbeatsOfSeveralInstancesAreAllKept) {
  Fixture f(GetParam());
  ASSERT_TRUE(f.ok());
  const int threads = GetParam().threads;
  std::vector<TaskStore*> handles = f.Handles(threads);
  ASSERT_EQ(handles.size(), static_cast<size_t>(threads));
  // Every thread beats for its own instance; one short-lived instance expires on the way, so
  // the deletion of expired records races with the others' upserts.
  ASSERT_TRUE(f.store().PutInstance(NewInstance("gone"), At(0), absl::Seconds(1)).ok());
  std::atomic<int> errors{0};
  std::vector<std::thread> workers;
  for (int w = 0; w < threads; ++w) {
    workers.emplace_back([&, w] {
      for (int beat = 0; beat < 10; ++beat) {
        if (!handles[w]->PutInstance(NewInstance(absl::StrCat("exec-", w), beat),
                                     At(1 + beat), absl::Seconds(30))
                 .ok()) {
          ++errors;
        }
      }
    });
  }
  for (std::thread& w : workers) w.join();
  EXPECT_EQ(errors.load(), 0);
  auto listed = f.store().ListInstances(At(11));
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), static_cast<size_t>(threads));
  for (const InstanceRecord& r : *listed) {
    EXPECT_EQ(r.in_flight, 9) << r.name;
    EXPECT_EQ(r.last_seen, At(10)) << r.name;
  }
  // "gone" expired at 1 s and was deleted by a later put: not there even when asked about 0 s.
  std::vector<std::string> at_zero = NamesOf(f.store().ListInstances(At(0)));
  EXPECT_EQ(at_zero.size(), static_cast<size_t>(threads));
  EXPECT_EQ(std::count(at_zero.begin(), at_zero.end(), "gone"), 0);
}

}  // namespace
}  // namespace eventbus::taskstore::conformance
