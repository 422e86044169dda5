#include "eventbus/executor/builtin_handlers.h"

#include <algorithm>
#include <cmath>
#include <string>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "eventbus/executor/iso_duration.h"
#include "eventbus/status_macros.h"

#ifdef EVENTBUS_EXECUTOR_HAS_COMPONENTS
#include "eventbus/executor/call_handler.h"
#include "eventbus/executor/set_handler.h"
#endif

namespace eventbus::executor {
namespace {

using nlohmann::json;

absl::StatusOr<absl::Duration> WaitDuration(const TaskRequest& request) {
  const json& input = request.Input();
  auto it = input.find("duration");
  if (it == input.end()) {
    return absl::InvalidArgumentError("wait: input.duration is required (e.g. \"PT2S\")");
  }
  if (!it->is_string()) {
    return absl::InvalidArgumentError("wait: input.duration must be an ISO 8601 duration string");
  }
  auto duration = ParseIsoDuration(it->get<std::string>());
  if (!duration.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("wait: input.duration: ", duration.status().message()));
  }
  return *duration;
}

class WaitHandler final : public TaskHandler {
 public:
  std::string type() const override { return "wait"; }

  absl::Status Supports(const TaskRequest& request) const override {
    return WaitDuration(request).status();
  }

  TaskOutcome Handle(TaskContext& context) override {
    auto duration = WaitDuration(context.request());
    if (!duration.ok()) return TaskOutcome::Permanent(std::string(duration.status().message()));
    // Measured from the request, not from this delivery: redeliveries (and a reclaim after a
    // crash) keep the original due time instead of starting the wait over.
    const absl::Time due = context.requested_at() + *duration;
    const absl::Time now = context.clock()->Now();
    // The share of the wait that has passed, at each run (the first and the one when due).
    // Dropped once the run is over for the executor: progress is informative only.
    const double elapsed = *duration > absl::ZeroDuration()
                               ? absl::FDivDuration(now - context.requested_at(), *duration)
                               : 1.0;
    context.ReportProgress(std::lround(std::clamp(elapsed, 0.0, 1.0) * 100)).IgnoreError();
    if (now < due) return TaskOutcome::RedeliverAfter(due - now);
    return TaskOutcome::Succeeded({{"duration", FormatIsoDuration(*duration)},
                                   {"requested_at", FormatTimeAttribute(context.requested_at())},
                                   {"completed_at", FormatTimeAttribute(now)}});
  }
};

absl::Status CheckInjectInput(const TaskRequest& request) {
  const json& input = request.Input();
  auto data = input.find("data");
  if (data == input.end() || !data->is_object()) {
    return absl::InvalidArgumentError("inject: input.data is required and must be a JSON object");
  }
  auto into = input.find("into");
  if (into != input.end() && !into->is_object()) {
    return absl::InvalidArgumentError("inject: input.into must be a JSON object when given");
  }
  for (const auto& [key, value] : input.items()) {
    if (key != "data" && key != "into") {
      return absl::InvalidArgumentError(
          absl::StrCat("inject: unknown input field \"", key, "\"; valid: data, into"));
    }
  }
  return absl::OkStatus();
}

class InjectHandler final : public TaskHandler {
 public:
  std::string type() const override { return "inject"; }

  absl::Status Supports(const TaskRequest& request) const override {
    return CheckInjectInput(request);
  }

  TaskOutcome Handle(TaskContext& context) override {
    if (absl::Status status = CheckInjectInput(context.request()); !status.ok()) {
      return TaskOutcome::Permanent(std::string(status.message()));
    }
    const json& input = context.input();
    json output = input.contains("into") ? input.at("into") : json::object();
    output.merge_patch(input.at("data"));
    return TaskOutcome::Succeeded(std::move(output));
  }
};

}  // namespace

std::unique_ptr<TaskHandler> NewWaitHandler() { return std::make_unique<WaitHandler>(); }
std::unique_ptr<TaskHandler> NewInjectHandler() { return std::make_unique<InjectHandler>(); }

bool HasCallAndSetHandlers() {
#ifdef EVENTBUS_EXECUTOR_HAS_COMPONENTS
  return true;
#else
  return false;
#endif
}

absl::Status RegisterBuiltinHandlers(HandlerRegistry& registry,
                                     const BuiltinHandlerOptions& options) {
  EVENTBUS_RETURN_IF_ERROR(registry.Register(NewWaitHandler()));
  EVENTBUS_RETURN_IF_ERROR(registry.Register(NewInjectHandler()));
#ifdef EVENTBUS_EXECUTOR_HAS_COMPONENTS
  CallHandlerOptions call_options;
  call_options.clock = options.clock;
  call_options.http.ca_file = options.ca_file;
  call_options.http.destinations.allow = options.call_allow;
  call_options.http.destinations.deny = options.call_deny;
  call_options.http.destinations.deny_private = options.call_deny_private;
  if (options.on_circuit_change) {
    call_options.on_circuit_change = [cb = options.on_circuit_change](
                                         absl::string_view host, CircuitState from,
                                         CircuitState to) {
      cb(host, CircuitStateName(from), CircuitStateName(to));
    };
  }
  EVENTBUS_ASSIGN_OR_RETURN(auto call, NewCallHandler(std::move(call_options)));
  EVENTBUS_RETURN_IF_ERROR(registry.Register(std::move(call)));
  SetHandlerOptions set_options;
  if (options.jq_workers > 0) set_options.jq.workers = options.jq_workers;
  set_options.jq.worker_path = options.jq_worker_path;
  set_options.jq.memory_limit_bytes = options.jq_memory_limit_bytes;
  EVENTBUS_ASSIGN_OR_RETURN(auto set, NewSetHandler(set_options));
  EVENTBUS_RETURN_IF_ERROR(registry.Register(std::move(set)));
#endif
  return absl::OkStatus();
}

}  // namespace eventbus::executor
