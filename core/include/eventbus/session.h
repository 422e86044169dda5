#pragma once
// Conveniences over the contract that keep it explicit: a StreamSession owns a stream and the
// subscriptions made through it (closed in the right order), and ConsumeLoop runs the
// fetch / handle / settle cycle with the outcome the handler chose.
//
//   EVENTBUS_ASSIGN_OR_RETURN(eventbus::StreamSession session,
//                             eventbus::StreamSession::FromEnvironment());
//   EVENTBUS_ASSIGN_OR_RETURN(eventbus::Subscription* sub,
//                             session.Subscribe({.stream = "orders", .group = "billing",
//                                                .consumer = "billing-1"}));
//   EVENTBUS_RETURN_IF_ERROR(session->PublishAndWait("orders", eventbus::MakeEvent(...)).status());
//   EVENTBUS_RETURN_IF_ERROR(eventbus::ConsumeLoop(*sub, {.max_deliveries = 1},
//       [](const eventbus::Delivery& d) { return eventbus::Settle::Ack(); }));

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "eventbus/event_stream.h"
#include "eventbus/registry.h"

#pragma GCC visibility push(default)

namespace eventbus {

// An EventStream and the subscriptions made through it. Destroying (or closing) it closes the
// subscriptions first, newest first, then destroys the stream: subscriptions of some backends
// use their stream's connection. Movable, not copyable. Not thread-safe itself: Subscribe and
// Close from one thread at a time; the stream and subscriptions keep their own guarantees.
class StreamSession {
 public:
  explicit StreamSession(std::unique_ptr<EventStream> stream);
  StreamSession(StreamSession&&) noexcept;
  StreamSession& operator=(StreamSession&&) noexcept;
  ~StreamSession();

  // registry.Create(type, config): InvalidArgument naming the registered types when unknown.
  static absl::StatusOr<StreamSession> Open(absl::string_view type, BackendConfig config = {},
                                            const BackendRegistry& registry =
                                                BackendRegistry::Global());
  // registry.CreateFromEnvironment(env, clock): the backend EVENT_STREAM_TYPE names.
  static absl::StatusOr<StreamSession> FromEnvironment(
      const Environment& env = ProcessEnvironment(), Clock* clock = nullptr,
      const BackendRegistry& registry = BackendRegistry::Global());

  // The stream: session->Publish(...), session.stream().Flush(...).
  EventStream& stream() const { return *stream_; }
  EventStream* operator->() const { return stream_.get(); }

  // Subscribes and waits until the subscription is ready (Subscription::WaitReady) for at
  // most `ready_timeout`. The session owns the subscription; the pointer stays valid until
  // Close or destruction. Errors: those of Subscribe and WaitReady (the subscription is closed
  // and dropped then); FailedPrecondition after Close.
  absl::StatusOr<Subscription*> Subscribe(const SubscribeOptions& options,
                                          absl::Duration ready_timeout = kDefaultReadyTimeout);

  // Closes every subscription, newest first; returns the first error. The stream stays usable
  // for publishing until the session is destroyed; Subscribe fails afterwards.
  absl::Status Close();

 private:
  std::unique_ptr<EventStream> stream_;
  std::vector<std::unique_ptr<Subscription>> subscriptions_;
  bool closed_ = false;
};

// What to do with a delivery, chosen by a ConsumeLoop handler.
struct Settle {
  enum class Kind { kAck, kNack, kDeadLetter };
  static Settle Ack() { return {Kind::kAck}; }
  static Settle Nack(absl::Duration delay = absl::ZeroDuration()) { return {Kind::kNack, delay}; }
  static Settle DeadLetter(std::string reason) {
    return {Kind::kDeadLetter, absl::ZeroDuration(), std::move(reason)};
  }

  Kind kind = Kind::kAck;
  absl::Duration delay = absl::ZeroDuration();  // kNack
  std::string reason;                           // kDeadLetter
};

struct ConsumeOptions {
  int max_events = 64;                        // per Fetch
  absl::Duration wait = absl::Seconds(1);     // per Fetch, and so between two stop() checks
  int64_t max_deliveries = 0;                 // return after this many settled; 0 = no limit
  std::function<bool()> stop;                 // checked before every Fetch; true = return OK
};

using DeliveryHandler = std::function<Settle(const Delivery&)>;

// Fetch, hand each delivery to `handler`, settle it as the handler says (Ack, Nack(delay) or
// DeadLetter(reason), synchronously), until options.stop() or options.max_deliveries. A
// settle that finds the delivery no longer held (NotFound, FailedPrecondition: taken over by
// another consumer) is skipped, as at-least-once allows. Runs on the calling thread.
// Errors: the first Fetch error (FailedPrecondition once the subscription is closed) or settle
// error other than those; InvalidArgument for max_events < 1.
absl::Status ConsumeLoop(Subscription& subscription, const ConsumeOptions& options,
                         const DeliveryHandler& handler);

}  // namespace eventbus

#pragma GCC visibility pop
