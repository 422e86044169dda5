// Conformance cases of Subscription::WaitReady (a file of its own, part of the same suite):
// once it returns OK, what is published is received, also by a group that starts at the
// newest event.

#include <memory>
#include <string>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "eventbus/conformance/conformance.h"

namespace eventbus::conformance {

int LinkReadinessCases() { return 1; }

namespace {

// A rebalance on a real broker takes seconds; this bounds a wait that normally ends sooner.
constexpr absl::Duration kReadyTimeout = absl::Seconds(60);

std::string UniqueReadinessName(absl::string_view prefix) {
  static absl::BitGen gen;  // only the test thread calls this
  return absl::StrFormat("conf.ready.%s.%016x", prefix, absl::Uniform<uint64_t>(gen));
}

Event Numbered(absl::string_view what) {
  return MakeEvent("io.eventbus.conformance", "/conformance/readiness", what);
}

std::unique_ptr<Subscription> SubscribeAtNewest(EventStream& stream, const std::string& name,
                                                const std::string& group,
                                                const std::string& consumer) {
  SubscribeOptions options;
  options.stream = name;
  options.group = group;
  options.consumer = consumer;
  options.start_from_oldest = false;
  auto sub = stream.Subscribe(options);
  EXPECT_TRUE(sub.ok()) << sub.status();
  return sub.ok() ? std::move(sub).value() : nullptr;
}

// Fetches until one delivery arrives or `patience` ran out.
std::vector<Delivery> FetchOne(Subscription& sub, absl::Duration wait, absl::Duration patience) {
  const absl::Time deadline = absl::Now() + patience;
  while (absl::Now() < deadline) {
    auto batch = sub.Fetch(10, wait);
    EXPECT_TRUE(batch.ok()) << batch.status();
    if (!batch.ok() || !batch->empty()) return batch.ok() ? *std::move(batch) : std::vector<Delivery>{};
  }
  return {};
}

TEST_P(EventStreamConformance, WaitReadyThenPublishedEventsReachAGroupStartingAtTheNewest) {
  auto made = GetParam().make_stream();
  ASSERT_TRUE(made.ok()) << made.status();
  EventStream& stream = **made;
  const std::string name = UniqueReadinessName("newest");
  // Published before the group exists: a group starting at the newest never sees it.
  ASSERT_TRUE(stream.PublishAndWait(name, Numbered("before")).ok());
  auto sub = SubscribeAtNewest(stream, name, UniqueReadinessName("g"), "c1");
  ASSERT_NE(sub, nullptr);

  ASSERT_TRUE(sub->WaitReady(kReadyTimeout).ok());
  // Published right after readiness: it must be delivered (a backend that resolves "newest"
  // only when it starts fetching, after this publish, would skip it).
  auto receipt = stream.PublishAndWait(name, Numbered("after"));
  ASSERT_TRUE(receipt.ok()) << receipt.status();

  std::vector<Delivery> got = FetchOne(*sub, GetParam().fetch_wait, absl::Seconds(30));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].event.data(), "after");
  EXPECT_EQ(got[0].id, receipt->id);
  ASSERT_TRUE(sub->Ack(got[0]).ok());
  ASSERT_TRUE(sub->Close().ok());
}

TEST_P(EventStreamConformance, WaitReadyCanBeRepeatedAndReturnsAtOnceWhenReady) {
  auto made = GetParam().make_stream();
  ASSERT_TRUE(made.ok()) << made.status();
  const std::string name = UniqueReadinessName("repeat");
  auto sub = SubscribeAtNewest(**made, name, UniqueReadinessName("g"), "c1");
  ASSERT_NE(sub, nullptr);
  ASSERT_TRUE(sub->WaitReady(kReadyTimeout).ok());
  const absl::Time start = absl::Now();
  absl::Status again = sub->WaitReady(absl::ZeroDuration());
  EXPECT_TRUE(again.ok()) << again;
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  ASSERT_TRUE(sub->Close().ok());
}

}  // namespace
}  // namespace eventbus::conformance
