#include "test_support.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "eventbus/clock.h"
#include "gtest/gtest.h"

namespace eventbus::executor::testing {
namespace {

using Op = SubscriptionCall::Op;

class RecordingSubscription final : public Subscription {
 public:
  RecordingSubscription(std::unique_ptr<Subscription> inner, CallLog* log)
      : inner_(std::move(inner)), log_(log) {}

  absl::StatusOr<std::vector<Delivery>> Fetch(int max_events, absl::Duration wait) override {
    if (absl::Status failure = log_->fetch_failure(); !failure.ok()) {
      log_->AddFailedFetch();
      return failure;
    }
    auto result = inner_->Fetch(max_events, wait);
    if (result.ok() && !result->empty()) {
      log_->Add({.op = Op::kFetch, .max_events = max_events});
      log_->AddFetched(static_cast<int>(result->size()));
    }
    return result;
  }
  absl::Status Ack(const Delivery& d) override {
    absl::Status status = inner_->Ack(d);
    log_->Add({.op = Op::kAck, .delivery_id = d.id, .delivery_count = d.delivery_count});
    return status;
  }
  using Subscription::Nack;
  absl::Status Nack(const Delivery& d, absl::Duration delay, NackKind kind) override {
    absl::Status status = inner_->Nack(d, delay, kind);
    log_->Add({.op = Op::kNack, .delivery_id = d.id, .delivery_count = d.delivery_count,
               .delay = delay, .failed = kind == NackKind::kFailed});
    return status;
  }
  absl::Status Extend(const Delivery& d) override {
    absl::Status status = inner_->Extend(d);
    log_->Add({.op = Op::kExtend, .delivery_id = d.id, .delivery_count = d.delivery_count});
    return status;
  }
  absl::StatusOr<std::vector<Delivery>> Reclaim(absl::Duration min_idle, int max_events) override {
    auto result = inner_->Reclaim(min_idle, max_events);
    log_->AddReclaimAttempt();
    if (result.ok() && !result->empty()) {
      log_->Add({.op = Op::kReclaim, .max_events = max_events});
      log_->AddFetched(static_cast<int>(result->size()));
    }
    return result;
  }
  absl::Status DeadLetter(const Delivery& d, absl::string_view reason) override {
    absl::Status status = inner_->DeadLetter(d, reason);
    log_->Add({.op = Op::kDeadLetter, .delivery_id = d.id, .delivery_count = d.delivery_count,
               .reason = std::string(reason)});
    return status;
  }
  absl::Status Close() override { return inner_->Close(); }

 private:
  std::unique_ptr<Subscription> inner_;
  CallLog* log_;
};

class RecordingStream final : public EventStream {
 public:
  RecordingStream(EventStream* inner, CallLog* log, size_t max_event_bytes)
      : inner_(inner), log_(log), max_event_bytes_(max_event_bytes) {}

  absl::string_view backend_name() const override { return inner_->backend_name(); }
  Capabilities capabilities() const override {
    Capabilities caps = inner_->capabilities();
    if (max_event_bytes_ > 0) caps.max_event_bytes = max_event_bytes_;
    return caps;
  }
  StreamInspector* inspector() override { return inner_->inspector(); }
  absl::Status Flush(absl::Duration timeout) override { return inner_->Flush(timeout); }
  absl::StatusOr<std::unique_ptr<Subscription>> Subscribe(
      const SubscribeOptions& options) override {
    auto inner = inner_->Subscribe(options);
    if (!inner.ok()) return inner.status();
    return std::make_unique<RecordingSubscription>(std::move(*inner), log_);
  }
  absl::Status Ping(absl::Duration timeout) override { return inner_->Ping(timeout); }
  Clock* clock() const override { return inner_->clock(); }

 protected:
  absl::Status DoPublish(absl::string_view stream, Event event, PublishCallback done) override {
    return inner_->Publish(stream, std::move(event), std::move(done));
  }

 private:
  EventStream* inner_;
  CallLog* log_;
  const size_t max_event_bytes_;
};

}  // namespace

bool Monitor::Await(const std::function<bool()>& condition, absl::Duration timeout) const {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout), condition);
}

bool Monitor::AwaitThen(const std::function<bool()>& condition, const std::function<void()>& then,
                        absl::Duration timeout) {
  bool met;
  {
    std::unique_lock<std::mutex> lock(mu_);
    met = cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout), condition);
    if (met) then();
  }
  cv_.notify_all();
  return met;
}

void CallLog::Add(SubscriptionCall call) {
  monitor_.Update([&] {
    if (call.op == Op::kAck || call.op == Op::kNack || call.op == Op::kDeadLetter) --outstanding_;
    calls_.push_back(std::move(call));
  });
}

void CallLog::AddFetched(int n) {
  monitor_.Update([&] {
    outstanding_ += n;
    max_outstanding_ = std::max(max_outstanding_, outstanding_);
  });
}

std::vector<SubscriptionCall> CallLog::Calls() const {
  return monitor_.Read([&] { return calls_; });
}

std::vector<SubscriptionCall> CallLog::Calls(Op op) const {
  return monitor_.Read([&] {
    std::vector<SubscriptionCall> out;
    for (const auto& call : calls_) {
      if (call.op == op) out.push_back(call);
    }
    return out;
  });
}

void CallLog::FailFetches(absl::Status status) {
  monitor_.Update([&] { fetch_failure_ = std::move(status); });
}

absl::Status CallLog::fetch_failure() const {
  return monitor_.Read([&] { return fetch_failure_; });
}

void CallLog::AddFailedFetch() {
  monitor_.Update([&] { ++failed_fetches_; });
}

bool CallLog::AwaitFailedFetches(int n, absl::Duration timeout) const {
  return monitor_.Await([&] { return failed_fetches_ >= n; }, timeout);
}

void CallLog::AddReclaimAttempt() {
  monitor_.Update([&] { ++reclaim_attempts_; });
}

int CallLog::reclaim_attempts() const {
  return monitor_.Read([&] { return reclaim_attempts_; });
}

bool CallLog::AwaitReclaimAttempts(int n, absl::Duration timeout) const {
  return monitor_.Await([&] { return reclaim_attempts_ >= n; }, timeout);
}

int CallLog::Count(Op op) const { return static_cast<int>(Calls(op).size()); }

int CallLog::outstanding() const {
  return monitor_.Read([&] { return outstanding_; });
}

int CallLog::max_outstanding() const {
  return monitor_.Read([&] { return max_outstanding_; });
}

bool CallLog::AwaitCount(Op op, int n, absl::Duration timeout) const {
  return monitor_.Await(
      [&] {
        int count = 0;
        for (const auto& call : calls_) count += call.op == op ? 1 : 0;
        return count >= n;
      },
      timeout);
}

std::unique_ptr<EventStream> NewRecordingStream(EventStream* inner, CallLog* log,
                                                size_t max_event_bytes) {
  return std::make_unique<RecordingStream>(inner, log, max_event_bytes);
}

void RecordingMetrics::TaskFinished(absl::string_view type, absl::string_view outcome,
                                    absl::Duration) {
  monitor_.Update([&] { ++counts_[absl::StrCat("finished/", type, "/", outcome)]; });
}
void RecordingMetrics::TaskRetried(absl::string_view type, absl::Duration) {
  monitor_.Update([&] { ++counts_[absl::StrCat("retried/", type)]; });
}
void RecordingMetrics::TaskDeadLettered(absl::string_view type) {
  monitor_.Update([&] { ++counts_[absl::StrCat("dlq/", type)]; });
}
void RecordingMetrics::ResultPublished(absl::string_view status) {
  monitor_.Update([&] { ++counts_[absl::StrCat("result/", status)]; });
}
void RecordingMetrics::InFlightChanged(int in_flight) {
  monitor_.Update([&] {
    in_flight_ = in_flight;
    max_in_flight_ = std::max(max_in_flight_, in_flight);
  });
}
bool RecordingMetrics::AwaitInFlight(int n, absl::Duration timeout) const {
  return monitor_.Await([&] { return in_flight_ == n; }, timeout);
}
int RecordingMetrics::Count(const std::string& key) const {
  return monitor_.Read([&] {
    auto it = counts_.find(key);
    return it == counts_.end() ? 0 : it->second;
  });
}
int RecordingMetrics::finished(absl::string_view type, absl::string_view outcome) const {
  return Count(absl::StrCat("finished/", type, "/", outcome));
}
int RecordingMetrics::retried(absl::string_view type) const {
  return Count(absl::StrCat("retried/", type));
}
int RecordingMetrics::dead_lettered(absl::string_view type) const {
  return Count(absl::StrCat("dlq/", type));
}
int RecordingMetrics::results(absl::string_view status) const {
  return Count(absl::StrCat("result/", status));
}
int RecordingMetrics::max_in_flight() const {
  return monitor_.Read([&] { return max_in_flight_; });
}

StreamReader::StreamReader(EventStream* stream, std::string stream_name) {
  SubscribeOptions options;
  options.stream = std::move(stream_name);
  options.group = "test-reader";
  options.consumer = "test-reader-1";
  auto subscription = stream->Subscribe(options);
  EXPECT_TRUE(subscription.ok()) << subscription.status();
  if (subscription.ok()) subscription_ = std::move(*subscription);
}

StreamReader::~StreamReader() = default;

std::vector<Event> StreamReader::AwaitEvents(size_t n, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (subscription_ != nullptr && events_.size() < n && absl::Now() < deadline) {
    auto fetched = subscription_->Fetch(100, absl::Milliseconds(50));
    if (!fetched.ok()) {
      ADD_FAILURE() << fetched.status();
      break;
    }
    for (Delivery& delivery : *fetched) {
      EXPECT_TRUE(subscription_->Ack(delivery).ok());
      events_.push_back(std::move(delivery.event));
    }
  }
  EXPECT_GE(events_.size(), n) << "timed out waiting for events";
  return events_;
}

}  // namespace eventbus::executor::testing
