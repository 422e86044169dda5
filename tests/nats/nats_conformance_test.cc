// The conformance suite against a real nats-server (JetStream, file storage) that this binary
// starts on a free loopback port and stops at the end.
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "eventbus/clock.h"
#include "eventbus/conformance/conformance.h"
#include "eventbus/harness/nats_server.h"
#include "eventbus/nats/nats_event_stream.h"
#include "gtest/gtest.h"
#include "nats_handles.h"
#include "wire.h"

namespace {

eventbus::harness::NatsServer* server = nullptr;

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
  }
  void TearDown() override {
    delete server;
    server = nullptr;
  }
};

[[maybe_unused]] testing::Environment* const environment =
    testing::AddGlobalTestEnvironment(new NatsServerEnvironment);

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
  backend.make_stream = []() -> absl::StatusOr<std::unique_ptr<eventbus::EventStream>> {
    eventbus::nats::NatsOptions options;
    options.url = server->url();
    return eventbus::nats::NewNatsEventStream(options, eventbus::Clock::Real());
  };
  // Real time on a real server: the defaults' slack (2 s fetches, 0.5 s idle, 2 s delay).
  backend.fetch_wait = absl::Seconds(2);
  backend.quiet_wait = absl::Milliseconds(500);
  backend.nack_delay = absl::Seconds(2);
  backend.reclaim_idle = absl::Milliseconds(500);
  backend.events_per_publisher = 500;
  backend.write_raw = PublishRaw;
  return backend;
}

EVENTBUS_INSTANTIATE_CONFORMANCE(Nats, NatsOnRealServer());

}  // namespace
