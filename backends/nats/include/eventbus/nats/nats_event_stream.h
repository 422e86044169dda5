#pragma once
// The NATS JetStream backend (nats.c). One JetStream stream per eventbus stream, one durable
// pull consumer per group; CloudEvents attributes travel as NATS headers, data as the payload
// (docs/wire-format.md, "NATS JetStream").
//
// Mechanisms, in short:
// - Publish: js_PublishMsgAsync with Nats-Msg-Id = event id (the server drops a duplicate id
//   within the stream's duplicate window); Flush waits for every PubAck.
// - Fetch: pull requests for the group's durable consumer (explicit ack, AckWait =
//   SubscribeOptions::ack_wait or the configured default) answered into an inbox of the
//   subscription's own (our pull loop, not nats.c's Fetch, which corrupts its heap in 3.4).
// - Ack: +ACK awaiting the server; Nack: -NAK [delay] (kept by the server); Extend: +WPI.
//   AckAsync/NackAsync send at once and complete per batch after one connection flush.
// - Reclaim: the server redelivers what stays unacknowledged past AckWait by itself; Reclaim
//   is a non-blocking fetch that returns whatever the server hands out now.
// - DeadLetter: publish to the dead-letter stream, wait for its PubAck, then Term the original.
// - The connection reconnects by itself (nats.c), forever.
// Thread-safety as EventStream / Subscription document; subscriptions use their stream's
// connection, so close or destroy them before the stream.

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

namespace eventbus::nats {

inline constexpr absl::string_view kDefaultNatsUrl = "nats://127.0.0.1:4222";
// Environment variables with this prefix are options: NATS_OPTION_ACK_WAIT is ack.wait.
inline constexpr absl::string_view kNatsOptionEnvPrefix = "NATS_OPTION_";

enum class StreamStorage { kFile, kMemory };

struct NatsOptions {
  // nats://[user:password@|token@]host:port (tls:// for TLS); comma-separated for a cluster.
  // Credentials in the URL are handed to nats.c, which sends them in CONNECT.
  std::string url = std::string(kDefaultNatsUrl);
  std::string creds_file;   // NATS_OPTION_CREDS_FILE: a .creds file (JWT + NKey seed)
  std::string tls_ca_file;  // NATS_OPTION_TLS_CA: trusted CAs (PEM); turns TLS on
  std::string tls_cert_file;  // NATS_OPTION_TLS_CERT + NATS_OPTION_TLS_KEY: client certificate
  std::string tls_key_file;
  absl::Duration connect_timeout = absl::Seconds(5);
  // Timeout of JetStream API requests (stream/consumer creation, AckSync, DeadLetter's publish).
  absl::Duration request_timeout = absl::Seconds(5);
  // How long an asynchronous publish waits for its PubAck before its callback fails.
  absl::Duration publish_timeout = absl::Seconds(30);
  // Async publishes awaiting a PubAck; Publish blocks briefly, then fails ResourceExhausted.
  int64_t max_pending_publishes = 65'536;
  // Settings of the JetStream streams this backend creates (existing streams are bound as is).
  StreamStorage storage = StreamStorage::kFile;
  int replicas = 1;
  absl::Duration max_age = absl::ZeroDuration();  // zero = unlimited
  int64_t max_bytes = -1;                          // -1 = unlimited
  absl::Duration duplicate_window = absl::Minutes(2);
  // Consumer settings: AckWait when SubscribeOptions::ack_wait is zero; MaxDeliver (-1 =
  // unlimited: a finite MaxDeliver makes the server drop a message from pending silently);
  // MaxAckPending (deliveries outstanding per group).
  absl::Duration default_ack_wait = absl::Seconds(30);
  int64_t max_deliver = -1;
  int64_t max_ack_pending = 20'000;
};

// Options from a BackendConfig: url (empty = kDefaultNatsUrl) and the keys creds.file, tls.ca,
// tls.cert, tls.key (paths), connect.timeout, request.timeout, publish.timeout,
// duplicate.window, ack.wait (durations from 1ms to 24h such as "5s", "250ms", "PT5S"),
// max.age (a duration, "0" = unlimited), storage (file|memory), replicas (1..5), max.bytes
// (-1 = unlimited, or a size such as "1GiB"), max.deliver (-1 = unlimited, or >= 1),
// max.ack.pending, publish.max.pending (integers >= 1); parsed by eventbus/options.h.
// InvalidArgument naming the key (or NATS_URL) otherwise; an empty value is an error.
// Messages show NATS_URL with its credentials redacted (eventbus::RedactUrl).
absl::StatusOr<NatsOptions> NatsOptionsFromConfig(const BackendConfig& config);

// The JetStream stream name for an eventbus stream: '.' becomes '_', letters, digits, '-' and
// '_' stay, every other byte becomes "=XX" (hex). Distinct names can map to the same JetStream
// name ("a.b" and "a_b"); the second is refused with FailedPrecondition at first use.
std::string JetStreamName(absl::string_view stream);

// Connects once to fail fast: Unavailable when unreachable, PermissionDenied when the server
// refuses the credentials, FailedPrecondition when JetStream is not enabled, InvalidArgument
// for bad options. `clock` (not owned, null = real) is what clock() returns; nack delays and
// AckWait are measured by the server's clock.
absl::StatusOr<std::unique_ptr<EventStream>> NewNatsEventStream(NatsOptions options,
                                                               Clock* clock = nullptr);

// Registers "nats" (url from NATS_URL, options from NATS_OPTION_* variables). Idempotent.
absl::Status RegisterNatsBackend(BackendRegistry& registry = BackendRegistry::Global());

}  // namespace eventbus::nats

#pragma GCC visibility pop
