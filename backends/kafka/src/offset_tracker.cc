#include "offset_tracker.h"

namespace eventbus::kafka {

bool OffsetTracker::Track(int64_t offset) {
  if (offset <= highest_seen_) return false;
  highest_seen_ = offset;
  pending_.insert(offset);
  return true;
}

bool OffsetTracker::MarkDone(int64_t offset) {
  auto it = pending_.find(offset);
  if (it == pending_.end()) return false;
  pending_.erase(it);
  return true;
}

std::optional<int64_t> OffsetTracker::Committable() const {
  if (highest_seen_ < 0) return std::nullopt;
  if (pending_.empty()) return highest_seen_ + 1;
  return *pending_.begin();
}

bool OffsetTracker::InFlight(int64_t offset) const { return pending_.contains(offset); }

}  // namespace eventbus::kafka
