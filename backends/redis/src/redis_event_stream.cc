#include "eventbus/redis/redis_event_stream.h"

#include <signal.h>

#include <atomic>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "connection.h"
#include "eventbus/clock.h"
#include "eventbus/status_macros.h"
#include "lua_scripts.h"
#include "wire.h"

namespace eventbus::redis {
namespace {

constexpr absl::string_view kBackendName = "redis";

std::string Millis(absl::Time t) { return absl::StrCat(absl::ToUnixMillis(t)); }
std::string Millis(absl::Duration d) { return absl::StrCat(absl::ToInt64Milliseconds(d)); }

// The server's clock at the time the entry was appended ("<ms>-<seq>").
absl::Time EntryIdTime(absl::string_view id) {
  int64_t ms = 0;
  if (!absl::SimpleAtoi(id.substr(0, id.find('-')), &ms)) return absl::InfinitePast();
  return absl::FromUnixMillis(ms);
}

// One stream entry as read from the server, before decoding.
struct RawEntry {
  std::string id;
  bool deleted = false;  // still pending but trimmed from the stream
  wire::Fields fields;
  int delivery_count = 1;
};

absl::Status ParseFieldArray(const redisReply* array, wire::Fields& fields) {
  if (!IsArray(array) || array->elements % 2 != 0) {
    return absl::InternalError("redis returned an entry whose fields are not name/value pairs");
  }
  fields.reserve(array->elements / 2);
  for (size_t i = 0; i + 1 < array->elements; i += 2) {
    fields.emplace_back(std::string(StringOf(array->element[i])),
                        std::string(StringOf(array->element[i + 1])));
  }
  return absl::OkStatus();
}

// [id, [field, value, ...] | nil] as in XREADGROUP / XCLAIM replies.
absl::StatusOr<RawEntry> ParseEntry(const redisReply* entry) {
  if (!IsArray(entry) || entry->elements < 2 || !IsString(entry->element[0])) {
    return absl::InternalError("redis returned a malformed stream entry reply");
  }
  RawEntry raw;
  raw.id = std::string(StringOf(entry->element[0]));
  if (IsNil(entry->element[1])) {
    raw.deleted = true;
    return raw;
  }
  EVENTBUS_RETURN_IF_ERROR(ParseFieldArray(entry->element[1], raw.fields));
  return raw;
}

// {id, {fields}, count} triples returned by the promote and reclaim scripts.
absl::StatusOr<std::vector<RawEntry>> ParseScriptEntries(const redisReply* reply) {
  std::vector<RawEntry> out;
  if (!IsArray(reply)) return absl::InternalError("redis script returned no array");
  for (size_t i = 0; i < reply->elements; ++i) {
    const redisReply* triple = reply->element[i];
    if (!IsArray(triple) || triple->elements != 3 || triple->element[2]->type != REDIS_REPLY_INTEGER) {
      return absl::InternalError("redis script returned a malformed entry");
    }
    EVENTBUS_ASSIGN_OR_RETURN(RawEntry raw, ParseEntry(triple));
    raw.delivery_count = static_cast<int>(triple->element[2]->integer);
    out.push_back(std::move(raw));
  }
  return out;
}

// Maps the ownership-check result of the Lua scripts (see lua_scripts.h).
absl::Status HeldCheckToStatus(const redisReply* reply, absl::string_view op,
                               const Delivery& delivery) {
  if (reply == nullptr || reply->type != REDIS_REPLY_INTEGER) return absl::OkStatus();
  if (reply->integer == 0) {
    return absl::NotFoundError(absl::StrCat(op, ": entry ", delivery.id, " of stream ",
                                            delivery.stream,
                                            " is no longer pending (already acknowledged?)"));
  }
  if (reply->integer == -1) {
    return absl::FailedPreconditionError(absl::StrCat(
        op, ": entry ", delivery.id, " of stream ", delivery.stream,
        " has been redelivered or taken over by another consumer since this delivery"));
  }
  return absl::OkStatus();
}

RedisConnection::Settings ConnectionSettings(const RedisOptions& options) {
  return RedisConnection::Settings{options.endpoint, options.connect_timeout,
                                   options.command_timeout, options.reconnect_backoff_initial,
                                   options.reconnect_backoff_max};
}

class RedisEventStream;

class RedisSubscription final : public Subscription {
 public:
  RedisSubscription(const RedisOptions& options, Clock* clock, SubscribeOptions sub)
      : options_(options),
        clock_(clock),
        sub_(std::move(sub)),
        dead_letter_stream_(DeadLetterStreamName(sub_)),
        delayed_key_(absl::StrCat(sub_.stream, ":delayed:", sub_.group)),
        read_conn_(ConnectionSettings(options)),
        cmd_conn_(ConnectionSettings(options)) {}

  ~RedisSubscription() override { Close().IgnoreError(); }

  // Creates the group (and stream) once, so Subscribe reports an unreachable server.
  absl::Status Start() {
    absl::MutexLock lock(&fetch_mu_);
    EVENTBUS_RETURN_IF_ERROR(read_conn_.EnsureConnected());
    return EnsureGroupLocked();
  }

  absl::StatusOr<std::vector<Delivery>> Fetch(int max_events, absl::Duration wait) override {
    if (max_events <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("Fetch: max_events must be positive, got ", max_events));
    }
    absl::MutexLock lock(&fetch_mu_);
    const absl::Time deadline = absl::Now() + std::max(wait, absl::ZeroDuration());
    absl::Status last_error;
    while (true) {
      if (closed_.load()) return ClosedError("Fetch");
      const absl::Duration remaining = std::max(deadline - absl::Now(), absl::ZeroDuration());
      std::vector<Delivery> out;
      absl::Status status = FetchOnceLocked(max_events, std::min(remaining, options_.fetch_slice), out);
      if (!out.empty()) return out;
      if (status.ok()) {
        last_error = absl::OkStatus();
      } else {
        last_error = status;
        // Wait for the reconnect backoff (or a little) instead of spinning on a down server.
        const absl::Time retry_at =
            std::max(read_conn_.next_attempt(), absl::Now() + absl::Milliseconds(20));
        const absl::Time until = std::min(retry_at, deadline);
        if (until > absl::Now()) absl::SleepFor(std::min(until - absl::Now(), options_.fetch_slice));
      }
      if (absl::Now() >= deadline) {
        if (!last_error.ok()) return last_error;
        return out;
      }
    }
  }

  absl::Status Ack(const Delivery& delivery) override {
    return RunHeldScript(scripts::kAck, "Ack", delivery, {});
  }

  absl::Status Nack(const Delivery& delivery, absl::Duration delay) override {
    const absl::Time due = clock_->Now() + std::max(delay, absl::ZeroDuration());
    return RunHeldScript(scripts::kNack, "Nack", delivery,
                         {Millis(due), std::string(scripts::kParkingConsumer)});
  }

  absl::Status Extend(const Delivery& delivery) override {
    if (closed_.load()) return ClosedError("Extend");
    EVENTBUS_RETURN_IF_ERROR(CheckStream(delivery, "Extend"));
    absl::MutexLock lock(&cmd_mu_);
    EVENTBUS_ASSIGN_OR_RETURN(ReplyPtr reply, cmd_conn_.Eval(scripts::kExtend, {sub_.stream, delayed_key_},
                                                             HeldArgs(delivery)));
    return HeldCheckToStatus(reply.get(), "Extend", delivery);
  }

  absl::StatusOr<std::vector<Delivery>> Reclaim(absl::Duration min_idle, int max_events) override {
    if (max_events <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("Reclaim: max_events must be positive, got ", max_events));
    }
    absl::MutexLock lock(&fetch_mu_);
    if (closed_.load()) return ClosedError("Reclaim");
    EVENTBUS_RETURN_IF_ERROR(GroupLostToUnavailable(PrepareReadConnectionLocked()));
    absl::StatusOr<ReplyPtr> reclaimed =
        read_conn_.Eval(scripts::kReclaim, {sub_.stream, delayed_key_},
                        {sub_.group, sub_.consumer, Millis(std::max(min_idle, absl::ZeroDuration())),
                         absl::StrCat(max_events), Millis(clock_->Now()),
                         std::string(scripts::kParkingConsumer)});
    if (!reclaimed.ok()) return GroupLostToUnavailable(reclaimed.status());
    EVENTBUS_ASSIGN_OR_RETURN(std::vector<RawEntry> raw, ParseScriptEntries(reclaimed->get()));
    std::vector<Delivery> out;
    ToDeliveriesLocked(std::move(raw), /*first_delivery_now=*/false, out);
    return out;
  }

  absl::Status DeadLetter(const Delivery& delivery, absl::string_view reason) override {
    if (closed_.load()) return ClosedError("DeadLetter");
    EVENTBUS_RETURN_IF_ERROR(CheckStream(delivery, "DeadLetter"));
    const Event dead = MakeDeadLetter(delivery, sub_.group, reason);
    absl::MutexLock lock(&cmd_mu_);
    absl::Status status = DeadLetterWith(cmd_conn_, delivery, dead);
    if (status.ok()) Forget(delivery.id);
    return status;
  }

  absl::Status Close() override {
    if (closed_.exchange(true)) return absl::OkStatus();
    // Waits for a Fetch/Reclaim in progress (at most one fetch slice).
    absl::MutexLock fetch_lock(&fetch_mu_);
    absl::flat_hash_map<std::string, int> held;
    {
      absl::MutexLock lock(&held_mu_);
      held.swap(held_);
    }
    // Give what we hold back to the group at once (a nack without delay), so the group's other
    // consumers see it in their next Fetch rather than after a Reclaim. If the server is
    // unreachable the entries stay in this consumer's pending list, where Reclaim finds them.
    absl::MutexLock lock(&cmd_mu_);
    const std::string now = Millis(clock_->Now());
    for (const auto& [id, count] : held) {
      cmd_conn_
          .Eval(scripts::kNack, {sub_.stream, delayed_key_},
                {sub_.group, sub_.consumer, id, absl::StrCat(count), now,
                 std::string(scripts::kParkingConsumer)})
          .IgnoreError();
    }
    cmd_conn_.Disconnect();
    read_conn_.Disconnect();
    return absl::OkStatus();
  }

 private:
  absl::Status ClosedError(absl::string_view op) const {
    return absl::FailedPreconditionError(absl::StrCat(op, ": subscription of consumer ", sub_.consumer,
                                                      " to ", sub_.stream, " is closed"));
  }

  absl::Status CheckStream(const Delivery& delivery, absl::string_view op) const {
    if (delivery.stream != sub_.stream) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": delivery of stream ", delivery.stream,
                                                     " passed to a subscription of ", sub_.stream));
    }
    return absl::OkStatus();
  }

  std::vector<std::string> HeldArgs(const Delivery& delivery) const {
    return {sub_.group, sub_.consumer, delivery.id, absl::StrCat(delivery.delivery_count)};
  }

  absl::Status RunHeldScript(const LuaScript& script, absl::string_view op, const Delivery& delivery,
                             const std::vector<std::string>& extra) {
    if (closed_.load()) return ClosedError(op);
    EVENTBUS_RETURN_IF_ERROR(CheckStream(delivery, op));
    std::vector<std::string> args = HeldArgs(delivery);
    args.insert(args.end(), extra.begin(), extra.end());
    absl::StatusOr<ReplyPtr> reply;
    {
      absl::MutexLock lock(&cmd_mu_);
      reply = cmd_conn_.Eval(script, {sub_.stream, delayed_key_}, args);
    }
    if (!reply.ok()) return reply.status();
    absl::Status status = HeldCheckToStatus(reply->get(), op, delivery);
    // Whatever the outcome, except a transient failure, this consumer no longer holds it.
    Forget(delivery.id);
    return status;
  }

  void Forget(const std::string& id) {
    absl::MutexLock lock(&held_mu_);
    held_.erase(id);
  }

  // Writes `dead` to the dead-letter stream and acks the original, atomically.
  absl::Status DeadLetterWith(RedisConnection& conn, const Delivery& delivery, const Event& dead) {
    std::vector<std::string> args = HeldArgs(delivery);
    args.push_back(absl::StrCat(options_.max_stream_length));
    wire::AppendFields(dead, args);
    EVENTBUS_ASSIGN_OR_RETURN(
        ReplyPtr reply,
        conn.Eval(scripts::kDeadLetter, {sub_.stream, delayed_key_, dead_letter_stream_}, args));
    return HeldCheckToStatus(reply.get(), "DeadLetter", delivery);
  }

  absl::Status EnsureGroupLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(fetch_mu_) {
    absl::StatusOr<ReplyPtr> created =
        read_conn_.Command({"XGROUP", "CREATE", sub_.stream, sub_.group,
                            sub_.start_from_oldest ? "0" : "$", "MKSTREAM"});
    if (!created.ok() && !absl::StrContains(created.status().message(), "BUSYGROUP")) {
      return created.status();
    }
    group_generation_ = read_conn_.generation();
    return absl::OkStatus();
  }

  // After every (re)connect: make sure the group exists (the server may have lost it) and look
  // for entries this consumer was given but never saw (a reply lost with the connection).
  absl::Status PrepareReadConnectionLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(fetch_mu_) {
    EVENTBUS_RETURN_IF_ERROR(read_conn_.EnsureConnected());
    if (group_generation_ != read_conn_.generation()) {
      EVENTBUS_RETURN_IF_ERROR(EnsureGroupLocked());
      recover_ = true;
    }
    return absl::OkStatus();
  }

  // Own pending entries that are not held by the caller: lost in transit, or left by an
  // earlier process with the same consumer name. XPENDING does not count a delivery; the
  // XCLAIM that hands them out does.
  absl::Status RecoverLocked(int max_events, std::vector<RawEntry>& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(fetch_mu_) {
    EVENTBUS_ASSIGN_OR_RETURN(
        ReplyPtr pending, read_conn_.Command({"XPENDING", sub_.stream, sub_.group, recover_cursor_,
                                              "+", absl::StrCat(max_events), sub_.consumer}));
    if (!IsArray(pending.get())) return absl::InternalError("XPENDING returned no array");
    std::vector<std::string> claim = {"XCLAIM", sub_.stream, sub_.group, sub_.consumer, "0"};
    absl::flat_hash_map<std::string, int> counts;
    {
      absl::MutexLock lock(&held_mu_);
      for (size_t i = 0; i < pending->elements; ++i) {
        const redisReply* p = pending->element[i];
        if (!IsArray(p) || p->elements < 4) continue;
        std::string id(StringOf(p->element[0]));
        recover_cursor_ = absl::StrCat("(", id);
        if (held_.contains(id)) continue;
        counts[id] = static_cast<int>(p->element[3]->integer) + 1;
        claim.push_back(std::move(id));
      }
    }
    if (pending->elements < static_cast<size_t>(max_events)) {
      recover_ = false;
      recover_cursor_ = "-";
    }
    if (claim.size() == 5) return absl::OkStatus();
    EVENTBUS_ASSIGN_OR_RETURN(ReplyPtr claimed, read_conn_.Command(claim));
    for (size_t i = 0; IsArray(claimed.get()) && i < claimed->elements; ++i) {
      EVENTBUS_ASSIGN_OR_RETURN(RawEntry raw, ParseEntry(claimed->element[i]));
      raw.delivery_count = counts[raw.id];
      out.push_back(std::move(raw));
    }
    return absl::OkStatus();
  }

  absl::Status FetchOnceLocked(int max_events, absl::Duration block, std::vector<Delivery>& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(fetch_mu_) {
    return GroupLostToUnavailable(ReadLocked(max_events, block, out));
  }

  // NOGROUP: the server lost the group (a restart without persistence, FLUSHALL). Transient
  // for the caller: the next call creates it again.
  absl::Status GroupLostToUnavailable(absl::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(fetch_mu_) {
    if (status.ok() || !absl::StrContains(status.message(), "NOGROUP")) return status;
    group_generation_ = 0;
    return absl::UnavailableError(absl::StrCat(
        "consumer group ", sub_.group, " of stream ", sub_.stream,
        " vanished from the server (restart without persistence?); it is being created again: ",
        status.message()));
  }

  absl::Status ReadLocked(int max_events, absl::Duration block, std::vector<Delivery>& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(fetch_mu_) {
    EVENTBUS_RETURN_IF_ERROR(PrepareReadConnectionLocked());
    std::vector<RawEntry> raw;
    if (recover_) {
      EVENTBUS_RETURN_IF_ERROR(RecoverLocked(max_events, raw));
      if (!raw.empty()) {
        ToDeliveriesLocked(std::move(raw), false, out);
        if (!out.empty()) return absl::OkStatus();
        raw.clear();
      }
    }
    EVENTBUS_ASSIGN_OR_RETURN(
        ReplyPtr promoted,
        read_conn_.Eval(scripts::kPromote, {sub_.stream, delayed_key_},
                        {sub_.group, sub_.consumer, Millis(clock_->Now()), absl::StrCat(max_events)}));
    EVENTBUS_ASSIGN_OR_RETURN(raw, ParseScriptEntries(promoted.get()));
    if (!raw.empty()) {
      ToDeliveriesLocked(std::move(raw), false, out);
      if (!out.empty()) return absl::OkStatus();
      raw.clear();
    }
    std::vector<std::string> command = {"XREADGROUP", "GROUP", sub_.group, sub_.consumer, "COUNT",
                                        absl::StrCat(max_events)};
    // BLOCK 0 would block forever: a zero wait is a plain non-blocking read.
    const int64_t block_ms = absl::ToInt64Milliseconds(block);
    if (block_ms > 0) {
      command.push_back("BLOCK");
      command.push_back(absl::StrCat(block_ms));
    }
    command.insert(command.end(), {"STREAMS", sub_.stream, ">"});
    absl::StatusOr<ReplyPtr> reply = read_conn_.Command(command, block + options_.command_timeout);
    if (!reply.ok()) return reply.status();
    if (IsNil(reply->get())) return absl::OkStatus();
    // [[stream, [[id, [field, value, ...]], ...]]]
    const redisReply* streams = reply->get();
    for (size_t s = 0; IsArray(streams) && s < streams->elements; ++s) {
      const redisReply* pair = streams->element[s];
      if (!IsArray(pair) || pair->elements != 2 || !IsArray(pair->element[1])) continue;
      for (size_t e = 0; e < pair->element[1]->elements; ++e) {
        EVENTBUS_ASSIGN_OR_RETURN(RawEntry entry, ParseEntry(pair->element[1]->element[e]));
        raw.push_back(std::move(entry));
      }
    }
    ToDeliveriesLocked(std::move(raw), true, out);
    return absl::OkStatus();
  }

  // Decodes entries into deliveries. Trimmed entries are acknowledged; malformed ones are
  // dead-lettered here (the contract: never returned from Fetch). When that cannot be done
  // now, the entry stays in this consumer's pending list and recovery meets it again.
  void ToDeliveriesLocked(std::vector<RawEntry> raw, bool first_delivery_now,
                          std::vector<Delivery>& out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(fetch_mu_) {
    const absl::Time now = clock_->Now();
    for (RawEntry& entry : raw) {
      Delivery delivery;
      delivery.stream = sub_.stream;
      delivery.id = entry.id;
      delivery.delivery_count = entry.delivery_count;
      delivery.token = static_cast<uint64_t>(entry.delivery_count);
      // Redis keeps only the last delivery time; the first delivery of a redelivered entry
      // happened no earlier than the entry was appended (the time in its id).
      delivery.first_delivery_time =
          first_delivery_now || entry.delivery_count <= 1 ? now : EntryIdTime(entry.id);
      if (entry.deleted) {
        read_conn_.Command({"XACK", sub_.stream, sub_.group, entry.id}).IgnoreError();
        continue;
      }
      absl::StatusOr<Event> event = wire::Decode(entry.fields);
      if (!event.ok()) {
        DeadLetterMalformedLocked(delivery, entry, event.status());
        continue;
      }
      delivery.event = *std::move(event);
      {
        absl::MutexLock lock(&held_mu_);
        held_[delivery.id] = delivery.delivery_count;
      }
      out.push_back(std::move(delivery));
    }
  }

  // The dead letter of an entry that is not a valid event: a well-formed event describing it,
  // with the raw fields (C-escaped "name value" lines) as data.
  void DeadLetterMalformedLocked(const Delivery& delivery, const RawEntry& entry,
                                 const absl::Status& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(fetch_mu_) {
    Delivery replacement = delivery;
    Event& dead = replacement.event;
    dead = MakeEvent("io.eventbus.malformed", absl::StrCat("redis:", sub_.stream),
                     wire::RenderRawEntry(entry.fields));
    dead.set_id(absl::StrCat(sub_.stream, "/", entry.id));
    dead.set_data_content_type("text/plain; charset=utf-8");
    SetEventTime(dead, clock_->Now());
    const std::string reason = absl::StrCat("malformed entry: ", why.message());
    absl::Status status = DeadLetterWith(read_conn_, replacement,
                                         MakeDeadLetter(replacement, sub_.group, reason));
    if (!status.ok() && !absl::IsNotFound(status) && !absl::IsFailedPrecondition(status)) {
      recover_ = true;
    }
  }

  const RedisOptions options_;
  Clock* const clock_;
  const SubscribeOptions sub_;
  const std::string dead_letter_stream_;
  const std::string delayed_key_;
  std::atomic<bool> closed_{false};

  // Fetch and Reclaim (one thread at a time by contract; the mutex also lets Close wait).
  absl::Mutex fetch_mu_;
  RedisConnection read_conn_ ABSL_GUARDED_BY(fetch_mu_);
  uint64_t group_generation_ ABSL_GUARDED_BY(fetch_mu_) = 0;
  bool recover_ ABSL_GUARDED_BY(fetch_mu_) = true;
  std::string recover_cursor_ ABSL_GUARDED_BY(fetch_mu_) = "-";

  // Ack, Nack, Extend, DeadLetter: any thread.
  absl::Mutex cmd_mu_ ABSL_ACQUIRED_AFTER(fetch_mu_);
  RedisConnection cmd_conn_ ABSL_GUARDED_BY(cmd_mu_);

  // Entry id -> delivery count of what Fetch/Reclaim handed out and nobody settled yet.
  absl::Mutex held_mu_ ABSL_ACQUIRED_AFTER(cmd_mu_);
  absl::flat_hash_map<std::string, int> held_ ABSL_GUARDED_BY(held_mu_);
};

class RedisEventStream final : public EventStream {
 public:
  RedisEventStream(RedisOptions options, Clock* clock)
      : options_(std::move(options)),
        clock_(clock),
        admin_conn_(ConnectionSettings(options_)),
        writer_conn_(ConnectionSettings(options_)) {}

  ~RedisEventStream() override {
    {
      absl::MutexLock lock(&queue_mu_);
      stopping_ = true;
    }
    if (writer_.joinable()) writer_.join();
  }

  absl::Status Start() {
    {
      absl::MutexLock lock(&admin_mu_);
      EVENTBUS_RETURN_IF_ERROR(admin_conn_.EnsureConnected());
    }
    writer_ = std::thread([this] { WriterLoop(); });
    return absl::OkStatus();
  }

  absl::string_view backend_name() const override { return kBackendName; }

  Capabilities capabilities() const override {
    Capabilities caps;
    caps.persistent = true;  // with AOF (or RDB) on the server; see docs/wire-format.md
    caps.ordered_per_key = false;
    caps.duplicates_possible = false;
    caps.native_delay = true;
    caps.reclaim_from_other_consumers = true;
    caps.atomic_dead_letter = true;
    caps.max_event_bytes = options_.max_event_bytes;
    return caps;
  }

  absl::Status Flush(absl::Duration timeout) override {
    absl::MutexLock lock(&queue_mu_);
    const uint64_t target = enqueued_;
    auto done = [this, target]() ABSL_SHARED_LOCKS_REQUIRED(queue_mu_) {
      return completed_ >= target;
    };
    if (!queue_mu_.AwaitWithTimeout(absl::Condition(&done), timeout)) {
      return absl::DeadlineExceededError(absl::StrCat(
          "redis at ", options_.endpoint.Describe(), ": ", target - completed_,
          " published events not confirmed within ", absl::FormatDuration(timeout)));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<Subscription>> Subscribe(const SubscribeOptions& options) override {
    EVENTBUS_RETURN_IF_ERROR(ValidateSubscribeOptions(options));
    if (options.consumer == scripts::kParkingConsumer) {
      return absl::InvalidArgumentError("consumer name is reserved by the redis backend");
    }
    auto subscription = std::make_unique<RedisSubscription>(options_, clock_, options);
    EVENTBUS_RETURN_IF_ERROR(subscription->Start());
    return subscription;
  }

  absl::Status Ping(absl::Duration timeout) override {
    absl::MutexLock lock(&admin_mu_);
    return admin_conn_.Command({"PING"}, timeout).status();
  }

  Clock* clock() const override { return clock_; }

 protected:
  absl::Status DoPublish(absl::string_view stream, Event event, PublishCallback done) override {
    PendingPublish item;
    item.stream = std::string(stream);
    item.command = {"XADD", item.stream};
    if (options_.max_stream_length > 0) {
      item.command.insert(item.command.end(), {"MAXLEN", "~", absl::StrCat(options_.max_stream_length)});
    }
    item.command.push_back("*");
    wire::AppendFields(event, item.command);
    item.done = std::move(done);
    item.enqueued_at = absl::Now();
    absl::MutexLock lock(&queue_mu_);
    if (stopping_) return absl::FailedPreconditionError("redis event stream is closed");
    if (queue_.size() >= options_.max_queued_publishes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "redis publish queue is full (", options_.max_queued_publishes,
          " events not yet written; option publish.queue.limit)"));
    }
    queue_.push_back(std::move(item));
    ++enqueued_;
    return absl::OkStatus();
  }

 private:
  struct PendingPublish {
    std::string stream;
    std::vector<std::string> command;
    PublishCallback done;
    absl::Time enqueued_at;
  };

  // Batches are written in order and a batch completes before the next starts, so "completed"
  // is a count (Flush compares it with the count enqueued before the call).
  void WriterLoop() {
    while (true) {
      std::deque<PendingPublish> batch;
      {
        absl::MutexLock lock(&queue_mu_);
        auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(queue_mu_) {
          return stopping_ || !queue_.empty();
        };
        queue_mu_.Await(absl::Condition(&ready));
        if (queue_.empty()) return;  // stopping and drained
        while (!queue_.empty() && batch.size() < static_cast<size_t>(options_.publish_batch_size)) {
          batch.push_back(std::move(queue_.front()));
          queue_.pop_front();
        }
      }
      const size_t count = batch.size();
      WriteBatch(batch);
      absl::MutexLock lock(&queue_mu_);
      completed_ += count;
    }
  }

  void WriteBatch(std::deque<PendingPublish>& batch) {
    while (!batch.empty()) {
      std::vector<std::vector<std::string>> commands;
      commands.reserve(batch.size());
      for (const PendingPublish& item : batch) commands.push_back(item.command);
      RedisConnection::PipelineResult result = writer_conn_.Pipeline(commands);
      std::deque<PendingPublish> retry;
      absl::Status last_error = result.status;
      for (size_t i = 0; i < batch.size(); ++i) {
        PendingPublish& item = batch[i];
        if (i >= result.replies.size()) {
          retry.push_back(std::move(item));
          continue;
        }
        const redisReply* reply = result.replies[i].get();
        if (IsError(reply)) {
          absl::Status status = ReplyErrorToStatus(
              StringOf(reply), absl::StrCat("redis at ", options_.endpoint.Describe(), ": XADD ", item.stream));
          if (absl::IsUnavailable(status)) {
            last_error = status;
            retry.push_back(std::move(item));
          } else {
            item.done(status);
          }
          continue;
        }
        item.done(PublishReceipt{item.stream, std::string(StringOf(reply))});
      }
      batch.swap(retry);
      if (batch.empty()) return;
      // Unconfirmed events are written again (at-least-once: one whose reply was lost with
      // the connection may be stored twice) until publish_retry_timeout.
      const absl::Time now = absl::Now();
      bool stopping;
      {
        absl::MutexLock lock(&queue_mu_);
        stopping = stopping_;
      }
      std::deque<PendingPublish> keep;
      for (PendingPublish& item : batch) {
        if (stopping || now - item.enqueued_at > options_.publish_retry_timeout) {
          item.done(absl::UnavailableError(absl::StrCat(
              stopping ? "redis event stream closed before the event was written: "
                       : "event not written within publish.retry.timeout: ",
              last_error.message())));
        } else {
          keep.push_back(std::move(item));
        }
      }
      batch.swap(keep);
      if (batch.empty()) return;
      const absl::Time retry_at =
          std::max(writer_conn_.next_attempt(), absl::Now() + absl::Milliseconds(20));
      absl::MutexLock lock(&queue_mu_);
      auto stop = [this]() ABSL_SHARED_LOCKS_REQUIRED(queue_mu_) { return stopping_; };
      queue_mu_.AwaitWithDeadline(absl::Condition(&stop), retry_at);
    }
  }

  const RedisOptions options_;
  Clock* const clock_;

  absl::Mutex admin_mu_;
  RedisConnection admin_conn_ ABSL_GUARDED_BY(admin_mu_);

  RedisConnection writer_conn_;  // writer thread only
  absl::Mutex queue_mu_;
  std::deque<PendingPublish> queue_ ABSL_GUARDED_BY(queue_mu_);
  uint64_t enqueued_ ABSL_GUARDED_BY(queue_mu_) = 0;
  uint64_t completed_ ABSL_GUARDED_BY(queue_mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(queue_mu_) = false;
  std::thread writer_;
};

// hiredis 0.14 writes with write(2): a write to a connection the server has closed raises
// SIGPIPE, whose default action kills the process. Left at its default, it is ignored so that
// a server crash is an I/O error (reconnect) rather than the service's death. A handler the
// application installed itself is left alone.
void IgnoreSigpipeIfDefault() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction current = {};
    if (::sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) {
      ::signal(SIGPIPE, SIG_IGN);
    }
  });
}

}  // namespace

absl::StatusOr<std::unique_ptr<EventStream>> NewRedisEventStream(RedisOptions options, Clock* clock) {
  IgnoreSigpipeIfDefault();
  if (options.publish_batch_size < 1 || options.max_queued_publishes < 1 ||
      options.max_stream_length < 0 || options.fetch_slice <= absl::ZeroDuration() ||
      options.command_timeout <= absl::ZeroDuration() ||
      options.connect_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "redis options: batch size, queue limit, timeouts and fetch slice must be positive, "
        "stream.maxlen not negative");
  }
  if (clock == nullptr) clock = Clock::Real();
  auto stream = std::make_unique<RedisEventStream>(std::move(options), clock);
  EVENTBUS_RETURN_IF_ERROR(stream->Start());
  return std::unique_ptr<EventStream>(std::move(stream));
}

absl::Status RegisterRedisBackend(BackendRegistry& registry) {
  BackendRegistration registration;
  registration.name = std::string(kBackendName);
  registration.description = "Redis Streams (hiredis): consumer groups, XAUTOCLAIM, Lua DLQ";
  registration.url_env = "REDIS_URL";
  registration.default_url = std::string(kDefaultRedisUrl);
  registration.option_env_prefix = "REDIS_OPTION_";
  registration.factory = [](const BackendConfig& config) -> absl::StatusOr<std::unique_ptr<EventStream>> {
    EVENTBUS_ASSIGN_OR_RETURN(RedisOptions options, RedisOptionsFromConfig(config));
    return NewRedisEventStream(std::move(options), config.clock);
  };
  absl::Status status = registry.Register(std::move(registration));
  if (absl::IsAlreadyExists(status)) return absl::OkStatus();
  return status;
}

}  // namespace eventbus::redis
