#!/usr/bin/env bash
# Cross-builds the engine and its tests for arm64 (64-bit Arm Linux: Graviton, Ampere) with
# Debian's gcc-aarch64-linux-gnu against the arm64 libraries installed multiarch, and runs the
# engine tests under qemu-user. Usage: scripts/test-arm64.sh [build-dir]   (default build-arm64)
#
# Installs what is missing first (adds the arm64 architecture to dpkg, then apt). Where that
# cannot be done (not Debian on x86-64, not root and no sudo, no network, the archive has no
# arm64 packages) it prints "test-arm64: SKIP: <why>" and exits 0; a build or test failure
# exits non-zero. The tests labelled pytorch (they run the PyTorch reference of the build
# machine against the engine's binaries) cannot run the arm64 binaries and are left out, by name.
#
# Time: floating point under qemu is about a hundred times slower than native. The tests are told
# (TL_TEST_EMULATED=1, tests/CMakeLists.txt) and leave out their few cases that would take many
# minutes; test_annotate, whose set-up trains an annotator for 320 steps (about 7 minutes under
# qemu) and which adds no arm64-specific path, is left out too: TL_ARM64_SLOW= runs it, and
# TL_ARM64_TESTS="test_a|test_b" runs only the tests that ctest -R pattern names.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build-arm64}

skip() {
  echo "test-arm64: SKIP: $*"
  exit 0
}

[[ $(uname -m) == x86_64 ]] || skip "cross-building is set up for x86-64 build machines (this is $(uname -m))"
command -v dpkg >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 || skip "no dpkg and apt-get (not Debian)"

# The cross compiler and emulator (native packages), and the arm64 libraries the engine and its tests link.
host_pkgs=(gcc-aarch64-linux-gnu qemu-user cmake pkg-config)
arm_pkgs=(libc6-dev:arm64 libopenblas-pthread-dev:arm64 libopenblas0-pthread:arm64 libcjson-dev:arm64
          libturbojpeg0-dev:arm64 libcmocka-dev:arm64)
missing=()
for p in "${host_pkgs[@]}" "${arm_pkgs[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]} > 0)); then
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    sudo -n true 2>/dev/null || skip "needs root (or sudo) to install ${missing[*]}"
    sudo="sudo -n"
  fi
  added=0
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $sudo dpkg --add-architecture arm64 || skip "dpkg --add-architecture arm64 failed"
    added=1
  fi
  # Leaves dpkg as it was when the install fails: an arm64 architecture without arm64 indexes
  # would make every later apt-get update on this machine fail.
  undo() {
    if ((added)); then $sudo dpkg --remove-architecture arm64 >/dev/null 2>&1 || true; fi
    skip "$1"
  }
  echo "test-arm64: installing ${missing[*]}"
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null 2>&1 || undo "apt-get update failed (no network, or no arm64 packages in the archive)"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-remove \
    "${missing[@]}" >/dev/null 2>&1 || undo "apt-get could not install ${missing[*]}"
fi

echo "== arm64 cross build (engine and its tests) in $dir"
cmake -S . -B "$dir" -DCMAKE_TOOLCHAIN_FILE="$PWD/scripts/toolchain-aarch64.cmake" -DCMAKE_BUILD_TYPE=Release \
  -DTL_ENGINE_ONLY=ON -DTL_MPI=OFF >/dev/null
cmake --build "$dir" -j"$(nproc)"

echo "== arm64 engine tests under qemu-user"
cd "$dir"
host_only=$(ctest -N -L pytorch | sed -n 's/^ *Test *#[0-9]*: //p' | tr '\n' ' ')
[[ -z "$host_only" ]] || echo "test-arm64: left out (PyTorch reference on the build machine): $host_only"
slow=${TL_ARM64_SLOW-test_annotate}
args=(-LE pytorch)
if [[ -n "${TL_ARM64_TESTS:-}" ]]; then
  args+=(-R "$TL_ARM64_TESTS")
elif [[ -n "$slow" ]]; then
  echo "test-arm64: left out (slowest under emulation; TL_ARM64_SLOW= runs it): ${slow//|/ }"
  args+=(-E "^(${slow})\$")
fi
ctest "${args[@]}" --timeout 1800 --output-on-failure -j"$(nproc)"
