#pragma once
// Where outbound `call` requests may connect: allow and deny lists of host names and address
// ranges, plus built-in denials of link-local (cloud metadata) and, on request, private ranges.
//
// The decision is made on the address a connection is actually about to be opened to (after
// DNS), together with the host name of the URL, so a name that resolves (or re-resolves) to a
// denied address is refused: no DNS rebinding. The order:
//   1. a host name or address on the deny list              -> denied (EXECUTOR_CALL_DENY)
//   2. an address inside an allow-list CIDR                  -> allowed, even a private or
//                                                               link-local one
//   3. an allow list is set and the host name is not on it   -> denied (EXECUTOR_CALL_ALLOW)
//   4. a link-local address (169.254.0.0/16, fe80::/10, fd00:ec2::254): cloud metadata
//                                                            -> denied
//   5. deny_private and a private, loopback, CGNAT or unspecified address (10/8, 172.16/12,
//      192.168/16, 127/8, 0/8, 100.64/10, ::1, ::, fc00::/7) -> denied
//                                                               (EXECUTOR_CALL_DENY_PRIVATE)
//   6. allowed.
// A host name on the allow list does not lift 4 or 5: a name's DNS may change, an address
// range is what an operator vouches for. IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) are
// judged as the IPv4 address they carry.
//
// Messages name the service settings (EXECUTOR_CALL_ALLOW, EXECUTOR_CALL_DENY,
// EXECUTOR_CALL_DENY_PRIVATE) that produced the decision. Immutable after Create: safe to use
// from any thread.

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

struct sockaddr;

#pragma GCC visibility push(default)

namespace eventbus::executor {

struct DestinationPolicyOptions {
  // Entries: a host name ("api.example.com", case-insensitive), a wildcard ("*.example.com":
  // every subdomain, not example.com itself), an address ("10.1.2.3", "::1", "[::1]") or a
  // CIDR ("10.0.0.0/8", "fd00::/8"). Empty allow = every destination not otherwise denied.
  std::vector<std::string> allow;
  std::vector<std::string> deny;
  // Also deny private, loopback, CGNAT and unspecified addresses (see above). Link-local is
  // denied regardless unless an allow-list CIDR covers it.
  bool deny_private = false;
};

// "a, b ,c" -> {"a", "b", "c"} (empty items dropped): the format of the list settings.
std::vector<std::string> SplitDestinationList(absl::string_view csv);

class DestinationPolicy {
 public:
  // InvalidArgument naming the list ("allow" / "deny") and the malformed entry.
  static absl::StatusOr<DestinationPolicy> Create(const DestinationPolicyOptions& options);

  // OK, or PermissionDenied saying why the connection to `address` (an AF_INET or AF_INET6
  // sockaddr; anything else is denied) for URL host `host` (lower case; brackets optional for
  // IPv6 literals) is refused, naming the setting.
  absl::Status Check(absl::string_view host, const sockaddr* address) const;
  // The same for an address given as text ("10.0.0.1", "::1"); InvalidArgument if it is not an
  // address. For tests and tools.
  absl::Status CheckLiteral(absl::string_view host, absl::string_view address) const;

  struct Address {
    bool v6 = false;
    std::array<uint8_t, 16> bytes{};  // IPv4 in the first 4 bytes
  };
  struct Range {
    Address base;
    int prefix = 0;
    std::string text;  // as configured, for messages
  };

 private:
  DestinationPolicy() = default;
  absl::Status CheckAddress(absl::string_view host, Address address) const;

  std::vector<std::string> allow_names_;  // "api.example.com" or "*.example.com"
  std::vector<Range> allow_ranges_;
  std::vector<std::string> deny_names_;
  std::vector<Range> deny_ranges_;
  bool has_allow_list_ = false;
  bool deny_private_ = false;
};

}  // namespace eventbus::executor

#pragma GCC visibility pop
