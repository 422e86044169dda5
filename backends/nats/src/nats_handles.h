#pragma once
// RAII owners of nats.c handles and the one place where nats.c errors become absl::Status.
// Private to backends/nats.

#include <nats/nats.h>

#include <memory>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace eventbus::nats {

struct OptionsDeleter {
  void operator()(natsOptions* p) const { natsOptions_Destroy(p); }
};
struct ConnectionDeleter {
  void operator()(natsConnection* p) const {
    natsConnection_Close(p);
    natsConnection_Destroy(p);
  }
};
struct JsCtxDeleter {
  void operator()(jsCtx* p) const { jsCtx_Destroy(p); }
};
struct SubscriptionDeleter {
  // Bound to an existing durable consumer, so nats.c never deletes the consumer here.
  void operator()(natsSubscription* p) const { natsSubscription_Destroy(p); }
};
struct MsgDeleter {
  void operator()(natsMsg* p) const { natsMsg_Destroy(p); }
};
struct StreamInfoDeleter {
  void operator()(jsStreamInfo* p) const { jsStreamInfo_Destroy(p); }
};
struct ConsumerInfoDeleter {
  void operator()(jsConsumerInfo* p) const { jsConsumerInfo_Destroy(p); }
};
struct KvStoreDeleter {
  void operator()(kvStore* p) const { kvStore_Destroy(p); }
};
struct KvEntryDeleter {
  void operator()(kvEntry* p) const { kvEntry_Destroy(p); }
};
struct MetaDataDeleter {
  void operator()(jsMsgMetaData* p) const { jsMsgMetaData_Destroy(p); }
};
struct PubAckDeleter {
  void operator()(jsPubAck* p) const { jsPubAck_Destroy(p); }
};

using OptionsPtr = std::unique_ptr<natsOptions, OptionsDeleter>;
using ConnectionPtr = std::unique_ptr<natsConnection, ConnectionDeleter>;
using JsCtxPtr = std::unique_ptr<jsCtx, JsCtxDeleter>;
using SubscriptionPtr = std::unique_ptr<natsSubscription, SubscriptionDeleter>;
using MsgPtr = std::unique_ptr<natsMsg, MsgDeleter>;
using StreamInfoPtr = std::unique_ptr<jsStreamInfo, StreamInfoDeleter>;
using ConsumerInfoPtr = std::unique_ptr<jsConsumerInfo, ConsumerInfoDeleter>;
using MetaDataPtr = std::unique_ptr<jsMsgMetaData, MetaDataDeleter>;
using PubAckPtr = std::unique_ptr<jsPubAck, PubAckDeleter>;

// Maps a nats.c status (and the JetStream error code, 0 when none) to our codes:
// timeouts -> DeadlineExceeded; I/O, disconnected, no server, no responders, stale
// connection, closed-while-reconnecting -> Unavailable; auth failures / not permitted ->
// PermissionDenied; max payload / invalid arguments -> InvalidArgument; slow consumer and
// limits -> ResourceExhausted; stream/consumer not found -> NotFound; JetStream not enabled,
// stream name in use with other settings, subject overlap -> FailedPrecondition; the rest
// Internal. The message keeps `where`, the nats.c text and the JetStream code.
absl::Status ToStatus(natsStatus status, absl::string_view where, jsErrCode js_code = jsErrCode(0));

}  // namespace eventbus::nats
