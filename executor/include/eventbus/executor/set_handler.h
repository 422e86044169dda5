#pragma once
// The `set` task: assigns and transforms data with jq expressions (libjq). Built only with the
// executor's components (EVENTBUS_EXECUTOR_HAS_COMPONENTS).

#include <memory>

#include "eventbus/executor/handler.h"

namespace eventbus::executor {

// Input: {"data": <any JSON, default {}>, and exactly one of
//         "expression": "<jq program>"                  -> output: its first result, or
//         "assign": {"field": "<jq program>", ...}      -> output: {"field": first result, ...}}.
// Expressions see `data` as `.`. A program that does not compile, fails at run time or yields
// nothing is a permanent failure (the same input would fail again).
std::unique_ptr<TaskHandler> NewSetHandler();

}  // namespace eventbus::executor
