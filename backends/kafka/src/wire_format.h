#pragma once
// The CloudEvents Kafka protocol binding, binary content mode (docs/wire-format.md, "Kafka"):
// value = data, key = partitionkey, attributes in `ce_<name>` headers, datacontenttype in
// `content-type`, other headers as-is. Headers starting with `eventbus-` are this backend's
// own bookkeeping (attempts, retry due time) and never reach Event::headers.

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "eventbus/event.h"

namespace eventbus::kafka {

inline constexpr absl::string_view kCePrefix = "ce_";
inline constexpr absl::string_view kContentTypeHeader = "content-type";
inline constexpr absl::string_view kInternalPrefix = "eventbus-";

// Bookkeeping headers (retry topic and redelivery).
inline constexpr absl::string_view kAttemptHeader = "eventbus-attempt";
inline constexpr absl::string_view kDueHeader = "eventbus-due-ms";
inline constexpr absl::string_view kGroupHeader = "eventbus-group";
inline constexpr absl::string_view kOriginIdHeader = "eventbus-origin-id";
inline constexpr absl::string_view kFirstDeliveryHeader = "eventbus-first-delivery-ms";
// Delivery::failed_attempts of the redelivery; absent = 0 (records written before it existed).
inline constexpr absl::string_view kFailedAttemptsHeader = "eventbus-failed-attempts";

// Kafka coordinates of a dead letter's original, beside eventbus::MakeDeadLetter's dlq*
// extensions (which name the stream and "partition:offset"); plain headers, not event headers.
inline constexpr absl::string_view kDlqOriginTopicHeader = "eventbus-dlq-origin-topic";
inline constexpr absl::string_view kDlqOriginPartitionHeader = "eventbus-dlq-origin-partition";
inline constexpr absl::string_view kDlqOriginOffsetHeader = "eventbus-dlq-origin-offset";
inline constexpr absl::string_view kDlqAttemptsHeader = "eventbus-dlq-attempts";
// A malformed record's dead letter keeps the raw key and headers under this prefix.
inline constexpr absl::string_view kRawHeaderPrefix = "eventbus-raw-";

// A Kafka record as this backend sees it, free of librdkafka types (so it is unit-testable).
struct KafkaRecord {
  std::optional<std::string> key;  // nullopt = null key
  std::string value;
  std::vector<std::pair<std::string, std::string>> headers;  // in wire order, may repeat
};

// InvalidArgument naming the header when Event::headers uses a name the wire format reserves
// (`content-type`, or a `ce_` / `eventbus-` prefix). Everything DecodeEvent returns encodes.
absl::StatusOr<KafkaRecord> EncodeEvent(const Event& event);

struct DecodedRecord {
  Event event;
  // The `eventbus-` headers, last value wins.
  absl::flat_hash_map<std::string, std::string> internal;
};

// InvalidArgument with a reason fit for a dead letter when the record is not a valid event:
// a bare `ce_` header or one naming a reserved header such as `ce_ce_x`, a ce_time that is
// not RFC 3339 (ParseTimeAttribute), or what ValidateEnvelope refuses.
absl::StatusOr<DecodedRecord> DecodeEvent(const KafkaRecord& record);

}  // namespace eventbus::kafka
