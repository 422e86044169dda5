#include "redis_subscription.h"

#include <algorithm>
#include <atomic>
#include <deque>
#include <thread>
#include <string>
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
  int failed_attempts = 0;
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

// {id, {fields}, count, failed attempts} returned by the promote and reclaim scripts.
absl::StatusOr<std::vector<RawEntry>> ParseScriptEntries(const redisReply* reply) {
  std::vector<RawEntry> out;
  if (!IsArray(reply)) return absl::InternalError("redis script returned no array");
  for (size_t i = 0; i < reply->elements; ++i) {
    const redisReply* triple = reply->element[i];
    if (!IsArray(triple) || triple->elements != 4 ||
        triple->element[2]->type != REDIS_REPLY_INTEGER ||
        triple->element[3]->type != REDIS_REPLY_INTEGER) {
      return absl::InternalError("redis script returned a malformed entry");
    }
    EVENTBUS_ASSIGN_OR_RETURN(RawEntry raw, ParseEntry(triple));
    raw.delivery_count = static_cast<int>(triple->element[2]->integer);
    raw.failed_attempts = static_cast<int>(std::max<long long>(triple->element[3]->integer, 0));
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

class RedisSubscription final : public Subscription {
 public:
  RedisSubscription(const RedisOptions& options, Clock* clock, SubscribeOptions sub)
      : options_(options),
        clock_(clock),
        sub_(std::move(sub)),
        dead_letter_stream_(DeadLetterStreamName(sub_)),
        delayed_key_(absl::StrCat(sub_.stream, ":delayed:", sub_.group)),
        failed_key_(absl::StrCat(sub_.stream, ":failed:", sub_.group)),
        read_conn_(RedisConnection::Settings::From(options)),
        cmd_conn_(RedisConnection::Settings::From(options)),
        settle_conn_(RedisConnection::Settings::From(options)) {}

  ~RedisSubscription() override { Close().IgnoreError(); }

  // Creates the group (and stream) once, so Subscribe reports an unreachable server.
  absl::Status Start() {
    {
      absl::MutexLock lock(&fetch_mu_);
      EVENTBUS_RETURN_IF_ERROR(read_conn_.EnsureConnected());
      EVENTBUS_RETURN_IF_ERROR(EnsureGroupLocked());
    }
    settler_ = std::thread([this] { SettleLoop(); });
    return absl::OkStatus();
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

  using Subscription::Nack;
  absl::Status Nack(const Delivery& delivery, absl::Duration delay, NackKind kind) override {
    const absl::Time due = clock_->Now() + std::max(delay, absl::ZeroDuration());
    return RunHeldScript(scripts::kNack, "Nack", delivery,
                         {Millis(due), std::string(scripts::kParkingConsumer), FailedFlag(kind)});
  }

  absl::Status Extend(const Delivery& delivery) override {
    if (closed_.load()) return ClosedError("Extend");
    EVENTBUS_RETURN_IF_ERROR(CheckStream(delivery, "Extend"));
    absl::MutexLock lock(&cmd_mu_);
    // Re-checked under the lock: Close() may have run meanwhile.
    if (closed_.load()) return ClosedError("Extend");
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
        read_conn_.Eval(scripts::kReclaim, {sub_.stream, delayed_key_, failed_key_},
                        {sub_.group, sub_.consumer, Millis(std::max(min_idle, absl::ZeroDuration())),
                         absl::StrCat(max_events), Millis(clock_->Now()),
                         std::string(scripts::kParkingConsumer), reclaim_cursor_});
    if (!reclaimed.ok()) return GroupLostToUnavailable(reclaimed.status());
    const redisReply* reply = reclaimed->get();
    if (!IsArray(reply) || reply->elements != 2 || !IsString(reply->element[0])) {
      return absl::InternalError("redis reclaim script returned no {cursor, entries} pair");
    }
    // The next call goes on where this one stopped (the script wraps around to 0-0).
    reclaim_cursor_.assign(reply->element[0]->str, reply->element[0]->len);
    EVENTBUS_ASSIGN_OR_RETURN(std::vector<RawEntry> raw, ParseScriptEntries(reply->element[1]));
    std::vector<Delivery> out;
    ToDeliveriesLocked(std::move(raw), /*first_delivery_now=*/false, out);
    return out;
  }

  absl::Status DeadLetter(const Delivery& delivery, absl::string_view reason) override {
    if (closed_.load()) return ClosedError("DeadLetter");
    EVENTBUS_RETURN_IF_ERROR(CheckStream(delivery, "DeadLetter"));
    const Event dead = MakeDeadLetter(delivery, sub_.group, reason);
    absl::MutexLock lock(&cmd_mu_);
    if (closed_.load()) return ClosedError("DeadLetter");
    absl::Status status = DeadLetterWith(cmd_conn_, delivery, dead);
    if (status.ok() || absl::IsNotFound(status) || absl::IsFailedPrecondition(status)) {
      Forget(delivery.id);
    }
    return status;
  }

  void AckAsync(const Delivery& delivery, SettleCallback done) override {
    PendingSettle op;
    op.kind = PendingSettle::Kind::kAck;
    op.id = delivery.id;
    op.count = delivery.delivery_count;
    op.failed_attempts = delivery.failed_attempts;
    Enqueue(delivery, std::move(op), std::move(done), "AckAsync");
  }

  using Subscription::NackAsync;
  void NackAsync(const Delivery& delivery, absl::Duration delay, NackKind nack_kind,
                 SettleCallback done) override {
    PendingSettle op;
    op.kind = PendingSettle::Kind::kNack;
    op.nack_kind = nack_kind;
    op.id = delivery.id;
    op.count = delivery.delivery_count;
    op.due = clock_->Now() + std::max(delay, absl::ZeroDuration());
    Enqueue(delivery, std::move(op), std::move(done), "NackAsync");
  }

  void DeadLetterAsync(const Delivery& delivery, absl::string_view reason,
                       SettleCallback done) override {
    PendingSettle op;
    op.kind = PendingSettle::Kind::kDeadLetter;
    op.id = delivery.id;
    op.count = delivery.delivery_count;
    op.dead_letter = MakeDeadLetter(delivery, sub_.group, reason);
    Enqueue(delivery, std::move(op), std::move(done), "DeadLetterAsync");
  }

  absl::Status Close() override {
    if (closed_.exchange(true)) return absl::OkStatus();
    // Settles queued before Close still apply: the settler drains its queue, then stops.
    {
      absl::MutexLock lock(&settle_mu_);
      settle_stopping_ = true;
    }
    if (settler_.joinable()) settler_.join();
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
          .Eval(scripts::kNack, {sub_.stream, delayed_key_, failed_key_},
                {sub_.group, sub_.consumer, id, absl::StrCat(count), now,
                 std::string(scripts::kParkingConsumer), FailedFlag(NackKind::kGiveBack)})
          .IgnoreError();
    }
    cmd_conn_.Disconnect();
    read_conn_.Disconnect();
    return absl::OkStatus();
  }

 private:
  // One queued asynchronous settle. Only what the server needs is kept (no copy of the event
  // for an ack).
  struct PendingSettle {
    enum class Kind { kAck, kNack, kDeadLetter };
    Kind kind = Kind::kAck;
    std::string id;
    int count = 0;
    int failed_attempts = 0;                  // kAck: the failed-attempt entry to delete
    NackKind nack_kind = NackKind::kGiveBack;  // kNack
    absl::Time due;     // kNack
    Event dead_letter;  // kDeadLetter
    SettleCallback done;
  };

  void Enqueue(const Delivery& delivery, PendingSettle op, SettleCallback done,
               absl::string_view what) {
    absl::Status refused = closed_.load() ? ClosedError(what) : CheckStream(delivery, what);
    if (refused.ok()) {
      op.done = std::move(done);
      absl::MutexLock lock(&settle_mu_);
      // Re-checked under the lock: Close() may have stopped the settler meanwhile.
      if (!settle_stopping_) {
        settle_queue_.push_back(std::move(op));
        return;
      }
      done = std::move(op.done);
      refused = ClosedError(what);
    }
    if (done) done(std::move(refused));
  }

  // The settler thread: takes everything queued at once and applies it with as few round trips
  // as it can: every ack of the batch in one XACK, nacks and dead letters by their scripts.
  void SettleLoop() {
    constexpr size_t kMaxBatch = 4096;
    while (true) {
      std::vector<PendingSettle> batch;
      {
        absl::MutexLock lock(&settle_mu_);
        auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(settle_mu_) {
          return settle_stopping_ || !settle_queue_.empty();
        };
        settle_mu_.Await(absl::Condition(&ready));
        if (settle_queue_.empty()) return;  // stopping and drained
        const size_t n = std::min(settle_queue_.size(), kMaxBatch);
        batch.reserve(n);
        for (size_t i = 0; i < n; ++i) {
          batch.push_back(std::move(settle_queue_.front()));
          settle_queue_.pop_front();
        }
      }
      ApplySettles(batch);
    }
  }

  void ApplySettles(std::vector<PendingSettle>& batch) {
    std::vector<std::string> xack = {"XACK", sub_.stream, sub_.group};
    std::vector<std::string> hdel = {"HDEL", failed_key_};
    for (const PendingSettle& op : batch) {
      if (op.kind != PendingSettle::Kind::kAck) continue;
      xack.push_back(op.id);
      // Only deliveries that failed before have a count to delete: successes cost nothing.
      if (op.failed_attempts > 0) hdel.push_back(op.id);
    }
    if (xack.size() > 3) {
      // XACK is idempotent, so a batch whose reply was lost is simply sent again.
      absl::Status status = WithRetries([&] { return settle_conn_.Command(xack).status(); });
      if (status.ok() && hdel.size() > 2) settle_conn_.Command(hdel).IgnoreError();
      for (PendingSettle& op : batch) {
        if (op.kind != PendingSettle::Kind::kAck) continue;
        if (status.ok() || !absl::IsUnavailable(status)) Forget(op.id);
        if (op.done) op.done(status);
      }
    }
    for (PendingSettle& op : batch) {
      if (op.kind == PendingSettle::Kind::kAck) continue;
      Delivery held;
      held.stream = sub_.stream;
      held.id = op.id;
      held.delivery_count = op.count;
      absl::Status status;
      if (op.kind == PendingSettle::Kind::kNack) {
        std::vector<std::string> args = HeldArgs(held);
        args.insert(args.end(), {Millis(op.due), std::string(scripts::kParkingConsumer),
                                 FailedFlag(op.nack_kind)});
        absl::StatusOr<ReplyPtr> reply =
            settle_conn_.Eval(scripts::kNack, {sub_.stream, delayed_key_, failed_key_}, args);
        status = reply.ok() ? HeldCheckToStatus(reply->get(), "NackAsync", held) : reply.status();
      } else {
        status = DeadLetterWith(settle_conn_, held, op.dead_letter);
      }
      if (!absl::IsUnavailable(status)) Forget(op.id);
      if (op.done) op.done(std::move(status));
    }
  }

  // Runs `attempt` until it succeeds, fails for good, or publish_retry_timeout has passed
  // while the server is unreachable (the connection backs off between attempts).
  template <typename Attempt>
  absl::Status WithRetries(Attempt attempt) {
    const absl::Time give_up = absl::Now() + options_.publish_retry_timeout;
    while (true) {
      absl::Status status = attempt();
      if (!absl::IsUnavailable(status) || absl::Now() >= give_up) return status;
      const absl::Time retry_at =
          std::min(give_up, std::max(settle_conn_.next_attempt(), absl::Now() + absl::Milliseconds(20)));
      absl::SleepFor(retry_at - absl::Now());
    }
  }

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

  static std::string FailedFlag(NackKind kind) { return kind == NackKind::kFailed ? "1" : "0"; }

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
      // Re-checked under the lock: Close() may have run meanwhile.
      if (closed_.load()) return ClosedError(op);
      reply = cmd_conn_.Eval(script, {sub_.stream, delayed_key_, failed_key_}, args);
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
        conn.Eval(scripts::kDeadLetter,
                  {sub_.stream, delayed_key_, dead_letter_stream_, failed_key_}, args));
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
    const std::string start =
        recover_after_.empty() ? std::string("-") : absl::StrCat("(", recover_after_);
    EVENTBUS_ASSIGN_OR_RETURN(
        ReplyPtr pending, read_conn_.Command({"XPENDING", sub_.stream, sub_.group, start, "+",
                                              absl::StrCat(max_events), sub_.consumer}));
    if (!IsArray(pending.get())) return absl::InternalError("XPENDING returned no array");
    std::vector<std::string> claim = {"XCLAIM", sub_.stream, sub_.group, sub_.consumer, "0"};
    absl::flat_hash_map<std::string, int> counts;
    {
      absl::MutexLock lock(&held_mu_);
      for (size_t i = 0; i < pending->elements; ++i) {
        const redisReply* p = pending->element[i];
        if (!IsArray(p) || p->elements < 4) continue;
        std::string id(StringOf(p->element[0]));
        recover_after_ = id;
        if (held_.contains(id)) continue;
        counts[id] = static_cast<int>(p->element[3]->integer) + 1;
        claim.push_back(std::move(id));
      }
    }
    if (pending->elements < static_cast<size_t>(max_events)) {
      recover_ = false;
      recover_after_.clear();
    }
    if (claim.size() == 5) return absl::OkStatus();
    EVENTBUS_ASSIGN_OR_RETURN(ReplyPtr claimed, read_conn_.Command(claim));
    const size_t first = out.size();
    std::vector<std::string> hmget = {"HMGET", failed_key_};
    for (size_t i = 0; IsArray(claimed.get()) && i < claimed->elements; ++i) {
      EVENTBUS_ASSIGN_OR_RETURN(RawEntry raw, ParseEntry(claimed->element[i]));
      raw.delivery_count = counts[raw.id];
      hmget.push_back(raw.id);
      out.push_back(std::move(raw));
    }
    if (out.size() > first) {
      EVENTBUS_ASSIGN_OR_RETURN(ReplyPtr failed, read_conn_.Command(hmget));
      for (size_t i = 0; IsArray(failed.get()) && i < failed->elements && first + i < out.size(); ++i) {
        int n = 0;
        if (IsString(failed->element[i]) && absl::SimpleAtoi(StringOf(failed->element[i]), &n)) {
          out[first + i].failed_attempts = std::max(n, 0);
        }
      }
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
        read_conn_.Eval(scripts::kPromote, {sub_.stream, delayed_key_, failed_key_},
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
        absl::StatusOr<RawEntry> entry = ParseEntry(pair->element[1]->element[e]);
        if (entry.ok()) {
          raw.push_back(*std::move(entry));
        } else {
          recover_ = true;  // it is pending for us: recovery claims it again
        }
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
      delivery.failed_attempts = entry.failed_attempts;
      delivery.token = static_cast<uint64_t>(entry.delivery_count);
      // Redis keeps only the last delivery time; the first delivery of a redelivered entry
      // happened no earlier than the entry was appended (the time in its id).
      delivery.first_delivery_time =
          first_delivery_now || entry.delivery_count <= 1 ? now : EntryIdTime(entry.id);
      if (entry.deleted) {
        read_conn_.Command({"XACK", sub_.stream, sub_.group, entry.id}).IgnoreError();
        if (entry.failed_attempts > 0) read_conn_.Command({"HDEL", failed_key_, entry.id}).IgnoreError();
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
    const std::string reason = MalformedEventReason(why.message());
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
  const std::string failed_key_;  // hash: entry id -> failed attempts (lua_scripts.h)
  std::atomic<bool> closed_{false};

  // Fetch and Reclaim (one thread at a time by contract; the mutex also lets Close wait).
  absl::Mutex fetch_mu_;
  RedisConnection read_conn_ ABSL_GUARDED_BY(fetch_mu_);
  uint64_t group_generation_ ABSL_GUARDED_BY(fetch_mu_) = 0;
  bool recover_ ABSL_GUARDED_BY(fetch_mu_) = true;
  // The last entry id the current recovery pass has looked at (empty = from the start).
  std::string recover_after_ ABSL_GUARDED_BY(fetch_mu_);
  // Where the next Reclaim's XAUTOCLAIM scan starts (kept across calls, see kReclaim).
  std::string reclaim_cursor_ ABSL_GUARDED_BY(fetch_mu_) = "0-0";

  // Ack, Nack, Extend, DeadLetter: any thread.
  absl::Mutex cmd_mu_ ABSL_ACQUIRED_AFTER(fetch_mu_);
  RedisConnection cmd_conn_ ABSL_GUARDED_BY(cmd_mu_);

  // The asynchronous settles (settler thread only uses settle_conn_).
  RedisConnection settle_conn_;
  absl::Mutex settle_mu_ ABSL_ACQUIRED_BEFORE(held_mu_);
  std::deque<PendingSettle> settle_queue_ ABSL_GUARDED_BY(settle_mu_);
  bool settle_stopping_ ABSL_GUARDED_BY(settle_mu_) = false;
  std::thread settler_;

  // Entry id -> delivery count of what Fetch/Reclaim handed out and nobody settled yet.
  absl::Mutex held_mu_ ABSL_ACQUIRED_AFTER(cmd_mu_);
  absl::flat_hash_map<std::string, int> held_ ABSL_GUARDED_BY(held_mu_);
};
}  // namespace

absl::StatusOr<std::unique_ptr<Subscription>> NewRedisSubscription(const RedisOptions& options,
                                                                   Clock* clock,
                                                                   const SubscribeOptions& sub) {
  auto subscription = std::make_unique<RedisSubscription>(options, clock, sub);
  EVENTBUS_RETURN_IF_ERROR(subscription->Start());
  return subscription;
}

}  // namespace eventbus::redis
