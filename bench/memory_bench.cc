// Throughput of the memory backend against the simplest thing that could carry the same
// events: a mutex-guarded deque of envelopes. The ratio is what the contract's bookkeeping
// (groups, leases, delivery counts) costs.
#include <deque>
#include <mutex>
#include <string>

#include "benchmark/benchmark.h"
#include "eventbus/clock.h"
#include "eventbus/memory/memory_event_stream.h"

namespace {

eventbus::Event Payload(size_t bytes) {
  return eventbus::MakeEvent("bench.event", "/bench", std::string(bytes, 'x'));
}

void BM_Baseline_MutexDeque_PublishFetch(benchmark::State& state) {
  const eventbus::Event event = Payload(state.range(0));
  std::mutex mu;
  std::deque<eventbus::Event> queue;
  for (auto _ : state) {
    for (int i = 0; i < 100; ++i) {
      eventbus::Event copy = event;
      std::lock_guard lock(mu);
      queue.push_back(std::move(copy));
    }
    std::lock_guard lock(mu);
    while (!queue.empty()) {
      benchmark::DoNotOptimize(queue.front());
      queue.pop_front();
    }
  }
  state.SetItemsProcessed(state.iterations() * 100);
}
BENCHMARK(BM_Baseline_MutexDeque_PublishFetch)->Arg(64)->Arg(1024);

void BM_Memory_PublishFetchAck(benchmark::State& state) {
  const eventbus::Event event = Payload(state.range(0));
  auto stream = eventbus::memory::NewMemoryEventStream(eventbus::Clock::Real());
  auto sub = *stream->Subscribe({.stream = "bench", .group = "g", .consumer = "c"});
  for (auto _ : state) {
    for (int i = 0; i < 100; ++i) {
      if (!stream->Publish("bench", event).ok()) state.SkipWithError("publish failed");
    }
    auto batch = sub->Fetch(100, absl::ZeroDuration());
    for (const auto& delivery : *batch) {
      if (!sub->Ack(delivery).ok()) state.SkipWithError("ack failed");
    }
  }
  state.SetItemsProcessed(state.iterations() * 100);
}
BENCHMARK(BM_Memory_PublishFetchAck)->Arg(64)->Arg(1024);

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
