// The JSON of task request and result events (executor/include/eventbus/executor/task.h): the
// data of events on the request and result streams, written by any producer.
// Invariants: nothing crashes; an accepted request serializes (TaskRequestToJson) to text that
// parses to a request serializing to the same text; SalvageTaskIdentity recovers the id, type
// and metadata of every request ParseTaskRequest accepts; likewise for task results.

#include <cstddef>
#include <cstdint>
#include <string>

#include "eventbus/executor/task.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace executor = eventbus::executor;
  const std::string text(reinterpret_cast<const char*>(data), size);

  std::optional<executor::TaskRequest> salvaged = executor::SalvageTaskIdentity(text);
  absl::StatusOr<executor::TaskRequest> request = executor::ParseTaskRequest(text);
  if (request.ok()) {
    EVENTBUS_FUZZ_CHECK(salvaged.has_value(), "SalvageTaskIdentity lost an accepted request");
    EVENTBUS_FUZZ_CHECK(salvaged->id == request->id && salvaged->type == request->type &&
                            salvaged->metadata == request->metadata,
                        "SalvageTaskIdentity disagrees with ParseTaskRequest");
    const std::string json = executor::TaskRequestToJson(*request);
    absl::StatusOr<executor::TaskRequest> again = executor::ParseTaskRequest(json);
    EVENTBUS_FUZZ_CHECK(again.ok(), json + " does not parse: " + again.status().ToString());
    EVENTBUS_FUZZ_CHECK(executor::TaskRequestToJson(*again) == json,
                        json + " reserializes as " + executor::TaskRequestToJson(*again));
  }

  absl::StatusOr<executor::TaskResult> result = executor::ParseTaskResult(text);
  if (result.ok()) {
    const std::string json = executor::TaskResultToJson(*result);
    absl::StatusOr<executor::TaskResult> again = executor::ParseTaskResult(json);
    EVENTBUS_FUZZ_CHECK(again.ok(), json + " does not parse: " + again.status().ToString());
    EVENTBUS_FUZZ_CHECK(executor::TaskResultToJson(*again) == json,
                        json + " reserializes as " + executor::TaskResultToJson(*again));
  }
  return 0;
}
