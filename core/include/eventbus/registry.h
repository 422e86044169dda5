#pragma once
// Backends register a factory under the name EVENT_STREAM_TYPE uses; the service picks one at
// run time by name. core/ never names a backend.

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"
#include "eventbus/event_stream.h"

#pragma GCC visibility push(default)

namespace eventbus {

class Clock;

// A snapshot of environment variables (injectable, so configuration tests need no setenv).
using Environment = std::map<std::string, std::string, std::less<>>;
Environment ProcessEnvironment();

struct BackendConfig {
  // The backend's address (REDIS_URL, KAFKA_BROKERS, NATS_URL, ...); empty = its default.
  std::string url;
  // Backend-specific settings, e.g. librdkafka properties. Unknown keys are errors.
  std::map<std::string, std::string> options;
  // Not owned; must outlive the stream. Never null.
  Clock* clock = nullptr;
};

using BackendFactory =
    std::function<absl::StatusOr<std::unique_ptr<EventStream>>(const BackendConfig&)>;

struct BackendRegistration {
  std::string name;         // the EVENT_STREAM_TYPE value, e.g. "redis"
  std::string description;  // one line for --help and error messages
  std::string url_env;      // the variable holding BackendConfig::url, e.g. "REDIS_URL"
  std::string default_url;  // used when url_env is unset or empty
  // Environment variables starting with this prefix become options: the rest of the name,
  // lower-cased, '_' turned into '.' (KAFKA_OPTION_SECURITY_PROTOCOL -> security.protocol).
  std::string option_env_prefix;
  BackendFactory factory;
  // Optional: parses and checks a configuration without connecting, and returns what the
  // factory would refuse as InvalidArgument (a bad option, a malformed URL), so the service
  // can stop with its configuration exit code before it tries to reach a server.
  std::function<absl::Status(const BackendConfig&)> check_config;
};

// Thread-safe.
class BackendRegistry {
 public:
  // The registry the service and the backends' Register* functions use.
  static BackendRegistry& Global();

  // AlreadyExists if the name is taken, InvalidArgument if it or the factory is empty.
  absl::Status Register(BackendRegistration registration);

  // Sorted names of the registered backends.
  std::vector<std::string> Names() const;

  // The registered backends, sorted by name: what EVENT_STREAM_TYPE may name, with the
  // description and the variables each reads (for --help, diagnostics, discovery).
  struct Type {
    std::string name;
    std::string description;
    std::string url_env;
    std::string default_url;
    std::string option_env_prefix;
  };
  std::vector<Type> Types() const;

  // InvalidArgument naming the valid types when `name` is not registered; else the factory's
  // result. A null config.clock means the real clock.
  absl::StatusOr<std::unique_ptr<EventStream>> Create(absl::string_view name,
                                                      BackendConfig config) const;

  // The backend named by EVENT_STREAM_TYPE (default "memory"), configured from its url_env and
  // option_env_prefix variables.
  absl::StatusOr<std::unique_ptr<EventStream>> CreateFromEnvironment(
      const Environment& env, Clock* clock = nullptr) const;

  // The configuration CreateFromEnvironment would use for `name`. A variable it reads (the
  // url_env or an option) that is set but empty is InvalidArgument naming it: empty never
  // silently means the default.
  absl::StatusOr<BackendConfig> ConfigFromEnvironment(absl::string_view name,
                                                      const Environment& env) const;

  // The registration's check_config on `config` (OK when it has none); InvalidArgument naming
  // the setting for a configuration the backend refuses; never connects.
  absl::Status CheckConfig(absl::string_view name, const BackendConfig& config) const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, BackendRegistration, std::less<>> backends_;  // guarded by mu_
};

inline constexpr absl::string_view kEventStreamTypeEnv = "EVENT_STREAM_TYPE";
inline constexpr absl::string_view kDefaultEventStreamType = "memory";

}  // namespace eventbus

#pragma GCC visibility pop
