// The service's HTTP server on its own: keep-alive, TCP_NODELAY, routing errors, body limits,
// deferred answers from other threads, the connection limit and stop.

#include "http_server.h"

#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "raw_http_client.h"

namespace eventbus::executor::service {
namespace {

using ::nlohmann::json;
using ::testing::HasSubstr;
using testing::RawHttpClient;
using testing::RawResponse;

HttpResponse Text(std::string body) {
  return HttpResponse{.status = 200, .content_type = "text/plain", .body = std::move(body)};
}

std::string ErrorOf(const RawResponse& response) {
  json body = json::parse(response.body, nullptr, false);
  if (!body.is_object() || !body.contains("error")) return "<no JSON error: " + response.body + ">";
  return body["error"].get<std::string>();
}

// The server-side socket of the connection whose peer is 127.0.0.1:`client_port`: this process
// holds both ends, so it is among our own descriptors.
int ServerSideFd(int server_port, int client_port) {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int found = -1;
  while (dirent* entry = readdir(dir)) {
    const int fd = std::atoi(entry->d_name);
    if (fd <= 2) continue;
    sockaddr_in local{}, peer{};
    socklen_t local_len = sizeof(local), peer_len = sizeof(peer);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) != 0 ||
        getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0 ||
        local.sin_family != AF_INET) {
      continue;
    }
    if (ntohs(local.sin_port) == server_port && ntohs(peer.sin_port) == client_port) found = fd;
  }
  closedir(dir);
  return found;
}

class HttpServerTest : public ::testing::Test {
 protected:
  void StartServer(HttpServerOptions options = {}) {
    options.host = "127.0.0.1";
    options.port = 0;
    server_ = std::make_unique<HttpServer>(options);
    server_->Route("GET", "/hello", {}, [this](HttpRequest&& request, HttpResponder respond) {
      ++hellos_;
      respond(Text(absl::StrCat("hello ", request.path)));
    });
    server_->Route("POST", "/echo", {.max_body_bytes = 1000},
                   [](HttpRequest&& request, HttpResponder respond) {
                     respond(Text(absl::StrCat(request.content_type, "|", request.body)));
                   });
    server_->Route("POST", "/big", {.max_body_bytes = 4 << 20},
                   [](HttpRequest&& request, HttpResponder respond) {
                     respond(Text(absl::StrCat(request.body.size())));
                   });
    server_->Route("POST", "/later", {}, [this](HttpRequest&&, HttpResponder respond) {
      std::lock_guard lock(mu_);
      held_.push_back(std::move(respond));
    });
    server_->Guard("/private/", [](const HttpRequest& request) -> std::optional<HttpResponse> {
      if (request.authorization == "yes") return std::nullopt;
      return JsonError(401, "no");
    });
    server_->Route("GET", "/private/thing", {}, [](HttpRequest&&, HttpResponder respond) {
      respond(Text("secret"));
    });
    ASSERT_TRUE(server_->Start().ok());
  }

  // Responders the /later route holds, once `count` requests arrived.
  std::vector<HttpResponder> AwaitHeld(size_t count) {
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (absl::Now() < deadline) {
      {
        std::lock_guard lock(mu_);
        if (held_.size() >= count) return std::move(held_);
      }
      std::this_thread::yield();
    }
    ADD_FAILURE() << "the requests did not arrive";
    return {};
  }

  int port() const { return server_->port(); }

  std::unique_ptr<HttpServer> server_;
  std::atomic<int> hellos_{0};
  std::mutex mu_;
  std::vector<HttpResponder> held_;
};

TEST_F(HttpServerTest, KeepAliveAnswersEveryRequestOnOneConnection) {
  StartServer();
  RawHttpClient client(port());
  ASSERT_TRUE(client.connected());
  for (int i = 0; i < 200; ++i) {
    auto response = client.RoundTrip(RawHttpClient::Request("GET", absl::StrCat("/hello?i=", i)));
    ASSERT_TRUE(response.has_value()) << "request " << i;
    EXPECT_EQ(response->status, 200);
    EXPECT_EQ(response->body, "hello /hello");
  }
  EXPECT_EQ(hellos_, 200);
  EXPECT_EQ(server_->open_connections(), 1);
}

TEST_F(HttpServerTest, PipelinedRequestsAreAnsweredInOrder) {
  StartServer();
  RawHttpClient client(port());
  ASSERT_TRUE(client.Send(absl::StrCat(RawHttpClient::Request("POST", "/echo", "one"),
                                       RawHttpClient::Request("POST", "/echo", "two"))));
  auto first = client.Read();
  auto second = client.Read();
  ASSERT_TRUE(first.has_value() && second.has_value());
  EXPECT_EQ(first->body, "|one");
  EXPECT_EQ(second->body, "|two");
}

TEST_F(HttpServerTest, AcceptedSocketsHaveNagleOff) {
  StartServer();
  RawHttpClient client(port());
  ASSERT_TRUE(client.RoundTrip(RawHttpClient::Request("GET", "/hello")).has_value());
  const int fd = ServerSideFd(port(), client.local_port());
  ASSERT_GE(fd, 0) << "no server-side socket found";
  int nodelay = 0;
  socklen_t len = sizeof(nodelay);
  ASSERT_EQ(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &nodelay, &len), 0);
  EXPECT_NE(nodelay, 0);
}

TEST_F(HttpServerTest, UnknownPathIs404AndWrongMethodIs405BothJson) {
  StartServer();
  RawHttpClient client(port());
  auto missing = client.RoundTrip(RawHttpClient::Request("GET", "/nope"));
  ASSERT_TRUE(missing.has_value());
  EXPECT_EQ(missing->status, 404);
  EXPECT_EQ(missing->Header("content-type"), "application/json");
  EXPECT_EQ(ErrorOf(*missing), "no route GET /nope");
  auto wrong = client.RoundTrip(RawHttpClient::Request("GET", "/echo"));
  ASSERT_TRUE(wrong.has_value());
  EXPECT_EQ(wrong->status, 405);
  EXPECT_EQ(wrong->Header("allow"), "POST");
  EXPECT_THAT(ErrorOf(*wrong), HasSubstr("not allowed"));
  // Both were bodiless: the connection stays usable.
  auto ok = client.RoundTrip(RawHttpClient::Request("GET", "/hello"));
  ASSERT_TRUE(ok.has_value());
  EXPECT_EQ(ok->status, 200);
}

TEST_F(HttpServerTest, BodyOverTheLimitIs413JsonWhateverTheContentType) {
  StartServer();
  const std::string big(1001, 'x');
  for (const char* type : {"application/json", "application/x-www-form-urlencoded", ""}) {
    RawHttpClient client(port());
    const std::string header = *type ? absl::StrCat("Content-Type: ", type, "\r\n") : "";
    auto response = client.RoundTrip(RawHttpClient::Request("POST", "/echo", big, header));
    ASSERT_TRUE(response.has_value()) << type;
    EXPECT_EQ(response->status, 413) << type;
    EXPECT_EQ(response->Header("content-type"), "application/json");
    EXPECT_THAT(ErrorOf(*response), HasSubstr("larger than 1000 bytes"));
    EXPECT_EQ(response->Header("connection"), "close");
  }
  // Chunked: no length up front, the limit trips while reading.
  RawHttpClient chunked(port());
  auto response = chunked.RoundTrip(absl::StrCat(
      "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n", big,
      "\r\n0\r\n\r\n"));
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, 413);
  // Within the limit, any content type is read as is.
  RawHttpClient form(port());
  auto echoed = form.RoundTrip(RawHttpClient::Request(
      "POST", "/echo", "{\"a\":1}", "Content-Type: application/x-www-form-urlencoded\r\n"));
  ASSERT_TRUE(echoed.has_value());
  EXPECT_EQ(echoed->body, "application/x-www-form-urlencoded|{\"a\":1}");
}

TEST_F(HttpServerTest, EachRouteHasItsOwnBodyLimitAboveBeastsDefault) {
  StartServer();
  RawHttpClient client(port());
  auto accepted = client.RoundTrip(RawHttpClient::Request("POST", "/big", std::string(2 << 20, 'x')));
  ASSERT_TRUE(accepted.has_value());
  EXPECT_EQ(accepted->status, 200);
  EXPECT_EQ(accepted->body, absl::StrCat(2 << 20));
  RawHttpClient refused(port());
  auto too_big = refused.RoundTrip(RawHttpClient::Request("POST", "/big", std::string(5 << 20, 'x')));
  ASSERT_TRUE(too_big.has_value());
  EXPECT_EQ(too_big->status, 413);
  EXPECT_THAT(ErrorOf(*too_big), HasSubstr("larger than 4194304 bytes"));
}

TEST_F(HttpServerTest, ExpectContinueIsAnsweredBeforeTheBodyIsSent) {
  StartServer();
  RawHttpClient client(port());
  ASSERT_TRUE(client.Send(
      "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"));
  auto interim = client.Read();
  ASSERT_TRUE(interim.has_value());
  EXPECT_EQ(interim->status, 100);
  auto response = client.RoundTrip("hi");
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->body, "|hi");
}

TEST_F(HttpServerTest, MalformedRequestIs400Json) {
  StartServer();
  RawHttpClient client(port());
  auto response = client.RoundTrip("NOT HTTP AT ALL\r\n\r\n");
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, 400);
  EXPECT_THAT(ErrorOf(*response), HasSubstr("malformed HTTP request"));
}

TEST_F(HttpServerTest, AnswersGivenLaterFromOtherThreadsReachTheirConnections) {
  StartServer();
  constexpr int kClients = 8;
  std::vector<std::unique_ptr<RawHttpClient>> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(std::make_unique<RawHttpClient>(port()));
    ASSERT_TRUE(clients.back()->Send(RawHttpClient::Request("POST", "/later", "x")));
  }
  std::vector<HttpResponder> held = AwaitHeld(kClients);
  ASSERT_EQ(held.size(), static_cast<size_t>(kClients));
  std::vector<std::thread> answerers;
  for (auto& respond : held) {
    answerers.emplace_back([respond] {
      respond(Text("late"));
      respond(Text("twice"));  // only the first answer counts
    });
  }
  for (auto& t : answerers) t.join();
  for (auto& client : clients) {
    auto response = client->Read();
    ASSERT_TRUE(response.has_value());
    EXPECT_EQ(response->body, "late");
    // The connection is ready for its next request, and no second answer is queued on it.
    auto next = client->RoundTrip(RawHttpClient::Request("GET", "/hello"));
    ASSERT_TRUE(next.has_value());
    EXPECT_EQ(next->body, "hello /hello");
  }
}

TEST_F(HttpServerTest, AHandlerThatNeverAnswersGets503AfterTheResponseTimeout) {
  StartServer({.response_timeout = absl::Milliseconds(50)});
  RawHttpClient client(port());
  auto response = client.RoundTrip(RawHttpClient::Request("POST", "/later", "x"));
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->status, 503);
  EXPECT_THAT(ErrorOf(*response), HasSubstr("no answer within 50ms"));
  // The handler's late answer is dropped; the connection serves the next request.
  for (auto& respond : AwaitHeld(1)) respond(Text("too late"));
  auto next = client.RoundTrip(RawHttpClient::Request("GET", "/hello"));
  ASSERT_TRUE(next.has_value());
  EXPECT_EQ(next->body, "hello /hello");
}

TEST_F(HttpServerTest, ConnectionsBeyondTheLimitGet503Json) {
  StartServer({.max_connections = 2});
  RawHttpClient first(port()), second(port());
  ASSERT_TRUE(first.RoundTrip(RawHttpClient::Request("GET", "/hello")).has_value());
  ASSERT_TRUE(second.RoundTrip(RawHttpClient::Request("GET", "/hello")).has_value());
  RawHttpClient third(port());
  auto refused = third.Read();  // answered without asking
  ASSERT_TRUE(refused.has_value());
  EXPECT_EQ(refused->status, 503);
  EXPECT_THAT(ErrorOf(*refused), HasSubstr("too many connections"));
  EXPECT_TRUE(third.PeerClosed());
  EXPECT_EQ(server_->open_connections(), 2);
}

TEST_F(HttpServerTest, GuardedPrefixRefusesRoutedAndUnroutedPaths) {
  StartServer();
  RawHttpClient client(port());
  auto routed = client.RoundTrip(RawHttpClient::Request("GET", "/private/thing"));
  ASSERT_TRUE(routed.has_value());
  EXPECT_EQ(routed->status, 401);
  auto unrouted = client.RoundTrip(RawHttpClient::Request("GET", "/private/other"));
  ASSERT_TRUE(unrouted.has_value());
  EXPECT_EQ(unrouted->status, 401);
  auto allowed =
      client.RoundTrip(RawHttpClient::Request("GET", "/private/thing", "", "Authorization: yes\r\n"));
  ASSERT_TRUE(allowed.has_value());
  EXPECT_EQ(allowed->body, "secret");
}

TEST_F(HttpServerTest, StartFailsNamingTheAddressWhenThePortIsTaken) {
  StartServer();
  HttpServer second({.host = "127.0.0.1", .port = port()});
  absl::Status status = second.Start();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr(absl::StrCat("cannot listen on 127.0.0.1:", port())));
}

TEST_F(HttpServerTest, StopClosesIdleConnectionsAtOnceAndDropsLaterAnswers) {
  StartServer({.idle_timeout = absl::Minutes(10), .stop_grace = absl::Milliseconds(200)});
  RawHttpClient idle(port());
  ASSERT_TRUE(idle.RoundTrip(RawHttpClient::Request("GET", "/hello")).has_value());
  RawHttpClient waiting(port());
  ASSERT_TRUE(waiting.Send(RawHttpClient::Request("POST", "/later", "x")));
  std::vector<HttpResponder> held = AwaitHeld(1);
  const absl::Time start = absl::Now();
  server_->Stop();
  // Idle: closed at once; waiting: cut after the grace period; neither waits 10 minutes.
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_TRUE(idle.PeerClosed());
  EXPECT_FALSE(waiting.Read().has_value());
  for (auto& respond : held) respond(Text("after stop"));  // must be harmless
  server_.reset();
}

TEST_F(HttpServerTest, StopLetsAnAnswerInProgressBeWritten) {
  StartServer({.stop_grace = absl::Seconds(10)});
  RawHttpClient waiting(port());
  ASSERT_TRUE(waiting.Send(RawHttpClient::Request("POST", "/later", "x")));
  std::vector<HttpResponder> held = AwaitHeld(1);
  std::thread stopper([this] { server_->Stop(); });
  held[0](Text("answered during stop"));
  auto response = waiting.Read();
  stopper.join();
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->body, "answered during stop");
}

}  // namespace
}  // namespace eventbus::executor::service
