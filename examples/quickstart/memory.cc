// The in-process backend: no server, nothing to configure.
//   ./eventbus-quickstart-memory
#include "eventbus/memory/memory_event_stream.h"
#include "eventbus/session.h"
#include "roundtrip.h"

int main() {
  eventbus::StreamSession session(eventbus::memory::NewMemoryEventStream());
  return quickstart::Report(quickstart::RoundTrip(session));
}
