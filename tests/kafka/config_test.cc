// Configuration, error mapping and registration; no broker needed (librdkafka validates
// properties locally and connects lazily).

#include "absl/strings/match.h"
#include "eventbus/kafka/kafka_event_stream.h"
#include "gtest/gtest.h"
#include "kafka_client.h"
#include "rdkafka_handles.h"

namespace eventbus::kafka {
namespace {

TEST(KafkaOptionsTest, UrlIsTheBrokerListAndOptionsSplitIntoOursAndLibrdkafkas) {
  BackendConfig config;
  config.url = "broker-1:9092,broker-2:9092";
  config.options = {{"security.protocol", "ssl"},
                    {"eventbus.partitions", "12"},
                    {"eventbus.retry.threshold.ms", "5000"},
                    {"eventbus.ordered.per.key", "true"},
                    {"eventbus.ack.wait.ms", "60000"}};
  auto options = KafkaOptionsFromConfig(config);
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->brokers, "broker-1:9092,broker-2:9092");
  EXPECT_EQ(options->properties.at("security.protocol"), "ssl");
  EXPECT_FALSE(options->properties.contains("eventbus.partitions"));
  EXPECT_EQ(options->partitions, 12);
  EXPECT_EQ(options->retry_topic_threshold, absl::Seconds(5));
  EXPECT_TRUE(options->ordered_per_key);
  EXPECT_EQ(options->default_ack_wait, absl::Minutes(1));
}

TEST(KafkaOptionsTest, BadOwnOptionsNameTheKey) {
  for (const auto& [key, value] : std::vector<std::pair<std::string, std::string>>{
           {"eventbus.partitions", "0"},
           {"eventbus.partitions", "many"},
           {"eventbus.ordered.per.key", "maybe"},
           {"eventbus.retry.threshold.ms", "-1"},
           {"eventbus.no.such.option", "1"}}) {
    BackendConfig config;
    config.options = {{key, value}};
    auto options = KafkaOptionsFromConfig(config);
    ASSERT_FALSE(options.ok()) << key << "=" << value;
    EXPECT_EQ(options.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(options.status().message(), key)) << options.status();
  }
}

TEST(KafkaOptionsTest, AnInvalidLibrdkafkaPropertyStopsStartUpNamingIt) {
  KafkaOptions options;
  options.properties["no.such.property"] = "1";
  auto stream = NewKafkaEventStream(options);
  ASSERT_FALSE(stream.ok());
  EXPECT_EQ(stream.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(stream.status().message(), "no.such.property")) << stream.status();

  KafkaOptions bad_value;
  bad_value.properties["security.protocol"] = "carrier-pigeon";
  stream = NewKafkaEventStream(bad_value);
  ASSERT_FALSE(stream.ok());
  EXPECT_TRUE(absl::StrContains(stream.status().message(), "security.protocol"))
      << stream.status();
}

TEST(KafkaOptionsTest, ARejectedSecretPropertyIsNamedButItsValueNeverShown) {
  for (const std::string name :
       {"sasl.password.typo", "sasl.oauthbearer.client.secret.x", "ssl.key.pem.typo"}) {
    KafkaOptions options;
    options.properties[name] = "hunter2";
    auto stream = NewKafkaEventStream(options);
    ASSERT_FALSE(stream.ok()) << name;
    EXPECT_EQ(stream.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(stream.status().message(), name)) << stream.status();
    EXPECT_FALSE(absl::StrContains(stream.status().message(), "hunter2")) << stream.status();
  }
  // Other values stay in the message: they are what the operator needs to see.
  KafkaOptions plain;
  plain.properties["security.protocol"] = "carrier-pigeon";
  auto stream = NewKafkaEventStream(plain);
  ASSERT_FALSE(stream.ok());
  EXPECT_TRUE(absl::StrContains(stream.status().message(), "carrier-pigeon")) << stream.status();
}

TEST(KafkaOptionsTest, OwnOptionsUseTheCoreParserAndEmptyValuesAreErrors) {
  BackendConfig config;
  config.options = {{"eventbus.max.event.bytes", "4MiB"},
                    {"eventbus.max.buffered.bytes", "128MiB"},
                    {"eventbus.ordered.per.key", "yes"}};
  auto options = KafkaOptionsFromConfig(config);
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->max_event_bytes, size_t{4} << 20);
  EXPECT_EQ(options->max_buffered_bytes, size_t{128} << 20);
  EXPECT_TRUE(options->ordered_per_key);
  for (const std::string key : {"eventbus.partitions", "security.protocol", "sasl.password"}) {
    config.options = {{key, ""}};
    auto empty = KafkaOptionsFromConfig(config);
    EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument) << key;
    EXPECT_TRUE(absl::StrContains(empty.status().message(), "is set but empty")) << empty.status();
    EXPECT_TRUE(absl::StrContains(empty.status().message(), key)) << empty.status();
  }
  config.options = {{"eventbus.replication.factor", "0"}};
  EXPECT_TRUE(absl::StrContains(KafkaOptionsFromConfig(config).status().message(),
                                "KAFKA_OPTION_EVENTBUS_REPLICATION_FACTOR"));
}

// A misspelt secret property is unknown to librdkafka, so no name rule can tell it is a
// secret: the value of an unknown property is never shown.
TEST(KafkaOptionsTest, AnUnknownPropertysValueIsNeverShown) {
  for (const std::string name : {"sasl.pasword", "sasl.passwd", "ssl.keystore.passwrd"}) {
    KafkaOptions options;
    options.properties[name] = "hunter2";
    const absl::Status status = CheckKafkaProperties(options);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_TRUE(absl::StrContains(status.message(), name)) << status;
    EXPECT_FALSE(absl::StrContains(status.message(), "hunter2")) << status;
  }
}

TEST(KafkaRegistrationTest, CheckConfigFindsBadPropertiesWithoutABroker) {
  BackendRegistry registry;
  ASSERT_TRUE(RegisterKafkaBackend(registry).ok());
  for (const auto& [name, value] : std::vector<std::pair<std::string, std::string>>{
           {"KAFKA_OPTION_EVENTBUS_PARTITIONS", "0"},
           {"KAFKA_OPTION_SECURITY_PROTOCOL", "carrier-pigeon"},
           {"KAFKA_OPTION_NO_SUCH_PROPERTY", "1"}}) {
    auto config = registry.ConfigFromEnvironment("kafka", {{name, value}});
    ASSERT_TRUE(config.ok()) << config.status();
    const absl::Status status = registry.CheckConfig("kafka", *config);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_TRUE(absl::StrContains(status.message(), name)) << status;
  }
  auto good = registry.ConfigFromEnvironment("kafka", {{"KAFKA_OPTION_SECURITY_PROTOCOL", "ssl"}});
  ASSERT_TRUE(good.ok());
  EXPECT_TRUE(registry.CheckConfig("kafka", *good).ok());
  auto empty_brokers = registry.ConfigFromEnvironment("kafka", {{"KAFKA_BROKERS", ""}});
  EXPECT_TRUE(absl::StrContains(empty_brokers.status().message(), "KAFKA_BROKERS is set but empty"))
      << empty_brokers.status();
}

TEST(KafkaOptionsTest, BufferBoundsDefaultToFullBatchesAndAreConfigurable) {
  KafkaOptions defaults;
  EXPECT_GE(defaults.max_buffered_events, 10000u);
  EXPECT_EQ(defaults.max_buffered_bytes, size_t{64} << 20);
  BackendConfig config;
  config.options = {{"eventbus.max.buffered.events", "500"},
                    {"eventbus.max.buffered.bytes", "1048576"}};
  auto options = KafkaOptionsFromConfig(config);
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->max_buffered_events, 500u);
  EXPECT_EQ(options->max_buffered_bytes, 1048576u);
  config.options = {{"eventbus.max.buffered.bytes", "0"}};
  EXPECT_FALSE(KafkaOptionsFromConfig(config).ok());
}

TEST(KafkaOptionsTest, ValidOptionsCreateAStreamWithHonestCapabilities) {
  KafkaOptions options;
  options.brokers = "127.0.0.1:1";  // nothing listens; the stream is only inspected
  options.properties["log_level"] = "0";  // its connection attempts are expected to fail
  auto stream = NewKafkaEventStream(options);
  ASSERT_TRUE(stream.ok()) << stream.status();
  const Capabilities caps = (*stream)->capabilities();
  EXPECT_EQ((*stream)->backend_name(), "kafka");
  EXPECT_TRUE(caps.persistent);
  EXPECT_TRUE(caps.duplicates_possible);
  EXPECT_FALSE(caps.reclaim_from_other_consumers);
  EXPECT_FALSE(caps.atomic_dead_letter);
  EXPECT_FALSE(caps.ordered_per_key);
  EXPECT_FALSE(caps.native_delay);  // short delays are local by default
  EXPECT_GE(caps.max_event_bytes, size_t{1} << 20);

  KafkaOptions ordered = options;
  ordered.ordered_per_key = true;
  auto ordered_stream = NewKafkaEventStream(ordered);
  ASSERT_TRUE(ordered_stream.ok());
  EXPECT_TRUE((*ordered_stream)->capabilities().ordered_per_key);

  KafkaOptions all_retry_topic = options;
  all_retry_topic.retry_topic_threshold = absl::ZeroDuration();
  auto retry_stream = NewKafkaEventStream(all_retry_topic);
  ASSERT_TRUE(retry_stream.ok());
  EXPECT_TRUE((*retry_stream)->capabilities().native_delay);
}

TEST(KafkaOptionsTest, ImpossibleOptionsAreRejected) {
  KafkaOptions options;
  options.partitions = 0;
  EXPECT_EQ(NewKafkaEventStream(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = KafkaOptions{};
  options.brokers = "";
  EXPECT_EQ(NewKafkaEventStream(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(KafkaRegistrationTest, RegistersFromTheEnvironmentAndIsIdempotent) {
  BackendRegistry registry;
  ASSERT_TRUE(RegisterKafkaBackend(registry).ok());
  ASSERT_TRUE(RegisterKafkaBackend(registry).ok());
  Environment env = {{"EVENT_STREAM_TYPE", "kafka"},
                     {"KAFKA_BROKERS", "127.0.0.1:1"},
                     {"KAFKA_OPTION_SECURITY_PROTOCOL", "plaintext"},
                     {"KAFKA_OPTION_LOG_LEVEL", "0"},
                     {"KAFKA_OPTION_EVENTBUS_PARTITIONS", "7"}};
  auto config = registry.ConfigFromEnvironment("kafka", env);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->url, "127.0.0.1:1");
  EXPECT_EQ(config->options.at("security.protocol"), "plaintext");
  EXPECT_EQ(config->options.at("eventbus.partitions"), "7");
  auto options = KafkaOptionsFromConfig(*config);
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->properties.at("log_level"), "0") << "KAFKA_OPTION_LOG_LEVEL reaches log_level";
  auto stream = registry.CreateFromEnvironment(env);
  ASSERT_TRUE(stream.ok()) << stream.status();
  EXPECT_EQ((*stream)->backend_name(), "kafka");

  env["KAFKA_OPTION_SASL_MECHANISMZ"] = "PLAIN";
  auto bad = registry.CreateFromEnvironment(env);
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "sasl.mechanismz")) << bad.status();
}

TEST(KafkaRegistrationTest, DefaultBrokerIsLocalhost9092) {
  BackendRegistry registry;
  ASSERT_TRUE(RegisterKafkaBackend(registry).ok());
  auto config = registry.ConfigFromEnvironment("kafka", {});
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->url, "127.0.0.1:9092");
}

TEST(ToStatusTest, MapsLibrdkafkaErrorsToActionableCodes) {
  EXPECT_TRUE(ToStatus(RD_KAFKA_RESP_ERR_NO_ERROR, "x").ok());
  EXPECT_EQ(ToStatus(RD_KAFKA_RESP_ERR__TRANSPORT, "x").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(ToStatus(RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN, "x").code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(ToStatus(RD_KAFKA_RESP_ERR__MSG_TIMED_OUT, "x").code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(ToStatus(RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION, "x").code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(ToStatus(RD_KAFKA_RESP_ERR__TIMED_OUT, "x").code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(ToStatus(RD_KAFKA_RESP_ERR__QUEUE_FULL, "x").code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ToStatus(RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE, "x").code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ToStatus(RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED, "x").code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(ToStatus(RD_KAFKA_RESP_ERR__AUTHENTICATION, "x").code(),
            absl::StatusCode::kUnauthenticated);
  const absl::Status status = ToStatus(RD_KAFKA_RESP_ERR__TRANSPORT, "producing to t");
  EXPECT_TRUE(absl::StrContains(status.message(), "producing to t")) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "_TRANSPORT")) << status;
}

}  // namespace
}  // namespace eventbus::kafka
