// Conformance cases for envelope validation: what Publish refuses and what a backend's decoder
// dead-letters are decided by one function (eventbus::ValidateEnvelope), so an envelope is
// accepted or refused alike on every backend, with the same reason.

#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "eventbus/conformance/conformance.h"

namespace eventbus::conformance {

int LinkEnvelopeCases() { return 0; }

namespace {

std::string UniqueStreamName(absl::string_view prefix) {
  thread_local absl::BitGen gen;
  return absl::StrFormat("conf.%s.%016x", prefix, absl::Uniform<uint64_t>(gen));
}

// Envelopes every backend's wire can carry (no CR/LF, no NUL in text) that ValidateEnvelope
// refuses, each for a different reason.
std::vector<Event> MalformedEnvelopes() {
  std::vector<Event> malformed;
  auto add = [&malformed](std::function<void(Event&)> spoil) {
    Event event = MakeEvent("io.eventbus.conformance.malformed", "/conformance", "payload");
    SetEventTime(event, absl::FromUnixSeconds(1'700'000'000));
    spoil(event);
    malformed.push_back(std::move(event));
  };
  add([](Event& e) { e.set_id("caf\xe9"); });                               // Latin-1, not UTF-8
  add([](Event& e) { (*e.mutable_headers())["trace"] = "\xc0\xaf"; });     // overlong form
  add([](Event& e) { e.set_type(""); });                                   // required, empty
  add([](Event& e) { e.set_spec_version("0.3"); });                        // unsupported version
  add([](Event& e) { e.set_subject(std::string(kMaxAttributeBytes + 1, 's')); });  // too long
  return malformed;
}

std::string ExpectedReason(const Event& event) {
  const absl::Status status = ValidateEnvelope(event);
  EXPECT_FALSE(status.ok()) << "the case's envelope is valid";
  return MalformedEventReason(status.message());
}

std::unique_ptr<EventStream> MakeStream(const BackendUnderTest& backend) {
  auto made = backend.make_stream();
  EXPECT_TRUE(made.ok()) << made.status();
  return made.ok() ? std::move(made).value() : nullptr;
}

std::unique_ptr<Subscription> Join(EventStream& stream, const std::string& name,
                                   const std::string& group) {
  SubscribeOptions options;
  options.stream = name;
  options.group = group;
  options.consumer = "c1";
  auto sub = stream.Subscribe(options);
  EXPECT_TRUE(sub.ok()) << sub.status();
  return sub.ok() ? std::move(sub).value() : nullptr;
}

// Fetches (acking each) until `count` arrived or the patience ran out.
std::vector<Delivery> CollectAndAck(const BackendUnderTest& backend, Subscription& sub, int count) {
  std::vector<Delivery> got;
  const absl::Time deadline = absl::Now() + std::max(backend.fetch_wait * 10, absl::Seconds(5));
  while (static_cast<int>(got.size()) < count && absl::Now() < deadline) {
    auto batch = sub.Fetch(count - static_cast<int>(got.size()), backend.fetch_wait);
    EXPECT_TRUE(batch.ok()) << batch.status();
    if (!batch.ok()) break;
    for (Delivery& d : *batch) {
      EXPECT_TRUE(sub.Ack(d).ok());
      got.push_back(std::move(d));
    }
  }
  return got;
}

TEST_P(EventStreamConformance, PublishRefusesAMalformedEnvelopeWithTheValidatorsReason) {
  std::unique_ptr<EventStream> stream = MakeStream(GetParam());
  ASSERT_NE(stream, nullptr);
  const std::string name = UniqueStreamName("refused");
  for (const Event& event : MalformedEnvelopes()) {
    absl::Status status = stream->Publish(name, event);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_EQ(status.message(), ValidateEnvelope(event).message());
  }
  ASSERT_TRUE(stream->Flush(absl::Seconds(30)).ok());
  auto sub = Join(*stream, name, "g");
  ASSERT_NE(sub, nullptr);
  auto batch = sub->Fetch(10, GetParam().quiet_wait);
  ASSERT_TRUE(batch.ok()) << batch.status();
  EXPECT_TRUE(batch->empty()) << "a refused envelope was stored";
}

TEST_P(EventStreamConformance, MalformedEnvelopeOnTheWireIsDeadLetteredWithTheValidatorsReason) {
  const BackendUnderTest& backend = GetParam();
  if (!backend.write_raw) GTEST_SKIP() << "backend has no raw wire writer (write_raw)";
  std::unique_ptr<EventStream> stream = MakeStream(backend);
  ASSERT_NE(stream, nullptr);
  const std::string name = UniqueStreamName("malformed");
  // Joined first: backends that create the stream on Subscribe then hold what is written.
  auto sub = Join(*stream, name, "workers");
  ASSERT_NE(sub, nullptr);
  std::multiset<std::string> expected_reasons;
  for (const Event& event : MalformedEnvelopes()) {
    expected_reasons.insert(ExpectedReason(event));
    ASSERT_TRUE(backend.write_raw(name, event).ok());
  }
  Event valid = MakeEvent("io.eventbus.conformance.valid", "/conformance", "fine");
  SetEventTime(valid, absl::FromUnixSeconds(1'700'000'000));
  ASSERT_TRUE(backend.write_raw(name, valid).ok());

  // Only the valid event is handed out; the malformed ones never are.
  std::vector<Delivery> got = CollectAndAck(backend, *sub, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].event.id(), valid.id());
  auto more = sub->Fetch(10, backend.quiet_wait);
  ASSERT_TRUE(more.ok()) << more.status();
  EXPECT_TRUE(more->empty()) << "a malformed envelope was handed out: " << (*more)[0].event.id();

  // Each is a dead letter (a valid event the DLQ's readers can fetch) whose reason is the
  // validator's, word for word, on every backend.
  SubscribeOptions options;
  options.stream = name;
  auto dlq = Join(*stream, DeadLetterStreamName(options), "dlq-readers");
  ASSERT_NE(dlq, nullptr);
  std::vector<Delivery> dead =
      CollectAndAck(backend, *dlq, static_cast<int>(expected_reasons.size()));
  std::multiset<std::string> reasons;
  for (const Delivery& d : dead) {
    const auto& headers = d.event.headers();
    auto reason = headers.find(std::string(kDlqReasonHeader));
    ASSERT_NE(reason, headers.end());
    reasons.insert(reason->second);
    EXPECT_EQ(d.event.type(), "io.eventbus.malformed");
    EXPECT_EQ(headers.at(std::string(kDlqOriginStreamHeader)), name);
    EXPECT_EQ(headers.at(std::string(kDlqOriginGroupHeader)), "workers");
  }
  EXPECT_EQ(reasons, expected_reasons);
}

}  // namespace
}  // namespace eventbus::conformance
