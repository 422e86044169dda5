#!/usr/bin/env bash
# Runs every libFuzzer target of tests/fuzz for a bounded time under ASan+UBSan.
#
#   scripts/fuzz.sh [SECONDS]    each target for SECONDS (default 30)
#
# Builds build-fuzz (clang, EVENTBUS_FUZZ=ON) if needed. Each target starts from a copy of its
# seed corpus in a temporary directory, so a run never writes into the repository; a crash
# input is kept as build-fuzz/fuzz-artifacts/<target>-crash-* and the script exits 1.
# One line per target: executions, executions per second, result.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

seconds=${1:-30}
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [[ "$seconds" -eq 0 ]]; then
  echo "usage: scripts/fuzz.sh [SECONDS]" >&2
  exit 2
fi

export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
build=build-fuzz
targets=(redis_wire kafka_wire task_json iso_duration http_task_body)

if [[ ! -f "$build/build.ninja" ]] || ! grep -q '^EVENTBUS_FUZZ:BOOL=ON' "$build/CMakeCache.txt"; then
  CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DEVENTBUS_FUZZ=ON -DEVENTBUS_SANITIZER=address -DEVENTBUS_WITH_KAFKA=ON \
    -DEVENTBUS_BUILD_BENCHMARKS=OFF >/dev/null
fi
cmake --build "$build" -j "$(nproc)" --target "${targets[@]/#/fuzz_}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
artifacts="$root/$build/fuzz-artifacts"
mkdir -p "$artifacts"

status=0
for target in "${targets[@]}"; do
  corpus="$work/$target"
  mkdir -p "$corpus"
  cp "tests/fuzz/corpus/$target/"* "$corpus/"
  log="$work/$target.log"
  rc=0
  (cd "$work" && "$root/$build/tests/fuzz/fuzz_$target" -max_total_time="$seconds" \
    -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$artifacts/$target-" "$corpus") >"$log" 2>&1 || rc=$?
  execs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+)/\1/p' "$log" | tail -n 1)
  per_second=$(sed -nE 's/^stat::average_exec_per_sec: *([0-9]+)/\1/p' "$log" | tail -n 1)
  if [[ $rc -eq 0 ]]; then
    result=ok
  else
    status=1
    result="FAILED (exit $rc): $(grep -m1 -E 'ERROR:|invariant broken|runtime error' "$log" || true)"
    tail -n 40 "$log" >&2
  fi
  printf '%-16s %10s execs %8s/s  %s\n' "$target" "${execs:-?}" "${per_second:-?}" "$result"
done
exit $status
