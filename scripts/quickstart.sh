#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: install what is missing, build,
# write the built-in synthetic dataset, and train a small LV-ViT on it with
# token labeling and MixToken in the foreground (progress bar, evaluations,
# checkpoints and metrics in runs/quickstart). Ctrl-C checkpoints; running
# the script again resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh build
if [[ ! -f data/synth/train.tllm ]]; then
  build/bin/tokenlabd synth --out data/synth --classes 10 --train 2000 --val 500 --size 64
fi
exec build/bin/tokenlabd run schema/examples/synth-quickstart.json --out runs/quickstart
