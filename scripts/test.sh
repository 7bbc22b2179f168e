#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test: once in the release
# build, once more under AddressSanitizer + UndefinedBehaviorSanitizer, then
# the libFuzzer targets (clang) for a few seconds each, and last the engine
# cross-built for arm64 with its tests under qemu-user (scripts/test-arm64.sh,
# which skips with a message where the arm64 packages cannot be installed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --test

echo "== release build and tests"
scripts/build.sh build
(cd build && ctest --output-on-failure)

echo "== AddressSanitizer + UndefinedBehaviorSanitizer build and tests"
scripts/build.sh build-asan -DTL_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
   ctest --output-on-failure)

echo "== libFuzzer targets (clang), ${TL_FUZZ_SECONDS:-10} s each"
CC=clang cmake -S . -B build-fuzz -DTL_FUZZ=ON -DTL_FUZZ_SECONDS="${TL_FUZZ_SECONDS:-10}" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target tl_fuzz_targets
(cd build-fuzz && ctest -L fuzz --output-on-failure)

scripts/test-arm64.sh build-arm64
