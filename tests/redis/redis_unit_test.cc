// REDIS_URL parsing, options and the wire format's encoder/decoder: no server needed.
#include <string>
#include <vector>

#include <hiredis/hiredis.h>

#include "absl/strings/match.h"
#include "eventbus/redis/redis_event_stream.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "wire.h"

namespace eventbus::redis {
namespace {

TEST(ParseRedisUrl, HostPortAndDb) {
  auto ep = ParseRedisUrl("redis://cache.internal:6380/3");
  ASSERT_TRUE(ep.ok()) << ep.status();
  EXPECT_EQ(ep->host, "cache.internal");
  EXPECT_EQ(ep->port, 6380);
  EXPECT_EQ(ep->db, 3);
  EXPECT_TRUE(ep->password.empty());
  EXPECT_TRUE(ep->unix_path.empty());
  EXPECT_EQ(ep->Describe(), "redis://cache.internal:6380/3");
}

TEST(ParseRedisUrl, DefaultsPortAndDb) {
  auto ep = ParseRedisUrl("redis://localhost");
  ASSERT_TRUE(ep.ok()) << ep.status();
  EXPECT_EQ(ep->port, 6379);
  EXPECT_EQ(ep->db, 0);
}

TEST(ParseRedisUrl, UserAndPercentEncodedPassword) {
  auto ep = ParseRedisUrl("redis://alice:p%40ss%3Aw0rd@10.0.0.5:7000/1");
  ASSERT_TRUE(ep.ok()) << ep.status();
  EXPECT_EQ(ep->user, "alice");
  EXPECT_EQ(ep->password, "p@ss:w0rd");
  EXPECT_EQ(ep->host, "10.0.0.5");
  EXPECT_EQ(ep->port, 7000);
  EXPECT_EQ(ep->db, 1);
  EXPECT_FALSE(absl::StrContains(ep->Describe(), "p@ss")) << ep->Describe();
}

TEST(ParseRedisUrl, PasswordWithoutUser) {
  auto with_colon = ParseRedisUrl("redis://:secret@h:1");
  ASSERT_TRUE(with_colon.ok()) << with_colon.status();
  EXPECT_EQ(with_colon->user, "");
  EXPECT_EQ(with_colon->password, "secret");
  auto bare = ParseRedisUrl("redis://secret@h:1");
  ASSERT_TRUE(bare.ok()) << bare.status();
  EXPECT_EQ(bare->password, "secret");
}

TEST(ParseRedisUrl, Ipv6Host) {
  auto ep = ParseRedisUrl("redis://[::1]:6390");
  ASSERT_TRUE(ep.ok()) << ep.status();
  EXPECT_EQ(ep->host, "::1");
  EXPECT_EQ(ep->port, 6390);
  EXPECT_EQ(ep->Describe(), "redis://[::1]:6390/0");
}

TEST(ParseRedisUrl, UnixSocketWithDb) {
  auto ep = ParseRedisUrl("unix:///run/redis/redis.sock?db=2");
  ASSERT_TRUE(ep.ok()) << ep.status();
  EXPECT_EQ(ep->unix_path, "/run/redis/redis.sock");
  EXPECT_TRUE(ep->host.empty());
  EXPECT_EQ(ep->db, 2);
}

TEST(ParseRedisUrl, UnixSocketWithPassword) {
  auto ep = ParseRedisUrl("unix://:pw@/tmp/r.sock");
  ASSERT_TRUE(ep.ok()) << ep.status();
  EXPECT_EQ(ep->unix_path, "/tmp/r.sock");
  EXPECT_EQ(ep->password, "pw");
}

TEST(ParseRedisUrl, MalformedUrlsNameRedisUrlAndNeverThePassword) {
  const std::vector<std::string> bad = {
      "",
      "localhost:6379",
      "http://localhost:6379",
      "redis://",
      "redis://host:notaport",
      "redis://host:0",
      "redis://host:70000",
      "redis://host:",
      "redis://host:6379/x",
      "redis://host:6379/-1",
      "redis://[::1:6379",
      "redis://user:topsecret@host:bad",
      "redis://host:6379?timeout=3",
      "redis://u:%zz@host",
      "rediss://host:6379",
      "unix://relative/path.sock",
      "unix:///tmp/r.sock?db=nope",
  };
  for (const std::string& url : bad) {
    auto ep = ParseRedisUrl(url);
    ASSERT_FALSE(ep.ok()) << url;
    EXPECT_EQ(ep.status().code(), absl::StatusCode::kInvalidArgument) << url;
    EXPECT_TRUE(absl::StrContains(ep.status().message(), "REDIS_URL")) << ep.status();
    EXPECT_FALSE(absl::StrContains(ep.status().message(), "topsecret")) << ep.status();
  }
}

TEST(RedisOptions, DefaultsToTheLocalServer) {
  RedisOptions options;
  EXPECT_EQ(options.endpoint.Describe(), "redis://127.0.0.1:6379/0");
  EXPECT_TRUE(options.endpoint.password.empty());
}

TEST(RedisOptionsFromConfig, ReadsKnownKeysAndRejectsUnknownOnes) {
  BackendConfig config;
  config.url = "redis://h:1/2";
  config.options = {{"command.timeout", "250ms"}, {"stream.maxlen", "1000"},
                    {"publish.batch.size", "64"}, {"fetch.slice", "50ms"}};
  auto options = RedisOptionsFromConfig(config);
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->endpoint.db, 2);
  EXPECT_EQ(options->command_timeout, absl::Milliseconds(250));
  EXPECT_EQ(options->max_stream_length, 1000);
  EXPECT_EQ(options->publish_batch_size, 64);
  EXPECT_EQ(options->fetch_slice, absl::Milliseconds(50));

  config.options = {{"comand.timeout", "1s"}};
  auto unknown = RedisOptionsFromConfig(config);
  ASSERT_FALSE(unknown.ok());
  EXPECT_TRUE(absl::StrContains(unknown.status().message(), "comand.timeout")) << unknown.status();

  config.options = {{"command.timeout", "soon"}};
  auto bad = RedisOptionsFromConfig(config);
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "command.timeout")) << bad.status();

  config.options.clear();
  config.url.clear();
  auto defaults = RedisOptionsFromConfig(config);
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->endpoint.host, "127.0.0.1");
  EXPECT_EQ(defaults->endpoint.port, 6379);
}

TEST(RegisterRedisBackend, RegistersUnderRedisWithItsEnvironmentNames) {
  BackendRegistry registry;
  ASSERT_TRUE(RegisterRedisBackend(registry).ok());
  ASSERT_TRUE(RegisterRedisBackend(registry).ok()) << "must be idempotent";
  EXPECT_EQ(registry.Names(), std::vector<std::string>{"redis"});
  auto config = registry.ConfigFromEnvironment(
      "redis", {{"REDIS_URL", "redis://h:9/1"}, {"REDIS_OPTION_STREAM_MAXLEN", "10"}});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->url, "redis://h:9/1");
  EXPECT_EQ(config->options.at("stream.maxlen"), "10");
  auto defaulted = registry.ConfigFromEnvironment("redis", {});
  ASSERT_TRUE(defaulted.ok());
  EXPECT_EQ(defaulted->url, "redis://127.0.0.1:6379");
}

TEST(RegisterRedisBackend, MalformedUrlFailsBeforeConnecting) {
  BackendRegistry registry;
  ASSERT_TRUE(RegisterRedisBackend(registry).ok());
  auto stream = registry.CreateFromEnvironment(
      {{"EVENT_STREAM_TYPE", "redis"}, {"REDIS_URL", "redis://:hunter2@host:port"}});
  ASSERT_FALSE(stream.ok());
  EXPECT_EQ(stream.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(stream.status().message(), "REDIS_URL")) << stream.status();
  EXPECT_FALSE(absl::StrContains(stream.status().message(), "hunter2")) << stream.status();
}

TEST(RegisterRedisBackend, BadOptionsAreFoundByCheckConfigWithoutAServer) {
  BackendRegistry registry;
  ASSERT_TRUE(RegisterRedisBackend(registry).ok());
  for (const auto& [name, value] : std::vector<std::pair<std::string, std::string>>{
           {"REDIS_OPTION_FETCH_SLICE", "soon"},
           {"REDIS_OPTION_PUBLISH_BATCH_SIZE", "0"},
           {"REDIS_OPTION_MAX_EVENT_BYTES", "16MB"},
           {"REDIS_OPTION_COMMAND_TIMEOUT", ""},
           {"REDIS_OPTION_NO_SUCH_THING", "1"}}) {
    auto config = registry.ConfigFromEnvironment("redis", {{name, value}});
    absl::Status status = config.ok() ? registry.CheckConfig("redis", *config) : config.status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << name << "=" << value;
    EXPECT_TRUE(absl::StrContains(status.message(), name)) << status;
  }
  auto sized = RedisOptionsFromConfig(
      BackendConfig{.options = {{"max.event.bytes", "4MiB"}, {"fetch.slice", "PT0.5S"}}});
  ASSERT_TRUE(sized.ok()) << sized.status();
  EXPECT_EQ(sized->max_event_bytes, size_t{4} << 20);
  EXPECT_EQ(sized->fetch_slice, absl::Milliseconds(500));
  auto empty_url = registry.ConfigFromEnvironment("redis", {{"REDIS_URL", ""}});
  EXPECT_EQ(empty_url.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(empty_url.status().message(), "REDIS_URL is set but empty"))
      << empty_url.status();
}

// Issue 9: a password with '@' or '/' (or no user) leaked through the URL error messages.
TEST(RegisterRedisBackend, UrlErrorsNeverShowAPasswordWithSeparators) {
  for (const std::string url : {"redis://:pa/ss@h:bad", "redis://:p@ss@host:99999",
                                "redis://u:p@ss@host:6379/x", "rediss://:pa/ss@h"}) {
    auto ep = ParseRedisUrl(url);
    ASSERT_FALSE(ep.ok()) << url;
    EXPECT_FALSE(absl::StrContains(ep.status().message(), "pa/ss")) << ep.status();
    EXPECT_FALSE(absl::StrContains(ep.status().message(), "p@ss")) << ep.status();
  }
}

// --- wire format ---

wire::Fields FieldsOf(const Event& event) {
  std::vector<std::string> args;
  wire::AppendFields(event, args);
  wire::Fields fields;
  for (size_t i = 0; i + 1 < args.size(); i += 2) fields.emplace_back(args[i], args[i + 1]);
  return fields;
}

wire::Fields Minimal() {
  return {{"specversion", "1.0"}, {"id", "e-1"}, {"source", "/cli"}, {"type", "demo.created"}};
}

// The publish path's RESP encoding is byte for byte what hiredis makes of the same arguments.
TEST(Wire, RespCommandIsWhatHiredisFormatsFromTheArguments) {
  Event event = MakeEvent("io.example.type", "//source", std::string("bin\0ary\r\n\xff", 10));
  event.set_subject("sübject");
  event.set_key("k");
  SetEventTime(event, absl::FromUnixNanos(1'700'000'000'123'456'789));
  (*event.mutable_headers())["traceparent"] = "00-abc-def-01";
  (*event.mutable_headers())["empty"] = "";
  std::vector<std::string> args = {"XADD", "s", "MAXLEN", "~", "100", "*"};
  wire::AppendFields(event, args);
  wire::RespCommand command;
  for (absl::string_view arg : {"XADD", "s", "MAXLEN", "~", "100", "*"}) command.Add(arg);
  wire::AppendFields(event, command);
  EXPECT_EQ(command.arguments(), args.size());

  std::vector<const char*> argv;
  std::vector<size_t> lens;
  for (const std::string& arg : args) {
    argv.push_back(arg.data());
    lens.push_back(arg.size());
  }
  char* formatted = nullptr;
  const int length = redisFormatCommandArgv(&formatted, static_cast<int>(args.size()),
                                            argv.data(), lens.data());
  ASSERT_GT(length, 0);
  const std::string expected(formatted, static_cast<size_t>(length));
  redisFreeCommand(formatted);
  EXPECT_EQ(command.Take(), expected);
  EXPECT_EQ(command.arguments(), 0u);
}

TEST(Wire, EncodeDecodeRoundTripsEveryAttribute) {
  Event event = MakeEvent("io.example.type", "//source", std::string("bin\0ary\xff", 8));
  event.set_subject("sübject");
  event.set_data_content_type("application/octet-stream");
  event.set_data_schema("https://example.com/s");
  event.set_key("k-🔑");
  SetEventTime(event, absl::FromUnixNanos(1'700'000'000'123'456'789));
  (*event.mutable_headers())["traceparent"] = "00-abc-def-01";
  (*event.mutable_headers())["empty"] = "";
  auto decoded = wire::Decode(FieldsOf(event));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  std::string diff;
  google::protobuf::util::MessageDifferencer differencer;
  differencer.ReportDifferencesToString(&diff);
  EXPECT_TRUE(differencer.Compare(event, *decoded)) << diff;
  EXPECT_EQ(EventTime(*decoded), absl::FromUnixNanos(1'700'000'000'123'456'789));
}

TEST(Wire, FieldNamesAreTheDocumentedOnes) {
  Event event = MakeEvent("t", "s", "d");
  event.set_key("k");
  SetEventTime(event, absl::FromUnixSeconds(1'714'564'800));
  (*event.mutable_headers())["x"] = "y";
  wire::Fields fields = FieldsOf(event);
  std::vector<std::string> names;
  for (const auto& [name, value] : fields) names.push_back(name);
  EXPECT_EQ(names, (std::vector<std::string>{"specversion", "id", "source", "type", "time",
                                             "partitionkey", "h:x", "data"}));
  EXPECT_EQ(fields[4].second, "2024-05-01T12:00:00Z");
}

TEST(Wire, MinimalEntryDecodesWithEmptyDataAndNoTime) {
  auto event = wire::Decode(Minimal());
  ASSERT_TRUE(event.ok()) << event.status();
  EXPECT_EQ(event->id(), "e-1");
  EXPECT_EQ(event->type(), "demo.created");
  EXPECT_EQ(event->data(), "");
  EXPECT_FALSE(event->has_time());
}

TEST(Wire, AcceptsRfc3339OffsetsAndFractions) {
  for (const auto& [text, unix_micros] :
       std::vector<std::pair<std::string, int64_t>>{{"2024-05-01T12:00:00Z", 1'714'564'800'000'000},
                                                    {"2024-05-01T14:00:00.25+02:00", 1'714'564'800'250'000},
                                                    {"2024-05-01T12:00:00.000001Z", 1'714'564'800'000'001}}) {
    wire::Fields fields = Minimal();
    fields.emplace_back("time", text);
    auto event = wire::Decode(fields);
    ASSERT_TRUE(event.ok()) << text << ": " << event.status();
    EXPECT_EQ(absl::ToUnixMicros(EventTime(*event)), unix_micros) << text;
  }
}

void ExpectMalformed(const wire::Fields& fields, absl::string_view reason_part) {
  auto event = wire::Decode(fields);
  ASSERT_FALSE(event.ok()) << "decoded: " << event->ShortDebugString();
  EXPECT_EQ(event.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(event.status().message(), reason_part))
      << event.status() << " should mention " << reason_part;
}

TEST(Wire, RejectsMissingRequiredFields) {
  for (const char* required : {"specversion", "id", "source", "type"}) {
    wire::Fields fields;
    for (const auto& f : Minimal()) {
      if (f.first != required) fields.push_back(f);
    }
    ExpectMalformed(fields, required);
  }
  ExpectMalformed({{"garbage", "\xff\xfe"}}, "garbage");
}

TEST(Wire, RejectsEmptyRequiredValuesAndWrongSpecVersion) {
  wire::Fields empty_type = Minimal();
  empty_type[3].second = "";
  ExpectMalformed(empty_type, "type");
  wire::Fields old = Minimal();
  old[0].second = "0.3";
  ExpectMalformed(old, "specversion");
}

TEST(Wire, RejectsBadTimes) {
  for (const char* text : {"yesterday", "2024-13-01T00:00:00Z", "2024-05-01 12:00:00", "1714564800", ""}) {
    wire::Fields fields = Minimal();
    fields.emplace_back("time", text);
    ExpectMalformed(fields, "time");
  }
}

TEST(Wire, RejectsGarbageBytesInTextAttributesButNotInData) {
  wire::Fields bad_type = Minimal();
  bad_type[3].second = std::string("\xc3\x28", 2);
  ExpectMalformed(bad_type, "UTF-8");
  wire::Fields bad_header = Minimal();
  bad_header.emplace_back("h:trace", std::string("\xed\xa0\x80", 3));  // a lone surrogate
  ExpectMalformed(bad_header, "UTF-8");
  wire::Fields binary_data = Minimal();
  binary_data.emplace_back("data", std::string("\x00\xff\xfe", 3));
  auto event = wire::Decode(binary_data);
  ASSERT_TRUE(event.ok()) << event.status();
  EXPECT_EQ(event->data(), std::string("\x00\xff\xfe", 3));
}

TEST(Wire, RejectsUnknownAndDuplicateFields) {
  wire::Fields unknown = Minimal();
  unknown.emplace_back("tpye", "x");
  ExpectMalformed(unknown, "unknown field 'tpye'");
  wire::Fields duplicate = Minimal();
  duplicate.emplace_back("id", "e-2");
  ExpectMalformed(duplicate, "duplicate field 'id'");
}

TEST(Wire, RenderRawEntryIsLosslessAndReadable) {
  const std::string rendered =
      wire::RenderRawEntry({{"type", "a b"}, {"data", std::string("\x00\n\xff", 3)}});
  EXPECT_EQ(rendered, "type a b\ndata \\000\\n\\377\n");
}

// Found by tests/fuzz (redis_wire): a space in a field name read as the name/value separator.
TEST(Wire, RenderRawEntryEscapesSpacesInNames) {
  EXPECT_EQ(wire::RenderRawEntry({{"h:a b1", "c d"}}), "h:a\\040b1 c d\n");
}

}  // namespace
}  // namespace eventbus::redis
