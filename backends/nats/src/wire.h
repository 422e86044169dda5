#pragma once
// The NATS wire format of an event (docs/wire-format.md, "NATS JetStream"): CloudEvents
// attributes as NATS headers (binary content mode of the CloudEvents NATS binding), data as
// the payload. Private to backends/nats.

#include <nats/nats.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "eventbus/event.h"

namespace eventbus::nats::wire {

inline constexpr absl::string_view kAttributePrefix = "ce-";
inline constexpr absl::string_view kContentTypeHeader = "Content-Type";
inline constexpr absl::string_view kMsgIdHeader = "Nats-Msg-Id";

// Sets the event's headers on `msg` (created with its subject and data). InvalidArgument
// naming the attribute when a value cannot travel in a NATS header (CR or LF, leading or
// trailing whitespace), a header name is not a valid NATS header name or collides with a
// CloudEvents attribute's header.
absl::Status EncodeHeaders(const Event& event, natsMsg* msg);

// The event carried by `msg`; InvalidArgument saying what is wrong when it is malformed (a
// header given twice, a time that is not RFC 3339, or what ValidateEnvelope refuses).
absl::StatusOr<Event> Decode(natsMsg* msg);

}  // namespace eventbus::nats::wire
