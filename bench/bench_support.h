#pragma once
// What the broker benchmarks (ours and the raw-client baselines) share: the flags the runner
// passes, process and server CPU accounting, latency percentiles, and a delayed HTTP server
// for the executor's I/O-bound rows. Benchmarks here measure wall-clock time (manual time);
// CPU is reported separately per 1000 items, for this process and for the broker when its pid
// is known.

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "benchmark/benchmark.h"

namespace eventbus::bench {

// Flags of our own, parsed after benchmark::Initialize removed its --benchmark_* flags.
struct BenchFlags {
  std::string backend = "memory";  // memory | redis | kafka | nats (broker_bench)
  std::string redis_url;           // redis://127.0.0.1:<port>
  std::string kafka_brokers;       // 127.0.0.1:<port>
  std::string nats_url;            // nats://127.0.0.1:<port>
  pid_t server_pid = 0;            // redis-server / Kafka JVM, for its CPU figure; 0 = unknown
  bool quick = false;              // smaller counts (the runner's --quick / --smoke)
  double scale = 1.0;              // multiplies every count (the runner's --smoke uses < 1)
  int executor_concurrency = 32;   // slots of the no-op executor rows
};

// Parses --backend=, --redis_url=, --kafka_brokers=, --nats_url=, --server_pid=, --quick, --scale=,
// --executor_concurrency=. Exits with a message on an unknown flag.
BenchFlags ParseFlags(int argc, char** argv);
const BenchFlags& Flags();  // after ParseFlags

// `full` scaled by --scale, or `quick` under --quick; never below 1.
int64_t Count(int64_t full, int64_t quick);

// Events per run for a payload of `size` bytes: `count` but at most `byte_budget` of payload,
// so the 16 KiB rows do not fill the broker's memory.
int64_t CountForSize(int64_t count, int64_t size, int64_t byte_budget);

// user + sys CPU seconds of this process so far.
double SelfCpuSeconds();
// utime + stime of `pid` from /proc/<pid>/stat (0 when unknown or unreadable).
double ProcCpuSeconds(pid_t pid);
// Peak resident set size of this process, in MiB.
double PeakRssMb();
// Threads of this process right now (/proc/self/task).
int ThreadCount();

// Measures CPU of this process and of the server between Start() and Stop().
class CpuMeter {
 public:
  void Start();
  void Stop();
  double self_seconds() const { return self_; }
  double server_seconds() const { return server_; }

 private:
  double self0_ = 0, server0_ = 0, self_ = 0, server_ = 0;
};

// Thread-safe collection of latencies.
class LatencyRecorder {
 public:
  explicit LatencyRecorder(size_t expected = 0);
  void Add(absl::Duration latency);
  // Milliseconds at quantile q in [0, 1]; 0 when empty. Sorts (call once the run is over).
  double PercentileMs(double q);
  size_t size() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

// Sets the figures the runner reads: items/s and bytes/s (from `items` and `bytes`), wall time,
// CPU per 1000 items (this process: cpu_s_per_1000; server: server_cpu_s_per_1000), peak RSS
// and, when `latency` is given and non-empty, p50_ms / p99_ms.
void Report(benchmark::State& state, absl::Duration wall, int64_t items, int64_t bytes,
            const CpuMeter& cpu, LatencyRecorder* latency = nullptr);

// An HTTP/1.1 server on 127.0.0.1 (free port) that answers every request with 200 and a small
// JSON body after `delay`, keeping connections alive. One Boost.Asio thread: a waiting request
// costs a timer, not a thread, so a thousand in flight are cheap.
class DelayedHttpServer {
 public:
  explicit DelayedHttpServer(absl::Duration delay);
  ~DelayedHttpServer();
  int port() const;
  int64_t requests() const;
  std::string url() const;  // http://127.0.0.1:<port>/delay

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Raises RLIMIT_NOFILE to its hard limit (a thousand HTTP connections in flight).
void RaiseFileLimit();

// A payload of `size` bytes (printable, so every wire format carries it as is).
std::string Payload(int64_t size);

// Wall-clock nanoseconds since the epoch, embedded in raw-client payloads for latency.
int64_t NowNanos();

}  // namespace eventbus::bench
