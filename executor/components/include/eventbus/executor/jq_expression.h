#pragma once
// jq programs (libjq 1.6) for the `set` task: compile once, evaluate many times, from any
// thread.
//
// JSON goes in and out either as nlohmann::json or as JSON text (the *Text methods). Numbers
// pass through jq as IEEE doubles (jq 1.6 has no big integers): integers beyond 2^53 lose
// precision.
//
// Variables: a program may use `$name` for every name declared in JqOptions::variables; each
// evaluation supplies their values as one JSON object {"name": value, ...}. (libjq binds
// named arguments at compile time, so we pass them through the input instead and the program
// is still compiled only once.)
//
// Sandboxing: `env` and `$ENV` evaluate to {} (the service's environment holds broker
// passwords); `input`/`inputs` have no further inputs; modules (`import`/`include`) are not
// available. Each evaluation runs on a short-lived thread with a 512 MiB (virtual) stack,
// because jq 1.6 frees nested values recursively and a cheap program nesting an array
// 300,000 deep would overflow a normal thread stack and kill the process (measured: 12
// million levels, ~1 GB of memory and ~7 s of CPU, still pass on this stack). Not bounded: a
// program that loops forever (`repeat(1) | empty`) or builds a huge value blocks its caller
// or exhausts memory (jq aborts the process when malloc fails), because jq 1.6 has no way to
// interrupt an evaluation or cap its memory. Programs come from task authors, who are trusted
// as much as the tasks they submit.
//
// Status codes:
//   Compile:   InvalidArgument with jq's own message for a syntax or compile error (an empty
//              program included), for a bad variable name, or max_outputs < 1.
//   Evaluate*: InvalidArgument when the input (or the variables) is not one JSON value
//              (object for the variables) or misses/adds a declared variable; when the program
//              raises a runtime error (`error("x")`, `1 + "a"`, ...; jq's message kept); when
//              it stops with `halt_error`; and, for the first-output methods, when it produces
//              no output at all (`empty`).
//              InvalidArgument also when an output is nested deeper than 256 levels (jq
//              cannot print it as JSON, nor parse it back).
//              ResourceExhausted when EvaluateAll* exceeds JqOptions::max_outputs, or when
//              the evaluation thread cannot be started.

#include <cstddef>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace eventbus::executor {

struct JqOptions {
  // Names usable as `$name` (jq identifiers: [A-Za-z_][A-Za-z0-9_]*, not starting with "__",
  // not "ENV", not a jq keyword such as "label" or "if").
  std::vector<std::string> variables;
  // Upper bound on the outputs EvaluateAll* collects. >= 1.
  size_t max_outputs = 10'000;
};

// A compiled jq program. Copies share the compiled program. Every method is const and
// thread-safe: concurrent evaluations each use their own jq state from an internal pool.
class JqExpression {
 public:
  static absl::StatusOr<JqExpression> Compile(absl::string_view program, JqOptions options = {});

  // The first output of the program on `input`.
  absl::StatusOr<nlohmann::json> Evaluate(const nlohmann::json& input) const;
  absl::StatusOr<nlohmann::json> Evaluate(const nlohmann::json& input,
                                          const nlohmann::json& variables) const;
  // Every output, in order (possibly none).
  absl::StatusOr<std::vector<nlohmann::json>> EvaluateAll(const nlohmann::json& input) const;
  absl::StatusOr<std::vector<nlohmann::json>> EvaluateAll(const nlohmann::json& input,
                                                          const nlohmann::json& variables) const;

  // The same on JSON text; outputs are compact JSON text (no spaces, UTF-8).
  // `variables_json` empty means "no variables" ({}).
  absl::StatusOr<std::string> EvaluateText(absl::string_view input_json,
                                           absl::string_view variables_json = {}) const;
  absl::StatusOr<std::vector<std::string>> EvaluateAllText(
      absl::string_view input_json, absl::string_view variables_json = {}) const;

  // The program as given to Compile.
  const std::string& program() const;

 private:
  class Impl;
  explicit JqExpression(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

  std::shared_ptr<const Impl> impl_;
};

// Compiled programs by their text (and options), so a program that many tasks share compiles
// once: jq 1.6 compiles its whole builtin library with every program, tens of milliseconds
// each time. Thread-safe. Bounded: beyond `max_entries` the least recently used program is
// forgotten (expressions handed out stay valid). Programs that do not compile are not kept.
class JqExpressionCache {
 public:
  explicit JqExpressionCache(size_t max_entries = 256);

  // The compiled program, from the cache or compiled now (outside the cache's lock, so a slow
  // compile does not hold up other lookups). Same status codes as JqExpression::Compile.
  absl::StatusOr<JqExpression> Get(absl::string_view program, const JqOptions& options = {});

  size_t size() const;

 private:
  using Entry = std::pair<std::string, JqExpression>;  // key, expression

  const size_t max_entries_;
  mutable std::mutex mu_;  // guards the two below
  std::list<Entry> lru_;   // most recently used first
  absl::flat_hash_map<std::string, std::list<Entry>::iterator> index_;
};

}  // namespace eventbus::executor
