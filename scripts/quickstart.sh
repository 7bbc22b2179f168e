#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: install what is missing, build,
# write the built-in synthetic dataset, start the daemon (tokenlabd serve on
# 127.0.0.1:${TOKENLAB_PORT:-8080}, state in ./tokenlab-data) and submit a demo
# training job (token labeling + MixToken on the synthetic data). The daemon
# stays in the foreground; Ctrl-C stops it cleanly (the job checkpoints and
# resumes when the script runs again).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh build
if [[ ! -f data/synth/train.tllm ]]; then
  build/bin/tokenlabd synth --out data/synth --classes 10 --train 2000 --val 500 --size 64
fi
port=${TOKENLAB_PORT:-8080}
base="http://127.0.0.1:$port"
build/bin/tokenlabd serve --port "$port" --state tokenlab-data --data-root . &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid"' INT TERM
for _ in $(seq 100); do
  curl -fs "$base/healthz" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { echo "quickstart: the daemon did not start" >&2; exit 1; }
  sleep 0.1
done
job=$(curl -fsS -H "Authorization: Bearer $(cat tokenlab-data/token)" -H "Content-Type: application/json" \
        -H "Idempotency-Key: quickstart-demo" --data-binary @schema/examples/synth-quickstart.json \
        "$base/api/v1/jobs" | sed -n 's/^{"id":\([0-9]*\),.*/\1/p')
cat <<MSG

tokenlab is running. Open the dashboard:  $base/#/jobs/$job
  (the token it asks for before submitting or cancelling is in tokenlab-data/token)
  command line: build/bin/tokenlab watch $job      (TOKENLAB_TOKEN_FILE=tokenlab-data/token for changes)
  demo job:     $base/api/v1/jobs/$job
  live events:  curl -N $base/api/v1/jobs/$job/events
  loss curve:   curl '$base/api/v1/jobs/$job/metrics/loss?max_points=50'
  API document: $base/api/v1/openapi.json
Press Ctrl-C to stop (the job checkpoints and resumes next time).
MSG
wait "$pid"
