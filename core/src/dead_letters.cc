#include "eventbus/dead_letters.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "eventbus/clock.h"
#include "eventbus/event_stream.h"
#include "eventbus/status_macros.h"

namespace eventbus {
namespace {

// A JSON string literal (core carries no JSON library; the history is small and flat).
std::string JsonString(absl::string_view text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          absl::StrAppend(&out, "\\u00", absl::BytesToHexString(std::string(1, static_cast<char>(c))));
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += "\"";
  return out;
}

}  // namespace

bool DeadLetterFilter::Matches(const StoredEvent& stored) const {
  const Event& e = stored.event;
  if (!ids.empty() && std::find(ids.begin(), ids.end(), stored.id) == ids.end() &&
      std::find(ids.begin(), ids.end(), e.id()) == ids.end()) {
    return false;
  }
  // Any case (Debian's Abseil has no StrContainsIgnoreCase).
  if (!reason.empty() && !absl::StrContains(absl::AsciiStrToLower(HeaderValue(e, kDlqReasonHeader)),
                                            absl::AsciiStrToLower(reason))) {
    return false;
  }
  if (!type.empty() && e.type() != type) return false;
  const absl::Time time = EventTime(e);
  return time >= since && time <= until;
}

absl::StatusOr<absl::Time> ParseFilterTime(absl::string_view what, absl::string_view text,
                                           absl::Time now) {
  absl::Time time;
  std::string error;
  if (absl::ParseTime(absl::RFC3339_full, text, &time, &error)) return time;
  absl::Duration ago;
  if (absl::ParseDuration(text, &ago) && ago >= absl::ZeroDuration()) return now - ago;
  return absl::InvalidArgumentError(absl::StrCat(
      what, " \"", text, "\" is neither an RFC 3339 time nor a duration like 2h"));
}

absl::StatusOr<Redrive> PrepareRedrive(const Event& dead_letter, int max_redrives,
                                       absl::Time now) {
  const std::string origin = HeaderValue(dead_letter, kDlqOriginStreamHeader);
  if (origin.empty()) {
    return absl::FailedPreconditionError(
        "it has no dlqoriginstream header (it was not written by DeadLetter)");
  }
  int redrives = 0;
  if (!absl::SimpleAtoi(HeaderValue(dead_letter, kRedrivesHeader), &redrives)) redrives = 0;
  if (redrives >= max_redrives) {
    return absl::FailedPreconditionError(absl::StrCat(
        "it was redriven ", redrives, " times already and came back each time (at most ",
        max_redrives, ")"));
  }
  Redrive out;
  out.stream = origin;
  out.event = dead_letter;
  auto& headers = *out.event.mutable_headers();
  // The history is a JSON array; append to it textually (it is ours, written only here).
  std::string history = HeaderValue(dead_letter, kRedriveHistoryHeader);
  if (history.size() < 2 || history.front() != '[' || history.back() != ']') history = "[]";
  const std::string trip = absl::StrCat(
      "{\"reason\":", JsonString(HeaderValue(dead_letter, kDlqReasonHeader)),
      ",\"stream\":", JsonString(origin),
      ",\"id\":", JsonString(HeaderValue(dead_letter, kDlqOriginIdHeader)),
      ",\"group\":", JsonString(HeaderValue(dead_letter, kDlqOriginGroupHeader)),
      ",\"delivery_count\":", JsonString(HeaderValue(dead_letter, kDlqDeliveryCountHeader)),
      ",\"redriven_at\":", JsonString(absl::FormatTime(absl::RFC3339_full, now, absl::UTCTimeZone())),
      "}");
  history.pop_back();
  absl::StrAppend(&history, history.size() > 1 ? "," : "", trip, "]");
  for (absl::string_view name : {kDlqReasonHeader, kDlqOriginStreamHeader, kDlqOriginIdHeader,
                                 kDlqOriginGroupHeader, kDlqDeliveryCountHeader}) {
    headers.erase(std::string(name));
  }
  headers[std::string(kRedriveHistoryHeader)] = history;
  headers[std::string(kRedrivesHeader)] = absl::StrCat(redrives + 1);
  return out;
}

absl::Status ForEachDeadLetter(StreamInspector& inspector, absl::string_view stream,
                               const DeadLetterFilter& filter,
                               const std::function<bool(const StoredEvent&)>& f) {
  constexpr int kPage = 500;
  std::string cursor;
  int64_t matched = 0;
  while (true) {
    EVENTBUS_ASSIGN_OR_RETURN(ReadPage page, inspector.Read(stream, cursor, kPage));
    if (page.events.empty()) return absl::OkStatus();
    for (const StoredEvent& stored : page.events) {
      if (!filter.Matches(stored)) continue;
      if (!f(stored)) return absl::OkStatus();
      if (filter.limit > 0 && ++matched >= filter.limit) return absl::OkStatus();
    }
    cursor = page.next_cursor;
  }
}

absl::StatusOr<RedriveReport> RedriveDeadLetters(EventStream& stream,
                                                 absl::string_view dead_letter_stream,
                                                 const DeadLetterFilter& filter,
                                                 const RedriveOptions& options) {
  StreamInspector* inspector = stream.inspector();
  if (inspector == nullptr) {
    return absl::UnimplementedError(absl::StrCat("the ", stream.backend_name(),
                                                 " backend does not support stream inspection"));
  }
  // Select first: redriving while reading would meet what we redrive when origin == DLQ.
  std::vector<StoredEvent> selected;
  absl::Status read = ForEachDeadLetter(*inspector, dead_letter_stream, filter,
                                        [&](const StoredEvent& stored) {
                                          selected.push_back(stored);
                                          return true;
                                        });
  if (!read.ok() && !absl::IsNotFound(read)) return read;

  Clock* clock = options.clock != nullptr ? options.clock : stream.clock();
  RedriveReport report;
  const absl::Time start = clock->Now();
  int64_t handled = 0;
  for (const StoredEvent& stored : selected) {
    absl::StatusOr<Redrive> redrive = PrepareRedrive(stored.event, options.max_redrives, clock->Now());
    if (!redrive.ok()) {
      report.refused.push_back(
          {stored.id, stored.event.id(), std::string(redrive.status().message())});
    } else if (options.dry_run) {
      report.redriven.push_back(stored.id);
    } else {
      if (options.rate > 0) {
        // Paced from the start, so a slow publish does not lower the rate further.
        const absl::Time due =
            start + absl::Seconds(static_cast<double>(report.redriven.size()) / options.rate);
        const absl::Time now = clock->Now();
        if (due > now) {
          if (options.sleep) {
            options.sleep(due - now);
          } else {
            absl::SleepFor(due - now);
          }
        }
      }
      absl::StatusOr<PublishReceipt> receipt =
          stream.PublishAndWait(redrive->stream, std::move(redrive->event), absl::Seconds(30));
      if (receipt.ok()) {
        report.redriven.push_back(stored.id);
      } else {
        ++report.failed;
        if (report.first_error.empty()) report.first_error = receipt.status().ToString();
      }
    }
    if (options.on_progress) options.on_progress(++handled, static_cast<int64_t>(selected.size()));
  }
  if (!options.dry_run && !report.redriven.empty()) {
    absl::StatusOr<int64_t> removed = inspector->Delete(dead_letter_stream, report.redriven);
    if (!removed.ok()) report.kept_because = std::string(removed.status().message());
  }
  return report;
}

}  // namespace eventbus
