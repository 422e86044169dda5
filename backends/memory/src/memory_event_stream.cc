#include "eventbus/memory/memory_event_stream.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <cstdint>
#include <tuple>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/node_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "eventbus/clock.h"
#include "eventbus/status_macros.h"

namespace eventbus::memory {
namespace {

constexpr absl::string_view kBackendName = "memory";

// One event a group has delivered and not yet settled. Held by a consumer, or returned to the
// group (nacked, consumer closed, lease expired) and waiting for `visible_at`.
struct Pending {
  std::string consumer;  // empty while returned to the group
  int delivery_count = 0;
  absl::Time first_delivery_time;
  absl::Time last_touch;               // delivery, Extend, reclaim: what Reclaim's idle measures
  absl::Time lease_expiry = absl::InfiniteFuture();  // from ack_wait
  absl::Time visible_at;               // while returned
  uint64_t generation = 0;             // Delivery::token: stale handles cannot settle
};

struct Group {
  uint64_t next_seq = 1;  // the next never-delivered sequence number
  std::map<uint64_t, Pending> pending;
  // Returned entries, by (visible_at, seq): redelivered before new ones once visible.
  std::set<std::pair<absl::Time, uint64_t>> returned;
  // Held entries with a finite lease, by (lease_expiry, seq), so expiry costs nothing per fetch
  // however much is in flight. Both sets are cleaned lazily: an element whose Pending no longer
  // matches it (settled, extended, re-leased) is dropped when it reaches the front.
  std::set<std::pair<absl::Time, uint64_t>> leases;
};

struct Entry {
  uint64_t seq;
  Event event;
  size_t bytes;
};

struct Stream {
  std::deque<Entry> entries;  // contiguous sequence numbers from entries.front().seq
  uint64_t next_seq = 1;
  size_t bytes = 0;
  std::map<std::string, Group, std::less<>> groups;

  const Entry* Find(uint64_t seq) const {
    if (entries.empty() || seq < entries.front().seq || seq >= next_seq) return nullptr;
    return &entries[seq - entries.front().seq];
  }
  uint64_t first_seq() const { return entries.empty() ? next_seq : entries.front().seq; }
};

// Everything lives behind one mutex: an operation that spans two streams (DeadLetter writes the
// dead-letter stream and settles the original) is then atomic for free.
class State {
 public:
  State(Clock* clock, MemoryOptions options)
      : clock_(clock), options_(options),
        advance_listener_(clock_->OnAdvance([this] {
          std::unique_lock lock(mu_);
          changed_.notify_all();
        })) {}

  Clock* clock() const { return clock_; }

  absl::StatusOr<PublishReceipt> Append(absl::string_view stream_name, Event event) {
    std::unique_lock lock(mu_);
    return AppendLocked(stream_name, std::move(event));
  }

  absl::Status EnsureGroup(const SubscribeOptions& options) {
    std::unique_lock lock(mu_);
    Stream& stream = streams_[options.stream];
    auto [it, created] = stream.groups.try_emplace(options.group);
    if (created) it->second.next_seq = options.start_from_oldest ? stream.first_seq() : stream.next_seq;
    return absl::OkStatus();
  }

  std::vector<Delivery> Fetch(const SubscribeOptions& options, int max_events,
                              absl::Duration wait, const std::atomic<bool>* closed) {
    std::vector<Delivery> out;
    // Waiting for arrivals is real time (other threads publish); visibility of delayed events is
    // the stream clock's time, and a ManualClock advance wakes us through the listener.
    const absl::Time real_deadline = absl::Now() + wait;
    std::unique_lock lock(mu_);
    while (true) {
      if (*closed) return out;
      const absl::Time now = clock_->Now();
      Stream& stream = streams_[options.stream];
      Group& group = stream.groups[options.group];
      ExpireLeasesLocked(group, now);
      TakeReturnedLocked(options, stream, group, now, max_events, out);
      TakeNewLocked(options, stream, group, now, max_events, out);
      if (!out.empty()) return out;
      const absl::Time real_now = absl::Now();
      if (real_now >= real_deadline) return out;
      absl::Duration timeout = real_deadline - real_now;
      if (absl::Time due = NextDueLocked(group); due != absl::InfiniteFuture()) {
        timeout = std::min(timeout, std::max(due - now, absl::Milliseconds(1)));
      }
      changed_.wait_for(lock, absl::ToChronoNanoseconds(timeout));
    }
  }

  absl::Status Ack(const SubscribeOptions& options, const Delivery& delivery) {
    std::unique_lock lock(mu_);
    EVENTBUS_ASSIGN_OR_RETURN(auto held, FindHeldLocked(options, delivery));
    auto [stream, group, it] = held;
    (void)stream;
    group->pending.erase(it);
    return absl::OkStatus();
  }

  absl::Status Nack(const SubscribeOptions& options, const Delivery& delivery,
                    absl::Duration delay) {
    std::unique_lock lock(mu_);
    EVENTBUS_ASSIGN_OR_RETURN(auto held, FindHeldLocked(options, delivery));
    auto [stream, group, it] = held;
    (void)stream;
    ReturnLocked(*group, it, clock_->Now() + std::max(delay, absl::ZeroDuration()));
    return absl::OkStatus();
  }

  absl::Status Extend(const SubscribeOptions& options, const Delivery& delivery) {
    std::unique_lock lock(mu_);
    EVENTBUS_ASSIGN_OR_RETURN(auto held, FindHeldLocked(options, delivery));
    Pending& pending = std::get<2>(held)->second;
    pending.last_touch = clock_->Now();
    if (options.ack_wait > absl::ZeroDuration()) {
      pending.lease_expiry = pending.last_touch + options.ack_wait;
      std::get<1>(held)->leases.emplace(pending.lease_expiry, std::get<2>(held)->first);
    }
    return absl::OkStatus();
  }

  std::vector<Delivery> Reclaim(const SubscribeOptions& options, absl::Duration min_idle,
                                int max_events) {
    std::vector<Delivery> out;
    std::unique_lock lock(mu_);
    const absl::Time now = clock_->Now();
    Stream& stream = streams_[options.stream];
    Group& group = stream.groups[options.group];
    for (auto& [seq, pending] : group.pending) {
      if (static_cast<int>(out.size()) >= max_events) break;
      if (pending.consumer.empty() || now - pending.last_touch < min_idle) continue;
      const Entry* entry = stream.Find(seq);
      if (entry == nullptr) continue;
      out.push_back(LeaseLocked(options, group, seq, *entry, pending, now));
    }
    return out;
  }

  absl::Status DeadLetter(const SubscribeOptions& options, const Delivery& delivery,
                          absl::string_view reason) {
    std::unique_lock lock(mu_);
    EVENTBUS_ASSIGN_OR_RETURN(auto held, FindHeldLocked(options, delivery));
    auto [stream, group, it] = held;
    // A full dead-letter stream fails here, before anything changed: the original stays held.
    EVENTBUS_RETURN_IF_ERROR(
        AppendLocked(DeadLetterStreamName(options), MakeDeadLetter(delivery, options.group, reason))
            .status());
    (void)stream;
    group->pending.erase(it);
    return absl::OkStatus();
  }

  // Returns everything `consumer` holds to its group, visible at once.
  void Release(const SubscribeOptions& options) {
    std::unique_lock lock(mu_);
    Stream& stream = streams_[options.stream];
    Group& group = stream.groups[options.group];
    const absl::Time now = clock_->Now();
    for (auto it = group.pending.begin(); it != group.pending.end(); ++it) {
      if (it->second.consumer == options.consumer) ReturnLocked(group, it, now);
    }
  }

  void Wake() {
    std::unique_lock lock(mu_);
    changed_.notify_all();
  }

 private:
  using Held = std::tuple<Stream*, Group*, std::map<uint64_t, Pending>::iterator>;

  static uint64_t delivery_seq(const Delivery& delivery) {
    uint64_t seq = 0;
    if (!absl::SimpleAtoi(delivery.id, &seq)) return 0;
    return seq;
  }

  absl::StatusOr<PublishReceipt> AppendLocked(absl::string_view stream_name, Event event) {
    Stream& stream = streams_[std::string(stream_name)];
    const size_t bytes = EventSizeBytes(event);
    auto full = [&] {
      return stream.entries.size() + 1 > options_.max_stream_events ||
             stream.bytes + bytes > options_.max_stream_bytes;
    };
    if (full()) TrimLocked(stream, bytes);
    if (full()) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "memory stream ", stream_name, " is full: ", stream.entries.size(), " events, ",
          stream.bytes, " bytes retained (limits: max.stream.events=", options_.max_stream_events,
          ", max.stream.bytes=", options_.max_stream_bytes, "); consumers must ack to make room"));
    }
    const uint64_t seq = stream.next_seq++;
    stream.entries.push_back(Entry{seq, std::move(event), bytes});
    stream.bytes += bytes;
    changed_.notify_all();
    return PublishReceipt{std::string(stream_name), absl::StrCat(seq)};
  }

  absl::StatusOr<Held> FindHeldLocked(const SubscribeOptions& options, const Delivery& delivery) {
    auto stream = streams_.find(options.stream);
    if (stream == streams_.end()) return absl::NotFoundError("unknown stream");
    auto group = stream->second.groups.find(options.group);
    if (group == stream->second.groups.end()) return absl::NotFoundError("unknown group");
    auto it = group->second.pending.find(delivery_seq(delivery));
    if (it == group->second.pending.end() || it->second.consumer != options.consumer ||
        it->second.generation != delivery.token) {
      return absl::FailedPreconditionError(absl::StrCat(
          "delivery ", delivery.id, " of ", options.stream, " is no longer held by consumer ",
          options.consumer, " (settled, reclaimed by another consumer, or its lease expired)"));
    }
    return Held{&stream->second, &group->second, it};
  }

  Delivery LeaseLocked(const SubscribeOptions& options, Group& group, uint64_t seq,
                       const Entry& entry, Pending& pending, absl::Time now) {
    pending.consumer = options.consumer;
    pending.delivery_count++;
    if (pending.delivery_count == 1) pending.first_delivery_time = now;
    pending.last_touch = now;
    pending.lease_expiry = absl::InfiniteFuture();
    if (options.ack_wait > absl::ZeroDuration()) {
      pending.lease_expiry = now + options.ack_wait;
      group.leases.emplace(pending.lease_expiry, seq);
    }
    pending.generation = next_generation_++;
    Delivery delivery;
    delivery.event = entry.event;
    delivery.stream = options.stream;
    delivery.id = absl::StrCat(seq);
    delivery.delivery_count = pending.delivery_count;
    delivery.first_delivery_time = pending.first_delivery_time;
    delivery.token = pending.generation;
    return delivery;
  }

  void ReturnLocked(Group& group, std::map<uint64_t, Pending>::iterator it, absl::Time visible_at) {
    it->second.consumer.clear();
    it->second.visible_at = visible_at;
    it->second.lease_expiry = absl::InfiniteFuture();
    it->second.generation = next_generation_++;
    group.returned.emplace(visible_at, it->first);
    changed_.notify_all();
  }

  void ExpireLeasesLocked(Group& group, absl::Time now) {
    while (!group.leases.empty() && group.leases.begin()->first <= now) {
      auto [expiry, seq] = *group.leases.begin();
      group.leases.erase(group.leases.begin());
      auto it = group.pending.find(seq);
      if (it != group.pending.end() && !it->second.consumer.empty() &&
          it->second.lease_expiry == expiry) {
        ReturnLocked(group, it, now);
      }
    }
  }

  void TakeReturnedLocked(const SubscribeOptions& options, Stream& stream, Group& group,
                          absl::Time now, int max_events, std::vector<Delivery>& out) {
    while (!group.returned.empty() && static_cast<int>(out.size()) < max_events) {
      auto [visible_at, seq] = *group.returned.begin();
      if (visible_at > now) break;
      group.returned.erase(group.returned.begin());
      auto it = group.pending.find(seq);
      // Stale: settled or re-leased (reclaimed) since it was returned.
      if (it == group.pending.end() || !it->second.consumer.empty() ||
          it->second.visible_at != visible_at) {
        continue;
      }
      const Entry* entry = stream.Find(seq);
      if (entry == nullptr) {
        group.pending.erase(it);
        continue;
      }
      out.push_back(LeaseLocked(options, group, seq, *entry, it->second, now));
    }
  }

  void TakeNewLocked(const SubscribeOptions& options, Stream& stream, Group& group, absl::Time now,
                     int max_events, std::vector<Delivery>& out) {
    group.next_seq = std::max(group.next_seq, stream.first_seq());
    while (group.next_seq < stream.next_seq && static_cast<int>(out.size()) < max_events) {
      const uint64_t seq = group.next_seq++;
      Pending& pending = group.pending[seq];
      out.push_back(LeaseLocked(options, group, seq, *stream.Find(seq), pending, now));
    }
  }

  // When the next returned entry becomes visible or the next lease expires (possibly a stale
  // index element: waking early for it is harmless).
  absl::Time NextDueLocked(const Group& group) const {
    absl::Time due = absl::InfiniteFuture();
    if (!group.returned.empty()) due = group.returned.begin()->first;
    if (!group.leases.empty()) due = std::min(due, group.leases.begin()->first);
    return due;
  }

  // Makes room by dropping the oldest entries every group of the stream has settled. Done only
  // when a bound is reached, so until then a group created later still sees the history (as
  // with Redis and Kafka retention); at the bound, memory is held only by what is pending.
  // A stream without groups (results, dead letters nobody subscribes to) owes nothing to
  // anyone: it drops just enough of its oldest entries for `incoming_bytes` to fit, like a
  // capped Redis stream (MAXLEN), rather than refuse every publish once full.
  void TrimLocked(Stream& stream, size_t incoming_bytes) {
    if (stream.groups.empty()) {
      if (incoming_bytes > options_.max_stream_bytes) return;  // could never fit
      while (!stream.entries.empty() &&
             (stream.entries.size() + 1 > options_.max_stream_events ||
              stream.bytes + incoming_bytes > options_.max_stream_bytes)) {
        stream.bytes -= stream.entries.front().bytes;
        stream.entries.pop_front();
      }
      return;
    }
    uint64_t low = stream.next_seq;
    for (const auto& [name, group] : stream.groups) {
      low = std::min(low, group.next_seq);
      if (!group.pending.empty()) low = std::min(low, group.pending.begin()->first);
    }
    while (!stream.entries.empty() && stream.entries.front().seq < low) {
      stream.bytes -= stream.entries.front().bytes;
      stream.entries.pop_front();
    }
  }

  Clock* const clock_;
  const MemoryOptions options_;
  // std::mutex, not absl::Mutex: Debian's Abseil is not built for ThreadSanitizer, which then
  // cannot see absl::Mutex's synchronisation and reports false races.
  std::mutex mu_;  // guards everything below
  std::condition_variable changed_;
  // Node-based: Stream references stay valid while another stream is created.
  absl::node_hash_map<std::string, Stream> streams_;
  uint64_t next_generation_ = 1;
  // Last: unregistered first on destruction, so the callback never sees a dying State.
  std::unique_ptr<ClockListener> advance_listener_;
};

class MemorySubscription final : public Subscription {
 public:
  MemorySubscription(std::shared_ptr<State> state, SubscribeOptions options)
      : state_(std::move(state)), options_(std::move(options)) {}
  ~MemorySubscription() override { Close().IgnoreError(); }

  absl::StatusOr<std::vector<Delivery>> Fetch(int max_events, absl::Duration wait) override {
    EVENTBUS_RETURN_IF_ERROR(CheckOpen());
    if (max_events <= 0) return absl::InvalidArgumentError("max_events must be positive");
    return state_->Fetch(options_, max_events, wait, &closed_);
  }
  absl::Status Ack(const Delivery& delivery) override {
    EVENTBUS_RETURN_IF_ERROR(CheckOpen());
    return state_->Ack(options_, delivery);
  }
  absl::Status Nack(const Delivery& delivery, absl::Duration delay) override {
    EVENTBUS_RETURN_IF_ERROR(CheckOpen());
    return state_->Nack(options_, delivery, delay);
  }
  absl::Status Extend(const Delivery& delivery) override {
    EVENTBUS_RETURN_IF_ERROR(CheckOpen());
    return state_->Extend(options_, delivery);
  }
  absl::StatusOr<std::vector<Delivery>> Reclaim(absl::Duration min_idle, int max_events) override {
    EVENTBUS_RETURN_IF_ERROR(CheckOpen());
    if (max_events <= 0) return absl::InvalidArgumentError("max_events must be positive");
    return state_->Reclaim(options_, min_idle, max_events);
  }
  absl::Status DeadLetter(const Delivery& delivery, absl::string_view reason) override {
    EVENTBUS_RETURN_IF_ERROR(CheckOpen());
    return state_->DeadLetter(options_, delivery, reason);
  }
  absl::Status Close() override {
    if (closed_.exchange(true)) return absl::OkStatus();
    state_->Release(options_);
    state_->Wake();  // a Fetch blocked on this subscription returns
    return absl::OkStatus();
  }

 private:
  absl::Status CheckOpen() const {
    if (closed_) return absl::FailedPreconditionError("subscription is closed");
    return absl::OkStatus();
  }

  std::shared_ptr<State> state_;
  const SubscribeOptions options_;
  std::atomic<bool> closed_{false};
};

class MemoryEventStream final : public EventStream {
 public:
  MemoryEventStream(Clock* clock, MemoryOptions options)
      : state_(std::make_shared<State>(clock, options)) {}

  absl::string_view backend_name() const override { return kBackendName; }
  Capabilities capabilities() const override {
    Capabilities caps;
    caps.persistent = false;
    // Publish order, but two consumers may hold events of one key at once.
    caps.ordered_per_key = false;
    caps.duplicates_possible = false;
    caps.native_delay = true;
    caps.reclaim_from_other_consumers = true;
    caps.atomic_dead_letter = true;
    caps.max_event_bytes = size_t{64} << 20;
    return caps;
  }
  absl::Status Flush(absl::Duration) override { return absl::OkStatus(); }
  absl::StatusOr<std::unique_ptr<Subscription>> Subscribe(const SubscribeOptions& options) override {
    EVENTBUS_RETURN_IF_ERROR(ValidateSubscribeOptions(options));
    EVENTBUS_RETURN_IF_ERROR(state_->EnsureGroup(options));
    return std::unique_ptr<Subscription>(new MemorySubscription(state_, options));
  }
  absl::Status Ping(absl::Duration) override { return absl::OkStatus(); }
  Clock* clock() const override { return state_->clock(); }

 protected:
  absl::Status DoPublish(absl::string_view stream, Event event, PublishCallback done) override {
    absl::StatusOr<PublishReceipt> receipt = state_->Append(stream, std::move(event));
    if (!receipt.ok()) return receipt.status();
    done(std::move(receipt));
    return absl::OkStatus();
  }

 private:
  std::shared_ptr<State> state_;
};

}  // namespace

std::unique_ptr<EventStream> NewMemoryEventStream(Clock* clock, MemoryOptions options) {
  return std::make_unique<MemoryEventStream>(clock != nullptr ? clock : Clock::Real(), options);
}

absl::StatusOr<MemoryOptions> MemoryOptionsFromConfig(const BackendConfig& config) {
  MemoryOptions options;
  for (const auto& [key, value] : config.options) {
    size_t* target = nullptr;
    if (key == "max.stream.events") target = &options.max_stream_events;
    if (key == "max.stream.bytes") target = &options.max_stream_bytes;
    if (target == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown memory backend option '", key,
          "' (MEMORY_OPTION_*); valid: max.stream.events, max.stream.bytes"));
    }
    uint64_t parsed = 0;
    if (!absl::SimpleAtoi(value, &parsed) || parsed == 0) {
      return absl::InvalidArgumentError(absl::StrCat("memory backend option ", key, "=\"", value,
                                                     "\" is not a positive integer"));
    }
    *target = parsed;
  }
  if (!config.url.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the memory backend takes no URL, got \"", config.url, "\""));
  }
  return options;
}

absl::Status RegisterMemoryBackend(BackendRegistry& registry) {
  for (const std::string& name : registry.Names()) {
    if (name == kBackendName) return absl::OkStatus();
  }
  BackendRegistration registration;
  registration.name = std::string(kBackendName);
  registration.description = "in-process streams (single process, not persistent)";
  registration.option_env_prefix = "MEMORY_OPTION_";
  registration.factory =
      [](const BackendConfig& config) -> absl::StatusOr<std::unique_ptr<EventStream>> {
    EVENTBUS_ASSIGN_OR_RETURN(MemoryOptions options, MemoryOptionsFromConfig(config));
    return NewMemoryEventStream(config.clock, options);
  };
  absl::Status status = registry.Register(std::move(registration));
  if (absl::IsAlreadyExists(status)) return absl::OkStatus();  // lost a race: same outcome
  return status;
}

}  // namespace eventbus::memory
