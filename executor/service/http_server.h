#pragma once
// A small HTTP/1.1 server for the service's API (Boost.Beast underneath, kept out of this
// header). One io_context run by a fixed pool of threads; every connection lives on its own
// strand, with TCP_NODELAY, keep-alive and an idle timeout; the header and body of a reply go
// out in one write. Handlers answer through a responder they may call later from any thread
// (e.g. a backend's publish callback), so no server thread waits for a broker.

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace eventbus::executor::service {

struct HttpServerState;  // http_server.cc

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string path;    // the target without its query string
  std::string query;   // what follows '?' in the target, still percent-encoded
  std::string content_type;
  std::string authorization;
  std::string body;  // empty until the body is read (admission checks see only the header)
};

// The body of a streamed response (Server-Sent Events), written as it is produced.
// Thread-safe; keep it only as long as open() is true.
class HttpStream {
 public:
  virtual ~HttpStream() = default;
  // Queues `chunk` for the client. False once the client is gone, the server stops, or the
  // client reads too slowly (the connection is closed then): stop producing.
  virtual bool Send(std::string chunk) = 0;
  // Ends the response; the connection closes.
  virtual void End() = 0;
  virtual bool open() const = 0;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // extra headers
  // Set for a streamed response: the status and headers go out without a Content-Length and
  // with Connection: close, `body` is ignored, and `on_open` is called once (on a server
  // thread: it must not block) with the stream that carries the body.
  std::function<void(std::shared_ptr<HttpStream>)> on_open;
};

// The percent-decoded value of `name` in a query string ("a=1&b=x%20y"); empty when absent.
std::string QueryParam(absl::string_view query, absl::string_view name);

// A JSON response {"error": message}.
HttpResponse JsonError(int status, absl::string_view message);

// Answers one request. Thread-safe, may be called from any thread, at once or later; only the
// first call counts, and a call after the server answered on its own (timeout, stop) is dropped.
using HttpResponder = std::function<void(HttpResponse)>;
using HttpHandler = std::function<void(HttpRequest&& request, HttpResponder respond)>;
// Runs on the request's header, before the body is read: a response refuses the request
// (e.g. 401) without reading its body.
using HttpAdmission = std::function<std::optional<HttpResponse>(const HttpRequest& header)>;

struct HttpRouteOptions {
  size_t max_body_bytes = 1 << 20;  // larger bodies: 413 with a JSON error
  HttpAdmission admission;          // optional
};

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 0;  // 0: any free port (see HttpServer::port())
  int threads = 2;
  // Connections beyond this are answered 503 (JSON) and closed.
  int max_connections = 1024;
  // A keep-alive connection with no request for this long is closed.
  absl::Duration idle_timeout = absl::Seconds(5);
  // Time to receive a request once its first byte arrived, and to write a reply.
  absl::Duration io_timeout = absl::Seconds(30);
  // A handler that has not answered by then gets 503 (JSON) written for it.
  absl::Duration response_timeout = absl::Seconds(10);
  // Stop lets requests in progress finish for at most this long.
  absl::Duration stop_grace = absl::Seconds(2);
};

class HttpServer {
 public:
  explicit HttpServer(HttpServerOptions options);
  ~HttpServer();  // Stop()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Registers `handler` for exact `path` and `method`. Before Start only. A known path asked
  // with another method gets 405 (JSON, with Allow); an unknown path 404 (JSON).
  void Route(std::string method, std::string path, HttpRouteOptions options, HttpHandler handler);

  // Registers `handler` for every path that starts with `prefix` and has no exact route (the
  // longest prefix wins), e.g. "/v1/tasks/" for /v1/tasks/{id}. Before Start only.
  void RoutePrefix(std::string method, std::string prefix, HttpRouteOptions options,
                   HttpHandler handler);

  // Runs `admission` on every request whose path starts with `prefix` (routed or not), before
  // the route's own admission. Before Start only.
  void Guard(std::string prefix, HttpAdmission admission);

  // Binds and starts the threads. Unavailable naming the address when it cannot listen.
  absl::Status Start();

  // The bound port (after Start).
  int port() const;

  // Graceful and idempotent: closes the listener and idle connections, lets requests in
  // progress be answered within stop_grace, closes the rest and joins the threads. After it
  // returns, responders still held by handlers do nothing.
  void Stop();

  // Connections currently open (for tests and metrics).
  int open_connections() const;

 private:
  std::shared_ptr<HttpServerState> impl_;
};

}  // namespace eventbus::executor::service
