#pragma once
// The executor's task-store writer: settle steps hand it the state change of one task (running
// -> succeeded, retrying, dead_lettered, cancelled) and go on with the next settle step when
// the write completed. One thread writes everything that queued up while the previous write
// was on its way in a single TaskStore::UpdateMany (group commit): under load a batch of
// settles costs one store round trip, and an idle executor adds no wait. Private to
// executor/src.

#include <condition_variable>
#include <algorithm>
#include <functional>
#include <iterator>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "eventbus/taskstore/task_store.h"

namespace eventbus::executor {

class StoreWriter {
 public:
  using Done = std::function<void(absl::StatusOr<taskstore::TaskRecord>)>;

  explicit StoreWriter(taskstore::TaskStore* store) : store_(store) {}
  ~StoreWriter() { Stop(); }
  StoreWriter(const StoreWriter&) = delete;
  StoreWriter& operator=(const StoreWriter&) = delete;

  void Start() { thread_ = std::thread([this] { Run(); }); }

  // Any thread. `done` runs once on the writer thread (or inline once stopped, with
  // FailedPrecondition): it must not block, and hands on by posting.
  void Write(taskstore::TaskUpdateRequest update, Done done) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!stopped_) {
        pending_.push_back({std::move(update), std::move(done)});
        if (pending_.size() == 1) cv_.notify_one();
        return;
      }
    }
    done(absl::FailedPreconditionError("task store writer stopped"));
  }

  // Writes what is pending, then stops the thread. Idempotent.
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
      stopping_ = true;
    }
    cv_.notify_one();
    if (thread_.joinable()) {
      thread_.join();
      return;
    }
    std::vector<Pending> left;  // never started
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopped_ = true;
      left.swap(pending_);
    }
    for (Pending& p : left) p.done(absl::FailedPreconditionError("task store writer stopped"));
  }

 private:
  struct Pending {
    taskstore::TaskUpdateRequest update;
    Done done;
  };
  // A bound on one UpdateMany (one pipeline / transaction), so one huge burst does not make
  // one huge request.
  static constexpr size_t kMaxBatch = 512;

  void Run() {
    std::vector<Pending> batch;
    std::vector<taskstore::TaskUpdateRequest> updates;
    while (true) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stopping_ || !pending_.empty(); });
        if (pending_.empty()) {  // stopping, and everything written
          stopped_ = true;
          return;
        }
        const size_t n = std::min(pending_.size(), kMaxBatch);
        batch.assign(std::make_move_iterator(pending_.begin()),
                     std::make_move_iterator(pending_.begin() + n));
        pending_.erase(pending_.begin(), pending_.begin() + n);
      }
      updates.clear();
      for (Pending& p : batch) updates.push_back(std::move(p.update));
      std::vector<absl::StatusOr<taskstore::TaskRecord>> results = store_->UpdateMany(updates);
      for (size_t i = 0; i < batch.size(); ++i) {
        batch[i].done(i < results.size()
                          ? std::move(results[i])
                          : absl::StatusOr<taskstore::TaskRecord>(
                                absl::InternalError("task store returned fewer results")));
      }
      batch.clear();
    }
  }

  taskstore::TaskStore* const store_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Pending> pending_;  // guarded by mu_
  bool stopping_ = false;         // guarded by mu_
  bool stopped_ = false;          // guarded by mu_: the thread has exited
  std::thread thread_;
};

}  // namespace eventbus::executor
