#include <memory>

#include "absl/strings/str_cat.h"
#include "eventbus/taskstore/memory_task_store.h"
#include "eventbus/taskstore/task_store.h"
#ifdef EVENTBUS_TASKSTORE_WITH_REDIS
#include "eventbus/taskstore/redis_task_store.h"
#endif
#ifdef EVENTBUS_TASKSTORE_WITH_POSTGRES
#include "eventbus/taskstore/postgres_task_store.h"
#endif

namespace eventbus::taskstore {

absl::StatusOr<std::unique_ptr<TaskStore>> OpenTaskStore(absl::string_view kind,
                                                         absl::string_view url) {
  if (kind == "memory") return NewMemoryTaskStore();
#ifdef EVENTBUS_TASKSTORE_WITH_REDIS
  if (kind == "redis") return OpenRedisTaskStore(url);
#endif
#ifdef EVENTBUS_TASKSTORE_WITH_POSTGRES
  if (kind == "postgres") return OpenPostgresTaskStore(url);
#endif
  std::string built = "memory";
#ifdef EVENTBUS_TASKSTORE_WITH_REDIS
  absl::StrAppend(&built, ", redis");
#endif
#ifdef EVENTBUS_TASKSTORE_WITH_POSTGRES
  absl::StrAppend(&built, ", postgres");
#endif
  if (kind == "redis" || kind == "postgres") {
    return absl::InvalidArgumentError(absl::StrCat("EXECUTOR_STORE: '", kind,
                                                   "' is not built into this binary (built: ",
                                                   built, ")"));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("EXECUTOR_STORE: unknown store '", kind, "' (built: ", built, ")"));
}

}  // namespace eventbus::taskstore
