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

// The event an entry carries, or InvalidArgument with the reason it is malformed (missing
// required field, duplicate or unknown field, text that is not UTF-8, a bad time, ...).
absl::StatusOr<Event> Decode(const Fields& fields);

// RFC 3339 in UTC with as many fractional digits as needed ("2024-05-01T12:00:00.5Z").
std::string FormatEventTime(absl::Time time);
absl::StatusOr<absl::Time> ParseEventTime(absl::string_view text);

// A readable, lossless rendering of a raw entry (C-escaped "name value" lines) for the data
// of the dead letter that replaces a malformed entry.
std::string RenderRawEntry(const Fields& fields);

bool IsValidUtf8(absl::string_view text);

}  // namespace eventbus::redis::wire
