// The cron parser and its next-fire computation (executor/include/eventbus/executor/cron.h):
// syntax, Vixie's day-of-month/day-of-week OR, month ends, and daylight-saving changes in real
// IANA zones (tzdata from /usr/share/zoneinfo).

#include "eventbus/executor/cron.h"

#include <string>
#include <vector>

#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace eventbus::executor {
namespace {

using ::testing::HasSubstr;

absl::TimeZone Zone(const std::string& name) {
  absl::TimeZone zone;
  EXPECT_TRUE(absl::LoadTimeZone(name, &zone)) << name;
  return zone;
}

CronExpression Cron(absl::string_view text) {
  auto cron = CronExpression::Parse(text);
  EXPECT_TRUE(cron.ok()) << cron.status();
  return cron.ok() ? *cron : *CronExpression::Parse("* * * * *");
}

absl::Time At(const absl::TimeZone& zone, int y, int mo, int d, int h, int mi) {
  return absl::FromCivil(absl::CivilMinute(y, mo, d, h, mi), zone);
}

// The next `n` fires after `from`.
std::vector<absl::Time> Fires(const CronExpression& cron, absl::Time from, int n,
                              const absl::TimeZone& zone) {
  std::vector<absl::Time> out;
  for (int i = 0; i < n; ++i) {
    from = cron.Next(from, zone);
    out.push_back(from);
  }
  return out;
}

TEST(CronParse, BadExpressionsNameTheField) {
  struct Case {
    const char* text;
    const char* names;
  };
  for (const Case& c : std::vector<Case>{{"61 * * * *", "minute field \"61\""},
                                         {"* 24 * * *", "hour field \"24\""},
                                         {"* * 0 * *", "day-of-month field \"0\""},
                                         {"* * 32 * *", "day-of-month field"},
                                         {"* * * 13 *", "month field \"13\""},
                                         {"* * * foo *", "month field \"foo\""},
                                         {"* * * * 8", "day-of-week field \"8\""},
                                         {"* * * * mon-", "day-of-week field"},
                                         {"*/0 * * * *", "minute field \"*/0\": step"},
                                         {"5-2 * * * *", "runs backwards"},
                                         {"x * * * *", "minute field \"x\""},
                                         {"1,,2 * * * *", "empty list item"},
                                         {"* * * *", "has 4 fields; expected 5"},
                                         {"* * * * * *", "has 6 fields"}}) {
    auto parsed = CronExpression::Parse(c.text);
    ASSERT_FALSE(parsed.ok()) << c.text;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(parsed.status().message(), HasSubstr(c.names)) << c.text;
  }
}

TEST(CronNext, StepsListsAndRanges) {
  const absl::TimeZone utc = absl::UTCTimeZone();
  EXPECT_THAT(Fires(Cron("*/15 * * * *"), At(utc, 2026, 5, 4, 10, 7), 4, utc),
              ::testing::ElementsAre(At(utc, 2026, 5, 4, 10, 15), At(utc, 2026, 5, 4, 10, 30),
                                     At(utc, 2026, 5, 4, 10, 45), At(utc, 2026, 5, 4, 11, 0)));
  // A/S runs from A to the field's end.
  EXPECT_THAT(Fires(Cron("5/20 * * * *"), At(utc, 2026, 5, 4, 10, 0), 4, utc),
              ::testing::ElementsAre(At(utc, 2026, 5, 4, 10, 5), At(utc, 2026, 5, 4, 10, 25),
                                     At(utc, 2026, 5, 4, 10, 45), At(utc, 2026, 5, 4, 11, 5)));
  // 2026-05-08 is a Friday: 9:00 and 17:00 on weekdays, then Monday.
  EXPECT_THAT(Fires(Cron("0 9,17 * * 1-5"), At(utc, 2026, 5, 8, 12, 0), 3, utc),
              ::testing::ElementsAre(At(utc, 2026, 5, 8, 17, 0), At(utc, 2026, 5, 11, 9, 0),
                                     At(utc, 2026, 5, 11, 17, 0)));
  // A range with a step, in hours.
  EXPECT_THAT(Fires(Cron("0 8-18/5 * * *"), At(utc, 2026, 5, 4, 0, 0), 4, utc),
              ::testing::ElementsAre(At(utc, 2026, 5, 4, 8, 0), At(utc, 2026, 5, 4, 13, 0),
                                     At(utc, 2026, 5, 4, 18, 0), At(utc, 2026, 5, 5, 8, 0)));
  // Strictly after: a fire time itself is not returned again.
  EXPECT_EQ(Cron("0 * * * *").Next(At(utc, 2026, 5, 4, 10, 0), utc), At(utc, 2026, 5, 4, 11, 0));
}

TEST(CronNext, NamesAndSundayAsSeven) {
  const absl::TimeZone utc = absl::UTCTimeZone();
  // 2026-07-05 is the first Sunday of July.
  EXPECT_EQ(Cron("0 12 * JUL sun").Next(At(utc, 2026, 2, 1, 0, 0), utc),
            At(utc, 2026, 7, 5, 12, 0));
  EXPECT_EQ(Cron("0 12 * 7 7").Next(At(utc, 2026, 2, 1, 0, 0), utc), At(utc, 2026, 7, 5, 12, 0));
  EXPECT_EQ(Cron("0 12 * jan-mar mon").Next(At(utc, 2026, 3, 31, 0, 0), utc),
            At(utc, 2027, 1, 4, 12, 0));
}

TEST(CronNext, BothDayFieldsRestrictedMeansEither) {
  const absl::TimeZone utc = absl::UTCTimeZone();
  // The 13th, or any Friday (2026-02-20, 27 and 2026-03-06 are Fridays).
  EXPECT_THAT(Fires(Cron("0 0 13 * 5"), At(utc, 2026, 2, 14, 0, 0), 4, utc),
              ::testing::ElementsAre(At(utc, 2026, 2, 20, 0, 0), At(utc, 2026, 2, 27, 0, 0),
                                     At(utc, 2026, 3, 6, 0, 0), At(utc, 2026, 3, 13, 0, 0)));
  // With `*` in day-of-week, only the 13th.
  EXPECT_EQ(Cron("0 0 13 * *").Next(At(utc, 2026, 2, 14, 0, 0), utc), At(utc, 2026, 3, 13, 0, 0));
  // `*/2` in day-of-week (Sun, Tue, Thu, Sat) still counts as unrestricted (Vixie): both must
  // match. The first 13th after that is a Saturday: 2026-06-13.
  EXPECT_EQ(Cron("0 0 13 * */2").Next(At(utc, 2026, 2, 14, 0, 0), utc),
            At(utc, 2026, 6, 13, 0, 0));
}

TEST(CronNext, MonthEnds) {
  const absl::TimeZone utc = absl::UTCTimeZone();
  // The 31st skips February, April, June, September, November.
  EXPECT_THAT(Fires(Cron("0 0 31 * *"), At(utc, 2026, 1, 31, 0, 0), 4, utc),
              ::testing::ElementsAre(At(utc, 2026, 3, 31, 0, 0), At(utc, 2026, 5, 31, 0, 0),
                                     At(utc, 2026, 7, 31, 0, 0), At(utc, 2026, 8, 31, 0, 0)));
  // February 29 only in leap years.
  EXPECT_THAT(Fires(Cron("0 0 29 2 *"), At(utc, 2026, 3, 1, 0, 0), 2, utc),
              ::testing::ElementsAre(At(utc, 2028, 2, 29, 0, 0), At(utc, 2032, 2, 29, 0, 0)));
  // Never: there is no February 30.
  EXPECT_EQ(Cron("0 0 30 2 *").Next(At(utc, 2026, 1, 1, 0, 0), utc), absl::InfiniteFuture());
}

TEST(CronNext, SpringForwardRunsASkippedTimeAtTheChange) {
  for (const auto& [name, day] :
       std::vector<std::pair<std::string, int>>{{"Europe/Berlin", 29}, {"America/New_York", 8}}) {
    const absl::TimeZone zone = Zone(name);
    // On 2026-03-<day> the clocks jump from 02:00 to 03:00: 02:30 does not exist that day.
    const auto fires = Fires(Cron("30 2 * * *"), At(zone, 2026, 3, day - 1, 12, 0), 3, zone);
    EXPECT_EQ(fires[0], At(zone, 2026, 3, day, 3, 0)) << name;  // once, at the change
    EXPECT_EQ(absl::FormatTime("%H:%M", fires[0], zone), "03:00") << name;
    EXPECT_EQ(fires[1], At(zone, 2026, 3, day + 1, 2, 30)) << name;
    EXPECT_EQ(fires[2], At(zone, 2026, 3, day + 2, 2, 30)) << name;
    EXPECT_EQ(fires[1] - fires[0], absl::Hours(23) + absl::Minutes(30)) << name;
  }
}

TEST(CronNext, FallBackRunsARepeatedTimeOnce) {
  const absl::TimeZone berlin = Zone("Europe/Berlin");
  // On 2026-10-25 the clocks go from 03:00 CEST back to 02:00 CET: 02:30 happens twice.
  const auto fires = Fires(Cron("30 2 * * *"), At(berlin, 2026, 10, 24, 12, 0), 2, berlin);
  EXPECT_EQ(fires[0], absl::FromCivil(absl::CivilMinute(2026, 10, 25, 0, 30), absl::UTCTimeZone()));
  EXPECT_EQ(fires[1], absl::FromCivil(absl::CivilMinute(2026, 10, 26, 1, 30), absl::UTCTimeZone()));
  // From inside the repeated hour's second pass, the next fire is the next day's.
  const absl::Time second_pass =
      absl::FromCivil(absl::CivilMinute(2026, 10, 25, 1, 10), absl::UTCTimeZone());  // 02:10 CET
  EXPECT_EQ(Cron("30 2 * * *").Next(second_pass, berlin), fires[1]);
  // An hourly job runs 24 times... on a 25-hour day, once per wall-clock time.
  const CronExpression hourly = Cron("30 * * * *");
  int runs = 0;
  for (absl::Time t = At(berlin, 2026, 10, 25, 0, 0);; ++runs) {
    t = hourly.Next(t, berlin);
    if (t >= At(berlin, 2026, 10, 26, 0, 0)) break;
  }
  EXPECT_EQ(runs, 24);
}

TEST(CronZone, UnknownZoneNamesTheField) {
  auto zone = LoadIanaTimeZone("Mars/Olympus_Mons", "timezone");
  ASSERT_FALSE(zone.ok());
  EXPECT_THAT(zone.status().message(), HasSubstr("\"timezone\": unknown time zone \"Mars/Olympus_Mons\""));
  EXPECT_TRUE(LoadIanaTimeZone("Europe/Berlin", "timezone").ok());
}

}  // namespace
}  // namespace eventbus::executor
