// Throughput of the memory backend against the simplest thing that could carry the same
// events: a mutex-guarded deque of envelopes (plus a condition variable when a consumer thread
// waits on it). The ratio is what the contract's bookkeeping (groups, leases, delivery counts,
// one owned Event per Delivery) costs.
//
// Every case reports items/s (events published, delivered and, for ours, acked). Cases with
// two threads measure real (wall-clock) time: CPU time of one thread says nothing about a
// pipeline whose two halves wait for each other.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "eventbus/clock.h"
#include "eventbus/memory/memory_event_stream.h"

namespace {

constexpr int kBatch = 100;
// How far the publisher thread may run ahead of the consumer thread (both for ours and the
// baseline), so the stream's retention bound never decides the figure.
constexpr int64_t kWindow = 100 * kBatch;

eventbus::Event Payload(size_t bytes) {
  return eventbus::MakeEvent("bench.event", "/bench", std::string(bytes, 'x'));
}

// Flow control shared by the publisher/consumer pairs: the publisher blocks (futex, no spin)
// while it is more than kWindow events ahead.
struct Window {
  std::atomic<int64_t> consumed{0};

  void WaitForRoom(int64_t published) {
    int64_t seen = consumed.load(std::memory_order_acquire);
    while (published - seen > kWindow) {
      consumed.wait(seen, std::memory_order_acquire);
      seen = consumed.load(std::memory_order_acquire);
    }
  }
  void Consumed(int64_t n) {
    consumed.fetch_add(n, std::memory_order_release);
    consumed.notify_one();
  }
};

// --- Single thread: publish a batch, fetch it, ack it. ---

void BM_Baseline_MutexDeque_PublishFetch(benchmark::State& state) {
  const eventbus::Event event = Payload(state.range(0));
  std::mutex mu;
  std::deque<eventbus::Event> queue;
  for (auto _ : state) {
    for (int i = 0; i < kBatch; ++i) {
      eventbus::Event copy = event;
      std::lock_guard lock(mu);
      queue.push_back(std::move(copy));
    }
    // A fetch hands the caller a batch it owns.
    std::vector<eventbus::Event> batch;
    batch.reserve(kBatch);
    {
      std::lock_guard lock(mu);
      while (!queue.empty() && batch.size() < kBatch) {
        batch.push_back(std::move(queue.front()));
        queue.pop_front();
      }
    }
    benchmark::DoNotOptimize(batch.data());
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
}
BENCHMARK(BM_Baseline_MutexDeque_PublishFetch)->Arg(64)->Arg(1024);

void BM_Memory_PublishFetchAck(benchmark::State& state) {
  const eventbus::Event event = Payload(state.range(0));
  auto stream = eventbus::memory::NewMemoryEventStream(eventbus::Clock::Real());
  auto sub = *stream->Subscribe({.stream = "bench", .group = "g", .consumer = "c"});
  for (auto _ : state) {
    for (int i = 0; i < kBatch; ++i) {
      if (!stream->Publish("bench", event).ok()) state.SkipWithError("publish failed");
    }
    auto batch = sub->Fetch(kBatch, absl::ZeroDuration());
    if (!batch.ok() || batch->size() != kBatch) state.SkipWithError("fetch failed");
    for (const auto& delivery : *batch) {
      if (!sub->Ack(delivery).ok()) state.SkipWithError("ack failed");
    }
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
}
BENCHMARK(BM_Memory_PublishFetchAck)->Arg(64)->Arg(1024);

// --- Two threads: thread 0 publishes, thread 1 fetches batches of up to 100 and acks. ---
// Google Benchmark runs both with the same iteration count and synchronises them at the start
// and end of the loop; per iteration the publisher sends kBatch events and the consumer takes
// kBatch (a fetch may return fewer; the surplus of one iteration counts for the next), so at
// the end everything published has been consumed. Items are counted by the consumer only.

struct BaselineQueue {
  std::mutex mu;
  std::condition_variable nonempty;
  std::deque<eventbus::Event> queue;  // guarded by mu
  int waiting = 0;                    // guarded by mu: notify only when a consumer waits
  Window window;
};
std::unique_ptr<BaselineQueue> baseline_queue;

void BM_Baseline_MutexDequeCv_PublisherConsumer(benchmark::State& state) {
  if (state.thread_index() == 0) {
    baseline_queue = std::make_unique<BaselineQueue>();
  }
  const eventbus::Event event = Payload(state.range(0));
  int64_t done = 0;
  for (auto _ : state) {
    BaselineQueue& q = *baseline_queue;
    if (state.thread_index() == 0) {
      for (int i = 0; i < kBatch; ++i) {
        eventbus::Event copy = event;
        std::lock_guard lock(q.mu);
        q.queue.push_back(std::move(copy));
        if (q.waiting > 0) q.nonempty.notify_one();
      }
      done += kBatch;
      q.window.WaitForRoom(done);
    } else {
      const int64_t target = done + kBatch;
      while (q.window.consumed.load(std::memory_order_relaxed) < target) {
        std::vector<eventbus::Event> batch;
        batch.reserve(kBatch);
        {
          std::unique_lock lock(q.mu);
          ++q.waiting;
          q.nonempty.wait(lock, [&] { return !q.queue.empty(); });
          --q.waiting;
          while (!q.queue.empty() && batch.size() < kBatch) {
            batch.push_back(std::move(q.queue.front()));
            q.queue.pop_front();
          }
        }
        benchmark::DoNotOptimize(batch.data());
        q.window.Consumed(static_cast<int64_t>(batch.size()));
      }
      done = target;
    }
  }
  // Both threads have left the loop (it ends on a barrier).
  if (state.thread_index() == 0) baseline_queue.reset();
  if (state.thread_index() == 1) state.SetItemsProcessed(state.iterations() * kBatch);
}
BENCHMARK(BM_Baseline_MutexDequeCv_PublisherConsumer)->Arg(64)->Threads(2)->UseRealTime();

struct MemoryPair {
  std::unique_ptr<eventbus::EventStream> stream;
  std::unique_ptr<eventbus::Subscription> sub;
  Window window;
};
std::unique_ptr<MemoryPair> memory_pair;

void RunMemoryPublisherConsumer(benchmark::State& state, absl::Duration ack_wait) {
  if (state.thread_index() == 0) {
    memory_pair = std::make_unique<MemoryPair>();
    memory_pair->stream = eventbus::memory::NewMemoryEventStream(eventbus::Clock::Real());
    memory_pair->sub = *memory_pair->stream->Subscribe(
        {.stream = "bench", .group = "g", .consumer = "c", .ack_wait = ack_wait});
  }
  const eventbus::Event event = Payload(state.range(0));
  int64_t done = 0;
  for (auto _ : state) {
    MemoryPair& p = *memory_pair;
    if (state.thread_index() == 0) {
      for (int i = 0; i < kBatch; ++i) {
        if (!p.stream->Publish("bench", event).ok()) state.SkipWithError("publish failed");
      }
      done += kBatch;
      p.window.WaitForRoom(done);
    } else {
      const int64_t target = done + kBatch;
      while (p.window.consumed.load(std::memory_order_relaxed) < target) {
        auto batch = p.sub->Fetch(kBatch, absl::Seconds(10));
        if (!batch.ok() || batch->empty()) {
          state.SkipWithError("fetch failed");
          break;
        }
        for (const auto& delivery : *batch) {
          if (!p.sub->Ack(delivery).ok()) state.SkipWithError("ack failed");
        }
        p.window.Consumed(static_cast<int64_t>(batch->size()));
      }
      done = target;
    }
  }
  // Both threads have left the loop; the stream goes before the real clock it listens to.
  if (state.thread_index() == 0) memory_pair.reset();
  if (state.thread_index() == 1) state.SetItemsProcessed(state.iterations() * kBatch);
}

void BM_Memory_PublisherConsumer(benchmark::State& state) {
  RunMemoryPublisherConsumer(state, absl::ZeroDuration());
}
BENCHMARK(BM_Memory_PublisherConsumer)->Arg(64)->Threads(2)->UseRealTime();

// The same with a lease per delivery (ack_wait), as the executor subscribes.
void BM_Memory_PublisherConsumer_AckWait(benchmark::State& state) {
  RunMemoryPublisherConsumer(state, absl::Minutes(5));
}
BENCHMARK(BM_Memory_PublisherConsumer_AckWait)->Arg(64)->Threads(2)->UseRealTime();

// Many deliveries in flight at once (a slow handler pool): the cost of the bookkeeping must
// not grow with what is pending.
void BM_Memory_FetchAckWithManyInFlight(benchmark::State& state) {
  const eventbus::Event event = Payload(64);
  auto stream = eventbus::memory::NewMemoryEventStream(eventbus::Clock::Real());
  auto sub = *stream->Subscribe(
      {.stream = "bench", .group = "g", .consumer = "c", .ack_wait = absl::Minutes(5)});
  const int in_flight = static_cast<int>(state.range(0));
  for (int i = 0; i < in_flight; ++i) (void)stream->Publish("bench", event);
  auto held = *sub->Fetch(in_flight, absl::ZeroDuration());
  for (auto _ : state) {
    (void)stream->Publish("bench", event);
    auto batch = sub->Fetch(1, absl::ZeroDuration());
    if (batch->size() != 1 || !sub->Ack((*batch)[0]).ok()) state.SkipWithError("fetch/ack failed");
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Memory_FetchAckWithManyInFlight)->Arg(10)->Arg(10000);

}  // namespace

BENCHMARK_MAIN();
