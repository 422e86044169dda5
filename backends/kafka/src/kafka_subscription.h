#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
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

// One consumer of a group. A poller thread owns the librdkafka consumer: it serves rebalances
// (even while nobody calls Fetch, so a joining consumer is never held up) and buffers records,
// pausing the assignment when max_buffered_events are waiting. Fetch hands out leases on
// buffered records; Ack/Nack/DeadLetter settle them and move the per-partition commit point.
class KafkaSubscription final : public Subscription {
 public:
  static absl::StatusOr<std::unique_ptr<KafkaSubscription>> Create(
      std::shared_ptr<KafkaClient> client, const SubscribeOptions& options);
  ~KafkaSubscription() override;

  absl::StatusOr<std::vector<Delivery>> Fetch(int max_events, absl::Duration wait) override;
  absl::Status Ack(const Delivery& delivery) override;
  absl::Status Nack(const Delivery& delivery, absl::Duration delay) override;
  absl::Status Extend(const Delivery& delivery) override;
  absl::StatusOr<std::vector<Delivery>> Reclaim(absl::Duration min_idle, int max_events) override;
  absl::Status DeadLetter(const Delivery& delivery, absl::string_view reason) override;
  absl::Status Close() override;

 private:
  // (0 = the stream's topic, 1 = its retry topic; partition).
  using PartitionKey = std::pair<int, int32_t>;

  struct PartitionState {
    uint64_t epoch = 0;  // assignment epoch: a new one on every (re)assignment
    OffsetTracker tracker;
    int64_t stored = -1;  // last offset handed to rd_kafka_offsets_store
  };
  // A record received and not yet done, wherever it currently waits.
  struct Pending {
    PartitionKey partition;
    int64_t offset = 0;
    uint64_t epoch = 0;
    Delivery delivery;  // delivery_count = the count of its next delivery
  };
  struct Lease {
    Pending pending;
    absl::Time touched;  // leased or extended at
  };

  KafkaSubscription(std::shared_ptr<KafkaClient> client, SubscribeOptions options);

  static void RebalanceCallback(rd_kafka_t* rk, rd_kafka_resp_err_t err,
                                rd_kafka_topic_partition_list_t* partitions, void* opaque);
  void OnRebalance(rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* partitions);
  void PollLoop();
  void HandleMessage(const rd_kafka_message_t* message);
  void AdjustPause();
  void RetryFailedDeadLetters();

  const std::string& TopicOf(const PartitionKey& key) const {
    return key.first == 0 ? options_.stream : retry_topic_;
  }
  // Marks `pending` done if its partition is still assigned in the same epoch, and stores the
  // new commit point. False when the partition was revoked meanwhile.
  bool CompleteLocked(const Pending& pending) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EnqueueLocked(Pending pending) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseKeyLocked(const Pending& pending) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool CurrentLocked(const Pending& pending) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  Delivery LeaseLocked(Pending pending, absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Lease> TakeLeaseLocked(const Delivery& delivery)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  PartitionListHandle CommittableLocked(const std::vector<PartitionKey>& keys)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  void DropPartitionLocked(const PartitionKey& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Produces the dead letter for a record that is not a valid event and marks it done.
  absl::Status DeadLetterMalformed(const Pending& where, const KafkaRecord& record,
                                   absl::string_view reason);

  const std::shared_ptr<KafkaClient> client_;
  const SubscribeOptions options_;
  const std::string retry_topic_;
  const std::string dead_letter_topic_;
  const absl::Duration ack_wait_;
  Clock* const clock_;

  KafkaHandle consumer_;
  std::atomic<bool> stop_{false};
  std::thread poller_;
  std::unique_ptr<ClockListener> clock_listener_;
  absl::Mutex close_mu_;  // serializes Close

  mutable absl::Mutex mu_;
  absl::CondVar changed_;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool paused_ ABSL_GUARDED_BY(mu_) = false;
  // Set by the first assignment (possibly empty). librdkafka 2.0 asserts when a
  // cooperative-sticky consumer is destroyed between JoinGroup and its first SyncGroup
  // (confluentinc/librdkafka#4312, fixed in 2.3.0), so Close waits for it.
  bool assigned_once_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_epoch_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t next_token_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<PartitionKey, PartitionState> partitions_ ABSL_GUARDED_BY(mu_);
  std::deque<Pending> ready_ ABSL_GUARDED_BY(mu_);
  std::multimap<absl::Time, Pending> delayed_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, Lease> leases_ ABSL_GUARDED_BY(mu_);
  // Ordering mode: keys with an event in flight, and the events waiting behind them.
  absl::flat_hash_set<std::string> busy_keys_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::deque<Pending>> blocked_ ABSL_GUARDED_BY(mu_);
  // Malformed records whose dead letter could not be produced yet (poller thread only).
  std::vector<std::tuple<Pending, KafkaRecord, std::string>> failed_dead_letters_;
  absl::Time next_dead_letter_retry_ = absl::InfinitePast();
};

}  // namespace eventbus::kafka
