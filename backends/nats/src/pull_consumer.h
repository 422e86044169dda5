#pragma once
// A JetStream pull consumer on a plain inbox subscription, and the acknowledgements of what it
// delivers. Private to backends/nats.
//
// Why not nats.c's own pull subscription (js_PullSubscribe + natsSubscription_Fetch): in nats.c
// 3.4 (Debian's), a Fetch that finds messages of an earlier pull request still queued lowers
// its batch by their count and then waits for `count == batch`, which a count already past
// the new batch never meets: later messages are written past the end of its array (a heap
// overflow, fixed upstream in nats.c #749, 2024). Earlier requests do outlive a Fetch that
// timed out (the server's expiry starts when it reads the request), so with several busy
// consumers of one durable the process aborted about one run in six. Here a message of an
// earlier request is simply a delivery like any other.
//
// The protocol (https://docs.nats.io/reference/reference-protocols/nats_api_reference):
// a pull request is a publish to $JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer> with our inbox
// as reply subject and {"batch":n,"expires":ns}; the server sends up to n messages to the
// inbox, each with its ack subject ($JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>...) as
// reply, and ends the request early with a status message (408 expired, 409 e.g. too many
// waiting requests, 404 nothing there for a no-wait request). An ack is a publish of
// "+ACK", "-NAK", "-NAK {\"delay\":ns}", "+TERM" or "+WPI" to the message's ack subject.

#include <nats/nats.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "nats_handles.h"

namespace eventbus::nats {

// Not thread-safe: one caller at a time (NatsSubscription serialises Fetch and Close).
class PullConsumer {
 public:
  // Subscribes an inbox of its own on `nc` for the durable `consumer` of JetStream stream
  // `stream` (both must exist). Unavailable when the connection is down.
  static absl::StatusOr<std::unique_ptr<PullConsumer>> Create(natsConnection* nc,
                                                               absl::string_view stream,
                                                               absl::string_view consumer);
  ~PullConsumer();
  PullConsumer(const PullConsumer&) = delete;
  PullConsumer& operator=(const PullConsumer&) = delete;

  // Up to `max` messages: what earlier requests already delivered first, else a new request
  // (unless one is still open) and the first message within `wait`, with whatever arrived with
  // it. Empty when nothing came. Unavailable when JetStream does not answer (no responders, a
  // disconnected connection); FailedPrecondition once closed.
  absl::StatusOr<std::vector<MsgPtr>> Fetch(int max, absl::Duration wait);

  // Waits for the open request to end (at most the rest of the last Fetch's wait), then
  // unsubscribes and returns the messages delivered but not fetched, for the caller to give
  // back.
  std::vector<MsgPtr> Close();

 private:
  PullConsumer(natsConnection* nc, std::string next_subject, std::string inbox,
               SubscriptionPtr sub);
  // Moves queued messages (up to `max` deliveries in `out`) without waiting.
  void TakeQueued(int max, std::vector<MsgPtr>* out);
  // Sorts one message from the inbox: a delivery goes to `out`; a status ends the open request.
  void Sort(MsgPtr msg, std::vector<MsgPtr>* out);
  absl::Status SendRequest(int batch, absl::Duration expires);

  natsConnection* const nc_;
  const std::string next_subject_;  // $JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>
  const std::string inbox_;
  SubscriptionPtr sub_;
  // The last request is open until it has delivered its batch, the server ends it (a
  // status) or it expires. (A late delivery of an older request counts against it too: at
  // worst the next request goes out a little early.)
  bool request_open_ = false;
  int request_remaining_ = 0;
  absl::Time request_expires_;
};

// Acknowledgements of a message a PullConsumer delivered. Without `sync` the ack goes into the
// connection's buffer (a later flush confirms the server read it); with it, the server's reply
// confirms it was applied (within `timeout`).
absl::Status AckMsg(natsConnection* nc, natsMsg* msg, absl::string_view where, bool sync = false,
                    absl::Duration timeout = absl::Seconds(5));
absl::Status NakMsg(natsConnection* nc, natsMsg* msg, absl::Duration delay,
                    absl::string_view where);
absl::Status TermMsg(natsConnection* nc, natsMsg* msg, absl::string_view where);
absl::Status InProgressMsg(natsConnection* nc, natsMsg* msg, absl::string_view where);

}  // namespace eventbus::nats
