#pragma once
// Keeping secrets out of messages and logs. Every backend and the service redact through
// these two functions, so what is hidden is decided in one place. Thread-safe (pure).

#include <string>

#include "absl/strings/string_view.h"

#pragma GCC visibility push(default)

namespace eventbus {

// The URL (or comma-separated list of URLs, as NATS_URL and KAFKA_BROKERS take) with the
// password of every userinfo replaced by "***", the user kept; a userinfo without ':' may
// itself be a token (nats://token@host) and is replaced whole:
//   redis://user:s3cret@h:6379/0 -> redis://user:***@h:6379/0
//   redis://:p@ss@h, redis://:pa/ss@h -> redis://:***@h
//   nats://token@h:4222           -> nats://***@h:4222
// A userinfo ends at the last '@' before the next "://" (passwords may hold '@', '/', ','
// unencoded), so when in doubt more is hidden, never less.
std::string RedactUrl(absl::string_view url);

// Whether a setting's or property's name says its value is a secret (it contains "password",
// "secret", "key", "token", "credential" or "jaas", or is sasl.oauthbearer.config;
// case-insensitive): such values are never echoed in errors.
bool IsSecretSettingName(absl::string_view name);

}  // namespace eventbus

#pragma GCC visibility pop
