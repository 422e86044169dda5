#pragma once
// An HTTP/1.1 + HTTPS client on libcurl for the `call` task. TLS peer and host verification
// are always on; there is deliberately no switch to turn them off.
//
// Error contract of HttpClient::Send (every libcurl error is mapped in one place, the native
// curl code and message are kept in the status message):
//   OK                 a response arrived, whatever its HTTP status (classify it with
//                      ClassifyHttpStatus: a 500 is a successful *transport* call)
//   InvalidArgument    malformed URL, scheme other than http/https, bad header, bad option
//   Unavailable        connection refused, DNS failure, reset, TLS handshake failure,
//                      empty or malformed reply: the host may be fine later
//   DeadlineExceeded   the request's timeout or connect_timeout elapsed
//   FailedPrecondition the peer's TLS certificate did not verify (retrying will not help)
//   ResourceExhausted  the response body is larger than HttpClientOptions::max_response_bytes
//   Cancelled          HttpRequest::cancelled returned true
//   Internal           libcurl itself failed (out of memory, unexpected code)
// IsTransientHttpError() says which of these are worth retrying.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace eventbus::executor {

enum class HttpMethod { kGet, kPost, kPut, kPatch, kDelete };

// "GET", "POST", ...
absl::string_view HttpMethodName(HttpMethod method);
// Case-insensitive ("get" and "GET" both work). InvalidArgument naming the supported methods
// for anything else (HEAD, OPTIONS, "", ...).
absl::StatusOr<HttpMethod> ParseHttpMethod(absl::string_view name);

// Orders header names case-insensitively (HTTP field names are case-insensitive).
struct CaseInsensitiveLess {
  using is_transparent = void;
  bool operator()(absl::string_view a, absl::string_view b) const;
};
// Response headers: every occurrence kept (Set-Cookie may repeat), names as the server sent
// them, lookup case-insensitive: headers.find("content-type") finds "Content-Type".
using HttpHeaders = std::multimap<std::string, std::string, CaseInsensitiveLess>;

struct HttpRequest {
  HttpMethod method = HttpMethod::kGet;
  std::string url;  // http:// or https:// only
  // Sent in this order; duplicates allowed. Names and values must not contain CR, LF or NUL
  // (InvalidArgument otherwise: no header injection). curl sets Host, Content-Length and
  // Accept-Encoding itself; a body without a Content-Type header is sent with curl's default
  // (application/x-www-form-urlencoded), so set one.
  std::vector<std::pair<std::string, std::string>> headers;
  // Sent for POST/PUT/PATCH/DELETE (a PUT/PATCH/POST with an empty body sends
  // Content-Length: 0). A GET with a non-empty body is InvalidArgument.
  std::string body;
  // Whole-call limit (connect + send + receive). Must be > 0; InfiniteDuration() = none.
  absl::Duration timeout = absl::Seconds(30);
  // Limit for the TCP + TLS connect alone. Must be > 0; InfiniteDuration() = none.
  absl::Duration connect_timeout = absl::Seconds(10);
  // Redirects are followed (http/https only, at most max_redirects); the response is the
  // last one.
  bool follow_redirects = true;
  int max_redirects = 5;
  // Polled from curl's progress callback (often while data flows, about once a second when
  // the connection is idle): when it returns true the call stops with Cancelled. Called on
  // the thread that runs Send; must be cheap and thread-safe (e.g. read an atomic flag).
  std::function<bool()> cancelled;
};

struct HttpResponse {
  int status = 0;  // HTTP status code of the final response
  HttpHeaders headers;
  std::string body;
  absl::Duration elapsed;  // total time of the call, redirects included

  // The first value of header `name` (case-insensitive), or nullopt.
  std::optional<std::string> Header(absl::string_view name) const;
};

// How the executor should treat an HTTP status code.
enum class HttpOutcome {
  kSuccess,    // 2xx
  kTransient,  // 5xx, 408 Request Timeout, 429 Too Many Requests: retry later
  kPermanent,  // every other code (other 4xx, unfollowed 3xx, 1xx): retrying will not help
};
HttpOutcome ClassifyHttpStatus(int status);
inline HttpOutcome ClassifyHttpResponse(const HttpResponse& response) {
  return ClassifyHttpStatus(response.status);
}

// True for the Send errors a retry may cure: Unavailable and DeadlineExceeded. Everything
// else (InvalidArgument, FailedPrecondition, ResourceExhausted, Cancelled, Internal) is
// permanent for the task at hand.
bool IsTransientHttpError(const absl::Status& status);

// The key to group calls by host (for the circuit breaker): "scheme://host:port", lower
// case, with the scheme's default port filled in, e.g. "https://api.example.com:443".
// InvalidArgument for a malformed URL or a scheme other than http/https.
absl::StatusOr<std::string> HttpHostKey(absl::string_view url);

struct HttpClientOptions {
  // A body larger than this fails the call with ResourceExhausted (checked against
  // Content-Length up front and against the bytes received). Must be > 0.
  size_t max_response_bytes = 16 * 1024 * 1024;
  // PEM file of CA certificates to trust instead of the system store (a private CA, or the
  // test CA in tests). Empty = the system store. Verification stays on either way.
  std::string ca_file;
  // Idle curl handles kept for reuse (each keeps its connections alive for keep-alive).
  size_t max_idle_handles = 16;
  // Sent as User-Agent unless the request sets one.
  std::string user_agent = "eventbus-executor";
};

// Thread-safe: Send may be called from any number of threads at once. Each call borrows a
// curl handle from an internal pool (connections are reused across calls to the same host)
// and blocks its thread until the response, an error, the timeout or cancellation.
// libcurl's global initialisation happens once per process, on first construction.
class HttpClient {
 public:
  // InvalidArgument if an option is out of range.
  static absl::StatusOr<std::unique_ptr<HttpClient>> Create(HttpClientOptions options = {});
  ~HttpClient();

  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // Performs one HTTP exchange. See the error contract at the top of this file.
  absl::StatusOr<HttpResponse> Send(const HttpRequest& request);

 private:
  class HandlePool;
  explicit HttpClient(HttpClientOptions options);

  const HttpClientOptions options_;
  std::unique_ptr<HandlePool> pool_;
};

}  // namespace eventbus::executor
