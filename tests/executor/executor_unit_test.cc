// The executor's pure parts: durations, retry schedules, the request model, the registry and
// the built-in handlers in isolation.

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "eventbus/clock.h"
#include "eventbus/executor/builtin_handlers.h"
#include "eventbus/executor/handler.h"
#include "eventbus/executor/iso_duration.h"
#include "eventbus/executor/retry_policy.h"
#include "eventbus/executor/task.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_support.h"

namespace eventbus::executor {
namespace {

using ::nlohmann::json;
using ::testing::HasSubstr;

TEST(IsoDurationTest, ParsesTheUnitsTasksUse) {
  EXPECT_EQ(*ParseIsoDuration("PT2S"), absl::Seconds(2));
  EXPECT_EQ(*ParseIsoDuration("PT1M30S"), absl::Seconds(90));
  EXPECT_EQ(*ParseIsoDuration("P1DT2H"), absl::Hours(26));
  EXPECT_EQ(*ParseIsoDuration("P2W"), absl::Hours(24 * 14));
  EXPECT_EQ(*ParseIsoDuration("PT0.25S"), absl::Milliseconds(250));
  EXPECT_EQ(*ParseIsoDuration("PT1,5S"), absl::Milliseconds(1500));
  EXPECT_EQ(*ParseIsoDuration("P1D"), absl::Hours(24));
  EXPECT_EQ(*ParseIsoDuration("PT0S"), absl::ZeroDuration());
}

TEST(IsoDurationTest, RejectsWhatIsNotADurationWithAReason) {
  EXPECT_THAT(ParseIsoDuration("2s").status().message(), HasSubstr("must start with 'P'"));
  EXPECT_THAT(ParseIsoDuration("P").status().message(), HasSubstr("no components"));
  EXPECT_THAT(ParseIsoDuration("PT").status().message(), HasSubstr("no time components"));
  EXPECT_THAT(ParseIsoDuration("P1M").status().message(), HasSubstr("months are not supported"));
  EXPECT_THAT(ParseIsoDuration("P1Y").status().message(), HasSubstr("years are not supported"));
  EXPECT_THAT(ParseIsoDuration("PT1S2M").status().message(), HasSubstr("out of order"));
  EXPECT_THAT(ParseIsoDuration("PT1.5M2S").status().message(), HasSubstr("only the last"));
  EXPECT_THAT(ParseIsoDuration("PT-1S").status().message(), HasSubstr("expected a number"));
  EXPECT_THAT(ParseIsoDuration("PT5").status().message(), HasSubstr("without a unit"));
  EXPECT_THAT(ParseIsoDuration("P99999999W").status().message(), HasSubstr("100 years"));
  EXPECT_EQ(ParseIsoDuration("PT1X").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(IsoDurationTest, FormatsCanonicallyAndRoundTrips) {
  EXPECT_EQ(FormatIsoDuration(absl::Seconds(2)), "PT2S");
  EXPECT_EQ(FormatIsoDuration(absl::Hours(26)), "P1DT2H");
  EXPECT_EQ(FormatIsoDuration(absl::Seconds(90)), "PT1M30S");
  EXPECT_EQ(FormatIsoDuration(absl::Milliseconds(250)), "PT0.25S");
  EXPECT_EQ(FormatIsoDuration(absl::ZeroDuration()), "PT0S");
  EXPECT_EQ(FormatIsoDuration(absl::Hours(48)), "P2D");
  for (absl::Duration d : {absl::Milliseconds(1), absl::Seconds(3661), absl::Hours(100),
                           absl::Microseconds(1500001)}) {
    EXPECT_EQ(*ParseIsoDuration(FormatIsoDuration(d)), d) << FormatIsoDuration(d);
  }
}

// Found by tests/fuzz (iso_duration): fractions scaled in double left sub-nanosecond
// remainders, so "PT530.2H" formatted as "P22DT2H12M0S" and "PT0.0000000002S" was a positive
// timeout that a republished request ("PT0S") no longer passed.
TEST(IsoDurationTest, ParsesToWholeNanosecondsSoFormatRoundTrips) {
  EXPECT_EQ(*ParseIsoDuration("PT530.2H"), absl::Seconds(530 * 3600 + 720));
  EXPECT_EQ(FormatIsoDuration(*ParseIsoDuration("PT530.2H")), "P22DT2H12M");
  EXPECT_EQ(*ParseIsoDuration("PT0.0000000002S"), absl::ZeroDuration());
  EXPECT_EQ(*ParseIsoDuration("PT0.0000000006S"), absl::Nanoseconds(1));
  EXPECT_EQ(*ParseIsoDuration("PT0.123456789S"), absl::Nanoseconds(123456789));
}

TEST(RetryPolicyTest, BackoffGrowsExponentiallyUpToTheCap) {
  RetryPolicy policy{.max_attempts = 10,
                     .initial_backoff = absl::Seconds(1),
                     .multiplier = 2.0,
                     .max_backoff = absl::Seconds(10),
                     .jitter = 0.0};
  testing::FixedRandom random(0.9);
  EXPECT_EQ(policy.Backoff(1, random), absl::Seconds(1));
  EXPECT_EQ(policy.Backoff(2, random), absl::Seconds(2));
  EXPECT_EQ(policy.Backoff(3, random), absl::Seconds(4));
  EXPECT_EQ(policy.Backoff(4, random), absl::Seconds(8));
  EXPECT_EQ(policy.Backoff(5, random), absl::Seconds(10));
  EXPECT_EQ(policy.Backoff(500, random), absl::Seconds(10));  // no overflow
}

TEST(RetryPolicyTest, JitterSpreadsAroundTheBaseAndNeverExceedsTheCap) {
  RetryPolicy policy{.initial_backoff = absl::Seconds(4),
                     .multiplier = 2.0,
                     .max_backoff = absl::Seconds(10),
                     .jitter = 0.5};
  testing::FixedRandom low(0.0);
  testing::FixedRandom mid(0.5);
  testing::FixedRandom high(0.999999);
  EXPECT_EQ(policy.Backoff(1, low), absl::Seconds(2));
  EXPECT_EQ(policy.Backoff(1, mid), absl::Seconds(4));
  EXPECT_EQ(policy.Backoff(1, high), absl::Microseconds(5999996));
  // base 8s * 1.5 would be 12s: capped.
  EXPECT_EQ(policy.Backoff(2, high), absl::Seconds(10));
}

TEST(RetryPolicyTest, DefaultRandomSourceStaysInRange) {
  auto random = NewDefaultRandomSource();
  RetryPolicy policy{.initial_backoff = absl::Seconds(1), .jitter = 1.0};
  for (int i = 0; i < 1000; ++i) {
    const absl::Duration d = policy.Backoff(1, *random);
    EXPECT_GE(d, absl::ZeroDuration());
    EXPECT_LT(d, absl::Seconds(2));
  }
}

TEST(RetryPolicyTest, ValidateNamesTheBadField) {
  EXPECT_THAT(RetryPolicy{.max_attempts = 0}.Validate().message(), HasSubstr("max_attempts"));
  EXPECT_THAT(RetryPolicy{.multiplier = 0.5}.Validate().message(), HasSubstr("multiplier"));
  EXPECT_THAT(RetryPolicy{.jitter = 1.5}.Validate().message(), HasSubstr("jitter"));
  EXPECT_THAT((RetryPolicy{.initial_backoff = absl::Seconds(5), .max_backoff = absl::Seconds(1)}
                   .Validate()
                   .message()),
              HasSubstr("max_backoff"));
  EXPECT_TRUE(RetryPolicy{}.Validate().ok());
  EXPECT_TRUE(RetryPolicy{.max_attempts = 3}.ShouldRetry(2));
  EXPECT_FALSE(RetryPolicy{.max_attempts = 3}.ShouldRetry(3));
}

TEST(TaskRequestTest, ParsesEveryField) {
  auto request = ParseTaskRequest(R"({
    "id": "t-1", "type": "call", "input": {"url": "http://x"}, "timeout": "PT30S",
    "retry": {"max_attempts": 5, "initial_backoff": "PT2S", "max_backoff": "PT1M",
              "multiplier": 3, "jitter": 0.1},
    "metadata": {"workflow": "w-7"}})");
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->id, "t-1");
  EXPECT_EQ(request->type, "call");
  EXPECT_EQ(request->Input(), json({{"url", "http://x"}}));
  EXPECT_EQ(*request->timeout, absl::Seconds(30));
  RetryPolicy policy = request->retry.ApplyTo(RetryPolicy{});
  EXPECT_EQ(policy.max_attempts, 5);
  EXPECT_EQ(policy.initial_backoff, absl::Seconds(2));
  EXPECT_EQ(policy.max_backoff, absl::Minutes(1));
  EXPECT_EQ(policy.multiplier, 3.0);
  EXPECT_EQ(policy.jitter, 0.1);
  EXPECT_EQ(request->metadata.at("workflow"), "w-7");

  auto again = ParseTaskRequest(TaskRequestToJson(*request));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->id, "t-1");
  EXPECT_EQ(*again->timeout, absl::Seconds(30));
  EXPECT_EQ(*again->retry.max_attempts, 5);
  EXPECT_EQ(again->Input(), request->Input());
}

TEST(TaskRequestTest, RefusesJsonNestedTooDeeply) {
  std::string deep = R"({"id": "a", "type": "inject", "input": {"data": )";
  for (int i = 0; i < 100000; ++i) deep += "[";
  for (int i = 0; i < 100000; ++i) deep += "]";
  deep += "}}";
  auto request = ParseTaskRequest(deep);
  ASSERT_FALSE(request.ok());
  EXPECT_THAT(request.status().message(), HasSubstr("nested deeper than 64 levels"));
  std::string fine = R"({"id": "a", "type": "inject", "input": {"data": )";
  for (int i = 0; i < 60; ++i) fine += "[";
  for (int i = 0; i < 60; ++i) fine += "]";
  fine += "}}";
  EXPECT_TRUE(ParseTaskRequest(fine).ok());
}

TEST(TaskRequestTest, InputDefaultsToAnEmptyObject) {
  auto request = ParseTaskRequest(R"({"id": "a", "type": "inject"})");
  ASSERT_TRUE(request.ok());
  EXPECT_EQ(request->Input(), json::object());
}

TEST(TaskRequestTest, RejectsMalformedRequestsWithActionableReasons) {
  auto reason = [](absl::string_view text) {
    return std::string(ParseTaskRequest(text).status().message());
  };
  EXPECT_THAT(reason("{not json"), HasSubstr("not valid JSON"));
  EXPECT_THAT(reason("[1,2]"), HasSubstr("must be a JSON object"));
  EXPECT_THAT(reason(R"({"type": "x"})"), HasSubstr("missing required field \"id\""));
  EXPECT_THAT(reason(R"({"id": "x"})"), HasSubstr("missing required field \"type\""));
  EXPECT_THAT(reason(R"({"id": 5, "type": "x"})"), HasSubstr("\"id\": must be a string"));
  EXPECT_THAT(reason(R"({"id": "", "type": "x"})"), HasSubstr("\"id\": must not be empty"));
  EXPECT_THAT(reason(R"({"id": "a", "type": "x", "input": [1]})"), HasSubstr("\"input\""));
  EXPECT_THAT(reason(R"({"id": "a", "type": "x", "timeout": 30})"), HasSubstr("\"timeout\""));
  EXPECT_THAT(reason(R"({"id": "a", "type": "x", "timeout": "PT0S"})"), HasSubstr("positive"));
  EXPECT_THAT(reason(R"({"id": "a", "type": "x", "retry": {"tries": 3}})"),
              HasSubstr("\"retry.tries\": unknown field"));
  EXPECT_THAT(reason(R"({"id": "a", "type": "x", "retry": {"max_attempts": 0}})"),
              HasSubstr("\"retry.max_attempts\""));
  EXPECT_THAT(reason(R"({"id": "a", "type": "x", "timout": "PT1S"})"),
              HasSubstr("\"timout\": unknown field"));
  EXPECT_THAT(reason(R"({"id": "a", "type": "x", "metadata": {"k": 1}})"),
              HasSubstr("\"metadata.k\""));
}

TEST(TaskResultTest, RoundTripsThroughJson) {
  TaskResult result;
  result.task_id = "t-9";
  result.type = "call";
  result.status = TaskStatus::kFailed;
  result.output = std::make_shared<const json>(json{{"status", 404}});
  result.attempts = 3;
  result.duration = absl::Milliseconds(12);
  result.error_kind = "permanent";
  result.error = "HTTP 404";
  result.completed_at = absl::FromUnixSeconds(1'700'000'000);
  result.metadata["k"] = "v";
  auto parsed = ParseTaskResult(TaskResultToJson(result));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->task_id, "t-9");
  EXPECT_EQ(parsed->status, TaskStatus::kFailed);
  EXPECT_EQ(*parsed->output, json({{"status", 404}}));
  EXPECT_EQ(parsed->attempts, 3);
  EXPECT_EQ(parsed->duration, absl::Milliseconds(12));
  EXPECT_EQ(parsed->error_kind, "permanent");
  EXPECT_EQ(parsed->error, "HTTP 404");
  EXPECT_EQ(parsed->completed_at, result.completed_at);
  EXPECT_EQ(parsed->metadata.at("k"), "v");
}

// TaskResultToJson writes its members one by one; the text must be exactly what dumping the
// whole result as one json document gives (what readers, the store and older executors saw).
TEST(TaskResultTest, JsonTextIsWhatDumpingTheDocumentGives) {
  auto as_document = [](const TaskResult& r) {
    json document = {
        {"id", r.task_id},
        {"type", r.type},
        {"status", std::string(TaskStatusName(r.status))},
        {"output", r.output ? *r.output : json(nullptr)},
        {"attempts", r.attempts},
        {"deliveries", r.deliveries},
        {"duration_ms", absl::ToDoubleMilliseconds(r.duration)},
        {"request_event_id", r.request_event_id},
        {"completed_at", FormatTimeAttribute(r.completed_at)},
    };
    document["error"] = r.status == TaskStatus::kFailed
                            ? json{{"kind", r.error_kind}, {"message", r.error}}
                            : json(nullptr);
    if (!r.metadata.empty()) document["metadata"] = r.metadata;
    return document.dump(-1, ' ', false, json::error_handler_t::replace);
  };
  TaskResult plain;
  plain.task_id = "t-1 \\ back\x7f";
  plain.type = "inject";
  plain.status = TaskStatus::kSucceeded;
  plain.output = std::make_shared<const json>(json{{"n", 1}, {"a", {1, 2.5, "x", nullptr}}});
  plain.attempts = 1;
  plain.deliveries = 2;
  plain.duration = absl::Microseconds(1234567) / 7;
  plain.request_event_id = "e-\"quoted\"\n";
  plain.completed_at = absl::FromUnixNanos(1'700'000'000'123'456'789);
  TaskResult failed = plain;
  failed.status = TaskStatus::kFailed;
  failed.output = nullptr;
  failed.error_kind = "permanent";
  failed.error = std::string("bad \xff bytes \x01");
  failed.metadata = {{"tenant", "a"}, {"z\xfe", "\\"}};
  TaskResult empty;
  TaskResult odd_output = plain;
  odd_output.output = std::make_shared<const json>(json(std::string("\xc3\x28 not utf-8")));
  for (const TaskResult* r : {&plain, &failed, &empty, &odd_output}) {
    EXPECT_EQ(TaskResultToJson(*r), as_document(*r));
  }
}

TEST(TaskResultTest, InvalidUtf8InOutputIsReplacedNotThrown) {
  TaskResult result;
  result.task_id = "t";
  result.type = "call";
  result.output = std::make_shared<const json>(json{{"body", std::string("\xff\xfe ok")}});
  auto parsed = ParseTaskResult(TaskResultToJson(result));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_THAT((*parsed->output)["body"].get<std::string>(), HasSubstr(" ok"));
}

// Found by tests/fuzz (task_json): "attempts": 1e300 was converted to int (undefined
// behaviour), and "duration_ms": 1e300 became an infinite duration written back as null.
TEST(TaskResultTest, RejectsAttemptsAndDurationsOutOfRange) {
  auto with = [](absl::string_view attempts, absl::string_view duration_ms) {
    return ParseTaskResult(absl::StrCat(R"({"id":"t","type":"x","status":"succeeded",)",
                                        R"("output":null,"error":null,"attempts":)", attempts,
                                        R"(,"duration_ms":)", duration_ms, "}"));
  };
  ASSERT_TRUE(with("2", "1.5").ok()) << with("2", "1.5").status();
  EXPECT_THAT(with("1e300", "1").status().message(), HasSubstr("attempts"));
  EXPECT_THAT(with("4294967296", "1").status().message(), HasSubstr("attempts"));
  EXPECT_THAT(with("-1", "1").status().message(), HasSubstr("attempts"));
  EXPECT_THAT(with("1", "1e300").status().message(), HasSubstr("duration_ms"));
  EXPECT_THAT(with("1", "-1e300").status().message(), HasSubstr("duration_ms"));
}

// The depth limit counts the containers around each value, and nothing inside strings.
TEST(ParseUntrustedJsonTest, DepthLimitCountsContainersAroundEachValueOnly) {
  auto nested = [](int arrays, absl::string_view innermost) {
    return absl::StrCat(std::string(arrays, '['), innermost, std::string(arrays, ']'));
  };
  EXPECT_TRUE(ParseUntrustedJson(nested(kMaxJsonDepth, "1")).ok());
  EXPECT_THAT(ParseUntrustedJson(nested(kMaxJsonDepth + 1, "1")).status().message(),
              HasSubstr("nested deeper than 64 levels"));
  // An empty innermost container is itself a value at the depth around it.
  EXPECT_TRUE(ParseUntrustedJson(nested(kMaxJsonDepth + 1, "")).ok());
  EXPECT_FALSE(ParseUntrustedJson(nested(kMaxJsonDepth + 2, "")).ok());
  // Brackets and escaped quotes inside strings are text, not nesting.
  const std::string in_string =
      absl::StrCat(R"({"a":")", std::string(1000, '['), R"(\"{{{","b":[1]})");
  auto parsed = ParseUntrustedJson(in_string);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ((*parsed)["b"][0], 1);
  EXPECT_THAT(ParseUntrustedJson("[1,").status().message(), HasSubstr("not valid JSON"));
  // Wide documents are fine at any width.
  std::string wide = "[";
  for (int i = 0; i < 20'000; ++i) absl::StrAppend(&wide, i == 0 ? "" : ",", R"({"type":"inject"})");
  wide += "]";
  auto many = ParseUntrustedJson(wide);
  ASSERT_TRUE(many.ok());
  EXPECT_EQ(many->size(), 20'000u);
}

// Found with the tests/fuzz task_json target on a hand-made input (longer than libFuzzer's
// default -max_len): a result with an "output" nested 500,000 levels deep overflowed the stack.
TEST(TaskResultTest, RejectsOutputNestedTooDeep) {
  auto with_depth = [](int depth) {
    return ParseTaskResult(absl::StrCat(
        R"({"id":"t","type":"x","status":"succeeded","attempts":1,"duration_ms":1,)",
        R"("error":null,"output":)", std::string(depth, '['), std::string(depth, ']'), "}"));
  };
  EXPECT_TRUE(with_depth(kMaxJsonDepth + 10).ok());
  EXPECT_THAT(with_depth(500'000).status().message(), HasSubstr("nested deeper"));
}

class NamedHandler final : public TaskHandler {
 public:
  explicit NamedHandler(std::string type) : type_(std::move(type)) {}
  std::string type() const override { return type_; }
  TaskOutcome Handle(TaskContext&) override { return TaskOutcome::Succeeded(nullptr); }

 private:
  std::string type_;
};

TEST(HandlerRegistryTest, FindsByTypeAndRefusesDuplicates) {
  HandlerRegistry registry;
  ASSERT_TRUE(registry.Register(std::make_unique<NamedHandler>("b")).ok());
  ASSERT_TRUE(registry.Register(std::make_unique<NamedHandler>("a")).ok());
  EXPECT_EQ(registry.Register(std::make_unique<NamedHandler>("a")).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(registry.Register(nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.Register(std::make_unique<NamedHandler>("")).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_NE(registry.Find("a"), nullptr);
  EXPECT_EQ(registry.Find("a")->type(), "a");
  EXPECT_EQ(registry.Find("c"), nullptr);
  EXPECT_EQ(registry.Types(), (std::vector<std::string>{"a", "b"}));
}

TEST(TaskOutcomeTest, StatusCodesMapToTransientOrPermanent) {
  using Kind = TaskOutcome::Kind;
  EXPECT_EQ(TaskOutcome::FromStatus(absl::UnavailableError("x")).kind(), Kind::kTransientFailure);
  EXPECT_EQ(TaskOutcome::FromStatus(absl::DeadlineExceededError("x")).kind(),
            Kind::kTransientFailure);
  EXPECT_EQ(TaskOutcome::FromStatus(absl::InvalidArgumentError("x")).kind(),
            Kind::kPermanentFailure);
  EXPECT_EQ(TaskOutcome::FromStatus(absl::NotFoundError("x")).kind(), Kind::kPermanentFailure);
  EXPECT_EQ(TaskOutcome::FromStatus(absl::OkStatus()).kind(), Kind::kSucceeded);
  EXPECT_EQ(TaskOutcome::RedeliverAfter(absl::Seconds(-1)).delay(), absl::ZeroDuration());
}

TaskRequest Request(absl::string_view type, json input) {
  TaskRequest request;
  request.id = "t";
  request.type = std::string(type);
  request.input = std::make_shared<const json>(std::move(input));
  return request;
}

TEST(WaitHandlerTest, RedeliversForTheRemainingTimeThenSucceeds) {
  ManualClock clock;
  auto handler = NewWaitHandler();
  const TaskRequest request = Request("wait", {{"duration", "PT10S"}});
  ASSERT_TRUE(handler->Supports(request).ok());
  const absl::Time requested = clock.Now();
  clock.Advance(absl::Seconds(3));
  TaskContext early(request, 1, requested, clock.Now() + absl::Seconds(30), &clock);
  TaskOutcome first = handler->Handle(early);
  EXPECT_EQ(first.kind(), TaskOutcome::Kind::kRedeliverAfter);
  EXPECT_EQ(first.delay(), absl::Seconds(7));
  clock.Advance(absl::Seconds(7));
  TaskContext due(request, 2, requested, clock.Now() + absl::Seconds(30), &clock);
  TaskOutcome second = handler->Handle(due);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ((*second.output())["duration"], "PT10S");
}

TEST(WaitHandlerTest, ReportsTheShareOfTheWaitThatHasPassedAtEachRun) {
  ManualClock clock;
  auto handler = NewWaitHandler();
  const TaskRequest request = Request("wait", {{"duration", "PT10S"}});
  const absl::Time requested = clock.Now();
  std::vector<std::string> reported;
  auto run = [&](int attempt) {
    TaskContext context(request, attempt, requested, clock.Now() + absl::Seconds(30), &clock);
    context.set_progress_sink([&](std::string progress) {
      reported.push_back(std::move(progress));
      return absl::OkStatus();
    });
    return handler->Handle(context);
  };
  clock.Advance(absl::Seconds(3));
  EXPECT_EQ(run(1).kind(), TaskOutcome::Kind::kRedeliverAfter);
  clock.Advance(absl::Seconds(8));  // past due: still 100, not 110
  EXPECT_TRUE(run(2).ok());
  EXPECT_THAT(reported, ::testing::ElementsAre("30", "100"));
}

TEST(WaitHandlerTest, RejectsMissingOrMalformedDurations) {
  auto handler = NewWaitHandler();
  EXPECT_THAT(handler->Supports(Request("wait", json::object())).message(),
              HasSubstr("input.duration is required"));
  EXPECT_THAT(handler->Supports(Request("wait", {{"duration", 5}})).message(),
              HasSubstr("must be an ISO 8601 duration string"));
  EXPECT_THAT(handler->Supports(Request("wait", {{"duration", "P1M"}})).message(),
              HasSubstr("months"));
}

TEST(InjectHandlerTest, OutputsTheDataMergedIntoTheTarget) {
  ManualClock clock;
  auto handler = NewInjectHandler();
  const TaskRequest plain = Request("inject", {{"data", {{"a", 1}}}});
  TaskContext c1(plain, 1, clock.Now(), clock.Now(), &clock);
  EXPECT_EQ(*handler->Handle(c1).output(), json({{"a", 1}}));

  const TaskRequest merged = Request(
      "inject", {{"into", {{"a", 0}, {"keep", true}, {"drop", 1}}},
                 {"data", {{"a", 2}, {"drop", nullptr}, {"nested", {{"x", 1}}}}}});
  TaskContext c2(merged, 1, clock.Now(), clock.Now(), &clock);
  EXPECT_EQ(*handler->Handle(c2).output(),
            json({{"a", 2}, {"keep", true}, {"nested", {{"x", 1}}}}));

  EXPECT_THAT(handler->Supports(Request("inject", {{"data", "text"}})).message(),
              HasSubstr("input.data is required and must be a JSON object"));
  EXPECT_THAT(handler->Supports(Request("inject", {{"data", json::object()}, {"x", 1}})).message(),
              HasSubstr("unknown input field \"x\""));
}

}  // namespace
}  // namespace eventbus::executor
