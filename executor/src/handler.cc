#include "eventbus/executor/handler.h"

#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

namespace eventbus::executor {

absl::Status TaskContext::ReportProgress(const nlohmann::json& progress) {
  if (progress.is_number()) {
    const double value = progress.get<double>();
    // NaN fails both comparisons.
    if (!(value >= 0 && value <= 100)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "progress: a number must be a percentage from 0 to 100, got ", progress.dump()));
    }
  } else if (!progress.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "progress must be a number from 0 to 100 or a JSON object, got ", progress.type_name()));
  }
  std::string text = progress.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (text.size() > kMaxProgressBytes) {
    return absl::InvalidArgumentError(absl::StrCat("progress is ", text.size(),
                                                   " bytes serialized; at most ",
                                                   kMaxProgressBytes, " are allowed"));
  }
  if (!progress_sink_) return absl::OkStatus();
  return progress_sink_(std::move(text));
}

TaskOutcome TaskOutcome::Succeeded(nlohmann::json output) {
  TaskOutcome outcome(Kind::kSucceeded, "");
  outcome.output_ = std::make_shared<const nlohmann::json>(std::move(output));
  return outcome;
}

TaskOutcome TaskOutcome::Transient(std::string error) {
  return TaskOutcome(Kind::kTransientFailure, std::move(error));
}

TaskOutcome TaskOutcome::Transient(std::string error, nlohmann::json output) {
  TaskOutcome outcome(Kind::kTransientFailure, std::move(error));
  outcome.output_ = std::make_shared<const nlohmann::json>(std::move(output));
  return outcome;
}

TaskOutcome TaskOutcome::Permanent(std::string error) {
  return TaskOutcome(Kind::kPermanentFailure, std::move(error));
}

TaskOutcome TaskOutcome::Permanent(std::string error, nlohmann::json output) {
  TaskOutcome outcome(Kind::kPermanentFailure, std::move(error));
  outcome.output_ = std::make_shared<const nlohmann::json>(std::move(output));
  return outcome;
}

TaskOutcome TaskOutcome::RedeliverAfter(absl::Duration delay) {
  TaskOutcome outcome(Kind::kRedeliverAfter, "");
  outcome.delay_ = delay < absl::ZeroDuration() ? absl::ZeroDuration() : delay;
  return outcome;
}

TaskOutcome TaskOutcome::FromStatus(const absl::Status& status) {
  if (status.ok()) return Succeeded(nullptr);
  std::string error(status.ToString());
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kInternal:
      return Transient(std::move(error));
    default:
      return Permanent(std::move(error));
  }
}

absl::Status HandlerRegistry::Register(std::unique_ptr<TaskHandler> handler) {
  if (handler == nullptr) return absl::InvalidArgumentError("handler is null");
  std::string type = handler->type();
  if (type.empty()) return absl::InvalidArgumentError("handler type is empty");
  if (handlers_.contains(type)) {
    return absl::AlreadyExistsError(absl::StrCat("a handler for task type \"", type,
                                                 "\" is already registered"));
  }
  handlers_.emplace(std::move(type), std::move(handler));
  return absl::OkStatus();
}

TaskHandler* HandlerRegistry::Find(absl::string_view type) const {
  auto it = handlers_.find(type);
  return it == handlers_.end() ? nullptr : it->second.get();
}

std::vector<std::string> HandlerRegistry::Types() const {
  std::vector<std::string> types;
  types.reserve(handlers_.size());
  for (const auto& [type, handler] : handlers_) types.push_back(type);
  return types;
}

}  // namespace eventbus::executor
