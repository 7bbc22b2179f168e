#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang into build-fuzz/ and runs
# each for SECONDS (default 300), keeping what they find in build-fuzz/fuzz-corpus/.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
# A crash leaves the input as build-fuzz/crash-* and fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-300}
shift || true
CC=clang cmake -S . -B build-fuzz -DTL_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target tl_fuzz_targets >/dev/null
targets=("$@")
if ((${#targets[@]} == 0)); then
  for f in tests/fuzz/fuzz_*.c; do targets+=("$(basename "$f" .c)"); done
fi
status=0
for t in "${targets[@]}"; do
  mkdir -p "build-fuzz/fuzz-corpus/$t"
  log="build-fuzz/fuzz-$t.log"
  rc=0
  (cd build-fuzz && "./bin/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
     "fuzz-corpus/$t" "../tests/fuzz/corpus/$t") >"$log" 2>&1 || rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  echo "$t: ${secs} s, ${runs:-?} inputs, corpus $(ls "build-fuzz/fuzz-corpus/$t" | wc -l) files, exit $rc"
  if ((rc != 0)); then
    grep -E "ERROR|SUMMARY" "$log" | head -5
    status=1
  fi
done
exit $status
