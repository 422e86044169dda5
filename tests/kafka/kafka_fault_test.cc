// Faults a real broker cannot script, on librdkafka's built-in mock cluster (rdkafka_mock.h):
// brokers going down and requests failing with chosen error codes. The backend talks to the
// mock through its ordinary bootstrap.servers, so every code path is the production one.

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <atomic>
#include <map>
#include <thread>
#include <vector>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "eventbus/kafka/kafka_event_stream.h"
#include "gtest/gtest.h"
#include "kafka_client.h"
#include "rdkafka_handles.h"
#include "wire_format.h"

namespace eventbus::kafka {
namespace {

// Kafka protocol API keys (not in librdkafka's public headers).
constexpr int16_t kProduceApi = 0;
constexpr int16_t kOffsetCommitApi = 8;

class MockCluster {
 public:
  explicit MockCluster(int brokers) {
    char errstr[256];
    ConfHandle conf(rd_kafka_conf_new());
    // The mock cluster lives inside a client handle; this one only hosts it.
    rd_kafka_conf_set(conf.get(), "log_level", "0", errstr, sizeof(errstr));
    host_.reset(rd_kafka_new(RD_KAFKA_PRODUCER, conf.release(), errstr, sizeof(errstr)));
    EXPECT_NE(host_, nullptr) << errstr;
    cluster_ = rd_kafka_mock_cluster_new(host_.get(), brokers);
    EXPECT_NE(cluster_, nullptr);
  }
  ~MockCluster() {
    if (cluster_ != nullptr) rd_kafka_mock_cluster_destroy(cluster_);
  }

  rd_kafka_mock_cluster_t* get() { return cluster_; }
  std::string bootstrap() { return rd_kafka_mock_cluster_bootstraps(cluster_); }

  void CreateTopic(const std::string& topic, int partitions) {
    ASSERT_EQ(rd_kafka_mock_topic_create(cluster_, topic.c_str(), partitions, 1),
              RD_KAFKA_RESP_ERR_NO_ERROR);
  }

 private:
  KafkaHandle host_;
  rd_kafka_mock_cluster_t* cluster_ = nullptr;
};

KafkaOptions MockOptions(MockCluster& cluster) {
  KafkaOptions options;
  options.brokers = cluster.bootstrap();
  options.partitions = 2;
  options.operation_timeout = absl::Seconds(5);
  options.properties["message.timeout.ms"] = "1500";
  options.properties["log_level"] = "0";  // the faults are the point; keep the output clean
  return options;
}

Event TestEvent(int n) {
  Event event = MakeEvent("io.eventbus.fault", "/fault", absl::StrCat("n-", n));
  event.set_id(absl::StrCat("fault-", n));
  return event;
}

TEST(KafkaFaultTest, PublishToADownBrokerFailsAsUnavailableAndRecovers) {
  MockCluster cluster(1);
  cluster.CreateTopic("orders", 2);
  auto stream = NewKafkaEventStream(MockOptions(cluster));
  ASSERT_TRUE(stream.ok()) << stream.status();
  ASSERT_TRUE((*stream)->PublishAndWait("orders", TestEvent(0), absl::Seconds(10)).ok());

  rd_kafka_mock_broker_set_down(cluster.get(), 1);
  auto failed = (*stream)->PublishAndWait("orders", TestEvent(1), absl::Seconds(10));
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kUnavailable) << failed.status();
  EXPECT_FALSE((*stream)->Ping(absl::Milliseconds(500)).ok());

  rd_kafka_mock_broker_set_up(cluster.get(), 1);
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  absl::StatusOr<PublishReceipt> recovered = absl::UnavailableError("not tried");
  while (!recovered.ok() && absl::Now() < deadline) {
    recovered = (*stream)->PublishAndWait("orders", TestEvent(2), absl::Seconds(5));
  }
  ASSERT_TRUE(recovered.ok()) << recovered.status();
  EXPECT_EQ(recovered->stream, "orders");
  EXPECT_TRUE((*stream)->Ping(absl::Seconds(5)).ok());
}

TEST(KafkaFaultTest, RetriableProduceErrorsAreRetriedWithoutDuplicates) {
  MockCluster cluster(1);
  cluster.CreateTopic("payments", 1);
  KafkaOptions options = MockOptions(cluster);
  options.properties["message.timeout.ms"] = "10000";
  auto stream = NewKafkaEventStream(options);
  ASSERT_TRUE(stream.ok()) << stream.status();
  ASSERT_TRUE((*stream)->PublishAndWait("payments", TestEvent(0)).ok());
  rd_kafka_mock_push_request_errors(cluster.get(), kProduceApi, 3,
                                    RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                                    RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                                    RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS);
  auto receipt = (*stream)->PublishAndWait("payments", TestEvent(1), absl::Seconds(15));
  ASSERT_TRUE(receipt.ok()) << receipt.status();

  // The idempotent producer wrote it once despite the retries.
  SubscribeOptions sub_options;
  sub_options.stream = "payments";
  sub_options.group = "g";
  sub_options.consumer = "c";
  auto sub = (*stream)->Subscribe(sub_options);
  ASSERT_TRUE(sub.ok()) << sub.status();
  std::multiset<std::string> ids;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (ids.size() < 2 && absl::Now() < deadline) {
    auto batch = (*sub)->Fetch(10, absl::Seconds(1));
    ASSERT_TRUE(batch.ok()) << batch.status();
    for (const Delivery& d : *batch) {
      ids.insert(d.event.id());
      EXPECT_TRUE((*sub)->Ack(d).ok());
    }
  }
  auto more = (*sub)->Fetch(10, absl::Seconds(1));
  ASSERT_TRUE(more.ok());
  for (const Delivery& d : *more) ids.insert(d.event.id());
  EXPECT_EQ(ids.count("fault-0"), 1u);
  EXPECT_EQ(ids.count("fault-1"), 1u);
}

TEST(KafkaFaultTest, PermanentProduceErrorsSurfaceWithTheirCode) {
  MockCluster cluster(1);
  cluster.CreateTopic("secret", 1);
  auto stream = NewKafkaEventStream(MockOptions(cluster));
  ASSERT_TRUE(stream.ok()) << stream.status();
  ASSERT_TRUE((*stream)->PublishAndWait("secret", TestEvent(0)).ok());
  rd_kafka_mock_push_request_errors(cluster.get(), kProduceApi, 1,
                                    RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED);
  auto denied = (*stream)->PublishAndWait("secret", TestEvent(1), absl::Seconds(10));
  ASSERT_FALSE(denied.ok());
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied) << denied.status();
  // librdkafka remembers a topic's authorization failure until its next metadata refresh:
  // later publishes fail at once with the same code instead of waiting for a timeout.
  const absl::Time start = absl::Now();
  auto after = (*stream)->PublishAndWait("secret", TestEvent(2), absl::Seconds(10));
  ASSERT_FALSE(after.ok());
  EXPECT_EQ(after.status().code(), absl::StatusCode::kPermissionDenied) << after.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  // Other topics are unaffected.
  cluster.CreateTopic("public", 1);
  auto other = (*stream)->PublishAndWait("public", TestEvent(3), absl::Seconds(10));
  EXPECT_TRUE(other.ok()) << other.status();
}

TEST(KafkaFaultTest, ConsumerRidesOutABrokerOutageAndCommitErrors) {
  MockCluster cluster(1);
  cluster.CreateTopic("jobs", 2);
  auto stream = NewKafkaEventStream(MockOptions(cluster));
  ASSERT_TRUE(stream.ok()) << stream.status();
  SubscribeOptions options;
  options.stream = "jobs";
  options.group = "workers";
  options.consumer = "w1";
  auto sub = (*stream)->Subscribe(options);
  ASSERT_TRUE(sub.ok()) << sub.status();

  std::set<std::string> published;
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE((*stream)->Publish("jobs", TestEvent(i)).ok());
    published.insert(absl::StrCat("fault-", i));
  }
  ASSERT_TRUE((*stream)->Flush(absl::Seconds(10)).ok());
  // Commits fail for a while: acks still succeed locally, and the offsets go out later.
  rd_kafka_mock_push_request_errors(cluster.get(), kOffsetCommitApi, 2,
                                    RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                                    RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS);
  std::set<std::string> seen;
  auto drain = [&](size_t want, absl::Duration patience) {
    const absl::Time deadline = absl::Now() + patience;
    while (seen.size() < want && absl::Now() < deadline) {
      auto batch = (*sub)->Fetch(10, absl::Milliseconds(500));
      ASSERT_TRUE(batch.ok()) << batch.status();
      for (const Delivery& d : *batch) {
        if ((*sub)->Ack(d).ok()) seen.insert(d.event.id());
      }
    }
  };
  drain(5, absl::Seconds(20));
  ASSERT_GE(seen.size(), 5u);

  rd_kafka_mock_broker_set_down(cluster.get(), 1);
  auto during = (*sub)->Fetch(10, absl::Seconds(1));
  EXPECT_TRUE(during.ok()) << "Fetch must not fail while librdkafka reconnects: "
                           << during.status();
  if (during.ok()) {
    for (const Delivery& d : *during) {
      if ((*sub)->Ack(d).ok()) seen.insert(d.event.id());
    }
  }
  rd_kafka_mock_broker_set_up(cluster.get(), 1);
  for (int i = 10; i < 15; ++i) {
    ASSERT_TRUE((*stream)->Publish("jobs", TestEvent(i)).ok());
    published.insert(absl::StrCat("fault-", i));
  }
  ASSERT_TRUE((*stream)->Flush(absl::Seconds(20)).ok());
  drain(published.size(), absl::Seconds(40));
  EXPECT_EQ(seen, published);
}

// Records in `topic`, summed over its partitions (high watermarks).
int64_t RecordsIn(const std::string& bootstrap, const std::string& topic, int partitions) {
  char errstr[256];
  ConfHandle conf(rd_kafka_conf_new());
  rd_kafka_conf_set(conf.get(), "bootstrap.servers", bootstrap.c_str(), errstr, sizeof(errstr));
  rd_kafka_conf_set(conf.get(), "log_level", "0", errstr, sizeof(errstr));
  KafkaHandle rk(rd_kafka_new(RD_KAFKA_PRODUCER, conf.release(), errstr, sizeof(errstr)));
  int64_t total = 0;
  for (int p = 0; p < partitions; ++p) {
    int64_t low = 0;
    int64_t high = 0;
    if (rd_kafka_query_watermark_offsets(rk.get(), topic.c_str(), p, &low, &high, 5000) !=
        RD_KAFKA_RESP_ERR_NO_ERROR) {
      return -1;
    }
    total += high;
  }
  return total;
}

SubscribeOptions Subscriber(const std::string& stream) {
  SubscribeOptions options;
  options.stream = stream;
  options.group = "g";
  options.consumer = "c";
  return options;
}

TEST(KafkaFaultTest, ASlowRetryProduceIsWaitedForSoTheNackIsNeverKeptTwice) {
  MockCluster cluster(1);
  cluster.CreateTopic("slow", 1);
  cluster.CreateTopic("slow.retry", 1);
  cluster.CreateTopic("slow.dlq", 1);
  KafkaOptions options = MockOptions(cluster);
  options.retry_topic_threshold = absl::ZeroDuration();  // every delayed nack via the topic
  options.operation_timeout = absl::Milliseconds(500);
  options.properties["message.timeout.ms"] = "10000";
  ManualClock clock;
  auto stream = NewKafkaEventStream(options, &clock);
  ASSERT_TRUE(stream.ok()) << stream.status();
  ASSERT_TRUE((*stream)->PublishAndWait("slow", TestEvent(0), absl::Seconds(10)).ok());
  auto sub = (*stream)->Subscribe(Subscriber("slow"));
  ASSERT_TRUE(sub.ok()) << sub.status();
  std::vector<Delivery> got;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (got.empty() && absl::Now() < deadline) {
    auto batch = (*sub)->Fetch(1, absl::Milliseconds(500));
    ASSERT_TRUE(batch.ok()) << batch.status();
    got = *batch;
  }
  ASSERT_EQ(got.size(), 1u);
  // The retry record's produce is answered after 2 s, well past operation_timeout: the nack
  // must wait for it rather than also keep the delay locally (two copies).
  ASSERT_EQ(rd_kafka_mock_broker_push_request_error_rtts(cluster.get(), 1, kProduceApi, 1,
                                                         RD_KAFKA_RESP_ERR_NO_ERROR, 2000),
            RD_KAFKA_RESP_ERR_NO_ERROR);
  const absl::Time nacked = absl::Now();
  ASSERT_TRUE((*sub)->Nack(got[0], absl::Hours(1)).ok());
  EXPECT_GE(absl::Now() - nacked, absl::Milliseconds(1500)) << "did not wait for the report";
  EXPECT_EQ(RecordsIn(cluster.bootstrap(), "slow.retry", 1), 1);

  clock.Advance(absl::Hours(2));
  std::vector<Delivery> again;
  const absl::Time again_deadline = absl::Now() + absl::Milliseconds(2500);
  while (absl::Now() < again_deadline) {
    auto batch = (*sub)->Fetch(10, absl::Milliseconds(500));
    ASSERT_TRUE(batch.ok()) << batch.status();
    for (const Delivery& d : *batch) {
      again.push_back(d);
      EXPECT_TRUE((*sub)->Ack(d).ok());
    }
  }
  ASSERT_EQ(again.size(), 1u) << "the nacked event came back more than once";
  EXPECT_EQ(again[0].delivery_count, 2);
}

TEST(KafkaFaultTest, AMalformedRecordsSlowDeadLetterDoesNotHoldUpTheRecordsBehindIt) {
  MockCluster cluster(1);
  cluster.CreateTopic("raw", 1);
  cluster.CreateTopic("raw.retry", 1);
  cluster.CreateTopic("raw.dlq", 1);
  KafkaOptions options = MockOptions(cluster);
  options.properties["message.timeout.ms"] = "20000";
  auto client = KafkaClient::Create(options, Clock::Real());
  ASSERT_TRUE(client.ok()) << client.status();
  KafkaRecord malformed;
  malformed.value = "not an event";
  ASSERT_TRUE((*client)->ProduceAndWait("raw", malformed).ok());
  auto valid = EncodeEvent(TestEvent(1));
  ASSERT_TRUE(valid.ok());
  ASSERT_TRUE((*client)->ProduceAndWait("raw", *valid).ok());

  auto stream = NewKafkaEventStream(options);
  ASSERT_TRUE(stream.ok()) << stream.status();
  // The next produce (the dead letter) is answered after 6 s.
  ASSERT_EQ(rd_kafka_mock_broker_push_request_error_rtts(cluster.get(), 1, kProduceApi, 1,
                                                         RD_KAFKA_RESP_ERR_NO_ERROR, 6000),
            RD_KAFKA_RESP_ERR_NO_ERROR);
  auto sub = (*stream)->Subscribe(Subscriber("raw"));
  ASSERT_TRUE(sub.ok()) << sub.status();
  std::vector<Delivery> got;
  const absl::Time subscribed = absl::Now();
  while (got.empty() && absl::Now() < subscribed + absl::Seconds(20)) {
    auto batch = (*sub)->Fetch(10, absl::Milliseconds(200));
    ASSERT_TRUE(batch.ok()) << batch.status();
    got = *batch;
  }
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].event.id(), "fault-1");
  EXPECT_LT(absl::Now() - subscribed, absl::Seconds(5))
      << "the record behind the malformed one waited for its dead letter";
  ASSERT_TRUE((*sub)->Ack(got[0]).ok());
  const absl::Time deadline = absl::Now() + absl::Seconds(15);
  while (RecordsIn(cluster.bootstrap(), "raw.dlq", 1) < 1 && absl::Now() < deadline) {
    (*sub)->Fetch(1, absl::Milliseconds(200)).IgnoreError();
  }
  EXPECT_EQ(RecordsIn(cluster.bootstrap(), "raw.dlq", 1), 1);
}

TEST(KafkaFaultTest, OrderingHoldsAKeyWhoseDeadLetterIsInFlightAcrossARevoke) {
  MockCluster cluster(1);
  cluster.CreateTopic("keyed", 2);
  cluster.CreateTopic("keyed.retry", 2);
  cluster.CreateTopic("keyed.dlq", 2);
  KafkaOptions options = MockOptions(cluster);
  options.ordered_per_key = true;
  options.properties["message.timeout.ms"] = "20000";
  // The mock coordinator waits half a session timeout for members to rejoin a rebalance.
  options.properties["session.timeout.ms"] = "4000";
  options.properties["heartbeat.interval.ms"] = "500";
  auto stream = NewKafkaEventStream(options);
  ASSERT_TRUE(stream.ok()) << stream.status();
  constexpr int kKeys = 6;
  for (int round = 0; round < 2; ++round) {
    for (int k = 0; k < kKeys; ++k) {
      Event event = TestEvent(round * kKeys + k);
      event.set_key(absl::StrCat("key", k));
      ASSERT_TRUE((*stream)->Publish("keyed", event).ok());
    }
  }
  // Markers, one per key: held by the first member, they show which partition it gave up.
  for (int k = 0; k < kKeys; ++k) {
    Event event = TestEvent(100 + k);
    event.set_key(absl::StrCat("marker", k));
    ASSERT_TRUE((*stream)->Publish("keyed", event).ok());
  }
  ASSERT_TRUE((*stream)->Flush(absl::Seconds(10)).ok());
  auto first = (*stream)->Subscribe(Subscriber("keyed"));
  ASSERT_TRUE(first.ok()) << first.status();
  // The head of every key; the second event of each waits behind it.
  std::map<std::string, Delivery> heads;
  std::vector<Delivery> markers;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (heads.size() + markers.size() < 2 * kKeys && absl::Now() < deadline) {
    auto batch = (*first)->Fetch(20, absl::Milliseconds(200));
    ASSERT_TRUE(batch.ok()) << batch.status();
    for (const Delivery& d : *batch) {
      if (absl::StartsWith(d.event.key(), "marker")) {
        markers.push_back(d);
        continue;
      }
      ASSERT_TRUE(heads.emplace(d.event.key(), d).second) << "two events of " << d.event.key();
    }
  }
  ASSERT_EQ(heads.size(), static_cast<size_t>(kKeys));
  ASSERT_EQ(markers.size(), static_cast<size_t>(kKeys));

  // The dead letters are answered after 5 s; meanwhile a second member joins and takes one
  // partition from the first (a revoke of the other keys' partition).
  ASSERT_EQ(rd_kafka_mock_broker_push_request_error_rtts(cluster.get(), 1, kProduceApi, 2,
                                                         RD_KAFKA_RESP_ERR_NO_ERROR, 5000,
                                                         RD_KAFKA_RESP_ERR_NO_ERROR, 5000),
            RD_KAFKA_RESP_ERR_NO_ERROR);
  const absl::Time started = absl::Now();
  std::vector<std::thread> dead_letters;
  for (auto& [key, head] : heads) {
    dead_letters.emplace_back([&sub = **first, d = head] {
      EXPECT_TRUE(sub.DeadLetter(d, "poison").ok());
    });
  }
  SubscribeOptions second_options = Subscriber("keyed");
  second_options.consumer = "c2";
  auto second = (*stream)->Subscribe(second_options);
  ASSERT_TRUE(second.ok()) << second.status();
  bool revoked = false;
  while (absl::Now() < started + absl::Seconds(4)) {
    auto mine = (*first)->Fetch(10, absl::Milliseconds(100));
    ASSERT_TRUE(mine.ok()) << mine.status();
    for (const Delivery& d : *mine) {
      ADD_FAILURE() << "event " << d.event.id() << " of key " << d.event.key()
                    << " delivered while the dead letter of its head was being written";
    }
    for (const Delivery& marker : markers) revoked |= !(*first)->Extend(marker).ok();
  }
  for (std::thread& t : dead_letters) t.join();
  EXPECT_TRUE(revoked) << "the first member gave no partition up in time: nothing was tested";

  // Written, the dead letters free their keys again (the revoke kept nothing busy): each key's
  // second event comes out, from whichever member holds its partition now.
  std::set<std::string> waiting;
  for (int k = 0; k < kKeys; ++k) waiting.insert(TestEvent(kKeys + k).id());
  const absl::Time released_by = absl::Now() + absl::Seconds(15);
  while (!waiting.empty() && absl::Now() < released_by) {
    for (Subscription* member : {first->get(), second->get()}) {
      auto batch = member->Fetch(20, absl::Milliseconds(100));
      ASSERT_TRUE(batch.ok()) << batch.status();
      for (const Delivery& d : *batch) {
        waiting.erase(d.event.id());
        member->Ack(d).IgnoreError();  // a head the new owner reads again, a marker
      }
    }
  }
  EXPECT_TRUE(waiting.empty()) << absl::StrJoin(waiting, ", ")
                               << " never delivered: their key stayed busy";
}

}  // namespace
}  // namespace eventbus::kafka
