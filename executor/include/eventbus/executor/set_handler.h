#pragma once
// The `set` task: assigns and transforms data with jq expressions (libjq). Built only with the
// executor's components (EVENTBUS_EXECUTOR_HAS_COMPONENTS).

#include <memory>

#include "absl/status/statusor.h"
#include "eventbus/executor/handler.h"
#include "eventbus/executor/jq_worker_pool.h"

#pragma GCC visibility push(default)

namespace eventbus::executor {

// Input: {"data": <any JSON, default {}>, and exactly one of
//         "expression": "<jq program>"                  -> output: its first result, or
//         "assign": {"field": "<jq program>", ...}      -> output: {"field": first result, ...}}.
// Expressions see `data` as `.`. A program that does not compile, fails at run time, yields
// nothing, or exceeds a limit of its jq worker (memory, CPU, output size, output count) is a
// permanent failure (the same input would fail again). A program still running at the task's
// deadline is stopped (its worker killed) and fails like any timeout (transient); so do
// failures of the workers themselves.
struct SetHandlerOptions {
  // The jq worker pool's settings (worker binary, number of workers, memory limit).
  JqWorkerPoolOptions jq;
};

// Starts the jq worker pool: FailedPrecondition naming the worker binary when it is missing or
// does not answer, InvalidArgument for bad options.
absl::StatusOr<std::unique_ptr<TaskHandler>> NewSetHandler(const SetHandlerOptions& options);

// With JqWorkerPool::Default(); when that cannot start, every task fails with its error.
std::unique_ptr<TaskHandler> NewSetHandler();

}  // namespace eventbus::executor

#pragma GCC visibility pop
