// ISO 8601 durations (executor/include/eventbus/executor/iso_duration.h) come from task
// requests ("timeout", "retry.initial_backoff", ...).
// Invariants: ParseIsoDuration never crashes and yields only finite durations in
// [0, 100 years]; FormatIsoDuration's text parses back to the same duration at nanosecond
// resolution, and formatting that gives the same text (a fixed point after one round).

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "eventbus/executor/iso_duration.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using eventbus::executor::FormatIsoDuration;
  using eventbus::executor::ParseIsoDuration;
  const std::string text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<absl::Duration> parsed = ParseIsoDuration(text);
  if (!parsed.ok()) return 0;
  EVENTBUS_FUZZ_CHECK(*parsed >= absl::ZeroDuration() && *parsed <= absl::Hours(100 * 365 * 24),
                      absl::StrCat(text, " parsed to ", absl::FormatDuration(*parsed)));
  const std::string formatted = FormatIsoDuration(*parsed);
  absl::StatusOr<absl::Duration> reparsed = ParseIsoDuration(formatted);
  EVENTBUS_FUZZ_CHECK(reparsed.ok(), absl::StrCat(text, " formats as ", formatted,
                                                  ", which does not parse: ",
                                                  reparsed.status().ToString()));
  EVENTBUS_FUZZ_CHECK(absl::AbsDuration(*reparsed - *parsed) < absl::Nanoseconds(1),
                      absl::StrCat(text, " = ", absl::FormatDuration(*parsed), " formats as ",
                                   formatted, " = ", absl::FormatDuration(*reparsed)));
  EVENTBUS_FUZZ_CHECK(FormatIsoDuration(*reparsed) == formatted,
                      absl::StrCat(formatted, " reformats as ", FormatIsoDuration(*reparsed)));
  return 0;
}
