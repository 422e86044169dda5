#pragma once
// Out-of-order completion over Kafka's in-order offsets (as Confluent's Parallel Consumer
// does): many records of one partition are in flight at once and finish in any order, but the
// group can only commit "everything below N is done". The committable offset is therefore the
// lowest offset still in flight, or one past the highest offset seen when nothing is.

#include <cstdint>
#include <set>
#include <optional>

namespace eventbus::kafka {

// Not thread-safe; the subscription guards it with its own mutex.
class OffsetTracker {
 public:
  // Records that `offset` was received and is now in flight. Offsets arrive increasing per
  // partition but may skip values (compaction, transaction markers): gaps are never waited for.
  // Re-tracking an offset already known (a redelivery after a seek) is ignored: false.
  bool Track(int64_t offset);

  // Marks a tracked offset done. Returns false when it was not in flight (unknown or done).
  bool MarkDone(int64_t offset);

  // The offset to commit (the next one to read after a restart), or nullopt before anything
  // was tracked.
  std::optional<int64_t> Committable() const;

  // Whether `offset` is tracked and not yet done.
  bool InFlight(int64_t offset) const;

  size_t in_flight() const { return pending_.size(); }

 private:
  // Offsets tracked and not done; the lowest one is the commit point.
  std::set<int64_t> pending_;
  int64_t highest_seen_ = -1;
};

}  // namespace eventbus::kafka
