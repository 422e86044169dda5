#pragma once
// StreamInspector on JetStream: stream and consumer info for lengths, pending and lag, direct
// message gets by sequence for reads, and message deletes. Private to backends/nats.

#include <nats/nats.h>

#include <memory>

#include "eventbus/stream_inspector.h"

namespace eventbus::nats {

// `js` is not owned and must outlive the inspector (the stream owns both).
std::unique_ptr<StreamInspector> NewNatsInspector(jsCtx* js);

}  // namespace eventbus::nats
