#include <algorithm>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "eventbus/taskstore/internal/checks.h"
#include "eventbus/taskstore/memory_task_store.h"

namespace eventbus::taskstore {
namespace {

using internal::AppendHistory;

// (time, id): the order of every time index; ties broken by id so the order is total.
using TimeKey = std::pair<absl::Time, std::string>;

bool Holds(const TaskRecord& task, absl::Time now) {
  return !IsFinal(task.state) || now < task.unique_until;
}

void Apply(const TaskUpdate& u, TaskRecord& t) {
  if (u.state) t.state = *u.state;
  if (u.attempts) t.attempts = *u.attempts;
  if (u.increment_attempts) ++t.attempts;
  if (u.run_at) t.run_at = *u.run_at;
  if (u.started_at) t.started_at = *u.started_at;
  if (u.finished_at) t.finished_at = *u.finished_at;
  if (u.expires_at) t.expires_at = *u.expires_at;
  if (u.last_error) t.last_error = *u.last_error;
  if (u.result) t.result = *u.result;
  if (u.progress) t.progress = *u.progress;
  if (u.history) t.history = *u.history;
  if (u.append_history) t.history = AppendHistory(t.history, *u.append_history);
  if (u.owner) t.owner = *u.owner;
  if (u.lease_until) t.lease_until = *u.lease_until;
  if (u.cancel_requested) t.cancel_requested = *u.cancel_requested;
  t.updated_at = u.now;
  ++t.version;
}

// List cursor: "<created_at in unix nanos>/<id>" of the last task of the previous page.
std::string CursorOf(const TaskRecord& t) {
  return absl::StrCat(absl::ToUnixNanos(t.created_at), "/", t.id);
}
absl::StatusOr<TimeKey> ParseCursor(absl::string_view cursor) {
  std::pair<absl::string_view, absl::string_view> parts =
      absl::StrSplit(cursor, absl::MaxSplits('/', 1));
  int64_t nanos = 0;
  if (parts.second.empty() || !absl::SimpleAtoi(parts.first, &nanos)) {
    return absl::InvalidArgumentError(absl::StrCat("list cursor: malformed '", cursor, "'"));
  }
  return TimeKey{absl::FromUnixNanos(nanos), std::string(parts.second)};
}

class MemoryTaskStore final : public TaskStore {
 public:
  absl::string_view kind() const override { return "memory"; }
  absl::Status Migrate() override { return absl::OkStatus(); }

  absl::StatusOr<CreateResult> Create(const TaskRecord& record, absl::Time now) override {
    if (absl::Status s = internal::ValidateNewTask(record); !s.ok()) return s;
    std::lock_guard lock(mu_);
    if (auto it = tasks_.find(record.id); it != tasks_.end()) {
      return CreateResult{CreateResult::Kind::kIdTaken, it->second};
    }
    if (!record.unique_key.empty()) {
      auto holder = unique_.find(record.unique_key);
      if (holder != unique_.end()) {
        auto other = tasks_.find(holder->second);
        if (other != tasks_.end() && Holds(other->second, now)) {
          return CreateResult{CreateResult::Kind::kUniqueKeyTaken, other->second};
        }
      }
      unique_[record.unique_key] = record.id;
    }
    TaskRecord stored = record;
    stored.created_at = now;
    stored.updated_at = now;
    stored.version = 1;
    Index(stored);
    tasks_.emplace(stored.id, stored);
    return CreateResult{CreateResult::Kind::kCreated, std::move(stored)};
  }

  absl::StatusOr<TaskRecord> Get(absl::string_view id) override {
    std::lock_guard lock(mu_);
    auto it = tasks_.find(std::string(id));
    if (it == tasks_.end()) return absl::NotFoundError(absl::StrCat("task ", id, ": not found"));
    return it->second;
  }

  absl::StatusOr<std::vector<TaskRecord>> GetMany(absl::Span<const std::string> ids) override {
    std::lock_guard lock(mu_);
    std::vector<TaskRecord> found;
    std::set<absl::string_view> seen;
    for (const std::string& id : ids) {
      auto it = tasks_.find(id);
      if (it != tasks_.end() && seen.insert(id).second) found.push_back(it->second);
    }
    return found;
  }

  absl::StatusOr<TaskRecord> Update(absl::string_view id, const TaskUpdate& update) override {
    std::lock_guard lock(mu_);
    return UpdateLocked(std::string(id), update);
  }

  std::vector<absl::StatusOr<TaskRecord>> UpdateMany(
      absl::Span<const TaskUpdateRequest> updates) override {
    std::lock_guard lock(mu_);
    std::vector<absl::StatusOr<TaskRecord>> results;
    results.reserve(updates.size());
    for (const TaskUpdateRequest& request : updates) {
      results.push_back(UpdateLocked(request.id, request.update));
    }
    return results;
  }

  absl::StatusOr<std::vector<TaskRecord>> ClaimDue(absl::Time now, absl::Duration lease, int limit,
                                                   absl::string_view owner) override {
    if (absl::Status s = internal::ValidatePositiveLimit(limit, "claim"); !s.ok()) return s;
    std::lock_guard lock(mu_);
    std::vector<std::string> due;
    for (const TimeKey& key : scheduled_) {
      if (key.first > now || static_cast<int>(due.size()) >= limit) break;
      if (tasks_.at(key.second).lease_until < now) due.push_back(key.second);
    }
    std::vector<TaskRecord> claimed;
    for (const std::string& id : due) {
      TaskRecord& task = tasks_.at(id);
      Unindex(task);
      task.owner = std::string(owner);
      task.lease_until = now + lease;
      task.updated_at = now;
      ++task.version;
      Index(task);
      claimed.push_back(task);
    }
    return claimed;
  }

  absl::StatusOr<std::vector<TaskRecord>> FindStuck(absl::Time now, int limit) override {
    if (absl::Status s = internal::ValidatePositiveLimit(limit, "stuck"); !s.ok()) return s;
    std::lock_guard lock(mu_);
    std::vector<TaskRecord> stuck;
    for (const TimeKey& key : running_) {
      if (key.first >= now || static_cast<int>(stuck.size()) >= limit) break;
      stuck.push_back(tasks_.at(key.second));
    }
    return stuck;
  }

  absl::StatusOr<ListPage> List(const ListQuery& query) override {
    if (absl::Status s = internal::ValidateListLimit(query.limit); !s.ok()) return s;
    std::optional<TimeKey> after;
    if (!query.cursor.empty()) {
      absl::StatusOr<TimeKey> parsed = ParseCursor(query.cursor);
      if (!parsed.ok()) return parsed.status();
      after = *std::move(parsed);
    }
    std::lock_guard lock(mu_);
    ListPage page;
    // by_created_ is ascending; newest first walks it backwards from below the cursor.
    auto it = after ? by_created_.lower_bound(*after) : by_created_.end();
    while (it != by_created_.begin()) {
      --it;
      const TaskRecord& task = tasks_.at(it->second);
      if (query.state && task.state != *query.state) continue;
      if (!query.type.empty() && task.type != query.type) continue;
      if (!query.schedule_id.empty() && task.schedule_id != query.schedule_id) continue;
      if (static_cast<int>(page.tasks.size()) == query.limit) {
        page.next_cursor = CursorOf(page.tasks.back());
        break;
      }
      page.tasks.push_back(task);
    }
    return page;
  }

  absl::StatusOr<std::vector<TypeStats>> Stats() override {
    std::lock_guard lock(mu_);
    std::map<std::string, TypeStats> by_type;
    for (const auto& [id, task] : tasks_) {
      TypeStats& stats = by_type[task.type];
      stats.type = task.type;
      ++stats.counts[static_cast<int>(task.state)];
      if (task.state == TaskState::kQueued) {
        stats.oldest_queued_created_at = std::min(stats.oldest_queued_created_at, task.created_at);
      }
    }
    std::vector<TypeStats> out;
    for (auto& [type, stats] : by_type) out.push_back(std::move(stats));
    return out;
  }

  absl::StatusOr<int> PurgeExpired(absl::Time now, int limit) override {
    if (absl::Status s = internal::ValidatePositiveLimit(limit, "purge"); !s.ok()) return s;
    std::lock_guard lock(mu_);
    std::vector<std::string> expired;
    for (const TimeKey& key : expiring_) {
      if (key.first > now || static_cast<int>(expired.size()) >= limit) break;
      expired.push_back(key.second);
    }
    for (const std::string& id : expired) {
      auto it = tasks_.find(id);
      Unindex(it->second);
      auto holder = unique_.find(it->second.unique_key);
      if (holder != unique_.end() && holder->second == id) unique_.erase(holder);
      tasks_.erase(it);
    }
    return static_cast<int>(expired.size());
  }

  absl::StatusOr<Schedule> CreateSchedule(const Schedule& schedule, absl::Time now) override {
    if (absl::Status s = internal::ValidateNewSchedule(schedule); !s.ok()) return s;
    std::lock_guard lock(mu_);
    if (schedules_.count(schedule.id) > 0) {
      return absl::AlreadyExistsError(absl::StrCat("schedule ", schedule.id, ": already exists"));
    }
    Schedule stored = schedule;
    stored.created_at = now;
    stored.version = 1;
    schedules_.emplace(stored.id, stored);
    return stored;
  }

  absl::StatusOr<Schedule> GetSchedule(absl::string_view id) override {
    std::lock_guard lock(mu_);
    auto it = schedules_.find(std::string(id));
    if (it == schedules_.end()) {
      return absl::NotFoundError(absl::StrCat("schedule ", id, ": not found"));
    }
    return it->second;
  }

  absl::StatusOr<std::vector<Schedule>> ListSchedules() override {
    std::lock_guard lock(mu_);
    std::vector<Schedule> out;
    for (const auto& [id, schedule] : schedules_) out.push_back(schedule);
    return out;
  }

  absl::Status DeleteSchedule(absl::string_view id) override {
    std::lock_guard lock(mu_);
    if (schedules_.erase(std::string(id)) == 0) {
      return absl::NotFoundError(absl::StrCat("schedule ", id, ": not found"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<Schedule>> ClaimDueSchedules(absl::Time now, absl::Duration lease,
                                                          int limit,
                                                          absl::string_view owner) override {
    if (absl::Status s = internal::ValidatePositiveLimit(limit, "schedule claim"); !s.ok()) {
      return s;
    }
    std::lock_guard lock(mu_);
    std::vector<Schedule*> due;
    for (auto& [id, schedule] : schedules_) {
      if (!schedule.paused && schedule.next_run_at <= now && schedule.lease_until < now) {
        due.push_back(&schedule);
      }
    }
    std::sort(due.begin(), due.end(), [](const Schedule* a, const Schedule* b) {
      return std::tie(a->next_run_at, a->id) < std::tie(b->next_run_at, b->id);
    });
    if (static_cast<int>(due.size()) > limit) due.resize(limit);
    std::vector<Schedule> claimed;
    for (Schedule* schedule : due) {
      schedule->owner = std::string(owner);
      schedule->lease_until = now + lease;
      ++schedule->version;
      claimed.push_back(*schedule);
    }
    return claimed;
  }

  absl::StatusOr<Schedule> AdvanceSchedule(absl::string_view id, int64_t expected_version,
                                           absl::Time next_run_at, absl::Time last_run_at,
                                           absl::string_view last_task_id,
                                           absl::Time now) override {
    std::lock_guard lock(mu_);
    auto it = schedules_.find(std::string(id));
    if (it == schedules_.end()) {
      return absl::NotFoundError(absl::StrCat("schedule ", id, ": not found"));
    }
    Schedule& schedule = it->second;
    if (schedule.version != expected_version) {
      return absl::FailedPreconditionError(absl::StrCat("schedule ", id, ": version ",
                                                        schedule.version, ", wanted ",
                                                        expected_version));
    }
    schedule.next_run_at = next_run_at;
    schedule.last_run_at = last_run_at;
    schedule.last_task_id = std::string(last_task_id);
    schedule.owner.clear();
    schedule.lease_until = absl::InfinitePast();
    ++schedule.version;
    return schedule;
  }

  absl::Status PutInstance(const InstanceRecord& record, absl::Time now,
                           absl::Duration ttl) override {
    if (absl::Status s = internal::ValidateInstance(record, ttl); !s.ok()) return s;
    std::lock_guard lock(mu_);
    std::erase_if(instances_, [now](const auto& entry) { return entry.second.expires_at <= now; });
    InstanceRecord& stored = instances_[record.name];
    stored = record;
    stored.last_seen = now;
    stored.expires_at = now + ttl;
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<InstanceRecord>> ListInstances(absl::Time now) override {
    std::lock_guard lock(mu_);
    std::vector<InstanceRecord> out;
    for (const auto& [name, record] : instances_) {
      if (record.expires_at > now) out.push_back(record);
    }
    return out;
  }

  absl::Status DeleteInstance(absl::string_view name) override {
    std::lock_guard lock(mu_);
    instances_.erase(std::string(name));
    return absl::OkStatus();
  }

 private:
  absl::StatusOr<TaskRecord> UpdateLocked(const std::string& id, const TaskUpdate& update) {
    auto it = tasks_.find(id);
    if (it == tasks_.end()) return absl::NotFoundError(absl::StrCat("task ", id, ": not found"));
    TaskRecord& task = it->second;
    const bool state_ok = update.from.empty() || std::find(update.from.begin(), update.from.end(),
                                                           task.state) != update.from.end();
    const bool version_ok = update.expected_version == 0 || update.expected_version == task.version;
    if (!state_ok || !version_ok) {
      return absl::FailedPreconditionError(internal::ConditionFailedMessage(id, task, update));
    }
    Unindex(task);
    Apply(update, task);
    Index(task);
    return task;
  }

  // The time indexes hold a task only in the states where a query looks for it.
  void Index(const TaskRecord& t) {
    by_created_.emplace(t.created_at, t.id);
    if (t.state == TaskState::kScheduled) scheduled_.emplace(t.run_at, t.id);
    if (t.state == TaskState::kRunning) running_.emplace(t.lease_until, t.id);
    if (IsFinal(t.state)) expiring_.emplace(t.expires_at, t.id);
  }
  void Unindex(const TaskRecord& t) {
    by_created_.erase({t.created_at, t.id});
    scheduled_.erase({t.run_at, t.id});
    running_.erase({t.lease_until, t.id});
    expiring_.erase({t.expires_at, t.id});
  }

  std::mutex mu_;
  std::map<std::string, TaskRecord, std::less<>> tasks_;
  std::map<std::string, std::string> unique_;  // unique key -> id of the task that took it last
  std::set<TimeKey> by_created_;
  std::set<TimeKey> scheduled_;  // by run_at
  std::set<TimeKey> running_;    // by lease_until
  std::set<TimeKey> expiring_;   // final, by expires_at
  std::map<std::string, Schedule, std::less<>> schedules_;
  std::map<std::string, InstanceRecord, std::less<>> instances_;  // by name
};

}  // namespace

std::unique_ptr<TaskStore> NewMemoryTaskStore() { return std::make_unique<MemoryTaskStore>(); }

}  // namespace eventbus::taskstore
