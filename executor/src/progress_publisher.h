#pragma once
// The executor's progress publisher: what handlers report through TaskContext::ReportProgress
// goes out from here, off the handler's path. A report only records the value under a lock and
// wakes this publisher's thread, which publishes it asynchronously on the progress stream (no
// Flush: a lost progress event is not worth a round trip; the store keeps the latest anyway)
// and, for a task the store tracks, hands the store write to the executor's StoreWriter (group
// committed with the settle writes).
//
// The rate rule, per run of a task: the first report goes out at once; after a report went
// out, the next goes out no earlier than `interval` later, and reports made meanwhile are
// coalesced (the latest value wins; a value equal to the last one sent is not sent again).
// When the run ends (Close) a coalesced value still waiting goes out at once, so the last
// progress of a run is always published and recorded before its final state. A handler calling
// ReportProgress in a tight loop therefore costs the broker and the store at most one write per
// interval per running task, plus one at the end. Private to executor/src.

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "eventbus/clock.h"
#include "eventbus/event_stream.h"
#include "eventbus/taskstore/task_store.h"

namespace eventbus::executor {

class ProgressPublisher {
 public:
  struct Options {
    std::string stream;  // the progress stream (ExecutorOptions::progress_stream)
    std::string source;  // the events' `source`
    absl::Duration interval = absl::Seconds(1);
  };
  // Queues the store write of one task's progress; null without a task store.
  using StoreWrite = std::function<void(taskstore::TaskUpdateRequest)>;
  // A progress event the backend refused or failed to publish. Any thread, possibly with the
  // publisher's lock held (an inline publish completion): must not call back into it.
  using OnError = std::function<void(const std::string& task_id, const absl::Status& status)>;

  struct Shared;  // progress_publisher.cc

  // One run's reports. Report is what the run's TaskContext::ProgressSink calls; it stays
  // safe to call after the publisher is gone (it answers FailedPrecondition then).
  class Run : public std::enable_shared_from_this<Run> {
   public:
    absl::Status Report(std::string progress_json);

   private:
    friend class ProgressPublisher;
    friend struct Shared;
    std::shared_ptr<Shared> shared_;
    std::string task_id_;
    std::string type_;
    int attempt_ = 0;
    bool tracked_ = false;
    // Guarded by Shared::mu.
    bool closed_ = false;
    bool queued_ = false;       // waiting in Shared::due
    std::string pending_;       // the coalesced value not yet sent; empty when none
    std::string last_sent_;
    absl::Time next_allowed_ = absl::InfinitePast();
  };

  // `stream` and `clock` must outlive the publisher (Stop ends every use of them).
  ProgressPublisher(EventStream* stream, Clock* clock, Options options, StoreWrite store_write,
                    OnError on_error);
  ~ProgressPublisher();  // Stop()
  ProgressPublisher(const ProgressPublisher&) = delete;
  ProgressPublisher& operator=(const ProgressPublisher&) = delete;

  void Start();
  // Drops what was not sent yet (runs are closed before, which sends theirs), joins the thread;
  // later reports get FailedPrecondition. Idempotent.
  void Stop();

  // A run starts: `tracked` when the task has a store record this executor marked running.
  std::shared_ptr<Run> Open(std::string task_id, std::string type, int attempt, bool tracked);
  // The run ended for the executor: a coalesced value still waiting is sent now; later
  // reports get FailedPrecondition. Idempotent.
  void Close(Run& run);

  // Progress events handed to the stream so far.
  int64_t published() const;

 private:
  void Loop();

  std::shared_ptr<Shared> shared_;
  std::unique_ptr<ClockListener> clock_listener_;
  std::thread thread_;
};

}  // namespace eventbus::executor
