#!/bin/bash
# dist_bench.sh: distributed training figures on this machine (docs/BENCHMARKS.md, "Distributed training:
# gradient sum and step time"; the scaling model in docs/DISTRIBUTED.md (Scaling model) uses them).
#
#   bash bench/dist_bench.sh [--only comm|steps] [--comm-presets lvvit_t,lvvit_s,lvvit_m] [--reps N]
#                            [--step-presets lvvit_t,...] [--batch B] [--steps N]
#
# comm:  build/bin/tl-comm-bench on 2 ranks (tl_comm_sum_tree of each preset's gradient vector and of
#        16 MB) three ways: one host over shared memory (Open MPI's default, vader), one host over TCP on
#        loopback, and two hosts over TCP on a veth pair (two network namespaces, scripts/netns_hosts.sh).
# steps: `tokenlabd run` of each preset at 224 px on synthetic pictures (tokenlabd synth), global batch B,
#        N steps, three ways: 1 process with 2 threads (micro_batches 1), 2 ranks on one host with 1
#        thread each (micro_batches 2), 2 ranks on the two hosts. Per-step times come from metrics.jsonl
#        (img_per_s is images over the first steps' summed time, so each step's time is recovered from
#        consecutive lines), the gradient sum's from its comm_s; the median over steps 2..N is printed,
#        with the 1-minute load average at the run's end (other work on the machine shows there).
# Needs root and iproute2 for the two hosts (skipped with a message otherwise); the work folder is
# $TL_BENCH_WORK (default /tmp/tl-dist-bench.PID), removed at the end. Run from the repository root after
# building (build/bin). One process at a time: nothing here runs concurrently.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/build/bin
only="" comm_presets=lvvit_t,lvvit_s,lvvit_m reps=5 step_presets=lvvit_t batch=32 steps=5
while [ $# -gt 0 ]; do
    case "$1" in
    --only) only=$2; shift 2 ;;
    --comm-presets) comm_presets=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --step-presets) step_presets=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    *) sed -n '2,/^set -u/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
    esac
done
work=${TL_BENCH_WORK:-/tmp/tl-dist-bench.$$}
name=tlb$$
rm -rf "$work" && mkdir -p "$work" || exit 1
hosts=""
cleanup() {
    [ -n "$hosts" ] && "$root/scripts/netns_hosts.sh" down "$name"
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

local_mpirun=(mpirun --bind-to none --oversubscribe)
[ "$(id -u)" = 0 ] && local_mpirun+=(--allow-run-as-root)
if "$root/scripts/netns_hosts.sh" up "$name" "$work/hosts"; then
    hosts=$work/hosts
else
    echo "dist_bench: no two hosts here (see above): the veth figures are left out" >&2
fi

lscpu | sed -n 's/^Model name: *//p' | sed 's/^/CPU: /'
echo "ISA: $(grep -o -w -E 'avx512f|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')"

if [ "$only" != steps ]; then
    args=(--preset "$comm_presets" --mb 16 --reps "$reps")
    echo "== gradient sum, 2 ranks, one host, shared memory (vader); load average $(cut -d" " -f1 /proc/loadavg)"
    "${local_mpirun[@]}" -np 2 "$bin/tl-comm-bench" "${args[@]}" || exit 1
    echo "== gradient sum, 2 ranks, one host, TCP over loopback"
    "${local_mpirun[@]}" -np 2 --mca btl tcp,self --mca btl_tcp_if_include lo "$bin/tl-comm-bench" "${args[@]}" ||
        exit 1
    if [ -n "$hosts" ]; then
        echo "== gradient sum, 2 ranks on 2 hosts (network namespaces), TCP over a veth pair"
        "$hosts/mpirun" -np 2 "$bin/tl-comm-bench" "${args[@]}" || exit 1
    fi
fi

[ "$only" = comm ] && exit 0

# spec PRESET OUT MICRO THREADS: writes the job spec, prints its path.
spec() {
    local path=$work/$2.json
    cat >"$path" <<EOF
{"kind": "train", "name": "$2", "model": {"preset": "$1", "num_classes": 10},
 "data": {"train": "$work/data/train", "val": "$work/data/val"},
 "train": {"epochs": 1, "batch_size": $batch, "micro_batches": $3, "threads": $4, "loader_threads": 1,
           "cache_mb": 0, "warmup_epochs": 0}}
EOF
    echo "$path"
}

# report LABEL RUN_DIR: the median step time (steps 2..N), images/s and the median gradient sum.
report() {
    /usr/bin/python3 - "$1" "$2/metrics.jsonl" "$batch" <<'EOF'
import json, statistics, sys
label, path, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [o for o in map(json.loads, open(path)) if "eval" not in o]
cum = [batch * o["step"] / o["img_per_s"] for o in rows]  # seconds of steps 1..k (k <= 20)
step = statistics.median([b - a for a, b in zip(cum, cum[1:])])
line = "  %-44s step %7.3f s (%6.2f img/s)" % (label, step, batch / step)
if "comm_s" in rows[0]:
    comm = statistics.median(o["comm_s"] for o in rows[1:])
    line += ", gradient sum %.3f s (%.1f%% of the step)" % (comm, 100 * comm / step)
print(line + "; load average %s" % open("/proc/loadavg").read().split()[0], flush=True)
EOF
}

"$bin/tokenlabd" synth --out "$work/data" --classes 10 --train $((batch * steps)) --val 10 --size 224 \
    >/dev/null || exit 1
IFS=, read -r -a presets <<<"$step_presets"
for p in "${presets[@]}"; do
    echo "== $p at 224 px, global batch $batch, $steps steps (median of steps 2..$steps)"
    s1=$(spec "$p" "$p-p1" 1 2) s2=$(spec "$p" "$p-r2" 2 1)
    "$bin/tokenlabd" run "$s1" --out "$work/$p-p1" >"$work/$p-p1.log" 2>&1 || { cat "$work/$p-p1.log"; exit 1; }
    report "1 process, 2 threads" "$work/$p-p1"
    "${local_mpirun[@]}" -np 2 "$bin/tokenlabd" run "$s2" --out "$work/$p-r2" >"$work/$p-r2.log" 2>&1 ||
        { cat "$work/$p-r2.log"; exit 1; }
    report "2 ranks x 1 thread, one host (shared memory)" "$work/$p-r2"
    if [ -n "$hosts" ]; then
        "$hosts/mpirun" -np 2 "$bin/tokenlabd" run "$s2" --out "$work/$p-h2" >"$work/$p-h2.log" 2>&1 ||
            { cat "$work/$p-h2.log"; exit 1; }
        report "2 ranks x 1 thread, 2 hosts (veth)" "$work/$p-h2"
    fi
done
