#pragma once
// A cpp-httplib server on 127.0.0.1 (any free port) that `call` tasks are tested against:
//   GET  /ok       200 {"hello":"world"} (echoes the X-Test request header as X-Echo)
//   POST /echo     200 with the request body and content type
//   GET  /missing  404
//   GET  /broken   500
//   GET  /flaky    500 on the first request, 200 afterwards
//   GET  /slow     answers only when the server stops (or after 10s)
//   GET  /gate     answers 200 once OpenGate() was called (or the server stops, or 30s)

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace eventbus::executor::testing {

class LocalHttpServer {
 public:
  LocalHttpServer() {
    server_.Get("/ok", [this](const httplib::Request& req, httplib::Response& res) {
      ok_calls_.fetch_add(1);
      res.set_header("X-Echo", req.get_header_value("X-Test"));
      res.set_content(R"({"hello":"world"})", "application/json");
    });
    server_.Post("/echo", [](const httplib::Request& req, httplib::Response& res) {
      res.set_content(req.body, req.get_header_value("Content-Type"));
    });
    server_.Get("/missing", [](const httplib::Request&, httplib::Response& res) {
      res.status = 404;
      res.set_content("nope", "text/plain");
    });
    server_.Get("/broken", [](const httplib::Request&, httplib::Response& res) {
      res.status = 500;
      res.set_content("boom", "text/plain");
    });
    server_.Get("/flaky", [this](const httplib::Request&, httplib::Response& res) {
      if (flaky_calls_.fetch_add(1) == 0) {
        res.status = 500;
        res.set_content("first call fails", "text/plain");
      } else {
        res.set_content(R"({"recovered":true})", "application/json");
      }
    });
    server_.Get("/gate", [this](const httplib::Request&, httplib::Response& res) {
      std::unique_lock<std::mutex> lock(mu_);
      ++gate_arrivals_;
      cv_.notify_all();
      cv_.wait_for(lock, std::chrono::seconds(30), [this] { return done_ || gate_open_; });
      res.set_content(R"({"passed":true})", "application/json");
    });
    server_.Get("/slow", [this](const httplib::Request&, httplib::Response& res) {
      // Holds the response until the test ends (or 10s): the client's timeout must fire first.
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, std::chrono::seconds(10), [this] { return done_; });
      res.set_content("late", "text/plain");
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    // httplib::Server::stop() before the listen loop started is lost and join() would hang.
    while (!server_.is_running()) std::this_thread::yield();
  }
  ~LocalHttpServer() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    server_.stop();
    thread_.join();
  }
  int flaky_calls() const { return flaky_calls_.load(); }
  int ok_calls() const { return ok_calls_.load(); }
  void OpenGate() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      gate_open_ = true;
    }
    cv_.notify_all();
  }
  // Waits until `n` requests have arrived at /gate in total; false after `timeout`.
  bool AwaitGateArrivals(int n, std::chrono::seconds timeout = std::chrono::seconds(30)) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return gate_arrivals_ >= n; });
  }
  std::string Url(absl::string_view path) const {
    return absl::StrCat("http://127.0.0.1:", port_, path);
  }

 private:
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  bool gate_open_ = false;
  int gate_arrivals_ = 0;
  std::atomic<int> flaky_calls_{0};
  std::atomic<int> ok_calls_{0};
};

}  // namespace eventbus::executor::testing
