// A saturated executor takes over every orphan of a dead consumer on a real redis-server.
//
// Redis measures how long a pending entry has been idle on its own clock (XAUTOCLAIM compares
// min-idle-time with the server's time of the last delivery), so that part cannot run in
// virtual time: the test waits, bounded, until the server itself reports the orphans idle
// (XPENDING). What the executor decides, when a reclaim round is due, runs on a ManualClock,
// so "within one reclaim interval" is exact: one interval of virtual time passes, no more.

#include <hiredis/hiredis.h>

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "eventbus/clock.h"
#include "eventbus/executor/executor.h"
#include "eventbus/executor/task.h"
#include "eventbus/harness/redis_server.h"
#include "eventbus/redis/redis_event_stream.h"
#include "gtest/gtest.h"
#include "test_support.h"

namespace eventbus::executor {
namespace {

using ::nlohmann::json;

// Blocks every run until released; records the order runs began in.
class BlockingHandler final : public TaskHandler {
 public:
  std::string type() const override { return "block"; }
  TaskOutcome Handle(TaskContext& context) override {
    monitor_.Update([&] { started_.push_back(context.request().id); });
    monitor_.AwaitThen([&] { return tickets_ > 0 || open_; },
                       [&] {
                         if (!open_) --tickets_;
                       });
    return TaskOutcome::Succeeded(nullptr);
  }
  void Release(int n) { monitor_.Update([&] { tickets_ += n; }); }
  void OpenAll() { monitor_.Update([&] { open_ = true; }); }
  bool AwaitStarted(size_t n) { return monitor_.Await([&] { return started_.size() >= n; }); }
  std::vector<std::string> started() const { return monitor_.Read([&] { return started_; }); }

 private:
  testing::Monitor monitor_;
  std::vector<std::string> started_;
  int tickets_ = 0;
  bool open_ = false;
};

// The pending entries of `consumer` as the server sees them: how many, and the least idle.
struct Pending {
  int count = 0;
  absl::Duration min_idle = absl::InfiniteDuration();
};

Pending PendingOf(redisContext* redis, const std::string& stream, const std::string& group,
                  const std::string& consumer) {
  Pending out;
  auto* reply = static_cast<redisReply*>(redisCommand(
      redis, "XPENDING %s %s - + 1000 %s", stream.c_str(), group.c_str(), consumer.c_str()));
  EXPECT_NE(reply, nullptr) << (redis->err != 0 ? redis->errstr : "no reply");
  if (reply == nullptr) return out;
  EXPECT_EQ(reply->type, REDIS_REPLY_ARRAY) << (reply->str != nullptr ? reply->str : "");
  if (reply->type == REDIS_REPLY_ARRAY) {
    // [id, consumer, idle ms, deliveries] per entry.
    for (size_t i = 0; i < reply->elements; ++i) {
      const redisReply* entry = reply->element[i];
      if (entry->type != REDIS_REPLY_ARRAY || entry->elements != 4) continue;
      ++out.count;
      out.min_idle = std::min(out.min_idle, absl::Milliseconds(entry->element[2]->integer));
    }
  }
  freeReplyObject(reply);
  return out;
}

TEST(ExecutorOnRedis, ASaturatedSurvivorTakesOverEveryOrphanWithinMinIdlePlusInterval) {
  auto server = harness::RedisServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  std::unique_ptr<redisContext, decltype(&redisFree)> inspector(
      redisConnect("127.0.0.1", (*server)->port()), &redisFree);
  ASSERT_TRUE(inspector != nullptr && inspector->err == 0);

  ManualClock clock;
  redis::RedisOptions redis_options;
  auto endpoint = redis::ParseRedisUrl((*server)->url());
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  redis_options.endpoint = *endpoint;
  auto stream = redis::NewRedisEventStream(redis_options, &clock);
  ASSERT_TRUE(stream.ok()) << stream.status();
  testing::CallLog calls;
  auto recording = testing::NewRecordingStream(stream->get(), &calls);
  testing::StreamReader results(stream->get(), std::string(kDefaultResultStream));

  ExecutorOptions options;
  options.consumer_name = "survivor";
  options.reclaim_enabled = true;
  // Real time on the server; 2 s keep the test short while leaving the survivor's own
  // deliveries (fetched 1 s after the orphans) clear of it when the reclaim runs.
  options.reclaim_min_idle = absl::Seconds(2);
  options.reclaim_interval = absl::Seconds(10);  // virtual
  options.heartbeat_interval = absl::ZeroDuration();
  options.concurrency = 2;
  options.workers = 2;  // the handlers block: one thread each
  options.fetch_batch = 2;
  options.max_in_flight = 16;
  options.fetch_block = absl::Milliseconds(50);

  auto submit = [&](const std::string& id) {
    const json task{{"id", id}, {"type", "block"}, {"input", json::object()}};
    ASSERT_TRUE((*stream)
                    ->PublishAndWait(options.request_stream,
                                     MakeEvent(kTaskRequestedType, "test", task.dump()))
                    .ok());
  };
  constexpr int kOrphans = 5;
  for (int i = 0; i < kOrphans; ++i) submit(absl::StrCat("orphan-", i));
  // A consumer of the group takes them all and dies: it is never closed (closing would hand
  // its deliveries back at once), it just stops.
  auto dead = (*stream)->Subscribe({.stream = options.request_stream,
                                    .group = options.consumer_group,
                                    .consumer = "dead-worker"});
  ASSERT_TRUE(dead.ok()) << dead.status();
  std::vector<Delivery> taken;
  const absl::Time fetch_deadline = absl::Now() + testing::kSafetyTimeout;
  while (taken.size() < static_cast<size_t>(kOrphans) && absl::Now() < fetch_deadline) {
    auto batch = (*dead)->Fetch(kOrphans, absl::Milliseconds(200));
    ASSERT_TRUE(batch.ok()) << batch.status();
    taken.insert(taken.end(), batch->begin(), batch->end());
  }
  ASSERT_EQ(taken.size(), static_cast<size_t>(kOrphans));

  // Bounded waits on the server's own idle time of the orphans (polled, it is another
  // process's clock).
  auto await_orphans_idle = [&](absl::Duration idle) {
    const absl::Time deadline = absl::Now() + testing::kSafetyTimeout;
    while (absl::Now() < deadline) {
      const Pending p = PendingOf(inspector.get(), options.request_stream,
                                  options.consumer_group, "dead-worker");
      if (p.count == kOrphans && p.min_idle >= idle) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  };
  ASSERT_TRUE(await_orphans_idle(options.reclaim_min_idle / 2));

  // The survivor starts (its first reclaim finds the orphans not idle long enough) and
  // saturates itself with fresh work: both run slots busy, the prefetch queue full.
  for (int i = 0; i < 10; ++i) submit(absl::StrCat("fresh-", i));
  HandlerRegistry handlers;
  auto handler = std::make_unique<BlockingHandler>();
  BlockingHandler* block = handler.get();
  ASSERT_TRUE(handlers.Register(std::move(handler)).ok());
  testing::RecordingMetrics metrics;
  auto executor = std::make_unique<Executor>(recording.get(), &handlers, options,
                                             ExecutorDependencies{.metrics = &metrics});
  ASSERT_TRUE(executor->Start().ok());
  ASSERT_TRUE(calls.AwaitReclaimAttempts(1));
  ASSERT_TRUE(metrics.AwaitInFlight(options.concurrency + options.fetch_batch));
  ASSERT_TRUE(block->AwaitStarted(2));
  EXPECT_EQ(PendingOf(inspector.get(), options.request_stream, options.consumer_group,
                      "dead-worker").count,
            kOrphans)
      << "reclaimed before they were idle for reclaim_min_idle";

  // The orphans reach reclaim_min_idle on the server; one reclaim interval passes.
  ASSERT_TRUE(await_orphans_idle(options.reclaim_min_idle));
  clock.Advance(options.reclaim_interval);
  // Every orphan is taken over, although no run slot freed.
  EXPECT_TRUE(metrics.AwaitInFlight(options.concurrency + options.fetch_batch + kOrphans))
      << "in flight " << executor->in_flight();
  EXPECT_EQ(PendingOf(inspector.get(), options.request_stream, options.consumer_group,
                      "dead-worker").count,
            0);
  // And they run before the fresh requests queued ahead of them.
  block->Release(kOrphans);
  ASSERT_TRUE(block->AwaitStarted(2 + kOrphans));
  const std::vector<std::string> started = block->started();
  const std::vector<std::string> next(started.begin() + 2, started.begin() + 2 + kOrphans);
  for (const std::string& id : next) {
    EXPECT_TRUE(absl::StartsWith(id, "orphan-")) << id << " (start order "
                                                 << absl::StrJoin(started, ",") << ")";
  }
  block->OpenAll();
  EXPECT_EQ(results.AwaitEvents(10 + kOrphans).size(), 10u + kOrphans);
  executor->Shutdown();
}

}  // namespace
}  // namespace eventbus::executor
