#include "eventbus/executor/operator_json.h"

#include <nlohmann/json.hpp>

namespace eventbus::executor {

using nlohmann::json;

nlohmann::json StoredEventToJson(const StoredEvent& stored) {
  const Event& e = stored.event;
  const absl::Time time = EventTime(e);
  json j = {{"id", e.id()},
            {"stream_id", stored.id},
            {"type", e.type()},
            {"source", e.source()},
            {"time", time == absl::InfinitePast()
                         ? std::string()
                         : FormatTimeMillis(time)}};
  if (!e.subject().empty()) j["subject"] = e.subject();
  if (!e.key().empty()) j["key"] = e.key();
  if (!e.data_content_type().empty()) j["datacontenttype"] = e.data_content_type();
  json headers = json::object();
  for (const auto& [name, value] : e.headers()) headers[name] = value;
  j["headers"] = std::move(headers);
  // JSON data stays JSON; anything else is shown as text.
  json data = json::parse(e.data(), nullptr, /*allow_exceptions=*/false);
  if (data.is_discarded()) {
    j["data"] = e.data();
  } else {
    j["data"] = std::move(data);
  }
  if (!stored.malformed.empty()) j["malformed"] = stored.malformed;
  return j;
}

nlohmann::json StreamInfoToJson(const StreamInfo& info, absl::Time now) {
  json stream = {{"stream", info.name},
                 {"length", info.length},
                 {"first_id", info.first_id},
                 {"last_id", info.last_id},
                 {"groups", json::array()}};
  for (const ConsumerGroupInfo& group : info.groups) {
    json g = {{"group", group.name},
              {"consumers", group.consumers},
              {"pending", group.pending},
              {"lag", group.lag}};
    if (group.oldest_pending_published_at != absl::InfiniteFuture()) {
      g["oldest_pending_age_seconds"] =
          absl::ToDoubleSeconds(now - group.oldest_pending_published_at);
    }
    stream["groups"].push_back(std::move(g));
  }
  return stream;
}

}  // namespace eventbus::executor
