#include "eventbus/event.h"

#include <cstdint>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace eventbus {

namespace {

// Writes the `digits` low hex digits of `value` (most significant first) at `out`.
char* PutHex(char* out, uint64_t value, int digits) {
  static constexpr char kHex[] = "0123456789abcdef";
  for (int i = digits - 1; i >= 0; --i) {
    out[i] = kHex[value & 0xF];
    value >>= 4;
  }
  return out + digits;
}

// Writes `value` as exactly `digits` decimal digits at `out`.
char* PutDecimal(char* out, int64_t value, int digits) {
  for (int i = digits - 1; i >= 0; --i) {
    out[i] = static_cast<char>('0' + value % 10);
    value /= 10;
  }
  return out + digits;
}

// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's civil_from_days).
void CivilFromDays(int64_t days, int64_t* year, int* month, int* day) {
  days += 719468;
  const int64_t era = (days >= 0 ? days : days - 146096) / 146097;
  const int64_t doe = days - era * 146097;                                   // [0, 146096]
  const int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;  // [0, 399]
  const int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);               // [0, 365]
  const int64_t mp = (5 * doy + 2) / 153;                                    // [0, 11]
  *day = static_cast<int>(doy - (153 * mp + 2) / 5 + 1);
  *month = static_cast<int>(mp < 10 ? mp + 3 : mp - 9);
  *year = yoe + era * 400 + (*month <= 2 ? 1 : 0);
}

}  // namespace

// Every published event gets one: formatted by hand (absl::StrFormat was 6 % of a publish).
std::string NewEventId() {
  thread_local absl::BitGen gen;
  uint64_t hi = absl::Uniform<uint64_t>(gen);
  uint64_t lo = absl::Uniform<uint64_t>(gen);
  hi = (hi & ~uint64_t{0xF000}) | uint64_t{0x4000};                      // version 4
  lo = (lo & ~(uint64_t{0xC} << 60)) | (uint64_t{0x8} << 60);            // RFC 4122 variant
  std::string id(36, '-');
  char* p = id.data();
  p = PutHex(p, hi >> 32, 8) + 1;
  p = PutHex(p, (hi >> 16) & 0xFFFF, 4) + 1;
  p = PutHex(p, hi & 0xFFFF, 4) + 1;
  p = PutHex(p, lo >> 48, 4) + 1;
  PutHex(p, lo & 0xFFFFFFFFFFFFULL, 12);
  return id;
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

// Every encoded event's time goes through here: years 1000-9999 at whole nanoseconds (all
// that a protobuf Timestamp or the clock gives) are formatted by hand, as absl::FormatTime
// would (it was 7 % of a Redis publish); anything else by absl::FormatTime itself.
std::string FormatTimeAttribute(absl::Time time) {
  static constexpr char kFormat[] = "%Y-%m-%d%ET%H:%M:%E*SZ";
  absl::Duration below_second;
  const int64_t seconds_since_epoch =
      absl::IDivDuration(time - absl::UnixEpoch(), absl::Seconds(1), &below_second);
  absl::Duration below_nanosecond;
  int64_t nanos = absl::IDivDuration(below_second, absl::Nanoseconds(1), &below_nanosecond);
  // -30610224000 is 1000-01-01T00:00:00Z (absl does not pad shorter years to four digits),
  // 253402300800 is 10000-01-01T00:00:00Z.
  if (below_nanosecond != absl::ZeroDuration() || seconds_since_epoch <= -30610224000 ||
      seconds_since_epoch >= 253402300800) {
    return absl::FormatTime(kFormat, time, absl::UTCTimeZone());
  }
  int64_t seconds = seconds_since_epoch;
  if (nanos < 0) {  // IDivDuration truncates toward zero; the calendar needs the floor
    nanos += 1'000'000'000;
    seconds -= 1;
  }
  int64_t days = seconds / 86400;
  int64_t second_of_day = seconds % 86400;
  if (second_of_day < 0) {
    second_of_day += 86400;
    days -= 1;
  }
  int64_t year = 0;
  int month = 0;
  int day = 0;
  CivilFromDays(days, &year, &month, &day);
  char buffer[32];
  char* p = buffer;
  p = PutDecimal(p, year, 4);
  *p++ = '-';
  p = PutDecimal(p, month, 2);
  *p++ = '-';
  p = PutDecimal(p, day, 2);
  *p++ = 'T';
  p = PutDecimal(p, second_of_day / 3600, 2);
  *p++ = ':';
  p = PutDecimal(p, second_of_day / 60 % 60, 2);
  *p++ = ':';
  p = PutDecimal(p, second_of_day % 60, 2);
  if (nanos != 0) {  // as %E*S: the fraction without trailing zeros
    int digits = 9;
    while (nanos % 10 == 0) {
      nanos /= 10;
      --digits;
    }
    *p++ = '.';
    p = PutDecimal(p, nanos, digits);
  }
  *p++ = 'Z';
  return std::string(buffer, p);
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
