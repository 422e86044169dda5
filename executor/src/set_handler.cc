#include "eventbus/executor/set_handler.h"

#include <algorithm>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "eventbus/executor/jq_expression.h"

namespace eventbus::executor {
namespace {

using nlohmann::json;

absl::Status CheckInput(const json& input) {
  for (const auto& [key, value] : input.items()) {
    if (key != "data" && key != "expression" && key != "assign") {
      return absl::InvalidArgumentError(absl::StrCat(
          "set: unknown input field \"", key, "\"; valid: data, expression, assign"));
    }
  }
  const bool has_expression = input.contains("expression");
  const bool has_assign = input.contains("assign");
  if (has_expression == has_assign) {
    return absl::InvalidArgumentError(
        "set: exactly one of input.expression (a jq program) or input.assign (an object of jq "
        "programs) is required");
  }
  if (has_expression && !input.at("expression").is_string()) {
    return absl::InvalidArgumentError("set: input.expression must be a string");
  }
  if (has_assign) {
    const json& assign = input.at("assign");
    if (!assign.is_object() || assign.empty()) {
      return absl::InvalidArgumentError("set: input.assign must be a non-empty object");
    }
    for (const auto& [field, program] : assign.items()) {
      if (!program.is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat("set: input.assign.", field, " must be a jq program (a string)"));
      }
    }
  }
  return absl::OkStatus();
}

// InvalidArgument (a bad program or input) and ResourceExhausted (a limit the same program
// would hit again) are permanent; a timeout or a worker failure is transient.
TaskOutcome FailureOutcome(absl::string_view where, const absl::Status& status) {
  std::string error = absl::StrCat("set: ", where, ": ", status.message());
  if (absl::IsInvalidArgument(status) || absl::IsResourceExhausted(status)) {
    return TaskOutcome::Permanent(std::move(error));
  }
  return TaskOutcome::FromStatus(absl::Status(status.code(), error));
}

class SetHandler final : public TaskHandler {
 public:
  explicit SetHandler(absl::StatusOr<std::shared_ptr<JqWorkerPool>> pool)
      : pool_(std::move(pool)) {}

  std::string type() const override { return "set"; }

  absl::Status Supports(const TaskRequest& request) const override {
    const json& input = request.Input();
    if (absl::Status s = CheckInput(input); !s.ok()) return s;
    if (!pool_.ok()) return absl::OkStatus();  // Handle reports it, as a transient failure
    // A program that does not compile makes the request invalid, not merely failed. Any other
    // failure (a worker that could not start in time) is left to Handle, which retries.
    if (input.contains("expression")) {
      auto compiled = cache_.Get(input.at("expression").get<std::string>(), Options());
      if (absl::IsInvalidArgument(compiled.status())) {
        return absl::InvalidArgumentError(
            absl::StrCat("set: input.expression: ", compiled.status().message()));
      }
    } else {
      for (const auto& [field, program] : input.at("assign").items()) {
        auto compiled = cache_.Get(program.get<std::string>(), Options());
        if (absl::IsInvalidArgument(compiled.status())) {
          return absl::InvalidArgumentError(
              absl::StrCat("set: input.assign.", field, ": ", compiled.status().message()));
        }
      }
    }
    return absl::OkStatus();
  }

  TaskOutcome Handle(TaskContext& context) override {
    const json& input = context.input();
    if (absl::Status s = CheckInput(input); !s.ok()) {
      return TaskOutcome::Permanent(std::string(s.message()));
    }
    if (!pool_.ok()) {
      return TaskOutcome::Transient(absl::StrCat("set: ", pool_.status().message()));
    }
    const json data = input.contains("data") ? input.at("data") : json::object();
    if (input.contains("expression")) {
      auto value = Run(context, input.at("expression").get<std::string>(), data);
      if (!value.ok()) return FailureOutcome("input.expression", value.status());
      return TaskOutcome::Succeeded(*std::move(value));
    }
    json output = json::object();
    for (const auto& [field, program] : input.at("assign").items()) {
      auto value = Run(context, program.get<std::string>(), data);
      if (!value.ok()) return FailureOutcome(absl::StrCat("input.assign.", field), value.status());
      output[field] = *std::move(value);
    }
    return TaskOutcome::Succeeded(std::move(output));
  }

 private:
  JqOptions Options() const {
    JqOptions options;
    options.pool = *pool_;
    return options;
  }

  // The whole run (compile included) ends by the task's deadline, or once the executor gives
  // up on it: then the worker is killed, so the slot really frees.
  absl::StatusOr<json> Run(TaskContext& context, const std::string& program,
                           const json& data) const {
    JqDeadline deadline;
    deadline.timeout = std::max(absl::ZeroDuration(), context.Remaining());
    deadline.cancelled = [&context] { return context.cancelled(); };
    JqOptions options = Options();
    options.compile_timeout = std::min(options.compile_timeout, deadline.timeout);
    auto compiled = cache_.Get(program, options);
    if (!compiled.ok()) return compiled.status();
    return compiled->Evaluate(data, json(), deadline);
  }

  const absl::StatusOr<std::shared_ptr<JqWorkerPool>> pool_;
  // jq 1.6 compiles all its builtins with every program (tens of milliseconds), and each task is
  // checked (Supports) before it runs: compile each distinct program once.
  mutable JqExpressionCache cache_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<TaskHandler>> NewSetHandler(const SetHandlerOptions& options) {
  auto pool = JqWorkerPool::Create(options.jq);
  if (!pool.ok()) return pool.status();
  return std::make_unique<SetHandler>(std::move(pool));
}

std::unique_ptr<TaskHandler> NewSetHandler() {
  return std::make_unique<SetHandler>(JqWorkerPool::Default());
}

}  // namespace eventbus::executor
