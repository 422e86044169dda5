#include "wire.h"

#include <cstdint>

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

void AppendIfSet(absl::string_view name, const std::string& value, std::vector<std::string>& args) {
  if (value.empty()) return;
  args.emplace_back(name);
  args.push_back(value);
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

bool IsValidUtf8(absl::string_view text) {
  size_t i = 0;
  const size_t n = text.size();
  while (i < n) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    int extra;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
      extra = 1;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      extra = 2;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      extra = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + extra >= n) return false;
    for (int k = 1; k <= extra; ++k) {
      const auto cc = static_cast<unsigned char>(text[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    // Overlong forms, surrogates and values beyond Unicode are not UTF-8.
    if ((extra == 1 && cp < 0x80) || (extra == 2 && cp < 0x800) || (extra == 3 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += extra + 1;
  }
  return true;
}

std::string FormatEventTime(absl::Time time) {
  return absl::FormatTime("%Y-%m-%d%ET%H:%M:%E*SZ", time, absl::UTCTimeZone());
}

absl::StatusOr<absl::Time> ParseEventTime(absl::string_view text) {
  absl::Time time;
  std::string error;
  if (!absl::ParseTime(absl::RFC3339_full, text, absl::UTCTimeZone(), &time, &error)) {
    return absl::InvalidArgumentError(absl::StrCat("field 'time' = \"", absl::CHexEscape(text.substr(0, 64)),
                                                   "\" is not an RFC 3339 timestamp (", error, ")"));
  }
  // google.protobuf.Timestamp covers years 1 to 9999.
  if (time < absl::FromUnixSeconds(-62135596800) || time >= absl::FromUnixSeconds(253402300800)) {
    return absl::InvalidArgumentError(absl::StrCat("field 'time' = \"", absl::CHexEscape(text),
                                                   "\" is outside years 0001..9999"));
  }
  return time;
}

void AppendFields(const Event& event, std::vector<std::string>& args) {
  AppendIfSet(kSpecVersionField, event.spec_version(), args);
  AppendIfSet(kIdField, event.id(), args);
  AppendIfSet(kSourceField, event.source(), args);
  AppendIfSet(kTypeField, event.type(), args);
  AppendIfSet(kSubjectField, event.subject(), args);
  if (event.has_time()) {
    args.emplace_back(kTimeField);
    args.push_back(FormatEventTime(EventTime(event)));
  }
  AppendIfSet(kContentTypeField, event.data_content_type(), args);
  AppendIfSet(kSchemaField, event.data_schema(), args);
  AppendIfSet(kKeyField, event.key(), args);
  for (const auto& [name, value] : event.headers()) {
    args.push_back(absl::StrCat(kHeaderPrefix, name));
    args.push_back(value);
  }
  args.emplace_back(kDataField);
  args.push_back(event.data());
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
      continue;
    }
    if (!IsValidUtf8(value)) {
      return absl::InvalidArgumentError(
          absl::StrCat("field '", Printable(name), "' is not valid UTF-8 text"));
    }
    if (is_header) {
      absl::string_view header = absl::string_view(name).substr(kHeaderPrefix.size());
      if (!IsValidUtf8(header)) {
        return absl::InvalidArgumentError(
            absl::StrCat("header name '", Printable(header), "' is not valid UTF-8 text"));
      }
      (*event.mutable_headers())[std::string(header)] = value;
    } else if (name == kTimeField) {
      absl::StatusOr<absl::Time> time = ParseEventTime(value);
      if (!time.ok()) return time.status();
      SetEventTime(event, *time);
    } else {
      *target = value;
    }
  }
  for (absl::string_view required : {kSpecVersionField, kIdField, kSourceField, kTypeField}) {
    if (!seen.contains(required)) {
      return absl::InvalidArgumentError(absl::StrCat("missing required field '", required, "'"));
    }
  }
  if (event.spec_version() != kSpecVersion) {
    return absl::InvalidArgumentError(absl::StrCat("field 'specversion' must be \"", kSpecVersion,
                                                   "\", got \"", Printable(event.spec_version()), "\""));
  }
  for (absl::string_view required : {kIdField, kSourceField, kTypeField}) {
    if (TextTarget(required, event)->empty()) {
      return absl::InvalidArgumentError(absl::StrCat("required field '", required, "' is empty"));
    }
  }
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
