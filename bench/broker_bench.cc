// Our side of the benchmark matrix: the library used as an outside program uses it (a backend
// from the registry, the executor library with the built-in handlers), on the backend named by
// --backend. bench/run.py starts the servers, runs each benchmark in a process of its own (so
// peak RSS is per row) and puts the figures next to the raw-client baselines (raw_bench) and
// the peers. Every benchmark runs once (Iterations(1)) over a fixed number of items and reports
// wall-clock time (manual time), never the timing thread's CPU time.
//
// Names: <scenario>/<payload bytes>[/c<consumers>]; scenarios publish, e2e, latency_5k,
// executor_noop, executor_call_100ms, executor_call_1s_1000 (the last one not under --quick).

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bench_support.h"
#include "benchmark/benchmark.h"
#include "eventbus/event.h"
#include "eventbus/event_stream.h"
#include "eventbus/executor/builtin_handlers.h"
#include "eventbus/executor/executor.h"
#include "eventbus/executor/handler.h"
#include "eventbus/executor/task.h"
#include "eventbus/memory/memory_event_stream.h"
#include "eventbus/registry.h"
#ifdef EVENTBUS_BENCH_HAS_REDIS
#include "eventbus/redis/redis_event_stream.h"
#endif
#ifdef EVENTBUS_BENCH_HAS_KAFKA
#include "eventbus/kafka/kafka_event_stream.h"
#endif
#ifdef EVENTBUS_BENCH_HAS_NATS
#include "eventbus/nats/nats_event_stream.h"
#endif

namespace eventbus::bench {
namespace {

constexpr int64_t kMiB = int64_t{1} << 20;

std::unique_ptr<EventStream> Connect(benchmark::State& state) {
  const BenchFlags& flags = Flags();
  BackendConfig config;
  if (flags.backend == "redis") config.url = flags.redis_url;
  if (flags.backend == "kafka") config.url = flags.kafka_brokers;
  if (flags.backend == "nats") config.url = flags.nats_url;
  auto stream = BackendRegistry::Global().Create(flags.backend, config);
  if (!stream.ok()) {
    state.SkipWithError(absl::StrCat("connect: ", stream.status().ToString()).c_str());
    return nullptr;
  }
  return *std::move(stream);
}

std::string UniqueName(absl::string_view scenario) {
  return absl::StrCat("bench.", scenario, ".", NowNanos());
}

// Publish, retrying while the backend's queue is full (back-pressure, not a failure) for up to
// 30 s; a bound that never frees up (memory's retention limits) is an error.
absl::Status PublishWithBackPressure(EventStream& stream, absl::string_view name, Event event,
                                     PublishCallback done) {
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (true) {
    absl::Status status = stream.Publish(name, event, done);
    if (!absl::IsResourceExhausted(status) || absl::Now() > deadline) return status;
    absl::SleepFor(absl::Microseconds(200));
  }
}

// Payload bytes one run may put into the backend: the 16 KiB rows publish fewer events, so
// they fit the broker's memory and the memory backend's 256 MiB retention bound.
int64_t ByteBudget() { return Flags().quick ? 32 * kMiB : 128 * kMiB; }

// A publish callback that counts failures and remembers the first one.
struct PublishOutcomes {
  std::atomic<int64_t> failed{0};
  std::mutex mu;
  std::string first_error;
  PublishCallback Callback() {
    return [this](absl::StatusOr<PublishReceipt> receipt) {
      if (receipt.ok()) return;
      if (failed.fetch_add(1) == 0) {
        std::lock_guard lock(mu);
        first_error = receipt.status().ToString();
      }
    };
  }
};

void BM_Publish(benchmark::State& state, int64_t size) {
  const int64_t n = CountForSize(Count(200'000, 20'000), size, ByteBudget());
  auto stream = Connect(state);
  if (!stream) return;
  const std::string name = UniqueName("publish");
  const Event proto = MakeEvent("bench.event", "/bench", Payload(size));
  // The first publish creates the stream / topic: not what is measured.
  if (auto warm = stream->PublishAndWait(name, proto); !warm.ok()) {
    state.SkipWithError(absl::StrCat("warm-up: ", warm.status().ToString()).c_str());
    return;
  }
  PublishOutcomes outcomes;
  for (auto _ : state) {
    CpuMeter cpu;
    cpu.Start();
    const absl::Time start = absl::Now();
    for (int64_t i = 0; i < n; ++i) {
      // Distinct ids, as real events have: NATS drops a repeated id (Nats-Msg-Id) as a duplicate.
      Event event = proto;
      event.set_id(NewEventId());
      absl::Status status =
          PublishWithBackPressure(*stream, name, std::move(event), outcomes.Callback());
      if (!status.ok()) {
        state.SkipWithError(absl::StrCat("publish: ", status.ToString()).c_str());
        return;
      }
    }
    if (absl::Status flushed = stream->Flush(absl::Seconds(120)); !flushed.ok()) {
      state.SkipWithError(absl::StrCat("flush: ", flushed.ToString()).c_str());
      return;
    }
    const absl::Duration wall = absl::Now() - start;
    cpu.Stop();
    if (outcomes.failed > 0) {
      state.SkipWithError(absl::StrCat(outcomes.failed.load(), " publishes failed, first: ",
                                       outcomes.first_error).c_str());
      return;
    }
    Report(state, wall, n, n * size, cpu);
  }
}

// Consumers of one group that fetch up to 100 and ack each, recording publish->ack latency.
class ConsumerGroup {
 public:
  ConsumerGroup(EventStream& stream, const std::string& name, int consumers,
                LatencyRecorder* latency)
      : latency_(latency) {
    for (int i = 0; i < consumers; ++i) {
      auto sub = stream.Subscribe(
          {.stream = name, .group = "bench", .consumer = absl::StrCat("c", i)});
      if (!sub.ok()) {
        error_ = absl::StrCat("subscribe: ", sub.status().ToString());
        return;
      }
      subs_.push_back(*std::move(sub));
    }
    for (size_t i = 0; i < subs_.size(); ++i) {
      threads_.emplace_back([this, i] { Run(subs_[i].get(), static_cast<int>(i)); });
    }
  }
  ~ConsumerGroup() { Stop(); }

  // Waits until `n` were acked in total; false after `timeout`.
  bool AwaitAcked(int64_t n, absl::Duration timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout),
                        [&] { return acked_ >= n || !error_.empty(); }) &&
           error_.empty();
  }
  void Stop() {
    stop_ = true;
    for (auto& t : threads_) t.join();
    threads_.clear();
    for (auto& sub : subs_) (void)sub->Close();
  }
  std::string error() {
    std::lock_guard lock(mu_);
    return error_;
  }
  int64_t acked() {
    std::lock_guard lock(mu_);
    return acked_;
  }
  // Consumers that have acked at least one event (were handed work).
  int active() {
    std::lock_guard lock(mu_);
    return static_cast<int>(active_.size());
  }

 private:
  void Run(Subscription* sub, int index) {
    while (!stop_) {
      auto batch = sub->Fetch(100, absl::Milliseconds(100));
      if (!batch.ok()) {
        if (absl::IsUnavailable(batch.status())) continue;
        Fail(absl::StrCat("fetch: ", batch.status().ToString()));
        return;
      }
      // AckAsync: the backend batches the acks (one XACK per batch on Redis), so the
      // consumer thread never waits for a round trip per event. Counted when acknowledged;
      // latency is publish -> ack confirmed.
      for (const Delivery& delivery : *batch) {
        const absl::Time published = EventTime(delivery.event);
        const bool timed = latency_ != nullptr && delivery.event.type() == "bench.event";
        sub->AckAsync(delivery, [this, index, published, timed](absl::Status acked) {
          if (!acked.ok()) {
            Fail(absl::StrCat("ack: ", acked.ToString()));
            return;
          }
          if (timed) latency_->Add(absl::Now() - published);
          std::lock_guard lock(mu_);
          ++acked_;
          active_.insert(index);
          cv_.notify_all();
        });
      }
    }
  }
  void Fail(std::string error) {
    std::lock_guard lock(mu_);
    if (error_.empty()) error_ = std::move(error);
    cv_.notify_all();
  }

  LatencyRecorder* latency_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t acked_ = 0;
  std::set<int> active_;
  std::string error_;
  std::vector<std::unique_ptr<Subscription>> subs_;
  std::vector<std::thread> threads_;
};

// Publishes `n` events (stamped with the publish time) at `rate` per second (0 = as fast as
// possible), then flushes.
absl::Status PublishStamped(EventStream& stream, const std::string& name, const Event& proto,
                            int64_t n, double rate, PublishOutcomes& outcomes) {
  const absl::Time start = absl::Now();
  for (int64_t i = 0; i < n; ++i) {
    if (rate > 0) {
      const absl::Time due = start + absl::Seconds(static_cast<double>(i) / rate);
      const absl::Duration ahead = due - absl::Now();
      if (ahead > absl::ZeroDuration()) absl::SleepFor(ahead);
    }
    Event event = proto;
    event.set_id(NewEventId());  // distinct, as in BM_Publish
    SetEventTime(event, absl::Now());
    if (absl::Status s = PublishWithBackPressure(stream, name, std::move(event), outcomes.Callback());
        !s.ok()) {
      return s;
    }
  }
  return stream.Flush(absl::Seconds(120));
}

void RunEndToEnd(benchmark::State& state, int64_t n, int64_t size, int consumers, double rate) {
  auto stream = Connect(state);
  if (!stream) return;
  const std::string name = UniqueName("e2e");
  LatencyRecorder latency(static_cast<size_t>(n));
  // Warm-up, not measured: keyed events trickle in until every consumer that can get work has
  // some (a Kafka group has finished its rebalances; our topics have 3 partitions, so a fourth
  // consumer stays idle), then all of them are acked.
  ConsumerGroup group(*stream, name, consumers, &latency);
  const int want_active = Flags().backend == "kafka" ? std::min(consumers, 3) : consumers;
  PublishOutcomes outcomes;
  int64_t warmups = 0;
  const absl::Time warm_deadline = absl::Now() + absl::Seconds(60);
  while (group.active() < want_active && group.error().empty() && absl::Now() < warm_deadline) {
    Event warm = MakeEvent("bench.warmup", "/bench", "w");
    warm.set_key(NewEventId());
    if (absl::Status s = stream->Publish(name, std::move(warm), outcomes.Callback()); !s.ok()) {
      state.SkipWithError(absl::StrCat("warm-up: ", s.ToString()).c_str());
      return;
    }
    ++warmups;
    absl::SleepFor(absl::Milliseconds(20));
  }
  if (!stream->Flush(absl::Seconds(60)).ok() || !group.AwaitAcked(warmups, absl::Seconds(60))) {
    state.SkipWithError(absl::StrCat("warm-up events never acked ", group.error()).c_str());
    return;
  }
  const Event proto = MakeEvent("bench.event", "/bench", Payload(size));
  for (auto _ : state) {
    CpuMeter cpu;
    cpu.Start();
    const absl::Time start = absl::Now();
    absl::Status published = PublishStamped(*stream, name, proto, n, rate, outcomes);
    if (!published.ok()) {
      state.SkipWithError(absl::StrCat("publish: ", published.ToString()).c_str());
      return;
    }
    if (!group.AwaitAcked(n + warmups, absl::Seconds(120))) {
      state.SkipWithError(absl::StrCat("acked ", group.acked() - warmups, " of ", n, " ",
                                       group.error()).c_str());
      return;
    }
    const absl::Duration wall = absl::Now() - start;
    cpu.Stop();
    if (outcomes.failed > 0) {
      state.SkipWithError(absl::StrCat(outcomes.failed.load(), " publishes failed, first: ",
                                       outcomes.first_error).c_str());
      return;
    }
    Report(state, wall, n, n * size, cpu, &latency);
  }
  group.Stop();
}

void BM_EndToEnd(benchmark::State& state, int64_t size, int consumers) {
  const int64_t n = CountForSize(Count(100'000, 10'000), size, ByteBudget());
  RunEndToEnd(state, n, size, consumers, 0);
}

// A steady 5,000 events/s and one consumer: the latency a lightly loaded system sees.
void BM_Latency5k(benchmark::State& state) {
  const double rate = 5000;
  const int64_t n = Count(50'000, 10'000);  // 10 s, or 2 s under --quick
  RunEndToEnd(state, n, 64, 1, rate);
}

// Counts results and tells when the executor holds nothing any more.
class CountingMetrics final : public executor::ExecutorMetrics {
 public:
  void ResultPublished(absl::string_view status) override {
    std::lock_guard lock(mu_);
    ++results_;
    if (status != "succeeded") ++failed_;
    cv_.notify_all();
  }
  void InFlightChanged(int in_flight) override {
    std::lock_guard lock(mu_);
    if (in_flight > 0 && first_fetch_ == absl::InfinitePast()) first_fetch_ = absl::Now();
    in_flight_ = in_flight;
    cv_.notify_all();
  }
  void TaskDeadLettered(absl::string_view) override {
    std::lock_guard lock(mu_);
    ++dead_lettered_;
    cv_.notify_all();
  }
  // Waits until `n` results are out and nothing is held (so every request was acked).
  bool AwaitDone(int64_t n, absl::Duration timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout), [&] {
      return (results_ >= n && in_flight_ == 0) || dead_lettered_ > 0;
    }) && dead_lettered_ == 0;
  }
  absl::Time first_fetch() {
    std::lock_guard lock(mu_);
    return first_fetch_;
  }
  std::string Describe() {
    std::lock_guard lock(mu_);
    return absl::StrCat(results_, " results (", failed_, " failed), ", dead_lettered_,
                        " dead-lettered, ", in_flight_, " in flight");
  }
  int64_t failed() {
    std::lock_guard lock(mu_);
    return failed_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t results_ = 0, failed_ = 0, dead_lettered_ = 0;
  int in_flight_ = 0;
  absl::Time first_fetch_ = absl::InfinitePast();
};

// Pre-loads `n` requests of `input`'s type, runs the executor until every result is out and
// every request acked. Time is counted from the first fetch (a Kafka group join is not work).
void RunExecutor(benchmark::State& state, int64_t n, const std::string& type,
                 const nlohmann::json& input, int concurrency, bool count_threads) {
  auto stream = Connect(state);
  if (!stream) return;
  const std::string requests = UniqueName("requests");
  PublishOutcomes outcomes;
  for (int64_t i = 0; i < n; ++i) {
    executor::TaskRequest request;
    request.id = absl::StrCat("t", i);
    request.type = type;
    request.input = std::make_shared<const nlohmann::json>(input);
    absl::Status s = PublishWithBackPressure(
        *stream, requests, executor::MakeTaskRequestEvent(request, "/bench"), outcomes.Callback());
    if (!s.ok()) {
      state.SkipWithError(absl::StrCat("pre-load: ", s.ToString()).c_str());
      return;
    }
  }
  if (absl::Status s = stream->Flush(absl::Seconds(120)); !s.ok() || outcomes.failed > 0) {
    state.SkipWithError(absl::StrCat("pre-load flush: ", s.ToString(), " ", outcomes.first_error).c_str());
    return;
  }
  executor::HandlerRegistry handlers;
  if (absl::Status s = executor::RegisterBuiltinHandlers(handlers); !s.ok()) {
    state.SkipWithError(s.ToString().c_str());
    return;
  }
  if (handlers.Find(type) == nullptr) {
    state.SkipWithError(absl::StrCat("no handler for ", type, " in this build").c_str());
    return;
  }
  CountingMetrics metrics;
  executor::ExecutorOptions options;
  options.request_stream = requests;
  options.result_stream = UniqueName("results");
  options.consumer_name = "bench-1";
  options.concurrency = concurrency;
  options.fetch_batch = concurrency;
  options.reclaim_enabled = false;
  const int threads_before = ThreadCount();
  std::atomic<int> max_threads{threads_before};
  for (auto _ : state) {
    CpuMeter cpu;
    cpu.Start();
    executor::Executor executor(stream.get(), &handlers, options, {.metrics = &metrics});
    if (absl::Status s = executor.Start(); !s.ok()) {
      state.SkipWithError(absl::StrCat("start: ", s.ToString()).c_str());
      return;
    }
    std::atomic<bool> sampling{count_threads};
    std::thread sampler;
    if (count_threads) {
      sampler = std::thread([&] {
        while (sampling) {
          int now = ThreadCount();
          if (now > max_threads) max_threads = now;
          absl::SleepFor(absl::Milliseconds(20));
        }
      });
    }
    const bool done = metrics.AwaitDone(n, absl::Seconds(300));
    const absl::Time end = absl::Now();
    sampling = false;
    if (sampler.joinable()) sampler.join();
    cpu.Stop();
    executor.Shutdown();
    if (!done || metrics.failed() > 0) {
      state.SkipWithError(absl::StrCat("executor: ", metrics.Describe(), " of ", n).c_str());
      return;
    }
    Report(state, end - metrics.first_fetch(), n, 0, cpu);
    state.counters["concurrency"] = concurrency;
    if (count_threads) state.counters["threads_added"] = max_threads - threads_before;
  }
}

void BM_ExecutorNoop(benchmark::State& state) {
  const int64_t n = Count(100'000, 5'000);
  nlohmann::json input = {{"data", {{"payload", Payload(64)}}}};
  RunExecutor(state, n, "inject", input, Flags().executor_concurrency, false);
}

void BM_ExecutorCall(benchmark::State& state, absl::Duration delay, int concurrency, int64_t full,
                     int64_t quick) {
  RaiseFileLimit();
  DelayedHttpServer server(delay);
  nlohmann::json input = {{"url", server.url()}, {"method", "GET"}};
  RunExecutor(state, Count(full, quick), "call", input, concurrency, true);
  state.counters["http_requests"] = static_cast<double>(server.requests());
}

void RegisterAll() {
  const BenchFlags& flags = Flags();
  std::vector<int64_t> sizes = {64, 1024, 16384};
  if (flags.quick) sizes.pop_back();
  auto configure = [](benchmark::internal::Benchmark* b) {
    b->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
  };
  for (int64_t size : sizes) {
    configure(benchmark::RegisterBenchmark(absl::StrCat("publish/", size).c_str(), BM_Publish, size));
    for (int consumers : {1, 4}) {
      configure(benchmark::RegisterBenchmark(absl::StrCat("e2e/", size, "/c", consumers).c_str(),
                                             BM_EndToEnd, size, consumers));
    }
  }
  if (flags.backend != "memory") {
    configure(benchmark::RegisterBenchmark("latency_5k/64", BM_Latency5k));
  }
  configure(benchmark::RegisterBenchmark("executor_noop/64", BM_ExecutorNoop));
  if (executor::HasCallAndSetHandlers()) {
    configure(benchmark::RegisterBenchmark("executor_call_100ms/0", [](benchmark::State& s) {
      BM_ExecutorCall(s, absl::Milliseconds(100), 200, 10'000, 1'000);
    }));
    if (!flags.quick) {
      configure(benchmark::RegisterBenchmark("executor_call_1s_1000/0", [](benchmark::State& s) {
        BM_ExecutorCall(s, absl::Seconds(1), 1000, 10'000, 2'000);
      }));
    }
  }
}

absl::Status RegisterBackends() {
  if (absl::Status s = memory::RegisterMemoryBackend(); !s.ok()) return s;
#ifdef EVENTBUS_BENCH_HAS_REDIS
  if (absl::Status s = redis::RegisterRedisBackend(); !s.ok()) return s;
#endif
#ifdef EVENTBUS_BENCH_HAS_KAFKA
  if (absl::Status s = kafka::RegisterKafkaBackend(); !s.ok()) return s;
#endif
#ifdef EVENTBUS_BENCH_HAS_NATS
  if (absl::Status s = nats::RegisterNatsBackend(); !s.ok()) return s;
#endif
  return absl::OkStatus();
}

}  // namespace
}  // namespace eventbus::bench

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  eventbus::bench::ParseFlags(argc, argv);
  if (absl::Status s = eventbus::bench::RegisterBackends(); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  eventbus::bench::RegisterAll();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
