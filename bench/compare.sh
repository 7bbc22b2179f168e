#!/bin/sh
# compare.sh: tokenlab (build/bin/tl-bench) against PyTorch (bench/bench_pytorch.py)
# on the same LV-ViT, in one run, one after the other (never concurrently):
#   training step   at --batch (default 32)
#   inference       batch 1 (latency) and --batch (throughput)
# then the small model of schema/examples/imagenette-64.json (LV-ViT D128x6,
# 4 heads, stem 32 channels, 10 classes) as users with small images train it:
#   32 px, patch 4, batch 128 and 64 px, patch 8, batch 64: training step and
#   inference at that batch (--small-steps steps each)
# and prints a side-by-side table with the ratio tokenlab/pytorch of images/s
# (> 1 means tokenlab is faster).
#
# Usage: bench/compare.sh [--preset lvvit_t] [--img-size 224] [--batch 32]
#                         [--steps 3] [--infer-steps 5] [--latency-steps 20]
#                         [--small-steps 5] [--warmup 1] [--bin build/bin/tl-bench]
#                         [--out results.jsonl] [--no-train] [--no-infer]
#                         [--no-small] [--only-small]
# The same settings can come from the environment: PRESET IMG_SIZE BATCH STEPS
# INFER_STEPS LATENCY_STEPS SMALL_STEPS WARMUP TL_BENCH OUT. PyTorch runs with
# 2 threads (float32); /usr/bin/python3 is used for PyTorch and the JSON parsing.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PY=/usr/bin/python3

PRESET=${PRESET:-lvvit_t}
IMG_SIZE=${IMG_SIZE:-224}
BATCH=${BATCH:-32}
STEPS=${STEPS:-3}
INFER_STEPS=${INFER_STEPS:-5}
LATENCY_STEPS=${LATENCY_STEPS:-20}
SMALL_STEPS=${SMALL_STEPS:-5}
WARMUP=${WARMUP:-1}
TL_BENCH=${TL_BENCH:-$ROOT/build/bin/tl-bench}
OUT=${OUT:-}
DO_TRAIN=1
DO_INFER=1
DO_MAIN=1
DO_SMALL=1

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --preset) PRESET=$2; shift 2 ;;
        --img-size) IMG_SIZE=$2; shift 2 ;;
        --batch) BATCH=$2; shift 2 ;;
        --steps) STEPS=$2; shift 2 ;;
        --infer-steps) INFER_STEPS=$2; shift 2 ;;
        --latency-steps) LATENCY_STEPS=$2; shift 2 ;;
        --small-steps) SMALL_STEPS=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --bin) TL_BENCH=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --no-train) DO_TRAIN=0; shift ;;
        --no-infer) DO_INFER=0; shift ;;
        --no-small) DO_SMALL=0; shift ;;
        --only-small) DO_MAIN=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "compare.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/tl-compare.XXXXXX")
trap 'rm -rf "$TMP"' EXIT INT TERM
RES=$TMP/results.tsv
: > "$RES"

if [ ! -x "$TL_BENCH" ]; then
    echo "compare.sh: $TL_BENCH not found or not executable (build with: cmake -S . -B build && cmake --build build -j2)" >&2
fi

LOAD_START=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo "?")

# The small model, the same on both sides: every field given (tl-bench --config, bench_pytorch.py --config).
small_config() { # FILE IMG PATCH
    printf '{"img_size": %s, "patch_size": %s, "embed_dim": 128, "depth": 6, "num_heads": 4, "mlp_ratio": 3,
 "stem_channels": 32, "skip_lam": 1.0, "num_classes": 10, "drop_path_rate": 0.05}\n' "$2" "$3" > "$1"
}
small_config "$TMP/d128-32.json" 32 4
small_config "$TMP/d128-64.json" 64 8

# run_case LABEL MODE BATCH STEPS [MODEL ARGS...]  (default: --preset PRESET --img-size IMG_SIZE)
run_case() {
    label=$1 mode=$2 batch=$3 steps=$4
    shift 4
    [ $# -gt 0 ] || set -- --preset "$PRESET" --img-size "$IMG_SIZE"
    echo "== $label: tokenlab" >&2
    if [ -x "$TL_BENCH" ]; then
        if "$TL_BENCH" "$@" --batch "$batch" --mode "$mode" \
                --steps "$steps" --json > "$TMP/c.out" 2> "$TMP/c.err"; then
            line=$(grep '^[[:space:]]*{' "$TMP/c.out" | grep img_per_s | tail -n 1 || true)
            [ -n "$line" ] || line='{"error":"no JSON line with img_per_s"}'
        else
            line="{\"error\":\"tl-bench exit $?\"}"
            tail -n 5 "$TMP/c.err" >&2 || true
        fi
    else
        line='{"error":"tl-bench missing"}'
    fi
    printf '%s\ttokenlab\t%s\n' "$label" "$line" >> "$RES"
    echo "== $label: pytorch" >&2
    if "$PY" "$HERE/bench_pytorch.py" "$@" --batch "$batch" \
            --mode "$mode" --steps "$steps" --warmup "$WARMUP" --json > "$TMP/p.out" 2> "$TMP/p.err"; then
        line=$(grep '^[[:space:]]*{' "$TMP/p.out" | tail -n 1 || true)
        [ -n "$line" ] || line='{"error":"no JSON line"}'
    else
        line="{\"error\":\"bench_pytorch exit $?\"}"
        tail -n 5 "$TMP/p.err" >&2 || true
    fi
    printf '%s\tpytorch\t%s\n' "$label" "$line" >> "$RES"
}

if [ "$DO_MAIN" = 1 ] && [ "$DO_TRAIN" = 1 ]; then
    run_case "train  batch $BATCH" train "$BATCH" "$STEPS"
fi
if [ "$DO_MAIN" = 1 ] && [ "$DO_INFER" = 1 ]; then
    run_case "infer  batch 1" infer 1 "$LATENCY_STEPS"
    if [ "$BATCH" != 1 ]; then
        run_case "infer  batch $BATCH" infer "$BATCH" "$INFER_STEPS"
    fi
fi
if [ "$DO_SMALL" = 1 ]; then
    for s in "32 128" "64 64"; do
        px=${s% *} b=${s#* }
        if [ "$DO_TRAIN" = 1 ]; then
            run_case "D128x6 ${px}px train  batch $b" train "$b" "$SMALL_STEPS" --config "$TMP/d128-$px.json"
        fi
        if [ "$DO_INFER" = 1 ]; then
            run_case "D128x6 ${px}px infer  batch $b" infer "$b" "$SMALL_STEPS" --config "$TMP/d128-$px.json"
        fi
    done
fi

if [ -n "$OUT" ]; then
    cut -f3 "$RES" > "$OUT"
fi

LOAD_END=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo "?")

"$PY" - "$RES" "$PRESET" "$IMG_SIZE" "$LOAD_START" "$LOAD_END" <<'EOF'
import json, sys

path, preset, img, load0, load1 = sys.argv[1:6]
rows = {}
order = []
for raw in open(path):
    label, impl, js = raw.rstrip("\n").split("\t", 2)
    try:
        d = json.loads(js)
    except ValueError:
        d = {"error": "bad JSON: " + js[:60]}
    if label not in rows:
        rows[label] = {}
        order.append(label)
    rows[label][impl] = d


def num(d, k):
    v = d.get(k)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def ms(d):
    v = num(d, "ms_per_step")
    if v is None and num(d, "img_per_s") and num(d, "batch"):
        v = 1000.0 * num(d, "batch") / num(d, "img_per_s")
    return v


def f(v, fmt):
    return (fmt % v) if v is not None else "n/a"


threads = None
for label in order:
    threads = threads or rows[label].get("pytorch", {}).get("threads")
print()
print("tokenlab vs PyTorch: %s, %s px (rows without a model name), PyTorch float32 with %s threads"
      % (preset, img, threads if threads is not None else "?"))
hdr = ("case", "tokenlab img/s", "pytorch img/s", "ratio", "tokenlab ms", "pytorch ms",
       "tl GFLOP/s", "tl sgemm peak", "tl RSS MB", "pt RSS MB")
fmt = "%-28s %14s %14s %7s %12s %11s %11s %13s %10s %10s"
print(fmt % hdr)
errors = []
for label in order:
    c = rows[label].get("tokenlab", {})
    p = rows[label].get("pytorch", {})
    ci, pi = num(c, "img_per_s"), num(p, "img_per_s")
    ratio = ci / pi if ci and pi else None
    frac = num(c, "sgemm_peak_fraction")
    print(fmt % (label, f(ci, "%.2f"), f(pi, "%.2f"), f(ratio, "%.2fx"), f(ms(c), "%.1f"), f(ms(p), "%.1f"),
                 f(num(c, "gflop_per_s"), "%.1f"), f(frac * 100 if frac is not None else None, "%.0f%%"),
                 f(num(c, "peak_rss_mb"), "%.0f"), f(num(p, "peak_rss_mb"), "%.0f")))
    for impl, d in (("tokenlab", c), ("pytorch", p)):
        if "error" in d:
            errors.append("%s, %s: %s" % (" ".join(label.split()), impl, d["error"]))
        lo, med = num(d, "ms_per_step_min"), num(d, "ms_per_step_median")
        if lo and med and med > 1.5 * lo:
            errors.append("%s, %s: step times vary (min %.1f ms, median %.1f ms): was the machine busy?"
                          % (" ".join(label.split()), impl, lo, med))
print("D128x6: LV-ViT D128, 6 blocks, 4 heads, MLP 3, stem 32 channels, 10 classes "
      "(schema/examples/imagenette-64.json); patch 4 at 32 px, patch 8 at 64 px.")
print("ratio = tokenlab img/s / pytorch img/s (> 1: tokenlab faster); "
      "batch-1 inference ms is the latency.")
for e in errors:
    print("note: " + e)
print("load average (1 min) at start %s, at end %s; the runs use 2 cores each, so other load "
      "on the machine distorts the numbers" % (load0, load1))
EOF
