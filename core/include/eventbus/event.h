#pragma once
// The envelope (generated from core/proto/eventbus/v1/event.proto) and small helpers.

#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
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

// Fills what Publish may fill (id, specversion, time from `now`) and checks what it cannot:
// InvalidArgument naming the attribute when `type` or `source` is empty, or the spec version
// is not 1.0.
absl::Status NormalizeForPublish(Event& event, absl::Time now);

// The approximate number of bytes the event occupies (memory accounting, size limits).
size_t EventSizeBytes(const Event& event);

}  // namespace eventbus

#pragma GCC visibility pop
