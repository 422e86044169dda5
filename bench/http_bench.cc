// http_bench: the HTTP rows of the benchmark matrix (bench/run.py's http_*). A closed-loop
// HTTP/1.1 load generator for the executor's task API: N keep-alive connections, each sending
// its next request as soon as it has read the previous reply, a fixed number of requests in
// all, after a warm-up that is not measured. It prints one JSON line: requests/s, tasks/s
// (accepted tasks: 202s for POST /v1/tasks, the reply's "accepted" for POST /v1/tasks:batch;
// 200s for GET /healthz, the HTTP layer's own ceiling), p50/p99 latency, the statuses seen,
// and CPU per 1000 tasks of this process, of the service (--server_pid) and of its broker
// (--broker_pid), from /proc/<pid>/stat.
//
// Why not wrk (Debian 12 has 4.1.0): wrk runs for a duration, not a count; it reports
// non-2xx/3xx replies as one number, not by status; and checking a batch reply's "accepted"
// needs a Lua response() hook, which slows every reply. A fixed count also keeps the smoke run
// tiny and exact.
//
// Each thread runs its own io_context with its share of the connections (no locks on the hot
// path); the only shared state is the counter that hands out requests.
//
//   http_bench --port=8080 --scenario=submit --connections=32 --requests=100000
//   http_bench --port=8080 --scenario=batch --batch_size=1000 --connections=4 --requests=200

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio.hpp>
#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "bench_support.h"

namespace {

namespace net = boost::asio;
using tcp = net::ip::tcp;
using SteadyClock = std::chrono::steady_clock;

constexpr size_t kMaxHeaderBytes = 64 * 1024;

struct Options {
  std::string host = "127.0.0.1";
  int port = 0;
  // submit: POST /v1/tasks; batch: POST /v1/tasks:batch; healthz: GET /healthz (no handler
  // work: what the HTTP server itself costs).
  std::string scenario = "submit";
  int connections = 32;
  int threads = 1;
  int64_t requests = 10'000;
  int64_t warmup = -1;  // -1: a tenth of --requests, at least one per connection
  int batch_size = 1000;
  int payload_bytes = 64;
  pid_t server_pid = 0;  // the service
  pid_t broker_pid = 0;  // its broker (redis-server), when there is one
  std::string token;
  int timeout_s = 120;
};

[[noreturn]] void Usage(absl::string_view bad) {
  std::fprintf(stderr,
               "http_bench: unknown or malformed flag: %s\n"
               "flags: --port=N (required) --host=127.0.0.1 --scenario=submit|batch|healthz "
               "--connections=32 --threads=1 --requests=10000 --warmup=N --batch_size=1000 "
               "--payload_bytes=64 --server_pid=PID --broker_pid=PID --token=T --timeout_s=120\n",
               std::string(bad).c_str());
  std::exit(2);
}

Options ParseOptions(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    const size_t eq = arg.find('=');
    if (!absl::StartsWith(arg, "--") || eq == absl::string_view::npos) Usage(arg);
    const absl::string_view name = arg.substr(2, eq - 2), value = arg.substr(eq + 1);
    bool ok = true;
    if (name == "host") {
      o.host = std::string(value);
    } else if (name == "scenario") {
      o.scenario = std::string(value);
      ok = o.scenario == "submit" || o.scenario == "batch" || o.scenario == "healthz";
    } else if (name == "token") {
      o.token = std::string(value);
    } else if (name == "port") {
      ok = absl::SimpleAtoi(value, &o.port) && o.port > 0 && o.port < 65536;
    } else if (name == "connections") {
      ok = absl::SimpleAtoi(value, &o.connections) && o.connections > 0;
    } else if (name == "threads") {
      ok = absl::SimpleAtoi(value, &o.threads) && o.threads > 0;
    } else if (name == "requests") {
      ok = absl::SimpleAtoi(value, &o.requests) && o.requests > 0;
    } else if (name == "warmup") {
      ok = absl::SimpleAtoi(value, &o.warmup) && o.warmup >= 0;
    } else if (name == "batch_size") {
      ok = absl::SimpleAtoi(value, &o.batch_size) && o.batch_size > 0;
    } else if (name == "payload_bytes") {
      ok = absl::SimpleAtoi(value, &o.payload_bytes) && o.payload_bytes >= 0;
    } else if (name == "server_pid") {
      ok = absl::SimpleAtoi(value, &o.server_pid) && o.server_pid > 0;
    } else if (name == "broker_pid") {
      ok = absl::SimpleAtoi(value, &o.broker_pid) && o.broker_pid > 0;
    } else if (name == "timeout_s") {
      ok = absl::SimpleAtoi(value, &o.timeout_s) && o.timeout_s > 0;
    } else {
      ok = false;
    }
    if (!ok) Usage(arg);
  }
  if (o.port == 0) Usage("--port is required");
  o.threads = std::min(o.threads, o.connections);
  if (o.warmup < 0) o.warmup = std::max<int64_t>(o.requests / 10, o.connections);
  return o;
}

// The whole request, header and body, built once and sent as is by every connection. Task ids
// are left to the service, so every submission is a new task.
std::string BuildRequest(const Options& o) {
  if (o.scenario == "healthz") {
    return absl::StrCat("GET /healthz HTTP/1.1\r\nHost: ", o.host, ":", o.port, "\r\n\r\n");
  }
  const std::string task = absl::StrCat(R"({"type":"inject","input":{"data":{"payload":")",
                                        eventbus::bench::Payload(o.payload_bytes), R"("}}})");
  std::string body;
  if (o.scenario == "submit") {
    body = task;
  } else {
    body.reserve((task.size() + 1) * o.batch_size + 2);
    body += '[';
    for (int i = 0; i < o.batch_size; ++i) {
      if (i > 0) body += ',';
      body += task;
    }
    body += ']';
  }
  std::string request = absl::StrCat(
      "POST ", o.scenario == "submit" ? "/v1/tasks" : "/v1/tasks:batch", " HTTP/1.1\r\nHost: ",
      o.host, ":", o.port, "\r\nContent-Type: application/json\r\nContent-Length: ", body.size(),
      "\r\n");
  if (!o.token.empty()) absl::StrAppend(&request, "Authorization: Bearer ", o.token, "\r\n");
  absl::StrAppend(&request, "\r\n", body);
  return request;
}

// One phase (warm-up or measured), shared by every thread.
struct Phase {
  std::atomic<int64_t> next{0};
  int64_t total = 0;
};

// What one thread saw; merged after the phase.
struct Tally {
  std::vector<double> latencies_ms;
  std::map<int, int64_t> statuses;
  int64_t completed = 0;
  int64_t accepted_tasks = 0;
  int64_t rejected_tasks = 0;
  int64_t transport_errors = 0;
  int64_t reconnects = 0;
  std::string first_error;

  void Error(std::string what) {
    ++transport_errors;
    if (first_error.empty()) first_error = std::move(what);
  }
};

class Worker;

// One keep-alive connection: write the request, read one reply (Content-Length framed), repeat.
class Connection {
 public:
  Connection(Worker* worker, net::io_context& io) : worker_(worker), socket_(io), buffer_(16384) {}

  bool Connect(const tcp::endpoint& endpoint, std::string* error) {
    boost::system::error_code ec;
    if (socket_.is_open()) socket_.close(ec);
    socket_.connect(endpoint, ec);
    if (!ec) socket_.set_option(tcp::no_delay(true), ec);
    if (ec) *error = absl::StrCat("connect to ", endpoint.address().to_string(), ":",
                                  endpoint.port(), ": ", ec.message());
    return !ec;
  }

  void Next();
  void Abort() {
    boost::system::error_code ignored;
    socket_.close(ignored);
  }
  bool broken() const { return broken_; }

 private:
  void Read();
  void Parse();
  void Complete(int status, absl::string_view body, bool close);
  void Fail(std::string what);

  Worker* const worker_;
  tcp::socket socket_;
  std::vector<char> buffer_;
  size_t used_ = 0;      // bytes of buffer_ holding the reply so far
  size_t scanned_ = 0;   // the header's end was searched for up to here
  size_t head_end_ = 0;  // just past the blank line; 0 while the header is incomplete
  size_t reply_end_ = 0;
  int status_ = 0;
  bool close_ = false;
  bool broken_ = false;
  SteadyClock::time_point sent_;
};

// One thread's io_context and connections.
class Worker {
 public:
  Worker(const Options& options, const std::string& request, const tcp::endpoint& endpoint)
      : options_(options), request_(request), endpoint_(endpoint), timer_(io_) {}

  bool Connect(int connections, std::string* error) {
    for (int i = 0; i < connections; ++i) {
      connections_.push_back(std::make_unique<Connection>(this, io_));
      if (!connections_.back()->Connect(endpoint_, error)) return false;
    }
    return true;
  }

  // Runs until `phase` has handed out every request and this thread's replies are in.
  Tally Run(Phase* phase, bool record) {
    phase_ = phase;
    tally_ = Tally{};
    if (record) tally_.latencies_ms.reserve(static_cast<size_t>(phase->total));
    record_ = record;
    timed_out_ = false;
    active_ = 0;
    for (auto& connection : connections_) {
      if (!connection->broken()) ++active_;
    }
    if (active_ == 0) {
      tally_.Error("every connection is broken");
      return tally_;
    }
    timer_.expires_after(std::chrono::seconds(options_.timeout_s));
    timer_.async_wait([this](boost::system::error_code ec) {
      if (ec) return;
      timed_out_ = true;
      tally_.Error(absl::StrCat("no end after --timeout_s=", options_.timeout_s));
      for (auto& connection : connections_) connection->Abort();
    });
    for (auto& connection : connections_) {
      if (!connection->broken()) connection->Next();
    }
    io_.restart();
    io_.run();
    return std::move(tally_);
  }

  bool Claim() { return phase_->next.fetch_add(1, std::memory_order_relaxed) < phase_->total; }
  // A connection has no more work (or broke): the last one ends the phase.
  void Idle() {
    if (--active_ == 0) timer_.cancel();
  }
  bool Reconnect(Connection* connection) {
    ++tally_.reconnects;
    std::string error;
    if (connection->Connect(endpoint_, &error)) return true;
    tally_.Error(error);
    return false;
  }

  const Options& options() const { return options_; }
  const std::string& request() const { return request_; }
  Tally& tally() { return tally_; }
  bool record() const { return record_; }
  bool timed_out() const { return timed_out_; }

 private:
  const Options& options_;
  const std::string& request_;
  const tcp::endpoint endpoint_;
  net::io_context io_{1};
  net::steady_timer timer_;
  std::vector<std::unique_ptr<Connection>> connections_;
  Phase* phase_ = nullptr;
  Tally tally_;
  bool record_ = false;
  bool timed_out_ = false;
  int active_ = 0;
};

void Connection::Next() {
  if (!worker_->Claim()) return worker_->Idle();
  sent_ = SteadyClock::now();
  net::async_write(socket_, net::buffer(worker_->request()),
                   [this](boost::system::error_code ec, size_t) {
                     if (ec) return Fail(absl::StrCat("write: ", ec.message()));
                     Read();
                   });
}

void Connection::Read() {
  if (buffer_.size() - used_ < 4096) buffer_.resize(std::max(buffer_.size() * 2, used_ + 16384));
  socket_.async_read_some(net::buffer(buffer_.data() + used_, buffer_.size() - used_),
                          [this](boost::system::error_code ec, size_t n) {
                            if (ec) {
                              return Fail(ec == net::error::eof
                                              ? std::string("the service closed the connection")
                                              : absl::StrCat("read: ", ec.message()));
                            }
                            used_ += n;
                            Parse();
                          });
}

void Connection::Parse() {
  const absl::string_view data(buffer_.data(), used_);
  if (head_end_ == 0) {
    const size_t from = scanned_ >= 3 ? scanned_ - 3 : 0;
    const size_t blank = data.find("\r\n\r\n", from);
    if (blank == absl::string_view::npos) {
      scanned_ = used_;
      if (used_ > kMaxHeaderBytes) return Fail("reply header larger than 64 KiB");
      return Read();
    }
    head_end_ = blank + 4;
    const absl::string_view head = data.substr(0, blank + 2);  // every line ends in \r\n
    if (!absl::StartsWith(head, "HTTP/1.") || head.size() < 12 ||
        !absl::SimpleAtoi(head.substr(9, 3), &status_)) {
      return Fail(absl::StrCat("not an HTTP reply: ", absl::CEscape(head.substr(0, 40))));
    }
    std::string lower = absl::AsciiStrToLower(head);
    const size_t length_at = lower.find("\r\ncontent-length:");
    uint64_t length = 0;
    if (length_at == std::string::npos) {
      return Fail("reply without Content-Length (chunked replies are not supported)");
    }
    const size_t value_at = length_at + 17;
    const size_t value_end = lower.find("\r\n", value_at);
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(
                              absl::string_view(lower).substr(value_at, value_end - value_at)),
                          &length)) {
      return Fail("malformed Content-Length");
    }
    close_ = lower.find("\r\nconnection: close\r\n") != std::string::npos;
    reply_end_ = head_end_ + length;
  }
  if (used_ < reply_end_) {
    if (buffer_.size() < reply_end_) buffer_.resize(reply_end_ + 4096);
    return Read();
  }
  Complete(status_, data.substr(head_end_, reply_end_ - head_end_), close_);
}

void Connection::Complete(int status, absl::string_view body, bool close) {
  Tally& tally = worker_->tally();
  if (worker_->record()) {
    tally.latencies_ms.push_back(
        std::chrono::duration<double, std::milli>(SteadyClock::now() - sent_).count());
  }
  ++tally.statuses[status];
  ++tally.completed;
  const Options& o = worker_->options();
  if (o.scenario != "batch") {
    if (status == (o.scenario == "submit" ? 202 : 200)) {
      ++tally.accepted_tasks;
    } else {
      ++tally.rejected_tasks;
    }
  } else {
    int64_t accepted = 0;
    const size_t at = body.rfind("\"accepted\":");
    if (status == 200 && at != absl::string_view::npos) {
      absl::string_view digits = body.substr(at + 11);
      digits = digits.substr(0, digits.find_first_not_of("0123456789"));
      if (!absl::SimpleAtoi(digits, &accepted)) accepted = 0;
    }
    tally.accepted_tasks += accepted;
    tally.rejected_tasks += o.batch_size - accepted;
  }
  // Closed loop: one request in flight per connection, so nothing follows the reply.
  const size_t rest = used_ - reply_end_;
  if (rest > 0) std::memmove(buffer_.data(), buffer_.data() + reply_end_, rest);
  used_ = rest;
  scanned_ = head_end_ = reply_end_ = 0;
  status_ = 0;
  close_ = false;
  if (close) {
    // A refusal (503 at the connection limit, an error) ends the connection: connect again.
    used_ = 0;
    if (!worker_->Reconnect(this)) {
      broken_ = true;
      return worker_->Idle();
    }
  }
  Next();
}

void Connection::Fail(std::string what) {
  broken_ = true;
  if (!worker_->timed_out()) worker_->tally().Error(std::move(what));
  Abort();
  worker_->Idle();
}

// Resident set size of `pid` (VmRSS, MiB), or 0.
double ProcRssMb(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, "VmRSS:")) {
      double kib = 0;
      absl::SimpleAtod(absl::StripAsciiWhitespace(absl::string_view(line).substr(6)), &kib);
      return kib / 1024.0;
    }
  }
  return 0;
}

double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  return sorted[std::min(sorted.size() - 1, static_cast<size_t>(q * sorted.size()))];
}

Tally RunPhase(std::vector<std::unique_ptr<Worker>>& workers, int64_t total, bool record) {
  Phase phase;
  phase.total = total;
  std::vector<Tally> tallies(workers.size());
  std::vector<std::thread> threads;
  for (size_t i = 1; i < workers.size(); ++i) {
    threads.emplace_back([&, i] { tallies[i] = workers[i]->Run(&phase, record); });
  }
  tallies[0] = workers[0]->Run(&phase, record);
  for (std::thread& thread : threads) thread.join();
  Tally all = std::move(tallies[0]);
  for (size_t i = 1; i < tallies.size(); ++i) {
    Tally& t = tallies[i];
    all.latencies_ms.insert(all.latencies_ms.end(), t.latencies_ms.begin(), t.latencies_ms.end());
    for (const auto& [status, n] : t.statuses) all.statuses[status] += n;
    all.completed += t.completed;
    all.accepted_tasks += t.accepted_tasks;
    all.rejected_tasks += t.rejected_tasks;
    all.transport_errors += t.transport_errors;
    all.reconnects += t.reconnects;
    if (all.first_error.empty()) all.first_error = t.first_error;
  }
  return all;
}

int Main(int argc, char** argv) {
  const Options o = ParseOptions(argc, argv);
  nlohmann::json out = {{"scenario", o.scenario}, {"connections", o.connections},
                        {"threads", o.threads},   {"requests", o.requests},
                        {"warmup", o.warmup},     {"payload_bytes", o.payload_bytes}};
  if (o.scenario == "batch") out["batch_size"] = o.batch_size;
  auto finish = [&out](const std::string& error) {
    if (!error.empty()) out["error"] = error;
    std::printf("%s\n", out.dump().c_str());
    return error.empty() ? 0 : 1;
  };
  eventbus::bench::RaiseFileLimit();
  boost::system::error_code ec;
  const auto address = net::ip::make_address(o.host, ec);
  if (ec) return finish(absl::StrCat("--host=", o.host, " is not an IP address"));
  const tcp::endpoint endpoint(address, static_cast<unsigned short>(o.port));
  const std::string request = BuildRequest(o);

  std::vector<std::unique_ptr<Worker>> workers;
  for (int t = 0; t < o.threads; ++t) {
    workers.push_back(std::make_unique<Worker>(o, request, endpoint));
    const int share = o.connections / o.threads + (t < o.connections % o.threads ? 1 : 0);
    std::string error;
    if (!workers.back()->Connect(share, &error)) return finish(error);
  }

  if (o.warmup > 0) {
    Tally warm = RunPhase(workers, o.warmup, /*record=*/false);
    if (warm.transport_errors > 0) return finish(absl::StrCat("warm-up: ", warm.first_error));
  }

  const double self0 = eventbus::bench::SelfCpuSeconds();
  const double server0 = eventbus::bench::ProcCpuSeconds(o.server_pid);
  const double broker0 = eventbus::bench::ProcCpuSeconds(o.broker_pid);
  const auto began = SteadyClock::now();
  Tally t = RunPhase(workers, o.requests, /*record=*/true);
  const double seconds = std::chrono::duration<double>(SteadyClock::now() - began).count();
  const double self_cpu = eventbus::bench::SelfCpuSeconds() - self0;
  const double server_cpu = eventbus::bench::ProcCpuSeconds(o.server_pid) - server0;
  const double broker_cpu = eventbus::bench::ProcCpuSeconds(o.broker_pid) - broker0;

  std::sort(t.latencies_ms.begin(), t.latencies_ms.end());
  nlohmann::json statuses = nlohmann::json::object();
  for (const auto& [status, n] : t.statuses) statuses[std::to_string(status)] = n;
  const double per_1000 = t.accepted_tasks > 0 ? 1000.0 / static_cast<double>(t.accepted_tasks) : 0;
  out["completed"] = t.completed;
  out["seconds"] = seconds;
  out["requests_per_s"] = static_cast<double>(t.completed) / seconds;
  out["tasks"] = t.accepted_tasks;
  out["tasks_per_s"] = static_cast<double>(t.accepted_tasks) / seconds;
  out["rejected_tasks"] = t.rejected_tasks;
  out["statuses"] = statuses;
  out["transport_errors"] = t.transport_errors;
  out["reconnects"] = t.reconnects;
  out["p50_ms"] = Percentile(t.latencies_ms, 0.50);
  out["p99_ms"] = Percentile(t.latencies_ms, 0.99);
  out["cpu_s_per_1000"] = self_cpu * per_1000;
  if (o.server_pid > 0) {
    out["server_cpu_s_per_1000"] = server_cpu * per_1000;
    out["server_cpu_utilisation"] = server_cpu / seconds;  // cores busy in the service
    out["server_rss_mb"] = ProcRssMb(o.server_pid);
  }
  if (o.broker_pid > 0) out["broker_cpu_s_per_1000"] = broker_cpu * per_1000;
  if (t.transport_errors > 0) return finish(t.first_error);
  if (t.completed < o.requests) {
    return finish(absl::StrCat(t.completed, " of ", o.requests, " requests answered"));
  }
  if (t.rejected_tasks > 0) {
    return finish(absl::StrCat(t.rejected_tasks, " tasks not accepted (statuses ",
                               statuses.dump(), ")"));
  }
  return finish("");
}

}  // namespace

int main(int argc, char** argv) { return Main(argc, argv); }
