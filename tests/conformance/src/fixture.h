#pragma once
// What the conformance cases share (conformance_suite.cc, failure_cases.cc and later files):
// the per-case fixture, fresh names, and comparisons. Private to the suite's sources.

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "eventbus/conformance/conformance.h"
#include "report.h"

namespace eventbus::conformance {

inline std::string UniqueName(absl::string_view prefix) {
  static absl::BitGen gen;
  static std::mutex mu;
  std::lock_guard lock(mu);
  return absl::StrFormat("conf.%s.%016x", prefix, absl::Uniform<uint64_t>(gen));
}

// Destroys the subscriptions AbandonSubscription kept (the case that crashed them is over).
void BuryAbandonedSubscriptions();

class Fixture {
 public:
  explicit Fixture(const BackendUnderTest& backend) : backend_(backend) { NoteBackend(backend); }
  ~Fixture() { BuryAbandonedSubscriptions(); }

  EventStream& stream() {
    if (stream_ == nullptr) stream_ = MakeStream();
    return *stream_;
  }

  std::unique_ptr<EventStream> MakeStream() {
    auto made = backend_.make_stream();
    EXPECT_TRUE(made.ok()) << made.status();
    if (!made.ok()) return nullptr;
    return std::move(made).value();
  }

  Capabilities caps() {
    const Capabilities caps = stream().capabilities();
    NoteCapabilities(backend_.name, caps);
    return caps;
  }

  void LetTimePass(absl::Duration d) {
    if (backend_.let_time_pass) {
      backend_.let_time_pass(d);
    } else {
      absl::SleepFor(d);
    }
  }

  std::unique_ptr<Subscription> Subscribe(EventStream& on, const std::string& stream_name,
                                          const std::string& group, const std::string& consumer) {
    SubscribeOptions options;
    options.stream = stream_name;
    options.group = group;
    options.consumer = consumer;
    auto sub = on.Subscribe(options);
    EXPECT_TRUE(sub.ok()) << sub.status();
    if (!sub.ok()) return nullptr;
    return std::move(sub).value();
  }
  std::unique_ptr<Subscription> Subscribe(const std::string& stream_name, const std::string& group,
                                          const std::string& consumer) {
    return Subscribe(stream(), stream_name, group, consumer);
  }

  Event NumberedEvent(int n, absl::string_view key = "") {
    Event event = MakeEvent("io.eventbus.conformance", "/conformance", absl::StrCat("payload-", n));
    event.set_subject(absl::StrCat(n));
    event.set_key(std::string(key));
    return event;
  }

  // Publishes and waits until every event is confirmed; returns them as published.
  std::vector<Event> PublishAll(EventStream& on, const std::string& stream_name,
                                std::vector<Event> events) {
    std::atomic<int> confirmed{0};
    std::atomic<int> failed{0};
    for (Event& event : events) {
      if (event.id().empty()) event.set_id(NewEventId());
      absl::Status queued = on.Publish(stream_name, event, [&](absl::StatusOr<PublishReceipt> r) {
        (r.ok() ? confirmed : failed)++;
        EXPECT_TRUE(r.ok()) << r.status();
      });
      EXPECT_TRUE(queued.ok()) << queued;
      if (!queued.ok()) failed++;
    }
    absl::Status flushed = on.Flush(absl::Seconds(30));
    EXPECT_TRUE(flushed.ok()) << flushed;
    EXPECT_EQ(confirmed.load(), static_cast<int>(events.size()));
    EXPECT_EQ(failed.load(), 0);
    return events;
  }
  std::vector<Event> PublishNumbered(const std::string& stream_name, int count,
                                     absl::string_view key = "") {
    std::vector<Event> events;
    for (int i = 0; i < count; ++i) events.push_back(NumberedEvent(i, key));
    return PublishAll(stream(), stream_name, std::move(events));
  }

  // Fetches until `count` deliveries arrived or the patience ran out.
  std::vector<Delivery> Collect(Subscription& sub, int count) {
    std::vector<Delivery> got;
    const absl::Time deadline = absl::Now() + patience();
    while (static_cast<int>(got.size()) < count && absl::Now() < deadline) {
      auto batch = sub.Fetch(count - static_cast<int>(got.size()), backend_.fetch_wait);
      EXPECT_TRUE(batch.ok()) << batch.status();
      if (!batch.ok()) break;
      for (auto& d : *batch) got.push_back(std::move(d));
    }
    return got;
  }

  // Reclaims (after letting the idle time pass) until `count` deliveries came back.
  std::vector<Delivery> CollectReclaimed(Subscription& sub, int count) {
    std::vector<Delivery> got;
    const absl::Time deadline = absl::Now() + patience();
    LetTimePass(backend_.reclaim_idle);
    while (static_cast<int>(got.size()) < count && absl::Now() < deadline) {
      auto reclaimed = sub.Reclaim(backend_.reclaim_idle, count - static_cast<int>(got.size()));
      EXPECT_TRUE(reclaimed.ok()) << reclaimed.status();
      if (!reclaimed.ok()) break;
      for (auto& d : *reclaimed) got.push_back(std::move(d));
      if (static_cast<int>(got.size()) < count) {
        auto fetched = sub.Fetch(count - static_cast<int>(got.size()), backend_.fetch_wait);
        EXPECT_TRUE(fetched.ok()) << fetched.status();
        if (fetched.ok()) for (auto& d : *fetched) got.push_back(std::move(d));
      }
    }
    return got;
  }

  void ExpectNothing(Subscription& sub, absl::string_view why) {
    ExpectNothing(sub, why, backend_.quiet_wait);
  }
  void ExpectNothing(Subscription& sub, absl::string_view why, absl::Duration listen) {
    auto batch = sub.Fetch(10, listen);
    ASSERT_TRUE(batch.ok()) << batch.status();
    EXPECT_TRUE(batch->empty()) << why << ": got " << batch->size() << " deliveries, first id "
                                << (*batch)[0].id << " count " << (*batch)[0].delivery_count;
  }

  void AckAll(Subscription& sub, const std::vector<Delivery>& deliveries) {
    for (const auto& d : deliveries) {
      absl::Status acked = sub.Ack(d);
      EXPECT_TRUE(acked.ok()) << acked;
    }
  }

  absl::Duration patience() const {
    return std::max(backend_.fetch_wait * 10, absl::Seconds(5));
  }
  const BackendUnderTest& backend() const { return backend_; }

 private:
  const BackendUnderTest& backend_;
  std::unique_ptr<EventStream> stream_;
};

inline std::set<std::string> IdsOf(const std::vector<Delivery>& deliveries) {
  std::set<std::string> ids;
  for (const auto& d : deliveries) ids.insert(d.event.id());
  return ids;
}
inline std::set<std::string> IdsOf(const std::vector<Event>& events) {
  std::set<std::string> ids;
  for (const auto& e : events) ids.insert(e.id());
  return ids;
}

// A capability is declared when its flag is set, or its window is not zero.
inline bool Declares(bool flag) { return flag; }
inline bool Declares(absl::Duration window) { return window > absl::ZeroDuration(); }

#define REQUIRE_CAPABILITY(fixture, capability)                                         \
  if (!Declares((fixture).caps().capability)) {                                         \
    GTEST_SKIP() << "backend does not declare Capabilities::" #capability;              \
  }

// Skips a case whose hook the backend did not give; the reason names the hook.
#define REQUIRE_HOOK(fixture, hook)                                               \
  if (!(fixture).backend().hook) {                                                \
    GTEST_SKIP() << "backend gives no hook BackendUnderTest::" #hook;             \
  }

// Field by field rather than with MessageDifferencer: reflection over the map field crashes
// in TSan builds against Debian's (uninstrumented) libprotobuf.
inline void ExpectSameEvent(const Event& got, const Event& want) {
  EXPECT_EQ(got.id(), want.id());
  EXPECT_EQ(got.source(), want.source());
  EXPECT_EQ(got.spec_version(), want.spec_version());
  EXPECT_EQ(got.type(), want.type());
  EXPECT_EQ(got.subject(), want.subject());
  EXPECT_EQ(got.has_time(), want.has_time());
  EXPECT_EQ(EventTime(got), EventTime(want));
  EXPECT_EQ(got.data_content_type(), want.data_content_type());
  EXPECT_EQ(got.data_schema(), want.data_schema());
  EXPECT_EQ(got.key(), want.key());
  EXPECT_EQ(got.data().size(), want.data().size());
  EXPECT_TRUE(got.data() == want.data()) << "data differs";
  std::map<std::string, std::string> got_headers(got.headers().begin(), got.headers().end());
  std::map<std::string, std::string> want_headers(want.headers().begin(), want.headers().end());
  EXPECT_EQ(got_headers, want_headers);
}

}  // namespace eventbus::conformance
