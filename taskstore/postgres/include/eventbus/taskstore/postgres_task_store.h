#pragma once
// The PostgreSQL task store, through libpq: one row per task in `eventbus_tasks` (a state
// column, indexes on (state, run_at) and (state, lease_until)), unique keys in
// `eventbus_unique_keys`, schedules in `eventbus_schedules`, executor instances in
// `eventbus_instances`. Every conditional change is one
// `UPDATE ... WHERE state = ANY(..) AND version = .. RETURNING`; claims take rows with
// `FOR UPDATE SKIP LOCKED`, so competing executors never claim one row at once. The schema is
// created and migrated by Migrate() (numbered migrations recorded in `eventbus_schema_version`,
// under an advisory lock, so executors starting together migrate once).
//
// The tables are created unqualified, in the first schema of the connection's search_path
// (`public` by default); `?options=-csearch_path%3Dname` in the URL puts them elsewhere.
//
// Thread-safe: each call borrows a connection from a small pool for its duration.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "eventbus/taskstore/task_store.h"

#pragma GCC visibility push(default)

namespace eventbus::taskstore {

struct PostgresTaskStoreOptions {
  // A libpq connection URI: postgresql://user:password@host:port/database[?param=value...]
  // (EXECUTOR_STORE_URL). The password never appears in logs or error messages.
  std::string url;
  // Connections opened at most (lazily); a call waits for a free one.
  int pool_size = 4;
  // Waiting for a free connection longer than this fails the call with Unavailable.
  absl::Duration acquire_timeout = absl::Seconds(30);
  // libpq's connect_timeout, unless the URL sets one.
  absl::Duration connect_timeout = absl::Seconds(10);
};

// InvalidArgument naming EXECUTOR_STORE_URL for a URL that is not a postgresql:// URI libpq
// accepts; Unavailable when the server cannot be reached (one connection is opened at once, to
// fail early). Does not call Migrate.
absl::StatusOr<std::unique_ptr<TaskStore>> OpenPostgresTaskStore(
    const PostgresTaskStoreOptions& options);
absl::StatusOr<std::unique_ptr<TaskStore>> OpenPostgresTaskStore(absl::string_view url);

// The schema version this build's Migrate() brings a database to.
int PostgresTaskStoreSchemaVersion();

// For tests of the migrations: applies the migrations up to `version` only (as an older build
// would have), on a store OpenPostgresTaskStore made. InvalidArgument for another store or a
// version outside 1..PostgresTaskStoreSchemaVersion().
absl::Status MigratePostgresTaskStoreTo(TaskStore& store, int version);

// `url` with its password replaced by "***", for logs.
std::string RedactPostgresUrl(absl::string_view url);

}  // namespace eventbus::taskstore

#pragma GCC visibility pop
