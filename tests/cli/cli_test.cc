// The `eventbus` CLI's commands against each backend (memory in-process, Redis against a real
// redis-server), and its exit codes. The commands run through RunCli exactly as the binary runs
// them; only the stream (memory lives in-process) and the clock are handed in.

#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli.h"
#include "eventbus/clock.h"
#include "eventbus/event_stream.h"
#include "eventbus/harness/server_process.h"
#include "eventbus/memory/memory_event_stream.h"
#include "eventbus/stream_inspector.h"
#ifdef EVENTBUS_CLI_TEST_WITH_REDIS
#include "eventbus/harness/redis_server.h"
#include "eventbus/redis/redis_event_stream.h"
#endif
#ifdef EVENTBUS_CLI_TEST_WITH_KAFKA
#include "eventbus/harness/kafka_broker.h"
#include "eventbus/kafka/kafka_event_stream.h"
#endif

namespace eventbus::cli {
namespace {

using nlohmann::json;

struct CliRun {
  int code = -1;
  std::string out;
  std::string err;

  std::vector<json> JsonLines() const {
    std::vector<json> lines;
    for (absl::string_view line : absl::StrSplit(out, '\n', absl::SkipEmpty())) {
      lines.push_back(json::parse(line));
    }
    return lines;
  }
};

// Runs `eventbus ARGS` in-process with `context` (its output, error and input streams are set
// here) and keeps what it printed.
CliRun RunCliIn(CliContext context, std::vector<std::string> args,
                const std::string& stdin_text = "") {
  std::ostringstream out, err;
  std::istringstream in(stdin_text);
  context.out = &out;
  context.err = &err;
  context.in = &in;
  args.insert(args.begin(), "eventbus");
  std::vector<const char*> argv;
  for (const std::string& arg : args) argv.push_back(arg.c_str());
  CliRun run;
  run.code = RunCli(static_cast<int>(argv.size()), argv.data(), context);
  run.out = out.str();
  run.err = err.str();
  return run;
}

// One backend under test: a stream the test uses directly and the CLI uses too.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual EventStream* stream() = 0;
};

class MemoryBackend final : public Backend {
 public:
  explicit MemoryBackend(Clock* clock) : stream_(memory::NewMemoryEventStream(clock)) {}
  EventStream* stream() override { return stream_.get(); }

 private:
  std::unique_ptr<EventStream> stream_;
};

#ifdef EVENTBUS_CLI_TEST_WITH_REDIS
class RedisBackend final : public Backend {
 public:
  RedisBackend() {
    auto server = harness::RedisServer::Start();
    EXPECT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    absl::StatusOr<BackendConfig> unused;
    BackendConfig config;
    config.url = server_->url();
    config.clock = Clock::Real();
    auto options = redis::RedisOptionsFromConfig(config);
    EXPECT_TRUE(options.ok()) << options.status();
    auto stream = redis::NewRedisEventStream(*options);
    EXPECT_TRUE(stream.ok()) << stream.status();
    stream_ = std::move(*stream);
  }
  EventStream* stream() override { return stream_.get(); }

 private:
  std::unique_ptr<harness::RedisServer> server_;
  std::unique_ptr<EventStream> stream_;
};
#endif

#ifdef EVENTBUS_CLI_TEST_WITH_KAFKA
// One broker for every Kafka case (a start takes seconds); each case uses its own topics.
class KafkaBackend final : public Backend {
 public:
  KafkaBackend() {
    static harness::KafkaBroker* broker = [] {
      auto started = harness::KafkaBroker::Start();
      EXPECT_TRUE(started.ok()) << started.status();
      return started.ok() ? started->release() : nullptr;
    }();
    EXPECT_NE(broker, nullptr);
    if (broker == nullptr) return;
    kafka::KafkaOptions options;
    options.brokers = broker->bootstrap();
    // One partition: a DLQ's oldest records are then a prefix Kafka can delete.
    options.partitions = 1;
    auto stream = kafka::NewKafkaEventStream(options);
    EXPECT_TRUE(stream.ok()) << stream.status();
    if (stream.ok()) stream_ = std::move(*stream);
  }
  EventStream* stream() override { return stream_.get(); }

 private:
  std::unique_ptr<EventStream> stream_;
};
#endif

class CliTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    static int counter = 0;
    orders_ = absl::StrCat("orders-", ++counter, "-", absl::ToUnixMicros(absl::Now()));
    dlq_ = absl::StrCat(orders_, ".dlq");
    if (GetParam() == "memory") backend_ = std::make_unique<MemoryBackend>(&clock_);
#ifdef EVENTBUS_CLI_TEST_WITH_REDIS
    if (GetParam() == "redis") backend_ = std::make_unique<RedisBackend>();
#endif
#ifdef EVENTBUS_CLI_TEST_WITH_KAFKA
    if (GetParam() == "kafka") backend_ = std::make_unique<KafkaBackend>();
#endif
    ASSERT_NE(backend_, nullptr);
    ASSERT_NE(stream()->inspector(), nullptr);
    ASSERT_TRUE(stream()->capabilities().inspection);
  }

  EventStream* stream() { return backend_->stream(); }

  CliRun Cli(std::vector<std::string> args, const std::string& stdin_text = "") {
    CliContext context;
    context.stream = stream();
    context.clock = &clock_;
    context.sleep = [this](absl::Duration d) {
      slept_ += d;
      clock_.Advance(d);
    };
    return RunCliIn(std::move(context), std::move(args), stdin_text);
  }

  std::unique_ptr<Subscription> Join(const std::string& name, const std::string& consumer,
                                     const std::string& group = "workers") {
    auto sub = stream()->Subscribe(
        SubscribeOptions{.stream = name, .group = group, .consumer = consumer});
    EXPECT_TRUE(sub.ok()) << sub.status();
    return std::move(*sub);
  }

  std::vector<Delivery> FetchAll(Subscription& sub, int want) {
    std::vector<Delivery> all;
    for (int i = 0; i < 100 && static_cast<int>(all.size()) < want; ++i) {
      auto batch = sub.Fetch(want - static_cast<int>(all.size()), absl::Milliseconds(200));
      EXPECT_TRUE(batch.ok()) << batch.status();
      if (!batch.ok()) break;
      for (Delivery& d : *batch) all.push_back(std::move(d));
    }
    return all;
  }

  // Publishes five events through the CLI (NDJSON on stdin), and leaves them: one acked, two
  // dead-lettered with different reasons, two pending at consumer c1.
  std::vector<Delivery> Populate(const std::string& name) {
    std::string ndjson;
    for (int i = 0; i < 5; ++i) {
      absl::StrAppend(&ndjson, json{{"id", absl::StrCat("ev-", i)},
                                    {"type", i < 4 ? "order.created" : "order.cancelled"},
                                    {"key", absl::StrCat("k", i)},
                                    {"data", {{"n", i}}}}.dump(),
                      "\n");
    }
    CliRun published = Cli({"publish", "--stream", name, "--ndjson", "--file", "-"}, ndjson);
    EXPECT_EQ(published.code, 0) << published.err;
    EXPECT_NE(published.out.find("published 5 of 5"), std::string::npos) << published.out;

    auto sub = Join(name, "c1");
    std::vector<Delivery> got = FetchAll(*sub, 5);
    EXPECT_EQ(got.size(), 5u);
    if (got.size() != 5) return {};
    EXPECT_TRUE(sub->Ack(got[0]).ok());
    EXPECT_TRUE(sub->DeadLetter(got[1], "transient: HTTP 500 from upstream").ok());
    EXPECT_TRUE(sub->DeadLetter(got[2], "invalid: missing field \"type\"").ok());
    held_ = std::move(sub);  // c1 stays a member holding ev-3 and ev-4
    return got;
  }

  bool kafka() const { return GetParam() == "kafka"; }

  // Kafka shows a group once it committed, and tells no pending count: poll until it shows.
  json StatsOf(const std::string& name) {
    json report;
    for (int i = 0; i < 100; ++i) {
      CliRun run = Cli({"stats", name, "--json"});
      EXPECT_EQ(run.code, 0) << run.err;
      report = json::parse(run.out);
      if (!report["streams"][0]["groups"].empty()) break;
      absl::SleepFor(absl::Milliseconds(200));
    }
    return report;
  }

  std::string orders_;
  std::string dlq_;
  ManualClock clock_;
  absl::Duration slept_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Subscription> held_;
};

TEST_P(CliTest, StatsShowsLengthPendingLagAndConsumers) {
  Populate(orders_);
  json report = StatsOf(orders_);
  ASSERT_EQ(report["streams"].size(), 1u);
  const json& orders = report["streams"][0];
  EXPECT_EQ(orders["stream"], orders_);
  EXPECT_EQ(orders["length"], 5);
  ASSERT_EQ(orders["groups"].size(), 1u);
  const json& group = orders["groups"][0];
  EXPECT_EQ(group["group"], "workers");
  EXPECT_EQ(group["consumers"], json::array({"c1"}));
  if (kafka()) {
    // In-flight deliveries are the consumer's; lag counts from the committed offset (ev-0).
    EXPECT_EQ(group["pending"], -1);
    EXPECT_GE(group["lag"].get<int>(), 0);
    EXPECT_LE(group["lag"].get<int>(), 4);
  } else {
    EXPECT_EQ(group["pending"], 2);
    EXPECT_EQ(group["lag"], 0);
    EXPECT_TRUE(group.contains("oldest_pending_age_seconds"));
  }

  // Without arguments every stream is listed, the dead-letter stream among them.
  CliRun all = Cli({"stats"});
  ASSERT_EQ(all.code, 0) << all.err;
  EXPECT_NE(all.out.find(dlq_), std::string::npos) << all.out;
  EXPECT_NE(all.out.find("PENDING"), std::string::npos) << all.out;
}

TEST_P(CliTest, DlqListFiltersByReasonAndType) {
  Populate(orders_);
  CliRun all = Cli({"dlq", "list", "--dlq", dlq_, "--json"});
  ASSERT_EQ(all.code, 0) << all.err;
  std::vector<json> letters = all.JsonLines();
  ASSERT_EQ(letters.size(), 2u) << all.out;
  EXPECT_EQ(letters[0]["id"], "ev-1");
  EXPECT_EQ(letters[0]["headers"]["dlqreason"], "transient: HTTP 500 from upstream");
  EXPECT_EQ(letters[0]["headers"]["dlqoriginstream"], orders_);
  EXPECT_EQ(letters[0]["data"]["n"], 1);

  CliRun invalid = Cli({"dlq", "list", "--dlq", dlq_, "--reason", "INVALID", "--json"});
  ASSERT_EQ(invalid.code, 0) << invalid.err;
  ASSERT_EQ(invalid.JsonLines().size(), 1u);
  EXPECT_EQ(invalid.JsonLines()[0]["id"], "ev-2");

  CliRun none = Cli({"dlq", "list", "--dlq", dlq_, "--type", "order.cancelled", "--json"});
  ASSERT_EQ(none.code, 0) << none.err;
  EXPECT_TRUE(none.JsonLines().empty());

  CliRun shown = Cli({"dlq", "show", "--dlq", dlq_, "ev-2"});
  ASSERT_EQ(shown.code, 0) << shown.err;
  EXPECT_EQ(json::parse(shown.out)["headers"]["dlqreason"], "invalid: missing field \"type\"");
  CliRun missing = Cli({"dlq", "show", "--dlq", dlq_, "no-such-event"});
  EXPECT_EQ(missing.code, kExitFailure);
}

// --since/--until select by the event's publish time (`time`), both ends inclusive; a duration
// counts back from the CLI's clock.
TEST_P(CliTest, DlqListFiltersByPublishTime) {
  const absl::Time now = clock_.Now();
  const absl::Time times[] = {now - absl::Hours(5), now - absl::Hours(3), now - absl::Hours(1)};
  for (int i = 0; i < 3; ++i) {
    Event event = MakeEvent("order.created", "test", absl::StrCat("{\"n\":", i, "}"));
    event.set_id(absl::StrCat("at-", i));
    SetEventTime(event, times[i]);
    ASSERT_TRUE(stream()->PublishAndWait(orders_, event).ok());
  }
  auto sub = Join(orders_, "c1");
  std::vector<Delivery> got = FetchAll(*sub, 3);
  ASSERT_EQ(got.size(), 3u);
  for (const Delivery& d : got) ASSERT_TRUE(sub->DeadLetter(d, "boom").ok());

  auto ids = [&](std::vector<std::string> filter) {
    std::vector<std::string> args = {"dlq", "list", "--dlq", dlq_, "--json"};
    args.insert(args.end(), filter.begin(), filter.end());
    CliRun run = Cli(args);
    EXPECT_EQ(run.code, kExitOk) << run.err;
    std::vector<std::string> out;
    for (const json& letter : run.JsonLines()) out.push_back(letter["id"]);
    return out;
  };
  using Ids = std::vector<std::string>;
  EXPECT_EQ(ids({}), (Ids{"at-0", "at-1", "at-2"}));
  EXPECT_EQ(ids({"--since", "4h"}), (Ids{"at-1", "at-2"}));
  EXPECT_EQ(ids({"--until", "2h"}), (Ids{"at-0", "at-1"}));
  EXPECT_EQ(ids({"--since", "4h", "--until", "2h"}), (Ids{"at-1"}));
  const std::string exactly = absl::FormatTime(absl::RFC3339_full, times[1], absl::UTCTimeZone());
  EXPECT_EQ(ids({"--since", exactly}), (Ids{"at-1", "at-2"}));
  EXPECT_EQ(ids({"--until", exactly}), (Ids{"at-0", "at-1"}));
  EXPECT_EQ(ids({"--since", exactly, "--until", exactly}), (Ids{"at-1"}));
  EXPECT_EQ(ids({"--since", "30m"}), Ids{});
  // A range that selects nothing is an empty list, not an error.
  EXPECT_EQ(ids({"--since", "2h", "--until", "4h"}), Ids{});

  CliRun bad = Cli({"dlq", "list", "--dlq", dlq_, "--until", "next tuesday"});
  EXPECT_EQ(bad.code, kExitUsage);
  EXPECT_NE(bad.err.find("--until \"next tuesday\""), std::string::npos) << bad.err;
  EXPECT_EQ(Cli({"dlq", "list", "--dlq", dlq_, "--since=-2h"}).code, kExitUsage);
}

TEST_P(CliTest, RedrivePutsDeadLettersBackWithTheirIdsAndHistory) {
  Populate(orders_);
  CliRun dry = Cli({"dlq", "redrive", "--dlq", dlq_, "--reason", "HTTP 500", "--dry-run"});
  ASSERT_EQ(dry.code, 0) << dry.err;
  EXPECT_NE(dry.out.find("would redrive"), std::string::npos) << dry.out;
  EXPECT_EQ(Cli({"dlq", "list", "--dlq", dlq_, "--json"}).JsonLines().size(), 2u);

  CliRun redrive = Cli({"dlq", "redrive", "--dlq", dlq_, "--reason", "HTTP 500"});
  ASSERT_EQ(redrive.code, 0) << redrive.err << redrive.out;
  EXPECT_NE(redrive.out.find("redrove 1, refused 0, failed 0"), std::string::npos)
      << redrive.out;
  // Gone from the DLQ, the other one stays.
  std::vector<json> left = Cli({"dlq", "list", "--dlq", dlq_, "--json"}).JsonLines();
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(left[0]["id"], "ev-2");

  // A consumer of the origin stream gets it again, as a fresh delivery of the same event.
  auto sub = Join(orders_, "v1", "verify");
  std::vector<Delivery> all = FetchAll(*sub, 6);
  ASSERT_EQ(all.size(), 6u);
  std::vector<Delivery> again;
  for (Delivery& d : all) {
    if (d.event.headers().count("dlqredrives")) again.push_back(d);
  }
  ASSERT_EQ(again.size(), 1u);
  const Event& event = again[0].event;
  EXPECT_EQ(event.id(), "ev-1");
  EXPECT_EQ(again[0].delivery_count, 1);
  EXPECT_EQ(event.headers().count("dlqreason"), 0u);
  EXPECT_EQ(event.headers().at("dlqredrives"), "1");
  json history = json::parse(event.headers().at("dlqhistory"));
  ASSERT_EQ(history.size(), 1u);
  EXPECT_EQ(history[0]["reason"], "transient: HTTP 500 from upstream");
  EXPECT_EQ(history[0]["stream"], orders_);

  // It fails again: at --max-redrives 1 it is refused (exit 1) and stays in the DLQ.
  ASSERT_TRUE(sub->DeadLetter(again[0], "transient: HTTP 500 again").ok());
  CliRun loop = Cli({"dlq", "redrive", "--dlq", dlq_, "--id", "ev-1", "--max-redrives",
                  "1"});
  EXPECT_EQ(loop.code, kExitFailure);
  EXPECT_NE(loop.err.find("redriven 1 times already"), std::string::npos) << loop.err;
  EXPECT_EQ(Cli({"dlq", "list", "--dlq", dlq_, "--id", "ev-1", "--json"})
                .JsonLines()
                .size(),
            1u);
}

TEST_P(CliTest, PurgeRemovesWhatTheFilterSelects) {
  Populate(orders_);
  // The older of the two (Kafka deletes only a partition's oldest records).
  CliRun dry = Cli({"dlq", "purge", "--dlq", dlq_, "--reason", "http 500", "--dry-run"});
  ASSERT_EQ(dry.code, 0) << dry.err;
  EXPECT_NE(dry.out.find("would purge 1"), std::string::npos) << dry.out;
  EXPECT_EQ(Cli({"dlq", "list", "--dlq", dlq_, "--json"}).JsonLines().size(), 2u);
  CliRun purge = Cli({"dlq", "purge", "--dlq", dlq_, "--reason", "http 500"});
  ASSERT_EQ(purge.code, 0) << purge.err;
  EXPECT_NE(purge.out.find("purged 1"), std::string::npos) << purge.out;
  std::vector<json> left = Cli({"dlq", "list", "--dlq", dlq_, "--json"}).JsonLines();
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(left[0]["id"], "ev-2");
}

TEST_P(CliTest, TailReadsWithoutJoiningAGroup) {
  Populate(orders_);
  CliRun tail = Cli({"tail", orders_, "--from-oldest", "--no-follow", "--json"});
  ASSERT_EQ(tail.code, 0) << tail.err;
  std::vector<json> events = tail.JsonLines();
  ASSERT_EQ(events.size(), 5u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(events[i]["id"], absl::StrCat("ev-", i));
  EXPECT_EQ(events[4]["type"], "order.cancelled");

  CliRun counted = Cli({"tail", orders_, "--from-oldest", "--count", "2"});
  ASSERT_EQ(counted.code, 0) << counted.err;
  EXPECT_EQ(std::count(counted.out.begin(), counted.out.end(), '\n'), 2) << counted.out;

  // From the end: only what comes after.
  CliRun from_end = Cli({"tail", orders_, "--no-follow"});
  ASSERT_EQ(from_end.code, 0) << from_end.err;
  EXPECT_EQ(from_end.out, "");

  // Tailing joined no group: still only "workers".
  json report = StatsOf(orders_);
  EXPECT_EQ(report["streams"][0]["groups"].size(), 1u);
}

TEST_P(CliTest, PublishesATaskRequestTheExecutorAccepts) {
  CliRun run = Cli({"publish", "--task", "set", "--id", "t-1", "--input", R"({"value": 3})"});
  ASSERT_EQ(run.code, 0) << run.err;
  EXPECT_EQ(run.out, "t-1\n");
  auto page = stream()->inspector()->Read("io.flunq.task.requested", "", 10);
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_EQ(page->events.size(), 1u);
  json request = json::parse(page->events[0].event.data());
  EXPECT_EQ(request["id"], "t-1");
  EXPECT_EQ(request["type"], "set");
  EXPECT_EQ(request["input"]["value"], 3);

  // Bad input publishes nothing and is a usage error.
  CliRun bad = Cli({"publish", "--task", "set", "--input", "{not json"});
  EXPECT_EQ(bad.code, kExitUsage);
  CliRun no_type = Cli({"publish", "--stream", orders_, "--data", "x"});
  EXPECT_EQ(no_type.code, kExitUsage);
  EXPECT_NE(no_type.err.find("--type"), std::string::npos) << no_type.err;
  CliRun bad_line = Cli({"publish", "--stream", orders_, "--ndjson", "--file", "-"},
                     "{\"type\":\"a\"}\n[1]\n");
  EXPECT_EQ(bad_line.code, kExitUsage);
  EXPECT_NE(bad_line.err.find("line 2"), std::string::npos) << bad_line.err;
  auto orders = stream()->inspector()->Read(orders_, "", 10);
  EXPECT_TRUE(absl::IsNotFound(orders.status()) || orders->events.empty());
}

TEST_P(CliTest, UsageErrorsExitWithTwo) {
  EXPECT_EQ(Cli({}).code, kExitUsage);
  EXPECT_EQ(Cli({"frobnicate"}).code, kExitUsage);
  EXPECT_EQ(Cli({"dlq"}).code, kExitUsage);
  EXPECT_EQ(Cli({"dlq", "list", "--since", "yesterday-ish"}).code, kExitUsage);
  EXPECT_EQ(Cli({"tail"}).code, kExitUsage);
  EXPECT_EQ(Cli({"--help"}).code, kExitOk);
}

std::vector<std::string> Backends() {
  std::vector<std::string> names = {"memory"};
#ifdef EVENTBUS_CLI_TEST_WITH_REDIS
  names.push_back("redis");
#endif
#ifdef EVENTBUS_CLI_TEST_WITH_KAFKA
  names.push_back("kafka");
#endif
  return names;
}

INSTANTIATE_TEST_SUITE_P(Backends, CliTest, ::testing::ValuesIn(Backends()),
                         [](const auto& info) { return info.param; });

// --rate paces a redrive on the CLI's clock: 4 events at 2/s take 1.5 s.
TEST(CliRedriveRate, PacesOnTheClock) {
  ManualClock clock;
  auto stream = memory::NewMemoryEventStream(&clock);
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(stream->PublishAndWait("jobs", MakeEvent("job", "test")).ok());
  }
  auto sub = stream->Subscribe(SubscribeOptions{.stream = "jobs", .group = "g", .consumer = "c"});
  ASSERT_TRUE(sub.ok());
  auto got = (*sub)->Fetch(4, absl::Milliseconds(100));
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(got->size(), 4u);
  for (const Delivery& d : *got) ASSERT_TRUE((*sub)->DeadLetter(d, "boom").ok());

  std::ostringstream out, err;
  std::istringstream in;
  absl::Duration slept;
  CliContext context{.out = &out, .err = &err, .in = &in, .stream = stream.get(),
                     .clock = &clock,
                     .sleep = [&](absl::Duration d) { slept += d; clock.Advance(d); }};
  const char* argv[] = {"eventbus", "dlq", "redrive", "--dlq", "jobs.dlq", "--rate", "2"};
  ASSERT_EQ(RunCli(7, argv, context), kExitOk) << err.str();
  EXPECT_EQ(slept, absl::Milliseconds(1500));
  EXPECT_NE(out.str().find("redrove 4"), std::string::npos) << out.str();
}

// The binary itself: configuration errors exit 2 with the setting named.
TEST(CliBinary, BadBackendIsAUsageError) {
  const std::string command =
      absl::StrCat("EVENT_STREAM_TYPE=no-such-backend ", EVENTBUS_CLI_BINARY, " stats 2>&1");
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buffer[256];
  while (fgets(buffer, sizeof buffer, pipe) != nullptr) output += buffer;
  const int status = pclose(pipe);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), kExitUsage) << output;
  EXPECT_NE(output.find("no-such-backend"), std::string::npos) << output;
}

// The binary with a shell command line: its exit code and what it wrote (stdout and stderr).
struct BinaryRun {
  int code = -1;
  std::string output;
};
BinaryRun RunBinary(const std::string& env_and_args) {
  const std::string command = absl::StrCat(env_and_args, " 2>&1");
  BinaryRun run;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return run;
  char buffer[256];
  while (fgets(buffer, sizeof buffer, pipe) != nullptr) run.output += buffer;
  const int status = pclose(pipe);
  run.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

// `eventbus bench` runs the runner with the arguments as given, in order and unsplit; a
// stand-in runner that prints them shows what arrived (no benchmark runs).
class CliBench : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = harness::MakeTempDir("eventbus-cli-bench");
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = *dir;
    runner_ = dir_ + "/runner.py";
    std::ofstream(runner_) << "import json, sys\n"
                              "print('ARGS ' + json.dumps(sys.argv[1:]))\n"
                              "if '--exit' in sys.argv:\n"
                              "    sys.exit(int(sys.argv[sys.argv.index('--exit') + 1]))\n";
  }
  void TearDown() override { harness::RemoveTree(dir_); }

  BinaryRun Bench(const std::string& args) {
    return RunBinary(absl::StrCat("EVENTBUS_BENCH_RUNNER='", runner_, "' ", EVENTBUS_CLI_BINARY,
                                  " bench ", args));
  }

  std::string dir_;
  std::string runner_;
};

TEST_F(CliBench, PassesItsArgumentsThroughInOrder) {
  BinaryRun run = Bench("--quick --backends memory,redis --out-dir '/tmp/with space' --check");
  EXPECT_EQ(run.code, kExitOk) << run.output;
  EXPECT_NE(run.output.find(R"(ARGS ["--quick", "--backends", "memory,redis", "--out-dir", )"
                            R"("/tmp/with space", "--check"])"),
            std::string::npos)
      << run.output;
  // After "--" too, as the help says.
  BinaryRun separated = Bench("-- --smoke --backends memory");
  EXPECT_EQ(separated.code, kExitOk) << separated.output;
  EXPECT_NE(separated.output.find(R"(ARGS ["--smoke", "--backends", "memory"])"),
            std::string::npos)
      << separated.output;
  BinaryRun help = Bench("-- --help");
  EXPECT_EQ(help.code, kExitOk) << help.output;
  EXPECT_NE(help.output.find(R"(ARGS ["--help"])"), std::string::npos) << help.output;
  BinaryRun none = Bench("");
  EXPECT_EQ(none.code, kExitOk) << none.output;
  EXPECT_NE(none.output.find("ARGS []"), std::string::npos) << none.output;
}

TEST_F(CliBench, TheRunnersFailureDecidesTheExitCode) {
  // Its usage errors (argparse exits 2) stay usage errors; any other failure is 1.
  BinaryRun usage = Bench("--exit 2");
  EXPECT_EQ(usage.code, kExitUsage) << usage.output;
  EXPECT_NE(usage.output.find("refused its arguments"), std::string::npos) << usage.output;
  BinaryRun failed = Bench("--exit 3");
  EXPECT_EQ(failed.code, kExitFailure) << failed.output;
  EXPECT_NE(failed.output.find("the benchmark runner failed (exit 3)"), std::string::npos)
      << failed.output;
}

TEST_F(CliBench, AMissingRunnerIsNamed) {
  BinaryRun run = RunBinary(absl::StrCat("EVENTBUS_BENCH_RUNNER=", dir_, "/no-such-runner.py ",
                                         EVENTBUS_CLI_BINARY, " bench --quick"));
  EXPECT_EQ(run.code, kExitUsage) << run.output;
  EXPECT_NE(run.output.find(dir_ + "/no-such-runner.py does not exist"), std::string::npos)
      << run.output;
  EXPECT_NE(run.output.find("EVENTBUS_BENCH_RUNNER"), std::string::npos) << run.output;
  EXPECT_EQ(run.output.find("ARGS"), std::string::npos) << run.output;
}

// The real bench/run.py (the one the binary was built with): a build dir that is not one is
// refused before any server starts.
TEST_F(CliBench, TheRealRunnerRefusesAMissingBuildDir) {
  const std::string missing = dir_ + "/no-build";
  BinaryRun run = RunBinary(absl::StrCat("env -u EVENTBUS_BENCH_RUNNER ", EVENTBUS_CLI_BINARY,
                                         " bench --smoke --backends memory --build-dir ", missing,
                                         " --out-dir ", dir_, "/out"));
  EXPECT_EQ(run.code, kExitUsage) << run.output;
  EXPECT_NE(run.output.find("--build-dir " + missing + " is not a CMake build directory"),
            std::string::npos)
      << run.output;
  EXPECT_EQ(run.output.find("[bench]"), std::string::npos) << "nothing ran: " << run.output;
}

#ifdef EVENTBUS_EXECUTOR_BINARY
// The real eventbus-executor (memory backend and task store) on a free loopback port.
class Executor {
 public:
  static std::unique_ptr<Executor> Start(std::vector<std::string> env = {}) {
    auto executor = std::unique_ptr<Executor>(new Executor());
    auto port = harness::FreeLoopbackPort();
    auto dir = harness::MakeTempDir("eventbus-cli-executor");
    EXPECT_TRUE(port.ok() && dir.ok());
    if (!port.ok() || !dir.ok()) return nullptr;
    executor->port_ = *port;
    executor->dir_ = *dir;
    env.push_back("EVENT_STREAM_TYPE=memory");
    env.push_back("LOG_LEVEL=warn");
    env.push_back(absl::StrCat("EXECUTOR_HTTP_ADDR=127.0.0.1:", *port));
    env.push_back("EXECUTOR_SHUTDOWN_DEADLINE=2s");
    auto server = harness::ServerProcess::Start({.program = EVENTBUS_EXECUTOR_BINARY,
                                                 .args = {},
                                                 .log_path = *dir + "/executor.log",
                                                 .env = std::move(env)});
    EXPECT_TRUE(server.ok()) << server.status();
    if (!server.ok()) return nullptr;
    executor->server_ = std::move(*server);
    absl::Status up = harness::WaitForTcpPort(*port, absl::Seconds(20));
    EXPECT_TRUE(up.ok()) << up << "\n" << executor->server_->LogTail();
    if (!up.ok()) return nullptr;
    return executor;
  }
  ~Executor() {
    if (server_ != nullptr) server_->Stop(absl::Seconds(5));
    harness::RemoveTree(dir_);
  }

  std::string url() const { return absl::StrCat("http://127.0.0.1:", port_); }

  // POST /v1/tasks; the HTTP status (and the answer, as a test failure, unless 202).
  int Submit(const json& task, const std::string& token = "") const {
    httplib::Client client("127.0.0.1", port_);
    httplib::Headers headers;
    if (!token.empty()) headers.emplace("Authorization", "Bearer " + token);
    auto res = client.Post("/v1/tasks", headers, task.dump(), "application/json");
    EXPECT_TRUE(res && res->status == 202) << task.dump() << " -> " << (res ? res->body : "");
    return res ? res->status : 0;
  }

  std::string LogTail() const { return server_->LogTail(); }

 private:
  Executor() = default;
  int port_ = 0;
  std::string dir_;
  std::unique_ptr<harness::ServerProcess> server_;
};

CliRun RunCliWith(std::vector<std::string> args, Environment env = {}) {
  return RunCliIn(CliContext{.env = std::move(env)}, std::move(args));
}

// `eventbus task get|cancel|retry` against one running service (a start is a second or so).
class CliTask : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { executor_ = Executor::Start().release(); }
  static void TearDownTestSuite() {
    delete executor_;
    executor_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(executor_, nullptr); }

  CliRun Task(const std::string& action, const std::string& id) {
    return RunCliWith({"task", action, id, "--api", executor_->url()});
  }

  // Polls `task get` until the task is in `state` (the service runs it on its own time).
  json AwaitState(const std::string& id, const std::string& state) {
    json task;
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (absl::Now() < deadline) {
      CliRun run = Task("get", id);
      if (run.code == kExitOk) {
        task = json::parse(run.out);
        if (task["state"] == state) return task;
      }
      absl::SleepFor(absl::Milliseconds(20));  // a remote process: nothing to wait on
    }
    ADD_FAILURE() << id << " never reached " << state << ": " << task.dump() << "\n"
                  << executor_->LogTail();
    return task;
  }

  static Executor* executor_;
};
Executor* CliTask::executor_ = nullptr;

TEST_F(CliTask, GetShowsAFinishedTask) {
  ASSERT_EQ(executor_->Submit({{"id", "cli-get-1"},
                               {"type", "inject"},
                               {"input", {{"data", {{"answer", 42}}}}}}),
            202);
  json task = AwaitState("cli-get-1", "succeeded");
  EXPECT_EQ(task["id"], "cli-get-1");
  EXPECT_EQ(task["type"], "inject");
  EXPECT_EQ(task["attempts"], 1);
  EXPECT_FALSE(task["finished_at"].is_null()) << task.dump();
  EXPECT_NE(task["result"].dump().find("42"), std::string::npos) << task.dump();
}

TEST_F(CliTask, AnUnknownTaskExitsOneWithTheServicesReason) {
  for (const char* action : {"get", "cancel", "retry"}) {
    CliRun run = Task(action, "no-such-task");
    EXPECT_EQ(run.code, kExitFailure) << action;
    EXPECT_NE(run.err.find("HTTP 404"), std::string::npos) << run.err;
    EXPECT_NE(run.err.find("no task \"no-such-task\""), std::string::npos) << run.err;
    EXPECT_EQ(run.out, "");
  }
  // The binary exits with the same code.
  BinaryRun binary = RunBinary(absl::StrCat(EVENTBUS_CLI_BINARY, " task get no-such-task --api ",
                                            executor_->url()));
  EXPECT_EQ(binary.code, kExitFailure) << binary.output;
  EXPECT_NE(binary.output.find("HTTP 404"), std::string::npos) << binary.output;
}

TEST_F(CliTask, CancelsAScheduledTaskOnce) {
  ASSERT_EQ(executor_->Submit({{"id", "cli-cancel-1"},
                               {"type", "inject"},
                               {"input", {{"data", json::object()}}},
                               {"run_after", "PT1H"}}),
            202);
  EXPECT_EQ(json::parse(Task("get", "cli-cancel-1").out)["state"], "scheduled");
  CliRun cancel = Task("cancel", "cli-cancel-1");
  ASSERT_EQ(cancel.code, kExitOk) << cancel.err;
  EXPECT_EQ(json::parse(cancel.out)["state"], "cancelled");
  EXPECT_EQ(json::parse(Task("get", "cli-cancel-1").out)["state"], "cancelled");
  CliRun again = Task("cancel", "cli-cancel-1");
  EXPECT_EQ(again.code, kExitFailure);
  EXPECT_NE(again.err.find("HTTP 409"), std::string::npos) << again.err;
  EXPECT_NE(again.err.find("already cancelled"), std::string::npos) << again.err;
}

TEST_F(CliTask, RetriesADeadLetteredTaskButNotASucceededOne) {
  auto refused = harness::FreeLoopbackPort();  // nothing listens: every call is refused
  ASSERT_TRUE(refused.ok());
  ASSERT_EQ(executor_->Submit({{"id", "cli-retry-1"},
                               {"type", "call"},
                               {"retry", {{"max_attempts", 1}}},
                               {"input", {{"url", absl::StrCat("http://127.0.0.1:", *refused, "/")},
                                          {"method", "GET"}}}}),
            202);
  json dead = AwaitState("cli-retry-1", "dead_lettered");
  EXPECT_EQ(dead["attempts"], 1);
  EXPECT_FALSE(dead["last_error"].is_null()) << dead.dump();

  CliRun retry = Task("retry", "cli-retry-1");
  ASSERT_EQ(retry.code, kExitOk) << retry.err;
  json retried = json::parse(retry.out);
  EXPECT_EQ(retried["state"], "queued");
  EXPECT_EQ(retried["attempts"], 0);
  // It runs again (and fails again: the port is still closed), with the retry in its history.
  json again = AwaitState("cli-retry-1", "dead_lettered");
  EXPECT_NE(again["history"].dump().find("\"by\":\"api\""), std::string::npos) << again.dump();

  ASSERT_EQ(executor_->Submit(
                {{"id", "cli-retry-ok"}, {"type", "inject"}, {"input", {{"data", json::object()}}}}),
            202);
  AwaitState("cli-retry-ok", "succeeded");
  CliRun refused_retry = Task("retry", "cli-retry-ok");
  EXPECT_EQ(refused_retry.code, kExitFailure);
  EXPECT_NE(refused_retry.err.find("HTTP 409"), std::string::npos) << refused_retry.err;
  EXPECT_NE(refused_retry.err.find("only failed and dead_lettered"), std::string::npos)
      << refused_retry.err;
}

TEST_F(CliTask, UsageErrorsExitTwo) {
  EXPECT_EQ(RunCliWith({"task"}).code, kExitUsage);
  EXPECT_EQ(RunCliWith({"task", "get", "--api", executor_->url()}).code, kExitUsage);  // no id
  EXPECT_EQ(RunCliWith({"task", "frobnicate", "t-1", "--api", executor_->url()}).code, kExitUsage);
  CliRun no_api = RunCliWith({"task", "get", "t-1"});
  EXPECT_EQ(no_api.code, kExitUsage);
  EXPECT_NE(no_api.err.find("--api (or EXECUTOR_API_URL)"), std::string::npos) << no_api.err;
}

TEST(CliTaskApi, AnUnreachableServiceExitsOne) {
  auto port = harness::FreeLoopbackPort();
  ASSERT_TRUE(port.ok());
  CliRun run =
      RunCliWith({"task", "get", "t-1", "--api", absl::StrCat("http://127.0.0.1:", *port)});
  EXPECT_EQ(run.code, kExitFailure);
  EXPECT_NE(run.err.find("cannot reach the executor API"), std::string::npos) << run.err;
}

// The token from --token or EXECUTOR_API_TOKEN (and the URL from EXECUTOR_API_URL).
TEST(CliTaskApi, SendsTheApiToken) {
  auto executor = Executor::Start({"EXECUTOR_API_TOKEN=cli-test-token"});
  ASSERT_NE(executor, nullptr);
  ASSERT_EQ(executor->Submit(
                {{"id", "cli-token-1"}, {"type", "inject"}, {"input", {{"data", json::object()}}}},
                "cli-test-token"),
            202);
  CliRun anonymous = RunCliWith({"task", "get", "cli-token-1", "--api", executor->url()});
  EXPECT_EQ(anonymous.code, kExitFailure);
  EXPECT_NE(anonymous.err.find("HTTP 401"), std::string::npos) << anonymous.err;
  CliRun wrong = RunCliWith({"task", "get", "cli-token-1", "--api", executor->url(), "--token",
                             "not-it"});
  EXPECT_EQ(wrong.code, kExitFailure);
  EXPECT_NE(wrong.err.find("wrong bearer token"), std::string::npos) << wrong.err;
  CliRun flag = RunCliWith({"task", "get", "cli-token-1", "--api", executor->url(), "--token",
                            "cli-test-token"});
  EXPECT_EQ(flag.code, kExitOk) << flag.err;
  EXPECT_EQ(json::parse(flag.out)["id"], "cli-token-1");
  CliRun from_env = RunCliWith({"task", "get", "cli-token-1"},
                               {{"EXECUTOR_API_URL", executor->url()},
                                {"EXECUTOR_API_TOKEN", "cli-test-token"}});
  EXPECT_EQ(from_env.code, kExitOk) << from_env.err;
  EXPECT_EQ(json::parse(from_env.out)["id"], "cli-token-1");
}
#endif  // EVENTBUS_EXECUTOR_BINARY

}  // namespace
}  // namespace eventbus::cli
