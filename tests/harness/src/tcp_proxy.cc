#include "eventbus/harness/tcp_proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace eventbus::harness {
namespace {

sockaddr_in Loopback(int port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}

// Copies bytes from `from` to `to` until either side ends, then ends both directions (so the
// other pump of the link stops too).
void Pump(int from, int to, std::atomic<int>* running) {
  char buffer[64 * 1024];
  for (;;) {
    const ssize_t n = ::read(from, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    ssize_t written = 0;
    bool failed = false;
    while (written < n) {
      const ssize_t w = ::send(to, buffer + written, static_cast<size_t>(n - written), MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        failed = true;
        break;
      }
      written += w;
    }
    if (failed) break;
  }
  ::shutdown(from, SHUT_RDWR);
  ::shutdown(to, SHUT_RDWR);
  running->fetch_sub(1);
}

}  // namespace

// One proxied connection: the client's socket, ours to the server, a pump per direction.
struct TcpProxy::Link {
  int client_fd = -1;
  int server_fd = -1;
  std::atomic<int> running{2};
  std::thread up;    // client -> server
  std::thread down;  // server -> client

  void Reset() {
    // Linger 0: close sends RST; shutdown first wakes the pumps blocked in read.
    linger hard{.l_onoff = 1, .l_linger = 0};
    ::setsockopt(client_fd, SOL_SOCKET, SO_LINGER, &hard, sizeof(hard));
    ::setsockopt(server_fd, SOL_SOCKET, SO_LINGER, &hard, sizeof(hard));
    ::shutdown(client_fd, SHUT_RDWR);
    ::shutdown(server_fd, SHUT_RDWR);
  }
  ~Link() {
    if (up.joinable()) up.join();
    if (down.joinable()) down.join();
    ::close(client_fd);
    ::close(server_fd);
  }
};

absl::StatusOr<std::unique_ptr<TcpProxy>> TcpProxy::Start(int target_port) {
  std::unique_ptr<TcpProxy> proxy(new TcpProxy());
  proxy->target_port_ = target_port;
  proxy->listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
  if (proxy->listen_fd_ < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  const int one = 1;
  ::setsockopt(proxy->listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr = Loopback(0);
  socklen_t len = sizeof(addr);
  if (::bind(proxy->listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(proxy->listen_fd_, 64) != 0 ||
      ::getsockname(proxy->listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return absl::InternalError(absl::StrCat("proxy listen on 127.0.0.1: ", std::strerror(errno)));
  }
  proxy->port_ = ntohs(addr.sin_port);
  proxy->acceptor_ = std::thread([p = proxy.get()] { p->AcceptLoop(); });
  return proxy;
}

TcpProxy::~TcpProxy() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    for (auto& link : links_) link->Reset();
  }
  // Wakes the acceptor blocked in accept (Linux returns EINVAL after shutdown).
  ::shutdown(listen_fd_, SHUT_RDWR);
  if (acceptor_.joinable()) acceptor_.join();
  ::close(listen_fd_);
  std::lock_guard lock(mu_);
  links_.clear();  // joins the pumps
}

void TcpProxy::AcceptLoop() {
  for (;;) {
    const int client = ::accept(listen_fd_, nullptr, nullptr);
    if (client < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;  // shut down
    }
    const int server = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in target = Loopback(target_port_);
    if (server < 0 || ::connect(server, reinterpret_cast<sockaddr*>(&target), sizeof(target)) != 0) {
      if (server >= 0) ::close(server);
      ::close(client);  // as a refused connection looks to the client: closed at once
      continue;
    }
    const int one = 1;
    ::setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    ::setsockopt(server, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    std::lock_guard lock(mu_);
    ReapFinishedLocked();
    auto link = std::make_unique<Link>();
    link->client_fd = client;
    link->server_fd = server;
    if (stopping_) link->Reset();
    Link* raw = link.get();
    link->up = std::thread(Pump, client, server, &raw->running);
    link->down = std::thread(Pump, server, client, &raw->running);
    links_.push_back(std::move(link));
    if (stopping_) return;
  }
}

void TcpProxy::ReapFinishedLocked() {
  std::erase_if(links_, [](const std::unique_ptr<Link>& link) { return link->running == 0; });
}

void TcpProxy::CutConnections() {
  std::lock_guard lock(mu_);
  for (auto& link : links_) {
    if (link->running == 0) continue;
    link->Reset();
    ++cut_;
  }
  ReapFinishedLocked();
}

int TcpProxy::connections_cut() const {
  std::lock_guard lock(mu_);
  return cut_;
}

}  // namespace eventbus::harness
