#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what is missing (Debian packages, the Kafka
# broker jars), builds, runs every ctest label against real servers the tests start
# themselves, then runs the core, memory, Redis and executor tests under ASan/UBSan and the
# memory backend's and the executor's concurrency tests under TSan.
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

echo "== build (RelWithDebInfo)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$jobs"
echo "== tests: unit, conformance, integration, fault"
run_ctest --test-dir build --timeout 900 || status=1

if ! $quick; then
  # Sanitizer builds leave out Kafka (its client's own threads make them slow and noisy; its
  # backend was checked under ASan by hand) and the benchmarks.
  sanitizer_flags=(-DEVENTBUS_WITH_KAFKA=OFF -DEVENTBUS_BUILD_BENCHMARKS=OFF -DEVENTBUS_WITH_EXECUTOR=ON)

  echo "== ASan/UBSan: core, memory, redis, executor (unit, conformance, redis integration)"
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DEVENTBUS_SANITIZER=address \
    "${sanitizer_flags[@]}" >/dev/null
  cmake --build build-asan -j "$jobs"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    run_ctest --test-dir build-asan -L 'memory|redis|unit' || status=1

  echo "== TSan: the concurrent core (memory backend, executor run loop)"
  cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEVENTBUS_SANITIZER=thread \
    -DEVENTBUS_WITH_REDIS=OFF "${sanitizer_flags[@]}" >/dev/null
  cmake --build build-tsan -j "$jobs" --target memory_test memory_conformance_test executor_test
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
    run_ctest --test-dir build-tsan -R '^(memory_unit|memory_conformance|executor_run_loop)$' || status=1
fi

echo
echo "eventbus: ${passed} passed, ${failed} failed"
exit $status
