#pragma once
// Debian's Abseil (20220623) has no RETURN_IF_ERROR / ASSIGN_OR_RETURN; these are ours.

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define EVENTBUS_STATUS_CONCAT_INNER(a, b) a##b
#define EVENTBUS_STATUS_CONCAT(a, b) EVENTBUS_STATUS_CONCAT_INNER(a, b)

// Returns the status of `expr` from the enclosing function when it is not OK.
#define EVENTBUS_RETURN_IF_ERROR(expr)                   \
  do {                                                   \
    ::absl::Status eventbus_status_ = (expr);            \
    if (!eventbus_status_.ok()) return eventbus_status_; \
  } while (0)

// `EVENTBUS_ASSIGN_OR_RETURN(auto x, MakeX());` declares/assigns from a StatusOr or returns
// its error.
#define EVENTBUS_ASSIGN_OR_RETURN(lhs, expr) \
  EVENTBUS_ASSIGN_OR_RETURN_IMPL(EVENTBUS_STATUS_CONCAT(eventbus_statusor_, __LINE__), lhs, expr)

#define EVENTBUS_ASSIGN_OR_RETURN_IMPL(statusor, lhs, expr) \
  auto statusor = (expr);                                   \
  if (!statusor.ok()) return std::move(statusor).status();  \
  lhs = std::move(statusor).value()
