// Prints the backends RegisterBuiltinBackends() registered, comma-separated, then checks the
// compile-time list (eventbus/backends.h) says the same.
#include <cstdio>
#include <string>

#include "absl/strings/str_join.h"
#include "eventbus/backends.h"
#include "eventbus/builtin_backends.h"
#include "eventbus/version.h"

int main() {
  if (absl::Status s = eventbus::RegisterBuiltinBackends(); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  std::vector<std::string> names;
  for (const auto& type : eventbus::BackendRegistry::Global().Types()) names.push_back(type.name);
  const std::string registered = absl::StrJoin(names, ",");
  std::printf("%s\neventbus %s\n", registered.c_str(), EVENTBUS_VERSION_STRING);
#if !EVENTBUS_HAS_MEMORY_BACKEND
  return 1;
#endif
  return registered == EVENTBUS_BUILTIN_BACKENDS ? 0 : 1;
}
