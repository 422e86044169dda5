#pragma once
// The in-process task store: the reference semantics of TaskStore (the conformance suite's
// first implementation), used with the memory backend and in tests. Nothing survives the
// process. Thread-safe: one mutex guards everything, held only inside a call. Time is only
// what the caller passes as `now`, so a ManualClock drives it exactly.

#include <memory>

#include "eventbus/taskstore/task_store.h"

#pragma GCC visibility push(default)

namespace eventbus::taskstore {

std::unique_ptr<TaskStore> NewMemoryTaskStore();

}  // namespace eventbus::taskstore

#pragma GCC visibility pop
