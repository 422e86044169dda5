#include "eventbus/taskstore/task_store.h"

namespace eventbus::taskstore {

absl::string_view TaskStateName(TaskState state) {
  switch (state) {
    case TaskState::kScheduled: return "scheduled";
    case TaskState::kQueued: return "queued";
    case TaskState::kRunning: return "running";
    case TaskState::kRetrying: return "retrying";
    case TaskState::kSucceeded: return "succeeded";
    case TaskState::kFailed: return "failed";
    case TaskState::kDeadLettered: return "dead_lettered";
    case TaskState::kCancelled: return "cancelled";
  }
  return "unknown";
}

std::optional<TaskState> ParseTaskState(absl::string_view name) {
  for (TaskState state : kAllTaskStates) {
    if (TaskStateName(state) == name) return state;
  }
  return std::nullopt;
}

bool IsFinal(TaskState state) {
  return state == TaskState::kSucceeded || state == TaskState::kFailed ||
         state == TaskState::kDeadLettered || state == TaskState::kCancelled;
}

}  // namespace eventbus::taskstore
