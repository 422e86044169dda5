#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
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

TEST(ValidateEnvelope, AcceptsAMinimalAndAFullEvent) {
  Event event = MakeEvent("t", "/s", std::string("bin\0\xff", 5));  // data is bytes
  EXPECT_TRUE(ValidateEnvelope(event).ok()) << ValidateEnvelope(event);
  event.set_subject("h\xc3\xa9llo \xf0\x9f\x94\x91");
  event.set_key(std::string(kMaxAttributeBytes, 'k'));
  (*event.mutable_headers())["traceparent"] = std::string(kMaxHeaderValueBytes, 'v');
  SetEventTime(event, absl::FromUnixSeconds(-62135596800));  // 0001-01-01
  EXPECT_TRUE(ValidateEnvelope(event).ok()) << ValidateEnvelope(event);
}

// The reasons every backend's dead letters carry (tests/conformance checks they are the same
// on every backend): one per rule, naming the attribute or header.
TEST(ValidateEnvelope, NamesWhatIsWrong) {
  auto reason = [](auto mutate) {
    Event event = MakeEvent("t", "/s");
    mutate(event);
    absl::Status status = ValidateEnvelope(event);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    return std::string(status.message());
  };
  EXPECT_EQ(reason([](Event& e) { e.set_spec_version("0.3"); }),
            "attribute 'specversion' must be \"1.0\", got \"0.3\"");
  EXPECT_EQ(reason([](Event& e) { e.clear_id(); }), "required attribute 'id' is missing or empty");
  EXPECT_EQ(reason([](Event& e) { e.clear_source(); }),
            "required attribute 'source' is missing or empty");
  EXPECT_EQ(reason([](Event& e) { e.clear_type(); }),
            "required attribute 'type' is missing or empty");
  EXPECT_EQ(reason([](Event& e) { e.set_id("caf\xe9"); }), "attribute 'id' is not valid UTF-8");
  EXPECT_EQ(reason([](Event& e) { e.set_key("\xed\xa0\x80"); }),  // a lone surrogate
            "attribute 'partitionkey' is not valid UTF-8");
  EXPECT_EQ(reason([](Event& e) { e.set_source(std::string(kMaxAttributeBytes + 1, 's')); }),
            "attribute 'source' is 4097 bytes; at most 4096 are allowed");
  EXPECT_EQ(reason([](Event& e) { (*e.mutable_headers())["trace"] = "\xc0\xaf"; }),
            "header 'trace' is not valid UTF-8");
  EXPECT_EQ(reason([](Event& e) { (*e.mutable_headers())["\xff"] = "v"; }),
            "header name '\\xff' is not valid UTF-8");
  EXPECT_EQ(reason([](Event& e) { (*e.mutable_headers())[""] = "v"; }), "a header name is empty");
  EXPECT_EQ(reason([](Event& e) { (*e.mutable_headers())[std::string(257, 'h')] = "v"; }).substr(0, 13),
            "header name '");
  EXPECT_EQ(reason([](Event& e) { e.mutable_time()->set_seconds(253402300800); }),
            "attribute 'time' is outside years 0001..9999");
  EXPECT_EQ(reason([](Event& e) { e.mutable_time()->set_nanos(-1); }),
            "attribute 'time' has -1 nanoseconds (must be in [0, 1e9))");
}

TEST(ValidateEnvelope, PublishRefusesWhatDecodersWouldDeadLetter) {
  Event event = MakeEvent("t", "/s");
  (*event.mutable_headers())["h"] = "\x80";
  absl::Status status = NormalizeForPublish(event, absl::Now());
  EXPECT_EQ(status, ValidateEnvelope(event));
  EXPECT_EQ(MalformedEventReason(status.message()), "malformed event: header 'h' is not valid UTF-8");
}

TEST(IsValidUtf8, FollowsRfc3629) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain ascii"));
  EXPECT_TRUE(IsValidUtf8("h\xc3\xa9llo \xe6\x97\xa5 \xf0\x9f\x94\x91"));
  EXPECT_FALSE(IsValidUtf8("\xc0\xaf"));          // overlong '/'
  EXPECT_FALSE(IsValidUtf8("\xe2\x82"));          // truncated
  EXPECT_FALSE(IsValidUtf8("\xf4\x90\x80\x80"));  // beyond U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\x80"));              // stray continuation byte
  EXPECT_FALSE(IsValidUtf8("\xed\xa0\x80"));      // surrogate
}

TEST(TimeAttribute, RoundTripsAndRefusesWhatIsNotRfc3339) {
  const absl::Time t = absl::FromUnixMillis(1714564800500);
  EXPECT_EQ(FormatTimeAttribute(t), "2024-05-01T12:00:00.5Z");
  EXPECT_EQ(*ParseTimeAttribute("2024-05-01T14:00:00.5+02:00"), t);
  for (const char* bad : {"yesterday", "2024-13-01T00:00:00Z", "1714564800", "", "infinite-future"}) {
    absl::StatusOr<absl::Time> parsed = ParseTimeAttribute(bad);
    EXPECT_FALSE(parsed.ok()) << bad;
    EXPECT_NE(parsed.status().message().find("attribute 'time'"), absl::string_view::npos)
        << parsed.status();
  }
}

// FormatTimeAttribute formats common times by hand: it must agree with absl::FormatTime
// everywhere, including before the epoch, at leap days, at the fast path's edges and beyond.
TEST(TimeAttribute, FormatsExactlyAsAbslFormatTime) {
  auto expected = [](absl::Time t) {
    return absl::FormatTime("%Y-%m-%d%ET%H:%M:%E*SZ", t, absl::UTCTimeZone());
  };
  std::vector<absl::Time> times = {
      absl::UnixEpoch(),
      absl::UnixEpoch() - absl::Nanoseconds(1),
      absl::UnixEpoch() + absl::Nanoseconds(1),
      absl::FromUnixSeconds(951782400),       // 2000-02-29
      absl::FromUnixSeconds(4107542400),      // 2100-03-01 (2100 is not a leap year)
      absl::FromUnixSeconds(-62167219200),    // 0000-01-01T00:00:00Z
      absl::FromUnixSeconds(-30610224000),    // 1000-01-01T00:00:00Z
      absl::FromUnixSeconds(-30610224000) - absl::Nanoseconds(1),
      absl::FromUnixSeconds(-30610224000) + absl::Nanoseconds(1),
      absl::FromUnixSeconds(253402300799),    // 9999-12-31T23:59:59Z
      absl::FromUnixSeconds(253402300799) + absl::Nanoseconds(999999999),
      absl::FromUnixSeconds(253402300800),    // 10000-01-01
      absl::FromUnixSeconds(1714564800) + absl::Nanoseconds(120),
      absl::FromUnixSeconds(1714564800) + absl::Milliseconds(500),
      absl::FromUnixSeconds(1714564800) + absl::Nanoseconds(1) / 4,  // below a nanosecond
      absl::InfinitePast(),
      absl::InfiniteFuture(),
  };
  absl::BitGen gen;
  for (int i = 0; i < 20000; ++i) {
    times.push_back(absl::FromUnixNanos(absl::Uniform<int64_t>(
        gen, std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max())));
    times.push_back(absl::FromUnixSeconds(absl::Uniform<int64_t>(gen, -70000000000, 260000000000)) +
                    absl::Nanoseconds(absl::Uniform<int64_t>(gen, 0, 1000000000)));
  }
  for (absl::Time t : times) {
    ASSERT_EQ(FormatTimeAttribute(t), expected(t)) << absl::ToUnixNanos(t);
  }
}

TEST(NewEventId, IsAVersion4Uuid) {
  for (int i = 0; i < 1000; ++i) {
    const std::string id = NewEventId();
    ASSERT_EQ(id.size(), 36u) << id;
    for (int k = 0; k < 36; ++k) {
      if (k == 8 || k == 13 || k == 18 || k == 23) {
        ASSERT_EQ(id[k], '-') << id;
      } else {
        ASSERT_TRUE(absl::ascii_isxdigit(id[k]) && !absl::ascii_isupper(id[k])) << id;
      }
    }
    ASSERT_EQ(id[14], '4') << id;                                   // version
    ASSERT_NE(std::string("89ab").find(id[19]), std::string::npos) << id;  // variant
  }
}

TEST(DeadLetter, ReasonIsMadeValidUtf8AndBounded) {
  Delivery delivery;
  delivery.event = MakeEvent("t", "/s");
  delivery.stream = "orders";
  delivery.id = "1";
  Event dead = MakeDeadLetter(delivery, "g", std::string("bad \xff byte"));
  EXPECT_TRUE(ValidateEnvelope(dead).ok()) << ValidateEnvelope(dead);
  EXPECT_EQ(dead.headers().at(std::string(kDlqReasonHeader)), "bad \\xff byte");
  std::string long_reason(4095, 'x');
  long_reason += "\xc3\xa9 and more";  // a two-byte character across the 4 KiB bound
  dead = MakeDeadLetter(delivery, "g", long_reason);
  EXPECT_TRUE(ValidateEnvelope(dead).ok()) << ValidateEnvelope(dead);
  EXPECT_EQ(dead.headers().at(std::string(kDlqReasonHeader)), std::string(4095, 'x'));
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
