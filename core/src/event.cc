#include "eventbus/event.h"

#include <cstdint>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace eventbus {

std::string NewEventId() {
  thread_local absl::BitGen gen;
  uint64_t hi = absl::Uniform<uint64_t>(gen);
  uint64_t lo = absl::Uniform<uint64_t>(gen);
  hi = (hi & ~uint64_t{0xF000}) | uint64_t{0x4000};                      // version 4
  lo = (lo & ~(uint64_t{0xC} << 60)) | (uint64_t{0x8} << 60);            // RFC 4122 variant
  return absl::StrFormat("%08x-%04x-%04x-%04x-%012x", hi >> 32, (hi >> 16) & 0xFFFF, hi & 0xFFFF,
                         lo >> 48, lo & 0xFFFFFFFFFFFFULL);
}

Event MakeEvent(absl::string_view type, absl::string_view source, absl::string_view data) {
  Event event;
  event.set_id(NewEventId());
  event.set_spec_version(std::string(kSpecVersion));
  event.set_type(std::string(type));
  event.set_source(std::string(source));
  event.set_data(std::string(data));
  return event;
}

absl::Time EventTime(const Event& event) {
  if (!event.has_time()) return absl::InfinitePast();
  return absl::FromUnixSeconds(event.time().seconds()) + absl::Nanoseconds(event.time().nanos());
}

void SetEventTime(Event& event, absl::Time time) {
  // Seconds (floored) and the nanoseconds past them, not one int64 of nanoseconds: that would
  // saturate outside 1677..2262, silently moving a time in year 9999 to 2262.
  const int64_t seconds = absl::ToUnixSeconds(time);
  absl::Duration rest = time - absl::FromUnixSeconds(seconds);
  if (rest < absl::ZeroDuration() || rest >= absl::Seconds(1)) rest = absl::ZeroDuration();  // infinite
  event.mutable_time()->set_seconds(seconds);
  event.mutable_time()->set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(rest)));
}

absl::Status NormalizeForPublish(Event& event, absl::Time now) {
  if (event.type().empty()) {
    return absl::InvalidArgumentError("event attribute 'type' is required and empty");
  }
  if (event.source().empty()) {
    return absl::InvalidArgumentError("event attribute 'source' is required and empty");
  }
  if (event.spec_version().empty()) {
    event.set_spec_version(std::string(kSpecVersion));
  } else if (event.spec_version() != kSpecVersion) {
    return absl::InvalidArgumentError(absl::StrCat("event attribute 'specversion' must be \"",
                                                   kSpecVersion, "\", got \"",
                                                   event.spec_version(), "\""));
  }
  if (event.id().empty()) event.set_id(NewEventId());
  if (!event.has_time()) SetEventTime(event, now);
  return absl::OkStatus();
}

size_t EventSizeBytes(const Event& event) { return event.ByteSizeLong(); }

}  // namespace eventbus
