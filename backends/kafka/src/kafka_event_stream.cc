#include "eventbus/kafka/kafka_event_stream.h"

#include <memory>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "eventbus/clock.h"
#include "eventbus/options.h"
#include "eventbus/status_macros.h"
#include "kafka_client.h"
#include "kafka_subscription.h"
#include "wire_format.h"

namespace eventbus::kafka {
namespace {

constexpr absl::string_view kBackendName = "kafka";
constexpr absl::string_view kOwnOptionPrefix = "eventbus.";

class KafkaEventStream final : public EventStream {
 public:
  explicit KafkaEventStream(std::shared_ptr<KafkaClient> client) : client_(std::move(client)) {}

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
    return caps;
  }

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
  for (const auto& [key, value] : config.options) {
    const std::string setting = BackendOptionSetting(kKafkaOptionEnvPrefix, key);
    if (!absl::StartsWith(key, kOwnOptionPrefix)) {
      // librdkafka takes an empty string as "back to the default" for some properties; here
      // an empty value is an error like everywhere else.
      EVENTBUS_RETURN_IF_ERROR(RejectEmptySetting(setting, value));
      // KAFKA_OPTION_* names turn '_' into '.', which librdkafka's one underscored property
      // does not survive.
      options.properties[key == "log.level" ? "log_level" : key] = value;
      continue;
    }
    if (key == "eventbus.partitions") {
      EVENTBUS_ASSIGN_OR_RETURN(options.partitions, ParseIntSetting(setting, value, 1, 100'000));
    } else if (key == "eventbus.replication.factor") {
      EVENTBUS_ASSIGN_OR_RETURN(options.replication_factor,
                                ParseIntSetting(setting, value, -1, 1000));
      if (options.replication_factor == 0) {
        return InvalidSetting(setting, value, "a replication factor >= 1, or -1 for the broker default");
      }
    } else if (key == "eventbus.retry.threshold.ms") {
      EVENTBUS_ASSIGN_OR_RETURN(int64_t ms, ParseIntSetting(setting, value, 0, int64_t{1} << 40));
      options.retry_topic_threshold = absl::Milliseconds(ms);
    } else if (key == "eventbus.ack.wait.ms") {
      EVENTBUS_ASSIGN_OR_RETURN(int64_t ms, ParseIntSetting(setting, value, 0, int64_t{1} << 40));
      options.default_ack_wait = absl::Milliseconds(ms);
    } else if (key == "eventbus.max.event.bytes") {
      // The broker's own message.max.bytes is an int32.
      EVENTBUS_ASSIGN_OR_RETURN(options.max_event_bytes,
                                ParseSizeSetting(setting, value, 1, (uint64_t{1} << 31) - 1));
    } else if (key == "eventbus.max.buffered.events") {
      EVENTBUS_ASSIGN_OR_RETURN(options.max_buffered_events,
                                ParseIntSetting(setting, value, 1, int64_t{1} << 32));
    } else if (key == "eventbus.max.buffered.bytes") {
      EVENTBUS_ASSIGN_OR_RETURN(options.max_buffered_bytes,
                                ParseSizeSetting(setting, value, 1, uint64_t{1} << 40));
    } else if (key == "eventbus.ordered.per.key") {
      EVENTBUS_ASSIGN_OR_RETURN(options.ordered_per_key, ParseBoolSetting(setting, value));
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown Kafka option ", setting,
          "; valid eventbus.* options: eventbus.partitions, eventbus.replication.factor, "
          "eventbus.retry.threshold.ms, eventbus.ack.wait.ms, eventbus.max.event.bytes, "
          "eventbus.max.buffered.events, eventbus.max.buffered.bytes, eventbus.ordered.per.key"));
    }
  }
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
