// An out-of-tree backend proves itself against the conformance suite. Replace the factory with
// your own EventStream; the memory backend (on the real clock) stands in for it here.
#include "eventbus/conformance/conformance.h"
#include "eventbus/memory/memory_event_stream.h"

EVENTBUS_INSTANTIATE_CONFORMANCE(MyBackend, eventbus::conformance::BackendUnderTest{
    .name = "my_backend",
    .make_stream = []() -> absl::StatusOr<std::unique_ptr<eventbus::EventStream>> {
      return eventbus::memory::NewMemoryEventStream();
    },
    .nack_delay = absl::Milliseconds(400), .reclaim_idle = absl::Milliseconds(100),
    // Optional failure hooks (crash, restart_server, cut_connection, make_bounded_stream):
    // cases needing one you do not give are skipped and name it.
    .crash = eventbus::conformance::AbandonSubscription});
