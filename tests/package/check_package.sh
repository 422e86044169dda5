#!/usr/bin/env bash
# What a user of the installed package does, checked end to end.
#
#   check_package.sh installed <build_dir> <source_dir>
#     Installs <build_dir> (static) into a scratch prefix, checks the install left the build
#     tree alone, moves the prefix (relocatable), checks no file of it names a build-machine
#     path, then builds outside projects: `core memory` (and runs its quickstart), `redis kafka`,
#     `builtin_backends` (runs it), the out-of-tree backend's conformance test, and a program
#     from pkg-config alone.
#   check_package.sh shared <build_dir> <source_dir>
#     Configures and builds the package with BUILD_SHARED_LIBS=ON (library targets only) under
#     <build_dir>/package-shared, installs it, checks the SONAMEs and that only the public API
#     is exported, then builds and runs the same outside projects against it.
#   check_package.sh clean-prefix <build_dir> <source_dir>
#     A sysroot-like prefix holding only the installed eventbus, Abseil and Protobuf: an outside
#     project asking for `core memory` configures, builds and runs there, after proving that
#     GoogleTest, libcurl, hiredis and librdkafka cannot be found in it (and can be outside it,
#     so the probes work); asking for `redis` there fails, naming hiredis.
set -euo pipefail
mode=$1
build_dir=$(cd "$2" && pwd)
source_dir=$(cd "$3" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/eventbus-package-XXXXXX")
trap 'rm -rf "$work"' EXIT
consumer="$source_dir/tests/package/consumer"
generator=(-G Ninja)
step() { echo "== $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# Builds the consumer project against prefix $1 asking for components $2, extra args after.
consume() {
  local prefix=$1 components=$2
  shift 2
  local dir="$work/consumer-${components// /-}-$RANDOM"
  step "outside project asking for: $components"
  cmake -S "$consumer" -B "$dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$prefix" -DEVENTBUS_SOURCE_DIR="$source_dir" \
    "-DEVENTBUS_COMPONENTS=${components// /;}" "$@" >"$dir.log" 2>&1 ||
    { cat "$dir.log"; fail "configuring the outside project for '$components'"; }
  grep -E "^-- (eventbus|clean prefix)" "$dir.log" || true
  cmake --build "$dir" >"$dir.build.log" 2>&1 || { cat "$dir.build.log"; fail "building for '$components'"; }
  ctest --test-dir "$dir" --output-on-failure
}

# No installed file may name the source or build tree, nor an absolute library path of this
# machine (imported targets only): the package must work wherever it is copied.
check_relocatable() {
  local prefix=$1
  step "no build-machine paths in $prefix"
  local hits
  hits=$(grep -rlE "$source_dir|$build_dir|/usr/(local/)?lib[^ ]*\.(so|a)|/usr/include" \
           "$prefix/lib" "$prefix/include" --include='*.cmake' --include='*.pc' --include='*.h' || true)
  [[ -z "$hits" ]] || { grep -nE "$source_dir|$build_dir|/usr/(local/)?lib[^ ]*\.(so|a)|/usr/include" $hits | head; fail "absolute paths in the installed package"; }
}

check_common() {
  local prefix=$1
  check_relocatable "$prefix"
  consume "$prefix" "core memory"
  consume "$prefix" "redis kafka"
  consume "$prefix" "builtin_backends"
  step "out-of-tree backend's conformance test (COMPONENTS conformance memory)"
  cmake -S "$source_dir/examples/out_of_tree_backend" -B "$work/oot" "${generator[@]}" \
    -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release >"$work/oot.log" 2>&1 ||
    { cat "$work/oot.log"; fail "configuring the out-of-tree backend"; }
  cmake --build "$work/oot" >"$work/oot.build.log" 2>&1 || { cat "$work/oot.build.log"; fail "building the out-of-tree backend"; }
  ctest --test-dir "$work/oot" --output-on-failure | tail -3
  rm -rf "$work/oot"
}

# A program built from `pkg-config eventbus-memory` alone.
check_pkg_config() {
  local prefix=$1 static=$2
  step "pkg-config eventbus-memory $static"
  local libdir
  libdir=$(dirname "$(find "$prefix" -name eventbus-memory.pc | head -1)")
  local flags
  flags=$(PKG_CONFIG_PATH="$libdir" pkg-config --cflags --libs $static eventbus-memory) ||
    fail "pkg-config eventbus-memory"
  # shellcheck disable=SC2086
  c++ -std=c++20 -O1 -I"$source_dir/examples/quickstart" "$source_dir/examples/quickstart/memory.cc" \
    $flags -Wl,-rpath,"$(dirname "$libdir")" -o "$work/pc_memory"
  "$work/pc_memory" | grep "memory: published and consumed 3 orders"
}

case "$mode" in
  installed)
    step "cmake --install $build_dir (static)"
    # The install must only read the build tree's files (install_manifest.txt is CMake's own
    # record of it; Testing/ is ctest's, written while this test runs).
    snapshot() { find "$build_dir" \( -path "$build_dir/package-shared" -o -path "$build_dir/Testing" \) \
                   -prune -o -type f ! -name 'install_manifest*.txt' -printf '%p %s %T@\n' | sort; }
    snapshot >"$work/before"
    cmake --install "$build_dir" --prefix "$work/staging" >/dev/null
    snapshot >"$work/after"
    diff -q "$work/before" "$work/after" >/dev/null ||
      { diff "$work/before" "$work/after" | head; fail "cmake --install changed the build tree"; }
    step "relocated: the prefix moved after installing"
    mv "$work/staging" "$work/moved-prefix"
    [[ -f "$work/moved-prefix/include/eventbus/version.h" ]] || fail "no eventbus/version.h installed"
    check_common "$work/moved-prefix"
    check_pkg_config "$work/moved-prefix" --static
    ;;

  shared)
    shared_build="$build_dir/package-shared"
    step "shared build in $shared_build"
    # Same flags as the static build, and compiler-cache hits across build directories: a
    # library object compiles identically in both (cmake/EventbusComponents.cmake).
    build_type=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$build_dir/CMakeCache.txt")
    export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$source_dir}" CCACHE_NOHASHDIR=1
    cmake -S "$source_dir" -B "$shared_build" "${generator[@]}" -DCMAKE_BUILD_TYPE="${build_type:-Release}" \
      -DBUILD_SHARED_LIBS=ON -DEVENTBUS_BUILD_TESTS=OFF -DEVENTBUS_BUILD_BENCHMARKS=OFF \
      -DEVENTBUS_WITH_EXECUTOR=OFF >"$work/shared-configure.log" 2>&1 ||
      { cat "$work/shared-configure.log"; fail "configuring the shared build"; }
    cmake --build "$shared_build" >"$work/shared-build.log" 2>&1 ||
      { tail -50 "$work/shared-build.log"; fail "building the shared libraries"; }
    cmake --install "$shared_build" --prefix "$work/staging" >/dev/null
    mv "$work/staging" "$work/shared-prefix"
    prefix="$work/shared-prefix"
    lib=$(dirname "$(find "$prefix" -name 'libeventbus_core.so*' | head -1)")
    step "SONAMEs"
    version=$(sed -n 's/#define EVENTBUS_VERSION_STRING "\(.*\)"/\1/p' "$prefix/include/eventbus/version.h")
    soversion=${version%.*}
    for name in core memory redis kafka nats builtin_backends conformance taskstore; do
      soname=$(readelf -d "$lib/libeventbus_$name.so" | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')
      [[ "$soname" == "libeventbus_$name.so.$soversion" ]] ||
        fail "libeventbus_$name.so has SONAME '$soname', expected libeventbus_$name.so.$soversion"
      [[ -f "$lib/libeventbus_$name.so.$version" ]] || fail "no libeventbus_$name.so.$version"
      echo "libeventbus_$name.so -> $soname"
    done
    step "exported symbols: the public API only"
    exported=$(nm -DC --defined-only "$lib/libeventbus_kafka.so")
    grep -q "eventbus::kafka::NewKafkaEventStream" <<<"$exported" || fail "NewKafkaEventStream not exported"
    grep -q "eventbus::kafka::RegisterKafkaBackend" <<<"$exported" || fail "RegisterKafkaBackend not exported"
    if grep -E "KafkaSubscription|KafkaClient|OffsetTracker" <<<"$exported" | head -3 | grep -q .; then
      fail "internal classes of the Kafka backend are exported"
    fi
    echo "libeventbus_kafka.so exports $(wc -l <<<"$exported") symbols; no KafkaSubscription/KafkaClient/OffsetTracker"
    core_exported=$(nm -DC --defined-only "$lib/libeventbus_core.so")
    grep -q "eventbus::SetLogSink" <<<"$core_exported" || fail "SetLogSink not exported"
    if grep -q "UnknownBackendError" <<<"$core_exported"; then fail "core internals exported"; fi
    check_common "$prefix"
    check_pkg_config "$prefix" ""
    ;;

  clean-prefix)
    step "cmake --install $build_dir into a sysroot-like prefix"
    root="$work/root"
    cmake --install "$build_dir" --prefix "$root/opt/eventbus" >/dev/null
    # Only the dependencies of `core memory` (Abseil, Protobuf) are in the sysroot.
    multiarch=$(gcc -print-multiarch)
    mkdir -p "$root/usr/include" "$root/usr/lib/$multiarch/cmake" "$root/usr/lib/$multiarch/pkgconfig"
    ln -s /usr/include/absl "$root/usr/include/absl"
    ln -s /usr/include/google "$root/usr/include/google"
    ln -s "/usr/lib/$multiarch/cmake/absl" "$root/usr/lib/$multiarch/cmake/absl"
    for f in /usr/lib/"$multiarch"/libabsl_* /usr/lib/"$multiarch"/libprotobuf.*; do
      ln -s "$f" "$root/usr/lib/$multiarch/"
    done
    # Nothing outside the sysroot: find_* and pkg-config search only under $root.
    clean_args=(-DCMAKE_FIND_ROOT_PATH="$root" -DCMAKE_FIND_ROOT_PATH_MODE_PACKAGE=ONLY
      -DCMAKE_FIND_ROOT_PATH_MODE_LIBRARY=ONLY -DCMAKE_FIND_ROOT_PATH_MODE_INCLUDE=ONLY
      -DCMAKE_FIND_ROOT_PATH_MODE_PROGRAM=NEVER)
    export PKG_CONFIG_LIBDIR="$root/usr/lib/$multiarch/pkgconfig"

    step "control: outside the sysroot the probes do find GoogleTest, libcurl, hiredis, librdkafka"
    if (unset PKG_CONFIG_LIBDIR
        cmake -S "$consumer" -B "$work/control" "${generator[@]}" -DCMAKE_PREFIX_PATH="$root/opt/eventbus" \
          -DEVENTBUS_SOURCE_DIR="$source_dir" -DEVENTBUS_COMPONENTS="core;memory" \
          -DEXPECT_CLEAN_PREFIX=ON >"$work/control.log" 2>&1); then
      cat "$work/control.log"; fail "the probes found nothing on this machine: they prove nothing"
    fi
    grep -o "the prefix is not clean, found: .*" "$work/control.log" ||
      { cat "$work/control.log"; fail "the control configure failed for another reason"; }

    consume /opt/eventbus "core memory" "${clean_args[@]}" -DEXPECT_CLEAN_PREFIX=ON

    step "asking for redis in the clean prefix fails and names hiredis"
    if cmake -S "$consumer" -B "$work/redis" "${generator[@]}" -DCMAKE_PREFIX_PATH=/opt/eventbus \
         -DEVENTBUS_SOURCE_DIR="$source_dir" -DEVENTBUS_COMPONENTS="core;redis" "${clean_args[@]}" \
         >"$work/redis.log" 2>&1; then
      fail "find_package(eventbus COMPONENTS redis) succeeded without hiredis"
    fi
    grep -q "component 'redis' needs hiredis" "$work/redis.log" ||
      { cat "$work/redis.log"; fail "the error does not name hiredis"; }
    grep -o "eventbus component 'redis' needs hiredis[^,]*" "$work/redis.log" | head -1
    ;;

  *)
    fail "unknown mode '$mode' (installed, shared, clean-prefix)"
    ;;
esac
echo "OK ($mode)"
