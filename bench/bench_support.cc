#include "bench_support.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include <boost/asio.hpp>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace eventbus::bench {
namespace {

BenchFlags& MutableFlags() {
  static BenchFlags* flags = new BenchFlags();
  return *flags;
}

bool TakeValue(absl::string_view arg, absl::string_view name, std::string* value) {
  const std::string prefix = absl::StrCat("--", name, "=");
  if (!absl::StartsWith(arg, prefix)) return false;
  *value = std::string(arg.substr(prefix.size()));
  return true;
}

[[noreturn]] void Usage(absl::string_view bad) {
  std::fprintf(stderr,
               "unknown or malformed flag: %s\n"
               "flags: --backend=memory|redis|kafka|nats --redis_url=URL --kafka_brokers=HOST:PORT "
               "--nats_url=URL "
               "--server_pid=PID --quick --scale=F --executor_concurrency=N "
               "plus the --benchmark_* flags\n",
               std::string(bad).c_str());
  std::exit(2);
}

}  // namespace

BenchFlags ParseFlags(int argc, char** argv) {
  BenchFlags& flags = MutableFlags();
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    std::string value;
    if (arg == "--quick") {
      flags.quick = true;
    } else if (TakeValue(arg, "backend", &flags.backend) ||
               TakeValue(arg, "redis_url", &flags.redis_url) ||
               TakeValue(arg, "kafka_brokers", &flags.kafka_brokers) ||
               TakeValue(arg, "nats_url", &flags.nats_url)) {
    } else if (TakeValue(arg, "server_pid", &value)) {
      int pid = 0;
      if (!absl::SimpleAtoi(value, &pid)) Usage(arg);
      flags.server_pid = pid;
    } else if (TakeValue(arg, "scale", &value)) {
      if (!absl::SimpleAtod(value, &flags.scale) || flags.scale <= 0) Usage(arg);
    } else if (TakeValue(arg, "executor_concurrency", &value)) {
      if (!absl::SimpleAtoi(value, &flags.executor_concurrency) || flags.executor_concurrency < 1)
        Usage(arg);
    } else {
      Usage(arg);
    }
  }
  return flags;
}

const BenchFlags& Flags() { return MutableFlags(); }

int64_t Count(int64_t full, int64_t quick) {
  const BenchFlags& flags = Flags();
  const double n = static_cast<double>(flags.quick ? quick : full) * flags.scale;
  return std::max<int64_t>(1, static_cast<int64_t>(n));
}

int64_t CountForSize(int64_t count, int64_t size, int64_t byte_budget) {
  return std::max<int64_t>(1, std::min<int64_t>(count, byte_budget / std::max<int64_t>(1, size)));
}

double SelfCpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& tv) { return tv.tv_sec + tv.tv_usec / 1e6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

double ProcCpuSeconds(pid_t pid) {
  if (pid <= 0) return 0;
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // The command name (field 2) may hold spaces; fields after its closing parenthesis are fixed.
  const size_t close = text.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream fields(text.substr(close + 2));
  std::string field;
  double utime = 0, stime = 0;
  for (int i = 3; i <= 15 && (fields >> field); ++i) {
    if (i == 14) utime = std::atof(field.c_str());
    if (i == 15) stime = std::atof(field.c_str());
  }
  return (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double PeakRssMb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024.0;  // ru_maxrss is in KiB on Linux
}

int ThreadCount() {
  DIR* dir = opendir("/proc/self/task");
  if (dir == nullptr) return 0;
  int n = 0;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ++n;
  }
  closedir(dir);
  return n;
}

void CpuMeter::Start() {
  self0_ = SelfCpuSeconds();
  server0_ = ProcCpuSeconds(Flags().server_pid);
}

void CpuMeter::Stop() {
  self_ = SelfCpuSeconds() - self0_;
  server_ = ProcCpuSeconds(Flags().server_pid) - server0_;
}

struct LatencyRecorder::Impl {
  std::mutex mu;
  std::vector<double> ms;
  bool sorted = false;
};

LatencyRecorder::LatencyRecorder(size_t expected) : impl_(std::make_shared<Impl>()) {
  impl_->ms.reserve(expected);
}

void LatencyRecorder::Add(absl::Duration latency) {
  std::lock_guard lock(impl_->mu);
  impl_->ms.push_back(absl::ToDoubleMilliseconds(latency));
  impl_->sorted = false;
}

double LatencyRecorder::PercentileMs(double q) {
  std::lock_guard lock(impl_->mu);
  if (impl_->ms.empty()) return 0;
  if (!impl_->sorted) {
    std::sort(impl_->ms.begin(), impl_->ms.end());
    impl_->sorted = true;
  }
  const size_t index = std::min(impl_->ms.size() - 1,
                                static_cast<size_t>(q * static_cast<double>(impl_->ms.size())));
  return impl_->ms[index];
}

size_t LatencyRecorder::size() const {
  std::lock_guard lock(impl_->mu);
  return impl_->ms.size();
}

void Report(benchmark::State& state, absl::Duration wall, int64_t items, int64_t bytes,
            const CpuMeter& cpu, LatencyRecorder* latency) {
  state.SetIterationTime(absl::ToDoubleSeconds(wall));
  state.SetItemsProcessed(items);
  state.SetBytesProcessed(bytes);
  const double per_1000 = items > 0 ? 1000.0 / static_cast<double>(items) : 0;
  state.counters["cpu_s_per_1000"] = cpu.self_seconds() * per_1000;
  state.counters["server_cpu_s_per_1000"] = cpu.server_seconds() * per_1000;
  state.counters["rss_mb"] = PeakRssMb();
  state.counters["count"] = static_cast<double>(items);
  state.counters["wall_s"] = absl::ToDoubleSeconds(wall);
  if (latency != nullptr && latency->size() > 0) {
    state.counters["p50_ms"] = latency->PercentileMs(0.50);
    state.counters["p99_ms"] = latency->PercentileMs(0.99);
  }
}

// One connection: read a request head, wait `delay`, answer, repeat (keep-alive).
struct DelayedHttpServer::Impl {
  explicit Impl(absl::Duration delay)
      : delay(absl::ToChronoMilliseconds(delay)),
        acceptor(io, boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), 0)) {
    acceptor.listen(4096);
    Accept();
    thread = std::thread([this] { io.run(); });
  }
  ~Impl() {
    io.stop();
    thread.join();
  }

  struct Session : std::enable_shared_from_this<Session> {
    Session(Impl* server, boost::asio::ip::tcp::socket socket)
        : server(server), socket(std::move(socket)), timer(server->io) {}
    void Read() {
      boost::asio::async_read_until(
          socket, buffer, "\r\n\r\n",
          [self = shared_from_this()](boost::system::error_code ec, size_t n) {
            if (ec) return;
            // GET requests only (the `call` rows send no body).
            self->buffer.consume(n);
            self->timer.expires_after(self->server->delay);
            self->timer.async_wait([self](boost::system::error_code ec) {
              if (ec) return;
              self->Answer();
            });
          });
    }
    void Answer() {
      static const std::string kResponse =
          "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n"
          "Connection: keep-alive\r\n\r\n{\"ok\":true}";
      server->requests.fetch_add(1, std::memory_order_relaxed);
      boost::asio::async_write(socket, boost::asio::buffer(kResponse),
                               [self = shared_from_this()](boost::system::error_code ec, size_t) {
                                 if (!ec) self->Read();
                               });
    }
    Impl* server;
    boost::asio::ip::tcp::socket socket;
    boost::asio::steady_timer timer;
    boost::asio::streambuf buffer;
  };

  void Accept() {
    acceptor.async_accept([this](boost::system::error_code ec, boost::asio::ip::tcp::socket s) {
      if (!ec) {
        s.set_option(boost::asio::ip::tcp::no_delay(true));
        std::make_shared<Session>(this, std::move(s))->Read();
      }
      Accept();
    });
  }

  std::chrono::milliseconds delay;
  boost::asio::io_context io;
  boost::asio::ip::tcp::acceptor acceptor;
  std::atomic<int64_t> requests{0};
  std::thread thread;
};

DelayedHttpServer::DelayedHttpServer(absl::Duration delay)
    : impl_(std::make_unique<Impl>(delay)) {}
DelayedHttpServer::~DelayedHttpServer() = default;
int DelayedHttpServer::port() const { return impl_->acceptor.local_endpoint().port(); }
int64_t DelayedHttpServer::requests() const { return impl_->requests.load(); }
std::string DelayedHttpServer::url() const {
  return absl::StrCat("http://127.0.0.1:", port(), "/delay");
}

void RaiseFileLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
}

std::string Payload(int64_t size) { return std::string(static_cast<size_t>(size), 'x'); }

int64_t NowNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace eventbus::bench
