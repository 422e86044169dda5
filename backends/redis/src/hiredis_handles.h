#pragma once
// RAII owners of hiredis handles and the one place where hiredis errors become absl::Status.
// Private to backends/redis.

#include <hiredis/hiredis.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace eventbus::redis {

struct ContextDeleter {
  void operator()(redisContext* context) const { redisFree(context); }
};
struct ReplyDeleter {
  void operator()(redisReply* reply) const { freeReplyObject(reply); }
};

using ContextPtr = std::unique_ptr<redisContext, ContextDeleter>;
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

// A failed context (connection or I/O error). Timeouts and lost connections are both
// Unavailable: the connection is dropped and re-established, so the caller's remedy is the
// same (retry later), and Fetch/Ack document Unavailable as the transient code. `where`
// names the server (RedisEndpoint::Describe) and the operation.
absl::Status ContextToStatus(const redisContext& context, absl::string_view where);

// An error reply ("-ERR ...", "-NOAUTH ...", ...) mapped by its prefix:
// NOAUTH -> Unauthenticated; WRONGPASS/NOPERM -> PermissionDenied; LOADING, BUSY, READONLY,
// MASTERDOWN, TRYAGAIN -> Unavailable; OOM -> ResourceExhausted; NOGROUP -> NotFound;
// NOSCRIPT -> NotFound; anything else -> Internal. The server's text is kept.
absl::Status ReplyErrorToStatus(absl::string_view error_text, absl::string_view where);

// Reply-type helpers; all tolerate a null reply.
inline bool IsError(const redisReply* r) { return r != nullptr && r->type == REDIS_REPLY_ERROR; }
inline bool IsArray(const redisReply* r) { return r != nullptr && r->type == REDIS_REPLY_ARRAY; }
inline bool IsNil(const redisReply* r) { return r == nullptr || r->type == REDIS_REPLY_NIL; }
inline bool IsString(const redisReply* r) {
  return r != nullptr && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS);
}
inline absl::string_view StringOf(const redisReply* r) {
  return IsString(r) || IsError(r) ? absl::string_view(r->str, r->len) : absl::string_view();
}

}  // namespace eventbus::redis
