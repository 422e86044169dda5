#include "eventbus/executor/http_client.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <cstdlib>
#include <future>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "eventbus/harness/server_process.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "slow_http_server.h"

namespace eventbus::executor {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::UnorderedElementsAre;

// A cpp-httplib server on 127.0.0.1 with the endpoints the tests need, on its own thread.
class TestServer {
 public:
  explicit TestServer(std::unique_ptr<httplib::Server> server) : server_(std::move(server)) {
    auto echo = [this](const httplib::Request& req, httplib::Response& res) {
      requests_.fetch_add(1);
      res.status = 200;
      res.set_header("X-Method", req.method);
      res.set_header("X-Seen-Test-Header", req.get_header_value("X-Test"));
      res.set_header("X-Seen-Content-Type", req.get_header_value("Content-Type"));
      res.set_header("X-Seen-Authorization", req.get_header_value("Authorization"));
      res.set_header("X-Seen-Cookie", req.get_header_value("Cookie"));
      res.set_header("X-Seen-Accept", req.get_header_value("Accept"));
      res.set_header("Set-Cookie", "a=1");
      res.set_header("Set-Cookie", "b=2");
      res.set_content(req.body, "application/octet-stream");
    };
    server_->Get("/echo", echo);
    server_->Post("/echo", echo);
    server_->Put("/echo", echo);
    server_->Patch("/echo", echo);
    server_->Delete("/echo", echo);
    server_->Get(R"(/status/(\d+))", [this](const httplib::Request& req, httplib::Response& res) {
      requests_.fetch_add(1);
      res.status = std::stoi(req.matches[1]);
      // 204 and 304 have no body by definition; sending one would corrupt the connection.
      if (res.status != 204 && res.status != 304) {
        res.set_content(absl::StrCat("status ", res.status), "text/plain");
      }
    });
    server_->Get("/slow", [this](const httplib::Request&, httplib::Response& res) {
      requests_.fetch_add(1);
      std::unique_lock<std::mutex> lock(mu_);
      released_cv_.wait_for(lock, std::chrono::seconds(20), [this] { return released_; });
      res.set_content("late", "text/plain");
    });
    server_->Get("/big", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(std::string(2 * 1024 * 1024, 'x'), "text/plain");
    });
    server_->Get("/redirect", [](const httplib::Request&, httplib::Response& res) {
      res.set_redirect("/status/204");
    });
    // 302 (or ?status=) to ?to=, which may be relative, another server or another scheme.
    auto redirect_to = [this](const httplib::Request& req, httplib::Response& res) {
      requests_.fetch_add(1);
      const int status = req.has_param("status") ? std::stoi(req.get_param_value("status")) : 302;
      res.set_redirect(req.get_param_value("to"), status);
    };
    server_->Get("/redirect-to", redirect_to);
    server_->Post("/redirect-to", redirect_to);
    server_->Get("/loop", [this](const httplib::Request&, httplib::Response& res) {
      requests_.fetch_add(1);
      res.set_redirect("/loop");
    });
    // Bound and listening here: connections wait in the backlog until the accept loop runs.
    port_ = server_->bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_->listen_after_bind(); });
    // httplib's stop() is a no-op until the accept loop has started: wait for it, or a test
    // that never sends a request would hang in the destructor.
    for (int i = 0; i < 1000 && !server_->is_running(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

  ~TestServer() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      released_ = true;
    }
    released_cv_.notify_all();
    server_->stop();
    thread_.join();
  }

  int port() const { return port_; }
  std::string Url(absl::string_view path, absl::string_view scheme = "http") const {
    return absl::StrCat(scheme, "://127.0.0.1:", port_, path);
  }
  int requests() const { return requests_.load(); }

 private:
  std::unique_ptr<httplib::Server> server_;
  int port_ = -1;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable released_cv_;
  bool released_ = false;  // guarded by mu_; set on destruction to free /slow handlers
  std::atomic<int> requests_{0};
};

class HttpClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The tests talk to 127.0.0.1 only: no proxy from the environment may get in between.
    for (const char* var : {"http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                            "all_proxy"}) {
      unsetenv(var);
    }
    server_ = std::make_unique<TestServer>(std::make_unique<httplib::Server>());
    ASSERT_GT(server_->port(), 0) << "test HTTP server did not bind";
    absl::StatusOr<std::unique_ptr<HttpClient>> client = HttpClient::Create();
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  HttpRequest Request(HttpMethod method, absl::string_view path) {
    HttpRequest request;
    request.method = method;
    request.url = server_->Url(path);
    request.timeout = absl::Seconds(10);
    return request;
  }

  std::unique_ptr<TestServer> server_;
  std::unique_ptr<HttpClient> client_;
};

TEST_F(HttpClientTest, EveryMethodRoundTripsHeadersAndBody) {
  for (HttpMethod method : {HttpMethod::kGet, HttpMethod::kPost, HttpMethod::kPut,
                            HttpMethod::kPatch, HttpMethod::kDelete}) {
    SCOPED_TRACE(HttpMethodName(method));
    HttpRequest request = Request(method, "/echo");
    request.headers = {{"X-Test", "hello"}, {"Content-Type", "application/json"}};
    if (method != HttpMethod::kGet) request.body = R"({"task":"t1","n":1})";
    absl::StatusOr<HttpResponse> response = client_->Send(request);
    ASSERT_TRUE(response.ok()) << response.status();
    EXPECT_EQ(response->status, 200);
    EXPECT_EQ(ClassifyHttpResponse(*response), HttpOutcome::kSuccess);
    EXPECT_EQ(response->Header("x-method"), std::string(HttpMethodName(method)));
    EXPECT_EQ(response->Header("X-SEEN-TEST-HEADER"), "hello");
    EXPECT_EQ(response->Header("x-seen-content-type"), "application/json");
    EXPECT_EQ(response->body, request.body);
    EXPECT_GT(response->elapsed, absl::ZeroDuration());
    auto [begin, end] = response->headers.equal_range("set-cookie");
    std::vector<std::string> cookies;
    for (auto it = begin; it != end; ++it) cookies.push_back(it->second);
    EXPECT_THAT(cookies, UnorderedElementsAre("a=1", "b=2"));
  }
}

TEST_F(HttpClientTest, BinaryBodyWithNulBytesSurvives) {
  HttpRequest request = Request(HttpMethod::kPost, "/echo");
  request.body = std::string("a\0b\0\xff" "c", 6);
  absl::StatusOr<HttpResponse> response = client_->Send(request);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->body, request.body);
}

TEST_F(HttpClientTest, EmptyHeaderValueIsSent) {
  HttpRequest request = Request(HttpMethod::kGet, "/echo");
  request.headers = {{"X-Test", ""}};
  absl::StatusOr<HttpResponse> response = client_->Send(request);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->Header("X-Seen-Test-Header"), "");
}

TEST_F(HttpClientTest, NotFoundIsPermanentAndServerErrorIsTransient) {
  absl::StatusOr<HttpResponse> not_found = client_->Send(Request(HttpMethod::kGet, "/status/404"));
  ASSERT_TRUE(not_found.ok()) << not_found.status();
  EXPECT_EQ(not_found->status, 404);
  EXPECT_EQ(ClassifyHttpResponse(*not_found), HttpOutcome::kPermanent);

  absl::StatusOr<HttpResponse> server_error =
      client_->Send(Request(HttpMethod::kGet, "/status/500"));
  ASSERT_TRUE(server_error.ok()) << server_error.status();
  EXPECT_EQ(server_error->status, 500);
  EXPECT_EQ(server_error->body, "status 500");
  EXPECT_EQ(ClassifyHttpResponse(*server_error), HttpOutcome::kTransient);

  absl::StatusOr<HttpResponse> too_many = client_->Send(Request(HttpMethod::kGet, "/status/429"));
  ASSERT_TRUE(too_many.ok()) << too_many.status();
  EXPECT_EQ(ClassifyHttpResponse(*too_many), HttpOutcome::kTransient);
}

TEST(ClassifyHttpStatusTest, CoversEveryClass) {
  EXPECT_EQ(ClassifyHttpStatus(200), HttpOutcome::kSuccess);
  EXPECT_EQ(ClassifyHttpStatus(204), HttpOutcome::kSuccess);
  EXPECT_EQ(ClassifyHttpStatus(299), HttpOutcome::kSuccess);
  EXPECT_EQ(ClassifyHttpStatus(500), HttpOutcome::kTransient);
  EXPECT_EQ(ClassifyHttpStatus(503), HttpOutcome::kTransient);
  EXPECT_EQ(ClassifyHttpStatus(599), HttpOutcome::kTransient);
  EXPECT_EQ(ClassifyHttpStatus(408), HttpOutcome::kTransient);
  EXPECT_EQ(ClassifyHttpStatus(429), HttpOutcome::kTransient);
  EXPECT_EQ(ClassifyHttpStatus(400), HttpOutcome::kPermanent);
  EXPECT_EQ(ClassifyHttpStatus(401), HttpOutcome::kPermanent);
  EXPECT_EQ(ClassifyHttpStatus(404), HttpOutcome::kPermanent);
  EXPECT_EQ(ClassifyHttpStatus(422), HttpOutcome::kPermanent);
  EXPECT_EQ(ClassifyHttpStatus(301), HttpOutcome::kPermanent);
  EXPECT_EQ(ClassifyHttpStatus(100), HttpOutcome::kPermanent);
  EXPECT_EQ(ClassifyHttpStatus(0), HttpOutcome::kPermanent);
}

TEST_F(HttpClientTest, RedirectIsTheResponseUnlessFollowingIsAsked) {
  absl::StatusOr<HttpResponse> not_followed = client_->Send(Request(HttpMethod::kGet, "/redirect"));
  ASSERT_TRUE(not_followed.ok()) << not_followed.status();
  EXPECT_EQ(not_followed->status, 302);
  EXPECT_EQ(not_followed->Header("Location"), "/status/204");
  EXPECT_EQ(ClassifyHttpResponse(*not_followed), HttpOutcome::kPermanent);

  HttpRequest request = Request(HttpMethod::kGet, "/redirect");
  request.follow_redirects = true;
  absl::StatusOr<HttpResponse> followed = client_->Send(request);
  ASSERT_TRUE(followed.ok()) << followed.status();
  EXPECT_EQ(followed->status, 204);
  EXPECT_EQ(followed->redirects, 1);
}

TEST_F(HttpClientTest, TimeoutIsDeadlineExceededAndTransient) {
  HttpRequest request = Request(HttpMethod::kGet, "/slow");
  request.timeout = absl::Milliseconds(300);
  const absl::Time start = absl::Now();
  absl::StatusOr<HttpResponse> response = client_->Send(request);
  ASSERT_FALSE(response.ok());
  EXPECT_TRUE(absl::IsDeadlineExceeded(response.status())) << response.status();
  EXPECT_TRUE(IsTransientHttpError(response.status()));
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
}

TEST_F(HttpClientTest, ConnectionRefusedIsUnavailableAndTransient) {
  absl::StatusOr<int> port = harness::FreeLoopbackPort();
  ASSERT_TRUE(port.ok()) << port.status();
  HttpRequest request;
  request.url = absl::StrCat("http://127.0.0.1:", *port, "/nothing-listens");
  absl::StatusOr<HttpResponse> response = client_->Send(request);
  ASSERT_FALSE(response.ok());
  EXPECT_TRUE(absl::IsUnavailable(response.status())) << response.status();
  EXPECT_TRUE(IsTransientHttpError(response.status()));
  EXPECT_THAT(response.status().message(), HasSubstr(absl::StrCat("127.0.0.1:", *port)));
}

// A raw TCP server on 127.0.0.1 that answers one connection with `reply` (possibly nothing)
// and hangs up: what a crashing or misbehaving upstream looks like.
class OneShotServer {
 public:
  explicit OneShotServer(std::string reply) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof(addr);
    if (fd_ < 0 || bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        listen(fd_, 1) != 0 || getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      return;
    }
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this, reply = std::move(reply)] {
      const int conn = accept(fd_, nullptr, nullptr);
      if (conn < 0) return;
      std::string request;
      char buf[4096];
      while (request.find("\r\n\r\n") == std::string::npos) {
        const ssize_t n = read(conn, buf, sizeof(buf));
        if (n <= 0) break;
        request.append(buf, static_cast<size_t>(n));
      }
      if (!reply.empty()) (void)!write(conn, reply.data(), reply.size());
      close(conn);
    });
  }
  ~OneShotServer() {
    if (fd_ >= 0) shutdown(fd_, SHUT_RDWR);  // unblocks accept if no client came
    if (thread_.joinable()) thread_.join();
    if (fd_ >= 0) close(fd_);
  }
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = -1;
  std::thread thread_;
};

TEST_F(HttpClientTest, ServerHangingUpWithoutAReplyIsUnavailable) {
  OneShotServer server("");
  ASSERT_GT(server.port(), 0);
  HttpRequest request;
  request.url = absl::StrCat("http://127.0.0.1:", server.port(), "/");
  absl::StatusOr<HttpResponse> response = client_->Send(request);
  ASSERT_FALSE(response.ok());
  EXPECT_TRUE(absl::IsUnavailable(response.status())) << response.status();
  EXPECT_TRUE(IsTransientHttpError(response.status()));
}

TEST_F(HttpClientTest, GarbageReplyIsUnavailable) {
  OneShotServer server("this is not HTTP\r\n\r\n");
  ASSERT_GT(server.port(), 0);
  HttpRequest request;
  request.url = absl::StrCat("http://127.0.0.1:", server.port(), "/");
  absl::StatusOr<HttpResponse> response = client_->Send(request);
  ASSERT_FALSE(response.ok());
  EXPECT_TRUE(absl::IsUnavailable(response.status())) << response.status();
}

TEST_F(HttpClientTest, TruncatedBodyIsUnavailable) {
  OneShotServer server("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a part");
  ASSERT_GT(server.port(), 0);
  HttpRequest request;
  request.url = absl::StrCat("http://127.0.0.1:", server.port(), "/");
  absl::StatusOr<HttpResponse> response = client_->Send(request);
  ASSERT_FALSE(response.ok());
  EXPECT_TRUE(absl::IsUnavailable(response.status())) << response.status();
}

TEST_F(HttpClientTest, CancellationAbortsARunningCall) {
  HttpRequest request = Request(HttpMethod::kGet, "/slow");
  request.timeout = absl::Seconds(30);
  std::atomic<bool> cancel{false};
  request.cancelled = [&cancel] { return cancel.load(); };
  std::thread canceller([&cancel] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    cancel.store(true);
  });
  const absl::Time start = absl::Now();
  absl::StatusOr<HttpResponse> response = client_->Send(request);
  canceller.join();
  ASSERT_FALSE(response.ok());
  EXPECT_TRUE(absl::IsCancelled(response.status())) << response.status();
  EXPECT_FALSE(IsTransientHttpError(response.status()));
  // The progress callback runs about once a second on an idle connection.
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

TEST_F(HttpClientTest, AlreadyCancelledCallNeverReachesTheServer) {
  HttpRequest request = Request(HttpMethod::kPost, "/echo");
  request.cancelled = [] { return true; };
  absl::StatusOr<HttpResponse> response = client_->Send(request);
  EXPECT_TRUE(absl::IsCancelled(response.status())) << response.status();
  EXPECT_EQ(server_->requests(), 0);
}

TEST_F(HttpClientTest, ResponseOverTheSizeCapIsResourceExhausted) {
  HttpClientOptions options;
  options.max_response_bytes = 1024 * 1024;
  absl::StatusOr<std::unique_ptr<HttpClient>> client = HttpClient::Create(options);
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<HttpResponse> response = (*client)->Send(Request(HttpMethod::kGet, "/big"));
  ASSERT_FALSE(response.ok());
  EXPECT_TRUE(absl::IsResourceExhausted(response.status())) << response.status();
  EXPECT_FALSE(IsTransientHttpError(response.status()));
  // The same client still works afterwards (the handle went back to the pool clean).
  absl::StatusOr<HttpResponse> small = (*client)->Send(Request(HttpMethod::kGet, "/status/200"));
  ASSERT_TRUE(small.ok()) << small.status();
  EXPECT_EQ(small->status, 200);
}

TEST_F(HttpClientTest, BadRequestsAreInvalidArgument) {
  std::vector<HttpRequest> bad;
  for (const char* url : {"", "not a url", "127.0.0.1/no-scheme", "ftp://127.0.0.1/x",
                          "file:///etc/passwd", "http://"}) {
    HttpRequest request;
    request.url = url;
    bad.push_back(request);
  }
  HttpRequest get_with_body = Request(HttpMethod::kGet, "/echo");
  get_with_body.body = "x";
  bad.push_back(get_with_body);
  HttpRequest header_injection = Request(HttpMethod::kGet, "/echo");
  header_injection.headers = {{"X-Test", "a\r\nX-Evil: 1"}};
  bad.push_back(header_injection);
  HttpRequest bad_header_name = Request(HttpMethod::kGet, "/echo");
  bad_header_name.headers = {{"X Test", "a"}};
  bad.push_back(bad_header_name);
  HttpRequest zero_timeout = Request(HttpMethod::kGet, "/echo");
  zero_timeout.timeout = absl::ZeroDuration();
  bad.push_back(zero_timeout);
  for (const HttpRequest& request : bad) {
    absl::StatusOr<HttpResponse> response = client_->Send(request);
    EXPECT_TRUE(absl::IsInvalidArgument(response.status()))
        << "url '" << request.url << "': " << response.status();
  }
  EXPECT_EQ(server_->requests(), 0);
}

TEST_F(HttpClientTest, ErrorMessagesLeaveOutCredentialsAndQuery) {
  absl::StatusOr<int> port = harness::FreeLoopbackPort();
  ASSERT_TRUE(port.ok()) << port.status();
  HttpRequest request;
  request.url = absl::StrCat("http://user:s3cret@127.0.0.1:", *port, "/path/s3cret?token=s3cret");
  absl::StatusOr<HttpResponse> response = client_->Send(request);
  ASSERT_FALSE(response.ok());
  // scheme://host:port only: webhook tokens live in paths.
  EXPECT_THAT(response.status().message(), HasSubstr(absl::StrCat("http://127.0.0.1:", *port)));
  EXPECT_THAT(response.status().message(), Not(HasSubstr("/path")));
  EXPECT_THAT(response.status().message(), Not(HasSubstr("s3cret")));
}

TEST_F(HttpClientTest, ConcurrentCallsFromManyThreads) {
  std::vector<std::thread> threads;
  std::vector<int> failures(6, 0);
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        HttpRequest request = Request(HttpMethod::kPost, "/echo");
        request.body = absl::StrCat("thread ", t, " call ", i);
        absl::StatusOr<HttpResponse> response = client_->Send(request);
        if (!response.ok() || response->body != request.body) ++failures[t];
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_THAT(failures, ::testing::Each(0));
  EXPECT_EQ(server_->requests(), 120);
}

TEST(HttpMethodTest, ParsesTheFiveMethodsCaseInsensitively) {
  EXPECT_EQ(*ParseHttpMethod("get"), HttpMethod::kGet);
  EXPECT_EQ(*ParseHttpMethod("POST"), HttpMethod::kPost);
  EXPECT_EQ(*ParseHttpMethod("Put"), HttpMethod::kPut);
  EXPECT_EQ(*ParseHttpMethod("patch"), HttpMethod::kPatch);
  EXPECT_EQ(*ParseHttpMethod("DELETE"), HttpMethod::kDelete);
  for (const char* bad : {"HEAD", "OPTIONS", "", "GETT"}) {
    absl::StatusOr<HttpMethod> method = ParseHttpMethod(bad);
    EXPECT_TRUE(absl::IsInvalidArgument(method.status())) << bad;
    EXPECT_THAT(method.status().message(), HasSubstr("GET, POST, PUT, PATCH, DELETE"));
  }
}

TEST(HttpHostKeyTest, NormalisesSchemeHostAndPort) {
  EXPECT_EQ(*HttpHostKey("https://API.Example.com/v1/x?q=1"), "https://api.example.com:443");
  EXPECT_EQ(*HttpHostKey("http://example.com"), "http://example.com:80");
  EXPECT_EQ(*HttpHostKey("http://user:pw@127.0.0.1:8080/a"), "http://127.0.0.1:8080");
  EXPECT_EQ(*HttpHostKey("HTTP://[::1]:9000/"), "http://[::1]:9000");
  EXPECT_TRUE(absl::IsInvalidArgument(HttpHostKey("ftp://example.com/").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(HttpHostKey("no scheme").status()));
}

// --- Destination policy (issue 9) -------------------------------------------------------------

class HttpClientPolicyTest : public HttpClientTest {
 protected:
  std::unique_ptr<HttpClient> ClientWith(DestinationPolicyOptions destinations) {
    HttpClientOptions options;
    options.destinations = std::move(destinations);
    absl::StatusOr<std::unique_ptr<HttpClient>> client = HttpClient::Create(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }
  std::string LocalhostUrl(absl::string_view path) const {
    return absl::StrCat("http://localhost:", server_->port(), path);
  }
};

TEST_F(HttpClientPolicyTest, DeniedCidrIsPermanentAndNamesTheSetting) {
  auto client = ClientWith({.deny = {"10.0.0.0/8", "127.0.0.0/8"}});
  ASSERT_NE(client, nullptr);
  absl::StatusOr<HttpResponse> response = client->Send(Request(HttpMethod::kGet, "/echo"));
  ASSERT_TRUE(absl::IsPermissionDenied(response.status())) << response.status();
  EXPECT_FALSE(IsTransientHttpError(response.status()));
  EXPECT_THAT(response.status().message(), HasSubstr("denied by the call policy"));
  EXPECT_THAT(response.status().message(), HasSubstr("EXECUTOR_CALL_DENY entry '127.0.0.0/8'"));
  EXPECT_EQ(server_->requests(), 0);
}

TEST_F(HttpClientPolicyTest, DenyPrivateRefusesLoopback) {
  auto client = ClientWith({.deny_private = true});
  ASSERT_NE(client, nullptr);
  absl::StatusOr<HttpResponse> response = client->Send(Request(HttpMethod::kGet, "/echo"));
  ASSERT_TRUE(absl::IsPermissionDenied(response.status())) << response.status();
  EXPECT_THAT(response.status().message(), HasSubstr("EXECUTOR_CALL_DENY_PRIVATE=true"));
  EXPECT_EQ(server_->requests(), 0);
}

TEST_F(HttpClientPolicyTest, HostNameResolvingToADeniedAddressIsRefused) {
  // The check is on the address connected to, not on the name: "localhost" is loopback.
  auto client = ClientWith({.deny_private = true});
  ASSERT_NE(client, nullptr);
  HttpRequest request = Request(HttpMethod::kGet, "/echo");
  request.url = LocalhostUrl("/echo");
  absl::StatusOr<HttpResponse> response = client->Send(request);
  ASSERT_TRUE(absl::IsPermissionDenied(response.status())) << response.status();
  EXPECT_THAT(response.status().message(), HasSubstr("destination localhost ("));
  EXPECT_EQ(server_->requests(), 0);
}

TEST_F(HttpClientPolicyTest, LinkLocalMetadataAddressIsDeniedByDefault) {
  // Refused before any packet leaves: the default client, no configuration.
  HttpRequest request;
  request.url = "http://169.254.169.254/latest/meta-data/";
  request.timeout = absl::Seconds(5);
  absl::StatusOr<HttpResponse> response = client_->Send(request);
  ASSERT_TRUE(absl::IsPermissionDenied(response.status())) << response.status();
  EXPECT_THAT(response.status().message(), HasSubstr("link-local"));
  EXPECT_THAT(response.status().message(), Not(HasSubstr("meta-data")));
}

TEST_F(HttpClientPolicyTest, AllowListAdmitsOnlyListedHosts) {
  auto by_name = ClientWith({.allow = {"localhost"}});
  ASSERT_NE(by_name, nullptr);
  HttpRequest named = Request(HttpMethod::kGet, "/echo");
  named.url = LocalhostUrl("/echo");
  absl::StatusOr<HttpResponse> allowed = by_name->Send(named);
  ASSERT_TRUE(allowed.ok()) << allowed.status();
  EXPECT_EQ(allowed->status, 200);
  // The same server under another name is not on the list.
  absl::StatusOr<HttpResponse> other = by_name->Send(Request(HttpMethod::kGet, "/echo"));
  ASSERT_TRUE(absl::IsPermissionDenied(other.status())) << other.status();
  EXPECT_THAT(other.status().message(), HasSubstr("EXECUTOR_CALL_ALLOW"));

  // An allowed CIDR lifts the private-range denial for its addresses.
  auto by_cidr = ClientWith({.allow = {"127.0.0.1/32"}, .deny_private = true});
  ASSERT_NE(by_cidr, nullptr);
  absl::StatusOr<HttpResponse> cidr = by_cidr->Send(Request(HttpMethod::kGet, "/echo"));
  ASSERT_TRUE(cidr.ok()) << cidr.status();
  EXPECT_EQ(cidr->status, 200);
}

TEST_F(HttpClientPolicyTest, MalformedEntriesAreInvalidArgument) {
  for (const char* entry : {"10.0.0.0/33", "exa mple.com", "*.", "http://x", "1.2.3.4/-1"}) {
    HttpClientOptions options;
    options.destinations.deny = {entry};
    absl::StatusOr<std::unique_ptr<HttpClient>> client = HttpClient::Create(options);
    EXPECT_TRUE(absl::IsInvalidArgument(client.status())) << entry;
    EXPECT_THAT(client.status().message(), HasSubstr(entry));
  }
}

// --- Redirects (issue 9) ----------------------------------------------------------------------

TEST_F(HttpClientTest, SameHostRedirectKeepsHeaders) {
  HttpRequest request = Request(HttpMethod::kGet, "/redirect-to?to=/echo");
  request.follow_redirects = true;
  request.headers = {{"X-Test", "hello"}, {"Authorization", "Bearer t0ken"}};
  absl::StatusOr<HttpResponse> response = client_->Send(request);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->Header("X-Seen-Test-Header"), "hello");
  EXPECT_EQ(response->Header("X-Seen-Authorization"), "Bearer t0ken");
}

TEST_F(HttpClientTest, CrossHostRedirectDropsCredentialsAndCustomHeaders) {
  // Another port is another host (scheme://host:port).
  TestServer other(std::make_unique<httplib::Server>());
  ASSERT_GT(other.port(), 0);
  HttpRequest request =
      Request(HttpMethod::kGet, absl::StrCat("/redirect-to?to=", other.Url("/echo")));
  request.follow_redirects = true;
  request.headers = {{"X-Test", "hello"},
                     {"Authorization", "Bearer t0ken"},
                     {"Cookie", "session=s3cret"},
                     {"Accept", "application/json"}};
  absl::StatusOr<HttpResponse> response = client_->Send(request);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->redirects, 1);
  EXPECT_EQ(other.requests(), 1);
  EXPECT_EQ(response->Header("X-Seen-Test-Header"), "");
  EXPECT_EQ(response->Header("X-Seen-Authorization"), "");
  EXPECT_EQ(response->Header("X-Seen-Cookie"), "");
  EXPECT_EQ(response->Header("X-Seen-Accept"), "application/json");
}

TEST_F(HttpClientTest, SeeOtherAfterPostFetchesWithGet) {
  HttpRequest request = Request(HttpMethod::kPost, "/redirect-to?status=303&to=/echo");
  request.follow_redirects = true;
  request.body = "once";
  request.headers = {{"Content-Type", "text/plain"}};
  absl::StatusOr<HttpResponse> response = client_->Send(request);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->Header("X-Method"), "GET");
  EXPECT_EQ(response->body, "");
}

TEST_F(HttpClientTest, RedirectToAnotherSchemeIsPermanent) {
  HttpRequest request = Request(HttpMethod::kGet, "/redirect-to?to=ftp://127.0.0.1/secret-file");
  request.follow_redirects = true;
  absl::StatusOr<HttpResponse> response = client_->Send(request);
  ASSERT_TRUE(absl::IsFailedPrecondition(response.status())) << response.status();
  EXPECT_FALSE(IsTransientHttpError(response.status()));
  EXPECT_THAT(response.status().message(), HasSubstr("ftp://"));
  EXPECT_THAT(response.status().message(), Not(HasSubstr("secret-file")));
  EXPECT_EQ(server_->requests(), 1);
}

TEST_F(HttpClientTest, TooManyRedirectsIsPermanent) {
  HttpRequest request = Request(HttpMethod::kGet, "/loop");
  request.follow_redirects = true;
  request.max_redirects = 3;
  absl::StatusOr<HttpResponse> response = client_->Send(request);
  ASSERT_TRUE(absl::IsFailedPrecondition(response.status())) << response.status();
  EXPECT_THAT(response.status().message(), HasSubstr("more than 3 redirects"));
  EXPECT_EQ(server_->requests(), 4);  // the first request and three hops
}

TEST_F(HttpClientTest, EveryRedirectHopIsCheckedAgainstThePolicy) {
  HttpRequest request =
      Request(HttpMethod::kGet, "/redirect-to?to=http://169.254.169.254/latest/meta-data/");
  request.follow_redirects = true;
  absl::StatusOr<HttpResponse> response = client_->Send(request);
  ASSERT_TRUE(absl::IsPermissionDenied(response.status())) << response.status();
  EXPECT_THAT(response.status().message(), HasSubstr("http://169.254.169.254:80"));
  EXPECT_THAT(response.status().message(), Not(HasSubstr("meta-data")));
}

// --- The event loop (issue 8) -----------------------------------------------------------------

int ThreadsInProcess() {
  int n = 0;
  if (DIR* dir = opendir("/proc/self/task")) {
    while (dirent* entry = readdir(dir)) {
      if (entry->d_name[0] != '.') ++n;
    }
    closedir(dir);
  }
  return n;
}

// Sends `calls` requests at once and waits for them all; the threads of the process are
// counted while the server holds every one of them.
struct Wave {
  int succeeded = 0;
  std::string first_error;
  absl::Duration elapsed;
  int threads_in_flight = 0;
};
Wave SendWave(HttpClient& client, testing::SlowHttpServer& server, int calls) {
  std::mutex mu;
  std::condition_variable cv;
  int completed = 0;  // guarded by mu
  Wave wave;          // guarded by mu until every call completed
  const absl::Time start = absl::Now();
  for (int i = 0; i < calls; ++i) {
    HttpRequest request;
    request.url = server.Url(absl::StrCat("/call/", i));
    request.timeout = absl::Seconds(30);
    client.SendAsync(std::move(request), [&](absl::StatusOr<HttpResponse> response) {
      std::lock_guard<std::mutex> lock(mu);
      ++completed;
      if (response.ok() && response->status == 200 && response->body == "ok") {
        ++wave.succeeded;
      } else if (wave.first_error.empty()) {
        wave.first_error = response.ok() ? absl::StrCat("HTTP ", response->status)
                                         : response.status().ToString();
      }
      cv.notify_all();
    });
  }
  EXPECT_TRUE(server.AwaitWaiting(calls, std::chrono::seconds(20)));
  const int threads = ThreadsInProcess();
  std::unique_lock<std::mutex> lock(mu);
  EXPECT_TRUE(cv.wait_for(lock, std::chrono::seconds(60), [&] { return completed == calls; }));
  wave.elapsed = absl::Now() - start;
  wave.threads_in_flight = threads;
  return wave;
}

TEST(HttpClientLoadTest, ThousandSlowCallsInFlightHoldNoThreadEach) {
  constexpr int kCalls = 1000;
  ASSERT_GE(testing::RaiseOpenFileLimit(), static_cast<rlim_t>(2 * kCalls + 100));
  testing::SlowHttpServer server(std::chrono::milliseconds(1000));
  const int threads_before = ThreadsInProcess();
  absl::StatusOr<std::unique_ptr<HttpClient>> client = HttpClient::Create();
  ASSERT_TRUE(client.ok()) << client.status();

  const Wave first = SendWave(**client, server, kCalls);
  EXPECT_EQ(first.succeeded, kCalls) << first.first_error;
  // One loop thread in the client; nothing per call.
  EXPECT_LE(first.threads_in_flight - threads_before, 4);
  EXPECT_LE(first.threads_in_flight, 32);
  // A thread per call in turn would take 1000 s; the 1 s answers overlap.
  EXPECT_LT(first.elapsed, absl::Seconds(5));

  // The second wave finds its connections kept alive: no new connection, no connect cost.
  const int connections = server.connections();
  const Wave second = SendWave(**client, server, kCalls);
  EXPECT_EQ(second.succeeded, kCalls) << second.first_error;
  EXPECT_EQ(server.connections(), connections);
  EXPECT_LT(second.elapsed, absl::Seconds(5));

  for (const Wave* wave : {&first, &second}) {
    std::cout << kCalls << " calls against a 1 s server (" << (wave == &first ? "new" : "reused")
              << " connections): " << absl::FormatDuration(wave->elapsed) << ", "
              << static_cast<int>(kCalls / absl::ToDoubleSeconds(wave->elapsed))
              << " calls/s, " << wave->threads_in_flight << " threads in the process ("
              << threads_before << " before the client)\n";
  }
  RecordProperty("calls_per_second_new_connections",
                 static_cast<int>(kCalls / absl::ToDoubleSeconds(first.elapsed)));
  RecordProperty("calls_per_second_reused_connections",
                 static_cast<int>(kCalls / absl::ToDoubleSeconds(second.elapsed)));
  RecordProperty("threads_in_flight", first.threads_in_flight);
}

TEST_F(HttpClientTest, SendFromACallbackIsRefusedNotDeadlocked) {
  std::promise<absl::Status> inner;
  client_->SendAsync(Request(HttpMethod::kGet, "/status/200"),
                     [&](absl::StatusOr<HttpResponse>) {
                       inner.set_value(client_->Send(Request(HttpMethod::kGet, "/status/200"))
                                           .status());
                     });
  EXPECT_TRUE(absl::IsFailedPrecondition(inner.get_future().get()));
}

TEST_F(HttpClientTest, DestroyingTheClientCancelsCallsInFlight) {
  std::promise<absl::Status> result;
  client_->SendAsync(Request(HttpMethod::kGet, "/slow"),
                     [&](absl::StatusOr<HttpResponse> r) { result.set_value(r.status()); });
  client_.reset();
  auto future = result.get_future();
  ASSERT_EQ(future.wait_for(std::chrono::seconds(0)), std::future_status::ready);
  EXPECT_TRUE(absl::IsCancelled(future.get()));
}

// HTTPS against a server whose certificate comes from a throwaway CA made for this test.
class HttpsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::string> dir = harness::MakeTempDir("eventbus-https-test");
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = new std::string(*dir);
    const std::string command = absl::StrCat(
        "cd ", *dir_,
        " && openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=eventbus-test-ca"
        " -keyout ca.key -out ca.pem"
        " && openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key"
        " -out server.csr"
        " && printf 'subjectAltName=IP:127.0.0.1\\n' > san.ext"
        " && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1"
        " -extfile san.ext -out server.pem",
        " > openssl.log 2>&1");
    ASSERT_EQ(std::system(command.c_str()), 0) << "openssl failed; see " << *dir_ << "/openssl.log";
  }
  static void TearDownTestSuite() {
    if (dir_ != nullptr) harness::RemoveTree(*dir_);
    delete dir_;
    dir_ = nullptr;
  }

  void SetUp() override {
    auto server = std::make_unique<httplib::SSLServer>((*dir_ + "/server.pem").c_str(),
                                                       (*dir_ + "/server.key").c_str());
    ASSERT_TRUE(server->is_valid()) << "HTTPS test server could not load its certificate";
    server_ = std::make_unique<TestServer>(std::move(server));
    ASSERT_GT(server_->port(), 0);
  }

  static std::string* dir_;
  std::unique_ptr<TestServer> server_;
};
std::string* HttpsTest::dir_ = nullptr;

TEST_F(HttpsTest, UntrustedCertificateIsRejected) {
  absl::StatusOr<std::unique_ptr<HttpClient>> client = HttpClient::Create();
  ASSERT_TRUE(client.ok()) << client.status();
  HttpRequest request;
  request.url = server_->Url("/status/200", "https");
  absl::StatusOr<HttpResponse> response = (*client)->Send(request);
  ASSERT_FALSE(response.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(response.status())) << response.status();
  EXPECT_THAT(response.status().message(), HasSubstr("TLS verification failed"));
  EXPECT_FALSE(IsTransientHttpError(response.status()));
}

TEST_F(HttpsTest, CertificateFromTheConfiguredCaIsAccepted) {
  HttpClientOptions options;
  options.ca_file = *dir_ + "/ca.pem";
  absl::StatusOr<std::unique_ptr<HttpClient>> client = HttpClient::Create(options);
  ASSERT_TRUE(client.ok()) << client.status();
  HttpRequest request;
  request.method = HttpMethod::kPost;
  request.url = server_->Url("/echo", "https");
  request.body = "over tls";
  absl::StatusOr<HttpResponse> response = (*client)->Send(request);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->body, "over tls");
}

}  // namespace
}  // namespace eventbus::executor
