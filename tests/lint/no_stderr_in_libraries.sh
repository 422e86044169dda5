#!/usr/bin/env bash
# The libraries never write to stderr or stdout by themselves (README, eventbus/log.h): every
# diagnostic goes through eventbus::Log. Programs (the executor, the CLI, the jq worker, tools)
# may print; StderrLogSink is the one opt-in writer.
#
#   no_stderr_in_libraries.sh <source_dir>
set -euo pipefail
cd "$1"
hits=$(grep -rnE '\b(fprintf|fputs|perror)\s*\(\s*std(err|out)|std::(cerr|cout|clog)\b|\bprintf\s*\(|\bputs\s*\(' \
         core/src backends/*/src taskstore/src taskstore/*/src executor/src executor/components/src --include='*.cc' --include='*.h' |
       grep -v -e '_main\.cc:' -e 'core/src/log\.cc:' || true)
if [[ -n "$hits" ]]; then
  echo "library code writes to stderr/stdout instead of eventbus::Log:"
  echo "$hits"
  exit 1
fi
echo "no library source writes to stderr or stdout"
