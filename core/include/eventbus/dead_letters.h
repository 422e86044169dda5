#pragma once
// Working with dead letters after the fact (the `eventbus dlq` commands and the dashboard):
// selecting them, and putting one back on the stream it came from.

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "eventbus/event.h"
#include "eventbus/event_stream.h"
#include "eventbus/stream_inspector.h"

#pragma GCC visibility push(default)

namespace eventbus {

// Headers a redriven event carries: how often it was redriven, and the dead-letter records of
// its earlier trips (a JSON array of {reason, stream, id, group, delivery_count, redriven_at}).
inline constexpr absl::string_view kRedrivesHeader = "dlqredrives";
inline constexpr absl::string_view kRedriveHistoryHeader = "dlqhistory";

// Which retained events a dead-letter command acts on. Empty fields select everything.
struct DeadLetterFilter {
  std::string reason;  // a substring of the dlqreason header, any case
  std::string type;    // the CloudEvents type, exactly
  absl::Time since = absl::InfinitePast();   // publish time (the event's `time`), inclusive
  absl::Time until = absl::InfiniteFuture();
  std::vector<std::string> ids;  // stream ids or event ids
  int64_t limit = 0;             // at most this many (0: all)

  bool Matches(const StoredEvent& stored) const;
};

// RFC 3339, or a duration meaning that long before `now` ("90m", "2h"); InvalidArgument
// naming `what` otherwise.
absl::StatusOr<absl::Time> ParseFilterTime(absl::string_view what, absl::string_view text,
                                           absl::Time now);

struct Redrive {
  std::string stream;  // the origin stream (dlqoriginstream)
  Event event;         // the original event, with its id, for a fresh delivery
};

// The event that puts `dead_letter` back on its origin stream: the dead letter without its
// dlq* headers (so it is a fresh delivery with a fresh attempt count), the trip appended to
// kRedriveHistoryHeader and kRedrivesHeader raised. FailedPrecondition with the reason when it
// must not be redriven: it has no origin, or it was redriven `max_redrives` times already
// (it keeps coming back: a loop).
absl::StatusOr<Redrive> PrepareRedrive(const Event& dead_letter, int max_redrives, absl::Time now);

// Calls `f` for every retained event of `stream` that `filter` matches, oldest first, until `f`
// returns false or filter.limit is reached. NotFound when the stream does not exist.
absl::Status ForEachDeadLetter(StreamInspector& inspector, absl::string_view stream,
                               const DeadLetterFilter& filter,
                               const std::function<bool(const StoredEvent&)>& f);

struct RedriveOptions {
  int max_redrives = 3;
  bool dry_run = false;   // select and check, publish and delete nothing
  double rate = 0;        // events per second at most; 0 = no limit
  Clock* clock = nullptr;  // paces `rate` (with `sleep`); null = the stream's clock
  std::function<void(absl::Duration)> sleep;  // null = absl::SleepFor
  // After each event: how many were handled so far of how many selected.
  std::function<void(int64_t done, int64_t total)> on_progress;
};

struct RedriveReport {
  struct Refusal {
    std::string stream_id;
    std::string event_id;
    std::string reason;
  };
  std::vector<std::string> redriven;  // stream ids (on dry_run: would be redriven)
  std::vector<Refusal> refused;
  int64_t failed = 0;
  std::string first_error;  // of the first failed publish
  // Why the redriven dead letters could not be removed from the DLQ (Kafka removes only
  // prefixes); empty when they were.
  std::string kept_because;
};

// Selects the dead letters of `dead_letter_stream` that `filter` matches and puts each back on
// its origin stream (PrepareRedrive), waiting for every publish, then removes the redriven
// ones from the dead-letter stream. Errors: the stream has no inspector, or reading fails.
absl::StatusOr<RedriveReport> RedriveDeadLetters(EventStream& stream,
                                                 absl::string_view dead_letter_stream,
                                                 const DeadLetterFilter& filter,
                                                 const RedriveOptions& options);

}  // namespace eventbus

#pragma GCC visibility pop
