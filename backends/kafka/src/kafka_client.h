#pragma once
// What a KafkaEventStream and its subscriptions share: the configuration, the idempotent
// producer with the thread that serves its delivery reports, and topic creation. Shared
// ownership, so a subscription may outlive the EventStream that made it.

#include <atomic>
#include <functional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "eventbus/clock.h"
#include "eventbus/event_stream.h"
#include "eventbus/kafka/kafka_event_stream.h"
#include "rdkafka_handles.h"
#include "wire_format.h"

namespace eventbus::kafka {

class KafkaClient {
 public:
  static absl::StatusOr<std::shared_ptr<KafkaClient>> Create(KafkaOptions options, Clock* clock);
  ~KafkaClient();

  KafkaClient(const KafkaClient&) = delete;
  KafkaClient& operator=(const KafkaClient&) = delete;

  // A configuration with bootstrap.servers and the user's properties applied over `defaults`;
  // InvalidArgument naming the property librdkafka rejects.
  absl::StatusOr<ConfHandle> NewConf(
      const std::vector<std::pair<std::string, std::string>>& defaults) const;

  // Queues `record` for `topic`; `done` runs once, on the delivery-report thread, with the
  // receipt (stream = `receipt_stream`, id = "partition:offset") or the error.
  absl::Status Produce(const std::string& topic, const KafkaRecord& record,
                       std::function<void(absl::StatusOr<PublishReceipt>)> done);

  // Produce and wait for the delivery report, as long as librdkafka may take to give it
  // (delivery_timeout()): an error means the record was not written and never will be.
  absl::StatusOr<PublishReceipt> ProduceAndWait(const std::string& topic,
                                                const KafkaRecord& record);

  absl::Status Flush(absl::Duration timeout);

  // Creates `topic` with options().partitions unless it exists, then waits until the broker's
  // metadata shows it (a consumer subscribing to a topic its broker does not know yet would
  // wait for the next metadata refresh). Cached: cheap after the first call per topic.
  absl::Status EnsureTopic(const std::string& topic);

  absl::Status Ping(absl::Duration timeout);

  // The producer's message.timeout.ms plus a margin for the delivery-report thread; infinite
  // when message.timeout.ms is 0.
  absl::Duration delivery_timeout() const { return delivery_timeout_; }

  const KafkaOptions& options() const { return options_; }
  Clock* clock() const { return clock_; }

 private:
  KafkaClient(KafkaOptions options, Clock* clock) : options_(std::move(options)), clock_(clock) {}
  absl::Status WaitForTopicMetadata(const std::string& topic, absl::Time deadline);
  // One metadata round trip for `topic` alone. Never auto-creates it (the producer sets
  // allow.auto.create.topics=false).
  absl::StatusOr<bool> TopicExists(const std::string& topic, absl::Duration timeout);

  const KafkaOptions options_;
  Clock* const clock_;
  absl::Duration delivery_timeout_ = absl::InfiniteDuration();
  KafkaHandle producer_;
  std::atomic<bool> stop_{false};
  std::thread poller_;

  absl::Mutex topics_mu_;
  absl::flat_hash_set<std::string> topics_ ABSL_GUARDED_BY(topics_mu_);
};

// The record a consumed message carries (key, value, headers in wire order).
KafkaRecord RecordOf(const rd_kafka_message_t* message);

// A configuration with bootstrap.servers and `options.properties` applied over `defaults`;
// InvalidArgument naming the property librdkafka rejects (the value shown only when the
// property is known and its name is not a secret's, eventbus/redact.h). Connects nowhere.
absl::StatusOr<ConfHandle> NewKafkaConf(
    const KafkaOptions& options, const std::vector<std::pair<std::string, std::string>>& defaults);

// NewKafkaConf(options, {}).status(): whether librdkafka accepts every property.
absl::Status CheckKafkaProperties(const KafkaOptions& options);

// "partition:offset", the Delivery/PublishReceipt id of a record.
std::string RecordId(int32_t partition, int64_t offset);

}  // namespace eventbus::kafka
