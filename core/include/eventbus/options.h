#pragma once
// Typed parsers for configuration values: the service's EXECUTOR_* variables and every
// backend's *_OPTION_* settings go through these, so a duration, a size or a boolean is
// spelled the same everywhere and every error reads the same:
//
//   EXECUTOR_CONCURRENCY="0" is invalid: expected an integer from 1 to 1024
//
// Every function returns InvalidArgument naming `setting` (the name the operator wrote, e.g.
// "EXECUTOR_CONCURRENCY" or BackendOptionSetting(...)) and what is wrong with the value.
// An empty value is always an error ("... is set but empty"): a variable set to nothing is
// usually a template or a secret store that failed to fill it in, and silently meaning the
// default would hide that (an empty EXECUTOR_API_TOKEN would turn authentication off).
// Thread-safe (pure functions).

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace eventbus {

// `SETTING="value" is invalid: expected <expected>`, for checks the parsers below do not cover.
absl::Status InvalidSetting(absl::string_view setting, absl::string_view value,
                            absl::string_view expected);

// OK unless `value` is empty: then `SETTING is set but empty: unset it for the default, or
// give <expected>`.
absl::Status RejectEmptySetting(absl::string_view setting, absl::string_view value,
                                absl::string_view expected = "a value");

// How a backend option is named in messages: "command.timeout (REDIS_OPTION_COMMAND_TIMEOUT)",
// the key as BackendConfig holds it and the environment variable it comes from
// (`env_prefix` + the key upper-cased, '.' as '_'; see BackendRegistration).
std::string BackendOptionSetting(absl::string_view env_prefix, absl::string_view key);

// A decimal integer in [min, max] (no sign but '-', no white space).
absl::StatusOr<int64_t> ParseIntSetting(absl::string_view setting, absl::string_view value,
                                        int64_t min, int64_t max);

// A duration in [min, max]: "500ms", "5s", "1m30s", "2h" (Go/Abseil syntax; "0" is zero) or
// ISO 8601 ("PT5S", "P1DT2H"). Negative and infinite durations are refused.
absl::StatusOr<absl::Duration> ParseDurationSetting(absl::string_view setting,
                                                    absl::string_view value, absl::Duration min,
                                                    absl::Duration max);

// A size in bytes in [min, max]: a plain integer ("1048576") or one with a binary unit
// ("512KiB", "16MiB", "1GiB", "1TiB"; also "B"; the unit is case-insensitive). Decimal units
// ("MB") are refused as ambiguous.
absl::StatusOr<uint64_t> ParseSizeSetting(absl::string_view setting, absl::string_view value,
                                          uint64_t min, uint64_t max);

// true/false, 1/0, yes/no, on/off (case-insensitive).
absl::StatusOr<bool> ParseBoolSetting(absl::string_view setting, absl::string_view value);

// The index of `value` among `names` (case-insensitive); the error lists the names.
absl::StatusOr<size_t> ParseChoiceSetting(absl::string_view setting, absl::string_view value,
                                          const std::vector<absl::string_view>& names);

// One of `choices` (name, value), matched case-insensitively.
template <typename T>
absl::StatusOr<T> ParseEnumSetting(absl::string_view setting, absl::string_view value,
                                   const std::vector<std::pair<absl::string_view, T>>& choices) {
  std::vector<absl::string_view> names;
  names.reserve(choices.size());
  for (const auto& choice : choices) names.push_back(choice.first);
  absl::StatusOr<size_t> index = ParseChoiceSetting(setting, value, names);
  if (!index.ok()) return index.status();
  return choices[*index].second;
}

// A comma-separated list; entries are trimmed of white space. An empty entry ("a,,b", a
// trailing comma) is refused: it is a typo or an unfilled template.
absl::StatusOr<std::vector<std::string>> ParseListSetting(absl::string_view setting,
                                                          absl::string_view value);

}  // namespace eventbus
