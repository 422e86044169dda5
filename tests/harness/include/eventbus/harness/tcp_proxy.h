#pragma once
// A loopback TCP proxy in front of a test server, so a test can cut its clients' connections
// the way a network failure does (both ends see the connection reset) while the server keeps
// running. Used for the conformance suite's cut_connection hook.

#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"

namespace eventbus::harness {

class TcpProxy {
 public:
  // Listens on a free 127.0.0.1 port and forwards each connection to 127.0.0.1:`target_port`
  // (connecting when the client connects; a refused target closes the client at once).
  static absl::StatusOr<std::unique_ptr<TcpProxy>> Start(int target_port);
  ~TcpProxy();  // closes every connection and joins the proxy's threads

  int port() const { return port_; }

  // Resets every connection open through the proxy right now (SO_LINGER 0, so the peers see
  // ECONNRESET rather than an orderly end). New connections are accepted as before.
  // Thread-safe.
  void CutConnections();
  // Connections cut by CutConnections so far.
  int connections_cut() const;

 private:
  struct Link;
  TcpProxy() = default;
  void AcceptLoop();
  void ReapFinishedLocked();

  int port_ = 0;
  int target_port_ = 0;
  int listen_fd_ = -1;
  mutable std::mutex mu_;
  bool stopping_ = false;                      // guarded by mu_
  std::vector<std::unique_ptr<Link>> links_;   // guarded by mu_
  int cut_ = 0;                                // guarded by mu_
  std::thread acceptor_;
};

}  // namespace eventbus::harness
