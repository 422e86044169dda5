#include "pull_consumer.h"

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "eventbus/log.h"

namespace eventbus::nats {
namespace {

constexpr absl::string_view kAckSubjectPrefix = "$JS.ACK.";
// Below this a request would expire before the server reads it.
constexpr absl::Duration kMinExpires = absl::Milliseconds(1);
// The server's expiry starts when it reads the request: a request is taken as open this much
// longer than its expiry, so a Fetch right after does not pile a second one onto it.
constexpr absl::Duration kExpiryGrace = absl::Milliseconds(20);

int64_t WaitMillis(absl::Duration d) {
  return std::max<int64_t>(1, absl::ToInt64Milliseconds(absl::Ceil(d, absl::Milliseconds(1))));
}

struct InboxDeleter {
  void operator()(natsInbox* p) const { natsInbox_Destroy(p); }
};

// The ack subject of a delivery ($JS.ACK....), or null for anything else (a status).
const char* AckSubject(natsMsg* msg) {
  const char* reply = natsMsg_GetReply(msg);
  return reply != nullptr && absl::StartsWith(reply, kAckSubjectPrefix) ? reply : nullptr;
}

absl::StatusOr<const char*> RequireAckSubject(natsMsg* msg, absl::string_view where) {
  const char* subject = AckSubject(msg);
  if (subject == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": not a JetStream delivery (no ack subject)"));
  }
  return subject;
}

absl::Status Reply(natsConnection* nc, natsMsg* msg, absl::string_view body,
                   absl::string_view where) {
  absl::StatusOr<const char*> subject = RequireAckSubject(msg, where);
  if (!subject.ok()) return subject.status();
  return ToStatus(
      natsConnection_Publish(nc, *subject, body.data(), static_cast<int>(body.size())), where);
}

}  // namespace

absl::StatusOr<std::unique_ptr<PullConsumer>> PullConsumer::Create(natsConnection* nc,
                                                                     absl::string_view stream,
                                                                     absl::string_view consumer) {
  natsInbox* raw_inbox = nullptr;
  const std::string where = absl::StrCat("nats pull consumer ", consumer, " on ", stream);
  if (absl::Status s = ToStatus(natsInbox_Create(&raw_inbox), where); !s.ok()) return s;
  std::unique_ptr<natsInbox, InboxDeleter> inbox(raw_inbox);
  natsSubscription* raw_sub = nullptr;
  absl::Status s = ToStatus(natsConnection_SubscribeSync(&raw_sub, nc, inbox.get()),
                            absl::StrCat(where, ": subscribe"));
  if (!s.ok()) {
    if (absl::IsDeadlineExceeded(s)) s = absl::UnavailableError(s.message());
    return s;
  }
  SubscriptionPtr sub(raw_sub);
  // The server bounds what it sends by our requests; no client-side limit drops any of it.
  natsSubscription_SetPendingLimits(sub.get(), -1, -1);
  return std::unique_ptr<PullConsumer>(
      new PullConsumer(nc, absl::StrCat("$JS.API.CONSUMER.MSG.NEXT.", stream, ".", consumer),
                       inbox.get(), std::move(sub)));
}

PullConsumer::PullConsumer(natsConnection* nc, std::string next_subject, std::string inbox,
                           SubscriptionPtr sub)
    : nc_(nc),
      next_subject_(std::move(next_subject)),
      inbox_(std::move(inbox)),
      sub_(std::move(sub)) {}

PullConsumer::~PullConsumer() { Close(); }

void PullConsumer::Sort(MsgPtr msg, std::vector<MsgPtr>* out) {
  if (AckSubject(msg.get()) != nullptr) {
    out->push_back(std::move(msg));
    if (--request_remaining_ <= 0) request_open_ = false;
    return;
  }
  // A status of the server about a request (only deliveries carry an ack subject).
  const char* status = nullptr;
  if (natsMsgHeader_Get(msg.get(), "Status", &status) != NATS_OK || status == nullptr) return;
  const absl::string_view code(status);
  if (code == "100") return;  // idle heartbeat (we never ask for one)
  request_open_ = false;      // 404 nothing (no-wait), 408 expired, 409 ended by the server
  if (code == "404" || code == "408") return;
  const char* description = nullptr;
  natsMsgHeader_Get(msg.get(), "Description", &description);
  Log(LogLevel::kWarning, "nats",
      absl::StrCat("pull request on ", next_subject_, " ended by the server: ", code, " ",
                   description != nullptr ? description : ""));
}

void PullConsumer::TakeQueued(int max, std::vector<MsgPtr>* out) {
  while (static_cast<int>(out->size()) < max) {
    int queued = 0;
    if (natsSubscription_GetPending(sub_.get(), &queued, nullptr) != NATS_OK || queued <= 0) {
      return;
    }
    natsMsg* raw = nullptr;
    if (natsSubscription_NextMsg(&raw, sub_.get(), 0) != NATS_OK) return;
    Sort(MsgPtr(raw), out);
  }
}

absl::Status PullConsumer::SendRequest(int batch, absl::Duration expires) {
  const std::string body =
      absl::StrCat("{\"batch\":", batch, ",\"expires\":", absl::ToInt64Nanoseconds(expires), "}");
  absl::Status s = ToStatus(natsConnection_PublishRequest(nc_, next_subject_.c_str(),
                                                          inbox_.c_str(), body.data(),
                                                          static_cast<int>(body.size())),
                            absl::StrCat("nats pull request on ", next_subject_));
  if (!s.ok() && !absl::IsInvalidArgument(s)) s = absl::UnavailableError(s.message());
  return s;
}

absl::StatusOr<std::vector<MsgPtr>> PullConsumer::Fetch(int max, absl::Duration wait) {
  if (sub_ == nullptr) return absl::FailedPreconditionError("nats pull consumer is closed");
  std::vector<MsgPtr> out;
  const absl::Time deadline = absl::Now() + wait;
  for (;;) {
    TakeQueued(max, &out);
    if (!out.empty()) return out;
    absl::Time now = absl::Now();
    if (now + kMinExpires >= deadline) return out;
    if (!request_open_ || now >= request_expires_) {
      if (absl::Status s = SendRequest(max, deadline - now); !s.ok()) return s;
      request_open_ = true;
      request_remaining_ = max;
      request_expires_ = deadline + kExpiryGrace;
    }
    natsMsg* raw = nullptr;
    const natsStatus ns = natsSubscription_NextMsg(
        &raw, sub_.get(), WaitMillis(std::min(deadline, request_expires_) - now));
    if (ns == NATS_OK) {
      Sort(MsgPtr(raw), &out);
      continue;
    }
    if (ns == NATS_TIMEOUT) continue;  // the loop ends at the deadline or renews the request
    if (ns == NATS_SLOW_CONSUMER) continue;  // reported once; the server redelivers the loss
    request_open_ = false;
    absl::Status s = ToStatus(ns, absl::StrCat("nats fetch on ", next_subject_));
    // No responders: JetStream is not (yet) up, e.g. right after a server restart.
    if (ns == NATS_NO_RESPONDERS || ns == NATS_CONNECTION_CLOSED ||
        !absl::IsInvalidArgument(s)) {
      s = absl::UnavailableError(s.message());
    }
    return s;
  }
}

std::vector<MsgPtr> PullConsumer::Close() {
  std::vector<MsgPtr> left;
  if (sub_ == nullptr) return left;
  // The server hands an open request's deliveries to its inbox whether anyone reads it or not,
  // and the redeliveries of what the caller gives back would go there first: wait for the
  // request to end (its batch, a status or its expiry, at most the last Fetch's wait).
  while (request_open_) {
    const absl::Time now = absl::Now();
    if (now >= request_expires_) break;
    natsMsg* raw = nullptr;
    if (natsSubscription_NextMsg(&raw, sub_.get(), WaitMillis(request_expires_ - now)) !=
        NATS_OK) {
      break;
    }
    Sort(MsgPtr(raw), &left);
  }
  request_open_ = false;
  natsSubscription_Unsubscribe(sub_.get());
  // What arrived before the unsubscribe is still queued.
  while (true) {
    natsMsg* raw = nullptr;
    if (natsSubscription_NextMsg(&raw, sub_.get(), 0) != NATS_OK) break;
    MsgPtr msg(raw);
    if (AckSubject(msg.get()) != nullptr) left.push_back(std::move(msg));
  }
  sub_.reset();
  return left;
}

absl::Status AckMsg(natsConnection* nc, natsMsg* msg, absl::string_view where, bool sync,
                    absl::Duration timeout) {
  if (!sync) return Reply(nc, msg, "+ACK", where);
  absl::StatusOr<const char*> subject = RequireAckSubject(msg, where);
  if (!subject.ok()) return subject.status();
  natsMsg* raw = nullptr;
  absl::Status s =
      ToStatus(natsConnection_RequestString(&raw, nc, *subject, "+ACK", WaitMillis(timeout)),
               where);
  MsgPtr reply(raw);
  return s;
}

absl::Status NakMsg(natsConnection* nc, natsMsg* msg, absl::Duration delay,
                    absl::string_view where) {
  if (delay <= absl::ZeroDuration()) return Reply(nc, msg, "-NAK", where);
  return Reply(nc, msg,
               absl::StrCat("-NAK {\"delay\":", absl::ToInt64Nanoseconds(delay), "}"), where);
}

absl::Status TermMsg(natsConnection* nc, natsMsg* msg, absl::string_view where) {
  return Reply(nc, msg, "+TERM", where);
}

absl::Status InProgressMsg(natsConnection* nc, natsMsg* msg, absl::string_view where) {
  return Reply(nc, msg, "+WPI", where);
}

}  // namespace eventbus::nats
