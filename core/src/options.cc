#include "eventbus/options.h"

#include <algorithm>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "eventbus/iso_duration.h"

namespace eventbus {
namespace {

// Digits, optionally after one '-'. SimpleAtoi alone also takes "+5" and white space around
// the number; a value that is not exactly a number is refused rather than guessed at.
bool IsPlainInteger(absl::string_view text) {
  absl::ConsumePrefix(&text, "-");
  if (text.empty()) return false;
  for (char c : text) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

std::string FormatSize(uint64_t bytes) {
  static constexpr std::pair<uint64_t, absl::string_view> kUnits[] = {
      {uint64_t{1} << 40, "TiB"}, {uint64_t{1} << 30, "GiB"}, {uint64_t{1} << 20, "MiB"},
      {uint64_t{1} << 10, "KiB"}};
  for (const auto& [size, name] : kUnits) {
    if (bytes >= size && bytes % size == 0) return absl::StrCat(bytes / size, name);
  }
  return absl::StrCat(bytes);
}

}  // namespace

absl::Status InvalidSetting(absl::string_view setting, absl::string_view value,
                            absl::string_view expected) {
  return absl::InvalidArgumentError(
      absl::StrCat(setting, "=\"", value, "\" is invalid: expected ", expected));
}

absl::Status RejectEmptySetting(absl::string_view setting, absl::string_view value,
                                absl::string_view expected) {
  if (!value.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      setting, " is set but empty: unset it for the default, or give ", expected));
}

std::string BackendOptionSetting(absl::string_view env_prefix, absl::string_view key) {
  std::string env = absl::StrCat(env_prefix, absl::AsciiStrToUpper(key));
  absl::StrReplaceAll({{".", "_"}}, &env);
  return absl::StrCat(key, " (", env, ")");
}

absl::StatusOr<int64_t> ParseIntSetting(absl::string_view setting, absl::string_view value,
                                        int64_t min, int64_t max) {
  const std::string expected = absl::StrCat("an integer from ", min, " to ", max);
  if (absl::Status s = RejectEmptySetting(setting, value, expected); !s.ok()) return s;
  int64_t parsed = 0;
  if (!IsPlainInteger(value) || !absl::SimpleAtoi(value, &parsed) || parsed < min ||
      parsed > max) {
    return InvalidSetting(setting, value, expected);
  }
  return parsed;
}

absl::StatusOr<absl::Duration> ParseDurationSetting(absl::string_view setting,
                                                    absl::string_view value, absl::Duration min,
                                                    absl::Duration max) {
  const std::string expected =
      absl::StrCat("a duration such as 500ms, 5s, 2m or PT5S, from ", absl::FormatDuration(min),
                   " to ", absl::FormatDuration(max));
  if (absl::Status s = RejectEmptySetting(setting, value, expected); !s.ok()) return s;
  absl::Duration parsed;
  bool ok = false;
  if (value.front() == 'P' || value.front() == 'p') {
    absl::StatusOr<absl::Duration> iso = ParseIsoDuration(value);
    ok = iso.ok();
    if (ok) parsed = *iso;
  } else {
    ok = absl::ParseDuration(value, &parsed) && parsed != absl::InfiniteDuration() &&
         parsed >= absl::ZeroDuration();
  }
  if (!ok || parsed < min || parsed > max) return InvalidSetting(setting, value, expected);
  return parsed;
}

absl::StatusOr<uint64_t> ParseSizeSetting(absl::string_view setting, absl::string_view value,
                                          uint64_t min, uint64_t max) {
  const std::string expected =
      absl::StrCat("a size in bytes such as 1048576, 512KiB or 16MiB, from ", FormatSize(min),
                   " to ", FormatSize(max));
  if (absl::Status s = RejectEmptySetting(setting, value, expected); !s.ok()) return s;
  size_t digits = 0;
  while (digits < value.size() && absl::ascii_isdigit(static_cast<unsigned char>(value[digits]))) {
    ++digits;
  }
  const absl::string_view number = value.substr(0, digits);
  const std::string unit = absl::AsciiStrToLower(value.substr(digits));
  uint64_t multiplier = 0;
  if (unit.empty() || unit == "b") multiplier = 1;
  if (unit == "kib") multiplier = uint64_t{1} << 10;
  if (unit == "mib") multiplier = uint64_t{1} << 20;
  if (unit == "gib") multiplier = uint64_t{1} << 30;
  if (unit == "tib") multiplier = uint64_t{1} << 40;
  uint64_t count = 0;
  if (multiplier == 0 || !IsPlainInteger(number) || !absl::SimpleAtoi(number, &count) ||
      count > std::numeric_limits<uint64_t>::max() / multiplier) {
    return InvalidSetting(setting, value, expected);
  }
  const uint64_t bytes = count * multiplier;
  if (bytes < min || bytes > max) return InvalidSetting(setting, value, expected);
  return bytes;
}

absl::StatusOr<bool> ParseBoolSetting(absl::string_view setting, absl::string_view value) {
  constexpr absl::string_view kExpected = "true or false (also 1/0, yes/no, on/off)";
  if (absl::Status s = RejectEmptySetting(setting, value, kExpected); !s.ok()) return s;
  const std::string lower = absl::AsciiStrToLower(value);
  if (lower == "true" || lower == "1" || lower == "yes" || lower == "on") return true;
  if (lower == "false" || lower == "0" || lower == "no" || lower == "off") return false;
  return InvalidSetting(setting, value, kExpected);
}

absl::StatusOr<size_t> ParseChoiceSetting(absl::string_view setting, absl::string_view value,
                                          const std::vector<absl::string_view>& names) {
  const std::string expected = absl::StrCat("one of ", absl::StrJoin(names, ", "));
  if (absl::Status s = RejectEmptySetting(setting, value, expected); !s.ok()) return s;
  for (size_t i = 0; i < names.size(); ++i) {
    if (absl::EqualsIgnoreCase(value, names[i])) return i;
  }
  return InvalidSetting(setting, value, expected);
}

absl::StatusOr<std::vector<std::string>> ParseListSetting(absl::string_view setting,
                                                          absl::string_view value) {
  constexpr absl::string_view kExpected = "a comma-separated list without empty entries";
  if (absl::Status s = RejectEmptySetting(setting, value, kExpected); !s.ok()) return s;
  std::vector<std::string> out;
  for (absl::string_view entry : absl::StrSplit(value, ',')) {
    entry = absl::StripAsciiWhitespace(entry);
    if (entry.empty()) return InvalidSetting(setting, value, kExpected);
    out.emplace_back(entry);
  }
  return out;
}

OptionReader::OptionReader(absl::string_view backend, absl::string_view env_prefix,
                           const std::map<std::string, std::string>& options)
    : backend_(backend), env_prefix_(env_prefix), options_(options) {}

const std::string* OptionReader::Find(absl::string_view key) {
  if (std::find(known_.begin(), known_.end(), key) == known_.end()) known_.emplace_back(key);
  auto it = options_.find(std::string(key));
  return it == options_.end() ? nullptr : &it->second;
}

void OptionReader::Duration(absl::string_view key, absl::Duration min, absl::Duration max,
                            absl::Duration* out) {
  if (const std::string* value = Find(key)) {
    Store(ParseDurationSetting(Setting(key), *value, min, max), out);
  }
}

void OptionReader::Bool(absl::string_view key, bool* out) {
  if (const std::string* value = Find(key)) Store(ParseBoolSetting(Setting(key), *value), out);
}

void OptionReader::String(absl::string_view key, std::string* out) {
  const std::string* value = Find(key);
  if (value == nullptr || !status_.ok()) return;
  status_ = RejectEmptySetting(Setting(key), *value);
  if (status_.ok()) *out = *value;
}

const std::string* OptionReader::Raw(absl::string_view key) { return Find(key); }

void OptionReader::Require(absl::string_view key, bool ok, absl::string_view expected) {
  auto it = options_.find(std::string(key));
  if (ok || it == options_.end() || !status_.ok()) return;
  status_ = InvalidSetting(Setting(key), it->second, expected);
}

std::string OptionReader::Setting(absl::string_view key) const {
  return BackendOptionSetting(env_prefix_, key);
}

absl::Status OptionReader::Finish() const {
  if (!status_.ok()) return status_;
  for (const auto& [key, value] : options_) {
    if (std::find(known_.begin(), known_.end(), key) == known_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("unknown ", backend_, " option ",
                                                     Setting(key), "; known: ",
                                                     absl::StrJoin(known_, ", ")));
    }
  }
  return absl::OkStatus();
}

}  // namespace eventbus
