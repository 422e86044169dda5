// The failure-behaviour cases: what a backend does when a consumer crashes, the server
// restarts, the connection drops, a delay must be kept to the tolerance, an event keeps
// failing, or the publish queue is full. Cases that need a hook (BackendUnderTest::crash, ...)
// are skipped, naming it, when the backend gives none. tests/conformance/self_test holds a
// broken backend per case that the case must catch.

#include <algorithm>
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "eventbus/conformance/conformance.h"
#include "fixture.h"

namespace eventbus::conformance {

namespace {

std::mutex& AbandonedMu() {
  static auto* mu = new std::mutex();
  return *mu;
}
std::vector<std::unique_ptr<Subscription>>& Abandoned() {
  static auto* abandoned = new std::vector<std::unique_ptr<Subscription>>();
  return *abandoned;
}

}  // namespace

void AbandonSubscription(std::unique_ptr<Subscription> subscription) {
  std::lock_guard lock(AbandonedMu());
  Abandoned().push_back(std::move(subscription));
}

void BuryAbandonedSubscriptions() {
  std::vector<std::unique_ptr<Subscription>> buried;
  {
    std::lock_guard lock(AbandonedMu());
    buried.swap(Abandoned());
  }
  // Destroyed outside the lock: closing may talk to the server.
}

namespace {

// After a restart or a cut, a client may report Unavailable for a while: the contract's
// "transient, retry". Retries `op` until it gives another answer or `patience` has passed;
// counts the retries in `*retries`.
absl::Status RetryWhileUnavailable(const std::function<absl::Status()>& op, absl::Duration patience,
                                   int* retries) {
  const absl::Time deadline = absl::Now() + patience;
  for (;;) {
    absl::Status status = op();
    if (!absl::IsUnavailable(status) || absl::Now() >= deadline) return status;
    ++*retries;
    absl::SleepFor(absl::Milliseconds(50));
  }
}

// Publishes `events` one by one, retrying each that fails with Unavailable (its first try may
// still have been stored: a duplicate the consumer side counts; and the first publish after a
// failure may take the backend's whole publish timeout to fail). Adds the ids of the events
// whose publish succeeded to `accepted`; returns the retries.
int PublishRetryingUnavailable(Fixture& f, EventStream& on, const std::string& stream_name,
                               std::vector<Event>& events, std::set<std::string>& accepted) {
  int retries = 0;
  for (Event& event : events) {
    if (event.id().empty()) event.set_id(NewEventId());
    absl::Status published;
    for (int attempt = 0; attempt < 3; ++attempt) {
      published = RetryWhileUnavailable(
          [&] { return on.PublishAndWait(stream_name, event, f.patience()).status(); },
          f.patience(), &retries);
      if (!absl::IsUnavailable(published)) break;
      ++retries;
    }
    EXPECT_TRUE(published.ok()) << "publish after the failure: " << published;
    if (published.ok()) accepted.insert(event.id());
  }
  return retries;
}

// What the consumer side saw while recovering from a failure.
struct Recovery {
  std::map<std::string, int> deliveries;  // event id -> times delivered
  std::set<std::string> settled;          // acked after the failure
  int unavailable = 0;                    // Unavailable answers retried
};

// Fetches (and reclaims, where the backend takes over its own lost deliveries that way) on
// `sub`, acking everything, until every id of `want` is settled or the patience ran out.
void RecoverOn(Fixture& f, Subscription& sub, const std::set<std::string>& want,
               absl::Duration patience, Recovery& out) {
  const absl::Time deadline = absl::Now() + patience;
  auto complete = [&] {
    return std::all_of(want.begin(), want.end(),
                       [&](const std::string& id) { return out.settled.contains(id); });
  };
  int idle_rounds = 0;
  while (!complete() && absl::Now() < deadline) {
    auto batch = sub.Fetch(50, f.backend().fetch_wait);
    if (!batch.ok()) {
      EXPECT_TRUE(absl::IsUnavailable(batch.status())) << "fetch after the failure: "
                                                       << batch.status();
      if (!absl::IsUnavailable(batch.status())) return;
      ++out.unavailable;
      absl::SleepFor(absl::Milliseconds(50));
      continue;
    }
    std::vector<Delivery> got = std::move(*batch);
    if (got.empty() && ++idle_rounds % 2 == 0) {
      // Nothing new: what the failure left pending may need the idle time to pass.
      f.LetTimePass(f.backend().reclaim_idle);
      auto reclaimed = sub.Reclaim(f.backend().reclaim_idle, 50);
      if (reclaimed.ok()) {
        got = std::move(*reclaimed);
      } else if (absl::IsUnavailable(reclaimed.status())) {
        ++out.unavailable;
      } else {
        ADD_FAILURE() << "reclaim after the failure: " << reclaimed.status();
        return;
      }
    }
    for (const Delivery& d : got) {
      out.deliveries[d.event.id()]++;
      absl::Status acked = RetryWhileUnavailable([&] { return sub.Ack(d); }, f.patience(),
                                                 &out.unavailable);
      if (acked.ok()) out.settled.insert(d.event.id());
    }
  }
}

TEST_P(EventStreamConformance, ConsumerThatCrashesHoldingDeliveriesHasThemRunAgainAtASurvivor) {
  Fixture f(GetParam());
  REQUIRE_HOOK(f, crash);
  const std::string stream = UniqueName("crash");
  constexpr int kEvents = 6;
  auto sent = f.PublishNumbered(stream, kEvents);
  auto doomed = f.Subscribe(stream, "g", "doomed");
  ASSERT_NE(doomed, nullptr);
  auto held = f.Collect(*doomed, kEvents);
  ASSERT_EQ(held.size(), static_cast<size_t>(kEvents));
  auto survivor = f.Subscribe(stream, "g", "survivor");
  ASSERT_NE(survivor, nullptr);
  f.backend().crash(std::move(doomed));

  // Within min_idle + one reclaim interval: once the idle time has passed, two rounds of
  // (reclaim, fetch) must bring everything back. Backends that redeliver lost deliveries only
  // by themselves (a rebalance, an ack wait) get the patience instead.
  const bool reclaims = f.caps().reclaim_from_other_consumers;
  f.LetTimePass(f.backend().reclaim_idle);
  std::vector<Delivery> back;
  const absl::Time deadline = absl::Now() + f.patience();
  for (int round = 0; back.size() < held.size() && (reclaims ? round < 2 : absl::Now() < deadline);
       ++round) {
    const int missing = kEvents - static_cast<int>(back.size());
    if (reclaims) {
      auto reclaimed = survivor->Reclaim(f.backend().reclaim_idle, missing);
      ASSERT_TRUE(reclaimed.ok()) << reclaimed.status();
      for (auto& d : *reclaimed) back.push_back(std::move(d));
    }
    if (static_cast<int>(back.size()) == kEvents) break;
    auto fetched = survivor->Fetch(kEvents - static_cast<int>(back.size()), f.backend().fetch_wait);
    ASSERT_TRUE(fetched.ok()) << fetched.status();
    for (auto& d : *fetched) back.push_back(std::move(d));
  }
  EXPECT_EQ(IdsOf(back), IdsOf(sent)) << "deliveries of the crashed consumer were lost";
  std::set<std::string> held_ids;
  for (const Delivery& d : held) held_ids.insert(d.id);
  for (const Delivery& d : back) {
    EXPECT_TRUE(held_ids.contains(d.id)) << "unexpected delivery id " << d.id;
    EXPECT_GE(d.delivery_count, 2) << "the redelivery of " << d.id
                                   << " did not count the crashed attempt";
  }
  f.AckAll(*survivor, back);
  f.ExpectNothing(*survivor, "acked after the takeover");
}

TEST_P(EventStreamConformance, AfterAServerRestartAckedEventsStayAckedAndUnackedOnesComeBack) {
  Fixture f(GetParam());
  REQUIRE_HOOK(f, restart_server);
  REQUIRE_CAPABILITY(f, persistent);
  const std::string stream = UniqueName("restart");
  auto sub = f.Subscribe(stream, "g", "c1");
  ASSERT_NE(sub, nullptr);
  f.PublishNumbered(stream, 10);
  auto got = f.Collect(*sub, 10);
  ASSERT_EQ(got.size(), 10u);
  const std::vector<Delivery> acked(got.begin(), got.begin() + 5);
  const std::vector<Delivery> held(got.begin() + 5, got.end());
  f.AckAll(*sub, acked);

  const absl::Time restart_began = absl::Now();
  const absl::Status restarted = f.backend().restart_server();
  ASSERT_TRUE(restarted.ok()) << "restart_server: " << restarted;
  RecordProperty("restart_ms", absl::ToInt64Milliseconds(absl::Now() - restart_began));

  // Publishers resume by themselves (retrying Unavailable is the caller's part).
  std::vector<Event> after;
  for (int i = 10; i < 20; ++i) after.push_back(f.NumberedEvent(i));
  std::set<std::string> want;  // what the backend owes: accepted publishes and what was held
  const int publish_retries = PublishRetryingUnavailable(f, f.stream(), stream, after, want);

  // So does the consumer: what it held unsettled is given back (a handle the restart made
  // stale may be refused: then the backend owes the redelivery by itself).
  Recovery recovery;
  for (const Delivery& d : held) {
    const absl::Status nacked = RetryWhileUnavailable(
        [&] { return sub->Nack(d, absl::ZeroDuration()); }, f.patience(), &recovery.unavailable);
    EXPECT_TRUE(nacked.ok() || absl::IsFailedPrecondition(nacked) || absl::IsNotFound(nacked))
        << nacked;
  }
  for (const Delivery& d : held) want.insert(d.event.id());
  RecoverOn(f, *sub, want, f.patience() * 2, recovery);
  for (const std::string& id : want) {
    EXPECT_TRUE(recovery.settled.contains(id)) << "event " << id << " lost in the restart";
  }
  int acked_again = 0;
  for (const Delivery& d : acked) acked_again += recovery.deliveries.contains(d.event.id());
  if (!f.caps().duplicates_possible) {
    EXPECT_EQ(acked_again, 0) << "events acked before the restart were delivered again";
  }
  RecordProperty("acked_delivered_again", acked_again);
  RecordProperty("publish_retries", publish_retries);
  RecordProperty("unavailable_retries", recovery.unavailable);
  f.ExpectNothing(*sub, "everything was acked after the restart");
}

TEST_P(EventStreamConformance, AfterTheConnectionDropsNothingIsLostAndDuplicatesAreBounded) {
  Fixture f(GetParam());
  REQUIRE_HOOK(f, cut_connection);
  const std::string stream = UniqueName("cut");
  auto sub = f.Subscribe(stream, "g", "c1");
  ASSERT_NE(sub, nullptr);
  f.PublishNumbered(stream, 10);
  auto got = f.Collect(*sub, 10);
  ASSERT_EQ(got.size(), 10u);
  const std::vector<Delivery> acked(got.begin(), got.begin() + 5);
  const std::vector<Delivery> held(got.begin() + 5, got.end());
  f.AckAll(*sub, acked);

  const absl::Status cut = f.backend().cut_connection();
  ASSERT_TRUE(cut.ok()) << "cut_connection: " << cut;

  std::vector<Event> after;
  for (int i = 10; i < 20; ++i) after.push_back(f.NumberedEvent(i));
  std::set<std::string> want;  // what the backend owes: accepted publishes and what was held
  const int publish_retries = PublishRetryingUnavailable(f, f.stream(), stream, after, want);
  Recovery recovery;
  for (const Delivery& d : held) {
    const absl::Status nacked = RetryWhileUnavailable(
        [&] { return sub->Nack(d, absl::ZeroDuration()); }, f.patience(), &recovery.unavailable);
    EXPECT_TRUE(nacked.ok() || absl::IsFailedPrecondition(nacked) || absl::IsNotFound(nacked))
        << nacked;
  }
  for (const Delivery& d : held) want.insert(d.event.id());
  RecoverOn(f, *sub, want, f.patience() * 2, recovery);
  for (const std::string& id : want) {
    EXPECT_TRUE(recovery.settled.contains(id)) << "event " << id << " lost when the connection dropped";
  }
  // Duplicates: an acked event delivered again, or an event delivered more than once after
  // the cut. Bounded by what was in flight (held) plus the publishes that had to be retried.
  int duplicates = 0;
  for (const auto& [id, n] : recovery.deliveries) duplicates += n - 1;
  for (const Delivery& d : acked) duplicates += recovery.deliveries.contains(d.event.id());
  const int bound = static_cast<int>(held.size()) + publish_retries;
  if (!f.caps().duplicates_possible) {
    EXPECT_LE(duplicates, bound) << "more duplicates than events in flight at the cut";
  }
  RecordProperty("duplicates", duplicates);
  RecordProperty("publish_retries", publish_retries);
  RecordProperty("unavailable_retries", recovery.unavailable);
  f.ExpectNothing(*sub, "everything was acked after the cut");
}

TEST_P(EventStreamConformance, DelayedNackComesBackWithinTheDeclaredTolerance) {
  Fixture f(GetParam());
  std::vector<absl::Duration> delays = {f.backend().nack_delay};
  if (f.backend().long_nack_delay > absl::ZeroDuration()) {
    delays.push_back(f.backend().long_nack_delay);
  }
  const bool virtual_time = static_cast<bool>(f.backend().let_time_pass);
  for (const absl::Duration delay : delays) {
    SCOPED_TRACE(absl::StrCat("delay ", absl::FormatDuration(delay)));
    const std::string stream = UniqueName("tolerance");
    auto sent = f.PublishNumbered(stream, 1);
    auto sub = f.Subscribe(stream, "g", "c1");
    ASSERT_NE(sub, nullptr);
    auto first = f.Collect(*sub, 1);
    ASSERT_EQ(first.size(), 1u);
    const absl::Time nacked_at = absl::Now();
    ASSERT_TRUE(sub->Nack(first[0], delay).ok());
    // Just before the delay is up it must still be held back...
    const absl::Duration margin = delay / 10;
    f.LetTimePass(delay - margin);
    f.ExpectNothing(*sub, "redelivered before its delay", std::min(f.backend().quiet_wait, margin / 2));
    // ...and once it is up, come back within the tolerance (on a virtual clock: at once).
    f.LetTimePass(margin);
    std::vector<Delivery> second;
    if (virtual_time) {
      auto batch = sub->Fetch(1, f.backend().fetch_wait);
      ASSERT_TRUE(batch.ok()) << batch.status();
      second = std::move(*batch);
    } else {
      second = f.Collect(*sub, 1);
    }
    ASSERT_EQ(second.size(), 1u) << "not redelivered once the delay was up";
    EXPECT_EQ(second[0].event.id(), sent[0].id());
    EXPECT_EQ(second[0].delivery_count, 2);
    if (!virtual_time) {
      const absl::Duration took = absl::Now() - nacked_at;
      EXPECT_GE(took, delay) << "redelivered early";
      EXPECT_LE(took, delay + f.backend().nack_tolerance)
          << "redelivered " << (took - delay) << " late; declared tolerance "
          << f.backend().nack_tolerance;
    }
    f.AckAll(*sub, second);
  }
}

TEST_P(EventStreamConformance, AnEventNackedNTimesReachesTheDeadLetterStreamWithCountAndReason) {
  Fixture f(GetParam());
  constexpr int kNacks = 3;
  const std::string stream = UniqueName("nackdlq");
  Event poison = f.NumberedEvent(0);
  (*poison.mutable_headers())["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  auto sent = f.PublishAll(f.stream(), stream, {poison});
  auto sub = f.Subscribe(stream, "workers", "c1");
  ASSERT_NE(sub, nullptr);
  std::string delivery_id;
  Event as_delivered;
  for (int attempt = 1; attempt <= kNacks; ++attempt) {
    auto got = f.Collect(*sub, 1);
    ASSERT_EQ(got.size(), 1u) << "attempt " << attempt << " never came";
    EXPECT_EQ(got[0].delivery_count, attempt) << "the delivery count was lost";
    if (attempt == 1) {
      delivery_id = got[0].id;
      as_delivered = got[0].event;  // normalized by Publish (time, spec version)
    }
    EXPECT_EQ(got[0].id, delivery_id);
    ASSERT_TRUE(sub->Nack(got[0], absl::ZeroDuration()).ok());
  }
  auto last = f.Collect(*sub, 1);
  ASSERT_EQ(last.size(), 1u);
  EXPECT_EQ(last[0].delivery_count, kNacks + 1) << "the delivery count was lost";
  const std::string reason = absl::StrCat("failed ", kNacks + 1, " times: upstream said \"no\"");
  ASSERT_TRUE(sub->DeadLetter(last[0], reason).ok());

  SubscribeOptions options;
  options.stream = stream;
  auto dlq = f.Subscribe(DeadLetterStreamName(options), "dlq-readers", "r1");
  ASSERT_NE(dlq, nullptr);
  auto dead = f.Collect(*dlq, 1);
  ASSERT_EQ(dead.size(), 1u);
  const auto& headers = dead[0].event.headers();
  ASSERT_TRUE(headers.contains(std::string(kDlqDeliveryCountHeader)));
  EXPECT_EQ(headers.at(std::string(kDlqDeliveryCountHeader)), absl::StrCat(kNacks + 1));
  ASSERT_TRUE(headers.contains(std::string(kDlqReasonHeader)));
  EXPECT_EQ(headers.at(std::string(kDlqReasonHeader)), reason);
  EXPECT_EQ(headers.at(std::string(kDlqOriginIdHeader)), delivery_id);
  Event original = dead[0].event;
  for (auto name : {kDlqReasonHeader, kDlqOriginStreamHeader, kDlqOriginIdHeader,
                    kDlqOriginGroupHeader, kDlqDeliveryCountHeader}) {
    original.mutable_headers()->erase(std::string(name));
  }
  ExpectSameEvent(original, as_delivered);
  EXPECT_EQ(original.id(), sent[0].id());
  f.ExpectNothing(*sub, "a dead-lettered event was redelivered");
}

TEST_P(EventStreamConformance, PublishUnderBackPressureFailsWithResourceExhaustedAndLosesNothing) {
  Fixture f(GetParam());
  REQUIRE_HOOK(f, make_bounded_stream);
  auto made = f.backend().make_bounded_stream();
  ASSERT_TRUE(made.ok()) << made.status();
  std::unique_ptr<EventStream> bounded = std::move(made).value();
  const std::string stream = UniqueName("backpressure");
  // A group that reads nothing yet: the backend may not make room by dropping its events.
  auto sub = f.Subscribe(*bounded, stream, "g", "c1");
  ASSERT_NE(sub, nullptr);

  std::mutex mu;
  std::set<std::string> accepted;
  int exhausted = 0;
  std::vector<absl::Status> other_failures;
  auto note = [&](const std::string& id, const absl::Status& status) {
    std::lock_guard lock(mu);
    if (status.ok()) {
      accepted.insert(id);
    } else if (absl::IsResourceExhausted(status)) {
      ++exhausted;
    } else {
      other_failures.push_back(status);
    }
  };
  auto saw_exhausted = [&] {
    std::lock_guard lock(mu);
    return exhausted > 0;
  };
  constexpr int kMaxAttempts = 10'000;  // bounded streams hold a few hundred
  int attempts = 0;
  for (; attempts < kMaxAttempts && !saw_exhausted(); ++attempts) {
    Event event = f.NumberedEvent(attempts);
    event.set_id(NewEventId());
    const std::string id = event.id();
    absl::Status queued = bounded->Publish(
        stream, std::move(event), [&, id](absl::StatusOr<PublishReceipt> r) { note(id, r.status()); });
    if (!queued.ok()) note(id, queued);
  }
  ASSERT_TRUE(bounded->Flush(absl::Seconds(30)).ok());
  {
    std::lock_guard lock(mu);
    EXPECT_GT(exhausted, 0) << attempts << " publishes and never ResourceExhausted";
    for (const absl::Status& s : other_failures) ADD_FAILURE() << "a full queue must fail with ResourceExhausted: " << s;
    RecordProperty("accepted_before_full", static_cast<int>(accepted.size()));
  }

  // Everything accepted is there, and consuming it lifts the back-pressure.
  std::set<std::string> seen;
  const absl::Time deadline = absl::Now() + f.patience();
  while (seen.size() < accepted.size() && absl::Now() < deadline) {
    auto batch = sub->Fetch(500, f.backend().fetch_wait);
    ASSERT_TRUE(batch.ok()) << batch.status();
    for (const Delivery& d : *batch) {
      seen.insert(d.event.id());
      ASSERT_TRUE(sub->Ack(d).ok());
    }
  }
  for (const std::string& id : accepted) EXPECT_TRUE(seen.contains(id)) << "accepted " << id << " was lost";
  f.ExpectNothing(*sub, "more than what was accepted");
  auto again = bounded->PublishAndWait(stream, f.NumberedEvent(-1));
  EXPECT_TRUE(again.ok()) << "still refused after the queue was drained: " << again.status();
}

}  // namespace
}  // namespace eventbus::conformance
