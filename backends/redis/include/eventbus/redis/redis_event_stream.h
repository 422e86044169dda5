#pragma once
// The Redis Streams backend (hiredis). One stream entry per event, one field per CloudEvents
// attribute (docs/wire-format.md); consumer groups map to Redis consumer groups.
//
// Mechanisms, in short (details in docs/wire-format.md, "Redis Streams"):
// - Publish: a writer thread pipelines XADDs in batches on its own connection.
// - Subscribe: XGROUP CREATE .. MKSTREAM; Fetch: XREADGROUP on a connection of its own.
// - Nack(delay): the entry stays in the group's pending list, parked under a reserved consumer,
//   and its id goes into the sorted set "<stream>:delayed:<group>" scored by its due time
//   (the stream clock's time); every consumer of the group claims due entries in Fetch.
// - Reclaim: XAUTOCLAIM; DeadLetter: XADD to the DLQ stream + XACK in one Lua script.
// - Every connection reconnects by itself with exponential backoff.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "eventbus/event_stream.h"
#include "eventbus/registry.h"

#pragma GCC visibility push(default)

namespace eventbus::redis {

inline constexpr absl::string_view kDefaultRedisUrl = "redis://127.0.0.1:6379";
// Environment variables with this prefix are options: REDIS_OPTION_FETCH_SLICE is fetch.slice.
inline constexpr absl::string_view kRedisOptionEnvPrefix = "REDIS_OPTION_";

// Where the server is and how to log in; parsed from REDIS_URL.
struct RedisEndpoint {
  std::string host = "127.0.0.1";  // TCP host (empty for a unix socket)
  int port = 6379;                  // TCP port
  std::string unix_path;            // unix socket path (empty for TCP)
  std::string user;                 // ACL user (Redis 6+); empty = "default"
  std::string password;             // empty = no AUTH
  int db = 0;                       // SELECT index

  // The address without credentials, e.g. "redis://127.0.0.1:6379/0": safe for messages.
  std::string Describe() const;
};

// Parses `redis://[[user]:password@]host[:port][/db]` (IPv6 hosts in brackets) and
// `unix://[[user]:password@]/path/to/socket[?db=N]`; user and password may be
// percent-encoded. InvalidArgument naming REDIS_URL and what is wrong (never the password)
// otherwise, including for `rediss://` (hiredis 0.14 has no TLS).
absl::StatusOr<RedisEndpoint> ParseRedisUrl(absl::string_view url);

struct RedisOptions {
  RedisEndpoint endpoint;  // default: 127.0.0.1:6379, db 0, no AUTH
  // Limits for establishing a connection (TCP connect + AUTH + SELECT) and for one command.
  absl::Duration connect_timeout = absl::Seconds(5);
  absl::Duration command_timeout = absl::Seconds(5);
  // Delay before reconnecting after a failed attempt, doubled up to the maximum.
  absl::Duration reconnect_backoff_initial = absl::Milliseconds(50);
  absl::Duration reconnect_backoff_max = absl::Seconds(2);
  // XADD ... MAXLEN ~ N on every stream written (events and dead letters); 0 = no trimming.
  // Trimmed entries still pending in a group are acknowledged when Reclaim meets them.
  int64_t max_stream_length = 0;
  // XADDs per pipelined round trip of the writer thread.
  int publish_batch_size = 256;
  // Events queued but not yet written; Publish returns ResourceExhausted beyond.
  size_t max_queued_publishes = 100'000;
  // How long the writer keeps retrying an event while the server is unreachable before
  // failing its callback with Unavailable.
  absl::Duration publish_retry_timeout = absl::Seconds(30);
  // Fetch blocks in XREADGROUP slices of at most this long, so delayed redeliveries that come
  // due and Close() are noticed in between.
  absl::Duration fetch_slice = absl::Milliseconds(200);
  // Largest event accepted (Capabilities::max_event_bytes).
  size_t max_event_bytes = size_t{16} << 20;
};

// Options from a BackendConfig: url (empty = kDefaultRedisUrl) and the keys
// connect.timeout, command.timeout, reconnect.backoff.initial, reconnect.backoff.max,
// publish.retry.timeout, fetch.slice (durations from 1ms to 1h such as "5s", "250ms",
// "PT5S"), stream.maxlen (0..2^48), publish.batch.size (1..100000), publish.queue.limit
// (integers), max.event.bytes (a size from 1KiB to 512MiB such as "16MiB"); parsed by
// eventbus/options.h. InvalidArgument naming the key (or REDIS_URL) otherwise, also when the
// initial reconnect backoff exceeds the maximum.
absl::StatusOr<RedisOptions> RedisOptionsFromConfig(const BackendConfig& config);

// Connects (and AUTHs/SELECTs) once to fail fast on a bad address or refused credentials:
// Unavailable when unreachable, PermissionDenied/Unauthenticated when the server refuses the
// credentials, InvalidArgument for bad options. `clock` (not owned, null = real) measures
// nack delays; connection timeouts and backoff use real time.
// Sets SIGPIPE to ignored if it is at its default action (hiredis writes with write(2), and a
// server that closes the connection must not kill the process); a handler the application
// installed is left alone.
absl::StatusOr<std::unique_ptr<EventStream>> NewRedisEventStream(RedisOptions options,
                                                                 Clock* clock = nullptr);

// Registers "redis" (url from REDIS_URL, options from REDIS_OPTION_* variables). Idempotent.
absl::Status RegisterRedisBackend(BackendRegistry& registry = BackendRegistry::Global());

}  // namespace eventbus::redis

#pragma GCC visibility pop
