#pragma once
// The task store: each task's lifecycle state, kept beside the event stream that carries the
// work (the stream delivers requests at least once; the store says where every task is, keeps
// its result, and lets the executor refuse to run a task twice or a cancelled one at all).
//
// Implementations: memory (taskstore/memory), Redis (taskstore/redis), PostgreSQL
// (taskstore/postgres); all pass the store conformance suite (tests/taskstore). Every call takes
// the time it acts at (`now`) from the caller, so the executor's injectable clock drives every
// store alike and tests run in virtual time.
//
// Request, result and progress are stored as opaque JSON text: the store never parses them.

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

#pragma GCC visibility push(default)

namespace eventbus::taskstore {

enum class TaskState {
  kScheduled,     // waiting for run_at; the scheduler publishes it when due
  kQueued,        // its request is on the stream
  kRunning,       // an executor runs an attempt
  kRetrying,      // an attempt failed; the next one is due after a backoff
  kSucceeded,     // final
  kFailed,        // final: failed, and not dead-lettered (a `permanent` failure is dead-lettered)
  kDeadLettered,  // final: its request is on the dead-letter stream
  kCancelled,     // final: never runs (again)
};
inline constexpr int kTaskStateCount = 8;
inline constexpr std::array<TaskState, kTaskStateCount> kAllTaskStates = {
    TaskState::kScheduled, TaskState::kQueued,    TaskState::kRunning,
    TaskState::kRetrying,  TaskState::kSucceeded, TaskState::kFailed,
    TaskState::kDeadLettered, TaskState::kCancelled};

// "scheduled", "queued", "running", "retrying", "succeeded", "failed", "dead_lettered",
// "cancelled": the names the API and the stores use.
absl::string_view TaskStateName(TaskState state);
std::optional<TaskState> ParseTaskState(absl::string_view name);
// succeeded, failed, dead_lettered and cancelled. Only a manual retry moves a failed or
// dead-lettered task out again.
bool IsFinal(TaskState state);

struct TaskRecord {
  std::string id;    // the task id (non-empty, at most 200 bytes)
  std::string type;  // the task type
  TaskState state = TaskState::kQueued;
  std::string request;  // the request JSON as submitted (docs/tasks.md)
  // Attempts started so far; reset by a manual retry and for every run of a schedule.
  int attempts = 0;
  absl::Time created_at = absl::InfinitePast();
  absl::Time updated_at = absl::InfinitePast();
  // Scheduled tasks: when they are due. InfinitePast otherwise.
  absl::Time run_at = absl::InfinitePast();
  absl::Time started_at = absl::InfinitePast();   // of the last attempt
  absl::Time finished_at = absl::InfinitePast();  // when it reached a final state
  // Final tasks are deleted by PurgeExpired once this has passed (the retention per final
  // state is the caller's policy). InfiniteFuture = kept.
  absl::Time expires_at = absl::InfiniteFuture();
  std::string last_error;  // of the last failed attempt; empty if none
  std::string result;      // the result JSON once final; empty before
  std::string progress;    // the last progress JSON a handler reported; empty if none
  // A JSON array, one object per finished attempt (the caller appends; see TaskUpdate): the
  // attempt history a manual retry or an escalation carries along.
  std::string history;
  // Non-empty: while this task is not final, or until unique_until (whichever is later), no
  // other task with the same unique_key can be created.
  std::string unique_key;
  absl::Time unique_until = absl::InfinitePast();
  std::string schedule_id;  // the recurring schedule that made this task, if any
  // The executor instance holding the task until lease_until: a scheduled task claimed for
  // publishing (ClaimDue), or a running one (its run's timeout plus a grace period).
  std::string owner;
  absl::Time lease_until = absl::InfinitePast();
  // Set by a cancel of a running task: the executor that runs it stops it and records
  // `cancelled`.
  bool cancel_requested = false;
  // Bumped by every write; TaskUpdate::expected_version compares against it.
  int64_t version = 0;
};

// A conditional change to one task. Unset fields are left as stored.
struct TaskUpdate {
  // The change applies only when the stored state is one of these (any state when empty) ...
  std::vector<TaskState> from;
  // ... and, when non-zero, the stored version equals this.
  int64_t expected_version = 0;
  // Becomes updated_at.
  absl::Time now = absl::InfinitePast();

  std::optional<TaskState> state;
  std::optional<int> attempts;
  bool increment_attempts = false;  // attempts + 1, atomically (after `attempts` if both)
  std::optional<absl::Time> run_at;
  std::optional<absl::Time> started_at;
  std::optional<absl::Time> finished_at;
  std::optional<absl::Time> expires_at;
  std::optional<std::string> last_error;
  std::optional<std::string> result;
  std::optional<std::string> progress;
  // A JSON object appended to `history`.
  std::optional<std::string> append_history;
  std::optional<std::string> history;  // replaces it (before append_history if both)
  std::optional<std::string> owner;
  std::optional<absl::Time> lease_until;
  std::optional<bool> cancel_requested;
};

struct TaskUpdateRequest {
  std::string id;
  TaskUpdate update;
};

struct CreateResult {
  enum class Kind {
    kCreated,
    kIdTaken,         // a task with this id exists; `record` is it
    kUniqueKeyTaken,  // another task holds the unique key; `record` is that task
  };
  Kind kind = Kind::kCreated;
  TaskRecord record;  // as stored (kCreated: with its version)
};

struct ListQuery {
  std::optional<TaskState> state;
  std::string type;       // empty: every type
  std::string schedule_id;  // empty: any
  int limit = 100;        // 1..1000 (InvalidArgument otherwise, and for a malformed cursor)
  // Newest first (created_at, then id). Empty: from the newest; else the cursor of a page.
  std::string cursor;
};
struct ListPage {
  std::vector<TaskRecord> tasks;
  std::string next_cursor;  // empty when there is no further page
};

struct TypeStats {
  std::string type;
  // Indexed by static_cast<int>(TaskState).
  std::array<int64_t, kTaskStateCount> counts{};
  // created_at of the oldest task in `queued`; InfiniteFuture when none is queued.
  absl::Time oldest_queued_created_at = absl::InfiniteFuture();
};

// A recurring schedule: every run publishes a task made from `request`.
struct Schedule {
  std::string id;
  // The task request template (JSON, docs/tasks.md); each run's task id is made from the
  // schedule id and the run time by the caller.
  std::string request;
  std::string type;       // the template's task type (for listing and stats)
  std::string cron;       // 5 fields; empty when `interval` is used
  std::string time_zone;  // IANA name; "UTC" when empty
  absl::Duration interval = absl::ZeroDuration();
  // After downtime: "skip" (only the next future time runs) or "run_once" (one run for all the
  // missed times, then the next future time).
  std::string missed_policy = "skip";
  absl::Time next_run_at = absl::InfinitePast();
  absl::Time last_run_at = absl::InfinitePast();
  std::string last_task_id;  // the task of the last run: a run never starts before it is final
  absl::Time created_at = absl::InfinitePast();
  bool paused = false;
  std::string owner;  // the executor that claimed the due run, until lease_until
  absl::Time lease_until = absl::InfinitePast();
  int64_t version = 0;
};

// One executor instance as it last reported itself (PutInstance, every heartbeat): what the
// dashboard's fleet view shows of the instances sharing this store. The store keeps it until
// expires_at, so a process that died without removing its record disappears by itself.
struct InstanceRecord {
  std::string name;  // the consumer name (non-empty, at most 200 bytes): the record's key
  std::string group;
  std::string request_stream;
  std::string backend;  // EVENT_STREAM_TYPE
  std::string host;
  std::string version;  // of eventbus
  bool ready = false;   // the instance's /readyz verdict
  int in_flight = 0;
  int running = 0;
  int stuck_workers = 0;
  int concurrency = 0;
  absl::Time started_at = absl::InfinitePast();
  // How often the instance reports: a reader judges a record stale by it.
  absl::Duration heartbeat_interval = absl::ZeroDuration();
  // Set by the store on PutInstance: `now`, and `now + ttl`.
  absl::Time last_seen = absl::InfinitePast();
  absl::Time expires_at = absl::InfinitePast();
};

// Thread-safe; every call may block on the store's I/O (a Redis or PostgreSQL round trip) and
// none holds a lock across calls. Errors: Unavailable when the store cannot be reached, NotFound,
// FailedPrecondition for a condition that did not hold (with the stored state in the message),
// InvalidArgument for a malformed record or a `limit` below 1.
class TaskStore {
 public:
  virtual ~TaskStore() = default;

  // "memory", "redis" or "postgres".
  virtual absl::string_view kind() const = 0;

  // Creates the schema (idempotent; migrates an older one). Called once at start-up.
  virtual absl::Status Migrate() = 0;

  // Creates `record` (its version is set by the store; created_at and updated_at become `now`),
  // atomically with the unique-key check. A taken id or unique key is not an error: the result
  // says so and carries that task. InvalidArgument for an empty or over-long id or an empty type.
  virtual absl::StatusOr<CreateResult> Create(const TaskRecord& record, absl::Time now) = 0;

  // NotFound when there is no such task (or it was purged).
  virtual absl::StatusOr<TaskRecord> Get(absl::string_view id) = 0;
  // The tasks of `ids` that exist (each once), in no particular order: one round trip for a
  // batch.
  virtual absl::StatusOr<std::vector<TaskRecord>> GetMany(absl::Span<const std::string> ids) = 0;

  // Applies `update` when its conditions hold; returns the record as stored afterwards.
  // NotFound, or FailedPrecondition when the state or version did not match.
  virtual absl::StatusOr<TaskRecord> Update(absl::string_view id, const TaskUpdate& update) = 0;
  // Several updates in one round trip (a pipeline, one transaction): each succeeds or fails on
  // its own, and the results are in the order of `updates`.
  virtual std::vector<absl::StatusOr<TaskRecord>> UpdateMany(
      absl::Span<const TaskUpdateRequest> updates) = 0;

  // Claims up to `limit` scheduled tasks with run_at <= now that no one holds (lease_until <
  // now), earliest first: sets owner and lease_until = now + lease. Competing executors never
  // claim one task at once (SKIP LOCKED, a script); the claimer publishes the task and then
  // moves it to queued; if it crashes first, the lease runs out and another claims it again.
  virtual absl::StatusOr<std::vector<TaskRecord>> ClaimDue(absl::Time now, absl::Duration lease,
                                                           int limit,
                                                           absl::string_view owner) = 0;

  // Tasks `running` whose lease_until < now (their executor died or hung past its grace),
  // oldest lease first.
  virtual absl::StatusOr<std::vector<TaskRecord>> FindStuck(absl::Time now, int limit) = 0;

  virtual absl::StatusOr<ListPage> List(const ListQuery& query) = 0;

  // Per type, tasks counted per state (types with no tasks are absent).
  virtual absl::StatusOr<std::vector<TypeStats>> Stats() = 0;

  // Deletes up to `limit` final tasks whose expires_at <= now (freeing their unique keys);
  // returns how many.
  virtual absl::StatusOr<int> PurgeExpired(absl::Time now, int limit) = 0;

  // AlreadyExists when a schedule with this id exists. created_at becomes `now`.
  virtual absl::StatusOr<Schedule> CreateSchedule(const Schedule& schedule, absl::Time now) = 0;
  virtual absl::StatusOr<Schedule> GetSchedule(absl::string_view id) = 0;
  virtual absl::StatusOr<std::vector<Schedule>> ListSchedules() = 0;
  // NotFound when there is none.
  virtual absl::Status DeleteSchedule(absl::string_view id) = 0;
  // Claims up to `limit` unpaused schedules with next_run_at <= now that no one holds, like
  // ClaimDue.
  virtual absl::StatusOr<std::vector<Schedule>> ClaimDueSchedules(absl::Time now,
                                                                  absl::Duration lease, int limit,
                                                                  absl::string_view owner) = 0;
  // Records a run (or a skipped one) of a claimed schedule and releases the claim, when the
  // stored version is still `expected_version`: FailedPrecondition otherwise (someone else
  // advanced or deleted-and-recreated it).
  virtual absl::StatusOr<Schedule> AdvanceSchedule(absl::string_view id, int64_t expected_version,
                                                   absl::Time next_run_at, absl::Time last_run_at,
                                                   absl::string_view last_task_id,
                                                   absl::Time now) = 0;

  // Creates or replaces the record of `record.name`, with last_seen = now and expires_at =
  // now + ttl, and deletes the records that expired by `now` (so names of dead processes do
  // not pile up). InvalidArgument for an empty or over-long name or a ttl <= 0.
  virtual absl::Status PutInstance(const InstanceRecord& record, absl::Time now,
                                   absl::Duration ttl) = 0;
  // The records with expires_at > now, by name.
  virtual absl::StatusOr<std::vector<InstanceRecord>> ListInstances(absl::Time now) = 0;
  // Deletes the record of `name` (graceful shutdown). OK also when there is none.
  virtual absl::Status DeleteInstance(absl::string_view name) = 0;
};

// Opens the store named by EXECUTOR_STORE ("memory", "redis", "postgres") at `url`
// (EXECUTOR_STORE_URL: redis://host:port/db, postgresql://user@host:port/db; ignored for
// memory). InvalidArgument naming the setting for an unknown kind or a malformed URL;
// Unavailable when the server cannot be reached. Does not call Migrate.
absl::StatusOr<std::unique_ptr<TaskStore>> OpenTaskStore(absl::string_view kind,
                                                         absl::string_view url);

}  // namespace eventbus::taskstore

#pragma GCC visibility pop
