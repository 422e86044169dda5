#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what is missing (Debian packages, the Kafka
# broker jars), builds, runs every ctest label against real servers the tests start
# themselves, then runs the core, memory, Redis, Kafka and executor tests under ASan/UBSan and
# the memory backend's, the executor pipeline's and the HTTP server's concurrency tests under
# TSan.
#
#   scripts/test.sh            everything
#   scripts/test.sh --quick    the main build's tests only (no sanitizer builds)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

quick=false
[[ "${1:-}" == "--quick" ]] && quick=true

scripts/install-deps.sh
if [[ -x scripts/kafka-broker.sh ]]; then
  scripts/kafka-broker.sh fetch
fi

jobs=$(nproc)
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
# Paths under the checkout are hashed relative to it, so another clone hits the same cache.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$root}"
# And not the build directory: ccache hashes it into every -g compile by default, so the
# package test's shared build (its own directory, same flags) missed on every object and
# compiled the libraries again while every other test waited (it runs alone).
export CCACHE_NOHASHDIR=1

passed=0
failed=0
# Runs ctest with the given arguments, keeps its exit code, and adds its counts to the totals.
run_ctest() {
  local log
  log=$(mktemp)
  local rc=0
  ctest --output-on-failure --no-tests=error "$@" 2>&1 | tee "$log" || rc=$?
  local line
  line=$(grep -E '^[0-9]+% tests passed, [0-9]+ tests failed out of [0-9]+' "$log" | tail -n 1 || true)
  if [[ -n "$line" ]]; then
    local total bad
    bad=$(sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\1/' <<<"$line")
    total=$(sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\2/' <<<"$line")
    passed=$((passed + total - bad))
    failed=$((failed + bad))
  elif [[ $rc -ne 0 ]]; then
    failed=$((failed + 1))
  fi
  rm -f "$log"
  return $rc
}

status=0
started=$SECONDS
# Each stage's heading says how far into the run it starts (CI must stay well inside its limit).
stage() { echo "== [$(((SECONDS - started) / 60)) min] $*"; }

stage "build (RelWithDebInfo)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$jobs"
stage "tests: unit, conformance, integration, fault"
run_ctest --test-dir build --timeout 900 -j "$jobs" || status=1
# The README's backends x cases table, from the JSON reports the conformance tests just wrote.
python3 scripts/conformance_table.py build/conformance-report README.md || status=1

if ! $quick; then
  # The benchmarks stay out of the sanitizer builds. Kafka is in the ASan build: its unit,
  # fault (librdkafka's mock cluster) and conformance tests run there; its slower integration
  # tests against the real broker run in the main build only.
  sanitizer_flags=(-DEVENTBUS_BUILD_BENCHMARKS=OFF -DEVENTBUS_WITH_EXECUTOR=ON)

  stage "ASan/UBSan: core, memory, redis, kafka, nats, the PostgreSQL task store, executor (incl. its HTTP server and client)"
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DEVENTBUS_SANITIZER=address \
    "${sanitizer_flags[@]}" >/dev/null
  cmake --build build-asan -j "$jobs"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    run_ctest --test-dir build-asan -j "$jobs" -L 'memory|redis|kafka|nats|postgres|unit|executor' \
      -E '^(kafka_integration|kafka_consumer|installed_package.*)$' || status=1

  stage "TSan: the concurrent core (memory backend, executor pipeline, HTTP server, memory task store)"
  cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEVENTBUS_SANITIZER=thread \
    -DEVENTBUS_WITH_REDIS=OFF -DEVENTBUS_WITH_KAFKA=OFF "${sanitizer_flags[@]}" >/dev/null
  cmake --build build-tsan -j "$jobs" --target memory_test memory_conformance_test executor_test \
    executor_http_server_test memory_task_store_test
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:suppressions="$root/tests/tsan.supp" \
    run_ctest --test-dir build-tsan \
      -R '^(memory_unit|memory_conformance|executor_run_loop|executor_service_http_server|taskstore_memory_conformance)$' || status=1

  stage "fuzz: every decoder of bytes from the wire, libFuzzer + ASan/UBSan (clang), bounded"
  CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DEVENTBUS_FUZZ=ON -DEVENTBUS_SANITIZER=address -DEVENTBUS_BUILD_BENCHMARKS=OFF \
    -DEVENTBUS_FUZZ_SECONDS=15 >/dev/null
  cmake --build build-fuzz -j "$jobs" --target fuzz_redis_wire fuzz_kafka_wire fuzz_task_json \
    fuzz_iso_duration fuzz_http_task_body
  run_ctest --test-dir build-fuzz -L fuzz || status=1
fi

echo
echo "eventbus: ${passed} passed, ${failed} failed in $(((SECONDS - started) / 60)) min"
exit $status
