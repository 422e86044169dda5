#include "eventbus/executor/destination_policy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstring>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace eventbus::executor {
namespace {

using Address = DestinationPolicy::Address;
using Range = DestinationPolicy::Range;

std::optional<Address> ParseAddress(absl::string_view text) {
  if (text.size() > 2 && text.front() == '[' && text.back() == ']') {
    text = text.substr(1, text.size() - 2);
  }
  const std::string s(text);
  Address address;
  if (inet_pton(AF_INET, s.c_str(), address.bytes.data()) == 1) return address;
  if (inet_pton(AF_INET6, s.c_str(), address.bytes.data()) == 1) {
    address.v6 = true;
    return address;
  }
  return std::nullopt;
}

// ::ffff:a.b.c.d is a.b.c.d on the wire: judge it as that.
Address Unmap(Address address) {
  static constexpr uint8_t kMappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (address.v6 && std::memcmp(address.bytes.data(), kMappedPrefix, 12) == 0) {
    Address v4;
    std::memcpy(v4.bytes.data(), address.bytes.data() + 12, 4);
    return v4;
  }
  return address;
}

bool InRange(const Address& address, const Range& range) {
  if (address.v6 != range.base.v6) return false;
  int bits = range.prefix;
  for (size_t i = 0; bits > 0; ++i, bits -= 8) {
    const uint8_t mask = bits >= 8 ? 0xff : static_cast<uint8_t>(0xff << (8 - bits));
    if ((address.bytes[i] & mask) != (range.base.bytes[i] & mask)) return false;
  }
  return true;
}

std::optional<Range> ParseRange(absl::string_view text) {
  absl::string_view addr = text;
  std::optional<int> prefix;
  if (const size_t slash = text.find('/'); slash != absl::string_view::npos) {
    int p = -1;
    if (!absl::SimpleAtoi(text.substr(slash + 1), &p)) return std::nullopt;
    prefix = p;
    addr = text.substr(0, slash);
  }
  std::optional<Address> base = ParseAddress(addr);
  if (!base) return std::nullopt;
  const int max = base->v6 ? 128 : 32;
  if (prefix && (*prefix < 0 || *prefix > max)) return std::nullopt;
  Range range{*base, prefix.value_or(max), std::string(text)};
  // ::ffff:10.0.0.0/104 is 10.0.0.0/8.
  if (range.base.v6 && range.prefix >= 96) {
    Address unmapped = Unmap(range.base);
    if (!unmapped.v6) {
      range.base = unmapped;
      range.prefix -= 96;
    }
  }
  return range;
}

Range Builtin(const char* cidr) { return *ParseRange(cidr); }

const std::vector<Range>& LinkLocalRanges() {
  static const auto* ranges = new std::vector<Range>{
      Builtin("169.254.0.0/16"), Builtin("fe80::/10"),
      // AWS's IPv6 instance metadata endpoint (inside fc00::/7, so deny_private covers it too).
      Builtin("fd00:ec2::254/128")};
  return *ranges;
}

const std::vector<Range>& PrivateRanges() {
  static const auto* ranges = new std::vector<Range>{
      Builtin("10.0.0.0/8"),    Builtin("172.16.0.0/12"), Builtin("192.168.0.0/16"),
      Builtin("127.0.0.0/8"),   Builtin("0.0.0.0/8"),     Builtin("100.64.0.0/10"),
      Builtin("::1/128"),       Builtin("::/128"),        Builtin("fc00::/7")};
  return *ranges;
}

const Range* FindRange(const Address& address, const std::vector<Range>& ranges) {
  for (const Range& range : ranges) {
    if (InRange(address, range)) return &range;
  }
  return nullptr;
}

std::string NormalHost(absl::string_view host) {
  host = absl::StripSuffix(host, ".");
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return absl::AsciiStrToLower(host);
}

bool NameMatches(absl::string_view host, absl::string_view pattern) {
  if (absl::StartsWith(pattern, "*.")) {
    const absl::string_view suffix = pattern.substr(1);  // ".example.com"
    return host.size() > suffix.size() && absl::EndsWith(host, suffix);
  }
  return host == pattern;
}

const std::string* FindName(absl::string_view host, const std::vector<std::string>& names) {
  for (const std::string& name : names) {
    if (NameMatches(host, name)) return &name;
  }
  return nullptr;
}

bool IsHostNamePattern(absl::string_view entry) {
  absl::string_view name = absl::StripPrefix(entry, "*.");
  if (name.empty() || name.front() == '.' || name.back() == '.' ||
      absl::StrContains(name, "..")) {
    return false;
  }
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.' &&
        c != '_') {
      return false;
    }
  }
  return true;
}

std::string AddressText(const Address& address) {
  char buffer[INET6_ADDRSTRLEN] = {};
  inet_ntop(address.v6 ? AF_INET6 : AF_INET, address.bytes.data(), buffer, sizeof(buffer));
  return buffer;
}

absl::Status Denied(absl::string_view host, const Address& address, absl::string_view why) {
  return absl::PermissionDeniedError(absl::StrCat("destination ", host, " (", AddressText(address),
                                                  ") is denied by the call policy: ", why));
}

}  // namespace

std::vector<std::string> SplitDestinationList(absl::string_view csv) {
  std::vector<std::string> out;
  for (absl::string_view item : absl::StrSplit(csv, ',')) {
    item = absl::StripAsciiWhitespace(item);
    if (!item.empty()) out.emplace_back(item);
  }
  return out;
}

absl::StatusOr<DestinationPolicy> DestinationPolicy::Create(
    const DestinationPolicyOptions& options) {
  DestinationPolicy policy;
  auto add = [](absl::string_view list, const std::vector<std::string>& entries,
                std::vector<std::string>& names, std::vector<Range>& ranges) -> absl::Status {
    for (const std::string& raw : entries) {
      const absl::string_view entry = absl::StripAsciiWhitespace(raw);
      if (entry.empty()) continue;
      if (std::optional<Range> range = ParseRange(entry)) {
        ranges.push_back(*std::move(range));
      } else if (!absl::StrContains(entry, '/') && !absl::StrContains(entry, ':') &&
                 IsHostNamePattern(entry)) {
        names.push_back(NormalHost(entry));
      } else {
        return absl::InvalidArgumentError(absl::StrCat(
            list, " entry '", entry,
            "' is neither a host name, a *.suffix wildcard, an IP address nor a CIDR "
            "(e.g. api.example.com, *.example.com, 10.0.0.0/8, fd00::/8)"));
      }
    }
    return absl::OkStatus();
  };
  if (absl::Status s = add("allow", options.allow, policy.allow_names_, policy.allow_ranges_);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = add("deny", options.deny, policy.deny_names_, policy.deny_ranges_);
      !s.ok()) {
    return s;
  }
  policy.has_allow_list_ = !policy.allow_names_.empty() || !policy.allow_ranges_.empty();
  policy.deny_private_ = options.deny_private;
  return policy;
}

absl::Status DestinationPolicy::Check(absl::string_view host, const sockaddr* address) const {
  Address parsed;
  if (address != nullptr && address->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(address);
    std::memcpy(parsed.bytes.data(), &in->sin_addr, 4);
  } else if (address != nullptr && address->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(address);
    std::memcpy(parsed.bytes.data(), &in6->sin6_addr, 16);
    parsed.v6 = true;
  } else {
    return absl::PermissionDeniedError(
        absl::StrCat("destination ", host, " is denied by the call policy: not an IP address"));
  }
  return CheckAddress(host, parsed);
}

absl::Status DestinationPolicy::CheckLiteral(absl::string_view host,
                                             absl::string_view address) const {
  std::optional<Address> parsed = ParseAddress(address);
  if (!parsed) {
    return absl::InvalidArgumentError(absl::StrCat("'", address, "' is not an IP address"));
  }
  return CheckAddress(host, *parsed);
}

absl::Status DestinationPolicy::CheckAddress(absl::string_view raw_host, Address address) const {
  address = Unmap(address);
  const std::string host = NormalHost(raw_host);
  if (const std::string* name = FindName(host, deny_names_)) {
    return Denied(host, address, absl::StrCat("host matches EXECUTOR_CALL_DENY entry '", *name, "'"));
  }
  if (const Range* range = FindRange(address, deny_ranges_)) {
    return Denied(host, address,
                  absl::StrCat("address in EXECUTOR_CALL_DENY entry '", range->text, "'"));
  }
  if (FindRange(address, allow_ranges_) != nullptr) return absl::OkStatus();
  if (has_allow_list_ && FindName(host, allow_names_) == nullptr) {
    return Denied(host, address, "neither the host nor the address is in EXECUTOR_CALL_ALLOW");
  }
  if (const Range* range = FindRange(address, LinkLocalRanges())) {
    return Denied(host, address,
                  absl::StrCat("link-local address (", range->text,
                               ", cloud metadata) denied by default; allow it with an "
                               "EXECUTOR_CALL_ALLOW CIDR"));
  }
  if (deny_private_) {
    if (const Range* range = FindRange(address, PrivateRanges())) {
      return Denied(host, address,
                    absl::StrCat("private or loopback address (", range->text,
                                 ") denied by EXECUTOR_CALL_DENY_PRIVATE=true"));
    }
  }
  return absl::OkStatus();
}

}  // namespace eventbus::executor
