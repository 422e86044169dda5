#!/usr/bin/env bash
# Installs the build tree into a scratch prefix, then builds and runs the out-of-tree backend
# example against it with find_package(eventbus): what a user of the package does.
set -euo pipefail
build_dir=$1
source_dir=$2
work=$(mktemp -d "${TMPDIR:-/tmp}/eventbus-package-XXXXXX")
trap 'rm -rf "$work"' EXIT
cmake --install "$build_dir" --prefix "$work/prefix" >/dev/null
cmake -S "$source_dir/examples/out_of_tree_backend" -B "$work/build" -G Ninja \
  -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/build"
ctest --test-dir "$work/build" --output-on-failure
