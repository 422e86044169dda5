#include "eventbus/event.h"

#include <cstdint>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/escaping.h"
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
  if (event.spec_version().empty()) event.set_spec_version(std::string(kSpecVersion));
  if (event.id().empty()) event.set_id(NewEventId());
  if (!event.has_time()) SetEventTime(event, now);
  return ValidateEnvelope(event);
}

namespace {

// First years 0001 and 10000 (google.protobuf.Timestamp's range).
constexpr int64_t kMinTimestampSeconds = -62135596800;
constexpr int64_t kEndTimestampSeconds = 253402300800;

std::string Printable(absl::string_view text) { return absl::CHexEscape(text.substr(0, 64)); }

absl::Status CheckText(absl::string_view what, absl::string_view value, size_t max_bytes) {
  if (value.size() > max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is ", value.size(),
                                                   " bytes; at most ", max_bytes, " are allowed"));
  }
  if (!IsValidUtf8(value)) return absl::InvalidArgumentError(absl::StrCat(what, " is not valid UTF-8"));
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateEnvelope(const Event& event) {
  if (event.spec_version() != kSpecVersion) {
    return absl::InvalidArgumentError(absl::StrCat("attribute 'specversion' must be \"", kSpecVersion,
                                                   "\", got \"", Printable(event.spec_version()),
                                                   "\""));
  }
  const std::pair<absl::string_view, const std::string*> attributes[] = {
      {"id", &event.id()},
      {"source", &event.source()},
      {"type", &event.type()},
      {"subject", &event.subject()},
      {"datacontenttype", &event.data_content_type()},
      {"dataschema", &event.data_schema()},
      {"partitionkey", &event.key()}};
  for (int required = 0; required < 3; ++required) {
    if (attributes[required].second->empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "required attribute '", attributes[required].first, "' is missing or empty"));
    }
  }
  for (const auto& [name, value] : attributes) {
    if (absl::Status s = CheckText(absl::StrCat("attribute '", name, "'"), *value, kMaxAttributeBytes);
        !s.ok()) {
      return s;
    }
  }
  if (event.has_time()) {
    const int64_t seconds = event.time().seconds();
    const int32_t nanos = event.time().nanos();
    if (seconds < kMinTimestampSeconds || seconds >= kEndTimestampSeconds) {
      return absl::InvalidArgumentError("attribute 'time' is outside years 0001..9999");
    }
    if (nanos < 0 || nanos >= 1'000'000'000) {
      return absl::InvalidArgumentError(
          absl::StrCat("attribute 'time' has ", nanos, " nanoseconds (must be in [0, 1e9))"));
    }
  }
  for (const auto& [name, value] : event.headers()) {
    if (name.empty()) return absl::InvalidArgumentError("a header name is empty");
    if (absl::Status s = CheckText(absl::StrCat("header name '", Printable(name), "'"), name,
                                   kMaxHeaderNameBytes);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = CheckText(absl::StrCat("header '", name, "'"), value, kMaxHeaderValueBytes);
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

std::string MalformedEventReason(absl::string_view why) {
  return absl::StrCat("malformed event: ", why);
}

bool IsValidUtf8(absl::string_view text) {
  size_t i = 0;
  const size_t n = text.size();
  while (i < n) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    int extra;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
      extra = 1;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      extra = 2;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      extra = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + extra >= n) return false;
    for (int k = 1; k <= extra; ++k) {
      const auto cc = static_cast<unsigned char>(text[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    // Overlong forms, surrogates and values beyond Unicode are not UTF-8.
    if ((extra == 1 && cp < 0x80) || (extra == 2 && cp < 0x800) || (extra == 3 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += extra + 1;
  }
  return true;
}

std::string FormatTimeAttribute(absl::Time time) {
  return absl::FormatTime("%Y-%m-%d%ET%H:%M:%E*SZ", time, absl::UTCTimeZone());
}

std::string FormatTimeMillis(absl::Time time) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", time, absl::UTCTimeZone());
}

std::string HeaderValue(const Event& event, absl::string_view name) {
  auto it = event.headers().find(std::string(name));
  return it == event.headers().end() ? std::string() : it->second;
}

absl::StatusOr<absl::Time> ParseTimeAttribute(absl::string_view text) {
  absl::Time time;
  std::string error;
  // absl::ParseTime also accepts "infinite-future" and "infinite-past", which RFC 3339 does not
  // (the range check below refuses them).
  if (!absl::ParseTime(absl::RFC3339_full, text, absl::UTCTimeZone(), &time, &error)) {
    return absl::InvalidArgumentError(absl::StrCat("attribute 'time' = \"", Printable(text),
                                                   "\" is not an RFC 3339 timestamp (", error, ")"));
  }
  if (time < absl::FromUnixSeconds(kMinTimestampSeconds) ||
      time >= absl::FromUnixSeconds(kEndTimestampSeconds)) {
    return absl::InvalidArgumentError(absl::StrCat("attribute 'time' = \"", Printable(text),
                                                   "\" is outside years 0001..9999"));
  }
  return time;
}

size_t EventSizeBytes(const Event& event) { return event.ByteSizeLong(); }

}  // namespace eventbus
