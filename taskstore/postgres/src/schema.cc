#include "schema.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace eventbus::taskstore::pq {
namespace {

struct Migration {
  int version;
  const char* description;
  const char* sql;
};

// Text columns that are compared or sorted (ids, keys, types) use the "C" collation: byte
// order, as the other stores sort, whatever locale the database was created with. Times are
// timestamptz ('-infinity' / 'infinity' stand for absl's InfinitePast / InfiniteFuture).
constexpr Migration kMigrations[] = {
    {1, "tasks, unique keys, schedules",
     R"sql(
CREATE TABLE eventbus_tasks (
  id               text COLLATE "C" PRIMARY KEY,
  type             text COLLATE "C" NOT NULL,
  state            text NOT NULL CHECK (state IN ('scheduled', 'queued', 'running', 'retrying',
                     'succeeded', 'failed', 'dead_lettered', 'cancelled')),
  request          text NOT NULL,
  attempts         integer NOT NULL,
  created_at       timestamptz NOT NULL,
  updated_at       timestamptz NOT NULL,
  run_at           timestamptz NOT NULL,
  started_at       timestamptz NOT NULL,
  finished_at      timestamptz NOT NULL,
  expires_at       timestamptz NOT NULL,
  last_error       text NOT NULL,
  result           text NOT NULL,
  progress         text NOT NULL,
  history          text NOT NULL,
  unique_key       text COLLATE "C" NOT NULL,
  unique_until     timestamptz NOT NULL,
  schedule_id      text COLLATE "C" NOT NULL,
  owner            text NOT NULL,
  lease_until      timestamptz NOT NULL,
  cancel_requested boolean NOT NULL,
  version          bigint NOT NULL
);
-- List: newest first.
CREATE INDEX eventbus_tasks_created ON eventbus_tasks (created_at, id);
-- ClaimDue: scheduled tasks by due time.
CREATE INDEX eventbus_tasks_state_run_at ON eventbus_tasks (state, run_at, id);

-- Which task took a unique key last. Whether it still holds it depends on that task (not
-- final, or unique_until not passed), so Create checks under this row's lock. Purging the task
-- frees the key.
CREATE TABLE eventbus_unique_keys (
  unique_key text COLLATE "C" PRIMARY KEY,
  task_id    text COLLATE "C" NOT NULL REFERENCES eventbus_tasks (id) ON DELETE CASCADE
);
CREATE INDEX eventbus_unique_keys_task ON eventbus_unique_keys (task_id);

CREATE TABLE eventbus_schedules (
  id            text COLLATE "C" PRIMARY KEY,
  request       text NOT NULL,
  type          text COLLATE "C" NOT NULL,
  cron          text NOT NULL,
  time_zone     text NOT NULL,
  run_interval  interval NOT NULL,
  missed_policy text NOT NULL,
  next_run_at   timestamptz NOT NULL,
  last_run_at   timestamptz NOT NULL,
  last_task_id  text NOT NULL,
  created_at    timestamptz NOT NULL,
  paused        boolean NOT NULL,
  owner         text NOT NULL,
  lease_until   timestamptz NOT NULL,
  version       bigint NOT NULL
);

-- `history` (a JSON array kept as text) with `entry` appended, by text, exactly as
-- taskstore/internal AppendHistory does it for the other stores.
CREATE FUNCTION eventbus_append_history(history text, entry text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
  SELECT CASE
    WHEN t = '' OR t = '[]' OR right(t, 1) <> ']' THEN '[' || entry || ']'
    WHEN rtrim(left(t, -1), E' \t\n\r\f\x0b') = '[' THEN '[' || entry || ']'
    ELSE rtrim(left(t, -1), E' \t\n\r\f\x0b') || ',' || entry || ']'
  END
  FROM (SELECT btrim(history, E' \t\n\r\f\x0b') AS t) AS trimmed
$$;
)sql"},
    {2, "indexes for stuck-task detection, purging, due schedules and listing by schedule",
     R"sql(
CREATE INDEX eventbus_tasks_state_lease ON eventbus_tasks (state, lease_until, id);
CREATE INDEX eventbus_tasks_final_expiry ON eventbus_tasks (expires_at, id)
  WHERE state IN ('succeeded', 'failed', 'dead_lettered', 'cancelled');
CREATE INDEX eventbus_tasks_schedule ON eventbus_tasks (schedule_id, created_at, id)
  WHERE schedule_id <> '';
CREATE INDEX eventbus_schedules_due ON eventbus_schedules (next_run_at, id) WHERE NOT paused;
)sql"},
    {3, "executor instances (the dashboard's fleet view)",
     R"sql(
CREATE TABLE eventbus_instances (
  name               text COLLATE "C" PRIMARY KEY,
  group_name         text NOT NULL,
  request_stream     text NOT NULL,
  backend            text NOT NULL,
  host               text NOT NULL,
  version            text NOT NULL,
  ready              boolean NOT NULL,
  in_flight          integer NOT NULL,
  running            integer NOT NULL,
  stuck_workers      integer NOT NULL,
  concurrency        integer NOT NULL,
  started_at         timestamptz NOT NULL,
  heartbeat_interval interval NOT NULL,
  last_seen          timestamptz NOT NULL,
  expires_at         timestamptz NOT NULL
);
CREATE INDEX eventbus_instances_expiry ON eventbus_instances (expires_at);
)sql"},
};

// "eventbus" in ASCII: the advisory lock every migrating executor takes.
constexpr int64_t kMigrationLock = 0x6576656e74627573;

const Statement kLock = {"eventbus_migrate_lock", "SELECT pg_advisory_xact_lock($1)"};
const Statement kCurrentVersion = {
    "eventbus_migrate_current", "SELECT coalesce(max(version), 0) FROM eventbus_schema_version"};
const Statement kRecord = {
    "eventbus_migrate_record",
    "INSERT INTO eventbus_schema_version (version, description) VALUES ($1, $2)"};

absl::Status MigrateInTransaction(Connection& conn, int target) {
  if (absl::Status s = conn.Run(kLock, Params().Int64(kMigrationLock), "migrate: lock").status();
      !s.ok()) {
    return s;
  }
  if (absl::Status s = conn.Command(
          "CREATE TABLE IF NOT EXISTS eventbus_schema_version ("
          " version integer PRIMARY KEY,"
          " description text NOT NULL,"
          " applied_at timestamptz NOT NULL DEFAULT now())",
          "migrate: schema version table");
      !s.ok()) {
    return s;
  }
  absl::StatusOr<ResultHandle> current = conn.Run(kCurrentVersion, Params(), "migrate: version");
  if (!current.ok()) return current.status();
  const int version = GetInt32(current->get(), 0, 0);
  if (version > LatestSchemaVersion()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "postgres task store: the database's schema is at version ", version,
        ", newer than this build's ", LatestSchemaVersion(),
        " (a newer executor migrated it); run that version"));
  }
  if (version > target) {
    return absl::FailedPreconditionError(absl::StrCat(
        "postgres task store: the database's schema is at version ", version,
        ", past the requested ", target));
  }
  for (const Migration& migration : kMigrations) {
    if (migration.version <= version || migration.version > target) continue;
    const std::string what = absl::StrCat("migrate: version ", migration.version, " (",
                                          migration.description, ")");
    if (absl::Status s = conn.Command(migration.sql, what); !s.ok()) return s;
    absl::Status recorded =
        conn.Run(kRecord, Params().Int32(migration.version).Text(migration.description), what)
            .status();
    if (!recorded.ok()) return recorded;
  }
  return absl::OkStatus();
}

}  // namespace

int LatestSchemaVersion() { return kMigrations[std::size(kMigrations) - 1].version; }

absl::Status MigrateSchema(Connection& conn, int target) {
  if (absl::Status s = conn.Command("BEGIN", "migrate: begin"); !s.ok()) return s;
  absl::Status status = MigrateInTransaction(conn, target);
  if (status.ok()) return conn.Command("COMMIT", "migrate: commit");
  (void)conn.Command("ROLLBACK", "migrate: rollback");
  return status;
}

}  // namespace eventbus::taskstore::pq
