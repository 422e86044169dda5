// The conformance suite's own test: backends with one deliberate bug each, which the suite's
// failure cases must catch (CMakeLists.txt runs each case on its double and requires that it
// FAILS), and the same double without a bug, which must pass the whole suite (so a failure
// above comes from the bug, not from the double or its hooks).
//
// Each double wraps one memory stream on a virtual clock; every make_stream() shares it, so
// the doubles are "persistent" and the restart / cut cases run on them. They all declare
// publish de-duplication, which they add on top of memory (which has none).

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "eventbus/clock.h"
#include "eventbus/conformance/conformance.h"
#include "eventbus/memory/memory_event_stream.h"

namespace eventbus::conformance {
namespace {

enum class Flaw {
  kNone,
  // Reclaim takes the deliveries of a crashed consumer and drops them (acks them) instead of
  // handing them out.
  kForgetsRedeliveryAfterCrash,
  // Nack(delay) makes the event visible again after three quarters of the delay.
  kRedeliversDelayedNackEarly,
  // Every delivery says delivery_count 1 (as Kafka does when the count is not carried in the
  // record and the partition moves).
  kLosesDeliveryCount,
  // A server restart or a dropped connection silently settles what consumers held unacked.
  kForgetsUnackedOnReconnect,
  // A publish refused for a full queue is reported as accepted, and the event is gone.
  kAcceptsPublishesWhenFull,
  // Declares publish_dedupe_window but stores every publish of an event id again.
  kStoresDuplicatePublishes,
};

// The window every double declares (NATS JetStream's default duplicate window).
constexpr absl::Duration kDedupeWindow = absl::Minutes(2);

using Forward = std::function<absl::Status(absl::string_view, Event, PublishCallback)>;

// The de-duplication the doubles declare, for one memory state: the receipt of every event id
// each stream stored, and when (on the double's clock).
class PublishDedupe {
 public:
  explicit PublishDedupe(Clock* clock) : clock_(clock) {}

  // Publishes through `forward` unless `stream` stored the event's id within kDedupeWindow;
  // then confirms with the stored event's receipt, as JetStream answers a duplicate. Memory
  // confirms inline, so holding the lock across `forward` makes a duplicate racing its
  // original wait for the original's receipt.
  absl::Status Publish(absl::string_view stream, Event event, PublishCallback done,
                       const Forward& forward) {
    std::optional<absl::StatusOr<PublishReceipt>> outcome;
    {
      std::lock_guard lock(mu_);
      const absl::Time now = clock_->Now();
      std::pair<std::string, std::string> key(std::string(stream), event.id());
      auto it = stored_.find(key);
      if (it != stored_.end() && now - it->second.at < kDedupeWindow) {
        outcome = it->second.receipt;
      } else {
        absl::Status queued = forward(stream, std::move(event),
                                      [&outcome](absl::StatusOr<PublishReceipt> r) { outcome = std::move(r); });
        if (!queued.ok()) return queued;
        if (!outcome.has_value()) return absl::InternalError("the memory backend did not confirm inline");
        // Only what was stored counts: a refused publish may be retried with its id.
        if (outcome->ok()) stored_[std::move(key)] = Stored{now, **outcome};
      }
    }
    done(*std::move(outcome));
    return absl::OkStatus();
  }

 private:
  struct Stored {
    absl::Time at;
    PublishReceipt receipt;
  };
  Clock* const clock_;
  std::mutex mu_;
  std::map<std::pair<std::string, std::string>, Stored> stored_;  // (stream, event id); guarded by mu_
};

// Deliveries handed out and not settled yet, per live subscription of a double, so the
// restart / cut hooks can "forget" them for kForgetsUnackedOnReconnect.
class Outstanding {
 public:
  void Add(const std::vector<Delivery>& deliveries) {
    std::lock_guard lock(mu_);
    for (const Delivery& d : deliveries) held_[d.id] = d;
  }
  void Remove(const Delivery& d) {
    std::lock_guard lock(mu_);
    held_.erase(d.id);
  }
  std::vector<Delivery> TakeAll() {
    std::lock_guard lock(mu_);
    std::vector<Delivery> all;
    for (auto& [id, d] : held_) all.push_back(std::move(d));
    held_.clear();
    return all;
  }

 private:
  std::mutex mu_;
  std::map<std::string, Delivery> held_;
};

class BrokenSubscription final : public Subscription {
 public:
  BrokenSubscription(std::shared_ptr<Subscription> inner, Flaw flaw,
                     std::shared_ptr<Outstanding> outstanding)
      : inner_(std::move(inner)), flaw_(flaw), outstanding_(std::move(outstanding)) {}

  absl::StatusOr<std::vector<Delivery>> Fetch(int max_events, absl::Duration wait) override {
    auto got = inner_->Fetch(max_events, wait);
    if (got.ok()) Handed(*got);
    return got;
  }
  absl::Status Ack(const Delivery& d) override {
    outstanding_->Remove(d);
    return inner_->Ack(d);
  }
  using Subscription::Nack;
  absl::Status Nack(const Delivery& d, absl::Duration delay, NackKind kind) override {
    outstanding_->Remove(d);
    if (flaw_ == Flaw::kRedeliversDelayedNackEarly) delay = delay * 3 / 4;
    return inner_->Nack(d, delay, kind);
  }
  absl::Status Extend(const Delivery& d) override { return inner_->Extend(d); }
  absl::StatusOr<std::vector<Delivery>> Reclaim(absl::Duration min_idle, int max_events) override {
    auto got = inner_->Reclaim(min_idle, max_events);
    if (got.ok() && flaw_ == Flaw::kForgetsRedeliveryAfterCrash) {
      for (const Delivery& d : *got) inner_->Ack(d).IgnoreError();
      got->clear();
    }
    if (got.ok()) Handed(*got);
    return got;
  }
  absl::Status DeadLetter(const Delivery& d, absl::string_view reason) override {
    outstanding_->Remove(d);
    return inner_->DeadLetter(d, reason);
  }
  absl::Status Close() override { return inner_->Close(); }

  // The hooks' side of kForgetsUnackedOnReconnect.
  void ForgetHeld() {
    for (const Delivery& d : outstanding_->TakeAll()) inner_->Ack(d).IgnoreError();
  }

 private:
  void Handed(std::vector<Delivery>& deliveries) {
    if (flaw_ == Flaw::kLosesDeliveryCount) {
      for (Delivery& d : deliveries) d.delivery_count = 1;
    }
    outstanding_->Add(deliveries);
  }

  const std::shared_ptr<Subscription> inner_;
  const Flaw flaw_;
  const std::shared_ptr<Outstanding> outstanding_;
};

// One double: a flaw, its clock and memory state, and its live subscriptions.
struct Double {
  Flaw flaw;
  ManualClock clock;
  std::unique_ptr<EventStream> memory = memory::NewMemoryEventStream(&clock);
  std::unique_ptr<EventStream> bounded =
      memory::NewMemoryEventStream(&clock, memory::MemoryOptions{.max_stream_events = 200});
  PublishDedupe memory_dedupe{&clock};
  PublishDedupe bounded_dedupe{&clock};
  std::mutex mu;
  std::vector<std::weak_ptr<BrokenSubscription>> subscriptions;  // guarded by mu

  explicit Double(Flaw f) : flaw(f) {}

  // What restart_server and cut_connection do to the double: nothing, unless that is its bug.
  absl::Status Reconnect() {
    if (flaw != Flaw::kForgetsUnackedOnReconnect) return absl::OkStatus();
    std::lock_guard lock(mu);
    for (auto& weak : subscriptions) {
      if (auto sub = weak.lock()) sub->ForgetHeld();
    }
    return absl::OkStatus();
  }
};

// Hands out shared subscriptions wrapped in a unique_ptr-owned shell so the double can reach
// them from its hooks while the suite owns them.
class SubscriptionShell final : public Subscription {
 public:
  explicit SubscriptionShell(std::shared_ptr<BrokenSubscription> sub) : sub_(std::move(sub)) {}
  ~SubscriptionShell() override { sub_->Close().IgnoreError(); }
  absl::StatusOr<std::vector<Delivery>> Fetch(int n, absl::Duration wait) override { return sub_->Fetch(n, wait); }
  absl::Status Ack(const Delivery& d) override { return sub_->Ack(d); }
  using Subscription::Nack;
  absl::Status Nack(const Delivery& d, absl::Duration delay, NackKind kind) override {
    return sub_->Nack(d, delay, kind);
  }
  absl::Status Extend(const Delivery& d) override { return sub_->Extend(d); }
  absl::StatusOr<std::vector<Delivery>> Reclaim(absl::Duration idle, int n) override { return sub_->Reclaim(idle, n); }
  absl::Status DeadLetter(const Delivery& d, absl::string_view reason) override { return sub_->DeadLetter(d, reason); }
  absl::Status Close() override { return sub_->Close(); }

 private:
  std::shared_ptr<BrokenSubscription> sub_;
};

class BrokenStream final : public EventStream {
 public:
  BrokenStream(Double* d, EventStream* inner, PublishDedupe* dedupe)
      : double_(d), inner_(inner), dedupe_(dedupe) {}

  absl::string_view backend_name() const override { return "broken"; }
  Capabilities capabilities() const override {
    Capabilities caps = inner_->capabilities();
    caps.persistent = true;  // every instance shares one memory state
    caps.publish_dedupe_window = kDedupeWindow;
    return caps;
  }
  StreamInspector* inspector() override { return inner_->inspector(); }
  absl::Status Flush(absl::Duration timeout) override { return inner_->Flush(timeout); }
  absl::StatusOr<std::unique_ptr<Subscription>> Subscribe(const SubscribeOptions& options) override {
    auto inner = inner_->Subscribe(options);
    if (!inner.ok()) return inner.status();
    auto sub = std::make_shared<BrokenSubscription>(std::shared_ptr<Subscription>(std::move(*inner)),
                                                    double_->flaw, std::make_shared<Outstanding>());
    {
      std::lock_guard lock(double_->mu);
      std::erase_if(double_->subscriptions, [](const auto& weak) { return weak.expired(); });
      double_->subscriptions.push_back(sub);
    }
    return std::unique_ptr<Subscription>(new SubscriptionShell(std::move(sub)));
  }
  absl::Status Ping(absl::Duration timeout) override { return inner_->Ping(timeout); }
  Clock* clock() const override { return inner_->clock(); }

 protected:
  absl::Status DoPublish(absl::string_view stream, Event event, PublishCallback done) override {
    if (double_->flaw == Flaw::kStoresDuplicatePublishes) {
      return Store(stream, std::move(event), std::move(done));
    }
    return dedupe_->Publish(stream, std::move(event), std::move(done),
                            [this](absl::string_view s, Event e, PublishCallback cb) {
                              return Store(s, std::move(e), std::move(cb));
                            });
  }

 private:
  absl::Status Store(absl::string_view stream, Event event, PublishCallback done) {
    if (double_->flaw != Flaw::kAcceptsPublishesWhenFull) {
      return inner_->Publish(stream, std::move(event), std::move(done));
    }
    const std::string name(stream);
    absl::Status queued = inner_->Publish(stream, std::move(event),
                                          [name, done](absl::StatusOr<PublishReceipt> r) {
                                            if (absl::IsResourceExhausted(r.status())) {
                                              r = PublishReceipt{name, "0"};
                                            }
                                            done(std::move(r));
                                          });
    if (absl::IsResourceExhausted(queued)) {
      done(PublishReceipt{name, "0"});
      return absl::OkStatus();
    }
    return queued;
  }

  Double* const double_;
  EventStream* const inner_;
  PublishDedupe* const dedupe_;
};

BackendUnderTest MakeDouble(std::string name, Flaw flaw) {
  // gtest evaluates the instantiation once per case: one double per name, kept for the whole
  // run (the suite's instantiations outlive main) and reachable from here, so it is no leak.
  static auto* doubles = new std::map<std::string, std::unique_ptr<Double>>();
  std::unique_ptr<Double>& slot = (*doubles)[name];
  if (slot == nullptr) slot = std::make_unique<Double>(flaw);
  Double* d = slot.get();
  BackendUnderTest backend;
  backend.name = std::move(name);
  backend.make_stream = [d]() -> absl::StatusOr<std::unique_ptr<EventStream>> {
    return std::unique_ptr<EventStream>(new BrokenStream(d, d->memory.get(), &d->memory_dedupe));
  };
  backend.make_bounded_stream = [d]() -> absl::StatusOr<std::unique_ptr<EventStream>> {
    return std::unique_ptr<EventStream>(new BrokenStream(d, d->bounded.get(), &d->bounded_dedupe));
  };
  backend.let_time_pass = [d](absl::Duration t) { d->clock.Advance(t); };
  backend.fetch_wait = absl::Milliseconds(100);
  backend.quiet_wait = absl::ZeroDuration();
  backend.nack_delay = absl::Minutes(10);
  backend.long_nack_delay = absl::Hours(6);
  backend.nack_tolerance = absl::ZeroDuration();
  backend.reclaim_idle = absl::Minutes(1);
  backend.events_per_publisher = 500;
  backend.crash = AbandonSubscription;
  backend.restart_server = [d] { return d->Reconnect(); };
  backend.cut_connection = [d] { return d->Reconnect(); };
  return backend;
}

EVENTBUS_INSTANTIATE_CONFORMANCE(
    Doubles, MakeDouble("sound", Flaw::kNone),
    MakeDouble("forgets_redelivery_after_crash", Flaw::kForgetsRedeliveryAfterCrash),
    MakeDouble("redelivers_delayed_nack_early", Flaw::kRedeliversDelayedNackEarly),
    MakeDouble("loses_delivery_count", Flaw::kLosesDeliveryCount),
    MakeDouble("forgets_unacked_on_reconnect", Flaw::kForgetsUnackedOnReconnect),
    MakeDouble("accepts_publishes_when_full", Flaw::kAcceptsPublishesWhenFull),
    MakeDouble("stores_duplicate_publishes", Flaw::kStoresDuplicatePublishes));

}  // namespace
}  // namespace eventbus::conformance
