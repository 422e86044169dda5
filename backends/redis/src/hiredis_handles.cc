#include "hiredis_handles.h"

#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace eventbus::redis {

absl::Status ContextToStatus(const redisContext& context, absl::string_view where) {
  const char* detail = context.errstr[0] != '\0' ? context.errstr : "unknown error";
  switch (context.err) {
    case REDIS_ERR_IO:
      // hiredis reports a socket timeout as an I/O error with errno EAGAIN.
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ETIMEDOUT ||
          absl::StrContains(detail, "timed out") ||
          absl::StrContains(detail, "temporarily unavailable")) {
        return absl::UnavailableError(absl::StrCat(where, ": timed out (", detail, ")"));
      }
      return absl::UnavailableError(absl::StrCat(where, ": I/O error: ", detail));
    case REDIS_ERR_EOF:
      return absl::UnavailableError(absl::StrCat(where, ": server closed the connection"));
    case REDIS_ERR_PROTOCOL:
      return absl::InternalError(absl::StrCat(where, ": protocol error: ", detail));
    case REDIS_ERR_OOM:
      return absl::ResourceExhaustedError(absl::StrCat(where, ": out of memory in hiredis"));
    default:
      return absl::UnavailableError(absl::StrCat(where, ": ", detail));
  }
}

absl::Status ReplyErrorToStatus(absl::string_view error_text, absl::string_view where) {
  const std::string message = absl::StrCat(where, ": ", error_text);
  const absl::string_view prefix = error_text.substr(0, error_text.find(' '));
  if (prefix == "NOAUTH") return absl::UnauthenticatedError(message);
  if (prefix == "WRONGPASS" || prefix == "NOPERM") return absl::PermissionDeniedError(message);
  if (prefix == "LOADING" || prefix == "BUSY" || prefix == "READONLY" || prefix == "MASTERDOWN" ||
      prefix == "TRYAGAIN" || prefix == "CLUSTERDOWN") {
    return absl::UnavailableError(message);
  }
  if (prefix == "OOM") return absl::ResourceExhaustedError(message);
  if (prefix == "NOGROUP" || prefix == "NOSCRIPT") return absl::NotFoundError(message);
  return absl::InternalError(message);
}

}  // namespace eventbus::redis
