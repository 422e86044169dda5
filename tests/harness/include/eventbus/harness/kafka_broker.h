#pragma once
// A real single-node Apache Kafka broker (KRaft, combined broker + controller) for tests, on
// free loopback ports, from the jars scripts/kafka-broker.sh fetches (cache folder:
// $EVENTBUS_KAFKA_HOME, default ~/.cache/eventbus/kafka-<version>). Runs under ServerProcess,
// so it dies with the test process.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "eventbus/harness/server_process.h"

namespace eventbus::harness {

class KafkaBroker {
 public:
  // Fetches the jars if needed, formats a fresh log dir and starts the broker; returns once
  // it is serving clients. Errors name the log to read.
  static absl::StatusOr<std::unique_ptr<KafkaBroker>> Start(
      absl::Duration timeout = absl::Seconds(120));
  ~KafkaBroker();  // stops the broker and removes its directory

  // "127.0.0.1:<port>", for bootstrap.servers / KAFKA_BROKERS.
  const std::string& bootstrap() const { return bootstrap_; }

  // Clean shutdown (SIGTERM), keeping the log dir.
  void Stop();
  // SIGKILL: a crash, as far as clients can tell. Keeps the log dir.
  void Kill();
  // Starts again after Stop/Kill on the same ports and log dir; returns once serving.
  absl::Status Restart(absl::Duration timeout = absl::Seconds(120));

  bool running() const { return process_ != nullptr && process_->running(); }
  std::string LogTail(size_t max_bytes = 4000) const;

 private:
  KafkaBroker() = default;
  absl::Status WaitUntilServing(size_t log_offset, absl::Duration timeout);

  std::string dir_;
  std::string bootstrap_;
  std::unique_ptr<ServerProcess> process_;
};

}  // namespace eventbus::harness
