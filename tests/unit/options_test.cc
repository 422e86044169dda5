// The typed configuration parser (eventbus/options.h) and secret redaction
// (eventbus/redact.h) that every backend and the service use.

#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "eventbus/options.h"
#include "eventbus/redact.h"
#include "eventbus/registry.h"
#include "gtest/gtest.h"

namespace eventbus {
namespace {

// The message of a failed parse, after checking it is InvalidArgument and names the setting.
template <typename T>
std::string ErrorOf(const absl::StatusOr<T>& result, absl::string_view setting) {
  EXPECT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << result.status();
  EXPECT_TRUE(absl::StrContains(result.status().message(), setting)) << result.status();
  return std::string(result.status().message());
}

TEST(ParseIntSetting, AcceptsIntegersInRangeOnly) {
  EXPECT_EQ(*ParseIntSetting("N", "42", 1, 100), 42);
  EXPECT_EQ(*ParseIntSetting("N", "-1", -1, 5), -1);
  EXPECT_EQ(ErrorOf(ParseIntSetting("N", "0", 1, 100), "N"),
            "N=\"0\" is invalid: expected an integer from 1 to 100");
  for (const char* bad : {"101", "4.5", "ten", "+5", " 5", "5 ", "0x10", "99999999999999999999"}) {
    ErrorOf(ParseIntSetting("N", bad, 1, 100), "N");
  }
}

TEST(ParseDurationSetting, AcceptsAbseilAndIso8601) {
  EXPECT_EQ(*ParseDurationSetting("D", "250ms", absl::ZeroDuration(), absl::Hours(1)),
            absl::Milliseconds(250));
  EXPECT_EQ(*ParseDurationSetting("D", "1m30s", absl::ZeroDuration(), absl::Hours(1)),
            absl::Seconds(90));
  EXPECT_EQ(*ParseDurationSetting("D", "PT1M30S", absl::ZeroDuration(), absl::Hours(1)),
            absl::Seconds(90));
  EXPECT_EQ(*ParseDurationSetting("D", "0", absl::ZeroDuration(), absl::Hours(1)),
            absl::ZeroDuration());
  EXPECT_EQ(ErrorOf(ParseDurationSetting("D", "soon", absl::Seconds(1), absl::Hours(1)), "D"),
            "D=\"soon\" is invalid: expected a duration such as 500ms, 5s, 2m or PT5S, from 1s "
            "to 1h");
  for (const char* bad : {"5", "-5s", "inf", "2h", "P1M", "PT", "500us"}) {
    ErrorOf(ParseDurationSetting("D", bad, absl::Seconds(1), absl::Hours(1)), "D");
  }
}

TEST(ParseSizeSetting, AcceptsBytesAndBinaryUnits) {
  EXPECT_EQ(*ParseSizeSetting("S", "1048576", 1, uint64_t{1} << 40), uint64_t{1} << 20);
  EXPECT_EQ(*ParseSizeSetting("S", "16MiB", 1, uint64_t{1} << 40), uint64_t{16} << 20);
  EXPECT_EQ(*ParseSizeSetting("S", "512kib", 1, uint64_t{1} << 40), uint64_t{512} << 10);
  EXPECT_EQ(*ParseSizeSetting("S", "2GiB", 1, uint64_t{1} << 40), uint64_t{2} << 30);
  EXPECT_EQ(*ParseSizeSetting("S", "100B", 1, uint64_t{1} << 40), 100u);
  EXPECT_EQ(ErrorOf(ParseSizeSetting("S", "16MB", 1024, uint64_t{512} << 20), "S"),
            "S=\"16MB\" is invalid: expected a size in bytes such as 1048576, 512KiB or 16MiB, "
            "from 1KiB to 512MiB");
  for (const char* bad : {"0", "1.5MiB", "-1", "MiB", "1 MiB", "2TiB", "18446744073709551615KiB"}) {
    ErrorOf(ParseSizeSetting("S", bad, 1, uint64_t{1} << 40), "S");
  }
}

TEST(ParseBoolSetting, AcceptsTheUsualSpellings) {
  for (const char* yes : {"true", "TRUE", "1", "yes", "on"}) {
    EXPECT_TRUE(*ParseBoolSetting("B", yes));
  }
  for (const char* no : {"false", "False", "0", "no", "off"}) {
    EXPECT_FALSE(*ParseBoolSetting("B", no));
  }
  EXPECT_EQ(ErrorOf(ParseBoolSetting("B", "maybe"), "B"),
            "B=\"maybe\" is invalid: expected true or false (also 1/0, yes/no, on/off)");
}

TEST(ParseEnumSetting, MatchesCaseInsensitivelyAndListsTheChoices) {
  enum class Color { kRed, kBlue };
  const std::vector<std::pair<absl::string_view, Color>> choices = {{"red", Color::kRed},
                                                                     {"blue", Color::kBlue}};
  EXPECT_EQ(*ParseEnumSetting("C", "BLUE", choices), Color::kBlue);
  EXPECT_EQ(ErrorOf(ParseEnumSetting("C", "green", choices), "C"),
            "C=\"green\" is invalid: expected one of red, blue");
}

TEST(ParseListSetting, TrimsEntriesAndRefusesEmptyOnes) {
  EXPECT_EQ(*ParseListSetting("L", " a.example.com , 10.0.0.0/8,b "),
            (std::vector<std::string>{"a.example.com", "10.0.0.0/8", "b"}));
  for (const char* bad : {"a,,b", "a,", ",", " "}) ErrorOf(ParseListSetting("L", bad), "L");
}

TEST(EverySettingParser, RefusesAnEmptyValueNamingTheSetting) {
  const std::string expected_start = "X is set but empty: unset it for the default";
  EXPECT_TRUE(absl::StartsWith(ErrorOf(ParseIntSetting("X", "", 0, 1), "X"), expected_start));
  EXPECT_TRUE(absl::StartsWith(
      ErrorOf(ParseDurationSetting("X", "", absl::ZeroDuration(), absl::Hours(1)), "X"),
      expected_start));
  EXPECT_TRUE(absl::StartsWith(ErrorOf(ParseSizeSetting("X", "", 0, 1), "X"), expected_start));
  EXPECT_TRUE(absl::StartsWith(ErrorOf(ParseBoolSetting("X", ""), "X"), expected_start));
  EXPECT_TRUE(absl::StartsWith(ErrorOf(ParseChoiceSetting("X", "", {"a"}), "X"), expected_start));
  EXPECT_TRUE(absl::StartsWith(ErrorOf(ParseListSetting("X", ""), "X"), expected_start));
  EXPECT_TRUE(RejectEmptySetting("X", "v").ok());
}

TEST(BackendOptionSetting, NamesTheKeyAndItsVariable) {
  EXPECT_EQ(BackendOptionSetting("REDIS_OPTION_", "fetch.slice"),
            "fetch.slice (REDIS_OPTION_FETCH_SLICE)");
}

TEST(OptionReader, ParsesDeclaredKeysKeepsDefaultsAndRefusesUnknownOnes) {
  const std::map<std::string, std::string> options = {
      {"batch", "64"}, {"slice", "250ms"}, {"limit", "2MiB"}, {"ordered", "yes"}, {"path", "/x"}};
  OptionReader reader("fake", "FAKE_OPTION_", options);
  int batch = 1;
  absl::Duration slice, untouched = absl::Seconds(7);
  size_t limit = 0;
  bool ordered = false;
  std::string path;
  reader.Int("batch", 1, 100, &batch);
  reader.Duration("slice", absl::Milliseconds(1), absl::Hours(1), &slice);
  reader.Duration("absent", absl::Milliseconds(1), absl::Hours(1), &untouched);
  reader.Size("limit", 1, uint64_t{1} << 30, &limit);
  reader.Bool("ordered", &ordered);
  reader.String("path", &path);
  ASSERT_TRUE(reader.Finish().ok()) << reader.Finish();
  EXPECT_EQ(batch, 64);
  EXPECT_EQ(slice, absl::Milliseconds(250));
  EXPECT_EQ(untouched, absl::Seconds(7));
  EXPECT_EQ(limit, size_t{2} << 20);
  EXPECT_TRUE(ordered);
  EXPECT_EQ(path, "/x");

  const std::map<std::string, std::string> typo = {{"batch", "64"}, {"slise", "1s"}};
  OptionReader unknown("fake", "FAKE_OPTION_", typo);
  unknown.Int("batch", 1, 100, &batch);
  unknown.Duration("slice", absl::Milliseconds(1), absl::Hours(1), &slice);
  EXPECT_EQ(unknown.Finish().message(),
            "unknown fake option slise (FAKE_OPTION_SLISE); known: batch, slice");

  // The first error wins, and names the key and its variable.
  const std::map<std::string, std::string> bad = {{"batch", "0"}, {"path", ""}, {"zero", "0"}};
  OptionReader first("fake", "FAKE_OPTION_", bad);
  first.Int("batch", 1, 100, &batch);
  first.String("path", &path);
  EXPECT_EQ(first.Finish().message(),
            "batch (FAKE_OPTION_BATCH)=\"0\" is invalid: expected an integer from 1 to 100");
  OptionReader required("fake", "FAKE_OPTION_", bad);
  int zero = 5;
  required.Int("zero", -1, 10, &zero);
  required.Require("zero", zero != 0, "-1 or at least 1");
  EXPECT_EQ(required.Finish().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(required.Finish().message(), "expected -1 or at least 1"));
}

TEST(BackendRegistryConfig, AnEmptyUrlOrOptionVariableIsAnErrorNotTheDefault) {
  BackendRegistry registry;
  BackendRegistration registration;
  registration.name = "fake";
  registration.url_env = "FAKE_URL";
  registration.default_url = "fake://default";
  registration.option_env_prefix = "FAKE_OPTION_";
  registration.factory = [](const BackendConfig&) -> absl::StatusOr<std::unique_ptr<EventStream>> {
    return absl::UnimplementedError("not needed");
  };
  registration.check_config = [](const BackendConfig& config) -> absl::Status {
    if (config.options.contains("bad")) return absl::InvalidArgumentError("bad is bad");
    return absl::OkStatus();
  };
  ASSERT_TRUE(registry.Register(registration).ok());

  auto defaults = registry.ConfigFromEnvironment("fake", {});
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->url, "fake://default");
  EXPECT_TRUE(registry.CheckConfig("fake", *defaults).ok());

  auto empty_url = registry.ConfigFromEnvironment("fake", {{"FAKE_URL", ""}});
  EXPECT_TRUE(absl::StartsWith(ErrorOf(empty_url, "FAKE_URL"), "FAKE_URL is set but empty"));
  auto empty_option = registry.ConfigFromEnvironment("fake", {{"FAKE_OPTION_SIZE", ""}});
  ErrorOf(empty_option, "FAKE_OPTION_SIZE");
  auto empty_type = registry.CreateFromEnvironment({{"EVENT_STREAM_TYPE", ""}});
  EXPECT_TRUE(absl::StrContains(ErrorOf(empty_type, "EVENT_STREAM_TYPE"), "one of fake"));

  auto bad = registry.ConfigFromEnvironment("fake", {{"FAKE_OPTION_BAD", "1"}});
  ASSERT_TRUE(bad.ok()) << bad.status();
  EXPECT_EQ(registry.CheckConfig("fake", *bad).message(), "bad is bad");
  EXPECT_EQ(registry.CheckConfig("nope", *bad).code(), absl::StatusCode::kInvalidArgument);
}

TEST(RedactUrl, HidesEveryPasswordAndKeepsTheRest) {
  EXPECT_EQ(RedactUrl("redis://user:s3cret@host:6379/0"), "redis://user:***@host:6379/0");
  EXPECT_EQ(RedactUrl("redis://:s3cret@host:6379"), "redis://:***@host:6379");
  EXPECT_EQ(RedactUrl("nats://token@host:4222"), "nats://***@host:4222");
  EXPECT_EQ(RedactUrl("redis://host:6379"), "redis://host:6379");
  EXPECT_EQ(RedactUrl("unix:///run/redis.sock"), "unix:///run/redis.sock");
  EXPECT_EQ(RedactUrl("a:1,b:2"), "a:1,b:2");
  EXPECT_EQ(RedactUrl("nats://u:p@h1:4222,nats://u:q@h2:4222"),
            "nats://u:***@h1:4222,nats://u:***@h2:4222");
  EXPECT_EQ(RedactUrl("unix://:pw@/run/redis.sock?db=2"), "unix://:***@/run/redis.sock?db=2");
  EXPECT_EQ(RedactUrl("token@host:4222"), "***@host:4222");
  EXPECT_EQ(RedactUrl(""), "");
}

// The two URLs of issue 9, and their relatives: a password holding '@', '/', ',', '?' or ':'
// unencoded, with or without a user.
TEST(RedactUrl, PasswordsWithSeparatorsOrAnEmptyUserNeverLeak) {
  EXPECT_EQ(RedactUrl("redis://:pa/ss@h"), "redis://:***@h");
  EXPECT_EQ(RedactUrl("redis://:p@ss@host:6379"), "redis://:***@host:6379");
  EXPECT_EQ(RedactUrl("redis://user:p@ss/w:rd@host:6379/1"), "redis://user:***@host:6379/1");
  EXPECT_EQ(RedactUrl("nats://u:pa,ss@h1:4222,nats://h2:4222"),
            "nats://u:***@h1:4222,nats://h2:4222");
  EXPECT_EQ(RedactUrl("redis://:p?ss#x@h:1"), "redis://:***@h:1");
  EXPECT_EQ(RedactUrl("redis://u:a:b@h"), "redis://u:***@h");
  for (const char* raw : {"pa/ss", "p@ss", "s3cr3t", "pa,ss", "hunter2"}) {
    const std::string secret = raw;
    for (const std::string& url :
         {"redis://:" + secret + "@h:6379", "redis://user:" + secret + "@h:6379/0",
          "nats://" + secret + "@h:4222", "nats://h0:1,nats://u:" + secret + "@h:4222",
          "unix://:" + secret + "@/run/redis.sock", secret + "@h"}) {
      EXPECT_FALSE(absl::StrContains(RedactUrl(url), secret)) << url << " -> " << RedactUrl(url);
    }
  }
}

TEST(IsSecretSettingName, KnowsTheSecretsOfKafkaAndOurOwn) {
  for (const char* name : {"sasl.password", "ssl.key.password", "ssl.keystore.password",
                           "sasl.oauthbearer.client.secret", "ssl.key.pem", "sasl.jaas.config",
                           "sasl.oauthbearer.config", "EXECUTOR_API_TOKEN", "SASL.PASSWORD"}) {
    EXPECT_TRUE(IsSecretSettingName(name)) << name;
  }
  for (const char* name : {"security.protocol", "bootstrap.servers", "sasl.mechanisms",
                           "socket.keepalive.enable", "log_level"}) {
    EXPECT_FALSE(IsSecretSettingName(name)) << name;
  }
}

}  // namespace
}  // namespace eventbus
