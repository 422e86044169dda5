#include "wire.h"

#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "nats_handles.h"

namespace eventbus::nats::wire {
namespace {

constexpr absl::string_view kSpecVersion = "ce-specversion";
constexpr absl::string_view kId = "ce-id";
constexpr absl::string_view kSource = "ce-source";
constexpr absl::string_view kType = "ce-type";
constexpr absl::string_view kSubject = "ce-subject";
constexpr absl::string_view kTime = "ce-time";
constexpr absl::string_view kSchema = "ce-dataschema";
constexpr absl::string_view kKey = "ce-partitionkey";
// Written as Content-Type (the binding's rule); accepted in this spelling too.
constexpr absl::string_view kContentTypeAttribute = "ce-datacontenttype";

bool IsReservedHeader(absl::string_view name) {
  for (absl::string_view reserved : {kSpecVersion, kId, kSource, kType, kSubject, kTime, kSchema,
                                     kKey, kContentTypeAttribute}) {
    if (absl::EqualsIgnoreCase(name, reserved)) return true;
  }
  return false;
}

// nats.c 3.4 cannot parse a header with an empty (or all-blank) value: it skips the blanks
// after ':' past the line end and takes the next line as the value. So an empty value travels
// as `""`, and a value made only of `""` pairs gets one more pair; the decoder drops one pair
// from such a value. Every other value travels as is.
bool OnlyQuotePairs(absl::string_view v) {
  if (v.size() % 2 != 0) return false;
  for (char c : v) {
    if (c != '"') return false;
  }
  return true;
}
std::string EscapeEmpty(const std::string& v) {
  return OnlyQuotePairs(v) ? absl::StrCat(v, "\"\"") : v;
}
std::string UnescapeEmpty(std::string v) {
  if (!v.empty() && OnlyQuotePairs(v)) v.resize(v.size() - 2);
  return v;
}

std::string Printable(absl::string_view text) { return absl::CHexEscape(text.substr(0, 64)); }

absl::Status CheckValue(absl::string_view what, absl::string_view value) {
  if (value.find_first_of("\r\n") != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " contains CR or LF, which a NATS header cannot carry"));
  }
  if (!value.empty() && (absl::ascii_isspace(static_cast<unsigned char>(value.front())) ||
                         absl::ascii_isspace(static_cast<unsigned char>(value.back())))) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " starts or ends with whitespace, which NATS header parsing does not keep"));
  }
  return absl::OkStatus();
}

absl::Status Set(natsMsg* msg, absl::string_view name, const std::string& value,
                 absl::string_view what) {
  if (absl::Status s = CheckValue(what, value); !s.ok()) return s;
  const std::string text = EscapeEmpty(value);
  return ToStatus(natsMsgHeader_Set(msg, std::string(name).c_str(), text.c_str()),
                  absl::StrCat("setting NATS header ", name));
}

absl::Status SetIfNotEmpty(natsMsg* msg, absl::string_view name, const std::string& value,
                           absl::string_view what) {
  if (value.empty()) return absl::OkStatus();
  return Set(msg, name, value, what);
}

}  // namespace

absl::Status EncodeHeaders(const Event& event, natsMsg* msg) {
  absl::Status s;
  if (s = Set(msg, kSpecVersion, event.spec_version(), "specversion"); !s.ok()) return s;
  if (s = Set(msg, kId, event.id(), "id"); !s.ok()) return s;
  if (s = Set(msg, kSource, event.source(), "source"); !s.ok()) return s;
  if (s = Set(msg, kType, event.type(), "type"); !s.ok()) return s;
  if (s = SetIfNotEmpty(msg, kSubject, event.subject(), "subject"); !s.ok()) return s;
  if (event.has_time()) {
    if (s = Set(msg, kTime, FormatTimeAttribute(EventTime(event)), "time"); !s.ok()) return s;
  }
  if (s = SetIfNotEmpty(msg, kContentTypeHeader, event.data_content_type(), "datacontenttype");
      !s.ok()) {
    return s;
  }
  if (s = SetIfNotEmpty(msg, kSchema, event.data_schema(), "dataschema"); !s.ok()) return s;
  if (s = SetIfNotEmpty(msg, kKey, event.key(), "key"); !s.ok()) return s;
  for (const auto& [name, value] : event.headers()) {
    const std::string header = absl::StrCat(kAttributePrefix, name);
    if (name.empty() || name.find_first_of(": \t\r\n") != std::string::npos ||
        std::any_of(name.begin(), name.end(),
                    [](char c) { return static_cast<unsigned char>(c) < 0x21 || c == 0x7f; })) {
      return absl::InvalidArgumentError(absl::StrCat(
          "header name '", Printable(name), "' is not a valid NATS header name (no ':', no "
          "whitespace or control characters)"));
    }
    if (IsReservedHeader(header)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "header '", name, "' would travel as ", header,
          ", which is a CloudEvents attribute's header on NATS; rename it"));
    }
    if (s = Set(msg, header, value, absl::StrCat("header '", Printable(name), "'")); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Event> Decode(natsMsg* msg) {
  Event event;
  const char** keys = nullptr;
  int count = 0;
  natsStatus ns = natsMsgHeader_Keys(msg, &keys, &count);
  if (ns == NATS_NOT_FOUND) count = 0;
  else if (ns != NATS_OK) return ToStatus(ns, "reading NATS headers");
  absl::Status error;
  for (int i = 0; i < count && error.ok(); ++i) {
    const absl::string_view name(keys[i]);
    const char** values = nullptr;
    int n = 0;
    if (natsMsgHeader_Values(msg, keys[i], &values, &n) != NATS_OK || n < 1) continue;
    if (n > 1) {
      error = absl::InvalidArgumentError(absl::StrCat("header '", Printable(name), "' given ",
                                                      n, " times"));
      free(values);
      break;
    }
    const std::string value = UnescapeEmpty(values[0]);
    free(values);
    if (name == kSpecVersion) {
      event.set_spec_version(value);
    } else if (name == kId) {
      event.set_id(value);
    } else if (name == kSource) {
      event.set_source(value);
    } else if (name == kType) {
      event.set_type(value);
    } else if (name == kSubject) {
      event.set_subject(value);
    } else if (name == kTime) {
      absl::StatusOr<absl::Time> time = ParseTimeAttribute(value);
      if (time.ok()) {
        SetEventTime(event, *time);
      } else {
        error = time.status();
      }
    } else if (name == kContentTypeHeader || name == kContentTypeAttribute) {
      event.set_data_content_type(value);
    } else if (name == kSchema) {
      event.set_data_schema(value);
    } else if (name == kKey) {
      event.set_key(value);
    } else if (absl::StartsWith(name, kAttributePrefix)) {
      (*event.mutable_headers())[std::string(name.substr(kAttributePrefix.size()))] = value;
    }
    // Anything else (Nats-Msg-Id, Nats-Expected-*, a foreign client's own headers) is not part
    // of the event.
  }
  free(keys);
  if (!error.ok()) return error;
  const char* data = natsMsg_GetData(msg);
  const int length = natsMsg_GetDataLength(msg);
  if (data != nullptr && length > 0) event.set_data(std::string(data, static_cast<size_t>(length)));
  // Required attributes, UTF-8, lengths: the same check, and reasons, as every backend.
  if (absl::Status valid = ValidateEnvelope(event); !valid.ok()) return valid;
  return event;
}

}  // namespace eventbus::nats::wire
