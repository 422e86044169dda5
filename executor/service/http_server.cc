#include "http_server.h"

#include <array>
#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <limits>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace eventbus::executor::service {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

HttpResponse JsonError(int status, absl::string_view message) {
  HttpResponse response;
  response.status = status;
  response.body = nlohmann::json{{"error", std::string(message)}}.dump(
      -1, ' ', false, nlohmann::json::error_handler_t::replace);
  return response;
}

std::string QueryParam(absl::string_view query, absl::string_view name) {
  for (absl::string_view pair : absl::StrSplit(query, '&')) {
    std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(pair, absl::MaxSplits('=', 1));
    if (kv.first != name) continue;
    std::string value;
    for (size_t i = 0; i < kv.second.size(); ++i) {
      const char c = kv.second[i];
      int hex = 0;
      if (c == '%' && i + 2 < kv.second.size() &&
          absl::SimpleHexAtoi(kv.second.substr(i + 1, 2), &hex)) {
        value.push_back(static_cast<char>(hex));
        i += 2;
      } else {
        value.push_back(c == '+' ? ' ' : c);
      }
    }
    return value;
  }
  return "";
}

namespace {

constexpr size_t kMaxHeaderBytes = 16 * 1024;
// A streamed response whose client reads slower than this many chunks behind is closed.
constexpr size_t kMaxQueuedChunks = 256;
// After an error reply to a request whose body we did not read, the rest of the body is read
// and dropped before closing: closing a socket with unread input sends a RST, which can make
// the client lose the reply it has not read yet.
constexpr size_t kMaxDrainBytes = 64 << 20;
constexpr auto kDrainTimeout = std::chrono::seconds(2);

std::chrono::nanoseconds Chrono(absl::Duration d) { return absl::ToChronoNanoseconds(d); }

struct RouteEntry {
  std::string method;
  HttpRouteOptions options;
  HttpHandler handler;
};

// Responders run on foreign threads; they may post into the io_context only while it exists.
struct Gate {
  std::mutex mu;
  bool open = true;  // guarded by mu
};

}  // namespace

namespace {
class Session;
}  // namespace

struct HttpServerState {
  explicit HttpServerState(HttpServerOptions o) : options(std::move(o)), gate(std::make_shared<Gate>()) {}

  const HttpServerOptions options;
  std::map<std::string, std::vector<RouteEntry>> routes;  // by path; fixed after Start
  // By prefix, longest first; fixed after Start.
  std::map<std::string, std::vector<RouteEntry>, std::greater<>> prefix_routes;
  std::vector<std::pair<std::string, HttpAdmission>> guards;  // fixed after Start
  std::shared_ptr<Gate> gate;
  std::atomic<bool> stopping{false};

  std::mutex mu;  // guards the fields below
  std::condition_variable sessions_changed;
  std::unordered_map<Session*, std::weak_ptr<Session>> sessions;
  bool started = false;
  bool stopped = false;

  int port = 0;
  std::vector<std::thread> threads;
  // Declared last: destroyed first, so sessions dying with it can still unregister.
  std::optional<net::io_context> ioc;
  std::optional<tcp::acceptor> acceptor;

  // The route for `path` and `method`; null, with the methods the path has in `allowed`.
  const RouteEntry* Find(const std::string& method, const std::string& path,
                    std::vector<std::string>* allowed) const {
    const std::vector<RouteEntry>* entries = nullptr;
    if (auto it = routes.find(path); it != routes.end()) {
      entries = &it->second;
    } else {
      // std::greater: a longer prefix sorts before the shorter ones it extends.
      for (const auto& [prefix, prefixed] : prefix_routes) {
        if (absl::StartsWith(path, prefix)) {
          entries = &prefixed;
          break;
        }
      }
    }
    if (entries == nullptr) return nullptr;
    for (const RouteEntry& route : *entries) {
      if (route.method == method) return &route;
      allowed->push_back(route.method);
    }
    return nullptr;
  }

  void Accept();
  void OnAccept(beast::error_code ec, tcp::socket socket);
  void SessionEnded(Session* session);
  void Stop();
};

namespace {

class SessionStream;

// One connection. Everything runs on its strand; other threads reach it only by posting.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(HttpServerState* server, tcp::socket socket, bool counted)
      : server_(server),
        stream_(std::move(socket)),
        response_timer_(stream_.get_executor()),
        counted_(counted) {}
  ~Session() {
    if (counted_) server_->SessionEnded(this);
  }

  net::any_io_executor executor() { return stream_.get_executor(); }

  void Start() { ReadHeader(); }

  // Answers 503 and closes: the connection limit is reached.
  void RefuseConnection() {
    keep_alive_ = false;
    Write(JsonError(503, absl::StrCat("too many connections (EXECUTOR_HTTP_MAX_CONNECTIONS=",
                                      server_->options.max_connections, ")")),
          /*drain=*/true);
  }

  // The server stops: an idle connection closes now, a busy one after its reply.
  void Shutdown() {
    if (reading_ || draining_ || streaming_) Close();
  }

  // A chunk of a streamed response's body (from SessionStream::Send).
  void StreamChunk(std::string chunk) {
    if (closed_ || !streaming_) return;
    if (chunks_.size() >= kMaxQueuedChunks) return Close();  // the client does not keep up
    chunks_.push_back(std::move(chunk));
    if (!writing_chunk_) WriteNextChunk();
  }

  void Close();

  // Ends a streamed response once every queued chunk is written: the last event (a task's
  // final state) must reach the client, not be dropped with the connection.
  void EndStream() {
    if (closed_) return;
    ending_stream_ = true;
    if (!writing_chunk_ && chunks_.empty()) Close();
  }

  void Reply(uint64_t seq, HttpResponse response) {
    if (closed_ || !awaiting_ || seq != seq_) return;
    awaiting_ = false;
    response_timer_.cancel();
    Write(std::move(response), /*drain=*/false);
  }

 private:
  void ReadHeader() {
    if (server_->stopping) return Close();
    parser_.emplace();
    parser_->header_limit(kMaxHeaderBytes);
    // Beast checks Content-Length against its default 1 MiB while parsing the header; the
    // route's own limit applies once the route is known. (Not boost::none: Boost 1.74 compares
    // a length against an empty optional as "greater" and refuses every body.)
    parser_->body_limit(std::numeric_limits<std::uint64_t>::max());
    reading_ = true;
    stream_.expires_after(Chrono(server_->options.idle_timeout));
    http::async_read_header(stream_, buffer_, *parser_,
                            beast::bind_front_handler(&Session::OnHeader, shared_from_this()));
  }

  void OnHeader(beast::error_code ec, size_t) {
    reading_ = false;
    if (ec) return OnReadError(ec);
    const auto& header = parser_->get();
    request_ = HttpRequest{};
    request_.method = std::string(header.method_string());
    const beast::string_view target = header.target();
    const size_t question = target.find('?');
    request_.path = std::string(target.substr(0, question));
    if (question != beast::string_view::npos) request_.query = std::string(target.substr(question + 1));
    request_.content_type = std::string(header[http::field::content_type]);
    request_.authorization = std::string(header[http::field::authorization]);
    keep_alive_ = header.keep_alive();

    for (const auto& [prefix, admission] : server_->guards) {
      if (!absl::StartsWith(request_.path, prefix)) continue;
      if (std::optional<HttpResponse> refusal = admission(request_)) {
        return Refuse(std::move(*refusal));
      }
    }
    std::vector<std::string> allowed;
    route_ = server_->Find(request_.method, request_.path, &allowed);
    if (route_ == nullptr) {
      if (allowed.empty()) {
        return Refuse(JsonError(404, absl::StrCat("no route ", request_.method, " ",
                                                  request_.path)));
      }
      HttpResponse response = JsonError(
          405, absl::StrCat("method ", request_.method, " not allowed on ", request_.path,
                            "; allowed: ", absl::StrJoin(allowed, ", ")));
      response.headers.emplace_back("Allow", absl::StrJoin(allowed, ", "));
      return Refuse(std::move(response));
    }
    if (route_->options.admission) {
      if (std::optional<HttpResponse> refusal = route_->options.admission(request_)) {
        return Refuse(std::move(*refusal));
      }
    }
    const size_t limit = route_->options.max_body_bytes;
    if (auto length = parser_->content_length(); length && *length > limit) return TooLarge();
    parser_->body_limit(limit);
    if (parser_->is_done()) return Dispatch();
    if (beast::iequals(header[http::field::expect], "100-continue")) {
      // The client waits for this before it sends the body (curl does, for large bodies).
      continue_.emplace(http::status::continue_, header.version());
      stream_.expires_after(Chrono(server_->options.io_timeout));
      http::async_write(stream_, *continue_,
                        [self = shared_from_this()](beast::error_code ec, size_t) {
                          if (ec) return self->Close();
                          self->ReadBody();
                        });
      return;
    }
    ReadBody();
  }

  void ReadBody() {
    reading_ = true;
    stream_.expires_after(Chrono(server_->options.io_timeout));
    http::async_read(stream_, buffer_, *parser_,
                     beast::bind_front_handler(&Session::OnBody, shared_from_this()));
  }

  void OnBody(beast::error_code ec, size_t) {
    reading_ = false;
    if (ec == http::error::body_limit) return TooLarge();
    if (ec) return OnReadError(ec);
    request_.body = parser_->release().body();
    Dispatch();
  }

  void OnReadError(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == beast::error::timeout ||
        ec == net::error::operation_aborted || ec == net::error::connection_reset ||
        ec == net::error::eof || closed_) {
      return Close();
    }
    keep_alive_ = false;
    if (ec == http::error::header_limit) {
      return Write(JsonError(431, absl::StrCat("request header larger than ", kMaxHeaderBytes,
                                               " bytes")),
                   /*drain=*/true);
    }
    Write(JsonError(400, absl::StrCat("malformed HTTP request: ", ec.message())), /*drain=*/true);
  }

  void TooLarge() {
    Refuse(JsonError(413, absl::StrCat("request body larger than ",
                                       route_->options.max_body_bytes, " bytes on ",
                                       request_.path)));
  }

  // Answers without reading the body; the connection survives only when there is no body.
  void Refuse(HttpResponse response) {
    const bool body_pending = !parser_->is_done();
    if (body_pending) keep_alive_ = false;
    Write(std::move(response), /*drain=*/body_pending);
  }

  void Dispatch() {
    awaiting_ = true;
    const uint64_t seq = ++seq_;
    stream_.expires_never();
    response_timer_.expires_after(Chrono(server_->options.response_timeout));
    response_timer_.async_wait([self = shared_from_this(), seq](beast::error_code ec) {
      if (ec) return;
      self->Reply(seq, JsonError(503, absl::StrCat("no answer within ",
                                                   absl::FormatDuration(
                                                       self->server_->options.response_timeout))));
    });
    HttpResponder respond = [weak = weak_from_this(), gate = server_->gate, seq,
                             once = std::make_shared<std::atomic<bool>>(false)](
                                HttpResponse response) {
      if (once->exchange(true)) return;
      std::lock_guard lock(gate->mu);
      if (!gate->open) return;
      std::shared_ptr<Session> self = weak.lock();
      if (self == nullptr) return;
      net::post(self->executor(), [self, seq, response = std::move(response)]() mutable {
        self->Reply(seq, std::move(response));
      });
    };
    try {
      route_->handler(std::move(request_), respond);
    } catch (const std::exception& e) {
      respond(JsonError(500, absl::StrCat("internal error: ", e.what())));
    }
  }

  // The header of a streamed response, written by hand: no Content-Length, Connection: close,
  // so the body is whatever follows until the connection closes.
  void StartStream(HttpResponse response);

  void WriteNextChunk() {
    writing_chunk_ = true;
    stream_.expires_after(Chrono(server_->options.io_timeout));
    net::async_write(stream_, net::buffer(chunks_.front()),
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       self->writing_chunk_ = false;
                       if (ec) return self->Close();
                       self->chunks_.pop_front();
                       self->stream_.expires_never();
                       if (!self->chunks_.empty()) return self->WriteNextChunk();
                       if (self->ending_stream_) self->Close();
                     });
  }

  // While streaming, any input or error from the client ends it (a closed tab, a reset).
  void WatchStreamClient() {
    drain_buffer_ = std::make_unique<std::array<char, 16384>>();
    stream_.socket().async_read_some(net::buffer(*drain_buffer_),
                                     [self = shared_from_this()](beast::error_code ec, size_t) {
                                       if (ec) return self->Close();
                                       self->WatchStreamClient();
                                     });
  }

  void Write(HttpResponse response, bool drain) {
    if (response.on_open) return StartStream(std::move(response));
    const bool keep_alive = keep_alive_ && !drain && !server_->stopping;
    response_.emplace(static_cast<http::status>(response.status), 11);
    response_->set(http::field::content_type, response.content_type);
    for (auto& [name, value] : response.headers) response_->set(name, value);
    response_->body() = std::move(response.body);
    response_->keep_alive(keep_alive);
    response_->prepare_payload();
    stream_.expires_after(Chrono(server_->options.io_timeout));
    // One gathered write: header and body leave in one segment (no Nagle/delayed-ACK stall).
    http::async_write(stream_, *response_,
                      [self = shared_from_this(), keep_alive, drain](beast::error_code ec, size_t) {
                        self->response_.reset();
                        if (ec) return self->Close();
                        if (drain) return self->Drain();
                        if (!keep_alive) return self->Close();
                        self->ReadHeader();
                      });
  }

  void Drain() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    draining_ = true;
    drain_buffer_ = std::make_unique<std::array<char, 16384>>();
    stream_.expires_after(kDrainTimeout);
    DrainSome();
  }

  void DrainSome() {
    stream_.async_read_some(net::buffer(*drain_buffer_),
                            [self = shared_from_this()](beast::error_code ec, size_t n) {
                              self->drained_ += n;
                              if (ec || self->drained_ > kMaxDrainBytes) return self->Close();
                              self->DrainSome();
                            });
  }


  HttpServerState* const server_;
  beast::tcp_stream stream_;
  net::steady_timer response_timer_;
  const bool counted_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::optional<http::response<http::empty_body>> continue_;
  std::optional<http::response<http::string_body>> response_;
  std::unique_ptr<std::array<char, 16384>> drain_buffer_;
  size_t drained_ = 0;
  const RouteEntry* route_ = nullptr;
  HttpRequest request_;
  uint64_t seq_ = 0;
  bool keep_alive_ = true;
  bool reading_ = false;   // waiting for a request (idle) or its body
  bool awaiting_ = false;  // the handler has the request
  bool draining_ = false;
  bool closed_ = false;
  // Streamed responses.
  bool streaming_ = false;
  bool writing_chunk_ = false;
  bool ending_stream_ = false;  // EndStream: close once chunks_ is written
  std::string stream_header_;
  std::deque<std::string> chunks_;
  std::shared_ptr<SessionStream> stream_handle_;
};

class SessionStream final : public HttpStream {
 public:
  SessionStream(std::weak_ptr<Session> session, std::shared_ptr<Gate> gate)
      : session_(std::move(session)), gate_(std::move(gate)) {}

  bool Send(std::string chunk) override {
    if (!open_) return false;
    std::lock_guard lock(gate_->mu);
    std::shared_ptr<Session> session = session_.lock();
    if (!gate_->open || session == nullptr) {
      open_ = false;
      return false;
    }
    net::post(session->executor(),
              [session, chunk = std::move(chunk)]() mutable { session->StreamChunk(std::move(chunk)); });
    return open_;
  }

  void End() override {
    open_ = false;
    std::lock_guard lock(gate_->mu);
    std::shared_ptr<Session> session = session_.lock();
    if (gate_->open && session != nullptr) {
      net::post(session->executor(), [session] { session->EndStream(); });
    }
  }

  bool open() const override { return open_; }
  void MarkClosed() { open_ = false; }

 private:
  std::weak_ptr<Session> session_;
  std::shared_ptr<Gate> gate_;
  std::atomic<bool> open_{true};
};

void Session::Close() {
  if (closed_) return;
  closed_ = true;
  awaiting_ = false;
  streaming_ = false;
  if (stream_handle_ != nullptr) stream_handle_->MarkClosed();
  response_timer_.cancel();
  beast::error_code ignored;
  stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
  stream_.close();
}

void Session::StartStream(HttpResponse response) {
  stream_header_ = absl::StrCat("HTTP/1.1 ", response.status, " ",
                                std::string(http::obsolete_reason(
                                    static_cast<http::status>(response.status))),
                                "\r\nContent-Type: ", response.content_type,
                                "\r\nCache-Control: no-cache\r\nConnection: close\r\n");
  for (const auto& [name, value] : response.headers) {
    absl::StrAppend(&stream_header_, name, ": ", value, "\r\n");
  }
  absl::StrAppend(&stream_header_, "\r\n");
  keep_alive_ = false;
  streaming_ = true;
  stream_handle_ = std::make_shared<SessionStream>(weak_from_this(), server_->gate);
  auto on_open = std::move(response.on_open);
  stream_.expires_after(Chrono(server_->options.io_timeout));
  net::async_write(stream_, net::buffer(stream_header_),
                   [self = shared_from_this(), on_open = std::move(on_open)](beast::error_code ec,
                                                                             size_t) {
                     if (ec) return self->Close();
                     self->stream_.expires_never();
                     self->WatchStreamClient();
                     try {
                       on_open(self->stream_handle_);
                     } catch (const std::exception&) {
                       self->Close();
                     }
                   });
}

}  // namespace

void HttpServerState::Accept() {
  acceptor->async_accept(net::make_strand(*ioc), [this](beast::error_code ec, tcp::socket socket) {
    OnAccept(ec, std::move(socket));
  });
}

void HttpServerState::OnAccept(beast::error_code ec, tcp::socket socket) {
  if (ec == net::error::operation_aborted || !acceptor->is_open()) return;
  if (ec) {
    // Out of descriptors and the like: retry shortly rather than spin.
    auto timer = std::make_shared<net::steady_timer>(acceptor->get_executor(),
                                                     std::chrono::milliseconds(50));
    timer->async_wait([this, timer](beast::error_code) {
      if (acceptor->is_open()) Accept();
    });
    return;
  }
  beast::error_code ignored;
  // Without it a keep-alive reply can wait for the client's delayed ACK (~40 ms).
  socket.set_option(tcp::no_delay(true), ignored);
  std::shared_ptr<Session> session;
  {
    std::lock_guard lock(mu);
    if (stopping) {
      socket.close(ignored);
      return;
    }
    const bool full = static_cast<int>(sessions.size()) >= options.max_connections;
    session = std::make_shared<Session>(this, std::move(socket), /*counted=*/!full);
    if (!full) sessions.emplace(session.get(), session);
    if (full) {
      net::dispatch(session->executor(), [session] { session->RefuseConnection(); });
      session = nullptr;
    }
  }
  if (session != nullptr) net::dispatch(session->executor(), [session] { session->Start(); });
  Accept();
}

void HttpServerState::SessionEnded(Session* session) {
  std::lock_guard lock(mu);
  sessions.erase(session);
  sessions_changed.notify_all();
}

void HttpServerState::Stop() {
  std::vector<std::weak_ptr<Session>> open;
  {
    std::lock_guard lock(mu);
    if (stopped) return;
    stopped = true;
    if (!started) return;
    stopping = true;
    for (const auto& [raw, weak] : sessions) open.push_back(weak);
  }
  net::post(acceptor->get_executor(), [this] {
    beast::error_code ignored;
    acceptor->close(ignored);
  });
  for (const auto& weak : open) {
    if (auto session = weak.lock()) {
      net::post(session->executor(), [session] { session->Shutdown(); });
    }
  }
  {
    std::unique_lock lock(mu);
    sessions_changed.wait_for(lock, Chrono(options.stop_grace), [&] { return sessions.empty(); });
  }
  ioc->stop();
  for (std::thread& thread : threads) thread.join();
  threads.clear();
  {
    std::lock_guard lock(gate->mu);
    gate->open = false;
  }
  acceptor.reset();
  ioc.reset();  // destroys the sessions still held by pending operations
}

HttpServer::HttpServer(HttpServerOptions options)
    : impl_(std::make_shared<HttpServerState>(std::move(options))) {}

HttpServer::~HttpServer() { Stop(); }

void HttpServer::RoutePrefix(std::string method, std::string prefix, HttpRouteOptions options,
                             HttpHandler handler) {
  impl_->prefix_routes[std::move(prefix)].push_back(
      RouteEntry{std::move(method), std::move(options), std::move(handler)});
}

void HttpServer::Route(std::string method, std::string path, HttpRouteOptions options,
                       HttpHandler handler) {
  impl_->routes[std::move(path)].push_back(
      RouteEntry{std::move(method), std::move(options), std::move(handler)});
}

void HttpServer::Guard(std::string prefix, HttpAdmission admission) {
  impl_->guards.emplace_back(std::move(prefix), std::move(admission));
}

absl::Status HttpServer::Start() {
  HttpServerState& impl = *impl_;
  const int threads = std::max(1, impl.options.threads);
  impl.ioc.emplace(threads);
  impl.acceptor.emplace(net::make_strand(*impl.ioc));
  const std::string where = absl::StrCat(impl.options.host, ":", impl.options.port);
  beast::error_code ec;
  tcp::resolver resolver(*impl.ioc);
  auto endpoints = resolver.resolve(impl.options.host, std::to_string(impl.options.port),
                                    tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  if (ec || endpoints.empty()) {
    return absl::UnavailableError(
        absl::StrCat("EXECUTOR_HTTP_ADDR: cannot resolve ", where, ": ", ec.message()));
  }
  const tcp::endpoint endpoint = endpoints.begin()->endpoint();
  tcp::acceptor& acceptor = *impl.acceptor;
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(net::socket_base::max_listen_connections, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("EXECUTOR_HTTP_ADDR: cannot listen on ", where, ": ", ec.message()));
  }
  impl.port = acceptor.local_endpoint().port();
  {
    std::lock_guard lock(impl.mu);
    impl.started = true;
  }
  net::post(acceptor.get_executor(), [impl = impl_.get()] { impl->Accept(); });
  for (int i = 0; i < threads; ++i) {
    impl.threads.emplace_back([impl = impl_.get()] {
      for (;;) {
        try {
          impl->ioc->run();
          return;
        } catch (const std::exception&) {
          // A handler threw past its own guard; keep serving the other connections.
        }
      }
    });
  }
  return absl::OkStatus();
}

int HttpServer::port() const { return impl_->port; }

void HttpServer::Stop() { impl_->Stop(); }

int HttpServer::open_connections() const {
  std::lock_guard lock(impl_->mu);
  return static_cast<int>(impl_->sessions.size());
}

}  // namespace eventbus::executor::service
