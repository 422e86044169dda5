#include "nats_inspector.h"

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "eventbus/nats/nats_event_stream.h"
#include "eventbus/status_macros.h"
#include "nats_handles.h"
#include "wire.h"

namespace eventbus::nats {
namespace {

// JSStreamNotFoundErr / JSNoMessageFoundErr of the server.
constexpr int kStreamNotFound = 10059;
constexpr int kNoMessageFound = 10037;

class NatsInspector final : public StreamInspector {
 public:
  explicit NatsInspector(jsCtx* js) : js_(js) {}

  // Our JetStream streams hold one subject each, the eventbus stream's name.
  absl::StatusOr<std::vector<std::string>> ListStreams() override {
    jsStreamInfoList* list = nullptr;
    jsErrCode code = jsErrCode(0);
    EVENTBUS_RETURN_IF_ERROR(ToStatus(js_Streams(&list, js_, nullptr, &code), "listing streams", code));
    std::vector<std::string> names;
    for (int i = 0; list != nullptr && i < list->Count; ++i) {
      const jsStreamConfig* config = list->List[i]->Config;
      if (config == nullptr) continue;
      for (int s = 0; s < config->SubjectsLen; ++s) names.emplace_back(config->Subjects[s]);
    }
    if (list != nullptr) jsStreamInfoList_Destroy(list);
    std::sort(names.begin(), names.end());
    return names;
  }

  absl::StatusOr<StreamInfo> Describe(absl::string_view stream) override {
    const std::string name = JetStreamName(stream);
    EVENTBUS_ASSIGN_OR_RETURN(StreamState state, State(stream));
    StreamInfo info;
    info.name = std::string(stream);
    info.length = static_cast<int64_t>(state.msgs);
    if (state.msgs > 0) {
      info.first_id = absl::StrCat(state.first);
      info.last_id = absl::StrCat(state.last);
    }
    jsConsumerInfoList* list = nullptr;
    jsErrCode code = jsErrCode(0);
    const natsStatus listed = js_Consumers(&list, js_, name.c_str(), nullptr, &code);
    // nats.c 3.4 answers NATS_NOT_FOUND for a stream with no consumers yet.
    if (listed != NATS_OK && listed != NATS_NOT_FOUND) {
      return ToStatus(listed, absl::StrCat("consumers of ", name), code);
    }
    for (int i = 0; list != nullptr && i < list->Count; ++i) {
      const jsConsumerInfo* ci = list->List[i];
      ConsumerGroupInfo& g = info.groups.emplace_back();
      // The durable is the group (JetStreamName of it). Pull consumers do not name their
      // members, so `consumers` stays empty.
      g.name = ci->Name != nullptr ? ci->Name : "";
      g.pending = ci->NumAckPending;
      g.lag = static_cast<int64_t>(ci->NumPending);
      if (ci->NumAckPending > 0) {
        // Everything at or below the ack floor is acknowledged: the next retained message
        // above it is the oldest pending one.
        for (uint64_t seq = ci->AckFloor.Stream + 1; seq <= state.last; ++seq) {
          absl::StatusOr<std::optional<StoredEvent>> oldest = Get(name, seq);
          if (!oldest.ok()) break;
          if (!oldest->has_value()) continue;  // deleted
          g.oldest_pending_published_at = EventTime((*oldest)->event);
          break;
        }
      }
    }
    if (list != nullptr) jsConsumerInfoList_Destroy(list);
    std::sort(info.groups.begin(), info.groups.end(),
              [](const auto& a, const auto& b) { return a.name < b.name; });
    return info;
  }

  // Cursors are the last stream sequence read.
  absl::StatusOr<ReadPage> Read(absl::string_view stream, absl::string_view cursor,
                                int max_events) override {
    if (max_events <= 0) return absl::InvalidArgumentError("max_events must be positive");
    uint64_t after = 0;
    if (!cursor.empty() && !absl::SimpleAtoi(cursor, &after)) {
      return absl::InvalidArgumentError(
          absl::StrCat("\"", cursor, "\" is not a NATS stream cursor (a sequence number)"));
    }
    const std::string name = JetStreamName(stream);
    EVENTBUS_ASSIGN_OR_RETURN(StreamState state, State(stream));
    ReadPage page;
    uint64_t seq = std::max(after + 1, state.first);
    for (; seq <= state.last && static_cast<int>(page.events.size()) < max_events; ++seq) {
      EVENTBUS_ASSIGN_OR_RETURN(std::optional<StoredEvent> stored, Get(name, seq));
      if (stored.has_value()) page.events.push_back(*std::move(stored));
    }
    page.next_cursor = absl::StrCat(std::max(after, seq - 1));
    return page;
  }

  absl::StatusOr<std::string> EndCursor(absl::string_view stream) override {
    EVENTBUS_ASSIGN_OR_RETURN(StreamState state, State(stream));
    return absl::StrCat(state.last);
  }

  absl::StatusOr<int64_t> Delete(absl::string_view stream,
                                 absl::Span<const std::string> ids) override {
    const std::string name = JetStreamName(stream);
    int64_t removed = 0;
    for (const std::string& id : ids) {
      uint64_t seq = 0;
      if (!absl::SimpleAtoi(id, &seq)) continue;
      jsErrCode code = jsErrCode(0);
      const natsStatus s = js_DeleteMsg(js_, name.c_str(), seq, nullptr, &code);
      if (s == NATS_OK) {
        ++removed;
      } else if (code != kNoMessageFound) {
        return ToStatus(s, absl::StrCat("deleting ", id, " from ", name), code);
      }
    }
    return removed;
  }

 private:
  struct StreamState {
    uint64_t msgs = 0;
    uint64_t first = 0;
    uint64_t last = 0;
  };

  absl::StatusOr<StreamState> State(absl::string_view stream) {
    const std::string name = JetStreamName(stream);
    jsStreamInfo* si = nullptr;
    jsErrCode code = jsErrCode(0);
    const natsStatus s = js_GetStreamInfo(&si, js_, name.c_str(), nullptr, &code);
    if (s != NATS_OK) {
      if (code == kStreamNotFound || s == NATS_NOT_FOUND) {
        return absl::NotFoundError(absl::StrCat("NATS stream ", stream, " does not exist"));
      }
      return ToStatus(s, absl::StrCat("stream info of ", name), code);
    }
    StreamState state{si->State.Msgs, si->State.FirstSeq, si->State.LastSeq};
    jsStreamInfo_Destroy(si);
    return state;
  }

  // The message at `seq`; nullopt when it was deleted.
  absl::StatusOr<std::optional<StoredEvent>> Get(const std::string& name, uint64_t seq) {
    natsMsg* raw = nullptr;
    jsErrCode code = jsErrCode(0);
    const natsStatus s = js_GetMsg(&raw, js_, name.c_str(), seq, nullptr, &code);
    if (s != NATS_OK) {
      if (code == kNoMessageFound || s == NATS_NOT_FOUND) return std::optional<StoredEvent>();
      return ToStatus(s, absl::StrCat("message ", seq, " of ", name), code);
    }
    MsgPtr msg(raw);
    StoredEvent stored;
    stored.id = absl::StrCat(seq);
    absl::StatusOr<Event> event = wire::Decode(msg.get());
    if (event.ok()) {
      stored.event = *std::move(event);
    } else {
      stored.malformed = std::string(event.status().message());
      stored.event.set_data(natsMsg_GetData(msg.get()),
                            static_cast<size_t>(natsMsg_GetDataLength(msg.get())));
    }
    return std::optional<StoredEvent>(std::move(stored));
  }

  jsCtx* const js_;
};

}  // namespace

std::unique_ptr<StreamInspector> NewNatsInspector(jsCtx* js) {
  return std::make_unique<NatsInspector>(js);
}

}  // namespace eventbus::nats
