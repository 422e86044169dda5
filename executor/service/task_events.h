#pragma once
// GET /v1/tasks/{id}/events: one task's progress, live, as Server-Sent Events (over the HTTP
// server's streamed responses, like the dashboard's snapshots). The stream opens with the
// task's current progress (if any), then sends each new progress the store records, then the
// task's final state as the last event, and ends. Events (docs/tasks.md, "Watching a task"):
//   event: progress   data: {"id": ..., "progress": <the reported JSON>, "updated_at": ...}
//   event: final      data: the task as GET /v1/tasks/{id} renders it
//   event: gone       data: {"id": ..., "error": ...}   (purged from the store meanwhile)
// and a comment line (": keep-alive") on a stream idle for heartbeat_interval.
//
// The task store is the source (what any executor of the deployment recorded): one thread
// reads every watched task in one GetMany per poll_interval, so watchers cost the store one
// round trip per interval however many there are. At most max_streams are open at once; a
// client that goes away frees its slot within a poll interval.

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "eventbus/taskstore/task_store.h"

namespace eventbus::executor::service {

class HttpStream;
struct HttpResponse;
using HttpResponder = std::function<void(HttpResponse)>;

// The answer when reading task `id` from the store failed: 404 for an id the store does not
// know, 503 for a store error. GET /v1/tasks/{id} and its /events answer alike.
HttpResponse TaskLookupFailure(absl::string_view id, const absl::Status& status);

struct TaskEventsOptions {
  int max_streams = 64;
  absl::Duration poll_interval = absl::Milliseconds(250);
  absl::Duration heartbeat_interval = absl::Seconds(15);
};

class TaskEvents {
 public:
  // Renders a task record as JSON text (the final event's data): the API's one rendering.
  using Render = std::function<std::string(const taskstore::TaskRecord&)>;

  // `store` is not owned and must outlive this.
  TaskEvents(TaskEventsOptions options, taskstore::TaskStore* store, Render render);
  ~TaskEvents();  // Stop()
  TaskEvents(const TaskEvents&) = delete;
  TaskEvents& operator=(const TaskEvents&) = delete;

  // Answers GET /v1/tasks/{id}/events: 404 for an unknown task, 503 when the store fails or
  // max_streams are open, else the stream. Reads the store once (on the calling thread, like
  // GET /v1/tasks/{id}).
  void Handle(const std::string& id, const HttpResponder& respond);

  // Ends every open stream and joins the thread. Idempotent.
  void Stop();

  // Streams open now.
  int open_streams();

 private:
  struct Slots;
  struct Slot;
  struct Watcher;
  void Loop();
  // Sends what `record` holds that `watcher` has not had; false when the stream is over.
  bool Update(Watcher& watcher, const taskstore::TaskRecord& record, absl::Time now);

  const TaskEventsOptions options_;
  taskstore::TaskStore* const store_;
  const Render render_;

  std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ = false;                          // guarded by mu_
  std::vector<std::shared_ptr<Watcher>> watchers_;  // guarded by mu_
  const std::shared_ptr<Slots> slots_;  // the max_streams bound
  std::thread thread_;  // last: it starts in the constructor
};

}  // namespace eventbus::executor::service
