#include "eventbus/session.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "eventbus/status_macros.h"

namespace eventbus {

StreamSession::StreamSession(std::unique_ptr<EventStream> stream) : stream_(std::move(stream)) {}
StreamSession::StreamSession(StreamSession&&) noexcept = default;

StreamSession& StreamSession::operator=(StreamSession&& other) noexcept {
  if (this != &other) {
    Close().IgnoreError();
    stream_ = std::move(other.stream_);
    subscriptions_ = std::move(other.subscriptions_);
    closed_ = other.closed_;
  }
  return *this;
}

StreamSession::~StreamSession() { Close().IgnoreError(); }

absl::StatusOr<StreamSession> StreamSession::Open(absl::string_view type, BackendConfig config,
                                                  const BackendRegistry& registry) {
  EVENTBUS_ASSIGN_OR_RETURN(std::unique_ptr<EventStream> stream,
                            registry.Create(type, std::move(config)));
  return StreamSession(std::move(stream));
}

absl::StatusOr<StreamSession> StreamSession::FromEnvironment(const Environment& env,
                                                             Clock* clock,
                                                             const BackendRegistry& registry) {
  EVENTBUS_ASSIGN_OR_RETURN(std::unique_ptr<EventStream> stream,
                            registry.CreateFromEnvironment(env, clock));
  return StreamSession(std::move(stream));
}

absl::StatusOr<Subscription*> StreamSession::Subscribe(const SubscribeOptions& options,
                                                       absl::Duration ready_timeout) {
  if (closed_ || stream_ == nullptr) {
    return absl::FailedPreconditionError("the stream session is closed");
  }
  EVENTBUS_ASSIGN_OR_RETURN(std::unique_ptr<Subscription> subscription,
                            stream_->Subscribe(options));
  if (absl::Status ready = subscription->WaitReady(ready_timeout); !ready.ok()) {
    subscription->Close().IgnoreError();
    return ready;
  }
  subscriptions_.push_back(std::move(subscription));
  return subscriptions_.back().get();
}

absl::Status StreamSession::Close() {
  closed_ = true;
  absl::Status first;
  while (!subscriptions_.empty()) {
    absl::Status closed = subscriptions_.back()->Close();
    if (first.ok()) first = closed;
    subscriptions_.pop_back();
  }
  return first;
}

absl::Status ConsumeLoop(Subscription& subscription, const ConsumeOptions& options,
                         const DeliveryHandler& handler) {
  if (options.max_events < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("ConsumeOptions.max_events must be at least 1, not ", options.max_events));
  }
  int64_t settled = 0;
  while (options.max_deliveries == 0 || settled < options.max_deliveries) {
    if (options.stop && options.stop()) return absl::OkStatus();
    int want = options.max_events;
    if (options.max_deliveries > 0) {
      want = static_cast<int>(std::min<int64_t>(want, options.max_deliveries - settled));
    }
    EVENTBUS_ASSIGN_OR_RETURN(std::vector<Delivery> batch, subscription.Fetch(want, options.wait));
    for (const Delivery& delivery : batch) {
      const Settle outcome = handler(delivery);
      absl::Status status;
      switch (outcome.kind) {
        case Settle::Kind::kAck:
          status = subscription.Ack(delivery);
          break;
        case Settle::Kind::kNack:
          status = subscription.Nack(delivery, outcome.delay);
          break;
        case Settle::Kind::kDeadLetter:
          status = subscription.DeadLetter(delivery, outcome.reason);
          break;
      }
      if (!status.ok() && !absl::IsNotFound(status) && !absl::IsFailedPrecondition(status)) {
        return status;
      }
      ++settled;
    }
  }
  return absl::OkStatus();
}

}  // namespace eventbus
