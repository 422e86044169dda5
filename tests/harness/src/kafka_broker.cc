#include "eventbus/harness/kafka_broker.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

#ifndef EVENTBUS_KAFKA_BROKER_SCRIPT
#error "EVENTBUS_KAFKA_BROKER_SCRIPT must name scripts/kafka-broker.sh"
#endif

namespace eventbus::harness {
namespace {

constexpr char kScript[] = EVENTBUS_KAFKA_BROKER_SCRIPT;
// Logged once the broker is unfenced and its listener serves requests; a bare TCP accept
// comes earlier and gives clients spurious metadata errors.
constexpr char kStartedLine[] = "Kafka Server started";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

absl::Status RunScript(const std::string& args, const std::string& log_path) {
  const std::string command =
      absl::StrCat("bash ", ShellQuote(kScript), " ", args, " >>", ShellQuote(log_path), " 2>&1");
  const int rc = std::system(command.c_str());
  if (rc != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "`", kScript, " ", args, "` failed (status ", rc, "): ", ReadFile(log_path)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<KafkaBroker>> KafkaBroker::Start(absl::Duration timeout) {
  std::unique_ptr<KafkaBroker> broker(new KafkaBroker());
  absl::StatusOr<std::string> dir = MakeTempDir("kafka");
  if (!dir.ok()) return dir.status();
  broker->dir_ = *dir;
  const std::string setup_log = absl::StrCat(broker->dir_, "/setup.log");
  // Fetching is quick when the jars are cached; on a cold cache it downloads them (CI runs
  // `scripts/kafka-broker.sh fetch` first so no test pays for it).
  if (absl::Status s = RunScript("fetch", setup_log); !s.ok()) return s;
  if (absl::Status s = RunScript(absl::StrCat("prepare ", ShellQuote(broker->dir_)), setup_log);
      !s.ok()) {
    return s;
  }
  // `prepare` picked free loopback ports and wrote them down; a restart reuses them.
  const std::string ports = ReadFile(absl::StrCat(broker->dir_, "/ports"));
  int broker_port = 0;
  {
    std::istringstream in(ports);
    in >> broker_port;
  }
  if (broker_port <= 0) {
    return absl::InternalError(absl::StrCat("no port in ", broker->dir_, "/ports"));
  }
  broker->bootstrap_ = absl::StrCat("127.0.0.1:", broker_port);
  const std::string libs_file = absl::StrCat(broker->dir_, "/libs");
  if (absl::Status s = RunScript(absl::StrCat("classpath >", ShellQuote(libs_file), " 2>/dev/null; true"),
                                 setup_log);
      !s.ok()) {
    return s;
  }
  const std::string libs(absl::StripAsciiWhitespace(ReadFile(libs_file)));
  ServerProcess::Options options;
  options.program = "java";
  options.args = {"-Xms128m",
                  "-Xmx512m",
                  "-XX:+UseSerialGC",
                  "-XX:TieredStopAtLevel=1",
                  absl::StrCat("-Dlog4j2.configurationFile=", broker->dir_, "/log4j2.properties"),
                  "-cp",
                  absl::StrCat(libs, "/*"),
                  "kafka.Kafka",
                  absl::StrCat(broker->dir_, "/server.properties")};
  options.log_path = absl::StrCat(broker->dir_, "/broker.log");
  absl::StatusOr<std::unique_ptr<ServerProcess>> process = ServerProcess::Start(options);
  if (!process.ok()) return process.status();
  broker->process_ = std::move(process).value();
  if (absl::Status s = broker->WaitUntilServing(0, timeout); !s.ok()) return s;
  return broker;
}

KafkaBroker::~KafkaBroker() {
  if (process_ != nullptr) process_->Kill();  // the data is thrown away anyway
  if (!dir_.empty() && std::getenv("EVENTBUS_KEEP_KAFKA_DIR") == nullptr) RemoveTree(dir_);
}

void KafkaBroker::Stop() {
  if (process_ != nullptr) process_->Stop(absl::Seconds(30));
}

void KafkaBroker::Kill() {
  if (process_ != nullptr) process_->Kill();
}

absl::Status KafkaBroker::Restart(absl::Duration timeout) {
  if (process_ == nullptr) return absl::FailedPreconditionError("broker was never started");
  const size_t offset = ReadFile(process_->log_path()).size();
  if (absl::Status s = process_->Restart(); !s.ok()) return s;
  return WaitUntilServing(offset, timeout);
}

absl::Status KafkaBroker::WaitUntilServing(size_t log_offset, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    const std::string log = ReadFile(process_->log_path());
    if (log.size() > log_offset &&
        log.find(kStartedLine, log_offset) != std::string::npos) {
      return absl::OkStatus();
    }
    if (!process_->running()) break;
    // ServerProcess reaps lazily: a JVM that died during start-up is a zombie until then.
    const std::string stat = ReadFile(absl::StrCat("/proc/", process_->pid(), "/stat"));
    const size_t paren = stat.rfind(')');
    if (stat.empty() || (paren != std::string::npos && stat.compare(paren, 3, ") Z") == 0)) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  return absl::UnavailableError(absl::StrCat("Kafka broker in ", dir_, " did not start within ",
                                             absl::FormatDuration(timeout), "; log tail:\n",
                                             LogTail()));
}

std::string KafkaBroker::LogTail(size_t max_bytes) const {
  return process_ != nullptr ? process_->LogTail(max_bytes) : std::string();
}

}  // namespace eventbus::harness
