// JqWorkerPool and JqExpression against real eventbus-jq-worker processes: runaway programs
// end at their deadline, the pool recovers, killed workers are reaped. Deadlines are real
// (the workers burn real CPU), and short: 300 ms.
#include "eventbus/executor/jq_worker_pool.h"

#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "eventbus/executor/jq_expression.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace eventbus::executor {
namespace {

using ::nlohmann::json;
using ::testing::AnyOf;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

constexpr absl::Duration kShortDeadline = absl::Milliseconds(300);
// Room for killing, reaping and a loaded machine (2 cores shared by several builds).
constexpr auto kSlack = std::chrono::milliseconds(1500);

std::shared_ptr<JqWorkerPool> MustCreate(JqWorkerPoolOptions options = {}) {
  absl::StatusOr<std::shared_ptr<JqWorkerPool>> pool = JqWorkerPool::Create(std::move(options));
  EXPECT_TRUE(pool.ok()) << pool.status();
  return pool.ok() ? *pool : nullptr;
}

JqExpression MustCompile(const std::shared_ptr<JqWorkerPool>& pool, absl::string_view program) {
  JqOptions options;
  options.pool = pool;
  absl::StatusOr<JqExpression> expression = JqExpression::Compile(program, options);
  EXPECT_TRUE(expression.ok()) << program << ": " << expression.status();
  return *std::move(expression);
}

JqDeadline Within(absl::Duration timeout) {
  JqDeadline deadline;
  deadline.timeout = timeout;
  return deadline;
}

// Alive and not a zombie: a reaped process has no /proc entry (unless its pid was reused by
// then, which would not be a zombie either).
bool IsZombieOrAlive(int pid) {
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  return stat.good();
}

bool IsZombie(int pid) {
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  std::string line;
  if (!std::getline(stat, line)) return false;
  const size_t paren = line.rfind(')');
  return paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] == 'Z';
}

struct Runaway {
  const char* program;
  const char* why;
};

class RunawayProgramTest : public ::testing::TestWithParam<Runaway> {};

TEST_P(RunawayProgramTest, EndsWithAnErrorWithinItsDeadlineAndThePoolStillWorks) {
  if (!JqWorkerPool::MemoryLimitEnforced() && absl::string_view(GetParam().program) ==
                                                   "{} | .a[1e9] = 1") {
    GTEST_SKIP() << "AddressSanitizer build: no RLIMIT_AS, and this one writes 16 GB";
  }
  std::shared_ptr<JqWorkerPool> pool = MustCreate({.workers = 2});
  ASSERT_NE(pool, nullptr);
  JqExpression runaway = MustCompile(pool, GetParam().program);

  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<json> out = runaway.Evaluate(json(nullptr), json(), Within(kShortDeadline));
  const auto elapsed = std::chrono::steady_clock::now() - start;

  EXPECT_THAT(out.status().code(), AnyOf(absl::StatusCode::kDeadlineExceeded,
                                         absl::StatusCode::kResourceExhausted))
      << GetParam().why << ": " << out.status();
  EXPECT_LT(elapsed, std::chrono::milliseconds(300) + kSlack) << GetParam().why;
  EXPECT_THAT(pool->WorkerPids().size(), testing::Le(2u));

  absl::StatusOr<json> normal = MustCompile(pool, "{sum: (.a + .b)}").Evaluate(json{{"a", 1}, {"b", 2}});
  ASSERT_TRUE(normal.ok()) << normal.status();
  EXPECT_EQ(*normal, json({{"sum", 3}}));
}

INSTANTIATE_TEST_SUITE_P(
    Programs, RunawayProgramTest,
    ::testing::Values(Runaway{"def f: f; f", "endless recursion"},
                      Runaway{"last(range(infinite))", "endless loop"},
                      Runaway{"[range(1e9)]", "a billion elements"},
                      Runaway{"[repeat(1)]", "an endless array"},
                      Runaway{"{} | .a[1e9] = 1", "libjq aborts on the failed allocation"}));

TEST(JqWorkerPoolTest, AProgramOverTheMemoryLimitIsResourceExhaustedAndNamesTheLimit) {
  if (!JqWorkerPool::MemoryLimitEnforced()) GTEST_SKIP() << "AddressSanitizer: no RLIMIT_AS";
  std::shared_ptr<JqWorkerPool> pool =
      MustCreate({.workers = 1, .memory_limit_bytes = size_t{64} << 20});
  ASSERT_NE(pool, nullptr);
  for (const char* program : {"{} | .a[1e9] = 1", "[range(1e8)] | length"}) {
    absl::StatusOr<json> out =
        MustCompile(pool, program).Evaluate(json(nullptr), json(), Within(absl::Seconds(20)));
    EXPECT_TRUE(absl::IsResourceExhausted(out.status())) << program << ": " << out.status();
    EXPECT_THAT(out.status().message(),
                HasSubstr("jq program exceeded the memory limit of 64 MiB"))
        << program;
  }
  absl::StatusOr<json> normal = MustCompile(pool, ". + 1").Evaluate(json(41));
  ASSERT_TRUE(normal.ok()) << normal.status();
  EXPECT_EQ(*normal, json(42));
}

TEST(JqWorkerPoolTest, FourRunawaysOnFourWorkersAllEndAndTheNextProgramSucceeds) {
  std::shared_ptr<JqWorkerPool> pool = MustCreate({.workers = 4});
  ASSERT_NE(pool, nullptr);
  JqExpression runaway = MustCompile(pool, "last(range(infinite))");
  std::vector<absl::Status> statuses(4);
  std::vector<std::thread> threads;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      statuses[i] = runaway.Evaluate(json(nullptr), json(), Within(kShortDeadline)).status();
    });
  }
  for (std::thread& thread : threads) thread.join();
  const auto elapsed = std::chrono::steady_clock::now() - start;
  for (const absl::Status& status : statuses) {
    EXPECT_TRUE(absl::IsDeadlineExceeded(status)) << status;
  }
  EXPECT_LT(elapsed, std::chrono::milliseconds(300) + kSlack);
  EXPECT_THAT(pool->WorkerPids(), IsEmpty());  // all four killed; fresh ones start on demand

  absl::StatusOr<json> normal = MustCompile(pool, "[.[] * 2]").Evaluate(json{1, 2});
  ASSERT_TRUE(normal.ok()) << normal.status();
  EXPECT_EQ(*normal, json({2, 4}));
}

TEST(JqWorkerPoolTest, AKilledWorkerIsReapedAndLeavesNoZombie) {
  std::shared_ptr<JqWorkerPool> pool = MustCreate({.workers = 1});
  ASSERT_NE(pool, nullptr);
  const std::vector<int> before = pool->WorkerPids();
  ASSERT_EQ(before.size(), 1u);  // Create started one to check the binary
  ASSERT_TRUE(IsZombieOrAlive(before[0]));

  absl::StatusOr<json> out = MustCompile(pool, "def f: f; f")
                                 .Evaluate(json(nullptr), json(), Within(kShortDeadline));
  ASSERT_TRUE(absl::IsDeadlineExceeded(out.status())) << out.status();
  EXPECT_THAT(out.status().message(), HasSubstr("worker was killed"));
  EXPECT_FALSE(IsZombie(before[0]));
  EXPECT_FALSE(IsZombieOrAlive(before[0])) << "pid " << before[0] << " is still in /proc";
  EXPECT_THAT(pool->WorkerPids(), Not(testing::Contains(before[0])));
}

TEST(JqWorkerPoolTest, AWorkerThatDiesIsReplacedAndReportedAsInternal) {
  std::shared_ptr<JqWorkerPool> pool = MustCreate({.workers = 1});
  ASSERT_NE(pool, nullptr);
  JqExpression expression = MustCompile(pool, ". * 2");
  const std::vector<int> pids = pool->WorkerPids();
  ASSERT_EQ(pids.size(), 1u);
  // From outside, as the kernel's OOM killer would (a SIGSEGV would be caught by ASan's
  // handler in sanitizer builds and become an exit status).
  ASSERT_EQ(kill(pids[0], SIGKILL), 0);
  absl::StatusOr<json> out = expression.Evaluate(json(1));
  EXPECT_TRUE(absl::IsInternal(out.status())) << out.status();
  EXPECT_THAT(std::string(out.status().message()), HasSubstr("died"));
  EXPECT_THAT(std::string(out.status().message()), HasSubstr("SIGKILL"));
  EXPECT_FALSE(IsZombieOrAlive(pids[0]));

  absl::StatusOr<json> again = expression.Evaluate(json(21));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, json(42));
}

TEST(JqWorkerPoolTest, CancellationKillsTheWorkerWithoutWaitingForTheDeadline) {
  std::shared_ptr<JqWorkerPool> pool = MustCreate({.workers = 1});
  ASSERT_NE(pool, nullptr);
  JqExpression runaway = MustCompile(pool, "last(range(infinite))");
  std::atomic<int> checks{0};
  JqDeadline deadline;
  deadline.timeout = absl::Minutes(5);
  deadline.cancelled = [&checks] { return ++checks > 5; };  // the executor gave up
  absl::StatusOr<json> out = runaway.Evaluate(json(nullptr), json(), deadline);
  EXPECT_TRUE(absl::IsCancelled(out.status())) << out.status();
  EXPECT_THAT(pool->WorkerPids(), IsEmpty());
  EXPECT_TRUE(MustCompile(pool, ".").Evaluate(json(1)).ok());
}

TEST(JqWorkerPoolTest, OutputLargerThanTheBoundIsResourceExhausted) {
  std::shared_ptr<JqWorkerPool> pool = MustCreate({.workers = 1, .max_output_bytes = 1 << 20});
  ASSERT_NE(pool, nullptr);
  absl::StatusOr<std::string> big =
      MustCompile(pool, "[range(300000)]").EvaluateText("null");  // ~2 MB of JSON
  EXPECT_TRUE(absl::IsResourceExhausted(big.status())) << big.status();
  EXPECT_THAT(big.status().message(), HasSubstr("larger than 1 MiB"));
  absl::StatusOr<std::vector<std::string>> many =
      MustCompile(pool, "range(300000)").EvaluateAllText("null");  // many small outputs
  EXPECT_TRUE(absl::IsResourceExhausted(many.status())) << many.status();
  absl::StatusOr<std::string> fits = MustCompile(pool, "[range(1000)] | length").EvaluateText("null");
  ASSERT_TRUE(fits.ok()) << fits.status();
  EXPECT_EQ(*fits, "1000");
}

TEST(JqWorkerPoolTest, AFloodQueuesForTheWorkersInsteadOfStartingMore) {
  std::shared_ptr<JqWorkerPool> pool = MustCreate({.workers = 2});
  ASSERT_NE(pool, nullptr);
  JqExpression expression = MustCompile(pool, "{n: (. + 1)}");
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  std::atomic<size_t> most_workers{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 25; ++i) {
        absl::StatusOr<json> out = expression.Evaluate(json(t * 100 + i));
        if (!out.ok() || *out != json({{"n", t * 100 + i + 1}})) ++failures;
        size_t now = pool->WorkerPids().size();
        size_t seen = most_workers.load();
        while (now > seen && !most_workers.compare_exchange_weak(seen, now)) {
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_LE(most_workers.load(), 2u);
}

TEST(JqWorkerPoolTest, WorkersDoNotInheritTheServicesEnvironment) {
  setenv("EVENTBUS_JQ_POOL_TEST_SECRET", "hunter2", 1);
  std::shared_ptr<JqWorkerPool> pool = MustCreate({.workers = 1});
  unsetenv("EVENTBUS_JQ_POOL_TEST_SECRET");
  ASSERT_NE(pool, nullptr);
  const std::vector<int> pids = pool->WorkerPids();
  ASSERT_EQ(pids.size(), 1u);
  std::ifstream environ(absl::StrCat("/proc/", pids[0], "/environ"));
  ASSERT_TRUE(environ.good());
  const std::string text((std::istreambuf_iterator<char>(environ)),
                         std::istreambuf_iterator<char>());
  EXPECT_THAT(text, Not(HasSubstr("hunter2")));
  const std::vector<std::string> entries = absl::StrSplit(text, '\0', absl::SkipEmpty());
  for (const std::string& entry : entries) {
    EXPECT_FALSE(absl::StartsWith(entry, "PATH=")) << entry;
    EXPECT_FALSE(absl::StartsWith(entry, "HOME=")) << entry;
  }
}

TEST(JqWorkerPoolTest, TheWorkerIsLookedForNextToTheRunningBinaryFirst) {
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  ASSERT_GT(n, 0);
  std::string dir(self, static_cast<size_t>(n));
  dir.resize(dir.rfind('/'));
  const std::vector<std::string> paths = JqWorkerPool::CandidatePaths({});
  ASSERT_GE(paths.size(), 3u);
  EXPECT_EQ(paths[0], dir + "/eventbus-jq-worker");
  EXPECT_EQ(paths[1], dir + "/../libexec/eventbus-jq-worker");  // bin/ and libexec/ installed
  EXPECT_THAT(paths, testing::Contains(testing::EndsWith("/libexec/eventbus-jq-worker")));
  // An explicit path is the only candidate.
  EXPECT_THAT(JqWorkerPool::CandidatePaths({.worker_path = "/opt/w"}), testing::ElementsAre("/opt/w"));
}

// The soft limit of one row of /proc/<pid>/limits ("Max address space"), as text.
std::string SoftLimit(int pid, absl::string_view row) {
  std::ifstream limits(absl::StrCat("/proc/", pid, "/limits"));
  std::string line;
  while (std::getline(limits, line)) {
    if (!absl::StartsWith(line, row)) continue;
    std::vector<std::string> words =
        absl::StrSplit(line.substr(row.size()), ' ', absl::SkipEmpty());
    return words.empty() ? "" : words[0];
  }
  return "";
}

TEST(JqWorkerPoolTest, WorkersRunUnderTheirMemoryStackAndCoreLimits) {
  std::shared_ptr<JqWorkerPool> pool =
      MustCreate({.workers = 1, .memory_limit_bytes = size_t{300} << 20});
  ASSERT_NE(pool, nullptr);
  const std::vector<int> pids = pool->WorkerPids();
  ASSERT_EQ(pids.size(), 1u);
  if (JqWorkerPool::MemoryLimitEnforced()) {
    EXPECT_EQ(SoftLimit(pids[0], "Max address space"), absl::StrCat(300 << 20));
  }
  // Room for jq 1.6's recursive free of deeply nested values, on the main thread.
  EXPECT_EQ(SoftLimit(pids[0], "Max stack size"), absl::StrCat(512 << 20));
  EXPECT_EQ(SoftLimit(pids[0], "Max core file size"), "0");
}

TEST(JqWorkerPoolTest, AProgramOverTheCpuLimitIsResourceExhausted) {
  std::shared_ptr<JqWorkerPool> pool = MustCreate({.workers = 1, .cpu_limit = absl::Seconds(1)});
  ASSERT_NE(pool, nullptr);
  // The deadline is far: the CPU limit ends it (after 1 to 2 s of CPU: whole seconds).
  absl::StatusOr<json> out = MustCompile(pool, "last(range(infinite))")
                                 .Evaluate(json(nullptr), json(), Within(absl::Seconds(30)));
  EXPECT_TRUE(absl::IsResourceExhausted(out.status())) << out.status();
  EXPECT_THAT(std::string(out.status().message()), HasSubstr("CPU limit of 1s"));
  EXPECT_TRUE(MustCompile(pool, ".").Evaluate(json(1)).ok());
}

TEST(JqWorkerPoolTest, AMissingWorkerBinaryIsAClearStartUpError) {
  absl::StatusOr<std::shared_ptr<JqWorkerPool>> pool =
      JqWorkerPool::Create({.worker_path = "/nonexistent/eventbus-jq-worker"});
  EXPECT_TRUE(absl::IsFailedPrecondition(pool.status())) << pool.status();
  EXPECT_THAT(pool.status().message(), HasSubstr("/nonexistent/eventbus-jq-worker"));
  EXPECT_THAT(pool.status().message(), HasSubstr("EXECUTOR_JQ_WORKER"));
}

TEST(JqWorkerPoolTest, TheEnvironmentOverridesWhereTheWorkerIsFound) {
  setenv("EXECUTOR_JQ_WORKER", "/nonexistent/from-env/eventbus-jq-worker", 1);
  absl::StatusOr<std::shared_ptr<JqWorkerPool>> pool = JqWorkerPool::Create();
  unsetenv("EXECUTOR_JQ_WORKER");
  EXPECT_TRUE(absl::IsFailedPrecondition(pool.status())) << pool.status();
  EXPECT_THAT(pool.status().message(), HasSubstr("/nonexistent/from-env/eventbus-jq-worker"));
  // Without the override the build tree's worker is found.
  EXPECT_TRUE(JqWorkerPool::Create().ok());
}

TEST(JqWorkerPoolTest, ABinaryThatIsNotTheWorkerFailsTheStartUp) {
  for (const char* impostor : {"/bin/true", "/bin/cat"}) {
    absl::StatusOr<std::shared_ptr<JqWorkerPool>> pool =
        JqWorkerPool::Create({.worker_path = impostor});
    EXPECT_TRUE(absl::IsFailedPrecondition(pool.status())) << impostor << ": " << pool.status();
    EXPECT_THAT(pool.status().message(), HasSubstr("does not answer")) << impostor;
  }
}

TEST(JqWorkerPoolTest, BadOptionsAreInvalidArgument) {
  EXPECT_TRUE(absl::IsInvalidArgument(JqWorkerPool::Create({.workers = 0}).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(
      JqWorkerPool::Create({.default_timeout = absl::ZeroDuration()}).status()));
}

TEST(JqWorkerPoolTest, DestroyingThePoolReapsItsWorkers) {
  std::vector<int> pids;
  {
    std::shared_ptr<JqWorkerPool> pool = MustCreate({.workers = 3});
    ASSERT_NE(pool, nullptr);
    JqExpression expression = MustCompile(pool, ".");
    std::vector<std::thread> threads;
    for (int t = 0; t < 3; ++t) {
      threads.emplace_back([&] { EXPECT_TRUE(expression.Evaluate(json(1)).ok()); });
    }
    for (std::thread& thread : threads) thread.join();
    pids = pool->WorkerPids();
    ASSERT_FALSE(pids.empty());
  }
  for (int pid : pids) EXPECT_FALSE(IsZombieOrAlive(pid)) << pid;
}

}  // namespace
}  // namespace eventbus::executor
