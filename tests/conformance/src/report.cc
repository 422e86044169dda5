#include "report.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace eventbus::conformance {
namespace {

struct CaseResult {
  std::string name;
  std::string result;  // passed, failed, skipped
  std::string reason;  // why skipped, or the first failure
  long long milliseconds = 0;
};

struct BackendRecord {
  std::map<std::string, bool> hooks;
  std::optional<Capabilities> capabilities;
  std::vector<CaseResult> cases;
};

// Cases run on the main thread, but backends' threads may run assertions too: one lock.
std::mutex& Mu() {
  static auto* mu = new std::mutex();
  return *mu;
}
std::map<std::string, BackendRecord>& Records() {
  static auto* records = new std::map<std::string, BackendRecord>();
  return *records;
}

std::string JsonString(absl::string_view in) {
  std::string out = "\"";
  for (const char c : in) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += absl::StrFormat("\\u%04x", static_cast<int>(c));
        } else {
          out += c;  // UTF-8 passes through
        }
    }
  }
  return out + "\"";
}

std::string FirstLine(absl::string_view text, size_t max_bytes = 300) {
  text = text.substr(0, text.find('\n'));
  if (text.size() > max_bytes) return absl::StrCat(text.substr(0, max_bytes), "...");
  return std::string(text);
}

std::string ToJson(const std::string& backend, const BackendRecord& record) {
  int passed = 0, failed = 0, skipped = 0;
  for (const CaseResult& c : record.cases) {
    passed += c.result == "passed";
    failed += c.result == "failed";
    skipped += c.result == "skipped";
  }
  std::string out = absl::StrCat("{\n  \"backend\": ", JsonString(backend), ",\n");
  out += "  \"capabilities\": {";
  if (record.capabilities.has_value()) {
    const Capabilities& c = *record.capabilities;
    auto flag = [](bool b) { return b ? "true" : "false"; };
    absl::StrAppend(&out, "\"persistent\": ", flag(c.persistent), ", \"ordered_per_key\": ",
                    flag(c.ordered_per_key), ", \"duplicates_possible\": ",
                    flag(c.duplicates_possible), ", \"native_delay\": ", flag(c.native_delay),
                    ", \"reclaim_from_other_consumers\": ", flag(c.reclaim_from_other_consumers),
                    ", \"atomic_dead_letter\": ", flag(c.atomic_dead_letter),
                    ", \"max_event_bytes\": ", c.max_event_bytes,
                    ", \"publish_dedupe_window_ms\": ",
                    absl::ToInt64Milliseconds(c.publish_dedupe_window));
  }
  out += "},\n  \"hooks\": {";
  bool first = true;
  for (const auto& [hook, given] : record.hooks) {
    absl::StrAppend(&out, first ? "" : ", ", JsonString(hook), ": ", given ? "true" : "false");
    first = false;
  }
  absl::StrAppend(&out, "},\n  \"passed\": ", passed, ", \"failed\": ", failed,
                  ", \"skipped\": ", skipped, ",\n  \"cases\": [");
  first = true;
  for (const CaseResult& c : record.cases) {
    absl::StrAppend(&out, first ? "\n" : ",\n", "    {\"name\": ", JsonString(c.name),
                    ", \"result\": ", JsonString(c.result), ", \"milliseconds\": ", c.milliseconds);
    if (!c.reason.empty()) absl::StrAppend(&out, ", \"reason\": ", JsonString(c.reason));
    out += "}";
    first = false;
  }
  return out + "\n  ]\n}\n";
}

class ReportWriter final : public testing::EmptyTestEventListener {
 public:
  void OnTestEnd(const testing::TestInfo& info) override {
    // Our cases only: "<prefix>/EventStreamConformance", named "<case>/<backend>".
    if (!absl::EndsWith(info.test_suite_name(), "EventStreamConformance")) return;
    const absl::string_view full = info.name();
    const size_t slash = full.rfind('/');
    if (slash == absl::string_view::npos) return;
    CaseResult c;
    c.name = std::string(full.substr(0, slash));
    const std::string backend(full.substr(slash + 1));
    const testing::TestResult& result = *info.result();
    c.milliseconds = result.elapsed_time();
    c.result = result.Skipped() ? "skipped" : result.Failed() ? "failed" : "passed";
    for (int i = 0; i < result.total_part_count(); ++i) {
      const testing::TestPartResult& part = result.GetTestPartResult(i);
      if ((c.result == "skipped" && part.skipped()) || (c.result == "failed" && part.failed())) {
        c.reason = FirstLine(part.message());
        break;
      }
    }
    std::lock_guard lock(Mu());
    Records()[backend].cases.push_back(std::move(c));
  }

  void OnTestProgramEnd(const testing::UnitTest&) override {
    const char* env = std::getenv("EVENTBUS_CONFORMANCE_REPORT_DIR");
    const std::filesystem::path dir = env != nullptr && *env != '\0' ? env : ".";
    std::error_code error;
    std::filesystem::create_directories(dir, error);
    std::lock_guard lock(Mu());
    for (const auto& [backend, record] : Records()) {
      if (record.cases.empty()) continue;
      const std::filesystem::path path = dir / (backend + ".json");
      const std::filesystem::path temporary = dir / (backend + ".json.tmp");
      {
        std::ofstream out(temporary, std::ios::trunc);
        out << ToJson(backend, record);
        if (!out) {
          std::fprintf(stderr, "conformance report: cannot write %s\n", temporary.c_str());
          continue;
        }
      }
      std::filesystem::rename(temporary, path, error);
      if (error) {
        std::fprintf(stderr, "conformance report: cannot write %s: %s\n", path.c_str(),
                     error.message().c_str());
      } else {
        std::fprintf(stderr, "conformance report: %s\n", path.c_str());
      }
    }
  }
};

}  // namespace

void InstallReport() {
  static const bool installed = [] {
    testing::UnitTest::GetInstance()->listeners().Append(new ReportWriter());
    return true;
  }();
  (void)installed;
}

void NoteBackend(const BackendUnderTest& backend) {
  std::lock_guard lock(Mu());
  auto& hooks = Records()[backend.name].hooks;
  hooks["virtual_time"] = static_cast<bool>(backend.let_time_pass);
  hooks["crash"] = static_cast<bool>(backend.crash);
  hooks["restart_server"] = static_cast<bool>(backend.restart_server);
  hooks["cut_connection"] = static_cast<bool>(backend.cut_connection);
  hooks["make_bounded_stream"] = static_cast<bool>(backend.make_bounded_stream);
}

void NoteCapabilities(const std::string& backend, const Capabilities& caps) {
  std::lock_guard lock(Mu());
  Records()[backend].capabilities = caps;
}

}  // namespace eventbus::conformance
