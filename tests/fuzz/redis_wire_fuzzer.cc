// Redis stream entries (backends/redis/src/wire.h): an entry read by XREADGROUP is a list of
// field/value pairs anybody with access to the stream may have written.
// Invariants: Decode never crashes; an event it accepts encodes (AppendFields) to an entry that
// decodes to the same event; RenderRawEntry is lossless (its lines unescape to the fields).

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_split.h"
#include "fuzz_input.h"
#include "google/protobuf/util/message_differencer.h"
#include "wire.h"

namespace {

using eventbus::redis::wire::Fields;

Fields ReadFields(eventbus::fuzz::InputReader& in) {
  Fields fields;
  while (!in.done()) {
    std::string name = in.String();
    std::string value = in.String();
    fields.emplace_back(std::move(name), std::move(value));
  }
  return fields;
}

// The inverse of RenderRawEntry: one "name value" line per field, both C-escaped.
bool UnrenderRawEntry(const std::string& text, Fields& fields) {
  if (text.empty()) return true;
  if (text.back() != '\n') return false;
  for (absl::string_view line : absl::StrSplit(absl::string_view(text).substr(0, text.size() - 1), '\n')) {
    std::vector<std::string> parts = absl::StrSplit(line, absl::MaxSplits(' ', 1));
    if (parts.size() != 2) return false;
    std::string name, value;
    if (!absl::CUnescape(parts[0], &name) || !absl::CUnescape(parts[1], &value)) return false;
    fields.emplace_back(std::move(name), std::move(value));
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace wire = eventbus::redis::wire;
  eventbus::fuzz::InputReader in(data, size);
  const Fields fields = ReadFields(in);

  const std::string rendered = wire::RenderRawEntry(fields);
  Fields unrendered;
  EVENTBUS_FUZZ_CHECK(UnrenderRawEntry(rendered, unrendered) && unrendered == fields,
                      "RenderRawEntry is not lossless:\n" + rendered);

  absl::StatusOr<eventbus::Event> event = wire::Decode(fields);
  if (!event.ok()) return 0;
  std::vector<std::string> args;
  wire::AppendFields(*event, args);
  EVENTBUS_FUZZ_CHECK(args.size() % 2 == 0, "AppendFields wrote an odd number of arguments");
  Fields again;
  for (size_t i = 0; i < args.size(); i += 2) again.emplace_back(args[i], args[i + 1]);
  absl::StatusOr<eventbus::Event> redecoded = wire::Decode(again);
  EVENTBUS_FUZZ_CHECK(redecoded.ok(), "an accepted event does not decode after encoding: " +
                                          redecoded.status().ToString());
  EVENTBUS_FUZZ_CHECK(google::protobuf::util::MessageDifferencer::Equals(*event, *redecoded),
                      "decode -> encode -> decode changed the event:\n" + event->DebugString() +
                          "\n---\n" + redecoded->DebugString());
  // The time that was written is the time the event carries (to the nanosecond).
  for (const auto& [name, value] : fields) {
    if (name != "time") continue;
    absl::StatusOr<absl::Time> written = eventbus::ParseTimeAttribute(value);
    EVENTBUS_FUZZ_CHECK(written.ok(), "Decode accepted a time ParseTimeAttribute refuses");
    const absl::Time truncated =
        absl::UnixEpoch() + absl::Floor(*written - absl::UnixEpoch(), absl::Nanoseconds(1));
    EVENTBUS_FUZZ_CHECK(eventbus::EventTime(*event) == truncated,
                        "the decoded time is not the time written: " + value + " became " +
                            eventbus::FormatTimeAttribute(eventbus::EventTime(*event)));
  }
  return 0;
}
