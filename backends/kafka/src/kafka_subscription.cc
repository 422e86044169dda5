#include "kafka_subscription.h"

#include <cstdio>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "eventbus/status_macros.h"

namespace eventbus::kafka {
namespace {

constexpr absl::string_view kRetrySuffix = ".retry";
constexpr absl::Duration kPollInterval = absl::Milliseconds(100);
// Fetch re-checks time-based work (due nacks, expired leases) at least this often: the
// injected clock may be a ManualClock, whose advances also wake it at once.
constexpr absl::Duration kFetchTick = absl::Milliseconds(20);
constexpr absl::Duration kDeadLetterRetryInterval = absl::Seconds(1);
// Longer than a group join normally takes (session.timeout.ms is 10 s).
constexpr absl::Duration kFirstAssignmentWait = absl::Seconds(15);

absl::Status Closed() {
  return absl::FailedPreconditionError("the Kafka subscription is closed");
}

KafkaRecord ToRecord(const rd_kafka_message_t* message) {
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

std::optional<int64_t> HeaderInt(const DecodedRecord& decoded, absl::string_view name) {
  auto it = decoded.internal.find(name);
  int64_t value = 0;
  if (it == decoded.internal.end() || !absl::SimpleAtoi(it->second, &value)) return std::nullopt;
  return value;
}

}  // namespace

absl::StatusOr<std::unique_ptr<KafkaSubscription>> KafkaSubscription::Create(
    std::shared_ptr<KafkaClient> client, const SubscribeOptions& options) {
  EVENTBUS_RETURN_IF_ERROR(ValidateSubscribeOptions(options));
  std::unique_ptr<KafkaSubscription> sub(new KafkaSubscription(std::move(client), options));
  KafkaClient& c = *sub->client_;
  EVENTBUS_RETURN_IF_ERROR(c.EnsureTopic(options.stream));
  EVENTBUS_RETURN_IF_ERROR(c.EnsureTopic(sub->retry_topic_));
  EVENTBUS_RETURN_IF_ERROR(c.EnsureTopic(sub->dead_letter_topic_));

  EVENTBUS_ASSIGN_OR_RETURN(
      ConfHandle conf,
      c.NewConf({{"client.id", options.consumer},
                 {"partition.assignment.strategy", "cooperative-sticky"},
                 {"enable.auto.commit", "true"},
                 {"auto.commit.interval.ms", "1000"},
                 {"auto.offset.reset", options.start_from_oldest ? "earliest" : "latest"},
                 {"enable.partition.eof", "false"},
                 {"fetch.wait.max.ms", "100"},
                 {"session.timeout.ms", "10000"},
                 {"heartbeat.interval.ms", "1000"}}));
  char errstr[512];
  // Applied after the user's properties: the semantics above rest on them.
  for (const auto& [name, value] :
       std::vector<std::pair<std::string, std::string>>{{"group.id", options.group},
                                                        {"enable.auto.offset.store", "false"}}) {
    if (rd_kafka_conf_set(conf.get(), name.c_str(), value.c_str(), errstr, sizeof(errstr)) !=
        RD_KAFKA_CONF_OK) {
      return absl::InvalidArgumentError(absl::StrCat("Kafka property ", name, ": ", errstr));
    }
  }
  rd_kafka_conf_set_opaque(conf.get(), sub.get());
  rd_kafka_conf_set_rebalance_cb(conf.get(), &KafkaSubscription::RebalanceCallback);
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf.get(), errstr, sizeof(errstr));
  if (rk == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("creating the Kafka consumer: ", errstr));
  }
  conf.release();
  sub->consumer_.reset(rk);
  rd_kafka_poll_set_consumer(rk);
  PartitionListHandle topics(rd_kafka_topic_partition_list_new(2));
  rd_kafka_topic_partition_list_add(topics.get(), options.stream.c_str(), RD_KAFKA_PARTITION_UA);
  rd_kafka_topic_partition_list_add(topics.get(), sub->retry_topic_.c_str(),
                                    RD_KAFKA_PARTITION_UA);
  EVENTBUS_RETURN_IF_ERROR(ToStatus(rd_kafka_subscribe(rk, topics.get()),
                                    absl::StrCat("subscribing to ", options.stream)));
  sub->clock_listener_ = sub->clock_->OnAdvance([raw = sub.get()] {
    absl::MutexLock lock(&raw->mu_);
    raw->changed_.SignalAll();
  });
  sub->poller_ = std::thread([raw = sub.get()] { raw->PollLoop(); });
  return sub;
}

KafkaSubscription::KafkaSubscription(std::shared_ptr<KafkaClient> client,
                                     SubscribeOptions options)
    : client_(std::move(client)),
      options_(std::move(options)),
      retry_topic_(absl::StrCat(options_.stream, kRetrySuffix)),
      dead_letter_topic_(DeadLetterStreamName(options_)),
      ack_wait_(options_.ack_wait > absl::ZeroDuration() ? options_.ack_wait
                                                         : client_->options().default_ack_wait),
      clock_(client_->clock()) {}

KafkaSubscription::~KafkaSubscription() {
  Close().IgnoreError();
  clock_listener_.reset();
}

void KafkaSubscription::RebalanceCallback(rd_kafka_t*, rd_kafka_resp_err_t err,
                                          rd_kafka_topic_partition_list_t* partitions,
                                          void* opaque) {
  static_cast<KafkaSubscription*>(opaque)->OnRebalance(err, partitions);
}

void KafkaSubscription::OnRebalance(rd_kafka_resp_err_t err,
                                    rd_kafka_topic_partition_list_t* partitions) {
  rd_kafka_t* rk = consumer_.get();
  const bool cooperative = std::strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
  std::vector<PartitionKey> keys;
  for (int i = 0; i < partitions->cnt; ++i) {
    const rd_kafka_topic_partition_t& p = partitions->elems[i];
    keys.emplace_back(options_.stream == p.topic ? 0 : 1, p.partition);
  }
  if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
    {
      absl::MutexLock lock(&mu_);
      assigned_once_ = true;
      for (const PartitionKey& key : keys) {
        PartitionState& state = partitions_[key];
        state = PartitionState{};
        state.epoch = next_epoch_++;
      }
    }
    absl::Status status =
        cooperative ? ToStatus(ErrorHandle(rd_kafka_incremental_assign(rk, partitions)).get(),
                               "incremental assign")
                    : ToStatus(rd_kafka_assign(rk, partitions), "assign");
    if (!status.ok()) std::fprintf(stderr, "eventbus kafka: %s\n", status.ToString().c_str());
    return;
  }
  // Revoked or lost. Commit what is contiguous first (only while we still own the
  // partitions: after a loss another member may have moved on), then drop all local state so
  // a late Ack cannot store an offset for a partition we no longer hold.
  const bool lost = rd_kafka_assignment_lost(rk) != 0;
  PartitionListHandle commit;
  {
    absl::MutexLock lock(&mu_);
    if (!lost) commit = CommittableLocked(keys);
    for (const PartitionKey& key : keys) DropPartitionLocked(key);
    changed_.SignalAll();
  }
  if (commit != nullptr && commit->cnt > 0) {
    const rd_kafka_resp_err_t commit_err = rd_kafka_commit(rk, commit.get(), /*async=*/0);
    if (commit_err != RD_KAFKA_RESP_ERR_NO_ERROR && commit_err != RD_KAFKA_RESP_ERR__NO_OFFSET) {
      // Not fatal: the new owner redelivers from the last committed offset (duplicates).
      std::fprintf(stderr, "eventbus kafka: %s\n",
                   ToStatus(commit_err, "commit on revoke").ToString().c_str());
    }
  }
  if (cooperative) {
    ErrorHandle error(rd_kafka_incremental_unassign(rk, partitions));
  } else {
    rd_kafka_assign(rk, nullptr);
  }
}

PartitionListHandle KafkaSubscription::CommittableLocked(const std::vector<PartitionKey>& keys) {
  PartitionListHandle list(rd_kafka_topic_partition_list_new(static_cast<int>(keys.size())));
  for (const PartitionKey& key : keys) {
    auto it = partitions_.find(key);
    if (it == partitions_.end()) continue;
    const std::optional<int64_t> offset = it->second.tracker.Committable();
    if (!offset.has_value()) continue;
    rd_kafka_topic_partition_list_add(list.get(), TopicOf(key).c_str(), key.second)->offset =
        *offset;
  }
  return list;
}

void KafkaSubscription::DropPartitionLocked(const PartitionKey& key) {
  partitions_.erase(key);
  auto mine = [&key](const Pending& p) { return p.partition == key; };
  std::erase_if(ready_, mine);
  for (auto it = delayed_.begin(); it != delayed_.end();) {
    it = mine(it->second) ? delayed_.erase(it) : std::next(it);
  }
  absl::erase_if(leases_, [&](const auto& entry) { return mine(entry.second.pending); });
  if (!client_->options().ordered_per_key) return;
  for (auto& [k, queue] : blocked_) std::erase_if(queue, mine);
  // A key stays busy only while one of its events is still held somewhere.
  busy_keys_.clear();
  for (const Pending& p : ready_) busy_keys_.insert(p.delivery.event.key());
  for (const auto& [due, p] : delayed_) busy_keys_.insert(p.delivery.event.key());
  for (const auto& [token, lease] : leases_) busy_keys_.insert(lease.pending.delivery.event.key());
  for (auto it = blocked_.begin(); it != blocked_.end();) {
    auto current = it++;
    if (current->second.empty()) {
      blocked_.erase(current);
    } else if (!busy_keys_.contains(current->first)) {
      Pending next = std::move(current->second.front());
      current->second.pop_front();
      busy_keys_.insert(current->first);
      ready_.push_back(std::move(next));
      if (current->second.empty()) blocked_.erase(current);
    }
  }
}

void KafkaSubscription::PollLoop() {
  rd_kafka_t* rk = consumer_.get();
  while (!stop_.load(std::memory_order_acquire)) {
    AdjustPause();
    if (!failed_dead_letters_.empty()) RetryFailedDeadLetters();
    MessageHandle message(
        rd_kafka_consumer_poll(rk, static_cast<int>(absl::ToInt64Milliseconds(kPollInterval))));
    if (message == nullptr) continue;
    if (message->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      // Transport and broker errors are retried by librdkafka itself; they are reported here
      // for information only.
      if (message->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        std::fprintf(stderr, "eventbus kafka: consumer %s: %s\n", options_.consumer.c_str(),
                     rd_kafka_message_errstr(message.get()));
      }
      continue;
    }
    HandleMessage(message.get());
  }
}

void KafkaSubscription::AdjustPause() {
  bool pause = false;
  bool resume = false;
  {
    absl::MutexLock lock(&mu_);
    const size_t buffered = ready_.size();
    const size_t limit = client_->options().max_buffered_events;
    if (!paused_ && buffered >= limit) pause = paused_ = true;
    if (paused_ && buffered <= limit / 2) {
      resume = true;
      paused_ = false;
    }
  }
  if (!pause && !resume) return;
  rd_kafka_topic_partition_list_t* raw = nullptr;
  if (rd_kafka_assignment(consumer_.get(), &raw) != RD_KAFKA_RESP_ERR_NO_ERROR) return;
  PartitionListHandle assignment(raw);
  if (pause) {
    rd_kafka_pause_partitions(consumer_.get(), assignment.get());
  } else {
    rd_kafka_resume_partitions(consumer_.get(), assignment.get());
  }
}

void KafkaSubscription::HandleMessage(const rd_kafka_message_t* message) {
  const absl::Time now = clock_->Now();
  Pending pending;
  pending.partition = {options_.stream == rd_kafka_topic_name(message->rkt) ? 0 : 1,
                       message->partition};
  pending.offset = message->offset;
  {
    absl::MutexLock lock(&mu_);
    auto it = partitions_.find(pending.partition);
    if (it == partitions_.end()) return;  // revoked while the record was in the fetch queue
    pending.epoch = it->second.epoch;
    it->second.tracker.Track(pending.offset);
  }
  KafkaRecord record = ToRecord(message);
  absl::StatusOr<DecodedRecord> decoded = DecodeEvent(record);
  if (!decoded.ok()) {
    const std::string reason(decoded.status().message());
    if (!DeadLetterMalformed(pending, record, reason).ok()) {
      failed_dead_letters_.emplace_back(pending, std::move(record), reason);
    }
    return;
  }
  Delivery& delivery = pending.delivery;
  delivery.stream = options_.stream;
  absl::Time due = absl::InfinitePast();
  if (pending.partition.first == 0) {
    delivery.id = RecordId(message->partition, message->offset);
    delivery.delivery_count = 1;
    delivery.first_delivery_time = now;
  } else {
    auto group = decoded->internal.find(kGroupHeader);
    auto origin = decoded->internal.find(kOriginIdHeader);
    const std::optional<int64_t> attempt = HeaderInt(*decoded, kAttemptHeader);
    const std::optional<int64_t> due_ms = HeaderInt(*decoded, kDueHeader);
    if (group == decoded->internal.end() || origin == decoded->internal.end() ||
        !attempt.has_value() || !due_ms.has_value()) {
      const std::string reason = absl::StrCat(
          "retry record lacks one of the headers ", kGroupHeader, ", ", kOriginIdHeader, ", ",
          kAttemptHeader, ", ", kDueHeader);
      if (!DeadLetterMalformed(pending, record, reason).ok()) {
        failed_dead_letters_.emplace_back(pending, std::move(record), reason);
      }
      return;
    }
    if (group->second != options_.group) {
      // Every group of the stream shares the retry topic; other groups' retries are not ours.
      absl::MutexLock lock(&mu_);
      CompleteLocked(pending);
      return;
    }
    delivery.id = origin->second;
    delivery.delivery_count = static_cast<int>(std::max<int64_t>(*attempt, 0)) + 1;
    const std::optional<int64_t> first = HeaderInt(*decoded, kFirstDeliveryHeader);
    delivery.first_delivery_time = first.has_value() ? absl::FromUnixMillis(*first) : now;
    due = absl::FromUnixMillis(*due_ms);
  }
  delivery.event = std::move(decoded->event);
  absl::MutexLock lock(&mu_);
  if (!CurrentLocked(pending)) return;
  if (due > now) {
    delayed_.emplace(due, std::move(pending));
  } else {
    EnqueueLocked(std::move(pending));
  }
  changed_.SignalAll();
}

absl::Status KafkaSubscription::DeadLetterMalformed(const Pending& where,
                                                    const KafkaRecord& record,
                                                    absl::string_view reason) {
  // The record is not an event, so the dead letter is the raw record (key, value, headers
  // untouched) plus the dead-letter headers, readable with kcat.
  KafkaRecord dead = record;
  const std::string id = RecordId(where.partition.second, where.offset);
  auto add = [&dead](absl::string_view name, absl::string_view value) {
    dead.headers.emplace_back(absl::StrCat(kCePrefix, name), std::string(value));
  };
  add(kDlqReasonHeader, reason);
  add(kDlqOriginStreamHeader, TopicOf(where.partition));
  add(kDlqOriginIdHeader, id);
  add(kDlqOriginGroupHeader, options_.group);
  add(kDlqDeliveryCountHeader, "1");
  dead.headers.emplace_back(std::string(kDlqOriginTopicHeader), TopicOf(where.partition));
  dead.headers.emplace_back(std::string(kDlqOriginPartitionHeader),
                            absl::StrCat(where.partition.second));
  dead.headers.emplace_back(std::string(kDlqOriginOffsetHeader), absl::StrCat(where.offset));
  dead.headers.emplace_back(std::string(kDlqAttemptsHeader), "1");
  EVENTBUS_RETURN_IF_ERROR(client_->ProduceAndWait(dead_letter_topic_, dead).status());
  absl::MutexLock lock(&mu_);
  CompleteLocked(where);
  return absl::OkStatus();
}

void KafkaSubscription::RetryFailedDeadLetters() {
  const absl::Time now = absl::Now();
  if (now < next_dead_letter_retry_) return;
  next_dead_letter_retry_ = now + kDeadLetterRetryInterval;
  auto failed = std::move(failed_dead_letters_);
  failed_dead_letters_.clear();
  for (auto& [where, record, reason] : failed) {
    {
      absl::MutexLock lock(&mu_);
      if (!CurrentLocked(where)) continue;  // revoked: the new owner dead-letters it
    }
    if (!DeadLetterMalformed(where, record, reason).ok()) {
      failed_dead_letters_.emplace_back(std::move(where), std::move(record), std::move(reason));
    }
  }
}

bool KafkaSubscription::CurrentLocked(const Pending& pending) const {
  auto it = partitions_.find(pending.partition);
  return it != partitions_.end() && it->second.epoch == pending.epoch;
}

bool KafkaSubscription::CompleteLocked(const Pending& pending) {
  auto it = partitions_.find(pending.partition);
  if (it == partitions_.end() || it->second.epoch != pending.epoch) return false;
  PartitionState& state = it->second;
  state.tracker.MarkDone(pending.offset);
  const std::optional<int64_t> committable = state.tracker.Committable();
  if (committable.has_value() && *committable > state.stored) {
    PartitionListHandle list(rd_kafka_topic_partition_list_new(1));
    rd_kafka_topic_partition_list_add(list.get(), TopicOf(pending.partition).c_str(),
                                      pending.partition.second)
        ->offset = *committable;
    // Safe under mu_: a revoke drops the partition under mu_ before unassigning it, so this
    // never stores an offset for a partition we no longer own.
    const rd_kafka_resp_err_t err = rd_kafka_offsets_store(consumer_.get(), list.get());
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) state.stored = *committable;
  }
  return true;
}

void KafkaSubscription::EnqueueLocked(Pending pending) {
  if (client_->options().ordered_per_key && !pending.delivery.event.key().empty()) {
    const std::string& key = pending.delivery.event.key();
    if (!busy_keys_.insert(key).second) {
      blocked_[key].push_back(std::move(pending));
      return;
    }
  }
  ready_.push_back(std::move(pending));
}

void KafkaSubscription::ReleaseKeyLocked(const Pending& pending) {
  if (!client_->options().ordered_per_key || pending.delivery.event.key().empty()) return;
  const std::string& key = pending.delivery.event.key();
  auto it = blocked_.find(key);
  if (it == blocked_.end() || it->second.empty()) {
    busy_keys_.erase(key);
    if (it != blocked_.end()) blocked_.erase(it);
    return;
  }
  ready_.push_back(std::move(it->second.front()));
  it->second.pop_front();
  if (it->second.empty()) blocked_.erase(it);
}

Delivery KafkaSubscription::LeaseLocked(Pending pending, absl::Time now) {
  const uint64_t token = next_token_++;
  pending.delivery.token = token;
  Delivery delivery = pending.delivery;
  leases_.emplace(token, Lease{std::move(pending), now});
  return delivery;
}

absl::StatusOr<KafkaSubscription::Lease> KafkaSubscription::TakeLeaseLocked(
    const Delivery& delivery) {
  if (closed_) return Closed();
  auto it = leases_.find(delivery.token);
  if (it == leases_.end() || it->second.pending.delivery.id != delivery.id) {
    return absl::FailedPreconditionError(absl::StrCat(
        "delivery ", delivery.id, " of ", delivery.stream,
        " is no longer held by this consumer (already settled, lease expired, or its "
        "partition was revoked)"));
  }
  Lease lease = std::move(it->second);
  leases_.erase(it);
  return lease;
}

absl::StatusOr<std::vector<Delivery>> KafkaSubscription::Fetch(int max_events,
                                                                absl::Duration wait) {
  if (max_events <= 0) return absl::InvalidArgumentError("max_events must be positive");
  const absl::Time deadline = absl::Now() + std::max(wait, absl::ZeroDuration());
  std::vector<Delivery> out;
  absl::MutexLock lock(&mu_);
  while (true) {
    if (closed_) return Closed();
    const absl::Time now = clock_->Now();
    while (!delayed_.empty() && delayed_.begin()->first <= now) {
      // A delayed event already holds its key (ordering mode): straight to ready.
      ready_.push_back(std::move(delayed_.begin()->second));
      delayed_.erase(delayed_.begin());
    }
    if (ack_wait_ > absl::ZeroDuration()) {
      for (auto it = leases_.begin(); it != leases_.end();) {
        auto current = it++;
        if (now - current->second.touched >= ack_wait_) {
          Pending pending = std::move(current->second.pending);
          ++pending.delivery.delivery_count;
          leases_.erase(current);
          ready_.push_front(std::move(pending));
        }
      }
    }
    while (!ready_.empty() && static_cast<int>(out.size()) < max_events) {
      Pending pending = std::move(ready_.front());
      ready_.pop_front();
      if (!CurrentLocked(pending)) continue;
      out.push_back(LeaseLocked(std::move(pending), now));
    }
    if (!out.empty()) return out;
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return out;
    changed_.WaitWithTimeout(&mu_, std::min(left, kFetchTick));
  }
}

absl::Status KafkaSubscription::Ack(const Delivery& delivery) {
  absl::MutexLock lock(&mu_);
  EVENTBUS_ASSIGN_OR_RETURN(Lease lease, TakeLeaseLocked(delivery));
  if (!CompleteLocked(lease.pending)) {
    return absl::FailedPreconditionError(
        absl::StrCat("partition of delivery ", delivery.id, " was revoked"));
  }
  ReleaseKeyLocked(lease.pending);
  changed_.SignalAll();
  return absl::OkStatus();
}

absl::Status KafkaSubscription::Nack(const Delivery& delivery, absl::Duration delay) {
  if (delay < absl::ZeroDuration()) delay = absl::ZeroDuration();
  const KafkaOptions& config = client_->options();
  Lease lease;
  absl::Time now;
  {
    absl::MutexLock lock(&mu_);
    EVENTBUS_ASSIGN_OR_RETURN(lease, TakeLeaseLocked(delivery));
    now = clock_->Now();
    ++lease.pending.delivery.delivery_count;
    const bool local = delay == absl::ZeroDuration() || config.ordered_per_key ||
                       (config.retry_topic_threshold > absl::ZeroDuration() &&
                        delay <= config.retry_topic_threshold);
    if (local) {
      if (delay == absl::ZeroDuration()) {
        ready_.push_back(std::move(lease.pending));
      } else {
        delayed_.emplace(now + delay, std::move(lease.pending));
      }
      changed_.SignalAll();
      return absl::OkStatus();
    }
  }
  // A long delay travels through the retry topic, so it survives this consumer; the original
  // is marked done only once the retry record is durable.
  const Delivery& next = lease.pending.delivery;
  absl::StatusOr<KafkaRecord> record = EncodeEvent(next.event);
  absl::Status produced = record.status();
  if (record.ok()) {
    auto add = [&record](absl::string_view name, std::string value) {
      record->headers.emplace_back(std::string(name), std::move(value));
    };
    add(kAttemptHeader, absl::StrCat(next.delivery_count - 1));
    add(kDueHeader, absl::StrCat(absl::ToUnixMillis(now + delay)));
    add(kGroupHeader, options_.group);
    add(kOriginIdHeader, next.id);
    add(kFirstDeliveryHeader, absl::StrCat(absl::ToUnixMillis(next.first_delivery_time)));
    produced = client_->ProduceAndWait(retry_topic_, *record).status();
  }
  absl::MutexLock lock(&mu_);
  if (produced.ok()) {
    CompleteLocked(lease.pending);
    ReleaseKeyLocked(lease.pending);
  } else if (CurrentLocked(lease.pending)) {
    // The retry topic is unreachable: keep the delay locally rather than lose the nack.
    std::fprintf(stderr, "eventbus kafka: retry topic %s: %s; delaying locally\n",
                 retry_topic_.c_str(), produced.ToString().c_str());
    delayed_.emplace(now + delay, std::move(lease.pending));
  }
  changed_.SignalAll();
  return absl::OkStatus();
}

absl::Status KafkaSubscription::Extend(const Delivery& delivery) {
  absl::MutexLock lock(&mu_);
  if (closed_) return Closed();
  auto it = leases_.find(delivery.token);
  if (it == leases_.end() || it->second.pending.delivery.id != delivery.id) {
    return absl::FailedPreconditionError(
        absl::StrCat("delivery ", delivery.id, " is no longer held by this consumer"));
  }
  it->second.touched = clock_->Now();
  return absl::OkStatus();
}

absl::StatusOr<std::vector<Delivery>> KafkaSubscription::Reclaim(absl::Duration min_idle,
                                                                  int max_events) {
  std::vector<Delivery> out;
  absl::MutexLock lock(&mu_);
  if (closed_) return Closed();
  const absl::Time now = clock_->Now();
  std::vector<uint64_t> idle;
  for (const auto& [token, lease] : leases_) {
    if (now - lease.touched >= min_idle) idle.push_back(token);
  }
  std::sort(idle.begin(), idle.end());  // oldest leases first
  for (uint64_t token : idle) {
    if (static_cast<int>(out.size()) >= max_events) break;
    auto it = leases_.find(token);
    Pending pending = std::move(it->second.pending);
    leases_.erase(it);
    ++pending.delivery.delivery_count;
    out.push_back(LeaseLocked(std::move(pending), now));
  }
  return out;
}

absl::Status KafkaSubscription::DeadLetter(const Delivery& delivery, absl::string_view reason) {
  Lease lease;
  {
    absl::MutexLock lock(&mu_);
    EVENTBUS_ASSIGN_OR_RETURN(lease, TakeLeaseLocked(delivery));
  }
  const Delivery& held = lease.pending.delivery;
  absl::StatusOr<KafkaRecord> record = EncodeEvent(MakeDeadLetter(held, options_.group, reason));
  absl::Status produced = record.status();
  if (record.ok()) {
    // Kafka's own coordinates of the original, as plain headers: they are not part of the
    // event, so a consumer of the DLQ sees the original event plus the dlq* extensions.
    const std::vector<absl::string_view> origin = absl::StrSplit(held.id, ':');
    record->headers.emplace_back(std::string(kDlqOriginTopicHeader), options_.stream);
    if (origin.size() == 2) {
      record->headers.emplace_back(std::string(kDlqOriginPartitionHeader), std::string(origin[0]));
      record->headers.emplace_back(std::string(kDlqOriginOffsetHeader), std::string(origin[1]));
    }
    record->headers.emplace_back(std::string(kDlqAttemptsHeader),
                                 absl::StrCat(held.delivery_count));
    produced = client_->ProduceAndWait(dead_letter_topic_, *record).status();
  }
  absl::MutexLock lock(&mu_);
  if (!produced.ok()) {
    // Not written: the caller still holds the delivery and may retry.
    if (CurrentLocked(lease.pending) && !closed_) {
      leases_.emplace(held.token, std::move(lease));
    }
    return produced;
  }
  CompleteLocked(lease.pending);
  ReleaseKeyLocked(lease.pending);
  changed_.SignalAll();
  return absl::OkStatus();
}

absl::Status KafkaSubscription::Close() {
  absl::MutexLock close_lock(&close_mu_);
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return absl::OkStatus();
    closed_ = true;
    changed_.SignalAll();
    // The poller keeps serving the group meanwhile; bounded, so a consumer that never reached
    // the broker still closes. Without a poller (Create failed) the consumer never joined.
    if (poller_.joinable()) {
      mu_.AwaitWithTimeout(absl::Condition(&assigned_once_), kFirstAssignmentWait);
    }
  }
  stop_.store(true, std::memory_order_release);
  if (poller_.joinable()) poller_.join();
  if (consumer_ == nullptr) return absl::OkStatus();
  absl::Status status;
  PartitionListHandle commit;
  {
    absl::MutexLock lock(&mu_);
    std::vector<PartitionKey> keys;
    for (const auto& [key, state] : partitions_) keys.push_back(key);
    commit = CommittableLocked(keys);
  }
  if (commit->cnt > 0) {
    const rd_kafka_resp_err_t err = rd_kafka_commit(consumer_.get(), commit.get(), /*async=*/0);
    // _NO_OFFSET: nothing new since the last commit.
    if (err != RD_KAFKA_RESP_ERR__NO_OFFSET) status = ToStatus(err, "commit on close");
  }
  // Leaves the group: the rebalance callback runs here and hands our partitions, with every
  // unacknowledged event, to the remaining members.
  const absl::Status closed = ToStatus(rd_kafka_consumer_close(consumer_.get()), "closing");
  consumer_.reset();
  {
    absl::MutexLock lock(&mu_);
    ready_.clear();
    delayed_.clear();
    leases_.clear();
    blocked_.clear();
    busy_keys_.clear();
    partitions_.clear();
  }
  return status.ok() ? closed : status;
}

}  // namespace eventbus::kafka
