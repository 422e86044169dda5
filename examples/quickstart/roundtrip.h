#pragma once
// What every quickstart does once it has a stream: subscribe a consumer group (ready before
// anything is published), publish three orders, consume and acknowledge them. Returns an error
// unless exactly those three came back.

#include <cstdio>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "eventbus/session.h"
#include "eventbus/status_macros.h"

namespace quickstart {

inline absl::Status RoundTrip(eventbus::StreamSession& session) {
  // A fresh stream per run, so a rerun against the same server starts clean.
  const std::string stream = absl::StrCat("quickstart.orders.", eventbus::NewEventId());

  // Subscribe waits until the consumer is ready (Kafka: partitions assigned), so nothing
  // published below is missed, even by a group that starts at the newest event.
  EVENTBUS_ASSIGN_OR_RETURN(
      eventbus::Subscription * billing,
      session.Subscribe({.stream = stream, .group = "billing", .consumer = "billing-1",
                         .start_from_oldest = false}));

  std::set<std::string> published;
  for (int i = 1; i <= 3; ++i) {
    eventbus::Event order = eventbus::MakeEvent("shop.order.placed", "/quickstart",
                                                absl::StrCat("{\"order\":", i, "}"));
    order.set_key(absl::StrCat("customer-", i));
    published.insert(order.data());
    EVENTBUS_RETURN_IF_ERROR(session->Publish(stream, std::move(order)));
  }
  // Publish is asynchronous and batched; Flush waits until all three are durable.
  EVENTBUS_RETURN_IF_ERROR(session->Flush(absl::Seconds(30)));

  std::set<std::string> consumed;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  EVENTBUS_RETURN_IF_ERROR(eventbus::ConsumeLoop(
      *billing,
      {.max_events = 16, .wait = absl::Seconds(1), .max_deliveries = 3,
       .stop = [&] { return absl::Now() > deadline; }},
      [&](const eventbus::Delivery& delivery) {
        std::printf("%s: %s (delivery %s, attempt %d)\n", std::string(session->backend_name()).c_str(),
                    delivery.event.data().c_str(), delivery.id.c_str(), delivery.delivery_count);
        consumed.insert(delivery.event.data());
        return eventbus::Settle::Ack();  // or Settle::Nack(delay), Settle::DeadLetter(reason)
      }));
  if (consumed != published) {
    return absl::DataLossError(absl::StrCat("consumed ", consumed.size(), " of the ",
                                            published.size(), " published orders"));
  }
  std::printf("%s: published and consumed %zu orders on %s\n",
              std::string(session->backend_name()).c_str(),
              consumed.size(), stream.c_str());
  return absl::OkStatus();
}

// The example's exit code, with the error on stderr.
inline int Report(const absl::Status& status) {
  if (status.ok()) return 0;
  std::fprintf(stderr, "quickstart failed: %s\n", status.ToString().c_str());
  return 1;
}

}  // namespace quickstart
