#include "eventbus/taskstore/redis_task_store.h"

#include <signal.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "connection_pool.h"
#include "eventbus/status_macros.h"
#include "eventbus/taskstore/internal/checks.h"
#include "task_scripts.h"

namespace eventbus::taskstore {
namespace {

namespace scripts = redis_scripts;
using redis::IsArray;
using redis::ReplyPtr;
using redis::StringOf;

constexpr absl::string_view kSchemaVersion = "1";

// --- Encoding ---------------------------------------------------------------------------------

// Times as unix microseconds; the infinities as +-9e15 (about 285 years from 1970), which a
// Lua number (a double) holds exactly, as it does every microsecond time in between.
constexpr int64_t kInfiniteMicros = 9'000'000'000'000'000;

std::string EncodeTime(absl::Time t) {
  if (t == absl::InfinitePast()) return absl::StrCat(-kInfiniteMicros);
  if (t == absl::InfiniteFuture()) return absl::StrCat(kInfiniteMicros);
  const int64_t us = absl::ToUnixMicros(t);
  return absl::StrCat(std::clamp(us, -kInfiniteMicros + 1, kInfiniteMicros - 1));
}

absl::Time DecodeTime(absl::string_view s) {
  int64_t us = 0;
  if (!absl::SimpleAtoi(s, &us) || us <= -kInfiniteMicros) return absl::InfinitePast();
  if (us >= kInfiniteMicros) return absl::InfiniteFuture();
  return absl::FromUnixMicros(us);
}

// The member of a task in the lexicographic indexes: created_at, shifted to be non-negative
// and zero-padded so byte order is time order, then the id (the tie-break).
std::string IndexMember(absl::Time created_at, absl::string_view id) {
  int64_t us = absl::ToUnixMicros(created_at);
  us = std::clamp(us, -kInfiniteMicros + 1, kInfiniteMicros - 1);
  return absl::StrFormat("%017d|%s", us + kInfiniteMicros, id);
}
constexpr size_t kIndexMemberPrefix = 18;  // 17 digits and '|'

absl::Time CreatedOfMember(absl::string_view member) {
  int64_t shifted = 0;
  if (member.size() < kIndexMemberPrefix || !absl::SimpleAtoi(member.substr(0, 17), &shifted)) {
    return absl::InfiniteFuture();
  }
  return absl::FromUnixMicros(shifted - kInfiniteMicros);
}

bool IsIndexMember(absl::string_view member) {
  if (member.size() <= kIndexMemberPrefix || member[17] != '|') return false;
  return std::all_of(member.begin(), member.begin() + 17,
                     [](char c) { return absl::ascii_isdigit(static_cast<unsigned char>(c)); });
}

void AddPair(std::vector<std::string>& args, absl::string_view field, std::string value) {
  args.emplace_back(field);
  args.push_back(std::move(value));
}

// Every stored field of a new record except id, created, updated, version and m (the script
// sets those).
void AppendRecordFields(const TaskRecord& t, std::vector<std::string>& args) {
  AddPair(args, "type", t.type);
  AddPair(args, "state", std::string(TaskStateName(t.state)));
  AddPair(args, "request", t.request);
  AddPair(args, "attempts", absl::StrCat(t.attempts));
  AddPair(args, "run_at", EncodeTime(t.run_at));
  AddPair(args, "started", EncodeTime(t.started_at));
  AddPair(args, "finished", EncodeTime(t.finished_at));
  AddPair(args, "expires", EncodeTime(t.expires_at));
  AddPair(args, "error", t.last_error);
  AddPair(args, "result", t.result);
  AddPair(args, "progress", t.progress);
  AddPair(args, "history", t.history);
  AddPair(args, "ukey", t.unique_key);
  AddPair(args, "uuntil", EncodeTime(t.unique_until));
  AddPair(args, "sched", t.schedule_id);
  AddPair(args, "owner", t.owner);
  AddPair(args, "lease", EncodeTime(t.lease_until));
  AddPair(args, "cancel", t.cancel_requested ? "1" : "0");
}

// The field/value pairs of an update's set fields (attempts increment and history append are
// separate script arguments: they depend on the stored value).
std::vector<std::string> UpdatePairs(const TaskUpdate& u) {
  std::vector<std::string> p;
  if (u.state) AddPair(p, "state", std::string(TaskStateName(*u.state)));
  if (u.attempts) AddPair(p, "attempts", absl::StrCat(*u.attempts));
  if (u.run_at) AddPair(p, "run_at", EncodeTime(*u.run_at));
  if (u.started_at) AddPair(p, "started", EncodeTime(*u.started_at));
  if (u.finished_at) AddPair(p, "finished", EncodeTime(*u.finished_at));
  if (u.expires_at) AddPair(p, "expires", EncodeTime(*u.expires_at));
  if (u.last_error) AddPair(p, "error", *u.last_error);
  if (u.result) AddPair(p, "result", *u.result);
  if (u.progress) AddPair(p, "progress", *u.progress);
  if (u.history) AddPair(p, "history", *u.history);
  if (u.owner) AddPair(p, "owner", *u.owner);
  if (u.lease_until) AddPair(p, "lease", EncodeTime(*u.lease_until));
  if (u.cancel_requested) AddPair(p, "cancel", *u.cancel_requested ? "1" : "0");
  return p;
}

int64_t IntOf(absl::string_view s) {
  int64_t n = 0;
  return absl::SimpleAtoi(s, &n) ? n : 0;
}

// A flat HGETALL reply (field, value, ...). InvalidArgument when the hash holds junk (not
// written by this store).
absl::StatusOr<TaskRecord> DecodeTask(const redisReply* r) {
  if (!IsArray(r) || r->elements % 2 != 0) {
    return absl::InternalError("redis task store: a task hash reply is not field/value pairs");
  }
  TaskRecord t;
  for (size_t i = 0; i + 1 < r->elements; i += 2) {
    const absl::string_view f = StringOf(r->element[i]);
    const absl::string_view v = StringOf(r->element[i + 1]);
    if (f == "id") t.id = std::string(v);
    else if (f == "type") t.type = std::string(v);
    else if (f == "state") {
      std::optional<TaskState> state = ParseTaskState(v);
      if (!state) {
        return absl::InvalidArgumentError(absl::StrCat("redis task store: unknown state '", v, "'"));
      }
      t.state = *state;
    } else if (f == "request") t.request = std::string(v);
    else if (f == "attempts") t.attempts = static_cast<int>(IntOf(v));
    else if (f == "created") t.created_at = DecodeTime(v);
    else if (f == "updated") t.updated_at = DecodeTime(v);
    else if (f == "run_at") t.run_at = DecodeTime(v);
    else if (f == "started") t.started_at = DecodeTime(v);
    else if (f == "finished") t.finished_at = DecodeTime(v);
    else if (f == "expires") t.expires_at = DecodeTime(v);
    else if (f == "error") t.last_error = std::string(v);
    else if (f == "result") t.result = std::string(v);
    else if (f == "progress") t.progress = std::string(v);
    else if (f == "history") t.history = std::string(v);
    else if (f == "ukey") t.unique_key = std::string(v);
    else if (f == "uuntil") t.unique_until = DecodeTime(v);
    else if (f == "sched") t.schedule_id = std::string(v);
    else if (f == "owner") t.owner = std::string(v);
    else if (f == "lease") t.lease_until = DecodeTime(v);
    else if (f == "cancel") t.cancel_requested = v == "1";
    else if (f == "version") t.version = IntOf(v);
  }
  if (t.id.empty()) return absl::InternalError("redis task store: a task hash without an id");
  return t;
}

absl::StatusOr<std::vector<TaskRecord>> DecodeTasks(const redisReply* r, size_t from = 0) {
  if (!IsArray(r)) return absl::InternalError("redis task store: expected an array of tasks");
  std::vector<TaskRecord> tasks;
  tasks.reserve(r->elements);
  for (size_t i = from; i < r->elements; ++i) {
    // A missing task is an empty hash.
    if (IsArray(r->element[i]) && r->element[i]->elements == 0) continue;
    EVENTBUS_ASSIGN_OR_RETURN(TaskRecord t, DecodeTask(r->element[i]));
    tasks.push_back(std::move(t));
  }
  return tasks;
}

void AppendScheduleFields(const Schedule& s, std::vector<std::string>& args) {
  AddPair(args, "request", s.request);
  AddPair(args, "type", s.type);
  AddPair(args, "cron", s.cron);
  AddPair(args, "tz", s.time_zone);
  AddPair(args, "interval", absl::StrCat(absl::ToInt64Microseconds(s.interval)));
  AddPair(args, "missed", s.missed_policy);
  AddPair(args, "next", EncodeTime(s.next_run_at));
  AddPair(args, "last", EncodeTime(s.last_run_at));
  AddPair(args, "last_task", s.last_task_id);
  AddPair(args, "paused", s.paused ? "1" : "0");
  AddPair(args, "owner", s.owner);
  AddPair(args, "lease", EncodeTime(s.lease_until));
}

absl::StatusOr<Schedule> DecodeSchedule(const redisReply* r) {
  if (!IsArray(r) || r->elements % 2 != 0) {
    return absl::InternalError("redis task store: a schedule hash reply is not field/value pairs");
  }
  Schedule s;
  s.missed_policy.clear();
  for (size_t i = 0; i + 1 < r->elements; i += 2) {
    const absl::string_view f = StringOf(r->element[i]);
    const absl::string_view v = StringOf(r->element[i + 1]);
    if (f == "id") s.id = std::string(v);
    else if (f == "request") s.request = std::string(v);
    else if (f == "type") s.type = std::string(v);
    else if (f == "cron") s.cron = std::string(v);
    else if (f == "tz") s.time_zone = std::string(v);
    else if (f == "interval") s.interval = absl::Microseconds(IntOf(v));
    else if (f == "missed") s.missed_policy = std::string(v);
    else if (f == "next") s.next_run_at = DecodeTime(v);
    else if (f == "last") s.last_run_at = DecodeTime(v);
    else if (f == "last_task") s.last_task_id = std::string(v);
    else if (f == "created") s.created_at = DecodeTime(v);
    else if (f == "paused") s.paused = v == "1";
    else if (f == "owner") s.owner = std::string(v);
    else if (f == "lease") s.lease_until = DecodeTime(v);
    else if (f == "version") s.version = IntOf(v);
  }
  if (s.id.empty()) return absl::InternalError("redis task store: a schedule hash without an id");
  return s;
}

absl::StatusOr<std::vector<Schedule>> DecodeSchedules(const redisReply* r) {
  if (!IsArray(r)) return absl::InternalError("redis task store: expected an array of schedules");
  std::vector<Schedule> out;
  for (size_t i = 0; i < r->elements; ++i) {
    if (IsArray(r->element[i]) && r->element[i]->elements == 0) continue;
    EVENTBUS_ASSIGN_OR_RETURN(Schedule s, DecodeSchedule(r->element[i]));
    out.push_back(std::move(s));
  }
  return out;
}

void AppendInstanceFields(const InstanceRecord& r, std::vector<std::string>& args) {
  AddPair(args, "group", r.group);
  AddPair(args, "request_stream", r.request_stream);
  AddPair(args, "backend", r.backend);
  AddPair(args, "host", r.host);
  AddPair(args, "version", r.version);
  AddPair(args, "ready", r.ready ? "1" : "0");
  AddPair(args, "in_flight", absl::StrCat(r.in_flight));
  AddPair(args, "running", absl::StrCat(r.running));
  AddPair(args, "stuck_workers", absl::StrCat(r.stuck_workers));
  AddPair(args, "concurrency", absl::StrCat(r.concurrency));
  AddPair(args, "started", EncodeTime(r.started_at));
  AddPair(args, "interval", absl::StrCat(absl::ToInt64Microseconds(r.heartbeat_interval)));
}

absl::StatusOr<InstanceRecord> DecodeInstance(const redisReply* r) {
  if (!IsArray(r) || r->elements % 2 != 0) {
    return absl::InternalError("redis task store: an instance hash reply is not field/value pairs");
  }
  InstanceRecord out;
  for (size_t i = 0; i + 1 < r->elements; i += 2) {
    const absl::string_view f = StringOf(r->element[i]);
    const absl::string_view v = StringOf(r->element[i + 1]);
    if (f == "name") out.name = std::string(v);
    else if (f == "group") out.group = std::string(v);
    else if (f == "request_stream") out.request_stream = std::string(v);
    else if (f == "backend") out.backend = std::string(v);
    else if (f == "host") out.host = std::string(v);
    else if (f == "version") out.version = std::string(v);
    else if (f == "ready") out.ready = v == "1";
    else if (f == "in_flight") out.in_flight = static_cast<int>(IntOf(v));
    else if (f == "running") out.running = static_cast<int>(IntOf(v));
    else if (f == "stuck_workers") out.stuck_workers = static_cast<int>(IntOf(v));
    else if (f == "concurrency") out.concurrency = static_cast<int>(IntOf(v));
    else if (f == "started") out.started_at = DecodeTime(v);
    else if (f == "interval") out.heartbeat_interval = absl::Microseconds(IntOf(v));
    else if (f == "last_seen") out.last_seen = DecodeTime(v);
    else if (f == "expires") out.expires_at = DecodeTime(v);
  }
  if (out.name.empty()) return absl::InternalError("redis task store: an instance hash without a name");
  return out;
}

// {code, ...} replies of the scripts.
int64_t CodeOf(const redisReply* r) {
  if (!IsArray(r) || r->elements == 0 || r->element[0]->type != REDIS_REPLY_INTEGER) return -99;
  return r->element[0]->integer;
}

// hiredis 0.14 writes with write(2): a write to a connection the server closed raises SIGPIPE,
// whose default action kills the process. Left at its default, it is ignored (as the Redis
// event stream does), so a server crash is an I/O error; an application's handler is kept.
void IgnoreSigpipeIfDefault() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction current = {};
    if (::sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) {
      ::signal(SIGPIPE, SIG_IGN);
    }
  });
}

// --- The store --------------------------------------------------------------------------------

class RedisTaskStore final : public TaskStore {
 public:
  explicit RedisTaskStore(RedisTaskStoreOptions options)
      : options_(std::move(options)),
        pool_(redis::RedisConnection::Settings{options_.endpoint, options_.connect_timeout,
                                               options_.command_timeout},
              options_.pool_size) {}

  absl::Status Connect() {
    RedisConnectionPool::Lease c = pool_.Borrow();
    return c->EnsureConnected();
  }

  absl::string_view kind() const override { return "redis"; }

  absl::Status Migrate() override {
    const std::string key = absl::StrCat(options_.key_prefix, "schema");
    EVENTBUS_ASSIGN_OR_RETURN(ReplyPtr set, Command({"SET", key, std::string(kSchemaVersion), "NX"}));
    EVENTBUS_ASSIGN_OR_RETURN(ReplyPtr got, Command({"GET", key}));
    if (StringOf(got.get()) != kSchemaVersion) {
      return absl::FailedPreconditionError(absl::StrCat(
          "redis task store at ", pool_.settings().endpoint.Describe(), ": schema version '",
          StringOf(got.get()), "' under prefix '", options_.key_prefix, "' is not ",
          kSchemaVersion, " (written by another version of eventbus)"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<CreateResult> Create(const TaskRecord& record, absl::Time now) override {
    EVENTBUS_RETURN_IF_ERROR(internal::ValidateNewTask(record));
    std::vector<std::string> args = {options_.key_prefix, record.id, EncodeTime(now),
                                     record.unique_key, IndexMember(now, record.id)};
    AppendRecordFields(record, args);
    EVENTBUS_ASSIGN_OR_RETURN(ReplyPtr reply, Eval(scripts::kCreate, args));
    const int64_t code = CodeOf(reply.get());
    if (code < 0 || code > 2 || reply->elements != 2) {
      return absl::InternalError("redis task store: unexpected reply of the create script");
    }
    CreateResult result;
    result.kind = code == 0   ? CreateResult::Kind::kCreated
                  : code == 1 ? CreateResult::Kind::kIdTaken
                              : CreateResult::Kind::kUniqueKeyTaken;
    EVENTBUS_ASSIGN_OR_RETURN(result.record, DecodeTask(reply->element[1]));
    return result;
  }

  absl::StatusOr<TaskRecord> Get(absl::string_view id) override {
    EVENTBUS_ASSIGN_OR_RETURN(ReplyPtr reply, Command({"HGETALL", TaskKey(id)}));
    if (IsArray(reply.get()) && reply->elements == 0) {
      return absl::NotFoundError(absl::StrCat("task ", id, ": not found"));
    }
    return DecodeTask(reply.get());
  }

  absl::StatusOr<std::vector<TaskRecord>> GetMany(absl::Span<const std::string> ids) override {
    if (ids.empty()) return std::vector<TaskRecord>{};
    std::vector<std::string> args = {options_.key_prefix};
    args.insert(args.end(), ids.begin(), ids.end());
    std::sort(args.begin() + 1, args.end());
    args.erase(std::unique(args.begin() + 1, args.end()), args.end());
    EVENTBUS_ASSIGN_OR_RETURN(ReplyPtr reply, Eval(scripts::kGetMany, args));
    return DecodeTasks(reply.get());
  }

  absl::StatusOr<TaskRecord> Update(absl::string_view id, const TaskUpdate& update) override {
    TaskUpdateRequest request{std::string(id), update};
    std::vector<absl::StatusOr<TaskRecord>> results = UpdateMany({&request, 1});
    return std::move(results.front());
  }

  std::vector<absl::StatusOr<TaskRecord>> UpdateMany(
      absl::Span<const TaskUpdateRequest> updates) override {
    std::vector<absl::StatusOr<TaskRecord>> results;
    if (updates.empty()) return results;
    std::vector<std::string> args = {options_.key_prefix, absl::StrCat(updates.size())};
    for (const TaskUpdateRequest& r : updates) {
      const TaskUpdate& u = r.update;
      args.push_back(r.id);
      args.push_back(absl::StrJoin(u.from, ",", [](std::string* out, TaskState s) {
        absl::StrAppend(out, TaskStateName(s));
      }));
      args.push_back(absl::StrCat(u.expected_version));
      args.push_back(EncodeTime(u.now));
      args.push_back(u.increment_attempts ? "1" : "0");
      args.push_back(u.append_history ? "1" : "0");
      args.push_back(u.append_history.value_or(""));
      std::vector<std::string> pairs = UpdatePairs(u);
      args.push_back(absl::StrCat(pairs.size() / 2));
      std::move(pairs.begin(), pairs.end(), std::back_inserter(args));
    }
    absl::StatusOr<ReplyPtr> reply = Eval(scripts::kUpdateMany, args);
    if (reply.ok() && (!IsArray(reply->get()) || (*reply)->elements != updates.size())) {
      reply = absl::InternalError("redis task store: unexpected reply of the update script");
    }
    if (!reply.ok()) {
      results.assign(updates.size(), reply.status());
      return results;
    }
    for (size_t i = 0; i < updates.size(); ++i) {
      const redisReply* one = (*reply)->element[i];
      const int64_t code = CodeOf(one);
      if (code == 0 && one->elements == 2) {
        results.push_back(DecodeTask(one->element[1]));
      } else if (code == -1) {
        results.push_back(absl::NotFoundError(absl::StrCat("task ", updates[i].id, ": not found")));
      } else if (code == -2 && one->elements == 3) {
        TaskRecord stored;
        stored.state = ParseTaskState(StringOf(one->element[1])).value_or(TaskState::kQueued);
        stored.version = IntOf(StringOf(one->element[2]));
        results.push_back(absl::FailedPreconditionError(
            internal::ConditionFailedMessage(updates[i].id, stored, updates[i].update)));
      } else {
        results.push_back(absl::InternalError("redis task store: unexpected update result"));
      }
    }
    return results;
  }

  absl::StatusOr<std::vector<TaskRecord>> ClaimDue(absl::Time now, absl::Duration lease, int limit,
                                                   absl::string_view owner) override {
    EVENTBUS_RETURN_IF_ERROR(internal::ValidatePositiveLimit(limit, "claim"));
    EVENTBUS_ASSIGN_OR_RETURN(
        ReplyPtr reply, Eval(scripts::kClaimDue, {options_.key_prefix, EncodeTime(now),
                                                  EncodeTime(now + lease), absl::StrCat(limit),
                                                  std::string(owner)}));
    return DecodeTasks(reply.get());
  }

  absl::StatusOr<std::vector<TaskRecord>> FindStuck(absl::Time now, int limit) override {
    EVENTBUS_RETURN_IF_ERROR(internal::ValidatePositiveLimit(limit, "stuck"));
    EVENTBUS_ASSIGN_OR_RETURN(ReplyPtr reply,
                              Eval(scripts::kFindStuck,
                                   {options_.key_prefix, EncodeTime(now), absl::StrCat(limit)}));
    return DecodeTasks(reply.get());
  }

  absl::StatusOr<ListPage> List(const ListQuery& query) override {
    EVENTBUS_RETURN_IF_ERROR(internal::ValidateListLimit(query.limit));
    if (!query.cursor.empty() && !IsIndexMember(query.cursor)) {
      return absl::InvalidArgumentError(
          absl::StrCat("list cursor: malformed '", query.cursor, "'"));
    }
    // The narrowest index that answers the query; the script filters the rest.
    std::string index = "all";
    std::string state_filter;
    std::string type_filter;
    const std::string state = query.state ? std::string(TaskStateName(*query.state)) : "";
    if (!query.schedule_id.empty()) {
      index = absl::StrCat("sched:", query.schedule_id);
      state_filter = state;
      type_filter = query.type;
    } else if (query.state && !query.type.empty()) {
      index = absl::StrCat("ts:", state, ":", query.type);
    } else if (query.state) {
      index = absl::StrCat("state:", state);
    } else if (!query.type.empty()) {
      index = absl::StrCat("type:", query.type);
    }
    EVENTBUS_ASSIGN_OR_RETURN(
        ReplyPtr reply, Eval(scripts::kList, {options_.key_prefix, index, query.cursor,
                                              absl::StrCat(query.limit), state_filter,
                                              type_filter}));
    if (!IsArray(reply.get()) || reply->elements < 1) {
      return absl::InternalError("redis task store: unexpected reply of the list script");
    }
    ListPage page;
    page.next_cursor = std::string(StringOf(reply->element[0]));
    EVENTBUS_ASSIGN_OR_RETURN(page.tasks, DecodeTasks(reply.get(), 1));
    return page;
  }

  absl::StatusOr<std::vector<TypeStats>> Stats() override {
    EVENTBUS_ASSIGN_OR_RETURN(ReplyPtr reply, Eval(scripts::kStats, {options_.key_prefix}));
    if (!IsArray(reply.get())) {
      return absl::InternalError("redis task store: unexpected reply of the stats script");
    }
    std::vector<TypeStats> out;
    for (size_t i = 0; i < reply->elements; ++i) {
      const redisReply* one = reply->element[i];
      if (!IsArray(one) || one->elements != 3 || !IsArray(one->element[1]) ||
          one->element[1]->elements != kTaskStateCount) {
        return absl::InternalError("redis task store: unexpected stats entry");
      }
      TypeStats stats;
      stats.type = std::string(StringOf(one->element[0]));
      for (int s = 0; s < kTaskStateCount; ++s) {
        stats.counts[s] = one->element[1]->element[s]->integer;
      }
      const absl::string_view oldest = StringOf(one->element[2]);
      if (!oldest.empty()) stats.oldest_queued_created_at = CreatedOfMember(oldest);
      out.push_back(std::move(stats));
    }
    std::sort(out.begin(), out.end(),
              [](const TypeStats& a, const TypeStats& b) { return a.type < b.type; });
    return out;
  }

  absl::StatusOr<int> PurgeExpired(absl::Time now, int limit) override {
    EVENTBUS_RETURN_IF_ERROR(internal::ValidatePositiveLimit(limit, "purge"));
    EVENTBUS_ASSIGN_OR_RETURN(
        ReplyPtr reply,
        Eval(scripts::kPurge, {options_.key_prefix, EncodeTime(now), absl::StrCat(limit)}));
    if (reply->type != REDIS_REPLY_INTEGER) {
      return absl::InternalError("redis task store: unexpected reply of the purge script");
    }
    return static_cast<int>(reply->integer);
  }

  absl::StatusOr<Schedule> CreateSchedule(const Schedule& schedule, absl::Time now) override {
    EVENTBUS_RETURN_IF_ERROR(internal::ValidateNewSchedule(schedule));
    std::vector<std::string> args = {options_.key_prefix, schedule.id, EncodeTime(now)};
    AppendScheduleFields(schedule, args);
    EVENTBUS_ASSIGN_OR_RETURN(ReplyPtr reply, Eval(scripts::kCreateSchedule, args));
    const int64_t code = CodeOf(reply.get());
    if (code == 1) {
      return absl::AlreadyExistsError(absl::StrCat("schedule ", schedule.id, ": already exists"));
    }
    if (code != 0 || reply->elements != 2) {
      return absl::InternalError("redis task store: unexpected reply of the schedule script");
    }
    return DecodeSchedule(reply->element[1]);
  }

  absl::StatusOr<Schedule> GetSchedule(absl::string_view id) override {
    EVENTBUS_ASSIGN_OR_RETURN(ReplyPtr reply,
                              Command({"HGETALL", absl::StrCat(options_.key_prefix, "schedule:", id)}));
    if (IsArray(reply.get()) && reply->elements == 0) {
      return absl::NotFoundError(absl::StrCat("schedule ", id, ": not found"));
    }
    return DecodeSchedule(reply.get());
  }

  absl::StatusOr<std::vector<Schedule>> ListSchedules() override {
    EVENTBUS_ASSIGN_OR_RETURN(ReplyPtr reply, Eval(scripts::kListSchedules, {options_.key_prefix}));
    EVENTBUS_ASSIGN_OR_RETURN(std::vector<Schedule> out, DecodeSchedules(reply.get()));
    std::sort(out.begin(), out.end(),
              [](const Schedule& a, const Schedule& b) { return a.id < b.id; });
    return out;
  }

  absl::Status DeleteSchedule(absl::string_view id) override {
    EVENTBUS_ASSIGN_OR_RETURN(ReplyPtr reply,
                              Eval(scripts::kDeleteSchedule, {options_.key_prefix, std::string(id)}));
    if (reply->type != REDIS_REPLY_INTEGER) {
      return absl::InternalError("redis task store: unexpected reply of the delete script");
    }
    if (reply->integer == 0) return absl::NotFoundError(absl::StrCat("schedule ", id, ": not found"));
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<Schedule>> ClaimDueSchedules(absl::Time now, absl::Duration lease,
                                                          int limit,
                                                          absl::string_view owner) override {
    EVENTBUS_RETURN_IF_ERROR(internal::ValidatePositiveLimit(limit, "schedule claim"));
    EVENTBUS_ASSIGN_OR_RETURN(
        ReplyPtr reply,
        Eval(scripts::kClaimDueSchedules, {options_.key_prefix, EncodeTime(now),
                                           EncodeTime(now + lease), absl::StrCat(limit),
                                           std::string(owner)}));
    return DecodeSchedules(reply.get());
  }

  absl::StatusOr<Schedule> AdvanceSchedule(absl::string_view id, int64_t expected_version,
                                           absl::Time next_run_at, absl::Time last_run_at,
                                           absl::string_view last_task_id,
                                           absl::Time now) override {
    EVENTBUS_ASSIGN_OR_RETURN(
        ReplyPtr reply,
        Eval(scripts::kAdvanceSchedule,
             {options_.key_prefix, std::string(id), absl::StrCat(expected_version),
              EncodeTime(next_run_at), EncodeTime(last_run_at), std::string(last_task_id),
              EncodeTime(absl::InfinitePast())}));
    const int64_t code = CodeOf(reply.get());
    if (code == -1) return absl::NotFoundError(absl::StrCat("schedule ", id, ": not found"));
    if (code == -2 && reply->elements == 2) {
      return absl::FailedPreconditionError(absl::StrCat("schedule ", id, ": version ",
                                                        StringOf(reply->element[1]), ", wanted ",
                                                        expected_version));
    }
    if (code != 0 || reply->elements != 2) {
      return absl::InternalError("redis task store: unexpected reply of the advance script");
    }
    return DecodeSchedule(reply->element[1]);
  }

  absl::Status PutInstance(const InstanceRecord& record, absl::Time now,
                           absl::Duration ttl) override {
    EVENTBUS_RETURN_IF_ERROR(internal::ValidateInstance(record, ttl));
    std::vector<std::string> args = {options_.key_prefix, record.name, EncodeTime(now),
                                     EncodeTime(now + ttl)};
    AppendInstanceFields(record, args);
    return Eval(scripts::kPutInstance, args).status();
  }

  absl::StatusOr<std::vector<InstanceRecord>> ListInstances(absl::Time now) override {
    EVENTBUS_ASSIGN_OR_RETURN(ReplyPtr reply,
                              Eval(scripts::kListInstances, {options_.key_prefix, EncodeTime(now)}));
    if (!IsArray(reply.get())) {
      return absl::InternalError("redis task store: unexpected reply of the instances script");
    }
    std::vector<InstanceRecord> out;
    for (size_t i = 0; i < reply->elements; ++i) {
      if (IsArray(reply->element[i]) && reply->element[i]->elements == 0) continue;
      EVENTBUS_ASSIGN_OR_RETURN(InstanceRecord record, DecodeInstance(reply->element[i]));
      out.push_back(std::move(record));
    }
    std::sort(out.begin(), out.end(),
              [](const InstanceRecord& a, const InstanceRecord& b) { return a.name < b.name; });
    return out;
  }

  absl::Status DeleteInstance(absl::string_view name) override {
    return Eval(scripts::kDeleteInstance, {options_.key_prefix, std::string(name)}).status();
  }

 private:
  std::string TaskKey(absl::string_view id) const {
    return absl::StrCat(options_.key_prefix, "task:", id);
  }

  absl::StatusOr<ReplyPtr> Command(const std::vector<std::string>& args) {
    RedisConnectionPool::Lease c = pool_.Borrow();
    return c->Command(args);
  }
  absl::StatusOr<ReplyPtr> Eval(const redis::LuaScript& script,
                                const std::vector<std::string>& args) {
    RedisConnectionPool::Lease c = pool_.Borrow();
    return c->Eval(script, {}, args);
  }

  const RedisTaskStoreOptions options_;
  RedisConnectionPool pool_;
};

// Takes "prefix=..." out of the URL's query (the rest is REDIS_URL syntax).
absl::Status SplitPrefix(absl::string_view url, std::string& redis_url, std::string& prefix) {
  const size_t q = url.find('?');
  redis_url = std::string(url.substr(0, q));
  if (q == absl::string_view::npos) return absl::OkStatus();
  std::vector<std::string> kept;
  for (absl::string_view pair : absl::StrSplit(url.substr(q + 1), '&', absl::SkipEmpty())) {
    if (absl::ConsumePrefix(&pair, "prefix=")) {
      if (pair.empty()) {
        return absl::InvalidArgumentError("EXECUTOR_STORE_URL: prefix= must not be empty");
      }
      prefix = std::string(pair);
    } else {
      kept.emplace_back(pair);
    }
  }
  if (!kept.empty()) absl::StrAppend(&redis_url, "?", absl::StrJoin(kept, "&"));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<TaskStore>> NewRedisTaskStore(RedisTaskStoreOptions options) {
  IgnoreSigpipeIfDefault();
  if (options.pool_size < 1 || options.connect_timeout <= absl::ZeroDuration() ||
      options.command_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "redis task store options: pool_size and the timeouts must be positive");
  }
  if (options.key_prefix.empty()) {
    return absl::InvalidArgumentError("redis task store options: key_prefix must not be empty");
  }
  auto store = std::make_unique<RedisTaskStore>(std::move(options));
  EVENTBUS_RETURN_IF_ERROR(store->Connect());
  return std::unique_ptr<TaskStore>(std::move(store));
}

absl::StatusOr<std::unique_ptr<TaskStore>> OpenRedisTaskStore(absl::string_view url) {
  RedisTaskStoreOptions options;
  std::string redis_url;
  EVENTBUS_RETURN_IF_ERROR(SplitPrefix(url.empty() ? redis::kDefaultRedisUrl : url, redis_url,
                                       options.key_prefix));
  absl::StatusOr<redis::RedisEndpoint> endpoint = redis::ParseRedisUrl(redis_url);
  if (!endpoint.ok()) {
    // ParseRedisUrl names REDIS_URL; here the setting is EXECUTOR_STORE_URL.
    return absl::InvalidArgumentError(
        absl::StrCat("EXECUTOR_STORE_URL (redis store): ", endpoint.status().message()));
  }
  options.endpoint = *std::move(endpoint);
  return NewRedisTaskStore(std::move(options));
}

}  // namespace eventbus::taskstore
