#!/usr/bin/env bash
# The main job in one command: builds what is needed and runs it on the in-memory default.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build --target eventbus-demo
exec ./build/examples/eventbus-demo "$@"
