// The conformance suite against a real nats-server (JetStream, file storage) that this binary
// starts on a free loopback port and stops at the end. Clients connect through a loopback
// proxy, so the cut_connection hook can reset their connections while the server runs.
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "absl/strings/str_cat.h"

#include "eventbus/clock.h"
#include "eventbus/conformance/conformance.h"
#include "eventbus/harness/nats_server.h"
#include "eventbus/harness/tcp_proxy.h"
#include "eventbus/nats/nats_event_stream.h"
#include "gtest/gtest.h"
#include "nats_handles.h"
#include "wire.h"

namespace {

eventbus::harness::NatsServer* server = nullptr;
eventbus::harness::TcpProxy* proxy = nullptr;

class NatsServerEnvironment : public testing::Environment {
 public:
  void SetUp() override {
    auto started = eventbus::harness::NatsServer::Start();
    // A server that cannot start is a failure, never a skip.
    if (!started.ok()) {
      std::fprintf(stderr, "cannot start nats-server: %s\n", started.status().ToString().c_str());
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
    testing::AddGlobalTestEnvironment(new NatsServerEnvironment);

absl::StatusOr<std::unique_ptr<eventbus::EventStream>> NewStream(
    eventbus::nats::NatsOptions options) {
  options.url = absl::StrCat("nats://127.0.0.1:", proxy->port());
  // A publish written into a connection that was just cut waits for a PubAck that never
  // comes: fail it (Unavailable, the caller retries) sooner than the 30 s default.
  options.publish_timeout = absl::Seconds(5);
  return eventbus::nats::NewNatsEventStream(options, eventbus::Clock::Real());
}

// The message the backend's encoder writes, published by a plain nats.c connection and
// confirmed by JetStream, as the nats CLI would.
absl::Status PublishRaw(const std::string& stream, const eventbus::Event& event) {
  using namespace eventbus::nats;
  natsConnection* raw_nc = nullptr;
  if (natsConnection_ConnectTo(&raw_nc, server->url().c_str()) != NATS_OK) {
    return absl::UnavailableError("cannot connect to nats-server");
  }
  ConnectionPtr nc(raw_nc);
  jsCtx* raw_js = nullptr;
  if (natsConnection_JetStream(&raw_js, nc.get(), nullptr) != NATS_OK) {
    return absl::InternalError("no JetStream context");
  }
  std::unique_ptr<jsCtx, JsCtxDeleter> js(raw_js);
  natsMsg* raw_msg = nullptr;
  if (natsMsg_Create(&raw_msg, stream.c_str(), nullptr, event.data().data(),
                     static_cast<int>(event.data().size())) != NATS_OK) {
    return absl::InternalError("natsMsg_Create failed");
  }
  MsgPtr msg(raw_msg);
  if (absl::Status s = wire::EncodeHeaders(event, msg.get()); !s.ok()) return s;
  jsPubAck* ack = nullptr;
  jsErrCode code = jsErrCode(0);
  const natsStatus ns = js_PublishMsg(&ack, js.get(), msg.get(), nullptr, &code);
  if (ack != nullptr) jsPubAck_Destroy(ack);
  return ns == NATS_OK ? absl::OkStatus() : absl::UnavailableError("js_PublishMsg failed");
}

eventbus::conformance::BackendUnderTest NatsOnRealServer() {
  eventbus::conformance::BackendUnderTest backend;
  backend.name = "nats";
  backend.make_stream = [] { return NewStream(eventbus::nats::NatsOptions{}); };
  // No make_bounded_stream: a full publish window (max_pending_publishes) blocks until PubAcks
  // drain, which a local server always does, so it never pushes back with ResourceExhausted.
  // Real time on a real server: the defaults' slack (2 s fetches, 0.5 s idle, 2 s delay).
  backend.fetch_wait = absl::Seconds(2);
  backend.quiet_wait = absl::Milliseconds(500);
  backend.nack_delay = absl::Seconds(2);
  backend.reclaim_idle = absl::Milliseconds(500);
  backend.events_per_publisher = 500;
  backend.nack_tolerance = absl::Seconds(1);
  // No crash hook: JetStream redelivers a dead consumer's messages only after AckWait.
  // A graceful restart (SIGTERM, as `systemctl restart` or `docker restart` does): nats-server
  // 2.9 writes a consumer's acks to its store on its own schedule, so after a SIGKILL acks it
  // had confirmed a moment before can come again (at-least-once; nats_integration's
  // ServerKilledAndRestartedMidStreamLosesNothing covers the kill: nothing is lost).
  backend.restart_server = [] {
    server->Stop();
    absl::Status restarted = server->Restart();
    if (!restarted.ok()) return absl::Status(restarted.code(), absl::StrCat(restarted.message(), "\n", server->LogTail()));
    return restarted;
  };
  backend.cut_connection = [] {
    proxy->CutConnections();
    return absl::OkStatus();
  };
  backend.write_raw = PublishRaw;
  return backend;
}

EVENTBUS_INSTANTIATE_CONFORMANCE(Nats, NatsOnRealServer());

}  // namespace
