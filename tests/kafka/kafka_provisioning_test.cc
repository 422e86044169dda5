// Provisioning and readiness on a real broker: the warnings a user gets when the backend
// creates a topic and when a group has more consumers than partitions, and WaitReady
// bounding its wait.
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "eventbus/log.h"
#include "gtest/gtest.h"
#include "kafka_test_env.h"

namespace eventbus::kafka {
namespace {

using testing::KafkaBrokerEnvironment;
using testing::TestOptions;

[[maybe_unused]] ::testing::Environment* const kBroker =
    ::testing::AddGlobalTestEnvironment(new KafkaBrokerEnvironment);

class CapturedWarnings {
 public:
  CapturedWarnings() {
    SetLogSink(
        [this](const LogRecord& r) {
          std::lock_guard lock(mu_);
          lines_.push_back(absl::StrCat(r.component, ": ", r.message));
        },
        LogLevel::kWarning);
  }
  ~CapturedWarnings() { SetLogSink(nullptr); }

  int Count(absl::string_view needle) {
    std::lock_guard lock(mu_);
    int n = 0;
    for (const std::string& line : lines_) n += absl::StrContains(line, needle) ? 1 : 0;
    return n;
  }

 private:
  std::mutex mu_;
  std::vector<std::string> lines_;
};

std::string FreshTopic(absl::string_view what) { return absl::StrCat("prov.", what, ".", NewEventId()); }

TEST(KafkaProvisioning, CreatingATopicIsAWarningNamingItsPartitions) {
  CapturedWarnings warnings;
  KafkaOptions options = TestOptions();
  options.partitions = 2;
  auto stream = NewKafkaEventStream(options);
  ASSERT_TRUE(stream.ok()) << stream.status();
  const std::string topic = FreshTopic("created");
  ASSERT_TRUE((*stream)->PublishAndWait(topic, MakeEvent("t", "/prov")).ok());
  EXPECT_EQ(warnings.Count(absl::StrCat("created topic ", topic, " with 2 partitions")), 1);
  // An existing topic is used as it is, without a word.
  ASSERT_TRUE((*stream)->PublishAndWait(topic, MakeEvent("t", "/prov")).ok());
  auto again = NewKafkaEventStream(options);
  ASSERT_TRUE(again.ok());
  ASSERT_TRUE((*again)->PublishAndWait(topic, MakeEvent("t", "/prov")).ok());
  EXPECT_EQ(warnings.Count(absl::StrCat("created topic ", topic, " ")), 1);
}

TEST(KafkaProvisioning, AConsumerLeftWithoutPartitionsSaysTheGroupHasTooManyConsumers) {
  CapturedWarnings warnings;
  KafkaOptions options = TestOptions();
  options.partitions = 1;
  auto stream = NewKafkaEventStream(options);
  ASSERT_TRUE(stream.ok()) << stream.status();
  const std::string topic = FreshTopic("idle");
  const std::string group = absl::StrCat("g-", NewEventId());
  auto first = (*stream)->Subscribe({.stream = topic, .group = group, .consumer = "c1"});
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE((*first)->WaitReady(absl::Seconds(60)).ok());
  EXPECT_EQ(warnings.Count("was assigned no partition"), 0);

  auto second = (*stream)->Subscribe({.stream = topic, .group = group, .consumer = "c2"});
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_TRUE((*second)->WaitReady(absl::Seconds(60)).ok());
  // One partition, two consumers: exactly one of them idles, and says why.
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (warnings.Count("was assigned no partition") == 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(warnings.Count(absl::StrCat("of group ", group, " was assigned no partition of topic ",
                                        topic, ": the group has more consumers than")),
            1);
  ASSERT_TRUE((*second)->Close().ok());
  ASSERT_TRUE((*first)->Close().ok());
}

TEST(KafkaReadiness, WaitReadyFailsWithDeadlineExceededWhenNoBrokerAnswers) {
  KafkaOptions options = TestOptions();
  auto stream = NewKafkaEventStream(options);
  ASSERT_TRUE(stream.ok()) << stream.status();
  const std::string topic = FreshTopic("unready");
  auto sub = (*stream)->Subscribe({.stream = topic, .group = "g", .consumer = "c"});
  ASSERT_TRUE(sub.ok()) << sub.status();
  // A zero timeout right after Subscribe: the group cannot have assigned anything yet.
  absl::Status early = (*sub)->WaitReady(absl::ZeroDuration());
  EXPECT_EQ(early.code(), absl::StatusCode::kDeadlineExceeded) << early;
  EXPECT_TRUE(absl::StrContains(early.message(), topic)) << early;
  EXPECT_TRUE((*sub)->WaitReady(absl::Seconds(60)).ok());
  ASSERT_TRUE((*sub)->Close().ok());
  EXPECT_EQ((*sub)->WaitReady(absl::Seconds(1)).code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace eventbus::kafka
