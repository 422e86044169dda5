#include "postgres_test_server.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace eventbus::taskstore::pgtest {
namespace {

harness::PostgresServer* server = nullptr;

class PostgresServerEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    auto started = harness::PostgresServer::Start();
    if (!started.ok()) {
      std::fprintf(stderr, "cannot start PostgreSQL: %s\n", started.status().ToString().c_str());
      std::abort();
    }
    server = started->release();
  }
  void TearDown() override {
    delete server;
    server = nullptr;
  }
};

[[maybe_unused]] ::testing::Environment* const environment =
    ::testing::AddGlobalTestEnvironment(new PostgresServerEnvironment);

}  // namespace

harness::PostgresServer& Server() {
  if (server == nullptr) std::abort();
  return *server;
}

std::string FreshSchemaUrl() {
  static std::atomic<int> next{0};
  const std::string schema = absl::StrCat("test_", next.fetch_add(1));
  auto created = Server().Psql("", absl::StrCat("CREATE SCHEMA ", schema));
  if (!created.ok()) {
    std::fprintf(stderr, "cannot create schema %s: %s\n", schema.c_str(),
                 created.status().ToString().c_str());
    std::abort();
  }
  // options=-csearch_path=<schema>, percent-encoded: the store's tables go there.
  return absl::StrCat(Server().url(), "?options=-csearch_path%3D", schema);
}

}  // namespace eventbus::taskstore::pgtest
