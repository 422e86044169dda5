// The task store conformance suite against a real PostgreSQL server that this binary starts
// (initdb + postgres on a free loopback port), each store in a fresh schema.
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "eventbus/taskstore/conformance.h"
#include "eventbus/taskstore/postgres_task_store.h"
#include "postgres_test_server.h"

namespace {

using eventbus::taskstore::OpenPostgresTaskStore;
using eventbus::taskstore::TaskStore;

// Which URL each store was opened on, so open_again can open a second pool on its schema.
std::mutex urls_mu;
std::map<const TaskStore*, std::string> urls;

absl::StatusOr<std::unique_ptr<TaskStore>> OpenRemembered(const std::string& url) {
  absl::StatusOr<std::unique_ptr<TaskStore>> store = OpenPostgresTaskStore(url);
  if (store.ok()) {
    std::lock_guard lock(urls_mu);
    urls[store->get()] = url;
  }
  return store;
}

eventbus::taskstore::conformance::TaskStoreUnderTest PostgresOnRealServer() {
  eventbus::taskstore::conformance::TaskStoreUnderTest under_test;
  under_test.name = "postgres";
  under_test.make_store = [] {
    return OpenRemembered(eventbus::taskstore::pgtest::FreshSchemaUrl());
  };
  // Each thread of the concurrency cases gets its own pool, as separate executors would.
  under_test.open_again = [](TaskStore& store) -> absl::StatusOr<std::unique_ptr<TaskStore>> {
    std::string url;
    {
      std::lock_guard lock(urls_mu);
      auto it = urls.find(&store);
      if (it == urls.end()) return absl::NotFoundError("open_again: not a store make_store made");
      url = it->second;
    }
    return OpenRemembered(url);
  };
  return under_test;
}

EVENTBUS_INSTANTIATE_TASK_STORE_CONFORMANCE(Postgres, PostgresOnRealServer());

}  // namespace
