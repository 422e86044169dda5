#include "eventbus/registry.h"

#include <unistd.h>

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "eventbus/clock.h"
#include "eventbus/options.h"
#include "eventbus/status_macros.h"

extern char** environ;

namespace eventbus {
namespace {

absl::Status UnknownBackendError(absl::string_view name, const std::vector<std::string>& names) {
  return absl::InvalidArgumentError(absl::StrCat(kEventStreamTypeEnv, "=\"", name,
                                                 "\" is not a registered backend; valid types: ",
                                                 absl::StrJoin(names, ", ")));
}

}  // namespace

Environment ProcessEnvironment() {
  Environment env;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    absl::string_view text(*entry);
    const size_t eq = text.find('=');
    if (eq == absl::string_view::npos) continue;
    env.emplace(std::string(text.substr(0, eq)), std::string(text.substr(eq + 1)));
  }
  return env;
}

BackendRegistry& BackendRegistry::Global() {
  static BackendRegistry* registry = new BackendRegistry();
  return *registry;
}

absl::Status BackendRegistry::Register(BackendRegistration registration) {
  if (registration.name.empty()) return absl::InvalidArgumentError("backend name is empty");
  if (!registration.factory) {
    return absl::InvalidArgumentError(
        absl::StrCat("backend ", registration.name, " has no factory"));
  }
  std::lock_guard lock(mu_);
  std::string name = registration.name;
  if (!backends_.emplace(name, std::move(registration)).second) {
    return absl::AlreadyExistsError(absl::StrCat("backend ", name, " is already registered"));
  }
  return absl::OkStatus();
}

std::vector<std::string> BackendRegistry::Names() const {
  std::lock_guard lock(mu_);
  std::vector<std::string> names;
  for (const auto& [name, registration] : backends_) names.push_back(name);
  return names;
}

std::vector<BackendRegistry::Type> BackendRegistry::Types() const {
  std::lock_guard lock(mu_);
  std::vector<Type> types;
  for (const auto& [name, r] : backends_) {
    types.push_back(Type{r.name, r.description, r.url_env, r.default_url, r.option_env_prefix});
  }
  return types;
}

absl::StatusOr<std::unique_ptr<EventStream>> BackendRegistry::Create(absl::string_view name,
                                                                     BackendConfig config) const {
  BackendFactory factory;
  {
    std::lock_guard lock(mu_);
    auto it = backends_.find(name);
    if (it != backends_.end()) factory = it->second.factory;
  }
  if (!factory) return UnknownBackendError(name, Names());
  if (config.clock == nullptr) config.clock = Clock::Real();
  return factory(config);
}

absl::StatusOr<BackendConfig> BackendRegistry::ConfigFromEnvironment(
    absl::string_view name, const Environment& env) const {
  BackendRegistration registration;
  {
    std::lock_guard lock(mu_);
    auto it = backends_.find(name);
    if (it != backends_.end()) registration = it->second;
  }
  if (!registration.factory) return UnknownBackendError(name, Names());
  BackendConfig config;
  config.url = registration.default_url;
  if (!registration.url_env.empty()) {
    if (auto it = env.find(registration.url_env); it != env.end()) {
      EVENTBUS_RETURN_IF_ERROR(
          RejectEmptySetting(it->first, it->second, absl::StrCat("the ", name, " address")));
      config.url = it->second;
    }
  }
  if (!registration.option_env_prefix.empty()) {
    for (auto it = env.lower_bound(registration.option_env_prefix);
         it != env.end() && absl::StartsWith(it->first, registration.option_env_prefix); ++it) {
      std::string key = absl::AsciiStrToLower(
          absl::string_view(it->first).substr(registration.option_env_prefix.size()));
      absl::StrReplaceAll({{"_", "."}}, &key);
      if (key.empty()) continue;
      EVENTBUS_RETURN_IF_ERROR(RejectEmptySetting(it->first, it->second));
      config.options[key] = it->second;
    }
  }
  return config;
}

absl::Status BackendRegistry::CheckConfig(absl::string_view name,
                                          const BackendConfig& config) const {
  std::function<absl::Status(const BackendConfig&)> check;
  bool found = false;
  {
    std::lock_guard lock(mu_);
    auto it = backends_.find(name);
    if (it != backends_.end()) {
      found = true;
      check = it->second.check_config;
    }
  }
  if (!found) return UnknownBackendError(name, Names());
  return check ? check(config) : absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<EventStream>> BackendRegistry::CreateFromEnvironment(
    const Environment& env, Clock* clock) const {
  std::string type(kDefaultEventStreamType);
  if (auto it = env.find(kEventStreamTypeEnv); it != env.end()) {
    EVENTBUS_RETURN_IF_ERROR(RejectEmptySetting(
        kEventStreamTypeEnv, it->second, absl::StrCat("one of ", absl::StrJoin(Names(), ", "))));
    type = it->second;
  }
  EVENTBUS_ASSIGN_OR_RETURN(BackendConfig config, ConfigFromEnvironment(type, env));
  config.clock = clock;
  return Create(type, std::move(config));
}

}  // namespace eventbus
