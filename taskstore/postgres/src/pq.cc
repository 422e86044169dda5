#include "pq.h"

#include <poll.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

namespace eventbus::taskstore::pq {
namespace {

// PostgreSQL's binary timestamps count microseconds from 2000-01-01 00:00 UTC; +-infinity are
// the int64 extremes.
constexpr int64_t kPostgresEpochUnixMicros = 946684800LL * 1000000;
constexpr int64_t kInfinity = std::numeric_limits<int64_t>::max();
constexpr int64_t kMinusInfinity = std::numeric_limits<int64_t>::min();

void PutBigEndian(std::string& out, uint64_t value, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

uint64_t ReadBigEndian(const char* data, int bytes) {
  uint64_t value = 0;
  for (int i = 0; i < bytes; ++i) value = (value << 8) | static_cast<unsigned char>(data[i]);
  return value;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string PercentDecode(absl::string_view text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size() && HexValue(text[i + 1]) >= 0 &&
        HexValue(text[i + 2]) >= 0) {
      out.push_back(static_cast<char>(HexValue(text[i + 1]) * 16 + HexValue(text[i + 2])));
      i += 2;
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

// Where the password sits in a connection URI: [begin, end) of its raw (percent-encoded) text,
// in the userinfo (scheme://user:password@host) and in a `password=` query parameter.
std::vector<std::pair<size_t, size_t>> PasswordSpans(absl::string_view url) {
  std::vector<std::pair<size_t, size_t>> spans;
  const size_t scheme_end = url.find("://");
  if (scheme_end != absl::string_view::npos) {
    const size_t authority = scheme_end + 3;
    size_t authority_end = url.find_first_of("/?", authority);
    if (authority_end == absl::string_view::npos) authority_end = url.size();
    const size_t at = url.substr(0, authority_end).rfind('@');
    if (at != absl::string_view::npos && at >= authority) {
      const size_t colon = url.substr(0, at).find(':', authority);
      if (colon != absl::string_view::npos) spans.emplace_back(colon + 1, at);
    }
  }
  const size_t query = url.find('?');
  if (query != absl::string_view::npos) {
    size_t pos = query + 1;
    while (pos < url.size()) {
      size_t end = url.find('&', pos);
      if (end == absl::string_view::npos) end = url.size();
      if (absl::StartsWith(url.substr(pos, end - pos), "password=")) {
        spans.emplace_back(pos + 9, end);
      }
      pos = end + 1;
    }
  }
  return spans;
}

bool StartsWithClass(absl::string_view sqlstate, absl::string_view prefix) {
  return absl::StartsWith(sqlstate, prefix);
}

}  // namespace

Redactor::Redactor(absl::string_view url) {
  for (const auto& [begin, end] : PasswordSpans(url)) {
    if (end <= begin) continue;
    const std::string raw(url.substr(begin, end - begin));
    secrets_.push_back(raw);
    const std::string decoded = PercentDecode(raw);
    if (decoded != raw && !decoded.empty()) secrets_.push_back(decoded);
  }
}

std::string Redactor::operator()(absl::string_view message) const {
  std::string out(message);
  for (const std::string& secret : secrets_) {
    out = absl::StrReplaceAll(out, {{secret, "***"}});
  }
  return out;
}

std::string RedactUrl(absl::string_view url) {
  std::string out;
  size_t copied = 0;
  for (const auto& [begin, end] : PasswordSpans(url)) {
    absl::StrAppend(&out, url.substr(copied, begin - copied), "***");
    copied = end;
  }
  absl::StrAppend(&out, url.substr(copied));
  return out;
}

absl::Status ResultStatus(const PGresult* result, const PGconn* conn, absl::string_view what,
                          const Redactor& redact) {
  if (result != nullptr) {
    const ExecStatusType status = PQresultStatus(result);
    if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) return absl::OkStatus();
  }
  const char* sqlstate_field =
      result != nullptr ? PQresultErrorField(result, PG_DIAG_SQLSTATE) : nullptr;
  const std::string sqlstate = sqlstate_field != nullptr ? sqlstate_field : "";
  std::string detail;
  if (result != nullptr && PQresultErrorField(result, PG_DIAG_MESSAGE_PRIMARY) != nullptr) {
    detail = PQresultErrorField(result, PG_DIAG_MESSAGE_PRIMARY);
  } else if (result != nullptr && *PQresultErrorMessage(result) != '\0') {
    detail = PQresultErrorMessage(result);
  } else if (conn != nullptr) {
    detail = PQerrorMessage(conn);
  }
  detail = redact(absl::StripTrailingAsciiWhitespace(detail));
  const std::string message =
      absl::StrCat("postgres task store: ", what, ": ", detail.empty() ? "no result" : detail,
                   sqlstate.empty() ? "" : absl::StrCat(" (SQLSTATE ", sqlstate, ")"));
  // No SQLSTATE: libpq itself failed (the connection broke, or never was).
  if (sqlstate.empty()) {
    if (conn == nullptr || PQstatus(conn) != CONNECTION_OK || result == nullptr) {
      return absl::UnavailableError(message);
    }
    return absl::InternalError(message);
  }
  if (StartsWithClass(sqlstate, "08") || StartsWithClass(sqlstate, "57P") ||
      StartsWithClass(sqlstate, "53")) {
    return absl::UnavailableError(message);
  }
  if (sqlstate == "40001" || sqlstate == "40P01") return absl::AbortedError(message);
  if (sqlstate == "57014") return absl::DeadlineExceededError(message);
  if (sqlstate == "23505") return absl::AlreadyExistsError(message);
  if (StartsWithClass(sqlstate, "22") || StartsWithClass(sqlstate, "23")) {
    return absl::InvalidArgumentError(message);
  }
  if (sqlstate == "42P01" || sqlstate == "3F000" || sqlstate == "42883") {
    return absl::FailedPreconditionError(
        absl::StrCat(message, "; is the schema migrated (TaskStore::Migrate)?"));
  }
  return absl::InternalError(message);
}

// --- Params -------------------------------------------------------------------------------

Params& Params::Add(Oid type, std::string bytes) {
  types_.push_back(type);
  lengths_.push_back(static_cast<int>(bytes.size()));
  formats_.push_back(1);
  bytes_.push_back(std::move(bytes));
  null_.push_back(false);
  return *this;
}

Params& Params::Text(absl::string_view value) { return Add(kTextOid, std::string(value)); }

Params& Params::Int64(int64_t value) {
  std::string bytes;
  PutBigEndian(bytes, static_cast<uint64_t>(value), 8);
  return Add(kInt8Oid, std::move(bytes));
}

Params& Params::Int32(int32_t value) {
  std::string bytes;
  PutBigEndian(bytes, static_cast<uint32_t>(value), 4);
  return Add(kInt4Oid, std::move(bytes));
}

Params& Params::Bool(bool value) { return Add(kBoolOid, std::string(1, value ? 1 : 0)); }

Params& Params::Time(absl::Time value) {
  int64_t micros;
  if (value == absl::InfiniteFuture()) {
    micros = kInfinity;
  } else if (value == absl::InfinitePast()) {
    micros = kMinusInfinity;
  } else {
    // Whole microseconds, PostgreSQL's resolution (rounded down, as absl::ToUnixMicros does).
    micros = absl::ToUnixMicros(value) - kPostgresEpochUnixMicros;
  }
  std::string bytes;
  PutBigEndian(bytes, static_cast<uint64_t>(micros), 8);
  return Add(kTimestampTzOid, std::move(bytes));
}

Params& Params::Interval(absl::Duration value) {
  // microseconds, days, months: all in the first, so no calendar rule ever applies.
  std::string bytes;
  PutBigEndian(bytes, static_cast<uint64_t>(absl::ToInt64Microseconds(value)), 8);
  PutBigEndian(bytes, 0, 4);
  PutBigEndian(bytes, 0, 4);
  return Add(kIntervalOid, std::move(bytes));
}

Params& Params::TextArray(absl::Span<const std::string> values) {
  // ndim, has-nulls flag, element type, then per dimension (size, lower bound), then each
  // element as (length, bytes). An empty array has no dimensions.
  std::string bytes;
  PutBigEndian(bytes, values.empty() ? 0 : 1, 4);
  PutBigEndian(bytes, 0, 4);
  PutBigEndian(bytes, kTextOid, 4);
  if (!values.empty()) {
    PutBigEndian(bytes, values.size(), 4);
    PutBigEndian(bytes, 1, 4);
  }
  for (const std::string& value : values) {
    PutBigEndian(bytes, value.size(), 4);
    bytes.append(value);
  }
  return Add(kTextArrayOid, std::move(bytes));
}

Params& Params::Null(Oid type) {
  Add(type, "");
  null_.back() = true;
  return *this;
}

std::vector<const char*> Params::values() const {
  std::vector<const char*> out;
  out.reserve(bytes_.size());
  for (size_t i = 0; i < bytes_.size(); ++i) out.push_back(null_[i] ? nullptr : bytes_[i].data());
  return out;
}

// --- column readers --------------------------------------------------------------------------

std::string GetText(const PGresult* result, int row, int column) {
  if (PQgetisnull(result, row, column)) return "";
  return std::string(PQgetvalue(result, row, column),
                     static_cast<size_t>(PQgetlength(result, row, column)));
}

int64_t GetInt64(const PGresult* result, int row, int column) {
  if (PQgetisnull(result, row, column) || PQgetlength(result, row, column) != 8) return 0;
  return static_cast<int64_t>(ReadBigEndian(PQgetvalue(result, row, column), 8));
}

int32_t GetInt32(const PGresult* result, int row, int column) {
  if (PQgetisnull(result, row, column) || PQgetlength(result, row, column) != 4) return 0;
  return static_cast<int32_t>(ReadBigEndian(PQgetvalue(result, row, column), 4));
}

bool GetBool(const PGresult* result, int row, int column) {
  if (PQgetisnull(result, row, column) || PQgetlength(result, row, column) != 1) return false;
  return PQgetvalue(result, row, column)[0] != 0;
}

absl::Time GetTime(const PGresult* result, int row, int column) {
  if (PQgetisnull(result, row, column) || PQgetlength(result, row, column) != 8) {
    return absl::InfinitePast();
  }
  const int64_t micros = static_cast<int64_t>(ReadBigEndian(PQgetvalue(result, row, column), 8));
  if (micros == kInfinity) return absl::InfiniteFuture();
  if (micros == kMinusInfinity) return absl::InfinitePast();
  return absl::FromUnixMicros(micros) + absl::Microseconds(kPostgresEpochUnixMicros);
}

absl::Duration GetInterval(const PGresult* result, int row, int column) {
  if (PQgetisnull(result, row, column) || PQgetlength(result, row, column) != 16) {
    return absl::ZeroDuration();
  }
  const char* data = PQgetvalue(result, row, column);
  const auto micros = static_cast<int64_t>(ReadBigEndian(data, 8));
  const auto days = static_cast<int32_t>(ReadBigEndian(data + 8, 4));
  const auto months = static_cast<int32_t>(ReadBigEndian(data + 12, 4));
  // We write microseconds only; a value edited by hand may carry days or months, read as
  // 24 h and 30 days (PostgreSQL's own justify_* rules).
  return absl::Microseconds(micros) + absl::Hours(24) * days + absl::Hours(24 * 30) * months;
}

// --- Connection -----------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Connection>> Connection::Open(const ConnectSettings& settings,
                                                             const Redactor& redact) {
  const std::string timeout =
      absl::StrCat(std::max<int64_t>(1, absl::ToInt64Seconds(settings.connect_timeout)));
  // Later entries override earlier ones, and the URL is expanded where `dbname` stands: our
  // defaults come first so the URL's own settings win; the encoding comes last, because the
  // binary text we send and read is UTF-8.
  // TCP keepalives after 10 s idle, every 5 s, 3 probes: a server that vanished without closing
  // the connection (a partition, a dead host) fails the call within about 25 s instead of the
  // kernel's two hours.
  const char* keywords[] = {"connect_timeout",     "application_name", "keepalives_idle",
                            "keepalives_interval", "keepalives_count", "dbname",
                            "client_encoding",     nullptr};
  const char* values[] = {timeout.c_str(), "eventbus-taskstore", "10", "5", "3",
                          settings.url.c_str(), "UTF8", nullptr};
  ConnHandle conn(PQconnectdbParams(keywords, values, /*expand_dbname=*/1));
  if (conn == nullptr) return absl::ResourceExhaustedError("postgres task store: out of memory");
  if (PQstatus(conn.get()) != CONNECTION_OK) {
    return absl::UnavailableError(absl::StrCat(
        "postgres task store: cannot connect to ", RedactUrl(settings.url), ": ",
        redact(absl::StripTrailingAsciiWhitespace(PQerrorMessage(conn.get())))));
  }
  // libpq prints server notices (e.g. "relation already exists, skipping" from Migrate's
  // CREATE ... IF NOT EXISTS) to stderr by default; a library keeps quiet.
  PQsetNoticeProcessor(conn.get(), [](void*, const char*) {}, nullptr);
  return std::unique_ptr<Connection>(new Connection(std::move(conn), redact));
}

absl::Status Connection::Prepare(const Statement& statement, const Params& params,
                                 absl::string_view what) {
  if (prepared_.count(statement.name) > 0) return absl::OkStatus();
  ResultHandle result(
      PQprepare(conn_.get(), statement.name, statement.sql.c_str(), params.size(),
                params.types()));
  absl::Status status = ResultStatus(result.get(), conn_.get(), what, redact_);
  if (status.ok()) prepared_.insert(statement.name);
  return status;
}

absl::StatusOr<ResultHandle> Connection::Run(const Statement& statement, const Params& params,
                                             absl::string_view what) {
  if (absl::Status s = Prepare(statement, params, what); !s.ok()) return s;
  const std::vector<const char*> values = params.values();
  ResultHandle result(PQexecPrepared(conn_.get(), statement.name, params.size(), values.data(),
                                     params.lengths(), params.formats(), /*resultFormat=*/1));
  if (absl::Status s = ResultStatus(result.get(), conn_.get(), what, redact_); !s.ok()) return s;
  return result;
}

std::vector<absl::StatusOr<ResultHandle>> Connection::RunPipelined(
    const Statement& statement, absl::Span<const Params> params, absl::string_view what) {
  std::vector<absl::StatusOr<ResultHandle>> results;
  results.reserve(params.size());
  if (params.empty()) return results;
  PGconn* conn = conn_.get();
  auto libpq_error = [&]() -> absl::Status {
    return absl::UnavailableError(
        absl::StrCat("postgres task store: ", what, ": ",
                     redact_(absl::StripTrailingAsciiWhitespace(PQerrorMessage(conn)))));
  };
  absl::Status failed = Prepare(statement, params.front(), what);
  if (failed.ok() && PQenterPipelineMode(conn) != 1) failed = libpq_error();
  if (!failed.ok()) {
    while (results.size() < params.size()) results.push_back(failed);
    return results;
  }
  // Everything is sent before the first result is read. libpq reads replies into its buffer
  // whenever a send would block, so a long pipeline cannot deadlock on full socket buffers.
  size_t sent = 0;
  for (const Params& p : params) {
    const std::vector<const char*> values = p.values();
    if (PQsendQueryPrepared(conn, statement.name, p.size(), values.data(), p.lengths(),
                            p.formats(), /*resultFormat=*/1) != 1 ||
        PQpipelineSync(conn) != 1) {
      failed = libpq_error();
      break;
    }
    ++sent;
  }
  // Per statement: its result, a NULL ending it, then the sync's PGRES_PIPELINE_SYNC.
  for (size_t i = 0; i < sent && failed.ok(); ++i) {
    ResultHandle result(PQgetResult(conn));
    if (result == nullptr) {
      failed = libpq_error();
      break;
    }
    if (absl::Status status = ResultStatus(result.get(), conn, what, redact_); status.ok()) {
      results.push_back(std::move(result));
    } else {
      results.push_back(status);
    }
    while (ResultHandle rest{PQgetResult(conn)}) {
    }
    ResultHandle sync(PQgetResult(conn));
    if (sync == nullptr || PQresultStatus(sync.get()) != PGRES_PIPELINE_SYNC) {
      failed = PQstatus(conn) == CONNECTION_OK
                   ? absl::InternalError(absl::StrCat("postgres task store: ", what,
                                                      ": pipeline out of step"))
                   : libpq_error();
    }
  }
  // A connection that failed mid-pipeline stays in pipeline mode; Healthy() then drops it.
  if (failed.ok()) PQexitPipelineMode(conn);
  while (results.size() < params.size()) results.push_back(failed);
  return results;
}

absl::Status Connection::Command(const char* sql, absl::string_view what) {
  ResultHandle result(PQexec(conn_.get(), sql));
  return ResultStatus(result.get(), conn_.get(), what, redact_);
}

bool Connection::Healthy() {
  PGconn* conn = conn_.get();
  if (PQstatus(conn) != CONNECTION_OK || PQtransactionStatus(conn) != PQTRANS_IDLE ||
      PQpipelineStatus(conn) != PQ_PIPELINE_OFF) {
    return false;
  }
  // An idle connection receives nothing unless the server is going away (a FATAL
  // "terminating connection" notice, or EOF once it is gone).
  pollfd fd{PQsocket(conn), POLLIN, 0};
  return ::poll(&fd, 1, 0) == 0;
}

// --- Pool -----------------------------------------------------------------------------------

Pool::Pool(ConnectSettings settings, int size, absl::Duration acquire_timeout)
    : settings_(std::move(settings)),
      redact_(settings_.url),
      size_(std::max(1, size)),
      acquire_timeout_(acquire_timeout) {}

Pool::~Pool() {
  std::lock_guard lock(mu_);
  idle_.clear();
}

Pool::Lease::~Lease() {
  if (conn_ != nullptr) pool_->Release(std::move(conn_));
}

absl::StatusOr<Pool::Lease> Pool::Acquire() {
  std::unique_lock lock(mu_);
  const auto deadline = std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(acquire_timeout_);
  while (true) {
    while (!idle_.empty()) {
      std::unique_ptr<Connection> conn = std::move(idle_.back());
      idle_.pop_back();
      if (conn->Healthy()) return Lease(this, std::move(conn));
      --open_;  // dropped: a fresh one is opened below
    }
    if (open_ < size_) break;
    if (freed_.wait_until(lock, deadline) == std::cv_status::timeout && idle_.empty() &&
        open_ >= size_) {
      return absl::UnavailableError(absl::StrCat(
          "postgres task store: no free connection within ", absl::FormatDuration(acquire_timeout_),
          " (pool of ", size_, ")"));
    }
  }
  ++open_;
  lock.unlock();
  absl::StatusOr<std::unique_ptr<Connection>> opened = Connection::Open(settings_, redact_);
  if (!opened.ok()) {
    lock.lock();
    --open_;
    freed_.notify_one();
    return opened.status();
  }
  return Lease(this, std::move(opened).value());
}

void Pool::Release(std::unique_ptr<Connection> conn) {
  const bool healthy = conn->Healthy();
  if (!healthy) conn.reset();  // closes it outside the pool's lock
  std::lock_guard lock(mu_);
  if (healthy) {
    idle_.push_back(std::move(conn));
  } else {
    --open_;
  }
  freed_.notify_one();
}

}  // namespace eventbus::taskstore::pq
