#pragma once
// Checks and small text rules every store applies the same way (one fact in one place).
// For store implementations only; not part of the contract.

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "eventbus/taskstore/task_store.h"

namespace eventbus::taskstore::internal {

inline constexpr size_t kMaxTaskIdBytes = 200;
inline constexpr int kMaxListLimit = 1000;

// InvalidArgument naming the field: empty or over-long id, empty type.
absl::Status ValidateNewTask(const TaskRecord& record);
// InvalidArgument: empty id.
absl::Status ValidateNewSchedule(const Schedule& schedule);
// InvalidArgument: empty or over-long name, ttl <= 0.
absl::Status ValidateInstance(const InstanceRecord& record, absl::Duration ttl);
// InvalidArgument naming `limit` when it is outside 1..kMaxListLimit.
absl::Status ValidateListLimit(int limit);
// InvalidArgument naming `what` when `limit` < 1.
absl::Status ValidatePositiveLimit(int limit, absl::string_view what);

// `history` (a JSON array, or empty = none yet) with `entry` (a JSON object) appended, by text:
// "" + {..} -> "[{..}]"; "[{a}]" + {b} -> "[{a},{b}]".
std::string AppendHistory(absl::string_view history, absl::string_view entry);

// The message of a FailedPrecondition for a condition that did not hold.
std::string ConditionFailedMessage(absl::string_view id, const TaskRecord& stored,
                                   const TaskUpdate& update);

}  // namespace eventbus::taskstore::internal
