#pragma once
// Every backend built into this eventbus package, registered in one call:
//
//   EVENTBUS_RETURN_IF_ERROR(eventbus::RegisterBuiltinBackends());
//   auto stream = eventbus::BackendRegistry::Global().CreateFromEnvironment(
//       eventbus::ProcessEnvironment());
//
// Which backends those are: eventbus/backends.h (EVENTBUS_HAS_<NAME>_BACKEND) at compile time,
// BackendRegistry::Types() at run time. Linking eventbus::builtin_backends links them all; a
// program that wants only some links those components and calls their Register*Backend().

#include "absl/status/status.h"
#include "eventbus/backends.h"
#include "eventbus/registry.h"

#pragma GCC visibility push(default)

namespace eventbus {

// Registers each built-in backend not yet registered in `registry` (a backend registered
// before, by this or its own Register*Backend(), is kept). Idempotent; thread-safe.
// Errors: the first registration that failed for another reason.
absl::Status RegisterBuiltinBackends(BackendRegistry& registry = BackendRegistry::Global());

}  // namespace eventbus

#pragma GCC visibility pop
