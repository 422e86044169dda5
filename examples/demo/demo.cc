// A small tour of the contract on whatever EVENT_STREAM_TYPE selects (memory by default):
// publish, two consumer groups, a nack with delay, a dead letter.
#include <iostream>

#include "absl/strings/str_cat.h"
#include "eventbus/event_stream.h"
#include "eventbus/memory/memory_event_stream.h"
#include "eventbus/registry.h"
#include "eventbus/status_macros.h"

namespace {

absl::Status RunDemo() {
  EVENTBUS_RETURN_IF_ERROR(eventbus::memory::RegisterMemoryBackend());
  EVENTBUS_ASSIGN_OR_RETURN(
      auto stream,
      eventbus::BackendRegistry::Global().CreateFromEnvironment(eventbus::ProcessEnvironment()));
  std::cout << "backend: " << stream->backend_name() << "\n";

  const std::string topic = absl::StrCat("demo.orders.", eventbus::NewEventId());
  for (int i = 1; i <= 3; ++i) {
    eventbus::Event event = eventbus::MakeEvent("demo.order.placed", "/demo", absl::StrCat("order-", i));
    EVENTBUS_ASSIGN_OR_RETURN(auto receipt, stream->PublishAndWait(topic, event));
    std::cout << "published " << event.data() << " as " << receipt.id << "\n";
  }

  for (const char* group : {"billing", "shipping"}) {
    EVENTBUS_ASSIGN_OR_RETURN(auto sub, stream->Subscribe({.stream = topic, .group = group,
                                                           .consumer = "demo-1"}));
    EVENTBUS_ASSIGN_OR_RETURN(auto batch, sub->Fetch(10, absl::Seconds(5)));
    for (const auto& delivery : batch) {
      if (std::string(group) == "billing" && delivery.event.data() == "order-3") {
        EVENTBUS_RETURN_IF_ERROR(sub->DeadLetter(delivery, "card declined"));
        std::cout << group << ": dead-lettered " << delivery.event.data() << "\n";
        continue;
      }
      EVENTBUS_RETURN_IF_ERROR(sub->Ack(delivery));
      std::cout << group << ": handled " << delivery.event.data() << " (attempt "
                << delivery.delivery_count << ")\n";
    }
  }

  EVENTBUS_ASSIGN_OR_RETURN(auto dlq, stream->Subscribe({.stream = topic + ".dlq",
                                                         .group = "ops", .consumer = "demo-1"}));
  EVENTBUS_ASSIGN_OR_RETURN(auto dead, dlq->Fetch(10, absl::Seconds(5)));
  for (const auto& d : dead) {
    std::cout << "dead letter: " << d.event.data() << " reason=\""
              << d.event.headers().at("dlqreason") << "\"\n";
    EVENTBUS_RETURN_IF_ERROR(dlq->Ack(d));
  }
  if (dead.size() != 1) return absl::InternalError("expected exactly one dead letter");
  return absl::OkStatus();
}

}  // namespace

int main() {
  absl::Status status = RunDemo();
  if (!status.ok()) {
    std::cerr << "eventbus-demo: " << status << "\n";
    return 1;
  }
  return 0;
}
