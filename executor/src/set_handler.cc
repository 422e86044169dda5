#include "eventbus/executor/set_handler.h"

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

absl::StatusOr<json> Run(JqExpressionCache& cache, absl::string_view where,
                         const std::string& program, const json& data) {
  auto compiled = cache.Get(program);
  if (!compiled.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("set: ", where, ": ", compiled.status().message()));
  }
  auto value = compiled->Evaluate(data);
  if (!value.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("set: ", where, ": ", value.status().message()));
  }
  return *std::move(value);
}

class SetHandler final : public TaskHandler {
 public:
  std::string type() const override { return "set"; }

  absl::Status Supports(const TaskRequest& request) const override {
    const json& input = request.Input();
    if (absl::Status s = CheckInput(input); !s.ok()) return s;
    // A program that does not compile makes the request invalid, not merely failed.
    if (input.contains("expression")) {
      auto compiled = cache_.Get(input.at("expression").get<std::string>());
      if (!compiled.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("set: input.expression: ", compiled.status().message()));
      }
    } else {
      for (const auto& [field, program] : input.at("assign").items()) {
        auto compiled = cache_.Get(program.get<std::string>());
        if (!compiled.ok()) {
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
    const json data = input.contains("data") ? input.at("data") : json::object();
    if (input.contains("expression")) {
      auto value =
          Run(cache_, "input.expression", input.at("expression").get<std::string>(), data);
      if (!value.ok()) return TaskOutcome::Permanent(std::string(value.status().message()));
      return TaskOutcome::Succeeded(*std::move(value));
    }
    json output = json::object();
    for (const auto& [field, program] : input.at("assign").items()) {
      auto value =
          Run(cache_, absl::StrCat("input.assign.", field), program.get<std::string>(), data);
      if (!value.ok()) return TaskOutcome::Permanent(std::string(value.status().message()));
      output[field] = *std::move(value);
    }
    return TaskOutcome::Succeeded(std::move(output));
  }

 private:
  // jq 1.6 compiles all its builtins with every program (tens of milliseconds), and each task is
  // checked (Supports) before it runs: compile each distinct program once.
  mutable JqExpressionCache cache_;
};

}  // namespace

std::unique_ptr<TaskHandler> NewSetHandler() { return std::make_unique<SetHandler>(); }

}  // namespace eventbus::executor
