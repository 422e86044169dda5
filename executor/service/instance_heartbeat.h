#pragma once
// The instance heartbeat: with a task store, this executor writes a record of itself
// (taskstore::InstanceRecord: name, readiness, in-flight counts, ...) into the store every
// EXECUTOR_INSTANCE_HEARTBEAT, and every instance's dashboard lists the records of all
// instances on that store (the fleet view, docs/dashboard.md "Executor instances"). A record
// expires kInstanceTtlIntervals intervals after it was written, so a process that died without
// removing it disappears by itself; until then, one older than kInstanceStaleIntervals intervals
// is shown as not reporting. Stop() removes the record (graceful shutdown).
//
// Writes run on a thread of their own, never on the task path. A failed write goes to
// `on_error` (the service logs and counts it) and the next interval tries again.
// Time is the injectable Clock's: Beat() writes once at clock->Now(); Start() beats at once and
// then every interval.

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "eventbus/clock.h"
#include "eventbus/taskstore/task_store.h"

namespace eventbus::executor::service {

inline constexpr int kInstanceTtlIntervals = 6;
inline constexpr int kInstanceStaleIntervals = 2;

// Whether `record` was last seen more than kInstanceStaleIntervals of its own heartbeat
// intervals before `now` (by the reader's clock: hosts' clock skew counts against it).
bool IsStale(const taskstore::InstanceRecord& record, absl::Time now);

class InstanceHeartbeat {
 public:
  // `store` and `clock` are not owned and must outlive the heartbeat. `sample` gives this
  // instance's record as of now (the store sets last_seen and expires_at); it runs on the
  // heartbeat's thread. `on_error` gets every failed write or delete.
  InstanceHeartbeat(absl::Duration interval, taskstore::TaskStore* store, Clock* clock,
                    std::function<taskstore::InstanceRecord()> sample,
                    std::function<void(const absl::Status&)> on_error);
  ~InstanceHeartbeat();  // Stop()

  // One write at the clock's now. FailedPrecondition after Stop().
  absl::Status Beat();
  // Starts the thread: a beat at once, then one every interval. Once only.
  void Start();
  // Stops the thread after its current beat, then deletes this instance's record. Idempotent.
  void Stop();

 private:
  void Loop();

  const absl::Duration interval_;
  taskstore::TaskStore* const store_;
  Clock* const clock_;
  const std::function<taskstore::InstanceRecord()> sample_;
  const std::function<void(const absl::Status&)> on_error_;
  std::mutex mu_;
  std::condition_variable wake_;
  bool stop_ = false;     // guarded by mu_
  bool stopped_ = false;  // guarded by mu_: the record is deleted
  std::string name_;      // guarded by mu_: the name the last beat wrote
  std::unique_ptr<ClockListener> clock_listener_;
  std::thread thread_;
};

}  // namespace eventbus::executor::service
