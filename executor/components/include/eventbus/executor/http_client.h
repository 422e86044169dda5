#pragma once
// An HTTP/1.1 + HTTPS client on libcurl for the `call` task. TLS peer and host verification
// are always on; there is deliberately no switch to turn them off.
//
// Calls run on an event loop the client owns (libcurl's multi interface driven by Boost.Asio
// on one thread): a call waiting on a slow server holds a socket, not a thread, so thousands
// may be in flight at once. Send is SendAsync plus a wait.
//
// Error contract of HttpClient::SendAsync / Send (every libcurl error is mapped in one place,
// the native curl code and message are kept in the status message; messages name the
// destination as scheme://host:port only, never its path or query, where tokens live):
//   OK                 a response arrived, whatever its HTTP status (classify it with
//                      ClassifyHttpStatus: a 500 is a successful *transport* call)
//   InvalidArgument    malformed URL, scheme other than http/https, bad header, bad option
//   PermissionDenied   the destination (the address actually connected to, on any redirect
//                      hop) is refused by HttpClientOptions::destinations; the message says
//                      which setting refused it
//   Unavailable        connection refused, DNS failure, reset, TLS handshake failure,
//                      empty or malformed reply: the host may be fine later
//   DeadlineExceeded   the request's timeout or connect_timeout elapsed
//   FailedPrecondition the peer's TLS certificate did not verify, more than max_redirects
//                      redirects, or a redirect to a scheme other than http/https (retrying
//                      will not help)
//   ResourceExhausted  the response body is larger than HttpClientOptions::max_response_bytes
//   Cancelled          HttpRequest::cancelled returned true, or the client was destroyed
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
#include "eventbus/executor/destination_policy.h"

#pragma GCC visibility push(default)

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
  // Off by default: a 3xx is then the response. When on, the client follows at most
  // max_redirects hops itself (http/https only; a redirect elsewhere is FailedPrecondition),
  // checks each hop's destination against the policy, turns 303 (and 301/302 after a POST)
  // into a GET without a body, and on a hop to another scheme://host:port sends none of
  // `headers` but Accept, Accept-Language, Content-Type and Content-Language (no
  // Authorization, Cookie or custom header leaves the host they were meant for).
  bool follow_redirects = false;
  int max_redirects = 5;
  // Polled on the client's loop thread (every HttpClientOptions::cancel_poll_interval while
  // the call is in flight): when it returns true the call stops with Cancelled. Must be cheap,
  // non-blocking and thread-safe (e.g. read an atomic flag).
  std::function<bool()> cancelled;
};

struct HttpResponse {
  int status = 0;  // HTTP status code of the final response
  HttpHeaders headers;
  std::string body;
  absl::Duration elapsed;  // total time of the call, redirects included
  int redirects = 0;       // redirect hops followed

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
  // Idle curl easy handles kept for reuse. Connections live in the loop's shared connection
  // cache and are reused across calls to the same scheme://host:port (keep-alive).
  size_t max_idle_handles = 64;
  // Idle connections kept open for reuse (CURLMOPT_MAXCONNECTS; the oldest is closed first).
  // Sized for bursts of 1,000 calls to one host; each costs one descriptor while idle.
  size_t max_idle_connections = 1024;
  // Sent as User-Agent unless the request sets one.
  std::string user_agent = "eventbus-executor";
  // Where calls may connect (see destination_policy.h). The default denies link-local
  // addresses (cloud metadata) only. Proxies from the environment (http_proxy, ...) are never
  // used: a proxy would hide the real destination from this check.
  DestinationPolicyOptions destinations;
  // How often in-flight calls' HttpRequest::cancelled is polled. Must be > 0.
  absl::Duration cancel_poll_interval = absl::Milliseconds(50);
};

// Thread-safe: SendAsync and Send may be called from any number of threads at once. All
// transfers run on one event-loop thread owned by the client (started by Create, stopped and
// joined by the destructor). libcurl's global initialisation happens once per process, on
// first construction. Host names are resolved by libcurl's resolver (short-lived threads, IP
// literals and "localhost" need none).
class HttpClient {
 public:
  using Callback = std::function<void(absl::StatusOr<HttpResponse>)>;

  // InvalidArgument if an option is out of range or a destination entry is malformed.
  static absl::StatusOr<std::unique_ptr<HttpClient>> Create(HttpClientOptions options = {});
  // Calls still in flight complete with Cancelled (their callbacks run before it returns).
  // Must not be called from a callback.
  ~HttpClient();

  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // Starts one HTTP exchange (redirects included) and returns at once. `done` is called
  // exactly once, on the client's loop thread (never inline), with the response or an error
  // of the contract at the top of this file; it must be quick and must not block (it may call
  // SendAsync again).
  void SendAsync(HttpRequest request, Callback done);

  // SendAsync and a wait for its result. FailedPrecondition when called on the loop thread
  // (from a SendAsync callback), where it would wait for itself.
  absl::StatusOr<HttpResponse> Send(const HttpRequest& request);

 private:
  class Loop;
  explicit HttpClient(std::unique_ptr<Loop> loop);

  std::unique_ptr<Loop> loop_;
};

}  // namespace eventbus::executor

#pragma GCC visibility pop
