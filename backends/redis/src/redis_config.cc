// REDIS_URL and REDIS_OPTION_* parsing.
#include <algorithm>
#include <cstdint>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "eventbus/options.h"
#include "eventbus/redact.h"
#include "eventbus/redis/redis_event_stream.h"
#include "eventbus/status_macros.h"

namespace eventbus::redis {
namespace {

constexpr absl::string_view kOptionEnvPrefix = kRedisOptionEnvPrefix;

absl::Status Malformed(absl::string_view url, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(
      "REDIS_URL \"", RedactUrl(url), "\" is malformed: ", what,
      "; expected redis://[[user]:password@]host[:port][/db] or "
      "unix://[[user]:password@]/path/to/socket[?db=N]"));
}

absl::StatusOr<std::string> PercentDecode(absl::string_view url, absl::string_view in,
                                          absl::string_view what) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out.push_back(in[i]);
      continue;
    }
    int value = 0;
    if (i + 2 >= in.size()) {
      return Malformed(url, absl::StrCat("truncated percent-escape in the ", what));
    }
    for (size_t k = 1; k <= 2; ++k) {
      const char c = in[i + k];
      int digit;
      if (c >= '0' && c <= '9') digit = c - '0';
      else if (c >= 'a' && c <= 'f') digit = c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') digit = c - 'A' + 10;
      else return Malformed(url, absl::StrCat("bad percent-escape in the ", what));
      value = value * 16 + digit;
    }
    out.push_back(static_cast<char>(value));
    i += 2;
  }
  return out;
}

absl::StatusOr<int> ParseDb(absl::string_view url, absl::string_view text) {
  int db = 0;
  if (!absl::SimpleAtoi(text, &db) || db < 0 || text.empty() ||
      !absl::ascii_isdigit(static_cast<unsigned char>(text.front()))) {
    return Malformed(url, absl::StrCat("database index '", text, "' is not a non-negative integer"));
  }
  return db;
}

// Splits "[[user]:password@]rest" into credentials and the rest.
absl::Status ParseUserInfo(absl::string_view url, absl::string_view& rest, RedisEndpoint& ep) {
  const size_t at = rest.rfind('@');
  if (at == absl::string_view::npos) return absl::OkStatus();
  const absl::string_view userinfo = rest.substr(0, at);
  rest = rest.substr(at + 1);
  const size_t colon = userinfo.find(':');
  if (colon == absl::string_view::npos) {
    // "redis://secret@host" is a common way to write a password without a user.
    EVENTBUS_ASSIGN_OR_RETURN(ep.password, PercentDecode(url, userinfo, "password"));
  } else {
    EVENTBUS_ASSIGN_OR_RETURN(ep.user, PercentDecode(url, userinfo.substr(0, colon), "user"));
    EVENTBUS_ASSIGN_OR_RETURN(ep.password,
                              PercentDecode(url, userinfo.substr(colon + 1), "password"));
  }
  if (!ep.user.empty() && ep.password.empty()) {
    return Malformed(url, "a user without a password");
  }
  return absl::OkStatus();
}

absl::Status ParseQuery(absl::string_view url, absl::string_view query, RedisEndpoint& ep) {
  for (absl::string_view pair : absl::StrSplit(query, '&', absl::SkipEmpty())) {
    const size_t eq = pair.find('=');
    const absl::string_view key = pair.substr(0, eq);
    const absl::string_view value = eq == absl::string_view::npos ? "" : pair.substr(eq + 1);
    if (key == "db") {
      EVENTBUS_ASSIGN_OR_RETURN(ep.db, ParseDb(url, value));
    } else {
      return Malformed(url, absl::StrCat("unknown query parameter '", key, "' (only db is known)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::string RedisEndpoint::Describe() const {
  if (!unix_path.empty()) return absl::StrCat("unix://", unix_path, "?db=", db);
  const bool v6 = absl::StrContains(host, ':');
  return absl::StrCat("redis://", v6 ? "[" : "", host, v6 ? "]" : "", ":", port, "/", db);
}

absl::StatusOr<RedisEndpoint> ParseRedisUrl(absl::string_view url) {
  RedisEndpoint ep;
  absl::string_view rest = url;
  if (absl::ConsumePrefix(&rest, "unix://")) {
    const size_t q = rest.find('?');
    absl::string_view query = q == absl::string_view::npos ? "" : rest.substr(q + 1);
    rest = rest.substr(0, q);
    EVENTBUS_RETURN_IF_ERROR(ParseUserInfo(url, rest, ep));
    if (rest.empty() || rest.front() != '/') {
      return Malformed(url, "a unix socket path must be absolute (unix:///path/to/redis.sock)");
    }
    ep.unix_path = std::string(rest);
    ep.host.clear();
    EVENTBUS_RETURN_IF_ERROR(ParseQuery(url, query, ep));
    return ep;
  }
  if (absl::StartsWith(url, "rediss://")) {
    return Malformed(url, "TLS (rediss://) is not supported by the hiredis 0.14 this build uses");
  }
  if (!absl::ConsumePrefix(&rest, "redis://")) {
    return Malformed(url, "the scheme must be redis:// or unix://");
  }
  const size_t q = rest.find('?');
  absl::string_view query = q == absl::string_view::npos ? "" : rest.substr(q + 1);
  rest = rest.substr(0, q);
  // The path ("/db") starts at the first '/' after the userinfo.
  const size_t at = rest.rfind('@');
  const size_t slash = rest.find('/', at == absl::string_view::npos ? 0 : at);
  absl::string_view path = slash == absl::string_view::npos ? "" : rest.substr(slash + 1);
  rest = rest.substr(0, slash);
  EVENTBUS_RETURN_IF_ERROR(ParseUserInfo(url, rest, ep));
  absl::string_view host = rest;
  absl::string_view port;
  if (absl::ConsumePrefix(&host, "[")) {
    const size_t close = host.find(']');
    if (close == absl::string_view::npos) return Malformed(url, "unterminated '[' in the host");
    absl::string_view after = host.substr(close + 1);
    host = host.substr(0, close);
    if (!after.empty()) {
      if (!absl::ConsumePrefix(&after, ":")) return Malformed(url, "junk after ']' in the host");
      port = after;
      if (port.empty()) return Malformed(url, "empty port");
    }
  } else {
    const size_t colon = host.find(':');
    if (colon != absl::string_view::npos) {
      port = host.substr(colon + 1);
      host = host.substr(0, colon);
      if (port.empty()) return Malformed(url, "empty port");
    }
  }
  if (host.empty()) return Malformed(url, "the host is empty");
  ep.host = std::string(host);
  if (!port.empty()) {
    int n = 0;
    if (!absl::SimpleAtoi(port, &n) || n < 1 || n > 65535 ||
        !absl::ascii_isdigit(static_cast<unsigned char>(port.front()))) {
      return Malformed(url, absl::StrCat("port '", port, "' is not a number in 1..65535"));
    }
    ep.port = n;
  }
  if (!path.empty()) {
    EVENTBUS_ASSIGN_OR_RETURN(ep.db, ParseDb(url, path));
  }
  EVENTBUS_RETURN_IF_ERROR(ParseQuery(url, query, ep));
  return ep;
}

absl::StatusOr<RedisOptions> RedisOptionsFromConfig(const BackendConfig& config) {
  RedisOptions options;
  EVENTBUS_ASSIGN_OR_RETURN(options.endpoint,
                            ParseRedisUrl(config.url.empty() ? kDefaultRedisUrl : config.url));
  OptionReader reader("redis", kOptionEnvPrefix, config.options);
  // Timeouts and intervals: from 1 ms (0 would spin or never wait) to an hour.
  using DurationOption = std::pair<absl::string_view, absl::Duration*>;
  for (const auto& [key, target] : std::initializer_list<DurationOption>{
           {"connect.timeout", &options.connect_timeout},
           {"command.timeout", &options.command_timeout},
           {"reconnect.backoff.initial", &options.reconnect_backoff_initial},
           {"reconnect.backoff.max", &options.reconnect_backoff_max},
           {"publish.retry.timeout", &options.publish_retry_timeout},
           {"fetch.slice", &options.fetch_slice}}) {
    reader.Duration(key, absl::Milliseconds(1), absl::Hours(1), target);
  }
  reader.Int("stream.maxlen", 0, int64_t{1} << 48, &options.max_stream_length);
  reader.Int("publish.batch.size", 1, 100'000, &options.publish_batch_size);
  reader.Int("publish.queue.limit", 1, int64_t{1} << 32, &options.max_queued_publishes);
  // Redis' own limit on a bulk string is 512 MiB (proto-max-bulk-len).
  reader.Size("max.event.bytes", 1024, uint64_t{512} << 20, &options.max_event_bytes);
  EVENTBUS_RETURN_IF_ERROR(reader.Finish());
  if (options.reconnect_backoff_initial > options.reconnect_backoff_max) {
    return absl::InvalidArgumentError(absl::StrCat(
        reader.Setting("reconnect.backoff.initial"), " (",
        absl::FormatDuration(options.reconnect_backoff_initial), ") must not exceed ",
        reader.Setting("reconnect.backoff.max"), " (",
        absl::FormatDuration(options.reconnect_backoff_max), ")"));
  }
  return options;
}

}  // namespace eventbus::redis
