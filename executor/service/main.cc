// eventbus-executor: runs tasks from an event stream chosen by EVENT_STREAM_TYPE.

#include <signal.h>

#include <cstdio>
#include <cstring>
#include <string>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "config.h"
#include "eventbus/builtin_backends.h"
#include "eventbus/registry.h"
#include "json_log.h"
#include "service.h"

namespace {

using eventbus::executor::service::JsonLog;
using eventbus::executor::service::LogLevel;

constexpr char kUsage[] =
    "usage: eventbus-executor [--demo]\n"
    "\n"
    "Runs task requests from an event stream. Configured from the environment:\n"
    "  EVENT_STREAM_TYPE (%s; default memory), REDIS_URL, KAFKA_BROKERS, NATS_URL,\n"
    "  %s.\n"
    "\n"
    "  --demo   start on the configured backend (default: in memory), submit a few tasks of\n"
    "           every type through POST /v1/tasks, print their results and the dead letter,\n"
    "           and exit (0 when everything came out as expected).\n";

// Every backend this package was built with (memory always; redis, kafka, nats when built).
absl::Status RegisterBackends() { return eventbus::RegisterBuiltinBackends(); }

}  // namespace

int main(int argc, char** argv) {
  namespace service = eventbus::executor::service;
  bool demo = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--demo") == 0) {
      demo = true;
    } else if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      absl::Status s = RegisterBackends();
      std::printf(kUsage, absl::StrJoin(eventbus::BackendRegistry::Global().Names(), ", ").c_str(),
                  absl::StrJoin(service::KnownSettings(), ", ").c_str());
      return s.ok() ? 0 : 1;
    } else {
      std::fprintf(stderr, "eventbus-executor: unknown argument \"%s\" (try --help)\n", argv[i]);
      return 2;
    }
  }

  // Signals are taken synchronously by sigwait below: block them before any thread starts so
  // every thread inherits the mask. A peer closing a socket must not kill the process.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  if (absl::Status s = RegisterBackends(); !s.ok()) {
    std::fprintf(stderr, "eventbus-executor: registering backends failed: %s\n", s.ToString().c_str());
    return 1;
  }
  eventbus::Environment env = eventbus::ProcessEnvironment();
  if (demo && !env.contains("EXECUTOR_HTTP_ADDR")) env["EXECUTOR_HTTP_ADDR"] = "127.0.0.1:0";
  // Every configuration error, the service's or the backend's, exits 2 before anything
  // connects; 1 is left for start-up failures of another kind (a backend not reachable, the
  // HTTP port taken).
  const eventbus::BackendRegistry& registry = eventbus::BackendRegistry::Global();
  auto config = service::ParseServiceConfig(env, registry.Names());
  absl::Status config_status = config.status();
  if (config_status.ok()) {
    config_status = service::CheckBackendConfig(config->stream_type, env, registry);
  }
  if (!config_status.ok()) {
    std::fprintf(stderr, "eventbus-executor: configuration error: %s\n",
                 std::string(config_status.message()).c_str());
    return 2;
  }
  JsonLog log(demo && !env.contains("LOG_LEVEL") ? LogLevel::kWarn : config->log_level);
  log.InstallAsLibrarySink();
  service::Service svc(*config, env, &log);
  if (absl::Status s = svc.Start(); !s.ok()) {
    log.Write(LogLevel::kError, "start-up failed", {{"error", s.ToString()}});
    std::fprintf(stderr, "eventbus-executor: start-up failed: %s\n", s.ToString().c_str());
    return 1;
  }

  if (demo) {
    absl::Status s = service::RunDemo(svc);
    svc.Stop();
    if (!s.ok()) {
      std::fprintf(stderr, "eventbus-executor: demo failed: %s\n", s.ToString().c_str());
      return 1;
    }
    return 0;
  }

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  log.Write(LogLevel::kInfo, "stop signal received", {{"signal", strsignal(signal_number)}});
  svc.Stop();
  return 0;
}
