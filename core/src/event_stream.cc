#include "eventbus/event_stream.h"

#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "eventbus/clock.h"
#include "eventbus/status_macros.h"

namespace eventbus {

absl::Status EventStream::Publish(absl::string_view stream, Event event, PublishCallback done) {
  EVENTBUS_RETURN_IF_ERROR(ValidateName("stream", stream));
  EVENTBUS_RETURN_IF_ERROR(NormalizeForPublish(event, clock()->Now()));
  const size_t size = EventSizeBytes(event);
  const size_t limit = capabilities().max_event_bytes;
  if (size > limit) {
    return absl::InvalidArgumentError(absl::StrCat("event ", event.id(), " is ", size,
                                                   " bytes; backend ", backend_name(),
                                                   " accepts at most ", limit));
  }
  if (!done) done = [](absl::StatusOr<PublishReceipt>) {};
  return DoPublish(stream, std::move(event), std::move(done));
}

absl::StatusOr<PublishReceipt> EventStream::PublishAndWait(absl::string_view stream, Event event,
                                                           absl::Duration timeout) {
  struct Outcome {
    std::mutex mu;
    std::condition_variable done;
    std::optional<absl::StatusOr<PublishReceipt>> result;  // guarded by mu
  };
  // Shared: a backend may still call `done` after we gave up waiting.
  auto outcome = std::make_shared<Outcome>();
  EVENTBUS_RETURN_IF_ERROR(
      Publish(stream, std::move(event), [outcome](absl::StatusOr<PublishReceipt> r) {
        std::lock_guard lock(outcome->mu);
        outcome->result = std::move(r);
        outcome->done.notify_all();
      }));
  // Batching backends deliver the outcome only once the batch goes out: ask for it.
  const absl::Status flushed = Flush(timeout);
  std::unique_lock lock(outcome->mu);
  if (!outcome->done.wait_for(lock, absl::ToChronoNanoseconds(timeout),
                              [&] { return outcome->result.has_value(); })) {
    if (!flushed.ok()) return flushed;
    return absl::DeadlineExceededError(
        absl::StrCat("publish to ", stream, " not confirmed within ", absl::FormatDuration(timeout)));
  }
  return *outcome->result;
}

void Subscription::AckAsync(const Delivery& delivery, SettleCallback done) {
  absl::Status status = Ack(delivery);
  // The batched form reports an entry that is no longer pending as done (see the header).
  if (absl::IsNotFound(status)) status = absl::OkStatus();
  if (done) done(std::move(status));
}

void Subscription::NackAsync(const Delivery& delivery, absl::Duration delay, NackKind kind,
                             SettleCallback done) {
  absl::Status status = Nack(delivery, delay, kind);
  if (done) done(std::move(status));
}

void Subscription::DeadLetterAsync(const Delivery& delivery, absl::string_view reason,
                                   SettleCallback done) {
  absl::Status status = DeadLetter(delivery, reason);
  if (done) done(std::move(status));
}

absl::Status ValidateName(absl::string_view what, absl::string_view name) {
  if (name.empty()) return absl::InvalidArgumentError(absl::StrCat(what, " must not be empty"));
  if (name.size() > 200) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " is ", name.size(), " bytes long; at most 200 are allowed"));
  }
  for (char c : name) {
    if (absl::ascii_isspace(static_cast<unsigned char>(c)) ||
        absl::ascii_iscntrl(static_cast<unsigned char>(c))) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " \"", absl::CEscape(name), "\" contains whitespace or control characters"));
    }
  }
  return absl::OkStatus();
}

std::string DeadLetterStreamName(const SubscribeOptions& options) {
  if (!options.dead_letter_stream.empty()) return options.dead_letter_stream;
  return absl::StrCat(options.stream, kDlqStreamSuffix);
}

absl::Status ValidateSubscribeOptions(const SubscribeOptions& options) {
  EVENTBUS_RETURN_IF_ERROR(ValidateName("stream", options.stream));
  EVENTBUS_RETURN_IF_ERROR(ValidateName("consumer group", options.group));
  EVENTBUS_RETURN_IF_ERROR(ValidateName("consumer name", options.consumer));
  if (!options.dead_letter_stream.empty()) {
    EVENTBUS_RETURN_IF_ERROR(ValidateName("dead-letter stream", options.dead_letter_stream));
    if (options.dead_letter_stream == options.stream) {
      return absl::InvalidArgumentError("dead-letter stream must differ from the stream");
    }
  }
  if (options.ack_wait < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ack_wait must not be negative");
  }
  return absl::OkStatus();
}

namespace {

// A reason is free text from anywhere (a handler's error, a broker's message): the dead letter
// must still be a valid envelope, so it is made UTF-8 and bounded (cut at a character).
std::string ReasonHeaderValue(absl::string_view reason) {
  constexpr size_t kMaxReasonBytes = 4096;
  std::string text = IsValidUtf8(reason) ? std::string(reason) : absl::CHexEscape(reason);
  if (text.size() > kMaxReasonBytes) {
    size_t cut = kMaxReasonBytes;
    while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
    text.resize(cut);
  }
  return text;
}

}  // namespace

Event MakeDeadLetter(const Delivery& delivery, absl::string_view group, absl::string_view reason) {
  Event dead = delivery.event;
  auto& headers = *dead.mutable_headers();
  headers[std::string(kDlqReasonHeader)] = ReasonHeaderValue(reason);
  headers[std::string(kDlqOriginStreamHeader)] = delivery.stream;
  headers[std::string(kDlqOriginIdHeader)] = delivery.id;
  headers[std::string(kDlqOriginGroupHeader)] = std::string(group);
  headers[std::string(kDlqDeliveryCountHeader)] = absl::StrCat(delivery.delivery_count);
  return dead;
}

}  // namespace eventbus
