#pragma once
// The Kafka backend (librdkafka): the production backend. Events travel in the CloudEvents
// Kafka binding (docs/wire-format.md). Per consumer group it gives at-least-once delivery with
// many events of one partition in flight at once, completing out of order: an Ack marks one
// event done and the group's committed offset moves to the highest contiguous completed
// offset + 1 per partition. Nack with a short delay redelivers locally; a long delay goes
// through the `<stream>.retry` topic (so it survives this consumer). Dead letters go to
// `<stream>.dlq` with the origin topic, partition, offset, attempts and reason in headers.
//
// The delivery count survives a rebalance and a restart: deliveries a consumer gives back
// (its partition revoked, Close, destruction) are re-produced to the retry topic with their
// count before the commit moves past them (so Close, and a revoke, wait for those records'
// delivery reports: up to the producer's message.timeout.ms while the broker is unreachable).
//
// Not given: reclaiming another consumer's deliveries (they come back by rebalance when it
// leaves or dies); an atomic dead letter (produce, then mark done); the delivery count after
// a crash or a lost assignment (session timeout), or in ordered_per_key mode, where the
// redelivery restarts at 1.

#include <cstddef>
#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "eventbus/event_stream.h"
#include "eventbus/registry.h"

#pragma GCC visibility push(default)

namespace eventbus::kafka {

// Environment variables with this prefix are options: KAFKA_OPTION_SECURITY_PROTOCOL is
// security.protocol, KAFKA_OPTION_EVENTBUS_PARTITIONS is eventbus.partitions.
inline constexpr absl::string_view kKafkaOptionEnvPrefix = "KAFKA_OPTION_";

struct KafkaOptions {
  // bootstrap.servers: comma-separated host:port list.
  std::string brokers = "127.0.0.1:9092";
  // Any librdkafka property (https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md),
  // e.g. security.protocol, sasl.mechanisms, ssl.ca.location; applied to the producer and
  // every consumer. A property librdkafka rejects fails NewKafkaEventStream with
  // InvalidArgument naming it; its value is shown only when librdkafka knows the property
  // and its name is not a secret's (eventbus::IsSecretSettingName: sasl.password,
  // ssl.key.password, sasl.oauthbearer.client.secret, sasl.jaas.config, ...). The consumer
  // settings this backend's semantics rest on (group.id, enable.auto.offset.store,
  // enable.auto.commit) cannot be overridden.
  std::map<std::string, std::string> properties;
  // Partitions of the topics this backend creates (stream, .retry, .dlq). Existing topics are
  // used as they are.
  int partitions = 3;
  // -1 = the broker's default.replication.factor.
  int replication_factor = -1;
  // Nack delays up to this are redelivered by the consumer itself (the offset stays
  // uncommitted meanwhile); longer ones through the retry topic. Zero sends every delayed nack
  // through the retry topic (then Capabilities::native_delay is declared).
  absl::Duration retry_topic_threshold = absl::Seconds(30);
  // At most one event per key in flight per consumer, redelivered in order (nacks stay local).
  bool ordered_per_key = false;
  // Lease of a delivery when SubscribeOptions::ack_wait is zero; zero = no expiry.
  absl::Duration default_ack_wait = absl::ZeroDuration();
  // The largest event Publish accepts. The broker's message.max.bytes (topic
  // max.message.bytes) must allow it plus headers; Kafka's default is 1 MB.
  size_t max_event_bytes = size_t{2} << 20;
  // A consumer pauses fetching while it holds this many records (buffered ahead of Fetch,
  // delayed by a nack, or leased and not yet settled) or this many bytes of them (value, key
  // and headers), and resumes at half. Large enough that Fetch from a backlog returns full
  // batches; librdkafka's own prefetch (queued.max.messages.kbytes, 16 MB here) comes on top.
  size_t max_buffered_events = 10000;
  size_t max_buffered_bytes = size_t{64} << 20;
  // Bound on blocking broker round trips (topic creation, commit, metadata). Dead letters and
  // retry records wait for their delivery report instead, which librdkafka gives within the
  // producer's message.timeout.ms (60 s unless set in `properties`), so a record reported as
  // not written is never written later.
  absl::Duration operation_timeout = absl::Seconds(15);
};

// Connects the producer and checks the configuration. `clock` is not owned and must outlive
// the stream; null means the real clock. Errors: InvalidArgument naming a bad property.
absl::StatusOr<std::unique_ptr<EventStream>> NewKafkaEventStream(KafkaOptions options,
                                                                 Clock* clock = nullptr);

// Options from a BackendConfig: url = brokers; option keys starting with "eventbus." are
// ours (eventbus.partitions 1..100000, eventbus.replication.factor -1 or 1..1000,
// eventbus.retry.threshold.ms and eventbus.ack.wait.ms integers >= 0,
// eventbus.ordered.per.key a boolean, eventbus.max.event.bytes and eventbus.max.buffered.bytes
// sizes such as "2MiB", eventbus.max.buffered.events an integer >= 1; eventbus/options.h),
// every other key is a librdkafka property (checked by NewKafkaEventStream).
// InvalidArgument naming the key for unknown eventbus.* keys, bad or empty values.
absl::StatusOr<KafkaOptions> KafkaOptionsFromConfig(const BackendConfig& config);

// Registers "kafka": url from KAFKA_BROKERS (default 127.0.0.1:9092), options from
// KAFKA_OPTION_* (KAFKA_OPTION_SECURITY_PROTOCOL -> security.protocol). Idempotent.
absl::Status RegisterKafkaBackend(BackendRegistry& registry = BackendRegistry::Global());

}  // namespace eventbus::kafka

#pragma GCC visibility pop
