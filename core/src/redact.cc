#include "eventbus/redact.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace eventbus {

std::string RedactUrl(absl::string_view url) {
  std::string out;
  out.reserve(url.size());
  // Segments run from the start (or the end of a "://") to the next "://": each holds at
  // most one authority, whose userinfo ends at the segment's last '@'.
  size_t begin = 0;
  while (true) {
    const size_t next_scheme = url.find("://", begin);
    const size_t end = next_scheme == absl::string_view::npos ? url.size() : next_scheme;
    const absl::string_view segment = url.substr(begin, end - begin);
    const size_t at = segment.rfind('@');
    if (at == absl::string_view::npos) {
      absl::StrAppend(&out, segment);
    } else {
      const size_t colon = segment.substr(0, at).find(':');
      if (colon != absl::string_view::npos) absl::StrAppend(&out, segment.substr(0, colon + 1));
      absl::StrAppend(&out, "***", segment.substr(at));
    }
    if (next_scheme == absl::string_view::npos) break;
    out.append("://");
    begin = next_scheme + 3;
  }
  return out;
}

bool IsSecretSettingName(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  for (absl::string_view word : {"password", "secret", "key", "token", "credential", "jaas"}) {
    if (absl::StrContains(lower, word)) return true;
  }
  return lower == "sasl.oauthbearer.config";
}

}  // namespace eventbus
