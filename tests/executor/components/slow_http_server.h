#pragma once
// An HTTP/1.1 server on 127.0.0.1 (any free port) that answers every request with
// `200 ok` after a fixed delay, on one Asio thread: a steady_timer per connection, no thread
// per request, so it holds thousands of slow requests at once (what a thread-per-request
// test server cannot). Keep-alive; request bodies are not supported (GET only).

#include <sys/resource.h>

#include <boost/asio/buffer.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace eventbus::executor::testing {

// Raises the soft limit of open files to the hard limit (1,000 calls need 2,000+ descriptors
// when client and server share the process). Returns the new soft limit.
inline rlim_t RaiseOpenFileLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
  limit.rlim_cur = limit.rlim_max;
  setrlimit(RLIMIT_NOFILE, &limit);
  getrlimit(RLIMIT_NOFILE, &limit);
  return limit.rlim_cur;
}

class SlowHttpServer {
 public:
  explicit SlowHttpServer(std::chrono::milliseconds delay)
      : delay_(delay), acceptor_(io_) {
    namespace ip = boost::asio::ip;
    const ip::tcp::endpoint endpoint(ip::make_address("127.0.0.1"), 0);
    acceptor_.open(endpoint.protocol());
    acceptor_.set_option(ip::tcp::acceptor::reuse_address(true));
    acceptor_.bind(endpoint);
    acceptor_.listen(4096);
    port_ = acceptor_.local_endpoint().port();
    Accept();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~SlowHttpServer() {
    io_.stop();
    thread_.join();
  }

  int port() const { return port_; }
  std::string Url(const std::string& path) const {
    return "http://127.0.0.1:" + std::to_string(port_) + path;
  }
  // Waits until `n` requests are being held at once; false after `timeout`.
  bool AwaitWaiting(int n, std::chrono::seconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return waiting_ >= n; });
  }
  int connections() const {
    std::lock_guard<std::mutex> lock(mu_);
    return connections_;
  }

 private:
  struct Connection : std::enable_shared_from_this<Connection> {
    Connection(SlowHttpServer* server, boost::asio::ip::tcp::socket socket)
        : server(server), socket(std::move(socket)), timer(this->socket.get_executor()) {}

    void Read() {
      auto self = shared_from_this();
      boost::asio::async_read_until(
          socket, buffer, "\r\n\r\n", [self](const boost::system::error_code& ec, size_t n) {
            if (ec) return;
            self->buffer.consume(n);
            self->server->Waiting(+1);
            self->timer.expires_after(self->server->delay_);
            self->timer.async_wait([self](const boost::system::error_code& ec) {
              self->server->Waiting(-1);
              if (ec) return;
              self->Write();
            });
          });
    }
    void Write() {
      static const std::string kReply =
          "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";
      auto self = shared_from_this();
      boost::asio::async_write(socket, boost::asio::buffer(kReply),
                               [self](const boost::system::error_code& ec, size_t) {
                                 if (!ec) self->Read();
                               });
    }

    SlowHttpServer* server;
    boost::asio::ip::tcp::socket socket;
    boost::asio::steady_timer timer;
    boost::asio::streambuf buffer;
  };

  void Accept() {
    acceptor_.async_accept([this](const boost::system::error_code& ec,
                                  boost::asio::ip::tcp::socket socket) {
      if (ec) return;  // stopped, or out of descriptors: the test's calls will fail visibly
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++connections_;
      }
      std::make_shared<Connection>(this, std::move(socket))->Read();
      Accept();
    });
  }

  void Waiting(int delta) {
    std::lock_guard<std::mutex> lock(mu_);
    waiting_ += delta;
    cv_.notify_all();
  }

  const std::chrono::milliseconds delay_;
  boost::asio::io_context io_{1};
  boost::asio::ip::tcp::acceptor acceptor_;
  int port_ = 0;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  int waiting_ = 0;      // guarded by mu_
  int connections_ = 0;  // guarded by mu_
  std::thread thread_;
};

}  // namespace eventbus::executor::testing
