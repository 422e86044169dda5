#pragma once
// Cron expressions for recurring schedules: the 5 classic fields (minute hour day-of-month
// month day-of-week) with Vixie cron's syntax and semantics, evaluated in an IANA time zone.
//
//   field         values   names
//   minute        0-59
//   hour          0-23
//   day of month  1-31
//   month         1-12     jan-dec
//   day of week   0-7      sun-sat (0 and 7 are Sunday)
//
// Each field is `*` or a comma-separated list of `N`, `A-B`, `*/S`, `A-B/S` or `A/S` (A to the
// field's maximum, every S). When both day fields are restricted (neither starts with `*`), a
// day matches if either does (Vixie's OR); otherwise both must.
//
// Daylight-saving changes: a wall-clock time skipped by a spring-forward change fires at the
// change itself (02:30 on a day that jumps from 02:00 to 03:00 fires at 03:00); a time that
// occurs twice in a fall-back change fires once, at its first occurrence.

#include <bitset>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#pragma GCC visibility push(default)

namespace eventbus::executor {

class CronExpression {
 public:
  // InvalidArgument naming the field ("cron day-of-month field \"32\": ...") or the field count.
  static absl::StatusOr<CronExpression> Parse(absl::string_view text);

  // The first firing time strictly after `after`, in `zone`. InfiniteFuture when there is none
  // in the next 30 years (an expression such as `0 0 30 2 *`).
  absl::Time Next(absl::Time after, const absl::TimeZone& zone) const;

  const std::string& text() const { return text_; }

 private:
  bool DayMatches(int day_of_month, int weekday) const;

  std::string text_;
  std::bitset<60> minutes_;
  std::bitset<24> hours_;
  std::bitset<32> days_of_month_;  // 1..31
  std::bitset<13> months_;         // 1..12
  std::bitset<7> days_of_week_;    // 0..6, Sunday = 0
  bool dom_restricted_ = false;
  bool dow_restricted_ = false;
};

// absl::LoadTimeZone with an error naming `field` ("timezone") and the name for an unknown zone.
absl::StatusOr<absl::TimeZone> LoadIanaTimeZone(absl::string_view name, absl::string_view field);

}  // namespace eventbus::executor

#pragma GCC visibility pop
