// The PostgreSQL task store beyond the conformance suite, against a real server this binary
// starts: executors (separate connection pools) competing for claims, migrations (an older
// schema, a newer one, two executors migrating at once), connection URLs and their secrets,
// a server crash, and values that must never become SQL.
#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "eventbus/harness/postgres_server.h"
#include "eventbus/taskstore/postgres_task_store.h"
#include "gtest/gtest.h"
#include "postgres_test_server.h"

namespace eventbus::taskstore {
namespace {

using pgtest::FreshSchemaUrl;
using pgtest::Server;

const absl::Time kT0 = absl::FromUnixSeconds(1'800'000'000);

std::unique_ptr<TaskStore> OpenOrDie(const std::string& url, int pool_size = 4) {
  PostgresTaskStoreOptions options;
  options.url = url;
  options.pool_size = pool_size;
  absl::StatusOr<std::unique_ptr<TaskStore>> store = OpenPostgresTaskStore(options);
  EXPECT_TRUE(store.ok()) << store.status();
  if (!store.ok()) std::abort();
  return std::move(store).value();
}

std::unique_ptr<TaskStore> OpenMigrated(const std::string& url, int pool_size = 4) {
  std::unique_ptr<TaskStore> store = OpenOrDie(url, pool_size);
  absl::Status migrated = store->Migrate();
  EXPECT_TRUE(migrated.ok()) << migrated;
  return store;
}

TaskRecord Task(const std::string& id, TaskState state = TaskState::kQueued) {
  TaskRecord task;
  task.id = id;
  task.type = "call";
  task.state = state;
  task.request = absl::StrCat(R"({"id":")", id, R"(","type":"call"})");
  return task;
}

// The schema name a FreshSchemaUrl selects (its search_path).
std::string SchemaOf(const std::string& url) {
  const std::vector<std::string> parts = absl::StrSplit(url, "%3D");
  return parts.back();
}

std::string Sql(const std::string& sql) {
  absl::StatusOr<std::string> out = Server().Psql("", sql);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? std::string(absl::StripAsciiWhitespace(*out)) : "";
}

std::string AppliedVersions(const std::string& schema) {
  return Sql(absl::StrCat("SELECT string_agg(version::text, ',' ORDER BY version) FROM ", schema,
                          ".eventbus_schema_version"));
}

std::string IndexExists(const std::string& schema, const std::string& index) {
  return Sql(absl::StrCat("SELECT count(*) FROM pg_indexes WHERE schemaname = '", schema,
                          "' AND indexname = '", index, "'"));
}

TEST(PostgresTaskStore, TwoExecutorsClaimingConcurrentlyNeverClaimOneTaskTwice) {
  const std::string url = FreshSchemaUrl();
  std::unique_ptr<TaskStore> first = OpenMigrated(url);
  std::unique_ptr<TaskStore> second = OpenOrDie(url);  // another executor: its own pool
  constexpr int kTasks = 400;
  for (int i = 0; i < kTasks; ++i) {
    TaskRecord task = Task(absl::StrCat("due-", i), TaskState::kScheduled);
    task.run_at = kT0 - absl::Milliseconds(i);
    ASSERT_EQ(first->Create(task, kT0 - absl::Hours(1))->kind, CreateResult::Kind::kCreated);
  }
  // Not due yet: never claimed.
  TaskRecord later = Task("later", TaskState::kScheduled);
  later.run_at = kT0 + absl::Seconds(1);
  ASSERT_TRUE(first->Create(later, kT0 - absl::Hours(1)).ok());

  constexpr int kThreadsPerExecutor = 4;
  std::vector<std::vector<TaskRecord>> claimed(2 * kThreadsPerExecutor);
  std::vector<std::string> errors(2 * kThreadsPerExecutor);
  std::vector<std::thread> threads;
  for (int t = 0; t < 2 * kThreadsPerExecutor; ++t) {
    threads.emplace_back([&, t] {
      TaskStore& store = t % 2 == 0 ? *first : *second;
      const std::string owner = absl::StrCat("executor-", t % 2, "-thread-", t);
      while (true) {
        absl::StatusOr<std::vector<TaskRecord>> batch =
            store.ClaimDue(kT0, absl::Minutes(5), /*limit=*/7, owner);
        if (!batch.ok()) {
          errors[t] = batch.status().ToString();
          return;
        }
        if (batch->empty()) return;
        for (const TaskRecord& task : *batch) {
          if (task.owner != owner) errors[t] = absl::StrCat(task.id, " claimed for ", task.owner);
          // The scheduler publishes it, then queues it: only its claimer's version matches.
          TaskUpdate queue;
          queue.from = {TaskState::kScheduled};
          queue.expected_version = task.version;
          queue.now = kT0;
          queue.state = TaskState::kQueued;
          if (absl::StatusOr<TaskRecord> q = store.Update(task.id, queue); !q.ok()) {
            errors[t] = q.status().ToString();
          }
        }
        claimed[t].insert(claimed[t].end(), batch->begin(), batch->end());
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (const std::string& error : errors) EXPECT_EQ(error, "");

  std::map<std::string, int> times_claimed;
  int per_executor[2] = {0, 0};
  for (int t = 0; t < 2 * kThreadsPerExecutor; ++t) {
    for (const TaskRecord& task : claimed[t]) ++times_claimed[task.id];
    per_executor[t % 2] += static_cast<int>(claimed[t].size());
  }
  EXPECT_EQ(static_cast<int>(times_claimed.size()), kTasks);
  for (const auto& [id, times] : times_claimed) EXPECT_EQ(times, 1) << id;
  EXPECT_EQ(times_claimed.count("later"), 0u);
  EXPECT_EQ(per_executor[0] + per_executor[1], kTasks);
  // Every one is queued now, and nothing is left to claim.
  ListQuery queued;
  queued.state = TaskState::kQueued;
  queued.limit = 1000;
  EXPECT_EQ(static_cast<int>(first->List(queued)->tasks.size()), kTasks);
  absl::StatusOr<std::vector<TaskRecord>> rest =
      second->ClaimDue(kT0 + absl::Seconds(2), absl::Minutes(5), 100, "late");
  ASSERT_TRUE(rest.ok()) << rest.status();
  ASSERT_EQ(rest->size(), 1u);
  EXPECT_EQ((*rest)[0].id, "later");
}

TEST(PostgresTaskStore, TwoExecutorsClaimingSchedulesConcurrentlyNeverClaimOneTwice) {
  const std::string url = FreshSchemaUrl();
  std::unique_ptr<TaskStore> first = OpenMigrated(url);
  std::unique_ptr<TaskStore> second = OpenOrDie(url);
  constexpr int kSchedules = 120;
  for (int i = 0; i < kSchedules; ++i) {
    Schedule schedule;
    schedule.id = absl::StrCat("every-minute-", i);
    schedule.type = "inject";
    schedule.request = R"({"type":"inject"})";
    schedule.interval = absl::Minutes(1);
    schedule.next_run_at = kT0 - absl::Seconds(i);
    ASSERT_TRUE(first->CreateSchedule(schedule, kT0 - absl::Hours(1)).ok());
  }
  std::vector<std::vector<Schedule>> claimed(8);
  std::vector<std::string> errors(8);
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      TaskStore& store = t % 2 == 0 ? *first : *second;
      const std::string owner = absl::StrCat("executor-", t);
      while (true) {
        absl::StatusOr<std::vector<Schedule>> batch =
            store.ClaimDueSchedules(kT0, absl::Minutes(1), 3, owner);
        if (!batch.ok()) {
          errors[t] = batch.status().ToString();
          return;
        }
        if (batch->empty()) return;
        for (const Schedule& s : *batch) {
          // The next run is in the future: not due again in this test.
          absl::StatusOr<Schedule> advanced = store.AdvanceSchedule(
              s.id, s.version, kT0 + s.interval, s.next_run_at, "task", kT0);
          if (!advanced.ok()) errors[t] = advanced.status().ToString();
        }
        claimed[t].insert(claimed[t].end(), batch->begin(), batch->end());
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (const std::string& error : errors) EXPECT_EQ(error, "");
  std::map<std::string, int> times_claimed;
  for (const auto& batch : claimed) {
    for (const Schedule& s : batch) ++times_claimed[s.id];
  }
  EXPECT_EQ(static_cast<int>(times_claimed.size()), kSchedules);
  for (const auto& [id, times] : times_claimed) EXPECT_EQ(times, 1) << id;
}

TEST(PostgresTaskStore, ConcurrentCreatesOfOneUniqueKeyFromTwoExecutorsCreateOneTask) {
  const std::string url = FreshSchemaUrl();
  std::unique_ptr<TaskStore> first = OpenMigrated(url);
  std::unique_ptr<TaskStore> second = OpenOrDie(url);
  for (int round = 0; round < 5; ++round) {
    const std::string key = absl::StrCat("nightly-report-", round);
    std::vector<absl::StatusOr<CreateResult>> results(12, absl::UnknownError("not run"));
    std::vector<std::thread> threads;
    for (int t = 0; t < 12; ++t) {
      threads.emplace_back([&, t] {
        TaskRecord task = Task(absl::StrCat(key, "-try-", t));
        task.unique_key = key;
        results[t] = (t % 2 == 0 ? *first : *second).Create(task, kT0);
      });
    }
    for (std::thread& thread : threads) thread.join();
    std::string winner;
    int created = 0;
    for (const auto& result : results) {
      ASSERT_TRUE(result.ok()) << result.status();
      if (result->kind == CreateResult::Kind::kCreated) {
        ++created;
        winner = result->record.id;
      }
    }
    ASSERT_EQ(created, 1);
    for (const auto& result : results) {
      if (result->kind == CreateResult::Kind::kCreated) continue;
      EXPECT_EQ(result->kind, CreateResult::Kind::kUniqueKeyTaken);
      EXPECT_EQ(result->record.id, winner);
    }
    ListQuery all;
    all.limit = 1000;
    absl::StatusOr<ListPage> listed = first->List(all);
    ASSERT_TRUE(listed.ok()) << listed.status();
    int with_key = 0;
    for (const TaskRecord& task : listed->tasks) with_key += task.unique_key == key;
    EXPECT_EQ(with_key, 1);
  }
}

TEST(PostgresTaskStore, MigratesADatabaseAtAnOlderSchemaVersion) {
  ASSERT_EQ(PostgresTaskStoreSchemaVersion(), 3);
  const std::string url = FreshSchemaUrl();
  const std::string schema = SchemaOf(url);
  std::unique_ptr<TaskStore> old_build = OpenOrDie(url);
  // What an executor of the version-1 schema left behind.
  ASSERT_TRUE(MigratePostgresTaskStoreTo(*old_build, 1).ok());
  EXPECT_EQ(AppliedVersions(schema), "1");
  EXPECT_EQ(IndexExists(schema, "eventbus_tasks_state_lease"), "0");
  TaskRecord running = Task("running-1", TaskState::kRunning);
  running.lease_until = kT0 - absl::Seconds(1);
  running.unique_key = "only-one";
  ASSERT_TRUE(old_build->Create(running, kT0 - absl::Minutes(1)).ok());
  TaskRecord done = Task("done-1", TaskState::kSucceeded);
  done.expires_at = kT0 - absl::Seconds(1);
  done.result = R"({"ok":true})";
  ASSERT_TRUE(old_build->Create(done, kT0 - absl::Minutes(1)).ok());
  Schedule schedule;
  schedule.id = "hourly";
  schedule.cron = "0 * * * *";
  schedule.time_zone = "Europe/Berlin";
  schedule.next_run_at = kT0;
  ASSERT_TRUE(old_build->CreateSchedule(schedule, kT0 - absl::Minutes(1)).ok());
  old_build.reset();

  std::unique_ptr<TaskStore> new_build = OpenOrDie(url);
  ASSERT_TRUE(new_build->Migrate().ok());
  EXPECT_EQ(AppliedVersions(schema), "1,2,3");
  EXPECT_EQ(IndexExists(schema, "eventbus_tasks_state_lease"), "1");
  EXPECT_EQ(IndexExists(schema, "eventbus_tasks_final_expiry"), "1");
  // The old rows, as they were, and the operations the new indexes serve.
  absl::StatusOr<TaskRecord> got = new_build->Get("running-1");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->request, running.request);
  EXPECT_EQ(got->lease_until, running.lease_until);
  EXPECT_EQ(got->version, 1);
  absl::StatusOr<std::vector<TaskRecord>> stuck = new_build->FindStuck(kT0, 10);
  ASSERT_TRUE(stuck.ok()) << stuck.status();
  ASSERT_EQ(stuck->size(), 1u);
  EXPECT_EQ((*stuck)[0].id, "running-1");
  EXPECT_EQ(new_build->PurgeExpired(kT0, 10).value_or(-1), 1);
  EXPECT_EQ(new_build->GetSchedule("hourly")->time_zone, "Europe/Berlin");
  TaskRecord again = Task("running-2");
  again.unique_key = "only-one";
  EXPECT_EQ(new_build->Create(again, kT0)->kind, CreateResult::Kind::kUniqueKeyTaken);
  InstanceRecord instance;
  instance.name = "executor-1";
  ASSERT_TRUE(new_build->PutInstance(instance, kT0, absl::Seconds(30)).ok());
  EXPECT_EQ(new_build->ListInstances(kT0).value_or(std::vector<InstanceRecord>{}).size(), 1u);
  // Migrating again changes nothing.
  ASSERT_TRUE(new_build->Migrate().ok());
  EXPECT_EQ(AppliedVersions(schema), "1,2,3");
}

TEST(PostgresTaskStore, ExecutorsStartingTogetherMigrateOnce) {
  const std::string url = FreshSchemaUrl();
  const std::string schema = SchemaOf(url);
  std::vector<std::unique_ptr<TaskStore>> stores;
  for (int i = 0; i < 6; ++i) stores.push_back(OpenOrDie(url, 1));
  std::vector<absl::Status> results(stores.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < stores.size(); ++i) {
    threads.emplace_back([&, i] { results[i] = stores[i]->Migrate(); });
  }
  for (std::thread& thread : threads) thread.join();
  for (const absl::Status& result : results) EXPECT_TRUE(result.ok()) << result;
  EXPECT_EQ(AppliedVersions(schema), "1,2,3");
  EXPECT_EQ(Sql(absl::StrCat("SELECT count(*) FROM ", schema, ".eventbus_schema_version")), "3");
  EXPECT_TRUE(stores[0]->Create(Task("works"), kT0).ok());
}

TEST(PostgresTaskStore, RefusesADatabaseMigratedByANewerBuild) {
  const std::string url = FreshSchemaUrl();
  const std::string schema = SchemaOf(url);
  std::unique_ptr<TaskStore> store = OpenMigrated(url);
  Sql(absl::StrCat("INSERT INTO ", schema,
                   ".eventbus_schema_version (version, description) VALUES (99, 'future')"));
  absl::Status migrated = store->Migrate();
  EXPECT_EQ(migrated.code(), absl::StatusCode::kFailedPrecondition) << migrated;
  EXPECT_TRUE(absl::StrContains(migrated.message(), "version 99")) << migrated;
}

TEST(PostgresTaskStore, AStoreBeforeMigrateSaysSo) {
  std::unique_ptr<TaskStore> store = OpenOrDie(FreshSchemaUrl());
  absl::StatusOr<TaskRecord> got = store->Get("anything");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kFailedPrecondition) << got.status();
  EXPECT_TRUE(absl::StrContains(got.status().message(), "Migrate")) << got.status();
}

TEST(PostgresTaskStore, MalformedUrlsAreInvalidArgumentNamingTheSettingAndHidingThePassword) {
  for (const std::string& url : {
           std::string("redis://127.0.0.1:6379"),
           std::string("127.0.0.1:5432"),
           std::string("postgresql://user:hunter2@127.0.0.1:5432/db?no_such_parameter=1"),
           std::string("postgresql://user:hun%zzter2@127.0.0.1:5432/db"),
           std::string("postgresql://user@127.0.0.1:5432/db?password=hunter2&bogus=1"),
       }) {
    absl::StatusOr<std::unique_ptr<TaskStore>> store = OpenPostgresTaskStore(url);
    ASSERT_FALSE(store.ok()) << url;
    EXPECT_EQ(store.status().code(), absl::StatusCode::kInvalidArgument) << store.status();
    EXPECT_TRUE(absl::StrContains(store.status().message(), "EXECUTOR_STORE_URL"))
        << store.status();
    EXPECT_FALSE(absl::StrContains(store.status().message(), "hunter2")) << store.status();
    EXPECT_FALSE(absl::StrContains(store.status().message(), "hun%zzter2")) << store.status();
  }
  EXPECT_EQ(RedactPostgresUrl("postgresql://app:s3cret@db:5432/tasks"),
            "postgresql://app:***@db:5432/tasks");
  EXPECT_EQ(RedactPostgresUrl("postgresql://app@db/tasks?password=s3cret&sslmode=require"),
            "postgresql://app@db/tasks?password=***&sslmode=require");
  EXPECT_EQ(RedactPostgresUrl("postgresql://db/tasks"), "postgresql://db/tasks");
}

TEST(PostgresTaskStore, AWrongPasswordIsUnavailableAndNeverQuoted) {
  harness::PostgresServer::Options options;
  options.password = "right-horse-battery";
  absl::StatusOr<std::unique_ptr<harness::PostgresServer>> secured =
      harness::PostgresServer::Start(options);
  ASSERT_TRUE(secured.ok()) << secured.status();
  // The right password works.
  std::unique_ptr<TaskStore> store = OpenMigrated((*secured)->url());
  EXPECT_TRUE(store->Create(Task("authenticated"), kT0).ok());

  const std::string wrong = absl::StrCat("postgresql://eventbus:wrong-staple-secret@127.0.0.1:",
                                         (*secured)->port(), "/eventbus");
  absl::StatusOr<std::unique_ptr<TaskStore>> refused = OpenPostgresTaskStore(wrong);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable) << refused.status();
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "password authentication failed"))
      << refused.status();
  EXPECT_FALSE(absl::StrContains(refused.status().message(), "wrong-staple-secret"))
      << refused.status();
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "eventbus:***@")) << refused.status();
}

TEST(PostgresTaskStore, OpenTaskStoreOpensItByName) {
  absl::StatusOr<std::unique_ptr<TaskStore>> store = OpenTaskStore("postgres", FreshSchemaUrl());
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->kind(), "postgres");
  ASSERT_TRUE((*store)->Migrate().ok());
  EXPECT_EQ((*store)->Create(Task("by-name"), kT0)->kind, CreateResult::Kind::kCreated);
  absl::StatusOr<std::unique_ptr<TaskStore>> bad = OpenTaskStore("postgres", "localhost:5432");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "EXECUTOR_STORE_URL")) << bad.status();
}

TEST(PostgresTaskStore, TheUrlsOwnSettingsWinOverTheStoresDefaults) {
  // Connections opened from now on (earlier tests' closed ones may linger a moment).
  const std::string since = Sql("SELECT clock_timestamp()");
  auto connections_named = [&since](const std::string& name) {
    return Sql(absl::StrCat("SELECT count(*) FROM pg_stat_activity WHERE application_name = '",
                            name, "' AND backend_start >= '", since, "'"));
  };
  std::unique_ptr<TaskStore> defaults = OpenOrDie(FreshSchemaUrl());
  EXPECT_EQ(connections_named("eventbus-taskstore"), "1");
  std::unique_ptr<TaskStore> named =
      OpenOrDie(absl::StrCat(FreshSchemaUrl(), "&application_name=executor-7"));
  EXPECT_EQ(connections_named("executor-7"), "1");
  EXPECT_EQ(connections_named("eventbus-taskstore"), "1");
}

TEST(PostgresTaskStore, AnUnreachableServerIsUnavailable) {
  absl::StatusOr<int> port = harness::FreeLoopbackPort();
  ASSERT_TRUE(port.ok());
  absl::StatusOr<std::unique_ptr<TaskStore>> store = OpenPostgresTaskStore(
      absl::StrCat("postgresql://eventbus:pw@127.0.0.1:", *port, "/eventbus"));
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kUnavailable) << store.status();
}

TEST(PostgresTaskStore, KeepsWorkingAcrossAServerCrashAndLosesNothingCommitted) {
  const std::string url = FreshSchemaUrl();
  std::unique_ptr<TaskStore> store = OpenMigrated(url);
  ASSERT_TRUE(store->Create(Task("before-crash"), kT0).ok());
  TaskUpdate start;
  start.now = kT0;
  start.state = TaskState::kRunning;
  start.increment_attempts = true;
  ASSERT_TRUE(store->Update("before-crash", start).ok());

  Server().Kill();
  // While it is down: a clear Unavailable, no hang, no crash.
  absl::StatusOr<TaskRecord> down = store->Get("before-crash");
  EXPECT_EQ(down.status().code(), absl::StatusCode::kUnavailable) << down.status();
  ASSERT_TRUE(Server().Restart().ok()) << Server().LogTail();

  // The pool drops the dead connections and opens new ones: the first call after the restart
  // works, and what was committed before the crash is there.
  absl::StatusOr<TaskRecord> after = store->Get("before-crash");
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->state, TaskState::kRunning);
  EXPECT_EQ(after->attempts, 1);
  EXPECT_EQ(after->version, 2);
  EXPECT_TRUE(store->Create(Task("after-crash"), kT0).ok());
}

TEST(PostgresTaskStore, ValuesAreDataNeverSql) {
  std::unique_ptr<TaskStore> store = OpenMigrated(FreshSchemaUrl());
  TaskRecord task = Task("x'); DROP TABLE eventbus_tasks; --");
  task.type = "type' OR '1'='1";
  task.unique_key = "key\"; DELETE FROM eventbus_unique_keys; --";
  task.request = R"({"text":"it's \"quoted\" \\ and ünïcødé ✓"})";
  ASSERT_EQ(store->Create(task, kT0)->kind, CreateResult::Kind::kCreated);
  absl::StatusOr<TaskRecord> got = store->Get(task.id);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->type, task.type);
  EXPECT_EQ(got->unique_key, task.unique_key);
  EXPECT_EQ(got->request, task.request);
  ListQuery by_type;
  by_type.type = task.type;
  EXPECT_EQ(store->List(by_type)->tasks.size(), 1u);
  ListQuery other_type;
  other_type.type = "call";
  EXPECT_EQ(store->List(other_type)->tasks.size(), 0u);
  TaskRecord twin = Task("twin");
  twin.unique_key = task.unique_key;
  EXPECT_EQ(store->Create(twin, kT0)->kind, CreateResult::Kind::kUniqueKeyTaken);
}

TEST(PostgresTaskStore, TimesKeepTheirMicrosecondsAndInfinities) {
  std::unique_ptr<TaskStore> store = OpenMigrated(FreshSchemaUrl());
  TaskRecord task = Task("times");
  task.run_at = kT0 + absl::Microseconds(123456);
  task.started_at = absl::FromUnixMicros(-1);  // before 1970 and before 2000, PostgreSQL's epoch
  task.expires_at = absl::InfiniteFuture();
  task.lease_until = absl::InfinitePast();
  const absl::Time now = kT0 + absl::Microseconds(1);
  ASSERT_TRUE(store->Create(task, now).ok());
  absl::StatusOr<TaskRecord> got = store->Get("times");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->run_at, task.run_at);
  EXPECT_EQ(got->started_at, task.started_at);
  EXPECT_EQ(got->expires_at, absl::InfiniteFuture());
  EXPECT_EQ(got->lease_until, absl::InfinitePast());
  EXPECT_EQ(got->finished_at, absl::InfinitePast());
  EXPECT_EQ(got->created_at, now);
}

TEST(PostgresTaskStore, UpdateManyOfAThousandInOneCallKeepsOrderAndFailsEachAlone) {
  std::unique_ptr<TaskStore> store = OpenMigrated(FreshSchemaUrl());
  constexpr int kTasks = 1000;
  std::vector<TaskUpdateRequest> updates;
  for (int i = 0; i < kTasks; ++i) {
    // Every third one is running already, so its queued->running update must fail alone.
    ASSERT_TRUE(store->Create(Task(absl::StrCat("t", i), i % 3 == 0 ? TaskState::kRunning
                                                                  : TaskState::kQueued),
                              kT0)
                    .ok());
    TaskUpdateRequest request;
    request.id = absl::StrCat("t", i);
    request.update.from = {TaskState::kQueued};
    request.update.now = kT0 + absl::Seconds(1);
    request.update.state = TaskState::kRunning;
    request.update.append_history = absl::StrCat(R"({"attempt":)", i, "}");
    updates.push_back(request);
  }
  TaskUpdateRequest missing;
  missing.id = "no-such-task";
  updates.push_back(missing);
  std::vector<absl::StatusOr<TaskRecord>> results = store->UpdateMany(updates);
  ASSERT_EQ(results.size(), updates.size());
  for (int i = 0; i < kTasks; ++i) {
    if (i % 3 == 0) {
      EXPECT_EQ(results[i].status().code(), absl::StatusCode::kFailedPrecondition) << i;
      EXPECT_TRUE(absl::StrContains(results[i].status().message(), "state running"))
          << results[i].status();
    } else {
      ASSERT_TRUE(results[i].ok()) << i << ": " << results[i].status();
      EXPECT_EQ(results[i]->id, absl::StrCat("t", i));
      EXPECT_EQ(results[i]->history, absl::StrCat(R"([{"attempt":)", i, "}]"));
    }
  }
  EXPECT_EQ(results.back().status().code(), absl::StatusCode::kNotFound);
  // The connection is fine afterwards.
  EXPECT_TRUE(store->Get("t1").ok());
}

}  // namespace
}  // namespace eventbus::taskstore
