#include "eventbus/executor/jq_worker_pool.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <utility>

#include "absl/base/call_once.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "jq_wire.h"

namespace eventbus::executor {
namespace {

using SteadyClock = std::chrono::steady_clock;

constexpr char kWorkerName[] = "eventbus-jq-worker";
constexpr char kWorkerPathEnv[] = "EXECUTOR_JQ_WORKER";
// jq 1.6 frees nested values recursively: a cheap program nesting an array 300,000 deep needs
// tens of MiB of stack to free it (12 million levels were measured to pass on 512 MiB). The
// worker evaluates on its main thread, whose stack grows up to RLIMIT_STACK.
constexpr rlim_t kWorkerStackBytes = rlim_t{512} << 20;
// How often a wait checks the caller's cancellation.
constexpr auto kCancelPoll = std::chrono::milliseconds(10);
// Room in a reply frame beyond the outputs themselves (status, message, field lengths).
constexpr size_t kReplyOverheadBytes = size_t{64} << 10;

std::string MiB(size_t bytes) { return absl::StrCat(bytes >> 20, " MiB"); }

std::string DirOfSelf() {
  char buffer[4096];
  const ssize_t n = readlink("/proc/self/exe", buffer, sizeof buffer - 1);
  if (n <= 0) return "";
  std::string path(buffer, static_cast<size_t>(n));
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "" : path.substr(0, slash);
}

std::string DescribeDeath(int wait_status) {
  if (WIFEXITED(wait_status)) return absl::StrCat("exit status ", WEXITSTATUS(wait_status));
  if (WIFSIGNALED(wait_status)) {
    const int sig = WTERMSIG(wait_status);
    const char* name = sigabbrev_np(sig);
    return absl::StrCat("signal ", sig, name != nullptr ? absl::StrCat(" (SIG", name, ")") : "");
  }
  return absl::StrCat("wait status ", wait_status);
}

}  // namespace

// One worker process and our end of its socket (its stdin and stdout).
struct JqWorker {
  pid_t pid = -1;
  int fd = -1;
};

class JqWorkerPool::Impl {
 public:
  Impl(JqWorkerPoolOptions options, std::string path)
      : options_(std::move(options)), path_(std::move(path)) {
    if (options_.cpu_limit > absl::ZeroDuration()) {
      cpu_arg_ = absl::StrCat("--cpu-limit-seconds=",
                              std::max<int64_t>(1, absl::ToInt64Seconds(options_.cpu_limit)));
    }
    memory_limit_ = MemoryLimitEnforced() ? options_.memory_limit_bytes : 0;
    // The service's environment holds broker passwords: workers get only what the dynamic
    // loader and the sanitizers read.
    for (const char* name : {"LD_LIBRARY_PATH", "ASAN_OPTIONS", "LSAN_OPTIONS", "UBSAN_OPTIONS"}) {
      if (const char* value = std::getenv(name); value != nullptr) {
        env_strings_.push_back(absl::StrCat(name, "=", value));
      }
    }
    for (std::string& entry : env_strings_) env_.push_back(entry.data());
    env_.push_back(nullptr);
  }

  ~Impl() {
    std::vector<JqWorker> idle;
    {
      std::lock_guard<std::mutex> lock(mu_);
      idle.swap(idle_);
    }
    for (JqWorker& worker : idle) KillAndReap(worker);
  }

  const JqWorkerPoolOptions& options() const { return options_; }
  const std::string& path() const { return path_; }

  std::vector<int> Pids() const {
    std::lock_guard<std::mutex> lock(mu_);
    return std::vector<int>(pids_.begin(), pids_.end());
  }

  absl::StatusOr<std::vector<std::string>> Run(const std::vector<absl::string_view>& request,
                                               const JqDeadline& deadline) {
    const absl::Duration timeout = std::min(deadline.timeout, options_.default_timeout);
    const SteadyClock::time_point end =
        SteadyClock::now() +
        std::chrono::microseconds(std::max<int64_t>(0, absl::ToInt64Microseconds(timeout)));
    std::string payload;
    for (absl::string_view field : request) jq_wire::AppendField(&payload, field);
    if (payload.size() > UINT32_MAX) {
      return absl::InvalidArgumentError("jq request is larger than 4 GiB");
    }
    const std::string frame = jq_wire::Frame(payload);

    absl::StatusOr<JqWorker> worker = Acquire(end, deadline, timeout);
    if (!worker.ok()) return worker.status();
    std::string reply;
    absl::Status status = Exchange(*worker, frame, end, deadline, timeout, &reply);
    if (!status.ok()) {
      Discard(*worker);  // Exchange killed it
      return status;
    }
    std::optional<std::vector<absl::string_view>> fields = jq_wire::SplitFields(reply);
    int code = 0;
    if (!fields || fields->size() < 2 || !absl::SimpleAtoi((*fields)[0], &code) || code < 0 ||
        code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
      KillAndReap(*worker);
      Discard(*worker);
      return absl::InternalError("jq worker sent a malformed reply");
    }
    Release(*worker);
    if (code != 0) {
      return absl::Status(static_cast<absl::StatusCode>(code), (*fields)[1]);
    }
    std::vector<std::string> outputs;
    outputs.reserve(fields->size() - 2);
    for (size_t i = 2; i < fields->size(); ++i) outputs.emplace_back((*fields)[i]);
    return outputs;
  }

 private:
  absl::StatusOr<JqWorker> Acquire(SteadyClock::time_point end, const JqDeadline& deadline,
                                   absl::Duration timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      if (!idle_.empty()) {
        JqWorker worker = idle_.back();
        idle_.pop_back();
        return worker;
      }
      if (live_ < options_.workers) {
        ++live_;
        lock.unlock();
        absl::StatusOr<JqWorker> worker = Spawn();
        if (!worker.ok()) {
          lock.lock();
          --live_;
          cv_.notify_one();
        }
        return worker;
      }
      const SteadyClock::time_point now = SteadyClock::now();
      if (now >= end) {
        return absl::DeadlineExceededError(
            absl::StrCat("no jq worker became free within ", absl::FormatDuration(timeout), " (all ",
                         options_.workers, " busy)"));
      }
      if (deadline.cancelled && deadline.cancelled()) {
        return absl::CancelledError("jq evaluation cancelled while waiting for a worker");
      }
      cv_.wait_until(lock, std::min(end, now + kCancelPoll));
    }
  }

  void Release(JqWorker worker) {
    std::lock_guard<std::mutex> lock(mu_);
    idle_.push_back(worker);
    cv_.notify_one();
  }

  // The worker is dead or killed and reaped already: free its slot for a fresh one.
  void Discard(const JqWorker&) {
    std::lock_guard<std::mutex> lock(mu_);
    --live_;
    cv_.notify_one();
  }

  absl::StatusOr<JqWorker> Spawn() {
    int sockets[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sockets) != 0) {
      return absl::UnavailableError(
          absl::StrCat("cannot start a jq worker: socketpair: ", std::strerror(errno)));
    }
    const int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    // Everything the child needs is prepared before fork: after it, in a multithreaded
    // process, only async-signal-safe calls are allowed until exec.
    std::vector<char*> argv = {const_cast<char*>(path_.c_str())};
    if (!cpu_arg_.empty()) argv.push_back(const_cast<char*>(cpu_arg_.c_str()));
    argv.push_back(nullptr);
    const rlimit memory = {memory_limit_, memory_limit_};
    rlimit stack{};
    getrlimit(RLIMIT_STACK, &stack);
    if (stack.rlim_max == RLIM_INFINITY || stack.rlim_max >= kWorkerStackBytes) {
      stack.rlim_cur = kWorkerStackBytes;
    }
    sigset_t no_signals;
    sigemptyset(&no_signals);
    // A worker killed by a limit (SIGABRT, SIGXCPU) would otherwise dump a core of up to the
    // memory limit, every time.
    const rlimit no_core = {0, 0};

    const pid_t pid = fork();
    if (pid == 0) {
      // The service may block signals in its threads (SIGTERM handling); exec keeps the mask.
      pthread_sigmask(SIG_SETMASK, &no_signals, nullptr);
      if (dup2(sockets[1], STDIN_FILENO) < 0 || dup2(sockets[1], STDOUT_FILENO) < 0) _exit(126);
      // libjq writes "cannot allocate memory" and `debug`/`stderr` output there: not into
      // the service's structured logs, and never a pipe that could fill and block it.
      if (devnull >= 0) dup2(devnull, STDERR_FILENO);
      setrlimit(RLIMIT_STACK, &stack);
      setrlimit(RLIMIT_CORE, &no_core);
      if (memory.rlim_cur > 0) setrlimit(RLIMIT_AS, &memory);
      execve(argv[0], argv.data(), env_.data());
      _exit(127);
    }
    const int fork_errno = errno;
    close(sockets[1]);
    if (devnull >= 0) close(devnull);
    if (pid < 0) {
      close(sockets[0]);
      return absl::UnavailableError(
          absl::StrCat("cannot start a jq worker: fork: ", std::strerror(fork_errno)));
    }
    fcntl(sockets[0], F_SETFL, fcntl(sockets[0], F_GETFL) | O_NONBLOCK);
    {
      std::lock_guard<std::mutex> lock(mu_);
      pids_.push_back(pid);
    }
    return JqWorker{pid, sockets[0]};
  }

  // SIGKILL (harmless when it is dead already: its exit status stays), then wait for it, so
  // no zombie stays behind. Returns its wait status. Not under mu_: the wait takes a moment.
  int KillAndReap(JqWorker& worker) {
    kill(worker.pid, SIGKILL);
    int wait_status = 0;
    while (waitpid(worker.pid, &wait_status, 0) < 0 && errno == EINTR) {
    }
    close(worker.fd);
    {
      std::lock_guard<std::mutex> lock(mu_);
      pids_.erase(std::remove(pids_.begin(), pids_.end(), worker.pid), pids_.end());
    }
    worker = JqWorker{};
    return wait_status;
  }

  // Why a worker that closed its end died.
  absl::Status DeathStatus(int wait_status) const {
    if (WIFSIGNALED(wait_status)) {
      const int sig = WTERMSIG(wait_status);
      // libjq (and operator new) abort when an allocation fails; with RLIMIT_AS that is the
      // limit, and a stack that cannot grow any further ends in SIGSEGV.
      if (memory_limit_ > 0 && (sig == SIGABRT || sig == SIGSEGV)) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "jq program exceeded the memory limit of ", MiB(memory_limit_),
            " (the jq worker died of ", DescribeDeath(wait_status), ")"));
      }
      if (sig == SIGXCPU) {
        return absl::ResourceExhaustedError(
            absl::StrCat("jq program exceeded the CPU limit of ",
                         absl::FormatDuration(options_.cpu_limit), " per evaluation"));
      }
    }
    return absl::InternalError(
        absl::StrCat("jq worker died before it replied (", DescribeDeath(wait_status), ")"));
  }

  // Sends `frame` and reads one reply frame's payload into `reply`. On any error the worker
  // has been killed and reaped.
  absl::Status Exchange(JqWorker& worker, const std::string& frame, SteadyClock::time_point end,
                        const JqDeadline& deadline, absl::Duration timeout, std::string* reply) {
    const size_t max_reply = options_.max_output_bytes + kReplyOverheadBytes;
    size_t sent = 0;
    char header[4];
    size_t header_read = 0;
    size_t body_size = 0;
    size_t body_read = 0;
    while (true) {
      if (deadline.cancelled && deadline.cancelled()) {
        KillAndReap(worker);
        return absl::CancelledError("jq evaluation cancelled; its worker was killed");
      }
      const SteadyClock::time_point now = SteadyClock::now();
      if (now >= end) {
        KillAndReap(worker);
        return absl::DeadlineExceededError(absl::StrCat(
            "jq program did not finish within ", absl::FormatDuration(timeout),
            "; its worker was killed"));
      }
      auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(end - now) +
                  std::chrono::milliseconds(1);
      if (deadline.cancelled) wait = std::min<std::chrono::milliseconds>(wait, kCancelPoll);
      pollfd pfd{worker.fd, static_cast<short>(POLLIN | (sent < frame.size() ? POLLOUT : 0)), 0};
      const int ready = poll(&pfd, 1, static_cast<int>(std::min<int64_t>(wait.count(), 60'000)));
      if (ready < 0 && errno != EINTR) {
        KillAndReap(worker);
        return absl::InternalError(absl::StrCat("jq worker: poll: ", std::strerror(errno)));
      }
      if (ready <= 0) continue;
      if ((pfd.revents & POLLOUT) != 0 && sent < frame.size()) {
        const ssize_t n =
            send(worker.fd, frame.data() + sent, frame.size() - sent, MSG_NOSIGNAL);
        if (n > 0) sent += static_cast<size_t>(n);
        // EPIPE and friends: the worker died; reading gives EOF and the reason below.
      }
      if ((pfd.revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
      ssize_t n;
      if (header_read < sizeof header) {
        n = recv(worker.fd, header + header_read, sizeof header - header_read, 0);
      } else {
        n = recv(worker.fd, reply->data() + body_read, body_size - body_read, 0);
      }
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (n <= 0) return DeathStatus(KillAndReap(worker));
      if (header_read < sizeof header) {
        header_read += static_cast<size_t>(n);
        if (header_read < sizeof header) continue;
        body_size = jq_wire::ReadU32(header);
        if (body_size > max_reply) {
          KillAndReap(worker);
          return absl::ResourceExhaustedError(absl::StrCat(
              "jq program output is larger than ", MiB(options_.max_output_bytes)));
        }
        reply->resize(body_size);
      } else {
        body_read += static_cast<size_t>(n);
      }
      if (header_read == sizeof header && body_read == body_size) {
        if (sent < frame.size()) {  // a reply before the whole request: not our worker
          KillAndReap(worker);
          return absl::InternalError("jq worker replied before reading its request");
        }
        return absl::OkStatus();
      }
    }
  }

  const JqWorkerPoolOptions options_;
  const std::string path_;
  std::string cpu_arg_;
  rlim_t memory_limit_ = 0;
  std::vector<std::string> env_strings_;
  std::vector<char*> env_;  // points into env_strings_, null-terminated

  mutable std::mutex mu_;  // guards the three below
  std::condition_variable cv_;
  std::vector<JqWorker> idle_;
  int live_ = 0;  // started and not discarded: idle + busy
  std::vector<int> pids_;
};

std::vector<std::string> JqWorkerPool::CandidatePaths(const JqWorkerPoolOptions& options) {
  if (!options.worker_path.empty()) return {options.worker_path};
  if (const char* env = std::getenv(kWorkerPathEnv); env != nullptr && *env != '\0') {
    return {env};
  }
  std::vector<std::string> paths;
  if (const std::string dir = DirOfSelf(); !dir.empty()) {
    paths.push_back(absl::StrCat(dir, "/", kWorkerName));
    paths.push_back(absl::StrCat(dir, "/../libexec/", kWorkerName));
    paths.push_back(absl::StrCat(dir, "/../libexec/eventbus/", kWorkerName));
  }
#ifdef EVENTBUS_JQ_WORKER_BUILD_PATH
  paths.push_back(EVENTBUS_JQ_WORKER_BUILD_PATH);
#endif
#ifdef EVENTBUS_JQ_WORKER_INSTALL_PATH
  paths.push_back(EVENTBUS_JQ_WORKER_INSTALL_PATH);
#endif
  return paths;
}

// The sanitizers reserve terabytes of address space at start-up: under an RLIMIT_AS a worker
// built with ASan or TSan cannot start at all.
bool JqWorkerPool::MemoryLimitEnforced() {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
  return false;
#else
  return true;
#endif
#else
  return true;
#endif
}

absl::StatusOr<std::shared_ptr<JqWorkerPool>> JqWorkerPool::Create(JqWorkerPoolOptions options) {
  if (options.workers < 1) return absl::InvalidArgumentError("jq workers must be >= 1");
  if (options.default_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("jq default_timeout must be positive");
  }
  if (options.max_output_bytes == 0 || options.max_output_bytes > (size_t{1} << 30)) {
    return absl::InvalidArgumentError("jq max_output_bytes must be in 1 B .. 1 GiB");
  }
  const std::vector<std::string> candidates = CandidatePaths(options);
  std::string path;
  for (const std::string& candidate : candidates) {
    if (access(candidate.c_str(), X_OK) == 0) {
      path = candidate;
      break;
    }
  }
  if (path.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the jq worker binary ", kWorkerName, " was not found or is not executable (tried: ",
        absl::StrJoin(candidates, ", "), "); install it next to the service or set ",
        kWorkerPathEnv));
  }
  auto pool = std::shared_ptr<JqWorkerPool>(
      new JqWorkerPool(std::make_unique<Impl>(std::move(options), path)));
  // One worker now, so a binary that does not start or is not ours fails the start-up.
  JqDeadline deadline;
  deadline.timeout = absl::Seconds(10);
  absl::StatusOr<std::vector<std::string>> pong = pool->Run({"ping"}, deadline);
  if (!pong.ok() || pong->size() != 1 || pong->front() != kWorkerName) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the jq worker binary ", path, " does not answer as ", kWorkerName, ": ",
        pong.ok() ? "unexpected reply" : pong.status().ToString()));
  }
  return pool;
}

absl::StatusOr<std::shared_ptr<JqWorkerPool>> JqWorkerPool::Default() {
  static absl::once_flag once;
  // Never destroyed: workers see EOF and exit with the process.
  static absl::StatusOr<std::shared_ptr<JqWorkerPool>>* pool = nullptr;
  absl::call_once(once, [] {
    pool = new absl::StatusOr<std::shared_ptr<JqWorkerPool>>(Create());
  });
  return *pool;
}

JqWorkerPool::JqWorkerPool(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
JqWorkerPool::~JqWorkerPool() = default;

absl::StatusOr<std::vector<std::string>> JqWorkerPool::Run(
    const std::vector<absl::string_view>& request, const JqDeadline& deadline) {
  return impl_->Run(request, deadline);
}

const JqWorkerPoolOptions& JqWorkerPool::options() const { return impl_->options(); }
const std::string& JqWorkerPool::worker_path() const { return impl_->path(); }
std::vector<int> JqWorkerPool::WorkerPids() const { return impl_->Pids(); }

}  // namespace eventbus::executor
