#pragma once
// The byte layout the structured fuzz targets read their input in (tests/fuzz/README.md):
// a sequence of strings, each a 2-byte little-endian length then that many bytes (cut short at
// the end of the input), so mutations of the bytes mutate names, values and their number.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <string>

namespace eventbus::fuzz {

class InputReader {
 public:
  InputReader(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  bool done() const { return pos_ >= size_; }

  uint8_t Byte() { return done() ? 0 : data_[pos_++]; }

  std::string String() {
    size_t length = Byte();
    length |= static_cast<size_t>(Byte()) << 8;
    if (length > size_ - pos_) length = size_ - pos_;
    std::string out(reinterpret_cast<const char*>(data_ + pos_), length);
    pos_ += length;
    return out;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// A broken invariant: print why and abort, so libFuzzer records the input as a crash.
[[noreturn]] inline void Fail(const char* what, const std::string& detail = "") {
  std::fprintf(stderr, "fuzz invariant broken: %s\n%s\n", what, detail.c_str());
  std::abort();
}

#define EVENTBUS_FUZZ_CHECK(condition, detail) \
  do {                                         \
    if (!(condition)) ::eventbus::fuzz::Fail(#condition, detail); \
  } while (false)

}  // namespace eventbus::fuzz
