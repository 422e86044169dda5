#include "eventbus/kafka/kafka_event_stream.h"

#include <map>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "eventbus/clock.h"
#include "eventbus/options.h"
#include "eventbus/status_macros.h"
#include "kafka_client.h"
#include "kafka_inspector.h"
#include "kafka_subscription.h"
#include "wire_format.h"

namespace eventbus::kafka {
namespace {

constexpr absl::string_view kBackendName = "kafka";
constexpr absl::string_view kOwnOptionPrefix = "eventbus.";

class KafkaEventStream final : public EventStream {
 public:
  explicit KafkaEventStream(std::shared_ptr<KafkaClient> client)
      : client_(std::move(client)), inspector_(NewKafkaInspector(client_)) {}

  absl::string_view backend_name() const override { return kBackendName; }

  Capabilities capabilities() const override {
    const KafkaOptions& options = client_->options();
    Capabilities caps;
    caps.persistent = true;
    caps.ordered_per_key = options.ordered_per_key;
    // A revoked partition is redelivered from its last committed offset: events completed
    // above a gap come again.
    caps.duplicates_possible = true;
    // Only delays that go through the retry topic outlive the nacking consumer.
    caps.native_delay =
        options.retry_topic_threshold == absl::ZeroDuration() && !options.ordered_per_key;
    caps.reclaim_from_other_consumers = false;
    caps.atomic_dead_letter = false;
    caps.max_event_bytes = options.max_event_bytes;
    caps.inspection = true;
    return caps;
  }

  StreamInspector* inspector() override { return inspector_.get(); }

  absl::Status Flush(absl::Duration timeout) override { return client_->Flush(timeout); }

  absl::StatusOr<std::unique_ptr<Subscription>> Subscribe(
      const SubscribeOptions& options) override {
    EVENTBUS_ASSIGN_OR_RETURN(std::unique_ptr<KafkaSubscription> sub,
                              KafkaSubscription::Create(client_, options));
    return std::unique_ptr<Subscription>(std::move(sub));
  }

  absl::Status Ping(absl::Duration timeout) override { return client_->Ping(timeout); }

  Clock* clock() const override { return client_->clock(); }

 protected:
  absl::Status DoPublish(absl::string_view stream, Event event, PublishCallback done) override {
    const std::string topic(stream);
    EVENTBUS_ASSIGN_OR_RETURN(KafkaRecord record, EncodeEvent(event));
    EVENTBUS_RETURN_IF_ERROR(client_->EnsureTopic(topic));
    return client_->Produce(topic, record, std::move(done));
  }

 private:
  const std::shared_ptr<KafkaClient> client_;
  const std::unique_ptr<StreamInspector> inspector_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<EventStream>> NewKafkaEventStream(KafkaOptions options,
                                                                 Clock* clock) {
  EVENTBUS_ASSIGN_OR_RETURN(std::shared_ptr<KafkaClient> client,
                            KafkaClient::Create(std::move(options),
                                                clock != nullptr ? clock : Clock::Real()));
  // A consumer configuration is only built at Subscribe; check the user's properties against
  // it now so a typo stops start-up rather than the first subscription.
  EVENTBUS_RETURN_IF_ERROR(client->NewConf({}).status());
  return std::unique_ptr<EventStream>(std::make_unique<KafkaEventStream>(std::move(client)));
}

absl::StatusOr<KafkaOptions> KafkaOptionsFromConfig(const BackendConfig& config) {
  KafkaOptions options;
  if (!config.url.empty()) options.brokers = config.url;
  std::map<std::string, std::string> own;  // eventbus.*; the rest are librdkafka's
  for (const auto& [key, value] : config.options) {
    if (absl::StartsWith(key, kOwnOptionPrefix)) {
      own.emplace(key, value);
      continue;
    }
    // librdkafka takes an empty string as "back to the default" for some properties; here
    // an empty value is an error like everywhere else.
    EVENTBUS_RETURN_IF_ERROR(
        RejectEmptySetting(BackendOptionSetting(kKafkaOptionEnvPrefix, key), value));
    // KAFKA_OPTION_* names turn '_' into '.', which librdkafka's one underscored property
    // does not survive.
    options.properties[key == "log.level" ? "log_level" : key] = value;
  }
  OptionReader reader("Kafka", kKafkaOptionEnvPrefix, own);
  reader.Int("eventbus.partitions", 1, 100'000, &options.partitions);
  reader.Int("eventbus.replication.factor", -1, 1000, &options.replication_factor);
  reader.Require("eventbus.replication.factor", options.replication_factor != 0,
                 "a replication factor >= 1, or -1 for the broker default");
  int64_t retry_threshold_ms = absl::ToInt64Milliseconds(options.retry_topic_threshold);
  reader.Int("eventbus.retry.threshold.ms", 0, int64_t{1} << 40, &retry_threshold_ms);
  options.retry_topic_threshold = absl::Milliseconds(retry_threshold_ms);
  int64_t ack_wait_ms = absl::ToInt64Milliseconds(options.default_ack_wait);
  reader.Int("eventbus.ack.wait.ms", 0, int64_t{1} << 40, &ack_wait_ms);
  options.default_ack_wait = absl::Milliseconds(ack_wait_ms);
  // The broker's own message.max.bytes is an int32.
  reader.Size("eventbus.max.event.bytes", 1, (uint64_t{1} << 31) - 1, &options.max_event_bytes);
  reader.Int("eventbus.max.buffered.events", 1, int64_t{1} << 32, &options.max_buffered_events);
  reader.Size("eventbus.max.buffered.bytes", 1, uint64_t{1} << 40, &options.max_buffered_bytes);
  reader.Bool("eventbus.ordered.per.key", &options.ordered_per_key);
  EVENTBUS_RETURN_IF_ERROR(reader.Finish());
  return options;
}

absl::Status RegisterKafkaBackend(BackendRegistry& registry) {
  BackendRegistration registration;
  registration.name = std::string(kBackendName);
  registration.description =
      "Apache Kafka via librdkafka (consumer groups, out-of-order acks, retry and DLQ topics)";
  registration.url_env = "KAFKA_BROKERS";
  registration.default_url = "127.0.0.1:9092";
  registration.option_env_prefix = std::string(kKafkaOptionEnvPrefix);
  registration.factory =
      [](const BackendConfig& config) -> absl::StatusOr<std::unique_ptr<EventStream>> {
    EVENTBUS_ASSIGN_OR_RETURN(KafkaOptions options, KafkaOptionsFromConfig(config));
    return NewKafkaEventStream(std::move(options), config.clock);
  };
  registration.check_config = [](const BackendConfig& config) -> absl::Status {
    EVENTBUS_ASSIGN_OR_RETURN(KafkaOptions options, KafkaOptionsFromConfig(config));
    return CheckKafkaProperties(options);
  };
  const absl::Status status = registry.Register(std::move(registration));
  if (absl::IsAlreadyExists(status)) return absl::OkStatus();
  return status;
}

}  // namespace eventbus::kafka
