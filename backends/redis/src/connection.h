#pragma once
// One reconnecting hiredis connection. Private to backends/redis.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "eventbus/redis/redis_event_stream.h"
#include "hiredis_handles.h"

namespace eventbus::redis {

// A Lua script run with EVALSHA (loaded on first use and again after NOSCRIPT, e.g. when the
// server restarted without its script cache).
struct LuaScript {
  absl::string_view name;  // for error messages
  absl::string_view source;
};

// Not thread-safe (hiredis contexts are not): the owner serialises calls, by a mutex or by
// using it from one thread only.
//
// The connection is established lazily and re-established after any I/O error. Failed
// attempts back off exponentially (real time: the backoff protects a real server), and calls
// in between fail fast with the last error, so callers never hammer a down server.
class RedisConnection {
 public:
  struct Settings {
    RedisEndpoint endpoint;
    absl::Duration connect_timeout = absl::Seconds(5);
    absl::Duration command_timeout = absl::Seconds(5);
    absl::Duration backoff_initial = absl::Milliseconds(50);
    absl::Duration backoff_max = absl::Seconds(2);

    static Settings From(const RedisOptions& options) {
      return Settings{options.endpoint, options.connect_timeout, options.command_timeout,
                      options.reconnect_backoff_initial, options.reconnect_backoff_max};
    }
  };

  explicit RedisConnection(Settings settings);

  // Connects, AUTHs, SELECTs and PINGs unless already connected. Unavailable while the server
  // is unreachable (or the backoff after a failed attempt has not passed), PermissionDenied /
  // Unauthenticated when the server refuses the credentials.
  absl::Status EnsureConnected();

  // Runs one command. Error replies become a Status (ReplyErrorToStatus). `timeout` > 0
  // overrides the command timeout for this call (a blocking XREADGROUP needs its BLOCK time
  // plus slack).
  absl::StatusOr<ReplyPtr> Command(const std::vector<std::string>& args,
                                   absl::Duration timeout = absl::ZeroDuration());

  // Sends every command in one write and reads every reply. Error replies stay replies (the
  // caller decides per command). On an I/O error the replies read so far are returned along
  // with the error.
  struct PipelineResult {
    std::vector<ReplyPtr> replies;
    absl::Status status;
  };
  // The commands are not copied; they must stay alive for the call.
  PipelineResult Pipeline(const std::vector<const std::vector<std::string>*>& commands);
  // The same for commands already in RESP (wire::RespCommand); `name` names them in errors.
  PipelineResult PipelineFormatted(const std::vector<absl::string_view>& commands,
                                   absl::string_view name);

  // EVALSHA with the script's keys and arguments.
  absl::StatusOr<ReplyPtr> Eval(const LuaScript& script, const std::vector<std::string>& keys,
                                const std::vector<std::string>& args);

  void Disconnect();
  bool connected() const { return context_ != nullptr; }
  // Incremented by every successful (re)connect.
  uint64_t generation() const { return generation_; }
  // Real time before which a new connection attempt will not be made.
  absl::Time next_attempt() const { return next_attempt_; }
  const Settings& settings() const { return settings_; }
  std::string Describe() const { return settings_.endpoint.Describe(); }

 private:
  // Appends `count` commands (`append(i)`, a hiredis status) in one write and reads their
  // replies; `name(i)` names a command in errors.
  PipelineResult RunPipeline(size_t count, absl::FunctionRef<int(size_t)> append,
                             absl::FunctionRef<std::string(size_t)> name);
  absl::Status Connect();
  absl::StatusOr<ReplyPtr> RawCommand(const std::vector<std::string>& args);
  void SetTimeout(absl::Duration timeout);

  Settings settings_;
  ContextPtr context_;
  absl::Duration current_timeout_ = absl::ZeroDuration();
  uint64_t generation_ = 0;
  int failed_attempts_ = 0;  // consecutive failed connects (for the log)
  absl::Duration backoff_;
  absl::Time next_attempt_ = absl::InfinitePast();
  absl::Status last_connect_error_;
  // Script source address -> SHA1, valid for the current connection.
  absl::flat_hash_map<const char*, std::string> script_shas_;
};

}  // namespace eventbus::redis
