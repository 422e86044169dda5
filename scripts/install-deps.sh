#!/usr/bin/env bash
# Installs every Debian package eventbus needs to build and test. Idempotent: quiet and quick
# when everything is already there. Needs root (or sudo).
set -euo pipefail

PACKAGES=(
  # toolchain
  g++ cmake ninja-build ccache pkg-config git
  # core
  libabsl-dev libprotobuf-dev protobuf-compiler
  # backends
  libhiredis-dev librdkafka-dev libnats-dev
  # executor and service
  libcurl4-openssl-dev nlohmann-json3-dev libspdlog-dev libfmt-dev prometheus-cpp-dev
  libjq-dev libcpp-httplib-dev libssl-dev libboost-dev
  # the PostgreSQL task store (libpq) and the `eventbus` CLI (CLI11)
  libpq-dev libcli11-dev
  # the system CA store that HTTPS `call` tasks verify against; `openssl` makes the test CA
  ca-certificates openssl
  # tests and benchmarks; clang + its runtime for the libFuzzer targets (tests/fuzz)
  libgtest-dev libgmock-dev libbenchmark-dev clang libclang-rt-14-dev
  # servers and foreign clients the tests use (python3-venv: the nats-py venv below)
  redis-server redis-tools nats-server kcat openjdk-17-jre-headless maven python3 python3-venv curl
  postgresql
  # the dashboard's browser test (ctest label `browser`): headless chromium and its driver
  chromium chromium-driver
  # bench/run.py's chart (bench/plot.py)
  python3-matplotlib
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# A JDK 17 from elsewhere (e.g. a preinstalled Temurin) serves as well as Debian's.
if [[ " ${missing[*]} " == *" openjdk-17-jre-headless "* ]] && command -v java >/dev/null &&
   java -version 2>&1 | grep -q 'version "17'; then
  missing=("${missing[@]/openjdk-17-jre-headless}")
fi
if [[ " ${missing[*]} " == *" maven "* ]] && command -v mvn >/dev/null; then
  missing=("${missing[@]/maven}")
fi
# The BullMQ benchmark peer runs on Node.js; a node from elsewhere (NodeSource) serves as well.
if ! command -v node >/dev/null; then
  missing+=(nodejs npm)
fi
read -r -a missing <<< "${missing[*]}"
if ((${#missing[@]} > 0)); then
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The dashboard's browser test (tests/browser) drives Debian's chromium with playwright-core,
# pinned, from npm; kept out of the tree under the cache.
browser_modules="${EVENTBUS_BROWSER_MODULES:-$HOME/.cache/eventbus/browser}"
if [[ ! -f "$browser_modules/node_modules/playwright-core/package.json" ]]; then
  echo "install-deps: installing playwright-core into $browser_modules"
  mkdir -p "$browser_modules"
  npm install --prefix "$browser_modules" --no-save --no-audit --no-fund --loglevel=error \
    playwright-core@1.64.1 >/dev/null
fi

# The foreign NATS client of tests/nats (nats-py, pure Python, from PyPI: Debian has none) in a
# venv of its own; EVENTBUS_PY_VENV overrides where (the test reads the same variable).
PY_VENV="${EVENTBUS_PY_VENV:-${HOME}/.cache/eventbus/venv}"
NATS_PY_VERSION=2.16.0
if ! "$PY_VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('nats-py') != '$NATS_PY_VERSION')" 2>/dev/null; then
  echo "install-deps: nats-py $NATS_PY_VERSION into $PY_VENV"
  python3 -m venv "$PY_VENV"
  "$PY_VENV/bin/pip" install -q --disable-pip-version-check "nats-py==$NATS_PY_VERSION"
fi
