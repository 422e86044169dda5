#include "wire_format.h"

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace eventbus::kafka {
namespace {

// Attributes with their own field in Event (so not allowed as header names).
constexpr absl::string_view kAttributeNames[] = {
    "id",   "source",     "specversion",     "type",        "subject",
    "time", "dataschema", "datacontenttype", "partitionkey", "data"};

bool IsAttributeName(absl::string_view name) {
  for (absl::string_view attribute : kAttributeNames) {
    if (name == attribute) return true;
  }
  return false;
}

// CloudEvents extension names are lower-case ASCII letters and digits; those travel as
// `ce_<name>`, anything else (W3C `traceparent` would qualify, `X-Request-Id` would not)
// as a plain header.
bool IsExtensionName(absl::string_view name) {
  if (name.empty()) return false;
  for (char c : name) {
    if (!absl::ascii_islower(static_cast<unsigned char>(c)) &&
        !absl::ascii_isdigit(static_cast<unsigned char>(c))) {
      return false;
    }
  }
  return true;
}

// Names that would decode as something else: what Encode refuses and Decode never yields.
bool IsReservedHeaderName(absl::string_view name) {
  return name == kContentTypeHeader || absl::StartsWith(name, kCePrefix) ||
         absl::StartsWith(name, kInternalPrefix);
}

absl::Status Malformed(absl::string_view why) { return absl::InvalidArgumentError(why); }

}  // namespace

absl::StatusOr<KafkaRecord> EncodeEvent(const Event& event) {
  KafkaRecord record;
  if (!event.key().empty()) record.key = event.key();
  record.value = event.data();
  record.headers.reserve(8 + event.headers().size());  // the attributes and the extensions
  auto add = [&record](absl::string_view name, absl::string_view value) {
    record.headers.emplace_back(std::string(name), std::string(value));
  };
  add("ce_id", event.id());
  add("ce_source", event.source());
  add("ce_specversion", event.spec_version());
  add("ce_type", event.type());
  if (event.has_time()) {
    // RFC 3339 in UTC with a literal Z, as the CloudEvents examples write it.
    add("ce_time", FormatTimeAttribute(EventTime(event)));
  }
  if (!event.subject().empty()) add("ce_subject", event.subject());
  if (!event.data_schema().empty()) add("ce_dataschema", event.data_schema());
  if (!event.data_content_type().empty()) add(kContentTypeHeader, event.data_content_type());
  for (const auto& [name, value] : event.headers()) {
    if (IsReservedHeaderName(name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "header \"", absl::CEscape(name),
          "\" is reserved by the Kafka wire format (content-type, ce_* and eventbus-* are)"));
    }
    // An extension that shares an attribute's name (a header called "type") travels as a
    // plain header: as ce_type it would overwrite the attribute.
    if (IsExtensionName(name) && !IsAttributeName(name)) {
      add(absl::StrCat(kCePrefix, name), value);
    } else {
      add(name, value);
    }
  }
  return record;
}

absl::StatusOr<DecodedRecord> DecodeEvent(const KafkaRecord& record) {
  DecodedRecord decoded;
  Event& event = decoded.event;
  std::optional<std::string> time_text;
  std::optional<std::string> partition_key;
  for (const auto& [name, value] : record.headers) {
    if (absl::StartsWith(name, kInternalPrefix)) {
      decoded.internal[name] = value;
      continue;
    }
    if (name == kContentTypeHeader) {
      event.set_data_content_type(value);
      continue;
    }
    if (!absl::StartsWith(name, kCePrefix)) {
      (*event.mutable_headers())[name] = value;
      continue;
    }
    const absl::string_view attribute = absl::string_view(name).substr(kCePrefix.size());
    if (attribute == "id") {
      event.set_id(value);
    } else if (attribute == "source") {
      event.set_source(value);
    } else if (attribute == "specversion") {
      event.set_spec_version(value);
    } else if (attribute == "type") {
      event.set_type(value);
    } else if (attribute == "subject") {
      event.set_subject(value);
    } else if (attribute == "dataschema") {
      event.set_data_schema(value);
    } else if (attribute == "time") {
      time_text = value;
    } else if (attribute == "partitionkey") {
      partition_key = value;
    } else if (attribute == "datacontenttype") {
      // Structured-mode name seen in binary mode: accept it rather than lose it.
      event.set_data_content_type(value);
    } else if (attribute.empty()) {
      return Malformed("header \"ce_\" names no attribute");
    } else if (IsReservedHeaderName(attribute)) {
      // ce_ce_x would become a header "ce_x" that no encoder could write back (a retry or a
      // dead letter of this event would fail).
      return Malformed(absl::StrCat("header \"", absl::CEscape(name),
                                    "\" names a reserved header"));
    } else {
      (*event.mutable_headers())[std::string(attribute)] = value;
    }
  }
  if (time_text.has_value()) {
    absl::StatusOr<absl::Time> time = ParseTimeAttribute(*time_text);
    if (!time.ok()) return time.status();
    SetEventTime(event, *time);
  }
  if (record.key.has_value()) {
    event.set_key(*record.key);
  } else if (partition_key.has_value()) {
    event.set_key(*partition_key);
  }
  event.set_data(record.value);
  // Required attributes, UTF-8, lengths: the same check, and reasons, as every backend.
  if (absl::Status valid = ValidateEnvelope(event); !valid.ok()) return valid;
  return decoded;
}

}  // namespace eventbus::kafka
