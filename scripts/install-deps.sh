#!/usr/bin/env bash
# Installs the Debian 12 packages tokenlab needs, only those that are missing.
# Usage: scripts/install-deps.sh [--test]   (--test adds what the tests need)
set -euo pipefail

pkgs=(build-essential cmake pkg-config curl
      libmicrohttpd-dev libcjson-dev libopenblas-pthread-dev libopenblas0-pthread
      libsqlite3-dev libturbojpeg0-dev libcmocka-dev libcurl4-openssl-dev
      openmpi-bin libopenmpi-dev)
# The dashboard (web/) is built with node and npm; any install of them will do.
command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || pkgs+=(npm)
if [[ "${1:-}" == "--test" ]]; then
  pkgs+=(python3 python3-torch python3-torchvision python3-numpy chromium iproute2
        clang libclang-rt-14-dev libblis4-pthread)
fi

missing=()
for p in "${pkgs[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi

sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
echo "install-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
