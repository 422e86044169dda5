#include "cli.h"

#include <curl/curl.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "eventbus/clock.h"
#include "eventbus/dead_letters.h"
#include "eventbus/executor/operator_json.h"
#include "eventbus/executor/task.h"
#include "eventbus/status_macros.h"
#include "eventbus/stream_inspector.h"

namespace eventbus::cli {
namespace {

using nlohmann::json;

constexpr int kReadPage = 500;

// A failure that decides the exit code: usage (2) or failure (1).
struct CommandError {
  int code;
  std::string message;
};

std::string TimeText(absl::Time time) {
  if (time == absl::InfinitePast() || time == absl::InfiniteFuture()) return "-";
  return FormatTimeMillis(time);
}

std::string FormatAge(absl::Duration age) {
  if (age < absl::ZeroDuration()) age = absl::ZeroDuration();
  return absl::FormatDuration(absl::Trunc(age, absl::Seconds(1)));
}

json EventJson(const StoredEvent& stored) { return executor::StoredEventToJson(stored); }

std::string RenderEvent(const StoredEvent& stored) {
  const Event& e = stored.event;
  std::string data = e.data();
  if (data.size() > 200) data = absl::StrCat(data.substr(0, 200), "...");
  std::string line = absl::StrCat(stored.id, "  ", TimeText(EventTime(e)), "  ", e.type(),
                                  "  id=", e.id());
  if (!e.key().empty()) absl::StrAppend(&line, "  key=", e.key());
  if (std::string reason = HeaderValue(e, kDlqReasonHeader); !reason.empty()) {
    absl::StrAppend(&line, "  reason=\"", reason, "\"");
  }
  if (!stored.malformed.empty()) absl::StrAppend(&line, "  MALFORMED: ", stored.malformed);
  absl::StrAppend(&line, "  ", absl::CHexEscape(data));
  return line;
}

// A bar on stderr for long operations: counts, rate, and the total when known.
class Progress {
 public:
  Progress(CliContext& context, std::string what, int64_t total)
      : context_(context), what_(std::move(what)), total_(total), start_(absl::Now()) {}

  void SetTotal(int64_t total) { total_ = total; }

  void Tick(int64_t done) {
    done_ = done;
    if (!context_.progress) return;
    const absl::Time now = absl::Now();
    if (now - last_draw_ < absl::Milliseconds(100)) return;
    last_draw_ = now;
    Draw(now);
  }

  void Finish() {
    if (!context_.progress) return;
    Draw(absl::Now());
    *context_.err << "\n";
  }

 private:
  void Draw(absl::Time now) {
    const double seconds = std::max(absl::ToDoubleSeconds(now - start_), 1e-3);
    const double rate = done_ / seconds;
    std::string bar;
    if (total_ > 0) {
      constexpr int kWidth = 30;
      const int filled = static_cast<int>(kWidth * std::min<int64_t>(done_, total_) / total_);
      bar = absl::StrCat("[", std::string(filled, '='), std::string(kWidth - filled, ' '), "] ",
                         done_, "/", total_);
    } else {
      bar = absl::StrCat(done_);
    }
    *context_.err << "\r" << what_ << " " << bar << absl::StrFormat("  %.0f/s", rate)
                  << std::flush;
  }

  CliContext& context_;
  std::string what_;
  int64_t total_;
  int64_t done_ = 0;
  absl::Time start_;
  absl::Time last_draw_ = absl::InfinitePast();
};

// The backend, opened on first use.
class Session {
 public:
  explicit Session(CliContext& context) : context_(context) {}

  absl::StatusOr<EventStream*> Stream() {
    if (context_.stream != nullptr) return context_.stream;
    if (stream_ == nullptr) {
      absl::StatusOr<std::unique_ptr<EventStream>> opened = context_.open_stream(context_.env);
      if (!opened.ok()) return opened.status();
      stream_ = std::move(*opened);
    }
    return stream_.get();
  }

  absl::StatusOr<StreamInspector*> Inspector() {
    EVENTBUS_ASSIGN_OR_RETURN(EventStream * stream, Stream());
    if (StreamInspector* inspector = stream->inspector(); inspector != nullptr) return inspector;
    return absl::UnimplementedError(absl::StrCat("the ", stream->backend_name(),
                                                 " backend does not support stream inspection"));
  }

 private:
  CliContext& context_;
  std::unique_ptr<EventStream> stream_;
};

// Backend errors: InvalidArgument from opening the backend is bad configuration (2).
CommandError Fail(const absl::Status& status) {
  return CommandError{kExitFailure, std::string(status.message())};
}
CommandError FailOpen(const absl::Status& status) {
  const int code = absl::IsInvalidArgument(status) ? kExitUsage : kExitFailure;
  return CommandError{code, std::string(status.message())};
}

// ---- filters of dead letters (dlq list / redrive / purge) ----

struct FilterArgs {
  std::string reason;
  std::string type;
  std::string since;
  std::string until;
  std::vector<std::string> ids;
  int64_t limit = 0;
};

std::optional<CommandError> BuildFilter(const FilterArgs& args, absl::Time now,
                                        DeadLetterFilter& out) {
  out.reason = args.reason;
  out.type = args.type;
  out.ids = args.ids;
  out.limit = args.limit;
  for (auto [text, target, name] :
       {std::tuple{&args.since, &out.since, "--since"}, {&args.until, &out.until, "--until"}}) {
    if (text->empty()) continue;
    absl::StatusOr<absl::Time> when = ParseFilterTime(name, *text, now);
    if (!when.ok()) return CommandError{kExitUsage, std::string(when.status().message())};
    *target = *when;
  }
  return std::nullopt;
}

void AddFilterOptions(CLI::App* command, FilterArgs& args) {
  command->add_option("--reason", args.reason, "Only dead letters whose reason contains this");
  command->add_option("--type", args.type, "Only events of this CloudEvents type");
  command->add_option("--since", args.since,
                      "Only events published at or after this (RFC 3339, or a duration ago: 2h)");
  command->add_option("--until", args.until, "Only events published at or before this");
  command->add_option("--id", args.ids, "Only these events (stream id or event id); repeatable");
  command->add_option("--limit", args.limit, "At most this many events (0: all)");
}

// ---- the service's HTTP API (task get|cancel|retry, stats --api) ----

struct HttpReply {
  long status = 0;
  std::string body;
};

size_t AppendBody(char* data, size_t size, size_t count, void* target) {
  static_cast<std::string*>(target)->append(data, size * count);
  return size * count;
}

absl::StatusOr<HttpReply> HttpCall(const std::string& method, const std::string& url,
                                   const std::string& token) {
  CURL* curl = curl_easy_init();
  if (curl == nullptr) return absl::InternalError("curl_easy_init failed");
  HttpReply reply;
  curl_slist* headers = nullptr;
  std::string auth;
  if (!token.empty()) {
    auth = absl::StrCat("Authorization: Bearer ", token);
    headers = curl_slist_append(headers, auth.c_str());
  }
  headers = curl_slist_append(headers, "Content-Type: application/json");
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method.c_str());
  if (method == "POST") curl_easy_setopt(curl, CURLOPT_POSTFIELDS, "");
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, AppendBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &reply.body);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 30000L);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  const CURLcode code = curl_easy_perform(curl);
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &reply.status);
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  if (code != CURLE_OK) {
    return absl::UnavailableError(
        absl::StrCat("cannot reach the executor API (", curl_easy_strerror(code), ")"));
  }
  return reply;
}

// The error text of an API reply ({"error": "..."} or the body).
std::string ApiError(const HttpReply& reply) {
  json body = json::parse(reply.body, nullptr, false);
  if (body.is_object() && body.contains("error") && body["error"].is_string()) {
    return body["error"].get<std::string>();
  }
  return reply.body;
}

// ---- the commands ----

struct Args {
  // publish
  std::string stream;
  std::string type;
  std::string source = "eventbus-cli";
  std::string id;
  std::string key;
  std::string subject;
  std::string content_type;
  std::vector<std::string> headers;
  std::string data;
  std::string file;
  bool ndjson = false;
  bool ndjson_tasks = false;
  std::string task_type;
  std::string task_input;
  // tail
  bool from_oldest = false;
  bool no_follow = false;
  int64_t count = 0;
  bool as_json = false;
  // stats
  std::vector<std::string> streams;
  // dlq
  std::string dlq_stream{absl::StrCat(executor::kDefaultRequestStream, kDlqStreamSuffix)};
  std::string event_id;
  FilterArgs filter;
  bool dry_run = false;
  double rate = 0;
  int max_redrives = 3;
  bool yes = false;
  // task / stats --api
  std::string api;
  std::string token;
  std::string task_id;
  std::vector<std::string> bench_args;
};

class Commands {
 public:
  Commands(CliContext& context, Args& args) : context_(context), args_(args), session_(context) {}

  std::ostream& out() { return *context_.out; }
  std::ostream& err() { return *context_.err; }

  // Parses one event or task from JSON text (a line of NDJSON, a file, --data with --task).
  absl::StatusOr<Event> EventFromJson(absl::string_view text) {
    if (!args_.task_type.empty() || args_.ndjson_tasks) {
      EVENTBUS_ASSIGN_OR_RETURN(executor::TaskRequest request, executor::ParseTaskRequest(text));
      return executor::MakeTaskRequestEvent(request, args_.source);
    }
    EVENTBUS_ASSIGN_OR_RETURN(json doc, executor::ParseUntrustedJson(text));
    if (!doc.is_object()) return absl::InvalidArgumentError("an event must be a JSON object");
    Event event;
    auto text_field = [&](const char* name, auto setter) -> absl::Status {
      if (!doc.contains(name)) return absl::OkStatus();
      if (!doc[name].is_string()) {
        return absl::InvalidArgumentError(absl::StrCat("\"", name, "\" must be a string"));
      }
      setter(doc[name].get<std::string>());
      return absl::OkStatus();
    };
    EVENTBUS_RETURN_IF_ERROR(text_field("id", [&](std::string v) { event.set_id(v); }));
    EVENTBUS_RETURN_IF_ERROR(text_field("type", [&](std::string v) { event.set_type(v); }));
    EVENTBUS_RETURN_IF_ERROR(text_field("source", [&](std::string v) { event.set_source(v); }));
    EVENTBUS_RETURN_IF_ERROR(text_field("subject", [&](std::string v) { event.set_subject(v); }));
    EVENTBUS_RETURN_IF_ERROR(text_field("key", [&](std::string v) { event.set_key(v); }));
    EVENTBUS_RETURN_IF_ERROR(
        text_field("datacontenttype", [&](std::string v) { event.set_data_content_type(v); }));
    if (event.source().empty()) event.set_source(args_.source);
    if (doc.contains("headers")) {
      if (!doc["headers"].is_object()) {
        return absl::InvalidArgumentError("\"headers\" must be an object of strings");
      }
      for (const auto& [name, value] : doc["headers"].items()) {
        if (!value.is_string()) {
          return absl::InvalidArgumentError(absl::StrCat("header \"", name, "\" must be a string"));
        }
        (*event.mutable_headers())[name] = value.get<std::string>();
      }
    }
    if (doc.contains("data")) {
      if (doc["data"].is_string()) {
        event.set_data(doc["data"].get<std::string>());
      } else {
        event.set_data(doc["data"].dump());
        if (event.data_content_type().empty()) event.set_data_content_type("application/json");
      }
    }
    return event;
  }

  // The event --type/--data/... describe.
  absl::StatusOr<Event> EventFromFlags(std::string data) {
    if (!args_.task_type.empty()) {
      json request = {{"type", args_.task_type}};
      request["id"] = args_.id.empty() ? NewEventId() : args_.id;
      if (!args_.task_input.empty()) {
        EVENTBUS_ASSIGN_OR_RETURN(json input, executor::ParseUntrustedJson(args_.task_input));
        request["input"] = input;
      }
      return EventFromJson(request.dump());
    }
    if (args_.type.empty()) {
      return absl::InvalidArgumentError("--type is required (or --task, --ndjson, --file)");
    }
    Event event = MakeEvent(args_.type, args_.source, data);
    if (!args_.id.empty()) event.set_id(args_.id);
    if (!args_.key.empty()) event.set_key(args_.key);
    if (!args_.subject.empty()) event.set_subject(args_.subject);
    if (!args_.content_type.empty()) event.set_data_content_type(args_.content_type);
    for (const std::string& header : args_.headers) {
      std::pair<std::string, std::string> kv = absl::StrSplit(header, absl::MaxSplits('=', 1));
      if (kv.first.empty() || header.find('=') == std::string::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat("--header \"", header, "\" is not name=value"));
      }
      (*event.mutable_headers())[kv.first] = kv.second;
    }
    return event;
  }

  std::optional<CommandError> Publish() {
    std::string stream = args_.stream;
    if (stream.empty()) {
      stream = args_.task_type.empty() && !args_.ndjson_tasks
                   ? std::string()
                   : std::string(executor::kDefaultRequestStream);
    }
    if (stream.empty()) return CommandError{kExitUsage, "--stream is required for events"};

    // Read the input first: a usage error publishes nothing.
    std::vector<Event> events;
    std::string text;
    if (!args_.file.empty()) {
      std::istream* in = context_.in;
      std::ifstream file;
      if (args_.file != "-") {
        file.open(args_.file, std::ios::binary);
        if (!file) return CommandError{kExitUsage, absl::StrCat("cannot read ", args_.file)};
        in = &file;
      }
      std::stringstream buffer;
      buffer << in->rdbuf();
      text = buffer.str();
    }
    if (args_.ndjson) {
      int line_number = 0;
      for (absl::string_view line : absl::StrSplit(text, '\n')) {
        ++line_number;
        if (absl::StripAsciiWhitespace(line).empty()) continue;
        absl::StatusOr<Event> event = EventFromJson(line);
        if (!event.ok()) {
          return CommandError{kExitUsage,
                              absl::StrCat("line ", line_number, ": ", event.status().message())};
        }
        events.push_back(std::move(*event));
      }
    } else if (!args_.file.empty() && args_.type.empty() && args_.task_type.empty()) {
      absl::StatusOr<Event> event = EventFromJson(text);
      if (!event.ok()) return CommandError{kExitUsage, std::string(event.status().message())};
      events.push_back(std::move(*event));
    } else {
      absl::StatusOr<Event> event = EventFromFlags(args_.file.empty() ? args_.data : text);
      if (!event.ok()) return CommandError{kExitUsage, std::string(event.status().message())};
      events.push_back(std::move(*event));
    }

    absl::StatusOr<EventStream*> backend = session_.Stream();
    if (!backend.ok()) return FailOpen(backend.status());
    Progress progress(context_, "publish", static_cast<int64_t>(events.size()));
    struct Tally {
      std::mutex mu;
      int64_t ok = 0;
      int64_t failed = 0;
      std::string first_error;
      std::vector<std::string> ids;
    };
    auto tally = std::make_shared<Tally>();
    int64_t submitted = 0;
    for (Event& event : events) {
      // A task is known by its task id (the request event's subject), an event by its id.
      const bool task = !args_.task_type.empty() || args_.ndjson_tasks;
      const std::string event_id = task ? event.subject() : event.id();
      absl::Status status = (*backend)->Publish(
          stream, std::move(event), [tally](absl::StatusOr<PublishReceipt> receipt) {
            std::lock_guard lock(tally->mu);
            if (receipt.ok()) {
              ++tally->ok;
            } else {
              ++tally->failed;
              if (tally->first_error.empty()) tally->first_error = receipt.status().ToString();
            }
          });
      if (!status.ok()) {
        std::lock_guard lock(tally->mu);
        ++tally->failed;
        if (tally->first_error.empty()) tally->first_error = status.ToString();
      }
      ++submitted;
      progress.Tick(submitted);
      if (events.size() == 1) tally->ids.push_back(event_id);
    }
    const absl::Status flushed = (*backend)->Flush(absl::Seconds(60));
    progress.Finish();
    std::lock_guard lock(tally->mu);
    if (!flushed.ok() && tally->failed == 0) {
      return CommandError{kExitFailure, std::string(flushed.message())};
    }
    if (events.size() == 1 && tally->ok == 1) {
      out() << tally->ids.front() << "\n";
    } else {
      out() << "published " << tally->ok << " of " << events.size() << " events to " << stream
            << "\n";
    }
    if (tally->failed > 0) {
      return CommandError{kExitFailure, absl::StrCat(tally->failed, " events not published: ",
                                                     tally->first_error)};
    }
    return std::nullopt;
  }

  std::optional<CommandError> Tail() {
    absl::StatusOr<StreamInspector*> inspector = session_.Inspector();
    if (!inspector.ok()) return FailOpen(inspector.status());
    std::string cursor;
    if (!args_.from_oldest) {
      absl::StatusOr<std::string> end = (*inspector)->EndCursor(args_.stream);
      if (end.ok()) {
        cursor = *end;
      } else if (!absl::IsNotFound(end.status())) {
        return Fail(end.status());
      }
    }
    int64_t shown = 0;
    while (context_.cancelled == nullptr || !context_.cancelled()) {
      absl::StatusOr<ReadPage> page = (*inspector)->Read(args_.stream, cursor, kReadPage);
      if (!page.ok() && !absl::IsNotFound(page.status())) return Fail(page.status());
      if (page.ok() && !page->events.empty()) {
        for (const StoredEvent& stored : page->events) {
          if (args_.as_json) {
            out() << EventJson(stored).dump() << "\n";
          } else {
            out() << RenderEvent(stored) << "\n";
          }
          if (args_.count > 0 && ++shown >= args_.count) {
            out().flush();
            return std::nullopt;
          }
        }
        cursor = page->next_cursor;
        out().flush();
        continue;
      }
      if (page.ok()) cursor = page->next_cursor;
      if (args_.no_follow) return std::nullopt;
      context_.sleep(absl::Milliseconds(200));
    }
    return std::nullopt;
  }

  std::optional<CommandError> Stats() {
    absl::StatusOr<StreamInspector*> inspector = session_.Inspector();
    if (!inspector.ok()) return FailOpen(inspector.status());
    std::vector<std::string> streams = args_.streams;
    if (streams.empty()) {
      absl::StatusOr<std::vector<std::string>> listed = (*inspector)->ListStreams();
      if (!listed.ok()) return Fail(listed.status());
      streams = std::move(*listed);
    }
    const absl::Time now = context_.clock->Now();
    json report = json::array();
    std::vector<std::vector<std::string>> rows = {
        {"STREAM", "LENGTH", "GROUP", "CONSUMERS", "PENDING", "LAG", "OLDEST PENDING"}};
    for (const std::string& name : streams) {
      absl::StatusOr<StreamInfo> info = (*inspector)->Describe(name);
      if (!info.ok()) return Fail(info.status());
      json stream = executor::StreamInfoToJson(*info, now);
      if (info->groups.empty()) rows.push_back({info->name, absl::StrCat(info->length), "-"});
      for (const ConsumerGroupInfo& group : info->groups) {
        const bool has_oldest = group.oldest_pending_published_at != absl::InfiniteFuture();
        auto unknown = [](int64_t v) { return v < 0 ? std::string("?") : absl::StrCat(v); };
        rows.push_back({info->name, absl::StrCat(info->length), group.name,
                        absl::StrCat(group.consumers.size()), unknown(group.pending),
                        unknown(group.lag),
                        has_oldest ? FormatAge(now - group.oldest_pending_published_at) : "-"});
      }
      report.push_back(std::move(stream));
    }
    json tasks;
    if (!args_.api.empty()) {
      absl::StatusOr<HttpReply> reply = HttpCall("GET", absl::StrCat(args_.api, "/v1/stats"),
                                                 args_.token);
      if (!reply.ok()) return Fail(reply.status());
      if (reply->status != 200) {
        return CommandError{kExitFailure, absl::StrCat("GET /v1/stats: HTTP ", reply->status,
                                                       ": ", ApiError(*reply))};
      }
      tasks = json::parse(reply->body, nullptr, false);
    }
    if (args_.as_json) {
      json all = {{"streams", report}};
      if (!tasks.is_null()) all["tasks"] = tasks;
      out() << all.dump(2) << "\n";
      return std::nullopt;
    }
    PrintTable(rows);
    if (!tasks.is_null()) out() << "\ntasks (" << args_.api << "/v1/stats):\n" << tasks.dump(2) << "\n";
    return std::nullopt;
  }

  void PrintTable(const std::vector<std::vector<std::string>>& rows) {
    std::vector<size_t> widths;
    for (const auto& row : rows) {
      widths.resize(std::max(widths.size(), row.size()));
      for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
    }
    for (const auto& row : rows) {
      std::string line;
      for (size_t i = 0; i < row.size(); ++i) {
        absl::StrAppend(&line, row[i], std::string(widths[i] - row[i].size() + 2, ' '));
      }
      out() << std::string(absl::StripTrailingAsciiWhitespace(line)) << "\n";
    }
  }

  std::optional<CommandError> DlqList() {
    absl::StatusOr<StreamInspector*> inspector = session_.Inspector();
    if (!inspector.ok()) return FailOpen(inspector.status());
    DeadLetterFilter filter;
    if (auto error = BuildFilter(args_.filter, context_.clock->Now(), filter)) return error;
    int64_t listed = 0;
    absl::Status status =
        ForEachDeadLetter(**inspector, args_.dlq_stream, filter, [&](const StoredEvent& stored) {
          if (args_.as_json) {
            out() << EventJson(stored).dump() << "\n";
          } else {
            out() << RenderEvent(stored) << "\n";
          }
          ++listed;
          return true;
        });
    if (absl::IsNotFound(status)) status = absl::OkStatus();  // no dead letter yet
    if (!status.ok()) return Fail(status);
    if (!args_.as_json) err() << listed << " dead letters\n";
    return std::nullopt;
  }

  std::optional<CommandError> DlqShow() {
    absl::StatusOr<StreamInspector*> inspector = session_.Inspector();
    if (!inspector.ok()) return FailOpen(inspector.status());
    DeadLetterFilter filter;
    filter.ids = {args_.event_id};
    std::optional<StoredEvent> found;
    absl::Status status =
        ForEachDeadLetter(**inspector, args_.dlq_stream, filter, [&](const StoredEvent& stored) {
          found = stored;
          return false;
        });
    if (!status.ok() && !absl::IsNotFound(status)) return Fail(status);
    if (!found) {
      return CommandError{kExitFailure, absl::StrCat("no dead letter ", args_.event_id, " in ",
                                                     args_.dlq_stream)};
    }
    out() << EventJson(*found).dump(2) << "\n";
    return std::nullopt;
  }

  std::optional<CommandError> DlqRedrive() {
    absl::StatusOr<EventStream*> backend = session_.Stream();
    if (!backend.ok()) return FailOpen(backend.status());
    if (args_.rate < 0) return CommandError{kExitUsage, "--rate must not be negative"};
    DeadLetterFilter filter;
    if (auto error = BuildFilter(args_.filter, context_.clock->Now(), filter)) return error;
    Progress progress(context_, args_.dry_run ? "redrive (dry run)" : "redrive", 0);
    RedriveOptions options{.max_redrives = args_.max_redrives,
                           .dry_run = args_.dry_run,
                           .rate = args_.rate,
                           .clock = context_.clock,
                           .sleep = context_.sleep,
                           .on_progress = [&](int64_t done, int64_t total) {
                             progress.SetTotal(total);
                             progress.Tick(done);
                           }};
    absl::StatusOr<RedriveReport> report =
        RedriveDeadLetters(**backend, args_.dlq_stream, filter, options);
    progress.Finish();
    if (!report.ok()) return FailOpen(report.status());
    for (const RedriveReport::Refusal& refusal : report->refused) {
      err() << "refused " << refusal.stream_id << " (" << refusal.event_id
            << "): " << refusal.reason << "\n";
    }
    if (args_.dry_run) {
      for (const std::string& id : report->redriven) out() << "would redrive " << id << "\n";
    }
    out() << (args_.dry_run ? "would redrive " : "redrove ") << report->redriven.size()
          << ", refused " << report->refused.size() << ", failed " << report->failed;
    if (!report->kept_because.empty()) {
      out() << " (the dead letters stay in " << args_.dlq_stream << ": " << report->kept_because
            << ")";
    }
    out() << "\n";
    if (report->failed > 0) {
      return CommandError{kExitFailure,
                          absl::StrCat(report->failed, " not redriven: ", report->first_error)};
    }
    if (!report->refused.empty()) {
      return CommandError{kExitFailure, absl::StrCat(report->refused.size(), " refused")};
    }
    return std::nullopt;
  }

  std::optional<CommandError> DlqPurge() {
    absl::StatusOr<StreamInspector*> inspector = session_.Inspector();
    if (!inspector.ok()) return FailOpen(inspector.status());
    DeadLetterFilter filter;
    if (auto error = BuildFilter(args_.filter, context_.clock->Now(), filter)) return error;
    std::vector<std::string> ids;
    absl::Status status = ForEachDeadLetter(**inspector, args_.dlq_stream, filter,
                                       [&](const StoredEvent& stored) {
                                         ids.push_back(stored.id);
                                         return true;
                                       });
    if (!status.ok() && !absl::IsNotFound(status)) return Fail(status);
    if (args_.dry_run) {
      out() << "would purge " << ids.size() << " dead letters from " << args_.dlq_stream << "\n";
      return std::nullopt;
    }
    absl::StatusOr<int64_t> removed = (*inspector)->Delete(args_.dlq_stream, ids);
    if (!removed.ok()) return Fail(removed.status());
    out() << "purged " << *removed << " dead letters from " << args_.dlq_stream << "\n";
    return std::nullopt;
  }

  std::optional<CommandError> Task(const std::string& action) {
    if (args_.api.empty()) {
      return CommandError{kExitUsage, "--api (or EXECUTOR_API_URL) is required"};
    }
    std::string url = absl::StrCat(args_.api, "/v1/tasks/", args_.task_id);
    std::string method = "GET";
    if (action != "get") {
      absl::StrAppend(&url, ":", action);
      method = "POST";
    }
    absl::StatusOr<HttpReply> reply = HttpCall(method, url, args_.token);
    if (!reply.ok()) return Fail(reply.status());
    if (reply->status < 200 || reply->status >= 300) {
      return CommandError{kExitFailure, absl::StrCat("task ", action, " ", args_.task_id,
                                                     ": HTTP ", reply->status, ": ",
                                                     ApiError(*reply))};
    }
    json body = json::parse(reply->body, nullptr, false);
    out() << (body.is_discarded() ? reply->body : body.dump(2)) << "\n";
    return std::nullopt;
  }

  std::optional<CommandError> Bench() {
    const bool from_env = context_.env.count("EVENTBUS_BENCH_RUNNER") > 0;
    std::string runner = from_env ? context_.env.at("EVENTBUS_BENCH_RUNNER")
                                  : std::string(EVENTBUS_BENCH_RUNNER);
    if (std::ifstream probe(runner); !probe) {
      return CommandError{
          kExitUsage,
          absl::StrCat("the benchmark runner ", runner, " does not exist",
                       from_env ? " (EVENTBUS_BENCH_RUNNER names it)"
                                : " (this eventbus was built from another tree: set "
                                  "EVENTBUS_BENCH_RUNNER to bench/run.py of a source tree)")};
    }
    std::string command = absl::StrCat("python3 '", runner, "'");
    for (const std::string& arg : args_.bench_args) {
      if (arg.find('\'') != std::string::npos) {
        return CommandError{kExitUsage, "bench arguments must not contain a single quote"};
      }
      absl::StrAppend(&command, " '", arg, "'");
    }
    out().flush();
    const int rc = std::system(command.c_str());
    if (rc == 0) return std::nullopt;
    // The runner's own usage errors (argparse exits 2: an unknown option, a missing
    // --build-dir) stay usage errors; its message is already on stderr.
    if (WIFEXITED(rc) && WEXITSTATUS(rc) == 2) {
      return CommandError{kExitUsage, "the benchmark runner refused its arguments (see above)"};
    }
    if (WIFEXITED(rc) && WEXITSTATUS(rc) == 127) {
      return CommandError{kExitFailure, "cannot run python3 (is it installed and on PATH?)"};
    }
    if (WIFEXITED(rc)) {
      return CommandError{kExitFailure, absl::StrCat("the benchmark runner failed (exit ",
                                                     WEXITSTATUS(rc), ")")};
    }
    return CommandError{kExitFailure,
                        absl::StrCat("the benchmark runner was killed (signal ", WTERMSIG(rc), ")")};
  }

 private:
  CliContext& context_;
  Args& args_;
  Session session_;
};

}  // namespace

int RunCli(int argc, const char* const* argv, CliContext& context) {
  Args args;
  if (auto it = context.env.find("EXECUTOR_API_URL"); it != context.env.end()) {
    args.api = it->second;
  }
  if (auto it = context.env.find("EXECUTOR_API_TOKEN"); it != context.env.end()) {
    args.token = it->second;
  }
  CLI::App app{
      "eventbus: publish, follow and inspect event streams and dead letters on any backend.\n"
      "The backend is chosen like the service's: EVENT_STREAM_TYPE (memory, redis, kafka,\n"
      "nats) and its address variable (REDIS_URL, KAFKA_BROKERS, NATS_URL) and *_OPTION_*.\n"
      "Exit codes: 0 ok, 1 the operation failed or refused events, 2 bad arguments or "
      "configuration.",
      "eventbus"};
  app.require_subcommand(1);

  CLI::App* publish = app.add_subcommand("publish", "Publish an event, a task, or NDJSON of many");
  publish->add_option("--stream", args.stream,
                      "Stream to publish to (tasks: default io.flunq.task.requested)");
  publish->add_option("--type", args.type, "CloudEvents type of the event");
  publish->add_option("--source", args.source, "CloudEvents source")->capture_default_str();
  publish->add_option("--id", args.id, "Event (or task) id; default a fresh UUID");
  publish->add_option("--key", args.key, "Ordering / partition key");
  publish->add_option("--subject", args.subject, "CloudEvents subject");
  publish->add_option("--content-type", args.content_type, "datacontenttype of the data");
  publish->add_option("--header", args.headers, "A header name=value; repeatable");
  publish->add_option("--data", args.data, "The event's data (text)");
  publish->add_option("--file", args.file,
                      "Read the data (with --type), an event as JSON, or NDJSON from this file "
                      "('-': stdin)");
  publish->add_flag("--ndjson", args.ndjson,
                    "The file holds one event (or, with --tasks, one task request) per line");
  publish->add_flag("--tasks", args.ndjson_tasks, "NDJSON lines (or --file) are task requests");
  publish->add_option("--task", args.task_type, "Publish a task of this type (e.g. call)");
  publish->add_option("--input", args.task_input, "The task's input, a JSON object");

  CLI::App* tail = app.add_subcommand("tail", "Follow a stream, without joining any group");
  tail->add_option("stream", args.stream, "The stream")->required();
  tail->add_flag("--from-oldest", args.from_oldest, "Start at the oldest retained event");
  tail->add_flag("--no-follow", args.no_follow, "Stop at the end instead of waiting for more");
  tail->add_option("--count", args.count, "Stop after this many events");
  tail->add_flag("--json", args.as_json, "One JSON object per line");

  CLI::App* stats = app.add_subcommand("stats", "Streams, groups, lag, pending, oldest pending");
  stats->add_option("streams", args.streams, "Streams to show (default: all)");
  stats->add_flag("--json", args.as_json, "JSON output");
  stats->add_option("--api", args.api, "Also show task counts from this executor API");
  stats->add_option("--token", args.token, "API token (default: EXECUTOR_API_TOKEN)");

  CLI::App* dlq = app.add_subcommand("dlq", "Dead letters: list, show, redrive, purge");
  dlq->require_subcommand(1);
  auto add_dlq_stream = [&](CLI::App* command) {
    command->add_option("--dlq", args.dlq_stream, "The dead-letter stream")
        ->capture_default_str();
  };
  CLI::App* dlq_list = dlq->add_subcommand("list", "List dead letters with their reasons");
  add_dlq_stream(dlq_list);
  AddFilterOptions(dlq_list, args.filter);
  dlq_list->add_flag("--json", args.as_json, "One JSON object per line");
  CLI::App* dlq_show = dlq->add_subcommand("show", "Show one dead letter in full");
  add_dlq_stream(dlq_show);
  dlq_show->add_option("id", args.event_id, "Its stream id or event id")->required();
  CLI::App* dlq_redrive = dlq->add_subcommand(
      "redrive", "Put dead letters back on their origin stream with a fresh attempt count");
  add_dlq_stream(dlq_redrive);
  AddFilterOptions(dlq_redrive, args.filter);
  dlq_redrive->add_flag("--dry-run", args.dry_run, "Say what would be redriven; change nothing");
  dlq_redrive->add_option("--rate", args.rate, "At most this many events per second (0: no limit)");
  dlq_redrive->add_option("--max-redrives", args.max_redrives,
                          "Refuse events already redriven this many times")
      ->capture_default_str();
  CLI::App* dlq_purge = dlq->add_subcommand("purge", "Delete dead letters");
  add_dlq_stream(dlq_purge);
  AddFilterOptions(dlq_purge, args.filter);
  dlq_purge->add_flag("--dry-run", args.dry_run, "Say how many would be purged; change nothing");

  CLI::App* task = app.add_subcommand("task", "A task over the executor's HTTP API");
  task->require_subcommand(1);
  std::string task_action;
  for (const char* action : {"get", "cancel", "retry"}) {
    CLI::App* sub = task->add_subcommand(action, absl::StrCat(action, " a task"));
    sub->add_option("id", args.task_id, "The task id")->required();
    sub->add_option("--api", args.api, "Executor API base URL (default: EXECUTOR_API_URL)");
    sub->add_option("--token", args.token, "API token (default: EXECUTOR_API_TOKEN)");
    sub->callback([&task_action, action] { task_action = action; });
  }

  CLI::App* bench = app.add_subcommand(
      "bench",
      "Run the benchmark runner (bench/run.py) with every argument that follows, as given "
      "(eventbus bench --quick --backends memory,redis; eventbus bench -- --help for its help)");
  // Everything after `bench` goes to the runner in order: a positional option here would take
  // the values of the runner's options out of their place.
  bench->prefix_command();

  // After `bench --` everything is the runner's, --help included (CLI11 would refuse the "--"
  // after a prefix command's name, and answer --help itself).
  int parsed_argc = argc;
  std::vector<std::string> after_separator;
  if (argc >= 3 && absl::string_view(argv[1]) == "bench" && absl::string_view(argv[2]) == "--") {
    parsed_argc = 2;
    after_separator.assign(argv + 3, argv + argc);
  }
  try {
    app.parse(parsed_argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e, *context.out, *context.err);
    return rc == 0 ? kExitOk : kExitUsage;
  }
  args.bench_args = parsed_argc == argc ? bench->remaining() : after_separator;

  Commands commands(context, args);
  std::optional<CommandError> error;
  if (publish->parsed()) error = commands.Publish();
  if (tail->parsed()) error = commands.Tail();
  if (stats->parsed()) error = commands.Stats();
  if (dlq_list->parsed()) error = commands.DlqList();
  if (dlq_show->parsed()) error = commands.DlqShow();
  if (dlq_redrive->parsed()) error = commands.DlqRedrive();
  if (dlq_purge->parsed()) error = commands.DlqPurge();
  if (!task_action.empty()) error = commands.Task(task_action);
  if (bench->parsed()) error = commands.Bench();
  if (error) {
    *context.err << "eventbus: " << error->message << "\n";
    return error->code;
  }
  return kExitOk;
}

}  // namespace eventbus::cli
