#pragma once
// Starts and stops the real servers the tests talk to (redis-server, nats-server, Kafka) on
// free loopback ports. A server that cannot start is a test failure, never a skip.

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace eventbus::harness {

// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
absl::StatusOr<int> FreeLoopbackPort();

// OK once something accepts TCP connections on 127.0.0.1:`port`; DeadlineExceeded otherwise.
absl::Status WaitForTcpPort(int port, absl::Duration timeout);

// A fresh directory under $TMPDIR (or /tmp) named after `prefix`; removed by RemoveTree.
absl::StatusOr<std::string> MakeTempDir(const std::string& prefix);
void RemoveTree(const std::string& path);

// A child process with stdout/stderr appended to a log file. The child dies with the test
// process (PR_SET_PDEATHSIG), so a crashed test never leaves a server behind.
class ServerProcess {
 public:
  struct Options {
    std::string program;             // looked up in PATH
    std::vector<std::string> args;   // without argv[0]
    std::string log_path;            // stdout and stderr go here (appended)
    std::vector<std::string> env;    // extra "NAME=value" entries
  };

  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(Options options);
  ~ServerProcess();  // Stop()

  // SIGTERM, then SIGKILL after `grace`. Idempotent.
  void Stop(absl::Duration grace = absl::Seconds(10));
  // SIGKILL at once: a crash, as far as the server's clients can tell.
  void Kill();
  // Starts the same command again after Stop/Kill.
  absl::Status Restart();

  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  const std::string& log_path() const { return options_.log_path; }
  // The last `max_bytes` of the log, for failure messages.
  std::string LogTail(size_t max_bytes = 4000) const;

 private:
  explicit ServerProcess(Options options) : options_(std::move(options)) {}
  absl::Status Spawn();
  void Reap(absl::Duration timeout);

  Options options_;
  pid_t pid_ = -1;
};

}  // namespace eventbus::harness
