#pragma once
// The Redis Streams wire format of an event (docs/wire-format.md, "Redis Streams"): one
// stream entry per event, one field per CloudEvents attribute, headers as "h:<name>" fields.
// Private to backends/redis; tested directly by tests/redis.

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "eventbus/event.h"

namespace eventbus::redis::wire {

inline constexpr absl::string_view kHeaderPrefix = "h:";

using Fields = std::vector<std::pair<std::string, std::string>>;

// Appends the entry's field/value pairs (as XADD arguments) for `event`.
void AppendFields(const Event& event, std::vector<std::string>& args);

// The event an entry carries, or InvalidArgument with the reason it is malformed: a duplicate
// or unknown field, a bad time (ParseTimeAttribute), or what ValidateEnvelope refuses.
absl::StatusOr<Event> Decode(const Fields& fields);

// A readable, lossless rendering of a raw entry (C-escaped "name value" lines) for the data
// of the dead letter that replaces a malformed entry.
std::string RenderRawEntry(const Fields& fields);

}  // namespace eventbus::redis::wire
