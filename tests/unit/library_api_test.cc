// The library conveniences: the log sink, StreamSession, ConsumeLoop, backend discovery
// (RegisterBuiltinBackends, BackendRegistry::Types, eventbus/backends.h), the version header.
#include <algorithm>
#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "eventbus/backends.h"
#include "eventbus/builtin_backends.h"
#include "absl/time/clock.h"
#include "eventbus/clock.h"
#include "eventbus/log.h"
#include "eventbus/memory/memory_event_stream.h"
#include "eventbus/session.h"
#include "eventbus/version.h"
#include "gtest/gtest.h"

namespace eventbus {
namespace {

struct CapturedLog {
  std::mutex mu;
  std::vector<std::string> lines;

  LogSink Sink() {
    return [this](const LogRecord& r) {
      std::lock_guard lock(mu);
      lines.push_back(absl::StrCat(LogLevelName(r.level), " ", r.component, ": ", r.message));
    };
  }
};

class LogSinkTest : public testing::Test {
 protected:
  ~LogSinkTest() override { SetLogSink(nullptr); }
};

TEST_F(LogSinkTest, NothingIsDeliveredWithoutASink) {
  SetLogSink(nullptr);
  EXPECT_FALSE(LogEnabled(LogLevel::kError));
  Log(LogLevel::kError, "core", "dropped");  // must not crash or print
}

TEST_F(LogSinkTest, RecordsBelowTheMinimumAreDroppedAndTrailingNewlinesTrimmed) {
  CapturedLog captured;
  SetLogSink(captured.Sink(), LogLevel::kWarning);
  EXPECT_FALSE(LogEnabled(LogLevel::kInfo));
  EXPECT_TRUE(LogEnabled(LogLevel::kWarning));
  Log(LogLevel::kInfo, "kafka", "too chatty");
  Log(LogLevel::kWarning, "kafka", "created topic t\n");
  Log(LogLevel::kError, "librdkafka", "broker down");
  EXPECT_EQ(captured.lines, (std::vector<std::string>{"warning kafka: created topic t",
                                                       "error librdkafka: broker down"}));
}

TEST_F(LogSinkTest, ReplacingTheSinkWhileOtherThreadsLogIsSafe) {
  CapturedLog first;
  CapturedLog second;
  SetLogSink(first.Sink(), LogLevel::kDebug);
  std::atomic<bool> stop{false};
  std::vector<std::thread> loggers;
  for (int i = 0; i < 4; ++i) {
    loggers.emplace_back([&] {
      while (!stop.load()) Log(LogLevel::kInfo, "core", "x");
    });
  }
  absl::SleepFor(absl::Milliseconds(20));
  SetLogSink(second.Sink(), LogLevel::kDebug);
  absl::SleepFor(absl::Milliseconds(20));
  stop = true;
  for (std::thread& t : loggers) t.join();
  std::lock_guard a(first.mu);
  std::lock_guard b(second.mu);
  EXPECT_FALSE(first.lines.empty());
  EXPECT_FALSE(second.lines.empty());
}

SubscribeOptions Options(std::string consumer) {
  SubscribeOptions options;
  options.stream = "orders";
  options.group = "billing";
  options.consumer = std::move(consumer);
  return options;
}

TEST(StreamSession, SubscribeReturnsAReadySubscriptionTheSessionOwns) {
  ManualClock clock;
  StreamSession session(memory::NewMemoryEventStream(&clock));
  absl::StatusOr<Subscription*> sub = session.Subscribe(Options("c1"));
  ASSERT_TRUE(sub.ok()) << sub.status();
  ASSERT_TRUE(session->Publish("orders", MakeEvent("order.placed", "/shop", "1")).ok());
  auto got = (*sub)->Fetch(10, absl::ZeroDuration());
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), 1u);
  EXPECT_EQ((*got)[0].event.data(), "1");
}

// Wraps a stream so a test sees the order in which its subscriptions are closed.
class ClosingOrder final : public EventStream {
 public:
  ClosingOrder(std::unique_ptr<EventStream> inner, std::vector<std::string>* closed)
      : inner_(std::move(inner)), closed_(closed) {}
  absl::string_view backend_name() const override { return inner_->backend_name(); }
  Capabilities capabilities() const override { return inner_->capabilities(); }
  absl::Status Flush(absl::Duration timeout) override { return inner_->Flush(timeout); }
  absl::Status Ping(absl::Duration timeout) override { return inner_->Ping(timeout); }
  Clock* clock() const override { return inner_->clock(); }
  absl::StatusOr<std::unique_ptr<Subscription>> Subscribe(const SubscribeOptions& o) override {
    auto sub = inner_->Subscribe(o);
    if (!sub.ok()) return sub.status();
    return std::unique_ptr<Subscription>(new Recorded(std::move(*sub), o.consumer, closed_));
  }

 protected:
  absl::Status DoPublish(absl::string_view stream, Event event, PublishCallback done) override {
    return inner_->Publish(stream, std::move(event), std::move(done));
  }

 private:
  class Recorded final : public Subscription {
   public:
    Recorded(std::unique_ptr<Subscription> inner, std::string name, std::vector<std::string>* log)
        : inner_(std::move(inner)), name_(std::move(name)), log_(log) {}
    absl::StatusOr<std::vector<Delivery>> Fetch(int n, absl::Duration w) override {
      return inner_->Fetch(n, w);
    }
    absl::Status Ack(const Delivery& d) override { return inner_->Ack(d); }
    using Subscription::Nack;
    absl::Status Nack(const Delivery& d, absl::Duration delay, NackKind kind) override {
      return inner_->Nack(d, delay, kind);
    }
    absl::Status Extend(const Delivery& d) override { return inner_->Extend(d); }
    absl::StatusOr<std::vector<Delivery>> Reclaim(absl::Duration idle, int n) override {
      return inner_->Reclaim(idle, n);
    }
    absl::Status DeadLetter(const Delivery& d, absl::string_view reason) override {
      return inner_->DeadLetter(d, reason);
    }
    absl::Status Close() override {
      log_->push_back(name_);
      return inner_->Close();
    }

   private:
    std::unique_ptr<Subscription> inner_;
    std::string name_;
    std::vector<std::string>* log_;
  };

  std::unique_ptr<EventStream> inner_;
  std::vector<std::string>* closed_;
};

TEST(StreamSession, CloseClosesTheSubscriptionsNewestFirstAndRefusesNewOnes) {
  ManualClock clock;
  std::vector<std::string> closed;
  StreamSession session(
      std::make_unique<ClosingOrder>(memory::NewMemoryEventStream(&clock), &closed));
  ASSERT_TRUE(session.Subscribe(Options("c1")).ok());
  ASSERT_TRUE(session.Subscribe(Options("c2")).ok());
  ASSERT_TRUE(session.Close().ok());
  EXPECT_EQ(closed, (std::vector<std::string>{"c2", "c1"}));
  absl::StatusOr<Subscription*> after = session.Subscribe(Options("c3"));
  EXPECT_EQ(after.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(StreamSession, DestructionClosesTheSubscriptions) {
  ManualClock clock;
  std::vector<std::string> closed;
  {
    StreamSession session(
        std::make_unique<ClosingOrder>(memory::NewMemoryEventStream(&clock), &closed));
    ASSERT_TRUE(session.Subscribe(Options("c1")).ok());
    StreamSession moved = std::move(session);  // the moved-to session owns them now
    EXPECT_TRUE(closed.empty());
  }
  EXPECT_EQ(closed, (std::vector<std::string>{"c1"}));
}

TEST(StreamSession, OpenNamesTheValidTypesForAnUnknownOne) {
  BackendRegistry registry;
  ASSERT_TRUE(memory::RegisterMemoryBackend(registry).ok());
  absl::StatusOr<StreamSession> session = StreamSession::Open("bogus", {}, registry);
  EXPECT_EQ(session.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(session.status().message().find("valid types: memory"), absl::string_view::npos)
      << session.status();
  EXPECT_TRUE(StreamSession::Open("memory", {}, registry).ok());
}

TEST(ConsumeLoop, SettlesEachDeliveryAsTheHandlerChose) {
  ManualClock clock;
  StreamSession session(memory::NewMemoryEventStream(&clock));
  Subscription* sub = *session.Subscribe(Options("c1"));
  for (const char* data : {"ack", "nack", "dead"}) {
    ASSERT_TRUE(session->Publish("orders", MakeEvent("order.placed", "/shop", data)).ok());
  }
  std::vector<std::string> seen;
  absl::Status looped = ConsumeLoop(*sub, {.max_deliveries = 3}, [&](const Delivery& d) {
    seen.push_back(d.event.data());
    if (d.event.data() == "nack") return Settle::Nack(absl::Minutes(5));
    if (d.event.data() == "dead") return Settle::DeadLetter("bad order");
    return Settle::Ack();
  });
  ASSERT_TRUE(looped.ok()) << looped;
  EXPECT_EQ(seen, (std::vector<std::string>{"ack", "nack", "dead"}));

  // Nothing is due now; the nack comes back after its delay, with its count increased.
  auto now = sub->Fetch(10, absl::ZeroDuration());
  ASSERT_TRUE(now.ok());
  EXPECT_TRUE(now->empty());
  clock.Advance(absl::Minutes(5));
  auto later = sub->Fetch(10, absl::ZeroDuration());
  ASSERT_TRUE(later.ok());
  ASSERT_EQ(later->size(), 1u);
  EXPECT_EQ((*later)[0].event.data(), "nack");
  EXPECT_EQ((*later)[0].delivery_count, 2);

  // The dead letter holds the reason.
  Subscription* dlq = *session.Subscribe({.stream = "orders.dlq", .group = "ops", .consumer = "o"});
  auto dead = dlq->Fetch(10, absl::ZeroDuration());
  ASSERT_TRUE(dead.ok());
  ASSERT_EQ(dead->size(), 1u);
  EXPECT_EQ((*dead)[0].event.data(), "dead");
  EXPECT_EQ((*dead)[0].event.headers().at(std::string(kDlqReasonHeader)), "bad order");
}

TEST(ConsumeLoop, StopsWhenToldAndRejectsABadBatchSize) {
  ManualClock clock;
  StreamSession session(memory::NewMemoryEventStream(&clock));
  Subscription* sub = *session.Subscribe(Options("c1"));
  int calls = 0;
  absl::Status stopped = ConsumeLoop(*sub, {.stop = [&] { return ++calls > 2; }},
                                     [](const Delivery&) { return Settle::Ack(); });
  EXPECT_TRUE(stopped.ok()) << stopped;
  EXPECT_EQ(calls, 3);
  absl::Status bad = ConsumeLoop(*sub, {.max_events = 0}, [](const Delivery&) { return Settle::Ack(); });
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("max_events"), absl::string_view::npos) << bad;
}

TEST(BackendDiscovery, RegisterBuiltinBackendsRegistersExactlyTheCompiledOnes) {
  BackendRegistry registry;
  ASSERT_TRUE(RegisterBuiltinBackends(registry).ok());
  ASSERT_TRUE(RegisterBuiltinBackends(registry).ok());  // idempotent
  std::vector<std::string> names;
  for (const BackendRegistry::Type& type : registry.Types()) {
    EXPECT_FALSE(type.description.empty()) << type.name;
    names.push_back(type.name);
  }
  EXPECT_EQ(names, registry.Names());
  std::vector<std::string> compiled = absl::StrSplit(EVENTBUS_BUILTIN_BACKENDS, ',');
  std::sort(compiled.begin(), compiled.end());
  EXPECT_EQ(names, compiled);
#if EVENTBUS_HAS_MEMORY_BACKEND
  EXPECT_NE(std::find(names.begin(), names.end(), "memory"), names.end());
#else
  ADD_FAILURE() << "the memory backend is always built";
#endif
}

TEST(Version, HeaderMatchesTheProjectVersion) {
  EXPECT_EQ(absl::StrCat(EVENTBUS_VERSION_MAJOR, ".", EVENTBUS_VERSION_MINOR, ".",
                         EVENTBUS_VERSION_PATCH),
            EVENTBUS_VERSION_STRING);
  EXPECT_GE(EVENTBUS_VERSION, EVENTBUS_MAKE_VERSION(0, 1, 0));
}

}  // namespace
}  // namespace eventbus
