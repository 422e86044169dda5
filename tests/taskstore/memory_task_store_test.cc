// The task store conformance suite on the memory store, and OpenTaskStore's selection.
#include <memory>

#include "eventbus/taskstore/conformance.h"
#include "eventbus/taskstore/memory_task_store.h"
#include "eventbus/taskstore/task_store.h"
#include "gtest/gtest.h"

namespace eventbus::taskstore {
namespace {

conformance::TaskStoreUnderTest MemoryStore() {
  conformance::TaskStoreUnderTest store;
  store.name = "memory";
  store.make_store = []() -> absl::StatusOr<std::unique_ptr<TaskStore>> {
    return NewMemoryTaskStore();
  };
  return store;
}

EVENTBUS_INSTANTIATE_TASK_STORE_CONFORMANCE(Memory, MemoryStore());

TEST(OpenTaskStore, OpensTheMemoryStore) {
  auto store = OpenTaskStore("memory", "");
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->kind(), "memory");
  EXPECT_TRUE((*store)->Migrate().ok());
}

TEST(OpenTaskStore, RejectsAnUnknownKindNamingTheSetting) {
  auto store = OpenTaskStore("mongodb", "");
  EXPECT_EQ(store.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(store.status().message().find("EXECUTOR_STORE"), absl::string_view::npos)
      << store.status();
  EXPECT_NE(store.status().message().find("mongodb"), absl::string_view::npos) << store.status();
}

TEST(TaskStateNames, RoundTripEveryState) {
  for (TaskState state : kAllTaskStates) {
    auto parsed = ParseTaskState(TaskStateName(state));
    ASSERT_TRUE(parsed.has_value()) << TaskStateName(state);
    EXPECT_EQ(*parsed, state);
  }
  EXPECT_FALSE(ParseTaskState("done").has_value());
  EXPECT_EQ(TaskStateName(TaskState::kDeadLettered), "dead_lettered");
  int finals = 0;
  for (TaskState state : kAllTaskStates) finals += IsFinal(state) ? 1 : 0;
  EXPECT_EQ(finals, 4);
}

}  // namespace
}  // namespace eventbus::taskstore
