#include "task_events.h"

#include <algorithm>
#include <map>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "eventbus/event.h"
#include "eventbus/executor/task.h"
#include "http_server.h"

namespace eventbus::executor::service {
namespace {

using nlohmann::json;

std::string Dump(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string Message(absl::string_view event, absl::string_view data) {
  return absl::StrCat("event: ", event, "\ndata: ", data, "\n\n");
}

}  // namespace

// The bound on open streams is held by slots, not by a counter the stream's callbacks must
// remember to decrement: a slot reserved for a response whose stream never opens (the client
// left before the header went out) is freed when the server drops the response.
struct TaskEvents::Slots {
  std::mutex mu;
  int used = 0;  // guarded by mu
};

struct TaskEvents::Slot {
  explicit Slot(std::shared_ptr<Slots> s) : slots(std::move(s)) {}
  ~Slot() {
    std::lock_guard lock(slots->mu);
    --slots->used;
  }
  std::shared_ptr<Slots> slots;
};

struct TaskEvents::Watcher {
  std::string id;
  std::shared_ptr<HttpStream> stream;
  std::shared_ptr<Slot> slot;
  std::string last_progress;  // the stored progress text last sent
  absl::Time last_sent = absl::InfinitePast();
};

TaskEvents::TaskEvents(TaskEventsOptions options, taskstore::TaskStore* store, Render render)
    : options_(options),
      store_(store),
      render_(std::move(render)),
      slots_(std::make_shared<Slots>()),
      thread_([this] { Loop(); }) {}

TaskEvents::~TaskEvents() { Stop(); }

void TaskEvents::Stop() {
  std::vector<std::shared_ptr<Watcher>> watchers;
  {
    std::lock_guard lock(mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
    watchers.swap(watchers_);
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  for (auto& watcher : watchers) watcher->stream->End();
}

int TaskEvents::open_streams() {
  std::lock_guard lock(slots_->mu);
  return slots_->used;
}

HttpResponse TaskLookupFailure(absl::string_view id, const absl::Status& status) {
  if (absl::IsNotFound(status)) {
    return JsonError(404, absl::StrCat("no task \"", id, "\" (never submitted through this API, "
                                       "or purged after its retention)"));
  }
  return JsonError(503, absl::StrCat("task store: ", status.message()));
}

void TaskEvents::Handle(const std::string& id, const HttpResponder& respond) {
  absl::StatusOr<taskstore::TaskRecord> record = store_->Get(id);
  if (!record.ok()) return respond(TaskLookupFailure(id, record.status()));
  {
    std::lock_guard lock(mu_);
    if (stopping_) return respond(JsonError(503, "shutting down"));
  }
  std::shared_ptr<Slot> slot;
  {
    std::lock_guard lock(slots_->mu);
    if (slots_->used >= options_.max_streams) {
      HttpResponse busy = JsonError(
          503, absl::StrCat("too many task event streams open (at most ", options_.max_streams,
                            "); try again later"));
      busy.headers.emplace_back("Retry-After", "5");
      return respond(std::move(busy));
    }
    ++slots_->used;
    slot = std::make_shared<Slot>(slots_);
  }
  HttpResponse response;
  response.content_type = "text/event-stream";
  // A buffering proxy (nginx) would hold the events back.
  response.headers.emplace_back("X-Accel-Buffering", "no");
  response.on_open = [this, slot = std::move(slot), record = std::move(*record)](
                         std::shared_ptr<HttpStream> stream) mutable {
    auto watcher = std::make_shared<Watcher>();
    watcher->id = record.id;
    watcher->stream = std::move(stream);
    watcher->slot = std::move(slot);
    std::lock_guard lock(mu_);
    if (stopping_ || !Update(*watcher, record, absl::Now())) {
      watcher->stream->End();
      return;
    }
    watchers_.push_back(std::move(watcher));
  };
  respond(std::move(response));
}

bool TaskEvents::Update(Watcher& watcher, const taskstore::TaskRecord& record, absl::Time now) {
  if (!record.progress.empty() && record.progress != watcher.last_progress) {
    absl::StatusOr<json> progress = ParseUntrustedJson(record.progress);
    const json data = {{"id", record.id},
                       {"state", std::string(taskstore::TaskStateName(record.state))},
                       {"progress", progress.ok() ? std::move(*progress) : json(record.progress)},
                       {"updated_at", FormatTimeAttribute(record.updated_at)}};
    if (!watcher.stream->Send(Message("progress", Dump(data)))) return false;
    watcher.last_progress = record.progress;
    watcher.last_sent = now;
  }
  if (taskstore::IsFinal(record.state)) {
    watcher.stream->Send(Message("final", render_(record)));
    return false;
  }
  if (now - watcher.last_sent >= options_.heartbeat_interval) {
    // A comment: EventSource ignores it; proxies and idle timers see traffic.
    if (!watcher.stream->Send(": keep-alive\n\n")) return false;
    watcher.last_sent = now;
  }
  return true;
}

void TaskEvents::Loop() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    wake_.wait_for(lock, absl::ToChronoNanoseconds(options_.poll_interval),
                   [&] { return stopping_; });
    if (stopping_) return;
    // A client that went away frees its slot here, within a poll interval.
    std::erase_if(watchers_, [](const std::shared_ptr<Watcher>& w) { return !w->stream->open(); });
    if (watchers_.empty()) continue;
    std::set<std::string> wanted;
    for (const auto& watcher : watchers_) wanted.insert(watcher->id);
    const std::vector<std::string> ids(wanted.begin(), wanted.end());
    lock.unlock();
    // One read for every watched task, off the lock: opening streams do not wait for it.
    absl::StatusOr<std::vector<taskstore::TaskRecord>> records = store_->GetMany(ids);
    lock.lock();
    if (stopping_) return;
    if (!records.ok()) continue;  // the store is down: try again next interval
    std::map<std::string, const taskstore::TaskRecord*, std::less<>> by_id;
    for (const auto& record : *records) by_id.emplace(record.id, &record);
    const absl::Time now = absl::Now();
    std::erase_if(watchers_, [&](const std::shared_ptr<Watcher>& watcher) {
      if (!wanted.contains(watcher->id)) return false;  // opened during the read
      auto it = by_id.find(watcher->id);
      if (it == by_id.end()) {
        watcher->stream->Send(Message(
            "gone", Dump({{"id", watcher->id},
                          {"error", "the task is no longer in the task store (purged)"}})));
        watcher->stream->End();
        return true;
      }
      if (Update(*watcher, *it->second, now)) return false;
      watcher->stream->End();
      return true;
    });
  }
}

}  // namespace eventbus::executor::service
