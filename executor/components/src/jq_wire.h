#pragma once
// The framing between the service and eventbus-jq-worker (private to this component).
//
// Every message, both ways, is one frame: a 4-byte little-endian length, then that many bytes
// of payload. A payload is a sequence of fields, each a 4-byte little-endian length and its
// bytes. Requests: field 0 is the operation ("ping", "compile", "evaluate"), the rest depend on
// it (see jq_worker_main.cc). Replies: field 0 is the absl::StatusCode as decimal text, field 1
// the message, then (evaluate) one field per output, compact JSON text.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace eventbus::executor::jq_wire {

inline void AppendU32(std::string* out, uint32_t value) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

inline uint32_t ReadU32(const char* p) {
  uint32_t value = 0;
  for (int i = 0; i < 4; ++i) value |= uint32_t{static_cast<unsigned char>(p[i])} << (8 * i);
  return value;
}

// Appends one field to a payload.
inline void AppendField(std::string* payload, absl::string_view field) {
  AppendU32(payload, static_cast<uint32_t>(field.size()));
  payload->append(field.data(), field.size());
}

// The fields of a payload; nullopt when it is malformed.
inline std::optional<std::vector<absl::string_view>> SplitFields(absl::string_view payload) {
  std::vector<absl::string_view> fields;
  while (!payload.empty()) {
    if (payload.size() < 4) return std::nullopt;
    const uint32_t size = ReadU32(payload.data());
    payload.remove_prefix(4);
    if (size > payload.size()) return std::nullopt;
    fields.push_back(payload.substr(0, size));
    payload.remove_prefix(size);
  }
  return fields;
}

// A whole frame (length prefix included) for `payload`.
inline std::string Frame(absl::string_view payload) {
  std::string frame;
  frame.reserve(payload.size() + 4);
  AppendU32(&frame, static_cast<uint32_t>(payload.size()));
  frame.append(payload.data(), payload.size());
  return frame;
}

}  // namespace eventbus::executor::jq_wire
