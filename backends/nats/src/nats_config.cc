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
  for (const auto& [key, value] : config.options) {
    const std::string setting = BackendOptionSetting(kNatsOptionEnvPrefix, key);
    // Timeouts and windows: from 1 ms to a day.
    auto duration = [&](absl::Duration& out) -> absl::Status {
      EVENTBUS_ASSIGN_OR_RETURN(
          out, ParseDurationSetting(setting, value, absl::Milliseconds(1), absl::Hours(24)));
      return absl::OkStatus();
    };
    auto path = [&](std::string& out) -> absl::Status {
      EVENTBUS_RETURN_IF_ERROR(RejectEmptySetting(setting, value, "a file path"));
      out = value;
      return absl::OkStatus();
    };
    if (key == "creds.file") {
      EVENTBUS_RETURN_IF_ERROR(path(options.creds_file));
    } else if (key == "tls.ca") {
      EVENTBUS_RETURN_IF_ERROR(path(options.tls_ca_file));
    } else if (key == "tls.cert") {
      EVENTBUS_RETURN_IF_ERROR(path(options.tls_cert_file));
    } else if (key == "tls.key") {
      EVENTBUS_RETURN_IF_ERROR(path(options.tls_key_file));
    } else if (key == "connect.timeout") {
      EVENTBUS_RETURN_IF_ERROR(duration(options.connect_timeout));
    } else if (key == "request.timeout") {
      EVENTBUS_RETURN_IF_ERROR(duration(options.request_timeout));
    } else if (key == "publish.timeout") {
      EVENTBUS_RETURN_IF_ERROR(duration(options.publish_timeout));
    } else if (key == "max.age") {
      // 0 = unlimited; JetStream keeps at most years, so no upper bound of ours.
      EVENTBUS_ASSIGN_OR_RETURN(options.max_age,
                                ParseDurationSetting(setting, value, absl::ZeroDuration(),
                                                     absl::Hours(24 * 365 * 100)));
    } else if (key == "duplicate.window") {
      EVENTBUS_RETURN_IF_ERROR(duration(options.duplicate_window));
    } else if (key == "ack.wait") {
      EVENTBUS_RETURN_IF_ERROR(duration(options.default_ack_wait));
    } else if (key == "storage") {
      EVENTBUS_ASSIGN_OR_RETURN(
          options.storage,
          ParseEnumSetting<StreamStorage>(
              setting, value, {{"file", StreamStorage::kFile}, {"memory", StreamStorage::kMemory}}));
    } else if (key == "replicas") {
      EVENTBUS_ASSIGN_OR_RETURN(options.replicas, ParseIntSetting(setting, value, 1, 5));
    } else if (key == "max.bytes") {
      if (value == "-1") {
        options.max_bytes = -1;
      } else {
        EVENTBUS_ASSIGN_OR_RETURN(options.max_bytes,
                                  ParseSizeSetting(setting, value, 1, uint64_t{1} << 50));
      }
    } else if (key == "max.deliver") {
      EVENTBUS_ASSIGN_OR_RETURN(options.max_deliver,
                                ParseIntSetting(setting, value, -1, int64_t{1} << 40));
      if (options.max_deliver == 0) {
        return InvalidSetting(setting, value, "-1 (unlimited) or an integer >= 1");
      }
    } else if (key == "max.ack.pending") {
      EVENTBUS_ASSIGN_OR_RETURN(options.max_ack_pending,
                                ParseIntSetting(setting, value, 1, int64_t{1} << 32));
    } else if (key == "publish.max.pending") {
      EVENTBUS_ASSIGN_OR_RETURN(options.max_pending_publishes,
                                ParseIntSetting(setting, value, 1, int64_t{1} << 32));
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown nats option ", setting,
          "; known: creds.file, tls.ca, tls.cert, tls.key, connect.timeout, "
          "request.timeout, publish.timeout, storage, replicas, max.age, max.bytes, "
          "duplicate.window, ack.wait, max.deliver, max.ack.pending, publish.max.pending"));
    }
  }
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "nats options ", BackendOptionSetting(kNatsOptionEnvPrefix, "tls.cert"), " and ",
        BackendOptionSetting(kNatsOptionEnvPrefix, "tls.key"), " must be given together"));
  }
  return options;
}

}  // namespace eventbus::nats
