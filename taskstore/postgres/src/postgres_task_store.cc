#include "eventbus/taskstore/postgres_task_store.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <optional>
#include <tuple>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "eventbus/taskstore/internal/checks.h"
#include "pq.h"
#include "schema.h"

namespace eventbus::taskstore {
namespace {

using pq::Params;
using pq::ResultHandle;
using pq::Statement;

// The columns of a task, in the order ReadTask reads them.
constexpr const char* kTaskColumnNames[] = {
    "id",          "type",        "state",        "request",     "attempts",   "created_at",
    "updated_at",  "run_at",      "started_at",   "finished_at", "expires_at", "last_error",
    "result",      "progress",    "history",      "unique_key",  "unique_until",
    "schedule_id", "owner",       "lease_until",  "cancel_requested",          "version"};

constexpr const char* kScheduleColumnNames[] = {
    "id",          "request",     "type",         "cron",       "time_zone",
    "run_interval", "missed_policy", "next_run_at", "last_run_at", "last_task_id",
    "created_at",  "paused",      "owner",        "lease_until", "version"};

// "id, type, ..." optionally qualified ("t.id, t.type, ...").
template <size_t N>
std::string Columns(const char* const (&names)[N], absl::string_view qualifier = "") {
  return absl::StrJoin(names, ", ", [qualifier](std::string* out, const char* name) {
    absl::StrAppend(out, qualifier, name);
  });
}

const std::string kTasks = Columns(kTaskColumnNames);
const std::string kSchedules = Columns(kScheduleColumnNames);
// The states PurgeExpired deletes; the literal matches the partial index of migration 2.
constexpr const char* kFinalStates = "('succeeded', 'failed', 'dead_lettered', 'cancelled')";

const Statement kInsertTask{
    "eventbus_insert_task",
    absl::StrCat("INSERT INTO eventbus_tasks (", kTasks,
                 ") VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,"
                 " $16, $17, $18, $19, $20, 1) ON CONFLICT (id) DO NOTHING RETURNING ",
                 kTasks)};
const Statement kGetTask{"eventbus_get_task",
                         absl::StrCat("SELECT ", kTasks, " FROM eventbus_tasks WHERE id = $1")};
const Statement kGetTasks{
    "eventbus_get_tasks", absl::StrCat("SELECT ", kTasks, " FROM eventbus_tasks WHERE id = ANY($1)")};
// A key nobody took yet is taken by the insert; concurrent takers of one new key wait for the
// first one's transaction and then find the key taken.
const Statement kTakeKey{"eventbus_take_key",
                         "INSERT INTO eventbus_unique_keys (unique_key, task_id) VALUES ($1, $2)"
                         " ON CONFLICT (unique_key) DO NOTHING RETURNING task_id"};
const Statement kKeyHolder{
    "eventbus_key_holder",
    absl::StrCat("SELECT t.state NOT IN ", kFinalStates, " OR $2 < t.unique_until, ",
                 Columns(kTaskColumnNames, "t."),
                 " FROM eventbus_unique_keys k JOIN eventbus_tasks t ON t.id = k.task_id"
                 " WHERE k.unique_key = $1 FOR UPDATE OF k")};
const Statement kMoveKey{"eventbus_move_key",
                         "UPDATE eventbus_unique_keys SET task_id = $2 WHERE unique_key = $1"};
// One statement: the conditional update, or (when its condition failed) the row as it stood,
// so a failure costs no second round trip. Unset fields arrive as NULL.
const Statement kUpdateTask{
    "eventbus_update_task",
    absl::StrCat(
        "WITH updated AS (UPDATE eventbus_tasks SET"
        " state = coalesce($5, state),"
        " attempts = coalesce($6, attempts) + CASE WHEN $7 THEN 1 ELSE 0 END,"
        " run_at = coalesce($8, run_at),"
        " started_at = coalesce($9, started_at),"
        " finished_at = coalesce($10, finished_at),"
        " expires_at = coalesce($11, expires_at),"
        " last_error = coalesce($12, last_error),"
        " result = coalesce($13, result),"
        " progress = coalesce($14, progress),"
        " history = CASE WHEN $16 IS NULL THEN coalesce($15, history)"
        "   ELSE eventbus_append_history(coalesce($15, history), $16) END,"
        " owner = coalesce($17, owner),"
        " lease_until = coalesce($18, lease_until),"
        " cancel_requested = coalesce($19, cancel_requested),"
        " updated_at = $4,"
        " version = version + 1"
        " WHERE id = $1 AND (cardinality($2) = 0 OR state = ANY($2))"
        " AND ($3 = 0 OR version = $3)"
        " RETURNING ",
        kTasks, ") SELECT true, ", kTasks, " FROM updated UNION ALL SELECT false, ", kTasks,
        " FROM eventbus_tasks WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM updated)")};
// Competing claimers skip each other's locked rows instead of waiting for them.
const Statement kClaimDue{
    "eventbus_claim_due",
    absl::StrCat("UPDATE eventbus_tasks SET owner = $4, lease_until = $2, updated_at = $1,"
                 " version = version + 1 WHERE id IN (SELECT id FROM eventbus_tasks"
                 " WHERE state = 'scheduled' AND run_at <= $1 AND lease_until < $1"
                 " ORDER BY run_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING ",
                 kTasks)};
const Statement kFindStuck{
    "eventbus_find_stuck",
    absl::StrCat("SELECT ", kTasks,
                 " FROM eventbus_tasks WHERE state = 'running' AND lease_until < $1"
                 " ORDER BY lease_until, id LIMIT $2")};
// Keyset paging: the page after the cursor's (created_at, id), newest first.
const Statement kList{
    "eventbus_list",
    absl::StrCat("SELECT ", kTasks,
                 " FROM eventbus_tasks WHERE ($1::text IS NULL OR state = $1)"
                 " AND ($2 = '' OR type = $2) AND ($3 = '' OR schedule_id = $3)"
                 " AND (NOT $4 OR (created_at, id) < ($5, $6))"
                 " ORDER BY created_at DESC, id DESC LIMIT $7")};
const Statement kStats{"eventbus_stats",
                       "SELECT type, state, count(*), min(created_at) FROM eventbus_tasks"
                       " GROUP BY type, state ORDER BY type"};
const Statement kPurge{
    "eventbus_purge",
    absl::StrCat("DELETE FROM eventbus_tasks WHERE id IN (SELECT id FROM eventbus_tasks"
                 " WHERE state IN ",
                 kFinalStates,
                 " AND expires_at <= $1 ORDER BY expires_at, id LIMIT $2 FOR UPDATE SKIP LOCKED)")};

const Statement kInsertSchedule{
    "eventbus_insert_schedule",
    absl::StrCat("INSERT INTO eventbus_schedules (", kSchedules,
                 ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 1)"
                 " ON CONFLICT (id) DO NOTHING RETURNING ",
                 kSchedules)};
const Statement kGetSchedule{
    "eventbus_get_schedule",
    absl::StrCat("SELECT ", kSchedules, " FROM eventbus_schedules WHERE id = $1")};
const Statement kListSchedules{
    "eventbus_list_schedules",
    absl::StrCat("SELECT ", kSchedules, " FROM eventbus_schedules ORDER BY id")};
const Statement kDeleteSchedule{"eventbus_delete_schedule",
                                "DELETE FROM eventbus_schedules WHERE id = $1"};
const Statement kClaimSchedules{
    "eventbus_claim_schedules",
    absl::StrCat("UPDATE eventbus_schedules SET owner = $4, lease_until = $2,"
                 " version = version + 1 WHERE id IN (SELECT id FROM eventbus_schedules"
                 " WHERE NOT paused AND next_run_at <= $1 AND lease_until < $1"
                 " ORDER BY next_run_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING ",
                 kSchedules)};
const Statement kAdvanceSchedule{
    "eventbus_advance_schedule",
    absl::StrCat("WITH updated AS (UPDATE eventbus_schedules SET next_run_at = $3,"
                 " last_run_at = $4, last_task_id = $5, owner = '', lease_until = '-infinity',"
                 " version = version + 1 WHERE id = $1 AND version = $2 RETURNING ",
                 kSchedules, ") SELECT true, ", kSchedules,
                 " FROM updated UNION ALL SELECT false, ", kSchedules,
                 " FROM eventbus_schedules WHERE id = $1"
                 " AND NOT EXISTS (SELECT 1 FROM updated)")};

constexpr const char* kInstanceColumnNames[] = {
    "name",        "group_name", "request_stream", "backend",    "host",
    "version",     "ready",      "in_flight",      "running",    "stuck_workers",
    "concurrency", "started_at", "heartbeat_interval", "last_seen", "expires_at"};
const std::string kInstances = Columns(kInstanceColumnNames);
// The expired rows go in the same statement; the CTE never touches the row it upserts.
const Statement kPutInstance{
    "eventbus_put_instance",
    absl::StrCat("WITH purged AS (DELETE FROM eventbus_instances WHERE expires_at <= $14"
                 " AND name <> $1) INSERT INTO eventbus_instances (", kInstances,
                 ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
                 " ON CONFLICT (name) DO UPDATE SET group_name = EXCLUDED.group_name,"
                 " request_stream = EXCLUDED.request_stream, backend = EXCLUDED.backend,"
                 " host = EXCLUDED.host, version = EXCLUDED.version, ready = EXCLUDED.ready,"
                 " in_flight = EXCLUDED.in_flight, running = EXCLUDED.running,"
                 " stuck_workers = EXCLUDED.stuck_workers, concurrency = EXCLUDED.concurrency,"
                 " started_at = EXCLUDED.started_at,"
                 " heartbeat_interval = EXCLUDED.heartbeat_interval,"
                 " last_seen = EXCLUDED.last_seen, expires_at = EXCLUDED.expires_at")};
const Statement kListInstances{
    "eventbus_list_instances",
    absl::StrCat("SELECT ", kInstances,
                 " FROM eventbus_instances WHERE expires_at > $1 ORDER BY name")};
const Statement kDeleteInstance{"eventbus_delete_instance",
                                "DELETE FROM eventbus_instances WHERE name = $1"};

// A Create that raced with a concurrent delete or key change starts over, this many times.
constexpr int kCreateAttempts = 8;

TaskRecord ReadTask(const PGresult* r, int row, int first = 0) {
  TaskRecord t;
  int c = first;
  t.id = pq::GetText(r, row, c++);
  t.type = pq::GetText(r, row, c++);
  t.state = ParseTaskState(pq::GetText(r, row, c++)).value_or(TaskState::kQueued);
  t.request = pq::GetText(r, row, c++);
  t.attempts = pq::GetInt32(r, row, c++);
  t.created_at = pq::GetTime(r, row, c++);
  t.updated_at = pq::GetTime(r, row, c++);
  t.run_at = pq::GetTime(r, row, c++);
  t.started_at = pq::GetTime(r, row, c++);
  t.finished_at = pq::GetTime(r, row, c++);
  t.expires_at = pq::GetTime(r, row, c++);
  t.last_error = pq::GetText(r, row, c++);
  t.result = pq::GetText(r, row, c++);
  t.progress = pq::GetText(r, row, c++);
  t.history = pq::GetText(r, row, c++);
  t.unique_key = pq::GetText(r, row, c++);
  t.unique_until = pq::GetTime(r, row, c++);
  t.schedule_id = pq::GetText(r, row, c++);
  t.owner = pq::GetText(r, row, c++);
  t.lease_until = pq::GetTime(r, row, c++);
  t.cancel_requested = pq::GetBool(r, row, c++);
  t.version = pq::GetInt64(r, row, c++);
  return t;
}

std::vector<TaskRecord> ReadTasks(const PGresult* r) {
  std::vector<TaskRecord> tasks;
  tasks.reserve(PQntuples(r));
  for (int row = 0; row < PQntuples(r); ++row) tasks.push_back(ReadTask(r, row));
  return tasks;
}

Schedule ReadSchedule(const PGresult* r, int row, int first = 0) {
  Schedule s;
  int c = first;
  s.id = pq::GetText(r, row, c++);
  s.request = pq::GetText(r, row, c++);
  s.type = pq::GetText(r, row, c++);
  s.cron = pq::GetText(r, row, c++);
  s.time_zone = pq::GetText(r, row, c++);
  s.interval = pq::GetInterval(r, row, c++);
  s.missed_policy = pq::GetText(r, row, c++);
  s.next_run_at = pq::GetTime(r, row, c++);
  s.last_run_at = pq::GetTime(r, row, c++);
  s.last_task_id = pq::GetText(r, row, c++);
  s.created_at = pq::GetTime(r, row, c++);
  s.paused = pq::GetBool(r, row, c++);
  s.owner = pq::GetText(r, row, c++);
  s.lease_until = pq::GetTime(r, row, c++);
  s.version = pq::GetInt64(r, row, c++);
  return s;
}

std::vector<Schedule> ReadSchedules(const PGresult* r) {
  std::vector<Schedule> schedules;
  schedules.reserve(PQntuples(r));
  for (int row = 0; row < PQntuples(r); ++row) schedules.push_back(ReadSchedule(r, row));
  return schedules;
}

InstanceRecord ReadInstance(const PGresult* r, int row) {
  InstanceRecord out;
  int c = 0;
  out.name = pq::GetText(r, row, c++);
  out.group = pq::GetText(r, row, c++);
  out.request_stream = pq::GetText(r, row, c++);
  out.backend = pq::GetText(r, row, c++);
  out.host = pq::GetText(r, row, c++);
  out.version = pq::GetText(r, row, c++);
  out.ready = pq::GetBool(r, row, c++);
  out.in_flight = pq::GetInt32(r, row, c++);
  out.running = pq::GetInt32(r, row, c++);
  out.stuck_workers = pq::GetInt32(r, row, c++);
  out.concurrency = pq::GetInt32(r, row, c++);
  out.started_at = pq::GetTime(r, row, c++);
  out.heartbeat_interval = pq::GetInterval(r, row, c++);
  out.last_seen = pq::GetTime(r, row, c++);
  out.expires_at = pq::GetTime(r, row, c++);
  return out;
}

Params UpdateParams(absl::string_view id, const TaskUpdate& u) {
  std::vector<std::string> from;
  from.reserve(u.from.size());
  for (TaskState state : u.from) from.emplace_back(TaskStateName(state));
  Params p;
  p.Text(id).TextArray(from).Int64(u.expected_version).Time(u.now);
  if (u.state) {
    p.Text(TaskStateName(*u.state));
  } else {
    p.Null(pq::kTextOid);
  }
  p.OptInt32(u.attempts).Bool(u.increment_attempts);
  p.OptTime(u.run_at).OptTime(u.started_at).OptTime(u.finished_at).OptTime(u.expires_at);
  p.OptText(u.last_error).OptText(u.result).OptText(u.progress).OptText(u.history);
  p.OptText(u.append_history).OptText(u.owner).OptTime(u.lease_until);
  p.OptBool(u.cancel_requested);
  return p;
}

// The result of kUpdateTask: the record, NotFound, or FailedPrecondition naming the stored
// state and version.
absl::StatusOr<TaskRecord> UpdateOutcome(absl::string_view id, const TaskUpdate& update,
                                         const PGresult* r) {
  if (PQntuples(r) == 0) return absl::NotFoundError(absl::StrCat("task ", id, ": not found"));
  TaskRecord stored = ReadTask(r, 0, /*first=*/1);
  if (!pq::GetBool(r, 0, 0)) {
    return absl::FailedPreconditionError(internal::ConditionFailedMessage(id, stored, update));
  }
  return stored;
}

// List cursors: "<created_at in unix nanos>/<id>" of the previous page's last task (the
// memory store's format, so a cursor reads the same everywhere).
std::string CursorOf(const TaskRecord& t) {
  return absl::StrCat(absl::ToUnixNanos(t.created_at), "/", t.id);
}

absl::StatusOr<std::pair<absl::Time, std::string>> ParseCursor(absl::string_view cursor) {
  std::pair<absl::string_view, absl::string_view> parts =
      absl::StrSplit(cursor, absl::MaxSplits('/', 1));
  int64_t nanos = 0;
  if (parts.second.empty() || !absl::SimpleAtoi(parts.first, &nanos)) {
    return absl::InvalidArgumentError(absl::StrCat("list cursor: malformed '", cursor, "'"));
  }
  return std::make_pair(absl::FromUnixNanos(nanos), std::string(parts.second));
}

// Rolls back unless committed, so an early return never leaves a transaction open on a
// pooled connection.
class Transaction {
 public:
  explicit Transaction(pq::Connection& conn) : conn_(conn) {}
  ~Transaction() {
    if (open_) (void)conn_.Command("ROLLBACK", "rollback");
  }
  absl::Status Begin() {
    absl::Status s = conn_.Command("BEGIN", "begin");
    open_ = s.ok();
    return s;
  }
  absl::Status Commit() {
    open_ = false;
    return conn_.Command("COMMIT", "commit");
  }

 private:
  pq::Connection& conn_;
  bool open_ = false;
};

class PostgresTaskStore final : public TaskStore {
 public:
  PostgresTaskStore(pq::ConnectSettings settings, int pool_size, absl::Duration acquire_timeout)
      : pool_(std::move(settings), pool_size, acquire_timeout) {}

  absl::string_view kind() const override { return "postgres"; }

  absl::Status Connect() { return pool_.Acquire().status(); }

  absl::Status Migrate() override { return MigrateTo(pq::LatestSchemaVersion()); }

  absl::Status MigrateTo(int version) {
    absl::StatusOr<pq::Pool::Lease> conn = pool_.Acquire();
    if (!conn.ok()) return conn.status();
    return pq::MigrateSchema(**conn, version);
  }

  absl::StatusOr<CreateResult> Create(const TaskRecord& record, absl::Time now) override {
    if (absl::Status s = internal::ValidateNewTask(record); !s.ok()) return s;
    Params insert;
    insert.Text(record.id).Text(record.type).Text(TaskStateName(record.state)).Text(record.request);
    insert.Int32(record.attempts).Time(now).Time(record.run_at).Time(record.started_at);
    insert.Time(record.finished_at).Time(record.expires_at).Text(record.last_error);
    insert.Text(record.result).Text(record.progress).Text(record.history).Text(record.unique_key);
    insert.Time(record.unique_until).Text(record.schedule_id).Text(record.owner);
    insert.Time(record.lease_until).Bool(record.cancel_requested);
    for (int attempt = 1;; ++attempt) {
      absl::StatusOr<pq::Pool::Lease> conn = pool_.Acquire();
      if (!conn.ok()) return conn.status();
      absl::StatusOr<std::optional<CreateResult>> created =
          record.unique_key.empty() ? CreatePlain(**conn, record, insert)
                                    : CreateUnique(**conn, record, insert, now);
      const bool retry = created.ok() ? !created->has_value()
                                      : absl::IsAborted(created.status());
      if (!retry) {
        if (!created.ok()) return created.status();
        return **std::move(created);
      }
      if (attempt == kCreateAttempts) {
        return absl::AbortedError(absl::StrCat("postgres task store: create task ", record.id,
                                               ": still contended after ", attempt,
                                               " attempts"));
      }
    }
  }

  absl::StatusOr<TaskRecord> Get(absl::string_view id) override {
    absl::StatusOr<pq::Pool::Lease> conn = pool_.Acquire();
    if (!conn.ok()) return conn.status();
    absl::StatusOr<ResultHandle> r =
        (*conn)->Run(kGetTask, Params().Text(id), absl::StrCat("get task ", id));
    if (!r.ok()) return r.status();
    if (PQntuples(r->get()) == 0) return absl::NotFoundError(absl::StrCat("task ", id, ": not found"));
    return ReadTask(r->get(), 0);
  }

  absl::StatusOr<std::vector<TaskRecord>> GetMany(absl::Span<const std::string> ids) override {
    if (ids.empty()) return std::vector<TaskRecord>{};
    absl::StatusOr<pq::Pool::Lease> conn = pool_.Acquire();
    if (!conn.ok()) return conn.status();
    absl::StatusOr<ResultHandle> r = (*conn)->Run(kGetTasks, Params().TextArray(ids),
                                                  absl::StrCat("get ", ids.size(), " tasks"));
    if (!r.ok()) return r.status();
    return ReadTasks(r->get());
  }

  absl::StatusOr<TaskRecord> Update(absl::string_view id, const TaskUpdate& update) override {
    absl::StatusOr<pq::Pool::Lease> conn = pool_.Acquire();
    if (!conn.ok()) return conn.status();
    absl::StatusOr<ResultHandle> r =
        (*conn)->Run(kUpdateTask, UpdateParams(id, update), absl::StrCat("update task ", id));
    if (!r.ok()) return r.status();
    return UpdateOutcome(id, update, r->get());
  }

  std::vector<absl::StatusOr<TaskRecord>> UpdateMany(
      absl::Span<const TaskUpdateRequest> updates) override {
    std::vector<absl::StatusOr<TaskRecord>> out;
    out.reserve(updates.size());
    if (updates.empty()) return out;
    absl::StatusOr<pq::Pool::Lease> conn = pool_.Acquire();
    if (!conn.ok()) {
      out.assign(updates.size(), conn.status());
      return out;
    }
    std::vector<Params> params;
    params.reserve(updates.size());
    for (const TaskUpdateRequest& u : updates) params.push_back(UpdateParams(u.id, u.update));
    std::vector<absl::StatusOr<ResultHandle>> results = (*conn)->RunPipelined(
        kUpdateTask, params, absl::StrCat("update ", updates.size(), " tasks"));
    for (size_t i = 0; i < updates.size(); ++i) {
      if (!results[i].ok()) {
        out.push_back(results[i].status());
      } else {
        out.push_back(UpdateOutcome(updates[i].id, updates[i].update, results[i]->get()));
      }
    }
    return out;
  }

  absl::StatusOr<std::vector<TaskRecord>> ClaimDue(absl::Time now, absl::Duration lease, int limit,
                                                   absl::string_view owner) override {
    if (absl::Status s = internal::ValidatePositiveLimit(limit, "claim"); !s.ok()) return s;
    absl::StatusOr<pq::Pool::Lease> conn = pool_.Acquire();
    if (!conn.ok()) return conn.status();
    absl::StatusOr<ResultHandle> r = (*conn)->Run(
        kClaimDue, Params().Time(now).Time(now + lease).Int64(limit).Text(owner), "claim due tasks");
    if (!r.ok()) return r.status();
    std::vector<TaskRecord> claimed = ReadTasks(r->get());
    // RETURNING has no order.
    std::sort(claimed.begin(), claimed.end(), [](const TaskRecord& a, const TaskRecord& b) {
      return std::tie(a.run_at, a.id) < std::tie(b.run_at, b.id);
    });
    return claimed;
  }

  absl::StatusOr<std::vector<TaskRecord>> FindStuck(absl::Time now, int limit) override {
    if (absl::Status s = internal::ValidatePositiveLimit(limit, "stuck"); !s.ok()) return s;
    absl::StatusOr<pq::Pool::Lease> conn = pool_.Acquire();
    if (!conn.ok()) return conn.status();
    absl::StatusOr<ResultHandle> r =
        (*conn)->Run(kFindStuck, Params().Time(now).Int64(limit), "find stuck tasks");
    if (!r.ok()) return r.status();
    return ReadTasks(r->get());
  }

  absl::StatusOr<ListPage> List(const ListQuery& query) override {
    if (absl::Status s = internal::ValidateListLimit(query.limit); !s.ok()) return s;
    std::optional<std::pair<absl::Time, std::string>> after;
    if (!query.cursor.empty()) {
      absl::StatusOr<std::pair<absl::Time, std::string>> parsed = ParseCursor(query.cursor);
      if (!parsed.ok()) return parsed.status();
      after = *std::move(parsed);
    }
    Params p;
    if (query.state) {
      p.Text(TaskStateName(*query.state));
    } else {
      p.Null(pq::kTextOid);
    }
    p.Text(query.type).Text(query.schedule_id).Bool(after.has_value());
    p.Time(after ? after->first : absl::InfinitePast()).Text(after ? after->second : "");
    // One more than a page: whether it exists says if there is a next page.
    p.Int64(query.limit + 1);
    absl::StatusOr<pq::Pool::Lease> conn = pool_.Acquire();
    if (!conn.ok()) return conn.status();
    absl::StatusOr<ResultHandle> r = (*conn)->Run(kList, p, "list tasks");
    if (!r.ok()) return r.status();
    ListPage page;
    page.tasks = ReadTasks(r->get());
    if (static_cast<int>(page.tasks.size()) > query.limit) {
      page.tasks.resize(query.limit);
      page.next_cursor = CursorOf(page.tasks.back());
    }
    return page;
  }

  absl::StatusOr<std::vector<TypeStats>> Stats() override {
    absl::StatusOr<pq::Pool::Lease> conn = pool_.Acquire();
    if (!conn.ok()) return conn.status();
    absl::StatusOr<ResultHandle> r = (*conn)->Run(kStats, Params(), "stats");
    if (!r.ok()) return r.status();
    std::vector<TypeStats> out;
    for (int row = 0; row < PQntuples(r->get()); ++row) {
      const std::string type = pq::GetText(r->get(), row, 0);
      const std::optional<TaskState> state = ParseTaskState(pq::GetText(r->get(), row, 1));
      if (!state) continue;  // the CHECK constraint allows none other
      if (out.empty() || out.back().type != type) {
        out.emplace_back();
        out.back().type = type;
      }
      out.back().counts[static_cast<int>(*state)] = pq::GetInt64(r->get(), row, 2);
      if (*state == TaskState::kQueued) {
        out.back().oldest_queued_created_at = pq::GetTime(r->get(), row, 3);
      }
    }
    return out;
  }

  absl::StatusOr<int> PurgeExpired(absl::Time now, int limit) override {
    if (absl::Status s = internal::ValidatePositiveLimit(limit, "purge"); !s.ok()) return s;
    absl::StatusOr<pq::Pool::Lease> conn = pool_.Acquire();
    if (!conn.ok()) return conn.status();
    absl::StatusOr<ResultHandle> r =
        (*conn)->Run(kPurge, Params().Time(now).Int64(limit), "purge expired tasks");
    if (!r.ok()) return r.status();
    return std::atoi(PQcmdTuples(r->get()));
  }

  absl::StatusOr<Schedule> CreateSchedule(const Schedule& schedule, absl::Time now) override {
    if (absl::Status s = internal::ValidateNewSchedule(schedule); !s.ok()) return s;
    Params p;
    p.Text(schedule.id).Text(schedule.request).Text(schedule.type).Text(schedule.cron);
    p.Text(schedule.time_zone).Interval(schedule.interval).Text(schedule.missed_policy);
    p.Time(schedule.next_run_at).Time(schedule.last_run_at).Text(schedule.last_task_id);
    p.Time(now).Bool(schedule.paused).Text(schedule.owner).Time(schedule.lease_until);
    absl::StatusOr<pq::Pool::Lease> conn = pool_.Acquire();
    if (!conn.ok()) return conn.status();
    absl::StatusOr<ResultHandle> r =
        (*conn)->Run(kInsertSchedule, p, absl::StrCat("create schedule ", schedule.id));
    if (!r.ok()) return r.status();
    if (PQntuples(r->get()) == 0) {
      return absl::AlreadyExistsError(absl::StrCat("schedule ", schedule.id, ": already exists"));
    }
    return ReadSchedule(r->get(), 0);
  }

  absl::StatusOr<Schedule> GetSchedule(absl::string_view id) override {
    absl::StatusOr<pq::Pool::Lease> conn = pool_.Acquire();
    if (!conn.ok()) return conn.status();
    absl::StatusOr<ResultHandle> r =
        (*conn)->Run(kGetSchedule, Params().Text(id), absl::StrCat("get schedule ", id));
    if (!r.ok()) return r.status();
    if (PQntuples(r->get()) == 0) {
      return absl::NotFoundError(absl::StrCat("schedule ", id, ": not found"));
    }
    return ReadSchedule(r->get(), 0);
  }

  absl::StatusOr<std::vector<Schedule>> ListSchedules() override {
    absl::StatusOr<pq::Pool::Lease> conn = pool_.Acquire();
    if (!conn.ok()) return conn.status();
    absl::StatusOr<ResultHandle> r = (*conn)->Run(kListSchedules, Params(), "list schedules");
    if (!r.ok()) return r.status();
    return ReadSchedules(r->get());
  }

  absl::Status DeleteSchedule(absl::string_view id) override {
    absl::StatusOr<pq::Pool::Lease> conn = pool_.Acquire();
    if (!conn.ok()) return conn.status();
    absl::StatusOr<ResultHandle> r =
        (*conn)->Run(kDeleteSchedule, Params().Text(id), absl::StrCat("delete schedule ", id));
    if (!r.ok()) return r.status();
    if (std::atoi(PQcmdTuples(r->get())) == 0) {
      return absl::NotFoundError(absl::StrCat("schedule ", id, ": not found"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<Schedule>> ClaimDueSchedules(absl::Time now, absl::Duration lease,
                                                          int limit,
                                                          absl::string_view owner) override {
    if (absl::Status s = internal::ValidatePositiveLimit(limit, "schedule claim"); !s.ok()) {
      return s;
    }
    absl::StatusOr<pq::Pool::Lease> conn = pool_.Acquire();
    if (!conn.ok()) return conn.status();
    absl::StatusOr<ResultHandle> r =
        (*conn)->Run(kClaimSchedules, Params().Time(now).Time(now + lease).Int64(limit).Text(owner),
                     "claim due schedules");
    if (!r.ok()) return r.status();
    std::vector<Schedule> claimed = ReadSchedules(r->get());
    std::sort(claimed.begin(), claimed.end(), [](const Schedule& a, const Schedule& b) {
      return std::tie(a.next_run_at, a.id) < std::tie(b.next_run_at, b.id);
    });
    return claimed;
  }

  absl::StatusOr<Schedule> AdvanceSchedule(absl::string_view id, int64_t expected_version,
                                           absl::Time next_run_at, absl::Time last_run_at,
                                           absl::string_view last_task_id,
                                           absl::Time now) override {
    absl::StatusOr<pq::Pool::Lease> conn = pool_.Acquire();
    if (!conn.ok()) return conn.status();
    absl::StatusOr<ResultHandle> r = (*conn)->Run(
        kAdvanceSchedule,
        Params().Text(id).Int64(expected_version).Time(next_run_at).Time(last_run_at).Text(
            last_task_id),
        absl::StrCat("advance schedule ", id));
    if (!r.ok()) return r.status();
    if (PQntuples(r->get()) == 0) {
      return absl::NotFoundError(absl::StrCat("schedule ", id, ": not found"));
    }
    Schedule stored = ReadSchedule(r->get(), 0, /*first=*/1);
    if (!pq::GetBool(r->get(), 0, 0)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "schedule ", id, ": version ", stored.version, ", wanted ", expected_version));
    }
    return stored;
  }

  absl::Status PutInstance(const InstanceRecord& record, absl::Time now,
                           absl::Duration ttl) override {
    if (absl::Status s = internal::ValidateInstance(record, ttl); !s.ok()) return s;
    Params p;
    p.Text(record.name).Text(record.group).Text(record.request_stream).Text(record.backend);
    p.Text(record.host).Text(record.version).Bool(record.ready).Int32(record.in_flight);
    p.Int32(record.running).Int32(record.stuck_workers).Int32(record.concurrency);
    p.Time(record.started_at).Interval(record.heartbeat_interval).Time(now).Time(now + ttl);
    absl::StatusOr<pq::Pool::Lease> conn = pool_.Acquire();
    if (!conn.ok()) return conn.status();
    return (*conn)->Run(kPutInstance, p, absl::StrCat("put instance ", record.name)).status();
  }

  absl::StatusOr<std::vector<InstanceRecord>> ListInstances(absl::Time now) override {
    absl::StatusOr<pq::Pool::Lease> conn = pool_.Acquire();
    if (!conn.ok()) return conn.status();
    absl::StatusOr<ResultHandle> r = (*conn)->Run(kListInstances, Params().Time(now), "list instances");
    if (!r.ok()) return r.status();
    std::vector<InstanceRecord> out;
    for (int row = 0; row < PQntuples(r->get()); ++row) out.push_back(ReadInstance(r->get(), row));
    return out;
  }

  absl::Status DeleteInstance(absl::string_view name) override {
    absl::StatusOr<pq::Pool::Lease> conn = pool_.Acquire();
    if (!conn.ok()) return conn.status();
    return (*conn)->Run(kDeleteInstance, Params().Text(name), absl::StrCat("delete instance ", name))
        .status();
  }

 private:
  // A task without a unique key: one insert; a taken id costs a second read.
  // nullopt: the id was taken and is gone again (purged meanwhile): try again.
  absl::StatusOr<std::optional<CreateResult>> CreatePlain(pq::Connection& conn,
                                                          const TaskRecord& record,
                                                          const Params& insert) {
    const std::string what = absl::StrCat("create task ", record.id);
    absl::StatusOr<ResultHandle> inserted = conn.Run(kInsertTask, insert, what);
    if (!inserted.ok()) return inserted.status();
    if (PQntuples(inserted->get()) == 1) {
      return CreateResult{CreateResult::Kind::kCreated, ReadTask(inserted->get(), 0)};
    }
    return ExistingTask(conn, record.id, what);
  }

  absl::StatusOr<std::optional<CreateResult>> ExistingTask(pq::Connection& conn,
                                                           absl::string_view id,
                                                           absl::string_view what) {
    absl::StatusOr<ResultHandle> existing = conn.Run(kGetTask, Params().Text(id), what);
    if (!existing.ok()) return existing.status();
    if (PQntuples(existing->get()) == 0) return std::nullopt;
    return CreateResult{CreateResult::Kind::kIdTaken, ReadTask(existing->get(), 0)};
  }

  // With a unique key: in one transaction, the task row, then the key, which is either new
  // (inserted), or taken by a task that no longer holds it (moved to this one under the key
  // row's lock), or held (everything rolls back). The id is checked first, as the memory store
  // does. nullopt: raced with a purge of the key's task; try again.
  absl::StatusOr<std::optional<CreateResult>> CreateUnique(pq::Connection& conn,
                                                           const TaskRecord& record,
                                                           const Params& insert, absl::Time now) {
    const std::string what = absl::StrCat("create task ", record.id);
    Transaction tx(conn);
    if (absl::Status s = tx.Begin(); !s.ok()) return s;
    absl::StatusOr<ResultHandle> inserted = conn.Run(kInsertTask, insert, what);
    if (!inserted.ok()) return inserted.status();
    if (PQntuples(inserted->get()) == 0) {
      if (absl::Status s = tx.Commit(); !s.ok()) return s;  // nothing written
      return ExistingTask(conn, record.id, what);
    }
    CreateResult created{CreateResult::Kind::kCreated, ReadTask(inserted->get(), 0)};
    absl::StatusOr<ResultHandle> took =
        conn.Run(kTakeKey, Params().Text(record.unique_key).Text(record.id), what);
    if (!took.ok()) return took.status();
    if (PQntuples(took->get()) == 0) {
      absl::StatusOr<ResultHandle> holder =
          conn.Run(kKeyHolder, Params().Text(record.unique_key).Time(now), what);
      if (!holder.ok()) return holder.status();
      if (PQntuples(holder->get()) == 0) return std::nullopt;  // the holder was just purged
      if (pq::GetBool(holder->get(), 0, 0)) {
        return CreateResult{CreateResult::Kind::kUniqueKeyTaken,
                            ReadTask(holder->get(), 0, /*first=*/1)};
      }
      absl::Status moved =
          conn.Run(kMoveKey, Params().Text(record.unique_key).Text(record.id), what).status();
      if (!moved.ok()) return moved;
    }
    if (absl::Status s = tx.Commit(); !s.ok()) return s;
    return created;
  }

  pq::Pool pool_;
};

absl::Status ValidateUrl(absl::string_view url) {
  if (!absl::StartsWith(url, "postgresql://") && !absl::StartsWith(url, "postgres://")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "EXECUTOR_STORE_URL: expected a postgresql://user:password@host:port/database URI, got '",
        pq::RedactUrl(url), "'"));
  }
  char* error = nullptr;
  const std::string text(url);
  PQconninfoOption* options = PQconninfoParse(text.c_str(), &error);
  if (options == nullptr) {
    const pq::Redactor redact(url);
    const std::string message = error != nullptr ? error : "out of memory";
    if (error != nullptr) PQfreemem(error);
    return absl::InvalidArgumentError(absl::StrCat(
        "EXECUTOR_STORE_URL: ", redact(absl::StripTrailingAsciiWhitespace(message)), " in '",
        pq::RedactUrl(url), "'"));
  }
  PQconninfoFree(options);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<TaskStore>> OpenPostgresTaskStore(
    const PostgresTaskStoreOptions& options) {
  if (absl::Status s = ValidateUrl(options.url); !s.ok()) return s;
  if (options.pool_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("postgres task store: pool size ", options.pool_size, ", must be >= 1"));
  }
  pq::ConnectSettings settings{.url = options.url, .connect_timeout = options.connect_timeout};
  auto store = std::make_unique<PostgresTaskStore>(std::move(settings), options.pool_size,
                                                   options.acquire_timeout);
  if (absl::Status s = store->Connect(); !s.ok()) return s;
  return store;
}

absl::StatusOr<std::unique_ptr<TaskStore>> OpenPostgresTaskStore(absl::string_view url) {
  return OpenPostgresTaskStore(PostgresTaskStoreOptions{.url = std::string(url)});
}

int PostgresTaskStoreSchemaVersion() { return pq::LatestSchemaVersion(); }

absl::Status MigratePostgresTaskStoreTo(TaskStore& store, int version) {
  auto* postgres = dynamic_cast<PostgresTaskStore*>(&store);
  if (postgres == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("MigratePostgresTaskStoreTo: a '", store.kind(), "' store"));
  }
  if (version < 1 || version > pq::LatestSchemaVersion()) {
    return absl::InvalidArgumentError(absl::StrCat("MigratePostgresTaskStoreTo: version ", version,
                                                   ", must be 1..", pq::LatestSchemaVersion()));
  }
  return postgres->MigrateTo(version);
}

std::string RedactPostgresUrl(absl::string_view url) { return pq::RedactUrl(url); }

}  // namespace eventbus::taskstore
