#include "eventbus/executor/circuit_breaker.h"

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "eventbus/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace eventbus::executor {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;

constexpr char kHost[] = "https://api.example.com:443";

CircuitBreakerOptions Options(int failure_threshold = 3, int max_probes = 1,
                              int success_threshold = 1) {
  CircuitBreakerOptions options;
  options.failure_threshold = failure_threshold;
  options.open_duration = absl::Seconds(30);
  options.half_open_max_probes = max_probes;
  options.success_threshold = success_threshold;
  return options;
}

// Records every state change, in order.
struct Transitions {
  std::mutex mu;
  std::vector<std::tuple<std::string, CircuitState, CircuitState>> seen;

  CircuitStateCallback Callback() {
    return [this](absl::string_view host, CircuitState from, CircuitState to) {
      std::lock_guard<std::mutex> lock(mu);
      seen.emplace_back(std::string(host), from, to);
    };
  }
};

void Fail(CircuitBreaker& breaker, int times) {
  for (int i = 0; i < times; ++i) {
    absl::StatusOr<CircuitBreaker::Permit> permit = breaker.Acquire();
    ASSERT_TRUE(permit.ok()) << permit.status();
    permit->RecordFailure();
  }
}

void Succeed(CircuitBreaker& breaker) {
  absl::StatusOr<CircuitBreaker::Permit> permit = breaker.Acquire();
  ASSERT_TRUE(permit.ok()) << permit.status();
  permit->RecordSuccess();
}

class CircuitBreakerTest : public ::testing::Test {
 protected:
  std::shared_ptr<CircuitBreaker> Make(CircuitBreakerOptions options) {
    absl::StatusOr<std::shared_ptr<CircuitBreaker>> breaker =
        CircuitBreaker::Create(kHost, options, &clock_, transitions_.Callback());
    EXPECT_TRUE(breaker.ok()) << breaker.status();
    return *breaker;
  }

  ManualClock clock_;
  Transitions transitions_;
};

TEST_F(CircuitBreakerTest, StaysClosedBelowTheThreshold) {
  auto breaker = Make(Options(/*failure_threshold=*/3));
  Fail(*breaker, 2);
  EXPECT_EQ(breaker->state(), CircuitState::kClosed);
  EXPECT_TRUE(breaker->Acquire().ok());
}

TEST_F(CircuitBreakerTest, OpensAfterNConsecutiveFailures) {
  auto breaker = Make(Options(/*failure_threshold=*/3));
  Fail(*breaker, 3);
  EXPECT_EQ(breaker->state(), CircuitState::kOpen);
  EXPECT_THAT(transitions_.seen,
              ElementsAre(std::make_tuple(kHost, CircuitState::kClosed, CircuitState::kOpen)));
}

TEST_F(CircuitBreakerTest, SuccessResetsTheConsecutiveFailureCount) {
  auto breaker = Make(Options(/*failure_threshold=*/3));
  Fail(*breaker, 2);
  Succeed(*breaker);
  Fail(*breaker, 2);
  EXPECT_EQ(breaker->state(), CircuitState::kClosed);
  Fail(*breaker, 1);
  EXPECT_EQ(breaker->state(), CircuitState::kOpen);
}

TEST_F(CircuitBreakerTest, OpenCircuitRejectsFastNamingTheHost) {
  auto breaker = Make(Options(/*failure_threshold=*/1));
  Fail(*breaker, 1);
  for (int i = 0; i < 5; ++i) {
    absl::StatusOr<CircuitBreaker::Permit> permit = breaker->Acquire();
    ASSERT_FALSE(permit.ok());
    EXPECT_TRUE(absl::IsUnavailable(permit.status())) << permit.status();
    EXPECT_THAT(permit.status().message(), HasSubstr("circuit open for host"));
    EXPECT_THAT(permit.status().message(), HasSubstr(kHost));
  }
}

TEST_F(CircuitBreakerTest, RejectsUntilTheCoolDownElapsesThenHalfOpens) {
  auto breaker = Make(Options(/*failure_threshold=*/1));
  Fail(*breaker, 1);
  clock_.Advance(absl::Seconds(29));
  EXPECT_FALSE(breaker->Acquire().ok());
  EXPECT_EQ(breaker->state(), CircuitState::kOpen);

  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(breaker->state(), CircuitState::kHalfOpen);
  absl::StatusOr<CircuitBreaker::Permit> probe = breaker->Acquire();
  EXPECT_TRUE(probe.ok()) << probe.status();
}

TEST_F(CircuitBreakerTest, HalfOpenLetsOnlyTheConfiguredNumberOfProbesThrough) {
  auto breaker = Make(Options(/*failure_threshold=*/1, /*max_probes=*/2));
  Fail(*breaker, 1);
  clock_.Advance(absl::Seconds(30));
  absl::StatusOr<CircuitBreaker::Permit> first = breaker->Acquire();
  absl::StatusOr<CircuitBreaker::Permit> second = breaker->Acquire();
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(second.ok());
  absl::StatusOr<CircuitBreaker::Permit> third = breaker->Acquire();
  ASSERT_FALSE(third.ok());
  EXPECT_TRUE(absl::IsUnavailable(third.status()));
  EXPECT_THAT(third.status().message(), HasSubstr("half-open"));
}

TEST_F(CircuitBreakerTest, SuccessfulProbeClosesTheCircuit) {
  auto breaker = Make(Options(/*failure_threshold=*/1));
  Fail(*breaker, 1);
  clock_.Advance(absl::Seconds(30));
  Succeed(*breaker);
  EXPECT_EQ(breaker->state(), CircuitState::kClosed);
  // Closed again: calls flow without limit and failures count from zero.
  std::vector<CircuitBreaker::Permit> permits;
  for (int i = 0; i < 10; ++i) {
    absl::StatusOr<CircuitBreaker::Permit> permit = breaker->Acquire();
    ASSERT_TRUE(permit.ok());
    permits.push_back(std::move(*permit));
  }
  EXPECT_THAT(transitions_.seen,
              ElementsAre(std::make_tuple(kHost, CircuitState::kClosed, CircuitState::kOpen),
                          std::make_tuple(kHost, CircuitState::kOpen, CircuitState::kHalfOpen),
                          std::make_tuple(kHost, CircuitState::kHalfOpen, CircuitState::kClosed)));
}

TEST_F(CircuitBreakerTest, ClosingNeedsSuccessThresholdProbes) {
  auto breaker = Make(Options(/*failure_threshold=*/1, /*max_probes=*/1, /*success_threshold=*/2));
  Fail(*breaker, 1);
  clock_.Advance(absl::Seconds(30));
  Succeed(*breaker);
  EXPECT_EQ(breaker->state(), CircuitState::kHalfOpen);
  Succeed(*breaker);
  EXPECT_EQ(breaker->state(), CircuitState::kClosed);
}

TEST_F(CircuitBreakerTest, FailedProbeReopensAndRestartsTheCoolDown) {
  auto breaker = Make(Options(/*failure_threshold=*/1));
  Fail(*breaker, 1);
  clock_.Advance(absl::Seconds(30));
  Fail(*breaker, 1);  // the probe
  EXPECT_EQ(breaker->state(), CircuitState::kOpen);
  clock_.Advance(absl::Seconds(29));
  EXPECT_FALSE(breaker->Acquire().ok());
  clock_.Advance(absl::Seconds(1));
  EXPECT_TRUE(breaker->Acquire().ok());
  EXPECT_THAT(transitions_.seen,
              ElementsAre(std::make_tuple(kHost, CircuitState::kClosed, CircuitState::kOpen),
                          std::make_tuple(kHost, CircuitState::kOpen, CircuitState::kHalfOpen),
                          std::make_tuple(kHost, CircuitState::kHalfOpen, CircuitState::kOpen),
                          std::make_tuple(kHost, CircuitState::kOpen, CircuitState::kHalfOpen)));
}

TEST_F(CircuitBreakerTest, DroppedProbePermitFreesItsSlotWithoutChangingState) {
  auto breaker = Make(Options(/*failure_threshold=*/1));
  Fail(*breaker, 1);
  clock_.Advance(absl::Seconds(30));
  {
    absl::StatusOr<CircuitBreaker::Permit> probe = breaker->Acquire();
    ASSERT_TRUE(probe.ok());
    EXPECT_FALSE(breaker->Acquire().ok());
  }  // dropped: e.g. the task was cancelled before the call finished
  EXPECT_EQ(breaker->state(), CircuitState::kHalfOpen);
  EXPECT_TRUE(breaker->Acquire().ok());
}

TEST_F(CircuitBreakerTest, MovedPermitRecordsOnce) {
  auto breaker = Make(Options(/*failure_threshold=*/2));
  absl::StatusOr<CircuitBreaker::Permit> permit = breaker->Acquire();
  ASSERT_TRUE(permit.ok());
  CircuitBreaker::Permit moved = std::move(*permit);
  moved.RecordFailure();
  moved.RecordFailure();  // a second record is ignored
  permit->RecordFailure();  // the moved-from permit holds nothing
  EXPECT_EQ(breaker->state(), CircuitState::kClosed);
  Fail(*breaker, 1);
  EXPECT_EQ(breaker->state(), CircuitState::kOpen);
}

TEST_F(CircuitBreakerTest, OutcomeOfACallStartedInAnEarlierStateIsIgnored) {
  auto breaker = Make(Options(/*failure_threshold=*/1));
  absl::StatusOr<CircuitBreaker::Permit> slow_call = breaker->Acquire();  // closed
  ASSERT_TRUE(slow_call.ok());
  Fail(*breaker, 1);  // opens
  clock_.Advance(absl::Seconds(30));
  absl::StatusOr<CircuitBreaker::Permit> probe = breaker->Acquire();  // half-open
  ASSERT_TRUE(probe.ok());

  // The slow call from the closed era succeeds late: it says nothing about the host now.
  slow_call->RecordSuccess();
  EXPECT_EQ(breaker->state(), CircuitState::kHalfOpen);
  probe->RecordFailure();
  EXPECT_EQ(breaker->state(), CircuitState::kOpen);
}

TEST_F(CircuitBreakerTest, InvalidOptionsAreRejectedNamingTheField) {
  CircuitBreakerOptions options;
  options.failure_threshold = 0;
  absl::StatusOr<std::shared_ptr<CircuitBreaker>> breaker =
      CircuitBreaker::Create(kHost, options, &clock_);
  ASSERT_FALSE(breaker.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(breaker.status()));
  EXPECT_THAT(breaker.status().message(), HasSubstr("failure_threshold"));

  options = CircuitBreakerOptions();
  options.open_duration = absl::ZeroDuration();
  EXPECT_THAT(options.Validate().message(), HasSubstr("open_duration"));
  options = CircuitBreakerOptions();
  options.half_open_max_probes = 0;
  EXPECT_THAT(options.Validate().message(), HasSubstr("half_open_max_probes"));
  options = CircuitBreakerOptions();
  options.success_threshold = 0;
  EXPECT_THAT(options.Validate().message(), HasSubstr("success_threshold"));
  EXPECT_TRUE(CircuitBreakerOptions().Validate().ok());
}

TEST_F(CircuitBreakerTest, ConcurrentCallersNeverExceedTheProbeLimit) {
  auto breaker = Make(Options(/*failure_threshold=*/1, /*max_probes=*/3));
  Fail(*breaker, 1);
  clock_.Advance(absl::Seconds(30));
  std::atomic<int> granted{0};
  std::vector<std::thread> threads;
  std::vector<CircuitBreaker::Permit> held[8];
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 100; ++i) {
        absl::StatusOr<CircuitBreaker::Permit> permit = breaker->Acquire();
        if (permit.ok()) {
          granted.fetch_add(1);
          held[t].push_back(std::move(*permit));
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(granted.load(), 3);
}

TEST(CircuitBreakerRegistryTest, OneBreakerPerHost) {
  ManualClock clock;
  CircuitBreakerRegistry::Options options;
  options.breaker = Options(/*failure_threshold=*/1);
  Transitions transitions;
  auto registry = CircuitBreakerRegistry::Create(options, &clock, transitions.Callback());
  ASSERT_TRUE(registry.ok()) << registry.status();

  std::shared_ptr<CircuitBreaker> a = (*registry)->ForHost("http://a:80");
  EXPECT_EQ(a, (*registry)->ForHost("http://a:80"));
  Fail(*a, 1);
  EXPECT_TRUE((*registry)->ForHost("http://b:80")->Acquire().ok());
  EXPECT_FALSE((*registry)->ForHost("http://a:80")->Acquire().ok());
  EXPECT_THAT((*registry)->Snapshot(), ElementsAre(Pair("http://a:80", CircuitState::kOpen),
                                                   Pair("http://b:80", CircuitState::kClosed)));
  EXPECT_THAT(transitions.seen, ElementsAre(std::make_tuple("http://a:80", CircuitState::kClosed,
                                                            CircuitState::kOpen)));
}

TEST(CircuitBreakerRegistryTest, ForgetsOnlyHealthyIdleHostsWhenFull) {
  ManualClock clock;
  CircuitBreakerRegistry::Options options;
  options.breaker = Options(/*failure_threshold=*/1);
  options.max_hosts = 2;
  auto registry = CircuitBreakerRegistry::Create(options, &clock);
  ASSERT_TRUE(registry.ok());
  Fail(*(*registry)->ForHost("http://down:80"), 1);
  (*registry)->ForHost("http://healthy:80");
  (*registry)->ForHost("http://new:80");  // full: "healthy" is forgotten, "down" is kept
  EXPECT_THAT((*registry)->Snapshot(), ElementsAre(Pair("http://down:80", CircuitState::kOpen),
                                                   Pair("http://new:80", CircuitState::kClosed)));
  EXPECT_FALSE((*registry)->ForHost("http://down:80")->Acquire().ok());
}

TEST(CircuitBreakerRegistryTest, InvalidOptionsAreRejected) {
  ManualClock clock;
  CircuitBreakerRegistry::Options options;
  options.max_hosts = 0;
  EXPECT_TRUE(absl::IsInvalidArgument(CircuitBreakerRegistry::Create(options, &clock).status()));
  options = CircuitBreakerRegistry::Options();
  options.breaker.failure_threshold = -1;
  EXPECT_TRUE(absl::IsInvalidArgument(CircuitBreakerRegistry::Create(options, &clock).status()));
}

TEST(CircuitStateNameTest, NamesEveryState) {
  EXPECT_EQ(CircuitStateName(CircuitState::kClosed), "closed");
  EXPECT_EQ(CircuitStateName(CircuitState::kOpen), "open");
  EXPECT_EQ(CircuitStateName(CircuitState::kHalfOpen), "half_open");
}

}  // namespace
}  // namespace eventbus::executor
