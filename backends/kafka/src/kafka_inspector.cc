#include "kafka_inspector.h"

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "eventbus/status_macros.h"
#include "wire_format.h"

namespace eventbus::kafka {
namespace {

int TimeoutMs(absl::Duration d) {
  return static_cast<int>(std::clamp<int64_t>(absl::ToInt64Milliseconds(d), 1, 1 << 30));
}

struct Watermarks {
  int64_t low = 0;
  int64_t high = 0;  // the next offset to be written
};

// Cursors are "partition:next_offset" pairs joined by commas: where reading each partition
// goes on.
using Cursor = std::map<int32_t, int64_t>;

absl::StatusOr<Cursor> ParseCursor(absl::string_view text) {
  Cursor cursor;
  if (text.empty()) return cursor;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    std::pair<absl::string_view, absl::string_view> po = absl::StrSplit(part, absl::MaxSplits(':', 1));
    int32_t partition = 0;
    int64_t offset = 0;
    if (!absl::SimpleAtoi(po.first, &partition) || !absl::SimpleAtoi(po.second, &offset) ||
        partition < 0 || offset < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"", text, "\" is not a Kafka stream cursor (partition:offset,...)"));
    }
    cursor[partition] = offset;
  }
  return cursor;
}

std::string FormatCursor(const Cursor& cursor) {
  return absl::StrJoin(cursor, ",", [](std::string* out, const auto& po) {
    absl::StrAppend(out, po.first, ":", po.second);
  });
}

class KafkaInspector final : public StreamInspector {
 public:
  explicit KafkaInspector(std::shared_ptr<KafkaClient> client) : client_(std::move(client)) {}

  absl::StatusOr<std::vector<std::string>> ListStreams() override {
    absl::MutexLock lock(&mu_);
    EVENTBUS_RETURN_IF_ERROR(EnsureConsumer());
    const rd_kafka_metadata_t* metadata = nullptr;
    EVENTBUS_RETURN_IF_ERROR(ToStatus(
        rd_kafka_metadata(consumer_.get(), 1, nullptr, &metadata, TimeoutMs(timeout())),
        "listing topics"));
    std::vector<std::string> names;
    for (int i = 0; i < metadata->topic_cnt; ++i) {
      std::string name = metadata->topics[i].topic;
      // Kafka's own topics (__consumer_offsets, ...) are nobody's event streams.
      if (!absl::StartsWith(name, "__")) names.push_back(std::move(name));
    }
    rd_kafka_metadata_destroy(metadata);
    std::sort(names.begin(), names.end());
    return names;
  }

  absl::StatusOr<StreamInfo> Describe(absl::string_view stream) override {
    absl::MutexLock lock(&mu_);
    EVENTBUS_RETURN_IF_ERROR(EnsureConsumer());
    const std::string topic(stream);
    EVENTBUS_ASSIGN_OR_RETURN(auto marks, WatermarksOf(topic));
    StreamInfo info;
    info.name = topic;
    for (const auto& [partition, m] : marks) {
      info.length += m.high - m.low;
      if (m.high > m.low) {
        if (info.first_id.empty()) info.first_id = absl::StrCat(partition, ":", m.low);
        info.last_id = absl::StrCat(partition, ":", m.high - 1);
      }
    }
    EVENTBUS_ASSIGN_OR_RETURN(std::vector<std::string> groups, GroupIds());
    for (const std::string& group : groups) {
      EVENTBUS_ASSIGN_OR_RETURN(auto committed, CommittedOffsets(group, topic, marks));
      if (committed.empty()) continue;  // the group never consumed this topic
      ConsumerGroupInfo& g = info.groups.emplace_back();
      g.name = group;
      // In-flight deliveries live in the consumers, not on the broker.
      g.pending = -1;
      g.lag = 0;
      for (const auto& [partition, m] : marks) {
        auto it = committed.find(partition);
        const int64_t from = it == committed.end() ? m.low : std::max(it->second, m.low);
        g.lag += std::max<int64_t>(0, m.high - from);
      }
    }
    EVENTBUS_RETURN_IF_ERROR(FillMembers(topic, info.groups));
    return info;
  }

  absl::StatusOr<ReadPage> Read(absl::string_view stream, absl::string_view cursor_text,
                                int max_events) override {
    if (max_events <= 0) return absl::InvalidArgumentError("max_events must be positive");
    EVENTBUS_ASSIGN_OR_RETURN(Cursor cursor, ParseCursor(cursor_text));
    absl::MutexLock lock(&mu_);
    EVENTBUS_RETURN_IF_ERROR(EnsureConsumer());
    const std::string topic(stream);
    EVENTBUS_ASSIGN_OR_RETURN(auto marks, WatermarksOf(topic));
    Cursor next;
    PartitionListHandle assignment(rd_kafka_topic_partition_list_new(marks.size()));
    size_t to_read = 0;
    std::set<int32_t> finished;  // partitions read up to their high watermark
    for (const auto& [partition, m] : marks) {
      auto it = cursor.find(partition);
      const int64_t from = std::max(it == cursor.end() ? m.low : it->second, m.low);
      next[partition] = from;
      if (from < m.high) {
        rd_kafka_topic_partition_list_add(assignment.get(), topic.c_str(), partition)->offset =
            from;
        ++to_read;
      }
    }
    ReadPage page;
    if (to_read > 0) {
      EVENTBUS_RETURN_IF_ERROR(ToStatus(rd_kafka_assign(consumer_.get(), assignment.get()),
                                        "assigning partitions to read"));
      const absl::Time deadline = absl::Now() + timeout();
      while (static_cast<int>(page.events.size()) < max_events && finished.size() < to_read &&
             absl::Now() < deadline) {
        MessageHandle message(rd_kafka_consumer_poll(consumer_.get(), 100));
        if (message == nullptr) continue;
        if (message->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
          finished.insert(message->partition);
          continue;
        }
        if (message->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
          rd_kafka_assign(consumer_.get(), nullptr);
          return ToStatus(message->err, absl::StrCat("reading ", topic));
        }
        const int32_t partition = message->partition;
        if (message->offset < next[partition]) continue;  // a stale fetch of an earlier read
        next[partition] = message->offset + 1;
        if (next[partition] >= marks[partition].high) finished.insert(partition);
        StoredEvent& stored = page.events.emplace_back();
        stored.id = absl::StrCat(partition, ":", message->offset);
        absl::StatusOr<DecodedRecord> decoded = DecodeEvent(RecordOf(message.get()));
        if (decoded.ok()) {
          stored.event = std::move(decoded->event);
        } else {
          stored.malformed = std::string(decoded.status().message());
          if (message->payload != nullptr) {
            stored.event.set_data(static_cast<const char*>(message->payload), message->len);
          }
        }
      }
      rd_kafka_assign(consumer_.get(), nullptr);
    }
    page.next_cursor = FormatCursor(next);
    return page;
  }

  absl::StatusOr<std::string> EndCursor(absl::string_view stream) override {
    absl::MutexLock lock(&mu_);
    EVENTBUS_RETURN_IF_ERROR(EnsureConsumer());
    EVENTBUS_ASSIGN_OR_RETURN(auto marks, WatermarksOf(std::string(stream)));
    Cursor end;
    for (const auto& [partition, m] : marks) end[partition] = m.high;
    return FormatCursor(end);
  }

  // Kafka deletes records only below an offset (DeleteRecords): the ids must be, per partition,
  // every record from the oldest retained one on.
  absl::StatusOr<int64_t> Delete(absl::string_view stream,
                                 absl::Span<const std::string> ids) override {
    if (ids.empty()) return 0;
    absl::MutexLock lock(&mu_);
    EVENTBUS_RETURN_IF_ERROR(EnsureConsumer());
    const std::string topic(stream);
    EVENTBUS_ASSIGN_OR_RETURN(auto marks, WatermarksOf(topic));
    std::map<int32_t, std::vector<int64_t>> offsets;
    for (const std::string& id : ids) {
      std::pair<absl::string_view, absl::string_view> po = absl::StrSplit(id, absl::MaxSplits(':', 1));
      int32_t partition = 0;
      int64_t offset = 0;
      if (!absl::SimpleAtoi(po.first, &partition) || !absl::SimpleAtoi(po.second, &offset)) {
        return absl::InvalidArgumentError(absl::StrCat("\"", id, "\" is not a Kafka event id"));
      }
      offsets[partition].push_back(offset);
    }
    PartitionListHandle before(rd_kafka_topic_partition_list_new(offsets.size()));
    int64_t removed = 0;
    for (auto& [partition, list] : offsets) {
      std::sort(list.begin(), list.end());
      list.erase(std::unique(list.begin(), list.end()), list.end());
      const int64_t low = marks.count(partition) ? marks[partition].low : 0;
      list.erase(list.begin(), std::lower_bound(list.begin(), list.end(), low));  // gone already
      if (list.empty()) continue;
      if (list.front() != low || list.back() - list.front() + 1 != static_cast<int64_t>(list.size())) {
        return absl::FailedPreconditionError(absl::StrCat(
            "Kafka can only delete the oldest records of a partition: the selection in partition ",
            partition, " of ", topic, " is not every record from offset ", low, " on"));
      }
      rd_kafka_topic_partition_list_add(before.get(), topic.c_str(), partition)->offset =
          list.back() + 1;
      removed += static_cast<int64_t>(list.size());
    }
    if (removed == 0) return 0;
    rd_kafka_DeleteRecords_t* request = rd_kafka_DeleteRecords_new(before.get());
    EVENTBUS_ASSIGN_OR_RETURN(EventHandle event,
                              RunAdmin(RD_KAFKA_ADMIN_OP_DELETERECORDS, [&](auto* options, auto* queue) {
                                rd_kafka_DeleteRecords(consumer_.get(), &request, 1, options, queue);
                              }));
    rd_kafka_DeleteRecords_destroy(request);
    const rd_kafka_topic_partition_list_t* result =
        rd_kafka_DeleteRecords_result_offsets(rd_kafka_event_DeleteRecords_result(event.get()));
    for (int i = 0; result != nullptr && i < result->cnt; ++i) {
      if (result->elems[i].err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        return ToStatus(result->elems[i].err, absl::StrCat("deleting records of ", topic));
      }
    }
    return removed;
  }

 private:
  absl::Duration timeout() const { return client_->options().operation_timeout; }

  // A consumer of its own for metadata, watermarks, reads (assign, never subscribe: it joins
  // no group) and admin requests.
  absl::Status EnsureConsumer() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (consumer_ != nullptr) return absl::OkStatus();
    EVENTBUS_ASSIGN_OR_RETURN(ConfHandle conf,
                              client_->NewConf({{"group.id", "eventbus-inspector"},
                                                {"enable.auto.commit", "false"},
                                                {"enable.auto.offset.store", "false"},
                                                {"enable.partition.eof", "true"},
                                                {"allow.auto.create.topics", "false"}}));
    char errstr[512];
    rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf.get(), errstr, sizeof(errstr));
    if (rk == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("Kafka inspector: ", errstr));
    }
    conf.release();  // owned by rk now
    consumer_.reset(rk);
    return absl::OkStatus();
  }

  // Partition -> watermarks; NotFound when the topic does not exist.
  absl::StatusOr<std::map<int32_t, Watermarks>> WatermarksOf(const std::string& topic)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    TopicHandle handle(rd_kafka_topic_new(consumer_.get(), topic.c_str(), nullptr));
    if (handle == nullptr) {
      return ToStatus(rd_kafka_last_error(), absl::StrCat("topic handle for ", topic));
    }
    const rd_kafka_metadata_t* metadata = nullptr;
    EVENTBUS_RETURN_IF_ERROR(ToStatus(
        rd_kafka_metadata(consumer_.get(), 0, handle.get(), &metadata, TimeoutMs(timeout())),
        absl::StrCat("metadata for topic ", topic)));
    std::vector<int32_t> partitions;
    for (int i = 0; i < metadata->topic_cnt; ++i) {
      const rd_kafka_metadata_topic_t& t = metadata->topics[i];
      if (topic != t.topic || t.err != RD_KAFKA_RESP_ERR_NO_ERROR) continue;
      for (int p = 0; p < t.partition_cnt; ++p) partitions.push_back(t.partitions[p].id);
    }
    rd_kafka_metadata_destroy(metadata);
    if (partitions.empty()) {
      return absl::NotFoundError(absl::StrCat("Kafka topic ", topic, " does not exist"));
    }
    std::map<int32_t, Watermarks> marks;
    for (int32_t partition : partitions) {
      Watermarks& m = marks[partition];
      EVENTBUS_RETURN_IF_ERROR(ToStatus(
          rd_kafka_query_watermark_offsets(consumer_.get(), topic.c_str(), partition, &m.low,
                                           &m.high, TimeoutMs(timeout())),
          absl::StrCat("watermarks of ", topic, " partition ", partition)));
    }
    return marks;
  }

  // Runs one admin request and waits for its result event (errors as Status).
  template <typename Start>
  absl::StatusOr<EventHandle> RunAdmin(rd_kafka_admin_op_t op, Start start)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    char errstr[512];
    AdminOptionsHandle options(rd_kafka_AdminOptions_new(consumer_.get(), op));
    rd_kafka_AdminOptions_set_request_timeout(options.get(), TimeoutMs(timeout()), errstr,
                                              sizeof(errstr));
    QueueHandle queue(rd_kafka_queue_new(consumer_.get()));
    start(options.get(), queue.get());
    EventHandle event(rd_kafka_queue_poll(queue.get(), TimeoutMs(timeout()) + 1000));
    if (event == nullptr) {
      return absl::UnavailableError(absl::StrCat("Kafka admin request: no answer within ",
                                                 absl::FormatDuration(timeout())));
    }
    if (rd_kafka_event_error(event.get()) != RD_KAFKA_RESP_ERR_NO_ERROR) {
      return ToStatus(rd_kafka_event_error(event.get()), "Kafka admin request");
    }
    return event;
  }

  absl::StatusOr<std::vector<std::string>> GroupIds() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    EVENTBUS_ASSIGN_OR_RETURN(
        EventHandle event,
        RunAdmin(RD_KAFKA_ADMIN_OP_LISTCONSUMERGROUPS, [&](auto* options, auto* queue) {
          rd_kafka_ListConsumerGroups(consumer_.get(), options, queue);
        }));
    size_t count = 0;
    const rd_kafka_ConsumerGroupListing_t** listings = rd_kafka_ListConsumerGroups_result_valid(
        rd_kafka_event_ListConsumerGroups_result(event.get()), &count);
    std::vector<std::string> ids;
    for (size_t i = 0; i < count; ++i) {
      std::string id = rd_kafka_ConsumerGroupListing_group_id(listings[i]);
      if (id != "eventbus-inspector") ids.push_back(std::move(id));
    }
    std::sort(ids.begin(), ids.end());
    return ids;
  }

  // The group's committed offsets in `topic`'s partitions (absent: none committed).
  absl::StatusOr<std::map<int32_t, int64_t>> CommittedOffsets(
      const std::string& group, const std::string& topic,
      const std::map<int32_t, Watermarks>& marks) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    PartitionListHandle partitions(rd_kafka_topic_partition_list_new(marks.size()));
    for (const auto& [partition, m] : marks) {
      rd_kafka_topic_partition_list_add(partitions.get(), topic.c_str(), partition);
    }
    rd_kafka_ListConsumerGroupOffsets_t* request =
        rd_kafka_ListConsumerGroupOffsets_new(group.c_str(), partitions.get());
    absl::StatusOr<EventHandle> event =
        RunAdmin(RD_KAFKA_ADMIN_OP_LISTCONSUMERGROUPOFFSETS, [&](auto* options, auto* queue) {
          rd_kafka_ListConsumerGroupOffsets(consumer_.get(), &request, 1, options, queue);
        });
    rd_kafka_ListConsumerGroupOffsets_destroy(request);
    if (!event.ok()) return event.status();
    size_t count = 0;
    const rd_kafka_group_result_t** results = rd_kafka_ListConsumerGroupOffsets_result_groups(
        rd_kafka_event_ListConsumerGroupOffsets_result(event->get()), &count);
    std::map<int32_t, int64_t> committed;
    for (size_t i = 0; i < count; ++i) {
      const rd_kafka_topic_partition_list_t* list = rd_kafka_group_result_partitions(results[i]);
      for (int p = 0; list != nullptr && p < list->cnt; ++p) {
        if (list->elems[p].err == RD_KAFKA_RESP_ERR_NO_ERROR && list->elems[p].offset >= 0) {
          committed[list->elems[p].partition] = list->elems[p].offset;
        }
      }
    }
    return committed;
  }

  // Members of each group that have partitions of `topic` assigned, by client.id.
  absl::Status FillMembers(const std::string& topic, std::vector<ConsumerGroupInfo>& groups)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (groups.empty()) return absl::OkStatus();
    std::vector<const char*> ids;
    for (const ConsumerGroupInfo& g : groups) ids.push_back(g.name.c_str());
    EVENTBUS_ASSIGN_OR_RETURN(
        EventHandle event,
        RunAdmin(RD_KAFKA_ADMIN_OP_DESCRIBECONSUMERGROUPS, [&](auto* options, auto* queue) {
          rd_kafka_DescribeConsumerGroups(consumer_.get(), ids.data(), ids.size(), options, queue);
        }));
    size_t count = 0;
    const rd_kafka_ConsumerGroupDescription_t** descriptions =
        rd_kafka_DescribeConsumerGroups_result_groups(
            rd_kafka_event_DescribeConsumerGroups_result(event.get()), &count);
    for (size_t i = 0; i < count; ++i) {
      const std::string id = rd_kafka_ConsumerGroupDescription_group_id(descriptions[i]);
      auto group = std::find_if(groups.begin(), groups.end(),
                                [&](const ConsumerGroupInfo& g) { return g.name == id; });
      if (group == groups.end()) continue;
      const size_t members = rd_kafka_ConsumerGroupDescription_member_count(descriptions[i]);
      for (size_t m = 0; m < members; ++m) {
        const rd_kafka_MemberDescription_t* member =
            rd_kafka_ConsumerGroupDescription_member(descriptions[i], m);
        const rd_kafka_topic_partition_list_t* assigned = rd_kafka_MemberAssignment_partitions(
            rd_kafka_MemberDescription_assignment(member));
        bool has_topic = false;
        for (int p = 0; assigned != nullptr && p < assigned->cnt; ++p) {
          if (topic == assigned->elems[p].topic) has_topic = true;
        }
        if (has_topic) group->consumers.emplace_back(rd_kafka_MemberDescription_client_id(member));
      }
      std::sort(group->consumers.begin(), group->consumers.end());
    }
    return absl::OkStatus();
  }

  const std::shared_ptr<KafkaClient> client_;
  absl::Mutex mu_;
  KafkaHandle consumer_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

std::unique_ptr<StreamInspector> NewKafkaInspector(std::shared_ptr<KafkaClient> client) {
  return std::make_unique<KafkaInspector>(std::move(client));
}

}  // namespace eventbus::kafka
