#include "eventbus/harness/nats_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace eventbus::harness {
namespace {

// The server greets every client with an INFO line; answering PING with PONG after CONNECT
// means it processes commands (the harness does not depend on a NATS client). JetStream's
// store is recovered before the listener opens, so this also means JetStream is ready.
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
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    constexpr absl::string_view kHello = "CONNECT {\"verbose\":false}\r\nPING\r\n";
    if (::write(fd, kHello.data(), kHello.size()) == static_cast<ssize_t>(kHello.size())) {
      std::string received;
      char buffer[4096];
      while (!absl::StrContains(received, "PONG") && received.size() < 65536) {
        const ssize_t n = ::read(fd, buffer, sizeof(buffer));
        if (n <= 0) break;
        received.append(buffer, static_cast<size_t>(n));
      }
      ready = absl::StrContains(received, "PONG");
    }
  }
  ::close(fd);
  return ready;
}

}  // namespace

absl::StatusOr<std::unique_ptr<NatsServer>> NatsServer::Start(Options options) {
  std::unique_ptr<NatsServer> server(new NatsServer());
  server->options_ = std::move(options);
  absl::StatusOr<int> port = FreeLoopbackPort();
  if (!port.ok()) return port.status();
  server->port_ = *port;
  absl::StatusOr<std::string> dir = MakeTempDir("nats");
  if (!dir.ok()) return dir.status();
  server->dir_ = *dir;
  // max_payload has no command-line flag; the rest is given as flags, as an operator would.
  const std::string config_path = absl::StrCat(server->dir_, "/nats.conf");
  {
    std::ofstream config(config_path);
    config << "max_payload: " << server->options_.max_payload << "\n";
    if (!config) return absl::FailedPreconditionError(absl::StrCat("cannot write ", config_path));
  }
  ServerProcess::Options process;
  process.program = "nats-server";
  process.args = {"-c", config_path, "-js", "-a", "127.0.0.1", "-p", absl::StrCat(server->port_),
                  "-sd", absl::StrCat(server->dir_, "/store")};
  process.args.insert(process.args.end(), server->options_.extra_args.begin(),
                      server->options_.extra_args.end());
  process.log_path = absl::StrCat(server->dir_, "/nats.log");
  absl::StatusOr<std::unique_ptr<ServerProcess>> started = ServerProcess::Start(std::move(process));
  if (!started.ok()) return started.status();
  server->process_ = std::move(started).value();
  if (absl::Status ready = server->WaitUntilReady(); !ready.ok()) return ready;
  return server;
}

NatsServer::~NatsServer() {
  if (process_ != nullptr) process_->Stop();
  if (!dir_.empty()) RemoveTree(dir_);
}

std::string NatsServer::url() const { return absl::StrCat("nats://127.0.0.1:", port_); }

absl::Status NatsServer::Restart() {
  if (absl::Status s = process_->Restart(); !s.ok()) return s;
  return WaitUntilReady();
}

absl::Status NatsServer::WaitUntilReady() {
  const absl::Time deadline = absl::Now() + options_.start_timeout;
  while (absl::Now() < deadline) {
    if (!process_->running()) break;
    if (AnswersPing(port_)) return absl::OkStatus();
    absl::SleepFor(absl::Milliseconds(25));
  }
  return absl::FailedPreconditionError(
      absl::StrCat("nats-server on 127.0.0.1:", port_, " did not answer PING within ",
                   absl::FormatDuration(options_.start_timeout), "; log: ", process_->LogTail(2000)));
}

}  // namespace eventbus::harness
