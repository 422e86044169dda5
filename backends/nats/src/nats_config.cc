// NATS_URL and NATS_OPTION_* parsing, and the stream-name mapping.
#include <cstdint>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "eventbus/nats/nats_event_stream.h"
#include "eventbus/status_macros.h"

namespace eventbus::nats {
namespace {

absl::StatusOr<absl::Duration> DurationOption(absl::string_view key, absl::string_view value,
                                              bool zero_ok = false) {
  absl::Duration d;
  if (!absl::ParseDuration(value, &d) || d < absl::ZeroDuration() ||
      (!zero_ok && d == absl::ZeroDuration()) || d == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "nats option ", key, "=\"", value, "\" is not a ", zero_ok ? "non-negative" : "positive",
        " duration such as 5s or 250ms"));
  }
  return d;
}

absl::StatusOr<int64_t> IntOption(absl::string_view key, absl::string_view value, int64_t min) {
  int64_t n = 0;
  if (!absl::SimpleAtoi(value, &n) || n < min) {
    return absl::InvalidArgumentError(
        absl::StrCat("nats option ", key, "=\"", value, "\" is not an integer >= ", min));
  }
  return n;
}

// Checks each comma-separated server URL's scheme and host; nats.c parses the rest.
absl::Status CheckUrl(absl::string_view url) {
  for (absl::string_view one : absl::StrSplit(url, ',')) {
    one = absl::StripAsciiWhitespace(one);
    absl::string_view rest = one;
    if (!absl::ConsumePrefix(&rest, "nats://") && !absl::ConsumePrefix(&rest, "tls://")) {
      return absl::InvalidArgumentError(absl::StrCat(
          "NATS_URL entry \"", RedactedNatsUrl(one),
          "\" is malformed: the scheme must be nats:// or tls://; expected "
          "nats://[user:password@|token@]host[:port]"));
    }
    const size_t at = rest.rfind('@');
    absl::string_view host = at == absl::string_view::npos ? rest : rest.substr(at + 1);
    if (host.empty() || host.front() == ':') {
      return absl::InvalidArgumentError(
          absl::StrCat("NATS_URL entry \"", RedactedNatsUrl(one), "\" has no host"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::string RedactedNatsUrl(absl::string_view url) {
  const size_t scheme_end = url.find("://");
  const size_t at = url.rfind('@');
  if (at == absl::string_view::npos) return std::string(url);
  if (scheme_end == absl::string_view::npos || at < scheme_end) return "(redacted)";
  return absl::StrCat(url.substr(0, scheme_end + 3), "***@", url.substr(at + 1));
}

std::string JetStreamName(absl::string_view stream) {
  std::string out;
  out.reserve(stream.size());
  for (const char c : stream) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '.') {
      out.push_back('_');
    } else if (absl::ascii_isalnum(u) || c == '-' || c == '_') {
      out.push_back(c);
    } else {
      absl::StrAppendFormat(&out, "=%02X", u);
    }
  }
  return out;
}

absl::StatusOr<NatsOptions> NatsOptionsFromConfig(const BackendConfig& config) {
  NatsOptions options;
  if (!config.url.empty()) options.url = config.url;
  EVENTBUS_RETURN_IF_ERROR(CheckUrl(options.url));
  for (const auto& [key, value] : config.options) {
    if (key == "creds.file") {
      options.creds_file = value;
    } else if (key == "tls.ca") {
      options.tls_ca_file = value;
    } else if (key == "tls.cert") {
      options.tls_cert_file = value;
    } else if (key == "tls.key") {
      options.tls_key_file = value;
    } else if (key == "connect.timeout") {
      EVENTBUS_ASSIGN_OR_RETURN(options.connect_timeout, DurationOption(key, value));
    } else if (key == "request.timeout") {
      EVENTBUS_ASSIGN_OR_RETURN(options.request_timeout, DurationOption(key, value));
    } else if (key == "publish.timeout") {
      EVENTBUS_ASSIGN_OR_RETURN(options.publish_timeout, DurationOption(key, value));
    } else if (key == "max.age") {
      EVENTBUS_ASSIGN_OR_RETURN(options.max_age, DurationOption(key, value, /*zero_ok=*/true));
    } else if (key == "duplicate.window") {
      EVENTBUS_ASSIGN_OR_RETURN(options.duplicate_window, DurationOption(key, value));
    } else if (key == "ack.wait") {
      EVENTBUS_ASSIGN_OR_RETURN(options.default_ack_wait, DurationOption(key, value));
    } else if (key == "storage") {
      if (value == "file") {
        options.storage = StreamStorage::kFile;
      } else if (value == "memory") {
        options.storage = StreamStorage::kMemory;
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("nats option storage=\"", value, "\" must be file or memory"));
      }
    } else if (key == "replicas") {
      EVENTBUS_ASSIGN_OR_RETURN(int64_t n, IntOption(key, value, 1));
      if (n > 5) return absl::InvalidArgumentError("nats option replicas must be 1..5");
      options.replicas = static_cast<int>(n);
    } else if (key == "max.bytes") {
      EVENTBUS_ASSIGN_OR_RETURN(options.max_bytes, IntOption(key, value, -1));
    } else if (key == "max.deliver") {
      EVENTBUS_ASSIGN_OR_RETURN(options.max_deliver, IntOption(key, value, -1));
      if (options.max_deliver == 0) {
        return absl::InvalidArgumentError("nats option max.deliver must be -1 (unlimited) or >= 1");
      }
    } else if (key == "max.ack.pending") {
      EVENTBUS_ASSIGN_OR_RETURN(options.max_ack_pending, IntOption(key, value, 1));
    } else if (key == "publish.max.pending") {
      EVENTBUS_ASSIGN_OR_RETURN(options.max_pending_publishes, IntOption(key, value, 1));
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown nats option '", key,
          "' (NATS_OPTION_*); known: creds.file, tls.ca, tls.cert, tls.key, connect.timeout, "
          "request.timeout, publish.timeout, storage, replicas, max.age, max.bytes, "
          "duplicate.window, ack.wait, max.deliver, max.ack.pending, publish.max.pending"));
    }
  }
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("nats options tls.cert and tls.key must be given together");
  }
  return options;
}

}  // namespace eventbus::nats
