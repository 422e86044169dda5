#include "eventbus/executor/executor.h"

#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "eventbus/clock.h"
#include "eventbus/executor/iso_duration.h"
#include "eventbus/status_macros.h"

namespace eventbus::executor {
namespace {

// Upper bound of one real-time wait while waiting for a point in clock time: a safety net only;
// a ManualClock wakes waiters through its advance listener at once.
constexpr absl::Duration kMaxRealWait = absl::Milliseconds(100);

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
  if (options.heartbeat_interval < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("heartbeat interval must not be negative");
  }
  if (options.shutdown_deadline < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("shutdown deadline must not be negative");
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

class Executor::Impl {
 public:
  Impl(EventStream* stream, const HandlerRegistry* handlers, ExecutorOptions options,
       ExecutorDependencies deps)
      : stream_(stream),
        handlers_(handlers),
        options_(std::move(options)),
        deps_(std::move(deps)),
        clock_(stream->clock()) {
    if (options_.consumer_name.empty()) options_.consumer_name = DefaultConsumerName();
    if (deps_.random == nullptr) {
      owned_random_ = NewDefaultRandomSource();
      deps_.random = owned_random_.get();
    }
    if (deps_.metrics == nullptr) deps_.metrics = &noop_metrics_;
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
      cv_.notify_all();
    });
    {
      std::lock_guard<std::mutex> lock(mu_);
      started_ = true;
    }
    for (int i = 0; i < options_.concurrency; ++i) workers_.emplace_back([this] { WorkerLoop(); });
    supervisor_thread_ = std::thread([this] { SupervisorLoop(); });
    fetch_thread_ = std::thread([this] { FetchLoop(); });
    Log(TaskLogRecord::Level::kInfo,
        absl::StrCat("executor started: stream ", options_.request_stream, ", group ",
                     options_.consumer_group, ", consumer ", options_.consumer_name,
                     ", concurrency ", options_.concurrency),
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
    cv_.notify_all();
    fetch_thread_.join();
    Log(TaskLogRecord::Level::kInfo,
        absl::StrCat("shutting down: fetching stopped; waiting up to ",
                     FormatIsoDuration(options_.shutdown_deadline), " for running tasks"),
        {});

    // Deliveries fetched but not started go back at once: another worker may take them now.
    std::deque<Delivery> queued;
    {
      std::lock_guard<std::mutex> lock(mu_);
      queued.swap(queue_);
      held_ -= static_cast<int>(queued.size());
      deps_.metrics->InFlightChanged(held_);
    }
    cv_.notify_all();
    for (const Delivery& delivery : queued) GiveBack(delivery, "not started before shutdown");

    std::vector<std::shared_ptr<Running>> abandoned;
    {
      std::unique_lock<std::mutex> lock(mu_);
      const absl::Time deadline = clock_->Now() + options_.shutdown_deadline;
      WaitUntil(lock, deadline, [this] { return held_ == 0; });
      for (auto& [id, run] : running_tasks_) {
        if (run->settled) continue;
        run->settled = true;
        if (run->context != nullptr) run->context->Cancel();
        abandoned.push_back(run);
      }
      workers_stop_ = true;
    }
    cv_.notify_all();
    for (const auto& run : abandoned) {
      deps_.metrics->TaskFinished(run->type, kOutcomeAbandoned, clock_->Now() - run->started);
      GiveBack(run->delivery, "still running at the shutdown deadline");
    }
    for (std::thread& worker : workers_) worker.join();
    workers_.clear();
    {
      std::lock_guard<std::mutex> lock(mu_);
      supervisor_stop_ = true;
    }
    cv_.notify_all();
    supervisor_thread_.join();
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

  const ExecutorOptions& options() const { return options_; }

 private:
  // One delivery whose handler is running (or was given up on and has not returned yet).
  struct Running {
    Delivery delivery;
    std::shared_ptr<const TaskRequest> request;
    std::string type;  // the metrics label
    RetryPolicy retry;
    absl::Duration timeout;
    absl::Time started;
    absl::Time deadline;
    absl::Time next_heartbeat;
    // Guarded by Impl::mu_: whoever sets it first (the worker when the handler returns, the
    // supervisor at the deadline, shutdown) settles the delivery; the others leave it alone.
    bool settled = false;
    TaskContext* context = nullptr;  // guarded by Impl::mu_; null once the handler returned
  };

  // Log fields of a task.
  struct TaskRef {
    const TaskRequest* request = nullptr;
    const Delivery* delivery = nullptr;
  };

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
      record.attempt = ref.delivery->delivery_count;
      record.delivery_id = ref.delivery->id;
    }
    record.error = std::move(error);
    deps_.log(record);
  }

  // Waits (`lock` holds mu_) until `done()` or the clock reaches `until`.
  template <typename Predicate>
  void WaitUntil(std::unique_lock<std::mutex>& lock, absl::Time until, Predicate done) {
    while (!done()) {
      const absl::Time now = clock_->Now();
      if (now >= until) return;
      cv_.wait_for(lock, absl::ToChronoNanoseconds(std::min(until - now, kMaxRealWait)));
    }
  }

  void FetchLoop() {
    absl::Time next_reclaim = clock_->Now();  // orphans of a crashed predecessor: look at once
    while (true) {
      int free_slots = 0;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stopping_ || held_ < options_.concurrency; });
        if (stopping_) return;
        free_slots = options_.concurrency - held_;
      }
      std::vector<Delivery> deliveries;
      if (options_.reclaim_enabled && clock_->Now() >= next_reclaim) {
        next_reclaim = clock_->Now() + options_.reclaim_interval;
        auto reclaimed = subscription_->Reclaim(options_.reclaim_min_idle, free_slots);
        if (reclaimed.ok()) {
          deliveries = std::move(*reclaimed);
          if (!deliveries.empty()) {
            Log(TaskLogRecord::Level::kInfo,
                absl::StrCat("reclaimed ", deliveries.size(), " orphaned deliveries"), {});
          }
        } else {
          deps_.metrics->BackendError("reclaim");
          Log(TaskLogRecord::Level::kWarning, "reclaim failed", {}, reclaimed.status().ToString());
        }
      }
      if (deliveries.empty()) {
        auto fetched =
            subscription_->Fetch(std::min(free_slots, options_.fetch_batch), options_.fetch_block);
        if (!fetched.ok()) {
          deps_.metrics->BackendError("fetch");
          Log(TaskLogRecord::Level::kWarning, "fetch failed", {}, fetched.status().ToString());
          std::unique_lock<std::mutex> lock(mu_);
          WaitUntil(lock, clock_->Now() + options_.fetch_error_backoff,
                    [this] { return stopping_; });
          continue;
        }
        deliveries = std::move(*fetched);
      }
      if (deliveries.empty()) continue;
      const absl::Time now = clock_->Now();
      for (const Delivery& delivery : deliveries) {
        const absl::Time published = EventTime(delivery.event);
        if (delivery.delivery_count == 1 && published != absl::InfinitePast()) {
          deps_.metrics->FetchLag(std::max(absl::ZeroDuration(), now - published));
        }
      }
      bool give_back = false;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stopping_) {
          give_back = true;
        } else {
          for (Delivery& delivery : deliveries) queue_.push_back(std::move(delivery));
          held_ += static_cast<int>(deliveries.size());
          deps_.metrics->InFlightChanged(held_);
        }
      }
      cv_.notify_all();
      if (give_back) {
        for (const Delivery& delivery : deliveries) GiveBack(delivery, "fetched during shutdown");
        return;
      }
    }
  }

  void WorkerLoop() {
    while (true) {
      Delivery delivery;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return !queue_.empty() || workers_stop_; });
        if (queue_.empty()) return;
        delivery = std::move(queue_.front());
        queue_.pop_front();
        ++running_;
      }
      Process(delivery);
      {
        std::lock_guard<std::mutex> lock(mu_);
        --running_;
        --held_;
        deps_.metrics->InFlightChanged(held_);
      }
      cv_.notify_all();
    }
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

  void Process(const Delivery& delivery) {
    const absl::Time start = clock_->Now();
    auto parsed = ParseTaskRequest(delivery.event.data());
    if (!parsed.ok()) {
      std::optional<TaskRequest> identity = SalvageTaskIdentity(delivery.event.data());
      Reject(delivery, identity ? &*identity : nullptr,
             absl::StrCat("invalid task request: ", parsed.status().message()));
      return;
    }
    auto request = std::make_shared<const TaskRequest>(std::move(*parsed));
    TaskHandler* handler = handlers_->Find(request->type);
    if (handler == nullptr) {
      Reject(delivery, request.get(),
             absl::StrCat("invalid task request: unknown task type \"", request->type,
                          "\"; registered types: ", absl::StrJoin(handlers_->Types(), ", ")));
      return;
    }
    if (absl::Status s = handler->Supports(*request); !s.ok()) {
      Reject(delivery, request.get(), absl::StrCat("invalid task request: ", s.message()));
      return;
    }
    if (options_.max_deliveries > 0 && delivery.delivery_count > options_.max_deliveries) {
      const std::string reason = absl::StrCat(
          "delivered ", delivery.delivery_count, " times without finishing (more than ",
          options_.max_deliveries, "): a worker probably crashes or hangs on it");
      Log(TaskLogRecord::Level::kError, "task dead-lettered unrun", {request.get(), &delivery},
          reason);
      TaskResult result = BaseResult(delivery, *request);
      result.status = TaskStatus::kFailed;
      result.error_kind = "transient";
      result.error = reason;
      PublishResult(result, {request.get(), &delivery});
      deps_.metrics->TaskFinished(request->type, kOutcomeFailed, absl::ZeroDuration());
      DeadLetter(delivery, request->type, reason, {request.get(), &delivery});
      return;
    }
    auto policy = ResolvePolicy(*handler, *request);
    if (!policy.ok()) {
      Reject(delivery, request.get(),
             absl::StrCat("invalid task request: ", policy.status().message()));
      return;
    }

    auto run = std::make_shared<Running>();
    run->delivery = delivery;
    run->request = request;
    run->type = request->type;
    run->retry = policy->retry;
    run->timeout = policy->timeout;
    run->started = start;
    run->deadline = start + policy->timeout;
    run->next_heartbeat = start + options_.heartbeat_interval;
    TaskContext context(*request, delivery.delivery_count, RequestedAt(delivery), run->deadline,
                        clock_);
    uint64_t run_id;
    {
      std::lock_guard<std::mutex> lock(mu_);
      run_id = next_run_id_++;
      run->context = &context;
      running_tasks_.emplace(run_id, run);
      ++running_generation_;
    }
    cv_.notify_all();
    Log(TaskLogRecord::Level::kDebug, "task started", {request.get(), &delivery});

    TaskOutcome outcome = TaskOutcome::Permanent("handler produced no outcome");
    try {
      outcome = handler->Handle(context);
    } catch (const std::exception& e) {
      // A handler bug must not take the worker (or the service) down with it; retrying the
      // same input would throw again.
      outcome = TaskOutcome::Permanent(absl::StrCat("handler threw: ", e.what()));
    } catch (...) {
      outcome = TaskOutcome::Permanent("handler threw a non-standard exception");
    }

    bool mine;
    {
      std::lock_guard<std::mutex> lock(mu_);
      running_tasks_.erase(run_id);
      run->context = nullptr;
      mine = !run->settled;
      run->settled = true;
    }
    if (!mine) {
      Log(TaskLogRecord::Level::kInfo,
          "handler returned after the executor gave up on it (timeout or shutdown); its outcome "
          "is discarded",
          {request.get(), &delivery});
      return;
    }
    Settle(*run, outcome, clock_->Now() - start, "transient");
  }

  // The delivery is invalid: dead-letter it at once, and tell whoever waits for the result.
  void Reject(const Delivery& delivery, const TaskRequest* request, std::string reason) {
    const bool known_type = request != nullptr && handlers_->Find(request->type) != nullptr;
    const std::string type_label = known_type ? request->type : std::string(kUnknownTypeLabel);
    Log(TaskLogRecord::Level::kWarning, "invalid task request dead-lettered",
        {request, &delivery}, reason);
    if (request != nullptr) {
      TaskResult result = BaseResult(delivery, *request);
      result.status = TaskStatus::kFailed;
      result.error_kind = "invalid";
      result.error = reason;
      PublishResult(result, {request, &delivery});
    }
    deps_.metrics->TaskFinished(type_label, kOutcomeInvalid, absl::ZeroDuration());
    DeadLetter(delivery, type_label, reason, {request, &delivery});
  }

  TaskResult BaseResult(const Delivery& delivery, const TaskRequest& request) const {
    TaskResult result;
    result.task_id = request.id;
    result.type = request.type;
    result.attempts = delivery.delivery_count;
    result.request_event_id = delivery.event.id();
    result.completed_at = clock_->Now();
    result.metadata = request.metadata;
    return result;
  }

  bool PublishResult(const TaskResult& result, TaskRef ref) {
    auto receipt = stream_->PublishAndWait(
        options_.result_stream, MakeTaskResultEvent(result, options_.result_source),
        options_.publish_timeout);
    if (!receipt.ok()) {
      Log(TaskLogRecord::Level::kError, "publishing the task result failed", ref,
          receipt.status().ToString());
      return false;
    }
    deps_.metrics->ResultPublished(TaskStatusName(result.status));
    return true;
  }

  void DeadLetter(const Delivery& delivery, absl::string_view type_label, absl::string_view reason,
                  TaskRef ref) {
    absl::Status s = subscription_->DeadLetter(delivery, reason);
    if (s.ok()) {
      deps_.metrics->TaskDeadLettered(type_label);
      return;
    }
    Log(TaskLogRecord::Level::kError, "dead-lettering failed; giving the delivery back", ref,
        s.ToString());
    // Nothing is lost: the delivery comes back and is judged again.
    GiveBack(delivery, "dead-lettering failed", options_.fetch_error_backoff);
  }

  void GiveBack(const Delivery& delivery, absl::string_view why,
                absl::Duration delay = absl::ZeroDuration()) {
    absl::Status s = subscription_->Nack(delivery, delay);
    Log(s.ok() ? TaskLogRecord::Level::kInfo : TaskLogRecord::Level::kWarning,
        absl::StrCat("delivery given back: ", why), {nullptr, &delivery},
        s.ok() ? std::string() : s.ToString());
  }

  void Settle(const Running& run, const TaskOutcome& outcome, absl::Duration duration,
              absl::string_view transient_kind) {
    const Delivery& delivery = run.delivery;
    const TaskRequest& request = *run.request;
    const TaskRef ref{&request, &delivery};
    const int attempt = delivery.delivery_count;
    switch (outcome.kind()) {
      case TaskOutcome::Kind::kSucceeded: {
        TaskResult result = BaseResult(delivery, request);
        result.status = TaskStatus::kSucceeded;
        result.output = outcome.output();
        result.duration = duration;
        if (!PublishResult(result, ref)) {
          // Without its result the task is not done: run it again later (at-least-once).
          const absl::Duration backoff = run.retry.Backoff(attempt, *deps_.random);
          deps_.metrics->TaskFinished(run.type, kOutcomeRetried, duration);
          GiveBack(delivery, "result not published", backoff);
          return;
        }
        deps_.metrics->TaskFinished(run.type, kOutcomeSucceeded, duration);
        if (absl::Status s = subscription_->Ack(delivery); !s.ok()) {
          Log(TaskLogRecord::Level::kWarning, "ack failed (the task may run again)", ref,
              s.ToString());
        }
        Log(TaskLogRecord::Level::kInfo, "task succeeded", ref);
        return;
      }
      case TaskOutcome::Kind::kRedeliverAfter: {
        deps_.metrics->TaskFinished(run.type, kOutcomeDelayed, duration);
        if (absl::Status s = subscription_->Nack(delivery, outcome.delay()); !s.ok()) {
          Log(TaskLogRecord::Level::kWarning, "delayed redelivery failed", ref, s.ToString());
          return;
        }
        Log(TaskLogRecord::Level::kDebug,
            absl::StrCat("task redelivered in ", FormatIsoDuration(outcome.delay())), ref);
        return;
      }
      case TaskOutcome::Kind::kTransientFailure: {
        if (run.retry.ShouldRetry(attempt)) {
          const absl::Duration backoff = run.retry.Backoff(attempt, *deps_.random);
          deps_.metrics->TaskFinished(run.type, kOutcomeRetried, duration);
          deps_.metrics->TaskRetried(run.type, backoff);
          if (absl::Status s = subscription_->Nack(delivery, backoff); !s.ok()) {
            Log(TaskLogRecord::Level::kWarning, "nack for retry failed", ref, s.ToString());
          }
          Log(TaskLogRecord::Level::kWarning,
              absl::StrCat("task failed (", transient_kind, "); retry ", attempt + 1, " of ",
                           run.retry.max_attempts, " in ", FormatIsoDuration(backoff)),
              ref, outcome.error());
          return;
        }
        Fail(run, outcome, duration, transient_kind,
             absl::StrCat(transient_kind, " failure, gave up after ", attempt, " attempt",
                          attempt == 1 ? "" : "s", ": ", outcome.error()));
        return;
      }
      case TaskOutcome::Kind::kPermanentFailure:
        Fail(run, outcome, duration, "permanent",
             absl::StrCat("permanent failure: ", outcome.error()));
        return;
    }
  }

  void Fail(const Running& run, const TaskOutcome& outcome, absl::Duration duration,
            absl::string_view kind, const std::string& reason) {
    const TaskRef ref{run.request.get(), &run.delivery};
    TaskResult result = BaseResult(run.delivery, *run.request);
    result.status = TaskStatus::kFailed;
    result.output = outcome.output();
    result.duration = duration;
    result.error_kind = std::string(kind);
    result.error = outcome.error();
    PublishResult(result, ref);
    deps_.metrics->TaskFinished(run.type, kOutcomeFailed, duration);
    Log(TaskLogRecord::Level::kError, "task failed; dead-lettered", ref, reason);
    DeadLetter(run.delivery, run.type, reason, ref);
  }

  void SupervisorLoop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!supervisor_stop_) {
      const absl::Time now = clock_->Now();
      absl::Time next = absl::InfiniteFuture();
      std::vector<std::shared_ptr<Running>> expired;
      std::vector<std::shared_ptr<Running>> heartbeats;
      for (auto& [id, run] : running_tasks_) {
        if (run->settled) continue;
        if (now >= run->deadline) {
          run->settled = true;
          if (run->context != nullptr) run->context->Cancel();
          expired.push_back(run);
          continue;
        }
        next = std::min(next, run->deadline);
        if (options_.heartbeat_interval > absl::ZeroDuration()) {
          if (now >= run->next_heartbeat) {
            heartbeats.push_back(run);
            run->next_heartbeat = now + options_.heartbeat_interval;
          }
          next = std::min(next, run->next_heartbeat);
        }
      }
      if (!expired.empty() || !heartbeats.empty()) {
        lock.unlock();
        for (const auto& run : expired) {
          const TaskOutcome timeout = TaskOutcome::Transient(
              absl::StrCat("processing timeout: handler still running after ",
                           FormatIsoDuration(run->timeout)));
          Settle(*run, timeout, now - run->started, "timeout");
        }
        for (const auto& run : heartbeats) {
          if (absl::Status s = subscription_->Extend(run->delivery); !s.ok()) {
            Log(TaskLogRecord::Level::kWarning, "extending a running delivery failed",
                {run->request.get(), &run->delivery}, s.ToString());
          }
        }
        lock.lock();
        continue;
      }
      const uint64_t seen = running_generation_;
      WaitUntil(lock, next,
                [this, seen] { return supervisor_stop_ || running_generation_ != seen; });
    }
  }

  EventStream* const stream_;
  const HandlerRegistry* const handlers_;
  ExecutorOptions options_;
  ExecutorDependencies deps_;
  Clock* const clock_;
  std::unique_ptr<RandomSource> owned_random_;
  ExecutorMetrics noop_metrics_;
  std::unique_ptr<Subscription> subscription_;
  std::unique_ptr<ClockListener> clock_listener_;

  // std::mutex rather than absl::Mutex, as in core: Debian's Abseil is not built for
  // ThreadSanitizer, which then reports false races around absl::Mutex. Guards the fields below.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool started_ = false;
  bool shut_down_ = false;
  bool stopping_ = false;
  bool workers_stop_ = false;
  bool supervisor_stop_ = false;
  std::deque<Delivery> queue_;
  int held_ = 0;     // queued + running
  int running_ = 0;  // taken by a worker
  uint64_t next_run_id_ = 1;
  uint64_t running_generation_ = 0;
  std::map<uint64_t, std::shared_ptr<Running>> running_tasks_;

  std::vector<std::thread> workers_;
  std::thread supervisor_thread_;
  std::thread fetch_thread_;
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
const ExecutorOptions& Executor::options() const { return impl_->options(); }

}  // namespace eventbus::executor
