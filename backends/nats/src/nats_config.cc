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
#include "eventbus/options.h"
#include "eventbus/redact.h"
#include "eventbus/status_macros.h"

namespace eventbus::nats {
namespace {

// Checks each comma-separated server URL's scheme and host; nats.c parses the rest.
absl::Status CheckUrl(absl::string_view url) {
  for (absl::string_view one : absl::StrSplit(url, ',')) {
    one = absl::StripAsciiWhitespace(one);
    absl::string_view rest = one;
    if (!absl::ConsumePrefix(&rest, "nats://") && !absl::ConsumePrefix(&rest, "tls://")) {
      return absl::InvalidArgumentError(absl::StrCat(
          "NATS_URL entry \"", RedactUrl(one),
          "\" is malformed: the scheme must be nats:// or tls://; expected "
          "nats://[user:password@|token@]host[:port]"));
    }
    const size_t at = rest.rfind('@');
    absl::string_view host = at == absl::string_view::npos ? rest : rest.substr(at + 1);
    if (host.empty() || host.front() == ':') {
      return absl::InvalidArgumentError(
          absl::StrCat("NATS_URL entry \"", RedactUrl(one), "\" has no host"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

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
  OptionReader reader("nats", kNatsOptionEnvPrefix, config.options);
  reader.String("creds.file", &options.creds_file);
  reader.String("tls.ca", &options.tls_ca_file);
  reader.String("tls.cert", &options.tls_cert_file);
  reader.String("tls.key", &options.tls_key_file);
  // Timeouts and windows: from 1 ms to a day.
  using DurationOption = std::pair<absl::string_view, absl::Duration*>;
  for (const auto& [key, target] : std::initializer_list<DurationOption>{
           {"connect.timeout", &options.connect_timeout},
           {"request.timeout", &options.request_timeout},
           {"publish.timeout", &options.publish_timeout},
           {"duplicate.window", &options.duplicate_window},
           {"ack.wait", &options.default_ack_wait}}) {
    reader.Duration(key, absl::Milliseconds(1), absl::Hours(24), target);
  }
  // 0 = unlimited; JetStream keeps at most years, so no upper bound of ours.
  reader.Duration("max.age", absl::ZeroDuration(), absl::Hours(24 * 365 * 100), &options.max_age);
  reader.Enum<StreamStorage>("storage",
                             {{"file", StreamStorage::kFile}, {"memory", StreamStorage::kMemory}},
                             &options.storage);
  reader.Int("replicas", 1, 5, &options.replicas);
  if (const std::string* max_bytes = reader.Raw("max.bytes"); max_bytes && *max_bytes == "-1") {
    options.max_bytes = -1;  // unlimited
  } else {
    reader.Size("max.bytes", 1, uint64_t{1} << 50, &options.max_bytes);
  }
  reader.Int("max.deliver", -1, int64_t{1} << 40, &options.max_deliver);
  reader.Require("max.deliver", options.max_deliver != 0, "-1 (unlimited) or an integer >= 1");
  reader.Int("max.ack.pending", 1, int64_t{1} << 32, &options.max_ack_pending);
  reader.Int("publish.max.pending", 1, int64_t{1} << 32, &options.max_pending_publishes);
  EVENTBUS_RETURN_IF_ERROR(reader.Finish());
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("nats options ", reader.Setting("tls.cert"),
                                                   " and ", reader.Setting("tls.key"),
                                                   " must be given together"));
  }
  return options;
}

}  // namespace eventbus::nats
