#pragma once
// The Redis task store (hiredis), on the same server as the Redis event stream or another.
//
// Layout under `key_prefix` (P), documented in docs/task-store.md ("Task store on Redis"):
//   P task:<id>         hash: one field per TaskRecord field (times in unix microseconds)
//   P unique:<key>      string: the id of the task that took the unique key last
//   P all, P state:<s>, P type:<t>, P ts:<s>:<t>, P sched:<schedule id>
//                       sorted sets (score 0, lexicographic) of "<created>|<id>", newest last:
//                       List walks them backwards; Stats counts P ts:<s>:<t>
//   P due, P running, P expiring
//                       sorted sets of ids scored by run_at (scheduled), lease_until
//                       (running) and expires_at (final): ClaimDue, FindStuck, PurgeExpired
//   P schedule:<id>     hash per schedule; P schedules (set of ids); P schedules:due (zset)
//   P instance:<name>   hash per executor instance (PutInstance); P instances: their names
//                       scored by expires_at
// Every conditional or multi-key change is one Lua script, so it is atomic against other
// executors and connections; UpdateMany and GetMany are one script call each (one round trip
// for the whole batch). Needs a single Redis server (not Cluster): the scripts compute keys.
//
// Thread-safe: calls take a connection from a small pool (a hiredis context is not
// thread-safe), so `pool_size` calls run at once and the rest wait for a free connection.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "eventbus/redis/redis_event_stream.h"
#include "eventbus/taskstore/task_store.h"

#pragma GCC visibility push(default)

namespace eventbus::taskstore {

inline constexpr absl::string_view kDefaultRedisTaskStorePrefix = "eventbus:taskstore:";

struct RedisTaskStoreOptions {
  redis::RedisEndpoint endpoint;
  std::string key_prefix = std::string(kDefaultRedisTaskStorePrefix);
  int pool_size = 4;  // connections; each call holds one
  absl::Duration connect_timeout = absl::Seconds(5);
  absl::Duration command_timeout = absl::Seconds(5);
};

// Connects once to fail fast: Unavailable when the server cannot be reached,
// PermissionDenied/Unauthenticated when it refuses the credentials, InvalidArgument for bad
// options. Does not call Migrate.
absl::StatusOr<std::unique_ptr<TaskStore>> NewRedisTaskStore(RedisTaskStoreOptions options);

// EXECUTOR_STORE_URL: redis://[[user]:password@]host[:port][/db][?prefix=P] (or unix://...),
// the REDIS_URL syntax plus an optional key prefix (default kDefaultRedisTaskStorePrefix).
// InvalidArgument naming EXECUTOR_STORE_URL when malformed.
absl::StatusOr<std::unique_ptr<TaskStore>> OpenRedisTaskStore(absl::string_view url);

}  // namespace eventbus::taskstore

#pragma GCC visibility pop
