#!/usr/bin/env python3
"""Runs the benchmark matrix: ours (broker_bench), the raw clients (raw_bench, memory_bench's
mutex+deque baseline, kcat) and the peers (BullMQ, Watermill) on the same real servers, and
writes <out-dir>/latest.json, latest.md and latest.png. The http_* rows drive the real
eventbus-executor binary over its HTTP API with bench/http_bench (keep-alive connections, a
fixed number of requests), a fresh service per row.

It builds nothing of ours: pass the CMake build dir (default build/). It starts redis-server,
the Kafka broker (scripts/kafka-broker.sh) and nats-server -js on free loopback ports and stops
them. The
peers' dependencies are installed on first use (npm install in bench/peers/bullmq, go build
of bench/peers/watermill into <build-dir>/bench/peers); a peer that cannot be installed or
fails is named in the output with the reason.

  bench/run.py                      full matrix, every backend
  bench/run.py --quick              smaller counts, 64 B and 1 KiB only (under 2 minutes)
  bench/run.py --smoke --check      tiny counts; exit 1 if any row failed (ctest)
  bench/run.py --backends memory,redis --peers none
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.path.join(ROOT, "bench", "peers")
BACKENDS = ("memory", "redis", "kafka", "nats")


def log(*parts):
    print("[bench]", *parts, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_seconds(pid):
    """utime + stime of a process, from /proc/<pid>/stat."""
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------ servers

class RedisServer:
    def __init__(self, attempts=3):
        self.dir = tempfile.mkdtemp(prefix="eventbus-bench-redis.")
        for _ in range(attempts):
            if self._start():
                return
        self.stop()
        raise RuntimeError(f"redis-server did not start (log: {self.dir}/log)")

    def _start(self):
        """False when the server exited (another process took the free port first)."""
        self.port = free_port()
        # No persistence: the raw clients, the peers and ours all write to the same server, and
        # fsync timing would only add noise on a shared machine.
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--logfile", os.path.join(self.dir, "log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while time.time() < deadline and self.proc.poll() is None:
            try:
                if self.command("PING") == b"+PONG\r\n":
                    return True
            except OSError:
                time.sleep(0.05)
        self.proc.kill()
        self.proc.wait()
        return False

    @property
    def pid(self):
        return self.proc.pid

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def command(self, *args):
        payload = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
            s.sendall(payload.encode())
            return s.recv(65536)

    def flush(self):
        self.command("FLUSHALL")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class KafkaBroker:
    SCRIPT = os.path.join(ROOT, "scripts", "kafka-broker.sh")

    def __init__(self, attempts=3):
        start = time.time()
        for attempt in range(attempts):
            self.dir = tempfile.mkdtemp(prefix="eventbus-bench-kafka.")
            out = subprocess.run([self.SCRIPT, "start", self.dir], capture_output=True, text=True,
                                 timeout=300)
            if out.returncode == 0:
                break
            # Free ports are picked, then bound by the JVM seconds later: on a shared machine
            # another process may take one in between. A fresh dir gets fresh ports.
            self.stop()
            if attempt == attempts - 1:
                raise RuntimeError(f"kafka-broker.sh start failed {attempts} times, last: "
                                   f"{out.stderr.strip()[-800:]}")
            log(f"Kafka broker did not start (attempt {attempt + 1}), trying again")
        self.bootstrap = out.stdout.strip().splitlines()[-1]
        self.start_seconds = time.time() - start
        with open(os.path.join(self.dir, "broker.pid")) as f:
            self.pid = int(f.read().strip())

    def stop(self):
        # A throwaway broker: SIGTERM, and SIGKILL after 5 s instead of the script's 30 s of
        # waiting for a clean shutdown (the directory is removed anyway).
        pid_file = os.path.join(self.dir, "broker.pid")
        if os.path.exists(pid_file):
            with open(pid_file) as f:
                pid = int(f.read().strip())
            try:
                os.kill(pid, signal.SIGTERM)
                deadline = time.time() + 5
                while time.time() < deadline and os.path.exists(f"/proc/{pid}"):
                    time.sleep(0.1)
                if os.path.exists(f"/proc/{pid}"):
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


class NatsServer:
    """nats-server with JetStream (file storage in a temp dir), as the backend's tests run it."""

    def __init__(self, attempts=3):
        self.dir = tempfile.mkdtemp(prefix="eventbus-bench-nats.")
        for _ in range(attempts):
            if self._start():
                return
        self.stop()
        raise RuntimeError(f"nats-server did not start (log: {self.dir}/log)")

    def _start(self):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd",
             os.path.join(self.dir, "store"), "-l", os.path.join(self.dir, "log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while time.time() < deadline and self.proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                    if s.recv(4096).startswith(b"INFO"):
                        return True
            except OSError:
                time.sleep(0.05)
        self.proc.kill()
        self.proc.wait()
        return False

    @property
    def pid(self):
        return self.proc.pid

    @property
    def url(self):
        return f"nats://127.0.0.1:{self.port}"

    def stop(self):
        if getattr(self, "proc", None) is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class ExecutorService:
    """The real eventbus-executor on loopback. EXECUTOR_HTTP_ADDR=127.0.0.1:0 and the port read
    from its start-up log line: no other process can take the port between picking and binding.
    The environment is `env` alone (plus PATH/HOME): an EXECUTOR_* variable of the caller's
    shell must not change the figures, and an unknown one would stop the service."""

    def __init__(self, binary, env):
        self.dir = tempfile.mkdtemp(prefix="eventbus-bench-executor.")
        self.log_path = os.path.join(self.dir, "executor.log")
        full_env = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
        full_env.update(env)
        full_env["EXECUTOR_HTTP_ADDR"] = "127.0.0.1:0"
        with open(self.log_path, "w") as log_file:
            self.proc = subprocess.Popen([binary], env=full_env, stdout=log_file,
                                         stderr=subprocess.STDOUT)
        self.port = None
        deadline = time.time() + 30
        while time.time() < deadline and self.proc.poll() is None:
            self.port = self._started_port()
            if self.port:
                return
            time.sleep(0.05)
        tail = self.log().strip()[-600:]
        self.stop()
        raise RuntimeError(f"eventbus-executor did not start: {tail}")

    def _started_port(self):
        """The port of the "eventbus-executor started" line (a JSON log line), or None."""
        for line in self.log().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("msg") == "eventbus-executor started":
                return int(str(record.get("http", "")).rpartition(":")[2] or 0) or None
        return None

    @property
    def pid(self):
        return self.proc.pid

    def log(self):
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------------------ benchmarks

def run_gbench(binary, args, name, timeout):
    """Runs one Google Benchmark case; returns (result dict or None, error or None)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out_path = f.name
    cmd = [binary, f"--benchmark_filter=^{re.escape(name)}$", f"--benchmark_out={out_path}",
           "--benchmark_out_format=json", "--benchmark_format=console"] + args
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            return None, f"exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-400:]}"
        with open(out_path) as f:
            data = json.load(f)
        runs = [b for b in data.get("benchmarks", []) if b.get("run_type", "iteration") == "iteration"]
        if not runs:
            return None, "no benchmark ran"
        run = runs[0]
        if run.get("error_occurred"):
            return None, run.get("error_message", "error")
        return run, None
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout}s"
    except (OSError, ValueError) as e:
        return None, str(e)
    finally:
        os.unlink(out_path)


def list_gbench(binary, args):
    proc = subprocess.run([binary, "--benchmark_list_tests=true"] + args, capture_output=True,
                          text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{binary} --benchmark_list_tests: {proc.stderr.strip()[-400:]}")
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]


def figures(run):
    """The figures of one broker_bench/raw_bench case."""
    def get(key):
        value = run.get(key)
        return None if value is None else float(value)
    return {
        "items_per_s": get("items_per_second"),
        "bytes_per_s": get("bytes_per_second"),
        "p50_ms": get("p50_ms"),
        "p99_ms": get("p99_ms"),
        "cpu_s_per_1000": get("cpu_s_per_1000"),
        "server_cpu_s_per_1000": get("server_cpu_s_per_1000"),
        "rss_mb": get("rss_mb"),
        "count": get("count"),
        "threads_added": get("threads_added"),
    }


def split_name(name):
    """publish/64 -> (publish, 64); e2e/64/c4 -> (e2e_c4, 64); raw_ prefix dropped, and the
    /iterations:1/manual_time suffixes Google Benchmark appends."""
    parts = [p for p in name.split("/") if ":" not in p and p != "manual_time"]
    scenario = parts[0][4:] if parts[0].startswith("raw_") else parts[0]
    if len(parts) > 2:
        scenario = f"{scenario}_{parts[2]}"
    return scenario, int(parts[1])


# ------------------------------------------------------------------------------------ peers

class Peers:
    """Installs and runs BullMQ and Watermill; remembers why one is unavailable."""

    def __init__(self, build_dir, wanted, setup, install=True):
        self.build_dir = build_dir
        self.install = install  # False: use only what an earlier run installed
        self.wanted = wanted
        self.setup = setup  # install timings, reported in the JSON
        self.unavailable = {}
        self.bullmq_ready = False
        self.watermill_binary = None

    def ensure_bullmq(self):
        if "bullmq" not in self.wanted or self.bullmq_ready or "bullmq" in self.unavailable:
            return self.bullmq_ready
        folder = os.path.join(PEERS, "bullmq")
        if not shutil.which("node") or not shutil.which("npm"):
            self.unavailable["bullmq"] = "node/npm not installed"
            return False
        if not os.path.isdir(os.path.join(folder, "node_modules", "bullmq")):
            if not self.install:
                self.unavailable["bullmq"] = "not installed (--no-peer-install; run bench/run.py once without it)"
                return False
            log("installing BullMQ (npm install, first use)")
            start = time.time()
            proc = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"],
                                  cwd=folder, capture_output=True, text=True, timeout=600)
            self.setup["npm_install_s"] = round(time.time() - start, 1)
            if proc.returncode != 0:
                self.unavailable["bullmq"] = f"npm install failed: {proc.stderr.strip()[-300:]}"
                return False
        self.bullmq_ready = True
        return True

    def ensure_watermill(self):
        if "watermill" not in self.wanted or self.watermill_binary or "watermill" in self.unavailable:
            return self.watermill_binary is not None
        if not shutil.which("go"):
            self.unavailable["watermill"] = "go not installed"
            return False
        out_dir = os.path.join(self.build_dir, "bench", "peers")
        os.makedirs(out_dir, exist_ok=True)
        binary = os.path.join(out_dir, "watermill-peer")
        if not self.install:
            sources = [os.path.join(PEERS, "watermill", f) for f in ("main.go", "go.mod", "go.sum")]
            if os.path.exists(binary) and all(os.path.getmtime(binary) >= os.path.getmtime(f) for f in sources):
                self.watermill_binary = binary
                return True
            self.unavailable["watermill"] = "not built (--no-peer-install; run bench/run.py once without it)"
            return False
        log("building the Watermill peer (go build; modules are fetched on first use)")
        start = time.time()
        # go build downloads what go.sum names into the module cache (GOPATH) the first time.
        proc = subprocess.run(["go", "build", "-o", binary, "."], cwd=os.path.join(PEERS, "watermill"),
                              capture_output=True, text=True, timeout=900)
        self.setup["go_build_s"] = round(time.time() - start, 1)
        if proc.returncode != 0:
            self.unavailable["watermill"] = f"go build failed: {proc.stderr.strip()[-300:]}"
            return False
        self.watermill_binary = binary
        return True

    def bullmq(self, redis, count, size=64):
        if not self.ensure_bullmq():
            return None, self.unavailable.get("bullmq", "not selected (--peers)")
        cmd = ["node", os.path.join(PEERS, "bullmq", "bench.js"), "--port", str(redis.port),
               "--count", str(count), "--size", str(size), "--concurrency", "32",
               "--redis-pid", str(redis.pid)]
        return self._json(cmd, "bullmq")

    def watermill(self, backend, address, count, size=64):
        if not self.ensure_watermill():
            return None, self.unavailable.get("watermill", "not selected (--peers)")
        cmd = [self.watermill_binary, "-backend", backend, "-address", address,
               "-count", str(count), "-size", str(size)]
        return self._json(cmd, "watermill")

    @staticmethod
    def _json(cmd, name):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            return None, f"{name} timed out"
        lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
        try:
            data = json.loads(lines[-1]) if lines else {}
        except ValueError:
            data = {}
        if proc.returncode != 0 or not data or data.get("error"):
            reason = data.get("error") or (proc.stderr or proc.stdout).strip()[-300:]
            return None, f"{name} failed: {reason}"
        return data, None


def kcat_consume(brokers, count, payload):
    """The raw Kafka consume figure: kcat -C reading `count` messages a kcat -P wrote."""
    if not shutil.which("kcat"):
        return None, "kcat not installed"
    topic = f"raw.kcat.{time.time_ns()}"
    with tempfile.NamedTemporaryFile("w", delete=False) as f:
        for _ in range(count):
            f.write(payload + "\n")
        path = f.name
    try:
        prod = subprocess.run(["kcat", "-P", "-b", brokers, "-t", topic, "-l", path],
                              capture_output=True, text=True, timeout=120)
        if prod.returncode != 0:
            return None, f"kcat -P failed: {prod.stderr.strip()[-300:]}"
        start = time.time()
        cons = subprocess.run(["kcat", "-C", "-b", brokers, "-t", topic, "-o", "beginning",
                               "-c", str(count), "-e", "-q"], capture_output=True, timeout=120)
        seconds = time.time() - start
        got = cons.stdout.count(b"\n")
        if cons.returncode != 0 or got < count:
            return None, f"kcat -C read {got} of {count}: {cons.stderr.decode()[-300:]}"
        return count / seconds, None
    except subprocess.TimeoutExpired:
        return None, "kcat timed out"
    finally:
        os.unlink(path)


# ------------------------------------------------------------------------------------ targets

def ratio(a, b):
    return a / b if a and b else None


def judge(row, extra):
    """Sets row['target'] and row['target_status'] ("met", "missed", "n/a") from the issue's
    targets. `extra` holds figures a target needs beyond the row (the peer's CPU)."""
    checks = []  # (description, ok or None when a figure is missing)
    b, s = row["backend"], row["scenario"]
    ours = row["ours"]
    if s == "publish" and row["raw"] is not None:
        checks.append((">= 0.9x raw", ratio(ours, row["raw"]) >= 0.9 if row["ratio_raw"] else None))
    if s in ("e2e_c1", "e2e_c4") and b != "memory":
        checks.append((">= 0.8x raw", row["ratio_raw"] >= 0.8 if row["ratio_raw"] else None))
    if s == "e2e_c1" and b in ("redis", "kafka") and row["size"] == 64:
        checks.append((">= 3x Watermill", row["ratio_peer"] >= 3 if row["ratio_peer"] else None))
    if s == "e2e_memory_bench":
        checks.append((">= 0.5x mutex+deque", row["ratio_raw"] >= 0.5 if row["ratio_raw"] else None))
    if s == "latency_5k" and b == "redis":
        checks.append(("p99 < 10 ms", row["p99_ms"] < 10 if row["p99_ms"] is not None else None))
    if s == "executor_noop":
        if b == "memory":
            checks.append((">= 200000/s", ours >= 200_000 if ours else None))
        if b == "redis":
            checks.append((">= 5x BullMQ", row["ratio_peer"] >= 5 if row["ratio_peer"] else None))
            checks.append((">= 0.7x raw loop", row["ratio_raw"] >= 0.7 if row["ratio_raw"] else None))
            ours_cpu = (row["cpu_s_per_1000"] or 0) + (row["server_cpu_s_per_1000"] or 0)
            peer_cpu = extra.get("peer_cpu_total")
            checks.append(("CPU/1000 < BullMQ", ours_cpu < peer_cpu if peer_cpu else None))
        if b == "kafka":
            checks.append((">= 0.3x kcat -C", row["ratio_raw"] >= 0.3 if row["ratio_raw"] else None))
    if s == "http_submit":
        checks.append((">= 20000 req/s", ours >= 20_000 if ours else None))
    if s == "http_batch":
        checks.append((">= 100000 tasks/s", ours >= 100_000 if ours else None))
    if s == "executor_call_1s_1000":
        threads = extra.get("threads_added")
        checks.append((">= 900/s", ours >= 900 if ours else None))
        checks.append(("<= 32 threads", threads <= 32 if threads is not None else None))
    if not checks:
        row["target"], row["target_status"] = "", "n/a"
        return
    row["target"] = "; ".join(c[0] for c in checks)
    if any(c[1] is False for c in checks):
        row["target_status"] = "missed"
    elif any(c[1] is None for c in checks):
        row["target_status"] = "n/a"
    else:
        row["target_status"] = "met"


# -------------------------------------------------------------------------------- the matrix

def new_row(backend, scenario, size):
    return {"backend": backend, "scenario": scenario, "size": size, "ours": None, "raw": None,
            "peer": None, "peer_name": None, "ratio_raw": None, "ratio_peer": None,
            "p50_ms": None, "p99_ms": None, "cpu_s_per_1000": None,
            "server_cpu_s_per_1000": None, "rss_mb": None, "raw_name": None, "target": "",
            "target_status": "n/a", "status": "ok", "notes": []}


class Matrix:
    def __init__(self, args):
        self.args = args
        self.build_dir = os.path.abspath(args.build_dir)
        self.bin = {name: os.path.join(self.build_dir, "bench", name)
                    for name in ("broker_bench", "raw_bench", "memory_bench", "http_bench")}
        self.bin["eventbus-executor"] = os.path.join(self.build_dir, "executor", "service",
                                                     "eventbus-executor")
        self.rows = []
        self.setup = {}
        self.peers = Peers(self.build_dir, args.peers, self.setup, install=not args.no_peer_install)
        self.timeout = 90 if args.smoke else 300
        self.flags = []
        if args.quick or args.smoke:
            self.flags.append("--quick")
        if args.smoke:
            self.flags.append("--scale=0.05")

    def counts(self, full, quick, smoke):
        return smoke if self.args.smoke else quick if self.args.quick else full

    def ours(self, backend, server_flags, before_each=None):
        """One row per broker_bench case of `backend`."""
        binary = self.bin["broker_bench"]
        rows = {}
        if not os.path.exists(binary):
            row = new_row(backend, "all", 0)
            row["status"] = "failed"
            row["notes"].append(f"{binary} not built (cmake --build {self.build_dir} --target broker_bench)")
            self.rows.append(row)
            return rows
        args = [f"--backend={backend}"] + server_flags + self.flags
        for name in list_gbench(binary, args):
            if before_each:
                before_each()
            scenario, size = split_name(name)
            row = new_row(backend, scenario, size)
            log(f"{backend}: {name}")
            began = time.time()
            run, error = run_gbench(binary, args, name, self.timeout)
            # The whole process (connect, warm-up, pre-load, run): what the row costs the runner.
            row["run_s"] = round(time.time() - began, 1)
            if error:
                row["status"] = "failed"
                row["notes"].append(f"ours failed: {error}")
            else:
                f = figures(run)
                row["ours"] = f["items_per_s"]
                for key in ("p50_ms", "p99_ms", "cpu_s_per_1000", "server_cpu_s_per_1000", "rss_mb"):
                    row[key] = f[key]
                row["bytes_per_s"] = f["bytes_per_s"]
                row["count"] = f["count"]
                if f["threads_added"] is not None:
                    row["threads_added"] = f["threads_added"]
                    row["notes"].append(f"{int(f['threads_added'])} threads added")
            self.rows.append(row)
            rows[(scenario, size)] = row
        return rows

    def raw(self, backend, rows, server_flags, before_each=None):
        binary = self.bin["raw_bench"]
        if not os.path.exists(binary):
            for row in rows.values():
                row["notes"].append("raw_bench not built")
            return
        args = [f"--backend={backend}"] + server_flags + self.flags
        for name in list_gbench(binary, args):
            if before_each:
                before_each()
            scenario, size = split_name(name)
            row = rows.get((scenario, size))
            if row is None:
                continue
            log(f"{backend}: {name}")
            run, error = run_gbench(binary, args, name, self.timeout)
            row["raw_name"] = {"redis": "hiredis", "kafka": "librdkafka", "nats": "nats.c"}[backend]
            if error:
                row["status"] = "failed"
                row["notes"].append(f"raw failed: {error}")
                continue
            f = figures(run)
            row["raw"] = f["items_per_s"]
            row["raw_cpu_s_per_1000"] = f["cpu_s_per_1000"]
            row["raw_server_cpu_s_per_1000"] = f["server_cpu_s_per_1000"]
            row["raw_p99_ms"] = f["p99_ms"]

    # (scenario, http_bench flags, counts of requests: full, quick, smoke). Batch: 1,000 tasks a
    # request on 4 connections (the service answers on 2 HTTP threads; more connections only
    # queue). healthz runs no handler: the HTTP server's own ceiling, next to the task rows.
    HTTP_ROWS = (
        ("http_healthz", ["--scenario=healthz", "--connections=32"], (200_000, 30_000, 300)),
        ("http_submit", ["--scenario=submit", "--connections=32"], (200_000, 30_000, 300)),
        ("http_batch", ["--scenario=batch", "--connections=4", "--batch_size=1000"], (300, 60, 3)),
    )

    def http_rows(self, backend, env, broker_pid=None, before_each=None, scenarios=None, scale=1.0):
        """The http_* rows: bench/http_bench against a fresh eventbus-executor per row (a store
        grown by the previous row would slow the next), with the backend's default task store.
        `scale` shrinks the counts of a slow backend (not the smoke run's, already tiny)."""
        rows = {}
        missing = [n for n in ("http_bench", "eventbus-executor") if not os.path.exists(self.bin[n])]
        for scenario, flags, counts in self.HTTP_ROWS:
            if scenarios is not None and scenario not in scenarios:
                continue
            row = new_row(backend, scenario, 0 if scenario == "http_healthz" else 64)
            self.rows.append(row)
            rows[(scenario, row["size"])] = row
            if missing:
                row["status"] = "failed"
                row["notes"].append(f"{', '.join(missing)} not built (cmake --build {self.build_dir} "
                                    "--target http_bench eventbus-executor)")
                continue
            if before_each:
                before_each()
            log(f"{backend}: {scenario} (eventbus-executor over HTTP)")
            began = time.time()
            requests = counts[2] if self.args.smoke else max(1, int(self.counts(*counts) * scale))
            data, error = self.run_http_bench(env, flags, requests, broker_pid)
            row["run_s"] = round(time.time() - began, 1)
            if error:
                row["status"] = "failed"
                row["notes"].append(f"ours failed: {error}")
                continue
            row["ours"] = data["tasks_per_s"]
            row["p50_ms"], row["p99_ms"] = data["p50_ms"], data["p99_ms"]
            # The service is "ours" here: its CPU in the CPU column, the broker's in brackets.
            row["cpu_s_per_1000"] = data.get("server_cpu_s_per_1000")
            row["server_cpu_s_per_1000"] = data.get("broker_cpu_s_per_1000")
            row["rss_mb"] = data.get("server_rss_mb")
            row["count"] = data["tasks"]
            row["requests_per_s"] = data["requests_per_s"]
            row["load_generator_cpu_s_per_1000"] = data["cpu_s_per_1000"]
            shape = f"{data['connections']} keep-alive connections"
            if "batch_size" in data:
                shape += f", {data['batch_size']} tasks/request ({data['requests_per_s']:,.0f} req/s)"
            row["notes"].append(
                f"eventbus-executor over HTTP: {shape}; service busy "
                f"{data.get('server_cpu_utilisation', 0):.2f} cores; load generator CPU/1000 "
                f"{data['cpu_s_per_1000']:.4f}s")
        return rows

    def run_http_bench(self, env, flags, requests, broker_pid):
        try:
            service = ExecutorService(self.bin["eventbus-executor"], env)
        except (OSError, RuntimeError) as e:
            return None, str(e)
        try:
            cmd = [self.bin["http_bench"], f"--port={service.port}", f"--server_pid={service.pid}",
                   f"--requests={requests}", f"--timeout_s={self.timeout}"] + flags
            if broker_pid:
                cmd.append(f"--broker_pid={broker_pid}")
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout + 30)
            except subprocess.TimeoutExpired:
                return None, f"http_bench timed out after {self.timeout + 30}s"
            lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
            try:
                data = json.loads(lines[-1]) if lines else {}
            except ValueError:
                data = {}
            if service.proc.poll() is not None:
                return None, (f"eventbus-executor exited with {service.proc.returncode}: "
                              f"{service.log().strip()[-300:]}")
            if proc.returncode != 0 or not data or data.get("error"):
                return None, data.get("error") or (proc.stderr or proc.stdout).strip()[-300:]
            return data, None
        finally:
            service.stop()

    def memory_bench_rows(self):
        """memory end-to-end against memory_bench's mutex+deque baseline (its two cases)."""
        binary = self.bin["memory_bench"]
        min_time = "0.01" if self.args.smoke else "0.1" if self.args.quick else "0.5"
        cases = {}
        error = None
        if not os.path.exists(binary):
            error = "memory_bench not built"
        else:
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
                out = f.name
            proc = subprocess.run(
                [binary, "--benchmark_filter=BM_Baseline_MutexDeque_PublishFetch|BM_Memory_PublishFetchAck",
                 f"--benchmark_min_time={min_time}", f"--benchmark_out={out}",
                 "--benchmark_out_format=json"], capture_output=True, text=True, timeout=self.timeout)
            if proc.returncode != 0:
                error = f"memory_bench exit {proc.returncode}: {proc.stderr.strip()[-300:]}"
            else:
                with open(out) as f:
                    for b in json.load(f).get("benchmarks", []):
                        if b.get("error_occurred"):
                            error = b.get("error_message")
                        cases[b["name"]] = b
            os.unlink(out)
        for size in (64, 1024):
            row = new_row("memory", "e2e_memory_bench", size)
            row["raw_name"] = "mutex+deque"
            ours = cases.get(f"BM_Memory_PublishFetchAck/{size}")
            raw = cases.get(f"BM_Baseline_MutexDeque_PublishFetch/{size}")
            if error or not ours or not raw:
                row["status"] = "failed"
                row["notes"].append(error or f"memory_bench has no /{size} cases (renamed?)")
            else:
                row["ours"] = ours.get("items_per_second")
                row["raw"] = raw.get("items_per_second")
                row["notes"].append("memory_bench (CPU-time based, single thread)")
            self.rows.append(row)

    def run(self):
        started = time.time()
        for backend in self.args.backends:
            if backend == "memory":
                rows = self.ours("memory", [])
                self.memory_bench_rows()
                rows.update(self.http_rows("memory", {"EVENT_STREAM_TYPE": "memory"}))
                self.finish(rows, {})
            elif backend == "redis":
                self.run_redis()
            elif backend == "kafka":
                self.run_kafka()
            elif backend == "nats":
                self.run_nats()
        self.setup["total_s"] = round(time.time() - started, 1)

    def run_redis(self):
        try:
            redis = RedisServer()
        except (OSError, RuntimeError) as e:
            row = new_row("redis", "all", 0)
            row["status"], row["notes"] = "failed", [f"redis-server: {e}"]
            self.rows.append(row)
            return
        try:
            flags = [f"--redis_url={redis.url}", f"--server_pid={redis.pid}"]
            rows = self.ours("redis", flags, before_each=redis.flush)
            self.raw("redis", rows, flags, before_each=redis.flush)
            extra = {}
            noop = rows.get(("executor_noop", 64))
            if noop is not None:
                redis.flush()
                data, error = self.peers.bullmq(redis, self.counts(20_000, 3_000, 300))
                self.attach_peer(noop, "BullMQ", data, error, "jobs_per_s")
                if data:
                    extra[id(noop)] = {"peer_cpu_total": data["cpu_s_per_1000"] +
                                       (data.get("server_cpu_s_per_1000") or 0)}
                    noop["notes"].append(
                        f"BullMQ CPU/1000: node {data['cpu_s_per_1000']:.3f}s + redis "
                        f"{data.get('server_cpu_s_per_1000') or 0:.3f}s")
            self.watermill_rows("redis", redis.address, rows, redis.flush)
            # The HTTP server's own ceiling (http_healthz) is the memory rows'; here the task
            # rows, with the Redis task store the redis backend defaults to. A quarter of the
            # counts: its Lua transitions hold the rows near 3,000 tasks/s here, so the full
            # counts would cost --quick half a minute.
            rows.update(self.http_rows("redis", {"EVENT_STREAM_TYPE": "redis", "REDIS_URL": redis.url},
                                       broker_pid=redis.pid, before_each=redis.flush,
                                       scenarios=("http_submit", "http_batch"), scale=0.25))
            self.finish(rows, extra)
        finally:
            redis.stop()

    def run_kafka(self):
        try:
            log("starting the Kafka broker")
            kafka = KafkaBroker()
            self.setup["kafka_start_s"] = round(kafka.start_seconds, 1)
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
            row = new_row("kafka", "all", 0)
            row["status"], row["notes"] = "failed", [f"Kafka broker: {e}"]
            self.rows.append(row)
            return
        try:
            flags = [f"--kafka_brokers={kafka.bootstrap}", f"--server_pid={kafka.pid}"]
            rows = self.ours("kafka", flags)
            self.raw("kafka", rows, flags)
            noop = rows.get(("executor_noop", 64))
            if noop is not None:
                n = int(noop.get("count") or self.counts(100_000, 10_000, 500))
                request = '{"id":"t1","type":"inject","input":{"data":{"payload":"' + "x" * 64 + '"}}}'
                rate, error = kcat_consume(kafka.bootstrap, n, request)
                noop["raw_name"] = "kcat -C"
                if error:
                    noop["notes"].append(f"raw failed: {error}")
                    noop["status"] = "failed"
                else:
                    noop["raw"] = rate
            self.watermill_rows("kafka", kafka.bootstrap, rows, None)
            self.finish(rows, {})
        finally:
            began = time.time()
            kafka.stop()
            self.setup["kafka_stop_s"] = round(time.time() - began, 1)

    def run_nats(self):
        try:
            nats = NatsServer()
        except (OSError, RuntimeError) as e:
            row = new_row("nats", "all", 0)
            row["status"], row["notes"] = "failed", [f"nats-server: {e}"]
            self.rows.append(row)
            return
        try:
            # Every benchmark uses streams of its own (unique names): no flush between rows.
            flags = [f"--nats_url={nats.url}", f"--server_pid={nats.pid}"]
            rows = self.ours("nats", flags)
            self.raw("nats", rows, flags)
            self.finish(rows, {})
        finally:
            nats.stop()

    def watermill_rows(self, backend, address, rows, before):
        publish, consume = rows.get(("publish", 64)), rows.get(("e2e_c1", 64))
        if publish is None and consume is None:
            return
        if before:
            before()
        data, error = self.peers.watermill(backend, address, self.counts(20_000, 3_000, 200))
        if publish is not None:
            self.attach_peer(publish, "Watermill", data, error, "publish_per_s")
        if consume is not None:
            self.attach_peer(consume, "Watermill", data, error, "subscribe_ack_per_s")

    @staticmethod
    def attach_peer(row, name, data, error, key):
        row["peer_name"] = name
        if error:
            row["notes"].append(f"peer {name} unavailable: {error}")
            return
        row["peer"] = data.get(key)
        if data.get("peer"):
            row["peer_name"] = data["peer"]

    def finish(self, rows, extra):
        for row in rows.values():
            row["ratio_raw"] = ratio(row["ours"], row["raw"])
            row["ratio_peer"] = ratio(row["ours"], row["peer"])
            judge(row, {**extra.get(id(row), {}), "threads_added": row.get("threads_added")})
        for row in self.rows:
            if row["scenario"] == "e2e_memory_bench":
                row["ratio_raw"] = ratio(row["ours"], row["raw"])
                judge(row, {})


# ---------------------------------------------------------------------------------- output

def fmt(value, digits=0):
    if value is None:
        return "-"
    if isinstance(value, float) and digits:
        return f"{value:.{digits}f}"
    if isinstance(value, (int, float)) and abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{max(digits, 2)}f}" if isinstance(value, float) else str(value)


def markdown(result):
    lines = [
        f"# Benchmark matrix ({result['mode']})",
        "",
        f"{result['generated']}, {result['machine']}. Items/s are wall-clock; ratios are ours/raw "
        "and ours/peer; CPU is seconds per 1000 items of the benchmark process (and of the "
        "broker process in brackets); in the http_* rows, of the eventbus-executor process "
        "the load generator drives (and of the broker in brackets).",
        "",
        "| backend | scenario | size | ours/s | raw/s | raw | peer/s | peer | ours/raw | ours/peer "
        "| p50 ms | p99 ms | CPU/1000 s | RSS MB | target | met? | notes |",
        "|---|---|---:|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in result["rows"]:
        cpu = fmt(r["cpu_s_per_1000"], 3)
        if r.get("server_cpu_s_per_1000"):
            cpu += f" ({r['server_cpu_s_per_1000']:.3f})"
        status = r["target_status"] if r["status"] == "ok" else "FAILED"
        lines.append("| " + " | ".join([
            r["backend"], r["scenario"], str(r["size"]), fmt(r["ours"]), fmt(r["raw"]),
            r.get("raw_name") or "-", fmt(r["peer"]), r.get("peer_name") or "-",
            fmt(r["ratio_raw"], 2), fmt(r["ratio_peer"], 2), fmt(r["p50_ms"], 2),
            fmt(r["p99_ms"], 2), cpu, fmt(r["rss_mb"], 1), r["target"] or "-", status,
            r["notes"].replace("|", "/")]) + " |")
    if result["peers_unavailable"]:
        lines += ["", "Peers not run: " + "; ".join(f"{k}: {v}" for k, v in result["peers_unavailable"].items())]
    lines += ["", "Setup: " + ", ".join(f"{k} {v}" for k, v in result["setup"].items())]
    return "\n".join(lines) + "\n"


def plot(json_path, png_path):
    """Draws the chart with bench/plot.py under a Python that has matplotlib."""
    script = os.path.join(ROOT, "bench", "plot.py")
    for python in (sys.executable, "/usr/bin/python3"):
        if not os.path.exists(python):
            continue
        proc = subprocess.run([python, script, json_path, png_path], capture_output=True, text=True)
        if proc.returncode == 0:
            return None
        error = proc.stderr.strip()[-300:]
    return f"no chart: {error} (install python3-matplotlib)"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", default=os.path.join(ROOT, "build"))
    parser.add_argument("--out-dir", default=os.path.join(ROOT, "bench", "results"))
    parser.add_argument("--quick", action="store_true", help="small counts, 64 B and 1 KiB")
    parser.add_argument("--smoke", action="store_true", help="tiny counts (ctest)")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--peers", default="bullmq,watermill", help="comma list or 'none'")
    parser.add_argument("--no-peer-install", action="store_true",
                        help="run only peers an earlier run installed (no npm install / go build)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a row failed")
    args = parser.parse_args()
    # Checked before any server starts: a wrong path would otherwise show only as rows whose
    # binaries are "not built".
    if not os.path.isfile(os.path.join(args.build_dir, "CMakeCache.txt")):
        parser.error(f"--build-dir {args.build_dir} is not a CMake build directory (no "
                     "CMakeCache.txt): configure and build first, e.g. cmake -S . -B build && "
                     "cmake --build build --target broker_bench raw_bench memory_bench")
    args.backends = [b for b in args.backends.split(",") if b]
    for b in args.backends:
        if b not in BACKENDS:
            parser.error(f"unknown backend {b!r} (choose from {', '.join(BACKENDS)})")
    args.peers = [] if args.peers == "none" else [p for p in args.peers.split(",") if p]

    # A crashed or interrupted run must still stop the servers (finally blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    matrix = Matrix(args)
    matrix.run()
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    for row in matrix.rows:
        row["notes"] = "; ".join(row["notes"])
    result = {
        "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
        "mode": mode,
        "backends": args.backends,
        "setup": matrix.setup,
        "peers_unavailable": matrix.peers.unavailable,
        "rows": matrix.rows,
    }
    os.makedirs(args.out_dir, exist_ok=True)
    json_path = os.path.join(args.out_dir, "latest.json")
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1)
    md = markdown(result)
    with open(os.path.join(args.out_dir, "latest.md"), "w") as f:
        f.write(md)
    chart_error = plot(json_path, os.path.join(args.out_dir, "latest.png"))
    if chart_error:
        log(chart_error)
    print(md)
    failed = [r for r in matrix.rows if r["status"] != "ok"]
    if args.check:
        expected = {"memory": {"publish", "e2e_c1", "e2e_c4", "executor_noop", "e2e_memory_bench",
                               "http_healthz", "http_submit", "http_batch"},
                    "redis": {"publish", "e2e_c1", "e2e_c4", "executor_noop", "latency_5k",
                              "http_submit", "http_batch"},
                    "kafka": {"publish", "e2e_c1", "e2e_c4", "executor_noop", "latency_5k"},
                    "nats": {"publish", "e2e_c1", "e2e_c4", "executor_noop", "latency_5k"}}
        for backend in args.backends:
            have = {r["scenario"] for r in matrix.rows if r["backend"] == backend}
            missing = expected[backend] - have
            if missing:
                print(f"check: {backend} has no rows for {sorted(missing)}")
                return 1
        for r in matrix.rows:
            if r["status"] == "ok" and r["ours"] is None:
                print(f"check: {r['backend']}/{r['scenario']}/{r['size']} has no figure")
                return 1
        if failed:
            for r in failed:
                print(f"check: FAILED {r['backend']}/{r['scenario']}/{r['size']}: {r['notes']}")
            return 1
        print(f"check: {len(matrix.rows)} rows, none failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
