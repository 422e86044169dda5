#pragma once
// Supervised eventbus-jq-worker processes that run jq programs for JqExpression.
//
// libjq 1.6 cannot be interrupted, has no memory cap and aborts its process when malloc fails.
// So programs run in helper processes: each evaluation borrows an idle worker (waiting, up to
// its deadline, when all are busy: a flood of tasks queues rather than forks), sends it one
// request and waits for the reply. Past the deadline, or once the caller's cancellation check
// says so, the worker is killed (SIGKILL) and reaped, the call returns DeadlineExceeded (or
// Cancelled) and a fresh worker takes the slot. A worker that dies on its own (memory limit,
// CPU limit, a crash in libjq) is reaped and replaced the same way. Each worker keeps its own
// cache of compiled programs, so a program compiles once per worker.
//
// Thread-safety: every method may be called from any thread; Run blocks its caller only.

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#pragma GCC visibility push(default)

namespace eventbus::executor {

struct JqWorkerPoolOptions {
  // The eventbus-jq-worker binary. Empty: $EXECUTOR_JQ_WORKER when set; else the first that
  // exists of: next to the running binary (/proc/self/exe), ../libexec/ and
  // ../libexec/eventbus/ from it, the installed libexec directory, the build tree.
  std::string worker_path;
  // Most workers alive at once (= evaluations in parallel). >= 1.
  int workers = 4;
  // RLIMIT_AS of each worker; 0 = none. Not applied when this library is built with
  // AddressSanitizer (its shadow memory alone exceeds any such limit).
  size_t memory_limit_bytes = size_t{512} << 20;
  // CPU time a worker may use per request (RLIMIT_CPU, whole seconds; it then dies of
  // SIGXCPU): bounds a runaway worker even if this process is gone. Zero = none.
  absl::Duration cpu_limit = absl::Seconds(60);
  // Most bytes of output (all outputs together) one evaluation may return.
  size_t max_output_bytes = size_t{16} << 20;
  // Deadline of a call that sets none.
  absl::Duration default_timeout = absl::Seconds(30);
};

// When a call must end: the earlier of `timeout` (measured on the real monotonic clock: jq
// runs in real time) and the first time `cancelled` returns true (polled every few ms).
struct JqDeadline {
  absl::Duration timeout = absl::InfiniteDuration();  // capped by default_timeout
  std::function<bool()> cancelled;                     // may be empty
};

class JqWorkerPool {
 public:
  // Finds the worker binary and starts one worker to check it answers. FailedPrecondition
  // naming the path(s) tried when the binary is missing or does not answer; InvalidArgument
  // for bad options.
  static absl::StatusOr<std::shared_ptr<JqWorkerPool>> Create(JqWorkerPoolOptions options = {});

  // A process-wide pool with default options (created on first use; the error is kept).
  static absl::StatusOr<std::shared_ptr<JqWorkerPool>> Default();

  // Where Create would look for the worker binary, in order (for error messages and tests).
  static std::vector<std::string> CandidatePaths(const JqWorkerPoolOptions& options);

  // Kills and reaps every worker. Callers must have returned from Run.
  ~JqWorkerPool();

  // One request (jq_wire.h) and its reply's fields after the status: compile or evaluate. The
  // status is the worker's for its own errors; otherwise DeadlineExceeded (deadline, or no
  // worker free before it), Cancelled, ResourceExhausted ("jq program exceeded the memory
  // limit of N MiB", the CPU limit, an output over max_output_bytes), Internal (the worker
  // died otherwise, or broke the protocol), Unavailable (a worker cannot be started).
  absl::StatusOr<std::vector<std::string>> Run(const std::vector<absl::string_view>& request,
                                               const JqDeadline& deadline);

  const JqWorkerPoolOptions& options() const;
  const std::string& worker_path() const;
  // Whether memory_limit_bytes is enforced in this build (false under AddressSanitizer).
  static bool MemoryLimitEnforced();
  // Process ids of the workers alive now (tests check they are reaped).
  std::vector<int> WorkerPids() const;

  class Impl;

 private:
  explicit JqWorkerPool(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace eventbus::executor

#pragma GCC visibility pop
