#include "eventbus/taskstore/internal/checks.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace eventbus::taskstore::internal {

absl::Status ValidateNewTask(const TaskRecord& record) {
  if (record.id.empty()) return absl::InvalidArgumentError("task id: must not be empty");
  if (record.id.size() > kMaxTaskIdBytes) {
    return absl::InvalidArgumentError(absl::StrCat("task id: ", record.id.size(),
                                                   " bytes, at most ", kMaxTaskIdBytes));
  }
  if (record.type.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("task ", record.id, ": type must not be empty"));
  }
  return absl::OkStatus();
}

absl::Status ValidateNewSchedule(const Schedule& schedule) {
  if (schedule.id.empty()) return absl::InvalidArgumentError("schedule id: must not be empty");
  if (schedule.id.size() > kMaxTaskIdBytes) {
    return absl::InvalidArgumentError(absl::StrCat("schedule id: ", schedule.id.size(),
                                                   " bytes, at most ", kMaxTaskIdBytes));
  }
  return absl::OkStatus();
}

absl::Status ValidateInstance(const InstanceRecord& record, absl::Duration ttl) {
  if (record.name.empty()) return absl::InvalidArgumentError("instance name: must not be empty");
  if (record.name.size() > kMaxTaskIdBytes) {
    return absl::InvalidArgumentError(absl::StrCat("instance name: ", record.name.size(),
                                                   " bytes, at most ", kMaxTaskIdBytes));
  }
  if (ttl <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("instance ", record.name, ": ttl ", absl::FormatDuration(ttl),
                     ", must be positive"));
  }
  return absl::OkStatus();
}

absl::Status ValidateListLimit(int limit) {
  if (limit < 1 || limit > kMaxListLimit) {
    return absl::InvalidArgumentError(
        absl::StrCat("list limit: ", limit, ", must be 1..", kMaxListLimit));
  }
  return absl::OkStatus();
}

absl::Status ValidatePositiveLimit(int limit, absl::string_view what) {
  if (limit < 1) return absl::InvalidArgumentError(absl::StrCat(what, " limit: ", limit, ", must be >= 1"));
  return absl::OkStatus();
}

std::string AppendHistory(absl::string_view history, absl::string_view entry) {
  absl::string_view trimmed = absl::StripAsciiWhitespace(history);
  if (trimmed.empty() || trimmed == "[]" || trimmed.back() != ']') {
    return absl::StrCat("[", entry, "]");
  }
  trimmed.remove_suffix(1);
  trimmed = absl::StripTrailingAsciiWhitespace(trimmed);
  if (trimmed == "[") return absl::StrCat("[", entry, "]");
  return absl::StrCat(trimmed, ",", entry, "]");
}

std::string ConditionFailedMessage(absl::string_view id, const TaskRecord& stored,
                                   const TaskUpdate& update) {
  std::string expected;
  if (!update.from.empty()) {
    expected = absl::StrCat(" (wanted one of ",
                            absl::StrJoin(update.from, ",",
                                          [](std::string* out, TaskState s) {
                                            absl::StrAppend(out, TaskStateName(s));
                                          }),
                            ")");
  }
  if (update.expected_version != 0) {
    absl::StrAppend(&expected, " (wanted version ", update.expected_version, ")");
  }
  return absl::StrCat("task ", id, ": state ", TaskStateName(stored.state), ", version ",
                      stored.version, expected);
}

}  // namespace eventbus::taskstore::internal
