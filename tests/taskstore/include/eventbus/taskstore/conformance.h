#pragma once
// The conformance suite every TaskStore must pass, as a library (like tests/conformance for
// event streams). A store instantiates it with a factory:
//
//   EVENTBUS_INSTANTIATE_TASK_STORE_CONFORMANCE(Redis,
//       eventbus::taskstore::conformance::TaskStoreUnderTest{
//           .name = "redis", .make_store = [] { return MakeFreshRedisTaskStore(); }});
//
// The suite calls Migrate() on every store it makes. Time is only what it passes as `now`
// (whole milliseconds), so no case sleeps. JSON fields are compared as text, except `history`,
// which is compared with whitespace outside strings removed (a store may keep it as jsonb).

#include <functional>
#include <memory>
#include <ostream>
#include <string>

#include "absl/status/statusor.h"
#include "eventbus/taskstore/task_store.h"
#include "gtest/gtest.h"

namespace eventbus::taskstore::conformance {

struct TaskStoreUnderTest {
  // Test-name suffix: letters, digits and '_' only.
  std::string name;
  // A fresh, empty store (its own instance, key prefix, schema or database).
  std::function<absl::StatusOr<std::unique_ptr<TaskStore>>()> make_store;
  // Optional: another handle with its own connections on the same data as `store` (one that
  // make_store returned), as a second executor process would open it. The concurrency cases
  // give each thread its own handle when this is set, and share `store` otherwise.
  std::function<absl::StatusOr<std::unique_ptr<TaskStore>>(TaskStore& store)> open_again;
  // Threads of the concurrency cases.
  int threads = 8;
};

// gtest prints a failing case's parameter: the name, not the bytes.
inline void PrintTo(const TaskStoreUnderTest& store, std::ostream* os) { *os << store.name; }

class TaskStoreConformance : public testing::TestWithParam<TaskStoreUnderTest> {};

std::string TestNameOf(const testing::TestParamInfo<TaskStoreUnderTest>& info);

// Referenced by the instantiation macro so the linker keeps the suite's test definitions when
// the suite comes from a static library.
int LinkTaskStoreConformanceSuite();

}  // namespace eventbus::taskstore::conformance

// Use at namespace scope.
#define EVENTBUS_INSTANTIATE_TASK_STORE_CONFORMANCE(prefix, ...)                          \
  [[maybe_unused]] static const int eventbus_task_store_conformance_anchor_##prefix =     \
      ::eventbus::taskstore::conformance::LinkTaskStoreConformanceSuite();                \
  using ::eventbus::taskstore::conformance::TaskStoreConformance;                         \
  INSTANTIATE_TEST_SUITE_P(prefix, TaskStoreConformance, ::testing::Values(__VA_ARGS__), \
                           ::eventbus::taskstore::conformance::TestNameOf)
