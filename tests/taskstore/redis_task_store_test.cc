// The task store conformance suite against a real redis-server that this binary starts on a
// free loopback port (tests/harness), plus what only the Redis store promises: one round trip
// per batch, keys under the prefix, URL handling, and surviving a server restart.
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "connection.h"
#include "eventbus/harness/redis_server.h"
#include "eventbus/taskstore/conformance.h"
#include "eventbus/taskstore/redis_task_store.h"
#include "gtest/gtest.h"

namespace eventbus::taskstore {
namespace {

harness::RedisServer* server = nullptr;

class RedisServerEnvironment : public testing::Environment {
 public:
  void SetUp() override {
    auto started = harness::RedisServer::Start();
    // A server that cannot start is a failure, never a skip.
    if (!started.ok()) {
      std::fprintf(stderr, "cannot start redis-server: %s\n", started.status().ToString().c_str());
      std::abort();
    }
    server = started->release();
  }
  void TearDown() override {
    delete server;
    server = nullptr;
  }
};

[[maybe_unused]] testing::Environment* const environment =
    testing::AddGlobalTestEnvironment(new RedisServerEnvironment);

// Which prefix each store of the suite uses, so open_again can open the same data.
std::mutex prefixes_mu;
std::map<const TaskStore*, std::string> prefixes;

absl::StatusOr<std::unique_ptr<TaskStore>> OpenWithPrefix(const std::string& prefix,
                                                          int pool_size = 4, int db = 0) {
  auto endpoint = redis::ParseRedisUrl(absl::StrCat(server->url(), "/", db));
  if (!endpoint.ok()) return endpoint.status();
  RedisTaskStoreOptions options;
  options.endpoint = *endpoint;
  options.key_prefix = prefix;
  options.pool_size = pool_size;
  auto store = NewRedisTaskStore(options);
  if (store.ok()) {
    std::lock_guard lock(prefixes_mu);
    prefixes[store->get()] = prefix;
  }
  return store;
}

std::string FreshPrefix() {
  static std::atomic<int> next{0};
  return absl::StrCat("test", next.fetch_add(1), ":");
}

conformance::TaskStoreUnderTest RedisStore() {
  conformance::TaskStoreUnderTest store;
  store.name = "redis";
  store.make_store = [] { return OpenWithPrefix(FreshPrefix()); };
  // Every thread of the concurrency cases gets its own store (own pool, own connections), as
  // competing executor processes would.
  store.open_again = [](TaskStore& first) -> absl::StatusOr<std::unique_ptr<TaskStore>> {
    std::string prefix;
    {
      std::lock_guard lock(prefixes_mu);
      prefix = prefixes.at(&first);
    }
    return OpenWithPrefix(prefix, /*pool_size=*/1);
  };
  return store;
}

EVENTBUS_INSTANTIATE_TASK_STORE_CONFORMANCE(Redis, RedisStore());

// A connection of its own, for INFO and KEYS.
class Inspector {
 public:
  explicit Inspector(int db = 0) : connection_(Settings(db)) {}
  static redis::RedisConnection::Settings Settings(int db) {
    redis::RedisConnection::Settings settings;
    settings.endpoint = *redis::ParseRedisUrl(absl::StrCat(server->url(), "/", db));
    return settings;
  }
  std::string Text(const std::vector<std::string>& command) {
    auto reply = connection_.Command(command);
    EXPECT_TRUE(reply.ok()) << reply.status();
    return reply.ok() ? std::string(redis::StringOf(reply->get())) : "";
  }
  // cmdstat_<name> calls since the last CONFIG RESETSTAT (0 when never called).
  int64_t Calls(absl::string_view command) {
    const std::string info = Text({"INFO", "commandstats"});
    const std::string key = absl::StrCat("cmdstat_", command, ":calls=");
    const size_t at = info.find(key);
    if (at == std::string::npos) return 0;
    int64_t calls = 0;
    const std::string rest = info.substr(at + key.size());
    EXPECT_TRUE(absl::SimpleAtoi(rest.substr(0, rest.find(',')), &calls));
    return calls;
  }
  std::vector<std::string> Keys() {
    auto reply = connection_.Command({"KEYS", "*"});
    EXPECT_TRUE(reply.ok()) << reply.status();
    std::vector<std::string> keys;
    if (!reply.ok()) return keys;
    for (size_t i = 0; i < (*reply)->elements; ++i) {
      keys.emplace_back(redis::StringOf((*reply)->element[i]));
    }
    return keys;
  }

 private:
  redis::RedisConnection connection_;
};

const absl::Time kT0 = absl::FromUnixMillis(1'800'000'000'000);

TaskRecord Queued(const std::string& id) {
  TaskRecord t;
  t.id = id;
  t.type = "call";
  t.request = "{}";
  return t;
}

TEST(RedisTaskStore, UpdateManyAndGetManyAreOneRoundTripEach) {
  auto store = OpenWithPrefix(FreshPrefix());
  ASSERT_TRUE(store.ok()) << store.status();
  TaskStore& s = **store;
  std::vector<TaskUpdateRequest> batch;
  std::vector<std::string> ids;
  for (int i = 0; i < 50; ++i) {
    const std::string id = absl::StrCat("t", i);
    auto created = s.Create(Queued(id), kT0);
    ASSERT_TRUE(created.ok()) << created.status();
    TaskUpdateRequest r;
    r.id = id;
    r.update.now = kT0 + absl::Seconds(1);
    r.update.from = {TaskState::kQueued};
    r.update.state = TaskState::kSucceeded;
    batch.push_back(r);
    ids.push_back(id);
  }
  // Warm up: every connection of the pool has loaded the scripts, so no SCRIPT LOAD below.
  ASSERT_TRUE(s.GetMany(ids).ok());
  ASSERT_EQ(s.UpdateMany({}).size(), 0u);
  TaskUpdate noop;
  noop.now = kT0;
  noop.from = {TaskState::kCancelled};  // fails: nothing changes
  EXPECT_FALSE(s.Update("t0", noop).ok());

  Inspector redis;
  redis.Text({"CONFIG", "RESETSTAT"});
  std::vector<absl::StatusOr<TaskRecord>> results = s.UpdateMany(batch);
  ASSERT_EQ(results.size(), batch.size());
  for (const auto& r : results) EXPECT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(redis.Calls("evalsha"), 1) << "50 updates in one script call";
  EXPECT_EQ(redis.Calls("script|load"), 0);
  EXPECT_EQ(redis.Calls("eval"), 0);

  redis.Text({"CONFIG", "RESETSTAT"});
  auto got = s.GetMany(ids);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->size(), 50u);
  for (const TaskRecord& t : *got) EXPECT_EQ(t.state, TaskState::kSucceeded);
  EXPECT_EQ(redis.Calls("evalsha"), 1) << "50 reads in one script call";
  EXPECT_EQ(redis.Calls("hgetall"), 50) << "the script read each task once";
}

TEST(RedisTaskStore, KeepsEveryKeyUnderItsPrefix) {
  // A database of its own, emptied first: every key in it must be under the prefix.
  constexpr int kDb = 7;
  Inspector redis(kDb);
  redis.Text({"FLUSHDB"});
  const std::string prefix = "only-here{x}:";
  auto store = OpenWithPrefix(prefix, 4, kDb);
  ASSERT_TRUE(store.ok()) << store.status();
  TaskStore& s = **store;
  ASSERT_TRUE(s.Migrate().ok());
  TaskRecord t = Queued("a");
  t.unique_key = "u";
  t.schedule_id = "sch";
  ASSERT_TRUE(s.Create(t, kT0).ok());
  TaskRecord scheduled = Queued("b");
  scheduled.state = TaskState::kScheduled;
  scheduled.run_at = kT0;
  ASSERT_TRUE(s.Create(scheduled, kT0).ok());
  Schedule schedule;
  schedule.id = "sch";
  schedule.type = "call";
  schedule.next_run_at = kT0;
  ASSERT_TRUE(s.CreateSchedule(schedule, kT0).ok());
  ASSERT_TRUE(s.ClaimDue(kT0, absl::Seconds(5), 10, "me").ok());
  ASSERT_TRUE(s.ClaimDueSchedules(kT0, absl::Seconds(5), 10, "me").ok());
  ASSERT_TRUE(s.Stats().ok());

  int mine = 0;
  for (const std::string& key : redis.Keys()) {
    EXPECT_EQ(key.rfind(prefix, 0), 0u) << "a key outside the prefix: " << key;
    ++mine;
  }
  EXPECT_GE(mine, 10) << "tasks, indexes, unique key, schedule";
}

TEST(RedisTaskStore, TwoPrefixesAreTwoStores) {
  auto a = OpenWithPrefix(FreshPrefix());
  auto b = OpenWithPrefix(FreshPrefix());
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE((*a)->Create(Queued("same-id"), kT0).ok());
  EXPECT_EQ((*b)->Get("same-id").status().code(), absl::StatusCode::kNotFound);
  auto created = (*b)->Create(Queued("same-id"), kT0);
  ASSERT_TRUE(created.ok());
  EXPECT_EQ(created->kind, CreateResult::Kind::kCreated);
}

TEST(RedisTaskStore, OpenTaskStoreTakesTheUrlAndAPrefix) {
  auto store = OpenTaskStore("redis", absl::StrCat(server->url(), "/0?prefix=opened:"));
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->kind(), "redis");
  ASSERT_TRUE((*store)->Migrate().ok());
  ASSERT_TRUE((*store)->Create(Queued("via-url"), kT0).ok());
  Inspector redis;
  EXPECT_EQ(redis.Text({"HGET", "opened:task:via-url", "state"}), "queued");
}

TEST(RedisTaskStore, BadUrlsAreInvalidArgumentNamingTheSetting) {
  for (const char* url : {"http://localhost:6379", "redis://", "redis://host:99999",
                          "redis://127.0.0.1:6379?prefix=", "redis://127.0.0.1:6379?nope=1"}) {
    auto store = OpenTaskStore("redis", url);
    EXPECT_EQ(store.status().code(), absl::StatusCode::kInvalidArgument) << url;
    EXPECT_NE(store.status().message().find("EXECUTOR_STORE_URL"), absl::string_view::npos)
        << store.status();
  }
}

TEST(RedisTaskStore, UnreachableServerIsUnavailable) {
  auto port = harness::FreeLoopbackPort();
  ASSERT_TRUE(port.ok());
  auto store = OpenTaskStore("redis", absl::StrCat("redis://127.0.0.1:", *port));
  EXPECT_EQ(store.status().code(), absl::StatusCode::kUnavailable) << store.status();
}

TEST(RedisTaskStore, MigrateRefusesAnotherSchemaVersion) {
  const std::string prefix = FreshPrefix();
  Inspector redis;
  redis.Text({"SET", prefix + "schema", "99"});
  auto store = OpenWithPrefix(prefix);
  ASSERT_TRUE(store.ok());
  absl::Status migrated = (*store)->Migrate();
  EXPECT_EQ(migrated.code(), absl::StatusCode::kFailedPrecondition) << migrated;
}

// Restarts the shared server (stores of later cases simply connect to it anew).
TEST(RedisTaskStoreRestart, ScheduledTasksSurviveAServerRestart) {
  auto store = OpenWithPrefix(FreshPrefix());
  ASSERT_TRUE(store.ok()) << store.status();
  TaskStore& s = **store;
  TaskRecord later = Queued("later");
  later.state = TaskState::kScheduled;
  later.run_at = kT0 + absl::Hours(1);
  ASSERT_TRUE(s.Create(later, kT0).ok());

  server->Stop();  // SIGTERM: the AOF is flushed
  EXPECT_EQ(s.Get("later").status().code(), absl::StatusCode::kUnavailable);
  ASSERT_TRUE(server->Restart().ok()) << server->LogTail();

  // The same store reconnects by itself (after its backoff).
  absl::StatusOr<std::vector<TaskRecord>> due;
  for (int i = 0; i < 100; ++i) {
    due = s.ClaimDue(kT0 + absl::Hours(1), absl::Seconds(30), 10, "after-restart");
    if (due.ok()) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(due.ok()) << due.status();
  ASSERT_EQ(due->size(), 1u);
  EXPECT_EQ((*due)[0].id, "later");
  EXPECT_EQ((*due)[0].owner, "after-restart");
}

}  // namespace
}  // namespace eventbus::taskstore
