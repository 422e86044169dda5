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
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#pragma GCC visibility push(default)

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

// Reads a backend's options (BackendConfig::options) so that each option is declared once,
// by the call that parses it: a call parses its key when present and stores the value; Finish()
// returns the first error, or InvalidArgument for a key no call asked for, listing the known
// ones. Keys absent from `options` leave their targets (the defaults) alone.
//
//   OptionReader reader("redis", kRedisOptionEnvPrefix, config.options);
//   reader.Duration("fetch.slice", absl::Milliseconds(1), absl::Hours(1), &options.fetch_slice);
//   reader.Size("max.event.bytes", 1024, uint64_t{512} << 20, &options.max_event_bytes);
//   EVENTBUS_RETURN_IF_ERROR(reader.Finish());
//
// Not thread-safe; `options` must outlive the reader.
class OptionReader {
 public:
  OptionReader(absl::string_view backend, absl::string_view env_prefix,
               const std::map<std::string, std::string>& options);

  template <typename T>
  void Int(absl::string_view key, int64_t min, int64_t max, T* out) {
    if (const std::string* value = Find(key)) {
      Store(ParseIntSetting(Setting(key), *value, min, max), out);
    }
  }
  template <typename T>
  void Size(absl::string_view key, uint64_t min, uint64_t max, T* out) {
    if (const std::string* value = Find(key)) {
      Store(ParseSizeSetting(Setting(key), *value, min, max), out);
    }
  }
  void Duration(absl::string_view key, absl::Duration min, absl::Duration max, absl::Duration* out);
  void Bool(absl::string_view key, bool* out);
  template <typename T>
  void Enum(absl::string_view key, const std::vector<std::pair<absl::string_view, T>>& choices,
            T* out) {
    if (const std::string* value = Find(key)) {
      Store(ParseEnumSetting(Setting(key), *value, choices), out);
    }
  }
  // Any non-empty text (a path, a name).
  void String(absl::string_view key, std::string* out);

  // The value of `key` when it is set (null otherwise), for options with a form of their own
  // (e.g. "-1 or a size"); the key counts as known.
  const std::string* Raw(absl::string_view key);
  // When `key` is set and `ok` is false: the error "key=\"value\" is invalid: expected ...".
  void Require(absl::string_view key, bool ok, absl::string_view expected);

  // "fetch.slice (REDIS_OPTION_FETCH_SLICE)": BackendOptionSetting with this reader's prefix.
  std::string Setting(absl::string_view key) const;

  // The first error, else InvalidArgument for an option none of the calls above asked for.
  absl::Status Finish() const;

 private:
  // The value of `key` or null; remembers `key` as known.
  const std::string* Find(absl::string_view key);
  template <typename T, typename Parsed>
  void Store(absl::StatusOr<Parsed> parsed, T* out) {
    if (!status_.ok()) return;
    if (!parsed.ok()) {
      status_ = parsed.status();
      return;
    }
    *out = static_cast<T>(*parsed);
  }

  const std::string backend_;
  const std::string env_prefix_;
  const std::map<std::string, std::string>& options_;
  std::vector<std::string> known_;
  absl::Status status_;
};

}  // namespace eventbus

#pragma GCC visibility pop
