#pragma once
// ISO 8601 durations live in core (eventbus/iso_duration.h), where the configuration parser
// uses them too; the executor's names stay for its handlers and users.

#include "eventbus/iso_duration.h"

#pragma GCC visibility push(default)

namespace eventbus::executor {

using ::eventbus::FormatIsoDuration;
using ::eventbus::ParseIsoDuration;

}  // namespace eventbus::executor

#pragma GCC visibility pop
