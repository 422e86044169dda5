// The body of POST /v1/tasks, parsed as the service does (executor/service/service.cc,
// Service::Submit): ParseUntrustedJson, an id filled in when absent, TaskRequestFromJson, and
// the request event published from it.
// Invariants: nothing crashes; a document nested deeper than kMaxJsonDepth is refused; the
// request event of an accepted body carries data that ParseTaskRequest reads back as the same
// request (what the executor will run is what the client submitted).

#include <cstddef>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "eventbus/executor/task.h"
#include "fuzz_input.h"

namespace {

// Nesting depth of a parsed document (arrays and objects count one level each).
int Depth(const nlohmann::json& value) {
  int deepest = 0;
  if (value.is_array() || value.is_object()) {
    for (const auto& item : value) deepest = std::max(deepest, Depth(item));
    return deepest + 1;
  }
  return 0;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace executor = eventbus::executor;
  const std::string body(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<nlohmann::json> parsed = executor::ParseUntrustedJson(body);
  if (!parsed.ok()) return 0;
  EVENTBUS_FUZZ_CHECK(Depth(*parsed) <= executor::kMaxJsonDepth + 1,
                      "ParseUntrustedJson let a document deeper than kMaxJsonDepth through");
  nlohmann::json& document = *parsed;
  if (document.is_object() && !document.contains("id")) document["id"] = "fuzz-generated-id";
  absl::StatusOr<executor::TaskRequest> request = executor::TaskRequestFromJson(document);
  if (!request.ok()) return 0;
  const eventbus::Event event = executor::MakeTaskRequestEvent(*request, "eventbus-executor/http");
  absl::StatusOr<executor::TaskRequest> read_back = executor::ParseTaskRequest(event.data());
  EVENTBUS_FUZZ_CHECK(read_back.ok(), event.data() + ": " + read_back.status().ToString());
  EVENTBUS_FUZZ_CHECK(read_back->id == request->id && read_back->type == request->type &&
                          read_back->Input() == request->Input() &&
                          read_back->timeout == request->timeout &&
                          read_back->metadata == request->metadata &&
                          read_back->retry.max_attempts == request->retry.max_attempts &&
                          read_back->retry.initial_backoff == request->retry.initial_backoff &&
                          read_back->retry.max_backoff == request->retry.max_backoff &&
                          read_back->retry.multiplier == request->retry.multiplier &&
                          read_back->retry.jitter == request->retry.jitter,
                      "the request event does not carry the submitted request: " + event.data());
  EVENTBUS_FUZZ_CHECK(event.key() == request->id, "the request event is not keyed by task id");
  return 0;
}
