// The conformance suite against a real redis-server (AOF on) that this binary starts on a free
// loopback port and stops at the end. Clients connect through a loopback proxy, so the
// cut_connection hook can reset their connections while the server runs.
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <hiredis/hiredis.h>

#include "absl/strings/str_cat.h"

#include "eventbus/clock.h"
#include "eventbus/conformance/conformance.h"
#include "eventbus/harness/redis_server.h"
#include "eventbus/harness/tcp_proxy.h"
#include "eventbus/redis/redis_event_stream.h"
#include "gtest/gtest.h"
#include "wire.h"

namespace {

eventbus::harness::RedisServer* server = nullptr;
eventbus::harness::TcpProxy* proxy = nullptr;

class RedisServerEnvironment : public testing::Environment {
 public:
  void SetUp() override {
    auto started = eventbus::harness::RedisServer::Start();
    // A server that cannot start is a failure, never a skip.
    if (!started.ok()) {
      std::fprintf(stderr, "cannot start redis-server: %s\n", started.status().ToString().c_str());
      std::abort();
    }
    server = started->release();
    auto proxied = eventbus::harness::TcpProxy::Start(server->port());
    if (!proxied.ok()) {
      std::fprintf(stderr, "cannot start the proxy: %s\n", proxied.status().ToString().c_str());
      std::abort();
    }
    proxy = proxied->release();
  }
  void TearDown() override {
    delete proxy;
    proxy = nullptr;
    delete server;
    server = nullptr;
  }
};

[[maybe_unused]] testing::Environment* const environment =
    testing::AddGlobalTestEnvironment(new RedisServerEnvironment);

absl::StatusOr<std::unique_ptr<eventbus::EventStream>> NewStream(
    eventbus::redis::RedisOptions options) {
  auto endpoint =
      eventbus::redis::ParseRedisUrl(absl::StrCat("redis://127.0.0.1:", proxy->port()));
  if (!endpoint.ok()) return endpoint.status();
  options.endpoint = *endpoint;
  return eventbus::redis::NewRedisEventStream(options, eventbus::Clock::Real());
}

// XADD of the entry the backend's encoder writes, as redis-cli would send it.
absl::Status XaddRaw(const std::string& stream, const eventbus::Event& event) {
  std::vector<std::string> args = {"XADD", stream, "*"};
  eventbus::redis::wire::AppendFields(event, args);
  std::vector<const char*> argv;
  std::vector<size_t> lengths;
  for (const std::string& arg : args) {
    argv.push_back(arg.data());
    lengths.push_back(arg.size());
  }
  std::unique_ptr<redisContext, decltype(&redisFree)> c(redisConnect("127.0.0.1", server->port()),
                                                        &redisFree);
  if (c == nullptr || c->err != 0) return absl::UnavailableError("cannot connect to redis-server");
  auto* reply = static_cast<redisReply*>(
      redisCommandArgv(c.get(), static_cast<int>(argv.size()), argv.data(), lengths.data()));
  if (reply == nullptr) return absl::UnavailableError("XADD: no reply");
  const bool ok = reply->type == REDIS_REPLY_STRING;
  freeReplyObject(reply);
  return ok ? absl::OkStatus() : absl::InternalError("XADD failed");
}

eventbus::conformance::BackendUnderTest RedisOnRealServer() {
  eventbus::conformance::BackendUnderTest backend;
  backend.name = "redis";
  backend.make_stream = [] { return NewStream(eventbus::redis::RedisOptions{}); };
  backend.make_bounded_stream = [] {
    eventbus::redis::RedisOptions options;
    options.max_queued_publishes = 50;
    return NewStream(options);
  };
  // Real time on a real server: the defaults' slack (2 s fetches, 0.5 s idle, 2 s delay).
  backend.fetch_wait = absl::Seconds(2);
  backend.quiet_wait = absl::Milliseconds(500);
  backend.nack_delay = absl::Seconds(2);
  backend.reclaim_idle = absl::Milliseconds(500);
  backend.events_per_publisher = 500;
  // Delayed nacks are promoted by the fetching consumer between XREADGROUP slices (200 ms).
  backend.nack_tolerance = absl::Seconds(1);
  // A dead consumer leaves its pending entries; it needs no process of its own to show that.
  backend.crash = eventbus::conformance::AbandonSubscription;
  backend.restart_server = [] {
    server->Kill();
    absl::Status restarted = server->Restart();
    if (!restarted.ok()) return absl::Status(restarted.code(), absl::StrCat(restarted.message(), "\n", server->LogTail()));
    return restarted;
  };
  backend.cut_connection = [] {
    proxy->CutConnections();
    return absl::OkStatus();
  };
  backend.write_raw = XaddRaw;
  return backend;
}

EVENTBUS_INSTANTIATE_CONFORMANCE(Redis, RedisOnRealServer());

}  // namespace
