#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "eventbus/event_stream.h"
#include "kafka_client.h"
#include "offset_tracker.h"

namespace eventbus::kafka {

// One consumer of a group. It runs two librdkafka consumers, each with a poller thread that
// serves its rebalances (even while nobody calls Fetch, so a joining consumer is never held
// up) and buffers records: one in the group over the stream's topic, one in the group
// `<group>.retry` over the retry topic. Separate groups, because one group over both topics
// lets cooperative-sticky hand one member every partition of the stream and another only the
// retry topic's. Buffering pauses both when max_buffered_events or max_buffered_bytes are
// held. Fetch hands out leases on buffered records; Ack/Nack/DeadLetter settle them and move
// the per-partition commit point. Deliveries given back (revoke, Close) are re-produced to the
// retry topic with their delivery count before the commit moves past them.
class KafkaSubscription final : public Subscription {
 public:
  static absl::StatusOr<std::unique_ptr<KafkaSubscription>> Create(
      std::shared_ptr<KafkaClient> client, const SubscribeOptions& options);
  ~KafkaSubscription() override;

  absl::StatusOr<std::vector<Delivery>> Fetch(int max_events, absl::Duration wait) override;
  absl::Status Ack(const Delivery& delivery) override;
  using Subscription::Nack;
  absl::Status Nack(const Delivery& delivery, absl::Duration delay, NackKind kind) override;
  absl::Status Extend(const Delivery& delivery) override;
  absl::StatusOr<std::vector<Delivery>> Reclaim(absl::Duration min_idle, int max_events) override;
  absl::Status DeadLetter(const Delivery& delivery, absl::string_view reason) override;
  absl::Status Close() override;

 protected:
  absl::Status DoWaitReady(absl::Duration timeout) override;

 private:
  // Assignment helpers, on the poller thread in the rebalance callback.
  void ResolveLatestOffsets(rd_kafka_t* rk, rd_kafka_topic_partition_list_t* partitions);
  void WarnIfIdle(rd_kafka_t* rk);

  static constexpr int kStreamTopic = 0;
  static constexpr int kRetryTopic = 1;
  // (kStreamTopic or kRetryTopic; partition).
  using PartitionKey = std::pair<int, int32_t>;

  // One librdkafka consumer and the thread that polls it.
  struct Consumer {
    KafkaSubscription* owner = nullptr;
    int topic = kStreamTopic;
    KafkaHandle handle;
    // Same group, never subscribed: reads the committed offsets and their metadata at
    // assignment. The member itself cannot: its OffsetFetch inside the rebalance callback timed
    // out (15 s) while the group was rebalancing (librdkafka 2.0), stalling the handover.
    KafkaHandle offsets_reader;
    std::thread poller;
    // Set by the first assignment (possibly empty). librdkafka 2.0 asserts when a
    // cooperative-sticky consumer is destroyed between JoinGroup and its first SyncGroup
    // (confluentinc/librdkafka#4312, fixed in 2.3.0), so Close waits for it.
    bool assigned_once = false;  // guarded by owner->mu_
    bool paused = false;         // poller thread only
    absl::Time next_commit = absl::InfinitePast();  // poller thread only
  };

  struct PartitionState {
    uint64_t epoch = 0;  // assignment epoch: a new one on every (re)assignment
    OffsetTracker tracker;
    int64_t stored = -1;  // last offset handed to rd_kafka_offsets_store
    size_t held_events = 0;
    size_t held_bytes = 0;
    // Being given back (revoke): Fetch hands out none of its records any more, since their
    // counts would not be handed over.
    bool revoking = false;
    // Deliveries so far of each offset handed out and not done, plus the counts read from the
    // committed metadata at assignment for offsets not received again yet: committed with
    // every offset commit (EncodeDeliveryCounts), so they survive a crash of this consumer.
    std::map<int64_t, int> delivered;
    // What the last commit of this partition carried: a commit is due when either changed.
    int64_t committed_offset = -1;
    std::string committed_metadata;
  };
  // A record received and not yet done, wherever it currently waits.
  struct Pending {
    PartitionKey partition;
    int64_t offset = 0;
    uint64_t epoch = 0;
    size_t bytes = 0;        // its share of max_buffered_bytes
    bool delivered = false;  // handed out by Fetch or Reclaim at least once
    Delivery delivery;       // delivery_count = the count of its next delivery
  };
  struct Lease {
    Pending pending;
    absl::Time touched;  // leased or extended at
  };
  // A record that is not a valid event, waiting for its dead letter.
  struct MalformedRecord {
    Pending where;
    KafkaRecord record;
    std::string reason;
  };
  // A delivery this consumer gives back with its count: the retry record that carries it.
  struct GiveBack {
    Pending pending;
    int attempts = 0;  // deliveries so far
    absl::Time due;
  };

  KafkaSubscription(std::shared_ptr<KafkaClient> client, SubscribeOptions options);

  absl::Status StartConsumer(int topic);
  static void RebalanceCallback(rd_kafka_t* rk, rd_kafka_resp_err_t err,
                                rd_kafka_topic_partition_list_t* partitions, void* opaque);
  void OnRebalance(Consumer& consumer, rd_kafka_resp_err_t err,
                   rd_kafka_topic_partition_list_t* partitions);
  void PollLoop(Consumer& consumer);
  // Tracks and decodes one polled record: (due, record), or nullopt when it needs no delivery
  // (revoked, another group's retry, malformed and being dead-lettered).
  std::optional<std::pair<absl::Time, Pending>> HandleMessage(Consumer& consumer, const rd_kafka_message_t* message);
  void AdjustPause(Consumer& consumer);
  bool OverBoundLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  void RetryFailedDeadLetters();

  const std::string& TopicOf(const PartitionKey& key) const {
    return key.first == kStreamTopic ? options_.stream : retry_topic_;
  }
  rd_kafka_t* HandleOf(const PartitionKey& key) const {
    return consumers_[key.first].handle.get();
  }
  // The retry record for `delivery`, redelivered at `due` with count `attempts` + 1.
  absl::StatusOr<KafkaRecord> RetryRecord(const Delivery& delivery, int attempts,
                                          absl::Time due) const;
  // Re-produces every delivered, unsettled record of `keys` to the retry topic (so the next
  // owner sees its count) and marks the ones written done. Called before committing on a
  // revoke or Close.
  void GiveBackDeliveries(const std::vector<PartitionKey>& keys) ABSL_LOCKS_EXCLUDED(mu_);
  // Unsubscribes and serves the revoke on a normal poll, so rd_kafka_consumer_close has no
  // rebalance left to run (see the .cc for the librdkafka hang this avoids).
  void LeaveGroupBeforeClose(rd_kafka_t* rk) ABSL_LOCKS_EXCLUDED(mu_);
  // Marks `pending` done if its partition is still assigned in the same epoch, and stores the
  // new commit point. False when the partition was revoked meanwhile.
  bool CompleteLocked(const Pending& pending) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EnqueueLocked(Pending pending) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseKeyLocked(const Pending& pending) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool CurrentLocked(const Pending& pending) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  Delivery LeaseLocked(Pending pending, absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Lease> TakeLeaseLocked(const Delivery& delivery)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The commit point and delivery-count metadata of `keys` (only those that changed since
  // their last commit when `changed_only`); records them as committed.
  PartitionListHandle CommittableLocked(const std::vector<PartitionKey>& keys,
                                        bool changed_only = false)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Reads the committed delivery counts of newly assigned partitions (a blocking OffsetFetch).
  std::vector<std::map<int64_t, int>> CommittedCounts(
      Consumer& consumer, const rd_kafka_topic_partition_list_t* partitions);
  // The poller's periodic asynchronous commit of its consumer's partitions.
  void CommitChanged(Consumer& consumer) ABSL_LOCKS_EXCLUDED(mu_);
  void DropPartitionLocked(const PartitionKey& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Produces the dead letter for a record that is not a valid event, asynchronously: the
  // record is marked done when the delivery report is OK, and retried by the poller otherwise.
  void DeadLetterMalformed(Pending where, KafkaRecord record, std::string reason)
      ABSL_LOCKS_EXCLUDED(mu_);
  void OnMalformedDeadLettered(MalformedRecord malformed, absl::Status status)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Commits the contiguous offsets of `keys` (synchronously, on the owning consumer).
  absl::Status CommitKeys(Consumer& consumer, const std::vector<PartitionKey>& keys,
                          absl::string_view context)
      ABSL_LOCKS_EXCLUDED(mu_);

  const std::shared_ptr<KafkaClient> client_;
  const SubscribeOptions options_;
  const std::string retry_topic_;
  const std::string dead_letter_topic_;
  const absl::Duration ack_wait_;
  Clock* const clock_;

  Consumer consumers_[2];
  std::atomic<bool> stop_{false};
  // Set once Close has given back and committed everything and calls rd_kafka_consumer_close:
  // the revoke callbacks that runs must not commit again.
  std::atomic<bool> consumer_closing_{false};
  // Set when the held records reach a bound: a poller stops taking records from librdkafka
  // mid-batch, and pauses before its next poll.
  std::atomic<bool> over_bound_{false};
  std::unique_ptr<ClockListener> clock_listener_;
  absl::Mutex close_mu_;  // serializes Close

  mutable absl::Mutex mu_;
  absl::CondVar changed_;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_epoch_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t next_token_ ABSL_GUARDED_BY(mu_) = 1;
  // Records received and not done, over all partitions (the buffer bound).
  size_t held_events_ ABSL_GUARDED_BY(mu_) = 0;
  size_t held_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<PartitionKey, PartitionState> partitions_ ABSL_GUARDED_BY(mu_);
  std::deque<Pending> ready_ ABSL_GUARDED_BY(mu_);
  std::multimap<absl::Time, Pending> delayed_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, Lease> leases_ ABSL_GUARDED_BY(mu_);
  // Ordering mode: keys with an event in flight, and the events waiting behind them.
  absl::flat_hash_set<std::string> busy_keys_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::deque<Pending>> blocked_ ABSL_GUARDED_BY(mu_);
  // Ordering mode: keys whose event is being settled through the broker (a dead letter or a
  // retry record in flight); they stay busy across a revoke of another partition.
  absl::flat_hash_map<std::string, int> settling_keys_ ABSL_GUARDED_BY(mu_);
  // Malformed records whose dead letter could not be produced yet; retried by a poller.
  std::vector<MalformedRecord> failed_dead_letters_ ABSL_GUARDED_BY(mu_);
  absl::Time next_dead_letter_retry_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  int dead_letters_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  // Delivery reports of asynchronous dead letters may come after this subscription is gone:
  // they reach it only through this guard, which Close clears.
  struct Guard {
    absl::Mutex mu;
    KafkaSubscription* owner ABSL_GUARDED_BY(mu) = nullptr;
  };
  const std::shared_ptr<Guard> guard_ = std::make_shared<Guard>();
};

}  // namespace eventbus::kafka
