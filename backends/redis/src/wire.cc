#include "wire.h"

#include "absl/container/flat_hash_set.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace eventbus::redis::wire {
namespace {

constexpr absl::string_view kSpecVersionField = "specversion";
constexpr absl::string_view kIdField = "id";
constexpr absl::string_view kSourceField = "source";
constexpr absl::string_view kTypeField = "type";
constexpr absl::string_view kSubjectField = "subject";
constexpr absl::string_view kTimeField = "time";
constexpr absl::string_view kContentTypeField = "datacontenttype";
constexpr absl::string_view kSchemaField = "dataschema";
constexpr absl::string_view kKeyField = "partitionkey";
constexpr absl::string_view kDataField = "data";

// The entry's fields in order, once for both encodings: (name prefix, name, value).
template <typename Visit>
void VisitFields(const Event& event, Visit&& visit) {
  auto if_set = [&](absl::string_view name, const std::string& value) {
    if (!value.empty()) visit(absl::string_view(), name, value);
  };
  if_set(kSpecVersionField, event.spec_version());
  if_set(kIdField, event.id());
  if_set(kSourceField, event.source());
  if_set(kTypeField, event.type());
  if_set(kSubjectField, event.subject());
  if (event.has_time()) visit(absl::string_view(), kTimeField, FormatTimeAttribute(EventTime(event)));
  if_set(kContentTypeField, event.data_content_type());
  if_set(kSchemaField, event.data_schema());
  if_set(kKeyField, event.key());
  for (const auto& [name, value] : event.headers()) visit(kHeaderPrefix, name, value);
  visit(absl::string_view(), kDataField, event.data());
}

// Where a text attribute goes; null for fields handled separately.
std::string* TextTarget(absl::string_view name, Event& event) {
  if (name == kIdField) return event.mutable_id();
  if (name == kSourceField) return event.mutable_source();
  if (name == kSpecVersionField) return event.mutable_spec_version();
  if (name == kTypeField) return event.mutable_type();
  if (name == kSubjectField) return event.mutable_subject();
  if (name == kContentTypeField) return event.mutable_data_content_type();
  if (name == kSchemaField) return event.mutable_data_schema();
  if (name == kKeyField) return event.mutable_key();
  return nullptr;
}

std::string Printable(absl::string_view name) {
  return absl::CHexEscape(name.substr(0, 64));
}

}  // namespace

void RespCommand::AddJoined(absl::string_view first, absl::string_view second) {
  absl::StrAppend(&body_, "$", first.size() + second.size(), "\r\n", first, second, "\r\n");
  ++arguments_;
}

std::string RespCommand::Take() {
  std::string command = absl::StrCat("*", arguments_, "\r\n", body_);
  body_.clear();
  arguments_ = 0;
  return command;
}

void AppendFields(const Event& event, std::vector<std::string>& args) {
  VisitFields(event, [&](absl::string_view prefix, absl::string_view name, absl::string_view value) {
    args.push_back(absl::StrCat(prefix, name));
    args.emplace_back(value);
  });
}

void AppendFields(const Event& event, RespCommand& command) {
  VisitFields(event, [&](absl::string_view prefix, absl::string_view name, absl::string_view value) {
    command.AddJoined(prefix, name);
    command.Add(value);
  });
}

absl::StatusOr<Event> Decode(const Fields& fields) {
  Event event;
  absl::flat_hash_set<absl::string_view> seen;
  for (const auto& [name, value] : fields) {
    if (!seen.insert(name).second) {
      return absl::InvalidArgumentError(absl::StrCat("duplicate field '", Printable(name), "'"));
    }
    const bool is_header = absl::StartsWith(name, kHeaderPrefix);
    std::string* target = TextTarget(name, event);
    if (!is_header && target == nullptr && name != kDataField && name != kTimeField) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown field '", Printable(name),
          "' (attributes are specversion, id, source, type, subject, time, datacontenttype, "
          "dataschema, partitionkey, data; extensions go in h:<name> fields)"));
    }
    if (name == kDataField) {
      event.set_data(value);
    } else if (is_header) {
      (*event.mutable_headers())[name.substr(kHeaderPrefix.size())] = value;
    } else if (name == kTimeField) {
      absl::StatusOr<absl::Time> time = ParseTimeAttribute(value);
      if (!time.ok()) return time.status();
      SetEventTime(event, *time);
    } else {
      *target = value;
    }
  }
  // Required attributes, UTF-8, lengths: the same check, and reasons, as every backend.
  if (absl::Status valid = ValidateEnvelope(event); !valid.ok()) return valid;
  return event;
}

std::string RenderRawEntry(const Fields& fields) {
  std::string out;
  for (const auto& [name, value] : fields) {
    // A space in the name would read as the separator: octal-escape it (\x would swallow
    // the hex digits that follow).
    absl::StrAppend(&out, absl::StrReplaceAll(absl::CEscape(name), {{" ", "\\040"}}), " ",
                    absl::CEscape(value), "\n");
  }
  return out;
}

}  // namespace eventbus::redis::wire
