// The raw-client baselines of the benchmark matrix: the same work as broker_bench written
// directly on hiredis and librdkafka, with the batching a careful hand-written program would
// use, so each of our rows has an "ours / raw" ratio. Same names as broker_bench with a "raw_"
// prefix; --backend=redis or kafka.
//
//   redis: raw_publish (pipelined XADD, 256 per round trip), raw_e2e (a pipelining publisher,
//          consumers doing XREADGROUP COUNT 100 + one XACK per batch), raw_executor (pre-loaded
//          requests; XREADGROUP COUNT 100 + pipelined result XADDs + one XACK per batch)
//   kafka: raw_publish (produce + flush), raw_e2e (a consumer group storing offsets and
//          committing them asynchronously); the producer idempotent, as the backend's is
//   nats:  raw_publish (JetStream async publish + wait for every PubAck), raw_e2e (pull
//          consumers of one durable: Fetch 100, Ack each, one flush per batch), raw_executor
//          (pre-loaded requests; Fetch 100 + async result publishes, acks once their PubAcks
//          are in) -- built when the NATS backend is

#include <hiredis/hiredis.h>
#include <librdkafka/rdkafka.h>
#ifdef RAW_BENCH_HAS_NATS
#include <nats/nats.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bench_support.h"
#include "benchmark/benchmark.h"

namespace eventbus::bench {
namespace {

constexpr int64_t kMiB = int64_t{1} << 20;
constexpr int kPipeline = 256;

// The same payload budget per run as broker_bench, so both sides move the same events.
int64_t ByteBudget() { return Flags().quick ? 32 * kMiB : 128 * kMiB; }

std::string UniqueName(absl::string_view scenario) {
  return absl::StrCat("raw.", scenario, ".", NowNanos());
}

absl::Duration SinceNanos(int64_t nanos) { return absl::Nanoseconds(NowNanos() - nanos); }

// ---------------------------------------------------------------------------------- hiredis

struct RedisDeleter {
  void operator()(redisContext* c) const { redisFree(c); }
};
using RedisPtr = std::unique_ptr<redisContext, RedisDeleter>;
struct ReplyDeleter {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

RedisPtr RedisConnect(std::string* error) {
  absl::string_view url = Flags().redis_url;
  absl::ConsumePrefix(&url, "redis://");
  std::string host = "127.0.0.1";
  int port = 6379;
  if (size_t colon = url.rfind(':'); colon != absl::string_view::npos) {
    host = std::string(url.substr(0, colon));
    (void)absl::SimpleAtoi(absl::StripSuffix(url.substr(colon + 1), "/"), &port);
  }
  RedisPtr c(redisConnect(host.c_str(), port));
  if (c == nullptr || c->err) {
    *error = absl::StrCat("connect ", host, ":", port, ": ", c ? c->errstr : "out of memory");
    return nullptr;
  }
  return c;
}

// Reads one reply; false (with `error`) on a connection error or an error reply.
bool GetReply(redisContext* c, ReplyPtr* out, std::string* error) {
  void* reply = nullptr;
  if (redisGetReply(c, &reply) != REDIS_OK) {
    *error = absl::StrCat("redis: ", c->errstr);
    return false;
  }
  out->reset(static_cast<redisReply*>(reply));
  if ((*out)->type == REDIS_REPLY_ERROR) {
    *error = absl::StrCat("redis: ", (*out)->str);
    return false;
  }
  return true;
}

// Appends XADD <stream> * time <nanos> type bench.event data <payload>.
void AppendXadd(redisContext* c, const std::string& stream, const std::string& payload) {
  const std::string t = absl::StrCat(NowNanos());
  redisAppendCommand(c, "XADD %b * time %b type bench.event data %b", stream.data(), stream.size(),
                     t.data(), t.size(), payload.data(), payload.size());
}

// Pipelines `n` XADDs in round trips of kPipeline.
bool PipelinedXadd(redisContext* c, const std::string& stream, const std::string& payload,
                   int64_t n, std::string* error) {
  ReplyPtr reply;
  for (int64_t sent = 0; sent < n;) {
    const int64_t batch = std::min<int64_t>(kPipeline, n - sent);
    for (int64_t i = 0; i < batch; ++i) AppendXadd(c, stream, payload);
    for (int64_t i = 0; i < batch; ++i) {
      if (!GetReply(c, &reply, error)) return false;
    }
    sent += batch;
  }
  return true;
}

void BM_RedisPublish(benchmark::State& state, int64_t size) {
  const int64_t n = CountForSize(Count(200'000, 20'000), size, ByteBudget());
  std::string error;
  RedisPtr c = RedisConnect(&error);
  if (!c) return state.SkipWithError(error.c_str());
  const std::string stream = UniqueName("publish");
  const std::string payload = Payload(size);
  for (auto _ : state) {
    CpuMeter cpu;
    cpu.Start();
    const absl::Time start = absl::Now();
    if (!PipelinedXadd(c.get(), stream, payload, n, &error)) return state.SkipWithError(error.c_str());
    const absl::Duration wall = absl::Now() - start;
    cpu.Stop();
    Report(state, wall, n, n * size, cpu);
  }
  redisCommand(c.get(), "DEL %s", stream.c_str());
}

// One XREADGROUP COUNT 100; `on_entry(id, fields)` per entry. Returns the entries read.
template <typename F>
int64_t ReadGroup(redisContext* c, const std::string& stream, const std::string& consumer,
                  std::string* error, F on_entry) {
  ReplyPtr reply(static_cast<redisReply*>(redisCommand(
      c, "XREADGROUP GROUP bench %s COUNT 100 BLOCK 100 STREAMS %s >", consumer.c_str(),
      stream.c_str())));
  if (!reply) {
    *error = absl::StrCat("redis: ", c->errstr);
    return -1;
  }
  if (reply->type == REDIS_REPLY_ERROR) {
    *error = absl::StrCat("redis: ", reply->str);
    return -1;
  }
  if (reply->type != REDIS_REPLY_ARRAY || reply->elements == 0) return 0;
  redisReply* entries = reply->element[0]->element[1];
  for (size_t i = 0; i < entries->elements; ++i) {
    redisReply* entry = entries->element[i];
    on_entry(entry->element[0], entry->element[1]);
  }
  return static_cast<int64_t>(entries->elements);
}

// XACK <stream> bench <ids...> in one command.
bool AckIds(redisContext* c, const std::string& stream, const std::vector<std::string>& ids,
            bool pipelined, std::string* error) {
  std::vector<const char*> argv = {"XACK", stream.c_str(), "bench"};
  std::vector<size_t> lens = {4, stream.size(), 5};
  for (const auto& id : ids) {
    argv.push_back(id.c_str());
    lens.push_back(id.size());
  }
  if (pipelined) {
    redisAppendCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lens.data());
    return true;
  }
  ReplyPtr reply(static_cast<redisReply*>(
      redisCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lens.data())));
  if (!reply || reply->type == REDIS_REPLY_ERROR) {
    *error = absl::StrCat("XACK: ", reply ? reply->str : c->errstr);
    return false;
  }
  return true;
}

bool CreateGroup(redisContext* c, const std::string& stream, std::string* error) {
  ReplyPtr reply(static_cast<redisReply*>(
      redisCommand(c, "XGROUP CREATE %s bench 0 MKSTREAM", stream.c_str())));
  if (!reply || reply->type == REDIS_REPLY_ERROR) {
    *error = absl::StrCat("XGROUP CREATE: ", reply ? reply->str : c->errstr);
    return false;
  }
  return true;
}

void BM_RedisEndToEnd(benchmark::State& state, int64_t size, int consumers) {
  const int64_t n = CountForSize(Count(100'000, 10'000), size, ByteBudget());
  std::string error;
  RedisPtr pub = RedisConnect(&error);
  if (!pub) return state.SkipWithError(error.c_str());
  const std::string stream = UniqueName("e2e");
  if (!CreateGroup(pub.get(), stream, &error)) return state.SkipWithError(error.c_str());
  const std::string payload = Payload(size);
  LatencyRecorder latency(static_cast<size_t>(n));
  std::atomic<int64_t> acked{0};
  std::atomic<int64_t> end_nanos{0};
  std::mutex error_mu;
  std::string consumer_error;
  for (auto _ : state) {
    CpuMeter cpu;
    cpu.Start();
    const absl::Time start = absl::Now();
    std::vector<std::thread> threads;
    for (int i = 0; i < consumers; ++i) {
      threads.emplace_back([&, i] {
        std::string err;
        RedisPtr c = RedisConnect(&err);
        const std::string name = absl::StrCat("c", i);
        std::vector<std::string> ids;
        while (c && acked.load() < n) {
          ids.clear();
          int64_t got = ReadGroup(c.get(), stream, name, &err, [&](redisReply* id, redisReply* fields) {
            ids.emplace_back(id->str, id->len);
            int64_t t = 0;
            if (fields->elements >= 2 && absl::SimpleAtoi(absl::string_view(fields->element[1]->str, fields->element[1]->len), &t)) {
              latency.Add(SinceNanos(t));
            }
          });
          if (got < 0 || (got > 0 && !AckIds(c.get(), stream, ids, false, &err))) break;
          // The run ends when the last ack is in, not when the others' BLOCK runs out.
          const int64_t before = acked.fetch_add(got);
          if (before < n && before + got >= n) end_nanos = NowNanos();
        }
        if (!err.empty() || !c) {
          std::lock_guard lock(error_mu);
          consumer_error = err;
          acked = n;  // stop the others
        }
      });
    }
    const bool published = PipelinedXadd(pub.get(), stream, payload, n, &error);
    for (auto& t : threads) t.join();
    const absl::Duration wall = absl::FromUnixNanos(end_nanos.load()) - start;
    cpu.Stop();
    if (!published) return state.SkipWithError(error.c_str());
    if (!consumer_error.empty()) return state.SkipWithError(consumer_error.c_str());
    Report(state, wall, n, n * size, cpu, &latency);
  }
  redisCommand(pub.get(), "DEL %s", stream.c_str());
}

// The executor's work without the executor: read a batch of requests, pipeline one result
// XADD per request and one XACK for the batch, in one round trip.
void BM_RedisExecutorLoop(benchmark::State& state) {
  const int64_t n = Count(100'000, 5'000);
  std::string error;
  RedisPtr c = RedisConnect(&error);
  if (!c) return state.SkipWithError(error.c_str());
  const std::string requests = UniqueName("requests");
  const std::string results = UniqueName("results");
  if (!CreateGroup(c.get(), requests, &error)) return state.SkipWithError(error.c_str());
  // About the size of our inject request for a 64 B payload.
  const std::string request = absl::StrCat(R"({"id":"t1","type":"inject","input":{"data":{"payload":")",
                                           Payload(64), R"("}}})");
  if (!PipelinedXadd(c.get(), requests, request, n, &error)) return state.SkipWithError(error.c_str());
  const std::string result = R"({"task_id":"t1","type":"inject","status":"succeeded","output":{}})";
  for (auto _ : state) {
    CpuMeter cpu;
    cpu.Start();
    absl::Time start = absl::InfinitePast();
    int64_t done = 0;
    std::vector<std::string> ids;
    ReplyPtr reply;
    while (done < n) {
      ids.clear();
      int64_t got = ReadGroup(c.get(), requests, "c1", &error, [&](redisReply* id, redisReply*) {
        ids.emplace_back(id->str, id->len);
      });
      if (got < 0) return state.SkipWithError(error.c_str());
      if (got == 0) continue;
      if (start == absl::InfinitePast()) start = absl::Now();
      for (int64_t i = 0; i < got; ++i) {
        redisAppendCommand(c.get(), "XADD %b * data %b", results.data(), results.size(),
                           result.data(), result.size());
      }
      AckIds(c.get(), requests, ids, true, &error);
      for (int64_t i = 0; i <= got; ++i) {
        if (!GetReply(c.get(), &reply, &error)) return state.SkipWithError(error.c_str());
      }
      done += got;
    }
    const absl::Duration wall = absl::Now() - start;
    cpu.Stop();
    Report(state, wall, n, 0, cpu);
  }
  redisCommand(c.get(), "DEL %s %s", requests.c_str(), results.c_str());
}

// ------------------------------------------------------------------------------- librdkafka

struct KafkaDeleter {
  void operator()(rd_kafka_t* rk) const { rd_kafka_destroy(rk); }
};
using KafkaPtr = std::unique_ptr<rd_kafka_t, KafkaDeleter>;

struct DeliveryCounts {
  std::atomic<int64_t> ok{0};
  std::atomic<int64_t> failed{0};
};

void OnDelivery(rd_kafka_t*, const rd_kafka_message_t* message, void* opaque) {
  auto* counts = static_cast<DeliveryCounts*>(opaque);
  if (message->err) ++counts->failed;
  else ++counts->ok;
}

KafkaPtr NewKafka(rd_kafka_type_t type, const std::vector<std::pair<std::string, std::string>>& props,
                  DeliveryCounts* counts, std::string* error) {
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  char err[512];
  auto set = [&](const std::string& key, const std::string& value) {
    if (rd_kafka_conf_set(conf, key.c_str(), value.c_str(), err, sizeof(err)) != RD_KAFKA_CONF_OK) {
      *error = err;
      return false;
    }
    return true;
  };
  if (!set("bootstrap.servers", Flags().kafka_brokers) || !set("log_level", "3")) {
    rd_kafka_conf_destroy(conf);
    return nullptr;
  }
  for (const auto& [k, v] : props) {
    if (!set(k, v)) {
      rd_kafka_conf_destroy(conf);
      return nullptr;
    }
  }
  if (counts != nullptr) {
    rd_kafka_conf_set_opaque(conf, counts);
    rd_kafka_conf_set_dr_msg_cb(conf, OnDelivery);
  }
  KafkaPtr rk(rd_kafka_new(type, conf, err, sizeof(err)));
  if (!rk) *error = err;  // rd_kafka_new freed conf only on success
  return rk;
}

// Creates `topic` with 3 partitions (as our backend does) and waits for the result.
bool CreateTopic(rd_kafka_t* rk, const std::string& topic, std::string* error) {
  char err[512];
  rd_kafka_NewTopic_t* nt = rd_kafka_NewTopic_new(topic.c_str(), 3, 1, err, sizeof(err));
  rd_kafka_queue_t* queue = rd_kafka_queue_new(rk);
  rd_kafka_CreateTopics(rk, &nt, 1, nullptr, queue);
  rd_kafka_event_t* event = rd_kafka_queue_poll(queue, 30'000);
  bool ok = event != nullptr && rd_kafka_event_error(event) == RD_KAFKA_RESP_ERR_NO_ERROR;
  if (ok) {
    size_t count = 0;
    const rd_kafka_topic_result_t** results =
        rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(event), &count);
    if (count == 1 && rd_kafka_topic_result_error(results[0]) != RD_KAFKA_RESP_ERR_NO_ERROR) {
      *error = rd_kafka_topic_result_error_string(results[0]);
      ok = false;
    }
  } else {
    *error = event ? rd_kafka_event_error_string(event) : "CreateTopics timed out";
  }
  if (event) rd_kafka_event_destroy(event);
  rd_kafka_queue_destroy(queue);
  rd_kafka_NewTopic_destroy(nt);
  return ok;
}

// Produces `n` messages (each with a "t" header of its produce time in ns) and flushes.
bool ProduceAll(rd_kafka_t* rk, const std::string& topic, const std::string& payload, int64_t n,
                DeliveryCounts& counts, std::string* error) {
  for (int64_t i = 0; i < n; ++i) {
    const std::string t = absl::StrCat(NowNanos());
    while (true) {
      rd_kafka_resp_err_t err = rd_kafka_producev(
          rk, RD_KAFKA_V_TOPIC(topic.c_str()),
          RD_KAFKA_V_VALUE(const_cast<char*>(payload.data()), payload.size()),
          RD_KAFKA_V_HEADER("t", t.data(), static_cast<ssize_t>(t.size())),
          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
      if (err == RD_KAFKA_RESP_ERR_NO_ERROR) break;
      if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
        *error = rd_kafka_err2str(err);
        return false;
      }
      rd_kafka_poll(rk, 1);
    }
    if (i % 1000 == 0) rd_kafka_poll(rk, 0);
  }
  if (rd_kafka_flush(rk, 120'000) != RD_KAFKA_RESP_ERR_NO_ERROR) {
    *error = "flush timed out";
    return false;
  }
  if (counts.failed > 0) {
    *error = absl::StrCat(counts.failed.load(), " deliveries failed");
    return false;
  }
  return true;
}

// The settings of the backend's own producer that bear on throughput: the same work means the
// same guarantee, and the idempotent producer (no duplicates from retries, at most 5 requests
// in flight per broker) is slower than librdkafka's default.
const std::vector<std::pair<std::string, std::string>>& ProducerProps() {
  static const auto* props = new std::vector<std::pair<std::string, std::string>>{
      {"enable.idempotence", "true"}, {"linger.ms", "5"}};
  return *props;
}

void BM_KafkaPublish(benchmark::State& state, int64_t size) {
  const int64_t n = CountForSize(Count(200'000, 20'000), size, ByteBudget());
  std::string error;
  DeliveryCounts counts;
  KafkaPtr producer = NewKafka(RD_KAFKA_PRODUCER, ProducerProps(), &counts, &error);
  const std::string topic = UniqueName("publish");
  if (!producer || !CreateTopic(producer.get(), topic, &error)) return state.SkipWithError(error.c_str());
  const std::string payload = Payload(size);
  // The first produce fetches the topic's metadata: not what is measured.
  if (!ProduceAll(producer.get(), topic, payload, 1, counts, &error)) return state.SkipWithError(error.c_str());
  for (auto _ : state) {
    CpuMeter cpu;
    cpu.Start();
    const absl::Time start = absl::Now();
    if (!ProduceAll(producer.get(), topic, payload, n, counts, &error)) return state.SkipWithError(error.c_str());
    const absl::Duration wall = absl::Now() - start;
    cpu.Stop();
    Report(state, wall, n, n * size, cpu);
  }
}

void BM_KafkaEndToEnd(benchmark::State& state, int64_t size, int consumers) {
  const int64_t n = CountForSize(Count(100'000, 10'000), size, ByteBudget());
  std::string error;
  DeliveryCounts counts;
  KafkaPtr producer = NewKafka(RD_KAFKA_PRODUCER, ProducerProps(), &counts, &error);
  const std::string topic = UniqueName("e2e");
  if (!producer || !CreateTopic(producer.get(), topic, &error)) return state.SkipWithError(error.c_str());
  const std::string payload = Payload(size);
  LatencyRecorder latency(static_cast<size_t>(n));
  std::atomic<int64_t> consumed{0};
  std::atomic<int> active{0};  // consumers that have been handed a message
  std::atomic<bool> stop{false};
  std::mutex error_mu;
  std::string consumer_error;
  std::vector<std::thread> threads;
  for (int i = 0; i < consumers; ++i) {
    threads.emplace_back([&] {
      bool got_one = false;
      std::string err;
      KafkaPtr c = NewKafka(RD_KAFKA_CONSUMER,
                            {{"group.id", "bench"}, {"enable.auto.offset.store", "false"},
                             {"enable.auto.commit", "true"}, {"auto.commit.interval.ms", "1000"},
                             {"auto.offset.reset", "earliest"}},
                            nullptr, &err);
      if (c) {
        rd_kafka_poll_set_consumer(c.get());
        rd_kafka_topic_partition_list_t* topics = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(topics, topic.c_str(), RD_KAFKA_PARTITION_UA);
        rd_kafka_resp_err_t e = rd_kafka_subscribe(c.get(), topics);
        rd_kafka_topic_partition_list_destroy(topics);
        if (e) err = rd_kafka_err2str(e);
      }
      while (c && err.empty() && !stop) {
        rd_kafka_message_t* m = rd_kafka_consumer_poll(c.get(), 100);
        if (m == nullptr) continue;
        if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
          rd_kafka_headers_t* headers = nullptr;
          const void* value = nullptr;
          size_t len = 0;
          int64_t t = 0;
          if (rd_kafka_message_headers(m, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR &&
              rd_kafka_header_get_last(headers, "t", &value, &len) == RD_KAFKA_RESP_ERR_NO_ERROR &&
              absl::SimpleAtoi(absl::string_view(static_cast<const char*>(value), len), &t)) {
            latency.Add(SinceNanos(t));
          }
          rd_kafka_offset_store(m->rkt, m->partition, m->offset);
          ++consumed;
          if (!got_one) {
            got_one = true;
            ++active;
          }
        } else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
          err = rd_kafka_message_errstr(m);
        }
        rd_kafka_message_destroy(m);
      }
      if (c) rd_kafka_consumer_close(c.get());
      if (!err.empty()) {
        std::lock_guard lock(error_mu);
        consumer_error = err;
        stop = true;
      }
    });
  }
  auto stop_all = [&] {
    stop = true;
    for (auto& t : threads) t.join();
  };
  // Warm-up, as in broker_bench: keyed messages trickle in until every consumer that can get a
  // partition (3 of them) has one, so no rebalance falls into the timed run.
  const absl::Time warm_deadline = absl::Now() + absl::Seconds(60);
  int64_t warmups = 0;
  while (active.load() < std::min(consumers, 3) && !stop && absl::Now() < warm_deadline) {
    const std::string key = absl::StrCat("w", warmups++);
    rd_kafka_producev(producer.get(), RD_KAFKA_V_TOPIC(topic.c_str()),
                      RD_KAFKA_V_KEY(const_cast<char*>(key.data()), key.size()),
                      RD_KAFKA_V_VALUE(const_cast<char*>("w"), 1),
                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
    rd_kafka_flush(producer.get(), 1000);
    absl::SleepFor(absl::Milliseconds(20));
  }
  while (consumed.load() < warmups && !stop && absl::Now() < warm_deadline + absl::Seconds(30)) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  if (consumed.load() < warmups) {
    stop_all();
    return state.SkipWithError(absl::StrCat("warm-up messages never consumed ", consumer_error).c_str());
  }
  for (auto _ : state) {
    CpuMeter cpu;
    cpu.Start();
    const absl::Time start = absl::Now();
    const bool produced = ProduceAll(producer.get(), topic, payload, n, counts, &error);
    const absl::Time deadline = absl::Now() + absl::Seconds(120);
    while (consumed.load() < n + warmups && !stop && absl::Now() < deadline) absl::SleepFor(absl::Microseconds(200));
    const absl::Duration wall = absl::Now() - start;
    cpu.Stop();
    const int64_t got = consumed.load() - warmups;
    stop_all();
    if (!produced) return state.SkipWithError(error.c_str());
    if (!consumer_error.empty()) return state.SkipWithError(consumer_error.c_str());
    if (got < n) return state.SkipWithError(absl::StrCat("consumed ", got, " of ", n).c_str());
    Report(state, wall, n, n * size, cpu, &latency);
  }
  if (!stop) stop_all();
}

// ------------------------------------------------------------------------------------ nats.c
#ifdef RAW_BENCH_HAS_NATS

struct NatsConnDeleter {
  void operator()(natsConnection* c) const { natsConnection_Destroy(c); }
};
struct JsDeleter {
  void operator()(jsCtx* js) const { jsCtx_Destroy(js); }
};
struct NatsSubDeleter {
  void operator()(natsSubscription* s) const { natsSubscription_Destroy(s); }
};
using NatsConnPtr = std::unique_ptr<natsConnection, NatsConnDeleter>;
using JsPtr = std::unique_ptr<jsCtx, JsDeleter>;
using NatsSubPtr = std::unique_ptr<natsSubscription, NatsSubDeleter>;

std::string NatsError(absl::string_view what, natsStatus s) {
  return absl::StrCat(what, ": ", natsStatus_GetText(s), " ", nats_GetLastError(nullptr));
}

// Failed PubAcks of one JetStream context (its async error handler counts them).
std::atomic<int64_t> nats_publish_failures{0};
void OnNatsPublishError(jsCtx*, jsPubAckErr*, void*) { ++nats_publish_failures; }

struct NatsClient {
  NatsConnPtr conn;
  JsPtr js;
};

// One connection and JetStream context with the same async publish window as our backend.
bool NatsConnect(NatsClient* client, std::string* error) {
  natsConnection* nc = nullptr;
  natsStatus s = natsConnection_ConnectTo(&nc, Flags().nats_url.c_str());
  if (s != NATS_OK) {
    *error = NatsError(absl::StrCat("connect ", Flags().nats_url), s);
    return false;
  }
  client->conn.reset(nc);
  jsOptions jo;
  jsOptions_Init(&jo);
  jo.Wait = 10'000;
  jo.PublishAsync.MaxPending = 65'536;
  jo.PublishAsync.ErrHandler = OnNatsPublishError;
  jsCtx* js = nullptr;
  if ((s = natsConnection_JetStream(&js, nc, &jo)) != NATS_OK) {
    *error = NatsError("JetStream context", s);
    return false;
  }
  client->js.reset(js);
  return true;
}

// A file-storage stream holding the one subject `name` (as our backend creates them).
bool NatsCreateStream(jsCtx* js, const std::string& name, std::string* error) {
  jsStreamConfig cfg;
  jsStreamConfig_Init(&cfg);
  cfg.Name = name.c_str();
  const char* subjects[] = {name.c_str()};
  cfg.Subjects = subjects;
  cfg.SubjectsLen = 1;
  cfg.Storage = js_FileStorage;
  jsStreamInfo* si = nullptr;
  jsErrCode code = jsErrCode(0);
  natsStatus s = js_AddStream(&si, js, &cfg, nullptr, &code);
  if (si != nullptr) jsStreamInfo_Destroy(si);
  if (s != NATS_OK) {
    *error = NatsError(absl::StrCat("add stream ", name), s);
    return false;
  }
  return true;
}

// A durable pull consumer with explicit acks, delivering from the start.
bool NatsCreateConsumer(jsCtx* js, const std::string& stream, std::string* error) {
  jsConsumerConfig cc;
  jsConsumerConfig_Init(&cc);
  cc.Durable = "bench";
  cc.AckPolicy = js_AckExplicit;
  cc.DeliverPolicy = js_DeliverAll;
  cc.MaxAckPending = 20'000;
  jsConsumerInfo* ci = nullptr;
  jsErrCode code = jsErrCode(0);
  natsStatus s = js_AddConsumer(&ci, js, stream.c_str(), &cc, nullptr, &code);
  if (ci != nullptr) jsConsumerInfo_Destroy(ci);
  if (s != NATS_OK) {
    *error = NatsError(absl::StrCat("add consumer on ", stream), s);
    return false;
  }
  return true;
}

NatsSubPtr NatsPull(jsCtx* js, const std::string& stream, std::string* error) {
  jsSubOptions so;
  jsSubOptions_Init(&so);
  so.Stream = stream.c_str();
  so.Consumer = "bench";
  so.ManualAck = true;
  natsSubscription* sub = nullptr;
  jsErrCode code = jsErrCode(0);
  natsStatus s = js_PullSubscribe(&sub, js, stream.c_str(), "bench", nullptr, &so, &code);
  if (s != NATS_OK) *error = NatsError("pull subscribe", s);
  return NatsSubPtr(sub);
}

// Async-publishes `n` messages (each with a "t" header of its publish time in ns, unless
// `stamp` is false) and waits for every PubAck.
bool NatsPublishAll(jsCtx* js, const std::string& subject, const std::string& payload, int64_t n,
                    bool stamp, std::string* error) {
  const int64_t failed_before = nats_publish_failures.load();
  for (int64_t i = 0; i < n; ++i) {
    natsMsg* msg = nullptr;
    natsStatus s = natsMsg_Create(&msg, subject.c_str(), nullptr, payload.data(),
                                  static_cast<int>(payload.size()));
    if (s == NATS_OK && stamp) {
      s = natsMsgHeader_Set(msg, "t", absl::StrCat(NowNanos()).c_str());
    }
    if (s == NATS_OK) s = js_PublishMsgAsync(js, &msg, nullptr);
    if (msg != nullptr) natsMsg_Destroy(msg);  // left to us only when the publish failed
    if (s != NATS_OK) {
      *error = NatsError("async publish", s);
      return false;
    }
  }
  jsPubOptions po;
  jsPubOptions_Init(&po);
  po.MaxWait = 120'000;
  if (natsStatus s = js_PublishAsyncComplete(js, &po); s != NATS_OK) {
    *error = NatsError("waiting for PubAcks", s);
    return false;
  }
  if (const int64_t failed = nats_publish_failures.load() - failed_before; failed > 0) {
    *error = absl::StrCat(failed, " publishes failed");
    return false;
  }
  return true;
}

std::string NatsName(absl::string_view scenario) {
  return absl::StrCat("raw_", scenario, "_", NowNanos());
}

void BM_NatsPublish(benchmark::State& state, int64_t size) {
  const int64_t n = CountForSize(Count(200'000, 20'000), size, ByteBudget());
  std::string error;
  NatsClient client;
  const std::string stream = NatsName("publish");
  if (!NatsConnect(&client, &error) || !NatsCreateStream(client.js.get(), stream, &error)) {
    return state.SkipWithError(error.c_str());
  }
  const std::string payload = Payload(size);
  for (auto _ : state) {
    CpuMeter cpu;
    cpu.Start();
    const absl::Time start = absl::Now();
    if (!NatsPublishAll(client.js.get(), stream, payload, n, true, &error)) {
      return state.SkipWithError(error.c_str());
    }
    const absl::Duration wall = absl::Now() - start;
    cpu.Stop();
    Report(state, wall, n, n * size, cpu);
  }
  js_DeleteStream(client.js.get(), stream.c_str(), nullptr, nullptr);
}

void BM_NatsEndToEnd(benchmark::State& state, int64_t size, int consumers) {
  const int64_t n = CountForSize(Count(100'000, 10'000), size, ByteBudget());
  std::string error;
  NatsClient client;
  const std::string stream = NatsName("e2e");
  if (!NatsConnect(&client, &error) || !NatsCreateStream(client.js.get(), stream, &error) ||
      !NatsCreateConsumer(client.js.get(), stream, &error)) {
    return state.SkipWithError(error.c_str());
  }
  const std::string payload = Payload(size);
  LatencyRecorder latency(static_cast<size_t>(n));
  std::atomic<int64_t> acked{0};
  std::atomic<int64_t> end_nanos{0};
  std::mutex error_mu;
  std::string consumer_error;
  for (auto _ : state) {
    CpuMeter cpu;
    cpu.Start();
    const absl::Time start = absl::Now();
    std::vector<std::thread> threads;
    for (int i = 0; i < consumers; ++i) {
      threads.emplace_back([&] {
        std::string err;
        NatsSubPtr sub = NatsPull(client.js.get(), stream, &err);
        while (sub && err.empty() && acked.load() < n) {
          natsMsgList list{};
          jsErrCode code = jsErrCode(0);
          natsStatus s = natsSubscription_Fetch(&list, sub.get(), 100, 100, &code);
          if (s == NATS_TIMEOUT) continue;
          if (s != NATS_OK) {
            err = NatsError("fetch", s);
            break;
          }
          for (int k = 0; k < list.Count; ++k) {
            const char* t = nullptr;
            int64_t nanos = 0;
            if (natsMsgHeader_Get(list.Msgs[k], "t", &t) == NATS_OK &&
                absl::SimpleAtoi(t, &nanos)) {
              latency.Add(SinceNanos(nanos));
            }
            natsMsg_Ack(list.Msgs[k], nullptr);
          }
          // One round trip confirms the batch's acks reached the server.
          if ((s = natsConnection_FlushTimeout(client.conn.get(), 10'000)) != NATS_OK) {
            err = NatsError("flush of acks", s);
          }
          const int64_t got = list.Count;
          natsMsgList_Destroy(&list);
          const int64_t before = acked.fetch_add(got);
          if (before < n && before + got >= n) end_nanos = NowNanos();
        }
        if (!err.empty()) {
          std::lock_guard lock(error_mu);
          consumer_error = err;
          acked = n;  // stop the others
        }
      });
    }
    const bool published = NatsPublishAll(client.js.get(), stream, payload, n, true, &error);
    if (!published) acked = n;
    for (auto& t : threads) t.join();
    const absl::Duration wall = absl::FromUnixNanos(end_nanos.load()) - start;
    cpu.Stop();
    if (!published) return state.SkipWithError(error.c_str());
    if (!consumer_error.empty()) return state.SkipWithError(consumer_error.c_str());
    Report(state, wall, n, n * size, cpu, &latency);
  }
  js_DeleteStream(client.js.get(), stream.c_str(), nullptr, nullptr);
}

// The executor's work without the executor: fetch a batch of requests, async-publish one
// result per request, and ack the batch once its PubAcks are in (ack after the result is
// durable, as the executor does).
void BM_NatsExecutorLoop(benchmark::State& state) {
  const int64_t n = Count(100'000, 5'000);
  std::string error;
  NatsClient client;
  const std::string requests = NatsName("requests");
  const std::string results = NatsName("results");
  if (!NatsConnect(&client, &error) || !NatsCreateStream(client.js.get(), requests, &error) ||
      !NatsCreateStream(client.js.get(), results, &error) ||
      !NatsCreateConsumer(client.js.get(), requests, &error)) {
    return state.SkipWithError(error.c_str());
  }
  const std::string request = absl::StrCat(R"({"id":"t1","type":"inject","input":{"data":{"payload":")",
                                           Payload(64), R"("}}})");
  if (!NatsPublishAll(client.js.get(), requests, request, n, false, &error)) {
    return state.SkipWithError(error.c_str());
  }
  const std::string result = R"({"task_id":"t1","type":"inject","status":"succeeded","output":{}})";
  NatsSubPtr sub = NatsPull(client.js.get(), requests, &error);
  if (!sub) return state.SkipWithError(error.c_str());
  for (auto _ : state) {
    CpuMeter cpu;
    cpu.Start();
    absl::Time start = absl::InfinitePast();
    int64_t done = 0;
    while (done < n) {
      natsMsgList list{};
      jsErrCode code = jsErrCode(0);
      natsStatus s = natsSubscription_Fetch(&list, sub.get(), 100, 1000, &code);
      if (s == NATS_TIMEOUT) continue;
      if (s != NATS_OK) return state.SkipWithError(NatsError("fetch", s).c_str());
      if (start == absl::InfinitePast()) start = absl::Now();
      if (!NatsPublishAll(client.js.get(), results, result, list.Count, false, &error)) {
        natsMsgList_Destroy(&list);
        return state.SkipWithError(error.c_str());
      }
      for (int k = 0; k < list.Count; ++k) natsMsg_Ack(list.Msgs[k], nullptr);
      done += list.Count;
      natsMsgList_Destroy(&list);
    }
    if (natsStatus s = natsConnection_FlushTimeout(client.conn.get(), 10'000); s != NATS_OK) {
      return state.SkipWithError(NatsError("flush of acks", s).c_str());
    }
    const absl::Duration wall = absl::Now() - start;
    cpu.Stop();
    Report(state, wall, n, 0, cpu);
  }
  sub.reset();
  js_DeleteStream(client.js.get(), requests.c_str(), nullptr, nullptr);
  js_DeleteStream(client.js.get(), results.c_str(), nullptr, nullptr);
}

#endif  // RAW_BENCH_HAS_NATS

void RegisterAll() {
  const BenchFlags& flags = Flags();
  std::vector<int64_t> sizes = {64, 1024, 16384};
  if (flags.quick) sizes.pop_back();
  auto configure = [](benchmark::internal::Benchmark* b) {
    b->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
  };
  const bool redis = flags.backend == "redis";
#ifdef RAW_BENCH_HAS_NATS
  if (flags.backend == "nats") {
    for (int64_t size : sizes) {
      configure(benchmark::RegisterBenchmark(absl::StrCat("raw_publish/", size).c_str(),
                                             BM_NatsPublish, size));
      for (int consumers : {1, 4}) {
        configure(benchmark::RegisterBenchmark(
            absl::StrCat("raw_e2e/", size, "/c", consumers).c_str(), BM_NatsEndToEnd, size,
            consumers));
      }
    }
    configure(benchmark::RegisterBenchmark("raw_executor_noop/64", BM_NatsExecutorLoop));
    return;
  }
#endif
  if (!redis && flags.backend != "kafka") {
    std::fprintf(stderr, "raw_bench: --backend must be redis, kafka or nats (when built)\n");
    std::exit(2);
  }
  for (int64_t size : sizes) {
    configure(benchmark::RegisterBenchmark(absl::StrCat("raw_publish/", size).c_str(),
                                           redis ? BM_RedisPublish : BM_KafkaPublish, size));
    for (int consumers : {1, 4}) {
      configure(benchmark::RegisterBenchmark(absl::StrCat("raw_e2e/", size, "/c", consumers).c_str(),
                                             redis ? BM_RedisEndToEnd : BM_KafkaEndToEnd, size,
                                             consumers));
    }
  }
  if (redis) {
    configure(benchmark::RegisterBenchmark("raw_executor_noop/64", BM_RedisExecutorLoop));
  }
}

}  // namespace
}  // namespace eventbus::bench

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  eventbus::bench::ParseFlags(argc, argv);
  eventbus::bench::RegisterAll();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
