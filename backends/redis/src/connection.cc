#include "connection.h"

#include <sys/time.h>

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "eventbus/log.h"

namespace eventbus::redis {
namespace {

timeval TimevalOf(absl::Duration d) {
  if (d < absl::Milliseconds(1)) d = absl::Milliseconds(1);
  return absl::ToTimeval(d);
}

// argv/argvlen views for redisCommandArgv / redisAppendCommandArgv (binary-safe).
struct ArgvView {
  explicit ArgvView(const std::vector<std::string>& args) {
    argv.reserve(args.size());
    lens.reserve(args.size());
    for (const std::string& arg : args) {
      argv.push_back(arg.data());
      lens.push_back(arg.size());
    }
  }
  std::vector<const char*> argv;
  std::vector<size_t> lens;
};

// The command name for messages; never the arguments (they may hold credentials or data).
std::string CommandName(const std::vector<std::string>& args) {
  return args.empty() ? std::string("(empty command)") : args.front();
}

}  // namespace

RedisConnection::RedisConnection(Settings settings)
    : settings_(std::move(settings)), backoff_(settings_.backoff_initial) {}

absl::Status RedisConnection::EnsureConnected() {
  if (context_ != nullptr) return absl::OkStatus();
  const absl::Time now = absl::Now();
  if (now < next_attempt_) return last_connect_error_;
  absl::Status status = Connect();
  if (status.ok()) {
    if (failed_attempts_ > 0 && generation_ > 0) {
      Log(LogLevel::kInfo, "redis",
          absl::StrCat(Describe(), ": reconnected after ", failed_attempts_, " failed attempts"));
    }
    failed_attempts_ = 0;
    backoff_ = settings_.backoff_initial;
    next_attempt_ = absl::InfinitePast();
    ++generation_;
    return status;
  }
  context_.reset();
  // A connection that worked before is being re-established in the background: say so once
  // (the first connect's failure is returned to the caller instead), the retries at debug.
  if (generation_ > 0) {
    Log(failed_attempts_ == 0 ? LogLevel::kWarning : LogLevel::kDebug, "redis",
        absl::StrCat(status.ToString(), "; reconnecting (next attempt in ",
                     absl::FormatDuration(backoff_), ")"));
  }
  ++failed_attempts_;
  next_attempt_ = absl::Now() + backoff_;
  backoff_ = std::min(backoff_ * 2, settings_.backoff_max);
  last_connect_error_ = status;
  return status;
}

absl::Status RedisConnection::Connect() {
  const RedisEndpoint& ep = settings_.endpoint;
  const timeval connect_tv = TimevalOf(settings_.connect_timeout);
  ContextPtr context(ep.unix_path.empty()
                         ? redisConnectWithTimeout(ep.host.c_str(), ep.port, connect_tv)
                         : redisConnectUnixWithTimeout(ep.unix_path.c_str(), connect_tv));
  const std::string where = absl::StrCat("redis at ", Describe());
  if (context == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat(where, ": cannot allocate a hiredis context"));
  }
  if (context->err != 0) {
    return ContextToStatus(*context, absl::StrCat(where, ": connect"));
  }
  if (ep.unix_path.empty()) redisEnableKeepAlive(context.get());
  context_ = std::move(context);
  current_timeout_ = absl::ZeroDuration();
  script_shas_.clear();
  SetTimeout(settings_.connect_timeout);

  if (!ep.password.empty()) {
    std::vector<std::string> auth = {"AUTH"};
    if (!ep.user.empty()) auth.push_back(ep.user);
    auth.push_back(ep.password);
    absl::StatusOr<ReplyPtr> reply = RawCommand(auth);
    if (!reply.ok()) return reply.status();
    if (IsError(reply->get())) {
      // The server's text ("WRONGPASS invalid username-password pair ...") never echoes the
      // password; ours names only the user.
      const std::string message = absl::StrCat(
          where, " refused authentication for user '", ep.user.empty() ? "default" : ep.user,
          "' (check the credentials in REDIS_URL): ", StringOf(reply->get()));
      context_.reset();
      return absl::PermissionDeniedError(message);
    }
  }
  if (ep.db != 0) {
    absl::StatusOr<ReplyPtr> reply = RawCommand({"SELECT", absl::StrCat(ep.db)});
    if (!reply.ok()) return reply.status();
    if (IsError(reply->get())) {
      absl::Status status = ReplyErrorToStatus(StringOf(reply->get()),
                                               absl::StrCat(where, ": SELECT ", ep.db));
      context_.reset();
      if (absl::IsInternal(status)) return absl::InvalidArgumentError(status.message());
      return status;
    }
  }
  // PING proves the server answers and that it does not demand a password we lack.
  absl::StatusOr<ReplyPtr> pong = RawCommand({"PING"});
  if (!pong.ok()) return pong.status();
  if (IsError(pong->get())) {
    absl::Status status = ReplyErrorToStatus(StringOf(pong->get()), where);
    context_.reset();
    if (absl::IsUnauthenticated(status)) {
      return absl::UnauthenticatedError(absl::StrCat(
          where, " requires authentication: put the password in REDIS_URL "
                 "(redis://[user]:password@host:port) - ", StringOf(pong->get())));
    }
    return status;
  }
  SetTimeout(settings_.command_timeout);
  return absl::OkStatus();
}

void RedisConnection::Disconnect() {
  context_.reset();
  script_shas_.clear();
}

void RedisConnection::SetTimeout(absl::Duration timeout) {
  if (context_ == nullptr || timeout == current_timeout_) return;
  redisSetTimeout(context_.get(), TimevalOf(timeout));
  current_timeout_ = timeout;
}

absl::StatusOr<ReplyPtr> RedisConnection::RawCommand(const std::vector<std::string>& args) {
  ArgvView view(args);
  ReplyPtr reply(static_cast<redisReply*>(redisCommandArgv(
      context_.get(), static_cast<int>(args.size()), view.argv.data(), view.lens.data())));
  if (reply == nullptr) {
    absl::Status status =
        ContextToStatus(*context_, absl::StrCat("redis at ", Describe(), ": ", CommandName(args)));
    Disconnect();
    return status;
  }
  return reply;
}

absl::StatusOr<ReplyPtr> RedisConnection::Command(const std::vector<std::string>& args,
                                                  absl::Duration timeout) {
  if (absl::Status s = EnsureConnected(); !s.ok()) return s;
  SetTimeout(timeout > absl::ZeroDuration() ? timeout : settings_.command_timeout);
  absl::StatusOr<ReplyPtr> reply = RawCommand(args);
  if (!reply.ok()) return reply.status();
  if (IsError(reply->get())) {
    return ReplyErrorToStatus(StringOf(reply->get()),
                              absl::StrCat("redis at ", Describe(), ": ", CommandName(args)));
  }
  return reply;
}

RedisConnection::PipelineResult RedisConnection::RunPipeline(
    size_t count, absl::FunctionRef<int(size_t)> append,
    absl::FunctionRef<std::string(size_t)> name) {
  PipelineResult result;
  if (absl::Status s = EnsureConnected(); !s.ok()) {
    result.status = s;
    return result;
  }
  SetTimeout(settings_.command_timeout);
  for (size_t i = 0; i < count; ++i) {
    if (append(i) != REDIS_OK) {
      result.status = absl::ResourceExhaustedError(
          absl::StrCat("redis at ", Describe(), ": cannot buffer a pipelined command"));
      Disconnect();
      return result;
    }
  }
  result.replies.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    void* raw = nullptr;
    if (redisGetReply(context_.get(), &raw) != REDIS_OK || raw == nullptr) {
      result.status =
          ContextToStatus(*context_, absl::StrCat("redis at ", Describe(), ": pipelined ", name(i)));
      Disconnect();
      return result;
    }
    result.replies.emplace_back(static_cast<redisReply*>(raw));
  }
  return result;
}

RedisConnection::PipelineResult RedisConnection::Pipeline(
    const std::vector<const std::vector<std::string>*>& commands) {
  return RunPipeline(
      commands.size(),
      [&](size_t i) {
        ArgvView view(*commands[i]);
        return redisAppendCommandArgv(context_.get(), static_cast<int>(commands[i]->size()),
                                      view.argv.data(), view.lens.data());
      },
      [&](size_t i) { return CommandName(*commands[i]); });
}

RedisConnection::PipelineResult RedisConnection::PipelineFormatted(
    const std::vector<absl::string_view>& commands, absl::string_view name) {
  return RunPipeline(
      commands.size(),
      [&](size_t i) {
        return redisAppendFormattedCommand(context_.get(), commands[i].data(), commands[i].size());
      },
      [&](size_t) { return std::string(name); });
}

absl::StatusOr<ReplyPtr> RedisConnection::Eval(const LuaScript& script,
                                               const std::vector<std::string>& keys,
                                               const std::vector<std::string>& args) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (absl::Status s = EnsureConnected(); !s.ok()) return s;
    auto it = script_shas_.find(script.source.data());
    if (it == script_shas_.end()) {
      absl::StatusOr<ReplyPtr> loaded = Command({"SCRIPT", "LOAD", std::string(script.source)});
      if (!loaded.ok()) return loaded.status();
      it = script_shas_.emplace(script.source.data(), std::string(StringOf(loaded->get()))).first;
    }
    std::vector<std::string> command = {"EVALSHA", it->second, absl::StrCat(keys.size())};
    command.insert(command.end(), keys.begin(), keys.end());
    command.insert(command.end(), args.begin(), args.end());
    absl::StatusOr<ReplyPtr> reply = Command(command);
    if (reply.ok()) return reply;
    if (absl::IsNotFound(reply.status()) && absl::StrContains(reply.status().message(), "NOSCRIPT")) {
      script_shas_.erase(script.source.data());
      continue;
    }
    return absl::Status(reply.status().code(),
                        absl::StrCat(reply.status().message(), " (script ", script.name, ")"));
  }
  return absl::InternalError(absl::StrCat("redis at ", Describe(), ": script ", script.name,
                                          " vanished from the server twice"));
}

}  // namespace eventbus::redis
