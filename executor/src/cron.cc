#include "eventbus/executor/cron.h"

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/civil_time.h"

namespace eventbus::executor {
namespace {

constexpr const char* kMonthNames[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                       "jul", "aug", "sep", "oct", "nov", "dec"};
constexpr const char* kDayNames[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};

struct FieldSpec {
  const char* name;
  int lo;
  int hi;
  const char* const* names;  // names[i] stands for lo + i (or null)
  int name_count;
};

constexpr FieldSpec kMinute{"minute", 0, 59, nullptr, 0};
constexpr FieldSpec kHour{"hour", 0, 23, nullptr, 0};
constexpr FieldSpec kDayOfMonth{"day-of-month", 1, 31, nullptr, 0};
constexpr FieldSpec kMonth{"month", 1, 12, kMonthNames, 12};
// 7 is Sunday too (Vixie); folded onto 0 after parsing.
constexpr FieldSpec kDayOfWeek{"day-of-week", 0, 7, kDayNames, 7};

absl::Status FieldError(const FieldSpec& spec, absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("cron ", spec.name, " field \"", field, "\": ", why));
}

absl::StatusOr<int> ParseValue(const FieldSpec& spec, absl::string_view field,
                               absl::string_view text) {
  int value = 0;
  if (absl::SimpleAtoi(text, &value) && !text.empty() && absl::ascii_isdigit(text[0])) {
    if (value < spec.lo || value > spec.hi) {
      return FieldError(spec, field,
                        absl::StrCat(value, " is out of range ", spec.lo, "-", spec.hi));
    }
    return value;
  }
  const std::string lower = absl::AsciiStrToLower(text);
  for (int i = 0; i < spec.name_count; ++i) {
    if (lower == spec.names[i]) return spec.lo + i;
  }
  return FieldError(spec, field,
                    absl::StrCat("\"", text, "\" is not a number",
                                 spec.names != nullptr ? " or a name (jan, mon, ...)" : ""));
}

// Bit i set: value i matches.
absl::StatusOr<uint64_t> ParseField(const FieldSpec& spec, absl::string_view field) {
  if (field.empty()) return FieldError(spec, field, "is empty");
  uint64_t bits = 0;
  for (absl::string_view item : absl::StrSplit(field, ',')) {
    if (item.empty()) return FieldError(spec, field, "has an empty list item");
    std::vector<absl::string_view> parts = absl::StrSplit(item, absl::MaxSplits('/', 1));
    absl::string_view range = parts[0];
    int step = 1;
    if (parts.size() == 2) {
      if (!absl::SimpleAtoi(parts[1], &step) || parts[1].empty() ||
          !absl::ascii_isdigit(parts[1][0]) || step < 1 || step > spec.hi) {
        return FieldError(spec, field,
                          absl::StrCat("step \"", parts[1], "\" must be an integer in 1-",
                                       spec.hi));
      }
    }
    int lo = spec.lo;
    int hi = spec.hi;
    if (range != "*") {
      std::vector<absl::string_view> ends = absl::StrSplit(range, absl::MaxSplits('-', 1));
      auto first = ParseValue(spec, field, ends[0]);
      if (!first.ok()) return first.status();
      lo = *first;
      if (ends.size() == 2) {
        auto last = ParseValue(spec, field, ends[1]);
        if (!last.ok()) return last.status();
        hi = *last;
        if (hi < lo) {
          return FieldError(spec, field, absl::StrCat("range ", range, " runs backwards"));
        }
      } else if (parts.size() == 1) {
        hi = lo;  // a single value; `A/S` keeps the field's maximum
      }
    }
    for (int v = lo; v <= hi; v += step) bits |= uint64_t{1} << v;
  }
  return bits;
}

}  // namespace

absl::StatusOr<CronExpression> CronExpression::Parse(absl::string_view text) {
  std::vector<absl::string_view> fields =
      absl::StrSplit(text, absl::ByAnyChar(" \t"), absl::SkipEmpty());
  if (fields.size() != 5) {
    return absl::InvalidArgumentError(
        absl::StrCat("cron expression \"", text, "\" has ", fields.size(),
                     " fields; expected 5: minute hour day-of-month month day-of-week"));
  }
  CronExpression cron;
  cron.text_ = absl::StrJoin(fields, " ");
  auto minutes = ParseField(kMinute, fields[0]);
  if (!minutes.ok()) return minutes.status();
  auto hours = ParseField(kHour, fields[1]);
  if (!hours.ok()) return hours.status();
  auto days = ParseField(kDayOfMonth, fields[2]);
  if (!days.ok()) return days.status();
  auto months = ParseField(kMonth, fields[3]);
  if (!months.ok()) return months.status();
  auto weekdays = ParseField(kDayOfWeek, fields[4]);
  if (!weekdays.ok()) return weekdays.status();
  uint64_t dow = *weekdays;
  if (dow & (uint64_t{1} << 7)) dow = (dow | 1) & ~(uint64_t{1} << 7);
  cron.minutes_ = std::bitset<60>(*minutes);
  cron.hours_ = std::bitset<24>(*hours);
  cron.days_of_month_ = std::bitset<32>(*days);
  cron.months_ = std::bitset<13>(*months);
  cron.days_of_week_ = std::bitset<7>(dow);
  // Vixie: a day field "starting with *" (`*`, `*/2`) does not restrict in the OR sense.
  cron.dom_restricted_ = fields[2][0] != '*';
  cron.dow_restricted_ = fields[4][0] != '*';
  return cron;
}

bool CronExpression::DayMatches(int day_of_month, int weekday) const {
  const bool dom = days_of_month_[day_of_month];
  const bool dow = days_of_week_[weekday];
  if (dom_restricted_ && dow_restricted_) return dom || dow;
  return dom && dow;
}

absl::Time CronExpression::Next(absl::Time after, const absl::TimeZone& zone) const {
  const absl::CivilMinute start(zone.At(after).cs);
  const absl::CivilDay last = absl::CivilDay(start) + 366 * 30;
  for (absl::CivilDay day(start); day <= last; ++day) {
    if (!months_[day.month()]) {
      // The rest of this month cannot match.
      day = absl::CivilDay(absl::CivilMonth(day) + 1) - 1;
      continue;
    }
    // absl::Weekday counts from Monday = 0; cron from Sunday = 0.
    const int weekday = (static_cast<int>(absl::GetWeekday(day)) + 1) % 7;
    if (!DayMatches(day.day(), weekday)) continue;
    for (int h = 0; h < 24; ++h) {
      if (!hours_[h]) continue;
      for (int m = 0; m < 60; ++m) {
        if (!minutes_[m]) continue;
        const absl::CivilMinute local(day.year(), day.month(), day.day(), h, m);
        if (local < start) continue;
        const absl::TimeZone::TimeInfo info = zone.At(absl::CivilSecond(local));
        // Skipped by a spring-forward change: at the change. Repeated by a fall-back change:
        // the first occurrence only (`pre`); the second maps to the same instant and is never
        // after it.
        const absl::Time at =
            info.kind == absl::TimeZone::TimeInfo::SKIPPED ? info.trans : info.pre;
        if (at > after) return at;
      }
    }
  }
  return absl::InfiniteFuture();
}

absl::StatusOr<absl::TimeZone> LoadIanaTimeZone(absl::string_view name, absl::string_view field) {
  absl::TimeZone zone;
  if (name.empty() || !absl::LoadTimeZone(std::string(name), &zone)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"", field, "\": unknown time zone \"", name,
        "\"; use an IANA name such as \"UTC\", \"Europe/Berlin\" or \"America/New_York\""));
  }
  return zone;
}

}  // namespace eventbus::executor
