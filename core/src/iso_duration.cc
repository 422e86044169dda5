#include "eventbus/iso_duration.h"

#include <cmath>
#include <cstdint>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace eventbus {
namespace {

absl::Status Bad(absl::string_view text, absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("\"", text, "\" is not an ISO 8601 duration (e.g. PT2S, PT1M30S, P1DT2H): ", why));
}

}  // namespace

absl::StatusOr<absl::Duration> ParseIsoDuration(absl::string_view text) {
  absl::string_view rest = text;
  if (rest.empty() || (rest[0] != 'P' && rest[0] != 'p')) return Bad(text, "must start with 'P'");
  rest.remove_prefix(1);
  if (rest.empty()) return Bad(text, "no components after 'P'");
  bool in_time = false;
  bool any_component = false;
  bool fraction_seen = false;
  // Units must appear in this order: W D T H M S.
  int last_rank = -1;
  absl::Duration total;
  while (!rest.empty()) {
    if (rest[0] == 'T' || rest[0] == 't') {
      if (in_time) return Bad(text, "'T' appears twice");
      in_time = true;
      rest.remove_prefix(1);
      if (rest.empty()) return Bad(text, "no time components after 'T'");
      continue;
    }
    if (fraction_seen) return Bad(text, "only the last component may have a fraction");
    size_t n = 0;
    while (n < rest.size() && (absl::ascii_isdigit(rest[n]) || rest[n] == '.' || rest[n] == ',')) ++n;
    if (n == 0) return Bad(text, absl::StrCat("expected a number before '", rest.substr(0, 1), "'"));
    if (n == rest.size()) return Bad(text, "number without a unit at the end");
    std::string number(rest.substr(0, n));
    for (char& c : number) {
      if (c == ',') c = '.';
    }
    const char unit = absl::ascii_toupper(rest[n]);
    rest.remove_prefix(n + 1);
    double value = 0;
    if (!absl::SimpleAtod(number, &value) || !std::isfinite(value) || value < 0) {
      return Bad(text, absl::StrCat("bad number \"", number, "\""));
    }
    if (number.find('.') != std::string::npos) fraction_seen = true;
    int rank = 0;
    absl::Duration unit_length;
    if (!in_time) {
      switch (unit) {
        case 'Y':
          return Bad(text, "years are not supported (their length depends on the date)");
        case 'M':
          return Bad(text, "months are not supported (their length depends on the date); "
                           "minutes go after 'T', as in PT5M");
        case 'W':
          rank = 0;
          unit_length = absl::Hours(24 * 7);
          break;
        case 'D':
          rank = 1;
          unit_length = absl::Hours(24);
          break;
        default:
          return Bad(text, absl::StrCat("unknown date unit '", std::string(1, unit), "'"));
      }
    } else {
      switch (unit) {
        case 'H':
          rank = 2;
          unit_length = absl::Hours(1);
          break;
        case 'M':
          rank = 3;
          unit_length = absl::Minutes(1);
          break;
        case 'S':
          rank = 4;
          unit_length = absl::Seconds(1);
          break;
        default:
          return Bad(text, absl::StrCat("unknown time unit '", std::string(1, unit), "'"));
      }
    }
    if (rank <= last_rank) return Bad(text, "units out of order or repeated");
    last_rank = rank;
    // Bound it well below absl::Duration's range so the sum cannot overflow to infinity.
    if (value * absl::ToDoubleSeconds(unit_length) > 100.0 * 365 * 24 * 3600) {
      return Bad(text, "longer than 100 years");
    }
    total += absl::Seconds(value * absl::ToDoubleSeconds(unit_length));
    any_component = true;
  }
  if (!any_component) return Bad(text, "no components");
  // To the nanosecond, the resolution FormatIsoDuration writes: fractions scaled in double
  // ("PT530.2H") leave sub-nanosecond remainders that would not survive a round trip (and
  // "PT0.0000000002S" would be a positive duration that formats as "PT0S").
  total = absl::Nanoseconds(absl::ToInt64Nanoseconds(total + absl::Nanoseconds(1) / 2));
  if (total > absl::Hours(100 * 365 * 24)) return Bad(text, "longer than 100 years");
  return total;
}

std::string FormatIsoDuration(absl::Duration duration) {
  if (duration < absl::ZeroDuration()) duration = absl::ZeroDuration();
  std::string out = "P";
  const int64_t days = absl::IDivDuration(duration, absl::Hours(24), &duration);
  if (days > 0) absl::StrAppend(&out, days, "D");
  const int64_t hours = absl::IDivDuration(duration, absl::Hours(1), &duration);
  const int64_t minutes = absl::IDivDuration(duration, absl::Minutes(1), &duration);
  const bool has_seconds = duration > absl::ZeroDuration();
  if (hours > 0 || minutes > 0 || has_seconds || days == 0) out += "T";
  if (hours > 0) absl::StrAppend(&out, hours, "H");
  if (minutes > 0) absl::StrAppend(&out, minutes, "M");
  if (has_seconds) {
    const int64_t nanos = absl::ToInt64Nanoseconds(duration);
    std::string seconds = absl::StrCat(nanos / 1'000'000'000);
    if (int64_t frac = nanos % 1'000'000'000; frac != 0) {
      std::string digits = absl::StrCat(1'000'000'000 + frac).substr(1);
      while (!digits.empty() && digits.back() == '0') digits.pop_back();
      absl::StrAppend(&seconds, ".", digits);
    }
    absl::StrAppend(&out, seconds, "S");
  } else if (days == 0 && hours == 0 && minutes == 0) {
    out += "0S";
  }
  return out;
}

}  // namespace eventbus
