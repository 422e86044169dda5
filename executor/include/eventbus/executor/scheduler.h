#pragma once
// The scheduler: publishes tasks that were submitted to run later (`run_at`, `run_after`: stored
// `scheduled` in the task store) when they are due, and fires recurring schedules (cron or
// interval; POST /v1/schedules). It keeps no state of its own: everything is in the task store,
// so any number of executors can run one on the same store, and a restarted one picks up where
// the last left off. The store's claims (ClaimDue, ClaimDueSchedules) make sure one due task or
// fire is published by one scheduler; if that one crashes between publishing and recording it,
// the claim runs out and another publishes it again, a duplicate the executor settles by the
// task's record (a succeeded task is not run again).
//
// Each pass also re-queues stuck tasks: `running` in the store past their lease (the run's
// timeout plus ExecutorOptions::store_lease_grace, EXECUTOR_STUCK_GRACE) whose delivery no one
// holds any more (docs/tasks.md, "Stuck tasks"). A compare-and-set on the record's version
// claims each one, so of several schedulers one re-queues it, once.
//
// Time is the injectable Clock's: Tick() does one pass at clock->Now(), so tests step a
// ManualClock and call it; Start() runs passes every `interval` on a thread of its own.

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <nlohmann/json_fwd.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "eventbus/clock.h"
#include "eventbus/event_stream.h"
#include "eventbus/executor/task.h"
#include "eventbus/taskstore/task_store.h"

#pragma GCC visibility push(default)

namespace eventbus::executor {

struct SchedulerOptions {
  std::string request_stream{kDefaultRequestStream};
  // EXECUTOR_SCHEDULER_INTERVAL: how often Start()'s thread runs a pass.
  absl::Duration interval = absl::Seconds(1);
  // How long a claim holds a due task or schedule: another scheduler takes it over after
  // this when the claimer died before recording what it did.
  absl::Duration lease = absl::Seconds(30);
  // Due tasks and schedules claimed per pass, each.
  int batch = 100;
  // This scheduler's name in the store's claims. Empty: a random one.
  std::string owner;
  // How long a publish may take before the pass gives up on it (the claim then runs out and
  // it is tried again).
  absl::Duration publish_timeout = absl::Seconds(10);
  // A fire this much past its time counts as missed (the schedule's `missed` policy decides
  // whether it still runs). Zero: twice `interval`.
  absl::Duration missed_after = absl::ZeroDuration();
  // Re-queue stuck tasks (see above).
  bool requeue_stuck = true;
};

struct SchedulerDependencies {
  EventStream* stream = nullptr;          // required
  taskstore::TaskStore* store = nullptr;  // required
  Clock* clock = nullptr;                 // null: the stream's clock
  // Warnings and notable events (message, task or schedule id, error); may be null.
  std::function<void(absl::string_view message, absl::string_view id, absl::string_view error)>
      log;
  // Called once per task published (its type); may be null.
  std::function<void(absl::string_view type)> on_published;
  // Called once per stuck task re-queued (its type); may be null.
  std::function<void(absl::string_view type)> on_requeued;
};

// What one pass did.
struct SchedulerPass {
  int published = 0;  // run-later tasks published
  int fired = 0;      // schedule fires published
  int skipped = 0;    // schedule fires not run (missed with `skip`, overlapping, unique key held)
  int failed = 0;     // publishes or store writes that failed (retried after the lease)
  int requeued = 0;   // stuck tasks re-queued
  int stuck_held = 0;  // stuck tasks left alone: a consumer may still hold their delivery
};

class Scheduler {
 public:
  Scheduler(SchedulerOptions options, SchedulerDependencies deps);
  ~Scheduler();  // Stop()

  // Starts the pass thread. FailedPrecondition when started twice.
  absl::Status Start();
  // Stops the thread after its current pass. Idempotent.
  void Stop();

  // One pass at the clock's now: publishes due run-later tasks, fires due schedules, then
  // re-queues stuck tasks.
  // Thread-safe, but passes of one scheduler do not overlap (a second call waits).
  SchedulerPass Tick();

  const std::string& owner() const { return options_.owner; }

 private:
  void Loop();
  void PublishDueTasks(absl::Time now, SchedulerPass& pass);
  void FireDueSchedules(absl::Time now, SchedulerPass& pass);
  void FireSchedule(const taskstore::Schedule& schedule, absl::Time now, SchedulerPass& pass);
  void RequeueStuckTasks(absl::Time now, SchedulerPass& pass);
  bool Publish(const TaskRequest& request, absl::string_view id);
  absl::Status PublishTo(absl::string_view stream, const TaskRequest& request);
  void Log(absl::string_view message, absl::string_view id, absl::string_view error) const;

  SchedulerOptions options_;
  SchedulerDependencies deps_;
  Clock* clock_;
  std::mutex tick_mu_;  // one pass at a time
  std::mutex mu_;
  std::condition_variable wake_;
  bool stop_ = false;     // guarded by mu_
  bool started_ = false;  // guarded by mu_
  std::unique_ptr<ClockListener> clock_listener_;
  std::thread thread_;
};

// ---- recurring schedules ----------------------------------------------------------------

// The JSON of POST /v1/schedules, checked (docs/tasks.md):
//   {"id": "...", "cron": "0 3 * * *", "timezone": "Europe/Berlin" | "every": "PT15M",
//    "task": {task request without id, run_at, run_after}, "missed": "skip" | "run_once"}
// InvalidArgument naming the field. The template's task type is not checked against the
// registered handlers here (the service does that). `next_run_at` is the first fire after
// `now`; created_at is `now`.
absl::StatusOr<taskstore::Schedule> ScheduleFromJson(const nlohmann::json& document,
                                                     absl::Time now);

// The first fire of `schedule` strictly after `after`: cron in its time zone, or, for an
// interval, the next of created_at + k * interval. InvalidArgument for a stored schedule that
// no longer parses (a bad cron or time zone written by something else).
absl::StatusOr<absl::Time> NextFireAfter(const taskstore::Schedule& schedule, absl::Time after);

// The task id of `schedule_id`'s fire at `fire_time`: "<schedule id>@<RFC 3339 UTC time>", the
// same on every executor, so a fire made twice is one task.
std::string ScheduledTaskId(absl::string_view schedule_id, absl::Time fire_time);

// The request of one fire: the schedule's template with the task id.
absl::StatusOr<TaskRequest> ScheduledTaskRequest(const taskstore::Schedule& schedule,
                                                 absl::Time fire_time);

}  // namespace eventbus::executor

#pragma GCC visibility pop
