#include "eventbus/memory/memory_event_stream.h"

#include <algorithm>
#include <atomic>
#include <cassert>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/node_hash_map.h"
#include "absl/strings/str_cat.h"
#include "eventbus/clock.h"
#include "eventbus/options.h"
#include "eventbus/redact.h"
#include "eventbus/status_macros.h"
#include "eventbus/stream_inspector.h"

namespace eventbus::memory {
namespace {

constexpr absl::string_view kBackendName = "memory";
constexpr absl::string_view kOptionEnvPrefix = "MEMORY_OPTION_";

// One event a group has delivered and not yet settled. Held by a consumer, or returned to the
// group (nacked, consumer closed, lease expired) and waiting for `visible_at`.
struct Pending {
  bool live = false;      // false: a settled slot of the window (see PendingWindow)
  uint32_t consumer = 0;  // the holder (Membership::consumer); 0 while returned to the group
  int delivery_count = 0;
  int failed_attempts = 0;  // Nacks with NackKind::kFailed
  absl::Time first_delivery_time;
  absl::Time last_touch;               // delivery, Extend, reclaim: what Reclaim's idle measures
  absl::Time lease_expiry = absl::InfiniteFuture();  // from ack_wait
  absl::Time visible_at;               // while returned
  uint64_t generation = 0;             // Delivery::token: stale handles cannot settle
};

// The group's pending entries by sequence number. A group delivers new sequence numbers in
// increasing order, so they fit a window [base, base + slots) with O(1) lookup and no node per
// delivery (a std::map allocated and rebalanced on every fetch and ack). Settled slots in the
// middle stay until everything before them is settled: the window spans at most what the stream
// retains anyway, since trimming never passes the oldest pending entry.
class PendingWindow {
 public:
  bool empty() const { return live_ == 0; }
  size_t size() const { return live_; }
  // The oldest pending sequence number; only when !empty().
  uint64_t first_seq() const { return base_; }

  Pending* Find(uint64_t seq) {
    if (seq < base_ || seq - base_ >= slots_.size()) return nullptr;
    Pending& pending = slots_[seq - base_];
    return pending.live ? &pending : nullptr;
  }

  // `seq` must be above every sequence number added before.
  Pending& Add(uint64_t seq) {
    if (live_ == 0) {
      slots_.clear();
      base_ = seq;
    }
    while (base_ + slots_.size() < seq) slots_.emplace_back();  // a gap: settled slots
    Pending& pending = slots_.emplace_back();
    pending.live = true;
    ++live_;
    return pending;
  }

  void Erase(uint64_t seq) {
    Pending* pending = Find(seq);
    if (pending == nullptr) return;
    *pending = Pending{};
    --live_;
    while (!slots_.empty() && !slots_.front().live) {
      slots_.pop_front();
      ++base_;
    }
  }

  // Calls f(seq, pending) for every pending entry, oldest first, until f returns false.
  template <typename F>
  void ForEach(F f) {
    for (size_t i = 0; i < slots_.size(); ++i) {
      if (slots_[i].live && !f(base_ + i, slots_[i])) return;
    }
  }

 private:
  uint64_t base_ = 0;
  std::deque<Pending> slots_;
  size_t live_ = 0;
};

// An element of a group's lease index. Stale once its Pending is settled, returned, extended
// or re-leased (the Pending's lease_expiry no longer matches): dropped lazily.
struct LeaseRef {
  absl::Time expiry;
  uint64_t seq;
  // Orders the heap with the earliest expiry on top.
  bool operator>(const LeaseRef& other) const {
    return std::tie(expiry, seq) > std::tie(other.expiry, other.seq);
  }
};

struct Group {
  uint64_t next_seq = 1;  // the next never-delivered sequence number
  PendingWindow pending;
  // Returned entries, by (visible_at, seq): redelivered before new ones once visible.
  std::set<std::pair<absl::Time, uint64_t>> returned;
  // Held entries with a finite lease, a min-heap on expiry, so expiry costs nothing per fetch
  // however much is in flight. Both indexes are cleaned lazily: an element whose Pending no
  // longer matches it (settled, extended, re-leased) is dropped when it reaches the front; the
  // heap is also compacted when stale elements outnumber live ones, so acked leases do not pile
  // up for a whole ack_wait.
  std::vector<LeaseRef> leases;
  // Consumer names to the small ids Pending::consumer holds (1, 2, ...).
  absl::flat_hash_map<std::string, uint32_t> consumer_ids;
};

// The backend's own encoding of a stored event: each field's bytes behind a fixed-width length,
// no tags and no UTF-8 validation (it is read back only by this process, into the same message
// type). Protobuf's serializer cost as much as copying the message, which is what the stored
// form exists to avoid. Adding a field to Event without adding it here fails memory_test
// (StoredFormCarriesEveryField).
class EventCodec {
 public:
  static size_t EncodedSize(const Event& event) {
    size_t size = kStringFields * sizeof(uint32_t) + 1 + sizeof(int64_t) + sizeof(int32_t) +
                  sizeof(uint32_t);
    ForEachString(event, [&](const std::string& value) { size += value.size(); });
    for (const auto& [key, value] : event.headers()) {
      size += 2 * sizeof(uint32_t) + key.size() + value.size();
    }
    return size;
  }

  // Writes exactly EncodedSize(event) bytes.
  static void Encode(const Event& event, char* out) {
    ForEachString(event, [&](const std::string& value) { out = PutString(value, out); });
    *out++ = event.has_time() ? 1 : 0;
    out = Put<int64_t>(event.time().seconds(), out);
    out = Put<int32_t>(event.time().nanos(), out);
    out = Put<uint32_t>(static_cast<uint32_t>(event.headers().size()), out);
    for (const auto& [key, value] : event.headers()) {
      out = PutString(key, out);
      out = PutString(value, out);
    }
  }

  // False only for bytes Encode did not write.
  static bool Decode(absl::string_view in, Event& event) {
    Reader reader{in};
    absl::string_view field[kStringFields];
    for (absl::string_view& value : field) {
      if (!reader.String(value)) return false;
    }
    event.set_id(std::string(field[0]));
    event.set_source(std::string(field[1]));
    event.set_spec_version(std::string(field[2]));
    event.set_type(std::string(field[3]));
    event.set_subject(std::string(field[4]));
    event.set_data_content_type(std::string(field[5]));
    event.set_data_schema(std::string(field[6]));
    event.set_key(std::string(field[7]));
    event.set_data(std::string(field[8]));
    char has_time = 0;
    int64_t seconds = 0;
    int32_t nanos = 0;
    uint32_t headers = 0;
    if (!reader.Get(has_time) || !reader.Get(seconds) || !reader.Get(nanos) ||
        !reader.Get(headers)) {
      return false;
    }
    if (has_time != 0) {
      event.mutable_time()->set_seconds(seconds);
      event.mutable_time()->set_nanos(nanos);
    }
    for (uint32_t i = 0; i < headers; ++i) {
      absl::string_view key, value;
      if (!reader.String(key) || !reader.String(value)) return false;
      (*event.mutable_headers())[std::string(key)] = std::string(value);
    }
    return reader.in.empty();
  }

 private:
  static constexpr int kStringFields = 9;

  // Every string and bytes field, in the order Decode reads them.
  template <typename F>
  static void ForEachString(const Event& event, F f) {
    f(event.id());
    f(event.source());
    f(event.spec_version());
    f(event.type());
    f(event.subject());
    f(event.data_content_type());
    f(event.data_schema());
    f(event.key());
    f(event.data());
  }

  template <typename T>
  static char* Put(T value, char* out) {
    std::memcpy(out, &value, sizeof(T));
    return out + sizeof(T);
  }
  static char* PutString(const std::string& value, char* out) {
    out = Put<uint32_t>(static_cast<uint32_t>(value.size()), out);
    std::memcpy(out, value.data(), value.size());
    return out + value.size();
  }

  struct Reader {
    absl::string_view in;
    template <typename T>
    bool Get(T& value) {
      if (in.size() < sizeof(T)) return false;
      std::memcpy(&value, in.data(), sizeof(T));
      in.remove_prefix(sizeof(T));
      return true;
    }
    bool String(absl::string_view& value) {
      uint32_t size = 0;
      if (!Get(size) || in.size() < size) return false;
      value = in.substr(0, size);
      in.remove_prefix(size);
      return true;
    }
  };
};

// The encoded events of one stream, appended into large blocks and freed a block at a time
// once the stream's head has been trimmed past them. Retained events are long-lived and
// published ones are freed soon after delivery; with one small allocation per retained event
// the two interleave in the heap, and malloc spent more time splitting and coalescing chunks
// than the backend spent on everything else.
class EncodedLog {
 public:
  // Room for `size` bytes of event `seq`, valid until Release passes `seq`.
  char* Allocate(uint64_t seq, size_t size) {
    if (blocks_.empty() || blocks_.back().capacity - blocks_.back().size < size) {
      // Small streams stay small; a long one gets 2 MiB blocks.
      const size_t next = blocks_.empty() ? kFirstBlockBytes
                                          : std::min(kLargeBlockBytes, 2 * blocks_.back().capacity);
      const size_t capacity = std::max(next, size);
      if (capacity == kLargeBlockBytes && !spares_.empty()) {
        blocks_.push_back(Block{std::move(spares_.back()), 0, capacity, 0});
        spares_.pop_back();
      } else {
        blocks_.push_back(Block{AllocateBlock(capacity), 0, capacity, 0});
      }
    }
    Block& block = blocks_.back();
    char* out = block.data.get() + block.size;
    block.size += size;
    block.last_seq = seq;
    return out;
  }

  // Releases what holds only events below `first_retained` (the block being filled is reused).
  // Large blocks are kept for the blocks the stream fills next: a stream trimmed at its bound
  // grows back to it while publishing goes on, and memory handed back to the kernel comes back
  // as page faults and zeroed pages. So a stream's blocks stay at its high-water mark, which the
  // retention bounds limit.
  void Release(uint64_t first_retained) {
    while (!blocks_.empty() && blocks_.front().last_seq < first_retained) {
      if (blocks_.size() == 1) {
        blocks_.front().size = 0;
        break;
      }
      if (blocks_.front().capacity == kLargeBlockBytes) {
        spares_.push_back(std::move(blocks_.front().data));
      }
      blocks_.pop_front();
    }
  }

 private:
  static constexpr size_t kFirstBlockBytes = size_t{64} << 10;
  static constexpr size_t kLargeBlockBytes = size_t{2} << 20;
  struct FreeBlock {
    void operator()(char* data) const { std::free(data); }
  };
  using BlockData = std::unique_ptr<char, FreeBlock>;

  static BlockData AllocateBlock(size_t capacity) {
    char* data = static_cast<char*>(std::malloc(capacity));
    if (data == nullptr) throw std::bad_alloc();  // as new would
    return BlockData(data);
  }

  struct Block {
    BlockData data;
    size_t size;
    size_t capacity;
    uint64_t last_seq;  // of the last event appended
  };
  std::deque<Block> blocks_;
  std::vector<BlockData> spares_;  // released large blocks
};

// A stored event. A Delivery owns its Event (the contract's value type), and copying a protobuf
// message costs one allocation per set field, which made the copy into each delivery most of a
// fetch. So the event is kept twice: its encoded form in the stream's EncodedLog, which every
// redelivery and every further group decodes; and `fresh`, the published object itself, moved
// into the first delivery with no copy at all (the common case: one group, delivered once).
struct Entry {
  uint64_t seq;
  absl::string_view encoded;     // EventCodec form, in the stream's EncodedLog
  std::unique_ptr<Event> fresh;  // null once delivered
  size_t bytes;                  // what the retention bound counts: encoded.size()
  // Removed by StreamInspector::Delete: kept in place (sequence numbers stay contiguous) but
  // never delivered or read again.
  bool deleted = false;
};

// An event on its way into a stream, sized outside the lock. Not owned: AppendLocked swaps its
// contents into a stored object.
struct Incoming {
  Event* event;
  size_t encoded_size;  // also what the retention bound counts
};

struct Stream {
  std::deque<Entry> entries;  // contiguous sequence numbers from entries.front().seq
  EncodedLog encoded;         // the entries' encoded events
  uint64_t next_seq = 1;
  size_t bytes = 0;
  size_t deleted = 0;  // entries still in `entries` with Entry::deleted
  std::map<std::string, Group, std::less<>> groups;
  // Fetches of this stream wait here; only a change to this stream wakes them.
  std::condition_variable changed;
  int waiting = 0;            // waiters not yet notified
  uint64_t notify_epoch = 0;  // bumped by each notification

  Entry* Find(uint64_t seq) {
    if (entries.empty() || seq < entries.front().seq || seq >= next_seq) return nullptr;
    return &entries[seq - entries.front().seq];
  }
  uint64_t first_seq() const { return entries.empty() ? next_seq : entries.front().seq; }
};

// What a subscription resolved once at Subscribe: no name lookups per operation. Streams and
// groups are never erased, and both containers keep their elements in place.
struct Membership {
  Stream* stream = nullptr;
  Group* group = nullptr;
  uint32_t consumer = 0;
};

// Deliveries made under the lock. First deliveries are complete (the fresh event swapped in);
// redeliveries carry a copy of the encoded form, decoded after the lock is released.
struct Batch {
  std::vector<Delivery> deliveries;
  std::vector<std::pair<size_t, std::string>> to_decode;  // index in deliveries, encoded event

  int size() const { return static_cast<int>(deliveries.size()); }

  std::vector<Delivery> Finish() && {
    for (auto& [index, encoded] : to_decode) {
      // Cannot fail: AppendLocked encoded these bytes.
      const bool decoded = EventCodec::Decode(encoded, deliveries[index].event);
      assert(decoded);
      (void)decoded;
    }
    return std::move(deliveries);
  }
};

// Everything lives behind one mutex: an operation that spans two streams (DeadLetter writes the
// dead-letter stream and settles the original) is then atomic for free. Work that needs no
// shared state (sizing a published event, decoding redeliveries, freeing) happens outside it.
class State {
 public:
  State(Clock* clock, MemoryOptions options)
      : clock_(clock), options_(options),
        advance_listener_(clock_->OnAdvance([this] {
          std::unique_lock lock(mu_);
          for (auto& [name, stream] : streams_) NotifyLocked(stream, /*always=*/true);
        })) {}

  Clock* clock() const { return clock_; }

  // By reference, here and in Prepare: each by-value hop of a message costs a construction, a
  // swap and a destruction, as much as the rest of a publish.
  absl::StatusOr<PublishReceipt> Append(absl::string_view stream_name, Event& event) {
    const Incoming incoming = Prepare(event);
    std::unique_lock lock(mu_);
    return AppendLocked(stream_name, incoming);
  }

  Membership Join(const SubscribeOptions& options) {
    std::unique_lock lock(mu_);
    Stream& stream = streams_[options.stream];
    auto [it, created] = stream.groups.try_emplace(options.group);
    Group& group = it->second;
    if (created) group.next_seq = options.start_from_oldest ? stream.first_seq() : stream.next_seq;
    auto [id, added] = group.consumer_ids.try_emplace(
        options.consumer, static_cast<uint32_t>(group.consumer_ids.size() + 1));
    return Membership{&stream, &group, id->second};
  }

  std::vector<Delivery> Fetch(const SubscribeOptions& options, const Membership& m,
                              int max_events, absl::Duration wait,
                              const std::atomic<bool>* closed) {
    Batch batch;
    {
      // Waiting for arrivals is real time (other threads publish); visibility of delayed events
      // is the stream clock's time, and a ManualClock advance wakes us through the listener.
      absl::Time real_deadline = absl::InfinitePast();
      std::unique_lock lock(mu_);
      Stream& stream = *m.stream;
      Group& group = *m.group;
      while (true) {
        if (*closed) return {};
        const absl::Time now = clock_->Now();
        ExpireLeasesLocked(stream, group, now);
        const uint64_t bound = group.returned.size() + (stream.next_seq - group.next_seq);
        batch.deliveries.reserve(std::min<uint64_t>(bound, max_events));
        TakeReturnedLocked(options, m, now, max_events, batch);
        TakeNewLocked(options, m, now, max_events, batch);
        if (batch.size() > 0) break;
        const absl::Time real_now = absl::Now();
        if (real_deadline == absl::InfinitePast()) real_deadline = real_now + wait;
        if (real_now >= real_deadline) return {};
        absl::Duration timeout = real_deadline - real_now;
        if (absl::Time due = NextDueLocked(group); due != absl::InfiniteFuture()) {
          timeout = std::min(timeout, std::max(due - now, absl::Milliseconds(1)));
        }
        WaitLocked(stream, lock, timeout);
      }
    }
    return std::move(batch).Finish();
  }

  absl::Status Ack(const SubscribeOptions& options, const Membership& m,
                   const Delivery& delivery) {
    std::unique_lock lock(mu_);
    EVENTBUS_ASSIGN_OR_RETURN(uint64_t seq, FindHeldLocked(options, m, delivery));
    m.group->pending.Erase(seq);
    return absl::OkStatus();
  }

  absl::Status Nack(const SubscribeOptions& options, const Membership& m,
                    const Delivery& delivery, absl::Duration delay, NackKind kind) {
    std::unique_lock lock(mu_);
    EVENTBUS_ASSIGN_OR_RETURN(uint64_t seq, FindHeldLocked(options, m, delivery));
    if (kind == NackKind::kFailed) ++m.group->pending.Find(seq)->failed_attempts;
    ReturnLocked(*m.stream, *m.group, seq, *m.group->pending.Find(seq),
                 clock_->Now() + std::max(delay, absl::ZeroDuration()));
    return absl::OkStatus();
  }

  absl::Status Extend(const SubscribeOptions& options, const Membership& m,
                      const Delivery& delivery) {
    std::unique_lock lock(mu_);
    EVENTBUS_ASSIGN_OR_RETURN(uint64_t seq, FindHeldLocked(options, m, delivery));
    Pending& pending = *m.group->pending.Find(seq);
    pending.last_touch = clock_->Now();
    if (options.ack_wait > absl::ZeroDuration()) {
      pending.lease_expiry = pending.last_touch + options.ack_wait;
      AddLeaseLocked(*m.group, pending.lease_expiry, seq);
    }
    return absl::OkStatus();
  }

  std::vector<Delivery> Reclaim(const SubscribeOptions& options, const Membership& m,
                                absl::Duration min_idle, int max_events) {
    Batch batch;
    {
      std::unique_lock lock(mu_);
      const absl::Time now = clock_->Now();
      m.group->pending.ForEach([&](uint64_t seq, Pending& pending) {
        if (batch.size() >= max_events) return false;
        if (pending.consumer == 0 || now - pending.last_touch < min_idle) return true;
        Entry* entry = m.stream->Find(seq);
        if (entry != nullptr && !entry->deleted) {
          LeaseLocked(options, m, seq, *entry, pending, now, batch);
        }
        return true;
      });
    }
    return std::move(batch).Finish();
  }

  absl::Status DeadLetter(const SubscribeOptions& options, const Membership& m,
                          const Delivery& delivery, absl::string_view reason) {
    std::unique_lock lock(mu_);
    EVENTBUS_ASSIGN_OR_RETURN(uint64_t seq, FindHeldLocked(options, m, delivery));
    // A full dead-letter stream fails here, before anything changed: the original stays held.
    Event dead_letter = MakeDeadLetter(delivery, options.group, reason);
    EVENTBUS_RETURN_IF_ERROR(
        AppendLocked(DeadLetterStreamName(options), Prepare(dead_letter)).status());
    m.group->pending.Erase(seq);
    return absl::OkStatus();
  }

  // Returns everything `consumer` holds to its group, visible at once.
  void Release(const Membership& m) {
    std::unique_lock lock(mu_);
    const absl::Time now = clock_->Now();
    m.group->pending.ForEach([&](uint64_t seq, Pending& pending) {
      if (pending.consumer == m.consumer) ReturnLocked(*m.stream, *m.group, seq, pending, now);
      return true;
    });
  }

  void Wake(const Membership& m) {
    std::unique_lock lock(mu_);
    NotifyLocked(*m.stream, /*always=*/true);
  }

  // StreamInspector, over the same state. Streams are created by first use (publish or
  // subscribe), so a stream that was only named exists, empty.
  std::vector<std::string> ListStreams() {
    std::unique_lock lock(mu_);
    std::vector<std::string> names;
    names.reserve(streams_.size());
    for (const auto& [name, stream] : streams_) names.push_back(name);
    std::sort(names.begin(), names.end());
    return names;
  }

  absl::StatusOr<StreamInfo> Describe(absl::string_view name) {
    std::string oldest_encoded;
    StreamInfo info;
    std::vector<std::pair<size_t, std::string>> oldest_pending;  // group index, encoded event
    {
      std::unique_lock lock(mu_);
      auto it = streams_.find(name);
      if (it == streams_.end()) {
        return absl::NotFoundError(absl::StrCat("memory stream ", name, " does not exist"));
      }
      Stream& stream = it->second;
      info.name = std::string(name);
      info.length = static_cast<int64_t>(stream.entries.size() - stream.deleted);
      // Entries removed by Delete are rare (a DLQ purge): skip them only when there are some.
      auto live = [&](uint64_t seq) { return stream.deleted == 0 || !stream.Find(seq)->deleted; };
      for (uint64_t seq = stream.first_seq(); seq < stream.next_seq; ++seq) {
        if (live(seq)) {
          info.first_id = absl::StrCat(seq);
          break;
        }
      }
      for (uint64_t seq = stream.next_seq; seq > stream.first_seq(); --seq) {
        if (live(seq - 1)) {
          info.last_id = absl::StrCat(seq - 1);
          break;
        }
      }
      for (auto& [group_name, group] : stream.groups) {
        ConsumerGroupInfo& out = info.groups.emplace_back();
        out.name = group_name;
        for (const auto& [consumer, id] : group.consumer_ids) out.consumers.push_back(consumer);
        std::sort(out.consumers.begin(), out.consumers.end());
        out.pending = static_cast<int64_t>(group.pending.size());
        const uint64_t from = std::max(group.next_seq, stream.first_seq());
        int64_t lag = static_cast<int64_t>(stream.next_seq - from);
        if (stream.deleted > 0) {
          for (uint64_t seq = from; seq < stream.next_seq; ++seq) lag -= !live(seq);
        }
        out.lag = lag;
        if (!group.pending.empty()) {
          const Entry* entry = stream.Find(group.pending.first_seq());
          if (entry != nullptr) {
            oldest_pending.emplace_back(info.groups.size() - 1,
                                        std::string(entry->encoded.data(), entry->encoded.size()));
          }
        }
      }
    }
    for (auto& [index, encoded] : oldest_pending) {
      Event event;
      if (EventCodec::Decode(encoded, event)) {
        info.groups[index].oldest_pending_published_at = EventTime(event);
      }
    }
    return info;
  }

  // Memory cursors are the sequence number of the last event read ("0": before the first).
  absl::StatusOr<ReadPage> Read(absl::string_view name, absl::string_view after_id,
                                int max_events) {
    uint64_t after = 0;
    if (!after_id.empty() && !absl::SimpleAtoi(after_id, &after)) {
      return absl::InvalidArgumentError(
          absl::StrCat("\"", after_id, "\" is not a memory stream cursor (a sequence number)"));
    }
    std::vector<std::pair<uint64_t, std::string>> encoded;
    {
      std::unique_lock lock(mu_);
      auto it = streams_.find(name);
      if (it == streams_.end()) {
        return absl::NotFoundError(absl::StrCat("memory stream ", name, " does not exist"));
      }
      Stream& stream = it->second;
      for (uint64_t seq = std::max(after + 1, stream.first_seq());
           seq < stream.next_seq && static_cast<int>(encoded.size()) < max_events; ++seq) {
        const Entry* entry = stream.Find(seq);
        if (entry->deleted) continue;
        encoded.emplace_back(seq, std::string(entry->encoded.data(), entry->encoded.size()));
      }
    }
    ReadPage page;
    page.events.resize(encoded.size());
    for (size_t i = 0; i < encoded.size(); ++i) {
      page.events[i].id = absl::StrCat(encoded[i].first);
      // Cannot fail: AppendLocked encoded these bytes.
      const bool decoded = EventCodec::Decode(encoded[i].second, page.events[i].event);
      assert(decoded);
      (void)decoded;
    }
    page.next_cursor = encoded.empty() ? absl::StrCat(after) : page.events.back().id;
    return page;
  }

  absl::StatusOr<std::string> EndCursor(absl::string_view name) {
    std::unique_lock lock(mu_);
    auto it = streams_.find(name);
    if (it == streams_.end()) {
      return absl::NotFoundError(absl::StrCat("memory stream ", name, " does not exist"));
    }
    return absl::StrCat(it->second.next_seq - 1);
  }

  absl::StatusOr<int64_t> Delete(absl::string_view name, absl::Span<const std::string> ids) {
    std::unique_lock lock(mu_);
    auto it = streams_.find(name);
    if (it == streams_.end()) return 0;
    Stream& stream = it->second;
    int64_t removed = 0;
    for (const std::string& id : ids) {
      uint64_t seq = 0;
      if (!absl::SimpleAtoi(id, &seq)) continue;
      Entry* entry = stream.Find(seq);
      if (entry == nullptr || entry->deleted) continue;
      entry->deleted = true;
      entry->fresh.reset();
      ++stream.deleted;
      ++removed;
      // A pending delivery of it settles: nobody can act on a removed event.
      for (auto& [group_name, group] : stream.groups) group.pending.Erase(seq);
    }
    return removed;
  }

 private:
  // Our ids are the decimal sequence number (see LeaseLocked); anything else is 0, which no
  // entry has.
  static uint64_t delivery_seq(const Delivery& delivery) {
    const std::string& id = delivery.id;
    if (id.empty() || id.size() > 19) return 0;  // 19 digits cannot overflow
    uint64_t seq = 0;
    for (char c : id) {
      if (c < '0' || c > '9') return 0;
      seq = seq * 10 + static_cast<uint64_t>(c - '0');
    }
    return seq;
  }

  // Only when someone waits: a publish nobody waits for costs no futex call, and a burst of
  // publishes while the consumer is still waking costs one.
  void NotifyLocked(Stream& stream, bool always = false) {
    if (stream.waiting == 0 && !always) return;
    stream.waiting = 0;
    ++stream.notify_epoch;
    stream.changed.notify_all();
  }

  void WaitLocked(Stream& stream, std::unique_lock<std::mutex>& lock, absl::Duration timeout) {
    const uint64_t epoch = stream.notify_epoch;
    ++stream.waiting;
    stream.changed.wait_for(lock, absl::ToChronoNanoseconds(timeout));
    if (stream.notify_epoch == epoch) --stream.waiting;  // timed out: nobody counted us off
  }

  // The retention bound counts the encoded size, which is what the stream really keeps (within
  // a few dozen bytes of EventSizeBytes, whose ByteSizeLong pass cost a tenth of a publish).
  static Incoming Prepare(Event& event) {
    return Incoming{&event, EventCodec::EncodedSize(event)};
  }

  // An empty Event to hold a published one until its first delivery: one emptied by an earlier
  // first delivery when there is one, since allocating, constructing and destroying a message
  // per publish cost as much as the backend's bookkeeping.
  std::unique_ptr<Event> TakeShellLocked() {
    if (shells_.empty()) return std::make_unique<Event>();
    std::unique_ptr<Event> shell = std::move(shells_.back());
    shells_.pop_back();
    return shell;
  }

  absl::StatusOr<PublishReceipt> AppendLocked(absl::string_view stream_name,
                                              const Incoming& incoming) {
    Stream& stream = streams_[stream_name];
    const size_t bytes = incoming.encoded_size;
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
    stream.encoded.Release(stream.first_seq());
    char* encoded = stream.encoded.Allocate(seq, incoming.encoded_size);
    EventCodec::Encode(*incoming.event, encoded);
    std::unique_ptr<Event> fresh = TakeShellLocked();
    fresh->Swap(incoming.event);
    stream.entries.push_back(
        Entry{seq, absl::string_view(encoded, incoming.encoded_size), std::move(fresh), bytes});
    stream.bytes += bytes;
    NotifyLocked(stream);
    return PublishReceipt{std::string(stream_name), absl::StrCat(seq)};
  }

  // The sequence number of `delivery` when this consumer still holds it.
  absl::StatusOr<uint64_t> FindHeldLocked(const SubscribeOptions& options, const Membership& m,
                                          const Delivery& delivery) {
    const uint64_t seq = delivery_seq(delivery);
    const Pending* pending = m.group->pending.Find(seq);
    if (pending == nullptr || pending->consumer != m.consumer ||
        pending->generation != delivery.token) {
      return absl::FailedPreconditionError(absl::StrCat(
          "delivery ", delivery.id, " of ", options.stream, " is no longer held by consumer ",
          options.consumer, " (settled, reclaimed by another consumer, or its lease expired)"));
    }
    return seq;
  }

  void AddLeaseLocked(Group& group, absl::Time expiry, uint64_t seq) {
    // Compaction: every live element has its own pending entry, so after it the heap holds at
    // most pending.size() elements and the next one is pending.size() + 1024 pushes away.
    if (group.leases.size() > 2 * group.pending.size() + 1024) {
      std::erase_if(group.leases, [&](const LeaseRef& lease) { return IsStale(group, lease); });
      std::make_heap(group.leases.begin(), group.leases.end(), std::greater<>());
    }
    group.leases.push_back(LeaseRef{expiry, seq});
    std::push_heap(group.leases.begin(), group.leases.end(), std::greater<>());
  }

  static bool IsStale(Group& group, const LeaseRef& lease) {
    const Pending* pending = group.pending.Find(lease.seq);
    return pending == nullptr || pending->consumer == 0 || pending->lease_expiry != lease.expiry;
  }

  void LeaseLocked(const SubscribeOptions& options, const Membership& m, uint64_t seq,
                   Entry& entry, Pending& pending, absl::Time now, Batch& out) {
    pending.consumer = m.consumer;
    pending.delivery_count++;
    if (pending.delivery_count == 1) pending.first_delivery_time = now;
    pending.last_touch = now;
    pending.lease_expiry = absl::InfiniteFuture();
    if (options.ack_wait > absl::ZeroDuration()) {
      pending.lease_expiry = now + options.ack_wait;
      AddLeaseLocked(*m.group, pending.lease_expiry, seq);
    }
    pending.generation = next_generation_++;

    Delivery& delivery = out.deliveries.emplace_back();
    if (entry.fresh != nullptr) {
      delivery.event.Swap(entry.fresh.get());
      // The emptied object holds a later published event.
      if (shells_.size() < kMaxShells) shells_.push_back(std::move(entry.fresh));
      entry.fresh.reset();
    } else {
      out.to_decode.emplace_back(out.deliveries.size() - 1,
                                 std::string(entry.encoded.data(), entry.encoded.size()));
    }
    delivery.stream = options.stream;
    delivery.id = absl::StrCat(seq);
    delivery.delivery_count = pending.delivery_count;
    delivery.failed_attempts = pending.failed_attempts;
    delivery.first_delivery_time = pending.first_delivery_time;
    delivery.token = pending.generation;
  }

  void ReturnLocked(Stream& stream, Group& group, uint64_t seq, Pending& pending,
                    absl::Time visible_at) {
    pending.consumer = 0;
    pending.visible_at = visible_at;
    pending.lease_expiry = absl::InfiniteFuture();
    pending.generation = next_generation_++;
    group.returned.emplace(visible_at, seq);
    NotifyLocked(stream);
  }

  void ExpireLeasesLocked(Stream& stream, Group& group, absl::Time now) {
    while (!group.leases.empty() && group.leases.front().expiry <= now) {
      std::pop_heap(group.leases.begin(), group.leases.end(), std::greater<>());
      const LeaseRef lease = group.leases.back();
      group.leases.pop_back();
      if (!IsStale(group, lease)) {
        ReturnLocked(stream, group, lease.seq, *group.pending.Find(lease.seq), now);
      }
    }
  }

  void TakeReturnedLocked(const SubscribeOptions& options, const Membership& m, absl::Time now,
                          int max_events, Batch& out) {
    Group& group = *m.group;
    while (!group.returned.empty() && out.size() < max_events) {
      auto [visible_at, seq] = *group.returned.begin();
      if (visible_at > now) break;
      group.returned.erase(group.returned.begin());
      Pending* pending = group.pending.Find(seq);
      // Stale: settled or re-leased (reclaimed) since it was returned.
      if (pending == nullptr || pending->consumer != 0 || pending->visible_at != visible_at) {
        continue;
      }
      Entry* entry = m.stream->Find(seq);
      if (entry == nullptr || entry->deleted) {
        group.pending.Erase(seq);
        continue;
      }
      LeaseLocked(options, m, seq, *entry, *pending, now, out);
    }
  }

  void TakeNewLocked(const SubscribeOptions& options, const Membership& m, absl::Time now,
                     int max_events, Batch& out) {
    Stream& stream = *m.stream;
    Group& group = *m.group;
    group.next_seq = std::max(group.next_seq, stream.first_seq());
    while (group.next_seq < stream.next_seq && out.size() < max_events) {
      const uint64_t seq = group.next_seq++;
      if (stream.deleted > 0 && stream.Find(seq)->deleted) continue;
      Pending& pending = group.pending.Add(seq);
      LeaseLocked(options, m, seq, *stream.Find(seq), pending, now, out);
    }
  }

  // When the next returned entry becomes visible or the next lease expires (possibly a stale
  // index element: waking early for it is harmless).
  absl::Time NextDueLocked(const Group& group) const {
    absl::Time due = absl::InfiniteFuture();
    if (!group.returned.empty()) due = group.returned.begin()->first;
    if (!group.leases.empty()) due = std::min(due, group.leases.front().expiry);
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
        PopFrontLocked(stream);
      }
      return;
    }
    uint64_t low = stream.next_seq;
    for (const auto& [name, group] : stream.groups) {
      low = std::min(low, group.next_seq);
      if (!group.pending.empty()) low = std::min(low, group.pending.first_seq());
    }
    while (!stream.entries.empty() && stream.entries.front().seq < low) PopFrontLocked(stream);
  }

  static void PopFrontLocked(Stream& stream) {
    stream.bytes -= stream.entries.front().bytes;
    if (stream.entries.front().deleted) --stream.deleted;
    stream.entries.pop_front();
  }

  Clock* const clock_;
  const MemoryOptions options_;
  // std::mutex, not absl::Mutex: Debian's Abseil is not built for ThreadSanitizer, which then
  // cannot see absl::Mutex's synchronisation and reports false races.
  std::mutex mu_;  // guards everything below, and every Stream and Group reached from it
  // Node-based: Stream references stay valid while another stream is created.
  absl::node_hash_map<std::string, Stream> streams_;
  uint64_t next_generation_ = 1;
  static constexpr size_t kMaxShells = 4096;
  std::vector<std::unique_ptr<Event>> shells_;  // empty Events, see TakeShellLocked
  // Last: unregistered first on destruction, so the callback never sees a dying State.
  std::unique_ptr<ClockListener> advance_listener_;
};

class MemorySubscription final : public Subscription {
 public:
  MemorySubscription(std::shared_ptr<State> state, SubscribeOptions options)
      : state_(std::move(state)), options_(std::move(options)),
        membership_(state_->Join(options_)) {}
  ~MemorySubscription() override { Close().IgnoreError(); }

  absl::StatusOr<std::vector<Delivery>> Fetch(int max_events, absl::Duration wait) override {
    EVENTBUS_RETURN_IF_ERROR(CheckOpen());
    if (max_events <= 0) return absl::InvalidArgumentError("max_events must be positive");
    return state_->Fetch(options_, membership_, max_events, wait, &closed_);
  }
  absl::Status Ack(const Delivery& delivery) override {
    EVENTBUS_RETURN_IF_ERROR(CheckOpen());
    return state_->Ack(options_, membership_, delivery);
  }
  using Subscription::Nack;
  absl::Status Nack(const Delivery& delivery, absl::Duration delay, NackKind kind) override {
    EVENTBUS_RETURN_IF_ERROR(CheckOpen());
    return state_->Nack(options_, membership_, delivery, delay, kind);
  }
  absl::Status Extend(const Delivery& delivery) override {
    EVENTBUS_RETURN_IF_ERROR(CheckOpen());
    return state_->Extend(options_, membership_, delivery);
  }
  absl::StatusOr<std::vector<Delivery>> Reclaim(absl::Duration min_idle, int max_events) override {
    EVENTBUS_RETURN_IF_ERROR(CheckOpen());
    if (max_events <= 0) return absl::InvalidArgumentError("max_events must be positive");
    return state_->Reclaim(options_, membership_, min_idle, max_events);
  }
  absl::Status DeadLetter(const Delivery& delivery, absl::string_view reason) override {
    EVENTBUS_RETURN_IF_ERROR(CheckOpen());
    return state_->DeadLetter(options_, membership_, delivery, reason);
  }
  absl::Status Close() override {
    if (closed_.exchange(true)) return absl::OkStatus();
    state_->Release(membership_);
    state_->Wake(membership_);  // a Fetch blocked on this subscription returns
    return absl::OkStatus();
  }

 private:
  absl::Status CheckOpen() const {
    if (closed_) return absl::FailedPreconditionError("subscription is closed");
    return absl::OkStatus();
  }

  std::shared_ptr<State> state_;
  const SubscribeOptions options_;
  const Membership membership_;
  std::atomic<bool> closed_{false};
};

class MemoryInspector final : public StreamInspector {
 public:
  explicit MemoryInspector(State* state) : state_(state) {}

  absl::StatusOr<std::vector<std::string>> ListStreams() override {
    return state_->ListStreams();
  }
  absl::StatusOr<StreamInfo> Describe(absl::string_view stream) override {
    return state_->Describe(stream);
  }
  absl::StatusOr<ReadPage> Read(absl::string_view stream, absl::string_view cursor,
                                int max_events) override {
    if (max_events <= 0) return absl::InvalidArgumentError("max_events must be positive");
    return state_->Read(stream, cursor, max_events);
  }
  absl::StatusOr<std::string> EndCursor(absl::string_view stream) override {
    return state_->EndCursor(stream);
  }
  absl::StatusOr<int64_t> Delete(absl::string_view stream,
                                 absl::Span<const std::string> ids) override {
    return state_->Delete(stream, ids);
  }

 private:
  State* state_;
};

class MemoryEventStream final : public EventStream {
 public:
  MemoryEventStream(Clock* clock, MemoryOptions options)
      : state_(std::make_shared<State>(clock, options)), inspector_(state_.get()) {}

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
    caps.inspection = true;
    return caps;
  }
  StreamInspector* inspector() override { return &inspector_; }
  absl::Status Flush(absl::Duration) override { return absl::OkStatus(); }
  absl::StatusOr<std::unique_ptr<Subscription>> Subscribe(const SubscribeOptions& options) override {
    EVENTBUS_RETURN_IF_ERROR(ValidateSubscribeOptions(options));
    return std::unique_ptr<Subscription>(new MemorySubscription(state_, options));
  }
  absl::Status Ping(absl::Duration) override { return absl::OkStatus(); }
  Clock* clock() const override { return state_->clock(); }

 protected:
  absl::Status DoPublish(absl::string_view stream, Event event, PublishCallback done) override {
    absl::StatusOr<PublishReceipt> receipt = state_->Append(stream, event);
    if (!receipt.ok()) return receipt.status();
    done(std::move(receipt));
    return absl::OkStatus();
  }

 private:
  std::shared_ptr<State> state_;
  MemoryInspector inspector_;
};

}  // namespace

std::unique_ptr<EventStream> NewMemoryEventStream(Clock* clock, MemoryOptions options) {
  return std::make_unique<MemoryEventStream>(clock != nullptr ? clock : Clock::Real(), options);
}

absl::StatusOr<MemoryOptions> MemoryOptionsFromConfig(const BackendConfig& config) {
  MemoryOptions options;
  OptionReader reader(kBackendName, kOptionEnvPrefix, config.options);
  reader.Int("max.stream.events", 1, int64_t{1} << 40, &options.max_stream_events);
  reader.Size("max.stream.bytes", 1, uint64_t{1} << 40, &options.max_stream_bytes);
  EVENTBUS_RETURN_IF_ERROR(reader.Finish());
  if (!config.url.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the memory backend takes no URL, got \"", RedactUrl(config.url), "\""));
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
  registration.option_env_prefix = std::string(kOptionEnvPrefix);
  registration.factory =
      [](const BackendConfig& config) -> absl::StatusOr<std::unique_ptr<EventStream>> {
    EVENTBUS_ASSIGN_OR_RETURN(MemoryOptions options, MemoryOptionsFromConfig(config));
    return NewMemoryEventStream(config.clock, options);
  };
  registration.check_config = [](const BackendConfig& config) {
    return MemoryOptionsFromConfig(config).status();
  };
  absl::Status status = registry.Register(std::move(registration));
  if (absl::IsAlreadyExists(status)) return absl::OkStatus();  // lost a race: same outcome
  return status;
}

}  // namespace eventbus::memory
