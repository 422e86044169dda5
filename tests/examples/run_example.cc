// Runs a quickstart example against a real server the harness starts on a free loopback
// port: run_example redis|kafka <program>. Exit code: the program's (1 if the server or the
// program could not start).
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "eventbus/harness/kafka_broker.h"
#include "eventbus/harness/redis_server.h"

namespace {

int RunProgram(const char* program) {
  const pid_t pid = fork();
  if (pid < 0) {
    std::perror("fork");
    return 1;
  }
  if (pid == 0) {
    execl(program, program, static_cast<char*>(nullptr));
    std::perror(program);
    _exit(127);
  }
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return 1;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  std::fprintf(stderr, "%s killed by signal %d\n", program, WTERMSIG(status));
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: run_example redis|kafka <program>\n");
    return 2;
  }
  const std::string server = argv[1];
  if (server == "redis") {
    auto redis = eventbus::harness::RedisServer::Start();
    if (!redis.ok()) {
      std::fprintf(stderr, "redis-server: %s\n", redis.status().ToString().c_str());
      return 1;
    }
    setenv("REDIS_URL", (*redis)->url().c_str(), 1);
    return RunProgram(argv[2]);
  }
  if (server == "kafka") {
    auto kafka = eventbus::harness::KafkaBroker::Start();
    if (!kafka.ok()) {
      std::fprintf(stderr, "Kafka broker: %s\n", kafka.status().ToString().c_str());
      return 1;
    }
    setenv("KAFKA_BROKERS", (*kafka)->bootstrap().c_str(), 1);
    return RunProgram(argv[2]);
  }
  std::fprintf(stderr, "run_example: unknown server \"%s\" (redis or kafka)\n", server.c_str());
  return 2;
}
