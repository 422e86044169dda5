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
// available.
//
// Isolation: programs compile and run in eventbus-jq-worker processes (JqWorkerPool), because
// jq 1.6 can neither be interrupted nor capped and aborts its process when malloc fails. Every
// call has a deadline (JqDeadline; by default the pool's default_timeout) after which the
// worker is killed; a worker is bounded in memory (RLIMIT_AS) and CPU, and its reply in size.
// A program that loops (`last(range(infinite))`) or allocates without bound (`[repeat(1)]`)
// costs one worker until its deadline, never the calling process.
//
// Status codes:
//   Compile:   InvalidArgument with jq's own message for a syntax or compile error (an empty
//              program included), for a bad variable name, or max_outputs < 1.
//              FailedPrecondition when no pool is given and the default pool cannot start (the
//              worker binary is missing); and the pool's codes below for the compile request.
//   Evaluate*: InvalidArgument when the input (or the variables) is not one JSON value
//              (object for the variables) or misses/adds a declared variable; when the program
//              raises a runtime error (`error("x")`, `1 + "a"`, ...; jq's message kept); when
//              it stops with `halt_error`; and, for the first-output methods, when it produces
//              no output at all (`empty`).
//              InvalidArgument also when an output is nested deeper than 256 levels (jq
//              cannot print it as JSON, nor parse it back).
//              ResourceExhausted when EvaluateAll* exceeds JqOptions::max_outputs, when the
//              outputs exceed the pool's max_output_bytes, and when the program exceeds the
//              worker's memory limit ("jq program exceeded the memory limit of N MiB") or CPU
//              limit.
//              DeadlineExceeded past the deadline (the worker was killed) or when no worker
//              became free before it; Cancelled when JqDeadline::cancelled said so; Internal
//              when a worker died otherwise; Unavailable when a worker cannot be started.

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
#include "absl/time/time.h"
#include "eventbus/executor/jq_worker_pool.h"

#pragma GCC visibility push(default)

namespace eventbus::executor {

struct JqOptions {
  // Names usable as `$name` (jq identifiers: [A-Za-z_][A-Za-z0-9_]*, not starting with "__",
  // not "ENV", not a jq keyword such as "label" or "if").
  std::vector<std::string> variables;
  // Upper bound on the outputs EvaluateAll* collects. >= 1.
  size_t max_outputs = 10'000;
  // Where the program compiles and runs; null = JqWorkerPool::Default().
  std::shared_ptr<JqWorkerPool> pool;
  // Deadline of the compile request.
  absl::Duration compile_timeout = absl::Seconds(10);
};

// A compiled jq program. Copies share the compiled program. Every method is const and
// thread-safe: concurrent evaluations each run in a worker of their own, and block their
// caller until the reply or the deadline.
class JqExpression {
 public:
  static absl::StatusOr<JqExpression> Compile(absl::string_view program, JqOptions options = {});

  // The first output of the program on `input`.
  absl::StatusOr<nlohmann::json> Evaluate(const nlohmann::json& input) const;
  absl::StatusOr<nlohmann::json> Evaluate(const nlohmann::json& input,
                                          const nlohmann::json& variables,
                                          const JqDeadline& deadline = {}) const;
  // Every output, in order (possibly none).
  absl::StatusOr<std::vector<nlohmann::json>> EvaluateAll(const nlohmann::json& input) const;
  absl::StatusOr<std::vector<nlohmann::json>> EvaluateAll(const nlohmann::json& input,
                                                          const nlohmann::json& variables,
                                                          const JqDeadline& deadline = {}) const;

  // The same on JSON text; outputs are compact JSON text (no spaces, UTF-8).
  // `variables_json` empty means "no variables" ({}); a null `variables` likewise.
  absl::StatusOr<std::string> EvaluateText(absl::string_view input_json,
                                           absl::string_view variables_json = {},
                                           const JqDeadline& deadline = {}) const;
  absl::StatusOr<std::vector<std::string>> EvaluateAllText(
      absl::string_view input_json, absl::string_view variables_json = {},
      const JqDeadline& deadline = {}) const;

  // The program as given to Compile.
  const std::string& program() const;

 private:
  class Impl;
  explicit JqExpression(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

  std::shared_ptr<const Impl> impl_;
};

// Compiled programs by their text (and options, the pool included), so a program that many
// tasks share is checked once: jq 1.6 compiles its whole builtin library with every program,
// tens of milliseconds each time (each worker also keeps the programs it compiled). Thread-safe. Bounded: beyond `max_entries` the least recently used program is
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

#pragma GCC visibility pop
