#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: install what is missing, build,
# and train a small LV-ViT on generated pictures, printing its progress.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh build
exec build/bin/tokenlabd demo "${STEPS:-300}"
