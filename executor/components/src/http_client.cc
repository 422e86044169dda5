#include "eventbus/executor/http_client.h"

#include <curl/curl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstring>
#include <future>
#include <limits>
#include <thread>
#include <utility>

#include "absl/base/call_once.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "eventbus/status_macros.h"

namespace eventbus::executor {
namespace {

namespace asio = boost::asio;
using SteadyClock = std::chrono::steady_clock;

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

struct MultiDeleter {
  void operator()(CURLM* multi) const { curl_multi_cleanup(multi); }
};
using MultiHandle = std::unique_ptr<CURLM, MultiDeleter>;

// curl_global_init is not guaranteed thread-safe on every libcurl build: do it once, first.
void EnsureCurlGlobalInit() {
  static absl::once_flag once;
  absl::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// --- URLs -----------------------------------------------------------------------------------

struct ParsedUrl {
  std::string scheme;  // lower case
  std::string host;    // lower case; IPv6 literals in brackets
  std::string port;    // explicit or the scheme's default
  std::string url;     // normalised by curl

  // "scheme://host:port": what messages, the circuit breaker and cross-host checks name.
  std::string HostKey() const { return absl::StrCat(scheme, "://", host, ":", port); }
};

std::string UrlPart(CURLU* handle, CURLUPart which, unsigned flags) {
  char* value = nullptr;
  if (curl_url_get(handle, which, &value, flags) != CURLUE_OK || value == nullptr) return "";
  CurlString owned(value);
  return std::string(owned.get());
}

absl::StatusOr<ParsedUrl> PartsOf(CURLU* handle) {
  ParsedUrl parsed;
  parsed.scheme = absl::AsciiStrToLower(UrlPart(handle, CURLUPART_SCHEME, 0));
  parsed.host = absl::AsciiStrToLower(UrlPart(handle, CURLUPART_HOST, 0));
  parsed.port = UrlPart(handle, CURLUPART_PORT, CURLU_DEFAULT_PORT);
  parsed.url = UrlPart(handle, CURLUPART_URL, 0);
  if (parsed.scheme != "http" && parsed.scheme != "https") {
    return absl::InvalidArgumentError(
        absl::StrCat("URL scheme '", parsed.scheme, "' is not supported (http or https only)"));
  }
  if (parsed.host.empty()) return absl::InvalidArgumentError("URL has no host");
  return parsed;
}

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
    // Only the error, never the URL itself: its path or query may carry a token.
    return absl::InvalidArgumentError(absl::StrCat("malformed URL: ", curl_url_strerror(rc)));
  }
  return PartsOf(handle.get());
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

absl::Status ValidateTimeout(absl::Duration d, absl::string_view what) {
  if (d <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("HTTP request ", what, " must be > 0, got ",
                                                   absl::FormatDuration(d)));
  }
  return absl::OkStatus();
}

// libcurl's millisecond options: 0 = no limit, so a limit is at least 1 ms.
long CurlMillis(SteadyClock::duration d) {
  const int64_t ms = std::max<int64_t>(
      1, std::chrono::ceil<std::chrono::milliseconds>(d).count());
  return static_cast<long>(std::min<int64_t>(ms, std::numeric_limits<long>::max()));
}

bool IsRedirect(int status) {
  return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

// What may follow a redirect to another scheme://host:port: nothing that authenticates, and
// no custom header (it may be a token in disguise).
bool KeptAcrossHosts(absl::string_view name) {
  for (absl::string_view kept : {"accept", "accept-language", "content-type", "content-language"}) {
    if (absl::EqualsIgnoreCase(name, kept)) return true;
  }
  return false;
}

// --- One call -------------------------------------------------------------------------------

class CurlLoop;

// One SendAsync call: lives on the loop thread from Launch to Complete; spans every hop.
struct Transfer {
  HttpRequest request;  // the current hop's (url, method, headers, body change on a redirect)
  HttpClient::Callback done;
  ParsedUrl target;     // the current hop's URL
  std::optional<SteadyClock::time_point> deadline;
  SteadyClock::time_point started;
  int hops = 0;
  size_t max_response_bytes = 0;

  // Per hop.
  EasyHandle easy;
  HeaderList headers;
  HttpResponse response;
  bool too_large = false;
  std::optional<absl::Status> denied;  // the policy refused an address curl was about to use
  char error_buffer[CURL_ERROR_SIZE] = {};
  CurlLoop* loop = nullptr;

  std::string Where() const {
    return absl::StrCat("HTTP ", HttpMethodName(request.method), " ", target.HostKey());
  }
};

// --- The one place where libcurl errors become statuses -----------------------------------

absl::Status ToStatus(CURLcode code, const Transfer& t) {
  const size_t max_response_bytes = t.max_response_bytes;
  const std::string where = t.Where();
  if (code != CURLE_OK && t.denied.has_value()) {
    // Every address curl tried (or the only one) was refused by us: that is the reason, not
    // the "could not connect" curl reports for it. Permanent: the policy will not change.
    return absl::PermissionDeniedError(absl::StrCat(where, ": ", t.denied->message()));
  }
  const std::string detail =
      absl::StrCat(curl_easy_strerror(code), " (curl code ", static_cast<int>(code), ")",
                   t.error_buffer[0] != '\0' ? absl::StrCat(": ", t.error_buffer) : "");
  const std::string message = absl::StrCat(where, ": ", detail);
  const std::string too_large = absl::StrCat(
      where, ": response body larger than the limit of ", max_response_bytes, " bytes");
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
    // HTTP/0.9 (garbage).
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
    case CURLE_FILESIZE_EXCEEDED:
      return absl::ResourceExhaustedError(too_large);
    case CURLE_WRITE_ERROR:
      if (t.too_large) return absl::ResourceExhaustedError(too_large);
      return absl::InternalError(message);
    default:
      return absl::InternalError(message);
  }
}

// --- libcurl callbacks that see only their transfer ----------------------------------------

size_t OnBody(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t n = size * count;
  std::string& body = t->response.body;
  if (body.size() + n > t->max_response_bytes) {
    t->too_large = true;
    return 0;  // anything but n aborts the transfer with CURLE_WRITE_ERROR
  }
  body.append(data, n);
  return n;
}

size_t OnHeader(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t n = size * count;
  absl::string_view line(data, n);
  // A new status line starts a new response (100 Continue): keep only the last.
  if (absl::StartsWith(line, "HTTP/")) {
    t->response.headers.clear();
    return n;
  }
  line = absl::StripAsciiWhitespace(line);
  const size_t colon = line.find(':');
  if (line.empty() || colon == absl::string_view::npos || colon == 0) return n;
  t->response.headers.emplace(std::string(absl::StripAsciiWhitespace(line.substr(0, colon))),
                              std::string(absl::StripAsciiWhitespace(line.substr(colon + 1))));
  return n;
}

// --- Redirects ------------------------------------------------------------------------------

// Turns `t` into its next hop after a redirect response: OK (t.request and t.target updated),
// or the error that ends the call.
absl::Status PrepareNextHop(Transfer& t, absl::string_view location) {
  const std::string where = t.Where();
  if (t.hops >= t.request.max_redirects) {
    return absl::FailedPreconditionError(absl::StrCat(
        where, ": more than ", t.request.max_redirects, " redirects (max_redirects)"));
  }
  UrlHandle handle(curl_url());
  if (handle == nullptr) return absl::ResourceExhaustedError("curl_url: out of memory");
  const std::string location_string(location);
  // Relative references resolve against the current URL; foreign schemes parse so that the
  // error can say which scheme it was.
  if (curl_url_set(handle.get(), CURLUPART_URL, t.target.url.c_str(), 0) != CURLUE_OK ||
      curl_url_set(handle.get(), CURLUPART_URL, location_string.c_str(),
                   CURLU_NON_SUPPORT_SCHEME) != CURLUE_OK) {
    return absl::FailedPreconditionError(
        absl::StrCat(where, ": redirect with a malformed Location"));
  }
  const std::string scheme = absl::AsciiStrToLower(UrlPart(handle.get(), CURLUPART_SCHEME, 0));
  if (scheme != "http" && scheme != "https") {
    return absl::FailedPreconditionError(absl::StrCat(
        where, ": redirect to a ", scheme, ":// URL (only http and https are followed)"));
  }
  absl::StatusOr<ParsedUrl> next = PartsOf(handle.get());
  if (!next.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat(where, ": redirect to an unusable URL: ", next.status().message()));
  }
  if (next->HostKey() != t.target.HostKey()) {
    std::vector<std::pair<std::string, std::string>> kept;
    for (auto& header : t.request.headers) {
      if (KeptAcrossHosts(header.first)) kept.push_back(std::move(header));
    }
    t.request.headers = std::move(kept);
  }
  const int status = t.response.status;
  if (status == 303 || ((status == 301 || status == 302) && t.request.method == HttpMethod::kPost)) {
    // What browsers (and curl) do: the next hop fetches the result, it does not resend.
    t.request.method = HttpMethod::kGet;
    t.request.body.clear();
    t.request.headers.erase(std::remove_if(t.request.headers.begin(), t.request.headers.end(),
                                           [](const auto& h) {
                                             return absl::EqualsIgnoreCase(h.first,
                                                                           "content-type");
                                           }),
                            t.request.headers.end());
  }
  t.request.url = next->url;
  t.target = *std::move(next);
  ++t.hops;
  return absl::OkStatus();
}


// --- The event loop ---------------------------------------------------------------------------

// One io_context on one thread. The multi handle, every socket, every transfer and the pool of
// easy handles belong to that thread: other threads only post to it, so nothing here locks.
// curl's callbacks never call back into curl; the loop calls curl_multi_socket_action only
// from asio handlers.
class CurlLoop {
 public:
  CurlLoop(HttpClientOptions options, DestinationPolicy policy)
      : options_(std::move(options)),
        policy_(std::move(policy)),
        io_(1),
        work_(asio::make_work_guard(io_)),
        timer_(io_),
        cancel_timer_(io_) {}

  ~CurlLoop() {
    if (thread_.joinable()) {
      asio::post(io_, [this] { Shutdown(); });
      work_.reset();  // run() returns once Shutdown has closed every socket and timer
      thread_.join();
    }
  }

  absl::Status Start() {
    multi_.reset(curl_multi_init());
    if (multi_ == nullptr) return absl::ResourceExhaustedError("curl_multi_init failed");
    curl_multi_setopt(multi_.get(), CURLMOPT_SOCKETFUNCTION, &CurlLoop::OnSocket);
    curl_multi_setopt(multi_.get(), CURLMOPT_SOCKETDATA, this);
    curl_multi_setopt(multi_.get(), CURLMOPT_TIMERFUNCTION, &CurlLoop::OnTimer);
    curl_multi_setopt(multi_.get(), CURLMOPT_TIMERDATA, this);
    // curl's default cache shrinks with the transfers in flight: a burst's connections would be
    // closed as it drains and the next burst would connect again.
    curl_multi_setopt(multi_.get(), CURLMOPT_MAXCONNECTS,
                      static_cast<long>(std::min<size_t>(options_.max_idle_connections,
                                                         std::numeric_limits<long>::max())));
    thread_ = std::thread([this] { io_.run(); });
    return absl::OkStatus();
  }

  const HttpClientOptions& options() const { return options_; }
  bool OnLoopThread() const { return std::this_thread::get_id() == thread_.get_id(); }

  // Any thread.
  void Submit(std::unique_ptr<Transfer> t) {
    t->loop = this;
    t->max_response_bytes = options_.max_response_bytes;
    asio::post(io_, [this, t = std::move(t)]() mutable { Launch(std::move(t)); });
  }
  void Fail(HttpClient::Callback done, absl::Status status) {
    asio::post(io_, [done = std::move(done), status = std::move(status)] { done(status); });
  }

 private:
  // A descriptor curl waits on. Those we opened for curl (OnOpenSocket) we own and close
  // (OnCloseSocket); curl's own (the threaded resolver's wake-up socket) are watched and
  // released, never closed by asio.
  struct Socket {
    explicit Socket(asio::io_context& io) : descriptor(io) {}
    asio::posix::stream_descriptor descriptor;
    bool owned = false;
    int want = 0;  // CURL_POLL_IN / CURL_POLL_OUT bits
    bool read_pending = false;
    bool write_pending = false;
    bool closed = false;
  };

  // --- Transfers ---

  void Launch(std::unique_ptr<Transfer> t) {
    if (stopping_) {
      return Complete(std::move(t),
                      absl::CancelledError(absl::StrCat(t->Where(), ": the HTTP client stopped")));
    }
    if (t->request.cancelled && t->request.cancelled()) {
      return Complete(std::move(t), absl::CancelledError(absl::StrCat(t->Where(), ": cancelled")));
    }
    const SteadyClock::time_point now = SteadyClock::now();
    if (t->deadline && now >= *t->deadline) {
      return Complete(std::move(t), absl::DeadlineExceededError(absl::StrCat(
                                        t->Where(), ": timed out following redirects")));
    }
    if (absl::Status s = Configure(*t, now); !s.ok()) return Complete(std::move(t), s);
    CURL* easy = t->easy.get();
    if (CURLMcode rc = curl_multi_add_handle(multi_.get(), easy); rc != CURLM_OK) {
      return Complete(std::move(t), absl::InternalError(absl::StrCat(
                                        t->Where(), ": curl_multi_add_handle: ",
                                        curl_multi_strerror(rc))));
    }
    transfers_.emplace(easy, std::move(t));
    PollCancellations();
  }

  absl::Status Configure(Transfer& t, SteadyClock::time_point now) {
    if (t.easy == nullptr) t.easy = TakeHandle();
    if (t.easy == nullptr) return absl::ResourceExhaustedError("curl_easy_init failed");
    t.response = HttpResponse{};
    t.too_large = false;
    t.denied.reset();
    t.error_buffer[0] = '\0';
    t.headers.reset();
    const HttpRequest& request = t.request;

    bool has_expect = false;
    for (const auto& [name, value] : request.headers) {
      if (absl::EqualsIgnoreCase(name, "expect")) has_expect = true;
      // libcurl reads "Name:" as "remove this header"; "Name;" sends it with an empty value.
      EVENTBUS_RETURN_IF_ERROR(AppendHeader(
          t.headers, value.empty() ? absl::StrCat(name, ";") : absl::StrCat(name, ": ", value)));
    }
    // Without this, curl waits up to a second for "100 Continue" before sending a large body.
    if (!has_expect) EVENTBUS_RETURN_IF_ERROR(AppendHeader(t.headers, "Expect:"));

    CURL* curl = t.easy.get();
    // Options that cannot fail on a supported libcurl; a failure shows up as the result.
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, t.error_buffer);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);  // no SIGALRM-based DNS timeouts
    curl_easy_setopt(curl, CURLOPT_URL, request.url.c_str());
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    // Redirects are ours to follow (PrepareNextHop): curl would keep custom headers.
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
    // Never a proxy from the environment: it would hide the destination from the policy.
    curl_easy_setopt(curl, CURLOPT_PROXY, "");
    if (t.deadline) {
      const SteadyClock::duration left = *t.deadline - now;
      curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, CurlMillis(left));
      const SteadyClock::duration connect =
          request.connect_timeout == absl::InfiniteDuration()
              ? left
              : std::min<SteadyClock::duration>(
                    left, absl::ToChronoNanoseconds(request.connect_timeout));
      curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, CurlMillis(connect));
    } else if (request.connect_timeout != absl::InfiniteDuration()) {
      curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS,
                       CurlMillis(absl::ToChronoNanoseconds(request.connect_timeout)));
    }
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 2L);
    if (!options_.ca_file.empty()) curl_easy_setopt(curl, CURLOPT_CAINFO, options_.ca_file.c_str());
    curl_easy_setopt(curl, CURLOPT_USERAGENT, options_.user_agent.c_str());
    curl_easy_setopt(curl, CURLOPT_ACCEPT_ENCODING, "");  // every encoding this libcurl decodes
    curl_easy_setopt(curl, CURLOPT_MAXFILESIZE_LARGE,
                     static_cast<curl_off_t>(options_.max_response_bytes));
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, t.headers.get());
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &OnBody);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, &OnHeader);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, &t);
    curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 1L);  // cancellation is polled by the loop
    curl_easy_setopt(curl, CURLOPT_OPENSOCKETFUNCTION, &CurlLoop::OnOpenSocket);
    curl_easy_setopt(curl, CURLOPT_OPENSOCKETDATA, &t);
    // A connection outlives its transfer in the connection cache: its close goes to the loop.
    curl_easy_setopt(curl, CURLOPT_CLOSESOCKETFUNCTION, &CurlLoop::OnCloseSocket);
    curl_easy_setopt(curl, CURLOPT_CLOSESOCKETDATA, this);

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
    return absl::OkStatus();
  }

  static absl::Status AppendHeader(HeaderList& headers, const std::string& line) {
    curl_slist* appended = curl_slist_append(headers.get(), line.c_str());
    if (appended == nullptr) return absl::ResourceExhaustedError("curl_slist_append failed");
    headers.release();  // curl_slist_append returned the (possibly new) head
    headers.reset(appended);
    return absl::OkStatus();
  }

  // A transfer curl reports done: the end of the call, or of one hop.
  void Finish(CURL* easy, CURLcode code) {
    auto it = transfers_.find(easy);
    if (it == transfers_.end()) return;
    std::unique_ptr<Transfer> t = std::move(it->second);
    transfers_.erase(it);
    curl_multi_remove_handle(multi_.get(), easy);
    absl::Status status = ToStatus(code, *t);
    if (!status.ok()) return Complete(std::move(t), std::move(status));
    long http_status = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &http_status);
    t->response.status = static_cast<int>(http_status);
    if (t->request.follow_redirects && IsRedirect(t->response.status)) {
      if (std::optional<std::string> location = t->response.Header("location")) {
        if (absl::Status next = PrepareNextHop(*t, *location); !next.ok()) {
          return Complete(std::move(t), std::move(next));
        }
        curl_easy_reset(easy);  // the same handle goes on with the next hop
        return Launch(std::move(t));
      }
    }
    t->response.elapsed = absl::FromChrono(SteadyClock::now() - t->started);
    t->response.redirects = t->hops;
    HttpResponse response = std::move(t->response);
    Complete(std::move(t), std::move(response));
  }

  void Complete(std::unique_ptr<Transfer> t, absl::StatusOr<HttpResponse> result) {
    if (t->easy != nullptr) GiveHandle(std::move(t->easy));
    HttpClient::Callback done = std::move(t->done);
    t.reset();
    done(std::move(result));
  }

  EasyHandle TakeHandle() {
    if (idle_.empty()) return EasyHandle(curl_easy_init());
    EasyHandle handle = std::move(idle_.back());
    idle_.pop_back();
    return handle;
  }

  void GiveHandle(EasyHandle handle) {
    // Forgets every option (pointers into the finished transfer included).
    curl_easy_reset(handle.get());
    if (!stopping_ && idle_.size() < options_.max_idle_handles) idle_.push_back(std::move(handle));
  }

  // While anything is in flight, every cancel_poll_interval: stop the transfers whose
  // HttpRequest::cancelled says so.
  void PollCancellations() {
    if (cancel_polling_ || transfers_.empty() || stopping_) return;
    cancel_polling_ = true;
    cancel_timer_.expires_after(absl::ToChronoNanoseconds(options_.cancel_poll_interval));
    cancel_timer_.async_wait([this](const boost::system::error_code& ec) {
      cancel_polling_ = false;
      if (ec || stopping_) return;
      std::vector<CURL*> cancelled;
      for (const auto& [easy, t] : transfers_) {
        if (t->request.cancelled && t->request.cancelled()) cancelled.push_back(easy);
      }
      for (CURL* easy : cancelled) {
        auto it = transfers_.find(easy);
        std::unique_ptr<Transfer> t = std::move(it->second);
        transfers_.erase(it);
        curl_multi_remove_handle(multi_.get(), easy);  // closes its connection mid-exchange
        Complete(std::move(t), absl::CancelledError(absl::StrCat(t->Where(), ": cancelled")));
      }
      PollCancellations();
    });
  }

  // --- Driving curl ---

  void Act(curl_socket_t fd, int events) {
    int running = 0;
    curl_multi_socket_action(multi_.get(), fd, events, &running);
    CURLMsg* message = nullptr;
    int left = 0;
    while ((message = curl_multi_info_read(multi_.get(), &left)) != nullptr) {
      if (message->msg != CURLMSG_DONE) continue;
      // The message dies with curl_multi_remove_handle: copy first.
      CURL* easy = message->easy_handle;
      const CURLcode code = message->data.result;
      Finish(easy, code);
    }
  }

  void Arm(const std::shared_ptr<Socket>& s, curl_socket_t fd) {
    if ((s->want & CURL_POLL_IN) && !s->read_pending) {
      s->read_pending = true;
      s->descriptor.async_wait(asio::posix::stream_descriptor::wait_read,
                               [this, s, fd](const boost::system::error_code& ec) {
                                 s->read_pending = false;
                                 Ready(s, fd, CURL_POLL_IN, CURL_CSELECT_IN, ec);
                               });
    }
    if ((s->want & CURL_POLL_OUT) && !s->write_pending) {
      s->write_pending = true;
      s->descriptor.async_wait(asio::posix::stream_descriptor::wait_write,
                               [this, s, fd](const boost::system::error_code& ec) {
                                 s->write_pending = false;
                                 Ready(s, fd, CURL_POLL_OUT, CURL_CSELECT_OUT, ec);
                               });
    }
  }

  void Ready(const std::shared_ptr<Socket>& s, curl_socket_t fd, int bit, int event,
             const boost::system::error_code& ec) {
    if (s->closed || stopping_) return;
    // A wait that outlived curl's interest (it was not cancelled: see Watch) says nothing.
    if (!(s->want & bit)) return;
    if (ec != asio::error::operation_aborted) Act(fd, ec ? CURL_CSELECT_ERR : event);
    if (!s->closed) Arm(s, fd);
  }

  void Watch(curl_socket_t fd, int what) {
    auto it = sockets_.find(fd);
    if (what == CURL_POLL_REMOVE) {
      if (it == sockets_.end()) return;
      // Waits still pending are left to find want == 0; cancelling them would race a
      // re-arm. curl's own descriptors go back to curl, which closes them.
      it->second->want = 0;
      if (!it->second->owned) {
        Release(*it->second);
        sockets_.erase(it);
      }
      return;
    }
    if (it == sockets_.end()) {
      auto s = std::make_shared<Socket>(io_);
      boost::system::error_code ec;
      s->descriptor.assign(fd, ec);
      if (ec) return;  // curl times the transfer out; nothing better to do here
      it = sockets_.emplace(fd, std::move(s)).first;
    }
    it->second->want = what & (CURL_POLL_IN | CURL_POLL_OUT);
    Arm(it->second, fd);
  }

  static void Release(Socket& s) {
    s.closed = true;
    s.want = 0;
    s.descriptor.release();  // cancels its waits; the descriptor stays open
  }

  curl_socket_t OpenSocket(Transfer& t, curlsocktype purpose, curl_sockaddr* address) {
    if (purpose != CURLSOCKTYPE_IPCXN ||
        (address->family != AF_INET && address->family != AF_INET6)) {
      return CURL_SOCKET_BAD;
    }
    // The address curl is about to connect to, after DNS: no rebinding around the policy.
    if (absl::Status allowed = policy_.Check(t.target.host, &address->addr); !allowed.ok()) {
      if (!t.denied) t.denied = std::move(allowed);
      return CURL_SOCKET_BAD;
    }
    const int fd = ::socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
    if (fd < 0) return CURL_SOCKET_BAD;
    auto s = std::make_shared<Socket>(io_);
    s->owned = true;
    boost::system::error_code ec;
    s->descriptor.assign(fd, ec);
    if (ec) {
      ::close(fd);
      return CURL_SOCKET_BAD;
    }
    if (auto stale = sockets_.find(fd); stale != sockets_.end()) {
      Release(*stale->second);  // a descriptor curl closed without telling: forget it
      sockets_.erase(stale);
    }
    sockets_.emplace(fd, std::move(s));
    return fd;
  }

  int CloseSocket(curl_socket_t fd) {
    auto it = sockets_.find(fd);
    if (it == sockets_.end() || !it->second->owned) return ::close(fd);
    it->second->closed = true;
    boost::system::error_code ec;
    it->second->descriptor.close(ec);  // cancels its waits and closes the descriptor
    sockets_.erase(it);
    return ec ? -1 : 0;
  }

  void SetTimer(long timeout_ms) {
    if (timeout_ms < 0) {
      timer_.cancel();
      return;
    }
    // Even a 0 ms timeout goes through the loop: curl must not be re-entered from its callback.
    timer_.expires_after(std::chrono::milliseconds(timeout_ms));
    timer_.async_wait([this](const boost::system::error_code& ec) {
      if (ec || stopping_) return;
      Act(CURL_SOCKET_TIMEOUT, 0);
    });
  }

  static int OnSocket(CURL*, curl_socket_t fd, int what, void* loop, void*) {
    static_cast<CurlLoop*>(loop)->Watch(fd, what);
    return 0;
  }
  static int OnTimer(CURLM*, long timeout_ms, void* loop) {
    static_cast<CurlLoop*>(loop)->SetTimer(timeout_ms);
    return 0;
  }
  static curl_socket_t OnOpenSocket(void* transfer, curlsocktype purpose, curl_sockaddr* address) {
    auto* t = static_cast<Transfer*>(transfer);
    return t->loop->OpenSocket(*t, purpose, address);
  }
  static int OnCloseSocket(void* loop, curl_socket_t fd) {
    return static_cast<CurlLoop*>(loop)->CloseSocket(fd);
  }

  // On the loop thread, last: every call still in flight ends with Cancelled.
  void Shutdown() {
    stopping_ = true;
    timer_.cancel();
    cancel_timer_.cancel();
    absl::flat_hash_map<CURL*, std::unique_ptr<Transfer>> in_flight = std::move(transfers_);
    transfers_.clear();
    for (auto& [easy, t] : in_flight) {
      curl_multi_remove_handle(multi_.get(), easy);
      Complete(std::move(t), absl::CancelledError(
                                 absl::StrCat(t->Where(), ": the HTTP client was destroyed")));
    }
    idle_.clear();
    multi_.reset();  // closes the cached connections through OnCloseSocket
    for (auto& [fd, s] : sockets_) {
      if (s->owned) {
        s->closed = true;
        boost::system::error_code ec;
        s->descriptor.close(ec);
      } else {
        Release(*s);
      }
    }
    sockets_.clear();
  }

  const HttpClientOptions options_;
  const DestinationPolicy policy_;
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  asio::steady_timer timer_;         // curl's timeout (CURLMOPT_TIMERFUNCTION)
  asio::steady_timer cancel_timer_;  // PollCancellations
  // Loop thread only, from here on.
  MultiHandle multi_;
  absl::flat_hash_map<curl_socket_t, std::shared_ptr<Socket>> sockets_;
  absl::flat_hash_map<CURL*, std::unique_ptr<Transfer>> transfers_;
  std::vector<EasyHandle> idle_;
  bool cancel_polling_ = false;
  bool stopping_ = false;
  std::thread thread_;  // last: starts after everything above exists
};

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
  return parsed.HostKey();
}


// --- HttpClient -----------------------------------------------------------------------------

class HttpClient::Loop : public CurlLoop {
 public:
  using CurlLoop::CurlLoop;
};

absl::StatusOr<std::unique_ptr<HttpClient>> HttpClient::Create(HttpClientOptions options) {
  if (options.max_response_bytes == 0) {
    return absl::InvalidArgumentError("HTTP client max_response_bytes must be > 0");
  }
  if (options.cancel_poll_interval <= absl::ZeroDuration() ||
      options.cancel_poll_interval == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError("HTTP client cancel_poll_interval must be > 0 and finite");
  }
  absl::StatusOr<DestinationPolicy> policy = DestinationPolicy::Create(options.destinations);
  if (!policy.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("HTTP client destinations: ", policy.status().message()));
  }
  EnsureCurlGlobalInit();
  auto loop = std::make_unique<Loop>(std::move(options), *std::move(policy));
  EVENTBUS_RETURN_IF_ERROR(loop->Start());
  return std::unique_ptr<HttpClient>(new HttpClient(std::move(loop)));
}

HttpClient::HttpClient(std::unique_ptr<Loop> loop) : loop_(std::move(loop)) {}

HttpClient::~HttpClient() = default;

void HttpClient::SendAsync(HttpRequest request, Callback done) {
  absl::StatusOr<ParsedUrl> target = ParseUrl(request.url);
  absl::Status valid = target.status();
  if (valid.ok() && request.method == HttpMethod::kGet && !request.body.empty()) {
    valid = absl::InvalidArgumentError("HTTP GET request with a body");
  }
  if (valid.ok() && request.max_redirects < 0) {
    valid = absl::InvalidArgumentError("HTTP request max_redirects must be >= 0");
  }
  if (valid.ok()) valid = ValidateTimeout(request.timeout, "timeout");
  if (valid.ok()) valid = ValidateTimeout(request.connect_timeout, "connect_timeout");
  for (const auto& [name, value] : request.headers) {
    if (!valid.ok()) break;
    valid = ValidateHeader(name, value);
  }
  if (!valid.ok()) return loop_->Fail(std::move(done), std::move(valid));

  auto t = std::make_unique<Transfer>();
  t->started = SteadyClock::now();
  if (request.timeout != absl::InfiniteDuration()) {
    t->deadline = t->started + absl::ToChronoNanoseconds(request.timeout);
  }
  request.url = target->url;
  t->target = *std::move(target);
  t->request = std::move(request);
  t->done = std::move(done);
  loop_->Submit(std::move(t));
}

absl::StatusOr<HttpResponse> HttpClient::Send(const HttpRequest& request) {
  if (loop_->OnLoopThread()) {
    return absl::FailedPreconditionError(
        "HttpClient::Send called on the client's loop thread (from a SendAsync callback), "
        "where it would wait for itself: use SendAsync");
  }
  std::promise<absl::StatusOr<HttpResponse>> promise;
  std::future<absl::StatusOr<HttpResponse>> result = promise.get_future();
  SendAsync(request, [&promise](absl::StatusOr<HttpResponse> response) {
    promise.set_value(std::move(response));
  });
  return result.get();
}

}  // namespace eventbus::executor
