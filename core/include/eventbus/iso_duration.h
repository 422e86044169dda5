#pragma once
// ISO 8601 durations ("PT2S", "PT1M30.5S", "P1DT2H", "P2W"), as task requests and every
// duration setting (eventbus/options.h) accept them.

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#pragma GCC visibility push(default)

namespace eventbus {

// Accepts weeks, days, hours, minutes and seconds (the last unit may carry a fraction). Years
// and months are rejected: their length depends on the calendar date they start from.
// Errors: InvalidArgument naming the text and what is wrong with it.
absl::StatusOr<absl::Duration> ParseIsoDuration(absl::string_view text);

// The canonical form, e.g. "PT1H30M", "P1DT2H", "PT0.25S", "PT0S". Inverse of ParseIsoDuration
// for non-negative durations.
std::string FormatIsoDuration(absl::Duration duration);

}  // namespace eventbus

#pragma GCC visibility pop
