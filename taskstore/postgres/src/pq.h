#pragma once
// libpq, wrapped once: RAII owners for its handles, the one place where libpq and SQLSTATE
// errors become absl::Status, binary-format parameters and column readers, a connection with
// per-connection prepared statements and pipelines, and a small thread-safe pool.
//
// Everything travels in PostgreSQL's binary format, so timestamps keep their exact microseconds
// (and +-infinity, which absl::InfiniteFuture/InfinitePast map to) and no value is ever spliced
// into SQL text.

#include <libpq-fe.h>

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace eventbus::taskstore::pq {

struct ConnDeleter {
  void operator()(PGconn* conn) const { PQfinish(conn); }
};
struct ResultDeleter {
  void operator()(PGresult* result) const { PQclear(result); }
};
using ConnHandle = std::unique_ptr<PGconn, ConnDeleter>;
using ResultHandle = std::unique_ptr<PGresult, ResultDeleter>;

// Type OIDs of the parameters we send (pg_type.h is not part of libpq-dev).
inline constexpr Oid kBoolOid = 16;
inline constexpr Oid kInt8Oid = 20;
inline constexpr Oid kInt4Oid = 23;
inline constexpr Oid kTextOid = 25;
inline constexpr Oid kTextArrayOid = 1009;
inline constexpr Oid kTimestampTzOid = 1184;
inline constexpr Oid kIntervalOid = 1186;

// The secrets of a connection URL (its password, raw and percent-decoded), cut out of every
// message that may quote the URL (libpq's parse errors do).
class Redactor {
 public:
  explicit Redactor(absl::string_view url);
  std::string operator()(absl::string_view message) const;

 private:
  std::vector<std::string> secrets_;
};

// The password of `url` (userinfo or ?password=) replaced by "***".
std::string RedactUrl(absl::string_view url);

// The status of a finished command: OK for PGRES_COMMAND_OK / PGRES_TUPLES_OK, else the error
// mapped by SQLSTATE: Unavailable for connection and server-shutdown failures (08xxx, 57P0x,
// 53xxx), Aborted for serialization failures and deadlocks (40001, 40P01: retry the
// transaction), DeadlineExceeded for a cancelled statement (57014), AlreadyExists for a
// unique violation (23505), InvalidArgument for bad data (22xxx, other 23xxx),
// FailedPrecondition for a missing table or schema (42P01, 3F000: run Migrate), Internal
// otherwise. `what` names the operation; the SQLSTATE is kept in the message.
absl::Status ResultStatus(const PGresult* result, const PGconn* conn, absl::string_view what,
                          const Redactor& redact);

// Binary-format parameters of one statement. Unset optionals are SQL NULL.
class Params {
 public:
  Params& Text(absl::string_view value);
  Params& Int64(int64_t value);
  Params& Int32(int32_t value);
  Params& Bool(bool value);
  Params& Time(absl::Time value);
  Params& Interval(absl::Duration value);
  Params& TextArray(absl::Span<const std::string> values);
  Params& Null(Oid type);

  Params& OptText(const std::optional<std::string>& value) {
    return value ? Text(*value) : Null(kTextOid);
  }
  Params& OptInt32(const std::optional<int>& value) {
    return value ? Int32(*value) : Null(kInt4Oid);
  }
  Params& OptBool(const std::optional<bool>& value) {
    return value ? Bool(*value) : Null(kBoolOid);
  }
  Params& OptTime(const std::optional<absl::Time>& value) {
    return value ? Time(*value) : Null(kTimestampTzOid);
  }

  int size() const { return static_cast<int>(types_.size()); }
  const Oid* types() const { return types_.data(); }
  // Valid while this object lives unchanged.
  std::vector<const char*> values() const;
  const int* lengths() const { return lengths_.data(); }
  const int* formats() const { return formats_.data(); }

 private:
  Params& Add(Oid type, std::string bytes);

  std::vector<Oid> types_;
  std::vector<std::string> bytes_;
  std::vector<bool> null_;
  std::vector<int> lengths_;
  std::vector<int> formats_;
};

// Readers of one binary-format result column (callers know the column types: the SQL names
// them). NULL reads as empty / zero / false / InfinitePast.
std::string GetText(const PGresult* result, int row, int column);
int64_t GetInt64(const PGresult* result, int row, int column);
int32_t GetInt32(const PGresult* result, int row, int column);
bool GetBool(const PGresult* result, int row, int column);
absl::Time GetTime(const PGresult* result, int row, int column);
absl::Duration GetInterval(const PGresult* result, int row, int column);

// A named statement, prepared on each connection the first time it runs there.
struct Statement {
  const char* name;
  std::string sql;
};

struct ConnectSettings {
  std::string url;  // a libpq connection URI
  absl::Duration connect_timeout = absl::Seconds(10);
};

class Connection {
 public:
  // Unavailable (with libpq's message, redacted) when the server cannot be reached.
  static absl::StatusOr<std::unique_ptr<Connection>> Open(const ConnectSettings& settings,
                                                          const Redactor& redact);

  // Runs `statement` with `params` (binary results). `what` names the operation in errors.
  absl::StatusOr<ResultHandle> Run(const Statement& statement, const Params& params,
                                   absl::string_view what);
  // Several runs of one statement in one round trip (libpq pipeline mode, a sync after each,
  // so each is its own transaction and fails alone). Results in order.
  std::vector<absl::StatusOr<ResultHandle>> RunPipelined(const Statement& statement,
                                                         absl::Span<const Params> params,
                                                         absl::string_view what);
  // A parameterless command in the simple protocol (BEGIN, COMMIT, DDL; several statements
  // allowed).
  absl::Status Command(const char* sql, absl::string_view what);

  // Usable for another call: connected, no transaction open, nothing unexpected arrived
  // while idle (a server that shut down or restarted sends a notice or closes the socket).
  bool Healthy();

 private:
  Connection(ConnHandle conn, const Redactor& redact) : conn_(std::move(conn)), redact_(redact) {}
  absl::Status Prepare(const Statement& statement, const Params& params, absl::string_view what);

  ConnHandle conn_;
  const Redactor& redact_;
  std::set<std::string> prepared_;
};

// Up to `size` connections, opened lazily and reused; a broken one is dropped (the next call
// opens a fresh one). Thread-safe.
class Pool {
 public:
  Pool(ConnectSettings settings, int size, absl::Duration acquire_timeout);
  ~Pool();

  class Lease {
   public:
    Lease(Pool* pool, std::unique_ptr<Connection> conn) : pool_(pool), conn_(std::move(conn)) {}
    Lease(Lease&&) = default;
    Lease& operator=(Lease&&) = default;
    ~Lease();
    Connection* operator->() const { return conn_.get(); }
    Connection& operator*() const { return *conn_; }

   private:
    Pool* pool_;
    std::unique_ptr<Connection> conn_;
  };

  // Unavailable when no connection frees up within the acquire timeout or a new one cannot
  // be opened.
  absl::StatusOr<Lease> Acquire();
  const Redactor& redactor() const { return redact_; }
  const ConnectSettings& settings() const { return settings_; }

 private:
  void Release(std::unique_ptr<Connection> conn);

  const ConnectSettings settings_;
  const Redactor redact_;
  const int size_;
  const absl::Duration acquire_timeout_;
  std::mutex mu_;
  std::condition_variable freed_;
  std::vector<std::unique_ptr<Connection>> idle_;
  int open_ = 0;  // idle + leased + being opened
};

}  // namespace eventbus::taskstore::pq
