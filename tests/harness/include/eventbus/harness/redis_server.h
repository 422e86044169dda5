#pragma once
// A real redis-server for tests: AOF on, no RDB snapshots, data in a temp dir, listening on a
// free loopback port. Kill() and Restart() keep the port and the data dir, so a restart finds
// what the AOF kept.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "eventbus/harness/server_process.h"

namespace eventbus::harness {

class RedisServer {
 public:
  struct Options {
    std::string requirepass;              // empty = no password
    std::vector<std::string> extra_args;  // e.g. {"--appendfsync", "always"}
    absl::Duration start_timeout = absl::Seconds(20);
  };

  // FailedPrecondition (with the server's log) when redis-server is missing or never answers.
  static absl::StatusOr<std::unique_ptr<RedisServer>> Start(Options options);
  static absl::StatusOr<std::unique_ptr<RedisServer>> Start() { return Start(Options{}); }
  ~RedisServer();  // stops the server and removes its directory

  int port() const { return port_; }
  // redis://127.0.0.1:<port> (with the password when one is required).
  std::string url() const;
  const std::string& dir() const { return dir_; }

  // SIGKILL: a crash, as far as clients can tell.
  void Kill() { process_->Kill(); }
  void Stop() { process_->Stop(); }
  // Starts again on the same port with the same data dir and waits until it answers PING.
  absl::Status Restart();
  std::string LogTail() const { return process_->LogTail(); }

 private:
  RedisServer() = default;
  absl::Status WaitUntilReady();

  Options options_;
  int port_ = 0;
  std::string dir_;
  std::unique_ptr<ServerProcess> process_;
};

}  // namespace eventbus::harness
