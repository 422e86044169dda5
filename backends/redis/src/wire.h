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

// A Redis command encoded in RESP as its arguments are added, for hiredis'
// redisAppendFormattedCommand: the publish path builds no argument vector and hiredis formats
// nothing (argument vectors and hiredis' formatting were a third of a publish's CPU).
class RespCommand {
 public:
  void Add(absl::string_view arg) { AddJoined(arg, {}); }
  // Adds one argument that is `first` followed by `second` (a header field "h:<name>").
  void AddJoined(absl::string_view first, absl::string_view second);
  size_t arguments() const { return arguments_; }
  // The whole command ("*<n>\r\n" and the arguments); the builder is empty afterwards.
  std::string Take();

 private:
  std::string body_;
  size_t arguments_ = 0;
};

// Appends the entry's field/value pairs (as XADD arguments) for `event`.
void AppendFields(const Event& event, std::vector<std::string>& args);
void AppendFields(const Event& event, RespCommand& command);

// The event an entry carries, or InvalidArgument with the reason it is malformed: a duplicate
// or unknown field, a bad time (ParseTimeAttribute), or what ValidateEnvelope refuses.
absl::StatusOr<Event> Decode(const Fields& fields);

// A readable, lossless rendering of a raw entry (C-escaped "name value" lines) for the data
// of the dead letter that replaces a malformed entry.
std::string RenderRawEntry(const Fields& fields);

}  // namespace eventbus::redis::wire
