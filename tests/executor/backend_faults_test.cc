// How the executor and the service react to a failing backend, proven on the memory backend's
// fault-injecting mode (memory/fault_injection.h): transient errors of fetch, result publish
// and ack are retried or recovered without losing a task, a result refused as too large is
// settled once as a failure (given back only when that failure is not published either),
// and /readyz goes down while the backend is unreachable or hung and up again when it
// answers. Executor tests run in virtual time (ManualClock); nothing sleeps to let time pass.

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "config.h"
#include "eventbus/clock.h"
#include "eventbus/executor/executor.h"
#include "eventbus/executor/metrics.h"
#include "eventbus/executor/task.h"
#include "eventbus/memory/fault_injection.h"
#include "eventbus/memory/memory_event_stream.h"
#include "eventbus/registry.h"
#include "gtest/gtest.h"
#include "json_log.h"
#include "raw_http_client.h"
#include "service.h"
#include "test_support.h"

namespace eventbus::executor {
namespace {

using memory::FaultInjector;
using Op = testing::SubscriptionCall::Op;
using ::nlohmann::json;

// Succeeds at once; counts its runs.
class CountingHandler final : public TaskHandler {
 public:
  std::string type() const override { return "count"; }
  TaskOutcome Handle(TaskContext&) override {
    monitor_.Update([&] { ++runs_; });
    return TaskOutcome::Succeeded(json{{"ok", true}});
  }
  int runs() const { return monitor_.Read([&] { return runs_; }); }

 private:
  testing::Monitor monitor_;
  int runs_ = 0;
};

class ExecutorOnAFaultyBackendTest : public ::testing::Test {
 protected:
  ExecutorOnAFaultyBackendTest()
      : memory_(memory::NewMemoryEventStream(&clock_)),
        faulty_(memory::NewFaultInjectingEventStream(memory_.get(), &faults_)),
        stream_(testing::NewRecordingStream(faulty_.get(), &calls_)),
        results_(memory_.get(), std::string(kDefaultResultStream)) {
    options_.consumer_name = "executor-1";
    options_.concurrency = 2;
    options_.fetch_block = absl::Milliseconds(5);  // real time: how soon a fetch loop re-checks
    options_.reclaim_enabled = false;
    options_.heartbeat_interval = absl::ZeroDuration();
    auto handler = std::make_unique<CountingHandler>();
    handler_ = handler.get();
    EXPECT_TRUE(handlers_.Register(std::move(handler)).ok());
  }
  ~ExecutorOnAFaultyBackendTest() override {
    faults_.Reconnect();
    faults_.Resume();
    if (executor_ != nullptr) executor_->Shutdown();
  }

  void Start() {
    executor_ = std::make_unique<Executor>(
        stream_.get(), &handlers_, options_,
        ExecutorDependencies{.metrics = &metrics_,
                             .random = &random_,
                             .log = [this](const TaskLogRecord& record) {
                               logs_.Update([&] { log_messages_.push_back(record.message); });
                             }});
    ASSERT_TRUE(executor_->Start().ok());
  }

  // Submitted past the faults: only the executor's side of the backend is broken.
  void Submit(absl::string_view id, absl::string_view type = "count") {
    json task{{"id", id}, {"type", type}, {"input", json::object()}};
    ASSERT_TRUE(
        memory_->PublishAndWait(kDefaultRequestStream, MakeEvent(kTaskRequestedType, "test", task.dump()))
            .ok());
  }

  int LogCount(absl::string_view prefix) const {
    return logs_.Read([&] {
      int n = 0;
      for (const auto& m : log_messages_) n += absl::StartsWith(m, prefix);
      return n;
    });
  }
  bool AwaitLogCount(absl::string_view prefix, int n) {
    return logs_.Await([&] {
      int count = 0;
      for (const auto& m : log_messages_) count += absl::StartsWith(m, prefix);
      return count >= n;
    });
  }
  // Waits until `n` faults of `op` were injected.
  bool AwaitInjected(FaultInjector::Op op, int n) {
    return Poll([&] { return faults_.injected(op) >= n; }, testing::kSafetyTimeout);
  }

  // Moves virtual time on by `step` until `condition` holds: the executor may not have begun
  // waiting for a backoff when a test would advance the clock once, so advance in steps,
  // giving the executor a moment of real time after each (the safety bound ends a hang).
  bool AdvanceUntil(const std::function<bool()>& condition, absl::Duration step) {
    const absl::Time deadline = absl::Now() + testing::kSafetyTimeout;
    while (!condition()) {
      if (absl::Now() > deadline) return false;
      clock_.Advance(step);
      Poll(condition, absl::Milliseconds(20));
    }
    return true;
  }

  static bool Poll(const std::function<bool()>& condition, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (!condition()) {
      if (absl::Now() > deadline) return false;
      absl::SleepFor(absl::Milliseconds(1));
    }
    return true;
  }

  std::vector<TaskResult> AwaitResults(size_t n) {
    std::vector<TaskResult> out;
    for (const Event& event : results_.AwaitEvents(n)) {
      auto result = ParseTaskResult(event.data());
      EXPECT_TRUE(result.ok()) << result.status();
      if (result.ok()) out.push_back(*result);
    }
    return out;
  }

  ManualClock clock_;
  FaultInjector faults_;
  std::unique_ptr<EventStream> memory_;
  std::unique_ptr<EventStream> faulty_;
  testing::CallLog calls_;
  std::unique_ptr<EventStream> stream_;
  testing::StreamReader results_;
  HandlerRegistry handlers_;
  CountingHandler* handler_ = nullptr;
  testing::RecordingMetrics metrics_;
  testing::FixedRandom random_{0.25};
  ExecutorOptions options_;
  testing::Monitor logs_;
  std::vector<std::string> log_messages_;
  std::unique_ptr<Executor> executor_;
};

TEST_F(ExecutorOnAFaultyBackendTest, TransientFetchErrorsAreRetriedAfterTheBackoffAndNoTaskIsLost) {
  faults_.FailNext(FaultInjector::Op::kFetch, 3, absl::UnavailableError("broker unreachable"));
  Start();
  const absl::Time start = clock_.Now();
  Submit("t-1");
  ASSERT_TRUE(AdvanceUntil([&] { return handler_->runs() >= 1; }, options_.fetch_error_backoff));
  // Each failed fetch waited its backoff on the executor's clock before the next one.
  EXPECT_GE(clock_.Now() - start, 3 * options_.fetch_error_backoff);
  auto results = AwaitResults(1);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].task_id, "t-1");
  EXPECT_EQ(results[0].status, TaskStatus::kSucceeded);
  ASSERT_TRUE(calls_.AwaitCount(Op::kAck, 1));
  EXPECT_EQ(LogCount("fetch failed"), 3);
  EXPECT_EQ(handler_->runs(), 1);
}

TEST_F(ExecutorOnAFaultyBackendTest, AResultPublishThatFailsGivesTheDeliveryBackAndItRunsAgain) {
  faults_.FailNext(FaultInjector::Op::kPublish, 1, absl::UnavailableError("broker unreachable"));
  Start();
  Submit("t-1");
  // Never acked without its result: given back after the backoff instead.
  ASSERT_TRUE(calls_.AwaitCount(Op::kNack, 1));
  EXPECT_EQ(calls_.Count(Op::kAck), 0);
  const absl::Duration backoff = calls_.Calls(Op::kNack)[0].delay;  // the task's retry backoff
  EXPECT_GT(backoff, absl::ZeroDuration());
  ASSERT_TRUE(AdvanceUntil([&] { return handler_->runs() >= 2; }, backoff));
  auto results = AwaitResults(1);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].status, TaskStatus::kSucceeded);
  ASSERT_TRUE(calls_.AwaitCount(Op::kAck, 1));
  EXPECT_EQ(handler_->runs(), 2);
  EXPECT_EQ(faults_.injected(FaultInjector::Op::kPublish), 1);
}

// What a broker says of an event beyond its limit (Kafka's MSG_SIZE_TOO_LARGE maps to it).
absl::Status TooLarge() {
  return absl::InvalidArgumentError("event is 3145728 bytes; the broker accepts at most 2097152");
}

TEST_F(ExecutorOnAFaultyBackendTest, AResultRefusedAsTooLargeIsAFailureCountedOnceAndNeverARerun) {
  faults_.FailNext(FaultInjector::Op::kPublish, 1, TooLarge());
  Start();
  Submit("t-1");
  auto results = AwaitResults(1);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].status, TaskStatus::kFailed);
  EXPECT_EQ(results[0].error_kind, "result_too_large");
  EXPECT_TRUE(absl::StrContains(results[0].error, "output dropped")) << results[0].error;
  ASSERT_TRUE(calls_.AwaitCount(Op::kDeadLetter, 1));
  ASSERT_TRUE(metrics_.AwaitInFlight(0));
  EXPECT_EQ(calls_.Count(Op::kNack), 0) << "given back to run again";
  EXPECT_EQ(calls_.Count(Op::kAck), 0);
  EXPECT_EQ(handler_->runs(), 1);
  // The run is counted once, as the failure it ended in (not as succeeded, not uncounted).
  EXPECT_EQ(metrics_.finished("count", kOutcomeFailed), 1);
  EXPECT_EQ(metrics_.finished("count", kOutcomeSucceeded), 0);
  EXPECT_EQ(metrics_.dead_lettered("count"), 1);
  EXPECT_EQ(metrics_.results("failed"), 1);
  EXPECT_EQ(metrics_.results("succeeded"), 0);
}

// The too-large result's failure cannot be published either (`fallback` is its publish's
// error): the request is given back, neither acked nor dead-lettered without a result, and
// runs again; this time its result goes out and it is acked.
class UnpublishableResultTest : public ExecutorOnAFaultyBackendTest {
 protected:
  void RunWithFallbackPublishFailing(absl::Status fallback) {
    faults_.FailNext(FaultInjector::Op::kPublish, 1, TooLarge());
    faults_.FailNext(FaultInjector::Op::kPublish, 1, std::move(fallback));
    Start();
    Submit("t-1");
    ASSERT_TRUE(calls_.AwaitCount(Op::kNack, 1));
    const auto nacks = calls_.Calls(Op::kNack);
    EXPECT_FALSE(nacks[0].failed) << "an unpublished result is no failed attempt";
    EXPECT_EQ(nacks[0].delay, options_.fetch_error_backoff);
    EXPECT_EQ(calls_.Count(Op::kAck), 0);
    EXPECT_EQ(calls_.Count(Op::kDeadLetter), 0);
    EXPECT_EQ(faults_.injected(FaultInjector::Op::kPublish), 2);
    EXPECT_EQ(LogCount("task result too large"), 1);
    EXPECT_EQ(metrics_.finished("count", kOutcomeRetried), 1);

    ASSERT_TRUE(AdvanceUntil([&] { return handler_->runs() >= 2; }, options_.fetch_error_backoff));
    auto results = AwaitResults(1);
    ASSERT_EQ(results.size(), 1u);
    EXPECT_EQ(results[0].status, TaskStatus::kSucceeded);
    EXPECT_EQ(results[0].deliveries, 2);
    EXPECT_EQ(results[0].attempts, 1);
    ASSERT_TRUE(calls_.AwaitCount(Op::kAck, 1));
    ASSERT_TRUE(metrics_.AwaitInFlight(0));
    EXPECT_EQ(calls_.Count(Op::kNack), 1);
    EXPECT_EQ(calls_.Count(Op::kDeadLetter), 0);
    EXPECT_EQ(handler_->runs(), 2);
    EXPECT_EQ(metrics_.finished("count", kOutcomeSucceeded), 1);
    EXPECT_EQ(metrics_.finished("count", kOutcomeFailed), 0);
    EXPECT_EQ(metrics_.dead_lettered("count"), 0);
    EXPECT_EQ(metrics_.results("succeeded"), 1);
    EXPECT_EQ(metrics_.results("failed"), 0);
  }
};

TEST_F(UnpublishableResultTest, ItsFailureRefusedAsTooLargeTooGivesTheRequestBack) {
  RunWithFallbackPublishFailing(TooLarge());
}

TEST_F(UnpublishableResultTest, ItsFailureMeetingATransientErrorGivesTheRequestBack) {
  RunWithFallbackPublishFailing(absl::UnavailableError("broker unreachable"));
}

// The request's metadata travel with its result, so a result can be too large for them alone:
// the failure without output is refused as well, and goes out without the metadata too.
TEST_F(ExecutorOnAFaultyBackendTest, AFailureTooLargeForItsMetadataIsPublishedWithoutThem) {
  faults_.FailNext(FaultInjector::Op::kPublish, 2, TooLarge());
  Start();
  const json task{{"id", "t-1"},
                  {"type", "count"},
                  {"input", json::object()},
                  {"metadata", {{"label", std::string(1000, 'm')}}}};
  ASSERT_TRUE(memory_
                  ->PublishAndWait(kDefaultRequestStream,
                                   MakeEvent(kTaskRequestedType, "test", task.dump()))
                  .ok());
  auto results = AwaitResults(1);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].task_id, "t-1");
  EXPECT_EQ(results[0].status, TaskStatus::kFailed);
  EXPECT_EQ(results[0].error_kind, "result_too_large");
  EXPECT_TRUE(absl::StrContains(results[0].error, "output and metadata dropped"))
      << results[0].error;
  EXPECT_TRUE(results[0].metadata.empty());
  ASSERT_TRUE(calls_.AwaitCount(Op::kDeadLetter, 1));
  ASSERT_TRUE(metrics_.AwaitInFlight(0));
  EXPECT_EQ(faults_.injected(FaultInjector::Op::kPublish), 2);
  EXPECT_EQ(calls_.Count(Op::kNack), 0) << "given back to run again";
  EXPECT_EQ(handler_->runs(), 1);
  EXPECT_EQ(metrics_.finished("count", kOutcomeFailed), 1);
  EXPECT_EQ(metrics_.results("failed"), 1);
}

// Fails for good on every run; counts its runs.
class FailingHandler final : public TaskHandler {
 public:
  std::string type() const override { return "fail"; }
  TaskOutcome Handle(TaskContext&) override {
    monitor_.Update([&] { ++runs_; });
    return TaskOutcome::Permanent("bad input");
  }
  int runs() const { return monitor_.Read([&] { return runs_; }); }

 private:
  testing::Monitor monitor_;
  int runs_ = 0;
};

TEST_F(ExecutorOnAFaultyBackendTest, AFinalFailureWhoseResultIsNotPublishedIsGivenBackNotDeadLettered) {
  auto failing = std::make_unique<FailingHandler>();
  FailingHandler* handler = failing.get();
  ASSERT_TRUE(handlers_.Register(std::move(failing)).ok());
  faults_.FailNext(FaultInjector::Op::kPublish, 1, absl::UnavailableError("broker unreachable"));
  Start();
  Submit("t-fail", "fail");
  ASSERT_TRUE(calls_.AwaitCount(Op::kNack, 1));
  EXPECT_FALSE(calls_.Calls(Op::kNack)[0].failed) << "an unpublished result is no failed attempt";
  EXPECT_EQ(calls_.Count(Op::kDeadLetter), 0) << "dead-lettered without its failed result";
  EXPECT_EQ(calls_.Count(Op::kAck), 0);
  // Its next run fails again; this time the result goes out before the dead letter.
  ASSERT_TRUE(AdvanceUntil([&] { return calls_.Count(Op::kDeadLetter) >= 1; },
                           options_.fetch_error_backoff));
  auto results = AwaitResults(1);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].task_id, "t-fail");
  EXPECT_EQ(results[0].status, TaskStatus::kFailed);
  EXPECT_EQ(results[0].error_kind, "permanent");
  EXPECT_EQ(results[0].deliveries, 2);
  EXPECT_EQ(results[0].attempts, 1);
  ASSERT_TRUE(metrics_.AwaitInFlight(0));
  EXPECT_EQ(calls_.Count(Op::kDeadLetter), 1);
  EXPECT_EQ(calls_.Count(Op::kNack), 1);
  EXPECT_EQ(handler->runs(), 2);
}

TEST_F(ExecutorOnAFaultyBackendTest, AnInvalidRequestWhoseResultIsNotPublishedIsGivenBackNotDeadLettered) {
  faults_.FailNext(FaultInjector::Op::kPublish, 1, absl::UnavailableError("broker unreachable"));
  Start();
  Submit("t-bad", "no-such-type");
  ASSERT_TRUE(calls_.AwaitCount(Op::kNack, 1));
  EXPECT_FALSE(calls_.Calls(Op::kNack)[0].failed);
  EXPECT_EQ(calls_.Count(Op::kDeadLetter), 0) << "dead-lettered without its invalid result";
  EXPECT_EQ(calls_.Count(Op::kAck), 0);
  // Judged again on its next delivery, when the result goes out before the dead letter.
  ASSERT_TRUE(AdvanceUntil([&] { return calls_.Count(Op::kDeadLetter) >= 1; },
                           options_.fetch_error_backoff));
  auto results = AwaitResults(1);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].task_id, "t-bad");
  EXPECT_EQ(results[0].error_kind, "invalid");
  EXPECT_EQ(results[0].deliveries, 2);
  ASSERT_TRUE(metrics_.AwaitInFlight(0));
  EXPECT_EQ(calls_.Count(Op::kDeadLetter), 1);
  EXPECT_EQ(calls_.Count(Op::kNack), 1);
  EXPECT_EQ(calls_.Count(Op::kAck), 0);
  EXPECT_EQ(handler_->runs(), 0);
  // Each delivery was judged invalid; only the second was settled.
  EXPECT_EQ(metrics_.finished(kUnknownTypeLabel, kOutcomeInvalid), 2);
  EXPECT_EQ(metrics_.dead_lettered(kUnknownTypeLabel), 1);
  EXPECT_EQ(metrics_.results("failed"), 1);
}

TEST_F(ExecutorOnAFaultyBackendTest, AnInvalidRequestsResultRefusedAsTooLargeIsSettledOnceAsSuch) {
  // A result without output can be too large too (its error, its metadata): giving it back
  // would meet the same refusal on every delivery.
  faults_.FailNext(FaultInjector::Op::kPublish, 1, TooLarge());
  Start();
  Submit("t-bad", "no-such-type");
  auto results = AwaitResults(1);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].status, TaskStatus::kFailed);
  EXPECT_EQ(results[0].error_kind, "result_too_large");
  EXPECT_TRUE(absl::StrContains(results[0].error, "error dropped")) << results[0].error;
  ASSERT_TRUE(calls_.AwaitCount(Op::kDeadLetter, 1));
  ASSERT_TRUE(metrics_.AwaitInFlight(0));
  EXPECT_TRUE(absl::StrContains(calls_.Calls(Op::kDeadLetter)[0].reason, "refused by the backend"));
  EXPECT_EQ(calls_.Count(Op::kNack), 0);
  EXPECT_EQ(calls_.Count(Op::kAck), 0);
  EXPECT_EQ(metrics_.finished(kUnknownTypeLabel, kOutcomeInvalid), 1);
  EXPECT_EQ(metrics_.dead_lettered(kUnknownTypeLabel), 1);
}

TEST_F(ExecutorOnAFaultyBackendTest, AFailedAckLeavesTheTaskToRunAgainRatherThanLosingIt) {
  options_.reclaim_enabled = true;
  options_.reclaim_min_idle = absl::Minutes(5);
  options_.reclaim_interval = absl::Seconds(30);
  faults_.FailNext(FaultInjector::Op::kAck, 1, absl::UnavailableError("connection reset"));
  Start();
  Submit("t-1");
  ASSERT_TRUE(AwaitLogCount("ack failed", 1));
  ASSERT_EQ(AwaitResults(1).size(), 1u);
  // The unacknowledged delivery is an orphan now: reclaimed once idle, run again (at least
  // once: the duplicate result is the price), and acked this time.
  ASSERT_TRUE(AdvanceUntil([&] { return handler_->runs() >= 2; }, options_.reclaim_interval));
  auto results = AwaitResults(2);
  ASSERT_EQ(results.size(), 2u);
  EXPECT_EQ(results[1].task_id, "t-1");
  // Redelivered, not failed: the second run is still attempt 1, on delivery 2.
  EXPECT_EQ(results[1].attempts, 1);
  EXPECT_EQ(results[1].deliveries, 2);
  ASSERT_TRUE(calls_.AwaitCount(Op::kAck, 2));
  EXPECT_EQ(handler_->runs(), 2);
}

TEST_F(ExecutorOnAFaultyBackendTest, ADroppedConnectionPausesWorkThatResumesOnReconnect) {
  // Before Start: a fetch that passed the check before the drop could still see the task.
  faults_.DropConnection("executor-1");
  Start();
  Submit("t-1");
  // Fetches fail (and wait their backoff) while the connection is down; nothing runs.
  ASSERT_TRUE(AwaitInjected(FaultInjector::Op::kFetch, 1));
  ASSERT_TRUE(AdvanceUntil([&] { return faults_.injected(FaultInjector::Op::kFetch) >= 2; },
                           options_.fetch_error_backoff));
  EXPECT_EQ(handler_->runs(), 0);
  faults_.Reconnect();
  ASSERT_TRUE(AdvanceUntil([&] { return handler_->runs() >= 1; }, options_.fetch_error_backoff));
  auto results = AwaitResults(1);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].status, TaskStatus::kSucceeded);
  EXPECT_EQ(handler_->runs(), 1);
}

// The service's /readyz, in process, on a registered fault-injecting memory backend.
FaultInjector& ServiceFaults() {
  static auto* faults = new FaultInjector();
  return *faults;
}

class ServiceReadinessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    BackendRegistration registration;
    registration.name = "memory_faults";
    registration.description = "memory with injected faults (tests)";
    registration.option_env_prefix = "MEMORY_FAULTS_OPTION_";
    registration.factory =
        [](const BackendConfig& config) -> absl::StatusOr<std::unique_ptr<EventStream>> {
      return memory::NewFaultInjectingEventStream(memory::NewMemoryEventStream(config.clock),
                                                  &ServiceFaults());
    };
    absl::Status registered = BackendRegistry::Global().Register(std::move(registration));
    ASSERT_TRUE(registered.ok() || absl::IsAlreadyExists(registered)) << registered;
    Environment env{{"EVENT_STREAM_TYPE", "memory_faults"},
                    {"EXECUTOR_HTTP_ADDR", "127.0.0.1:0"},
                    {"LOG_LEVEL", "off"}};
    auto config = service::ParseServiceConfig(env, BackendRegistry::Global().Names());
    ASSERT_TRUE(config.ok()) << config.status();
    log_ = std::make_unique<service::JsonLog>(service::LogLevel::kOff);
    service_ = std::make_unique<service::Service>(*config, env, log_.get());
    ASSERT_TRUE(service_->Start().ok());
  }
  void TearDown() override {
    ServiceFaults().Reconnect();
    ServiceFaults().Resume();
    if (service_ != nullptr) service_->Stop();
  }

  testing::RawResponse Readyz() {
    testing::RawHttpClient client(service_->http_port());
    auto response = client.RoundTrip("GET /readyz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    EXPECT_TRUE(response.has_value()) << "no answer from /readyz";
    return response.value_or(testing::RawResponse{});
  }

  std::unique_ptr<service::JsonLog> log_;
  std::unique_ptr<service::Service> service_;
};

TEST_F(ServiceReadinessTest, ReadyzGoesDownWhileTheBackendIsUnreachableAndUpWhenItAnswers) {
  EXPECT_EQ(Readyz().status, 200);
  ServiceFaults().DropAllConnections();
  const testing::RawResponse down = Readyz();
  EXPECT_EQ(down.status, 503);
  EXPECT_TRUE(absl::StrContains(down.body, "UNAVAILABLE")) << down.body;
  ServiceFaults().Reconnect();
  EXPECT_EQ(Readyz().status, 200);
}

TEST_F(ServiceReadinessTest, ReadyzGoesDownWhenTheBackendHangsAndUpWhenItAnswersAgain) {
  ServiceFaults().Stall();
  // The probe's Ping gives up after its 2 s timeout: a hung backend is not ready.
  const testing::RawResponse down = Readyz();
  EXPECT_EQ(down.status, 503);
  EXPECT_TRUE(absl::StrContains(down.body, "DEADLINE_EXCEEDED")) << down.body;
  ServiceFaults().Resume();
  EXPECT_EQ(Readyz().status, 200);
}

}  // namespace
}  // namespace eventbus::executor
