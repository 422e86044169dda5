#include "kafka_client.h"

#include <memory>
#include <optional>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "eventbus/options.h"
#include "eventbus/redact.h"
#include "eventbus/log.h"
#include "eventbus/status_macros.h"

namespace eventbus::kafka {
namespace {

// librdkafka's own diagnostics (syslog levels) go to the eventbus log sink instead of stderr.
void OnLibrdkafkaLog(const rd_kafka_t* rk, int level, const char* facility, const char* message) {
  const LogLevel ours = level <= 3 ? LogLevel::kError
                        : level == 4 ? LogLevel::kWarning
                        : level <= 6 ? LogLevel::kInfo
                                     : LogLevel::kDebug;
  if (!LogEnabled(ours)) return;
  Log(ours, "librdkafka",
      absl::StrCat(rk != nullptr ? rd_kafka_name(rk) : "", " ", facility, ": ", message));
}

// Carried through librdkafka as the message opaque; owned by the message until its delivery
// report.
struct ProduceContext {
  std::function<void(absl::StatusOr<PublishReceipt>)> done;
  std::string topic;
};

void OnDeliveryReport(rd_kafka_t*, const rd_kafka_message_t* message, void*) {
  std::unique_ptr<ProduceContext> context(static_cast<ProduceContext*>(message->_private));
  if (context == nullptr || !context->done) return;
  if (message->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    context->done(ToStatus(message->err, absl::StrCat("producing to ", context->topic)));
    return;
  }
  context->done(PublishReceipt{context->topic, RecordId(message->partition, message->offset)});
}

// librdkafka scans for timed-out messages about once a second, and our report thread polls
// every 100 ms: the report of a message that timed out comes a little after its timeout.
constexpr absl::Duration kDeliveryReportMargin = absl::Seconds(5);

int TimeoutMs(absl::Duration d) {
  if (d <= absl::ZeroDuration()) return 0;
  return static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(d) + 1, 1 << 30));
}

}  // namespace

std::string RecordId(int32_t partition, int64_t offset) {
  return absl::StrCat(partition, ":", offset);
}

absl::StatusOr<std::shared_ptr<KafkaClient>> KafkaClient::Create(KafkaOptions options,
                                                                 Clock* clock) {
  if (options.brokers.empty()) return absl::InvalidArgumentError("KAFKA_BROKERS is empty");
  if (options.partitions < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("partitions must be at least 1, not ", options.partitions));
  }
  if (options.retry_topic_threshold < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("retry_topic_threshold must not be negative");
  }
  if (options.max_buffered_events == 0) {
    return absl::InvalidArgumentError("max_buffered_events must be at least 1");
  }
  if (options.max_buffered_bytes == 0) {
    return absl::InvalidArgumentError("max_buffered_bytes must be at least 1");
  }
  std::shared_ptr<KafkaClient> client(new KafkaClient(std::move(options), clock));
  const std::string max_bytes = absl::StrCat(
      std::max<size_t>(client->options_.max_event_bytes + (size_t{1} << 20), 4u << 20));
  EVENTBUS_ASSIGN_OR_RETURN(
      ConfHandle conf,
      client->NewConf({{"enable.idempotence", "true"},
                       {"linger.ms", "5"},
                       {"message.max.bytes", max_bytes},
                       {"message.timeout.ms", "60000"},
                       {"socket.keepalive.enable", "true"},
                       // Topics are created explicitly, with the configured partitions.
                       {"allow.auto.create.topics", "false"}}));
  {
    char value[32];
    size_t size = sizeof(value);
    int64_t ms = 0;
    if (rd_kafka_conf_get(conf.get(), "message.timeout.ms", value, &size) == RD_KAFKA_CONF_OK &&
        absl::SimpleAtoi(value, &ms) && ms > 0) {
      client->delivery_timeout_ = absl::Milliseconds(ms) + kDeliveryReportMargin;
    }
  }
  rd_kafka_conf_set_dr_msg_cb(conf.get(), &OnDeliveryReport);
  char errstr[512];
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf.get(), errstr, sizeof(errstr));
  if (rk == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("creating the Kafka producer: ", errstr));
  }
  conf.release();  // rd_kafka_new took it
  client->producer_.reset(rk);
  // Delivery reports (and so Publish callbacks) are served here, not on callers' threads.
  client->poller_ = std::thread([raw = client.get()] {
    while (!raw->stop_.load(std::memory_order_acquire)) {
      rd_kafka_poll(raw->producer_.get(), 100);
    }
  });
  return client;
}

KafkaClient::~KafkaClient() {
  stop_.store(true, std::memory_order_release);
  if (poller_.joinable()) poller_.join();
  if (producer_ != nullptr) {
    rd_kafka_flush(producer_.get(), TimeoutMs(options_.operation_timeout));
    // Whatever could not be delivered still gets its callback (an error), never silence.
    rd_kafka_purge(producer_.get(), RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_poll(producer_.get(), 0);
  }
}

absl::StatusOr<ConfHandle> NewKafkaConf(
    const KafkaOptions& options,
    const std::vector<std::pair<std::string, std::string>>& defaults) {
  ConfHandle conf(rd_kafka_conf_new());
  rd_kafka_conf_set_log_cb(conf.get(), &OnLibrdkafkaLog);
  char errstr[512];
  auto set = [&](const std::string& name, const std::string& value) -> absl::Status {
    const rd_kafka_conf_res_t result =
        rd_kafka_conf_set(conf.get(), name.c_str(), value.c_str(), errstr, sizeof(errstr));
    if (result == RD_KAFKA_CONF_OK) return absl::OkStatus();
    const std::string setting = name == "bootstrap.servers" && value == options.brokers
                                    ? std::string("bootstrap.servers (KAFKA_BROKERS)")
                                    : BackendOptionSetting(kKafkaOptionEnvPrefix, name);
    // An unknown name may be a misspelt secret (sasl.pasword), so its value is never shown:
    // the name is what is wrong. A known secret's value is hidden, also from librdkafka's
    // message, which may quote it.
    if (result == RD_KAFKA_CONF_UNKNOWN || IsSecretSettingName(name)) {
      std::string reason(errstr);
      if (!value.empty()) absl::StrReplaceAll({{value, "[redacted]"}}, &reason);
      return absl::InvalidArgumentError(absl::StrCat(
          "Kafka property ", setting, " rejected (value not shown): ", reason));
    }
    return absl::InvalidArgumentError(
        absl::StrCat("Kafka property ", setting, "=\"", value, "\" rejected: ", errstr));
  };
  EVENTBUS_RETURN_IF_ERROR(set("bootstrap.servers", options.brokers));
  for (const auto& [name, value] : defaults) EVENTBUS_RETURN_IF_ERROR(set(name, value));
  for (const auto& [name, value] : options.properties) EVENTBUS_RETURN_IF_ERROR(set(name, value));
  return conf;
}

absl::Status CheckKafkaProperties(const KafkaOptions& options) {
  return NewKafkaConf(options, {}).status();
}

absl::StatusOr<ConfHandle> KafkaClient::NewConf(
    const std::vector<std::pair<std::string, std::string>>& defaults) const {
  return NewKafkaConf(options_, defaults);
}

absl::Status KafkaClient::Produce(const std::string& topic, const KafkaRecord& record,
                                  std::function<void(absl::StatusOr<PublishReceipt>)> done) {
  HeadersHandle headers(rd_kafka_headers_new(record.headers.size()));
  for (const auto& [name, value] : record.headers) {
    rd_kafka_header_add(headers.get(), name.data(), static_cast<ssize_t>(name.size()),
                        value.data(), static_cast<ssize_t>(value.size()));
  }
  auto context = std::make_unique<ProduceContext>(ProduceContext{std::move(done), topic});
  // An empty value must stay an empty value (not a null one), so never pass a null pointer.
  static const char kEmpty[1] = {0};
  const char* value = record.value.empty() ? kEmpty : record.value.data();
  const rd_kafka_resp_err_t err = rd_kafka_producev(
      producer_.get(), RD_KAFKA_V_TOPIC(topic.c_str()),
      RD_KAFKA_V_KEY(record.key.has_value() ? record.key->data() : nullptr,
                     record.key.has_value() ? record.key->size() : 0),
      RD_KAFKA_V_VALUE(const_cast<char*>(value), record.value.size()),
      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(headers.get()),
      RD_KAFKA_V_OPAQUE(context.get()), RD_KAFKA_V_END);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return ToStatus(err, absl::StrCat("queueing a record for ", topic));
  }
  headers.release();  // owned by the message now
  context.release();  // freed by OnDeliveryReport
  return absl::OkStatus();
}

absl::StatusOr<PublishReceipt> KafkaClient::ProduceAndWait(const std::string& topic,
                                                           const KafkaRecord& record) {
  struct Outcome {
    absl::Mutex mu;
    std::optional<absl::StatusOr<PublishReceipt>> result ABSL_GUARDED_BY(mu);
  };
  // Shared: the report may still arrive after we stopped waiting.
  auto outcome = std::make_shared<Outcome>();
  EVENTBUS_RETURN_IF_ERROR(Produce(topic, record, [outcome](absl::StatusOr<PublishReceipt> r) {
    absl::MutexLock lock(&outcome->mu);
    outcome->result = std::move(r);
  }));
  absl::MutexLock lock(&outcome->mu);
  auto has_result = [&]() ABSL_SHARED_LOCKS_REQUIRED(outcome->mu) {
    return outcome->result.has_value();
  };
  if (!outcome->mu.AwaitWithTimeout(absl::Condition(&has_result), delivery_timeout_)) {
    // Only if librdkafka broke its own message timeout; the record's fate is unknown.
    return absl::DeadlineExceededError(
        absl::StrCat("producing to ", topic, ": no delivery report within ",
                     absl::FormatDuration(delivery_timeout_)));
  }
  return *outcome->result;
}

absl::Status KafkaClient::Flush(absl::Duration timeout) {
  return ToStatus(rd_kafka_flush(producer_.get(), TimeoutMs(timeout)), "flushing the producer");
}

absl::Status KafkaClient::EnsureTopic(const std::string& topic) {
  {
    absl::MutexLock lock(&topics_mu_);
    if (topics_.contains(topic)) return absl::OkStatus();
  }
  const absl::Time deadline = absl::Now() + options_.operation_timeout;
  // An existing topic needs no CreateTopics (which production ACLs often deny).
  absl::StatusOr<bool> exists = TopicExists(topic, options_.operation_timeout);
  if (!exists.ok()) return exists.status();
  if (*exists) {
    absl::MutexLock lock(&topics_mu_);
    topics_.insert(topic);
    return absl::OkStatus();
  }
  char errstr[512];
  NewTopicHandle new_topic(rd_kafka_NewTopic_new(topic.c_str(), options_.partitions,
                                                 options_.replication_factor, errstr,
                                                 sizeof(errstr)));
  if (new_topic == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("topic ", topic, ": ", errstr));
  }
  AdminOptionsHandle admin_options(
      rd_kafka_AdminOptions_new(producer_.get(), RD_KAFKA_ADMIN_OP_CREATETOPICS));
  rd_kafka_AdminOptions_set_operation_timeout(admin_options.get(),
                                              TimeoutMs(options_.operation_timeout), errstr,
                                              sizeof(errstr));
  rd_kafka_AdminOptions_set_request_timeout(admin_options.get(),
                                            TimeoutMs(options_.operation_timeout), errstr,
                                            sizeof(errstr));
  QueueHandle queue(rd_kafka_queue_new(producer_.get()));
  rd_kafka_NewTopic_t* topics[] = {new_topic.get()};
  rd_kafka_CreateTopics(producer_.get(), topics, 1, admin_options.get(), queue.get());
  EventHandle event(rd_kafka_queue_poll(queue.get(), TimeoutMs(options_.operation_timeout) + 1000));
  if (event == nullptr) {
    return absl::UnavailableError(absl::StrCat("creating topic ", topic, ": no answer within ",
                                               absl::FormatDuration(options_.operation_timeout)));
  }
  const std::string context = absl::StrCat("creating topic ", topic);
  if (rd_kafka_event_error(event.get()) != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return ToStatus(rd_kafka_event_error(event.get()), context);
  }
  const rd_kafka_CreateTopics_result_t* result = rd_kafka_event_CreateTopics_result(event.get());
  size_t count = 0;
  const rd_kafka_topic_result_t** results = rd_kafka_CreateTopics_result_topics(result, &count);
  bool created = false;  // not when another client created it meanwhile
  for (size_t i = 0; i < count; ++i) {
    const rd_kafka_resp_err_t err = rd_kafka_topic_result_error(results[i]);
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) created = true;
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR && err != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
      const char* message = rd_kafka_topic_result_error_string(results[i]);
      return absl::Status(ToStatus(err, context).code(),
                          absl::StrCat(context, ": ", rd_kafka_err2name(err), " (",
                                       message != nullptr ? message : "", ")"));
    }
  }
  // Creating topics is a deployment decision: say so, so that nobody learns about the
  // partition count only when a consumer idles.
  if (created) {
    Log(LogLevel::kWarning, "kafka",
      absl::StrCat("created topic ", topic, " with ", options_.partitions, " partitions, replication factor ",
                   options_.replication_factor < 0 ? std::string("(broker default)")
                                                   : absl::StrCat(options_.replication_factor),
                   ": a group uses at most that many consumers; create topics beforehand to "
                   "choose (eventbus.partitions, eventbus.replication.factor; docs/provisioning.md)"));
  }
  EVENTBUS_RETURN_IF_ERROR(WaitForTopicMetadata(topic, deadline));
  absl::MutexLock lock(&topics_mu_);
  topics_.insert(topic);
  return absl::OkStatus();
}

absl::Status KafkaClient::WaitForTopicMetadata(const std::string& topic, absl::Time deadline) {
  absl::Status last = absl::UnavailableError(absl::StrCat("topic ", topic, " not in metadata"));
  while (absl::Now() < deadline) {
    const rd_kafka_metadata_t* metadata = nullptr;
    const rd_kafka_resp_err_t err = rd_kafka_metadata(
        producer_.get(), /*all_topics=*/1, nullptr, &metadata,
        TimeoutMs(std::max(deadline - absl::Now(), absl::Milliseconds(100))));
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      last = ToStatus(err, absl::StrCat("metadata for topic ", topic));
    } else {
      bool ready = false;
      for (int i = 0; i < metadata->topic_cnt; ++i) {
        const rd_kafka_metadata_topic_t& t = metadata->topics[i];
        if (topic == t.topic && t.err == RD_KAFKA_RESP_ERR_NO_ERROR && t.partition_cnt > 0) {
          ready = true;
          for (int p = 0; p < t.partition_cnt; ++p) {
            if (t.partitions[p].leader < 0) ready = false;
          }
        }
      }
      rd_kafka_metadata_destroy(metadata);
      if (ready) return absl::OkStatus();
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  return last;
}

absl::StatusOr<bool> KafkaClient::TopicExists(const std::string& topic, absl::Duration timeout) {
  TopicHandle handle(rd_kafka_topic_new(producer_.get(), topic.c_str(), nullptr));
  if (handle == nullptr) {
    return ToStatus(rd_kafka_last_error(), absl::StrCat("topic handle for ", topic));
  }
  const rd_kafka_metadata_t* metadata = nullptr;
  const rd_kafka_resp_err_t err =
      rd_kafka_metadata(producer_.get(), /*all_topics=*/0, handle.get(), &metadata,
                        TimeoutMs(timeout));
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return ToStatus(err, absl::StrCat("metadata for topic ", topic));
  }
  bool exists = false;
  for (int i = 0; i < metadata->topic_cnt; ++i) {
    const rd_kafka_metadata_topic_t& t = metadata->topics[i];
    if (topic == t.topic && t.err == RD_KAFKA_RESP_ERR_NO_ERROR && t.partition_cnt > 0) {
      exists = true;
    }
  }
  rd_kafka_metadata_destroy(metadata);
  return exists;
}

absl::Status KafkaClient::Ping(absl::Duration timeout) {
  const rd_kafka_metadata_t* metadata = nullptr;
  const rd_kafka_resp_err_t err =
      rd_kafka_metadata(producer_.get(), /*all_topics=*/0, nullptr, &metadata, TimeoutMs(timeout));
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return ToStatus(err, absl::StrCat("reaching Kafka at ", options_.brokers));
  }
  rd_kafka_metadata_destroy(metadata);
  return absl::OkStatus();
}

KafkaRecord RecordOf(const rd_kafka_message_t* message) {
  KafkaRecord record;
  if (message->key != nullptr) {
    record.key.emplace(static_cast<const char*>(message->key), message->key_len);
  }
  if (message->payload != nullptr) {
    record.value.assign(static_cast<const char*>(message->payload), message->len);
  }
  rd_kafka_headers_t* headers = nullptr;
  // The headers stay owned by the message.
  if (rd_kafka_message_headers(message, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR) {
    const char* name = nullptr;
    const void* value = nullptr;
    size_t size = 0;
    for (size_t i = 0;
         rd_kafka_header_get_all(headers, i, &name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR;
         ++i) {
      record.headers.emplace_back(
          name, value != nullptr ? std::string(static_cast<const char*>(value), size)
                                 : std::string());
    }
  }
  return record;
}

}  // namespace eventbus::kafka
