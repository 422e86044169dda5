// Kafka records (backends/kafka/src/wire_format.h): key, value and headers as any producer on
// the topic wrote them.
// Invariants: DecodeEvent never crashes; what it accepts encodes (EncodeEvent, as the header
// promises) to a record that decodes to the same event; no `eventbus-` header leaks into
// Event::headers; an accepted ce_time is an RFC 3339 time and the event carries exactly it.

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/match.h"
#include "absl/time/time.h"
#include "fuzz_input.h"
#include "google/protobuf/util/message_differencer.h"
#include "wire_format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace kafka = eventbus::kafka;
  eventbus::fuzz::InputReader in(data, size);
  // Layout: flags (bit 0: the key is not null), key, value, then header name/value pairs.
  kafka::KafkaRecord record;
  const uint8_t flags = in.Byte();
  std::string key = in.String();
  if (flags & 1) record.key = std::move(key);
  record.value = in.String();
  while (!in.done()) {
    std::string name = in.String();
    std::string value = in.String();
    record.headers.emplace_back(std::move(name), std::move(value));
  }

  absl::StatusOr<kafka::DecodedRecord> decoded = kafka::DecodeEvent(record);
  if (!decoded.ok()) return 0;
  for (const auto& [name, value] : decoded->event.headers()) {
    EVENTBUS_FUZZ_CHECK(!absl::StartsWith(name, kafka::kInternalPrefix), "header " + name);
  }
  // The time that was written (the last ce_time counts) is the time the event carries, to the
  // nanosecond.
  const std::string* time_text = nullptr;
  for (const auto& [name, value] : record.headers) {
    if (name == "ce_time") time_text = &value;
  }
  if (time_text != nullptr) {
    absl::Time written;
    std::string error;
    EVENTBUS_FUZZ_CHECK(absl::ParseTime(absl::RFC3339_full, *time_text, &written, &error) &&
                            written != absl::InfiniteFuture() && written != absl::InfinitePast(),
                        "DecodeEvent accepted ce_time " + *time_text);
    const absl::Time truncated =
        absl::UnixEpoch() + absl::Floor(written - absl::UnixEpoch(), absl::Nanoseconds(1));
    EVENTBUS_FUZZ_CHECK(eventbus::EventTime(decoded->event) == truncated,
                        "the decoded time is not the time written: " + *time_text);
  }
  absl::StatusOr<kafka::KafkaRecord> encoded = kafka::EncodeEvent(decoded->event);
  EVENTBUS_FUZZ_CHECK(encoded.ok(), "a decoded event does not encode: " + encoded.status().ToString());
  absl::StatusOr<kafka::DecodedRecord> redecoded = kafka::DecodeEvent(*encoded);
  EVENTBUS_FUZZ_CHECK(redecoded.ok(), "an encoded event does not decode: " +
                                          redecoded.status().ToString());
  EVENTBUS_FUZZ_CHECK(
      google::protobuf::util::MessageDifferencer::Equals(decoded->event, redecoded->event),
      "decode -> encode -> decode changed the event:\n" + decoded->event.DebugString() +
          "\n---\n" + redecoded->event.DebugString());
  EVENTBUS_FUZZ_CHECK(redecoded->internal.empty(), "EncodeEvent wrote eventbus- headers");
  return 0;
}
