#pragma once
// One real PostgreSQL server per test binary (tests/harness PostgresServer), started before the
// first test and stopped after the last, and a fresh schema per store so tests never see each
// other's rows.

#include <string>

#include "eventbus/harness/postgres_server.h"

namespace eventbus::taskstore::pgtest {

// The server the test environment started (aborts the binary if it could not start: a
// missing server is a failure, never a skip).
harness::PostgresServer& Server();

// A new, empty schema on Server(), and the URL whose search_path selects it.
std::string FreshSchemaUrl();

}  // namespace eventbus::taskstore::pgtest
