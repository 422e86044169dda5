// A result larger than a real Kafka broker accepts: the results topic is created with a small
// max.message.bytes (the request and dead-letter topics keep the broker's default), so the
// broker itself refuses the result of an `inject` task, which must then be settled once with a
// failure that says so, not given back and run again: for a large output, and for metadata
// of the request that make even the failure too large.

#include <memory>
#include <string>
#include <utility>

#include <librdkafka/rdkafka.h>
#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "eventbus/executor/builtin_handlers.h"
#include "eventbus/executor/executor.h"
#include "eventbus/executor/metrics.h"
#include "eventbus/executor/task.h"
#include "eventbus/harness/kafka_broker.h"
#include "eventbus/kafka/kafka_event_stream.h"
#include "gtest/gtest.h"
#include "test_support.h"

namespace eventbus::executor {
namespace {

using ::nlohmann::json;
using Op = testing::SubscriptionCall::Op;

constexpr int kResultTopicLimit = 64 * 1024;

// Creates `topic` (one partition) with the broker-side max.message.bytes `limit`, before the
// backend would create it with the broker's default.
absl::Status CreateLimitedTopic(const std::string& bootstrap, const std::string& topic,
                                int limit) {
  char errstr[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap.c_str(), errstr, sizeof(errstr)) !=
      RD_KAFKA_CONF_OK) {
    rd_kafka_conf_destroy(conf);
    return absl::InternalError(errstr);
  }
  std::unique_ptr<rd_kafka_t, decltype(&rd_kafka_destroy)> admin(
      rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr)), &rd_kafka_destroy);
  if (admin == nullptr) return absl::InternalError(errstr);
  std::unique_ptr<rd_kafka_NewTopic_t, decltype(&rd_kafka_NewTopic_destroy)> new_topic(
      rd_kafka_NewTopic_new(topic.c_str(), 1, 1, errstr, sizeof(errstr)),
      &rd_kafka_NewTopic_destroy);
  if (new_topic == nullptr) return absl::InternalError(errstr);
  const std::string value = absl::StrCat(limit);
  if (rd_kafka_NewTopic_set_config(new_topic.get(), "max.message.bytes", value.c_str()) !=
      RD_KAFKA_RESP_ERR_NO_ERROR) {
    return absl::InternalError("max.message.bytes not set");
  }
  std::unique_ptr<rd_kafka_queue_t, decltype(&rd_kafka_queue_destroy)> queue(
      rd_kafka_queue_new(admin.get()), &rd_kafka_queue_destroy);
  rd_kafka_NewTopic_t* topics[] = {new_topic.get()};
  rd_kafka_CreateTopics(admin.get(), topics, 1, nullptr, queue.get());
  std::unique_ptr<rd_kafka_event_t, decltype(&rd_kafka_event_destroy)> event(
      rd_kafka_queue_poll(queue.get(), 30'000), &rd_kafka_event_destroy);
  if (event == nullptr) return absl::DeadlineExceededError("CreateTopics: no answer in 30 s");
  if (rd_kafka_event_error(event.get()) != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return absl::InternalError(rd_kafka_event_error_string(event.get()));
  }
  size_t count = 0;
  const rd_kafka_topic_result_t** results =
      rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(event.get()), &count);
  if (count != 1) return absl::InternalError("CreateTopics: no result for the topic");
  if (rd_kafka_topic_result_error(results[0]) != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return absl::InternalError(rd_kafka_topic_result_error_string(results[0]));
  }
  return absl::OkStatus();
}

// The built-in inject handler, counting its runs.
class CountedInject final : public TaskHandler {
 public:
  std::string type() const override { return inner_->type(); }
  absl::Status Supports(const TaskRequest& request) const override {
    return inner_->Supports(request);
  }
  TaskOutcome Handle(TaskContext& context) override {
    monitor_.Update([&] { ++runs_; });
    return inner_->Handle(context);
  }
  int runs() const { return monitor_.Read([&] { return runs_; }); }

 private:
  std::unique_ptr<TaskHandler> inner_ = NewInjectHandler();
  testing::Monitor monitor_;
  int runs_ = 0;
};

// One broker for the binary (a JVM start costs seconds); each test has its own streams.
class ExecutorOnKafka : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto broker = harness::KafkaBroker::Start();
    ASSERT_TRUE(broker.ok()) << broker.status();
    broker_ = std::move(broker).value().release();
  }
  static void TearDownTestSuite() {
    delete broker_;
    broker_ = nullptr;
  }

  // An executor on `prefix`.tasks whose results go to `prefix`.results, a topic created with
  // max.message.bytes kResultTopicLimit (the others keep the broker's default).
  void Start(const std::string& prefix) {
    ASSERT_NE(broker_, nullptr);
    options_.request_stream = prefix + ".tasks";
    options_.result_stream = prefix + ".results";
    ASSERT_TRUE(
        CreateLimitedTopic(broker_->bootstrap(), options_.result_stream, kResultTopicLimit).ok());
    kafka::KafkaOptions kafka_options;
    kafka_options.brokers = broker_->bootstrap();
    kafka_options.partitions = 1;
    kafka_options.properties["log_level"] = "3";
    auto kafka_stream = kafka::NewKafkaEventStream(kafka_options);
    ASSERT_TRUE(kafka_stream.ok()) << kafka_stream.status();
    kafka_ = std::move(kafka_stream).value();
    stream_ = testing::NewRecordingStream(kafka_.get(), &calls_);
    results_ = std::make_unique<testing::StreamReader>(kafka_.get(), options_.result_stream);
    auto handler = std::make_unique<CountedInject>();
    inject_ = handler.get();
    ASSERT_TRUE(handlers_.Register(std::move(handler)).ok());
    options_.consumer_name = "executor-1";
    options_.concurrency = 1;
    options_.reclaim_enabled = false;
    executor_ = std::make_unique<Executor>(stream_.get(), &handlers_, options_,
                                           ExecutorDependencies{.metrics = &metrics_});
    ASSERT_TRUE(executor_->Start().ok());
  }
  void TearDown() override {
    if (executor_ != nullptr) executor_->Shutdown();
  }

  void Submit(const json& task) {
    ASSERT_TRUE(kafka_
                    ->PublishAndWait(options_.request_stream,
                                     MakeEvent(kTaskRequestedType, "test", task.dump()))
                    .ok());
  }

  // The one result, a failure saying it is too large; the request dead-lettered, run once.
  TaskResult ExpectSettledOnceAsTooLarge() {
    auto events = results_->AwaitEvents(1);
    EXPECT_EQ(events.size(), 1u);
    if (events.empty()) return {};
    auto result = ParseTaskResult(events[0].data());
    EXPECT_TRUE(result.ok()) << result.status();
    if (!result.ok()) return {};
    EXPECT_EQ(result->status, TaskStatus::kFailed);
    EXPECT_EQ(result->error_kind, "result_too_large");
    EXPECT_EQ(result->output, nullptr);
    // The broker's refusal, not the backend's own size check.
    EXPECT_TRUE(absl::StrContains(result->error, "MSG_SIZE_TOO_LARGE")) << result->error;
    EXPECT_TRUE(calls_.AwaitCount(Op::kDeadLetter, 1));
    EXPECT_TRUE(metrics_.AwaitInFlight(0));
    EXPECT_TRUE(absl::StrContains(calls_.Calls(Op::kDeadLetter)[0].reason, "result not published"));
    EXPECT_EQ(calls_.Count(Op::kNack), 0) << "given back to run again";
    EXPECT_EQ(calls_.Count(Op::kAck), 0);
    EXPECT_EQ(inject_->runs(), 1);
    EXPECT_EQ(metrics_.finished("inject", kOutcomeFailed), 1);
    EXPECT_EQ(metrics_.finished("inject", kOutcomeSucceeded), 0);
    EXPECT_EQ(metrics_.dead_lettered("inject"), 1);
    EXPECT_EQ(metrics_.results("failed"), 1);
    EXPECT_EQ(metrics_.results("succeeded"), 0);
    return *result;
  }

  static harness::KafkaBroker* broker_;
  ExecutorOptions options_;
  std::unique_ptr<EventStream> kafka_;
  testing::CallLog calls_;
  std::unique_ptr<EventStream> stream_;
  std::unique_ptr<testing::StreamReader> results_;
  HandlerRegistry handlers_;
  CountedInject* inject_ = nullptr;
  testing::RecordingMetrics metrics_;
  std::unique_ptr<Executor> executor_;
};

harness::KafkaBroker* ExecutorOnKafka::broker_ = nullptr;

TEST_F(ExecutorOnKafka, AnInjectResultTheBrokerRefusesAsTooLargeIsSettledOnceAsAFailure) {
  Start("output");
  // Twice the topic's limit: the request (on a topic with the default limit) goes through,
  // and so does its dead letter; only the result is refused.
  Submit({{"id", "t-big"},
          {"type", "inject"},
          {"input", {{"data", {{"blob", std::string(2 * kResultTopicLimit, 'x')}}}}}});
  const TaskResult result = ExpectSettledOnceAsTooLarge();
  EXPECT_EQ(result.task_id, "t-big");
  EXPECT_TRUE(absl::StrContains(result.error, "; output dropped")) << result.error;
}

// The request's metadata are copied into its result, so without its output the failure is
// still too large: it goes out without the metadata as well, rather than the request being
// given back to meet the same refusal on every run.
TEST_F(ExecutorOnKafka, AResultTooLargeForItsMetadataAloneIsSettledOnceWithoutThem) {
  Start("labels");
  Submit({{"id", "t-labels"},
          {"type", "inject"},
          {"input", {{"data", {{"small", true}}}}},
          {"metadata", {{"blob", std::string(2 * kResultTopicLimit, 'm')}}}});
  const TaskResult result = ExpectSettledOnceAsTooLarge();
  EXPECT_EQ(result.task_id, "t-labels");
  EXPECT_TRUE(absl::StrContains(result.error, "output and metadata dropped")) << result.error;
  EXPECT_TRUE(result.metadata.empty());
}

}  // namespace
}  // namespace eventbus::executor
