// The Kafka consumer's production properties against a real broker: full Fetch batches from a
// backlog, a fair share of the stream's partitions per group member, delivery counts that
// survive a consumer going away (closed, or killed: the counts travel in the commit metadata),
// and a retry topic read from its beginning.

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include <algorithm>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "kafka_client.h"
#include "kafka_test_env.h"
#include "wire_format.h"

namespace eventbus::kafka::testing {
namespace {

[[maybe_unused]] ::testing::Environment* const kEnvironment =
    ::testing::AddGlobalTestEnvironment(new KafkaBrokerEnvironment);

std::string UniqueTopic(absl::string_view prefix) {
  static absl::BitGen gen;
  return absl::StrFormat("ct.%s.%016x", prefix, absl::Uniform<uint64_t>(gen));
}

std::unique_ptr<EventStream> MustStream(KafkaOptions options = TestOptions()) {
  auto stream = NewTestStream(std::move(options));
  EXPECT_TRUE(stream.ok()) << stream.status();
  return stream.ok() ? std::move(stream).value() : nullptr;
}

std::unique_ptr<Subscription> MustSubscribe(EventStream& stream, const std::string& topic,
                                            const std::string& group, const std::string& consumer,
                                            bool start_from_oldest = true) {
  SubscribeOptions options;
  options.stream = topic;
  options.group = group;
  options.consumer = consumer;
  options.start_from_oldest = start_from_oldest;
  auto sub = stream.Subscribe(options);
  EXPECT_TRUE(sub.ok()) << sub.status();
  return sub.ok() ? std::move(sub).value() : nullptr;
}

Event Numbered(int n) {
  Event event = MakeEvent("io.eventbus.ct", "/ct", absl::StrCat("n-", n));
  event.set_id(NewEventId());
  event.set_subject(absl::StrCat(n));
  return event;
}

void PublishNumbered(EventStream& stream, const std::string& topic, int count) {
  for (int i = 0; i < count; ++i) ASSERT_TRUE(stream.Publish(topic, Numbered(i)).ok());
  ASSERT_TRUE(stream.Flush(absl::Seconds(60)).ok());
}

int PartitionOf(const Delivery& d) { return std::stoi(d.id.substr(0, d.id.find(':'))); }

TEST(KafkaConsumerTest, FetchFromABacklogReturnsFullBatches) {
  auto stream = MustStream();
  ASSERT_NE(stream, nullptr);
  const std::string topic = UniqueTopic("batch");
  constexpr int kEvents = 10000;
  constexpr int kBatch = 256;
  PublishNumbered(*stream, topic, kEvents);
  auto sub = MustSubscribe(*stream, topic, "g", "c");
  ASSERT_NE(sub, nullptr);
  // The first batch may come while the consumer is still starting its fetches.
  int events = 0;
  int fetches = 0;
  int full = 0;
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + absl::Seconds(60);
  while (events < kEvents && absl::Now() < deadline) {
    auto batch = sub->Fetch(kBatch, absl::Seconds(1));
    ASSERT_TRUE(batch.ok()) << batch.status();
    if (batch->empty()) continue;
    ++fetches;
    events += static_cast<int>(batch->size());
    if (static_cast<int>(batch->size()) == kBatch) ++full;
    for (const Delivery& d : *batch) ASSERT_TRUE(sub->Ack(d).ok());
  }
  ASSERT_EQ(events, kEvents);
  const double mean = static_cast<double>(events) / fetches;
  std::fprintf(stderr, "%d events in %d fetches (%d full): %.1f per Fetch(%d), %s\n", events,
               fetches, full, mean, kBatch, absl::FormatDuration(absl::Now() - start).c_str());
  EXPECT_GE(mean, 0.75 * kBatch);
}


// Publishes `count` events with distinct keys (so every partition gets some) and drains them
// with `subs` in turn; returns, per consumer, the partitions it got events from.
std::vector<std::set<int>> PublishAndDrain(EventStream& stream, const std::string& topic,
                                           std::vector<std::unique_ptr<Subscription>>& subs,
                                           int count) {
  std::set<std::string> want;
  for (int i = 0; i < count; ++i) {
    Event event = Numbered(i);
    event.set_key(absl::StrCat("key-", i, "-", event.id()));
    want.insert(event.id());
    EXPECT_TRUE(stream.Publish(topic, event).ok());
  }
  EXPECT_TRUE(stream.Flush(absl::Seconds(30)).ok());
  std::vector<std::set<int>> partitions(subs.size());
  std::set<std::string> acked;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (acked.size() < want.size() && absl::Now() < deadline) {
    for (size_t i = 0; i < subs.size(); ++i) {
      auto batch = subs[i]->Fetch(100, absl::Milliseconds(100));
      EXPECT_TRUE(batch.ok()) << batch.status();
      if (!batch.ok()) return partitions;
      for (const Delivery& d : *batch) {
        if (!subs[i]->Ack(d).ok()) continue;
        if (want.contains(d.event.id())) acked.insert(d.event.id());
        partitions[i].insert(PartitionOf(d));
      }
    }
  }
  EXPECT_EQ(acked.size(), want.size());
  return partitions;
}

void ExpectFairShares(int consumers) {
  KafkaOptions options = TestOptions();
  options.partitions = 6;
  auto stream = MustStream(options);
  ASSERT_NE(stream, nullptr);
  const std::string topic = UniqueTopic(absl::StrCat("fair", consumers));
  // The first member takes every partition; the others join later, as in a rolling start,
  // which is where an assignment balancing partitions over both topics together went wrong.
  std::vector<std::unique_ptr<Subscription>> subs;
  subs.push_back(MustSubscribe(*stream, topic, "g", "c0"));
  ASSERT_NE(subs.back(), nullptr);
  PublishAndDrain(*stream, topic, subs, 60);
  for (int i = 1; i < consumers; ++i) {
    subs.push_back(MustSubscribe(*stream, topic, "g", absl::StrCat("c", i)));
    ASSERT_NE(subs.back(), nullptr);
  }
  // Rounds until every member got work (the joins and the cooperative rebalance's two steps
  // are done); the next round shows where the partitions ended up.
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  for (bool settled = false; !settled && absl::Now() < deadline;) {
    std::vector<std::set<int>> round = PublishAndDrain(*stream, topic, subs, 60);
    settled = std::all_of(round.begin(), round.end(), [](const auto& p) { return !p.empty(); });
  }
  std::vector<std::set<int>> got = PublishAndDrain(*stream, topic, subs, 240);
  std::set<int> all;
  for (int i = 0; i < consumers; ++i) {
    const int share = static_cast<int>(got[i].size());
    EXPECT_GE(share, 6 / consumers) << "consumer c" << i << " got too few partitions";
    EXPECT_LE(share, (6 + consumers - 1) / consumers) << "consumer c" << i;
    all.insert(got[i].begin(), got[i].end());
  }
  EXPECT_EQ(all.size(), 6u);
}

TEST(KafkaConsumerTest, TwoConsumersShareTheStreamsPartitionsFairly) { ExpectFairShares(2); }

TEST(KafkaConsumerTest, ThreeConsumersShareTheStreamsPartitionsFairly) { ExpectFairShares(3); }

// Fetches from `sub` until one delivery comes (or `patience` passes).
std::optional<Delivery> FetchOne(Subscription& sub, absl::Duration patience = absl::Seconds(30)) {
  const absl::Time deadline = absl::Now() + patience;
  while (absl::Now() < deadline) {
    auto batch = sub.Fetch(1, absl::Milliseconds(500));
    EXPECT_TRUE(batch.ok()) << batch.status();
    if (!batch.ok()) return std::nullopt;
    if (!batch->empty()) return (*batch)[0];
  }
  return std::nullopt;
}

TEST(KafkaConsumerTest, TheDeliveryCountSurvivesConsumersThatCloseWithoutSettling) {
  auto stream = MustStream();
  ASSERT_NE(stream, nullptr);
  const std::string topic = UniqueTopic("poison");
  PublishNumbered(*stream, topic, 1);
  constexpr int kKills = 3;
  std::string id;
  for (int kill = 0; kill < kKills; ++kill) {
    auto doomed = MustSubscribe(*stream, topic, "g", absl::StrCat("doomed", kill));
    ASSERT_NE(doomed, nullptr);
    std::optional<Delivery> poison = FetchOne(*doomed);
    ASSERT_TRUE(poison.has_value()) << "kill " << kill;
    EXPECT_EQ(poison->delivery_count, kill + 1);
    if (kill == 0) id = poison->id;
    EXPECT_EQ(poison->id, id) << "the delivery id survives the give-back";
    if (kill % 2 == 0) {
      ASSERT_TRUE(doomed->Close().ok());  // closed with the delivery unsettled
    } else {
      doomed.reset();  // destroyed with it
    }
  }
  auto survivor = MustSubscribe(*stream, topic, "g", "survivor");
  ASSERT_NE(survivor, nullptr);
  std::optional<Delivery> last = FetchOne(*survivor);
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(last->delivery_count, kKills + 1);
  EXPECT_EQ(last->id, id);
  ASSERT_TRUE(survivor->Ack(*last).ok());
  auto more = survivor->Fetch(5, absl::Seconds(2));
  ASSERT_TRUE(more.ok());
  EXPECT_TRUE(more->empty()) << "a given-back delivery came twice";
}

// The offset `group` committed for `topic`/`partition` and its metadata, read with librdkafka
// as any tool reading the group's offsets would (an OffsetFetch; it does not join the group).
std::pair<int64_t, std::string> Committed(const std::string& group, const std::string& topic,
                                          int partition) {
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers",
                    KafkaBrokerEnvironment::broker().bootstrap().c_str(), err, sizeof(err));
  rd_kafka_conf_set(conf, "group.id", group.c_str(), err, sizeof(err));
  rd_kafka_conf_set(conf, "log_level", "3", err, sizeof(err));
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
  EXPECT_NE(rk, nullptr) << err;
  if (rk == nullptr) return {-1, ""};
  rd_kafka_topic_partition_list_t* list = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(list, topic.c_str(), partition);
  std::pair<int64_t, std::string> out{-1, ""};
  if (rd_kafka_committed(rk, list, 10'000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
    const rd_kafka_topic_partition_t& p = list->elems[0];
    out.first = p.offset;
    if (p.metadata != nullptr) out.second.assign(static_cast<const char*>(p.metadata), p.metadata_size);
  }
  rd_kafka_topic_partition_list_destroy(list);
  rd_kafka_destroy(rk);
  return out;
}

TEST(KafkaConsumerTest, TheDeliveryCountSurvivesAConsumerKilledWithoutClose) {
  auto stream = MustStream();
  ASSERT_NE(stream, nullptr);
  const std::string topic = UniqueTopic("crash");
  const std::string group = "g";
  PublishNumbered(*stream, topic, 1);
  int out[2];
  ASSERT_EQ(::pipe(out), 0);
  const std::string brokers = KafkaBrokerEnvironment::broker().bootstrap();
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::dup2(out[1], STDOUT_FILENO);
    ::close(out[0]);
    ::close(out[1]);
    ::execl(EVENTBUS_KAFKA_CRASH_CONSUMER, EVENTBUS_KAFKA_CRASH_CONSUMER, brokers.c_str(),
            topic.c_str(), group.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(out[1]);
  auto kill_child = [pid, fd = out[0]] {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    ::close(fd);
  };
  // "delivered <partition>:<offset> <count>" once the child holds the record.
  std::string line;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (line.find('\n') == std::string::npos && absl::Now() < deadline) {
    pollfd pfd{out[0], POLLIN, 0};
    if (::poll(&pfd, 1, 500) <= 0) continue;
    char buffer[256];
    const ssize_t n = ::read(out[0], buffer, sizeof(buffer));
    if (n <= 0) break;
    line.append(buffer, static_cast<size_t>(n));
  }
  char id[64] = {0};
  int count = 0;
  if (std::sscanf(line.c_str(), "delivered %63s %d", id, &count) != 2) {
    kill_child();
    FAIL() << "the crashing consumer said: " << line;
  }
  EXPECT_EQ(count, 1);
  const std::string delivery_id = id;
  const int partition = std::stoi(delivery_id.substr(0, delivery_id.find(':')));
  const int64_t offset = std::stoll(delivery_id.substr(delivery_id.find(':') + 1));
  // Within the commit interval the group's commit carries the count of the held offset.
  const std::string expected = absl::StrCat("eventbus-dc1:", offset, "=1");
  std::pair<int64_t, std::string> committed;
  const absl::Time commit_deadline = absl::Now() + absl::Seconds(15);
  while (absl::Now() < commit_deadline) {
    committed = Committed(group, topic, partition);
    if (committed.second == expected) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  kill_child();  // SIGKILL: no Close, no give-back to the retry topic, no last commit
  EXPECT_EQ(committed.first, offset) << "the commit point stays at the held offset";
  ASSERT_EQ(committed.second, expected);

  // The next member gets the partition once the dead one's session times out (10 s).
  auto next = MustSubscribe(*stream, topic, group, "next");
  ASSERT_NE(next, nullptr);
  std::optional<Delivery> again = FetchOne(*next, absl::Seconds(60));
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->id, delivery_id);
  EXPECT_EQ(again->delivery_count, 2) << "the crashed delivery counts";
  ASSERT_TRUE(next->Ack(*again).ok());
}

TEST(KafkaConsumerTest, ARetryRecordWrittenBeforeTheGroupJoinedIsDeliveredFromTheNewest) {
  // A nack written to the retry topic while none of the group's consumers ran (a restart of
  // a stream that starts from the newest) must not be skipped: the retry topic is read from
  // its beginning whatever the stream's start. Written here the way Nack writes it
  // (docs/wire-format.md, "Retry topic").
  KafkaOptions options = TestOptions();
  auto client = KafkaClient::Create(options, Clock::Real());
  ASSERT_TRUE(client.ok()) << client.status();
  const std::string topic = UniqueTopic("newest");
  ASSERT_TRUE((*client)->EnsureTopic(topic).ok());
  ASSERT_TRUE((*client)->EnsureTopic(topic + ".retry").ok());
  Event event = Numbered(0);
  auto record = EncodeEvent(event);
  ASSERT_TRUE(record.ok()) << record.status();
  const absl::Time first_delivery = absl::FromUnixMillis(absl::ToUnixMillis(absl::Now()));
  record->headers.emplace_back(std::string(kAttemptHeader), "1");
  record->headers.emplace_back(std::string(kDueHeader), absl::StrCat(absl::ToUnixMillis(absl::Now())));
  record->headers.emplace_back(std::string(kGroupHeader), "g");
  record->headers.emplace_back(std::string(kOriginIdHeader), "0:7");
  record->headers.emplace_back(std::string(kFirstDeliveryHeader),
                               absl::StrCat(absl::ToUnixMillis(first_delivery)));
  ASSERT_TRUE((*client)->ProduceAndWait(topic + ".retry", *record).ok());

  auto stream = MustStream(options);
  ASSERT_NE(stream, nullptr);
  auto sub = MustSubscribe(*stream, topic, "g", "c", /*start_from_oldest=*/false);
  ASSERT_NE(sub, nullptr);
  std::optional<Delivery> again = FetchOne(*sub);
  ASSERT_TRUE(again.has_value()) << "the retry record written before the group joined was skipped";
  EXPECT_EQ(again->event.id(), event.id());
  EXPECT_EQ(again->id, "0:7");
  EXPECT_EQ(again->delivery_count, 2);
  EXPECT_EQ(again->first_delivery_time, first_delivery);
  EXPECT_TRUE(sub->Ack(*again).ok());
}
// Publishes `count` events of `data_bytes`, fetches without settling until nothing more comes,
// and returns how many the consumer handed out; then settles everything and checks that the
// rest still arrives (the consumer resumes).
size_t HeldWithoutSettling(KafkaOptions options, int count, size_t data_bytes) {
  auto stream = MustStream(options);
  EXPECT_NE(stream, nullptr);
  if (stream == nullptr) return 0;
  const std::string topic = UniqueTopic("bound");
  for (int i = 0; i < count; ++i) {
    Event event = Numbered(i);
    event.set_data(std::string(data_bytes, 'x'));
    EXPECT_TRUE(stream->Publish(topic, event).ok());
  }
  EXPECT_TRUE(stream->Flush(absl::Seconds(30)).ok());
  auto sub = MustSubscribe(*stream, topic, "g", "c");
  if (sub == nullptr) return 0;
  std::vector<Delivery> held;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    auto batch = sub->Fetch(1000, held.empty() ? absl::Seconds(10) : absl::Milliseconds(700));
    EXPECT_TRUE(batch.ok()) << batch.status();
    if (!batch.ok() || batch->empty()) break;
    held.insert(held.end(), batch->begin(), batch->end());
  }
  const size_t result = held.size();
  std::set<std::string> done;
  for (const Delivery& d : held) {
    EXPECT_TRUE(sub->Ack(d).ok());
    done.insert(d.event.id());
  }
  const absl::Time rest_deadline = absl::Now() + absl::Seconds(30);
  while (done.size() < static_cast<size_t>(count) && absl::Now() < rest_deadline) {
    auto batch = sub->Fetch(1000, absl::Milliseconds(500));
    EXPECT_TRUE(batch.ok()) << batch.status();
    if (!batch.ok()) break;
    for (const Delivery& d : *batch) {
      EXPECT_TRUE(sub->Ack(d).ok());
      done.insert(d.event.id());
    }
  }
  EXPECT_EQ(done.size(), static_cast<size_t>(count)) << "the consumer did not resume";
  return result;
}

TEST(KafkaConsumerTest, AConsumerHoldsNoMoreRecordsThanItsEventBound) {
  KafkaOptions options = TestOptions();
  options.max_buffered_events = 40;
  const size_t held = HeldWithoutSettling(options, 300, 10);
  EXPECT_GE(held, 1u);
  EXPECT_LE(held, 40u);
}

TEST(KafkaConsumerTest, AConsumerHoldsNoMoreBytesThanItsByteBound) {
  KafkaOptions options = TestOptions();
  options.max_buffered_bytes = 40 * 1024;
  // 4 KiB of data plus headers each: the tenth crosses the bound.
  const size_t held = HeldWithoutSettling(options, 100, 4096);
  EXPECT_GE(held, 1u);
  EXPECT_LE(held, 10u);
}

}  // namespace
}  // namespace eventbus::kafka::testing
