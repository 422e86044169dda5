#pragma once
// The EventStream contract every backend implements and everything above (the executor, user
// code) is written against. Guarantee: at-least-once delivery per consumer group.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "eventbus/event.h"

#pragma GCC visibility push(default)

namespace eventbus {

class Clock;
class StreamInspector;

// What a backend guarantees. The conformance suite runs a case only when the backend declares
// what the case needs (as Watermill's Features do); declare only what the backend really keeps.
struct Capabilities {
  // Group progress and unacknowledged events survive the EventStream object (a new instance,
  // a process restart, a server restart).
  bool persistent = false;
  // Events with the same key are delivered in publish order, and no later event of a key is
  // delivered (to any consumer of the group) while an earlier one is unsettled: per-key
  // processing order, as Kafka's ordering mode and Confluent's Parallel Consumer give it.
  bool ordered_per_key = false;
  // Duplicates may be delivered even when no consumer fails (e.g. rebalances); when false,
  // concurrent consumers of a group see every event exactly once absent failures.
  bool duplicates_possible = false;
  // Nack(delay) is kept by the server, so the delay survives the nacking consumer's death.
  bool native_delay = false;
  // Reclaim() takes deliveries held by other consumers of the group; when false the backend
  // only redelivers what its own consumers lose (expired local leases, rebalances).
  bool reclaim_from_other_consumers = true;
  // DeadLetter() writes the dead letter and acknowledges the original in one atomic step.
  bool atomic_dead_letter = false;
  // The largest event (EventSizeBytes) Publish accepts.
  size_t max_event_bytes = 1 << 20;
  // Publish de-duplication by event id: a publish to a stream of an event whose id that stream
  // already stored less than this long ago (by any producer, on the server's clock) is
  // confirmed with the stored event's receipt and not stored again; the first event is kept.
  // Makes retrying an uncertain publish safe within the window (NATS JetStream: Nats-Msg-Id
  // and the stream's duplicate window). Zero = none: every successful publish is stored, so a
  // retried publish may reach consumers twice.
  absl::Duration publish_dedupe_window = absl::ZeroDuration();
  // inspector() is not null (stream_inspector.h).
  bool inspection = false;
};

// Header (CloudEvents extension) names a dead letter carries besides the original event.
inline constexpr absl::string_view kDlqReasonHeader = "dlqreason";
inline constexpr absl::string_view kDlqOriginStreamHeader = "dlqoriginstream";
inline constexpr absl::string_view kDlqOriginIdHeader = "dlqoriginid";
inline constexpr absl::string_view kDlqOriginGroupHeader = "dlqorigingroup";
inline constexpr absl::string_view kDlqDeliveryCountHeader = "dlqdeliverycount";
inline constexpr absl::string_view kDlqStreamSuffix = ".dlq";

// Why a delivery is given back: only a failed attempt counts towards a retry limit
// (Delivery::failed_attempts); a give-back does not.
enum class NackKind {
  // Nothing failed: not run (shutdown, fetched too late), asked for a later redelivery (the
  // executor's `wait`), or its outcome could not be recorded (result not published).
  kGiveBack,
  // The attempt ran and failed: failed_attempts of the redelivery is one more.
  kFailed,
};

// One delivery of an event to one consumer. Pass it back unchanged to Ack/Nack/DeadLetter.
struct Delivery {
  Event event;
  std::string stream;
  // The backend's id of this event in `stream` (Redis entry id, Kafka "partition:offset",
  // NATS stream sequence, memory sequence). Stable across redeliveries.
  std::string id;
  // 1 on first delivery, incremented by every redelivery (nack of any kind, reclaim, lease
  // expiry): what bounds a poison event that crashes its consumers.
  int delivery_count = 1;
  // Attempts that failed before this delivery: Nacks with NackKind::kFailed, carried with the
  // event across redeliveries, reclaims by other consumers and restarts (as far as the backend
  // keeps unsettled events, see Capabilities::persistent). Give-backs, reclaims and lease
  // expiries do not count. What a retry policy counts.
  int failed_attempts = 0;
  // When the group first received it (as precisely as the backend can tell).
  absl::Time first_delivery_time = absl::InfinitePast();
  // Backend-private: lease generation / assignment epoch, so a stale handle cannot ack a
  // delivery that has since been given to someone else.
  uint64_t token = 0;
};

struct SubscribeOptions {
  std::string stream;
  std::string group;     // consumers of one group share the work
  std::string consumer;  // unique within the group
  // Where DeadLetter() writes; empty = stream + ".dlq".
  std::string dead_letter_stream;
  // A new group starts at the oldest retained event (true) or only sees new ones (false).
  bool start_from_oldest = true;
  // A delivery not acked, nacked or extended within this time may be redelivered by backends
  // with automatic redelivery (NATS AckWait, Kafka local lease, memory when set). Zero = held
  // until the consumer settles it, closes, or another consumer reclaims it.
  absl::Duration ack_wait = absl::ZeroDuration();
};

// Receives the outcome of an asynchronous settle (AckAsync, NackAsync, DeadLetterAsync).
// Called exactly once, on a backend thread or inline; it must not block, and must not call
// the synchronous methods of the same subscription (hop to a thread of your own for that).
using SettleCallback = std::function<void(absl::Status)>;

// How long Subscription::WaitReady waits unless told otherwise.
inline constexpr absl::Duration kDefaultReadyTimeout = absl::Seconds(30);

// A consumer's membership in a group. Destroying it closes it.
// Thread-safety: Fetch and Reclaim from one thread at a time; Ack, Nack, DeadLetter, Extend and
// the *Async methods from any thread, concurrently with Fetch.
class Subscription {
 public:
  virtual ~Subscription() = default;

  // Readiness: waits until this consumer receives what is published from now on, so a caller
  // can publish (or report itself ready) knowing the subscription will see it, also when the
  // group starts at the newest event (start_from_oldest = false). Per backend:
  //   Kafka: the group has assigned this consumer its partitions (possibly none: then a
  //          warning is logged, the group has more consumers than partitions) and their start
  //          offsets are resolved;
  //   Redis: the group exists (created by Subscribe); NATS: the durable consumer is bound
  //          (by Subscribe); memory: at once.
  // Measured in real time (a rebalance happens on the broker's clock). Thread-safe, may be
  // called any number of times. Errors: DeadlineExceeded naming what was not ready within
  // `timeout`; FailedPrecondition (closed) where the backend waits at all.
  absl::Status WaitReady(absl::Duration timeout = kDefaultReadyTimeout) {
    return DoWaitReady(timeout);
  }

  // Blocks until at least one event is available or `wait` has passed; returns up to
  // `max_events` (possibly none). Events that arrive on the wire malformed (not a valid
  // envelope) are dead-lettered by the backend with a reason and never returned.
  // Errors: Unavailable (transient, retry), FailedPrecondition (closed), InvalidArgument.
  virtual absl::StatusOr<std::vector<Delivery>> Fetch(int max_events, absl::Duration wait) = 0;

  // Done: never delivered to this group again (barring crashes: at-least-once).
  // Errors: NotFound/FailedPrecondition when the delivery is no longer held by this consumer
  // (reclaimed by another, lease expired, partition revoked); Unavailable.
  virtual absl::Status Ack(const Delivery& delivery) = 0;

  // Gives it back, redelivered (delivery_count + 1) no earlier than `delay` from now; with
  // NackKind::kFailed the redelivery's failed_attempts is this one's + 1, else unchanged.
  virtual absl::Status Nack(const Delivery& delivery, absl::Duration delay, NackKind kind) = 0;
  // A give-back (NackKind::kGiveBack).
  absl::Status Nack(const Delivery& delivery, absl::Duration delay) {
    return Nack(delivery, delay, NackKind::kGiveBack);
  }

  // Tells the backend the handler is still working, restarting the idle time that Reclaim
  // and ack_wait measure.
  virtual absl::Status Extend(const Delivery& delivery) = 0;

  // Takes over up to `max_events` deliveries of this group that have been unsettled for at
  // least `min_idle` (typically held by a dead consumer) and returns them to this consumer,
  // each with its delivery count increased.
  virtual absl::StatusOr<std::vector<Delivery>> Reclaim(absl::Duration min_idle,
                                                        int max_events) = 0;

  // Moves the delivery to the dead-letter stream (the original event plus kDlq* headers) and
  // acknowledges the original, atomically where Capabilities::atomic_dead_letter.
  virtual absl::Status DeadLetter(const Delivery& delivery, absl::string_view reason) = 0;

  // Asynchronous settling, for consumers that must not wait for one round trip per event:
  // each call queues the operation and returns at once; the backend batches what is queued
  // (Redis: one XACK for many entries; Kafka: offsets stored in memory, committed
  // periodically and on revoke) and calls `done` once with the outcome. Operations on one
  // delivery take effect in call order. After Close, `done` gets FailedPrecondition.
  //
  // AckAsync may acknowledge a copy of the event that another consumer took over since this
  // delivery (a batched ack does not check ownership per entry): the work is done, and the
  // other consumer's duplicate is saved. `done` gets OK also when the entry was already
  // acknowledged.
  //
  // The defaults run the synchronous method inline; backends override them to batch.
  virtual void AckAsync(const Delivery& delivery, SettleCallback done);
  virtual void NackAsync(const Delivery& delivery, absl::Duration delay, NackKind kind,
                         SettleCallback done);
  // A give-back (NackKind::kGiveBack).
  void NackAsync(const Delivery& delivery, absl::Duration delay, SettleCallback done) {
    NackAsync(delivery, delay, NackKind::kGiveBack, std::move(done));
  }
  virtual void DeadLetterAsync(const Delivery& delivery, absl::string_view reason,
                               SettleCallback done);

  // Leaves the group. Deliveries still held stay with the group: they are redelivered to
  // another consumer (at once, or by Reclaim / ack_wait, depending on the backend) and never
  // lost. Idempotent; after it returns, every other method fails with FailedPrecondition.
  virtual absl::Status Close() = 0;

 protected:
  // WaitReady. The default returns OK at once: right for backends whose Subscribe returns
  // only once the consumer is bound (memory, Redis, NATS).
  virtual absl::Status DoWaitReady(absl::Duration timeout) { return absl::OkStatus(); }
};

// Result of a publish: the backend's id of the stored event.
struct PublishReceipt {
  std::string stream;
  std::string id;
};

using PublishCallback = std::function<void(absl::StatusOr<PublishReceipt>)>;

// A connection to one backend. Thread-safe: every method may be called from any thread.
class EventStream {
 public:
  virtual ~EventStream() = default;

  virtual absl::string_view backend_name() const = 0;
  virtual Capabilities capabilities() const = 0;

  // Asynchronous publish: normalizes the envelope (NormalizeForPublish), queues it (batched
  // underneath) and calls `done` once, on a backend thread or inline, when the event is durable
  // or failed. Errors through `done` or returned at once: InvalidArgument (bad envelope, too
  // large), ResourceExhausted (queue or memory full), Unavailable, FailedPrecondition (closed).
  absl::Status Publish(absl::string_view stream, Event event, PublishCallback done = nullptr);

  // Publishes and waits for the outcome.
  absl::StatusOr<PublishReceipt> PublishAndWait(absl::string_view stream, Event event,
                                                absl::Duration timeout = absl::Seconds(30));

  // Waits until every publish queued before the call completed. DeadlineExceeded on timeout.
  virtual absl::Status Flush(absl::Duration timeout) = 0;

  // Joins `options.group` (creating it when needed) as `options.consumer`.
  // Errors: InvalidArgument (empty names), Unavailable, FailedPrecondition (closed).
  virtual absl::StatusOr<std::unique_ptr<Subscription>> Subscribe(
      const SubscribeOptions& options) = 0;

  // Readiness: OK when the backend answers within `timeout`.
  virtual absl::Status Ping(absl::Duration timeout) = 0;

  // The clock this stream measures delays, leases and idle times with.
  virtual Clock* clock() const = 0;

  // Reads streams and groups for operator tools (stream_inspector.h); null when the backend
  // does not implement it. Owned by the stream, valid as long as it is.
  virtual StreamInspector* inspector() { return nullptr; }

 protected:
  // Called with a normalized envelope; `done` is never null.
  virtual absl::Status DoPublish(absl::string_view stream, Event event, PublishCallback done) = 0;
};

// Checks names used for streams, groups and consumers: non-empty, at most 200 bytes, no
// whitespace or control characters. `what` names the setting in the error.
absl::Status ValidateName(absl::string_view what, absl::string_view name);

// stream + ".dlq" unless options.dead_letter_stream is set.
std::string DeadLetterStreamName(const SubscribeOptions& options);

// Validates stream/group/consumer of `options`.
absl::Status ValidateSubscribeOptions(const SubscribeOptions& options);

// The dead letter for `delivery`: the original event with the kDlq* headers set. The reason is
// made valid UTF-8 (C-escaped when it is not) and cut to 4 KiB, so the dead letter passes
// ValidateEnvelope whatever text the reason carries.
Event MakeDeadLetter(const Delivery& delivery, absl::string_view group, absl::string_view reason);

}  // namespace eventbus

#pragma GCC visibility pop
