// The `call` destination policy on its own: decisions on (host, address) pairs, no network.

#include "eventbus/executor/destination_policy.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace eventbus::executor {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

DestinationPolicy Policy(DestinationPolicyOptions options) {
  absl::StatusOr<DestinationPolicy> policy = DestinationPolicy::Create(options);
  EXPECT_TRUE(policy.ok()) << policy.status();
  return *std::move(policy);
}

bool Allowed(const DestinationPolicy& policy, absl::string_view host, absl::string_view address) {
  absl::Status status = policy.CheckLiteral(host, address);
  EXPECT_TRUE(status.ok() || absl::IsPermissionDenied(status)) << status;
  return status.ok();
}

TEST(DestinationPolicyTest, DefaultDeniesLinkLocalOnly) {
  const DestinationPolicy policy = Policy({});
  EXPECT_TRUE(Allowed(policy, "example.com", "93.184.216.34"));
  EXPECT_TRUE(Allowed(policy, "localhost", "127.0.0.1"));
  EXPECT_TRUE(Allowed(policy, "db", "10.1.2.3"));
  EXPECT_FALSE(Allowed(policy, "metadata", "169.254.169.254"));
  EXPECT_FALSE(Allowed(policy, "x", "fe80::1"));
  EXPECT_FALSE(Allowed(policy, "x", "fd00:ec2::254"));
  // The IPv4-mapped form is the IPv4 address.
  EXPECT_FALSE(Allowed(policy, "x", "::ffff:169.254.169.254"));
  EXPECT_THAT(policy.CheckLiteral("metadata", "169.254.169.254").message(),
              HasSubstr("EXECUTOR_CALL_ALLOW"));
}

TEST(DestinationPolicyTest, DenyPrivateCoversEveryPrivateRange) {
  const DestinationPolicy policy = Policy({.deny_private = true});
  for (const char* address : {"10.0.0.1", "172.16.0.1", "172.31.255.255", "192.168.1.1",
                              "127.0.0.1", "0.0.0.0", "100.64.0.1", "::1", "::", "fd12::1",
                              "::ffff:10.0.0.1"}) {
    EXPECT_FALSE(Allowed(policy, "h", address)) << address;
  }
  for (const char* address : {"172.32.0.1", "8.8.8.8", "2001:db8::1", "100.128.0.1"}) {
    EXPECT_TRUE(Allowed(policy, "h", address)) << address;
  }
  EXPECT_THAT(policy.CheckLiteral("h", "10.0.0.1").message(),
              HasSubstr("EXECUTOR_CALL_DENY_PRIVATE=true"));
}

TEST(DestinationPolicyTest, DenyListMatchesNamesWildcardsAndCidrs) {
  const DestinationPolicy policy =
      Policy({.deny = {"evil.example", "*.internal.example", "203.0.113.0/24", "2001:db8::/32"}});
  EXPECT_FALSE(Allowed(policy, "evil.example", "8.8.8.8"));
  EXPECT_FALSE(Allowed(policy, "EVIL.example.", "8.8.8.8"));  // case and trailing dot
  EXPECT_FALSE(Allowed(policy, "a.internal.example", "8.8.8.8"));
  EXPECT_FALSE(Allowed(policy, "a.b.internal.example", "8.8.8.8"));
  EXPECT_TRUE(Allowed(policy, "internal.example", "8.8.8.8"));  // *. is subdomains only
  EXPECT_TRUE(Allowed(policy, "notinternal.example", "8.8.8.8"));
  EXPECT_FALSE(Allowed(policy, "ok.example", "203.0.113.7"));
  EXPECT_FALSE(Allowed(policy, "ok.example", "2001:db8::5"));
  EXPECT_TRUE(Allowed(policy, "ok.example", "203.0.114.1"));
  EXPECT_THAT(policy.CheckLiteral("ok.example", "203.0.113.7").message(),
              HasSubstr("EXECUTOR_CALL_DENY entry '203.0.113.0/24'"));
}

TEST(DestinationPolicyTest, AllowListAdmitsOnlyItsEntries) {
  const DestinationPolicy policy = Policy({.allow = {"api.example.com", "*.hooks.example"}});
  EXPECT_TRUE(Allowed(policy, "api.example.com", "93.184.216.34"));
  EXPECT_TRUE(Allowed(policy, "a.hooks.example", "93.184.216.34"));
  EXPECT_FALSE(Allowed(policy, "other.example.com", "93.184.216.34"));
  // A name on the allow list does not lift the built-in denials: its DNS may change.
  EXPECT_FALSE(Allowed(policy, "api.example.com", "169.254.169.254"));
}

TEST(DestinationPolicyTest, AllowedCidrLiftsBuiltInDenialsButNotTheDenyList) {
  const DestinationPolicy policy = Policy(
      {.allow = {"10.0.0.0/8", "169.254.169.254"}, .deny = {"10.9.0.0/16"}, .deny_private = true});
  EXPECT_TRUE(Allowed(policy, "db", "10.1.2.3"));
  EXPECT_TRUE(Allowed(policy, "metadata", "169.254.169.254"));
  EXPECT_FALSE(Allowed(policy, "db", "10.9.1.1"));
  EXPECT_FALSE(Allowed(policy, "db", "192.168.1.1"));  // not in the allow list
}

TEST(DestinationPolicyTest, MalformedEntriesNameTheListAndTheEntry) {
  for (const char* entry : {"10.0.0.0/33", "::1/129", "a b", "*.", "*", "http://x", "x/8",
                            "a..b", "1.2.3.4/x"}) {
    absl::StatusOr<DestinationPolicy> policy = DestinationPolicy::Create({.allow = {entry}});
    ASSERT_TRUE(absl::IsInvalidArgument(policy.status())) << entry;
    EXPECT_THAT(policy.status().message(), HasSubstr(absl::StrCat("allow entry '", entry, "'")));
  }
}

TEST(DestinationPolicyTest, SplitsCommaSeparatedLists) {
  EXPECT_THAT(SplitDestinationList(" a.example, *.b.example ,,10.0.0.0/8 "),
              ElementsAre("a.example", "*.b.example", "10.0.0.0/8"));
  EXPECT_TRUE(SplitDestinationList("").empty());
}

}  // namespace
}  // namespace eventbus::executor
