#pragma once
// The envelope (generated from core/proto/eventbus/v1/event.proto) and small helpers.

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "eventbus/v1/event.pb.h"

#pragma GCC visibility push(default)

namespace eventbus {

using Event = ::eventbus::v1::Event;

inline constexpr absl::string_view kSpecVersion = "1.0";

// Builds an event with a fresh id, the given type/source/data and no time (Publish stamps it).
Event MakeEvent(absl::string_view type, absl::string_view source, absl::string_view data = {});

// A random (version 4) UUID in its canonical text form.
std::string NewEventId();

absl::Time EventTime(const Event& event);  // absl::InfinitePast() when unset
void SetEventTime(Event& event, absl::Time time);

// Fills what Publish may fill (id, specversion, time from `now`), then ValidateEnvelope.
absl::Status NormalizeForPublish(Event& event, absl::Time now);

// Bounds of an envelope's text (docs/wire-format.md, "Every backend"). Data is not bounded
// here (the backend's max_event_bytes is).
inline constexpr size_t kMaxAttributeBytes = 4096;      // id, source, type, subject, ...
inline constexpr size_t kMaxHeaderNameBytes = 256;
inline constexpr size_t kMaxHeaderValueBytes = 64 << 10;

// The one check of an envelope. EventStream::Publish runs it on what is published, and every
// backend's decoder runs it on what arrives from the wire, so an event one backend refuses is
// refused by all, for the same reason (the memory backend has no wire: Publish is its only
// entry). InvalidArgument, naming the attribute or header, when:
//   - specversion is not "1.0", or id, source or type is empty;
//   - a text attribute, a header name or a header value is not valid UTF-8, or is longer than
//     its bound above; a header name is empty;
//   - the time is outside years 0001..9999 or its nanoseconds are outside [0, 1e9).
// Backends parse the wire's time text with ParseTimeAttribute.
absl::Status ValidateEnvelope(const Event& event);

// The dead-letter reason of an event that arrived malformed, on every backend:
// "malformed event: <why>" (why = ValidateEnvelope's message, or the wire's own complaint).
std::string MalformedEventReason(absl::string_view why);

// RFC 3629 UTF-8: no overlong forms, surrogates or code points beyond U+10FFFF.
bool IsValidUtf8(absl::string_view text);

// The `time` attribute as text: RFC 3339 in UTC with only the fractional digits needed
// ("2024-05-01T12:00:00.5Z"); parsing accepts any offset, up to nanoseconds, years 0001..9999
// (InvalidArgument naming the attribute otherwise).
std::string FormatTimeAttribute(absl::Time time);
absl::StatusOr<absl::Time> ParseTimeAttribute(absl::string_view text);

// RFC 3339 in UTC with exactly three fractional digits ("2024-05-01T12:00:00.500Z"): what
// operators read (CLI, dashboard, operator JSON), where columns line up.
std::string FormatTimeMillis(absl::Time time);

// The value of an event's header `name`; empty when it has none.
std::string HeaderValue(const Event& event, absl::string_view name);

// The approximate number of bytes the event occupies (memory accounting, size limits).
size_t EventSizeBytes(const Event& event);

}  // namespace eventbus

#pragma GCC visibility pop
