#!/usr/bin/env bash
# The main job in one command: builds eventbus-executor (if needed) and runs it on the
# in-memory backend with a few demo tasks of every type, one of them failing into the
# dead-letter stream. Exits 0 when every task ended as expected.
#   BUILD_DIR=build scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
BUILD_DIR="${BUILD_DIR:-build}"
if [[ ! -f "$BUILD_DIR/build.ninja" ]]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
ninja -C "$BUILD_DIR" eventbus-executor >/dev/null
exec "$BUILD_DIR/executor/service/eventbus-executor" --demo "$@"
