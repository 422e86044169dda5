#include "eventbus/kafka/kafka_event_stream.h"

#include <memory>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "eventbus/clock.h"
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

absl::Status BadOption(absl::string_view key, absl::string_view value, absl::string_view want) {
  return absl::InvalidArgumentError(
      absl::StrCat("Kafka option ", key, "=\"", value, "\": expected ", want));
}

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
    if (!absl::StartsWith(key, kOwnOptionPrefix)) {
      // KAFKA_OPTION_* names turn '_' into '.', which librdkafka's one underscored property
      // does not survive.
      options.properties[key == "log.level" ? "log_level" : key] = value;
      continue;
    }
    int64_t number = 0;
    const bool is_number = absl::SimpleAtoi(value, &number);
    if (key == "eventbus.partitions") {
      if (!is_number || number < 1 || number > 100000) {
        return BadOption(key, value, "a partition count >= 1");
      }
      options.partitions = static_cast<int>(number);
    } else if (key == "eventbus.replication.factor") {
      if (!is_number || number == 0 || number < -1 || number > 1000) {
        return BadOption(key, value, "a replication factor >= 1, or -1 for the broker default");
      }
      options.replication_factor = static_cast<int>(number);
    } else if (key == "eventbus.retry.threshold.ms") {
      if (!is_number || number < 0) return BadOption(key, value, "milliseconds >= 0");
      options.retry_topic_threshold = absl::Milliseconds(number);
    } else if (key == "eventbus.ack.wait.ms") {
      if (!is_number || number < 0) return BadOption(key, value, "milliseconds >= 0");
      options.default_ack_wait = absl::Milliseconds(number);
    } else if (key == "eventbus.max.event.bytes") {
      if (!is_number || number < 1) return BadOption(key, value, "a byte count >= 1");
      options.max_event_bytes = static_cast<size_t>(number);
    } else if (key == "eventbus.max.buffered.events") {
      if (!is_number || number < 1) return BadOption(key, value, "a count >= 1");
      options.max_buffered_events = static_cast<size_t>(number);
    } else if (key == "eventbus.max.buffered.bytes") {
      if (!is_number || number < 1) return BadOption(key, value, "a byte count >= 1");
      options.max_buffered_bytes = static_cast<size_t>(number);
    } else if (key == "eventbus.ordered.per.key") {
      if (value == "true" || value == "1") {
        options.ordered_per_key = true;
      } else if (value == "false" || value == "0") {
        options.ordered_per_key = false;
      } else {
        return BadOption(key, value, "true or false");
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown Kafka option ", key,
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
  registration.option_env_prefix = "KAFKA_OPTION_";
  registration.factory =
      [](const BackendConfig& config) -> absl::StatusOr<std::unique_ptr<EventStream>> {
    EVENTBUS_ASSIGN_OR_RETURN(KafkaOptions options, KafkaOptionsFromConfig(config));
    return NewKafkaEventStream(std::move(options), config.clock);
  };
  const absl::Status status = registry.Register(std::move(registration));
  if (absl::IsAlreadyExists(status)) return absl::OkStatus();
  return status;
}

}  // namespace eventbus::kafka
