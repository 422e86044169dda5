#pragma once
// The executor's settle thread: runs the settle steps (ack, nack, dead-letter) that backend
// callbacks hand over. Backend callbacks (a publish's completion) run on the backend's own
// threads and must not block or call back into the subscription synchronously; they post here.
// Private to executor/src.
//
// One thread, one queue: Post wakes the thread only when it was idle, and the thread takes
// everything queued at once, so a burst of completions costs one wake-up.

#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace eventbus::executor {

class SettleQueue {
 public:
  SettleQueue() = default;
  ~SettleQueue() { Stop(); }
  SettleQueue(const SettleQueue&) = delete;
  SettleQueue& operator=(const SettleQueue&) = delete;

  void Start() { thread_ = std::thread([this] { Run(); }); }

  // Any thread. Once the thread has stopped, runs `step` inline: nothing may be dropped (a
  // step frees a slot).
  void Post(std::function<void()> step) {
    bool wake = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!stopped_) {
        queue_.push_back(std::move(step));
        wake = idle_;
        idle_ = false;
        step = nullptr;
      }
    }
    if (step) {
      step();
      return;
    }
    if (wake) cv_.notify_one();
  }

  // Runs what is queued, then stops the thread. Idempotent.
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
    // Never started: run what was posted here.
    std::vector<std::function<void()>> left;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopped_ = true;
      left.swap(queue_);
    }
    for (auto& step : left) step();
  }

 private:
  void Run() {
    std::vector<std::function<void()>> batch;
    while (true) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        idle_ = true;
        cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        idle_ = false;
        if (queue_.empty()) {
          stopped_ = true;
          return;
        }
        batch.swap(queue_);
      }
      for (auto& step : batch) step();
      batch.clear();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::function<void()>> queue_;  // guarded by mu_
  bool idle_ = false;                         // guarded by mu_: the thread waits for work
  bool stopping_ = false;                     // guarded by mu_
  bool stopped_ = false;                      // guarded by mu_
  std::thread thread_;
};

}  // namespace eventbus::executor
