#include "eventbus/executor/jq_expression.h"

#include <algorithm>
#include <climits>
#include <mutex>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "eventbus/status_macros.h"

namespace eventbus::executor {
namespace {

// jq 1.6's keywords: `$label` and friends do not parse as variables.
bool IsJqKeyword(absl::string_view name) {
  for (absl::string_view keyword :
       {"as", "def", "module", "import", "include", "if", "then", "elif", "else", "end", "and",
        "or", "not", "reduce", "foreach", "try", "catch", "label", "__loc__"}) {
    if (name == keyword) return true;
  }
  return false;
}

bool IsJqIdentifier(absl::string_view name) {
  if (name.empty()) return false;
  if (!absl::ascii_isalpha(static_cast<unsigned char>(name[0])) && name[0] != '_') return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
  }
  return true;
}

}  // namespace

class JqExpression::Impl {
 public:
  Impl(std::string program, std::string wrapped, JqOptions options)
      : program_(std::move(program)), wrapped_(std::move(wrapped)), options_(std::move(options)) {
    max_outputs_ = absl::StrCat(options_.max_outputs);
    max_output_bytes_ = absl::StrCat(options_.pool->options().max_output_bytes);
  }

  const std::string& program() const { return program_; }

  // Outputs as compact JSON text; stops after the first when `first_only`.
  absl::StatusOr<std::vector<std::string>> Run(absl::string_view input_json,
                                               absl::string_view variables_json, bool first_only,
                                               const JqDeadline& deadline) const {
    // The worker's framing counts in 32 bits, and jq's parser in int.
    if (input_json.size() + variables_json.size() + wrapped_.size() >
        static_cast<size_t>(INT_MAX)) {
      return absl::InvalidArgumentError("jq input is larger than 2 GiB");
    }
    std::vector<absl::string_view> request = {
        "evaluate", wrapped_,   max_outputs_, first_only ? "1" : "0", max_output_bytes_,
        input_json, variables_json};
    for (const std::string& name : options_.variables) request.push_back(name);
    return options_.pool->Run(request, deadline);
  }

 private:
  const std::string program_;
  const std::string wrapped_;
  const JqOptions options_;
  std::string max_outputs_;
  std::string max_output_bytes_;
};

absl::StatusOr<JqExpression> JqExpression::Compile(absl::string_view program, JqOptions options) {
  if (options.max_outputs < 1) return absl::InvalidArgumentError("jq max_outputs must be >= 1");
  if (absl::StripAsciiWhitespace(program).empty()) {
    return absl::InvalidArgumentError("jq program is empty");
  }
  if (program.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError("jq program contains a NUL byte");
  }
  for (const std::string& name : options.variables) {
    if (!IsJqIdentifier(name) || absl::StartsWith(name, "__") || name == "ENV" ||
        IsJqKeyword(name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "invalid jq variable name '", name,
          "' (letters, digits and _, not starting with a digit or __, not ENV, not a jq "
          "keyword such as label or if)"));
    }
  }
  if (options.pool == nullptr) {
    EVENTBUS_ASSIGN_OR_RETURN(options.pool, JqWorkerPool::Default());
  }

  // The user's program runs inside a prefix that hides the process environment and binds
  // the variables from the input pair [variables, input]. The prefix ends the first line, so
  // jq's line numbers in errors still match the user's program; the closing parenthesis goes
  // on its own line so a trailing `# comment` cannot swallow it.
  std::string prefix = "def env: {}; {} as $ENV | . as [$__eb_vars, $__eb_input] | ";
  for (const std::string& name : options.variables) {
    absl::StrAppend(&prefix, "$__eb_vars[\"", name, "\"] as $", name, " | ");
  }
  absl::StrAppend(&prefix, "$__eb_input | (");
  const std::string wrapped = absl::StrCat(prefix, program, "\n)");

  JqDeadline deadline;
  deadline.timeout = options.compile_timeout;
  absl::StatusOr<std::vector<std::string>> compiled =
      options.pool->Run({"compile", wrapped}, deadline);
  if (absl::IsInvalidArgument(compiled.status())) {
    // jq quotes the program it compiled; show the user's, not ours.
    return absl::InvalidArgumentError(absl::StrCat(
        "jq program does not compile: ",
        absl::StrReplaceAll(compiled.status().message(), {{prefix, ""}})));
  }
  if (!compiled.ok()) {
    return absl::Status(compiled.status().code(),
                        absl::StrCat("jq program could not be compiled: ",
                                     compiled.status().message()));
  }
  return JqExpression(
      std::make_shared<const Impl>(std::string(program), wrapped, std::move(options)));
}

const std::string& JqExpression::program() const { return impl_->program(); }

absl::StatusOr<std::string> JqExpression::EvaluateText(absl::string_view input_json,
                                                       absl::string_view variables_json,
                                                       const JqDeadline& deadline) const {
  EVENTBUS_ASSIGN_OR_RETURN(std::vector<std::string> outputs,
                            impl_->Run(input_json, variables_json, /*first_only=*/true, deadline));
  if (outputs.empty()) return absl::InternalError("jq worker returned no output");
  return std::move(outputs.front());
}

absl::StatusOr<std::vector<std::string>> JqExpression::EvaluateAllText(
    absl::string_view input_json, absl::string_view variables_json,
    const JqDeadline& deadline) const {
  return impl_->Run(input_json, variables_json, /*first_only=*/false, deadline);
}

namespace {

// Invalid UTF-8 in a string becomes U+FFFD rather than an exception.
std::string ToText(const nlohmann::json& value) {
  return value.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace);
}

absl::StatusOr<nlohmann::json> FromText(const std::string& text) {
  nlohmann::json parsed = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    return absl::InternalError("jq produced output that is not JSON");
  }
  return parsed;
}

std::string VariablesText(const nlohmann::json& variables) {
  return variables.is_null() ? std::string() : ToText(variables);
}

}  // namespace

absl::StatusOr<nlohmann::json> JqExpression::Evaluate(const nlohmann::json& input) const {
  return Evaluate(input, nlohmann::json());
}

absl::StatusOr<nlohmann::json> JqExpression::Evaluate(const nlohmann::json& input,
                                                      const nlohmann::json& variables,
                                                      const JqDeadline& deadline) const {
  EVENTBUS_ASSIGN_OR_RETURN(std::string output,
                            EvaluateText(ToText(input), VariablesText(variables), deadline));
  return FromText(output);
}

absl::StatusOr<std::vector<nlohmann::json>> JqExpression::EvaluateAll(
    const nlohmann::json& input) const {
  return EvaluateAll(input, nlohmann::json());
}

absl::StatusOr<std::vector<nlohmann::json>> JqExpression::EvaluateAll(
    const nlohmann::json& input, const nlohmann::json& variables,
    const JqDeadline& deadline) const {
  EVENTBUS_ASSIGN_OR_RETURN(std::vector<std::string> outputs,
                            EvaluateAllText(ToText(input), VariablesText(variables), deadline));
  std::vector<nlohmann::json> values;
  values.reserve(outputs.size());
  for (const std::string& output : outputs) {
    EVENTBUS_ASSIGN_OR_RETURN(nlohmann::json value, FromText(output));
    values.push_back(std::move(value));
  }
  return values;
}

}  // namespace eventbus::executor

namespace eventbus::executor {

JqExpressionCache::JqExpressionCache(size_t max_entries)
    : max_entries_(std::max<size_t>(1, max_entries)) {}

absl::StatusOr<JqExpression> JqExpressionCache::Get(absl::string_view program,
                                                    const JqOptions& options) {
  // NUL cannot occur in a valid program or variable name: an unambiguous separator.
  std::string key = absl::StrCat(program, absl::string_view("\0", 1), options.max_outputs,
                                 absl::string_view("\0", 1),
                                 reinterpret_cast<uintptr_t>(options.pool.get()));
  for (const std::string& name : options.variables) {
    absl::StrAppend(&key, absl::string_view("\0", 1), name);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = index_.find(key); it != index_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);
      return it->second->second;
    }
  }
  EVENTBUS_ASSIGN_OR_RETURN(JqExpression expression, JqExpression::Compile(program, options));
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = index_.find(key); it != index_.end()) {
    return it->second->second;  // another thread compiled it meanwhile
  }
  lru_.emplace_front(key, expression);
  index_.emplace(std::move(key), lru_.begin());
  if (lru_.size() > max_entries_) {
    index_.erase(lru_.back().first);
    lru_.pop_back();
  }
  return expression;
}

size_t JqExpressionCache::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return lru_.size();
}

}  // namespace eventbus::executor
