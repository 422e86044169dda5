#include "offset_tracker.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

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

std::string EncodeDeliveryCounts(const std::map<int64_t, int>& counts, int64_t committed,
                                 size_t max_bytes) {
  std::vector<std::pair<int64_t, int>> entries;
  for (const auto& [offset, count] : counts) {
    if (offset >= committed && count > 0) entries.emplace_back(offset, count);
  }
  if (entries.empty()) return "";
  size_t bytes = sizeof(kDeliveryCountsPrefix) - 1;
  for (const auto& [offset, count] : entries) bytes += absl::StrCat(offset, "=", count, ",").size();
  if (bytes > max_bytes) {
    // Keep the highest counts (then the lowest offsets) that fit.
    std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
      return a.second != b.second ? a.second > b.second : a.first < b.first;
    });
    std::vector<std::pair<int64_t, int>> kept;
    bytes = sizeof(kDeliveryCountsPrefix) - 1;
    for (const auto& entry : entries) {
      const size_t size = absl::StrCat(entry.first, "=", entry.second, ",").size();
      if (bytes + size > max_bytes) continue;
      bytes += size;
      kept.push_back(entry);
    }
    std::sort(kept.begin(), kept.end());
    entries = std::move(kept);
  }
  std::string out = kDeliveryCountsPrefix;
  for (size_t i = 0; i < entries.size(); ++i) {
    absl::StrAppend(&out, i == 0 ? "" : ",", entries[i].first, "=", entries[i].second);
  }
  return out;
}

std::map<int64_t, int> DecodeDeliveryCounts(const std::string& metadata, int64_t committed) {
  std::map<int64_t, int> counts;
  absl::string_view text = metadata;
  if (!absl::ConsumePrefix(&text, kDeliveryCountsPrefix)) return counts;
  for (absl::string_view entry : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    const std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(entry, '=');
    int64_t offset = 0;
    int count = 0;
    if (!absl::SimpleAtoi(kv.first, &offset) || !absl::SimpleAtoi(kv.second, &count) ||
        offset < committed || count <= 0) {
      continue;
    }
    counts[offset] = count;
  }
  return counts;
}

}  // namespace eventbus::kafka
