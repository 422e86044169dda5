#include "eventbus/executor/jq_expression.h"

extern "C" {
#include <jq.h>
#include <jv.h>
}

#include <pthread.h>

#include <algorithm>
#include <climits>
#include <mutex>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/base/call_once.h"
#include "absl/functional/function_ref.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "eventbus/status_macros.h"

namespace eventbus::executor {
namespace {

// jv values are reference counted by hand: almost every jv function consumes its arguments.
// Owned wraps one reference so every early return releases it exactly once.
class Owned {
 public:
  explicit Owned(jv value) : value_(value) {}
  Owned(const Owned&) = delete;
  Owned& operator=(const Owned&) = delete;
  ~Owned() {
    if (owned_) jv_free(value_);
  }
  // Borrow, for the functions that do not consume (jv_get_kind, jv_string_value, ...).
  jv get() const { return value_; }
  // A new reference, for a function that consumes one.
  jv copy() const { return jv_copy(value_); }
  // Hand our reference to a function that consumes it.
  jv release() {
    owned_ = false;
    return value_;
  }

 private:
  jv value_;
  bool owned_ = true;
};

// A compiled jq program with its own jq_state; never used by two threads at once.
class CompiledState {
 public:
  ~CompiledState() {
    if (jq_ != nullptr) jq_teardown(&jq_);
  }

  static absl::StatusOr<std::unique_ptr<CompiledState>> Compile(const std::string& text) {
    auto state = std::unique_ptr<CompiledState>(new CompiledState());
    state->jq_ = jq_init();
    if (state->jq_ == nullptr) return absl::ResourceExhaustedError("jq_init: out of memory");
    jq_set_error_cb(state->jq_, &CompiledState::OnError, state.get());
    if (!jq_compile(state->jq_, text.c_str())) {
      std::string errors = std::move(state->errors_);
      return absl::InvalidArgumentError(
          errors.empty() ? std::string("jq program does not compile") : errors);
    }
    return state;
  }

  jq_state* jq() const { return jq_; }

 private:
  CompiledState() = default;

  // libjq hands us the message reference.
  static void OnError(void* data, jv message) {
    auto* self = static_cast<CompiledState*>(data);
    Owned formatted(jq_format_error(message));
    if (jv_get_kind(formatted.get()) == JV_KIND_STRING) {
      if (!self->errors_.empty()) self->errors_ += "\n";
      self->errors_ += jv_string_value(formatted.get());
    }
  }

  jq_state* jq_ = nullptr;
  std::string errors_;
};

// Oniguruma (jq's regex engine) initialises its globals lazily and without a lock on the
// first regex: do that once, before any two threads can race into it.
void EnsureJqGlobalInit() {
  static absl::once_flag once;
  absl::call_once(once, [] {
    absl::StatusOr<std::unique_ptr<CompiledState>> state =
        CompiledState::Compile(R"("a" | test("a"))");
    if (!state.ok()) return;
    jq_start((*state)->jq(), jv_null(), 0);
    jv_free(jq_next((*state)->jq()));
  });
}

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

// Compact JSON text of `value` (consumed).
std::string DumpJson(jv value) {
  Owned text(jv_dump_string(value, 0));
  return std::string(jv_string_value(text.get()),
                     static_cast<size_t>(jv_string_length_bytes(text.copy())));
}

// A readable message from an error value (consumed): strings as they are, anything else
// (`error({"code": 1})`) as JSON.
std::string ErrorText(jv message) {
  Owned msg(message);
  if (jv_get_kind(msg.get()) == JV_KIND_STRING) return jv_string_value(msg.get());
  return DumpJson(msg.release());
}

// Parses one JSON value from `text`. `what` names it in errors ("input", "variables").
absl::StatusOr<jv> ParseJson(absl::string_view text, absl::string_view what) {
  if (text.size() > static_cast<size_t>(INT_MAX)) {
    return absl::InvalidArgumentError(absl::StrCat("jq ", what, " is larger than 2 GiB"));
  }
  jv parsed = jv_parse_sized(text.data(), static_cast<int>(text.size()));
  if (jv_is_valid(parsed)) return parsed;
  if (!jv_invalid_has_msg(jv_copy(parsed))) {
    jv_free(parsed);
    return absl::InvalidArgumentError(absl::StrCat("jq ", what, " is not JSON (no value)"));
  }
  std::string message = ErrorText(jv_invalid_get_msg(parsed));
  // jq appends the whole text it parsed; it may be large and may hold secrets.
  if (size_t pos = message.find(" (while parsing '"); pos != std::string::npos) {
    message.resize(pos);
  }
  return absl::InvalidArgumentError(absl::StrCat("jq ", what, " is not JSON: ", message));
}

// jq 1.6 prints a value nested deeper than 256 levels as `<stripped: exceeds max depth>`,
// which is not JSON (and its parser refuses that depth too): such an output is an error.
absl::Status CheckDumpedJson(absl::string_view text) {
  bool in_string = false;
  bool escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '<') {
      return absl::InvalidArgumentError(
          "jq program produced a value nested deeper than 256 levels");
    }
  }
  return absl::OkStatus();
}

// jq 1.6 frees and prints nested values recursively. A program can build an array nested a
// few hundred thousand levels deep in a fraction of a second (`reduce range(300000) as $i
// (null; [.])`), and freeing it overflows a default 8 MiB thread stack: SIGSEGV, the whole
// service dies. So every evaluation runs on a thread of its own with a large stack. It is
// virtual memory: only the pages a deep value really touches become resident.
constexpr size_t kEvaluationStackBytes = size_t{512} << 20;

absl::Status RunOnLargeStack(absl::FunctionRef<void()> body) {
  pthread_attr_t attr;
  if (pthread_attr_init(&attr) != 0) {
    return absl::ResourceExhaustedError("jq: pthread_attr_init failed");
  }
  pthread_attr_setstacksize(&attr, kEvaluationStackBytes);
  pthread_t thread;
  auto trampoline = [](void* arg) -> void* {
    (*static_cast<absl::FunctionRef<void()>*>(arg))();
    return nullptr;
  };
  const int rc = pthread_create(&thread, &attr, trampoline, &body);
  pthread_attr_destroy(&attr);
  if (rc != 0) {
    return absl::ResourceExhaustedError(
        absl::StrCat("jq: cannot start an evaluation thread (pthread_create error ", rc, ")"));
  }
  pthread_join(thread, nullptr);
  return absl::OkStatus();
}

}  // namespace

class JqExpression::Impl {
 public:
  Impl(std::string program, std::string wrapped, JqOptions options,
       std::unique_ptr<CompiledState> first)
      : program_(std::move(program)), wrapped_(std::move(wrapped)), options_(std::move(options)) {
    idle_.push_back(std::move(first));
  }

  const std::string& program() const { return program_; }

  // Outputs as compact JSON text; stops after the first when `first_only`.
  absl::StatusOr<std::vector<std::string>> Run(absl::string_view input_json,
                                               absl::string_view variables_json,
                                               bool first_only) const {
    absl::StatusOr<std::vector<std::string>> result;
    EVENTBUS_RETURN_IF_ERROR(RunOnLargeStack(
        [&] { result = RunHere(input_json, variables_json, first_only); }));
    return result;
  }

 private:
  absl::StatusOr<std::vector<std::string>> RunHere(absl::string_view input_json,
                                                   absl::string_view variables_json,
                                                   bool first_only) const {
    EVENTBUS_ASSIGN_OR_RETURN(jv input_value, ParseJson(input_json, "input"));
    Owned input(input_value);
    EVENTBUS_ASSIGN_OR_RETURN(jv variables_value,
                              ParseJson(variables_json.empty() ? "{}" : variables_json,
                                        "variables"));
    Owned variables(variables_value);
    EVENTBUS_RETURN_IF_ERROR(CheckVariables(variables.get()));

    EVENTBUS_ASSIGN_OR_RETURN(std::unique_ptr<CompiledState> state, Take());
    jq_state* jq = state->jq();
    // The program is compiled as `. as [$__eb_vars, $__eb_input] | ...`: see Compile.
    jq_start(jq, JV_ARRAY_2(variables.release(), input.release()), 0);

    std::vector<std::string> outputs;
    absl::Status status;
    while (true) {
      Owned out(jq_next(jq));
      if (jv_is_valid(out.get())) {
        if (!first_only && outputs.size() >= options_.max_outputs) {
          status = absl::ResourceExhaustedError(absl::StrCat(
              "jq program produced more than ", options_.max_outputs, " outputs"));
          break;
        }
        outputs.push_back(DumpJson(out.release()));
        status = CheckDumpedJson(outputs.back());
        if (!status.ok() || first_only) break;
        continue;
      }
      if (jq_halted(jq)) {
        status = HaltStatus(jq);
        break;
      }
      if (jv_invalid_has_msg(out.copy())) {
        status = absl::InvalidArgumentError(
            absl::StrCat("jq runtime error: ", ErrorText(jv_invalid_get_msg(out.release()))));
      }
      break;  // an invalid without a message is the end of the outputs
    }
    const bool halted = jq_halted(jq);
    // Drop what this evaluation left on jq's stack (the input, partial results) now, rather
    // than keep it alive in an idle state until the next evaluation.
    jq_start(jq, jv_null(), 0);
    if (halted) {
      // jq 1.6's jq_reset frees the halt_error message but keeps the pointer, so the next
      // reset (jq_start, jq_teardown) would free it again. Halting with invalids overwrites
      // the dangling values without freeing; the next jq_start clears the halt.
      jq_halt(jq, jv_invalid(), jv_invalid());
    }
    Give(std::move(state));

    if (!status.ok()) return status;
    if (first_only && outputs.empty()) {
      return absl::InvalidArgumentError("jq program produced no output");
    }
    return outputs;
  }

  static absl::Status HaltStatus(jq_state* jq) {
    Owned exit_code(jq_get_exit_code(jq));
    // `halt` (no exit code) and `halt_error(0)` end the program normally.
    if (!jv_is_valid(exit_code.get()) ||
        (jv_get_kind(exit_code.get()) == JV_KIND_NUMBER &&
         jv_number_value(exit_code.get()) == 0)) {
      return absl::OkStatus();
    }
    Owned message(jq_get_error_message(jq));
    std::string text = jv_is_valid(message.get()) ? ErrorText(message.release()) : "";
    return absl::InvalidArgumentError(
        absl::StrCat("jq program stopped with halt_error: ", absl::StripTrailingAsciiWhitespace(text)));
  }

  absl::Status CheckVariables(jv variables) const {
    if (jv_get_kind(variables) != JV_KIND_OBJECT) {
      return absl::InvalidArgumentError(absl::StrCat("jq variables must be a JSON object, not ",
                                                     jv_kind_name(jv_get_kind(variables))));
    }
    for (const std::string& name : options_.variables) {
      if (!jv_object_has(jv_copy(variables), jv_string(name.c_str()))) {
        return absl::InvalidArgumentError(
            absl::StrCat("jq variable $", name, " is declared but has no value"));
      }
    }
    if (static_cast<size_t>(jv_object_length(jv_copy(variables))) != options_.variables.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "jq variables hold names that were not declared (declared: ",
          options_.variables.empty() ? "none" : absl::StrCat("$", absl::StrJoin(options_.variables, ", $")),
          ")"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<CompiledState>> Take() const {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!idle_.empty()) {
        std::unique_ptr<CompiledState> state = std::move(idle_.back());
        idle_.pop_back();
        return state;
      }
    }
    // Every thread evaluating at once gets its own state; compiling again cannot fail for a
    // program that compiled before, short of memory.
    return CompiledState::Compile(wrapped_);
  }

  void Give(std::unique_ptr<CompiledState> state) const {
    std::lock_guard<std::mutex> lock(mu_);
    if (idle_.size() < kMaxIdleStates) idle_.push_back(std::move(state));
  }

  static constexpr size_t kMaxIdleStates = 16;

  const std::string program_;
  const std::string wrapped_;
  const JqOptions options_;
  mutable std::mutex mu_;  // guards idle_
  mutable std::vector<std::unique_ptr<CompiledState>> idle_;
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
  EnsureJqGlobalInit();

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

  absl::StatusOr<std::unique_ptr<CompiledState>> state = CompiledState::Compile(wrapped);
  if (!state.ok()) {
    // jq quotes the program it compiled; show the user's, not ours.
    return absl::InvalidArgumentError(absl::StrCat(
        "jq program does not compile: ",
        absl::StrReplaceAll(state.status().message(), {{prefix, ""}})));
  }
  return JqExpression(std::make_shared<const Impl>(std::string(program), wrapped,
                                                   std::move(options), std::move(*state)));
}

const std::string& JqExpression::program() const { return impl_->program(); }

absl::StatusOr<std::string> JqExpression::EvaluateText(absl::string_view input_json,
                                                       absl::string_view variables_json) const {
  EVENTBUS_ASSIGN_OR_RETURN(std::vector<std::string> outputs,
                            impl_->Run(input_json, variables_json, /*first_only=*/true));
  return std::move(outputs.front());
}

absl::StatusOr<std::vector<std::string>> JqExpression::EvaluateAllText(
    absl::string_view input_json, absl::string_view variables_json) const {
  return impl_->Run(input_json, variables_json, /*first_only=*/false);
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
                                                      const nlohmann::json& variables) const {
  EVENTBUS_ASSIGN_OR_RETURN(std::string output,
                            EvaluateText(ToText(input), VariablesText(variables)));
  return FromText(output);
}

absl::StatusOr<std::vector<nlohmann::json>> JqExpression::EvaluateAll(
    const nlohmann::json& input) const {
  return EvaluateAll(input, nlohmann::json());
}

absl::StatusOr<std::vector<nlohmann::json>> JqExpression::EvaluateAll(
    const nlohmann::json& input, const nlohmann::json& variables) const {
  EVENTBUS_ASSIGN_OR_RETURN(std::vector<std::string> outputs,
                            EvaluateAllText(ToText(input), VariablesText(variables)));
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
  std::string key = absl::StrCat(program, absl::string_view("\0", 1), options.max_outputs);
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
