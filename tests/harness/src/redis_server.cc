#include "eventbus/harness/redis_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace eventbus::harness {
namespace {

// One inline PING over a raw socket (the harness does not depend on a Redis client). The
// server is ready when it answers +PONG, or -NOAUTH when it requires a password; -LOADING
// means it is still reading its AOF.
bool AnswersPing(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  timeval tv{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ready = false;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::write(fd, "PING\r\n", 6) == 6) {
    char buffer[128] = {};
    const ssize_t n = ::read(fd, buffer, sizeof(buffer) - 1);
    if (n > 0) {
      const absl::string_view reply(buffer, static_cast<size_t>(n));
      ready = absl::StartsWith(reply, "+PONG") || absl::StartsWith(reply, "-NOAUTH");
    }
  }
  ::close(fd);
  return ready;
}

}  // namespace

absl::StatusOr<std::unique_ptr<RedisServer>> RedisServer::Start(Options options) {
  std::unique_ptr<RedisServer> server(new RedisServer());
  server->options_ = std::move(options);
  absl::StatusOr<int> port = FreeLoopbackPort();
  if (!port.ok()) return port.status();
  server->port_ = *port;
  absl::StatusOr<std::string> dir = MakeTempDir("redis");
  if (!dir.ok()) return dir.status();
  server->dir_ = *dir;
  ServerProcess::Options process;
  process.program = "redis-server";
  process.args = {"--port", absl::StrCat(server->port_), "--bind", "127.0.0.1",
                  "--dir", server->dir_, "--appendonly", "yes", "--save", "",
                  "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "notice"};
  if (!server->options_.requirepass.empty()) {
    process.args.insert(process.args.end(), {"--requirepass", server->options_.requirepass});
  }
  process.args.insert(process.args.end(), server->options_.extra_args.begin(),
                      server->options_.extra_args.end());
  process.log_path = absl::StrCat(server->dir_, "/redis.log");
  absl::StatusOr<std::unique_ptr<ServerProcess>> started = ServerProcess::Start(std::move(process));
  if (!started.ok()) return started.status();
  server->process_ = std::move(started).value();
  if (absl::Status ready = server->WaitUntilReady(); !ready.ok()) return ready;
  return server;
}

RedisServer::~RedisServer() {
  if (process_ != nullptr) process_->Stop();
  if (!dir_.empty()) RemoveTree(dir_);
}

std::string RedisServer::url() const {
  if (options_.requirepass.empty()) return absl::StrCat("redis://127.0.0.1:", port_);
  return absl::StrCat("redis://:", options_.requirepass, "@127.0.0.1:", port_);
}

absl::Status RedisServer::Restart() {
  if (absl::Status s = process_->Restart(); !s.ok()) return s;
  return WaitUntilReady();
}

absl::Status RedisServer::WaitUntilReady() {
  const absl::Time deadline = absl::Now() + options_.start_timeout;
  while (absl::Now() < deadline) {
    if (!process_->running()) break;
    if (AnswersPing(port_)) return absl::OkStatus();
    absl::SleepFor(absl::Milliseconds(25));
  }
  return absl::FailedPreconditionError(
      absl::StrCat("redis-server on 127.0.0.1:", port_, " did not answer PING within ",
                   absl::FormatDuration(options_.start_timeout), "; log: ", process_->LogTail(2000)));
}

}  // namespace eventbus::harness
