#pragma once
// The task store's schema, as numbered migrations. A database records the ones applied in
// `eventbus_schema_version` (one row per migration). Migrations are append-only: a released
// one is never edited; a change is a new one.

#include "absl/status/status.h"
#include "pq.h"

namespace eventbus::taskstore::pq {

// The number of the last migration this build knows.
int LatestSchemaVersion();

// Applies the migrations after the database's version up to `target`, in one transaction
// under an advisory lock (two executors starting at once: the second waits, then finds
// nothing to do). FailedPrecondition when the database is newer than this build (a
// newer executor migrated it: running an older one against it could corrupt data), or newer
// than `target`.
absl::Status MigrateSchema(Connection& conn, int target);

}  // namespace eventbus::taskstore::pq
