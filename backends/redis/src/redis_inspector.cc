#include "redis_inspector.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "connection.h"
#include "eventbus/status_macros.h"
#include "lua_scripts.h"
#include "wire.h"

namespace eventbus::redis {
namespace {

// The value of `name` in a flat [name, value, name, value, ...] reply (XINFO); null if absent.
const redisReply* Field(const redisReply* reply, absl::string_view name) {
  if (!IsArray(reply)) return nullptr;
  for (size_t i = 0; i + 1 < reply->elements; i += 2) {
    if (IsString(reply->element[i]) && StringOf(reply->element[i]) == name) {
      return reply->element[i + 1];
    }
  }
  return nullptr;
}

int64_t IntegerOf(const redisReply* reply, int64_t otherwise) {
  if (reply == nullptr) return otherwise;
  if (reply->type == REDIS_REPLY_INTEGER) return reply->integer;
  int64_t value = 0;
  if (IsString(reply) && absl::SimpleAtoi(StringOf(reply), &value)) return value;
  return otherwise;
}

// The publish time of an entry: the milliseconds part of its id (XADD with `*`).
absl::Time EntryIdTime(absl::string_view id) {
  int64_t ms = 0;
  std::vector<absl::string_view> parts = absl::StrSplit(id, '-');
  if (parts.empty() || !absl::SimpleAtoi(parts[0], &ms)) return absl::InfiniteFuture();
  return absl::FromUnixMillis(ms);
}

// XINFO/XRANGE/... on a key that does not exist answer "ERR no such key".
absl::Status NotFoundOr(const absl::Status& status, absl::string_view stream) {
  if (absl::StrContains(status.message(), "no such key")) {
    return absl::NotFoundError(absl::StrCat("redis stream ", stream, " does not exist"));
  }
  return status;
}

class RedisInspector final : public StreamInspector {
 public:
  explicit RedisInspector(const RedisOptions& options)
      : conn_(RedisConnection::Settings::From(options)) {}

  absl::StatusOr<std::vector<std::string>> ListStreams() override {
    absl::MutexLock lock(&mu_);
    std::vector<std::string> names;
    std::string cursor = "0";
    do {
      EVENTBUS_ASSIGN_OR_RETURN(
          ReplyPtr reply, conn_.Command({"SCAN", cursor, "TYPE", "stream", "COUNT", "1000"}));
      if (!IsArray(reply.get()) || reply->elements != 2 || !IsArray(reply->element[1])) {
        return absl::InternalError("unexpected SCAN reply");
      }
      cursor = std::string(StringOf(reply->element[0]));
      const redisReply* keys = reply->element[1];
      for (size_t i = 0; i < keys->elements; ++i) {
        names.emplace_back(StringOf(keys->element[i]));
      }
    } while (cursor != "0");
    std::sort(names.begin(), names.end());
    names.erase(std::unique(names.begin(), names.end()), names.end());
    return names;
  }

  absl::StatusOr<StreamInfo> Describe(absl::string_view stream) override {
    absl::MutexLock lock(&mu_);
    const std::string key(stream);
    absl::StatusOr<ReplyPtr> info = conn_.Command({"XINFO", "STREAM", key});
    if (!info.ok()) return NotFoundOr(info.status(), stream);
    StreamInfo out;
    out.name = key;
    out.length = IntegerOf(Field(info->get(), "length"), 0);
    for (auto [name, target] : {std::pair{"first-entry", &out.first_id},
                                std::pair{"last-entry", &out.last_id}}) {
      const redisReply* entry = Field(info->get(), name);
      if (IsArray(entry) && entry->elements >= 1) *target = std::string(StringOf(entry->element[0]));
    }
    EVENTBUS_ASSIGN_OR_RETURN(ReplyPtr groups, conn_.Command({"XINFO", "GROUPS", key}));
    if (!IsArray(groups.get())) return absl::InternalError("unexpected XINFO GROUPS reply");
    for (size_t i = 0; i < groups->elements; ++i) {
      const redisReply* group = groups->element[i];
      ConsumerGroupInfo& g = out.groups.emplace_back();
      g.name = std::string(StringOf(Field(group, "name")));
      g.pending = IntegerOf(Field(group, "pending"), -1);
      // Redis 7 reports lag (nil when it cannot tell, e.g. after XDEL in the unread range).
      g.lag = IntegerOf(Field(group, "lag"), -1);
      EVENTBUS_ASSIGN_OR_RETURN(ReplyPtr consumers,
                                conn_.Command({"XINFO", "CONSUMERS", key, g.name}));
      for (size_t c = 0; IsArray(consumers.get()) && c < consumers->elements; ++c) {
        std::string name(StringOf(Field(consumers->element[c], "name")));
        // The backend's own holder of delayed nacks is not a consumer anyone runs.
        if (name != scripts::kParkingConsumer) g.consumers.push_back(std::move(name));
      }
      std::sort(g.consumers.begin(), g.consumers.end());
      if (g.pending > 0) {
        EVENTBUS_ASSIGN_OR_RETURN(ReplyPtr summary, conn_.Command({"XPENDING", key, g.name}));
        if (IsArray(summary.get()) && summary->elements >= 2 && IsString(summary->element[1])) {
          g.oldest_pending_published_at = EntryIdTime(StringOf(summary->element[1]));
        }
      }
    }
    return out;
  }

  absl::StatusOr<ReadPage> Read(absl::string_view stream, absl::string_view cursor,
                                int max_events) override {
    if (max_events <= 0) return absl::InvalidArgumentError("max_events must be positive");
    absl::MutexLock lock(&mu_);
    const std::string key(stream);
    const std::string start = cursor.empty() ? "-" : absl::StrCat("(", cursor);
    absl::StatusOr<ReplyPtr> range =
        conn_.Command({"XRANGE", key, start, "+", "COUNT", absl::StrCat(max_events)});
    if (!range.ok()) return range.status();
    ReadPage page;
    page.next_cursor = std::string(cursor);
    const redisReply* entries = range->get();
    if (!IsArray(entries)) return absl::InternalError("unexpected XRANGE reply");
    if (entries->elements == 0) {
      EVENTBUS_ASSIGN_OR_RETURN(ReplyPtr exists, conn_.Command({"EXISTS", key}));
      if (IntegerOf(exists.get(), 0) == 0) {
        return absl::NotFoundError(absl::StrCat("redis stream ", stream, " does not exist"));
      }
      return page;
    }
    for (size_t i = 0; i < entries->elements; ++i) {
      const redisReply* entry = entries->element[i];
      if (!IsArray(entry) || entry->elements != 2) continue;
      StoredEvent& stored = page.events.emplace_back();
      stored.id = std::string(StringOf(entry->element[0]));
      wire::Fields fields;
      const redisReply* values = entry->element[1];
      for (size_t f = 0; IsArray(values) && f + 1 < values->elements; f += 2) {
        fields.emplace_back(StringOf(values->element[f]), StringOf(values->element[f + 1]));
      }
      absl::StatusOr<Event> event = wire::Decode(fields);
      if (event.ok()) {
        stored.event = std::move(*event);
      } else {
        stored.malformed = std::string(event.status().message());
        stored.event.set_data(wire::RenderRawEntry(fields));
      }
      page.next_cursor = stored.id;
    }
    return page;
  }

  absl::StatusOr<std::string> EndCursor(absl::string_view stream) override {
    absl::MutexLock lock(&mu_);
    absl::StatusOr<ReplyPtr> info = conn_.Command({"XINFO", "STREAM", std::string(stream)});
    if (!info.ok()) return NotFoundOr(info.status(), stream);
    const redisReply* last = Field(info->get(), "last-generated-id");
    if (!IsString(last)) return absl::InternalError("XINFO STREAM without last-generated-id");
    return std::string(StringOf(last));
  }

  absl::StatusOr<int64_t> Delete(absl::string_view stream,
                                 absl::Span<const std::string> ids) override {
    if (ids.empty()) return 0;
    absl::MutexLock lock(&mu_);
    int64_t removed = 0;
    // Bounded commands: a purge of a million dead letters is many XDELs, not one huge one.
    constexpr size_t kPerCommand = 1000;
    for (size_t i = 0; i < ids.size(); i += kPerCommand) {
      std::vector<std::string> args = {"XDEL", std::string(stream)};
      for (size_t j = i; j < std::min(ids.size(), i + kPerCommand); ++j) args.push_back(ids[j]);
      EVENTBUS_ASSIGN_OR_RETURN(ReplyPtr reply, conn_.Command(args));
      removed += IntegerOf(reply.get(), 0);
    }
    return removed;
  }

 private:
  absl::Mutex mu_;
  RedisConnection conn_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

std::unique_ptr<StreamInspector> NewRedisInspector(const RedisOptions& options) {
  return std::make_unique<RedisInspector>(options);
}

}  // namespace eventbus::redis
