#pragma once
// Task handlers (strategy) and the registry that maps a task type to its handler. Adding a task
// type is one TaskHandler subclass plus one Register call: nothing else changes.

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "eventbus/clock.h"
#include "eventbus/executor/retry_policy.h"
#include "eventbus/executor/task.h"

#pragma GCC visibility push(default)

namespace eventbus::executor {

// How a type's tasks are run when the request does not override it.
struct TaskPolicy {
  RetryPolicy retry;
  // A handler still running after this is treated as a transient failure.
  absl::Duration timeout = absl::Seconds(30);
};

// What one run of a handler came to.
class TaskOutcome {
 public:
  enum class Kind {
    kSucceeded,
    // Worth retrying (a 5xx, a refused connection, a timeout): retried per the retry policy,
    // dead-lettered after the last attempt.
    kTransientFailure,
    // Retrying cannot help (a 4xx, a bad expression): dead-lettered at once.
    kPermanentFailure,
    // Not done yet, and nothing failed: redeliver no earlier than delay() (the `wait` task).
    // Never holds a worker while waiting.
    kRedeliverAfter,
  };

  static TaskOutcome Succeeded(nlohmann::json output);
  static TaskOutcome Transient(std::string error);
  static TaskOutcome Transient(std::string error, nlohmann::json output);
  static TaskOutcome Permanent(std::string error);
  static TaskOutcome Permanent(std::string error, nlohmann::json output);
  static TaskOutcome RedeliverAfter(absl::Duration delay);
  // Unavailable, DeadlineExceeded, ResourceExhausted, Aborted and Internal are transient; every
  // other error code is permanent; OK is a success with a null output.
  static TaskOutcome FromStatus(const absl::Status& status);

  Kind kind() const { return kind_; }
  bool ok() const { return kind_ == Kind::kSucceeded; }
  const std::string& error() const { return error_; }
  absl::Duration delay() const { return delay_; }
  // May be null (no output).
  const std::shared_ptr<const nlohmann::json>& output() const { return output_; }

 private:
  TaskOutcome(Kind kind, std::string error) : kind_(kind), error_(std::move(error)) {}

  Kind kind_;
  std::string error_;
  absl::Duration delay_;
  std::shared_ptr<const nlohmann::json> output_;
};

// Everything a handler may know about the run it is asked to do. Owned by the executor, valid
// for the duration of TaskHandler::Handle.
class TaskContext {
 public:
  TaskContext(const TaskRequest& request, int attempt, absl::Time requested_at,
              absl::Time deadline, Clock* clock, int delivery_count = 1)
      : request_(request),
        attempt_(attempt),
        delivery_count_(delivery_count),
        requested_at_(requested_at),
        deadline_(deadline),
        clock_(clock) {}

  const TaskRequest& request() const { return request_; }
  const nlohmann::json& input() const { return request_.Input(); }
  // The attempt this run is: 1 + the attempts that failed before it (what the retry policy
  // counts). Delayed redeliveries (RedeliverAfter), give-backs at shutdown and reclaims of a
  // crashed worker's task do not count.
  int attempt() const { return attempt_; }
  // 1 on the first delivery; counts every redelivery (retries, delayed redeliveries, reclaims):
  // what EXECUTOR_MAX_DELIVERIES bounds.
  int delivery_count() const { return delivery_count_; }
  // When the task was requested (the request event's time).
  absl::Time requested_at() const { return requested_at_; }
  // After this the executor treats the run as a transient failure and stops waiting for it:
  // handlers pass the remaining time to their I/O (HTTP timeouts) and return soon after.
  absl::Time deadline() const { return deadline_; }
  absl::Duration Remaining() const { return deadline_ - clock_->Now(); }
  Clock* clock() const { return clock_; }
  // True once the executor gave up on this run (timeout, shutdown): the outcome is discarded.
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }
  void Cancel() { cancelled_.store(true, std::memory_order_release); }

  // Reports how far the run is: a number from 0 to 100 (percent) or a JSON object (e.g.
  // {"done": 40, "total": 90, "step": "upload"}) of at most kMaxProgressBytes serialized.
  // Never waits for the broker or the store: the executor publishes it on the progress stream
  // and records it in the task store later, coalesced to at most one report per task per
  // ExecutorOptions::progress_interval (the latest value wins; a value held back when the
  // run ends is sent then, before the final state is recorded). Thread-safe.
  // Errors: InvalidArgument for another JSON type, a number outside [0, 100] or an over-large
  // value (nothing is reported); FailedPrecondition once the run is over for the executor
  // (timeout, cancel, shutdown: the report is dropped). Without an executor (a handler under
  // test) a valid report is accepted and goes nowhere.
  absl::Status ReportProgress(const nlohmann::json& progress);

  // The executor's side: where valid reports go (serialized JSON). Set before the handler runs.
  using ProgressSink = std::function<absl::Status(std::string progress_json)>;
  void set_progress_sink(ProgressSink sink) { progress_sink_ = std::move(sink); }

 private:
  const TaskRequest& request_;
  int attempt_;
  int delivery_count_;
  absl::Time requested_at_;
  absl::Time deadline_;
  Clock* clock_;
  std::atomic<bool> cancelled_{false};
  ProgressSink progress_sink_;
};

// Receives the outcome of an asynchronous run (TaskHandler::HandleAsync). Called exactly once,
// from any thread, possibly inline.
using TaskOutcomeCallback = std::function<void(TaskOutcome)>;

class TaskHandler {
 public:
  virtual ~TaskHandler() = default;

  // The task type this handler runs, e.g. "call".
  virtual std::string type() const = 0;

  // The policy for this type unless the executor's configuration or the request overrides it.
  virtual TaskPolicy DefaultPolicy() const { return TaskPolicy{}; }

  // Whether this handler can run `request` at all (checked before every run): an error, with a
  // reason, makes the request invalid and sends it to the dead-letter stream without a retry.
  virtual absl::Status Supports(const TaskRequest& request) const { return absl::OkStatus(); }

  // Runs one attempt. Called concurrently from several worker threads; must not block past
  // context.deadline() by much, and must never sleep to wait for time to pass (return
  // TaskOutcome::RedeliverAfter instead).
  virtual TaskOutcome Handle(TaskContext& context) = 0;

  // True when the handler does its waiting asynchronously (outbound HTTP on an event loop): the
  // executor then calls HandleAsync on its dispatch thread instead of Handle on a worker, so a
  // run waiting on the network holds no thread and concurrency is a count of runs in flight.
  virtual bool asynchronous() const { return false; }

  // Starts one attempt and returns at once; `done` receives its outcome exactly once, from any
  // thread (inline is allowed). `context` stays valid until `done` has been called. Once
  // context.cancelled() is true (timeout, shutdown) the outcome is discarded: stop the I/O and
  // call `done` soon. Must not block. The default runs Handle inline (for synchronous handlers
  // the executor calls Handle on a worker instead).
  virtual void HandleAsync(TaskContext& context, TaskOutcomeCallback done) {
    done(Handle(context));
  }
};

// Register everything before the executor starts; afterwards the registry is read-only and
// safe to use from any thread.
class HandlerRegistry {
 public:
  // AlreadyExists when the type is taken, InvalidArgument for a null handler or empty type.
  absl::Status Register(std::unique_ptr<TaskHandler> handler);

  // Null when no handler is registered for `type`.
  TaskHandler* Find(absl::string_view type) const;

  // Sorted registered types.
  std::vector<std::string> Types() const;

 private:
  std::map<std::string, std::unique_ptr<TaskHandler>, std::less<>> handlers_;
};

}  // namespace eventbus::executor

#pragma GCC visibility pop
