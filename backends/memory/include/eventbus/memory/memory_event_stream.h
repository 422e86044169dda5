#pragma once
// The in-process backend: the reference semantics every other backend is held to, the
// single-machine default, and what the executor's own tests run on (with a ManualClock).

#include <cstddef>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "eventbus/event_stream.h"
#include "eventbus/registry.h"

#pragma GCC visibility push(default)

namespace eventbus::memory {

struct MemoryOptions {
  // Retained events per stream, and their bytes (each event counted at the size of its stored
  // form: its fields' bytes plus a few bytes per field). At either bound, events settled by
  // every group of the stream are dropped to make room (a group created later no longer sees
  // them); when nothing can be dropped, Publish fails with ResourceExhausted naming the bound.
  // A stream with no group at all drops its oldest events, just enough to make room, and never
  // fails for being full (only an event larger than max_stream_bytes on its own is refused).
  size_t max_stream_events = 1'000'000;
  size_t max_stream_bytes = size_t{256} << 20;
};

// `clock` is not owned and must outlive the stream; null means the real clock.
std::unique_ptr<EventStream> NewMemoryEventStream(Clock* clock = nullptr,
                                                  MemoryOptions options = {});

// The options from a BackendConfig (keys max.stream.events, an integer, and max.stream.bytes,
// a size such as 268435456 or 256MiB; eventbus/options.h);
// InvalidArgument naming the key for unknown keys or bad numbers.
absl::StatusOr<MemoryOptions> MemoryOptionsFromConfig(const BackendConfig& config);

// Registers "memory" (options from MEMORY_OPTION_* variables). Idempotent.
absl::Status RegisterMemoryBackend(BackendRegistry& registry = BackendRegistry::Global());

}  // namespace eventbus::memory

#pragma GCC visibility pop
