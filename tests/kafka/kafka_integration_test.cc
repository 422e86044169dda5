// The Kafka backend against a real broker, beyond the conformance suite: group membership
// changes during a stream, a consumer that dies with events in flight, a broker restart, the
// documented wire format produced by kcat, retry-topic delays, leases, per-key ordering.

#include <cstdio>
#include <algorithm>
#include <iterator>
#include <functional>
#include <map>
#include <set>
#include <thread>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "kafka_test_env.h"

namespace eventbus::kafka::testing {
namespace {

[[maybe_unused]] ::testing::Environment* const kEnvironment =
    ::testing::AddGlobalTestEnvironment(new KafkaBrokerEnvironment);

std::string UniqueTopic(absl::string_view prefix) {
  static absl::BitGen gen;
  return absl::StrFormat("it.%s.%016x", prefix, absl::Uniform<uint64_t>(gen));
}

std::unique_ptr<EventStream> MustStream(KafkaOptions options = TestOptions()) {
  auto stream = NewTestStream(std::move(options));
  EXPECT_TRUE(stream.ok()) << stream.status();
  return stream.ok() ? std::move(stream).value() : nullptr;
}

std::unique_ptr<Subscription> MustSubscribe(EventStream& stream, const std::string& topic,
                                            const std::string& group, const std::string& consumer,
                                            absl::Duration ack_wait = absl::ZeroDuration()) {
  SubscribeOptions options;
  options.stream = topic;
  options.group = group;
  options.consumer = consumer;
  options.ack_wait = ack_wait;
  auto sub = stream.Subscribe(options);
  EXPECT_TRUE(sub.ok()) << sub.status();
  return sub.ok() ? std::move(sub).value() : nullptr;
}

Event Numbered(int n, std::string key = "") {
  Event event = MakeEvent("io.eventbus.it", "/it", absl::StrCat("n-", n));
  event.set_id(NewEventId());
  event.set_subject(absl::StrCat(n));
  event.set_key(std::move(key));
  return event;
}

// `keyed`: each event gets a key of its own, so they spread over the partitions (keyless
// records go to one partition at a time: librdkafka's sticky partitioner).
std::set<std::string> PublishNumbered(EventStream& stream, const std::string& topic, int from,
                                      int count, bool keyed = false) {
  std::set<std::string> ids;
  for (int i = from; i < from + count; ++i) {
    Event event = Numbered(i, keyed ? absl::StrCat("key-", i) : "");
    ids.insert(event.id());
    EXPECT_TRUE(stream.Publish(topic, event).ok());
  }
  EXPECT_TRUE(stream.Flush(absl::Seconds(60)).ok());
  return ids;
}

// Fetches and acks until every id in `want` was acked (duplicates of others are acked too)
// or `patience` ran out; returns every id acked.
std::set<std::string> DrainAndAck(Subscription& sub, const std::set<std::string>& want,
                                  absl::Duration patience) {
  std::set<std::string> acked;
  const absl::Time deadline = absl::Now() + patience;
  auto missing = [&] {
    for (const auto& id : want) {
      if (!acked.contains(id)) return true;
    }
    return false;
  };
  while (missing() && absl::Now() < deadline) {
    auto batch = sub.Fetch(100, absl::Milliseconds(500));
    if (!batch.ok()) {
      ADD_FAILURE() << batch.status();
      break;
    }
    for (const Delivery& d : *batch) {
      if (sub.Ack(d).ok()) acked.insert(d.event.id());
    }
  }
  return acked;
}

TEST(KafkaIntegrationTest, ConsumersJoiningAndLeavingDuringAStreamLoseNothing) {
  KafkaOptions options = TestOptions();
  options.partitions = 4;
  auto stream = MustStream(options);
  ASSERT_NE(stream, nullptr);
  const std::string topic = UniqueTopic("membership");

  absl::Mutex mu;
  std::set<std::string> processed;
  std::map<std::string, int> acks_by_consumer;
  auto acks_of = [&](const std::string& name) {
    absl::MutexLock lock(&mu);
    return acks_by_consumer[name];
  };
  // Phases are driven by progress, not by sleeps, so a slow machine changes nothing.
  auto wait_for = [&](const std::function<bool()>& condition, absl::string_view what) {
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (!condition()) {
      if (absl::Now() > deadline) {
        ADD_FAILURE() << "timed out waiting until " << what;
        return;
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
  };
  auto consume = [&](Subscription* sub, std::string name, std::atomic<bool>* stop) {
    while (!stop->load()) {
      auto batch = sub->Fetch(20, absl::Milliseconds(200));
      ASSERT_TRUE(batch.ok()) << batch.status();
      for (const Delivery& d : *batch) {
        // A revoked partition's late ack fails: the event goes to the new owner instead.
        if (!sub->Ack(d).ok()) continue;
        absl::MutexLock lock(&mu);
        processed.insert(d.event.id());
        acks_by_consumer[name]++;
      }
    }
  };

  // A steady stream: 25 events every 100 ms until told to stop.
  std::set<std::string> published;
  std::atomic<bool> stop_publishing{false};
  std::thread publisher([&] {
    for (int i = 0; !stop_publishing.load(); ++i) {
      Event event = Numbered(i);
      published.insert(event.id());
      ASSERT_TRUE(stream->Publish(topic, event).ok());
      if (i % 25 == 24) absl::SleepFor(absl::Milliseconds(100));
    }
    ASSERT_TRUE(stream->Flush(absl::Seconds(60)).ok());
  });

  auto first = MustSubscribe(*stream, topic, "g", "first");
  ASSERT_NE(first, nullptr);
  std::atomic<bool> stop_first{false};
  std::thread first_thread(consume, first.get(), "first", &stop_first);
  wait_for([&] { return acks_of("first") > 0; }, "the first consumer works");

  auto second = MustSubscribe(*stream, topic, "g", "second");
  ASSERT_NE(second, nullptr);
  std::atomic<bool> stop_second{false};
  std::thread second_thread(consume, second.get(), "second", &stop_second);
  wait_for([&] { return acks_of("second") > 0; }, "the joining consumer gets partitions");

  // The first consumer leaves mid-stream, possibly with fetched but unacked events.
  const int first_acks = acks_of("first");
  stop_first = true;
  first_thread.join();
  ASSERT_TRUE(first->Close().ok());
  const int second_acks = acks_of("second");
  wait_for([&] { return acks_of("second") > second_acks + 100; },
           "the remaining consumer takes over the stream");
  stop_publishing = true;
  publisher.join();

  wait_for(
      [&] {
        absl::MutexLock lock(&mu);
        return processed.size() == published.size();
      },
      "every published event was processed");
  stop_second = true;
  second_thread.join();

  absl::MutexLock lock(&mu);
  EXPECT_EQ(processed.size(), published.size());
  for (const auto& id : published) EXPECT_TRUE(processed.contains(id)) << "lost " << id;
  EXPECT_GT(first_acks, 0);
  EXPECT_GT(published.size(), 200u) << "the stream was too short to overlap the changes";
}

TEST(KafkaIntegrationTest, EventsInFlightAtADeadConsumerGoToTheSurvivorAndLateAcksFail) {
  KafkaOptions options = TestOptions();
  options.partitions = 2;
  auto stream = MustStream(options);
  ASSERT_NE(stream, nullptr);
  const std::string topic = UniqueTopic("dead");
  // Keyed: both partitions hold deliveries, so whichever one the survivor takes over has
  // some in flight at the doomed consumer (keyless, all 20 often went to one partition, and
  // when the doomed consumer kept that one there was nothing to hand over).
  const std::set<std::string> published = PublishNumbered(*stream, topic, 0, 20, /*keyed=*/true);

  auto doomed = MustSubscribe(*stream, topic, "g", "doomed");
  ASSERT_NE(doomed, nullptr);
  std::vector<Delivery> held;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (held.size() < published.size() && absl::Now() < deadline) {
    auto batch = doomed->Fetch(50, absl::Milliseconds(500));
    ASSERT_TRUE(batch.ok()) << batch.status();
    held.insert(held.end(), batch->begin(), batch->end());
  }
  ASSERT_EQ(held.size(), published.size());
  // Complete a few out of order above a gap: they must not be committed past the gap.
  for (size_t i = 1; i < held.size(); i += 3) ASSERT_TRUE(doomed->Ack(held[i]).ok());

  auto survivor = MustSubscribe(*stream, topic, "g", "survivor");
  ASSERT_NE(survivor, nullptr);
  std::set<std::string> recovered;
  auto drain_survivor = [&] {
    auto batch = survivor->Fetch(50, absl::Milliseconds(200));
    ASSERT_TRUE(batch.ok()) << batch.status();
    for (const Delivery& d : *batch) {
      // Every event here was delivered to the doomed consumer once: its count came along.
      EXPECT_GE(d.delivery_count, 2) << d.id;
      if (survivor->Ack(d).ok()) recovered.insert(d.event.id());
    }
  };
  // The cooperative protocol hands a partition over only after the doomed consumer revoked
  // it: its deliveries from that partition are given back (through the retry topic, with
  // their counts) and from then on refused. Extend tells which, without settling anything.
  auto given_back = [&] {
    for (size_t i = 0; i < held.size(); ++i) {
      if (i % 3 != 1 && !doomed->Extend(held[i]).ok()) return true;
    }
    return false;
  };
  const absl::Time handover_deadline = absl::Now() + absl::Seconds(30);
  while (!given_back() && absl::Now() < handover_deadline) drain_survivor();
  ASSERT_TRUE(given_back()) << "the doomed consumer never gave a partition up";
  int late = 0;
  std::set<std::string> acked_by_doomed;
  for (size_t i = 0; i < held.size(); ++i) {
    if (i % 3 == 1) {  // acked before the handover
      acked_by_doomed.insert(held[i].event.id());
      continue;
    }
    const absl::Status status = doomed->Ack(held[i]);
    if (status.ok()) {  // of the partition the doomed consumer kept
      acked_by_doomed.insert(held[i].event.id());
      continue;
    }
    EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
    ++late;
  }
  EXPECT_GT(late, 0);

  // The doomed consumer dies with what it buffered from the retry topic meanwhile.
  doomed.reset();
  std::set<std::string> unacked;
  for (const Delivery& d : held) {
    if (!acked_by_doomed.contains(d.event.id()) && !recovered.contains(d.event.id())) {
      unacked.insert(d.event.id());
    }
  }
  for (const auto& id : DrainAndAck(*survivor, unacked, absl::Seconds(45))) {
    recovered.insert(id);
  }
  // Everything the doomed consumer did not ack comes to the survivor (and some it did: the
  // ones above a gap in the same partition).
  for (const Delivery& d : held) {
    if (!recovered.contains(d.event.id())) {
      // Only events acked by the doomed consumer (and committed) may be missing.
      EXPECT_TRUE(acked_by_doomed.contains(d.event.id())) << "lost " << d.id;
    }
  }
}

TEST(KafkaIntegrationTest, BrokerRestartMidStreamIsSurvived) {
  auto stream = MustStream();
  ASSERT_NE(stream, nullptr);
  const std::string topic = UniqueTopic("restart");
  auto sub = MustSubscribe(*stream, topic, "g", "c");
  ASSERT_NE(sub, nullptr);
  std::set<std::string> published = PublishNumbered(*stream, topic, 0, 100);
  // Half acked, the rest fetched or buffered but not acked when the broker dies.
  std::set<std::string> acked;
  const absl::Time half_deadline = absl::Now() + absl::Seconds(30);
  while (acked.size() < 50 && absl::Now() < half_deadline) {
    auto batch = sub->Fetch(10, absl::Milliseconds(500));
    ASSERT_TRUE(batch.ok()) << batch.status();
    for (const Delivery& d : *batch) {
      if (acked.size() < 50 && sub->Ack(d).ok()) acked.insert(d.event.id());
    }
  }
  ASSERT_EQ(acked.size(), 50u);

  harness::KafkaBroker& broker = KafkaBrokerEnvironment::broker();
  broker.Kill();
  // Publishing while the broker is down queues in the producer and goes out after the restart.
  std::atomic<int> failed{0};
  std::set<std::string> during;
  for (int i = 100; i < 150; ++i) {
    Event event = Numbered(i);
    during.insert(event.id());
    ASSERT_TRUE(stream->Publish(topic, event, [&](absl::StatusOr<PublishReceipt> r) {
      if (!r.ok()) failed++;
    }).ok());
  }
  absl::SleepFor(absl::Seconds(2));
  const absl::Status restarted = broker.Restart();
  ASSERT_TRUE(restarted.ok()) << restarted;
  ASSERT_TRUE(stream->Flush(absl::Seconds(60)).ok());
  EXPECT_EQ(failed.load(), 0);
  published.insert(during.begin(), during.end());
  const std::set<std::string> after = PublishNumbered(*stream, topic, 150, 50);
  published.insert(after.begin(), after.end());

  std::set<std::string> want_after;
  std::set_difference(published.begin(), published.end(), acked.begin(), acked.end(),
                      std::inserter(want_after, want_after.end()));
  for (const auto& id : DrainAndAck(*sub, want_after, absl::Seconds(90))) {
    acked.insert(id);
  }
  int lost = 0;
  for (const auto& id : published) lost += acked.contains(id) ? 0 : 1;
  EXPECT_EQ(lost, 0) << "of " << published.size() << " events, " << acked.size() << " acked";
  EXPECT_TRUE(stream->Ping(absl::Seconds(5)).ok());
}

std::string RunCommand(const std::string& command) {
  std::string output;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return output;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) output.append(buffer, n);
  const int rc = ::pclose(pipe);
  EXPECT_EQ(rc, 0) << command << "\n" << output;
  return output;
}

TEST(KafkaIntegrationTest, AnEventProducedWithKcatFollowingTheWireFormatIsConsumed) {
  auto stream = MustStream();
  ASSERT_NE(stream, nullptr);
  const std::string topic = UniqueTopic("kcat");
  auto sub = MustSubscribe(*stream, topic, "g", "c");  // creates the topic
  ASSERT_NE(sub, nullptr);
  const std::string bootstrap = KafkaBrokerEnvironment::broker().bootstrap();
  // Created by us with the configured partitions, not auto-created with the broker's default.
  const std::string metadata =
      RunCommand(absl::StrCat("kcat -b ", bootstrap, " -L -t ", topic, " 2>&1"));
  EXPECT_TRUE(absl::StrContains(metadata, absl::StrCat("topic \"", topic, "\" with 3 partitions")))
      << metadata;
  // Exactly the command docs/wire-format.md shows.
  RunCommand(absl::StrCat(
      "printf '%s' '{\"order\":42}' | kcat -b ", bootstrap, " -t ", topic,
      " -P -k customer-7 -H ce_specversion=1.0 -H ce_id=kcat-1 -H ce_source=/kcat"
      " -H ce_type=io.example.order.created -H ce_time=2026-01-02T03:04:05.5Z"
      " -H ce_subject=order/42 -H content-type=application/json -H ce_traceparent=00-ab-01"
      " -H X-Origin=shell 2>&1"));
  // And a malformed one (no ce_type): dead-lettered with a reason, never returned.
  RunCommand(absl::StrCat("printf 'junk' | kcat -b ", bootstrap, " -t ", topic,
                          " -P -H ce_specversion=1.0 -H ce_id=kcat-2 -H ce_source=/kcat 2>&1"));

  std::vector<Delivery> got;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (got.empty() && absl::Now() < deadline) {
    auto batch = sub->Fetch(10, absl::Seconds(1));
    ASSERT_TRUE(batch.ok()) << batch.status();
    got.insert(got.end(), batch->begin(), batch->end());
  }
  ASSERT_EQ(got.size(), 1u);
  const Event& event = got[0].event;
  EXPECT_EQ(event.id(), "kcat-1");
  EXPECT_EQ(event.type(), "io.example.order.created");
  EXPECT_EQ(event.source(), "/kcat");
  EXPECT_EQ(event.subject(), "order/42");
  EXPECT_EQ(event.key(), "customer-7");
  EXPECT_EQ(event.data(), "{\"order\":42}");
  EXPECT_EQ(event.data_content_type(), "application/json");
  EXPECT_EQ(EventTime(event), absl::FromUnixMillis(1767323045500));
  EXPECT_EQ(event.headers().at("traceparent"), "00-ab-01");
  EXPECT_EQ(event.headers().at("X-Origin"), "shell");
  ASSERT_TRUE(sub->Ack(got[0]).ok());
  auto more = sub->Fetch(10, absl::Seconds(2));
  ASSERT_TRUE(more.ok());
  EXPECT_TRUE(more->empty()) << "the malformed record was returned";

  // The dead letter, read back with kcat: a valid event carrying the reason, the origin and the
  // raw record (value as is, raw headers under eventbus-raw-header-).
  const std::string dead = RunCommand(absl::StrCat(
      "kcat -b ", bootstrap, " -C -t ", topic, ".dlq -o beginning -c 1 -e -q -f '%h|%s\\n' 2>&1"));
  EXPECT_TRUE(absl::StrContains(
      dead, "ce_dlqreason=malformed event: required attribute 'type' is missing or empty"))
      << dead;
  EXPECT_TRUE(absl::StrContains(dead, absl::StrCat("ce_dlqoriginstream=", topic))) << dead;
  EXPECT_TRUE(absl::StrContains(dead, "ce_type=io.eventbus.malformed")) << dead;
  EXPECT_TRUE(absl::StrContains(dead, "eventbus-dlq-origin-partition=")) << dead;
  EXPECT_TRUE(absl::StrContains(dead, "eventbus-dlq-origin-offset=")) << dead;
  EXPECT_TRUE(absl::StrContains(dead, "eventbus-raw-header-ce_id=kcat-2")) << dead;
  EXPECT_TRUE(absl::StrContains(dead, "|junk")) << dead;
}

TEST(KafkaIntegrationTest, LongNackGoesThroughTheRetryTopicAndOutlivesTheConsumer) {
  KafkaOptions options = TestOptions();
  options.retry_topic_threshold = absl::Milliseconds(500);
  auto stream = MustStream(options);
  ASSERT_NE(stream, nullptr);
  const std::string topic = UniqueTopic("retry");
  const std::set<std::string> published = PublishNumbered(*stream, topic, 0, 1);
  auto first = MustSubscribe(*stream, topic, "g", "first");
  ASSERT_NE(first, nullptr);
  std::vector<Delivery> got;
  while (got.empty()) {
    auto batch = first->Fetch(1, absl::Seconds(5));
    ASSERT_TRUE(batch.ok()) << batch.status();
    ASSERT_FALSE(batch->empty());
    got = *batch;
  }
  const absl::Duration delay = absl::Seconds(4);
  const absl::Time nacked_at = absl::Now();
  ASSERT_TRUE(first->Nack(got[0], delay, NackKind::kFailed).ok());
  // The nacking consumer goes away; the delay is kept by the retry topic.
  ASSERT_TRUE(first->Close().ok());

  auto other_stream = MustStream(options);
  auto second = MustSubscribe(*other_stream, topic, "g", "second");
  ASSERT_NE(second, nullptr);
  std::vector<Delivery> again;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (again.empty() && absl::Now() < deadline) {
    auto batch = second->Fetch(1, absl::Milliseconds(500));
    ASSERT_TRUE(batch.ok()) << batch.status();
    again = *batch;
  }
  ASSERT_EQ(again.size(), 1u);
  EXPECT_GE(absl::Now() - nacked_at, delay);
  EXPECT_EQ(again[0].event.id(), got[0].event.id());
  EXPECT_EQ(again[0].id, got[0].id) << "the delivery id survives the retry topic";
  EXPECT_EQ(again[0].delivery_count, 2) << "the attempt count travels in a header";
  EXPECT_EQ(again[0].failed_attempts, 1) << "the failed-attempt count travels in a header";
  EXPECT_EQ(again[0].first_delivery_time, absl::FromUnixMillis(absl::ToUnixMillis(
                                              got[0].first_delivery_time)));
  ASSERT_TRUE(second->Ack(again[0]).ok());
  auto more = second->Fetch(5, absl::Seconds(2));
  ASSERT_TRUE(more.ok());
  EXPECT_TRUE(more->empty()) << "the original came back after its retry was acked";

  // Another group of the same stream is not affected by this group's retry record.
  auto other_group = MustSubscribe(*other_stream, topic, "other", "c");
  auto other_got = DrainAndAck(*other_group, published, absl::Seconds(15));
  EXPECT_EQ(other_got, published);
  auto other_more = other_group->Fetch(5, absl::Seconds(2));
  ASSERT_TRUE(other_more.ok());
  EXPECT_TRUE(other_more->empty()) << "another group's retry record reached this group";
}

TEST(KafkaIntegrationTest, AnExpiredLeaseIsRedeliveredAndTheStaleHandleIsRefused) {
  auto stream = MustStream();
  ASSERT_NE(stream, nullptr);
  const std::string topic = UniqueTopic("lease");
  PublishNumbered(*stream, topic, 0, 1);
  auto sub = MustSubscribe(*stream, topic, "g", "c", /*ack_wait=*/absl::Seconds(1));
  ASSERT_NE(sub, nullptr);
  auto first = sub->Fetch(1, absl::Seconds(10));
  ASSERT_TRUE(first.ok() && first->size() == 1u);
  auto early = sub->Fetch(1, absl::Milliseconds(300));
  ASSERT_TRUE(early.ok());
  EXPECT_TRUE(early->empty()) << "redelivered before its lease expired";
  auto second = sub->Fetch(1, absl::Seconds(5));
  ASSERT_TRUE(second.ok() && second->size() == 1u);
  EXPECT_EQ((*second)[0].id, (*first)[0].id);
  EXPECT_EQ((*second)[0].delivery_count, 2);
  EXPECT_EQ(sub->Ack((*first)[0]).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(sub->Ack((*second)[0]).ok());
}

TEST(KafkaIntegrationTest, OrderingModeKeepsOneEventPerKeyInFlight) {
  KafkaOptions options = TestOptions();
  options.ordered_per_key = true;
  auto stream = MustStream(options);
  ASSERT_NE(stream, nullptr);
  ASSERT_TRUE(stream->capabilities().ordered_per_key);
  const std::string topic = UniqueTopic("ordered");
  for (int i = 0; i < 30; ++i) {
    ASSERT_TRUE(stream->Publish(topic, Numbered(i, absl::StrCat("key", i % 3))).ok());
  }
  ASSERT_TRUE(stream->Flush(absl::Seconds(30)).ok());
  auto sub = MustSubscribe(*stream, topic, "g", "c");
  ASSERT_NE(sub, nullptr);

  std::map<std::string, int> last;
  int done = 0;
  bool nacked_once = false;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (done < 30 && absl::Now() < deadline) {
    auto batch = sub->Fetch(100, absl::Seconds(1));
    ASSERT_TRUE(batch.ok()) << batch.status();
    std::set<std::string> keys;
    for (const Delivery& d : *batch) {
      EXPECT_TRUE(keys.insert(d.event.key()).second)
          << "two events of key " << d.event.key() << " in flight at once";
    }
    for (const Delivery& d : *batch) {
      const int n = std::stoi(d.event.subject());
      if (!nacked_once && n >= 6) {
        // A nacked event stays at the head of its key: the next of that key waits for it.
        nacked_once = true;
        ASSERT_TRUE(sub->Nack(d, absl::Milliseconds(300)).ok());
        continue;
      }
      auto [it, first] = last.try_emplace(d.event.key(), n);
      if (!first) {
        EXPECT_GT(n, it->second) << "key " << d.event.key() << " out of order";
      }
      it->second = n;
      ASSERT_TRUE(sub->Ack(d).ok());
      ++done;
    }
  }
  EXPECT_EQ(done, 30);
  EXPECT_TRUE(nacked_once);
}

}  // namespace
}  // namespace eventbus::kafka::testing
