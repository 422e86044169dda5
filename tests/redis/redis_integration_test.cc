// The Redis backend against real redis-server processes this binary starts: server crash and
// restart mid-stream, entries written by redis-cli following docs/wire-format.md, malformed
// entries, refused authentication, unix sockets, trimming, delayed nacks.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "eventbus/registry.h"
#include "eventbus/clock.h"
#include "eventbus/harness/redis_server.h"
#include "eventbus/redis/redis_event_stream.h"
#include "gtest/gtest.h"

namespace eventbus::redis {
namespace {

using harness::RedisServer;

std::unique_ptr<RedisServer> StartServer(RedisServer::Options options = {}) {
  auto server = RedisServer::Start(std::move(options));
  // A server that cannot start is a failure, never a skip.
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? std::move(server).value() : nullptr;
}

RedisOptions OptionsFor(absl::string_view url) {
  RedisOptions options;
  auto endpoint = ParseRedisUrl(url);
  EXPECT_TRUE(endpoint.ok()) << endpoint.status();
  if (endpoint.ok()) options.endpoint = *endpoint;
  // Quick reconnects keep the crash test short.
  options.reconnect_backoff_initial = absl::Milliseconds(20);
  options.reconnect_backoff_max = absl::Milliseconds(300);
  options.connect_timeout = absl::Seconds(2);
  options.command_timeout = absl::Seconds(2);
  return options;
}

std::unique_ptr<EventStream> Connect(const RedisServer& server, RedisOptions options) {
  auto stream = NewRedisEventStream(std::move(options));
  EXPECT_TRUE(stream.ok()) << stream.status();
  return stream.ok() ? std::move(stream).value() : nullptr;
}
std::unique_ptr<EventStream> Connect(const RedisServer& server) {
  return Connect(server, OptionsFor(server.url()));
}

std::unique_ptr<Subscription> Join(EventStream& stream, const std::string& name,
                                   const std::string& group, const std::string& consumer) {
  SubscribeOptions options;
  options.stream = name;
  options.group = group;
  options.consumer = consumer;
  auto sub = stream.Subscribe(options);
  EXPECT_TRUE(sub.ok()) << sub.status();
  return sub.ok() ? std::move(sub).value() : nullptr;
}

std::string ShellQuote(absl::string_view arg) {
  std::string out = "'";
  for (char c : arg) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

// Runs the real redis-cli against `port`; `stdin_data` (binary-safe) becomes the last
// argument through -x. Returns its stdout.
std::string RedisCli(int port, const std::vector<std::string>& args,
                     const std::string* stdin_data = nullptr) {
  std::string command = absl::StrCat("redis-cli -p ", port);
  if (stdin_data != nullptr) {
    const std::string path = absl::StrCat(::testing::TempDir(), "/redis-cli-stdin-", ::getpid());
    std::ofstream(path, std::ios::binary) << *stdin_data;
    command += " -x";
    for (const auto& arg : args) absl::StrAppend(&command, " ", ShellQuote(arg));
    absl::StrAppend(&command, " < ", ShellQuote(path));
  } else {
    for (const auto& arg : args) absl::StrAppend(&command, " ", ShellQuote(arg));
  }
  command += " 2>&1";
  FILE* pipe = ::popen(command.c_str(), "r");
  EXPECT_NE(pipe, nullptr) << command;
  if (pipe == nullptr) return "";
  std::string out;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) out.append(buffer, n);
  const int rc = ::pclose(pipe);
  EXPECT_EQ(rc, 0) << command << ": " << out;
  return std::string(absl::StripTrailingAsciiWhitespace(out));
}

int64_t PendingCount(int port, const std::string& stream, const std::string& group) {
  // XPENDING summary: count, smallest id, greatest id, consumers.
  const std::string out = RedisCli(port, {"XPENDING", stream, group});
  std::vector<std::string> lines = absl::StrSplit(out, '\n');
  int64_t count = -1;
  EXPECT_TRUE(!lines.empty() && absl::SimpleAtoi(lines[0], &count)) << out;
  return count;
}

std::vector<Delivery> FetchUntil(Subscription& sub, size_t count, absl::Duration patience) {
  std::vector<Delivery> got;
  const absl::Time deadline = absl::Now() + patience;
  while (got.size() < count && absl::Now() < deadline) {
    auto batch = sub.Fetch(static_cast<int>(count - got.size()), absl::Milliseconds(500));
    if (!batch.ok()) continue;  // Unavailable while a server restarts
    for (auto& d : *batch) got.push_back(std::move(d));
  }
  return got;
}

TEST(RedisIntegration, ConsumersResumeAfterTheServerIsKilledAndRestartedMidStream) {
  const std::string name = "crash.stream";
  constexpr int kEvents = 3000;
  // Declared before the stream: its destructor may still run publish callbacks.
  absl::Mutex mu;
  absl::flat_hash_set<std::string> published;  // event ids confirmed by the backend
  absl::flat_hash_map<std::string, int> acked;  // event id -> successful acks
  int publish_retries = 0;
  int failed_acks = 0;
  int fetch_errors = 0;
  int ack_retries = 0;
  std::atomic<bool> stop{false};

  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto stream = Connect(*server);
  ASSERT_NE(stream, nullptr);

  std::vector<std::unique_ptr<Subscription>> subs;
  for (int c = 0; c < 2; ++c) {
    subs.push_back(Join(*stream, name, "workers", absl::StrCat("worker-", c)));
    ASSERT_NE(subs.back(), nullptr);
  }
  std::vector<std::thread> consumers;
  for (auto& sub : subs) {
    consumers.emplace_back([&, s = sub.get()] {
      while (!stop.load()) {
        auto batch = s->Fetch(50, absl::Milliseconds(200));
        if (!batch.ok()) {
          absl::MutexLock lock(&mu);
          ++fetch_errors;
          continue;
        }
        for (const Delivery& d : *batch) {
          // An ack that fails while the server is down is retried: the entry is still
          // pending for this consumer after the restart (AOF). An attempt whose reply was lost
          // with the connection may have been applied: the retry then finds nothing pending
          // (NotFound), which is an acknowledgement too.
          absl::Status status;
          bool retried = false;
          for (int attempt = 0; attempt < 200; ++attempt) {
            status = s->Ack(d);
            if (status.ok() || !absl::IsUnavailable(status)) break;
            retried = true;
            {
              absl::MutexLock lock(&mu);
              ++ack_retries;
            }
            absl::SleepFor(absl::Milliseconds(50));
          }
          absl::MutexLock lock(&mu);
          if (status.ok() || (retried && absl::IsNotFound(status))) {
            acked[d.event.id()]++;
          } else {
            ++failed_acks;
            ADD_FAILURE() << "ack of " << d.id << " failed: " << status;
          }
        }
      }
    });
  }

  // The publisher writes chunks of events asynchronously (pipelined underneath) and publishes
  // again whatever failed (at-least-once from its side).
  std::thread publisher([&] {
    std::vector<Event> todo;
    for (int i = 0; i < kEvents; ++i) {
      todo.push_back(MakeEvent("io.eventbus.crash", "/integration", absl::StrCat("n=", i)));
    }
    size_t next = 0;
    while (next < todo.size()) {
      const size_t end = std::min(todo.size(), next + 50);
      std::vector<Event> chunk(todo.begin() + next, todo.begin() + end);
      while (!chunk.empty()) {
        auto failed = std::make_shared<std::vector<Event>>();
        auto failed_mu = std::make_shared<absl::Mutex>();
        for (const Event& event : chunk) {
          absl::Status queued = stream->Publish(name, event, [&, event, failed, failed_mu](
                                                                 absl::StatusOr<PublishReceipt> r) {
            if (r.ok()) {
              absl::MutexLock lock(&mu);
              published.insert(event.id());
            } else {
              absl::MutexLock lock(failed_mu.get());
              failed->push_back(event);
            }
          });
          if (!queued.ok()) {
            absl::MutexLock lock(failed_mu.get());
            failed->push_back(event);
          }
        }
        if (!stream->Flush(absl::Seconds(40)).ok()) {
          ADD_FAILURE() << "flush did not complete";
          return;
        }
        absl::MutexLock lock(failed_mu.get());
        {
          absl::MutexLock counter(&mu);
          publish_retries += static_cast<int>(failed->size());
        }
        chunk = *failed;
      }
      next = end;
      absl::SleepFor(absl::Milliseconds(5));
    }
  });

  // Crash the server once a third is through, keep it down for a while, bring it back.
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  while (absl::Now() < give_up) {
    {
      absl::MutexLock lock(&mu);
      if (published.size() > kEvents / 3) break;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  size_t published_at_kill;
  {
    absl::MutexLock lock(&mu);
    published_at_kill = published.size();
  }
  server->Kill();
  absl::SleepFor(absl::Seconds(1));
  ASSERT_TRUE(server->Restart().ok()) << server->LogTail();
  publisher.join();
  EXPECT_LT(published_at_kill, static_cast<size_t>(kEvents)) << "the crash must be mid-stream";

  // Every published event is acknowledged at least once, without anybody's help.
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (absl::Now() < deadline) {
    absl::MutexLock lock(&mu);
    if (acked.size() >= published.size()) break;
    mu.Unlock();
    absl::SleepFor(absl::Milliseconds(100));
    mu.Lock();
  }
  stop = true;
  for (auto& t : consumers) t.join();

  absl::MutexLock lock(&mu);
  EXPECT_EQ(published.size(), static_cast<size_t>(kEvents));
  int lost = 0;
  for (const std::string& id : published) {
    if (!acked.contains(id)) ++lost;
  }
  EXPECT_EQ(lost, 0) << "published events never acknowledged";
  int duplicates = 0;
  for (const auto& [id, n] : acked) duplicates += n - 1;
  EXPECT_GT(fetch_errors + ack_retries, 0) << "consumers should have noticed the server was down";
  std::printf(
      "crash test: killed after %zu of %d published; %zu published, %zu acked, %d duplicate "
      "acks, %d publish retries, %d fetch errors and %d ack retries while down, %d failed acks\n",
      published_at_kill, kEvents, published.size(), acked.size(), duplicates, publish_retries,
      fetch_errors, ack_retries, failed_acks);
  EXPECT_EQ(PendingCount(server->port(), name, "workers"), 0);
}

TEST(RedisIntegration, AnEntryWrittenWithRedisCliIsConsumed) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto stream = Connect(*server);
  ASSERT_NE(stream, nullptr);
  auto sub = Join(*stream, "orders", "billing", "b-1");
  ASSERT_NE(sub, nullptr);

  // Exactly the example of docs/wire-format.md.
  const std::string entry_id = RedisCli(
      server->port(),
      {"XADD", "orders", "*", "specversion", "1.0", "id", "order-42", "source", "/shop/checkout",
       "type", "com.example.order.created", "time", "2024-05-01T12:00:00.250Z", "subject",
       "order/42", "datacontenttype", "application/json", "partitionkey", "customer-7",
       "h:traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "data",
       "{\"total\": 12.5}"});
  ASSERT_FALSE(entry_id.empty());

  auto got = FetchUntil(*sub, 1, absl::Seconds(10));
  ASSERT_EQ(got.size(), 1u);
  const Event& event = got[0].event;
  EXPECT_EQ(got[0].id, entry_id);
  EXPECT_EQ(got[0].delivery_count, 1);
  EXPECT_EQ(event.id(), "order-42");
  EXPECT_EQ(event.source(), "/shop/checkout");
  EXPECT_EQ(event.spec_version(), "1.0");
  EXPECT_EQ(event.type(), "com.example.order.created");
  EXPECT_EQ(event.subject(), "order/42");
  EXPECT_EQ(event.data_content_type(), "application/json");
  EXPECT_EQ(event.key(), "customer-7");
  EXPECT_EQ(EventTime(event), absl::FromUnixMillis(1'714'564'800'250));
  EXPECT_EQ(event.headers().at("traceparent"), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
  EXPECT_EQ(event.data(), "{\"total\": 12.5}");
  ASSERT_TRUE(sub->Ack(got[0]).ok());
  EXPECT_EQ(PendingCount(server->port(), "orders", "billing"), 0);
}

TEST(RedisIntegration, AnEventWeWriteIsReadableWithRedisCliXrange) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto stream = Connect(*server);
  ASSERT_NE(stream, nullptr);
  Event event = MakeEvent("com.example.greeting", "/integration", "hello, redis-cli");
  event.set_data_content_type("text/plain");
  (*event.mutable_headers())["tenant"] = "acme";
  SetEventTime(event, absl::FromUnixSeconds(1'714'564'800));
  auto receipt = stream->PublishAndWait("greetings", event);
  ASSERT_TRUE(receipt.ok()) << receipt.status();

  const std::string out = RedisCli(server->port(), {"XRANGE", "greetings", "-", "+"});
  std::vector<std::string> lines = absl::StrSplit(out, '\n');
  // redis-cli prints the entry id, then field and value on alternate lines.
  ASSERT_GE(lines.size(), 3u) << out;
  EXPECT_EQ(lines[0], receipt->id);
  std::map<std::string, std::string> fields;
  for (size_t i = 1; i + 1 < lines.size(); i += 2) fields[lines[i]] = lines[i + 1];
  EXPECT_EQ(fields["specversion"], "1.0");
  EXPECT_EQ(fields["id"], event.id());
  EXPECT_EQ(fields["source"], "/integration");
  EXPECT_EQ(fields["type"], "com.example.greeting");
  EXPECT_EQ(fields["time"], "2024-05-01T12:00:00Z");
  EXPECT_EQ(fields["datacontenttype"], "text/plain");
  EXPECT_EQ(fields["h:tenant"], "acme");
  EXPECT_EQ(fields["data"], "hello, redis-cli");
}

TEST(RedisIntegration, MalformedEntriesGoToTheDeadLetterStreamAndTheConsumerKeepsGoing) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto stream = Connect(*server);
  ASSERT_NE(stream, nullptr);
  auto sub = Join(*stream, "inbox", "readers", "r-1");
  ASSERT_NE(sub, nullptr);
  const int port = server->port();

  const std::string missing_type = RedisCli(
      port, {"XADD", "inbox", "*", "specversion", "1.0", "id", "m-1", "source", "/cli", "data", "x"});
  const std::string garbage_bytes("\xff\xfe\x00\x01 not an event", 17);
  const std::string garbage = RedisCli(port, {"XADD", "inbox", "*", "\x01\x02"}, &garbage_bytes);
  const std::string bad_time = RedisCli(
      port, {"XADD", "inbox", "*", "specversion", "1.0", "id", "m-3", "source", "/cli", "type",
             "t", "time", "half past nine"});
  const std::string bad_utf8_bytes("caf\xe9", 4);
  const std::string bad_utf8 = RedisCli(
      port, {"XADD", "inbox", "*", "specversion", "1.0", "id", "m-4", "source", "/cli", "type"},
      &bad_utf8_bytes);
  const std::string good = RedisCli(
      port, {"XADD", "inbox", "*", "specversion", "1.0", "id", "ok-1", "source", "/cli", "type",
             "t", "data", "fine"});

  auto got = FetchUntil(*sub, 1, absl::Seconds(10));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].event.id(), "ok-1");
  EXPECT_EQ(got[0].id, good);
  ASSERT_TRUE(sub->Ack(got[0]).ok());
  auto more = sub->Fetch(10, absl::Milliseconds(300));
  ASSERT_TRUE(more.ok()) << more.status();
  EXPECT_TRUE(more->empty()) << "a malformed entry was returned by Fetch";
  EXPECT_EQ(PendingCount(port, "inbox", "readers"), 0) << "malformed entries must be acked";

  // The dead letters are valid events that say what was wrong and where it came from.
  auto dlq = Join(*stream, "inbox.dlq", "ops", "o-1");
  ASSERT_NE(dlq, nullptr);
  auto dead = FetchUntil(*dlq, 4, absl::Seconds(10));
  ASSERT_EQ(dead.size(), 4u);
  std::map<std::string, std::string> reason_by_origin;
  for (const Delivery& d : dead) {
    const auto& h = d.event.headers();
    EXPECT_EQ(h.at(std::string(kDlqOriginStreamHeader)), "inbox");
    EXPECT_EQ(h.at(std::string(kDlqOriginGroupHeader)), "readers");
    EXPECT_EQ(h.at(std::string(kDlqDeliveryCountHeader)), "1");
    EXPECT_EQ(d.event.type(), "io.eventbus.malformed");
    reason_by_origin[h.at(std::string(kDlqOriginIdHeader))] = h.at(std::string(kDlqReasonHeader));
  }
  EXPECT_TRUE(absl::StrContains(reason_by_origin[missing_type], "malformed event: required attribute 'type' is missing or empty"))
      << reason_by_origin[missing_type];
  EXPECT_TRUE(absl::StrContains(reason_by_origin[garbage], "unknown field")) << reason_by_origin[garbage];
  EXPECT_TRUE(absl::StrContains(reason_by_origin[bad_time], "RFC 3339")) << reason_by_origin[bad_time];
  EXPECT_TRUE(absl::StrContains(reason_by_origin[bad_utf8], "UTF-8")) << reason_by_origin[bad_utf8];
  // The raw entry travels along, C-escaped, so nothing of it is lost.
  for (const Delivery& d : dead) {
    if (d.event.headers().at(std::string(kDlqOriginIdHeader)) == garbage) {
      EXPECT_EQ(d.event.data(), "\\001\\002 \\377\\376\\000\\001 not an event\n");
    }
  }
}

TEST(RedisIntegration, RefusedAuthenticationGivesAClearErrorWithoutTheSecret) {
  RedisServer::Options options;
  options.requirepass = "correct-horse";
  auto server = StartServer(options);
  ASSERT_NE(server, nullptr);
  const std::string base = absl::StrCat("127.0.0.1:", server->port());

  auto wrong = NewRedisEventStream(OptionsFor(absl::StrCat("redis://:battery-staple@", base)));
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kPermissionDenied) << wrong.status();
  EXPECT_TRUE(absl::StrContains(wrong.status().message(), "refused authentication")) << wrong.status();
  EXPECT_TRUE(absl::StrContains(wrong.status().message(), "REDIS_URL")) << wrong.status();
  EXPECT_FALSE(absl::StrContains(wrong.status().message(), "battery-staple")) << wrong.status();

  auto wrong_user = NewRedisEventStream(OptionsFor(absl::StrCat("redis://mallory:correct-horse@", base)));
  ASSERT_FALSE(wrong_user.ok());
  EXPECT_EQ(wrong_user.status().code(), absl::StatusCode::kPermissionDenied) << wrong_user.status();
  EXPECT_TRUE(absl::StrContains(wrong_user.status().message(), "mallory")) << wrong_user.status();
  EXPECT_FALSE(absl::StrContains(wrong_user.status().message(), "correct-horse")) << wrong_user.status();

  auto none = NewRedisEventStream(OptionsFor(absl::StrCat("redis://", base)));
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnauthenticated) << none.status();
  EXPECT_TRUE(absl::StrContains(none.status().message(), "requires authentication")) << none.status();

  auto right = NewRedisEventStream(OptionsFor(server->url()));
  ASSERT_TRUE(right.ok()) << right.status();
  auto sub = Join(**right, "secured", "g", "c");
  ASSERT_NE(sub, nullptr);
  ASSERT_TRUE((*right)->PublishAndWait("secured", MakeEvent("t", "/s", "x")).ok());
  EXPECT_EQ(FetchUntil(*sub, 1, absl::Seconds(5)).size(), 1u);
}

TEST(RedisIntegration, UnixSocketAndDatabaseFromTheUrl) {
  RedisServer::Options options;
  auto probe = harness::MakeTempDir("redis-sock");
  ASSERT_TRUE(probe.ok());
  const std::string socket = absl::StrCat(*probe, "/redis.sock");
  options.extra_args = {"--unixsocket", socket, "--unixsocketperm", "700"};
  auto server = StartServer(options);
  ASSERT_NE(server, nullptr);
  auto stream = Connect(*server, OptionsFor(absl::StrCat("unix://", socket, "?db=3")));
  ASSERT_NE(stream, nullptr);
  ASSERT_TRUE(stream->PublishAndWait("in.db3", MakeEvent("t", "/s", "x")).ok());
  EXPECT_EQ(RedisCli(server->port(), {"-n", "3", "XLEN", "in.db3"}), "1");
  EXPECT_EQ(RedisCli(server->port(), {"-n", "0", "EXISTS", "in.db3"}), "0");
  harness::RemoveTree(*probe);
}

TEST(RedisIntegration, TrimmedPendingEntriesAreAcknowledgedNotReclaimedForever) {
  RedisServer::Options server_options;
  // Small stream nodes let MAXLEN ~ trim at a fine grain.
  server_options.extra_args = {"--stream-node-max-entries", "4"};
  auto server = StartServer(server_options);
  ASSERT_NE(server, nullptr);
  RedisOptions options = OptionsFor(server->url());
  options.max_stream_length = 10;
  auto stream = Connect(*server, options);
  ASSERT_NE(stream, nullptr);
  auto holder = Join(*stream, "trimmed", "g", "holder");
  auto rescuer = Join(*stream, "trimmed", "g", "rescuer");
  ASSERT_NE(holder, nullptr);
  ASSERT_NE(rescuer, nullptr);

  for (int i = 0; i < 8; ++i) ASSERT_TRUE(stream->PublishAndWait("trimmed", MakeEvent("t", "/s")).ok());
  auto held = FetchUntil(*holder, 8, absl::Seconds(5));
  ASSERT_EQ(held.size(), 8u);
  for (int i = 0; i < 200; ++i) ASSERT_TRUE(stream->Publish("trimmed", MakeEvent("t", "/s")).ok());
  ASSERT_TRUE(stream->Flush(absl::Seconds(10)).ok());
  ASSERT_LT(std::stoi(RedisCli(server->port(), {"XLEN", "trimmed"})), 20);
  EXPECT_EQ(PendingCount(server->port(), "trimmed", "g"), 8);

  auto reclaimed = rescuer->Reclaim(absl::ZeroDuration(), 100);
  ASSERT_TRUE(reclaimed.ok()) << reclaimed.status();
  EXPECT_TRUE(reclaimed->empty()) << "trimmed entries cannot be redelivered";
  EXPECT_EQ(PendingCount(server->port(), "trimmed", "g"), 0);
  EXPECT_EQ(holder->Ack(held[0]).code(), absl::StatusCode::kNotFound);
}

TEST(RedisIntegration, ADelayedNackSurvivesItsConsumerAndReclaimDoesNotTakeItEarly) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto stream = Connect(*server);
  ASSERT_NE(stream, nullptr);
  auto first = Join(*stream, "later", "g", "first");
  auto second = Join(*stream, "later", "g", "second");
  ASSERT_NE(first, nullptr);
  ASSERT_NE(second, nullptr);
  ASSERT_TRUE(stream->PublishAndWait("later", MakeEvent("t", "/s", "payload")).ok());
  auto got = FetchUntil(*first, 1, absl::Seconds(5));
  ASSERT_EQ(got.size(), 1u);
  const absl::Time nacked_at = absl::Now();
  ASSERT_TRUE(first->Nack(got[0], absl::Seconds(3)).ok());
  ASSERT_TRUE(first->Close().ok());

  auto early = second->Reclaim(absl::ZeroDuration(), 10);
  ASSERT_TRUE(early.ok()) << early.status();
  EXPECT_TRUE(early->empty()) << "Reclaim took a delayed entry before its time";
  auto quiet = second->Fetch(10, absl::Milliseconds(500));
  ASSERT_TRUE(quiet.ok());
  EXPECT_TRUE(quiet->empty());

  auto redelivered = FetchUntil(*second, 1, absl::Seconds(10));
  ASSERT_EQ(redelivered.size(), 1u);
  EXPECT_GE(absl::Now() - nacked_at, absl::Seconds(3));
  EXPECT_EQ(redelivered[0].id, got[0].id) << "the entry id is stable across a delayed nack";
  EXPECT_EQ(redelivered[0].delivery_count, 2) << "the reclaim attempt must not count";
  EXPECT_EQ(redelivered[0].event.data(), "payload");
  EXPECT_TRUE(second->Ack(redelivered[0]).ok());
}

// XAUTOCLAIM looks at a bounded slice of the pending list per call; a Reclaim that started
// at 0-0 every time saw only the parked entries at its head and never the orphan behind them.
TEST(RedisIntegration, ReclaimReachesAnOrphanBehindHundredsOfParkedEntries) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto stream = Connect(*server);
  ASSERT_NE(stream, nullptr);
  const std::string name = "reclaim.cursor";
  auto parker = Join(*stream, name, "g", "parker");
  auto dead = Join(*stream, name, "g", "dead");  // never settles, never closes before the end
  auto survivor = Join(*stream, name, "g", "survivor");
  ASSERT_NE(parker, nullptr);
  ASSERT_NE(dead, nullptr);
  ASSERT_NE(survivor, nullptr);
  constexpr int kParked = 300;
  for (int i = 0; i < kParked; ++i) {
    ASSERT_TRUE(stream->Publish(name, MakeEvent("t", "/s", absl::StrCat("parked-", i)), nullptr).ok());
  }
  ASSERT_TRUE(stream->Flush(absl::Seconds(10)).ok());
  auto parked = FetchUntil(*parker, kParked, absl::Seconds(10));
  ASSERT_EQ(parked.size(), static_cast<size_t>(kParked));
  // Nacked with a long delay: parked in the pending list ahead of the orphan.
  for (const Delivery& d : parked) ASSERT_TRUE(parker->Nack(d, absl::Hours(1)).ok());
  ASSERT_TRUE(stream->PublishAndWait(name, MakeEvent("t", "/s", "orphan")).ok());
  auto orphan = FetchUntil(*dead, 1, absl::Seconds(5));
  ASSERT_EQ(orphan.size(), 1u);

  // One free slot per call, as a saturated survivor has: every call must move the scan on.
  std::vector<Delivery> reclaimed;
  int calls = 0;
  for (; calls < 2 * kParked / 16 && reclaimed.empty(); ++calls) {
    auto got = survivor->Reclaim(absl::ZeroDuration(), 1);
    ASSERT_TRUE(got.ok()) << got.status();
    for (auto& d : *got) reclaimed.push_back(std::move(d));
  }
  ASSERT_EQ(reclaimed.size(), 1u) << "orphan not reclaimed in " << calls << " calls";
  EXPECT_EQ(reclaimed[0].id, orphan[0].id);
  EXPECT_EQ(reclaimed[0].event.data(), "orphan");
  EXPECT_EQ(reclaimed[0].delivery_count, 2);
  EXPECT_TRUE(survivor->Ack(reclaimed[0]).ok());
  // The parked entries stayed parked (their delay holds against Reclaim) and the scan wraps.
  auto more = survivor->Reclaim(absl::ZeroDuration(), 10);
  ASSERT_TRUE(more.ok()) << more.status();
  EXPECT_TRUE(more->empty());
}

TEST(RedisIntegration, AGroupLostByTheServerIsCreatedAgain) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto stream = Connect(*server);
  ASSERT_NE(stream, nullptr);
  auto sub = Join(*stream, "volatile", "g", "c");
  ASSERT_NE(sub, nullptr);
  EXPECT_EQ(RedisCli(server->port(), {"FLUSHALL"}), "OK");
  auto empty = sub->Fetch(10, absl::Milliseconds(200));  // meets NOGROUP
  EXPECT_TRUE(empty.ok() || absl::IsUnavailable(empty.status())) << empty.status();
  auto quiet = sub->Fetch(10, absl::Milliseconds(200));  // group created again
  ASSERT_TRUE(quiet.ok()) << quiet.status();
  ASSERT_TRUE(stream->PublishAndWait("volatile", MakeEvent("t", "/s", "after")).ok());
  auto got = FetchUntil(*sub, 1, absl::Seconds(5));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].event.data(), "after");
}

TEST(RedisIntegration, SelectedThroughTheRegistryFromTheEnvironment) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  BackendRegistry registry;
  ASSERT_TRUE(RegisterRedisBackend(registry).ok());
  auto stream = registry.CreateFromEnvironment({{"EVENT_STREAM_TYPE", "redis"},
                                                {"REDIS_URL", absl::StrCat(server->url(), "/5")},
                                                {"REDIS_OPTION_STREAM_MAXLEN", "1000"}});
  ASSERT_TRUE(stream.ok()) << stream.status();
  EXPECT_EQ((*stream)->backend_name(), "redis");
  EXPECT_TRUE((*stream)->Ping(absl::Seconds(2)).ok());
  ASSERT_TRUE((*stream)->PublishAndWait("from.env", MakeEvent("t", "/s", "x")).ok());
  EXPECT_EQ(RedisCli(server->port(), {"-n", "5", "XLEN", "from.env"}), "1");

  auto unknown = registry.CreateFromEnvironment(
      {{"EVENT_STREAM_TYPE", "redis"}, {"REDIS_URL", server->url()}, {"REDIS_OPTION_BOGUS", "1"}});
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(unknown.status().message(), "bogus")) << unknown.status();
}

TEST(RedisIntegration, AStaleHandleCannotAckWhatAnotherConsumerReclaimed) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto stream = Connect(*server);
  ASSERT_NE(stream, nullptr);
  auto slow = Join(*stream, "stale", "g", "slow");
  auto fast = Join(*stream, "stale", "g", "fast");
  ASSERT_NE(slow, nullptr);
  ASSERT_NE(fast, nullptr);
  ASSERT_TRUE(stream->PublishAndWait("stale", MakeEvent("t", "/s", "x")).ok());
  auto held = FetchUntil(*slow, 1, absl::Seconds(5));
  ASSERT_EQ(held.size(), 1u);
  absl::SleepFor(absl::Milliseconds(50));
  auto taken = fast->Reclaim(absl::Milliseconds(10), 10);
  ASSERT_TRUE(taken.ok()) << taken.status();
  ASSERT_EQ(taken->size(), 1u);
  EXPECT_EQ((*taken)[0].delivery_count, 2);
  EXPECT_EQ(slow->Ack(held[0]).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(slow->Extend(held[0]).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(fast->Ack((*taken)[0]).ok());
  EXPECT_EQ(fast->Ack((*taken)[0]).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(PendingCount(server->port(), "stale", "g"), 0);
}

// `calls` of one command from INFO commandstats ("cmdstat_xack:calls=3,usec=..."), 0 if absent.
int64_t CommandCalls(int port, absl::string_view command) {
  const std::string out = RedisCli(port, {"INFO", "commandstats"});
  const std::string key = absl::StrCat("cmdstat_", command, ":calls=");
  size_t at = out.find(key);
  if (at == std::string::npos) return 0;
  at += key.size();
  int64_t calls = 0;
  EXPECT_TRUE(absl::SimpleAtoi(out.substr(at, out.find(',', at) - at), &calls)) << out;
  return calls;
}

TEST(RedisIntegration, AsyncAcksAreBatchedIntoFewXackCallsWithoutScripts) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto stream = Connect(*server);
  ASSERT_NE(stream, nullptr);
  auto sub = Join(*stream, "batched", "g", "c1");
  ASSERT_NE(sub, nullptr);
  constexpr int kEvents = 2000;
  for (int i = 0; i < kEvents; ++i) {
    ASSERT_TRUE(stream->Publish("batched", MakeEvent("t", "/s", absl::StrCat(i))).ok());
  }
  ASSERT_TRUE(stream->Flush(absl::Seconds(10)).ok());
  auto got = FetchUntil(*sub, kEvents, absl::Seconds(10));
  ASSERT_EQ(got.size(), static_cast<size_t>(kEvents));
  const int64_t evals_before = CommandCalls(server->port(), "evalsha");
  absl::Mutex mu;
  int done = 0;
  int failed = 0;
  for (const Delivery& d : got) {
    sub->AckAsync(d, [&](absl::Status s) {
      absl::MutexLock lock(&mu);
      ++done;
      if (!s.ok()) ++failed;
    });
  }
  {
    absl::MutexLock lock(&mu);
    auto all = [&] { return done == kEvents; };
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&all), absl::Seconds(10)));
    EXPECT_EQ(failed, 0);
  }
  EXPECT_EQ(PendingCount(server->port(), "batched", "g"), 0);
  // One XACK carries many ids; no ownership script runs per ack.
  const int64_t xacks = CommandCalls(server->port(), "xack");
  EXPECT_GE(xacks, 1);
  EXPECT_LE(xacks, kEvents / 10) << "acks were not batched";
  EXPECT_EQ(CommandCalls(server->port(), "evalsha"), evals_before);
}

TEST(RedisIntegration, NackDelaysAreMeasuredOnTheInjectedClock) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  ManualClock clock;
  auto made = NewRedisEventStream(OptionsFor(server->url()), &clock);
  ASSERT_TRUE(made.ok()) << made.status();
  auto& stream = *made;
  auto sub = Join(*stream, "virtual", "g", "c");
  ASSERT_NE(sub, nullptr);
  ASSERT_TRUE(stream->PublishAndWait("virtual", MakeEvent("t", "/s", "x")).ok());
  auto got = FetchUntil(*sub, 1, absl::Seconds(5));
  ASSERT_EQ(got.size(), 1u);
  ASSERT_TRUE(sub->Nack(got[0], absl::Hours(1)).ok());
  clock.Advance(absl::Minutes(59));
  auto early = sub->Fetch(10, absl::Milliseconds(300));
  ASSERT_TRUE(early.ok());
  EXPECT_TRUE(early->empty()) << "redelivered after 59 of 60 virtual minutes";
  clock.Advance(absl::Minutes(1));
  auto due = FetchUntil(*sub, 1, absl::Seconds(5));
  ASSERT_EQ(due.size(), 1u);
  EXPECT_EQ(due[0].id, got[0].id);
  EXPECT_EQ(due[0].delivery_count, 2);
}

TEST(RedisIntegration, ClosingHandsHeldDeliveriesToTheGroupAtOnce) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto stream = Connect(*server);
  ASSERT_NE(stream, nullptr);
  auto leaving = Join(*stream, "handover", "g", "leaving");
  auto staying = Join(*stream, "handover", "g", "staying");
  ASSERT_NE(leaving, nullptr);
  ASSERT_NE(staying, nullptr);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(stream->PublishAndWait("handover", MakeEvent("t", "/s", absl::StrCat(i))).ok());
  }
  auto held = FetchUntil(*leaving, 3, absl::Seconds(5));
  ASSERT_EQ(held.size(), 3u);
  ASSERT_TRUE(leaving->Close().ok());
  EXPECT_EQ(leaving->Ack(held[0]).code(), absl::StatusCode::kFailedPrecondition);
  // No Reclaim needed: the next Fetch of the group gets them, counted as redeliveries.
  auto taken = FetchUntil(*staying, 3, absl::Seconds(5));
  ASSERT_EQ(taken.size(), 3u);
  for (const Delivery& d : taken) {
    EXPECT_EQ(d.delivery_count, 2);
    EXPECT_TRUE(staying->Ack(d).ok());
  }
  EXPECT_EQ(PendingCount(server->port(), "handover", "g"), 0);
}

TEST(RedisIntegration, EntriesDeliveredButNeverSeenAreRecoveredByTheSameConsumer) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto stream = Connect(*server);
  ASSERT_NE(stream, nullptr);
  ASSERT_TRUE(stream->PublishAndWait("lost.replies", MakeEvent("t", "/s", "a")).ok());
  ASSERT_TRUE(stream->PublishAndWait("lost.replies", MakeEvent("t", "/s", "b")).ok());
  // A read whose reply never reached the consumer (connection dropped, process died): the
  // server put both entries in consumer c-1's pending list.
  RedisCli(server->port(), {"XGROUP", "CREATE", "lost.replies", "g", "0"});
  RedisCli(server->port(), {"XREADGROUP", "GROUP", "g", "c-1", "COUNT", "10", "STREAMS",
                            "lost.replies", ">"});
  ASSERT_EQ(PendingCount(server->port(), "lost.replies", "g"), 2);

  auto sub = Join(*stream, "lost.replies", "g", "c-1");
  ASSERT_NE(sub, nullptr);
  auto got = FetchUntil(*sub, 2, absl::Seconds(5));
  ASSERT_EQ(got.size(), 2u);
  std::set<std::string> data;
  for (const Delivery& d : got) {
    data.insert(d.event.data());
    EXPECT_EQ(d.delivery_count, 2);
    EXPECT_TRUE(sub->Ack(d).ok());
  }
  EXPECT_EQ(data, (std::set<std::string>{"a", "b"}));
  EXPECT_EQ(PendingCount(server->port(), "lost.replies", "g"), 0);
}

// Label `fault` (see CMakeLists.txt): the server stops answering for a while.
TEST(RedisFault, AHungServerTimesCommandsOutAndTheConnectionRecovers) {
  RedisServer::Options server_options;
  server_options.extra_args = {"--enable-debug-command", "local"};
  auto server = StartServer(server_options);
  ASSERT_NE(server, nullptr);
  RedisOptions options = OptionsFor(server->url());
  options.command_timeout = absl::Milliseconds(300);
  auto stream = Connect(*server, options);
  ASSERT_NE(stream, nullptr);
  auto sub = Join(*stream, "hung", "g", "c");
  ASSERT_NE(sub, nullptr);
  ASSERT_TRUE(stream->PublishAndWait("hung", MakeEvent("t", "/s", "x")).ok());
  auto got = FetchUntil(*sub, 1, absl::Seconds(5));
  ASSERT_EQ(got.size(), 1u);
  // Establishes the command connection: a new connection would wait for the server within
  // connect_timeout instead (its handshake PING).
  ASSERT_TRUE(sub->Extend(got[0]).ok());

  // DEBUG SLEEP blocks the whole server (as a long fork, a slow disk or a stuck script would).
  std::thread sleeper([port = server->port()] { RedisCli(port, {"DEBUG", "SLEEP", "2"}); });
  absl::SleepFor(absl::Milliseconds(200));
  const absl::Time start = absl::Now();
  absl::Status ack = sub->Ack(got[0]);
  EXPECT_EQ(ack.code(), absl::StatusCode::kUnavailable) << ack;
  EXPECT_TRUE(absl::StrContains(ack.message(), "timed out")) << ack;
  EXPECT_LT(absl::Now() - start, absl::Seconds(1)) << "the command timeout was not applied";
  absl::Status ping = stream->Ping(absl::Milliseconds(300));
  EXPECT_FALSE(ping.ok());
  auto fetched = sub->Fetch(1, absl::Milliseconds(100));
  EXPECT_FALSE(fetched.ok() && !fetched->empty());
  sleeper.join();

  // The server answers again: the same handles work over new connections. The timed-out Ack
  // reached the server and ran once it woke up, so the retry finds nothing left to ack.
  absl::Status retried;
  for (int attempt = 0; attempt < 50; ++attempt) {
    retried = sub->Ack(got[0]);
    if (!absl::IsUnavailable(retried)) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_TRUE(retried.ok() || absl::IsNotFound(retried)) << retried;
  EXPECT_TRUE(stream->Ping(absl::Seconds(1)).ok());
  ASSERT_TRUE(stream->PublishAndWait("hung", MakeEvent("t", "/s", "y")).ok());
  auto after = FetchUntil(*sub, 1, absl::Seconds(5));
  ASSERT_EQ(after.size(), 1u);
  EXPECT_EQ(after[0].event.data(), "y");
  EXPECT_EQ(PendingCount(server->port(), "hung", "g"), 1);
}

TEST(RedisFault, WhileTheServerIsDownThePublishQueueIsBoundedAndEventsFailAfterTheRetryTimeout) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  RedisOptions options = OptionsFor(server->url());
  options.publish_batch_size = 1;
  options.max_queued_publishes = 10;
  options.publish_retry_timeout = absl::Seconds(1);
  // Declared before the stream: its destructor may still run callbacks.
  absl::Mutex mu;
  std::vector<absl::Status> outcomes;
  auto stream = Connect(*server, options);
  ASSERT_NE(stream, nullptr);
  server->Kill();

  auto record = [&](absl::StatusOr<PublishReceipt> r) {
    absl::MutexLock lock(&mu);
    outcomes.push_back(r.status());
  };
  int queued = 0;
  absl::Status refused;
  for (int i = 0; i < 100 && refused.ok(); ++i) {
    refused = stream->Publish("down", MakeEvent("t", "/s"), record);
    if (refused.ok()) ++queued;
  }
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_TRUE(absl::StrContains(refused.message(), "publish.queue.limit")) << refused;
  EXPECT_LE(queued, 11) << "queue limit 10 plus the one the writer holds";

  // Nothing is silently dropped: every queued event gets its callback, with Unavailable.
  ASSERT_TRUE(stream->Flush(absl::Seconds(30)).ok());
  absl::MutexLock lock(&mu);
  ASSERT_EQ(outcomes.size(), static_cast<size_t>(queued));
  for (const absl::Status& status : outcomes) {
    EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  }
}

TEST(RedisIntegration, UnreachableServerIsUnavailableNotAHang) {
  auto port = harness::FreeLoopbackPort();
  ASSERT_TRUE(port.ok());
  const absl::Time start = absl::Now();
  auto stream = NewRedisEventStream(OptionsFor(absl::StrCat("redis://127.0.0.1:", *port)));
  ASSERT_FALSE(stream.ok());
  EXPECT_EQ(stream.status().code(), absl::StatusCode::kUnavailable) << stream.status();
  EXPECT_TRUE(absl::StrContains(stream.status().message(), absl::StrCat(*port))) << stream.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

}  // namespace
}  // namespace eventbus::redis
