#include "progress_publisher.h"

#include <algorithm>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "eventbus/event.h"
#include "eventbus/executor/task.h"

namespace eventbus::executor {

struct ProgressPublisher::Shared {
  EventStream* stream = nullptr;
  Clock* clock = nullptr;
  Options options;
  StoreWrite store_write;
  OnError on_error;

  // std::mutex, as in the executor (ThreadSanitizer and Debian's Abseil). Guards the fields
  // below and every Run's guarded fields.
  std::mutex mu;
  std::condition_variable cv;
  bool stopped = false;
  // Runs with a value to send, by when it may go out.
  std::multimap<absl::Time, std::shared_ptr<Run>> due;
  int64_t published = 0;

  // `mu` held. Sends run.pending_ (Publish only queues it; the store write is queued too).
  void SendLocked(Run& run) {
    const absl::Time now = clock->Now();
    const std::string data = absl::StrCat(
        "{\"task_id\":", nlohmann::json(run.task_id_).dump(-1, ' ', false,
                                                           nlohmann::json::error_handler_t::replace),
        ",\"type\":", nlohmann::json(run.type_).dump(-1, ' ', false,
                                                     nlohmann::json::error_handler_t::replace),
        ",\"attempt\":", run.attempt_, ",\"reported_at\":\"", FormatTimeAttribute(now),
        "\",\"progress\":", run.pending_, "}");
    Event event = MakeEvent(kTaskProgressType, options.source, data);
    event.set_subject(run.task_id_);
    event.set_key(run.task_id_);
    event.set_data_content_type("application/json");
    auto done = [on_error = on_error, id = run.task_id_](absl::StatusOr<PublishReceipt> receipt) {
      if (!receipt.ok() && on_error) on_error(id, receipt.status());
    };
    if (absl::Status queued = stream->Publish(options.stream, std::move(event), done);
        !queued.ok() && on_error) {
      on_error(run.task_id_, queued);
    }
    ++published;
    if (run.tracked_ && store_write) {
      taskstore::TaskUpdateRequest write;
      write.id = run.task_id_;
      // Only while it runs: a write that lands after the final state must not touch it.
      write.update.from = {taskstore::TaskState::kRunning};
      write.update.now = now;
      write.update.progress = run.pending_;
      store_write(std::move(write));
    }
    run.last_sent_ = std::move(run.pending_);
    run.pending_.clear();
    run.next_allowed_ = now + options.interval;
  }
};

absl::Status ProgressPublisher::Run::Report(std::string progress_json) {
  Shared& shared = *shared_;
  std::lock_guard<std::mutex> lock(shared.mu);
  if (shared.stopped || closed_) {
    return absl::FailedPreconditionError(
        "progress not reported: the executor has given up this run (timeout, cancel or "
        "shutdown)");
  }
  if (progress_json == last_sent_) {
    pending_.clear();  // back to what subscribers already have: nothing to send
    return absl::OkStatus();
  }
  pending_ = std::move(progress_json);
  if (queued_) return absl::OkStatus();  // coalesced into the value already waiting
  queued_ = true;
  const absl::Time at = std::max(shared.clock->Now(), next_allowed_);
  const bool earliest = shared.due.empty() || at < shared.due.begin()->first;
  shared.due.emplace(at, shared_from_this());
  if (earliest) shared.cv.notify_one();
  return absl::OkStatus();
}

ProgressPublisher::ProgressPublisher(EventStream* stream, Clock* clock, Options options,
                                     StoreWrite store_write, OnError on_error)
    : shared_(std::make_shared<Shared>()) {
  shared_->stream = stream;
  shared_->clock = clock;
  shared_->options = std::move(options);
  shared_->store_write = std::move(store_write);
  shared_->on_error = std::move(on_error);
}

ProgressPublisher::~ProgressPublisher() { Stop(); }

void ProgressPublisher::Start() {
  clock_listener_ = shared_->clock->OnAdvance([shared = shared_] {
    // Taking the lock orders the wake-up after the loop's look at the clock: none is lost.
    { std::lock_guard<std::mutex> lock(shared->mu); }
    shared->cv.notify_all();
  });
  thread_ = std::thread([this] { Loop(); });
}

void ProgressPublisher::Stop() {
  std::multimap<absl::Time, std::shared_ptr<Run>> dropped;  // released outside the lock
  {
    std::lock_guard<std::mutex> lock(shared_->mu);
    if (shared_->stopped) return;
    shared_->stopped = true;
    dropped.swap(shared_->due);
  }
  shared_->cv.notify_all();
  if (thread_.joinable()) thread_.join();
  clock_listener_.reset();
}

std::shared_ptr<ProgressPublisher::Run> ProgressPublisher::Open(std::string task_id,
                                                                std::string type, int attempt,
                                                                bool tracked) {
  auto run = std::make_shared<Run>();
  run->shared_ = shared_;
  run->task_id_ = std::move(task_id);
  run->type_ = std::move(type);
  run->attempt_ = attempt;
  run->tracked_ = tracked;
  return run;
}

void ProgressPublisher::Close(Run& run) {
  std::lock_guard<std::mutex> lock(shared_->mu);
  if (run.closed_) return;
  run.closed_ = true;
  // At once, not at next_allowed_: the settle write that follows must find it recorded.
  if (!shared_->stopped && !run.pending_.empty()) shared_->SendLocked(run);
}

int64_t ProgressPublisher::published() const {
  std::lock_guard<std::mutex> lock(shared_->mu);
  return shared_->published;
}

void ProgressPublisher::Loop() {
  // A bound on one real-time wait while waiting for a point in clock time: a ManualClock wakes
  // the loop through its advance listener at once.
  constexpr absl::Duration kMaxRealWait = absl::Milliseconds(100);
  Shared& shared = *shared_;
  std::unique_lock<std::mutex> lock(shared.mu);
  while (!shared.stopped) {
    const absl::Time now = shared.clock->Now();
    std::vector<std::shared_ptr<Run>> done;  // released outside the lock (a Run owns Shared)
    while (!shared.due.empty() && shared.due.begin()->first <= now) {
      std::shared_ptr<Run> run = std::move(shared.due.begin()->second);
      shared.due.erase(shared.due.begin());
      run->queued_ = false;
      if (!run->closed_ && !run->pending_.empty()) shared.SendLocked(*run);
      done.push_back(std::move(run));
    }
    if (!done.empty()) {
      lock.unlock();
      done.clear();
      lock.lock();
      continue;
    }
    if (shared.due.empty()) {
      shared.cv.wait(lock);  // Report of a new earliest value, or Stop
      continue;
    }
    shared.cv.wait_for(lock, absl::ToChronoNanoseconds(
                                 std::min(kMaxRealWait, shared.due.begin()->first - now)));
  }
}

}  // namespace eventbus::executor
