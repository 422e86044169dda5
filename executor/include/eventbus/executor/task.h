#pragma once
// The task request model: what a producer puts in the data of an event on the request stream
// (JSON, documented in docs/tasks.md), and the result event the executor publishes.

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "eventbus/event.h"
#include "eventbus/executor/retry_policy.h"

#pragma GCC visibility push(default)

namespace eventbus::executor {

inline constexpr absl::string_view kDefaultRequestStream = "io.flunq.task.requested";
inline constexpr absl::string_view kDefaultResultStream = "io.flunq.task.completed";
inline constexpr absl::string_view kDefaultProgressStream = "io.flunq.task.progress";
// CloudEvents `type` of request and result events.
inline constexpr absl::string_view kTaskRequestedType = "io.flunq.task.requested";
inline constexpr absl::string_view kTaskCompletedType = "io.flunq.task.completed";
inline constexpr absl::string_view kTaskProgressType = "io.flunq.task.progress";
// A progress report (TaskContext::ReportProgress) serialized to more bytes than this is refused.
inline constexpr size_t kMaxProgressBytes = 4096;

// Per-task overrides of the type's retry policy; unset fields keep the type's value.
struct RetryOverride {
  std::optional<int> max_attempts;
  std::optional<absl::Duration> initial_backoff;
  std::optional<absl::Duration> max_backoff;
  std::optional<double> multiplier;
  std::optional<double> jitter;

  RetryPolicy ApplyTo(RetryPolicy policy) const;
};

// One tier a task left before the one running it (escalation, docs/tasks.md "Escalation
// tiers"): the request stream it ran on, its attempts there and how the last one failed.
struct TierHistory {
  std::string stream;
  int attempts = 0;
  std::string error_kind;  // "transient" or "timeout"
  std::string error;
  std::string consumer;  // the executor that escalated it
  absl::Time escalated_at = absl::InfinitePast();
};
// A request carries at most this many tiers: more means EXECUTOR_ESCALATE_TO settings that
// form a cycle through more streams than the executor can see from one hop.
inline constexpr int kMaxEscalations = 16;

struct TaskRequest {
  std::string id;    // required, non-empty, at most 200 bytes
  std::string type;  // required: selects the handler
  // The handler's input: a JSON object (an absent "input" is an empty object). Never null after
  // parsing.
  std::shared_ptr<const nlohmann::json> input;
  std::optional<absl::Duration> timeout;  // overrides the type's processing timeout
  RetryOverride retry;
  // Free-form string labels echoed into the result (correlation ids, ...).
  std::map<std::string, std::string> metadata;
  // Unique tasks (needs a task store): while a task with this key is not final, or within
  // unique_for of its submission (whichever is later), another submission with the key is
  // refused (409). Same rules as an id; unique_for needs unique_key.
  std::string unique_key;
  std::optional<absl::Duration> unique_for;
  // Run later (needs a task store): at `run_at` (RFC 3339), or `run_after` from submission
  // (ISO 8601 duration, >= 0); at most one of them. The API consumes them: the task is stored
  // `scheduled` and the scheduler publishes it when due, so TaskRequestToJson leaves them out
  // (an executor that receives the request runs it).
  std::optional<absl::Time> run_at;
  std::optional<absl::Duration> run_after;
  // "escalations": the tiers this task was escalated from, oldest first. Written by the
  // executor that escalates it (EXECUTOR_ESCALATE_TO); a producer leaves it out.
  std::vector<TierHistory> escalations;

  const nlohmann::json& Input() const;
};

// JSON documents deeper than this are refused: serializing them recurses once per level, and
// the text comes from the wire.
inline constexpr int kMaxJsonDepth = 64;

// Parses JSON text from outside (requests, HTTP bodies): InvalidArgument when it is not JSON or
// nests deeper than kMaxJsonDepth.
absl::StatusOr<nlohmann::json> ParseUntrustedJson(absl::string_view text);

// Parses the request from an event's data. InvalidArgument with a reason a human can act on
// ("not JSON: ...", "missing required field \"type\"", "\"timeout\": ...").
absl::StatusOr<TaskRequest> ParseTaskRequest(absl::string_view json_text);
absl::StatusOr<TaskRequest> TaskRequestFromJson(const nlohmann::json& document);

// For a request ParseTaskRequest rejected: its "id" and "type" (and "metadata") when the text is
// a JSON object with a usable string id, so the failure can still be reported under that id.
std::optional<TaskRequest> SalvageTaskIdentity(absl::string_view json_text);

// The JSON text ParseTaskRequest accepts back (without run_at and run_after: see above).
std::string TaskRequestToJson(const TaskRequest& request);

// The request event for `request` (type kTaskRequestedType, key = task id, JSON data).
Event MakeTaskRequestEvent(const TaskRequest& request, absl::string_view source);

enum class TaskStatus { kSucceeded, kFailed };
absl::string_view TaskStatusName(TaskStatus status);

// What the executor publishes on the result stream (as JSON in the event's data).
struct TaskResult {
  std::string task_id;
  std::string type;
  TaskStatus status = TaskStatus::kSucceeded;
  // The handler's output (null when it produced none).
  std::shared_ptr<const nlohmann::json> output;
  // The attempt that produced this result (1 + failed attempts before it), and the
  // deliveries of the request so far (delayed redeliveries and give-backs included).
  int attempts = 0;
  int deliveries = 0;
  absl::Duration duration;  // of the last attempt
  // Empty on success; on failure "permanent", "transient", "timeout" or "invalid".
  std::string error_kind;
  std::string error;
  std::string request_event_id;
  absl::Time completed_at;
  std::map<std::string, std::string> metadata;
};

std::string TaskResultToJson(const TaskResult& result);
absl::StatusOr<TaskResult> ParseTaskResult(absl::string_view json_text);
Event MakeTaskResultEvent(const TaskResult& result, absl::string_view source);

}  // namespace eventbus::executor

#pragma GCC visibility pop
