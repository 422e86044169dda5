#include "eventbus/harness/postgres_server.h"

#include <fcntl.h>
#include <glob.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

namespace eventbus::harness {
namespace {

bool IsExecutable(const std::string& path) { return ::access(path.c_str(), X_OK) == 0; }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// The major version in a Debian bindir (/usr/lib/postgresql/15/bin), for picking the highest.
int MajorOf(const std::string& bindir) {
  const std::vector<std::string> parts = absl::StrSplit(bindir, '/');
  int major = 0;
  for (const std::string& part : parts) {
    if (int v = 0; absl::SimpleAtoi(part, &v)) major = v;
  }
  return major;
}

// Where initdb, postgres, createdb and psql are. Debian installs the server outside PATH, per
// major version; pg_config (libpq-dev) names the bindir of its own major, which may not be the
// installed server's, so each candidate must hold `postgres`.
absl::StatusOr<std::string> FindBindir() {
  std::vector<std::string> tried;
  auto usable = [&tried](const std::string& dir) {
    tried.push_back(dir);
    return !dir.empty() && IsExecutable(dir + "/postgres") && IsExecutable(dir + "/initdb");
  };
  if (const char* env = std::getenv("EVENTBUS_POSTGRES_BINDIR"); env != nullptr && *env) {
    if (usable(env)) return std::string(env);
    return absl::FailedPreconditionError(
        absl::StrCat("EVENTBUS_POSTGRES_BINDIR=", env, " holds no postgres and initdb"));
  }
  if (FILE* pipe = ::popen("pg_config --bindir 2>/dev/null", "r"); pipe != nullptr) {
    char line[4096] = {};
    const bool got = std::fgets(line, sizeof(line), pipe) != nullptr;
    ::pclose(pipe);
    if (got) {
      const std::string dir(absl::StripAsciiWhitespace(line));
      if (usable(dir)) return dir;
    }
  }
  glob_t found{};
  std::vector<std::string> globbed;
  if (::glob("/usr/lib/postgresql/*/bin", 0, nullptr, &found) == 0) {
    for (size_t i = 0; i < found.gl_pathc; ++i) globbed.emplace_back(found.gl_pathv[i]);
  }
  ::globfree(&found);
  std::sort(globbed.begin(), globbed.end(),
            [](const std::string& a, const std::string& b) { return MajorOf(a) > MajorOf(b); });
  for (const std::string& dir : globbed) {
    if (usable(dir)) return dir;
  }
  if (const char* path = std::getenv("PATH"); path != nullptr) {
    for (absl::string_view dir : absl::StrSplit(path, ':')) {
      if (usable(std::string(dir))) return std::string(dir);
    }
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "no PostgreSQL server binaries (postgres, initdb) found; tried ", absl::StrJoin(tried, ", "),
      ". Install Debian's postgresql package (scripts/install-deps.sh)"));
}

// Root can hand the directory to another user only if that user can reach it: every ancestor
// must be searchable by others.
absl::Status CheckReachableByOthers(const std::string& dir) {
  std::string path = dir;
  while (true) {
    const size_t slash = path.find_last_of('/');
    if (slash == std::string::npos || slash == 0) return absl::OkStatus();
    path.resize(slash);
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0 || (st.st_mode & S_IXOTH) == 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the postgres user cannot reach ", dir, " (", path,
          " is not searchable by others); point TMPDIR at a directory it can reach"));
    }
  }
}

// A child that exited but is not reaped yet (ServerProcess reaps on Stop) is a zombie.
bool Exited(pid_t pid) {
  const std::string stat = ReadFile(absl::StrCat("/proc/", pid, "/stat"));
  const size_t paren = stat.rfind(')');
  return stat.empty() || (paren != std::string::npos && paren + 2 < stat.size() &&
                          (stat[paren + 2] == 'Z' || stat[paren + 2] == 'X'));
}

bool IsIdentifier(absl::string_view name) {
  if (name.empty() || name.size() > 63 || !absl::ascii_islower(name[0])) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return absl::ascii_islower(c) || absl::ascii_isdigit(c) || c == '_';
  });
}

}  // namespace

absl::StatusOr<std::unique_ptr<PostgresServer>> PostgresServer::Start(Options options) {
  std::unique_ptr<PostgresServer> server(new PostgresServer());
  server->options_ = std::move(options);
  if (!IsIdentifier(server->options_.database) || !IsIdentifier(server->options_.user)) {
    return absl::InvalidArgumentError("PostgresServer: database and user must be [a-z][a-z0-9_]*");
  }
  absl::StatusOr<std::string> bindir = FindBindir();
  if (!bindir.ok()) return bindir.status();
  server->bindir_ = *bindir;
  absl::StatusOr<int> port = FreeLoopbackPort();
  if (!port.ok()) return port.status();
  server->port_ = *port;
  absl::StatusOr<std::string> dir = MakeTempDir("postgres");
  if (!dir.ok()) return dir.status();
  server->dir_ = *dir;

  if (::geteuid() == 0) {
    const passwd* pw = ::getpwnam("postgres");
    if (pw == nullptr) {
      return absl::FailedPreconditionError(
          "running as root, which PostgreSQL refuses, and there is no `postgres` user to run it "
          "as (Debian's postgresql package creates it)");
    }
    server->run_as_uid_ = static_cast<int>(pw->pw_uid);
    server->run_as_gid_ = static_cast<int>(pw->pw_gid);
    if (absl::Status s = CheckReachableByOthers(server->dir_); !s.ok()) return s;
    if (::chown(server->dir_.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
      return absl::InternalError(absl::StrCat("chown ", server->dir_, ": ", std::strerror(errno)));
    }
  }

  std::vector<std::string> initdb_args = {
      "-D", server->dir_ + "/data", "-U", server->options_.user, "--encoding=UTF8",
      // The C locale: byte order for text, and no dependency on generated locales.
      "--locale=C", "--no-sync", "--no-instructions"};
  const std::string pwfile = server->dir_ + "/pwfile";
  if (server->options_.password.empty()) {
    initdb_args.push_back("--auth=trust");
  } else {
    {
      std::ofstream out(pwfile);
      out << server->options_.password << "\n";
    }
    if (server->run_as_uid_ >= 0 &&
        ::chown(pwfile.c_str(), server->run_as_uid_, server->run_as_gid_) != 0) {
      return absl::InternalError(absl::StrCat("chown ", pwfile, ": ", std::strerror(errno)));
    }
    initdb_args.insert(initdb_args.end(), {"--auth-local=trust", "--auth-host=scram-sha-256",
                                           "--pwfile=" + pwfile});
  }
  absl::StatusOr<std::string> initdb = server->RunTool("initdb", initdb_args, absl::Seconds(120));
  ::unlink(pwfile.c_str());
  if (!initdb.ok()) return initdb.status();

  ServerProcess::Options process;
  std::vector<std::string> command = server->UserPrefix();
  command.push_back(server->bindir_ + "/postgres");
  const std::vector<std::string> server_args = {
      "-D", server->dir_ + "/data", "-p", absl::StrCat(server->port_),
      "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=" + server->dir_,
      // Speed over durability: a test server's data need not survive a power cut. Commits
      // still reach the kernel before they return, so a Kill of the server loses nothing
      // committed (crash recovery replays the WAL).
      "-c", "fsync=off", "-c", "full_page_writes=off",
      "-c", "shared_buffers=32MB", "-c", "max_connections=200",
      "-c", "log_min_messages=warning", "-c", "log_line_prefix=%m [%p] "};
  command.insert(command.end(), server_args.begin(), server_args.end());
  for (const std::string& setting : server->options_.settings) {
    command.insert(command.end(), {"-c", setting});
  }
  process.program = command.front();
  process.args.assign(command.begin() + 1, command.end());
  process.log_path = server->dir_ + "/postgres.log";
  absl::StatusOr<std::unique_ptr<ServerProcess>> started = ServerProcess::Start(std::move(process));
  if (!started.ok()) return started.status();
  server->process_ = std::move(started).value();
  if (absl::Status ready = server->WaitUntilReady(); !ready.ok()) return ready;
  if (absl::Status created = server->CreateDatabase(server->options_.database); !created.ok()) {
    return created;
  }
  return server;
}

PostgresServer::~PostgresServer() {
  if (process_ != nullptr) Stop();
  if (!dir_.empty()) RemoveTree(dir_);
}

std::string PostgresServer::url(absl::string_view database) const {
  const absl::string_view db = database.empty() ? absl::string_view(options_.database) : database;
  const std::string auth = options_.password.empty()
                               ? options_.user
                               : absl::StrCat(options_.user, ":", options_.password);
  return absl::StrCat("postgresql://", auth, "@127.0.0.1:", port_, "/", db);
}

std::vector<std::string> PostgresServer::UserPrefix() const {
  if (run_as_uid_ < 0) return {};
  return {"setpriv", absl::StrCat("--reuid=", run_as_uid_), absl::StrCat("--regid=", run_as_gid_),
          "--init-groups", "--pdeathsig=KILL", "--"};
}

absl::StatusOr<std::string> PostgresServer::RunTool(absl::string_view program,
                                                    const std::vector<std::string>& args,
                                                    absl::Duration timeout) {
  std::vector<std::string> command = UserPrefix();
  command.push_back(absl::StrCat(bindir_, "/", program));
  command.insert(command.end(), args.begin(), args.end());
  const std::string out_path = absl::StrCat(dir_, "/", program, ".out");
  const std::string err_path = absl::StrCat(dir_, "/", program, ".log");
  const int out_fd = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  const int err_fd = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out_fd < 0 || err_fd < 0) {
    if (out_fd >= 0) ::close(out_fd);
    if (err_fd >= 0) ::close(err_fd);
    return absl::InternalError(absl::StrCat("cannot open ", out_path, ": ", std::strerror(errno)));
  }
  std::vector<char*> argv;
  for (std::string& arg : command) argv.push_back(arg.data());
  argv.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(out_fd);
    ::close(err_fd);
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  }
  if (pid == 0) {
    // Child: only async-signal-safe calls until exec.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    ::dup2(out_fd, STDOUT_FILENO);
    ::dup2(err_fd, STDERR_FILENO);
    const int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, STDIN_FILENO);
    ::execvp(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(out_fd);
  ::close(err_fd);
  const absl::Time deadline = absl::Now() + timeout;
  int status = 0;
  while (true) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0 && errno != EINTR) {
      return absl::InternalError(absl::StrCat("waitpid ", program, ": ", std::strerror(errno)));
    }
    if (absl::Now() >= deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return absl::DeadlineExceededError(absl::StrCat(program, " did not finish within ",
                                                      absl::FormatDuration(timeout), "; log: ",
                                                      ReadFile(err_path)));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        program, " failed (status ", status, "): ", ReadFile(err_path), ReadFile(out_path)));
  }
  return ReadFile(out_path);
}

absl::Status PostgresServer::CreateDatabase(absl::string_view name) {
  if (!IsIdentifier(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("PostgresServer: database name '", name, "' is not [a-z][a-z0-9_]*"));
  }
  absl::StatusOr<std::string> done =
      RunTool("createdb",
              {"-h", dir_, "-p", absl::StrCat(port_), "-U", options_.user, std::string(name)},
              absl::Seconds(60));
  return done.status();
}

absl::StatusOr<std::string> PostgresServer::Psql(absl::string_view database,
                                                 absl::string_view sql) {
  return RunTool("psql",
                 {"-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", dir_, "-p",
                  absl::StrCat(port_), "-U", options_.user, "-d",
                  std::string(database.empty() ? absl::string_view(options_.database) : database),
                  "-c", std::string(sql)},
                 absl::Seconds(60));
}

void PostgresServer::Stop() {
  if (!running()) return;
  // SIGINT is the fast shutdown. ServerProcess::Stop's SIGTERM alone would be the smart one,
  // which waits for every client to disconnect.
  ::kill(process_->pid(), SIGINT);
  process_->Stop();
}

absl::Status PostgresServer::Restart() {
  if (absl::Status s = process_->Restart(); !s.ok()) return s;
  return WaitUntilReady();
}

// The postmaster writes its pid on the first line of postmaster.pid and "ready" on the eighth
// once it accepts connections (after crash recovery, too). The pid tells this run's file from
// the one a killed server left behind; setpriv execs, so the pid is the one we started.
absl::Status PostgresServer::WaitUntilReady() {
  const std::string pid_file = dir_ + "/data/postmaster.pid";
  const absl::Time deadline = absl::Now() + options_.start_timeout;
  while (absl::Now() < deadline) {
    if (!process_->running() || Exited(process_->pid())) break;
    const std::vector<std::string> lines = absl::StrSplit(ReadFile(pid_file), '\n');
    int pid = 0;
    if (lines.size() >= 8 && absl::SimpleAtoi(lines[0], &pid) && pid == process_->pid() &&
        absl::StartsWith(lines[7], "ready")) {
      return WaitForTcpPort(port_, absl::Seconds(5));
    }
    absl::SleepFor(absl::Milliseconds(25));
  }
  return absl::FailedPreconditionError(
      absl::StrCat("postgres on 127.0.0.1:", port_, " was not ready within ",
                   absl::FormatDuration(options_.start_timeout), "; log: ",
                   process_->LogTail(3000)));
}

}  // namespace eventbus::harness
