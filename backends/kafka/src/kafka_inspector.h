#pragma once
// StreamInspector on Kafka: watermarks for lengths, the admin API for groups, their committed
// offsets (lag) and members, a consumer of its own that assigns partitions to read (it never
// joins a group), and DeleteRecords for prefixes. Private to backends/kafka.

#include <memory>

#include "eventbus/stream_inspector.h"
#include "kafka_client.h"

namespace eventbus::kafka {

std::unique_ptr<StreamInspector> NewKafkaInspector(std::shared_ptr<KafkaClient> client);

}  // namespace eventbus::kafka
