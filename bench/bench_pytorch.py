#!/usr/bin/python3
"""bench_pytorch.py: times PyTorch (float32, 2 threads by default) on the same
LV-ViT as the C engine (tests/parity/lvvit_ref.py), with the same CLI as
build/bin/tl-bench.

    /usr/bin/python3 bench/bench_pytorch.py --preset lvvit_t --img-size 224 --batch 32 \
        --mode train --steps 3 --warmup 1 [--json]
    /usr/bin/python3 bench/bench_pytorch.py --config model.json --mode infer --batch 1

train: one full training step = forward in train mode with a random MixToken
       box (section 4 of docs/METHOD.md), token-labeling loss on random soft
       targets, backward, AdamW step.
infer: eval-mode forward under torch.no_grad() and the inference score
       cls + 0.5 * max_tokens(aux).
--json prints one JSON object per line: impl, mode, batch, img_size, preset,
img_per_s, ms_per_step (mean), ms_per_step_median, ms_per_step_min,
gflop_per_s, peak_rss_mb, threads, steps, warmup, torch.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "parity"))


def fastest_openblas_coretype():
    """PyTorch's linear layers run on OpenBLAS here: give it the kernels the engine
    picks (engine/core/blas.c), SKYLAKEX on an AVX-512 CPU even over an inherited
    OPENBLAS_CORETYPE naming an older family, so both sides get the same GEMMs.
    TL_BLAS_CORETYPE, as for the engine, chooses explicitly; TL_ISA=avx2 or
    generic gives PyTorch that level too (OpenBLAS's Haswell or Nehalem family,
    ATEN_CPU_CAPABILITY), so an AVX-512 machine can compare the AVX2 paths."""
    if os.environ.get("TL_BLAS_CORETYPE"):
        os.environ["OPENBLAS_CORETYPE"] = os.environ["TL_BLAS_CORETYPE"]
        return
    isa = os.environ.get("TL_ISA", "").lower()  # the engine's kernel level (docs/ISA.md): PyTorch's too
    if isa in ("avx2", "generic"):
        os.environ["OPENBLAS_CORETYPE"] = "HASWELL" if isa == "avx2" else "NEHALEM"
        os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2" if isa == "avx2" else "default")
        return
    try:
        flags = set(next(ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        return
    fast = {"skylakex", "cooperlake", "sapphirerapids", "zen4", "zen5"}
    if {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"} <= flags and \
            os.environ.get("OPENBLAS_CORETYPE", "").lower() not in fast:
        os.environ["OPENBLAS_CORETYPE"] = "SKYLAKEX"


fastest_openblas_coretype()  # before torch loads OpenBLAS

import numpy as np  # noqa: E402
import torch  # noqa: E402

import lvvit_ref as L  # noqa: E402


def forward_flops(cfg):
    """FLOPs (2 per multiply-add) of one image's forward: convolutions, linear
    layers, the two attention matmuls and the heads."""
    C, D, g, P = cfg.stem_channels, cfg.embed_dim, cfg.grid, cfg.patch_size
    s = cfg.img_size // 2
    k = P // 2
    N = g * g
    T = N + 1
    macs = 3 * C * 49 * s * s + 2 * C * C * 9 * s * s + C * D * k * k * N
    per_block = T * (3 * D * D + D * D + 2 * D * cfg.hidden) + 2 * T * T * D
    macs += cfg.depth * per_block
    macs += D * cfg.num_classes * (1 + N)
    return 2.0 * macs


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build_config(args):
    if args.config:
        with open(args.config) as f:
            d = json.load(f)
        if not isinstance(d, dict):
            raise SystemExit("--config: expected a JSON object of model fields")
        if "model" in d and isinstance(d["model"], dict):
            d = d["model"]
        cfg = L.config_from_dict(d)
        name = d.get("preset", os.path.basename(args.config))
    else:
        cfg = L.preset(args.preset)
        name = args.preset
    if args.img_size:
        cfg.img_size = args.img_size
    cfg.validate()
    return cfg, name


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="lvvit_t", choices=sorted(L.PRESETS))
    ap.add_argument("--config", help="JSON object of model fields (may hold \"preset\")")
    ap.add_argument("--img-size", type=int, default=0, help="override the input side in pixels")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--mode", choices=("train", "infer"), default="train")
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    args = ap.parse_args()
    if args.batch < 1 or args.steps < 1 or args.warmup < 0:
        ap.error("batch and steps must be >= 1, warmup >= 0")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.RandomState(args.seed)
    cfg, name = build_config(args)
    B, K, N, g = args.batch, cfg.num_classes, cfg.tokens, cfg.grid
    model = L.LVViT(cfg).float()
    x = torch.randn(B, 3, cfg.img_size, cfg.img_size)

    if args.mode == "train":
        model.train()
        opt = L.make_adamw(model, args.lr, 0.05, (0.9, 0.999), 1e-8)
        t_cls = torch.softmax(torch.randn(B, K), dim=-1)
        t_dense = torch.softmax(torch.randn(B, N, K), dim=-1)

        def step():
            box = L.random_mix_box(g, rng)
            opt.zero_grad(set_to_none=True)
            cls, aux = model(x, box)
            loss = L.token_label_loss(cls, aux, t_cls, t_dense, box, g, 1.0, 0.5)[0]
            loss.backward()
            opt.step()
            return loss.item()
    else:
        model.eval()

        def step():
            with torch.no_grad():
                cls, aux = model(x)
                s = L.inference_score(cls, aux)
            return float(s[0, 0])

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        v = step()
        times.append(time.perf_counter() - t0)
        if not np.isfinite(v):
            raise SystemExit("non-finite loss/score")
    total = sum(times)
    flops = forward_flops(cfg) * B * (3.0 if args.mode == "train" else 1.0)
    res = {
        "impl": "pytorch",
        "mode": args.mode,
        "batch": B,
        "img_size": cfg.img_size,
        "preset": name,
        "img_per_s": B * args.steps / total,
        "ms_per_step": 1000.0 * total / args.steps,
        "ms_per_step_median": 1000.0 * statistics.median(times),
        "ms_per_step_min": 1000.0 * min(times),
        "gflop_per_s": flops * args.steps / total / 1e9,
        "peak_rss_mb": peak_rss_mb(),
        "threads": args.threads,
        "steps": args.steps,
        "warmup": args.warmup,
        "torch": torch.__version__,
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", "autodetected"),
    }
    if args.json:
        print(json.dumps(res))
    else:
        print("pytorch %s img %d batch %d %s: %.2f img/s, %.1f ms/step (median %.1f), %.1f GFLOP/s, "
              "peak RSS %.0f MB, %d threads"
              % (name, cfg.img_size, B, args.mode, res["img_per_s"], res["ms_per_step"],
                 res["ms_per_step_median"], res["gflop_per_s"], res["peak_rss_mb"], args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
