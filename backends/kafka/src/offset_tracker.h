#pragma once
// Out-of-order completion over Kafka's in-order offsets (as Confluent's Parallel Consumer
// does): many records of one partition are in flight at once and finish in any order, but the
// group can only commit "everything below N is done". The committable offset is therefore the
// lowest offset still in flight, or one past the highest offset seen when nothing is.

#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <optional>
#include <string>

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

// The delivery counts of a partition's delivered-but-uncommitted offsets travel in the
// metadata of its offset commit (as Parallel Consumer keeps its per-partition state there), so
// a consumer that crashed or timed out without handing its deliveries back still leaves their
// counts to the next owner: "eventbus-dc1:" then "<offset>=<count>" entries joined by ',',
// count = deliveries so far (docs/wire-format.md, Kafka). offset.metadata.max.bytes is 4096 by
// default: kMaxCommitMetadataBytes keeps under it, dropping the entries with the lowest counts
// first (a crash-looping poison record is the one with the highest).
inline constexpr size_t kMaxCommitMetadataBytes = 3900;
inline constexpr const char kDeliveryCountsPrefix[] = "eventbus-dc1:";

// Empty when `counts` is empty (nothing to carry). Entries below `committed` are left out.
std::string EncodeDeliveryCounts(const std::map<int64_t, int>& counts, int64_t committed,
                                 size_t max_bytes = kMaxCommitMetadataBytes);
// The counts of offsets >= `committed` in `metadata`; empty for metadata not ours (another
// client's commit) or malformed entries (skipped one by one: nothing from the wire may crash).
std::map<int64_t, int> DecodeDeliveryCounts(const std::string& metadata, int64_t committed);

}  // namespace eventbus::kafka
