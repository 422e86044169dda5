#pragma once
// The memory backend's fault-injecting mode, for tests of code above the contract (the
// executor): a stream that forwards to a real one (normally NewMemoryEventStream on a
// ManualClock) and fails, drops or stalls operations when the test says so, with the statuses
// a broker backend would give. Nothing fails until asked.
//
//   memory::FaultInjector faults;
//   auto inner = memory::NewMemoryEventStream(&clock);
//   auto stream = memory::NewFaultInjectingEventStream(inner.get(), &faults);
//   faults.FailNext(memory::FaultInjector::Op::kFetch, 3, absl::UnavailableError("down"));

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "eventbus/event_stream.h"

#pragma GCC visibility push(default)

namespace eventbus::memory {

// What to break, and how. Thread-safe; shared by a stream and its subscriptions, and must
// outlive them.
class FaultInjector {
 public:
  enum class Op { kPublish, kSubscribe, kFetch, kAck, kNack, kExtend, kReclaim, kDeadLetter, kPing };

  FaultInjector() = default;
  ~FaultInjector();  // Resume()s whatever is stalled
  FaultInjector(const FaultInjector&) = delete;
  FaultInjector& operator=(const FaultInjector&) = delete;

  // The next `n` calls of `op` fail with `status` (not OK), without reaching the inner stream.
  // Asynchronous variants (AckAsync, ...) count as their operation and report through `done`.
  void FailNext(Op op, int n, absl::Status status);

  // The connection of consumer `consumer` drops: its subscriptions' operations fail with
  // Unavailable until Reconnect(). Like a broker connection, a drop settles nothing: what the
  // consumer holds stays with the group (reclaimable) and its handles stay valid.
  void DropConnection(absl::string_view consumer);
  // Every connection drops: publishes, pings and subscribes fail too.
  void DropAllConnections();
  // Undoes every drop.
  void Reconnect();

  // Stalls the backend: every operation blocks until Resume() (Ping until its timeout, then
  // DeadlineExceeded), as a hung server does.
  void Stall();
  void Resume();

  // Failures injected so far (FailNext and drops, not stalls), per operation.
  int injected(Op op) const;

  // The fault (if any) that `op` by `consumer` (empty for stream-level operations) meets now;
  // blocks while stalled. For the fault-injecting stream; `ping_timeout` bounds a Ping's stall.
  absl::Status Check(Op op, absl::string_view consumer,
                     absl::Duration ping_timeout = absl::InfiniteDuration());

 private:
  mutable std::mutex mu_;
  std::condition_variable resumed_;
  std::map<Op, std::vector<absl::Status>> scheduled_;  // popped from the back
  std::set<std::string, std::less<>> dropped_consumers_;
  bool all_dropped_ = false;
  bool stalled_ = false;
  std::map<Op, int> injected_;
};

// `inner` and `faults` are not owned and must outlive the stream and its subscriptions.
// backend_name, capabilities and clock are the inner stream's.
std::unique_ptr<EventStream> NewFaultInjectingEventStream(EventStream* inner, FaultInjector* faults);
// The same, owning `inner` (for a BackendRegistry factory).
std::unique_ptr<EventStream> NewFaultInjectingEventStream(std::unique_ptr<EventStream> inner,
                                                          FaultInjector* faults);

}  // namespace eventbus::memory

#pragma GCC visibility pop
