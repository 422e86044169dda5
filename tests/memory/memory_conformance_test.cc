// The memory backend against the conformance suite, in virtual time.
#include "eventbus/clock.h"
#include "eventbus/conformance/conformance.h"
#include "eventbus/memory/memory_event_stream.h"

namespace {

eventbus::conformance::BackendUnderTest MemoryOnManualClock() {
  // One virtual clock for the suite; each make_stream() is a separate in-process state, which
  // is why the backend does not declare `persistent`.
  static auto* clock = new eventbus::ManualClock();
  eventbus::conformance::BackendUnderTest backend;
  backend.name = "memory";
  backend.make_stream = []() -> absl::StatusOr<std::unique_ptr<eventbus::EventStream>> {
    return eventbus::memory::NewMemoryEventStream(clock);
  };
  backend.let_time_pass = [](absl::Duration d) { clock->Advance(d); };
  // Everything is in memory: waiting for arrivals needs no slack, and nothing real waits.
  backend.fetch_wait = absl::Milliseconds(100);
  backend.quiet_wait = absl::ZeroDuration();
  backend.nack_delay = absl::Minutes(10);
  backend.reclaim_idle = absl::Minutes(1);
  backend.events_per_publisher = 5000;
  // Virtual time makes long delays free: the tolerance case checks both.
  backend.nack_tolerance = absl::ZeroDuration();
  backend.long_nack_delay = absl::Hours(6);
  // A consumer that dies in process is one that stops calling: keep it, never use it again.
  backend.crash = eventbus::conformance::AbandonSubscription;
  backend.make_bounded_stream = []() -> absl::StatusOr<std::unique_ptr<eventbus::EventStream>> {
    eventbus::memory::MemoryOptions options;
    options.max_stream_events = 200;
    return eventbus::memory::NewMemoryEventStream(clock, options);
  };
  return backend;
}

EVENTBUS_INSTANTIATE_CONFORMANCE(Memory, MemoryOnManualClock());

}  // namespace
