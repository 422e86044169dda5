// The NATS JetStream backend: connection, streams, async publish, and the pull-consumer
// subscription.
#include "eventbus/nats/nats_event_stream.h"

#include <nats/nats.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "eventbus/clock.h"
#include "eventbus/redact.h"
#include "eventbus/log.h"
#include "eventbus/status_macros.h"
#include "nats_handles.h"
#include "nats_inspector.h"
#include "pull_consumer.h"
#include "wire.h"

namespace eventbus::nats {
namespace {

constexpr absl::string_view kBackendName = "nats";
// The KV bucket of Delivery::failed_attempts (see NatsSubscription::FailedAttemptsKey).
constexpr char kFailedAttemptsBucket[] = "eventbus_failed_attempts";
// JSConsumerAlreadyExistsErr of newer servers (not in nats.c 3.4's jsErrCode enum).
constexpr int kConsumerAlreadyExistsErr = 10148;
// Room left in the server's max_payload for the headers of an event.
constexpr size_t kHeaderAllowance = 64 * 1024;

int64_t Millis(absl::Duration d) { return std::max<int64_t>(1, absl::ToInt64Milliseconds(d)); }
int64_t Nanos(absl::Duration d) { return absl::ToInt64Nanoseconds(d); }

// A subject is the eventbus stream name itself, so it must be a literal NATS subject.
absl::Status CheckSubject(absl::string_view stream) {
  for (absl::string_view token : absl::StrSplit(stream, '.')) {
    if (token.empty() || token == "*" || token == ">") {
      return absl::InvalidArgumentError(absl::StrCat(
          "stream \"", stream, "\" is not a literal NATS subject (empty '.'-separated token, "
          "or a '*' / '>' wildcard token); the NATS backend uses the stream name as subject"));
    }
  }
  return absl::OkStatus();
}

// nats.c reports asynchronous errors (slow consumer, ...) here; its default prints to stderr.
// They go to the eventbus log sink instead, as do connection state changes.
void LogErrorHandler(natsConnection*, natsSubscription* sub, natsStatus status, void*) {
  const char* subject = sub != nullptr ? natsSubscription_GetSubject(sub) : nullptr;
  Log(LogLevel::kWarning, "nats.c",
      absl::StrCat("asynchronous error", subject != nullptr ? absl::StrCat(" on ", subject) : "",
                   ": ", natsStatus_GetText(status)));
}

void LogDisconnected(natsConnection*, void*) {
  Log(LogLevel::kWarning, "nats", "disconnected from the server; reconnecting");
}

void LogReconnected(natsConnection* nc, void*) {
  char url[256] = "";
  natsConnection_GetConnectedUrl(nc, url, sizeof(url));
  Log(LogLevel::kInfo, "nats", absl::StrCat("reconnected to ", RedactUrl(url)));
}

// The raw message as text, for a malformed message's dead letter.
std::string RenderRaw(natsMsg* msg) {
  std::string out;
  const char** keys = nullptr;
  int count = 0;
  if (natsMsgHeader_Keys(msg, &keys, &count) == NATS_OK) {
    for (int i = 0; i < count; ++i) {
      const char** values = nullptr;
      int n = 0;
      if (natsMsgHeader_Values(msg, keys[i], &values, &n) != NATS_OK) continue;
      for (int k = 0; k < n; ++k) absl::StrAppend(&out, keys[i], ": ", absl::CEscape(values[k]), "\n");
      free(values);
    }
    free(keys);
  }
  absl::StrAppend(&out, "\n",
                  absl::CEscape(absl::string_view(natsMsg_GetData(msg),
                                                  static_cast<size_t>(natsMsg_GetDataLength(msg)))));
  return out;
}

class NatsEventStream;

// std::mutex, not absl::Mutex: Debian's Abseil is not built for ThreadSanitizer, which then
// cannot see absl::Mutex's synchronisation and reports false races (as in backends/memory).

class NatsSubscription final : public Subscription {
 public:
  NatsSubscription(NatsEventStream* stream, SubscribeOptions options,
                   std::unique_ptr<PullConsumer> pull)
      : stream_(stream),
        options_(std::move(options)),
        dead_letter_stream_(DeadLetterStreamName(options_)),
        pull_(std::move(pull)),
        settler_([this] { SettleLoop(); }) {}
  ~NatsSubscription() override { Close().IgnoreError(); }

  absl::StatusOr<std::vector<Delivery>> Fetch(int max_events, absl::Duration wait) override {
    return FetchUpTo(max_events, wait);
  }
  absl::Status Ack(const Delivery& delivery) override;
  using Subscription::Nack;
  absl::Status Nack(const Delivery& delivery, absl::Duration delay, NackKind kind) override;
  absl::Status Extend(const Delivery& delivery) override;
  // The server redelivers by itself after AckWait: Reclaim is a short fetch that returns what
  // the server hands out now (redeliveries come first).
  absl::StatusOr<std::vector<Delivery>> Reclaim(absl::Duration min_idle, int max_events) override {
    return FetchUpTo(max_events, absl::Milliseconds(50));
  }
  absl::Status DeadLetter(const Delivery& delivery, absl::string_view reason) override;
  // Ack / Nak go out at once (fire-and-forget into the connection's buffer); one flush per
  // batch (PING/PONG: the server has read everything before it) completes all their callbacks.
  void AckAsync(const Delivery& delivery, SettleCallback done) override {
    SettleAsync(delivery, /*ack=*/true, absl::ZeroDuration(), NackKind::kGiveBack,
                std::move(done));
  }
  using Subscription::NackAsync;
  void NackAsync(const Delivery& delivery, absl::Duration delay, NackKind kind,
                 SettleCallback done) override {
    SettleAsync(delivery, /*ack=*/false, delay, kind, std::move(done));
  }
  absl::Status Close() override;

 private:
  void SettleAsync(const Delivery& delivery, bool ack, absl::Duration delay, NackKind kind,
                   SettleCallback done);
  // Delivery::failed_attempts: JetStream keeps no such count (a Nak carries no data), so it
  // lives in a KV bucket (kFailedAttemptsBucket) under the stream, group and sequence, written
  // by a failing Nack before the Nak and purged once the message is settled for good.
  std::string FailedAttemptsKey(absl::string_view id) const;
  int ReadFailedAttempts(absl::string_view id);
  absl::Status WriteFailedAttempts(absl::string_view id, int failed_attempts);
  void ForgetFailedAttempts(const Delivery& delivery);
  void SettleLoop();
  absl::StatusOr<std::vector<Delivery>> FetchUpTo(int max_events, absl::Duration wait);
  // Takes the message held for `delivery` out of held_ (FailedPrecondition when none, or
  // when closed). Every successful Take must be matched by one EndUse once the caller has
  // finished with the message: Close waits for that before it gives back what is held.
  absl::StatusOr<MsgPtr> Take(const Delivery& delivery, absl::string_view op);
  void EndUse();
  // Ends the use a successful Take began, when the caller's scope ends.
  struct UseEnd {
    NatsSubscription* subscription;
    ~UseEnd() { subscription->EndUse(); }
  };
  void PutBack(uint64_t token, MsgPtr msg);
  absl::Status DeadLetterMsg(const Delivery& delivery, natsMsg* msg, const Event& dead);

  NatsEventStream* const stream_;
  const SubscribeOptions options_;
  const std::string dead_letter_stream_;
  std::atomic<bool> closed_{false};

  std::mutex fetch_mu_;  // Fetch/Reclaim; Close waits for a running fetch
  std::unique_ptr<PullConsumer> pull_;  // guarded by fetch_mu_

  std::mutex close_mu_;  // one Close at a time; a second waits for the first to finish

  std::mutex held_mu_;  // Ack & co. from any thread
  std::condition_variable uses_cv_;
  absl::flat_hash_map<uint64_t, MsgPtr> held_;  // guarded by held_mu_
  uint64_t next_token_ = 1;  // guarded by held_mu_
  bool taking_stopped_ = false;  // guarded by held_mu_; set by Close
  int uses_ = 0;  // guarded by held_mu_; messages taken and still in use

  // Callbacks of async settles whose Ack/Nak was sent, waiting for the next flush.
  std::mutex settle_mu_;
  std::condition_variable settle_cv_;
  std::vector<SettleCallback> settle_queue_;  // guarded by settle_mu_
  bool settle_stop_ = false;  // guarded by settle_mu_
  std::thread settler_;  // last member: started once the rest is constructed
};

class NatsEventStream final : public EventStream {
 public:
  NatsEventStream(NatsOptions options, Clock* clock) : options_(std::move(options)), clock_(clock) {}

  ~NatsEventStream() override {
    if (js_ != nullptr) Flush(absl::Seconds(5)).IgnoreError();
    // Publishes still unconfirmed fail now rather than never.
    bool any_pending;
    {
      std::lock_guard lock(pending_mu_);
      any_pending = !pending_.empty();
    }
    // (nats.c 3.4 crashes in js_PublishAsyncGetPendingList when nothing was ever published.)
    natsMsgList pending{};
    if (js_ != nullptr && any_pending &&
        js_PublishAsyncGetPendingList(&pending, js_.get()) == NATS_OK) {
      for (int i = 0; i < pending.Count; ++i) {
        FinishPublish(pending.Msgs[i],
                      absl::FailedPreconditionError("NATS event stream destroyed before the PubAck"));
      }
      natsMsgList_Destroy(&pending);
    }
    inspector_.reset();
    kv_.reset();
    js_.reset();
    conn_.reset();
  }

  absl::Status Start() {
    natsOptions* raw = nullptr;
    EVENTBUS_RETURN_IF_ERROR(ToStatus(natsOptions_Create(&raw), "nats options"));
    OptionsPtr opts(raw);
    const std::string where = absl::StrCat("nats at ", RedactUrl(options_.url));
    EVENTBUS_RETURN_IF_ERROR(ToStatus(natsOptions_SetURL(opts.get(), options_.url.c_str()), where));
    natsOptions_SetTimeout(opts.get(), Millis(options_.connect_timeout));
    natsOptions_SetName(opts.get(), "eventbus");
    natsOptions_SetErrorHandler(opts.get(), LogErrorHandler, nullptr);
    natsOptions_SetDisconnectedCB(opts.get(), LogDisconnected, nullptr);
    natsOptions_SetReconnectedCB(opts.get(), LogReconnected, nullptr);
    // Never give up reconnecting: a restarted server must find its consumers again.
    natsOptions_SetMaxReconnect(opts.get(), -1);
    natsOptions_SetReconnectWait(opts.get(), 100);
    natsOptions_SetReconnectBufSize(opts.get(), 64 << 20);
    if (!options_.creds_file.empty()) {
      EVENTBUS_RETURN_IF_ERROR(ToStatus(
          natsOptions_SetUserCredentialsFromFiles(opts.get(), options_.creds_file.c_str(), nullptr),
          "nats option creds.file"));
    }
    if (!options_.tls_ca_file.empty()) {
      EVENTBUS_RETURN_IF_ERROR(ToStatus(natsOptions_SetSecure(opts.get(), true), "nats TLS"));
      EVENTBUS_RETURN_IF_ERROR(ToStatus(
          natsOptions_LoadCATrustedCertificates(opts.get(), options_.tls_ca_file.c_str()),
          "nats option tls.ca"));
    }
    if (!options_.tls_cert_file.empty()) {
      EVENTBUS_RETURN_IF_ERROR(ToStatus(natsOptions_SetSecure(opts.get(), true), "nats TLS"));
      EVENTBUS_RETURN_IF_ERROR(ToStatus(
          natsOptions_LoadCertificatesChain(opts.get(), options_.tls_cert_file.c_str(),
                                            options_.tls_key_file.c_str()),
          "nats options tls.cert/tls.key"));
    }
    natsConnection* nc = nullptr;
    absl::Status connected = ToStatus(natsConnection_Connect(&nc, opts.get()), where);
    if (!connected.ok()) {
      if (absl::IsDeadlineExceeded(connected)) return absl::UnavailableError(connected.message());
      return connected;
    }
    conn_.reset(nc);
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = Millis(options_.request_timeout);
    jo.PublishAsync.MaxPending = options_.max_pending_publishes;
    jo.PublishAsync.AckHandler = &NatsEventStream::OnPubAck;
    jo.PublishAsync.AckHandlerClosure = this;
    jsCtx* js = nullptr;
    EVENTBUS_RETURN_IF_ERROR(ToStatus(natsConnection_JetStream(&js, nc, &jo), where));
    js_.reset(js);
    inspector_ = NewNatsInspector(js);
    // Fails fast (FailedPrecondition) when the server runs without JetStream.
    jsAccountInfo* info = nullptr;
    jsErrCode code = jsErrCode(0);
    absl::Status js_ok = ToStatus(js_GetAccountInfo(&info, js, nullptr, &code),
                                  absl::StrCat(where, ": JetStream account info"), code);
    if (info != nullptr) jsAccountInfo_Destroy(info);
    if (absl::IsNotFound(js_ok) || absl::IsUnavailable(js_ok) || absl::IsDeadlineExceeded(js_ok)) {
      return absl::FailedPreconditionError(
          absl::StrCat(js_ok.message(), "; is JetStream enabled (nats-server -js)?"));
    }
    EVENTBUS_RETURN_IF_ERROR(js_ok);
    const int64_t max_payload = natsConnection_GetMaxPayload(nc);
    max_event_bytes_ = max_payload > static_cast<int64_t>(2 * kHeaderAllowance)
                           ? static_cast<size_t>(max_payload) - kHeaderAllowance
                           : static_cast<size_t>(std::max<int64_t>(max_payload, 0) / 2);
    return absl::OkStatus();
  }

  absl::string_view backend_name() const override { return kBackendName; }

  Capabilities capabilities() const override {
    Capabilities caps;
    caps.persistent = options_.storage == StreamStorage::kFile;
    caps.ordered_per_key = false;
    // Pull consumers hand each message to one subscriber; redelivery needs a Nak, a consumer
    // that goes away or AckWait passing.
    caps.duplicates_possible = false;
    caps.native_delay = true;
    caps.reclaim_from_other_consumers = false;
    caps.atomic_dead_letter = false;
    caps.max_event_bytes = max_event_bytes_;
    caps.inspection = true;
    // Publish sets Nats-Msg-Id to the event id, and the streams we create get this window (a
    // stream bound as is keeps the window it was created with).
    caps.publish_dedupe_window = options_.duplicate_window;
    return caps;
  }

  StreamInspector* inspector() override { return inspector_.get(); }

  absl::Status Flush(absl::Duration timeout) override {
    const absl::Time deadline = absl::Now() + timeout;
    uint64_t target;
    {
      std::lock_guard lock(pending_mu_);
      target = next_seq_ - 1;
    }
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = Millis(timeout);
    natsStatus ns = js_PublishAsyncComplete(js_.get(), &po);
    if (ns == NATS_TIMEOUT) {
      return absl::DeadlineExceededError(absl::StrCat(
          "nats: publishes still awaiting their PubAck after ", absl::FormatDuration(timeout)));
    }
    // js_PublishAsyncComplete may return before the last AckHandler finished running; our own
    // book-keeping says when every callback queued before the call has been called.
    std::unique_lock lock(pending_mu_);
    auto done = [this, target] {
      return pending_seqs_.empty() || *pending_seqs_.begin() > target;
    };
    if (!pending_cv_.wait_until(lock, absl::ToChronoTime(deadline), done)) {
      return absl::DeadlineExceededError(absl::StrCat(
          "nats: publishes still awaiting their PubAck after ", absl::FormatDuration(timeout)));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<Subscription>> Subscribe(const SubscribeOptions& options) override {
    EVENTBUS_RETURN_IF_ERROR(ValidateSubscribeOptions(options));
    EVENTBUS_RETURN_IF_ERROR(EnsureStream(options.stream));
    const std::string stream_name = JetStreamName(options.stream);
    const std::string durable = JetStreamName(options.group);
    const std::string where =
        absl::StrCat("nats consumer ", durable, " on stream ", stream_name);
    jsConsumerInfo* ci = nullptr;
    jsErrCode code = jsErrCode(0);
    absl::Status found = ToStatus(js_GetConsumerInfo(&ci, js_.get(), stream_name.c_str(),
                                                     durable.c_str(), nullptr, &code),
                                  where, code);
    ConsumerInfoPtr info(ci);
    if (absl::IsNotFound(found)) {
      jsConsumerConfig cc;
      jsConsumerConfig_Init(&cc);
      cc.Durable = durable.c_str();
      cc.AckPolicy = js_AckExplicit;
      cc.DeliverPolicy = options.start_from_oldest ? js_DeliverAll : js_DeliverNew;
      cc.AckWait = Nanos(options.ack_wait > absl::ZeroDuration() ? options.ack_wait
                                                                 : options_.default_ack_wait);
      cc.MaxDeliver = options_.max_deliver;
      cc.MaxAckPending = options_.max_ack_pending;
      ci = nullptr;
      code = jsErrCode(0);
      absl::Status added =
          ToStatus(js_AddConsumer(&ci, js_.get(), stream_name.c_str(), &cc, nullptr, &code),
                   absl::StrCat(where, ": create"), code);
      info.reset(ci);
      // Another subscriber may have created it a moment ago: bind to it.
      if (!added.ok() && !absl::IsFailedPrecondition(added) && code != JSConsumerNameExistErr &&
          code != kConsumerAlreadyExistsErr) {
        return added;
      }
    } else if (!found.ok()) {
      return found;
    }
    EVENTBUS_ASSIGN_OR_RETURN(std::unique_ptr<PullConsumer> pull,
                              PullConsumer::Create(conn_.get(), stream_name, durable));
    return std::unique_ptr<Subscription>(
        std::make_unique<NatsSubscription>(this, options, std::move(pull)));
  }

  absl::Status Ping(absl::Duration timeout) override {
    return ToStatus(natsConnection_FlushTimeout(conn_.get(), Millis(timeout)),
                    absl::StrCat("nats at ", RedactUrl(options_.url), ": ping"));
  }

  Clock* clock() const override { return clock_; }

  // Publishes and waits for the PubAck (dead letters). `msg_id` dedupes retries.
  absl::Status PublishSync(absl::string_view stream, const Event& event, const std::string& msg_id) {
    EVENTBUS_RETURN_IF_ERROR(EnsureStream(stream));
    EVENTBUS_ASSIGN_OR_RETURN(MsgPtr msg, BuildMsg(stream, event));
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = msg_id.c_str();
    po.MaxWait = Millis(options_.request_timeout);
    jsPubAck* pa = nullptr;
    jsErrCode code = jsErrCode(0);
    absl::Status s = ToStatus(js_PublishMsg(&pa, js_.get(), msg.get(), &po, &code),
                              absl::StrCat("nats publish to ", stream), code);
    PubAckPtr ack(pa);
    return s;
  }

  natsConnection* connection() const { return conn_.get(); }

  // The bucket of failed-attempt counts, created on first use (idempotent across processes).
  absl::StatusOr<kvStore*> FailedAttemptsStore() {
    std::lock_guard lock(kv_mu_);
    if (kv_ != nullptr) return kv_.get();
    kvConfig cfg;
    kvConfig_Init(&cfg);
    cfg.Bucket = kFailedAttemptsBucket;
    cfg.History = 1;
    cfg.Replicas = options_.replicas;
    kvStore* kv = nullptr;
    natsStatus ns = js_CreateKeyValue(&kv, js_.get(), &cfg);
    if (ns != NATS_OK) ns = js_KeyValue(&kv, js_.get(), kFailedAttemptsBucket);
    EVENTBUS_RETURN_IF_ERROR(
        ToStatus(ns, absl::StrCat("nats key-value bucket ", kFailedAttemptsBucket)));
    kv_.reset(kv);
    return kv_.get();
  }
  int64_t request_timeout_ms() const { return Millis(options_.request_timeout); }
  absl::Duration request_timeout() const { return options_.request_timeout; }

 protected:
  absl::Status DoPublish(absl::string_view stream, Event event, PublishCallback done) override {
    EVENTBUS_RETURN_IF_ERROR(EnsureStream(stream));
    EVENTBUS_ASSIGN_OR_RETURN(MsgPtr owned, BuildMsg(stream, event));
    natsMsg* msg = owned.get();
    {
      std::lock_guard lock(pending_mu_);
      const uint64_t seq = next_seq_++;
      pending_.emplace(msg, Pending{seq, std::string(stream), std::move(done)});
      pending_seqs_.insert(seq);
    }
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = event.id().c_str();
    po.MaxWait = Millis(options_.publish_timeout);
    natsMsg* handed = owned.release();
    natsStatus ns = js_PublishMsgAsync(js_.get(), &handed, &po);
    if (ns != NATS_OK) {
      // Not taken by nats.c (handed is still set): no AckHandler will run for it.
      absl::Status status = ToStatus(ns, absl::StrCat("nats publish to ", stream));
      if (ns == NATS_TIMEOUT) status = absl::ResourceExhaustedError(status.message());
      {
        std::lock_guard lock(pending_mu_);
        auto it = pending_.find(msg);
        if (it != pending_.end()) {
          pending_seqs_.erase(it->second.seq);
          pending_.erase(it);
          pending_cv_.notify_all();
        }
      }
      natsMsg_Destroy(handed);
      return status;
    }
    return absl::OkStatus();
  }

 private:
  struct Pending {
    uint64_t seq;
    std::string stream;
    PublishCallback done;
  };

  absl::StatusOr<MsgPtr> BuildMsg(absl::string_view stream, const Event& event) {
    const std::string subject(stream);
    natsMsg* raw = nullptr;
    EVENTBUS_RETURN_IF_ERROR(ToStatus(
        natsMsg_Create(&raw, subject.c_str(), nullptr, event.data().data(),
                       static_cast<int>(event.data().size())),
        "nats message"));
    MsgPtr msg(raw);
    EVENTBUS_RETURN_IF_ERROR(wire::EncodeHeaders(event, msg.get()));
    return msg;
  }

  // Creates the JetStream stream for `stream` or binds to an existing one, once per name.
  absl::Status EnsureStream(absl::string_view stream) {
    {
      std::lock_guard lock(streams_mu_);
      if (ensured_.contains(stream)) return absl::OkStatus();
    }
    EVENTBUS_RETURN_IF_ERROR(CheckSubject(stream));
    const std::string name = JetStreamName(stream);
    const std::string subject(stream);
    const std::string where = absl::StrCat("nats stream ", name);
    for (int attempt = 0; attempt < 2; ++attempt) {
      jsStreamInfo* si = nullptr;
      jsErrCode code = jsErrCode(0);
      absl::Status found =
          ToStatus(js_GetStreamInfo(&si, js_.get(), name.c_str(), nullptr, &code), where, code);
      StreamInfoPtr info(si);
      if (found.ok()) {
        bool covers = false;
        for (int i = 0; info->Config != nullptr && i < info->Config->SubjectsLen; ++i) {
          if (subject == info->Config->Subjects[i]) covers = true;
        }
        if (!covers) {
          return absl::FailedPreconditionError(absl::StrCat(
              where, " exists but does not hold subject \"", subject,
              "\" (another eventbus stream name maps to the same JetStream name)"));
        }
        std::lock_guard lock(streams_mu_);
        ensured_.insert(subject);
        return absl::OkStatus();
      }
      if (!absl::IsNotFound(found)) return found;
      jsStreamConfig cfg;
      jsStreamConfig_Init(&cfg);
      cfg.Name = name.c_str();
      const char* subjects[] = {subject.c_str()};
      cfg.Subjects = subjects;
      cfg.SubjectsLen = 1;
      cfg.Storage = options_.storage == StreamStorage::kFile ? js_FileStorage : js_MemoryStorage;
      cfg.Replicas = options_.replicas;
      cfg.MaxAge = Nanos(options_.max_age);
      cfg.MaxBytes = options_.max_bytes;
      cfg.Duplicates = Nanos(options_.duplicate_window);
      si = nullptr;
      code = jsErrCode(0);
      absl::Status added = ToStatus(js_AddStream(&si, js_.get(), &cfg, nullptr, &code),
                                    absl::StrCat(where, ": create"), code);
      info.reset(si);
      if (added.ok()) {
        std::lock_guard lock(streams_mu_);
        ensured_.insert(subject);
        return absl::OkStatus();
      }
      // Created by someone else meanwhile: look again.
      if (code != JSStreamNameExistErr) return added;
    }
    return absl::FailedPreconditionError(absl::StrCat(where, ": cannot create or bind"));
  }

  static void OnPubAck(jsCtx*, natsMsg* msg, jsPubAck* pa, jsPubAckErr* pae, void* closure) {
    auto* self = static_cast<NatsEventStream*>(closure);
    if (pa != nullptr) {
      self->FinishPublish(msg, PublishReceipt{"", absl::StrCat(pa->Sequence)});
    } else {
      const natsStatus err = pae != nullptr ? pae->Err : NATS_ERR;
      std::string text = pae != nullptr && pae->ErrText != nullptr ? pae->ErrText : "";
      absl::Status status = ToStatus(err, absl::StrCat("nats publish: ", text),
                                     pae != nullptr ? pae->ErrCode : jsErrCode(0));
      // A PubAck that never came (server gone): transient.
      if (absl::IsDeadlineExceeded(status)) status = absl::UnavailableError(status.message());
      self->FinishPublish(msg, std::move(status));
    }
    natsMsg_Destroy(msg);
  }

  void FinishPublish(natsMsg* msg, absl::StatusOr<PublishReceipt> result) {
    Pending pending;
    {
      std::lock_guard lock(pending_mu_);
      auto it = pending_.find(msg);
      if (it == pending_.end()) return;
      pending = std::move(it->second);
      pending_.erase(it);
    }
    if (result.ok()) result->stream = pending.stream;
    pending.done(std::move(result));
    std::lock_guard lock(pending_mu_);
    pending_seqs_.erase(pending.seq);
    pending_cv_.notify_all();
  }

  const NatsOptions options_;
  Clock* const clock_;
  ConnectionPtr conn_;
  JsCtxPtr js_;
  std::unique_ptr<StreamInspector> inspector_;  // uses js_
  std::mutex kv_mu_;
  std::unique_ptr<kvStore, KvStoreDeleter> kv_;  // guarded by kv_mu_; reset before js_
  size_t max_event_bytes_ = 1 << 20;

  std::mutex streams_mu_;
  absl::flat_hash_set<std::string> ensured_;  // guarded by streams_mu_

  std::mutex pending_mu_;
  std::condition_variable pending_cv_;
  absl::flat_hash_map<natsMsg*, Pending> pending_;  // guarded by pending_mu_
  // Sequences whose callback has not returned yet (Flush waits on them).
  std::set<uint64_t> pending_seqs_;  // guarded by pending_mu_
  uint64_t next_seq_ = 1;  // guarded by pending_mu_
};

absl::Status Closed() {
  return absl::FailedPreconditionError("nats subscription is closed");
}

absl::StatusOr<std::vector<Delivery>> NatsSubscription::FetchUpTo(int max_events,
                                                                  absl::Duration wait) {
  if (closed_) return Closed();
  if (max_events < 1) return absl::InvalidArgumentError("Fetch: max_events must be >= 1");
  std::lock_guard fetch_lock(fetch_mu_);
  if (closed_ || pull_ == nullptr) return Closed();
  // Disconnected or mid-reconnect: Unavailable, the caller retries (as Fetch documents).
  EVENTBUS_ASSIGN_OR_RETURN(std::vector<MsgPtr> msgs, pull_->Fetch(max_events, wait));
  std::vector<Delivery> out;
  out.reserve(msgs.size());
  const absl::Time now = stream_->clock()->Now();
  for (MsgPtr& msg : msgs) {
    Delivery delivery;
    delivery.stream = options_.stream;
    jsMsgMetaData* raw_meta = nullptr;
    if (natsMsg_GetMetaData(&raw_meta, msg.get()) == NATS_OK) {
      MetaDataPtr meta(raw_meta);
      delivery.id = absl::StrCat(meta->Sequence.Stream);
      delivery.delivery_count = static_cast<int>(meta->NumDelivered);
      // Exact for a first delivery; for a redelivery the store time is the best lower bound.
      delivery.first_delivery_time =
          meta->NumDelivered <= 1 ? now : absl::FromUnixNanos(meta->Timestamp);
    }
    absl::StatusOr<Event> event = wire::Decode(msg.get());
    {
      std::lock_guard lock(held_mu_);
      delivery.token = next_token_++;
    }
    if (!event.ok()) {
      // Not an event: dead-letter a description of it and go on.
      Event dead = MakeEvent("io.eventbus.malformed", absl::StrCat("nats:", options_.stream),
                             RenderRaw(msg.get()));
      dead.set_id(absl::StrCat(options_.stream, "/", delivery.id));
      dead.set_data_content_type("text/plain; charset=utf-8");
      SetEventTime(dead, now);
      delivery.event = dead;
      DeadLetterMsg(delivery, msg.get(),
                    MakeDeadLetter(delivery, options_.group,
                                   MalformedEventReason(event.status().message())))
          .IgnoreError();
      continue;
    }
    delivery.event = std::move(event).value();
    if (delivery.delivery_count > 1) delivery.failed_attempts = ReadFailedAttempts(delivery.id);
    PutBack(delivery.token, std::move(msg));
    out.push_back(std::move(delivery));
  }
  return out;
}

void NatsSubscription::PutBack(uint64_t token, MsgPtr msg) {
  std::lock_guard lock(held_mu_);
  held_[token] = std::move(msg);
}

absl::StatusOr<MsgPtr> NatsSubscription::Take(const Delivery& delivery, absl::string_view op) {
  std::lock_guard lock(held_mu_);
  if (taking_stopped_) return Closed();
  auto it = held_.find(delivery.token);
  if (it == held_.end()) {
    return absl::FailedPreconditionError(absl::StrCat(
        op, ": delivery ", delivery.id, " of ", delivery.stream,
        " is not held by this consumer (already settled, or not fetched by it)"));
  }
  MsgPtr msg = std::move(it->second);
  held_.erase(it);
  ++uses_;
  return msg;
}

void NatsSubscription::EndUse() {
  std::lock_guard lock(held_mu_);
  if (--uses_ == 0) uses_cv_.notify_all();
}

absl::Status NatsSubscription::Ack(const Delivery& delivery) {
  EVENTBUS_ASSIGN_OR_RETURN(MsgPtr msg, Take(delivery, "Ack"));
  UseEnd use_end{this};
  absl::Status s = AckMsg(stream_->connection(), msg.get(),
                          absl::StrCat("nats ack of ", delivery.stream, "/", delivery.id),
                          /*sync=*/true, stream_->request_timeout());
  if (!s.ok()) {
    if (absl::IsDeadlineExceeded(s)) s = absl::UnavailableError(s.message());
    PutBack(delivery.token, std::move(msg));  // still ours: the caller may retry
    return s;
  }
  ForgetFailedAttempts(delivery);
  return s;
}

absl::Status NatsSubscription::Nack(const Delivery& delivery, absl::Duration delay,
                                    NackKind kind) {
  EVENTBUS_ASSIGN_OR_RETURN(MsgPtr msg, Take(delivery, "Nack"));
  UseEnd use_end{this};
  if (kind == NackKind::kFailed) {
    // Written before the Nak: the redelivery must find it.
    if (absl::Status s = WriteFailedAttempts(delivery.id, delivery.failed_attempts + 1); !s.ok()) {
      PutBack(delivery.token, std::move(msg));
      return s;
    }
  }
  // A plain Nak redelivers at once and ignores a consumer BackOff; a delay must be explicit.
  const std::string where = absl::StrCat("nats nak of ", delivery.stream, "/", delivery.id);
  absl::Status s = NakMsg(stream_->connection(), msg.get(), delay, where);
  if (s.ok()) {
    s = ToStatus(natsConnection_FlushTimeout(stream_->connection(), stream_->request_timeout_ms()),
                 where);
  }
  if (!s.ok()) {
    if (absl::IsDeadlineExceeded(s)) s = absl::UnavailableError(s.message());
    PutBack(delivery.token, std::move(msg));
  }
  return s;
}

absl::Status NatsSubscription::Extend(const Delivery& delivery) {
  std::lock_guard lock(held_mu_);
  if (taking_stopped_) return Closed();
  auto it = held_.find(delivery.token);
  if (it == held_.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("Extend: delivery ", delivery.id, " is not held by this consumer"));
  }
  return InProgressMsg(stream_->connection(), it->second.get(),
                       absl::StrCat("nats in-progress of ", delivery.stream, "/", delivery.id));
}

absl::Status NatsSubscription::DeadLetterMsg(const Delivery& delivery, natsMsg* msg,
                                             const Event& dead) {
  // The same delivery dead-lettered twice (a retry after a lost reply) is stored once.
  const std::string msg_id =
      absl::StrCat("dlq:", options_.stream, ":", delivery.id, ":", options_.group);
  EVENTBUS_RETURN_IF_ERROR(stream_->PublishSync(dead_letter_stream_, dead, msg_id));
  // Only after the dead letter is durable: Term stops all redelivery of the original.
  const std::string where = absl::StrCat("nats term of ", delivery.stream, "/", delivery.id);
  EVENTBUS_RETURN_IF_ERROR(TermMsg(stream_->connection(), msg, where));
  return ToStatus(
      natsConnection_FlushTimeout(stream_->connection(), stream_->request_timeout_ms()), where);
}

absl::Status NatsSubscription::DeadLetter(const Delivery& delivery, absl::string_view reason) {
  EVENTBUS_ASSIGN_OR_RETURN(MsgPtr msg, Take(delivery, "DeadLetter"));
  UseEnd use_end{this};
  absl::Status s =
      DeadLetterMsg(delivery, msg.get(), MakeDeadLetter(delivery, options_.group, reason));
  if (!s.ok()) {
    PutBack(delivery.token, std::move(msg));
    return s;
  }
  ForgetFailedAttempts(delivery);
  return s;
}

void NatsSubscription::SettleAsync(const Delivery& delivery, bool ack, absl::Duration delay,
                                   NackKind kind, SettleCallback done) {
  absl::StatusOr<MsgPtr> msg = Take(delivery, ack ? "AckAsync" : "NackAsync");
  if (!msg.ok()) {
    done(msg.status());
    return;
  }
  UseEnd use_end{this};
  if (!ack && kind == NackKind::kFailed) {
    // One round trip, only for failures (not on the hot path of successes).
    if (absl::Status s = WriteFailedAttempts(delivery.id, delivery.failed_attempts + 1); !s.ok()) {
      PutBack(delivery.token, std::move(msg).value());
      done(std::move(s));
      return;
    }
  }
  if (ack) ForgetFailedAttempts(delivery);
  const std::string where =
      absl::StrCat("nats ", ack ? "ack" : "nak", " of ", delivery.stream, "/", delivery.id);
  absl::Status status = ack ? AckMsg(stream_->connection(), msg->get(), where)
                            : NakMsg(stream_->connection(), msg->get(), delay, where);
  if (!status.ok()) {
    PutBack(delivery.token, std::move(msg).value());
    done(std::move(status));
    return;
  }
  {
    std::lock_guard lock(settle_mu_);
    if (!settle_stop_) {
      settle_queue_.push_back(std::move(done));
      settle_cv_.notify_one();
      return;
    }
  }
  // Closed meanwhile, after the settler's last batch: confirm this one here.
  done(ToStatus(natsConnection_FlushTimeout(stream_->connection(), stream_->request_timeout_ms()),
                "nats flush of settles"));
}

void NatsSubscription::SettleLoop() {
  for (;;) {
    std::vector<SettleCallback> batch;
    {
      std::unique_lock lock(settle_mu_);
      settle_cv_.wait(lock, [this] { return settle_stop_ || !settle_queue_.empty(); });
      if (settle_queue_.empty()) return;  // stopping, nothing left
      batch.swap(settle_queue_);
    }
    absl::Status status = ToStatus(
        natsConnection_FlushTimeout(stream_->connection(), stream_->request_timeout_ms()),
        "nats flush of settles");
    // The Ack/Nak may or may not have reached the server: transient either way.
    if (!status.ok() && !absl::IsFailedPrecondition(status)) {
      status = absl::UnavailableError(status.message());
    }
    for (SettleCallback& done : batch) done(status);
  }
}

std::string NatsSubscription::FailedAttemptsKey(absl::string_view id) const {
  // KV keys allow [-/_=.A-Za-z0-9] with '.' between tokens: names are escaped as =XX.
  auto escape = [](absl::string_view name) {
    std::string out;
    for (char c : name) {
      if (absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_') {
        out.push_back(c);
      } else {
        absl::StrAppend(&out, "=", absl::Hex(static_cast<unsigned char>(c), absl::kZeroPad2));
      }
    }
    return out;
  };
  return absl::StrCat(escape(options_.stream), ".", escape(options_.group), ".", id);
}

int NatsSubscription::ReadFailedAttempts(absl::string_view id) {
  absl::StatusOr<kvStore*> kv = stream_->FailedAttemptsStore();
  if (!kv.ok()) return 0;
  kvEntry* raw = nullptr;
  const natsStatus ns = kvStore_Get(&raw, *kv, FailedAttemptsKey(id).c_str());
  std::unique_ptr<kvEntry, KvEntryDeleter> entry(raw);
  int failed = 0;
  if (ns == NATS_OK && entry != nullptr) {
    const char* value = kvEntry_ValueString(entry.get());
    if (value == nullptr || !absl::SimpleAtoi(value, &failed) || failed < 0) failed = 0;
  } else if (ns != NATS_NOT_FOUND) {
    // Counted low rather than not delivered: at worst a few more retries, which
    // max_deliveries still bounds.
    Log(LogLevel::kWarning, "nats",
        absl::StrCat("reading the failed attempts of ", options_.stream, "/", id, ": ",
                     natsStatus_GetText(ns)));
  }
  return failed;
}

absl::Status NatsSubscription::WriteFailedAttempts(absl::string_view id, int failed_attempts) {
  EVENTBUS_ASSIGN_OR_RETURN(kvStore * kv, stream_->FailedAttemptsStore());
  uint64_t revision = 0;
  absl::Status s = ToStatus(kvStore_PutString(&revision, kv, FailedAttemptsKey(id).c_str(),
                                              absl::StrCat(failed_attempts).c_str()),
                            absl::StrCat("nats: recording a failed attempt of ", options_.stream,
                                         "/", id));
  if (absl::IsDeadlineExceeded(s)) s = absl::UnavailableError(s.message());
  return s;
}

void NatsSubscription::ForgetFailedAttempts(const Delivery& delivery) {
  if (delivery.failed_attempts == 0) return;  // nothing was written
  absl::StatusOr<kvStore*> kv = stream_->FailedAttemptsStore();
  if (kv.ok()) kvStore_Purge(*kv, FailedAttemptsKey(delivery.id).c_str(), nullptr);
}

absl::Status NatsSubscription::Close() {
  std::lock_guard close_lock(close_mu_);
  if (closed_.exchange(true)) return absl::OkStatus();
  {
    // No new settle starts; those already running finish with the subscription intact.
    std::unique_lock lock(held_mu_);
    taking_stopped_ = true;
    uses_cv_.wait(lock, [this] { return uses_ == 0; });
  }
  {
    // Settles queued before Close still complete: the settler drains the queue, then exits.
    std::lock_guard lock(settle_mu_);
    settle_stop_ = true;
    settle_cv_.notify_one();
  }
  if (settler_.joinable()) settler_.join();
  std::lock_guard fetch_lock(fetch_mu_);
  absl::flat_hash_map<uint64_t, MsgPtr> held;
  {
    std::lock_guard lock(held_mu_);
    held.swap(held_);
  }
  // What this consumer still holds goes back to the group at once, not after AckWait.
  // So does what was delivered to it and not fetched yet.
  std::vector<MsgPtr> give_back = pull_->Close();
  for (auto& [token, msg] : held) give_back.push_back(std::move(msg));
  for (MsgPtr& msg : give_back) {
    NakMsg(stream_->connection(), msg.get(), absl::ZeroDuration(), "nats nak on close")
        .IgnoreError();
  }
  natsConnection_FlushTimeout(stream_->connection(), stream_->request_timeout_ms());
  pull_.reset();
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<EventStream>> NewNatsEventStream(NatsOptions options, Clock* clock) {
  if (options.max_pending_publishes < 1 || options.replicas < 1 ||
      options.request_timeout <= absl::ZeroDuration() ||
      options.publish_timeout <= absl::ZeroDuration() ||
      options.connect_timeout <= absl::ZeroDuration() ||
      options.default_ack_wait <= absl::ZeroDuration() || options.max_deliver == 0) {
    return absl::InvalidArgumentError(
        "nats options: timeouts, ack wait, replicas and publish.max.pending must be positive, "
        "max.deliver -1 or positive");
  }
  if (clock == nullptr) clock = Clock::Real();
  auto stream = std::make_unique<NatsEventStream>(std::move(options), clock);
  EVENTBUS_RETURN_IF_ERROR(stream->Start());
  return std::unique_ptr<EventStream>(std::move(stream));
}

absl::Status RegisterNatsBackend(BackendRegistry& registry) {
  BackendRegistration registration;
  registration.name = std::string(kBackendName);
  registration.description =
      "NATS JetStream (nats.c): durable pull consumers, server-side nack delay and redelivery";
  registration.url_env = "NATS_URL";
  registration.default_url = std::string(kDefaultNatsUrl);
  registration.option_env_prefix = std::string(kNatsOptionEnvPrefix);
  registration.factory = [](const BackendConfig& config) -> absl::StatusOr<std::unique_ptr<EventStream>> {
    EVENTBUS_ASSIGN_OR_RETURN(NatsOptions options, NatsOptionsFromConfig(config));
    return NewNatsEventStream(std::move(options), config.clock);
  };
  registration.check_config = [](const BackendConfig& config) {
    return NatsOptionsFromConfig(config).status();
  };
  absl::Status status = registry.Register(std::move(registration));
  if (absl::IsAlreadyExists(status)) return absl::OkStatus();
  return status;
}

}  // namespace eventbus::nats
