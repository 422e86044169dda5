#include <memory>
#include <thread>

#include "absl/synchronization/notification.h"
#include "eventbus/clock.h"
#include "eventbus/event.h"
#include "eventbus/event_stream.h"
#include "eventbus/registry.h"
#include "eventbus/status_macros.h"
#include "gtest/gtest.h"

namespace eventbus {
namespace {

TEST(NormalizeForPublish, FillsIdSpecVersionAndTime) {
  Event event;
  event.set_type("t");
  event.set_source("/s");
  const absl::Time now = absl::FromUnixMicros(1'700'000'000'123'456);
  ASSERT_TRUE(NormalizeForPublish(event, now).ok());
  EXPECT_EQ(event.id().size(), 36u);
  EXPECT_EQ(event.id()[14], '4') << "a version 4 UUID";
  EXPECT_EQ(event.spec_version(), "1.0");
  EXPECT_EQ(EventTime(event), now);
}

TEST(NormalizeForPublish, KeepsWhatTheCallerSet) {
  Event event = MakeEvent("t", "/s");
  event.set_id("my-id");
  SetEventTime(event, absl::FromUnixSeconds(5));
  ASSERT_TRUE(NormalizeForPublish(event, absl::FromUnixSeconds(99)).ok());
  EXPECT_EQ(event.id(), "my-id");
  EXPECT_EQ(EventTime(event), absl::FromUnixSeconds(5));
}

TEST(NormalizeForPublish, NamesTheMissingAttribute) {
  Event no_source = MakeEvent("t", "");
  absl::Status status = NormalizeForPublish(no_source, absl::Now());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("'source'"), absl::string_view::npos) << status;
  Event wrong_version = MakeEvent("t", "/s");
  wrong_version.set_spec_version("0.3");
  status = NormalizeForPublish(wrong_version, absl::Now());
  EXPECT_NE(status.message().find("specversion"), absl::string_view::npos) << status;
}

TEST(EventTime, HandlesTimesBeforeTheEpoch) {
  Event event;
  const absl::Time t = absl::FromUnixNanos(-1'500'000'001);
  SetEventTime(event, t);
  EXPECT_GE(event.time().nanos(), 0);
  EXPECT_EQ(EventTime(event), t);
  EXPECT_EQ(EventTime(Event()), absl::InfinitePast());
}

// Found by tests/fuzz (redis_wire): a time in year 9999 became 2262-04-11T23:47:16.854775807Z.
TEST(EventTime, KeepsTimesBeyondTheNanosecondRange) {
  for (const absl::Time t : {absl::FromUnixSeconds(253402300799) + absl::Nanoseconds(5),
                             absl::FromUnixSeconds(-62135596800) + absl::Nanoseconds(999999999)}) {
    Event event;
    SetEventTime(event, t);
    EXPECT_EQ(EventTime(event), t) << t;
    EXPECT_GE(event.time().nanos(), 0);
    EXPECT_LT(event.time().nanos(), 1'000'000'000);
  }
}

TEST(NewEventId, IsUnique) {
  std::set<std::string> ids;
  for (int i = 0; i < 1000; ++i) ids.insert(NewEventId());
  EXPECT_EQ(ids.size(), 1000u);
}

TEST(ValidateName, RejectsEmptyLongAndWhitespace) {
  EXPECT_TRUE(ValidateName("stream", "orders.v1").ok());
  EXPECT_EQ(ValidateName("stream", "").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateName("stream", std::string(201, 'x')).code(),
            absl::StatusCode::kInvalidArgument);
  absl::Status status = ValidateName("consumer group", "a b");
  EXPECT_NE(status.message().find("consumer group"), absl::string_view::npos) << status;
  EXPECT_FALSE(ValidateName("stream", std::string("a\0b", 3)).ok());
}

TEST(DeadLetter, CarriesOriginReasonAndCount) {
  Delivery delivery;
  delivery.event = MakeEvent("t", "/s", "data");
  delivery.stream = "orders";
  delivery.id = "42";
  delivery.delivery_count = 3;
  Event dead = MakeDeadLetter(delivery, "billing", "boom");
  EXPECT_EQ(dead.headers().at("dlqreason"), "boom");
  EXPECT_EQ(dead.headers().at("dlqoriginstream"), "orders");
  EXPECT_EQ(dead.headers().at("dlqoriginid"), "42");
  EXPECT_EQ(dead.headers().at("dlqorigingroup"), "billing");
  EXPECT_EQ(dead.headers().at("dlqdeliverycount"), "3");
  EXPECT_EQ(dead.data(), "data");
  SubscribeOptions options;
  options.stream = "orders";
  EXPECT_EQ(DeadLetterStreamName(options), "orders.dlq");
  options.dead_letter_stream = "poison";
  EXPECT_EQ(DeadLetterStreamName(options), "poison");
}

TEST(ManualClock, AdvancesOnlyWhenTold) {
  ManualClock clock(absl::FromUnixSeconds(100));
  EXPECT_EQ(clock.Now(), absl::FromUnixSeconds(100));
  clock.Advance(absl::Seconds(5));
  EXPECT_EQ(clock.Now(), absl::FromUnixSeconds(105));
  clock.Advance(-absl::Seconds(5));
  EXPECT_EQ(clock.Now(), absl::FromUnixSeconds(105)) << "time never goes back";
}

TEST(ManualClock, ListenersRunOnAdvanceUntilUnregistered) {
  ManualClock clock;
  int calls = 0;
  auto listener = clock.OnAdvance([&] { ++calls; });
  clock.Advance(absl::Seconds(1));
  clock.Advance(absl::Seconds(1));
  EXPECT_EQ(calls, 2);
  listener.reset();
  clock.Advance(absl::Seconds(1));
  EXPECT_EQ(calls, 2);
}


absl::StatusOr<std::unique_ptr<EventStream>> NoStream(const BackendConfig&) {
  return absl::UnavailableError("not a real backend");
}

TEST(BackendRegistry, UnknownTypeListsTheValidOnes) {
  BackendRegistry registry;
  ASSERT_TRUE(registry.Register({.name = "zeta", .factory = NoStream}).ok());
  ASSERT_TRUE(registry.Register({.name = "alpha", .factory = NoStream}).ok());
  auto made = registry.CreateFromEnvironment({{"EVENT_STREAM_TYPE", "bogus"}});
  ASSERT_EQ(made.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(made.status().message().find("EVENT_STREAM_TYPE=\"bogus\""), absl::string_view::npos)
      << made.status();
  EXPECT_NE(made.status().message().find("valid types: alpha, zeta"), absl::string_view::npos)
      << made.status();
}

TEST(BackendRegistry, RefusesDuplicatesAndEmptyRegistrations) {
  BackendRegistry registry;
  ASSERT_TRUE(registry.Register({.name = "x", .factory = NoStream}).ok());
  EXPECT_EQ(registry.Register({.name = "x", .factory = NoStream}).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(registry.Register({.name = "", .factory = NoStream}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.Register({.name = "y"}).code(), absl::StatusCode::kInvalidArgument);
}

TEST(BackendRegistry, ConfigComesFromTheUrlVariableAndOptionPrefix) {
  BackendRegistry registry;
  ASSERT_TRUE(registry
                  .Register({.name = "kafka",
                             .url_env = "KAFKA_BROKERS",
                             .default_url = "127.0.0.1:9092",
                             .option_env_prefix = "KAFKA_OPTION_",
                             .factory = NoStream})
                  .ok());
  auto defaults = registry.ConfigFromEnvironment("kafka", {});
  ASSERT_TRUE(defaults.ok());
  EXPECT_EQ(defaults->url, "127.0.0.1:9092");
  auto config = registry.ConfigFromEnvironment(
      "kafka", {{"KAFKA_BROKERS", "b1:9092,b2:9092"},
                {"KAFKA_OPTION_SECURITY_PROTOCOL", "SASL_SSL"},
                {"KAFKA_OPTION_SASL_MECHANISMS", "PLAIN"},
                {"KAFKA_OPTIONS_NOT_MINE", "x"},
                {"REDIS_URL", "redis://elsewhere"}});
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->url, "b1:9092,b2:9092");
  EXPECT_EQ(config->options.size(), 2u);
  EXPECT_EQ(config->options.at("security.protocol"), "SASL_SSL");
  EXPECT_EQ(config->options.at("sasl.mechanisms"), "PLAIN");
}

TEST(BackendRegistry, DefaultTypeIsMemoryAndFactoryErrorsPassThrough) {
  BackendRegistry registry;
  ASSERT_TRUE(registry.Register({.name = "memory", .factory = NoStream}).ok());
  auto made = registry.CreateFromEnvironment({});
  EXPECT_EQ(made.status().code(), absl::StatusCode::kUnavailable) << made.status();
}

absl::StatusOr<int> Half(int n) {
  if (n % 2 != 0) return absl::InvalidArgumentError("odd");
  return n / 2;
}

absl::StatusOr<int> Quarter(int n) {
  EVENTBUS_ASSIGN_OR_RETURN(int half, Half(n));
  EVENTBUS_ASSIGN_OR_RETURN(int quarter, Half(half));
  return quarter;
}

absl::Status CheckEven(int n) {
  EVENTBUS_RETURN_IF_ERROR(Half(n).status());
  return absl::OkStatus();
}

TEST(StatusMacros, PropagateErrorsAndValues) {
  EXPECT_EQ(*Quarter(8), 2);
  EXPECT_EQ(Quarter(6).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(CheckEven(2).ok());
  EXPECT_FALSE(CheckEven(3).ok());
}

}  // namespace
}  // namespace eventbus
