#include "nats_handles.h"

#include "absl/strings/str_cat.h"

namespace eventbus::nats {

absl::Status ToStatus(natsStatus status, absl::string_view where, jsErrCode js_code) {
  if (status == NATS_OK) return absl::OkStatus();
  // nats.c keeps a per-thread text with more detail (e.g. the server's error) than the code.
  const char* last = nats_GetLastError(nullptr);
  std::string message = absl::StrCat(where, ": ", natsStatus_GetText(status));
  if (last != nullptr && *last != '\0') absl::StrAppend(&message, " (", last, ")");
  if (js_code != 0) absl::StrAppend(&message, " [jetstream error ", static_cast<int>(js_code), "]");
  switch (static_cast<int>(js_code)) {
    case JSStreamNotFoundErr:
    case JSConsumerNotFoundErr:
      return absl::NotFoundError(message);
    case JSNotEnabledErr:
    case JSNotEnabledForAccountErr:
    case JSStreamNameExistErr:
    case JSStreamSubjectOverlapErr:
      return absl::FailedPreconditionError(message);
    default:
      break;
  }
  switch (status) {
    case NATS_TIMEOUT:
      return absl::DeadlineExceededError(message);
    case NATS_IO_ERROR:
    case NATS_NO_SERVER:
    case NATS_STALE_CONNECTION:
    case NATS_CONNECTION_DISCONNECTED:
    case NATS_NO_RESPONDERS:
    case NATS_NOT_YET_CONNECTED:
    case NATS_SECURE_CONNECTION_WANTED:
    case NATS_SECURE_CONNECTION_REQUIRED:
      return absl::UnavailableError(message);
    case NATS_CONNECTION_AUTH_FAILED:
    case NATS_NOT_PERMITTED:
      return absl::PermissionDeniedError(message);
    case NATS_MAX_PAYLOAD:
    case NATS_INVALID_ARG:
    case NATS_INVALID_SUBJECT:
    case NATS_INVALID_SUBSCRIPTION:
      return absl::InvalidArgumentError(message);
    case NATS_SLOW_CONSUMER:
    case NATS_NO_MEMORY:
    case NATS_INSUFFICIENT_BUFFER:
      return absl::ResourceExhaustedError(message);
    case NATS_NOT_FOUND:
      return absl::NotFoundError(message);
    case NATS_CONNECTION_CLOSED:
    case NATS_DRAINING:
    case NATS_ILLEGAL_STATE:
      return absl::FailedPreconditionError(message);
    default:
      return absl::InternalError(message);
  }
}

}  // namespace eventbus::nats
