#include "eventbus/executor/http_client.h"

#include <curl/curl.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <mutex>
#include <utility>

#include "absl/base/call_once.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "eventbus/status_macros.h"

namespace eventbus::executor {
namespace {

// --- RAII owners for libcurl handles ------------------------------------------------------

struct EasyDeleter {
  void operator()(CURL* handle) const { curl_easy_cleanup(handle); }
};
using EasyHandle = std::unique_ptr<CURL, EasyDeleter>;

struct SlistDeleter {
  void operator()(curl_slist* list) const { curl_slist_free_all(list); }
};
using HeaderList = std::unique_ptr<curl_slist, SlistDeleter>;

struct UrlDeleter {
  void operator()(CURLU* url) const { curl_url_cleanup(url); }
};
using UrlHandle = std::unique_ptr<CURLU, UrlDeleter>;

struct CurlStringDeleter {
  void operator()(char* s) const { curl_free(s); }
};
using CurlString = std::unique_ptr<char, CurlStringDeleter>;

// curl_global_init is not guaranteed thread-safe on every libcurl build: do it once, first.
void EnsureCurlGlobalInit() {
  static absl::once_flag once;
  absl::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// --- URLs -----------------------------------------------------------------------------------

struct ParsedUrl {
  std::string scheme;  // lower case
  std::string host;    // lower case
  std::string port;    // explicit or the scheme's default
  std::string path;
};

absl::StatusOr<ParsedUrl> ParseUrl(absl::string_view url) {
  if (url.empty()) return absl::InvalidArgumentError("HTTP request without a URL");
  if (url.find_first_of(absl::string_view("\0\r\n ", 4)) != absl::string_view::npos) {
    return absl::InvalidArgumentError("URL contains a space, CR, LF or NUL");
  }
  UrlHandle handle(curl_url());
  if (handle == nullptr) return absl::ResourceExhaustedError("curl_url: out of memory");
  const std::string url_string(url);
  if (CURLUcode rc = curl_url_set(handle.get(), CURLUPART_URL, url_string.c_str(), 0);
      rc != CURLUE_OK) {
    // Only the error, never the URL itself: its query may carry a token.
    return absl::InvalidArgumentError(
        absl::StrCat("malformed URL: ", curl_url_strerror(rc)));
  }
  auto part = [&](CURLUPart which, unsigned flags) -> std::string {
    char* value = nullptr;
    if (curl_url_get(handle.get(), which, &value, flags) != CURLUE_OK || value == nullptr) {
      return "";
    }
    CurlString owned(value);
    return std::string(owned.get());
  };
  ParsedUrl parsed;
  parsed.scheme = absl::AsciiStrToLower(part(CURLUPART_SCHEME, 0));
  if (parsed.scheme != "http" && parsed.scheme != "https") {
    return absl::InvalidArgumentError(
        absl::StrCat("URL scheme '", parsed.scheme, "' is not supported (http or https only)"));
  }
  parsed.host = absl::AsciiStrToLower(part(CURLUPART_HOST, 0));
  if (parsed.host.empty()) return absl::InvalidArgumentError("URL has no host");
  parsed.port = part(CURLUPART_PORT, CURLU_DEFAULT_PORT);
  parsed.path = part(CURLUPART_PATH, 0);
  return parsed;
}

// For error messages: scheme, host, port and path; user info and query (credentials,
// tokens) are left out.
std::string RedactedUrl(absl::string_view url) {
  absl::StatusOr<ParsedUrl> parsed = ParseUrl(url);
  if (!parsed.ok()) return "<malformed URL>";
  return absl::StrCat(parsed->scheme, "://", parsed->host, ":", parsed->port, parsed->path);
}

// --- The one place where libcurl errors become statuses -----------------------------------

struct TransferState {
  const HttpRequest* request = nullptr;
  size_t max_response_bytes = 0;
  HttpResponse* response = nullptr;
  bool too_large = false;
  bool cancelled = false;
};

absl::Status ToStatus(CURLcode code, const char* error_buffer, const TransferState& state) {
  const std::string where = absl::StrCat("HTTP ", HttpMethodName(state.request->method), " ",
                                         RedactedUrl(state.request->url));
  const std::string detail =
      absl::StrCat(curl_easy_strerror(code), " (curl code ", static_cast<int>(code), ")",
                   error_buffer[0] != '\0' ? absl::StrCat(": ", error_buffer) : "");
  const std::string message = absl::StrCat(where, ": ", detail);
  switch (code) {
    case CURLE_OK:
      return absl::OkStatus();
    case CURLE_URL_MALFORMAT:
    case CURLE_BAD_FUNCTION_ARGUMENT:
    case CURLE_NOT_BUILT_IN:
      return absl::InvalidArgumentError(message);
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_HTTP3:
    case CURLE_QUIC_CONNECT_ERROR:
    case CURLE_PROXY:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_BAD_CONTENT_ENCODING:
    // The URL's scheme was checked before curl saw it: this is the server answering in
    // HTTP/0.9 (garbage) or redirecting to another protocol.
    case CURLE_UNSUPPORTED_PROTOCOL:
      return absl::UnavailableError(message);
    case CURLE_OPERATION_TIMEDOUT:
      return absl::DeadlineExceededError(message);
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_CRL_BADFILE:
      return absl::FailedPreconditionError(
          absl::StrCat(where, ": TLS verification failed: ", detail));
    case CURLE_TOO_MANY_REDIRECTS:
      return absl::FailedPreconditionError(message);
    case CURLE_FILESIZE_EXCEEDED:
      return absl::ResourceExhaustedError(absl::StrCat(
          where, ": response body larger than the limit of ", state.max_response_bytes,
          " bytes"));
    case CURLE_WRITE_ERROR:
      if (state.too_large) {
        return absl::ResourceExhaustedError(absl::StrCat(
            where, ": response body larger than the limit of ", state.max_response_bytes,
            " bytes"));
      }
      return absl::InternalError(message);
    case CURLE_ABORTED_BY_CALLBACK:
      if (state.cancelled) return absl::CancelledError(absl::StrCat(where, ": cancelled"));
      return absl::InternalError(message);
    default:
      return absl::InternalError(message);
  }
}

// --- libcurl callbacks ----------------------------------------------------------------------

size_t OnBody(char* data, size_t size, size_t count, void* user) {
  auto* state = static_cast<TransferState*>(user);
  const size_t n = size * count;
  std::string& body = state->response->body;
  if (body.size() + n > state->max_response_bytes) {
    state->too_large = true;
    return 0;  // anything but n aborts the transfer with CURLE_WRITE_ERROR
  }
  body.append(data, n);
  return n;
}

size_t OnHeader(char* data, size_t size, size_t count, void* user) {
  auto* state = static_cast<TransferState*>(user);
  const size_t n = size * count;
  absl::string_view line(data, n);
  // A new status line starts a new response (redirect, 100 Continue): keep only the last.
  if (absl::StartsWith(line, "HTTP/")) {
    state->response->headers.clear();
    return n;
  }
  line = absl::StripAsciiWhitespace(line);
  const size_t colon = line.find(':');
  if (line.empty() || colon == absl::string_view::npos || colon == 0) return n;
  state->response->headers.emplace(
      std::string(absl::StripAsciiWhitespace(line.substr(0, colon))),
      std::string(absl::StripAsciiWhitespace(line.substr(colon + 1))));
  return n;
}

int OnProgress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* state = static_cast<TransferState*>(user);
  if (state->request->cancelled && state->request->cancelled()) {
    state->cancelled = true;
    return 1;  // non-zero aborts with CURLE_ABORTED_BY_CALLBACK
  }
  return 0;
}

// --- Request validation ---------------------------------------------------------------------

bool IsTokenChar(char c) {
  // RFC 9110 tchar.
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) ||
         absl::string_view("!#$%&'*+-.^_`|~").find(c) != absl::string_view::npos;
}

absl::Status ValidateHeader(const std::string& name, const std::string& value) {
  if (name.empty() || !std::all_of(name.begin(), name.end(), IsTokenChar)) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid HTTP header name '", absl::CEscape(name), "'"));
  }
  if (value.find_first_of(std::string("\0\r\n", 3)) != std::string::npos) {
    // The value may be a secret: name the header only.
    return absl::InvalidArgumentError(
        absl::StrCat("HTTP header '", name, "' has a value with CR, LF or NUL"));
  }
  return absl::OkStatus();
}

absl::StatusOr<long> ToCurlMillis(absl::Duration d, absl::string_view what) {
  if (d == absl::InfiniteDuration()) return 0L;  // libcurl: 0 = no limit
  if (d <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("HTTP request ", what, " must be > 0, got ",
                                                   absl::FormatDuration(d)));
  }
  const int64_t ms = std::max<int64_t>(1, absl::ToInt64Milliseconds(d));
  return static_cast<long>(std::min<int64_t>(ms, std::numeric_limits<long>::max()));
}

}  // namespace

// --- Public helpers -------------------------------------------------------------------------

absl::string_view HttpMethodName(HttpMethod method) {
  switch (method) {
    case HttpMethod::kGet:
      return "GET";
    case HttpMethod::kPost:
      return "POST";
    case HttpMethod::kPut:
      return "PUT";
    case HttpMethod::kPatch:
      return "PATCH";
    case HttpMethod::kDelete:
      return "DELETE";
  }
  return "UNKNOWN";
}

absl::StatusOr<HttpMethod> ParseHttpMethod(absl::string_view name) {
  for (HttpMethod m : {HttpMethod::kGet, HttpMethod::kPost, HttpMethod::kPut, HttpMethod::kPatch,
                       HttpMethod::kDelete}) {
    if (absl::EqualsIgnoreCase(name, HttpMethodName(m))) return m;
  }
  return absl::InvalidArgumentError(absl::StrCat("unsupported HTTP method '",
                                                 absl::CEscape(name),
                                                 "' (supported: GET, POST, PUT, PATCH, DELETE)"));
}

bool CaseInsensitiveLess::operator()(absl::string_view a, absl::string_view b) const {
  const size_t n = std::min(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    const char ca = absl::ascii_tolower(static_cast<unsigned char>(a[i]));
    const char cb = absl::ascii_tolower(static_cast<unsigned char>(b[i]));
    if (ca != cb) return static_cast<unsigned char>(ca) < static_cast<unsigned char>(cb);
  }
  return a.size() < b.size();
}

std::optional<std::string> HttpResponse::Header(absl::string_view name) const {
  auto it = headers.find(name);
  if (it == headers.end()) return std::nullopt;
  return it->second;
}

HttpOutcome ClassifyHttpStatus(int status) {
  if (status >= 200 && status < 300) return HttpOutcome::kSuccess;
  if (status >= 500 && status < 600) return HttpOutcome::kTransient;
  if (status == 408 || status == 429) return HttpOutcome::kTransient;
  return HttpOutcome::kPermanent;
}

bool IsTransientHttpError(const absl::Status& status) {
  return absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status);
}

absl::StatusOr<std::string> HttpHostKey(absl::string_view url) {
  EnsureCurlGlobalInit();
  EVENTBUS_ASSIGN_OR_RETURN(ParsedUrl parsed, ParseUrl(url));
  return absl::StrCat(parsed.scheme, "://", parsed.host, ":", parsed.port);
}

// --- HttpClient -----------------------------------------------------------------------------

// Idle easy handles; each keeps its own connection cache, so reuse means keep-alive.
class HttpClient::HandlePool {
 public:
  explicit HandlePool(size_t max_idle) : max_idle_(max_idle) {}

  EasyHandle Take() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!idle_.empty()) {
        EasyHandle handle = std::move(idle_.back());
        idle_.pop_back();
        return handle;
      }
    }
    return EasyHandle(curl_easy_init());
  }

  void Give(EasyHandle handle) {
    // Forgets every option (pointers into the finished request included); keeps connections.
    curl_easy_reset(handle.get());
    std::lock_guard<std::mutex> lock(mu_);
    if (idle_.size() < max_idle_) idle_.push_back(std::move(handle));
  }

 private:
  const size_t max_idle_;
  std::mutex mu_;  // guards idle_
  std::vector<EasyHandle> idle_;
};

absl::StatusOr<std::unique_ptr<HttpClient>> HttpClient::Create(HttpClientOptions options) {
  if (options.max_response_bytes == 0) {
    return absl::InvalidArgumentError("HTTP client max_response_bytes must be > 0");
  }
  EnsureCurlGlobalInit();
  return std::unique_ptr<HttpClient>(new HttpClient(std::move(options)));
}

HttpClient::HttpClient(HttpClientOptions options)
    : options_(std::move(options)), pool_(std::make_unique<HandlePool>(options_.max_idle_handles)) {}

HttpClient::~HttpClient() = default;

absl::StatusOr<HttpResponse> HttpClient::Send(const HttpRequest& request) {
  EVENTBUS_RETURN_IF_ERROR(ParseUrl(request.url).status());
  if (request.method == HttpMethod::kGet && !request.body.empty()) {
    return absl::InvalidArgumentError("HTTP GET request with a body");
  }
  if (request.max_redirects < 0) {
    return absl::InvalidArgumentError("HTTP request max_redirects must be >= 0");
  }
  EVENTBUS_ASSIGN_OR_RETURN(const long timeout_ms, ToCurlMillis(request.timeout, "timeout"));
  EVENTBUS_ASSIGN_OR_RETURN(const long connect_timeout_ms,
                            ToCurlMillis(request.connect_timeout, "connect_timeout"));

  HeaderList headers;
  bool has_expect = false;
  auto append_header = [&headers](const std::string& line) -> absl::Status {
    curl_slist* appended = curl_slist_append(headers.get(), line.c_str());
    if (appended == nullptr) return absl::ResourceExhaustedError("curl_slist_append failed");
    headers.release();  // curl_slist_append returned the (possibly new) head
    headers.reset(appended);
    return absl::OkStatus();
  };
  for (const auto& [name, value] : request.headers) {
    EVENTBUS_RETURN_IF_ERROR(ValidateHeader(name, value));
    if (absl::EqualsIgnoreCase(name, "expect")) has_expect = true;
    // libcurl reads "Name:" as "remove this header"; "Name;" sends it with an empty value.
    EVENTBUS_RETURN_IF_ERROR(
        append_header(value.empty() ? absl::StrCat(name, ";") : absl::StrCat(name, ": ", value)));
  }
  // Without this, curl waits up to a second for "100 Continue" before sending a large body.
  if (!has_expect) EVENTBUS_RETURN_IF_ERROR(append_header("Expect:"));

  if (request.cancelled && request.cancelled()) {
    return absl::CancelledError(absl::StrCat("HTTP ", HttpMethodName(request.method), " ",
                                             RedactedUrl(request.url), ": cancelled"));
  }

  EasyHandle handle = pool_->Take();
  if (handle == nullptr) return absl::ResourceExhaustedError("curl_easy_init failed");
  CURL* curl = handle.get();

  HttpResponse response;
  TransferState state;
  state.request = &request;
  state.max_response_bytes = options_.max_response_bytes;
  state.response = &response;
  char error_buffer[CURL_ERROR_SIZE];
  error_buffer[0] = '\0';

  // Options that cannot fail on a supported libcurl; a failure shows up in curl_easy_perform.
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error_buffer);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);  // no SIGALRM-based DNS timeouts in threads
  curl_easy_setopt(curl, CURLOPT_URL, request.url.c_str());
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, request.follow_redirects ? 1L : 0L);
  curl_easy_setopt(curl, CURLOPT_MAXREDIRS, static_cast<long>(request.max_redirects));
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, connect_timeout_ms);
  curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 2L);
  if (!options_.ca_file.empty()) curl_easy_setopt(curl, CURLOPT_CAINFO, options_.ca_file.c_str());
  curl_easy_setopt(curl, CURLOPT_USERAGENT, options_.user_agent.c_str());
  curl_easy_setopt(curl, CURLOPT_ACCEPT_ENCODING, "");  // every encoding this libcurl decodes
  curl_easy_setopt(curl, CURLOPT_MAXFILESIZE_LARGE,
                   static_cast<curl_off_t>(options_.max_response_bytes));
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers.get());
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &OnBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &state);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, &OnHeader);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &state);
  curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, &OnProgress);
  curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &state);

  const bool send_body = request.method != HttpMethod::kGet &&
                         (request.method != HttpMethod::kDelete || !request.body.empty());
  switch (request.method) {
    case HttpMethod::kGet:
      curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);
      break;
    case HttpMethod::kPost:
      curl_easy_setopt(curl, CURLOPT_POST, 1L);
      break;
    case HttpMethod::kPut:
    case HttpMethod::kPatch:
    case HttpMethod::kDelete: {
      // The method string is a literal with static storage: safe to hand to curl.
      static constexpr const char* kNames[] = {"PUT", "PATCH", "DELETE"};
      const int index = request.method == HttpMethod::kPut     ? 0
                        : request.method == HttpMethod::kPatch ? 1
                                                               : 2;
      curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, kNames[index]);
      break;
    }
  }
  if (send_body) {
    // Size first: POSTFIELDS without a size would stop at the first NUL byte.
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE,
                     static_cast<curl_off_t>(request.body.size()));
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, request.body.data());
  }

  const CURLcode code = curl_easy_perform(curl);
  absl::Status status = ToStatus(code, error_buffer, state);
  if (status.ok()) {
    long http_status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &http_status);
    curl_off_t total_us = 0;
    curl_easy_getinfo(curl, CURLINFO_TOTAL_TIME_T, &total_us);
    response.status = static_cast<int>(http_status);
    response.elapsed = absl::Microseconds(total_us);
  }
  pool_->Give(std::move(handle));
  if (!status.ok()) return status;
  return response;
}

}  // namespace eventbus::executor
