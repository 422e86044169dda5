// The service's configuration parsing (values through eventbus/options.h, whose own tests
// and RedactUrl's are in tests/unit/options_test.cc).

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace eventbus::executor::service {
namespace {

using ::testing::HasSubstr;

const std::vector<std::string> kTypes = {"kafka", "memory", "redis"};

TEST(ServiceConfigTest, DefaultsWhenNothingIsSet) {
  auto config = ParseServiceConfig({}, kTypes);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->stream_type, "memory");
  EXPECT_EQ(config->executor.concurrency, 4);
  EXPECT_EQ(config->executor.consumer_group, "eventbus-executor");
  EXPECT_EQ(config->executor.request_stream, "io.flunq.task.requested");
  EXPECT_EQ(config->executor.result_stream, "io.flunq.task.completed");
  EXPECT_EQ(config->executor.progress_stream, "io.flunq.task.progress");
  EXPECT_EQ(config->executor.progress_interval, absl::Seconds(1));
  EXPECT_TRUE(config->executor.reclaim_enabled);
  EXPECT_EQ(config->http_host, "0.0.0.0");
  EXPECT_EQ(config->http_port, 8080);
  EXPECT_EQ(config->log_level, LogLevel::kInfo);
  EXPECT_FALSE(config->task_timeout.has_value());
}

TEST(ServiceConfigTest, ReadsEverySetting) {
  Environment env = {{"EVENT_STREAM_TYPE", "redis"},
                     {"EXECUTOR_CONCURRENCY", "16"},
                     {"EXECUTOR_CONSUMER_GROUP", "workers"},
                     {"EXECUTOR_CONSUMER_NAME", "w-1"},
                     {"EXECUTOR_STREAM_BATCH", "32"},
                     {"EXECUTOR_MAX_IN_FLIGHT", "500"},
                     {"EXECUTOR_WORKERS", "8"},
                     {"EXECUTOR_STREAM_BLOCK", "250ms"},
                     {"EXECUTOR_RECLAIM_ENABLED", "false"},
                     {"EXECUTOR_RECLAIM_MIN_IDLE", "PT2M"},
                     {"EXECUTOR_SHUTDOWN_DEADLINE", "10s"},
                     {"EXECUTOR_HTTP_ADDR", "127.0.0.1:9000"},
                     {"EXECUTOR_REQUEST_STREAM", "tasks.in"},
                     {"EXECUTOR_RESULT_STREAM", "tasks.out"},
                     {"EXECUTOR_PROGRESS_STREAM", "tasks.progress"},
                     {"EXECUTOR_PROGRESS_INTERVAL", "250ms"},
                     {"EXECUTOR_TASK_TIMEOUT", "PT45S"},
                     {"EXECUTOR_MAX_ATTEMPTS", "7"},
                     {"LOG_LEVEL", "DEBUG"},
                     {"REDIS_URL", "redis://127.0.0.1:6379"}};
  auto config = ParseServiceConfig(env, kTypes);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->stream_type, "redis");
  EXPECT_EQ(config->executor.concurrency, 16);
  EXPECT_EQ(config->executor.consumer_group, "workers");
  EXPECT_EQ(config->executor.consumer_name, "w-1");
  EXPECT_EQ(config->executor.fetch_batch, 32);
  EXPECT_EQ(config->executor.max_in_flight, 500);
  EXPECT_EQ(config->executor.workers, 8);
  EXPECT_EQ(config->executor.fetch_block, absl::Milliseconds(250));
  EXPECT_FALSE(config->executor.reclaim_enabled);
  EXPECT_EQ(config->executor.reclaim_min_idle, absl::Minutes(2));
  EXPECT_EQ(config->executor.shutdown_deadline, absl::Seconds(10));
  EXPECT_EQ(config->http_host, "127.0.0.1");
  EXPECT_EQ(config->http_port, 9000);
  EXPECT_EQ(config->executor.request_stream, "tasks.in");
  EXPECT_EQ(config->executor.result_stream, "tasks.out");
  EXPECT_EQ(config->executor.progress_stream, "tasks.progress");
  EXPECT_EQ(config->executor.progress_interval, absl::Milliseconds(250));
  EXPECT_EQ(*config->task_timeout, absl::Seconds(45));
  EXPECT_EQ(*config->max_attempts, 7);
  EXPECT_EQ(config->log_level, LogLevel::kDebug);
}

TEST(ServiceConfigTest, TaskStoreDefaultsFollowTheBackendAndAreValidated) {
  auto memory = ParseServiceConfig({}, kTypes);
  ASSERT_TRUE(memory.ok()) << memory.status();
  EXPECT_EQ(memory->store, "memory");
  auto redis = ParseServiceConfig({{"EVENT_STREAM_TYPE", "redis"}}, kTypes);
  ASSERT_TRUE(redis.ok()) << redis.status();
  EXPECT_EQ(redis->store, "redis");
  EXPECT_EQ(redis->store_url, "");  // the backend's REDIS_URL, resolved at start-up
  auto kafka = ParseServiceConfig({{"EVENT_STREAM_TYPE", "kafka"}}, kTypes);
  ASSERT_TRUE(kafka.ok()) << kafka.status();
  EXPECT_EQ(kafka->store, "none");

  auto postgres = ParseServiceConfig(
      {{"EVENT_STREAM_TYPE", "kafka"},
       {"EXECUTOR_STORE", "postgres"},
       {"EXECUTOR_STORE_URL", "postgresql://eventbus@127.0.0.1:5432/tasks"},
       {"EXECUTOR_RETENTION_SUCCEEDED", "1h"},
       {"EXECUTOR_RETENTION_FAILED", "P2D"},
       {"EXECUTOR_RETENTION_CANCELLED", "30m"},
       {"EXECUTOR_CANCEL_POLL_INTERVAL", "250ms"},
       {"EXECUTOR_SCHEDULER_INTERVAL", "PT0.5S"},
       {"EXECUTOR_INSTANCE_HEARTBEAT", "PT2S"}},
      kTypes);
  ASSERT_TRUE(postgres.ok()) << postgres.status();
  EXPECT_EQ(postgres->store, "postgres");
  EXPECT_EQ(postgres->store_url, "postgresql://eventbus@127.0.0.1:5432/tasks");
  EXPECT_EQ(postgres->executor.retention_succeeded, absl::Hours(1));
  EXPECT_EQ(postgres->executor.retention_failed, absl::Hours(48));
  EXPECT_EQ(postgres->executor.retention_cancelled, absl::Minutes(30));
  EXPECT_EQ(postgres->executor.cancel_poll_interval, absl::Milliseconds(250));
  EXPECT_EQ(postgres->scheduler_interval, absl::Milliseconds(500));
  EXPECT_EQ(kafka->scheduler_interval, absl::Seconds(1));
  EXPECT_EQ(postgres->instance_heartbeat, absl::Seconds(2));
  EXPECT_EQ(kafka->instance_heartbeat, absl::Seconds(5));

  auto none = ParseServiceConfig({{"EXECUTOR_STORE", "none"}}, kTypes);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(none->store, "none");

  for (const auto& [env, message] : std::vector<std::pair<Environment, std::string>>{
           {{{"EXECUTOR_STORE", "sqlite"}}, "EXECUTOR_STORE=\"sqlite\" is invalid"},
           {{{"EXECUTOR_STORE", "postgres"}}, "EXECUTOR_STORE=postgres needs EXECUTOR_STORE_URL"},
           {{{"EVENT_STREAM_TYPE", "kafka"}, {"EXECUTOR_STORE", "redis"}},
            "EXECUTOR_STORE=redis needs EXECUTOR_STORE_URL"},
           {{{"EXECUTOR_STORE_URL", "redis://x:1"}}, "EXECUTOR_STORE is memory"},
           {{{"EXECUTOR_RETENTION_FAILED", "forever"}}, "EXECUTOR_RETENTION_FAILED"},
           {{{"EXECUTOR_CANCEL_POLL_INTERVAL", "1ms"}}, "EXECUTOR_CANCEL_POLL_INTERVAL"},
           {{{"EXECUTOR_SCHEDULER_INTERVAL", "PT2H"}}, "EXECUTOR_SCHEDULER_INTERVAL"},
           {{{"EXECUTOR_SCHEDULER_INTERVAL", "often"}}, "EXECUTOR_SCHEDULER_INTERVAL"},
           {{{"EXECUTOR_INSTANCE_HEARTBEAT", "10ms"}}, "EXECUTOR_INSTANCE_HEARTBEAT"},
           {{{"EXECUTOR_INSTANCE_HEARTBEAT", "PT1H"}}, "EXECUTOR_INSTANCE_HEARTBEAT"},
           {{{"EXECUTOR_INSTANCE_HEARTBEAT", ""}}, "EXECUTOR_INSTANCE_HEARTBEAT"}}) {
    auto config = ParseServiceConfig(env, kTypes);
    ASSERT_FALSE(config.ok()) << message;
    EXPECT_TRUE(absl::IsInvalidArgument(config.status()));
    EXPECT_THAT(std::string(config.status().message()), HasSubstr(message));
  }
}

TEST(ServiceConfigTest, JqWorkerSettings) {
  auto defaults =
      ParseServiceConfig({{"EXECUTOR_CONCURRENCY", "6"}, {"EXECUTOR_WORKERS", "6"}}, kTypes);
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->jq_workers, 6);  // one per worker thread a `set` can run on
  EXPECT_EQ(defaults->jq_memory_limit_mib, 512);
  EXPECT_EQ(defaults->jq_worker_path, "");
  auto set = ParseServiceConfig({{"EXECUTOR_JQ_WORKERS", "2"},
                                 {"EXECUTOR_JQ_MEMORY_LIMIT_MIB", "0"},
                                 {"EXECUTOR_JQ_WORKER", "/bin/true"}},
                                kTypes);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->jq_workers, 2);
  EXPECT_EQ(set->jq_memory_limit_mib, 0);
  EXPECT_EQ(set->jq_worker_path, "/bin/true");
  for (const auto& [name, value] : std::vector<std::pair<std::string, std::string>>{
           {"EXECUTOR_JQ_WORKERS", "0"},
           {"EXECUTOR_JQ_MEMORY_LIMIT_MIB", "8"},
           {"EXECUTOR_JQ_WORKER", "/nonexistent/eventbus-jq-worker"}}) {
    auto bad = ParseServiceConfig({{name, value}}, kTypes);
    EXPECT_TRUE(absl::IsInvalidArgument(bad.status())) << name;
    EXPECT_THAT(bad.status().message(), HasSubstr(name));
  }
}

TEST(ServiceConfigTest, BadValuesNameTheSettingAndTheValidValues) {
  auto error = [](Environment env) {
    auto config = ParseServiceConfig(env, kTypes);
    EXPECT_FALSE(config.ok());
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(config.status().message());
  };
  EXPECT_THAT(error({{"EVENT_STREAM_TYPE", "bogus"}}),
              HasSubstr("EVENT_STREAM_TYPE=\"bogus\" is not a registered backend; valid types: "
                        "kafka, memory, redis"));
  EXPECT_THAT(error({{"EXECUTOR_CONCURRENCY", "zero"}}),
              HasSubstr("EXECUTOR_CONCURRENCY=\"zero\" is invalid: expected an integer from 1"));
  EXPECT_THAT(error({{"EXECUTOR_CONCURRENCY", "0"}}), HasSubstr("EXECUTOR_CONCURRENCY"));
  EXPECT_THAT(error({{"EXECUTOR_STREAM_BATCH", "100000"}}), HasSubstr("EXECUTOR_STREAM_BATCH"));
  EXPECT_THAT(error({{"EXECUTOR_MAX_IN_FLIGHT", "0"}}), HasSubstr("EXECUTOR_MAX_IN_FLIGHT"));
  EXPECT_THAT(error({{"EXECUTOR_WORKERS", "-1"}}), HasSubstr("EXECUTOR_WORKERS"));
  EXPECT_THAT(error({{"EXECUTOR_STREAM_BLOCK", "soon"}}),
              HasSubstr("EXECUTOR_STREAM_BLOCK=\"soon\" is invalid: expected a duration"));
  EXPECT_THAT(error({{"EXECUTOR_RECLAIM_ENABLED", "maybe"}}), HasSubstr("true or false"));
  EXPECT_THAT(error({{"EXECUTOR_HTTP_ADDR", "8080"}}), HasSubstr("host:port"));
  EXPECT_THAT(error({{"EXECUTOR_HTTP_ADDR", "0.0.0.0:99999"}}), HasSubstr("EXECUTOR_HTTP_ADDR"));
  EXPECT_THAT(error({{"LOG_LEVEL", "loud"}}),
              HasSubstr("one of trace, debug, info, warn, warning, error, off"));
  EXPECT_THAT(error({{"EXECUTOR_CONSUMER_GROUP", "two words"}}),
              HasSubstr("EXECUTOR_CONSUMER_GROUP"));
  EXPECT_THAT(error({{"EXECUTOR_CONCURENCY", "4"}}),
              HasSubstr("unknown setting EXECUTOR_CONCURENCY; valid EXECUTOR_* settings: "));
  EXPECT_THAT(error({{"EXECUTOR_RESULT_STREAM", "io.flunq.task.requested"}}),
              HasSubstr("must differ"));
  EXPECT_THAT(error({{"EXECUTOR_PROGRESS_STREAM", "io.flunq.task.completed"}}),
              HasSubstr("EXECUTOR_PROGRESS_STREAM must differ"));
  EXPECT_THAT(error({{"EXECUTOR_PROGRESS_INTERVAL", "1ms"}}),
              HasSubstr("EXECUTOR_PROGRESS_INTERVAL"));
  EXPECT_THAT(error({{"EXECUTOR_HEARTBEAT_INTERVAL", "10m"}, {"EXECUTOR_RECLAIM_MIN_IDLE", "1m"}}),
              HasSubstr("EXECUTOR_HEARTBEAT_INTERVAL"));
  EXPECT_THAT(error({{"EXECUTOR_CA_FILE", "/nonexistent/ca.pem"}}), HasSubstr("EXECUTOR_CA_FILE"));
}

// Set but empty is never the default (a secret store that failed to fill in
// EXECUTOR_API_TOKEN must not turn authentication off).
TEST(ServiceConfigTest, AnEmptyValueIsAnErrorNamingTheSetting) {
  for (const std::string name :
       {"EVENT_STREAM_TYPE", "EXECUTOR_API_TOKEN", "EXECUTOR_CONCURRENCY", "EXECUTOR_STREAM_BLOCK",
        "EXECUTOR_RECLAIM_ENABLED", "EXECUTOR_CONSUMER_NAME", "EXECUTOR_HTTP_ADDR", "LOG_LEVEL",
        "EXECUTOR_CALL_ALLOW", "EXECUTOR_CA_FILE", "EXECUTOR_TASK_TIMEOUT",
        "EXECUTOR_MAX_ATTEMPTS"}) {
    auto config = ParseServiceConfig({{name, ""}}, kTypes);
    ASSERT_FALSE(config.ok()) << name;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(config.status().message(), HasSubstr(name + " is set but empty")) << name;
  }
  auto token = ParseServiceConfig({{"EXECUTOR_API_TOKEN", ""}}, kTypes);
  EXPECT_THAT(token.status().message(), HasSubstr("without authentication"));
}

TEST(ServiceConfigTest, ListsAndDurationsUseTheCoreParser) {
  auto config = ParseServiceConfig({{"EXECUTOR_CALL_DENY", " 10.0.0.0/8 , api.example.com"},
                                    {"EXECUTOR_SHUTDOWN_DEADLINE", "PT1M"}},
                                   kTypes);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->call_deny, (std::vector<std::string>{"10.0.0.0/8", "api.example.com"}));
  EXPECT_EQ(config->executor.shutdown_deadline, absl::Minutes(1));
  auto trailing = ParseServiceConfig({{"EXECUTOR_CALL_DENY", "10.0.0.0/8,"}}, kTypes);
  EXPECT_THAT(trailing.status().message(), HasSubstr("EXECUTOR_CALL_DENY=\"10.0.0.0/8,\""));
}

TEST(ServiceConfigTest, EscalationTierAndStuckGrace) {
  auto config = ParseServiceConfig(
      {{"EXECUTOR_ESCALATE_TO", "tasks.slow"}, {"EXECUTOR_STUCK_GRACE", "PT5M"}}, kTypes);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->executor.escalate_to, "tasks.slow");
  EXPECT_EQ(config->executor.store_lease_grace, absl::Minutes(5));

  auto defaults = ParseServiceConfig({}, kTypes);
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->executor.escalate_to, "");  // the last tier: dead-letter
  EXPECT_EQ(defaults->executor.store_lease_grace, absl::Minutes(1));
}

TEST(ServiceConfigTest, EscalatingToAStreamOfThisExecutorOrABadNameStopsStartUp) {
  struct Case {
    Environment env;
    std::string message;
  };
  const std::vector<Case> cases = {
      // The default request stream: the task would only restart its attempts here.
      {{{"EXECUTOR_ESCALATE_TO", "io.flunq.task.requested"}}, "EXECUTOR_REQUEST_STREAM"},
      {{{"EXECUTOR_REQUEST_STREAM", "tier1"}, {"EXECUTOR_ESCALATE_TO", "tier1"}},
       "EXECUTOR_REQUEST_STREAM"},
      {{{"EXECUTOR_ESCALATE_TO", "io.flunq.task.completed"}}, "EXECUTOR_RESULT_STREAM"},
      {{{"EXECUTOR_ESCALATE_TO", "io.flunq.task.requested.dlq"}}, "EXECUTOR_DLQ_STREAM"},
      {{{"EXECUTOR_DLQ_STREAM", "dead"}, {"EXECUTOR_ESCALATE_TO", "dead"}}, "EXECUTOR_DLQ_STREAM"},
      {{{"EXECUTOR_ESCALATE_TO", "two words"}}, "without whitespace"},
      {{{"EXECUTOR_ESCALATE_TO", std::string(201, 'x')}}, "1 to 200 bytes"},
      {{{"EXECUTOR_ESCALATE_TO", ""}}, "EXECUTOR_ESCALATE_TO"},
      {{{"EXECUTOR_STUCK_GRACE", "0s"}}, "EXECUTOR_STUCK_GRACE"},
  };
  for (const Case& c : cases) {
    auto config = ParseServiceConfig(c.env, kTypes);
    ASSERT_FALSE(config.ok()) << c.message;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(config.status().message(), HasSubstr(c.message));
    if (c.env.contains("EXECUTOR_ESCALATE_TO")) {
      EXPECT_THAT(config.status().message(), HasSubstr("EXECUTOR_ESCALATE_TO"));
    }
  }
}

TEST(CheckBackendConfigTest, NamesTheBackendAndItsSetting) {
  BackendRegistry registry;
  BackendRegistration fake;
  fake.name = "fake";
  fake.url_env = "FAKE_URL";
  fake.option_env_prefix = "FAKE_OPTION_";
  fake.factory = [](const BackendConfig&) -> absl::StatusOr<std::unique_ptr<EventStream>> {
    return absl::UnavailableError("never called by CheckBackendConfig");
  };
  fake.check_config = [](const BackendConfig& config) -> absl::Status {
    for (const auto& [key, value] : config.options) {
      return absl::InvalidArgumentError(absl::StrCat("unknown option ", key));
    }
    return absl::OkStatus();
  };
  ASSERT_TRUE(registry.Register(fake).ok());
  EXPECT_TRUE(CheckBackendConfig("fake", {{"FAKE_URL", "x"}}, registry).ok());
  const absl::Status bad = CheckBackendConfig("fake", {{"FAKE_OPTION_COLOR", "red"}}, registry);
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.message(), "the fake backend's configuration: unknown option color");
  const absl::Status empty = CheckBackendConfig("fake", {{"FAKE_URL", ""}}, registry);
  EXPECT_THAT(empty.message(), HasSubstr("FAKE_URL is set but empty"));
}

}  // namespace
}  // namespace eventbus::executor::service
