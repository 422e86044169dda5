#include "kafka_subscription.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "eventbus/log.h"
#include "eventbus/status_macros.h"

namespace eventbus::kafka {
namespace {

constexpr absl::string_view kRetrySuffix = ".retry";
// The retry topic's consumer group is the stream group's name plus this.
constexpr absl::string_view kRetryGroupSuffix = ".retry";
// Records moved from librdkafka's queue to ours per lock and wake-up.
constexpr size_t kPollBatch = 512;
constexpr absl::Duration kPollInterval = absl::Milliseconds(100);
// Fetch re-checks time-based work (due nacks, expired leases) at least this often: the
// injected clock may be a ManualClock, whose advances also wake it at once.
constexpr absl::Duration kFetchTick = absl::Milliseconds(20);
constexpr absl::Duration kDeadLetterRetryInterval = absl::Seconds(1);
// How often a poller commits what changed (offsets, delivery counts): a crash loses at most
// the delivery counts of the last interval (and redelivers what was done in it).
constexpr absl::Duration kCommitInterval = absl::Milliseconds(200);
// Longer than a group join normally takes (session.timeout.ms is 10 s).
constexpr absl::Duration kFirstAssignmentWait = absl::Seconds(15);

void Warn(absl::string_view message) { Log(LogLevel::kWarning, "kafka", message); }

absl::Status Closed() {
  return absl::FailedPreconditionError("the Kafka subscription is closed");
}

// A record's share of max_buffered_bytes.
size_t RecordBytes(const KafkaRecord& record) {
  size_t bytes = record.value.size() + (record.key.has_value() ? record.key->size() : 0);
  for (const auto& [name, value] : record.headers) bytes += name.size() + value.size();
  return bytes;
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
  {
    absl::MutexLock lock(&sub->guard_->mu);
    sub->guard_->owner = sub.get();
  }
  EVENTBUS_RETURN_IF_ERROR(sub->StartConsumer(kStreamTopic));
  EVENTBUS_RETURN_IF_ERROR(sub->StartConsumer(kRetryTopic));
  sub->clock_listener_ = sub->clock_->OnAdvance([raw = sub.get()] {
    absl::MutexLock lock(&raw->mu_);
    raw->changed_.SignalAll();
  });
  for (Consumer& consumer : sub->consumers_) {
    consumer.poller = std::thread([raw = sub.get(), &consumer] { raw->PollLoop(consumer); });
  }
  return sub;
}

absl::Status KafkaSubscription::StartConsumer(int topic) {
  Consumer& consumer = consumers_[topic];
  consumer.owner = this;
  consumer.topic = topic;
  const bool retry = topic == kRetryTopic;
  // The retry topic is always read from its beginning: a nack produced there before this
  // group's retry consumer first joined (a restart while the stream starts from the newest)
  // must not be skipped. Other groups' records in it are filtered by their group header.
  const bool earliest = retry || options_.start_from_oldest;
  EVENTBUS_ASSIGN_OR_RETURN(
      ConfHandle conf,
      client_->NewConf({{"client.id", options_.consumer},
                        {"partition.assignment.strategy", "cooperative-sticky"},
                        {"auto.offset.reset", earliest ? "earliest" : "latest"},
                        {"enable.partition.eof", "false"},
                        {"fetch.wait.max.ms", "100"},
                        // librdkafka's own prefetch bound (one queue per high-level consumer);
                        // ours is max_buffered_events / max_buffered_bytes on top.
                        {"queued.max.messages.kbytes", "16384"},
                        {"session.timeout.ms", "10000"},
                        {"heartbeat.interval.ms", "1000"}}));
  const std::string group = retry ? absl::StrCat(options_.group, kRetryGroupSuffix) : options_.group;
  char errstr[512];
  // Applied after the user's properties: the semantics above rest on them.
  for (const auto& [name, value] : std::vector<std::pair<std::string, std::string>>{
           {"group.id", group}, {"enable.auto.offset.store", "false"},
           // Our own commits carry the delivery counts in their metadata; librdkafka's
           // auto-commit (2.0) would overwrite it with empty metadata.
           {"enable.auto.commit", "false"}}) {
    if (rd_kafka_conf_set(conf.get(), name.c_str(), value.c_str(), errstr, sizeof(errstr)) !=
        RD_KAFKA_CONF_OK) {
      return absl::InvalidArgumentError(absl::StrCat("Kafka property ", name, ": ", errstr));
    }
  }
  rd_kafka_conf_set_opaque(conf.get(), &consumer);
  rd_kafka_conf_set_rebalance_cb(conf.get(), &KafkaSubscription::RebalanceCallback);
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf.get(), errstr, sizeof(errstr));
  if (rk == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("creating the Kafka consumer: ", errstr));
  }
  conf.release();
  consumer.handle.reset(rk);
  rd_kafka_poll_set_consumer(rk);
  EVENTBUS_ASSIGN_OR_RETURN(ConfHandle reader_conf,
                            client_->NewConf({{"client.id", options_.consumer},
                                              {"enable.auto.commit", "false"}}));
  if (rd_kafka_conf_set(reader_conf.get(), "group.id", group.c_str(), errstr, sizeof(errstr)) !=
      RD_KAFKA_CONF_OK) {
    return absl::InvalidArgumentError(absl::StrCat("Kafka property group.id: ", errstr));
  }
  rd_kafka_t* reader = rd_kafka_new(RD_KAFKA_CONSUMER, reader_conf.get(), errstr, sizeof(errstr));
  if (reader == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("creating the Kafka offsets reader: ", errstr));
  }
  reader_conf.release();
  consumer.offsets_reader.reset(reader);
  PartitionListHandle topics(rd_kafka_topic_partition_list_new(1));
  rd_kafka_topic_partition_list_add(topics.get(), TopicOf({topic, 0}).c_str(),
                                    RD_KAFKA_PARTITION_UA);
  return ToStatus(rd_kafka_subscribe(rk, topics.get()),
                  absl::StrCat("subscribing to ", TopicOf({topic, 0})));
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
  Consumer* consumer = static_cast<Consumer*>(opaque);
  consumer->owner->OnRebalance(*consumer, err, partitions);
}

void KafkaSubscription::OnRebalance(Consumer& consumer, rd_kafka_resp_err_t err,
                                    rd_kafka_topic_partition_list_t* partitions) {
  rd_kafka_t* rk = consumer.handle.get();
  // Null when no protocol is established (a consumer closed while its generation failed):
  // then the whole-assignment calls are the permitted ones.
  const char* protocol = rd_kafka_rebalance_protocol(rk);
  const bool cooperative = protocol != nullptr && std::strcmp(protocol, "COOPERATIVE") == 0;
  std::vector<PartitionKey> keys;
  for (int i = 0; i < partitions->cnt; ++i) {
    keys.emplace_back(consumer.topic, partitions->elems[i].partition);
  }
  if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
    // Before the partitions are assigned (so before any of their records arrives).
    std::vector<std::map<int64_t, int>> counts = CommittedCounts(consumer, partitions);
    // A group new to a partition starts at its end: pin that end now, so whatever is
    // published after WaitReady returns is delivered (librdkafka would resolve "latest" only
    // once fetching starts, after records published meanwhile).
    if (consumer.topic == kStreamTopic && !options_.start_from_oldest) {
      ResolveLatestOffsets(rk, partitions);
    }
    {
      absl::MutexLock lock(&mu_);
      consumer.assigned_once = true;
      for (size_t i = 0; i < keys.size(); ++i) {
        PartitionState& state = partitions_[keys[i]];
        held_events_ -= state.held_events;
        held_bytes_ -= state.held_bytes;
        state = PartitionState{};
        state.epoch = next_epoch_++;
        state.delivered = std::move(counts[i]);
      }
    }
    absl::Status status =
        cooperative ? ToStatus(ErrorHandle(rd_kafka_incremental_assign(rk, partitions)).get(),
                               "incremental assign")
                    : ToStatus(rd_kafka_assign(rk, partitions), "assign");
    if (!status.ok()) Warn(status.ToString());
    // A partition added while the others are paused for the buffer bound waits with them.
    if (consumer.paused) rd_kafka_pause_partitions(rk, partitions);
    if (consumer.topic == kStreamTopic) WarnIfIdle(rk);
    return;
  }
  // Revoked or lost. While we still own the partitions (not after a loss: another member may
  // have moved on), hand the deliveries in flight to the retry topic with their counts and
  // commit what is contiguous; then drop all local state so a late Ack cannot store an offset
  // for a partition we no longer hold.
  // Inside rd_kafka_consumer_close (Close) the deliveries were already given back and
  // committed, synchronously, just before; a synchronous commit from this callback there can
  // wait for ever (seen with librdkafka 2.0.2: a conformance run hung 25 min in it).
  const bool closing = consumer_closing_.load(std::memory_order_acquire);
  const bool lost = rd_kafka_assignment_lost(rk) != 0;
  if (!lost && !closing) GiveBackDeliveries(keys);
  PartitionListHandle commit;
  {
    absl::MutexLock lock(&mu_);
    if (!lost && !closing) commit = CommittableLocked(keys);
    for (const PartitionKey& key : keys) DropPartitionLocked(key);
    changed_.SignalAll();
  }
  if (commit != nullptr && commit->cnt > 0) {
    const rd_kafka_resp_err_t commit_err = rd_kafka_commit(rk, commit.get(), /*async=*/0);
    if (commit_err != RD_KAFKA_RESP_ERR_NO_ERROR && commit_err != RD_KAFKA_RESP_ERR__NO_OFFSET) {
      // Not fatal: the new owner redelivers from the last committed offset (duplicates).
      Warn(ToStatus(commit_err, "commit on revoke").ToString());
    }
  }
  if (cooperative) {
    ErrorHandle error(rd_kafka_incremental_unassign(rk, partitions));
  } else {
    rd_kafka_assign(rk, nullptr);
  }
}

void KafkaSubscription::ResolveLatestOffsets(rd_kafka_t* rk,
                                             rd_kafka_topic_partition_list_t* partitions) {
  const int timeout_ms =
      static_cast<int>(absl::ToInt64Milliseconds(client_->options().operation_timeout));
  // Partitions the group has committed to keep their committed offset.
  const rd_kafka_resp_err_t err = rd_kafka_committed(rk, partitions, timeout_ms);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    Warn(absl::StrCat("group ", options_.group, ": reading committed offsets: ",
                      rd_kafka_err2str(err), "; starting where librdkafka resolves \"latest\""));
    for (int i = 0; i < partitions->cnt; ++i) partitions->elems[i].offset = RD_KAFKA_OFFSET_INVALID;
    return;
  }
  for (int i = 0; i < partitions->cnt; ++i) {
    rd_kafka_topic_partition_t& p = partitions->elems[i];
    if (p.offset >= 0) continue;
    int64_t low = 0;
    int64_t high = 0;
    const rd_kafka_resp_err_t werr =
        rd_kafka_query_watermark_offsets(rk, p.topic, p.partition, &low, &high, timeout_ms);
    if (werr == RD_KAFKA_RESP_ERR_NO_ERROR) {
      p.offset = high;
    } else {
      p.offset = RD_KAFKA_OFFSET_INVALID;
      Warn(absl::StrCat("topic ", p.topic, " partition ", p.partition, ": end offset: ",
                        rd_kafka_err2str(werr), "; starting where librdkafka resolves \"latest\""));
    }
  }
}

void KafkaSubscription::WarnIfIdle(rd_kafka_t* rk) {
  rd_kafka_topic_partition_list_t* raw = nullptr;
  if (rd_kafka_assignment(rk, &raw) != RD_KAFKA_RESP_ERR_NO_ERROR) return;
  PartitionListHandle assignment(raw);
  if (assignment->cnt > 0) return;
  Warn(absl::StrCat("consumer ", options_.consumer, " of group ", options_.group,
                    " was assigned no partition of topic ", options_.stream,
                    ": the group has more consumers than the topic has partitions, so this one "
                    "idles until a member leaves (create the topic with more partitions: "
                    "eventbus.partitions, docs/provisioning.md)"));
}

absl::Status KafkaSubscription::DoWaitReady(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto settled = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return closed_ ||
           (consumers_[kStreamTopic].assigned_once && consumers_[kRetryTopic].assigned_once);
  };
  const bool done = mu_.AwaitWithTimeout(absl::Condition(&settled), timeout);
  if (closed_) return Closed();
  if (!done) {
    return absl::DeadlineExceededError(absl::StrCat(
        "Kafka consumer ", options_.consumer, " of group ", options_.group,
        " has no partition assignment for topic ", options_.stream, " after ",
        absl::FormatDuration(timeout), " (broker unreachable, or the group still rebalancing)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<KafkaRecord> KafkaSubscription::RetryRecord(const Delivery& delivery, int attempts,
                                                           absl::Time due) const {
  EVENTBUS_ASSIGN_OR_RETURN(KafkaRecord record, EncodeEvent(delivery.event));
  auto add = [&record](absl::string_view name, std::string value) {
    record.headers.emplace_back(std::string(name), std::move(value));
  };
  add(kAttemptHeader, absl::StrCat(attempts));
  add(kDueHeader, absl::StrCat(absl::ToUnixMillis(due)));
  add(kGroupHeader, options_.group);
  add(kOriginIdHeader, delivery.id);
  add(kFirstDeliveryHeader, absl::StrCat(absl::ToUnixMillis(delivery.first_delivery_time)));
  add(kFailedAttemptsHeader, absl::StrCat(delivery.failed_attempts));
  return record;
}

void KafkaSubscription::GiveBackDeliveries(const std::vector<PartitionKey>& keys) {
  // In ordering mode a retry record would overtake the later events of its key, which the
  // next owner reads from the stream: there the count restarts instead (documented).
  if (client_->options().ordered_per_key || keys.empty()) return;
  const absl::flat_hash_set<PartitionKey> revoked(keys.begin(), keys.end());
  std::vector<GiveBack> back;
  {
    absl::MutexLock lock(&mu_);
    for (const PartitionKey& key : keys) {
      auto it = partitions_.find(key);
      if (it != partitions_.end()) it->second.revoking = true;
    }
    const absl::Time now = clock_->Now();
    auto mine = [&revoked](const Pending& p) { return revoked.contains(p.partition); };
    for (auto it = leases_.begin(); it != leases_.end();) {
      auto current = it++;
      if (!mine(current->second.pending)) continue;
      const int attempts = current->second.pending.delivery.delivery_count;
      back.push_back({std::move(current->second.pending), attempts, now});
      leases_.erase(current);
    }
    // Waiting for a redelivery here: their count already is the next delivery's.
    for (auto it = ready_.begin(); it != ready_.end();) {
      if (mine(*it) && it->delivered) {
        const int attempts = it->delivery.delivery_count - 1;
        back.push_back({std::move(*it), attempts, now});
        it = ready_.erase(it);
      } else {
        ++it;
      }
    }
    for (auto it = delayed_.begin(); it != delayed_.end();) {
      if (mine(it->second) && it->second.delivered) {
        const int attempts = it->second.delivery.delivery_count - 1;
        back.push_back({std::move(it->second), attempts, it->first});
        it = delayed_.erase(it);
      } else {
        ++it;
      }
    }
  }
  if (back.empty()) return;
  struct Outcome {
    absl::Mutex mu;
    size_t left ABSL_GUARDED_BY(mu) = 0;
    std::vector<bool> written ABSL_GUARDED_BY(mu);
  };
  auto outcome = std::make_shared<Outcome>();
  {
    absl::MutexLock lock(&outcome->mu);
    outcome->left = back.size();
    outcome->written.assign(back.size(), false);
  }
  for (size_t i = 0; i < back.size(); ++i) {
    absl::StatusOr<KafkaRecord> record =
        RetryRecord(back[i].pending.delivery, back[i].attempts, back[i].due);
    absl::Status queued = record.status();
    if (record.ok()) {
      queued = client_->Produce(retry_topic_, *record,
                                [outcome, i](absl::StatusOr<PublishReceipt> receipt) {
                                  absl::MutexLock lock(&outcome->mu);
                                  outcome->written[i] = receipt.ok();
                                  --outcome->left;
                                });
    }
    if (!queued.ok()) {
      absl::MutexLock lock(&outcome->mu);
      --outcome->left;
    }
  }
  std::vector<bool> written;
  {
    absl::MutexLock lock(&outcome->mu);
    auto all_reported = [&]() ABSL_SHARED_LOCKS_REQUIRED(outcome->mu) {
      return outcome->left == 0;
    };
    // Every delivery report comes within the producer's message timeout.
    outcome->mu.AwaitWithTimeout(absl::Condition(&all_reported), client_->delivery_timeout());
    written = outcome->written;
  }
  absl::MutexLock lock(&mu_);
  size_t failed = 0;
  for (size_t i = 0; i < back.size(); ++i) {
    // Not written: the next owner redelivers it from the stream, its count restarted.
    if (written[i]) {
      CompleteLocked(back[i].pending);
    } else {
      ++failed;
    }
  }
  if (failed > 0) {
    Warn(absl::StrCat(failed, " of ", back.size(),
                      " deliveries given back without their count (retry topic ", retry_topic_,
                      " not written)"));
  }
}

PartitionListHandle KafkaSubscription::CommittableLocked(const std::vector<PartitionKey>& keys,
                                                         bool changed_only) {
  PartitionListHandle list(rd_kafka_topic_partition_list_new(static_cast<int>(keys.size())));
  for (const PartitionKey& key : keys) {
    auto it = partitions_.find(key);
    if (it == partitions_.end()) continue;
    PartitionState& state = it->second;
    const std::optional<int64_t> offset = state.tracker.Committable();
    if (!offset.has_value()) continue;
    std::string metadata = EncodeDeliveryCounts(state.delivered, *offset);
    if (changed_only && *offset == state.committed_offset &&
        metadata == state.committed_metadata) {
      continue;
    }
    rd_kafka_topic_partition_t* p =
        rd_kafka_topic_partition_list_add(list.get(), TopicOf(key).c_str(), key.second);
    p->offset = *offset;
    if (!metadata.empty()) {
      // Freed by rd_kafka_topic_partition_list_destroy.
      p->metadata = malloc(metadata.size());
      std::memcpy(p->metadata, metadata.data(), metadata.size());
      p->metadata_size = metadata.size();
    }
    state.committed_offset = *offset;
    state.committed_metadata = std::move(metadata);
  }
  return list;
}

std::vector<std::map<int64_t, int>> KafkaSubscription::CommittedCounts(
    Consumer& consumer, const rd_kafka_topic_partition_list_t* partitions) {
  std::vector<std::map<int64_t, int>> counts(static_cast<size_t>(partitions->cnt));
  // On a copy: the assignment itself starts from the committed offsets as usual.
  PartitionListHandle committed(rd_kafka_topic_partition_list_copy(partitions));
  const int timeout_ms =
      static_cast<int>(absl::ToInt64Milliseconds(client_->options().operation_timeout));
  const rd_kafka_resp_err_t err =
      rd_kafka_committed(consumer.offsets_reader.get(), committed.get(), timeout_ms);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    // Not fatal: the counts of what a crashed predecessor held restart (as before).
    Log(LogLevel::kWarning, "kafka",
        ToStatus(err, "reading committed delivery counts").ToString());
    return counts;
  }
  for (int i = 0; i < committed->cnt; ++i) {
    const rd_kafka_topic_partition_t& p = committed->elems[i];
    if (p.err != RD_KAFKA_RESP_ERR_NO_ERROR || p.metadata == nullptr || p.offset < 0) continue;
    counts[static_cast<size_t>(i)] = DecodeDeliveryCounts(
        std::string(static_cast<const char*>(p.metadata), p.metadata_size), p.offset);
  }
  return counts;
}

void KafkaSubscription::CommitChanged(Consumer& consumer) {
  const absl::Time now = absl::Now();
  if (now < consumer.next_commit) return;
  consumer.next_commit = now + kCommitInterval;
  PartitionListHandle commit;
  {
    absl::MutexLock lock(&mu_);
    std::vector<PartitionKey> keys;
    for (const auto& [key, state] : partitions_) {
      if (key.first == consumer.topic && !state.revoking) keys.push_back(key);
    }
    commit = CommittableLocked(keys, /*changed_only=*/true);
  }
  // Asynchronous, from the poller (the thread that also serves revokes, so this commit goes
  // out before a revoke's final synchronous one); a failed commit is repeated by the next.
  if (commit->cnt > 0) rd_kafka_commit(consumer.handle.get(), commit.get(), /*async=*/1);
}

void KafkaSubscription::DropPartitionLocked(const PartitionKey& key) {
  auto state = partitions_.find(key);
  if (state != partitions_.end()) {
    held_events_ -= state->second.held_events;
    held_bytes_ -= state->second.held_bytes;
    partitions_.erase(state);
  }
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
  for (const auto& [k, count] : settling_keys_) busy_keys_.insert(k);
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

void KafkaSubscription::PollLoop(Consumer& consumer) {
  rd_kafka_t* rk = consumer.handle.get();
  while (!stop_.load(std::memory_order_acquire)) {
    AdjustPause(consumer);
    RetryFailedDeadLetters();
    CommitChanged(consumer);
    // Records are taken from librdkafka's queue in batches and handed to Fetch under one lock
    // and one wake-up: a waiting Fetch woken per record would return one record at a time.
    std::vector<std::pair<absl::Time, Pending>> batch;
    MessageHandle message(
        rd_kafka_consumer_poll(rk, static_cast<int>(absl::ToInt64Milliseconds(kPollInterval))));
    while (message != nullptr) {
      if (message->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        // Transport and broker errors are retried by librdkafka itself; they are reported here
        // for information only.
        if (message->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
          Warn(absl::StrCat("consumer ", options_.consumer, ": ",
                            rd_kafka_message_errstr(message.get())));
        }
      } else if (auto handled = HandleMessage(consumer, message.get()); handled.has_value()) {
        batch.push_back(std::move(*handled));
      }
      if (batch.size() >= kPollBatch || stop_.load(std::memory_order_acquire) ||
          over_bound_.load(std::memory_order_acquire)) {
        break;
      }
      message.reset(rd_kafka_consumer_poll(rk, 0));
    }
    if (batch.empty()) continue;
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    for (auto& [due, pending] : batch) {
      if (!CurrentLocked(pending)) continue;  // revoked while the batch was being polled
      if (due > now) {
        delayed_.emplace(due, std::move(pending));
      } else {
        EnqueueLocked(std::move(pending));
      }
    }
    changed_.SignalAll();
  }
}

void KafkaSubscription::AdjustPause(Consumer& consumer) {
  bool pause = false;
  bool resume = false;
  {
    absl::MutexLock lock(&mu_);
    const KafkaOptions& config = client_->options();
    const bool over = OverBoundLocked();
    const bool under = held_events_ <= config.max_buffered_events / 2 &&
                       held_bytes_ <= config.max_buffered_bytes / 2;
    pause = !consumer.paused && over;
    resume = consumer.paused && under;
    over_bound_.store(over, std::memory_order_release);
  }
  if (!pause && !resume) return;
  rd_kafka_topic_partition_list_t* raw = nullptr;
  if (rd_kafka_assignment(consumer.handle.get(), &raw) != RD_KAFKA_RESP_ERR_NO_ERROR) return;
  PartitionListHandle assignment(raw);
  consumer.paused = pause;
  if (pause) {
    rd_kafka_pause_partitions(consumer.handle.get(), assignment.get());
  } else {
    rd_kafka_resume_partitions(consumer.handle.get(), assignment.get());
  }
}

bool KafkaSubscription::OverBoundLocked() const {
  const KafkaOptions& config = client_->options();
  return held_events_ >= config.max_buffered_events || held_bytes_ >= config.max_buffered_bytes;
}

std::optional<std::pair<absl::Time, KafkaSubscription::Pending>> KafkaSubscription::HandleMessage(
    Consumer& consumer, const rd_kafka_message_t* message) {
  const absl::Time now = clock_->Now();
  KafkaRecord record = RecordOf(message);
  Pending pending;
  pending.partition = {consumer.topic, message->partition};
  pending.offset = message->offset;
  pending.bytes = RecordBytes(record);
  {
    absl::MutexLock lock(&mu_);
    auto it = partitions_.find(pending.partition);
    if (it == partitions_.end()) return std::nullopt;  // revoked while in the fetch queue
    pending.epoch = it->second.epoch;
    if (it->second.tracker.Track(pending.offset)) {
      it->second.held_events += 1;
      it->second.held_bytes += pending.bytes;
      held_events_ += 1;
      held_bytes_ += pending.bytes;
      if (OverBoundLocked()) over_bound_.store(true, std::memory_order_release);
    }
  }
  absl::StatusOr<DecodedRecord> decoded = DecodeEvent(record);
  if (!decoded.ok()) {
    DeadLetterMalformed(std::move(pending), std::move(record),
                        MalformedEventReason(decoded.status().message()));
    return std::nullopt;
  }
  Delivery& delivery = pending.delivery;
  delivery.stream = options_.stream;
  absl::Time due = absl::InfinitePast();
  int delivered_before = 0;  // from the committed metadata: a predecessor crashed holding it
  {
    absl::MutexLock lock(&mu_);
    auto it = partitions_.find(pending.partition);
    if (it != partitions_.end()) {
      auto count = it->second.delivered.find(pending.offset);
      if (count != it->second.delivered.end()) delivered_before = count->second;
    }
  }
  if (consumer.topic == kStreamTopic) {
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
      std::string reason = MalformedEventReason(absl::StrCat(
          "retry record lacks one of the headers ", kGroupHeader, ", ", kOriginIdHeader, ", ",
          kAttemptHeader, ", ", kDueHeader));
      DeadLetterMalformed(std::move(pending), std::move(record), std::move(reason));
      return std::nullopt;
    }
    if (group->second != options_.group) {
      // Every group of the stream shares the retry topic; other groups' retries are not ours.
      absl::MutexLock lock(&mu_);
      CompleteLocked(pending);
      return std::nullopt;
    }
    delivery.id = origin->second;
    delivery.delivery_count = static_cast<int>(std::max<int64_t>(*attempt, 0)) + 1;
    const std::optional<int64_t> failed = HeaderInt(*decoded, kFailedAttemptsHeader);
    delivery.failed_attempts =
        failed.has_value() ? static_cast<int>(std::clamp<int64_t>(*failed, 0, 1'000'000)) : 0;
    const std::optional<int64_t> first = HeaderInt(*decoded, kFirstDeliveryHeader);
    delivery.first_delivery_time = first.has_value() ? absl::FromUnixMillis(*first) : now;
    due = absl::FromUnixMillis(*due_ms);
  }
  delivery.delivery_count = std::max(delivery.delivery_count, delivered_before + 1);
  delivery.event = std::move(decoded->event);
  return std::make_pair(due, std::move(pending));
}

void KafkaSubscription::DeadLetterMalformed(Pending where, KafkaRecord record,
                                            std::string reason) {
  // The record is not an event; its dead letter is one (as on every backend), so a consumer of
  // the dead-letter topic reads it through the contract, and it keeps the raw record whole:
  // the value as the value, every raw header as `eventbus-raw-header-<name>` (bookkeeping
  // headers, which decoding skips, so they may hold any bytes), the key as the key when it is
  // text (else as `eventbus-raw-key`).
  const std::string id = RecordId(where.partition.second, where.offset);
  Delivery replacement;
  replacement.stream = TopicOf(where.partition);
  replacement.id = id;
  replacement.event = MakeEvent("io.eventbus.malformed",
                                absl::StrCat("kafka:", TopicOf(where.partition)), record.value);
  replacement.event.set_id(absl::StrCat(TopicOf(where.partition), "/", id));
  replacement.event.set_data_content_type("application/octet-stream");
  SetEventTime(replacement.event, clock_->Now());
  absl::StatusOr<KafkaRecord> encoded =
      EncodeEvent(MakeDeadLetter(replacement, options_.group, reason));
  // Cannot fail: the headers are MakeDeadLetter's own.
  KafkaRecord dead = encoded.ok() ? *std::move(encoded) : KafkaRecord{};
  if (record.key.has_value()) {
    if (IsValidUtf8(*record.key) && record.key->size() <= kMaxAttributeBytes) {
      dead.key = record.key;
    } else {
      dead.headers.emplace_back(absl::StrCat(kRawHeaderPrefix, "key"), *record.key);
    }
  }
  for (const auto& [name, value] : record.headers) {
    dead.headers.emplace_back(absl::StrCat(kRawHeaderPrefix, "header-", name), value);
  }
  dead.headers.emplace_back(std::string(kDlqOriginTopicHeader), TopicOf(where.partition));
  dead.headers.emplace_back(std::string(kDlqOriginPartitionHeader),
                            absl::StrCat(where.partition.second));
  dead.headers.emplace_back(std::string(kDlqOriginOffsetHeader), absl::StrCat(where.offset));
  dead.headers.emplace_back(std::string(kDlqAttemptsHeader), "1");
  {
    absl::MutexLock lock(&mu_);
    ++dead_letters_in_flight_;
  }
  // Asynchronous: the poller goes on serving rebalances while the dead-letter topic is slow
  // or down; the record is marked done only once its dead letter is written.
  auto state = std::make_shared<MalformedRecord>(
      MalformedRecord{std::move(where), std::move(record), std::move(reason)});
  const absl::Status queued = client_->Produce(
      dead_letter_topic_, dead, [guard = guard_, state](absl::StatusOr<PublishReceipt> receipt) {
        absl::MutexLock guard_lock(&guard->mu);
        if (guard->owner != nullptr) {
          guard->owner->OnMalformedDeadLettered(std::move(*state), receipt.status());
        }
      });
  if (!queued.ok()) OnMalformedDeadLettered(std::move(*state), queued);
}

void KafkaSubscription::OnMalformedDeadLettered(MalformedRecord malformed, absl::Status status) {
  absl::MutexLock lock(&mu_);
  --dead_letters_in_flight_;
  if (status.ok()) {
    CompleteLocked(malformed.where);
  } else if (CurrentLocked(malformed.where)) {
    // Retried by a poller; a revoked record is dead-lettered by its new owner instead.
    Warn(absl::StrCat("dead letter of ", TopicOf(malformed.where.partition), " ",
                      malformed.where.partition.second, ":", malformed.where.offset, ": ",
                      status.ToString(), "; retrying"));
    failed_dead_letters_.push_back(std::move(malformed));
  }
  changed_.SignalAll();
}

void KafkaSubscription::RetryFailedDeadLetters() {
  std::vector<MalformedRecord> failed;
  {
    absl::MutexLock lock(&mu_);
    if (failed_dead_letters_.empty()) return;
    const absl::Time now = absl::Now();
    if (now < next_dead_letter_retry_) return;
    next_dead_letter_retry_ = now + kDeadLetterRetryInterval;
    failed = std::move(failed_dead_letters_);
    failed_dead_letters_.clear();
    std::erase_if(failed, [this](const MalformedRecord& m)
                              ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !CurrentLocked(m.where); });
  }
  for (MalformedRecord& m : failed) {
    DeadLetterMalformed(std::move(m.where), std::move(m.record), std::move(m.reason));
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
  state.delivered.erase(pending.offset);
  if (state.tracker.MarkDone(pending.offset)) {
    state.held_events -= 1;
    state.held_bytes -= pending.bytes;
    held_events_ -= 1;
    held_bytes_ -= pending.bytes;
  }
  const std::optional<int64_t> committable = state.tracker.Committable();
  if (committable.has_value() && *committable > state.stored) {
    PartitionListHandle list(rd_kafka_topic_partition_list_new(1));
    rd_kafka_topic_partition_list_add(list.get(), TopicOf(pending.partition).c_str(),
                                      pending.partition.second)
        ->offset = *committable;
    // Safe under mu_: a revoke drops the partition under mu_ before unassigning it, so this
    // never stores an offset for a partition we no longer own.
    const rd_kafka_resp_err_t err = rd_kafka_offsets_store(HandleOf(pending.partition), list.get());
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
  pending.delivered = true;
  if (auto it = partitions_.find(pending.partition); it != partitions_.end()) {
    it->second.delivered[pending.offset] = pending.delivery.delivery_count;
  }
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
      if (!CurrentLocked(pending) || partitions_.at(pending.partition).revoking) continue;
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

absl::Status KafkaSubscription::Nack(const Delivery& delivery, absl::Duration delay,
                                     NackKind kind) {
  if (delay < absl::ZeroDuration()) delay = absl::ZeroDuration();
  const KafkaOptions& config = client_->options();
  Lease lease;
  absl::Time now;
  {
    absl::MutexLock lock(&mu_);
    EVENTBUS_ASSIGN_OR_RETURN(lease, TakeLeaseLocked(delivery));
    now = clock_->Now();
    ++lease.pending.delivery.delivery_count;
    if (kind == NackKind::kFailed) ++lease.pending.delivery.failed_attempts;
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
  // is marked done only once the retry record is durable. The wait lasts until the delivery
  // report (message.timeout.ms), so a retry record is never written after we gave up on it
  // and kept the delay locally as well.
  const Delivery& next = lease.pending.delivery;
  absl::StatusOr<KafkaRecord> record = RetryRecord(next, next.delivery_count - 1, now + delay);
  absl::Status produced = record.status();
  if (record.ok()) produced = client_->ProduceAndWait(retry_topic_, *record).status();
  absl::MutexLock lock(&mu_);
  if (produced.ok()) {
    CompleteLocked(lease.pending);
    ReleaseKeyLocked(lease.pending);
  } else if (CurrentLocked(lease.pending)) {
    // The retry topic is unreachable: keep the delay locally rather than lose the nack.
    Warn(absl::StrCat("retry topic ", retry_topic_, ": ", produced.ToString(),
                      "; delaying locally"));
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
  const bool ordered = client_->options().ordered_per_key;
  {
    absl::MutexLock lock(&mu_);
    EVENTBUS_ASSIGN_OR_RETURN(lease, TakeLeaseLocked(delivery));
    // The key stays busy while the dead letter is produced, even if a revoke of another
    // partition recomputes the busy keys meanwhile.
    if (ordered) ++settling_keys_[lease.pending.delivery.event.key()];
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
    // Waits for the delivery report: a failure returned here means it was not written.
    produced = client_->ProduceAndWait(dead_letter_topic_, *record).status();
  }
  absl::MutexLock lock(&mu_);
  if (ordered) {
    auto it = settling_keys_.find(held.event.key());
    if (it != settling_keys_.end() && --it->second == 0) settling_keys_.erase(it);
  }
  if (!produced.ok()) {
    // Not written: the caller still holds the delivery and may retry.
    if (CurrentLocked(lease.pending) && !closed_) {
      leases_.emplace(held.token, std::move(lease));
    } else {
      ReleaseKeyLocked(lease.pending);
    }
    return produced;
  }
  CompleteLocked(lease.pending);
  ReleaseKeyLocked(lease.pending);
  changed_.SignalAll();
  return absl::OkStatus();
}

absl::Status KafkaSubscription::CommitKeys(Consumer& consumer,
                                           const std::vector<PartitionKey>& keys,
                                           absl::string_view context) {
  PartitionListHandle commit;
  {
    absl::MutexLock lock(&mu_);
    commit = CommittableLocked(keys);
  }
  if (commit->cnt == 0) return absl::OkStatus();
  const rd_kafka_resp_err_t err = rd_kafka_commit(consumer.handle.get(), commit.get(), /*async=*/0);
  // _NO_OFFSET: nothing new since the last commit.
  if (err == RD_KAFKA_RESP_ERR__NO_OFFSET) return absl::OkStatus();
  return ToStatus(err, context);
}

void KafkaSubscription::LeaveGroupBeforeClose(rd_kafka_t* rk) {
  // librdkafka 2.0 can hang for ever in rd_kafka_consumer_close when a cooperative rebalance
  // reaches the consumer while it closes (librdkafka#4527, fixed in 2.4): its rebalance
  // callback's incremental unassign never returns. Unsubscribing first and serving the revoke
  // here, on a normal poll, leaves close nothing to rebalance. Bounded: a broker that does not
  // answer leaves the rest to close.
  if (rd_kafka_unsubscribe(rk) != RD_KAFKA_RESP_ERR_NO_ERROR) return;
  const absl::Time deadline = absl::Now() + client_->options().operation_timeout;
  while (absl::Now() < deadline) {
    rd_kafka_topic_partition_list_t* raw = nullptr;
    if (rd_kafka_assignment(rk, &raw) != RD_KAFKA_RESP_ERR_NO_ERROR) return;
    PartitionListHandle assignment(raw);
    if (assignment == nullptr || assignment->cnt == 0) return;
    // Records still arriving are not delivered: uncommitted, they come again to the next owner.
    MessageHandle ignored(rd_kafka_consumer_poll(rk, 100));
  }
}

absl::Status KafkaSubscription::Close() {
  absl::MutexLock close_lock(&close_mu_);
  const bool started = consumers_[kStreamTopic].poller.joinable();
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return absl::OkStatus();
    closed_ = true;
    changed_.SignalAll();
    // The pollers keep serving the groups meanwhile; bounded, so a consumer that never
    // reached the broker still closes. Without pollers (Create failed) nothing joined.
    if (started) {
      auto assigned = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return consumers_[kStreamTopic].assigned_once && consumers_[kRetryTopic].assigned_once;
      };
      mu_.AwaitWithTimeout(absl::Condition(&assigned), kFirstAssignmentWait);
    }
  }
  stop_.store(true, std::memory_order_release);
  for (Consumer& consumer : consumers_) {
    if (consumer.poller.joinable()) consumer.poller.join();
  }
  absl::Status status;
  if (started) {
    {
      // Dead letters of malformed records still in flight: done ones get committed below.
      absl::MutexLock lock(&mu_);
      auto idle = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return dead_letters_in_flight_ == 0;
      };
      mu_.AwaitWithTimeout(absl::Condition(&idle), client_->options().operation_timeout);
    }
    std::vector<PartitionKey> keys[2];
    {
      absl::MutexLock lock(&mu_);
      for (const auto& [key, state] : partitions_) keys[key.first].push_back(key);
    }
    // The deliveries in flight go to the retry topic with their counts, so a consumer that is
    // closed (or destroyed) with a poison event does not reset its count.
    GiveBackDeliveries(keys[kStreamTopic]);
    GiveBackDeliveries(keys[kRetryTopic]);
    for (Consumer& consumer : consumers_) {
      absl::Status committed = CommitKeys(consumer, keys[consumer.topic], "commit on close");
      if (status.ok()) status = committed;
    }
  }
  {
    absl::MutexLock guard_lock(&guard_->mu);
    guard_->owner = nullptr;  // late dead-letter reports no longer reach us
  }
  consumer_closing_.store(true, std::memory_order_release);
  for (Consumer& consumer : consumers_) {
    if (consumer.handle == nullptr) continue;
    LeaveGroupBeforeClose(consumer.handle.get());
    // Leaves the group: hands our partitions, with every unacknowledged event, to the
    // remaining members.
    const absl::Status closed =
        ToStatus(rd_kafka_consumer_close(consumer.handle.get()), "closing");
    if (status.ok()) status = closed;
    consumer.handle.reset();
    consumer.offsets_reader.reset();
  }
  absl::MutexLock lock(&mu_);
  ready_.clear();
  delayed_.clear();
  leases_.clear();
  blocked_.clear();
  busy_keys_.clear();
  settling_keys_.clear();
  failed_dead_letters_.clear();
  partitions_.clear();
  held_events_ = 0;
  held_bytes_ = 0;
  return status;
}

}  // namespace eventbus::kafka
