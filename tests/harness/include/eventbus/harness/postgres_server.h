#pragma once
// A real PostgreSQL server for tests: `initdb` into a temp dir, `postgres` on a free loopback
// port (listen_addresses=127.0.0.1, its Unix socket in the temp dir, fsync off: a test's data
// need not survive a power cut), and one database created. The binaries come from
// `pg_config --bindir` (Debian: /usr/lib/postgresql/<major>/bin), else the highest
// /usr/lib/postgresql/*/bin, else PATH; $EVENTBUS_POSTGRES_BINDIR overrides.
//
// PostgreSQL refuses to run as root. When the test runs as root, initdb, postgres and createdb
// run as the `postgres` system user (the postgresql package creates it) through setpriv, in a
// temp dir that user owns; otherwise they run as the test's own user. Either way the server
// dies with the test process (the parent-death signal is set again after the uid change, which
// clears it).

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "eventbus/harness/server_process.h"

namespace eventbus::harness {

class PostgresServer {
 public:
  struct Options {
    std::string database = "eventbus";  // created once the server runs
    std::string user = "eventbus";      // the superuser initdb creates
    // Empty: every connection is trusted. Else TCP connections must authenticate with it
    // (scram-sha-256); the Unix socket, which only the harness uses, stays trusted.
    std::string password;
    // More server settings, "name=value" each (passed as -c).
    std::vector<std::string> settings;
    absl::Duration start_timeout = absl::Seconds(60);
  };

  // FailedPrecondition (with the log to read) when the binaries are missing, initdb fails or
  // the server never becomes ready.
  static absl::StatusOr<std::unique_ptr<PostgresServer>> Start(Options options);
  static absl::StatusOr<std::unique_ptr<PostgresServer>> Start() { return Start(Options{}); }
  ~PostgresServer();  // stops the server and removes its directory

  int port() const { return port_; }
  const std::string& dir() const { return dir_; }
  const Options& options() const { return options_; }
  // postgresql://user[:password]@127.0.0.1:<port>/<database> (the options' database when
  // empty).
  std::string url(absl::string_view database = "") const;

  // CREATE DATABASE `name` (through createdb over the Unix socket). Names are plain
  // identifiers: [a-z0-9_], starting with a letter.
  absl::Status CreateDatabase(absl::string_view name);
  // Runs `sql` in `database` through psql (-v ON_ERROR_STOP=1), for tests that arrange a state
  // the store's API cannot (an older schema, say). Returns psql's output (unaligned, tuples
  // only).
  absl::StatusOr<std::string> Psql(absl::string_view database, absl::string_view sql);

  // Fast shutdown (SIGINT: clients are disconnected, a checkpoint is written). Keeps the data.
  void Stop();
  // SIGKILL to the whole server: a crash, as far as clients can tell. Keeps the data.
  void Kill() { process_->Kill(); }
  // Starts again on the same port and data dir (crash recovery after Kill) and waits until
  // the server accepts connections.
  absl::Status Restart();
  bool running() const { return process_ != nullptr && process_->running(); }
  std::string LogTail() const { return process_->LogTail(); }

 private:
  PostgresServer() = default;
  absl::Status WaitUntilReady();
  // `program` (a binary of the server's bindir) with `args`, as the server's user, to the end.
  absl::StatusOr<std::string> RunTool(absl::string_view program,
                                      const std::vector<std::string>& args,
                                      absl::Duration timeout);
  // setpriv ... -- when running as root; empty otherwise.
  std::vector<std::string> UserPrefix() const;

  Options options_;
  std::string bindir_;
  int port_ = 0;
  std::string dir_;
  int run_as_uid_ = -1;  // -1: as this process's user
  int run_as_gid_ = -1;
  std::unique_ptr<ServerProcess> process_;
};

}  // namespace eventbus::harness
