#pragma once
// A real nats-server with JetStream for tests: file storage in a temp dir, listening on a free
// loopback port. Kill() and Restart() keep the port and the store dir, so a restart finds what
// JetStream wrote to disk.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "eventbus/harness/server_process.h"

namespace eventbus::harness {

class NatsServer {
 public:
  struct Options {
    // Raised from the server's 1 MiB default so the conformance suite's 1 MiB event fits.
    std::string max_payload = "8MB";
    std::vector<std::string> extra_args;
    absl::Duration start_timeout = absl::Seconds(20);
  };

  // FailedPrecondition (with the server's log) when nats-server is missing or never answers.
  static absl::StatusOr<std::unique_ptr<NatsServer>> Start(Options options);
  static absl::StatusOr<std::unique_ptr<NatsServer>> Start() { return Start(Options{}); }
  ~NatsServer();  // stops the server and removes its directory

  int port() const { return port_; }
  // nats://127.0.0.1:<port>
  std::string url() const;
  const std::string& dir() const { return dir_; }

  // SIGKILL: a crash, as far as clients can tell.
  void Kill() { process_->Kill(); }
  void Stop() { process_->Stop(); }
  // Starts again on the same port with the same store dir and waits until it answers.
  absl::Status Restart();
  std::string LogTail() const { return process_->LogTail(); }

 private:
  NatsServer() = default;
  absl::Status WaitUntilReady();

  Options options_;
  int port_ = 0;
  std::string dir_;
  std::unique_ptr<ServerProcess> process_;
};

}  // namespace eventbus::harness
