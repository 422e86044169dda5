// The cases every EventStream backend must pass. Each case uses fresh stream and group names,
// so backends may share one server across cases.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include <mutex>
#include "absl/time/clock.h"
#include "eventbus/conformance/conformance.h"

namespace eventbus::conformance {

// The other files' cases, kept in a static link too.
int LinkEnvelopeCases();  // envelope_cases.cc
int LinkAttemptCases();   // attempt_cases.cc
int LinkConformanceSuite() { return 1 + LinkEnvelopeCases() + LinkAttemptCases(); }

std::string TestNameOf(const testing::TestParamInfo<BackendUnderTest>& info) {
  return info.param.name;
}

namespace {

std::string UniqueName(absl::string_view prefix) {
  static absl::BitGen gen;
  static std::mutex mu;
  std::lock_guard lock(mu);
  return absl::StrFormat("conf.%s.%016x", prefix, absl::Uniform<uint64_t>(gen));
}

class Fixture {
 public:
  explicit Fixture(const BackendUnderTest& backend) : backend_(backend) {}

  EventStream& stream() {
    if (stream_ == nullptr) stream_ = MakeStream();
    return *stream_;
  }

  std::unique_ptr<EventStream> MakeStream() {
    auto made = backend_.make_stream();
    EXPECT_TRUE(made.ok()) << made.status();
    if (!made.ok()) return nullptr;
    return std::move(made).value();
  }

  Capabilities caps() { return stream().capabilities(); }

  void LetTimePass(absl::Duration d) {
    if (backend_.let_time_pass) {
      backend_.let_time_pass(d);
    } else {
      absl::SleepFor(d);
    }
  }

  std::unique_ptr<Subscription> Subscribe(EventStream& on, const std::string& stream_name,
                                          const std::string& group, const std::string& consumer) {
    SubscribeOptions options;
    options.stream = stream_name;
    options.group = group;
    options.consumer = consumer;
    auto sub = on.Subscribe(options);
    EXPECT_TRUE(sub.ok()) << sub.status();
    if (!sub.ok()) return nullptr;
    return std::move(sub).value();
  }
  std::unique_ptr<Subscription> Subscribe(const std::string& stream_name, const std::string& group,
                                          const std::string& consumer) {
    return Subscribe(stream(), stream_name, group, consumer);
  }

  Event NumberedEvent(int n, absl::string_view key = "") {
    Event event = MakeEvent("io.eventbus.conformance", "/conformance", absl::StrCat("payload-", n));
    event.set_subject(absl::StrCat(n));
    event.set_key(std::string(key));
    return event;
  }

  // Publishes and waits until every event is confirmed; returns them as published.
  std::vector<Event> PublishAll(EventStream& on, const std::string& stream_name,
                                std::vector<Event> events) {
    std::atomic<int> confirmed{0};
    std::atomic<int> failed{0};
    for (Event& event : events) {
      if (event.id().empty()) event.set_id(NewEventId());
      absl::Status queued = on.Publish(stream_name, event, [&](absl::StatusOr<PublishReceipt> r) {
        (r.ok() ? confirmed : failed)++;
        EXPECT_TRUE(r.ok()) << r.status();
      });
      EXPECT_TRUE(queued.ok()) << queued;
      if (!queued.ok()) failed++;
    }
    absl::Status flushed = on.Flush(absl::Seconds(30));
    EXPECT_TRUE(flushed.ok()) << flushed;
    EXPECT_EQ(confirmed.load(), static_cast<int>(events.size()));
    EXPECT_EQ(failed.load(), 0);
    return events;
  }
  std::vector<Event> PublishNumbered(const std::string& stream_name, int count,
                                     absl::string_view key = "") {
    std::vector<Event> events;
    for (int i = 0; i < count; ++i) events.push_back(NumberedEvent(i, key));
    return PublishAll(stream(), stream_name, std::move(events));
  }

  // Fetches until `count` deliveries arrived or the patience ran out.
  std::vector<Delivery> Collect(Subscription& sub, int count) {
    std::vector<Delivery> got;
    const absl::Time deadline = absl::Now() + patience();
    while (static_cast<int>(got.size()) < count && absl::Now() < deadline) {
      auto batch = sub.Fetch(count - static_cast<int>(got.size()), backend_.fetch_wait);
      EXPECT_TRUE(batch.ok()) << batch.status();
      if (!batch.ok()) break;
      for (auto& d : *batch) got.push_back(std::move(d));
    }
    return got;
  }

  // Reclaims (after letting the idle time pass) until `count` deliveries came back.
  std::vector<Delivery> CollectReclaimed(Subscription& sub, int count) {
    std::vector<Delivery> got;
    const absl::Time deadline = absl::Now() + patience();
    LetTimePass(backend_.reclaim_idle);
    while (static_cast<int>(got.size()) < count && absl::Now() < deadline) {
      auto reclaimed = sub.Reclaim(backend_.reclaim_idle, count - static_cast<int>(got.size()));
      EXPECT_TRUE(reclaimed.ok()) << reclaimed.status();
      if (!reclaimed.ok()) break;
      for (auto& d : *reclaimed) got.push_back(std::move(d));
      if (static_cast<int>(got.size()) < count) {
        auto fetched = sub.Fetch(count - static_cast<int>(got.size()), backend_.fetch_wait);
        EXPECT_TRUE(fetched.ok()) << fetched.status();
        if (fetched.ok()) for (auto& d : *fetched) got.push_back(std::move(d));
      }
    }
    return got;
  }

  void ExpectNothing(Subscription& sub, absl::string_view why) {
    ExpectNothing(sub, why, backend_.quiet_wait);
  }
  void ExpectNothing(Subscription& sub, absl::string_view why, absl::Duration listen) {
    auto batch = sub.Fetch(10, listen);
    ASSERT_TRUE(batch.ok()) << batch.status();
    EXPECT_TRUE(batch->empty()) << why << ": got " << batch->size() << " deliveries, first id "
                                << (*batch)[0].id << " count " << (*batch)[0].delivery_count;
  }

  void AckAll(Subscription& sub, const std::vector<Delivery>& deliveries) {
    for (const auto& d : deliveries) {
      absl::Status acked = sub.Ack(d);
      EXPECT_TRUE(acked.ok()) << acked;
    }
  }

  absl::Duration patience() const {
    return std::max(backend_.fetch_wait * 10, absl::Seconds(5));
  }
  const BackendUnderTest& backend() const { return backend_; }

 private:
  const BackendUnderTest& backend_;
  std::unique_ptr<EventStream> stream_;
};

std::set<std::string> IdsOf(const std::vector<Delivery>& deliveries) {
  std::set<std::string> ids;
  for (const auto& d : deliveries) ids.insert(d.event.id());
  return ids;
}
std::set<std::string> IdsOf(const std::vector<Event>& events) {
  std::set<std::string> ids;
  for (const auto& e : events) ids.insert(e.id());
  return ids;
}

#define REQUIRE_CAPABILITY(fixture, capability)                                         \
  if (!(fixture).caps().capability) {                                                   \
    GTEST_SKIP() << "backend does not declare Capabilities::" #capability;              \
  }

// Field by field rather than with MessageDifferencer: reflection over the map field crashes
// in TSan builds against Debian's (uninstrumented) libprotobuf.
void ExpectSameEvent(const Event& got, const Event& want) {
  EXPECT_EQ(got.id(), want.id());
  EXPECT_EQ(got.source(), want.source());
  EXPECT_EQ(got.spec_version(), want.spec_version());
  EXPECT_EQ(got.type(), want.type());
  EXPECT_EQ(got.subject(), want.subject());
  EXPECT_EQ(got.has_time(), want.has_time());
  EXPECT_EQ(EventTime(got), EventTime(want));
  EXPECT_EQ(got.data_content_type(), want.data_content_type());
  EXPECT_EQ(got.data_schema(), want.data_schema());
  EXPECT_EQ(got.key(), want.key());
  EXPECT_EQ(got.data().size(), want.data().size());
  EXPECT_TRUE(got.data() == want.data()) << "data differs";
  std::map<std::string, std::string> got_headers(got.headers().begin(), got.headers().end());
  std::map<std::string, std::string> want_headers(want.headers().begin(), want.headers().end());
  EXPECT_EQ(got_headers, want_headers);
}

Event FullEvent(std::string data) {
  Event event = MakeEvent("io.eventbus.conformance.full", "//conformance/source?x=1", data);
  event.set_subject("subject/with spaces/and-ünïcödé");
  event.set_data_content_type("application/octet-stream");
  event.set_data_schema("https://example.com/schema/v1");
  event.set_key("key-ключ-🔑");
  SetEventTime(event, absl::FromUnixMicros(1'700'000'123'456'789));
  (*event.mutable_headers())["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  (*event.mutable_headers())["greeting"] = "héllo wörld ✓ 日本語";
  (*event.mutable_headers())["empty"] = "";
  return event;
}

TEST_P(EventStreamConformance, RoundTripPreservesEveryField) {
  Fixture f(GetParam());
  const std::string stream = UniqueName("roundtrip");
  std::string binary("\0a\0b\xff\xfe\x00\x01 end", 13);
  auto sent = f.PublishAll(f.stream(), stream, {FullEvent(binary)});
  auto sub = f.Subscribe(stream, "g", "c1");
  ASSERT_NE(sub, nullptr);
  auto got = f.Collect(*sub, 1);
  ASSERT_EQ(got.size(), 1u);
  ExpectSameEvent(got[0].event, sent[0]);
  EXPECT_EQ(got[0].stream, stream);
  EXPECT_FALSE(got[0].id.empty());
  EXPECT_EQ(got[0].delivery_count, 1);
  f.AckAll(*sub, got);
}

TEST_P(EventStreamConformance, RoundTripEmptyData) {
  Fixture f(GetParam());
  const std::string stream = UniqueName("empty");
  auto sent = f.PublishAll(f.stream(), stream, {FullEvent("")});
  auto sub = f.Subscribe(stream, "g", "c1");
  ASSERT_NE(sub, nullptr);
  auto got = f.Collect(*sub, 1);
  ASSERT_EQ(got.size(), 1u);
  ExpectSameEvent(got[0].event, sent[0]);
}

TEST_P(EventStreamConformance, RoundTripOneMebibyteOfData) {
  Fixture f(GetParam());
  const std::string stream = UniqueName("large");
  std::string data(1 << 20, '\0');
  absl::BitGen gen;
  for (char& c : data) c = static_cast<char>(absl::Uniform<uint8_t>(gen));
  Event event = FullEvent(data);
  if (EventSizeBytes(event) > f.caps().max_event_bytes) {
    GTEST_SKIP() << "backend declares max_event_bytes=" << f.caps().max_event_bytes;
  }
  auto sent = f.PublishAll(f.stream(), stream, {event});
  auto sub = f.Subscribe(stream, "g", "c1");
  ASSERT_NE(sub, nullptr);
  auto got = f.Collect(*sub, 1);
  ASSERT_EQ(got.size(), 1u);
  ExpectSameEvent(got[0].event, sent[0]);
}

TEST_P(EventStreamConformance, PublishFillsIdTimeAndSpecVersion) {
  Fixture f(GetParam());
  const std::string stream = UniqueName("normalize");
  Event bare;
  bare.set_type("io.eventbus.conformance");
  bare.set_source("/conformance");
  auto receipt = f.stream().PublishAndWait(stream, bare);
  ASSERT_TRUE(receipt.ok()) << receipt.status();
  EXPECT_EQ(receipt->stream, stream);
  EXPECT_FALSE(receipt->id.empty());
  auto sub = f.Subscribe(stream, "g", "c1");
  ASSERT_NE(sub, nullptr);
  auto got = f.Collect(*sub, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_FALSE(got[0].event.id().empty());
  EXPECT_EQ(got[0].event.spec_version(), "1.0");
  EXPECT_TRUE(got[0].event.has_time());
}

TEST_P(EventStreamConformance, PublishRejectsAnInvalidEnvelopeAndLosesNothing) {
  Fixture f(GetParam());
  const std::string stream = UniqueName("invalid");
  Event no_type = MakeEvent("", "/conformance");
  absl::Status status = f.stream().Publish(stream, no_type);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find("type"), absl::string_view::npos) << status;
  Event bad_version = MakeEvent("t", "/s");
  bad_version.set_spec_version("0.3");
  EXPECT_EQ(f.stream().Publish(stream, bad_version).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.stream().Publish("", MakeEvent("t", "/s")).code(),
            absl::StatusCode::kInvalidArgument);
  // The stream still works and holds only the valid event.
  auto sent = f.PublishNumbered(stream, 1);
  auto sub = f.Subscribe(stream, "g", "c1");
  ASSERT_NE(sub, nullptr);
  auto got = f.Collect(*sub, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].event.id(), sent[0].id());
  f.ExpectNothing(*sub, "only the valid event was published");
}

TEST_P(EventStreamConformance, SubscribeRejectsEmptyNames) {
  Fixture f(GetParam());
  SubscribeOptions options;
  options.stream = UniqueName("names");
  options.group = "";
  options.consumer = "c1";
  EXPECT_EQ(f.stream().Subscribe(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.group = "g";
  options.consumer = "";
  EXPECT_EQ(f.stream().Subscribe(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(EventStreamConformance, FetchReturnsAtMostTheRequestedNumber) {
  Fixture f(GetParam());
  const std::string stream = UniqueName("max");
  f.PublishNumbered(stream, 10);
  auto sub = f.Subscribe(stream, "g", "c1");
  ASSERT_NE(sub, nullptr);
  auto batch = sub->Fetch(3, f.backend().fetch_wait);
  ASSERT_TRUE(batch.ok()) << batch.status();
  EXPECT_LE(batch->size(), 3u);
  EXPECT_GE(batch->size(), 1u);
  auto rest = f.Collect(*sub, 10 - static_cast<int>(batch->size()));
  EXPECT_EQ(batch->size() + rest.size(), 10u);
}

TEST_P(EventStreamConformance, OneGroupSharesTheWork) {
  Fixture f(GetParam());
  const std::string stream = UniqueName("share");
  auto a = f.Subscribe(stream, "g", "a");
  auto b = f.Subscribe(stream, "g", "b");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  auto sent = f.PublishNumbered(stream, 40);
  std::map<std::string, int> seen;
  const absl::Time deadline = absl::Now() + f.patience();
  while (seen.size() < sent.size() && absl::Now() < deadline) {
    for (Subscription* sub : {a.get(), b.get()}) {
      auto batch = sub->Fetch(5, f.backend().fetch_wait / 4);
      ASSERT_TRUE(batch.ok()) << batch.status();
      for (const auto& d : *batch) {
        seen[d.event.id()]++;
        ASSERT_TRUE(sub->Ack(d).ok());
      }
    }
  }
  EXPECT_EQ(seen.size(), sent.size());
  for (const auto& e : sent) EXPECT_TRUE(seen.contains(e.id())) << "lost " << e.id();
  if (!f.caps().duplicates_possible) {
    for (const auto& [id, n] : seen) EXPECT_EQ(n, 1) << id << " delivered " << n << " times";
  }
}

TEST_P(EventStreamConformance, TwoGroupsEachGetEverything) {
  Fixture f(GetParam());
  const std::string stream = UniqueName("fanout");
  auto g1 = f.Subscribe(stream, "g1", "c");
  auto g2 = f.Subscribe(stream, "g2", "c");
  ASSERT_NE(g1, nullptr);
  ASSERT_NE(g2, nullptr);
  auto sent = f.PublishNumbered(stream, 20);
  auto got1 = f.Collect(*g1, 20);
  auto got2 = f.Collect(*g2, 20);
  EXPECT_EQ(IdsOf(got1), IdsOf(sent));
  EXPECT_EQ(IdsOf(got2), IdsOf(sent));
  f.AckAll(*g1, got1);
  f.AckAll(*g2, got2);
}

TEST_P(EventStreamConformance, AckedEventsNeverComeBack) {
  Fixture f(GetParam());
  const std::string stream = UniqueName("acked");
  f.PublishNumbered(stream, 5);
  auto sub = f.Subscribe(stream, "g", "c1");
  ASSERT_NE(sub, nullptr);
  auto got = f.Collect(*sub, 5);
  ASSERT_EQ(got.size(), 5u);
  f.AckAll(*sub, got);
  ASSERT_TRUE(sub->Close().ok());
  auto again = f.Subscribe(stream, "g", "c2");
  ASSERT_NE(again, nullptr);
  f.LetTimePass(f.backend().reclaim_idle);
  auto reclaimed = again->Reclaim(absl::ZeroDuration(), 10);
  ASSERT_TRUE(reclaimed.ok()) << reclaimed.status();
  EXPECT_TRUE(reclaimed->empty()) << "an acked event was reclaimable";
  f.ExpectNothing(*again, "acked events were delivered again");
}

TEST_P(EventStreamConformance, ClosedSubscriptionRefusesEverything) {
  Fixture f(GetParam());
  const std::string stream = UniqueName("closed");
  auto sub = f.Subscribe(stream, "g", "c1");
  ASSERT_NE(sub, nullptr);
  ASSERT_TRUE(sub->Close().ok());
  EXPECT_TRUE(sub->Close().ok()) << "Close must be idempotent";
  EXPECT_EQ(sub->Fetch(1, absl::ZeroDuration()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(sub->Reclaim(absl::ZeroDuration(), 1).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_P(EventStreamConformance, UnackedEventIsReclaimedByAnotherConsumerWithCountIncreased) {
  Fixture f(GetParam());
  REQUIRE_CAPABILITY(f, reclaim_from_other_consumers);
  const std::string stream = UniqueName("reclaim");
  auto sent = f.PublishNumbered(stream, 1);
  auto dead = f.Subscribe(stream, "g", "dead");
  auto alive = f.Subscribe(stream, "g", "alive");
  ASSERT_NE(dead, nullptr);
  ASSERT_NE(alive, nullptr);
  auto held = f.Collect(*dead, 1);
  ASSERT_EQ(held.size(), 1u);
  // Not idle long enough yet: nothing to take over.
  auto early = alive->Reclaim(f.backend().reclaim_idle * 100, 10);
  ASSERT_TRUE(early.ok()) << early.status();
  EXPECT_TRUE(early->empty());
  auto reclaimed = f.CollectReclaimed(*alive, 1);
  ASSERT_EQ(reclaimed.size(), 1u);
  EXPECT_EQ(reclaimed[0].event.id(), sent[0].id());
  EXPECT_EQ(reclaimed[0].id, held[0].id);
  EXPECT_EQ(reclaimed[0].delivery_count, 2);
  EXPECT_TRUE(alive->Ack(reclaimed[0]).ok());
  f.ExpectNothing(*alive, "the reclaimed event was acked");
}

TEST_P(EventStreamConformance, NackZeroRedeliversWithCountIncreased) {
  Fixture f(GetParam());
  const std::string stream = UniqueName("nack0");
  auto sent = f.PublishNumbered(stream, 1);
  auto sub = f.Subscribe(stream, "g", "c1");
  ASSERT_NE(sub, nullptr);
  auto first = f.Collect(*sub, 1);
  ASSERT_EQ(first.size(), 1u);
  ASSERT_TRUE(sub->Nack(first[0], absl::ZeroDuration()).ok());
  auto second = f.Collect(*sub, 1);
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(second[0].event.id(), sent[0].id());
  EXPECT_EQ(second[0].delivery_count, 2);
  ExpectSameEvent(second[0].event, first[0].event);
  EXPECT_TRUE(sub->Ack(second[0]).ok());
  f.ExpectNothing(*sub, "acked after the redelivery");
}

TEST_P(EventStreamConformance, NackWithDelayIsNotRedeliveredEarly) {
  Fixture f(GetParam());
  const std::string stream = UniqueName("nackdelay");
  const absl::Duration delay = f.backend().nack_delay;
  auto sent = f.PublishNumbered(stream, 1);
  auto sub = f.Subscribe(stream, "g", "c1");
  ASSERT_NE(sub, nullptr);
  auto first = f.Collect(*sub, 1);
  ASSERT_EQ(first.size(), 1u);
  const absl::Time nacked_at = absl::Now();
  ASSERT_TRUE(sub->Nack(first[0], delay).ok());
  // On a real clock the listening itself takes time: keep it well inside the delay.
  f.ExpectNothing(*sub, "redelivered at once despite the delay",
                  std::min(f.backend().quiet_wait, delay / 4));
  f.LetTimePass(delay / 2);
  f.ExpectNothing(*sub, "redelivered after half the delay",
                  std::min(f.backend().quiet_wait, delay / 10));
  f.LetTimePass(delay / 2);
  auto second = f.Collect(*sub, 1);
  ASSERT_EQ(second.size(), 1u) << "not redelivered after the delay";
  EXPECT_EQ(second[0].event.id(), sent[0].id());
  EXPECT_EQ(second[0].delivery_count, 2);
  if (!f.backend().let_time_pass) EXPECT_GE(absl::Now() - nacked_at, delay);
}

TEST_P(EventStreamConformance, DeadLetterHoldsTheOriginalReasonOriginAndCount) {
  Fixture f(GetParam());
  const std::string stream = UniqueName("dlq");
  auto sent = f.PublishAll(f.stream(), stream, {FullEvent("poison")});
  auto sub = f.Subscribe(stream, "workers", "c1");
  ASSERT_NE(sub, nullptr);
  auto first = f.Collect(*sub, 1);
  ASSERT_EQ(first.size(), 1u);
  ASSERT_TRUE(sub->Nack(first[0], absl::ZeroDuration()).ok());
  auto second = f.Collect(*sub, 1);
  ASSERT_EQ(second.size(), 1u);
  ASSERT_EQ(second[0].delivery_count, 2);
  const std::string reason = "handler failed: bad input ✗";
  ASSERT_TRUE(sub->DeadLetter(second[0], reason).ok());

  SubscribeOptions options;
  options.stream = stream;
  auto dlq = f.Subscribe(DeadLetterStreamName(options), "dlq-readers", "r1");
  ASSERT_NE(dlq, nullptr);
  auto dead = f.Collect(*dlq, 1);
  ASSERT_EQ(dead.size(), 1u);
  const auto& headers = dead[0].event.headers();
  EXPECT_EQ(headers.at(std::string(kDlqReasonHeader)), reason);
  EXPECT_EQ(headers.at(std::string(kDlqOriginStreamHeader)), stream);
  EXPECT_EQ(headers.at(std::string(kDlqOriginIdHeader)), second[0].id);
  EXPECT_EQ(headers.at(std::string(kDlqOriginGroupHeader)), "workers");
  EXPECT_EQ(headers.at(std::string(kDlqDeliveryCountHeader)), "2");
  Event original = dead[0].event;
  for (auto name : {kDlqReasonHeader, kDlqOriginStreamHeader, kDlqOriginIdHeader,
                    kDlqOriginGroupHeader, kDlqDeliveryCountHeader}) {
    original.mutable_headers()->erase(std::string(name));
  }
  ExpectSameEvent(original, sent[0]);

  // The original is gone from its group.
  f.ExpectNothing(*sub, "dead-lettered event was redelivered");
  f.LetTimePass(f.backend().reclaim_idle);
  auto reclaimed = sub->Reclaim(absl::ZeroDuration(), 10);
  ASSERT_TRUE(reclaimed.ok()) << reclaimed.status();
  EXPECT_TRUE(reclaimed->empty()) << "dead-lettered event is still pending";
}

// Collects the outcomes of asynchronous settles and waits until all of them arrived.
class SettleOutcomes {
 public:
  SettleCallback Callback() {
    {
      std::lock_guard lock(mu_);
      ++expected_;
    }
    auto called = std::make_shared<std::atomic<int>>(0);
    return [this, called](absl::Status status) {
      std::lock_guard lock(mu_);
      if (called->fetch_add(1) > 0) ++called_twice_;
      statuses_.push_back(std::move(status));
      done_.notify_all();
    };
  }
  // True when every callback handed out was called within `timeout`.
  bool WaitAll(absl::Duration timeout) {
    std::unique_lock lock(mu_);
    return done_.wait_for(lock, absl::ToChronoNanoseconds(timeout),
                          [this] { return statuses_.size() >= expected_; });
  }
  std::vector<absl::Status> statuses() {
    std::lock_guard lock(mu_);
    return statuses_;
  }
  int called_twice() {
    std::lock_guard lock(mu_);
    return called_twice_;
  }

 private:
  std::mutex mu_;
  std::condition_variable done_;
  size_t expected_ = 0;
  int called_twice_ = 0;
  std::vector<absl::Status> statuses_;
};

TEST_P(EventStreamConformance, AckAsyncAcknowledgesEveryDeliveryAndCallsBackOnce) {
  Fixture f(GetParam());
  const std::string stream = UniqueName("ackasync");
  constexpr int kEvents = 300;
  f.PublishNumbered(stream, kEvents);
  auto sub = f.Subscribe(stream, "g", "c1");
  ASSERT_NE(sub, nullptr);
  auto got = f.Collect(*sub, kEvents);
  ASSERT_EQ(got.size(), static_cast<size_t>(kEvents));
  SettleOutcomes outcomes;
  for (const Delivery& d : got) sub->AckAsync(d, outcomes.Callback());
  ASSERT_TRUE(outcomes.WaitAll(f.patience())) << "not every AckAsync called back";
  for (const absl::Status& s : outcomes.statuses()) EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(outcomes.statuses().size(), static_cast<size_t>(kEvents));
  EXPECT_EQ(outcomes.called_twice(), 0);
  ASSERT_TRUE(sub->Close().ok());
  auto again = f.Subscribe(stream, "g", "c2");
  ASSERT_NE(again, nullptr);
  f.LetTimePass(f.backend().reclaim_idle);
  auto reclaimed = again->Reclaim(absl::ZeroDuration(), kEvents);
  ASSERT_TRUE(reclaimed.ok()) << reclaimed.status();
  EXPECT_TRUE(reclaimed->empty()) << reclaimed->size() << " async-acked events are reclaimable";
  f.ExpectNothing(*again, "async-acked events were delivered again");
}

TEST_P(EventStreamConformance, AsyncSettlesQueuedBeforeCloseStillApply) {
  Fixture f(GetParam());
  const std::string stream = UniqueName("asyncclose");
  f.PublishNumbered(stream, 20);
  auto sub = f.Subscribe(stream, "g", "c1");
  ASSERT_NE(sub, nullptr);
  auto got = f.Collect(*sub, 20);
  ASSERT_EQ(got.size(), 20u);
  SettleOutcomes outcomes;
  for (const Delivery& d : got) sub->AckAsync(d, outcomes.Callback());
  ASSERT_TRUE(sub->Close().ok());
  ASSERT_TRUE(outcomes.WaitAll(f.patience()));
  for (const absl::Status& s : outcomes.statuses()) EXPECT_TRUE(s.ok()) << s;
  // After Close: refused, and still called back exactly once.
  SettleOutcomes late;
  sub->AckAsync(got[0], late.Callback());
  sub->NackAsync(got[0], absl::ZeroDuration(), late.Callback());
  sub->DeadLetterAsync(got[0], "late", late.Callback());
  ASSERT_TRUE(late.WaitAll(f.patience()));
  for (const absl::Status& s : late.statuses()) {
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  }
  auto again = f.Subscribe(stream, "g", "c2");
  ASSERT_NE(again, nullptr);
  f.ExpectNothing(*again, "events acked before Close were delivered again");
}

TEST_P(EventStreamConformance, NackAsyncRedeliversAfterTheDelayWithCountIncreased) {
  Fixture f(GetParam());
  const std::string stream = UniqueName("nackasync");
  const absl::Duration delay = f.backend().nack_delay;
  auto sent = f.PublishNumbered(stream, 2);
  auto sub = f.Subscribe(stream, "g", "c1");
  ASSERT_NE(sub, nullptr);
  auto first = f.Collect(*sub, 2);
  ASSERT_EQ(first.size(), 2u);
  SettleOutcomes outcomes;
  sub->NackAsync(first[0], absl::ZeroDuration(), outcomes.Callback());
  sub->NackAsync(first[1], delay, outcomes.Callback());
  ASSERT_TRUE(outcomes.WaitAll(f.patience()));
  for (const absl::Status& s : outcomes.statuses()) EXPECT_TRUE(s.ok()) << s;
  auto at_once = f.Collect(*sub, 1);
  ASSERT_EQ(at_once.size(), 1u);
  EXPECT_EQ(at_once[0].id, first[0].id);
  EXPECT_EQ(at_once[0].delivery_count, 2);
  f.ExpectNothing(*sub, "redelivered before the delay",
                  std::min(f.backend().quiet_wait, delay / 4));
  f.LetTimePass(delay);
  auto later = f.Collect(*sub, 1);
  ASSERT_EQ(later.size(), 1u) << "not redelivered after the delay";
  EXPECT_EQ(later[0].id, first[1].id);
  EXPECT_EQ(later[0].delivery_count, 2);
  f.AckAll(*sub, at_once);
  f.AckAll(*sub, later);
}

TEST_P(EventStreamConformance, DeadLetterAsyncMovesTheEventWithItsReason) {
  Fixture f(GetParam());
  const std::string stream = UniqueName("dlqasync");
  auto sent = f.PublishNumbered(stream, 1);
  auto sub = f.Subscribe(stream, "workers", "c1");
  ASSERT_NE(sub, nullptr);
  auto got = f.Collect(*sub, 1);
  ASSERT_EQ(got.size(), 1u);
  SettleOutcomes outcomes;
  sub->DeadLetterAsync(got[0], "async reason", outcomes.Callback());
  ASSERT_TRUE(outcomes.WaitAll(f.patience()));
  ASSERT_TRUE(outcomes.statuses()[0].ok()) << outcomes.statuses()[0];
  SubscribeOptions options;
  options.stream = stream;
  auto dlq = f.Subscribe(DeadLetterStreamName(options), "dlq-readers", "r1");
  ASSERT_NE(dlq, nullptr);
  auto dead = f.Collect(*dlq, 1);
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0].event.id(), sent[0].id());
  EXPECT_EQ(dead[0].event.headers().at(std::string(kDlqReasonHeader)), "async reason");
  EXPECT_EQ(dead[0].event.headers().at(std::string(kDlqOriginIdHeader)), got[0].id);
  f.ExpectNothing(*sub, "dead-lettered event was redelivered");
}

TEST_P(EventStreamConformance, ManyConcurrentPublishersAndConsumersLoseNothing) {
  Fixture f(GetParam());
  const std::string stream = UniqueName("concurrent");
  constexpr int kPublishers = 4;
  constexpr int kConsumers = 4;
  const int per_publisher = f.backend().events_per_publisher;
  const int total = kPublishers * per_publisher;
  std::vector<std::unique_ptr<Subscription>> subs;
  for (int c = 0; c < kConsumers; ++c) {
    subs.push_back(f.Subscribe(stream, "g", absl::StrCat("c", c)));
    ASSERT_NE(subs.back(), nullptr);
  }
  std::mutex mu;
  std::map<std::string, int> seen;
  std::atomic<int> publish_failures{0};
  std::atomic<bool> done{false};
  std::vector<std::thread> threads;
  std::set<std::string> published;
  std::mutex published_mu;
  for (int p = 0; p < kPublishers; ++p) {
    threads.emplace_back([&, p] {
      for (int i = 0; i < per_publisher; ++i) {
        Event event = f.NumberedEvent(p * per_publisher + i, absl::StrCat("k", i % 7));
        {
          std::lock_guard lock(published_mu);
          published.insert(event.id());
        }
        absl::Status s = f.stream().Publish(stream, event, [&](absl::StatusOr<PublishReceipt> r) {
          if (!r.ok()) publish_failures++;
        });
        if (!s.ok()) publish_failures++;
      }
      if (!f.stream().Flush(absl::Seconds(60)).ok()) publish_failures++;
    });
  }
  for (int c = 0; c < kConsumers; ++c) {
    threads.emplace_back([&, c] {
      const absl::Time deadline = absl::Now() + f.patience() * 3;
      while (!done && absl::Now() < deadline) {
        auto batch = subs[c]->Fetch(50, f.backend().fetch_wait / 4);
        if (!batch.ok()) continue;
        for (const auto& d : *batch) {
          if (!subs[c]->Ack(d).ok()) continue;
          std::lock_guard lock(mu);
          if (++seen[d.event.id()] == 1 && static_cast<int>(seen.size()) == total) done = true;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(publish_failures.load(), 0);
  int duplicates = 0;
  for (const auto& [id, n] : seen) duplicates += n - 1;
  EXPECT_EQ(static_cast<int>(seen.size()), total) << "events lost";
  for (const auto& id : published) EXPECT_TRUE(seen.contains(id)) << "lost " << id;
  if (!f.caps().duplicates_possible) EXPECT_EQ(duplicates, 0);
  RecordProperty("duplicates", duplicates);
}

TEST_P(EventStreamConformance, OrderIsKeptPerKey) {
  Fixture f(GetParam());
  REQUIRE_CAPABILITY(f, ordered_per_key);
  const std::string stream = UniqueName("order");
  std::vector<Event> events;
  for (int i = 0; i < 60; ++i) events.push_back(f.NumberedEvent(i, absl::StrCat("key", i % 3)));
  f.PublishAll(f.stream(), stream, events);
  auto sub = f.Subscribe(stream, "g", "c1");
  ASSERT_NE(sub, nullptr);
  // Acks as it goes: the backend holds back a key's next event until the previous is settled.
  std::vector<Delivery> got;
  const absl::Time deadline = absl::Now() + f.patience();
  while (got.size() < 60 && absl::Now() < deadline) {
    auto batch = sub->Fetch(60 - static_cast<int>(got.size()), f.backend().fetch_wait);
    ASSERT_TRUE(batch.ok()) << batch.status();
    // Everything fetched before is settled, so a batch is what is in flight: one per key.
    std::set<std::string> keys_in_flight;
    for (const auto& d : *batch) {
      EXPECT_TRUE(keys_in_flight.insert(d.event.key()).second)
          << "two events of key " << d.event.key() << " in flight at once";
    }
    f.AckAll(*sub, *batch);
    got.insert(got.end(), batch->begin(), batch->end());
  }
  ASSERT_EQ(got.size(), 60u);
  std::map<std::string, int> last;
  for (const auto& d : got) {
    const int n = std::stoi(d.event.subject());
    auto [it, first] = last.try_emplace(d.event.key(), n);
    if (!first) EXPECT_GT(n, it->second) << "key " << d.event.key() << " out of order";
    it->second = n;
  }
}

TEST_P(EventStreamConformance, StreamsAreIsolated) {
  Fixture f(GetParam());
  const std::string left = UniqueName("left");
  const std::string right = UniqueName("right");
  auto sent_left = f.PublishNumbered(left, 3);
  auto sent_right = f.PublishNumbered(right, 4);
  auto sub = f.Subscribe(left, "g", "c1");
  ASSERT_NE(sub, nullptr);
  auto got = f.Collect(*sub, 3);
  EXPECT_EQ(IdsOf(got), IdsOf(sent_left));
  for (const auto& d : got) EXPECT_EQ(d.stream, left);
  f.AckAll(*sub, got);
  f.ExpectNothing(*sub, "events of another stream leaked in");
}

TEST_P(EventStreamConformance, ClosingAConsumerWithEventsInFlightLosesNone) {
  Fixture f(GetParam());
  const std::string stream = UniqueName("closeinflight");
  auto sent = f.PublishNumbered(stream, 5);
  auto leaving = f.Subscribe(stream, "g", "leaving");
  ASSERT_NE(leaving, nullptr);
  auto held = f.Collect(*leaving, 5);
  ASSERT_EQ(held.size(), 5u);
  ASSERT_TRUE(leaving->Close().ok());
  auto staying = f.Subscribe(stream, "g", "staying");
  ASSERT_NE(staying, nullptr);
  auto recovered = f.CollectReclaimed(*staying, 5);
  EXPECT_EQ(IdsOf(recovered), IdsOf(sent));
  f.AckAll(*staying, recovered);
}

TEST_P(EventStreamConformance, NewConsumerContinuesWhereTheGroupLeftOff) {
  Fixture f(GetParam());
  const std::string stream = UniqueName("continue");
  auto sent = f.PublishNumbered(stream, 10);
  auto first = f.Subscribe(stream, "g", "first");
  ASSERT_NE(first, nullptr);
  auto got = f.Collect(*first, 10);
  ASSERT_EQ(got.size(), 10u);
  std::vector<Delivery> acked(got.begin(), got.begin() + 5);
  f.AckAll(*first, acked);
  for (size_t i = 5; i < got.size(); ++i) ASSERT_TRUE(first->Nack(got[i], absl::ZeroDuration()).ok());
  ASSERT_TRUE(first->Close().ok());
  auto second = f.Subscribe(stream, "g", "second");
  ASSERT_NE(second, nullptr);
  auto rest = f.CollectReclaimed(*second, 5);
  std::set<std::string> want;
  for (size_t i = 5; i < got.size(); ++i) want.insert(got[i].event.id());
  EXPECT_EQ(IdsOf(rest), want);
  f.AckAll(*second, rest);
  f.ExpectNothing(*second, "acked events came back to the group");
}

TEST_P(EventStreamConformance, GroupProgressSurvivesANewStreamInstance) {
  Fixture f(GetParam());
  REQUIRE_CAPABILITY(f, persistent);
  const std::string stream = UniqueName("persist");
  auto sent = f.PublishNumbered(stream, 6);
  {
    auto first = f.Subscribe(stream, "g", "first");
    ASSERT_NE(first, nullptr);
    auto got = f.Collect(*first, 3);
    ASSERT_EQ(got.size(), 3u);
    f.AckAll(*first, got);
    ASSERT_TRUE(first->Close().ok());
  }
  auto other = f.MakeStream();
  ASSERT_NE(other, nullptr);
  auto second = f.Subscribe(*other, stream, "g", "second");
  ASSERT_NE(second, nullptr);
  auto rest = f.CollectReclaimed(*second, 3);
  EXPECT_EQ(rest.size(), 3u);
  for (const auto& d : rest) {
    EXPECT_TRUE(IdsOf(sent).contains(d.event.id()));
  }
  std::set<std::string> all = IdsOf(rest);
  EXPECT_EQ(all.size(), 3u) << "a delivery came twice";
  f.AckAll(*second, rest);
  f.ExpectNothing(*second, "acked events came back after reconnecting");
}

TEST_P(EventStreamConformance, FlushWaitsForEveryQueuedPublish) {
  Fixture f(GetParam());
  const std::string stream = UniqueName("flush");
  std::atomic<int> confirmed{0};
  for (int i = 0; i < 200; ++i) {
    ASSERT_TRUE(f.stream()
                    .Publish(stream, f.NumberedEvent(i),
                             [&](absl::StatusOr<PublishReceipt> r) {
                               if (r.ok()) confirmed++;
                             })
                    .ok());
  }
  ASSERT_TRUE(f.stream().Flush(absl::Seconds(30)).ok());
  EXPECT_EQ(confirmed.load(), 200);
}

TEST_P(EventStreamConformance, PingAnswers) {
  Fixture f(GetParam());
  EXPECT_TRUE(f.stream().Ping(absl::Seconds(5)).ok());
}

}  // namespace
}  // namespace eventbus::conformance
