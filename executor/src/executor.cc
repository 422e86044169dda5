#include "eventbus/executor/executor.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <shared_mutex>
#include <optional>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "eventbus/clock.h"
#include "eventbus/dead_letters.h"
#include "eventbus/executor/iso_duration.h"
#include "eventbus/status_macros.h"
#include "eventbus/taskstore/task_store.h"
#include "progress_publisher.h"
#include "settle_queue.h"
#include "store_writer.h"

namespace eventbus::executor {
namespace {

// The error_kind of the failure published in place of a result the backend refused.
constexpr absl::string_view kResultTooLarge = "result_too_large";

std::string DefaultConsumerName() {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') {
    std::snprintf(host, sizeof(host), "executor");
  }
  absl::BitGen gen;
  return absl::StrFormat("%s-%d-%08x", host, static_cast<int>(getpid()),
                         absl::Uniform<uint32_t>(gen));
}

}  // namespace

absl::Status ValidateExecutorOptions(const ExecutorOptions& options) {
  EVENTBUS_RETURN_IF_ERROR(ValidateName("request stream", options.request_stream));
  EVENTBUS_RETURN_IF_ERROR(ValidateName("result stream", options.result_stream));
  EVENTBUS_RETURN_IF_ERROR(ValidateName("consumer group", options.consumer_group));
  if (!options.consumer_name.empty()) {
    EVENTBUS_RETURN_IF_ERROR(ValidateName("consumer name", options.consumer_name));
  }
  if (!options.dead_letter_stream.empty()) {
    EVENTBUS_RETURN_IF_ERROR(ValidateName("dead-letter stream", options.dead_letter_stream));
  }
  if (options.result_stream == options.request_stream) {
    return absl::InvalidArgumentError("result stream must differ from the request stream");
  }
  EVENTBUS_RETURN_IF_ERROR(ValidateName("progress stream", options.progress_stream));
  if (options.progress_stream == options.request_stream ||
      options.progress_stream == options.result_stream) {
    return absl::InvalidArgumentError(
        "progress stream must differ from the request and the result stream");
  }
  if (!options.escalate_to.empty()) {
    EVENTBUS_RETURN_IF_ERROR(ValidateName("escalate-to stream", options.escalate_to));
    const std::string dead_letters = options.dead_letter_stream.empty()
                                         ? absl::StrCat(options.request_stream, kDlqStreamSuffix)
                                         : options.dead_letter_stream;
    for (const auto& [what, stream] :
         {std::pair<absl::string_view, absl::string_view>{"request stream", options.request_stream},
          {"result stream", options.result_stream},
          {"progress stream", options.progress_stream},
          {"dead-letter stream", dead_letters}}) {
      if (options.escalate_to == stream) {
        return absl::InvalidArgumentError(absl::StrCat(
            "escalate-to stream \"", options.escalate_to, "\" is this executor's ", what,
            ": escalating must hand the task to another tier's request stream"));
      }
    }
  }
  if (options.concurrency < 1 || options.concurrency > 10000) {
    return absl::InvalidArgumentError(
        absl::StrCat("concurrency must be in [1, 10000], got ", options.concurrency));
  }
  if (options.max_deliveries < 0) {
    return absl::InvalidArgumentError("max deliveries must not be negative (0 = no limit)");
  }
  if (options.fetch_batch < 1 || options.fetch_batch > 10000) {
    return absl::InvalidArgumentError(
        absl::StrCat("fetch batch must be in [1, 10000], got ", options.fetch_batch));
  }
  auto positive = [](absl::string_view what, absl::Duration d) -> absl::Status {
    if (d <= absl::ZeroDuration()) {
      return absl::InvalidArgumentError(absl::StrCat(what, " must be positive"));
    }
    return absl::OkStatus();
  };
  EVENTBUS_RETURN_IF_ERROR(positive("fetch block", options.fetch_block));
  EVENTBUS_RETURN_IF_ERROR(positive("reclaim min idle", options.reclaim_min_idle));
  EVENTBUS_RETURN_IF_ERROR(positive("reclaim interval", options.reclaim_interval));
  EVENTBUS_RETURN_IF_ERROR(positive("publish timeout", options.publish_timeout));
  EVENTBUS_RETURN_IF_ERROR(positive("fetch error backoff", options.fetch_error_backoff));
  EVENTBUS_RETURN_IF_ERROR(positive("max task timeout", options.max_task_timeout));
  EVENTBUS_RETURN_IF_ERROR(positive("progress interval", options.progress_interval));
  if (options.fetch_stall_timeout < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("fetch stall timeout must not be negative (0 = no check)");
  }
  if (options.heartbeat_interval < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("heartbeat interval must not be negative");
  }
  if (options.shutdown_deadline < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("shutdown deadline must not be negative");
  }
  EVENTBUS_RETURN_IF_ERROR(positive("succeeded retention", options.retention_succeeded));
  EVENTBUS_RETURN_IF_ERROR(positive("failed retention", options.retention_failed));
  EVENTBUS_RETURN_IF_ERROR(positive("cancelled retention", options.retention_cancelled));
  EVENTBUS_RETURN_IF_ERROR(positive("cancel poll interval", options.cancel_poll_interval));
  EVENTBUS_RETURN_IF_ERROR(positive("purge interval", options.purge_interval));
  if (options.store_lease_grace < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("store lease grace must not be negative");
  }
  for (const auto& [type, policy] : options.type_policies) {
    if (absl::Status s = policy.retry.Validate(); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("policy of task type ", type, ": ", s.message()));
    }
    if (policy.timeout <= absl::ZeroDuration()) {
      return absl::InvalidArgumentError(
          absl::StrCat("policy of task type ", type, ": timeout must be positive"));
    }
  }
  return absl::OkStatus();
}

int EffectiveMaxInFlight(const ExecutorOptions& options) {
  if (options.max_in_flight > 0) return options.max_in_flight;
  // Generous: most of what it bounds is settling (done, result on its way), and a broker
  // round trip of ~10 ms (Kafka's produce) caps throughput at max_in_flight / 10 ms.
  return std::max(256, 4 * (options.concurrency + options.fetch_batch));
}

int EffectiveWorkers(const ExecutorOptions& options) {
  if (options.workers > 0) return options.workers;
  // More threads than cores only add contention for CPU-bound handlers (measured on Redis: 32
  // workers 7,300 tasks/s, 2 workers 31,000/s on two cores); handlers that block on I/O
  // either run asynchronously or ask for more workers.
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  return std::min(options.concurrency, std::max(2, cores));
}

// The pipeline, in the order a task goes through it (one section each below):
//   fetch     FetchLoop refills the free in-flight slots in batches (and reclaims orphans);
//   dispatch  WorkerLoop parses and checks a request and runs its handler: a synchronous one
//             on the worker, an asynchronous one started there and completed from its own
//             event loop; at most `concurrency` run at once;
//   outcome   OnOutcome: the first of "the handler returned", "its timeout passed" (the
//             supervisor) and "shutdown gave it up" decides what happens to the delivery;
//   settle    the result is published asynchronously; when it is durable the request is
//             acked (AckAsync, batched by the backend); or it is nacked with a backoff, or
//             dead-lettered. Nothing here waits for a broker round trip: completions arrive
//             as callbacks and the next step runs on the settle thread;
//   release   the slot frees when the last settle step completed, and the fetcher refills.
// With a task store, two steps join (see "store gate" and "store records" below): each fetched
// batch is checked against the store in one read and marked running in one write before it is
// queued, and each settle writes the task's new state (group-committed across tasks by the
// StoreWriter) before its delivery is acked, nacked or dead-lettered. A watcher asks the store
// once per cancel_poll_interval whether any task held here was cancelled.
class Executor::Impl {
 public:
  Impl(EventStream* stream, const HandlerRegistry* handlers, ExecutorOptions options,
       ExecutorDependencies deps)
      : stream_(stream),
        handlers_(handlers),
        options_(std::move(options)),
        deps_(std::move(deps)),
        clock_(stream->clock()),
        max_in_flight_(EffectiveMaxInFlight(options_)),
        prefetch_limit_(options_.concurrency + options_.fetch_batch),
        refill_batch_(std::max(
            1, std::min({options_.fetch_batch, max_in_flight_, prefetch_limit_}) / 2)) {
    if (options_.consumer_name.empty()) options_.consumer_name = DefaultConsumerName();
    if (deps_.random == nullptr) {
      owned_random_ = NewDefaultRandomSource();
      deps_.random = owned_random_.get();
    }
    if (deps_.metrics == nullptr) deps_.metrics = &noop_metrics_;
    if (deps_.store != nullptr) store_writer_ = std::make_unique<StoreWriter>(deps_.store);
    progress_ = std::make_unique<ProgressPublisher>(
        stream_, clock_,
        ProgressPublisher::Options{.stream = options_.progress_stream,
                                   .source = options_.result_source,
                                   .interval = options_.progress_interval},
        store_writer_ == nullptr
            ? ProgressPublisher::StoreWrite()
            : [this](taskstore::TaskUpdateRequest write) { RecordProgress(std::move(write)); },
        [this](const std::string& task_id, const absl::Status& status) {
          deps_.metrics->BackendError("progress_publish");
          if (!deps_.log) return;
          TaskLogRecord record;
          record.level = TaskLogRecord::Level::kWarning;
          record.message = "publishing a progress report failed";
          record.task_id = task_id;
          record.error = status.ToString();
          deps_.log(record);
        });
  }

  ~Impl() { Shutdown(); }

  absl::Status Start() {
    EVENTBUS_RETURN_IF_ERROR(ValidateExecutorOptions(options_));
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (started_) return absl::FailedPreconditionError("executor already started");
    }
    SubscribeOptions subscribe;
    subscribe.stream = options_.request_stream;
    subscribe.group = options_.consumer_group;
    subscribe.consumer = options_.consumer_name;
    subscribe.dead_letter_stream = options_.dead_letter_stream;
    EVENTBUS_ASSIGN_OR_RETURN(subscription_, stream_->Subscribe(subscribe));
    clock_listener_ = clock_->OnAdvance([this] {
      // Taking the lock orders the wake-up after a waiter's check of the clock: none is lost.
      { std::lock_guard<std::mutex> lock(mu_); }
      fetch_cv_.notify_all();
      supervisor_cv_.notify_all();
      drain_cv_.notify_all();
      watch_cv_.notify_all();
    });
    {
      std::lock_guard<std::mutex> lock(mu_);
      started_ = true;
    }
    settle_queue_.Start();
    progress_->Start();
    if (store_writer_ != nullptr) {
      store_writer_->Start();
      watch_thread_ = std::thread([this] { StoreWatchLoop(); });
    }
    const int workers = EffectiveWorkers(options_);
    for (int i = 0; i < workers; ++i) workers_.emplace_back([this] { WorkerLoop(); });
    supervisor_thread_ = std::thread([this] { SupervisorLoop(); });
    fetch_thread_ = std::thread([this] { FetchLoop(); });
    Log(TaskLogRecord::Level::kInfo,
        absl::StrCat("executor started: stream ", options_.request_stream, ", group ",
                     options_.consumer_group, ", consumer ", options_.consumer_name,
                     ", concurrency ", options_.concurrency, ", max in flight ", max_in_flight_,
                     ", workers ", workers,
                     options_.escalate_to.empty()
                         ? std::string()
                         : absl::StrCat(", out of attempts escalates to ", options_.escalate_to)),
        {});
    return absl::OkStatus();
  }

  void Shutdown() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!started_ || shut_down_) return;
      shut_down_ = true;
      stopping_ = true;
    }
    fetch_cv_.notify_all();
    fetch_thread_.join();
    Log(TaskLogRecord::Level::kInfo,
        absl::StrCat("shutting down: fetching stopped; waiting up to ",
                     FormatIsoDuration(options_.shutdown_deadline), " for running tasks"),
        {});

    // Deliveries fetched but not started go back at once: another worker may take them now.
    std::deque<std::shared_ptr<InFlight>> queued;
    {
      std::lock_guard<std::mutex> lock(mu_);
      queued.swap(queue_);
    }
    for (const auto& task : queued) {
      GiveBackNow(task->delivery, "not started before shutdown");
      Release();
    }

    std::vector<std::shared_ptr<InFlight>> abandoned;
    {
      std::unique_lock<std::mutex> lock(mu_);
      const absl::Time deadline = clock_->Now() + options_.shutdown_deadline;
      WaitUntil(lock, drain_cv_, deadline, [this] { return running_ == 0; });
      for (auto& [id, task] : running_tasks_) {
        if (task->outcome_taken) continue;
        TakeOutcomeLocked(*task);
        abandoned.push_back(task);
      }
      for (const auto& task : abandoned) running_tasks_.erase(task->id);
    }
    for (const auto& task : abandoned) {
      deps_.metrics->TaskFinished(task->type, kOutcomeAbandoned, clock_->Now() - task->started);
      GiveBackNow(task->delivery, "still running at the shutdown deadline");
      Release();
    }
    // What is settling finishes (results being published, acks on their way); a publish that
    // hangs is given back by the supervisor at its timeout.
    {
      std::unique_lock<std::mutex> lock(mu_);
      WaitUntil(lock, drain_cv_, clock_->Now() + options_.publish_timeout + absl::Seconds(1),
                [this] { return held_ == 0; });
      workers_stop_ = true;
    }
    work_cv_.notify_all();
    for (std::thread& worker : workers_) worker.join();
    workers_.clear();
    {
      std::lock_guard<std::mutex> lock(mu_);
      supervisor_stop_ = true;
    }
    supervisor_cv_.notify_all();
    supervisor_thread_.join();
    if (watch_thread_.joinable()) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        watch_stop_ = true;
      }
      watch_cv_.notify_all();
      watch_thread_.join();
    }
    // Every run is over (closed, its last progress sent): nothing more is reported.
    progress_->Stop();
    // Its completions post the next settle steps: stopped while the settle thread still runs.
    if (store_writer_ != nullptr) store_writer_->Stop();
    {
      std::unique_lock<std::shared_mutex> closing(lifeline_->mu);
      lifeline_->open = false;
    }
    settle_queue_.Stop();
    if (absl::Status s = subscription_->Close(); !s.ok()) {
      Log(TaskLogRecord::Level::kWarning, "closing the subscription failed", {}, s.ToString());
    }
    clock_listener_.reset();
    Log(TaskLogRecord::Level::kInfo, "executor stopped", {});
  }

  int in_flight() const {
    std::lock_guard<std::mutex> lock(mu_);
    return held_;
  }

  int running() const {
    std::lock_guard<std::mutex> lock(mu_);
    return running_;
  }

  int stuck_workers() const {
    std::lock_guard<std::mutex> lock(mu_);
    return stuck_workers_;
  }

  ExecutorProgress progress() const {
    const absl::Time now = clock_->Now();
    std::lock_guard<std::mutex> lock(mu_);
    ExecutorProgress p;
    p.stuck_workers = stuck_workers_;
    // Not workers_.size(): Start fills that vector without the lock.
    p.workers = started_ && !workers_stop_ ? EffectiveWorkers(options_) : 0;
    if (fetch_wanted_since_ != absl::InfiniteFuture() && !stopping_) {
      p.fetch_stalled_for = std::max(absl::ZeroDuration(), now - fetch_wanted_since_);
      p.fetch_error = last_fetch_error_;
    }
    return p;
  }

  absl::Status CheckProgress() const {
    const ExecutorProgress p = progress();
    if (p.workers > 0 && p.stuck_workers >= p.workers) {
      return absl::UnavailableError(absl::StrCat(
          "all ", p.workers, " worker threads are held by handlers that overran their timeout: "
          "no synchronous task can run until one returns"));
    }
    const absl::Duration limit = options_.fetch_stall_timeout;
    if (limit > absl::ZeroDuration() && p.fetch_stalled_for >= limit) {
      return absl::UnavailableError(absl::StrCat(
          "no fetch from ", options_.request_stream, " completed for ",
          FormatIsoDuration(absl::Trunc(p.fetch_stalled_for, absl::Milliseconds(1))),
          p.fetch_error.empty() ? std::string(" (the fetch hangs)")
                                : absl::StrCat(": ", p.fetch_error)));
    }
    return absl::OkStatus();
  }

  const ExecutorOptions& options() const { return options_; }

 private:
  // One delivery held by this executor, from fetch until its last settle step completed.
  struct InFlight {
    uint64_t id = 0;
    Delivery delivery;
    // Set once the request parsed (by the store gate, else by dispatch).
    std::shared_ptr<const TaskRequest> request;
    bool parsed = false;
    // The task has a store record this executor marked running: its settle steps record
    // the new state.
    bool tracked = false;
    // An escalation recorded the task queued, and then its publish was refused for good: the
    // dead-lettering that follows moves the record on from queued.
    bool recorded_queued = false;
    std::string type;  // the metrics label
    RetryPolicy retry;
    absl::Duration timeout;
    absl::Time started;
    absl::Time deadline;
    absl::Time next_heartbeat;
    std::unique_ptr<TaskContext> context;
    // The run's progress reports (TaskContext::ReportProgress), closed when the run ends.
    std::shared_ptr<ProgressPublisher::Run> progress;
    // Guarded by Impl::mu_: whoever sets it first (the handler's completion, the supervisor at
    // the deadline, shutdown) decides the delivery's fate; the others leave it alone.
    bool outcome_taken = false;
    bool synchronous = true;
    // Guarded by Impl::publish_mu_: a result publish is outstanding until its completion or
    // its timeout, whichever comes first, claims it.
    absl::Time publish_deadline = absl::InfiniteFuture();
  };
  using TaskPtr = std::shared_ptr<InFlight>;

  // Log fields of a task.
  struct TaskRef {
    const TaskRequest* request = nullptr;
    const Delivery* delivery = nullptr;
  };
  static TaskRef RefOf(const InFlight& task) { return {task.request.get(), &task.delivery}; }

  void Log(TaskLogRecord::Level level, std::string message, TaskRef ref, std::string error = {}) {
    if (!deps_.log) return;
    TaskLogRecord record;
    record.level = level;
    record.message = std::move(message);
    if (ref.request != nullptr) {
      record.task_id = ref.request->id;
      record.task_type = ref.request->type;
    }
    if (ref.delivery != nullptr) {
      record.attempt = ref.delivery->failed_attempts + 1;
      record.delivery_count = ref.delivery->delivery_count;
      record.delivery_id = ref.delivery->id;
    }
    record.error = std::move(error);
    deps_.log(record);
  }

  // Waits (`lock` holds mu_) until `done()` or the clock reaches `until`.
  template <typename Predicate>
  void WaitUntil(std::unique_lock<std::mutex>& lock, std::condition_variable& cv, absl::Time until,
                 Predicate done) {
    while (!done()) {
      const absl::Time now = clock_->Now();
      if (now >= until) return;
      cv.wait_for(lock, absl::ToChronoNanoseconds(std::min(until - now, kMaxRealWait)));
    }
  }

  // ---- fetch ---------------------------------------------------------------------------

  void FetchLoop() {
    absl::Time next_reclaim = clock_->Now();  // orphans of a crashed predecessor: look at once
    bool reclaim_again = false;
    // Orphans are reclaimed into the in-flight room (max_in_flight), not only into free run
    // slots, and run ahead of fresh requests: a survivor saturated with work still takes over
    // all of a dead consumer's deliveries within reclaim_min_idle + reclaim_interval.
    auto reclaim_due = [&] {
      return options_.reclaim_enabled && (reclaim_again || clock_->Now() >= next_reclaim);
    };
    while (true) {
      int free_slots = 0;
      int reclaim_room = 0;
      {
        std::unique_lock<std::mutex> lock(mu_);
        // Refill in batches: wait a moment for several slots to free, then take what is free.
        fetcher_waiting_ = true;
        fetch_cv_.wait_for(lock, kRefillLinger,
                           [this] { return stopping_ || FreeSlotsLocked() >= refill_batch_; });
        auto ready = [&] {
          return stopping_ || FreeSlotsLocked() > 0 || (reclaim_due() && max_in_flight_ > held_);
        };
        while (!ready()) {
          WaitUntil(lock, fetch_cv_,
                    options_.reclaim_enabled && !reclaim_due() ? next_reclaim : absl::InfiniteFuture(),
                    ready);
        }
        fetcher_waiting_ = false;
        if (stopping_) return;
        free_slots = FreeSlotsLocked();
        reclaim_room = max_in_flight_ - held_;
        // From here the fetcher wants events: a stall counts until a fetch completes.
        if (fetch_wanted_since_ == absl::InfiniteFuture()) fetch_wanted_since_ = clock_->Now();
      }
      std::vector<Delivery> deliveries;
      bool reclaimed_some = false;
      if (reclaim_due() && reclaim_room > 0) {
        if (!reclaim_again) next_reclaim = clock_->Now() + options_.reclaim_interval;
        auto reclaimed = subscription_->Reclaim(options_.reclaim_min_idle, reclaim_room);
        reclaim_again = false;
        if (reclaimed.ok()) {
          deliveries = std::move(*reclaimed);
          reclaimed_some = !deliveries.empty();
          // A full batch means there may be more orphans: take them as room frees, not one
          // batch per reclaim interval.
          reclaim_again =
              !deliveries.empty() && static_cast<int>(deliveries.size()) == reclaim_room;
          if (!deliveries.empty()) FetchCompleted();  // no fetch this round: it did the work
          if (!deliveries.empty()) {
            Log(TaskLogRecord::Level::kInfo,
                absl::StrCat("reclaimed ", deliveries.size(), " orphaned deliveries"), {});
          }
        } else {
          deps_.metrics->BackendError(kBackendReclaim);
          Log(TaskLogRecord::Level::kWarning, "reclaim failed", {}, reclaimed.status().ToString());
        }
      }
      if (deliveries.empty()) {
        if (free_slots <= 0) continue;  // woken for a reclaim only
        auto fetched =
            subscription_->Fetch(std::min(free_slots, options_.fetch_batch), options_.fetch_block);
        if (!fetched.ok()) {
          deps_.metrics->BackendError(kBackendFetch);
          Log(TaskLogRecord::Level::kWarning, "fetch failed", {}, fetched.status().ToString());
          std::unique_lock<std::mutex> lock(mu_);
          last_fetch_error_ = fetched.status().ToString();
          WaitUntil(lock, fetch_cv_, clock_->Now() + options_.fetch_error_backoff,
                    [this] { return stopping_; });
          continue;
        }
        deliveries = std::move(*fetched);
        FetchCompleted();
      }
      if (deliveries.empty()) continue;
      const absl::Time now = clock_->Now();
      for (const Delivery& delivery : deliveries) {
        const absl::Time published = EventTime(delivery.event);
        if (delivery.delivery_count == 1 && published != absl::InfinitePast()) {
          deps_.metrics->FetchLag(std::max(absl::ZeroDuration(), now - published));
        }
      }
      std::vector<TaskPtr> tasks;
      // Without a store check between them, holding and queueing are one step: whoever sees
      // the in-flight count then also sees the tasks queued in their final order.
      const bool held = deps_.store == nullptr ? HoldAndQueue(deliveries, reclaimed_some)
                                               : Hold(deliveries, tasks);
      if (!held) {
        for (const Delivery& delivery : deliveries) GiveBackNow(delivery, "fetched during shutdown");
        return;
      }
      if (deps_.store != nullptr) Queue(GateThroughStore(std::move(tasks)), reclaimed_some);
    }
  }

  // A round trip to the backend completed: whatever stall there was is over.
  void FetchCompleted() {
    std::lock_guard<std::mutex> lock(mu_);
    fetch_wanted_since_ = absl::InfiniteFuture();
    last_fetch_error_.clear();
  }

  // Takes fetched deliveries into in-flight slots; false when shutting down (nothing taken).
  bool Hold(std::vector<Delivery>& deliveries, std::vector<TaskPtr>& tasks) {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return false;
    HoldLocked(deliveries, tasks);
    return true;
  }

  // Queues held tasks for the workers (`ahead`: before the queued ones, in order: reclaimed
  // orphans run first even on a saturated executor).
  void Queue(std::vector<TaskPtr> tasks, bool ahead = false) {
    int wake = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      wake = QueueLocked(tasks, ahead);
    }
    Wake(wake);
  }

  // Hold, then Queue, under one lock; false when shutting down (nothing taken).
  bool HoldAndQueue(std::vector<Delivery>& deliveries, bool ahead) {
    std::vector<TaskPtr> tasks;
    int wake = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return false;
      HoldLocked(deliveries, tasks);
      wake = QueueLocked(tasks, ahead);
    }
    Wake(wake);
    return true;
  }

  void HoldLocked(std::vector<Delivery>& deliveries, std::vector<TaskPtr>& tasks) {
    for (Delivery& delivery : deliveries) {
      auto task = std::make_shared<InFlight>();
      task->id = next_task_id_++;
      task->delivery = std::move(delivery);
      tasks.push_back(std::move(task));
    }
    held_ += static_cast<int>(tasks.size());
    deps_.metrics->InFlightChanged(held_);
  }

  // Returns how many idle workers to wake: only as many as there are idle workers and tasks.
  int QueueLocked(std::vector<TaskPtr>& tasks, bool ahead) {
    auto at = ahead ? queue_.begin() : queue_.end();
    for (TaskPtr& task : tasks) at = std::next(queue_.insert(at, std::move(task)));
    return std::min<int>(idle_workers_, static_cast<int>(tasks.size()));
  }

  void Wake(int workers) {
    for (int i = 0; i < workers; ++i) work_cv_.notify_one();
  }

  // ---- dispatch ------------------------------------------------------------------------

  void WorkerLoop() {
    while (true) {
      TaskPtr task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        ++idle_workers_;
        work_cv_.wait(lock, [this] {
          return workers_stop_ || (!queue_.empty() && running_ < options_.concurrency);
        });
        --idle_workers_;
        if (workers_stop_) return;
        task = std::move(queue_.front());
        queue_.pop_front();
        ++running_;
      }
      Dispatch(task);
    }
  }

  // Frees a run slot that never ran a handler (an invalid request).
  void EndRunWithoutHandler() {
    std::lock_guard<std::mutex> lock(mu_);
    --running_;
    WakeWorkerLocked();
    WakeFetcherLocked();
    if (running_ == 0) drain_cv_.notify_all();
  }

  void WakeWorkerLocked() {
    if (!queue_.empty() && idle_workers_ > 0) work_cv_.notify_one();
  }

  absl::Time RequestedAt(const Delivery& delivery) const {
    absl::Time t = EventTime(delivery.event);
    if (t != absl::InfinitePast()) return t;
    if (delivery.first_delivery_time != absl::InfinitePast()) return delivery.first_delivery_time;
    return clock_->Now();
  }

  absl::StatusOr<TaskPolicy> ResolvePolicy(const TaskHandler& handler,
                                           const TaskRequest& request) const {
    TaskPolicy policy = handler.DefaultPolicy();
    if (auto it = options_.type_policies.find(request.type); it != options_.type_policies.end()) {
      policy = it->second;
    }
    policy.retry = request.retry.ApplyTo(policy.retry);
    if (request.timeout) policy.timeout = *request.timeout;
    if (absl::Status s = policy.retry.Validate(); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("\"retry\": ", s.message()));
    }
    if (policy.timeout > options_.max_task_timeout) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"timeout\": ", FormatIsoDuration(policy.timeout), " exceeds the executor's maximum ",
          FormatIsoDuration(options_.max_task_timeout)));
    }
    return policy;
  }

  void Dispatch(const TaskPtr& task) {
    const Delivery& delivery = task->delivery;
    const absl::Time start = clock_->Now();
    if (!task->parsed) {
      auto parsed = ParseTaskRequest(delivery.event.data());
      if (!parsed.ok()) {
        EndRunWithoutHandler();
        std::optional<TaskRequest> identity = SalvageTaskIdentity(delivery.event.data());
        if (identity) task->request = std::make_shared<const TaskRequest>(std::move(*identity));
        Reject(task, absl::StrCat("invalid task request: ", parsed.status().message()));
        return;
      }
      task->request = std::make_shared<const TaskRequest>(std::move(*parsed));
      task->parsed = true;
    }
    const TaskRequest& request = *task->request;
    TaskHandler* handler = handlers_->Find(request.type);
    if (handler == nullptr) {
      EndRunWithoutHandler();
      Reject(task, absl::StrCat("invalid task request: unknown task type \"", request.type,
                                "\"; registered types: ", absl::StrJoin(handlers_->Types(), ", ")));
      return;
    }
    task->type = request.type;
    if (absl::Status s = handler->Supports(request); !s.ok()) {
      EndRunWithoutHandler();
      Reject(task, absl::StrCat("invalid task request: ", s.message()));
      return;
    }
    if (options_.max_deliveries > 0 && delivery.delivery_count > options_.max_deliveries) {
      EndRunWithoutHandler();
      const std::string reason = absl::StrCat(
          "delivered ", delivery.delivery_count, " times without finishing (more than ",
          options_.max_deliveries, "): a worker probably crashes or hangs on it");
      Log(TaskLogRecord::Level::kError, "task dead-lettered unrun", RefOf(*task), reason);
      TaskResult result = BaseResult(*task);
      result.status = TaskStatus::kFailed;
      result.error_kind = "transient";
      result.error = reason;
      deps_.metrics->TaskFinished(request.type, kOutcomeFailed, absl::ZeroDuration());
      PublishThenDeadLetter(task, std::move(result), reason);
      return;
    }
    auto policy = ResolvePolicy(*handler, request);
    if (!policy.ok()) {
      EndRunWithoutHandler();
      Reject(task, absl::StrCat("invalid task request: ", policy.status().message()));
      return;
    }

    task->retry = policy->retry;
    task->timeout = policy->timeout;
    task->started = start;
    task->deadline = start + policy->timeout;
    task->next_heartbeat = start + options_.heartbeat_interval;
    task->synchronous = !handler->asynchronous();
    task->context = std::make_unique<TaskContext>(request, delivery.failed_attempts + 1,
                                                  RequestedAt(delivery), task->deadline, clock_,
                                                  delivery.delivery_count);
    task->progress = progress_->Open(request.id, request.type, delivery.failed_attempts + 1,
                                     task->tracked);
    task->context->set_progress_sink(
        [run = task->progress](std::string progress) { return run->Report(std::move(progress)); });
    {
      std::lock_guard<std::mutex> lock(mu_);
      running_tasks_.emplace(task->id, task);
      // The supervisor sleeps until the earliest deadline it knows: wake it only when this
      // one comes sooner.
      const absl::Time due =
          options_.heartbeat_interval > absl::ZeroDuration()
              ? std::min(task->deadline, task->next_heartbeat)
              : task->deadline;
      if (due < supervisor_wake_at_) {
        supervisor_wake_at_ = due;
        ++supervisor_kicks_;
        supervisor_cv_.notify_one();
      }
    }
    Log(TaskLogRecord::Level::kDebug, "task started", RefOf(*task));

    if (!task->synchronous) {
      try {
        handler->HandleAsync(*task->context,
                             [this, task](TaskOutcome outcome) { OnOutcome(task, outcome); });
      } catch (const std::exception& e) {
        OnOutcome(task, TaskOutcome::Permanent(absl::StrCat("handler threw: ", e.what())));
      } catch (...) {
        OnOutcome(task, TaskOutcome::Permanent("handler threw a non-standard exception"));
      }
      return;
    }
    TaskOutcome outcome = TaskOutcome::Permanent("handler produced no outcome");
    try {
      outcome = handler->Handle(*task->context);
    } catch (const std::exception& e) {
      // A handler bug must not take the worker (or the service) down with it; retrying the
      // same input would throw again.
      outcome = TaskOutcome::Permanent(absl::StrCat("handler threw: ", e.what()));
    } catch (...) {
      outcome = TaskOutcome::Permanent("handler threw a non-standard exception");
    }
    OnOutcome(task, outcome);
  }

  // ---- outcome -------------------------------------------------------------------------

  // `lock` holds mu_. The run ends for the executor: its slot frees; a synchronous handler
  // still holding its worker counts as stuck until it returns.
  void TakeOutcomeLocked(InFlight& task) {
    task.outcome_taken = true;
    --running_;
    if (task.context != nullptr) task.context->Cancel();
    if (task.progress != nullptr) progress_->Close(*task.progress);
    if (task.synchronous) ++stuck_workers_;
    WakeWorkerLocked();
    WakeFetcherLocked();
    if (running_ == 0) drain_cv_.notify_all();
  }

  void OnOutcome(const TaskPtr& task, const TaskOutcome& outcome) {
    bool mine;
    {
      std::lock_guard<std::mutex> lock(mu_);
      mine = !task->outcome_taken;
      if (mine) {
        task->outcome_taken = true;
        --running_;
        running_tasks_.erase(task->id);
        WakeWorkerLocked();
        WakeFetcherLocked();
        if (running_ == 0) drain_cv_.notify_all();
      } else if (task->synchronous) {
        --stuck_workers_;
      }
    }
    if (!mine) {
      Log(TaskLogRecord::Level::kInfo,
          "handler returned after the executor gave up on it (timeout or shutdown); its outcome "
          "is discarded",
          RefOf(*task));
      return;
    }
    // Its last progress is recorded before the settle's store write (the StoreWriter keeps
    // their order), so a watcher sees the final state last.
    if (task->progress != nullptr) progress_->Close(*task->progress);
    Settle(task, outcome, clock_->Now() - task->started, "transient");
  }

  // ---- settle --------------------------------------------------------------------------

  TaskResult BaseResult(const InFlight& task) const {
    TaskResult result;
    result.task_id = task.request->id;
    result.type = task.request->type;
    result.attempts = task.delivery.failed_attempts + 1;
    result.deliveries = task.delivery.delivery_count;
    result.request_event_id = task.delivery.event.id();
    result.completed_at = clock_->Now();
    result.metadata = task.request->metadata;
    return result;
  }

  void Settle(const TaskPtr& task, const TaskOutcome& outcome, absl::Duration duration,
              absl::string_view transient_kind) {
    // Attempts, not deliveries: a delayed redelivery or a give-back is no failed attempt.
    const int attempt = task->delivery.failed_attempts + 1;
    switch (outcome.kind()) {
      case TaskOutcome::Kind::kSucceeded: {
        TaskResult result = BaseResult(*task);
        result.status = TaskStatus::kSucceeded;
        result.output = outcome.output();
        result.duration = duration;
        std::string stored = task->tracked ? TaskResultToJson(result) : std::string();
        PublishResult(task, std::move(result),
                      [this, task, duration, attempt, stored = std::move(stored)](absl::Status published) {
          if (!published.ok()) {
            // Without its result the task is not done: run it again later (at-least-once).
            deps_.metrics->TaskFinished(task->type, kOutcomeRetried, duration);
            Nack(task, task->retry.Backoff(attempt, *deps_.random), "result not published");
            return;
          }
          deps_.metrics->TaskFinished(task->type, kOutcomeSucceeded, duration);
          // The result is durable before the store says succeeded, and the store says so
          // before the ack: a redelivery either finds it succeeded or runs it again.
          Record(task, FinalUpdate(taskstore::TaskState::kSucceeded, stored, {}),
                 [this, task] { Ack(task); });
        },
                      // Refused as too large, the run ends failed (or is given back when even
                      // the failure is not published), and the lambda above never counts it.
                      [this, task, duration](absl::string_view outcome) {
                        deps_.metrics->TaskFinished(task->type, outcome, duration);
                      });
        return;
      }
      case TaskOutcome::Kind::kRedeliverAfter: {
        deps_.metrics->TaskFinished(task->type, kOutcomeDelayed, duration);
        Log(TaskLogRecord::Level::kDebug,
            absl::StrCat("task redelivered in ", FormatIsoDuration(outcome.delay())),
            RefOf(*task));
        // Back to queued (its request is on the stream again) before it is given back, so the
        // store's write never lands after the redelivery marked it running.
        taskstore::TaskUpdate waiting = StoreUpdate();
        waiting.state = taskstore::TaskState::kQueued;
        waiting.lease_until = absl::InfinitePast();
        Record(task, std::move(waiting), [this, task, delay = outcome.delay()] {
          Nack(task, delay, "delayed redelivery");
        });
        return;
      }
      case TaskOutcome::Kind::kTransientFailure: {
        if (task->retry.ShouldRetry(attempt)) {
          const absl::Duration backoff = task->retry.Backoff(attempt, *deps_.random);
          deps_.metrics->TaskFinished(task->type, kOutcomeRetried, duration);
          deps_.metrics->TaskRetried(task->type, backoff);
          Log(TaskLogRecord::Level::kWarning,
              absl::StrCat("task failed (", transient_kind, "); retry ", attempt + 1, " of ",
                           task->retry.max_attempts, " in ", FormatIsoDuration(backoff)),
              RefOf(*task), outcome.error());
          taskstore::TaskUpdate retrying = StoreUpdate();
          retrying.state = taskstore::TaskState::kRetrying;
          retrying.last_error = outcome.error();
          retrying.lease_until = absl::InfinitePast();
          retrying.append_history = AttemptHistory(*task, std::string(transient_kind), outcome.error());
          Record(task, std::move(retrying), [this, task, backoff] { Nack(task, backoff, "retry", NackKind::kFailed); });
          return;
        }
        const std::string gave_up =
            absl::StrCat(transient_kind, " failure, gave up after ", attempt, " attempt",
                         attempt == 1 ? "" : "s", ": ", outcome.error());
        if (!options_.escalate_to.empty()) {
          Escalate(task, outcome, duration, transient_kind, gave_up);
          return;
        }
        Fail(task, outcome, duration, transient_kind, gave_up);
        return;
      }
      case TaskOutcome::Kind::kPermanentFailure:
        Fail(task, outcome, duration, "permanent",
             absl::StrCat("permanent failure: ", outcome.error()));
        return;
    }
  }

  void Fail(const TaskPtr& task, const TaskOutcome& outcome, absl::Duration duration,
            absl::string_view kind, std::string reason) {
    // The dead letter's data carries every earlier tier in full ("escalations"); its reason
    // sums them up for whoever reads only the reason (the CLI's and dashboard's DLQ lists).
    for (const TierHistory& tier : task->request->escalations) {
      absl::StrAppend(&reason, "; earlier tier ", tier.stream, ": ", tier.attempts, " attempt",
                      tier.attempts == 1 ? "" : "s", ", ", tier.error_kind, ": ", tier.error);
    }
    TaskResult result = BaseResult(*task);
    result.status = TaskStatus::kFailed;
    result.output = outcome.output();
    result.duration = duration;
    result.error_kind = std::string(kind);
    result.error = outcome.error();
    deps_.metrics->TaskFinished(task->type, kOutcomeFailed, duration);
    Log(TaskLogRecord::Level::kError, "task failed; dead-lettered", RefOf(*task), reason);
    PublishThenDeadLetter(task, std::move(result), reason);
  }

  // Out of attempts on this tier: the task goes on to the next (options_.escalate_to) with the
  // tiers it left, instead of to the dead-letter stream, and no result is published (it is not
  // done). The store says queued before the request is published, so the next tier's executor
  // finds it queued rather than having its `running` overwritten; the publish is durable
  // before the original is acked, so a crash in between gives a duplicate on the next tier
  // (settled by the store once the task succeeded), never a loss.
  void Escalate(const TaskPtr& task, const TaskOutcome& outcome, absl::Duration duration,
                absl::string_view kind, const std::string& gave_up) {
    const TaskRequest& request = *task->request;
    const int attempts = task->delivery.failed_attempts + 1;
    const bool cycle = std::any_of(
        request.escalations.begin(), request.escalations.end(),
        [this](const TierHistory& tier) { return tier.stream == options_.escalate_to; });
    if (cycle || static_cast<int>(request.escalations.size()) >= kMaxEscalations) {
      // A loop of EXECUTOR_ESCALATE_TO settings would pass the task round for ever.
      Fail(task, outcome, duration, kind,
           absl::StrCat(gave_up, "; not escalated to ", options_.escalate_to, ": ",
                        cycle ? "the task already went through that tier (EXECUTOR_ESCALATE_TO "
                                "settings form a cycle)"
                              : absl::StrCat("it already went through ", kMaxEscalations,
                                             " tiers")));
      return;
    }
    TaskRequest next = request;
    TierHistory tier;
    tier.stream = options_.request_stream;
    tier.attempts = attempts;
    tier.error_kind = std::string(kind);
    tier.error = outcome.error();
    tier.consumer = options_.consumer_name;
    tier.escalated_at = clock_->Now();
    next.escalations.push_back(tier);
    Event event = MakeTaskRequestEvent(next, options_.result_source);
    // The same id for every escalation of this delivery: a backend that de-duplicates
    // publishes by id (Capabilities::publish_dedupe_window) drops the copy a crash between
    // publish and ack makes.
    event.set_id(absl::StrCat(task->delivery.event.id(), ">", options_.escalate_to));
    for (absl::string_view trace : {"traceparent", "tracestate"}) {
      if (auto it = task->delivery.event.headers().find(std::string(trace));
          it != task->delivery.event.headers().end()) {
        (*event.mutable_headers())[it->first] = it->second;
      }
    }
    deps_.metrics->TaskFinished(task->type, kOutcomeEscalated, duration);
    Log(TaskLogRecord::Level::kWarning, absl::StrCat("task escalated to ", options_.escalate_to),
        RefOf(*task), gave_up);

    taskstore::TaskUpdate queued = StoreUpdate();
    queued.state = taskstore::TaskState::kQueued;
    queued.attempts = 0;  // the next tier counts afresh; the history keeps these
    queued.last_error = outcome.error();
    queued.owner = "";
    queued.lease_until = absl::InfinitePast();
    nlohmann::json entry =
        nlohmann::json::parse(AttemptHistory(*task, std::string(kind), outcome.error()));
    entry["escalated_to"] = options_.escalate_to;
    entry["tier"] = static_cast<int>(next.escalations.size()) + 1;
    queued.append_history = entry.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    Record(task, std::move(queued), [this, task, event = std::move(event), outcome, duration,
                                     kind = std::string(kind), gave_up]() mutable {
      PublishForTask(task, options_.escalate_to, std::move(event),
                     [this, task, outcome, duration, kind, gave_up](absl::Status s) {
        if (s.ok()) {
          Ack(task);
          return;
        }
        Log(TaskLogRecord::Level::kError, "publishing the escalated task failed", RefOf(*task),
            s.ToString());
        if (absl::IsInvalidArgument(s)) {
          // Refused for good (too large with its history, say): rerunning the last attempt
          // would be refused again, for ever.
          task->recorded_queued = true;
          Fail(task, outcome, duration, kind,
               absl::StrCat(gave_up, "; not escalated to ", options_.escalate_to, ": ",
                            s.message()));
          return;
        }
        // Its last attempt runs again on this tier (a give-back is no failed attempt).
        Nack(task, options_.fetch_error_backoff, "escalation not published");
      });
    });
  }

  // The delivery is invalid: dead-letter it at once, and tell whoever waits for the result.
  void Reject(const TaskPtr& task, std::string reason) {
    const TaskRequest* request = task->request.get();
    const bool known_type = request != nullptr && handlers_->Find(request->type) != nullptr;
    task->type = known_type ? request->type : std::string(kUnknownTypeLabel);
    Log(TaskLogRecord::Level::kWarning, "invalid task request dead-lettered", RefOf(*task),
        reason);
    deps_.metrics->TaskFinished(task->type, kOutcomeInvalid, absl::ZeroDuration());
    if (request == nullptr) {
      settle_queue_.Post([this, task, reason = std::move(reason)] { DeadLetter(task, reason); });
      return;
    }
    TaskResult result = BaseResult(*task);
    result.status = TaskStatus::kFailed;
    result.error_kind = "invalid";
    result.error = reason;
    PublishThenDeadLetter(task, std::move(result), std::move(reason));
  }

  // The failure's result first, then the dead letter: if the result cannot be published, the
  // delivery is given back rather than dead-lettered without the result its caller waits for.
  void PublishThenDeadLetter(const TaskPtr& task, TaskResult result, std::string reason) {
    std::string stored = task->tracked ? TaskResultToJson(result) : std::string();
    std::string kind = result.error_kind;
    PublishResult(task, std::move(result),
                  [this, task, reason = std::move(reason), stored = std::move(stored),
                   kind = std::move(kind)](absl::Status published) {
                    if (!published.ok()) {
                      Nack(task, options_.fetch_error_backoff, "failure result not published");
                      return;
                    }
                    RecordThenDeadLetter(task, stored, kind, reason);
                  });
  }

  // The store says dead_lettered before the dead letter exists: a manual retry never finds a
  // dead letter whose task the store still calls running.
  void RecordThenDeadLetter(const TaskPtr& task, const std::string& stored_result,
                            const std::string& kind, const std::string& reason) {
    taskstore::TaskUpdate update =
        FinalUpdate(taskstore::TaskState::kDeadLettered, stored_result, reason);
    update.append_history = AttemptHistory(*task, kind, reason);
    Record(task, std::move(update), [this, task, reason] { DeadLetter(task, reason); });
  }

  // Publishes `result` without waiting; `next` runs on the settle thread with the outcome,
  // once: when the backend confirmed it or failed, or when publish_timeout passed first.
  //
  // A result the backend refuses as too large (InvalidArgument) is published once more
  // without its output and error, as a failure that says so, and the request is dead-lettered
  // instead of running `next`: a request is never run again because its result is too big.
  // Only when that failure is not published either is the request given back. `count_refused`
  // (if set) learns the run's outcome then, for callers that count it in `next`.
  void PublishResult(const TaskPtr& task, TaskResult result,
                     std::function<void(absl::Status)> next,
                     std::function<void(absl::string_view)> count_refused = nullptr) {
    Event event = MakeTaskResultEvent(result, options_.result_source);
    const size_t event_bytes = EventSizeBytes(event);
    const std::string status_name(TaskStatusName(result.status));
    PublishForTask(
        task, options_.result_stream, std::move(event),
        [this, task, next = std::move(next), status_name, event_bytes,
         count_refused = std::move(count_refused),
         result = std::make_shared<TaskResult>(std::move(result))](absl::Status status) {
          if (status.ok()) {
            deps_.metrics->ResultPublished(status_name);
            next(absl::OkStatus());
            return;
          }
          // Not only an output is too large: a failure's error (or an invalid request's) can
          // be too, and giving such a request back would refuse its result on every run.
          if (absl::IsInvalidArgument(status) && result->error_kind != kResultTooLarge) {
            PublishWithoutOutput(task, *result, event_bytes, status, count_refused);
            return;
          }
          Log(TaskLogRecord::Level::kError, "publishing the task result failed", RefOf(*task),
              status.ToString());
          next(status);
        });
  }

  // Publishes `event` for `task` without waiting; `done` runs on the settle thread with the
  // outcome, once, unless publish_timeout passes first (the supervisor gives the delivery
  // back then, and a late completion is dropped).
  void PublishForTask(const TaskPtr& task, absl::string_view stream, Event event,
                      std::function<void(absl::Status)> done) {
    {
      std::lock_guard<std::mutex> lock(publish_mu_);
      task->publish_deadline = clock_->Now() + options_.publish_timeout;
      publishing_.emplace(task->id, task);
    }
    auto on_published = [this, task, done = std::move(done)](
                            absl::StatusOr<PublishReceipt> receipt) mutable {
      if (!ClaimPublish(*task)) return;  // the supervisor gave it up at publish_timeout
      settle_queue_.Post([done = std::move(done), status = receipt.status()] { done(status); });
    };
    // The stream outlives the executor, and a publish may complete after Shutdown gave up
    // waiting for it: the callback reaches the executor only through the lifeline.
    auto guarded = [lifeline = lifeline_, on_published = std::move(on_published)](
                       absl::StatusOr<PublishReceipt> receipt) mutable {
      std::shared_lock<std::shared_mutex> alive(lifeline->mu);
      if (lifeline->open) on_published(std::move(receipt));
    };
    absl::Status queued = stream_->Publish(stream, std::move(event), guarded);
    if (!queued.ok()) guarded(queued);
  }

  // The failure that replaces a result refused as too large. It leaves out the output (or the
  // error), and when the backend refuses that too, the request's metadata as well: labels of
  // any size are copied from the request into its result, and a request within a few hundred
  // bytes of the limit (or on a stream with a higher one) fits where its result never will.
  // What remains (ids of at most 200 bytes, the reason) is bounded; only when even that is not
  // published is the request given back.
  void PublishWithoutOutput(const TaskPtr& task, const TaskResult& original, size_t event_bytes,
                            const absl::Status& refusal,
                            const std::function<void(absl::string_view)>& count_refused) {
    TaskResult failure = original;
    failure.output = nullptr;
    failure.status = TaskStatus::kFailed;
    failure.error_kind = std::string(kResultTooLarge);
    PublishTooLargeFailure(task, std::move(failure),
                           absl::StrCat("result not published: its event of ", event_bytes,
                                        " bytes was refused by the backend (", refusal.message(),
                                        "); ", original.output != nullptr ? "output" : "error"),
                           count_refused);
  }

  // `failure` with its error `refused` + " dropped"; its metadata goes too when it is refused
  // with them (`refused` then names both).
  void PublishTooLargeFailure(const TaskPtr& task, TaskResult failure, std::string refused,
                              const std::function<void(absl::string_view)>& count_refused) {
    std::string reason = absl::StrCat(refused, " dropped");
    Log(TaskLogRecord::Level::kError, "task result too large", RefOf(*task), reason);
    failure.error = reason;
    std::shared_ptr<TaskResult> without_metadata;
    if (!failure.metadata.empty()) {
      without_metadata = std::make_shared<TaskResult>(failure);
      without_metadata->metadata.clear();
    }
    std::string stored = task->tracked ? TaskResultToJson(failure) : std::string();
    PublishResult(task, std::move(failure),
                  [this, task, reason = std::move(reason), refused = std::move(refused),
                   count_refused, stored = std::move(stored),
                   without_metadata = std::move(without_metadata)](absl::Status published) {
      if (absl::IsInvalidArgument(published) && without_metadata != nullptr) {
        PublishTooLargeFailure(task, std::move(*without_metadata),
                               absl::StrCat(refused, " and metadata"), count_refused);
        return;
      }
      if (!published.ok()) {
        if (count_refused) count_refused(kOutcomeRetried);
        Nack(task, options_.fetch_error_backoff, "failure result not published");
        return;
      }
      if (count_refused) count_refused(kOutcomeFailed);
      RecordThenDeadLetter(task, stored, std::string(kResultTooLarge), reason);
    });
  }

  // True for the first of the publish's completion and its timeout.
  bool ClaimPublish(InFlight& task) {
    std::lock_guard<std::mutex> lock(publish_mu_);
    return publishing_.erase(task.id) > 0;
  }

  // The remaining settle steps run on the settle thread (they may be synchronous in backends
  // that do not batch); their completions free the slot from whatever thread they arrive on.
  void Ack(const TaskPtr& task) {
    subscription_->AckAsync(task->delivery, [this, task](absl::Status s) {
      if (!s.ok()) {
        Log(TaskLogRecord::Level::kWarning, "ack failed (the task may run again)", RefOf(*task),
            s.ToString());
      } else {
        Log(TaskLogRecord::Level::kDebug, "task succeeded", RefOf(*task));
      }
      Release();
    });
  }

  // kGiveBack unless the run failed and is retried: only failures count as attempts.
  void Nack(const TaskPtr& task, absl::Duration delay, std::string why,
            NackKind kind = NackKind::kGiveBack) {
    subscription_->NackAsync(task->delivery, delay, kind, [this, task, why](absl::Status s) {
      Log(s.ok() ? TaskLogRecord::Level::kDebug : TaskLogRecord::Level::kWarning,
          absl::StrCat("delivery given back: ", why), RefOf(*task),
          s.ok() ? std::string() : s.ToString());
      Release();
    });
  }

  void DeadLetter(const TaskPtr& task, std::string reason) {
    subscription_->DeadLetterAsync(task->delivery, reason, [this, task](absl::Status s) {
      if (s.ok()) {
        deps_.metrics->TaskDeadLettered(task->type);
        Release();
        return;
      }
      Log(TaskLogRecord::Level::kError, "dead-lettering failed; giving the delivery back",
          RefOf(*task), s.ToString());
      // Nothing is lost: the delivery comes back and is judged again.
      settle_queue_.Post([this, task] {
        Nack(task, options_.fetch_error_backoff, "dead-lettering failed");
      });
    });
  }

  // Synchronous give-back, for shutdown (the settle thread may be gone by then).
  void GiveBackNow(const Delivery& delivery, absl::string_view why) {
    absl::Status s = subscription_->Nack(delivery, absl::ZeroDuration());
    Log(s.ok() ? TaskLogRecord::Level::kInfo : TaskLogRecord::Level::kWarning,
        absl::StrCat("delivery given back: ", why), {nullptr, &delivery},
        s.ok() ? std::string() : s.ToString());
  }

  // ---- store gate (with a task store): one read and one write per fetched batch ---------

  // Parses the batch's requests, reads their records in one GetMany, settles without running
  // what the store says must not run, and marks the rest running in one UpdateMany. Returns
  // the tasks to queue. Requests without a record (or unparseable ones, which dispatch
  // rejects) run untracked.
  std::vector<TaskPtr> GateThroughStore(std::vector<TaskPtr> tasks) {
    std::vector<std::string> ids;
    ids.reserve(tasks.size());
    for (const TaskPtr& task : tasks) {
      auto parsed = ParseTaskRequest(task->delivery.event.data());
      if (!parsed.ok()) continue;
      task->request = std::make_shared<const TaskRequest>(std::move(*parsed));
      task->parsed = true;
      ids.push_back(task->request->id);
    }
    if (ids.empty()) return tasks;
    auto records = deps_.store->GetMany(ids);
    if (!records.ok()) {
      // Running unchecked could run a cancelled or finished task: give the batch back.
      deps_.metrics->BackendError("store_read");
      Log(TaskLogRecord::Level::kWarning, "task store read failed; batch given back", {},
          records.status().ToString());
      for (const TaskPtr& task : tasks) {
        settle_queue_.Post([this, task] {
          Nack(task, options_.fetch_error_backoff, "task store unavailable");
        });
      }
      return {};
    }
    std::map<absl::string_view, const taskstore::TaskRecord*> by_id;
    for (const taskstore::TaskRecord& record : *records) by_id.emplace(record.id, &record);
    std::vector<TaskPtr> run;
    std::vector<TaskPtr> marking;
    std::vector<taskstore::TaskUpdateRequest> updates;
    const absl::Time now = clock_->Now();
    std::set<absl::string_view> tracked_in_batch;
    for (const TaskPtr& task : tasks) {
      if (!task->parsed) {
        run.push_back(task);
        continue;
      }
      auto it = by_id.find(task->request->id);
      if (it == by_id.end()) {
        run.push_back(task);
        continue;
      }
      if (!tracked_in_batch.insert(task->request->id).second) {
        // The same task twice in one batch (a scheduler or client published it again after a
        // crash, and both copies arrived together): the record read above cannot tell them
        // apart, so without this both would run. The first delivery runs it; this one is
        // redundant.
        task->type = handlers_->Find(task->request->type) != nullptr
                         ? task->request->type
                         : std::string(kUnknownTypeLabel);
        deps_.metrics->TaskFinished(task->type, kOutcomeDuplicate, absl::ZeroDuration());
        Log(TaskLogRecord::Level::kInfo, "same task delivered twice in one batch; acked unrun",
            RefOf(*task));
        settle_queue_.Post([this, task] { Ack(task); });
        continue;
      }
      if (IsRedriveOfAFinishedFailure(*task, *it->second)) {
        // Put back from the dead-letter stream by hand (`eventbus dlq redrive`, the
        // dashboard): a retry by hand, with a fresh attempt count, like POST :retry.
        taskstore::TaskUpdate update = RunningUpdate(*task->request, now);
        update.from = {taskstore::TaskState::kDeadLettered, taskstore::TaskState::kFailed};
        update.attempts = 0;
        marking.push_back(task);
        updates.push_back({task->request->id, std::move(update)});
        continue;
      }
      if (SettledByStore(task, *it->second)) continue;
      marking.push_back(task);
      updates.push_back({task->request->id, RunningUpdate(*task->request, now)});
    }
    if (updates.empty()) return run;
    std::vector<absl::StatusOr<taskstore::TaskRecord>> marked = deps_.store->UpdateMany(updates);
    for (size_t i = 0; i < marking.size(); ++i) {
      const TaskPtr& task = marking[i];
      if (i < marked.size() && marked[i].ok()) {
        task->tracked = true;
        run.push_back(task);
        continue;
      }
      const absl::Status error =
          i < marked.size() ? marked[i].status() : absl::InternalError("missing update result");
      if (absl::IsFailedPrecondition(error) || absl::IsNotFound(error)) {
        // Changed since the read (cancelled, finished elsewhere): decide on what it is now.
        auto fresh = deps_.store->Get(task->request->id);
        if (fresh.ok() && SettledByStore(task, *fresh)) continue;
        Log(TaskLogRecord::Level::kWarning, "task runs untracked: its store record changed",
            RefOf(*task), error.ToString());
        run.push_back(task);
        continue;
      }
      deps_.metrics->BackendError("store_write");
      Log(TaskLogRecord::Level::kWarning, "marking a task running failed; given back",
          RefOf(*task), error.ToString());
      settle_queue_.Post([this, task] {
        Nack(task, options_.fetch_error_backoff, "task store unavailable");
      });
    }
    return run;
  }

  // A request event redriven from the dead-letter stream (it carries kRedrivesHeader) whose
  // task ended dead-lettered or failed.
  static bool IsRedriveOfAFinishedFailure(const InFlight& task, const taskstore::TaskRecord& record) {
    return (record.state == taskstore::TaskState::kDeadLettered ||
            record.state == taskstore::TaskState::kFailed) &&
           !record.cancel_requested &&
           task.delivery.event.headers().contains(std::string(kRedrivesHeader));
  }

  // True when `record` settles the delivery without running it: a succeeded task is settled
  // with its stored result (effectively once), a cancelled one is never run, a failed or
  // dead-lettered one goes (back) to the dead-letter stream. (A `failed` task is one whose
  // publish the API could not confirm: its request did arrive, so it runs.)
  bool SettledByStore(const TaskPtr& task, const taskstore::TaskRecord& record) {
    task->type = handlers_->Find(task->request->type) != nullptr ? task->request->type
                                                                 : std::string(kUnknownTypeLabel);
    if (record.cancel_requested && !taskstore::IsFinal(record.state)) {
      // Cancelled while an earlier delivery ran (it asked for a redelivery, or its executor
      // died or gave it back): mark it ours, then record it cancelled.
      task->tracked = MarkRunning(task);
      SettleCancelled(task, /*record=*/task->tracked);
      return true;
    }
    switch (record.state) {
      case taskstore::TaskState::kSucceeded:
        SettleAlreadySucceeded(task, record);
        return true;
      case taskstore::TaskState::kCancelled:
        Log(TaskLogRecord::Level::kInfo, "cancelled task not run", RefOf(*task));
        SettleCancelled(task, /*record=*/false);
        return true;
      // kFailed: the API could not confirm its publish, yet here it is: it runs.
      case taskstore::TaskState::kDeadLettered: {
        std::string reason = absl::StrCat("already ", taskstore::TaskStateName(record.state),
                                          " in the task store: ", record.last_error);
        settle_queue_.Post([this, task, reason] { DeadLetter(task, reason); });
        return true;
      }
      default:
        return false;
    }
  }

  // Rare path (a cancel request found at fetch): one task marked running on its own.
  bool MarkRunning(const TaskPtr& task) {
    return deps_.store->Update(task->request->id, RunningUpdate(*task->request, clock_->Now()))
        .ok();
  }

  taskstore::TaskUpdate RunningUpdate(const TaskRequest& request, absl::Time now) const {
    absl::Duration timeout = options_.max_task_timeout;
    if (const TaskHandler* handler = handlers_->Find(request.type)) {
      if (auto policy = ResolvePolicy(*handler, request); policy.ok()) timeout = policy->timeout;
    }
    taskstore::TaskUpdate update;
    update.from = {taskstore::TaskState::kScheduled, taskstore::TaskState::kQueued,
                   taskstore::TaskState::kRunning, taskstore::TaskState::kRetrying,
                   taskstore::TaskState::kFailed};
    update.now = now;
    update.state = taskstore::TaskState::kRunning;
    update.increment_attempts = true;
    update.started_at = now;
    // "<consumer> on <request stream>": the stuck-task pass re-queues a task onto the stream
    // (the tier) it ran on (RunningOwnerStream in scheduler.cc reads it back).
    update.owner = absl::StrCat(options_.consumer_name, " on ", options_.request_stream);
    update.lease_until = now + timeout + options_.store_lease_grace;
    return update;
  }

  void SettleAlreadySucceeded(const TaskPtr& task, const taskstore::TaskRecord& record) {
    deps_.metrics->TaskFinished(task->type, kOutcomeDuplicate, absl::ZeroDuration());
    Log(TaskLogRecord::Level::kInfo, "task already succeeded; settled with its stored result",
        RefOf(*task));
    auto stored = ParseTaskResult(record.result);
    if (!stored.ok()) {
      settle_queue_.Post([this, task] { Ack(task); });
      return;
    }
    PublishResult(task, std::move(*stored), [this, task](absl::Status published) {
      if (!published.ok()) {
        Nack(task, options_.fetch_error_backoff, "stored result not published");
        return;
      }
      Ack(task);
    });
  }

  // Publishes a failed result of kind "cancelled" (whoever waits for the result learns it),
  // records `cancelled` when `record` (the task was marked running here), and acks.
  void SettleCancelled(const TaskPtr& task, bool record) {
    deps_.metrics->TaskFinished(task->type, kOutcomeCancelled, absl::ZeroDuration());
    TaskResult result = BaseResult(*task);
    result.status = TaskStatus::kFailed;
    result.error_kind = "cancelled";
    result.error = "cancelled through the task API";
    std::string stored = record && task->tracked ? TaskResultToJson(result) : std::string();
    PublishResult(task, std::move(result),
                  [this, task, record, stored = std::move(stored)](absl::Status published) {
                    if (!published.ok()) {
                      Nack(task, options_.fetch_error_backoff, "cancel result not published");
                      return;
                    }
                    if (!record) return Ack(task);
                    Record(task,
                           FinalUpdate(taskstore::TaskState::kCancelled, stored,
                                       "cancelled through the task API"),
                           [this, task] { Ack(task); });
                  });
  }

  // ---- store records: the state each settle step writes --------------------------------

  // Writes `update` of a tracked task through the StoreWriter (batched with other tasks'),
  // then runs `next` on the settle thread. Untracked: `next` at once. A failed write is
  // logged and `next` runs anyway: the broker's settle step (the work is done, its result
  // durable) matters more than the record, which then lags behind.
  void Record(const TaskPtr& task, taskstore::TaskUpdate update, std::function<void()> next) {
    if (!task->tracked || store_writer_ == nullptr) {
      settle_queue_.Post(std::move(next));
      return;
    }
    update.from = {taskstore::TaskState::kRunning};
    if (task->recorded_queued) update.from.push_back(taskstore::TaskState::kQueued);
    store_writer_->Write(
        {task->request->id, std::move(update)},
        [this, task, next = std::move(next)](absl::StatusOr<taskstore::TaskRecord> written) {
          if (!written.ok() && !absl::IsFailedPrecondition(written.status())) {
            deps_.metrics->BackendError("store_write");
            Log(TaskLogRecord::Level::kWarning, "recording the task's state failed",
                RefOf(*task), written.status().ToString());
          }
          settle_queue_.Post(next);
        });
  }

  // A progress report's store write, queued behind (and batched with) the settle writes.
  void RecordProgress(taskstore::TaskUpdateRequest write) {
    store_writer_->Write(std::move(write), [this](absl::StatusOr<taskstore::TaskRecord> written) {
      // FailedPrecondition: the run ended meanwhile (the write applies only while running).
      if (!written.ok() && !absl::IsFailedPrecondition(written.status())) {
        deps_.metrics->BackendError("store_write");
      }
    });
  }

  taskstore::TaskUpdate StoreUpdate() const {
    taskstore::TaskUpdate update;
    update.now = clock_->Now();
    return update;
  }

  // A final state, kept for its retention; `error` replaces last_error when non-empty.
  taskstore::TaskUpdate FinalUpdate(taskstore::TaskState state, const std::string& result,
                                    const std::string& error) const {
    taskstore::TaskUpdate update = StoreUpdate();
    update.state = state;
    update.finished_at = update.now;
    update.lease_until = absl::InfinitePast();
    const absl::Duration retention = state == taskstore::TaskState::kSucceeded
                                         ? options_.retention_succeeded
                                     : state == taskstore::TaskState::kCancelled
                                         ? options_.retention_cancelled
                                         : options_.retention_failed;
    update.expires_at = update.now + retention;
    if (!result.empty()) update.result = result;
    if (!error.empty()) update.last_error = error;
    return update;
  }

  // One entry of a task's attempt history (a JSON object).
  std::string AttemptHistory(const InFlight& task, const std::string& kind,
                             const std::string& error) const {
    nlohmann::json entry = {{"attempt", task.delivery.delivery_count},
                            {"finished_at", FormatTimeAttribute(clock_->Now())},
                            {"error_kind", kind},
                            {"error", error},
                            {"consumer", options_.consumer_name},
                            {"stream", options_.request_stream}};
    return entry.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }

  // ---- store watch: cancellations of held tasks, purging of expired ones ---------------

  void StoreWatchLoop() {
    absl::Time next_purge = clock_->Now() + options_.purge_interval;
    std::unique_lock<std::mutex> lock(mu_);
    while (!watch_stop_) {
      WaitUntil(lock, watch_cv_, clock_->Now() + options_.cancel_poll_interval,
                [this] { return watch_stop_; });
      if (watch_stop_) return;
      std::vector<std::string> ids;
      for (const auto& [id, task] : running_tasks_) {
        if (task->tracked && !task->outcome_taken) ids.push_back(task->request->id);
      }
      for (const TaskPtr& task : queue_) {
        if (task->tracked) ids.push_back(task->request->id);
      }
      const bool purge = clock_->Now() >= next_purge;
      lock.unlock();
      std::set<std::string> cancelled;
      if (!ids.empty()) {
        auto records = deps_.store->GetMany(ids);
        if (records.ok()) {
          for (const taskstore::TaskRecord& record : *records) {
            if (record.cancel_requested || record.state == taskstore::TaskState::kCancelled) {
              cancelled.insert(record.id);
            }
          }
        } else {
          deps_.metrics->BackendError("store_read");
        }
      }
      if (purge) {
        next_purge = clock_->Now() + options_.purge_interval;
        if (auto purged = deps_.store->PurgeExpired(clock_->Now(), 1000); !purged.ok()) {
          deps_.metrics->BackendError("store_purge");
        }
      }
      lock.lock();
      if (cancelled.empty()) continue;
      std::vector<TaskPtr> stop;
      for (auto it = running_tasks_.begin(); it != running_tasks_.end();) {
        const TaskPtr& task = it->second;
        if (task->tracked && !task->outcome_taken && cancelled.contains(task->request->id)) {
          TakeOutcomeLocked(*task);  // asks the handler to stop: TaskContext::cancelled()
          stop.push_back(task);
          it = running_tasks_.erase(it);
        } else {
          ++it;
        }
      }
      for (auto it = queue_.begin(); it != queue_.end();) {
        if ((*it)->tracked && cancelled.contains((*it)->request->id)) {
          stop.push_back(*it);
          it = queue_.erase(it);
        } else {
          ++it;
        }
      }
      lock.unlock();
      for (const TaskPtr& task : stop) {
        Log(TaskLogRecord::Level::kInfo, "task cancelled", RefOf(*task));
        SettleCancelled(task, /*record=*/true);
      }
      lock.lock();
    }
  }

  // ---- release -------------------------------------------------------------------------

  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    --held_;
    deps_.metrics->InFlightChanged(held_);
    WakeFetcherLocked();
    if (held_ == 0) drain_cv_.notify_all();
  }

  // How many more the fetcher may take: deliveries held stay within max_in_flight, and work
  // not yet done (waiting or running) within concurrency + fetch_batch, so a consumer of slow
  // tasks does not hoard what other consumers could run, while settled-but-unacknowledged
  // deliveries (result on its way) do not hold back the next fetch.
  int FreeSlotsLocked() const {
    const int unfinished = static_cast<int>(queue_.size()) + running_;
    return std::min(max_in_flight_ - held_, prefetch_limit_ - unfinished);
  }

  // Wakes a waiting fetcher when a batch worth of slots has freed, or the first one (it takes
  // fewer after kRefillLinger): not on every release.
  void WakeFetcherLocked() {
    if (!fetcher_waiting_) return;
    const int free = FreeSlotsLocked();
    if (free == refill_batch_ || free == 1) fetch_cv_.notify_one();
  }

  // ---- supervisor: timeouts, heartbeats, publish timeouts -------------------------------

  void SupervisorLoop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!supervisor_stop_) {
      const absl::Time now = clock_->Now();
      absl::Time next = absl::InfiniteFuture();
      std::vector<TaskPtr> expired;
      std::vector<TaskPtr> heartbeats;
      for (auto it = running_tasks_.begin(); it != running_tasks_.end();) {
        const TaskPtr& task = it->second;
        if (now >= task->deadline) {
          TakeOutcomeLocked(*task);
          expired.push_back(task);
          it = running_tasks_.erase(it);
          continue;
        }
        next = std::min(next, task->deadline);
        if (options_.heartbeat_interval > absl::ZeroDuration()) {
          if (now >= task->next_heartbeat) {
            heartbeats.push_back(task);
            task->next_heartbeat = now + options_.heartbeat_interval;
          }
          next = std::min(next, task->next_heartbeat);
        }
        ++it;
      }
      std::vector<TaskPtr> publish_expired;
      {
        std::lock_guard<std::mutex> publish_lock(publish_mu_);
        for (auto it = publishing_.begin(); it != publishing_.end();) {
          if (now >= it->second->publish_deadline) {
            publish_expired.push_back(it->second);
            it = publishing_.erase(it);
          } else {
            next = std::min(next, it->second->publish_deadline);
            ++it;
          }
        }
      }
      if (!expired.empty() || !heartbeats.empty() || !publish_expired.empty()) {
        lock.unlock();
        for (const auto& task : expired) {
          const TaskOutcome timeout = TaskOutcome::Transient(absl::StrCat(
              "processing timeout: handler still running after ", FormatIsoDuration(task->timeout)));
          Settle(task, timeout, now - task->started, "timeout");
        }
        for (const auto& task : heartbeats) {
          if (absl::Status s = subscription_->Extend(task->delivery); !s.ok()) {
            Log(TaskLogRecord::Level::kWarning, "extending a running delivery failed",
                RefOf(*task), s.ToString());
          }
        }
        for (const auto& task : publish_expired) {
          Log(TaskLogRecord::Level::kError, "publishing the task result timed out", RefOf(*task),
              absl::StrCat("not confirmed within ", FormatIsoDuration(options_.publish_timeout)));
          settle_queue_.Post([this, task] {
            Nack(task, options_.fetch_error_backoff, "result publish timed out");
          });
        }
        lock.lock();
        continue;
      }
      // Publishes do not wake the supervisor (that would be a wake-up per task): it looks at
      // least once per publish timeout, so a hung publish is given up within twice its timeout.
      supervisor_wake_at_ = std::min(next, now + options_.publish_timeout);
      const uint64_t kicks = supervisor_kicks_;
      WaitUntil(lock, supervisor_cv_, supervisor_wake_at_,
                [this, kicks] { return supervisor_stop_ || supervisor_kicks_ != kicks; });
    }
  }

  // Upper bound of one real-time wait while waiting for a point in clock time: a safety net
  // only; a ManualClock wakes waiters through its advance listener at once.
  static constexpr absl::Duration kMaxRealWait = absl::Milliseconds(100);
  // How long the fetcher waits for a batch of slots to free before taking fewer.
  static constexpr std::chrono::milliseconds kRefillLinger{2};

  EventStream* const stream_;
  const HandlerRegistry* const handlers_;
  ExecutorOptions options_;
  ExecutorDependencies deps_;
  Clock* const clock_;
  const int max_in_flight_;
  const int prefetch_limit_;
  const int refill_batch_;
  std::unique_ptr<RandomSource> owned_random_;
  ExecutorMetrics noop_metrics_;
  std::unique_ptr<Subscription> subscription_;
  std::unique_ptr<ClockListener> clock_listener_;
  SettleQueue settle_queue_;
  // What late backend callbacks check before touching the executor.
  struct Lifeline {
    std::shared_mutex mu;
    bool open = true;  // guarded by mu
  };
  const std::shared_ptr<Lifeline> lifeline_ = std::make_shared<Lifeline>();

  // std::mutex rather than absl::Mutex, as in core: Debian's Abseil is not built for
  // ThreadSanitizer, which then reports false races around absl::Mutex. Guards the fields below.
  mutable std::mutex mu_;
  std::condition_variable work_cv_;        // workers: a task queued, a run slot freed
  std::condition_variable fetch_cv_;       // the fetcher: in-flight slots freed
  std::condition_variable supervisor_cv_;  // the supervisor: an earlier deadline
  std::condition_variable drain_cv_;       // shutdown: nothing running / nothing held
  bool started_ = false;
  bool shut_down_ = false;
  bool stopping_ = false;
  bool workers_stop_ = false;
  bool supervisor_stop_ = false;
  bool fetcher_waiting_ = false;
  std::deque<TaskPtr> queue_;
  int held_ = 0;     // fetched and not yet settled
  int running_ = 0;  // handler runs the executor waits for
  int idle_workers_ = 0;
  int stuck_workers_ = 0;
  // Since when the fetcher has wanted events without a fetch completing (InfiniteFuture: not
  // stalled), and the last fetch error meanwhile (progress(), CheckProgress()).
  absl::Time fetch_wanted_since_ = absl::InfiniteFuture();
  std::string last_fetch_error_;
  uint64_t next_task_id_ = 1;
  absl::Time supervisor_wake_at_ = absl::InfinitePast();
  uint64_t supervisor_kicks_ = 0;
  std::map<uint64_t, TaskPtr> running_tasks_;

  // Result publishes awaiting their completion, with their deadlines.
  std::mutex publish_mu_;
  std::map<uint64_t, TaskPtr> publishing_;  // guarded by publish_mu_

  std::vector<std::thread> workers_;
  std::thread supervisor_thread_;
  std::thread fetch_thread_;

  std::unique_ptr<ProgressPublisher> progress_;

  // With a task store only.
  std::unique_ptr<StoreWriter> store_writer_;
  std::condition_variable watch_cv_;  // the store watcher: stop
  bool watch_stop_ = false;           // guarded by mu_
  std::thread watch_thread_;
};

Executor::Executor(EventStream* stream, const HandlerRegistry* handlers, ExecutorOptions options,
                   ExecutorDependencies dependencies)
    : impl_(std::make_unique<Impl>(stream, handlers, std::move(options),
                                   std::move(dependencies))) {}

Executor::~Executor() = default;

absl::Status Executor::Start() { return impl_->Start(); }
void Executor::Shutdown() { impl_->Shutdown(); }
int Executor::in_flight() const { return impl_->in_flight(); }
int Executor::running() const { return impl_->running(); }
int Executor::stuck_workers() const { return impl_->stuck_workers(); }
ExecutorProgress Executor::progress() const { return impl_->progress(); }
absl::Status Executor::CheckProgress() const { return impl_->CheckProgress(); }
const ExecutorOptions& Executor::options() const { return impl_->options(); }

}  // namespace eventbus::executor
