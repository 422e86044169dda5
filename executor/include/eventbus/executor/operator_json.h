#pragma once
// The JSON operators see of streams and stored events: one rendering for the `eventbus` CLI
// (`stats --json`, `tail --json`, `dlq list --json`) and the dashboard's API, so scripts and
// the page read the same fields.

#include <nlohmann/json_fwd.hpp>

#include "absl/time/time.h"
#include "eventbus/stream_inspector.h"

#pragma GCC visibility push(default)

namespace eventbus::executor {

// {"id", "stream_id", "type", "source", "time", "subject"?, "key"?, "datacontenttype"?,
//  "headers": {...}, "data": JSON when the data is JSON, else text, "malformed"?}
nlohmann::json StoredEventToJson(const StoredEvent& stored);

// {"stream", "length", "first_id", "last_id", "groups": [{"group", "consumers", "pending",
//  "lag", "oldest_pending_age_seconds"?}]}; -1 where the backend cannot tell. Ages from `now`.
nlohmann::json StreamInfoToJson(const StreamInfo& info, absl::Time now);

}  // namespace eventbus::executor

#pragma GCC visibility pop
