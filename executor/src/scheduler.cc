#include "eventbus/executor/scheduler.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "eventbus/executor/cron.h"
#include "eventbus/stream_inspector.h"
#include "eventbus/executor/iso_duration.h"
#include "eventbus/status_macros.h"

namespace eventbus::executor {
namespace {

using nlohmann::json;
using taskstore::Schedule;
using taskstore::TaskRecord;
using taskstore::TaskState;

constexpr absl::string_view kSource = "eventbus-executor/scheduler";
// The task id is "<schedule id>@<time>", and task ids are at most 200 bytes.
constexpr size_t kMaxScheduleIdBytes = 150;
// A real-time wait never sleeps longer than this between looks at the clock.
constexpr absl::Duration kMaxRealWait = absl::Milliseconds(100);

absl::Status Invalid(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("\"", field, "\": ", why));
}

// The request stream a running task's owner names: "<consumer> on <stream>", as the executor
// that marked it running (and a scheduler that claimed it as stuck) writes it. Empty for a
// record written otherwise.
absl::string_view RunningOwnerStream(absl::string_view owner) {
  const size_t at = owner.rfind(" on ");
  return at == absl::string_view::npos ? absl::string_view() : owner.substr(at + 4);
}

// Publish times of the broker and started_at of the executor come from different clocks: a
// pending delivery published up to this much after the attempt started may still be its own.
constexpr absl::Duration kClockSkewMargin = absl::Seconds(5);

enum class Held { kNo, kMaybe, kUnknown };

// Whether a consumer of `stream` may still hold the delivery of an attempt that started at
// `started_at`. That delivery was published before the attempt started, so a stream whose
// groups have nothing pending that was published by then holds it no more. kUnknown when the
// backend cannot tell (no inspection; Kafka keeps in-flight deliveries in its consumers).
Held DeliveryHeld(const absl::StatusOr<StreamInfo>& info, absl::Time started_at) {
  if (absl::IsNotFound(info.status())) return Held::kNo;  // no stream, nothing held
  if (!info.ok()) return Held::kUnknown;
  for (const ConsumerGroupInfo& group : info->groups) {
    if (group.pending < 0) return Held::kUnknown;
    if (group.pending == 0) continue;
    if (group.oldest_pending_published_at == absl::InfiniteFuture()) return Held::kUnknown;
    if (group.oldest_pending_published_at <= started_at + kClockSkewMargin) return Held::kMaybe;
  }
  return Held::kNo;
}

}  // namespace

Scheduler::Scheduler(SchedulerOptions options, SchedulerDependencies deps)
    : options_(std::move(options)),
      deps_(std::move(deps)),
      clock_(deps_.clock != nullptr ? deps_.clock : deps_.stream->clock()) {
  if (options_.owner.empty()) options_.owner = absl::StrCat("scheduler-", NewEventId());
  if (options_.missed_after <= absl::ZeroDuration()) options_.missed_after = 2 * options_.interval;
}

Scheduler::~Scheduler() { Stop(); }

absl::Status Scheduler::Start() {
  {
    std::lock_guard lock(mu_);
    if (started_) return absl::FailedPreconditionError("scheduler already started");
    started_ = true;
  }
  clock_listener_ = clock_->OnAdvance([this] {
    // Taking the lock orders the wake-up after the loop's look at the clock: none is lost.
    { std::lock_guard lock(mu_); }
    wake_.notify_all();
  });
  thread_ = std::thread([this] { Loop(); });
  return absl::OkStatus();
}

void Scheduler::Stop() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  clock_listener_.reset();
}

void Scheduler::Loop() {
  std::unique_lock lock(mu_);
  while (!stop_) {
    // The next pass is due an interval after this one began: read after the pass, the clock
    // may already include an advance the pass did not see (and the pass would then wait a
    // whole interval past it; on a virtual clock, for ever).
    const absl::Time began = clock_->Now();
    lock.unlock();
    Tick();
    lock.lock();
    const absl::Time until = began + options_.interval;
    while (!stop_) {
      const absl::Time now = clock_->Now();
      if (now >= until) break;
      wake_.wait_for(lock, absl::ToChronoNanoseconds(std::min(until - now, kMaxRealWait)));
    }
  }
}

SchedulerPass Scheduler::Tick() {
  std::lock_guard tick(tick_mu_);
  SchedulerPass pass;
  const absl::Time now = clock_->Now();
  PublishDueTasks(now, pass);
  FireDueSchedules(now, pass);
  if (options_.requeue_stuck) RequeueStuckTasks(now, pass);
  return pass;
}

void Scheduler::Log(absl::string_view message, absl::string_view id,
                    absl::string_view error) const {
  if (deps_.log) deps_.log(message, id, error);
}

absl::Status Scheduler::PublishTo(absl::string_view stream, const TaskRequest& request) {
  return deps_.stream
      ->PublishAndWait(stream, MakeTaskRequestEvent(request, kSource), options_.publish_timeout)
      .status();
}

bool Scheduler::Publish(const TaskRequest& request, absl::string_view id) {
  if (absl::Status published = PublishTo(options_.request_stream, request); !published.ok()) {
    Log("publishing a due task failed; tried again when its claim runs out", id,
        published.ToString());
    return false;
  }
  if (deps_.on_published) deps_.on_published(request.type);
  return true;
}

void Scheduler::PublishDueTasks(absl::Time now, SchedulerPass& pass) {
  auto due = deps_.store->ClaimDue(now, options_.lease, options_.batch, options_.owner);
  if (!due.ok()) {
    ++pass.failed;
    Log("claiming due tasks failed", "", due.status().ToString());
    return;
  }
  for (const TaskRecord& record : *due) {
    auto request = ParseTaskRequest(record.request);
    if (!request.ok()) {
      // Only something other than the API writes such a record: it can never run.
      ++pass.failed;
      taskstore::TaskUpdate broken;
      broken.from = {TaskState::kScheduled};
      broken.expected_version = record.version;
      broken.now = clock_->Now();
      broken.state = TaskState::kFailed;
      broken.finished_at = broken.now;
      broken.last_error = absl::StrCat("stored request is unusable: ", request.status().message());
      (void)deps_.store->Update(record.id, broken);
      Log("scheduled task has an unusable request; marked failed", record.id,
          request.status().ToString());
      continue;
    }
    if (!Publish(*request, record.id)) {
      ++pass.failed;
      continue;
    }
    ++pass.published;
    taskstore::TaskUpdate queued;
    queued.from = {TaskState::kScheduled};
    queued.expected_version = record.version;
    queued.now = clock_->Now();
    queued.state = TaskState::kQueued;
    queued.owner = "";
    queued.lease_until = absl::InfinitePast();
    auto marked = deps_.store->Update(record.id, queued);
    // FailedPrecondition: an executor already took the delivery (running) or it was cancelled
    // meanwhile (the executor settles that delivery as cancelled): nothing left to record.
    if (!marked.ok() && !absl::IsFailedPrecondition(marked.status())) {
      Log("recording a published task as queued failed", record.id, marked.status().ToString());
    }
  }
}

// For each stuck task: is its delivery still held (then reclaim, not this pass, brings it
// back)? If not, claim the record (a compare-and-set on its version, so one scheduler wins),
// publish its request onto the stream it ran on, and record it queued. A crash after the claim
// leaves it running until the claim's lease runs out: then it is stuck again and re-queued
// (perhaps a second time, a duplicate the store settles once the task succeeded).
void Scheduler::RequeueStuckTasks(absl::Time now, SchedulerPass& pass) {
  auto stuck = deps_.store->FindStuck(now, options_.batch);
  if (!stuck.ok()) {
    ++pass.failed;
    Log("finding stuck tasks failed", "", stuck.status().ToString());
    return;
  }
  if (stuck->empty()) return;
  StreamInspector* inspector =
      deps_.stream->capabilities().inspection ? deps_.stream->inspector() : nullptr;
  std::map<std::string, absl::StatusOr<StreamInfo>, std::less<>> described;  // per pass
  for (const TaskRecord& record : *stuck) {
    std::string stream(RunningOwnerStream(record.owner));
    if (stream.empty()) stream = options_.request_stream;
    Held held = Held::kUnknown;
    if (inspector != nullptr) {
      auto it = described.find(stream);
      if (it == described.end()) it = described.emplace(stream, inspector->Describe(stream)).first;
      if (!it->second.ok() && !absl::IsNotFound(it->second.status())) {
        ++pass.failed;
        Log("inspecting a stuck task's stream failed; looked at again next pass", record.id,
            it->second.status().ToString());
        continue;
      }
      held = DeliveryHeld(it->second, record.started_at);
    }
    if (held == Held::kMaybe) {
      ++pass.stuck_held;
      continue;
    }
    // kUnknown: the lease alone decides (docs/tasks.md, "Stuck tasks").
    taskstore::TaskUpdate claim;
    claim.from = {TaskState::kRunning};
    claim.expected_version = record.version;
    claim.now = clock_->Now();
    claim.owner = absl::StrCat(options_.owner, " on ", stream);
    claim.lease_until = claim.now + options_.lease;
    auto claimed = deps_.store->Update(record.id, claim);
    if (!claimed.ok()) {
      // FailedPrecondition: another scheduler claimed it, or its executor wrote it meanwhile.
      if (!absl::IsFailedPrecondition(claimed.status()) && !absl::IsNotFound(claimed.status())) {
        ++pass.failed;
        Log("claiming a stuck task failed", record.id, claimed.status().ToString());
      }
      continue;
    }
    auto request = ParseTaskRequest(record.request);
    if (!request.ok()) {
      ++pass.failed;
      taskstore::TaskUpdate broken;
      broken.from = {TaskState::kRunning};
      broken.expected_version = claimed->version;
      broken.now = clock_->Now();
      broken.state = TaskState::kFailed;
      broken.finished_at = broken.now;
      broken.lease_until = absl::InfinitePast();
      broken.last_error = absl::StrCat("stored request is unusable: ", request.status().message());
      (void)deps_.store->Update(record.id, broken);
      Log("stuck task has an unusable request; marked failed", record.id,
          request.status().ToString());
      continue;
    }
    if (absl::Status published = PublishTo(stream, *request); !published.ok()) {
      ++pass.failed;
      Log("re-queueing a stuck task failed; tried again when its claim runs out", record.id,
          published.ToString());
      continue;
    }
    const std::string why = absl::StrCat(
        "running past its lease (", FormatTimeAttribute(record.lease_until), ", owner ",
        record.owner.empty() ? std::string("unknown") : record.owner, ") and ",
        held == Held::kNo ? "no consumer of " : "the backend cannot tell whether a consumer of ",
        stream, " holds its delivery");
    taskstore::TaskUpdate queued;
    queued.from = {TaskState::kRunning};
    queued.expected_version = claimed->version;
    queued.now = clock_->Now();
    queued.state = TaskState::kQueued;
    queued.owner = "";
    queued.lease_until = absl::InfinitePast();
    queued.append_history = json{{"requeued_at", FormatTimeAttribute(queued.now)},
                                 {"reason", absl::StrCat("stuck: ", why)},
                                 {"stream", stream},
                                 {"by", options_.owner}}
                                .dump(-1, ' ', false, json::error_handler_t::replace);
    auto marked = deps_.store->Update(record.id, queued);
    // FailedPrecondition: the re-queued request already runs (an executor marked it running).
    if (!marked.ok() && !absl::IsFailedPrecondition(marked.status())) {
      Log("recording a re-queued stuck task as queued failed", record.id,
          marked.status().ToString());
    }
    ++pass.requeued;
    Log("stuck task re-queued", record.id, why);
    if (deps_.on_requeued) deps_.on_requeued(record.type);
  }
}

void Scheduler::FireDueSchedules(absl::Time now, SchedulerPass& pass) {
  auto due = deps_.store->ClaimDueSchedules(now, options_.lease, options_.batch, options_.owner);
  if (!due.ok()) {
    ++pass.failed;
    Log("claiming due schedules failed", "", due.status().ToString());
    return;
  }
  for (const Schedule& schedule : *due) FireSchedule(schedule, now, pass);
}

void Scheduler::FireSchedule(const Schedule& schedule, absl::Time now, SchedulerPass& pass) {
  const absl::Time fire_time = schedule.next_run_at;
  auto advance = [&](absl::Time next, absl::Time last_run_at, absl::string_view last_task_id) {
    auto advanced = deps_.store->AdvanceSchedule(schedule.id, schedule.version, next, last_run_at,
                                                 last_task_id, clock_->Now());
    // FailedPrecondition/NotFound: deleted (or re-created) meanwhile; nothing to keep.
    if (!advanced.ok() && !absl::IsFailedPrecondition(advanced.status()) &&
        !absl::IsNotFound(advanced.status())) {
      Log("advancing a schedule failed", schedule.id, advanced.status().ToString());
    }
  };
  // Always the next time after now: missed times are never worked through one by one.
  auto next = NextFireAfter(schedule, now);
  if (!next.ok()) {
    ++pass.failed;
    Log("schedule cannot be evaluated; it stops firing", schedule.id, next.status().ToString());
    advance(absl::InfiniteFuture(), schedule.last_run_at, schedule.last_task_id);
    return;
  }
  auto request = ScheduledTaskRequest(schedule, fire_time);
  if (!request.ok()) {
    ++pass.failed;
    Log("schedule's task template is unusable; it stops firing", schedule.id,
        request.status().ToString());
    advance(absl::InfiniteFuture(), schedule.last_run_at, schedule.last_task_id);
    return;
  }
  // This fire's task exists: a scheduler made it and died before advancing the schedule.
  // Finish that fire (whatever the missed policy) rather than leave its task queued unpublished.
  auto made = deps_.store->Get(request->id);
  if (made.ok()) {
    if (made->state == TaskState::kQueued && !Publish(*request, request->id)) {
      ++pass.failed;
      return;
    }
    ++pass.fired;
    advance(*next, now, request->id);
    return;
  }
  if (!absl::IsNotFound(made.status())) {
    ++pass.failed;  // the claim runs out and the fire is looked at again
    Log("reading a schedule's task failed", schedule.id, made.status().ToString());
    return;
  }
  const bool run_once = schedule.missed_policy == "run_once";
  if (!schedule.last_task_id.empty()) {
    auto last = deps_.store->Get(schedule.last_task_id);
    if (!last.ok() && !absl::IsNotFound(last.status())) {
      ++pass.failed;
      Log("reading a schedule's last task failed", schedule.id, last.status().ToString());
      return;
    }
    if (last.ok() && !taskstore::IsFinal(last->state)) {
      // Runs never overlap. This fire is missed: `run_once` keeps it due (it runs as soon as
      // the previous task is final), `skip` moves on to the next time.
      ++pass.skipped;
      advance(run_once ? fire_time : *next, schedule.last_run_at, schedule.last_task_id);
      return;
    }
  }
  if (now - fire_time > options_.missed_after && !run_once) {
    ++pass.skipped;
    Log("missed schedule fire skipped (missed: skip)", schedule.id,
        absl::StrCat("due at ", FormatTimeAttribute(fire_time)));
    advance(*next, schedule.last_run_at, schedule.last_task_id);
    return;
  }
  TaskRecord record;
  record.id = request->id;
  record.type = request->type;
  record.state = TaskState::kQueued;
  record.request = TaskRequestToJson(*request);
  record.created_at = now;
  record.unique_key = request->unique_key;
  if (request->unique_for) record.unique_until = now + *request->unique_for;
  record.schedule_id = schedule.id;
  auto created = deps_.store->Create(record, now);
  if (!created.ok()) {
    ++pass.failed;
    Log("creating a schedule's task failed", schedule.id, created.status().ToString());
    return;
  }
  bool publish = true;
  switch (created->kind) {
    case taskstore::CreateResult::Kind::kCreated:
      break;
    case taskstore::CreateResult::Kind::kIdTaken:
      // Made since the read above (claims exclude that, but a claim can run out mid-pass):
      // publish again unless it evidently arrived (a duplicate is settled by the record).
      publish = created->record.state == TaskState::kQueued;
      break;
    case taskstore::CreateResult::Kind::kUniqueKeyTaken:
      ++pass.skipped;
      Log("schedule fire skipped: its unique_key is held", schedule.id,
          absl::StrCat("held by task ", created->record.id));
      advance(*next, schedule.last_run_at, schedule.last_task_id);
      return;
  }
  if (publish && !Publish(*request, record.id)) {
    ++pass.failed;
    return;
  }
  ++pass.fired;
  advance(*next, now, record.id);
}

absl::StatusOr<absl::Time> NextFireAfter(const Schedule& schedule, absl::Time after) {
  if (!schedule.cron.empty()) {
    EVENTBUS_ASSIGN_OR_RETURN(CronExpression cron, CronExpression::Parse(schedule.cron));
    EVENTBUS_ASSIGN_OR_RETURN(
        absl::TimeZone zone,
        LoadIanaTimeZone(schedule.time_zone.empty() ? "UTC" : schedule.time_zone, "timezone"));
    return cron.Next(after, zone);
  }
  if (schedule.interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("schedule ", schedule.id, " has neither a cron expression nor an interval"));
  }
  // Fires at created_at + k * interval (k >= 1): every executor computes the same times.
  const absl::Time anchor = schedule.created_at;
  if (after < anchor) return anchor + schedule.interval;
  absl::Duration remainder;
  const int64_t k = absl::IDivDuration(after - anchor, schedule.interval, &remainder);
  return anchor + (k + 1) * schedule.interval;
}

std::string ScheduledTaskId(absl::string_view schedule_id, absl::Time fire_time) {
  return absl::StrCat(schedule_id, "@", FormatTimeAttribute(fire_time));
}

absl::StatusOr<TaskRequest> ScheduledTaskRequest(const Schedule& schedule, absl::Time fire_time) {
  auto document = ParseUntrustedJson(schedule.request);
  if (!document.ok() || !document->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("schedule ", schedule.id, ": its task template is not a JSON object"));
  }
  (*document)["id"] = ScheduledTaskId(schedule.id, fire_time);
  // The result carries which schedule and fire made it (unless the template says otherwise).
  json& metadata = (*document)["metadata"];
  if (metadata.is_null()) metadata = json::object();
  if (metadata.is_object()) {
    if (!metadata.contains("schedule_id")) metadata["schedule_id"] = schedule.id;
    if (!metadata.contains("scheduled_for")) metadata["scheduled_for"] = FormatTimeAttribute(fire_time);
  }
  return TaskRequestFromJson(*document);
}

absl::StatusOr<Schedule> ScheduleFromJson(const json& document, absl::Time now) {
  if (!document.is_object()) return absl::InvalidArgumentError("schedule must be a JSON object");
  Schedule schedule;
  bool has_id = false;
  bool has_timezone = false;
  const json* task = nullptr;
  for (const auto& [key, value] : document.items()) {
    if (key == "id") {
      if (!value.is_string()) return Invalid("id", "must be a string");
      schedule.id = value.get<std::string>();
      if (schedule.id.empty()) return Invalid("id", "must not be empty");
      if (schedule.id.size() > kMaxScheduleIdBytes) {
        return Invalid("id", absl::StrCat("is longer than ", kMaxScheduleIdBytes, " bytes"));
      }
      for (char c : schedule.id) {
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f || c == '/') {
          return Invalid("id", "contains a control character or '/'");
        }
      }
      has_id = true;
    } else if (key == "cron") {
      if (!value.is_string()) return Invalid("cron", "must be a string such as \"0 3 * * *\"");
      auto cron = CronExpression::Parse(value.get<std::string>());
      if (!cron.ok()) return Invalid("cron", cron.status().message());
      schedule.cron = cron->text();
    } else if (key == "timezone") {
      if (!value.is_string()) return Invalid("timezone", "must be an IANA time zone name");
      EVENTBUS_RETURN_IF_ERROR(LoadIanaTimeZone(value.get<std::string>(), "timezone").status());
      schedule.time_zone = value.get<std::string>();
      has_timezone = true;
    } else if (key == "every") {
      if (!value.is_string()) return Invalid("every", "must be an ISO 8601 duration such as \"PT15M\"");
      auto every = ParseIsoDuration(value.get<std::string>());
      if (!every.ok()) return Invalid("every", every.status().message());
      if (*every < absl::Seconds(1)) return Invalid("every", "must be at least PT1S");
      schedule.interval = *every;
    } else if (key == "missed") {
      if (!value.is_string() ||
          (value.get<std::string>() != "skip" && value.get<std::string>() != "run_once")) {
        return Invalid("missed", "must be \"skip\" or \"run_once\"");
      }
      schedule.missed_policy = value.get<std::string>();
    } else if (key == "task") {
      task = &value;
    } else {
      return Invalid(key, "unknown field; valid: id, cron, timezone, every, task, missed");
    }
  }
  if (!has_id) return absl::InvalidArgumentError("missing required field \"id\"");
  if (schedule.cron.empty() == (schedule.interval == absl::ZeroDuration())) {
    return absl::InvalidArgumentError(
        schedule.cron.empty()
            ? "give \"cron\" (5 fields) or \"every\" (an ISO 8601 duration)"
            : "\"cron\" and \"every\" exclude each other: give one of them");
  }
  if (has_timezone && schedule.cron.empty()) {
    return Invalid("timezone", "applies to \"cron\" only; \"every\" counts elapsed time");
  }
  if (schedule.time_zone.empty()) schedule.time_zone = "UTC";
  if (task == nullptr) return absl::InvalidArgumentError("missing required field \"task\"");
  if (!task->is_object()) return Invalid("task", "must be a task request object");
  for (absl::string_view field : {"id", "run_at", "run_after"}) {
    if (task->contains(field)) {
      return Invalid(absl::StrCat("task.", field),
                     "is not allowed in a schedule's template (each fire's id is \"<schedule "
                     "id>@<time>\", and it runs at the schedule's time)");
    }
  }
  json probe = *task;
  probe["id"] = ScheduledTaskId(schedule.id, now);
  auto request = TaskRequestFromJson(probe);
  if (!request.ok()) return Invalid("task", request.status().message());
  schedule.type = request->type;
  schedule.request = task->dump(-1, ' ', false, json::error_handler_t::replace);
  schedule.created_at = now;
  EVENTBUS_ASSIGN_OR_RETURN(schedule.next_run_at, NextFireAfter(schedule, now));
  return schedule;
}

}  // namespace eventbus::executor
