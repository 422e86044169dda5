#pragma once
// The executor: consumes task requests from one stream, runs the registered handler for each
// with a concurrency limit, a processing timeout and a retry policy, publishes a result event
// and settles the delivery (ack, nack with backoff, or dead-letter with a reason). Written only
// against the EventStream contract, so it runs on every backend.

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "eventbus/event_stream.h"
#include "eventbus/executor/handler.h"
#include "eventbus/executor/metrics.h"
#include "eventbus/executor/retry_policy.h"
#include "eventbus/executor/task.h"

#pragma GCC visibility push(default)
namespace eventbus::taskstore {
class TaskStore;
}  // namespace eventbus::taskstore

namespace eventbus::executor {

struct ExecutorOptions {
  std::string request_stream{kDefaultRequestStream};
  std::string result_stream{kDefaultResultStream};
  // Where handlers' progress reports go (EXECUTOR_PROGRESS_STREAM), as io.flunq.task.progress
  // events, at most one per running task per progress_interval (EXECUTOR_PROGRESS_INTERVAL;
  // reports in between are coalesced, the latest wins: TaskContext::ReportProgress).
  std::string progress_stream{kDefaultProgressStream};
  absl::Duration progress_interval = absl::Seconds(1);
  // Empty = request_stream + ".dlq".
  std::string dead_letter_stream;
  // EXECUTOR_ESCALATE_TO: where a task goes after its last failed attempt (transient or
  // timeout; permanent and invalid ones are dead-lettered at once) instead of the dead-letter
  // stream: the request stream of the next tier, whose executors run it with their own
  // concurrency and retry policy and a fresh attempt count. The request carries the tiers it
  // left ("escalations", docs/tasks.md). Empty = dead-letter (the last tier). Must differ from
  // the request, result and dead-letter streams.
  std::string escalate_to;
  std::string consumer_group = "eventbus-executor";
  // Unique within the group; empty = "<hostname>-<pid>-<random>".
  std::string consumer_name;
  // Handlers running at once (EXECUTOR_CONCURRENCY), synchronous and asynchronous ones
  // together.
  int concurrency = 4;
  // Deliveries held at once (EXECUTOR_MAX_IN_FLIGHT): waiting to run, running, or settling
  // (result being published, ack on its way), so the broker round trips of settling tasks
  // overlap with running the next ones. Of these, at most concurrency + fetch_batch are
  // waiting or running: a consumer of slow tasks does not hoard work other consumers could run.
  // 0 = 4 x (concurrency + fetch_batch), at least 256.
  int max_in_flight = 0;
  // Threads that run synchronous handlers (EXECUTOR_WORKERS). Asynchronous handlers (call)
  // hold none while they wait. 0 = the number of cores (at least 2), at most concurrency:
  // raise it for synchronous handlers that block on I/O.
  int workers = 0;
  // At most this many events per fetch, and never more than free slots (EXECUTOR_STREAM_BATCH).
  int fetch_batch = 64;
  // How long one fetch may block waiting for events (EXECUTOR_STREAM_BLOCK).
  absl::Duration fetch_block = absl::Seconds(1);
  // Take over deliveries other (dead) consumers of the group left unsettled
  // (EXECUTOR_RECLAIM_ENABLED), when idle for reclaim_min_idle, checked every reclaim_interval.
  bool reclaim_enabled = true;
  absl::Duration reclaim_min_idle = absl::Minutes(5);
  absl::Duration reclaim_interval = absl::Seconds(30);
  // A running handler's delivery is extended this often, so a long handler is not mistaken
  // for an orphan (keep it well below reclaim_min_idle). Zero disables heartbeats.
  absl::Duration heartbeat_interval = absl::Seconds(30);
  // Graceful shutdown waits this long for running handlers before giving them back.
  absl::Duration shutdown_deadline = absl::Seconds(30);
  // How long publishing one result may take before the delivery is given back (retried).
  absl::Duration publish_timeout = absl::Seconds(10);
  // After a failed fetch, wait this long before the next one.
  absl::Duration fetch_error_backoff = absl::Seconds(1);
  // A delivery counted beyond this is dead-lettered without running: a task that crashes its
  // worker (so no retry policy ever sees it fail) must not loop forever. Generous, because
  // delayed redeliveries (`wait`) count too. 0 = no limit.
  int max_deliveries = 1000;
  // The executor reports it cannot make progress (CheckProgress, the service's /readyz) once
  // it has wanted events for this long without a fetch completing: the backend fails or
  // hangs. Zero disables the check.
  absl::Duration fetch_stall_timeout = absl::Seconds(30);
  // Per-type policies overriding the handler's DefaultPolicy().
  std::map<std::string, TaskPolicy, std::less<>> type_policies;
  // Bounds on what a request may ask for; beyond them the request is invalid.
  absl::Duration max_task_timeout = absl::Hours(24);
  // The `source` of result events.
  std::string result_source = "eventbus-executor";

  // With a task store (ExecutorDependencies::store) only:
  // How long a final task is kept in the store, per final state (EXECUTOR_RETENTION_SUCCEEDED,
  // EXECUTOR_RETENTION_FAILED for failed and dead_lettered, EXECUTOR_RETENTION_CANCELLED).
  absl::Duration retention_succeeded = absl::Hours(24);
  absl::Duration retention_failed = absl::Hours(24 * 7);
  absl::Duration retention_cancelled = absl::Hours(24);
  // How often the store is asked whether a task this executor holds was cancelled
  // (EXECUTOR_CANCEL_POLL_INTERVAL): one GetMany for all of them.
  absl::Duration cancel_poll_interval = absl::Seconds(1);
  // A running task's store lease is its timeout plus this (EXECUTOR_STUCK_GRACE): past it,
  // the task counts as stuck, and the scheduler's stuck-task pass re-queues it when no one
  // holds its delivery (docs/tasks.md, "Stuck tasks").
  absl::Duration store_lease_grace = absl::Minutes(1);
  // How often expired final tasks are purged from the store.
  absl::Duration purge_interval = absl::Minutes(1);
};

// InvalidArgument naming the option.
absl::Status ValidateExecutorOptions(const ExecutorOptions& options);

// The effective values of the options whose 0 means "derive it".
int EffectiveMaxInFlight(const ExecutorOptions& options);
int EffectiveWorkers(const ExecutorOptions& options);

// One structured log line about a task (the service renders it as JSON).
struct TaskLogRecord {
  enum class Level { kDebug, kInfo, kWarning, kError };
  Level level = Level::kInfo;
  std::string message;
  std::string task_id;    // empty when the request could not be parsed
  std::string task_type;  // empty when the request could not be parsed
  int attempt = 0;          // 1 + failed attempts before this delivery
  int delivery_count = 0;   // deliveries so far
  std::string delivery_id;
  std::string error;
};
using TaskLogSink = std::function<void(const TaskLogRecord&)>;

// What decides whether the executor can make progress (Executor::progress()).
struct ExecutorProgress {
  // Synchronous handlers given up on (timeout, shutdown) that still hold their worker thread,
  // out of `workers` threads: when all are stuck, no synchronous task can run.
  int stuck_workers = 0;
  int workers = 0;
  // How long the fetcher has wanted events without a fetch completing (the backend failing or
  // hanging); zero while fetches complete. Waiting for free slots is not a stall.
  absl::Duration fetch_stalled_for;
  // The last fetch error of the current stall, empty when none.
  std::string fetch_error;
};

struct ExecutorDependencies {
  // Not owned; null = no metrics.
  ExecutorMetrics* metrics = nullptr;
  // Not owned; null = an absl::BitGen based source.
  RandomSource* random = nullptr;
  // Called from worker threads; null = no logs.
  TaskLogSink log;
  // Not owned; null = no task store (docs/tasks.md, "Task states"). With a store, every
  // fetched batch is checked against it in one GetMany before anything runs: a task already
  // succeeded is settled with its stored result, a cancelled one is acked unrun, and the rest
  // are marked running in one UpdateMany; settling writes each final state (batched across
  // tasks) before the delivery is acked. Requests without a store record (published on the
  // stream by something other than the service's API) run untracked, as without a store.
  taskstore::TaskStore* store = nullptr;
};

// Thread-safety: Start and Shutdown from one owning thread; the rest from any thread.
class Executor {
 public:
  // `stream` and `handlers` are not owned and must outlive the executor. Time comes from
  // stream->clock().
  Executor(EventStream* stream, const HandlerRegistry* handlers, ExecutorOptions options,
           ExecutorDependencies dependencies = {});
  ~Executor();  // Shutdown()

  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // Joins the consumer group and starts fetching. Errors: InvalidArgument (options),
  // FailedPrecondition (already started), or the backend's Subscribe error.
  absl::Status Start();

  // Graceful: stops fetching, gives back deliveries not yet started, lets running handlers
  // finish until options.shutdown_deadline has passed on the clock, then gives back (Nack(0))
  // what still runs so another worker takes it, and leaves the group. Waits for every worker
  // thread, so a handler that ignores TaskContext::cancelled() delays it. Idempotent.
  void Shutdown();

  // Deliveries held right now (queued, running or settling).
  int in_flight() const;
  // Handlers running right now.
  int running() const;
  // Synchronous handlers the executor gave up on (timeout, shutdown) that still hold their
  // worker thread. When they hold every worker, no synchronous task can run: the service
  // reports itself not ready.
  int stuck_workers() const;
  ExecutorProgress progress() const;
  // OK while the executor can make progress; Unavailable saying why not: every worker thread
  // is stuck, or no fetch completed for options.fetch_stall_timeout. Before Start and after
  // Shutdown: OK for the stall (nothing is wanted), the workers as they are.
  absl::Status CheckProgress() const;
  const ExecutorOptions& options() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace eventbus::executor

#pragma GCC visibility pop
