#include "eventbus/redis/redis_event_stream.h"

#include <signal.h>

#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "connection.h"
#include "eventbus/clock.h"
#include "eventbus/status_macros.h"
#include "lua_scripts.h"
#include "redis_inspector.h"
#include "redis_subscription.h"
#include "wire.h"

namespace eventbus::redis {
namespace {

constexpr absl::string_view kBackendName = "redis";

class RedisEventStream final : public EventStream {
 public:
  RedisEventStream(RedisOptions options, Clock* clock)
      : options_(std::move(options)),
        clock_(clock),
        admin_conn_(RedisConnection::Settings::From(options_)),
        writer_conn_(RedisConnection::Settings::From(options_)),
        inspector_(NewRedisInspector(options_)) {}

  ~RedisEventStream() override {
    {
      absl::MutexLock lock(&queue_mu_);
      stopping_ = true;
    }
    if (writer_.joinable()) writer_.join();
  }

  absl::Status Start() {
    {
      absl::MutexLock lock(&admin_mu_);
      EVENTBUS_RETURN_IF_ERROR(admin_conn_.EnsureConnected());
    }
    writer_ = std::thread([this] { WriterLoop(); });
    return absl::OkStatus();
  }

  absl::string_view backend_name() const override { return kBackendName; }

  Capabilities capabilities() const override {
    Capabilities caps;
    caps.persistent = true;  // with AOF (or RDB) on the server; see docs/wire-format.md
    caps.ordered_per_key = false;
    caps.duplicates_possible = false;
    caps.native_delay = true;
    caps.reclaim_from_other_consumers = true;
    caps.atomic_dead_letter = true;
    caps.max_event_bytes = options_.max_event_bytes;
    caps.inspection = true;
    return caps;
  }

  StreamInspector* inspector() override { return inspector_.get(); }

  absl::Status Flush(absl::Duration timeout) override {
    absl::MutexLock lock(&queue_mu_);
    const uint64_t target = enqueued_;
    auto done = [this, target]() ABSL_SHARED_LOCKS_REQUIRED(queue_mu_) {
      return completed_ >= target;
    };
    if (!queue_mu_.AwaitWithTimeout(absl::Condition(&done), timeout)) {
      return absl::DeadlineExceededError(absl::StrCat(
          "redis at ", options_.endpoint.Describe(), ": ", target - completed_,
          " published events not confirmed within ", absl::FormatDuration(timeout)));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<Subscription>> Subscribe(const SubscribeOptions& options) override {
    EVENTBUS_RETURN_IF_ERROR(ValidateSubscribeOptions(options));
    if (options.consumer == scripts::kParkingConsumer) {
      return absl::InvalidArgumentError("consumer name is reserved by the redis backend");
    }
    return NewRedisSubscription(options_, clock_, options);
  }

  absl::Status Ping(absl::Duration timeout) override {
    absl::MutexLock lock(&admin_mu_);
    return admin_conn_.Command({"PING"}, timeout).status();
  }

  Clock* clock() const override { return clock_; }

 protected:
  absl::Status DoPublish(absl::string_view stream, Event event, PublishCallback done) override {
    PendingPublish item;
    item.stream = std::string(stream);
    wire::RespCommand command;
    command.Add("XADD");
    command.Add(item.stream);
    if (options_.max_stream_length > 0) {
      command.Add("MAXLEN");
      command.Add("~");
      command.Add(absl::StrCat(options_.max_stream_length));
    }
    command.Add("*");
    wire::AppendFields(event, command);
    item.command = command.Take();
    item.done = std::move(done);
    item.enqueued_at = absl::Now();
    absl::MutexLock lock(&queue_mu_);
    if (stopping_) return absl::FailedPreconditionError("redis event stream is closed");
    if (queue_.size() >= options_.max_queued_publishes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "redis publish queue is full (", options_.max_queued_publishes,
          " events not yet written; option publish.queue.limit)"));
    }
    queue_.push_back(std::move(item));
    ++enqueued_;
    return absl::OkStatus();
  }

 private:
  struct PendingPublish {
    std::string stream;
    std::string command;  // the XADD in RESP
    PublishCallback done;
    absl::Time enqueued_at;
  };

  // Batches are written in order and a batch completes before the next starts, so "completed"
  // is a count (Flush compares it with the count enqueued before the call).
  void WriterLoop() {
    while (true) {
      std::deque<PendingPublish> batch;
      {
        absl::MutexLock lock(&queue_mu_);
        auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(queue_mu_) {
          return stopping_ || !queue_.empty();
        };
        queue_mu_.Await(absl::Condition(&ready));
        if (queue_.empty()) return;  // stopping and drained
        while (!queue_.empty() && batch.size() < static_cast<size_t>(options_.publish_batch_size)) {
          batch.push_back(std::move(queue_.front()));
          queue_.pop_front();
        }
      }
      const size_t count = batch.size();
      WriteBatch(batch);
      absl::MutexLock lock(&queue_mu_);
      completed_ += count;
    }
  }

  void WriteBatch(std::deque<PendingPublish>& batch) {
    while (!batch.empty()) {
      std::vector<absl::string_view> commands;
      commands.reserve(batch.size());
      for (const PendingPublish& item : batch) commands.push_back(item.command);
      RedisConnection::PipelineResult result = writer_conn_.PipelineFormatted(commands, "XADD");
      std::deque<PendingPublish> retry;
      absl::Status last_error = result.status;
      for (size_t i = 0; i < batch.size(); ++i) {
        PendingPublish& item = batch[i];
        if (i >= result.replies.size()) {
          retry.push_back(std::move(item));
          continue;
        }
        const redisReply* reply = result.replies[i].get();
        if (IsError(reply)) {
          absl::Status status = ReplyErrorToStatus(
              StringOf(reply), absl::StrCat("redis at ", options_.endpoint.Describe(), ": XADD ", item.stream));
          if (absl::IsUnavailable(status)) {
            last_error = status;
            retry.push_back(std::move(item));
          } else {
            item.done(status);
          }
          continue;
        }
        item.done(PublishReceipt{item.stream, std::string(StringOf(reply))});
      }
      batch.swap(retry);
      if (batch.empty()) return;
      // Unconfirmed events are written again (at-least-once: one whose reply was lost with
      // the connection may be stored twice) until publish_retry_timeout.
      const absl::Time now = absl::Now();
      bool stopping;
      {
        absl::MutexLock lock(&queue_mu_);
        stopping = stopping_;
      }
      std::deque<PendingPublish> keep;
      for (PendingPublish& item : batch) {
        if (stopping || now - item.enqueued_at > options_.publish_retry_timeout) {
          item.done(absl::UnavailableError(absl::StrCat(
              stopping ? "redis event stream closed before the event was written: "
                       : "event not written within publish.retry.timeout: ",
              last_error.message())));
        } else {
          keep.push_back(std::move(item));
        }
      }
      batch.swap(keep);
      if (batch.empty()) return;
      const absl::Time retry_at =
          std::max(writer_conn_.next_attempt(), absl::Now() + absl::Milliseconds(20));
      absl::MutexLock lock(&queue_mu_);
      auto stop = [this]() ABSL_SHARED_LOCKS_REQUIRED(queue_mu_) { return stopping_; };
      queue_mu_.AwaitWithDeadline(absl::Condition(&stop), retry_at);
    }
  }

  const RedisOptions options_;
  Clock* const clock_;

  absl::Mutex admin_mu_;
  RedisConnection admin_conn_ ABSL_GUARDED_BY(admin_mu_);

  RedisConnection writer_conn_;  // writer thread only
  std::unique_ptr<StreamInspector> inspector_;
  absl::Mutex queue_mu_;
  std::deque<PendingPublish> queue_ ABSL_GUARDED_BY(queue_mu_);
  uint64_t enqueued_ ABSL_GUARDED_BY(queue_mu_) = 0;
  uint64_t completed_ ABSL_GUARDED_BY(queue_mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(queue_mu_) = false;
  std::thread writer_;
};

// hiredis 0.14 writes with write(2): a write to a connection the server has closed raises
// SIGPIPE, whose default action kills the process. Left at its default, it is ignored so that
// a server crash is an I/O error (reconnect) rather than the service's death. A handler the
// application installed itself is left alone.
void IgnoreSigpipeIfDefault() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction current = {};
    if (::sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) {
      ::signal(SIGPIPE, SIG_IGN);
    }
  });
}

}  // namespace

absl::StatusOr<std::unique_ptr<EventStream>> NewRedisEventStream(RedisOptions options, Clock* clock) {
  IgnoreSigpipeIfDefault();
  if (options.publish_batch_size < 1 || options.max_queued_publishes < 1 ||
      options.max_stream_length < 0 || options.fetch_slice <= absl::ZeroDuration() ||
      options.command_timeout <= absl::ZeroDuration() ||
      options.connect_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "redis options: batch size, queue limit, timeouts and fetch slice must be positive, "
        "stream.maxlen not negative");
  }
  if (clock == nullptr) clock = Clock::Real();
  auto stream = std::make_unique<RedisEventStream>(std::move(options), clock);
  EVENTBUS_RETURN_IF_ERROR(stream->Start());
  return std::unique_ptr<EventStream>(std::move(stream));
}

absl::Status RegisterRedisBackend(BackendRegistry& registry) {
  BackendRegistration registration;
  registration.name = std::string(kBackendName);
  registration.description = "Redis Streams (hiredis): consumer groups, XAUTOCLAIM, Lua DLQ";
  registration.url_env = "REDIS_URL";
  registration.default_url = std::string(kDefaultRedisUrl);
  registration.option_env_prefix = std::string(kRedisOptionEnvPrefix);
  registration.factory = [](const BackendConfig& config) -> absl::StatusOr<std::unique_ptr<EventStream>> {
    EVENTBUS_ASSIGN_OR_RETURN(RedisOptions options, RedisOptionsFromConfig(config));
    return NewRedisEventStream(std::move(options), config.clock);
  };
  registration.check_config = [](const BackendConfig& config) {
    return RedisOptionsFromConfig(config).status();
  };
  absl::Status status = registry.Register(std::move(registration));
  if (absl::IsAlreadyExists(status)) return absl::OkStatus();
  return status;
}

}  // namespace eventbus::redis

