#pragma once
// Stream inspection: what operator tools (the `eventbus` CLI, the dashboard) read of a stream
// without joining any of its groups: its retained events, and per consumer group its members,
// pending deliveries, lag and the age of the oldest pending delivery. Optional: a backend that
// implements it returns it from EventStream::inspector() and declares
// Capabilities::inspection; the conformance suite covers it then.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "eventbus/event.h"

#pragma GCC visibility push(default)

namespace eventbus {

struct ConsumerGroupInfo {
  std::string name;
  // Members the backend knows of (Kafka: of the live group; Redis: every consumer name the
  // group has seen, even idle ones).
  std::vector<std::string> consumers;
  // Delivered and not yet settled (including delayed nacks the backend keeps for the group);
  // -1 when the backend cannot tell (Kafka keeps in-flight deliveries in the consumer).
  int64_t pending = 0;
  // Retained events the group has not been delivered yet; -1 when unknown.
  int64_t lag = 0;
  // The publish time of the oldest pending event; InfiniteFuture when nothing is pending or
  // the backend cannot tell.
  absl::Time oldest_pending_published_at = absl::InfiniteFuture();
};

struct StreamInfo {
  std::string name;
  int64_t length = 0;    // retained events
  std::string first_id;  // of the oldest retained event; empty when there is none
  std::string last_id;   // of the newest one
  std::vector<ConsumerGroupInfo> groups;
};

// A retained event as stored. An entry that is not a valid envelope (written by a foreign
// client) comes back with `malformed` set to the reason and `event` holding what could be read.
struct StoredEvent {
  std::string id;  // the backend's id (Delivery::id form)
  Event event;
  std::string malformed;
};

struct ReadPage {
  std::vector<StoredEvent> events;
  std::string next_cursor;  // where the next page starts (opaque; backend-specific)
};

// Thread-safe. Every call is a few round trips at most; none joins a group or changes what a
// group is delivered, except Delete.
class StreamInspector {
 public:
  virtual ~StreamInspector() = default;

  // The streams the backend holds (Redis: keys of type stream; Kafka: topics except internal
  // ones; NATS: subjects of eventbus streams; memory: every stream), sorted.
  virtual absl::StatusOr<std::vector<std::string>> ListStreams() = 0;

  // NotFound when the stream does not exist.
  virtual absl::StatusOr<StreamInfo> Describe(absl::string_view stream) = 0;

  // Up to `max_events` retained events from `cursor` on, oldest first (Kafka: in offset order
  // per partition, partitions interleaved). `cursor` is empty (from the oldest retained event),
  // or the next_cursor of an earlier page or EndCursor. An empty page means nothing newer is
  // retained yet: call again with its next_cursor to follow the stream. NotFound when the
  // stream does not exist.
  virtual absl::StatusOr<ReadPage> Read(absl::string_view stream, absl::string_view cursor,
                                        int max_events) = 0;

  // The cursor after the newest retained event: reading from it returns only later events.
  virtual absl::StatusOr<std::string> EndCursor(absl::string_view stream) = 0;

  // Removes the events with these ids (a DLQ purge or a redrive); returns how many were
  // removed. FailedPrecondition where the backend cannot remove those single events (Kafka
  // removes only whole prefixes of a partition).
  virtual absl::StatusOr<int64_t> Delete(absl::string_view stream,
                                         absl::Span<const std::string> ids) = 0;
};

}  // namespace eventbus

#pragma GCC visibility pop
