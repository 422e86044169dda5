// Memory-backend behaviour beyond the conformance suite: bounds, leases, stale handles,
// virtual-time wake-ups, registration.
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/util/message_differencer.h"
#include "eventbus/clock.h"
#include "eventbus/memory/memory_event_stream.h"
#include "eventbus/registry.h"
#include "gtest/gtest.h"

namespace eventbus::memory {
namespace {

SubscribeOptions Options(std::string consumer, absl::Duration ack_wait = absl::ZeroDuration()) {
  SubscribeOptions options;
  options.stream = "s";
  options.group = "g";
  options.consumer = std::move(consumer);
  options.ack_wait = ack_wait;
  return options;
}

std::vector<Delivery> FetchNow(Subscription& sub, int max = 100) {
  auto got = sub.Fetch(max, absl::ZeroDuration());
  EXPECT_TRUE(got.ok()) << got.status();
  return got.ok() ? *got : std::vector<Delivery>{};
}

TEST(MemoryBackend, FullStreamRefusesWithResourceExhaustedUntilAcked) {
  ManualClock clock;
  auto stream = NewMemoryEventStream(&clock, {.max_stream_events = 3});
  auto sub = *stream->Subscribe(Options("c"));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(stream->Publish("s", MakeEvent("t", "/s")).ok());
  absl::Status full = stream->Publish("s", MakeEvent("t", "/s"));
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(full.message().find("max.stream.events=3"), absl::string_view::npos) << full;
  auto got = FetchNow(*sub);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(stream->Publish("s", MakeEvent("t", "/s")).code(), absl::StatusCode::kResourceExhausted)
      << "delivered but unacked events still count";
  ASSERT_TRUE(sub->Ack(got[0]).ok());
  EXPECT_TRUE(stream->Publish("s", MakeEvent("t", "/s")).ok()) << "an ack makes room";
}

TEST(MemoryBackend, GroupCreatedLaterSeesTheHistoryUntilRoomIsNeeded) {
  auto stream = NewMemoryEventStream(nullptr, {.max_stream_events = 2});
  auto early = *stream->Subscribe(Options("c"));
  ASSERT_TRUE(stream->Publish("s", MakeEvent("first", "/s")).ok());
  ASSERT_TRUE(early->Ack(FetchNow(*early).at(0)).ok());
  SubscribeOptions late_options = Options("c");
  late_options.group = "late";
  auto late = *stream->Subscribe(late_options);
  auto history = FetchNow(*late);
  ASSERT_EQ(history.size(), 1u) << "settled by the only group, but no room was needed yet";
  EXPECT_EQ(history[0].event.type(), "first");
}

TEST(MemoryBackend, ByteBoundCountsEventSize) {
  auto stream = NewMemoryEventStream(nullptr, {.max_stream_bytes = 1000});
  auto sub = *stream->Subscribe(Options("c"));  // a group holds the events it has not settled
  EXPECT_TRUE(stream->Publish("s", MakeEvent("t", "/s", std::string(500, 'x'))).ok());
  EXPECT_EQ(stream->Publish("s", MakeEvent("t", "/s", std::string(600, 'x'))).code(),
            absl::StatusCode::kResourceExhausted);
}

TEST(MemoryBackend, StreamWithoutGroupsDropsItsOldestEventsToMakeRoom) {
  // Results and dead letters nobody subscribes to must not make every publish fail.
  auto stream = NewMemoryEventStream(nullptr, {.max_stream_events = 3});
  for (int i = 1; i <= 5; ++i) {
    ASSERT_TRUE(stream->Publish("s", MakeEvent(absl::StrCat("e", i), "/s")).ok()) << i;
  }
  auto sub = *stream->Subscribe(Options("c"));  // from the oldest retained
  std::vector<Delivery> got = FetchNow(*sub);
  ASSERT_EQ(got.size(), 3u) << "just enough dropped: the bound, not less";
  EXPECT_EQ(got[0].event.type(), "e3");
  EXPECT_EQ(got[2].event.type(), "e5");
  // Now the stream has a group: its unsettled events are kept and the bound refuses again.
  EXPECT_EQ(stream->Publish("s", MakeEvent("e6", "/s")).code(),
            absl::StatusCode::kResourceExhausted);
}

TEST(MemoryBackend, StreamWithoutGroupsTrimsByBytesButRefusesAnEventLargerThanTheBound) {
  // Sizes count the envelope too, a few dozen bytes per event.
  auto stream = NewMemoryEventStream(nullptr, {.max_stream_bytes = 2000});
  ASSERT_TRUE(stream->Publish("s", MakeEvent("oldest", "/s", std::string(1000, 'x'))).ok());
  ASSERT_TRUE(stream->Publish("s", MakeEvent("old", "/s", std::string(500, 'x'))).ok());
  ASSERT_TRUE(stream->Publish("s", MakeEvent("new", "/s", std::string(500, 'x'))).ok());
  EXPECT_EQ(stream->Publish("s", MakeEvent("huge", "/s", std::string(2500, 'x'))).code(),
            absl::StatusCode::kResourceExhausted);
  auto sub = *stream->Subscribe(Options("c"));
  std::vector<Delivery> got = FetchNow(*sub);
  ASSERT_EQ(got.size(), 2u) << "the refused event dropped nothing";
  EXPECT_EQ(got[0].event.type(), "old");
  EXPECT_EQ(got[1].event.type(), "new");
}

TEST(MemoryBackend, ExpiredLeaseIsRedeliveredInVirtualTime) {
  ManualClock clock;
  auto stream = NewMemoryEventStream(&clock);
  auto slow = *stream->Subscribe(Options("slow", absl::Seconds(30)));
  auto other = *stream->Subscribe(Options("other", absl::Seconds(30)));
  ASSERT_TRUE(stream->Publish("s", MakeEvent("t", "/s")).ok());
  auto held = FetchNow(*slow);
  ASSERT_EQ(held.size(), 1u);
  clock.Advance(absl::Seconds(29));
  EXPECT_TRUE(FetchNow(*other).empty()) << "lease not expired yet";
  ASSERT_TRUE(slow->Extend(held[0]).ok());
  clock.Advance(absl::Seconds(29));
  EXPECT_TRUE(FetchNow(*other).empty()) << "Extend restarted the lease";
  clock.Advance(absl::Seconds(2));
  auto redelivered = FetchNow(*other);
  ASSERT_EQ(redelivered.size(), 1u);
  EXPECT_EQ(redelivered[0].delivery_count, 2);
  EXPECT_EQ(slow->Ack(held[0]).code(), absl::StatusCode::kFailedPrecondition)
      << "the stale handle of the expired lease must not ack";
  EXPECT_TRUE(other->Ack(redelivered[0]).ok());
}

TEST(MemoryBackend, ReclaimedDeliveryCannotBeSettledByItsFormerHolder) {
  ManualClock clock;
  auto stream = NewMemoryEventStream(&clock);
  auto a = *stream->Subscribe(Options("a"));
  auto b = *stream->Subscribe(Options("b"));
  ASSERT_TRUE(stream->Publish("s", MakeEvent("t", "/s")).ok());
  auto held = FetchNow(*a);
  ASSERT_EQ(held.size(), 1u);
  clock.Advance(absl::Minutes(5));
  auto taken = *b->Reclaim(absl::Minutes(5), 10);
  ASSERT_EQ(taken.size(), 1u);
  EXPECT_EQ(a->Nack(held[0], absl::ZeroDuration()).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(a->DeadLetter(held[0], "x").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(b->Ack(taken[0]).ok());
  EXPECT_EQ(b->Ack(taken[0]).code(), absl::StatusCode::kFailedPrecondition) << "double ack";
}

TEST(MemoryBackend, BlockedFetchWakesWhenVirtualTimeMakesAnEventDue) {
  ManualClock clock;
  auto stream = NewMemoryEventStream(&clock);
  auto sub = *stream->Subscribe(Options("c"));
  ASSERT_TRUE(stream->Publish("s", MakeEvent("t", "/s")).ok());
  auto first = FetchNow(*sub);
  ASSERT_EQ(first.size(), 1u);
  ASSERT_TRUE(sub->Nack(first[0], absl::Hours(1)).ok());
  std::vector<Delivery> woken;
  std::thread fetcher([&] {
    auto got = sub->Fetch(1, absl::Seconds(30));
    if (got.ok()) woken = *got;
  });
  // The fetcher blocks (real time) until the virtual hour passes.
  const absl::Time started = absl::Now();
  clock.Advance(absl::Hours(1));
  fetcher.join();
  ASSERT_EQ(woken.size(), 1u);
  EXPECT_LT(absl::Now() - started, absl::Seconds(10)) << "woken by the advance, not the timeout";
}

TEST(MemoryBackend, BlockedFetchWakesOnPublishAndOnClose) {
  auto stream = NewMemoryEventStream();
  auto sub = *stream->Subscribe(Options("c"));
  std::thread publisher([&] { ASSERT_TRUE(stream->Publish("s", MakeEvent("t", "/s")).ok()); });
  auto got = sub->Fetch(1, absl::Seconds(30));
  publisher.join();
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->size(), 1u);
  std::thread closer([&] { ASSERT_TRUE(sub->Close().ok()); });
  auto after_close = sub->Fetch(1, absl::Seconds(30));
  closer.join();
  EXPECT_TRUE(!after_close.ok() || after_close->empty());
}

TEST(MemoryBackend, NewGroupCanStartAtTheEnd) {
  auto stream = NewMemoryEventStream();
  ASSERT_TRUE(stream->Publish("s", MakeEvent("old", "/s")).ok());
  SubscribeOptions options = Options("c");
  options.start_from_oldest = false;
  auto sub = *stream->Subscribe(options);
  ASSERT_TRUE(stream->Publish("s", MakeEvent("new", "/s")).ok());
  auto got = FetchNow(*sub);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].event.type(), "new");
}

// The backend keeps its own encoding of each event for redeliveries and later groups (the first
// delivery gets the published object itself); every field must survive it.
TEST(MemoryBackend, StoredFormCarriesEveryField) {
  Event event = MakeEvent("t", "/s", std::string("bin\0ary \xff\xfe", 11));
  event.set_subject("subject");
  event.set_data_content_type("application/octet-stream");
  event.set_data_schema("https://example.com/schema");
  event.set_key("key-\xc3\xa9");
  (*event.mutable_headers())["traceparent"] = "00-abc-def-01";
  (*event.mutable_headers())["empty"] = "";
  ASSERT_TRUE(NormalizeForPublish(event, absl::FromUnixNanos(1'700'000'000'123'456'789)).ok());
  // A field added to Event must be set here, so the comparisons below cover it.
  const auto* descriptor = Event::descriptor();
  const auto* reflection = Event::GetReflection();
  for (int i = 0; i < descriptor->field_count(); ++i) {
    const auto* field = descriptor->field(i);
    const bool set = field->is_repeated() ? reflection->FieldSize(event, field) > 0
                                          : reflection->HasField(event, field);
    EXPECT_TRUE(set) << "set " << field->name() << " in this test (and in EventCodec)";
  }

  ManualClock clock;
  auto stream = NewMemoryEventStream(&clock);
  auto sub = *stream->Subscribe(Options("c"));
  ASSERT_TRUE(stream->Publish("s", event).ok());
  auto first = FetchNow(*sub);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(first[0].event, event))
      << first[0].event.DebugString();
  ASSERT_TRUE(sub->Nack(first[0], absl::ZeroDuration()).ok());
  auto again = FetchNow(*sub);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(again[0].event, event))
      << again[0].event.DebugString();
  SubscribeOptions late = Options("c");
  late.group = "late";
  auto late_sub = *stream->Subscribe(late);
  auto history = FetchNow(*late_sub);
  ASSERT_EQ(history.size(), 1u);
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(history[0].event, event))
      << history[0].event.DebugString();
}

// Acked leases leave stale elements in the lease index, which is compacted as they pile up:
// the live leases (one of them extended) must survive that.
TEST(MemoryBackend, LeasesSurviveIndexCompaction) {
  ManualClock clock;
  auto stream = NewMemoryEventStream(&clock);
  auto sub = *stream->Subscribe(Options("c", absl::Seconds(30)));
  auto other = *stream->Subscribe(Options("other", absl::Seconds(30)));
  ASSERT_TRUE(stream->Publish("s", MakeEvent("held", "/s")).ok());
  auto held = FetchNow(*sub);
  ASSERT_EQ(held.size(), 1u);
  for (int i = 0; i < 5000; ++i) {
    ASSERT_TRUE(stream->Publish("s", MakeEvent("quick", "/s")).ok());
    auto got = FetchNow(*sub, 1);
    ASSERT_EQ(got.size(), 1u);
    ASSERT_TRUE(sub->Ack(got[0]).ok());
    if (i == 2500) {
      clock.Advance(absl::Seconds(20));
      ASSERT_TRUE(sub->Extend(held[0]).ok());
    }
  }
  clock.Advance(absl::Seconds(15));  // past the first lease, not the extended one
  EXPECT_TRUE(FetchNow(*other).empty());
  clock.Advance(absl::Seconds(16));
  auto redelivered = FetchNow(*other);
  ASSERT_EQ(redelivered.size(), 1u);
  EXPECT_EQ(redelivered[0].event.type(), "held");
  EXPECT_EQ(redelivered[0].delivery_count, 2);
}

TEST(MemoryBackend, CloseReturnsOnlyWhatIsStillHeldInOrder) {
  auto stream = NewMemoryEventStream();
  auto a = *stream->Subscribe(Options("a"));
  for (int i = 1; i <= 5; ++i) {
    ASSERT_TRUE(stream->Publish("s", MakeEvent(absl::StrCat("t", i), "/s")).ok());
  }
  auto got = FetchNow(*a);
  ASSERT_EQ(got.size(), 5u);
  ASSERT_TRUE(a->Ack(got[1]).ok());
  ASSERT_TRUE(a->Ack(got[3]).ok());
  ASSERT_TRUE(a->Close().ok());
  auto b = *stream->Subscribe(Options("b"));
  auto returned = FetchNow(*b);
  ASSERT_EQ(returned.size(), 3u);
  EXPECT_EQ(returned[0].event.type(), "t1");
  EXPECT_EQ(returned[1].event.type(), "t3");
  EXPECT_EQ(returned[2].event.type(), "t5");
  for (const auto& delivery : returned) EXPECT_EQ(delivery.delivery_count, 2);
}

TEST(MemoryBackend, RejectsNonPositiveBatchSizes) {
  auto stream = NewMemoryEventStream();
  auto sub = *stream->Subscribe(Options("c"));
  EXPECT_EQ(sub->Fetch(0, absl::ZeroDuration()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(sub->Reclaim(absl::ZeroDuration(), -1).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(MemoryBackend, RegistersAndReadsItsOptionsFromTheEnvironment) {
  BackendRegistry registry;
  ASSERT_TRUE(RegisterMemoryBackend(registry).ok());
  ASSERT_TRUE(RegisterMemoryBackend(registry).ok()) << "idempotent";
  auto made = registry.CreateFromEnvironment(
      {{"EVENT_STREAM_TYPE", "memory"}, {"MEMORY_OPTION_MAX_STREAM_EVENTS", "1"}});
  ASSERT_TRUE(made.ok()) << made.status();
  auto sub = *(*made)->Subscribe(Options("c"));
  ASSERT_TRUE((*made)->Publish("s", MakeEvent("t", "/s")).ok());
  EXPECT_EQ((*made)->Publish("s", MakeEvent("t", "/s")).code(),
            absl::StatusCode::kResourceExhausted);

  auto bad = registry.CreateFromEnvironment({{"MEMORY_OPTION_MAX_STREAM_EVENTS", "lots"}});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("max.stream.events"), absl::string_view::npos);
  auto unknown = registry.CreateFromEnvironment({{"MEMORY_OPTION_COLOUR", "blue"}});
  EXPECT_NE(unknown.status().message().find("colour"), absl::string_view::npos)
      << unknown.status();
}

}  // namespace
}  // namespace eventbus::memory
