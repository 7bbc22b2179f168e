#!/usr/bin/env bash
# Token labeling vs plain training on the built-in synthetic data, same
# budget: 600 training pictures of 10 classes at 64 px, 40 epochs, the same
# model, recipe and seed; the only difference is the exact label maps.
# Prints the final val top-1/top-5 (raw and EMA) of both runs.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x build/bin/tokenlabd ]] || scripts/build.sh build
if [[ ! -f data/synth-600/train.tllm ]]; then
  build/bin/tokenlabd synth --out data/synth-600 --classes 10 --train 600 --val 1000 --size 64 --seed 7
fi
for v in tl plain; do
  rm -rf "runs/synth-ablation-$v"
  start=$(date +%s)
  build/bin/tokenlabd run "schema/examples/synth-ablation-$v.json" --out "runs/synth-ablation-$v" >/dev/null
  echo "$v: $(( $(date +%s) - start )) s"
  grep '"eval"' "runs/synth-ablation-$v/metrics.jsonl" | tail -2
done
