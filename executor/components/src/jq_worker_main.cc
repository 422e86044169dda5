// eventbus-jq-worker: runs jq programs (libjq 1.6) for the service, one request at a time,
// so that a program that loops, allocates without bound or crashes libjq takes down only this
// process, which the service kills (deadline) or replaces (death) at will.
//
// Protocol (jq_wire.h): frames on stdin, one reply frame per request on stdout.
//   ["ping"]                                       -> [code, "eventbus-jq-worker"]
//   ["compile", program]                           -> [code, message]
//   ["evaluate", program, max_outputs, first_only, max_output_bytes, input, variables,
//    declared variable names...]                   -> [code, message, outputs...]
// `program` is the full program text JqExpression built (its sandbox prefix included).
// Compiled programs are kept per worker (compiling costs ~50 ms in jq 1.6).
//
// Limits set by the parent before exec: RLIMIT_AS (memory) and RLIMIT_STACK (jq 1.6 frees
// nested values recursively: evaluations run on the main thread, whose stack may grow that
// far). This process adds RLIMIT_CPU per request: --cpu-limit-seconds=N of CPU from the start
// of each request, so a runaway program dies of SIGXCPU even if the service is gone.
//
// Exit: 0 at the end of stdin; 2 for a malformed frame; killed by a signal otherwise.

extern "C" {
#include <jq.h>
#include <jv.h>
}

#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <list>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "eventbus/status_macros.h"
#include "jq_wire.h"

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

// A compiled jq program with its own jq_state.
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

absl::Status HaltStatus(jq_state* jq) {
  Owned exit_code(jq_get_exit_code(jq));
  // `halt` (no exit code) and `halt_error(0)` end the program normally.
  if (!jv_is_valid(exit_code.get()) ||
      (jv_get_kind(exit_code.get()) == JV_KIND_NUMBER && jv_number_value(exit_code.get()) == 0)) {
    return absl::OkStatus();
  }
  Owned message(jq_get_error_message(jq));
  std::string text = jv_is_valid(message.get()) ? ErrorText(message.release()) : "";
  return absl::InvalidArgumentError(absl::StrCat("jq program stopped with halt_error: ",
                                                 absl::StripTrailingAsciiWhitespace(text)));
}

absl::Status CheckVariables(jv variables, const std::vector<std::string>& declared) {
  if (jv_get_kind(variables) != JV_KIND_OBJECT) {
    return absl::InvalidArgumentError(absl::StrCat("jq variables must be a JSON object, not ",
                                                   jv_kind_name(jv_get_kind(variables))));
  }
  for (const std::string& name : declared) {
    if (!jv_object_has(jv_copy(variables), jv_string(name.c_str()))) {
      return absl::InvalidArgumentError(
          absl::StrCat("jq variable $", name, " is declared but has no value"));
    }
  }
  if (static_cast<size_t>(jv_object_length(jv_copy(variables))) != declared.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "jq variables hold names that were not declared (declared: ",
        declared.empty() ? "none" : absl::StrCat("$", absl::StrJoin(declared, ", $")), ")"));
  }
  return absl::OkStatus();
}

// Compiled programs by text, least recently used forgotten beyond kMaxPrograms.
class ProgramCache {
 public:
  absl::StatusOr<CompiledState*> Get(const std::string& program) {
    if (auto it = index_.find(program); it != index_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);
      return it->second->second.get();
    }
    EVENTBUS_ASSIGN_OR_RETURN(std::unique_ptr<CompiledState> state,
                              CompiledState::Compile(program));
    lru_.emplace_front(program, std::move(state));
    index_.emplace(program, lru_.begin());
    if (lru_.size() > kMaxPrograms) {
      index_.erase(lru_.back().first);
      lru_.pop_back();
    }
    return lru_.front().second.get();
  }

 private:
  static constexpr size_t kMaxPrograms = 64;
  std::list<std::pair<std::string, std::unique_ptr<CompiledState>>> lru_;
  std::unordered_map<std::string, std::list<std::pair<std::string, std::unique_ptr<CompiledState>>>::iterator> index_;
};

struct EvaluateRequest {
  std::string program;
  size_t max_outputs = 0;
  bool first_only = false;
  size_t max_output_bytes = 0;
  absl::string_view input;
  absl::string_view variables;
  std::vector<std::string> declared;
};

absl::StatusOr<std::vector<std::string>> Evaluate(ProgramCache& cache,
                                                  const EvaluateRequest& request) {
  EVENTBUS_ASSIGN_OR_RETURN(jv input_value, ParseJson(request.input, "input"));
  Owned input(input_value);
  EVENTBUS_ASSIGN_OR_RETURN(
      jv variables_value,
      ParseJson(request.variables.empty() ? "{}" : request.variables, "variables"));
  Owned variables(variables_value);
  EVENTBUS_RETURN_IF_ERROR(CheckVariables(variables.get(), request.declared));

  EVENTBUS_ASSIGN_OR_RETURN(CompiledState * state, cache.Get(request.program));
  jq_state* jq = state->jq();
  // The program is compiled as `. as [$__eb_vars, $__eb_input] | ...` (JqExpression::Compile).
  jq_start(jq, JV_ARRAY_2(variables.release(), input.release()), 0);

  std::vector<std::string> outputs;
  size_t output_bytes = 0;
  absl::Status status;
  while (true) {
    Owned out(jq_next(jq));
    if (jv_is_valid(out.get())) {
      if (!request.first_only && outputs.size() >= request.max_outputs) {
        status = absl::ResourceExhaustedError(
            absl::StrCat("jq program produced more than ", request.max_outputs, " outputs"));
        break;
      }
      outputs.push_back(DumpJson(out.release()));
      output_bytes += outputs.back().size() + 4;  // as framed
      if (output_bytes > request.max_output_bytes) {
        status = absl::ResourceExhaustedError(absl::StrCat(
            "jq program output is larger than ", request.max_output_bytes >> 20, " MiB"));
        break;
      }
      status = CheckDumpedJson(outputs.back());
      if (!status.ok() || request.first_only) break;
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
  if (!status.ok()) return status;
  if (request.first_only && outputs.empty()) {
    return absl::InvalidArgumentError("jq program produced no output");
  }
  return outputs;
}

// Messages may quote values (`error(.)`): the service bounds what it reads, so keep them short.
constexpr size_t kMaxMessageBytes = 4096;

std::string Reply(const absl::Status& status, const std::vector<std::string>& outputs = {}) {
  std::string payload;
  jq_wire::AppendField(&payload, absl::StrCat(static_cast<int>(status.code())));
  absl::string_view message = status.message();
  if (message.size() > kMaxMessageBytes) {
    jq_wire::AppendField(&payload, absl::StrCat(message.substr(0, kMaxMessageBytes), "..."));
  } else {
    jq_wire::AppendField(&payload, message);
  }
  for (const std::string& output : outputs) jq_wire::AppendField(&payload, output);
  return payload;
}

bool ReadFully(int fd, char* data, size_t size) {
  while (size > 0) {
    const ssize_t n = read(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

bool WriteFully(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

// Allows `seconds` more CPU seconds from now (SIGXCPU, which kills, after that).
void LimitCpuFromNow(long seconds) {
  if (seconds <= 0) return;
  rusage usage{};
  if (getrusage(RUSAGE_SELF, &usage) != 0) return;
  rlimit limit{};
  if (getrlimit(RLIMIT_CPU, &limit) != 0) return;
  const rlim_t used = static_cast<rlim_t>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec + 1);
  limit.rlim_cur = used + static_cast<rlim_t>(seconds);
  if (limit.rlim_max != RLIM_INFINITY && limit.rlim_cur > limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
  }
  setrlimit(RLIMIT_CPU, &limit);
}

absl::StatusOr<EvaluateRequest> ParseEvaluate(const std::vector<absl::string_view>& fields) {
  if (fields.size() < 7) return absl::InvalidArgumentError("evaluate: too few fields");
  EvaluateRequest request;
  request.program = std::string(fields[1]);
  if (!absl::SimpleAtoi(fields[2], &request.max_outputs) ||
      !absl::SimpleAtoi(fields[4], &request.max_output_bytes)) {
    return absl::InvalidArgumentError("evaluate: bad number");
  }
  request.first_only = fields[3] == "1";
  request.input = fields[5];
  request.variables = fields[6];
  for (size_t i = 7; i < fields.size(); ++i) request.declared.emplace_back(fields[i]);
  return request;
}

int Serve(long cpu_limit_seconds) {
  ProgramCache cache;
  std::string payload;
  while (true) {
    char header[4];
    if (!ReadFully(STDIN_FILENO, header, sizeof header)) return 0;  // the service is gone
    payload.resize(jq_wire::ReadU32(header));
    if (!ReadFully(STDIN_FILENO, payload.data(), payload.size())) return 2;
    std::optional<std::vector<absl::string_view>> fields = jq_wire::SplitFields(payload);
    if (!fields || fields->empty()) return 2;
    LimitCpuFromNow(cpu_limit_seconds);
    std::string reply;
    const absl::string_view op = fields->front();
    if (op == "ping") {
      reply = Reply(absl::OkStatus(), {"eventbus-jq-worker"});
    } else if (op == "compile" && fields->size() == 2) {
      absl::StatusOr<CompiledState*> state = cache.Get(std::string((*fields)[1]));
      reply = Reply(state.status());
    } else if (op == "evaluate") {
      absl::StatusOr<EvaluateRequest> request = ParseEvaluate(*fields);
      if (!request.ok()) return 2;
      absl::StatusOr<std::vector<std::string>> outputs = Evaluate(cache, *request);
      reply = outputs.ok() ? Reply(absl::OkStatus(), *outputs) : Reply(outputs.status());
    } else {
      return 2;
    }
    if (!WriteFully(STDOUT_FILENO, jq_wire::Frame(reply))) return 0;
  }
}

}  // namespace
}  // namespace eventbus::executor

int main(int argc, char** argv) {
  long cpu_limit_seconds = 0;
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (absl::ConsumePrefix(&arg, "--cpu-limit-seconds=") &&
        absl::SimpleAtoi(arg, &cpu_limit_seconds) && cpu_limit_seconds >= 0) {
      continue;
    }
    std::fprintf(stderr,
                 "usage: %s [--cpu-limit-seconds=N]\n"
                 "Runs jq programs for eventbus-executor: framed requests on stdin, replies on "
                 "stdout. Not meant to be started by hand.\n",
                 argv[0]);
    return 2;
  }
  return eventbus::executor::Serve(cpu_limit_seconds);
}
