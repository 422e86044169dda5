#include "wire_format.h"

#include <algorithm>

#include "absl/time/time.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace eventbus::kafka {
namespace {

std::string HeaderValue(const KafkaRecord& record, absl::string_view name) {
  auto it = std::find_if(record.headers.begin(), record.headers.end(),
                         [&](const auto& h) { return h.first == name; });
  return it == record.headers.end() ? "<absent>" : it->second;
}

Event FullEvent() {
  Event event = MakeEvent("io.example.order.created", "/orders", std::string("a\0b", 3));
  event.set_id("id-1");
  event.set_spec_version("1.0");
  event.set_subject("order/42");
  event.set_data_content_type("application/json");
  event.set_data_schema("https://example.com/s");
  event.set_key("customer-7");
  SetEventTime(event, absl::FromUnixMicros(1'700'000'123'456'789));
  (*event.mutable_headers())["traceparent"] = "00-abc-01";
  (*event.mutable_headers())["X-Request-Id"] = "r-1";
  return event;
}

TEST(WireFormatTest, EncodesTheCloudEventsKafkaBindingInBinaryMode) {
  auto record = EncodeEvent(FullEvent());
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_EQ(record->key, "customer-7");
  EXPECT_EQ(record->value, std::string("a\0b", 3));
  EXPECT_EQ(HeaderValue(*record, "ce_id"), "id-1");
  EXPECT_EQ(HeaderValue(*record, "ce_source"), "/orders");
  EXPECT_EQ(HeaderValue(*record, "ce_specversion"), "1.0");
  EXPECT_EQ(HeaderValue(*record, "ce_type"), "io.example.order.created");
  EXPECT_EQ(HeaderValue(*record, "ce_subject"), "order/42");
  EXPECT_EQ(HeaderValue(*record, "ce_dataschema"), "https://example.com/s");
  EXPECT_EQ(HeaderValue(*record, "ce_time"), "2023-11-14T22:15:23.456789Z");
  EXPECT_EQ(HeaderValue(*record, "content-type"), "application/json");
  // Extension names (lower-case alphanumerics) get the ce_ prefix; other names go as-is.
  EXPECT_EQ(HeaderValue(*record, "ce_traceparent"), "00-abc-01");
  EXPECT_EQ(HeaderValue(*record, "X-Request-Id"), "r-1");
}

TEST(WireFormatTest, RoundTripPreservesEveryField) {
  const Event event = FullEvent();
  auto record = EncodeEvent(event);
  ASSERT_TRUE(record.ok()) << record.status();
  auto decoded = DecodeEvent(*record);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(decoded->event, event))
      << decoded->event.DebugString();
  EXPECT_TRUE(decoded->internal.empty());
}

TEST(WireFormatTest, NoKeyIsANullKeyAndNoTimeIsNoHeader) {
  Event event = MakeEvent("t", "/s");
  event.set_id("x");
  event.set_spec_version("1.0");
  auto record = EncodeEvent(event);
  ASSERT_TRUE(record.ok());
  EXPECT_FALSE(record->key.has_value());
  EXPECT_EQ(HeaderValue(*record, "ce_time"), "<absent>");
  auto decoded = DecodeEvent(*record);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_FALSE(decoded->event.has_time());
  EXPECT_TRUE(decoded->event.key().empty());
}

TEST(WireFormatTest, ReservedHeaderNamesAreRejectedWithTheName) {
  for (const char* name : {"content-type", "ce_x", "eventbus-attempt"}) {
    Event event = FullEvent();
    (*event.mutable_headers())[name] = "v";
    auto record = EncodeEvent(event);
    ASSERT_FALSE(record.ok()) << name;
    EXPECT_EQ(record.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(record.status().message().find(name), absl::string_view::npos)
        << record.status();
  }
}

TEST(WireFormatTest, HeadersNamedLikeAttributesTravelAsPlainHeaders) {
  Event event = FullEvent();
  (*event.mutable_headers())["type"] = "not-the-type";
  (*event.mutable_headers())["partitionkey"] = "not-the-key";
  (*event.mutable_headers())["Content-Type"] = "text/plain";
  auto record = EncodeEvent(event);
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_EQ(HeaderValue(*record, "type"), "not-the-type");
  EXPECT_EQ(HeaderValue(*record, "ce_type"), "io.example.order.created");
  auto decoded = DecodeEvent(*record);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(decoded->event, event))
      << decoded->event.DebugString();
}

KafkaRecord KcatStyleRecord() {
  // What `kcat -P -k k1 -H ce_id=1 -H ce_source=/cli -H ce_type=t -H ce_specversion=1.0`
  // produces.
  KafkaRecord record;
  record.key = "k1";
  record.value = "{\"a\":1}";
  record.headers = {{"ce_id", "1"}, {"ce_source", "/cli"}, {"ce_type", "t"},
                    {"ce_specversion", "1.0"}, {"content-type", "application/json"},
                    {"ce_foo", "bar"}, {"Trace", "abc"}, {"eventbus-attempt", "3"}};
  return record;
}

TEST(WireFormatTest, DecodesAForeignProducersRecord) {
  auto decoded = DecodeEvent(KcatStyleRecord());
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  const Event& event = decoded->event;
  EXPECT_EQ(event.id(), "1");
  EXPECT_EQ(event.source(), "/cli");
  EXPECT_EQ(event.type(), "t");
  EXPECT_EQ(event.key(), "k1");
  EXPECT_EQ(event.data(), "{\"a\":1}");
  EXPECT_EQ(event.data_content_type(), "application/json");
  EXPECT_EQ(event.headers().at("foo"), "bar");
  EXPECT_EQ(event.headers().at("Trace"), "abc");
  EXPECT_FALSE(event.headers().contains("eventbus-attempt"));
  EXPECT_EQ(decoded->internal.at("eventbus-attempt"), "3");
}

TEST(WireFormatTest, PartitionKeyHeaderServesWhenTheRecordHasNoKey) {
  KafkaRecord record = KcatStyleRecord();
  record.key.reset();
  record.headers.emplace_back("ce_partitionkey", "pk");
  auto decoded = DecodeEvent(record);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->event.key(), "pk");
}

TEST(WireFormatTest, MalformedRecordsGiveAReason) {
  struct Case {
    std::string drop;           // header removed
    std::pair<std::string, std::string> add;  // header added
    std::string reason;         // expected in the message
  };
  const Case cases[] = {
      // The checks every backend shares (eventbus::ValidateEnvelope), with its reasons.
      {"ce_type", {}, "required attribute 'type' is missing or empty"},
      {"ce_id", {}, "required attribute 'id' is missing or empty"},
      {"ce_source", {}, "required attribute 'source' is missing or empty"},
      {"ce_specversion", {}, "attribute 'specversion' must be \"1.0\", got \"\""},
      {"ce_specversion", {"ce_specversion", "0.3"}, "0.3"},
      {"ce_id", {"ce_id", "caf\xe9"}, "attribute 'id' is not valid UTF-8"},
      {"", {"traceparent", "\xc0\xaf"}, "header 'traceparent' is not valid UTF-8"},
      {"", {"ce_time", "yesterday"}, "attribute 'time'"},
      // Found by tests/fuzz (kafka_wire): absl::ParseTime's own spellings of infinity.
      {"", {"ce_time", "infinite-future"}, "attribute 'time'"},
      {"", {"ce_time", "infinite-past"}, "attribute 'time'"},
      {"", {"ce_", "x"}, "no attribute"},
      {"", {"ce_ce_x", "x"}, "reserved"},
      {"", {"ce_eventbus-attempt", "1"}, "reserved"},
      {"", {"ce_content-type", "a/b"}, "reserved"},
  };
  for (const Case& c : cases) {
    KafkaRecord record = KcatStyleRecord();
    std::erase_if(record.headers, [&](const auto& h) { return h.first == c.drop; });
    if (!c.add.first.empty()) record.headers.push_back(c.add);
    auto decoded = DecodeEvent(record);
    ASSERT_FALSE(decoded.ok()) << c.reason;
    EXPECT_EQ(decoded.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(decoded.status().message().find(c.reason), absl::string_view::npos)
        << decoded.status();
  }
}

TEST(WireFormatTest, EverythingDecodedEncodesAgain) {
  // A retry or a dead letter re-encodes what was consumed: that must never fail.
  KafkaRecord record = KcatStyleRecord();
  record.headers.emplace_back("type", "plain");
  record.headers.emplace_back("Content-Type", "x/y");
  record.headers.emplace_back("ce_X-Odd", "1");
  record.headers.emplace_back(std::string("odd\x01\x00", 5), "control bytes are UTF-8");
  auto decoded = DecodeEvent(record);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  auto encoded = EncodeEvent(decoded->event);
  ASSERT_TRUE(encoded.ok()) << encoded.status();
  auto again = DecodeEvent(*encoded);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(again->event, decoded->event));
}

TEST(WireFormatTest, GarbageBytesInHeadersDoNotCrash) {
  KafkaRecord record;
  record.value = std::string("\xff\x00\xfe", 3);
  record.headers = {{std::string("\x00\x01", 2), std::string("\xff", 1)},
                    {"ce_type", std::string(1000, '\0')}};
  auto decoded = DecodeEvent(record);
  EXPECT_FALSE(decoded.ok());
}

}  // namespace
}  // namespace eventbus::kafka
