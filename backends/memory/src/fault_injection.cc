#include "eventbus/memory/fault_injection.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "eventbus/status_macros.h"

namespace eventbus::memory {

FaultInjector::~FaultInjector() { Resume(); }

void FaultInjector::FailNext(Op op, int n, absl::Status status) {
  std::lock_guard lock(mu_);
  auto& queue = scheduled_[op];
  queue.insert(queue.begin(), n, status);
}

void FaultInjector::DropConnection(absl::string_view consumer) {
  std::lock_guard lock(mu_);
  dropped_consumers_.insert(std::string(consumer));
}

void FaultInjector::DropAllConnections() {
  std::lock_guard lock(mu_);
  all_dropped_ = true;
}

void FaultInjector::Reconnect() {
  std::lock_guard lock(mu_);
  dropped_consumers_.clear();
  all_dropped_ = false;
}

void FaultInjector::Stall() {
  std::lock_guard lock(mu_);
  stalled_ = true;
}

void FaultInjector::Resume() {
  {
    std::lock_guard lock(mu_);
    stalled_ = false;
  }
  resumed_.notify_all();
}

int FaultInjector::injected(Op op) const {
  std::lock_guard lock(mu_);
  auto it = injected_.find(op);
  return it == injected_.end() ? 0 : it->second;
}

absl::Status FaultInjector::Check(Op op, absl::string_view consumer, absl::Duration ping_timeout) {
  std::unique_lock lock(mu_);
  if (stalled_) {
    // Real time: a stall is what a test waits out, not something on the stream's clock.
    if (ping_timeout == absl::InfiniteDuration()) {
      resumed_.wait(lock, [&] { return !stalled_; });
    } else if (!resumed_.wait_for(lock, absl::ToChronoNanoseconds(ping_timeout),
                                  [&] { return !stalled_; })) {
      return absl::DeadlineExceededError(absl::StrCat(
          "memory (fault injection): stalled backend did not answer within ",
          absl::FormatDuration(ping_timeout)));
    }
  }
  if (all_dropped_ || (!consumer.empty() && dropped_consumers_.contains(consumer))) {
    ++injected_[op];
    return absl::UnavailableError(absl::StrCat(
        "memory (fault injection): connection", consumer.empty() ? "" : " of consumer ",
        consumer, " dropped"));
  }
  auto it = scheduled_.find(op);
  if (it != scheduled_.end() && !it->second.empty()) {
    absl::Status status = std::move(it->second.back());
    it->second.pop_back();
    ++injected_[op];
    return status;
  }
  return absl::OkStatus();
}

namespace {

using Op = FaultInjector::Op;

class FaultInjectingSubscription final : public Subscription {
 public:
  FaultInjectingSubscription(std::unique_ptr<Subscription> inner, FaultInjector* faults,
                             std::string consumer)
      : inner_(std::move(inner)), faults_(faults), consumer_(std::move(consumer)) {}

  absl::StatusOr<std::vector<Delivery>> Fetch(int max_events, absl::Duration wait) override {
    EVENTBUS_RETURN_IF_ERROR(faults_->Check(Op::kFetch, consumer_));
    return inner_->Fetch(max_events, wait);
  }
  absl::Status Ack(const Delivery& delivery) override {
    EVENTBUS_RETURN_IF_ERROR(faults_->Check(Op::kAck, consumer_));
    return inner_->Ack(delivery);
  }
  using Subscription::Nack;
  using Subscription::NackAsync;
  absl::Status Nack(const Delivery& delivery, absl::Duration delay, NackKind kind) override {
    EVENTBUS_RETURN_IF_ERROR(faults_->Check(Op::kNack, consumer_));
    return inner_->Nack(delivery, delay, kind);
  }
  absl::Status Extend(const Delivery& delivery) override {
    EVENTBUS_RETURN_IF_ERROR(faults_->Check(Op::kExtend, consumer_));
    return inner_->Extend(delivery);
  }
  absl::StatusOr<std::vector<Delivery>> Reclaim(absl::Duration min_idle, int max_events) override {
    EVENTBUS_RETURN_IF_ERROR(faults_->Check(Op::kReclaim, consumer_));
    return inner_->Reclaim(min_idle, max_events);
  }
  absl::Status DeadLetter(const Delivery& delivery, absl::string_view reason) override {
    EVENTBUS_RETURN_IF_ERROR(faults_->Check(Op::kDeadLetter, consumer_));
    return inner_->DeadLetter(delivery, reason);
  }
  void AckAsync(const Delivery& delivery, SettleCallback done) override {
    absl::Status fault = faults_->Check(Op::kAck, consumer_);
    if (!fault.ok()) return done(std::move(fault));
    inner_->AckAsync(delivery, std::move(done));
  }
  void NackAsync(const Delivery& delivery, absl::Duration delay, NackKind kind,
                 SettleCallback done) override {
    absl::Status fault = faults_->Check(Op::kNack, consumer_);
    if (!fault.ok()) return done(std::move(fault));
    inner_->NackAsync(delivery, delay, kind, std::move(done));
  }
  void DeadLetterAsync(const Delivery& delivery, absl::string_view reason,
                       SettleCallback done) override {
    absl::Status fault = faults_->Check(Op::kDeadLetter, consumer_);
    if (!fault.ok()) return done(std::move(fault));
    inner_->DeadLetterAsync(delivery, reason, std::move(done));
  }
  // Never faulted: leaving must always be possible (and a dropped connection leaves anyway).
  absl::Status Close() override { return inner_->Close(); }

 private:
  const std::unique_ptr<Subscription> inner_;
  FaultInjector* const faults_;
  const std::string consumer_;
};

class FaultInjectingEventStream final : public EventStream {
 public:
  FaultInjectingEventStream(EventStream* inner, FaultInjector* faults)
      : inner_(inner), faults_(faults) {}
  FaultInjectingEventStream(std::unique_ptr<EventStream> owned, FaultInjector* faults)
      : owned_(std::move(owned)), inner_(owned_.get()), faults_(faults) {}

  absl::string_view backend_name() const override { return inner_->backend_name(); }
  Capabilities capabilities() const override { return inner_->capabilities(); }
  StreamInspector* inspector() override { return inner_->inspector(); }
  absl::Status Flush(absl::Duration timeout) override { return inner_->Flush(timeout); }
  absl::StatusOr<std::unique_ptr<Subscription>> Subscribe(const SubscribeOptions& options) override {
    EVENTBUS_RETURN_IF_ERROR(faults_->Check(Op::kSubscribe, ""));
    EVENTBUS_ASSIGN_OR_RETURN(std::unique_ptr<Subscription> inner, inner_->Subscribe(options));
    return std::unique_ptr<Subscription>(
        new FaultInjectingSubscription(std::move(inner), faults_, options.consumer));
  }
  absl::Status Ping(absl::Duration timeout) override {
    EVENTBUS_RETURN_IF_ERROR(faults_->Check(Op::kPing, "", timeout));
    return inner_->Ping(timeout);
  }
  Clock* clock() const override { return inner_->clock(); }

 protected:
  absl::Status DoPublish(absl::string_view stream, Event event, PublishCallback done) override {
    EVENTBUS_RETURN_IF_ERROR(faults_->Check(Op::kPublish, ""));
    return inner_->Publish(stream, std::move(event), std::move(done));
  }

 private:
  const std::unique_ptr<EventStream> owned_;  // null when not owned
  EventStream* const inner_;
  FaultInjector* const faults_;
};

}  // namespace

std::unique_ptr<EventStream> NewFaultInjectingEventStream(EventStream* inner, FaultInjector* faults) {
  return std::make_unique<FaultInjectingEventStream>(inner, faults);
}

std::unique_ptr<EventStream> NewFaultInjectingEventStream(std::unique_ptr<EventStream> inner,
                                                          FaultInjector* faults) {
  return std::make_unique<FaultInjectingEventStream>(std::move(inner), faults);
}

}  // namespace eventbus::memory
