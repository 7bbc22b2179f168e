#!/usr/bin/python3
"""run_targets_parity.py: checks the label-map targets of the C engine
(engine/data/targets.c through `tl-parity --targets`) against a PyTorch float64
reference built with torchvision.ops.roi_align (`docs/METHOD.md` section 5).

    /usr/bin/python3 tests/parity/run_targets_parity.py --bin build/bin/tl-parity --work /tmp/tp [--only NAME]

For each case the driver writes, in WORK/<name>/:
  T.json            {"num_classes": K, "grid": S, "smoothing": s}
  IN.safetensors    lm_values F32 [B,k,h,w] (top-k logits, float16-representable),
                    lm_indices I32 [B,k,h,w] (k distinct classes per location),
                    crop F32 [B,4] = (top, left, height, width) fractions of the
                    full image, flip U8 [B]
runs  tl-parity --targets --config T.json --in IN.safetensors --out OUT.safetensors
and compares OUT's target_cls [B,K] and target_dense [B,S*S,K] with the
reference:
  dense logits [B,K,h,w] = 0, the k logits scattered to their classes;
  roi_align(dense, [b, x1, y1, x2, y2], output_size (S,S) and (1,1),
            spatial_scale=1, sampling_ratio=-1, aligned=False), with
            x1 = left*w - 0.5, y1 = top*h - 0.5, x2 = (left+width)*w - 0.5,
            y2 = (top+height)*h - 0.5 (computed in float64 from the float32 crop);
  torch.flip on the width axis where flip; softmax over classes;
  label smoothing t = (1-s) p + s/K; tokens row-major.
Tolerance: max |ours - ref| <= 1e-5 on both tensors. Crops cover the whole
image, tiny crops, crops touching each border, crops partly (or mostly)
outside the map, RandomResizedCrop-like random crops; flip on and off;
smoothing 0 and 0.1; K 10 and 1000; square and non-square maps.
As a sensitivity check, case "sens_swapped" also compares against the
official code's (y, x)-swapped boxes, which must NOT match (not counted).
Last line: "N passed, M failed". Exit 0 only if all pass.
"""
import argparse
import json
import math
import os
import subprocess
import sys

import numpy as np
import torch
from torchvision.ops import roi_align

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import st_io  # noqa: E402

TOL = 1e-5

# Crops (top, left, height, width) used in every case besides random ones.
SPECIAL_CROPS = [
    (0.0, 0.0, 1.0, 1.0),          # the whole image
    (0.40, 0.30, 0.02, 0.03),      # tiny (extent < 1 map cell: forced to 1)
    (0.0, 0.0, 0.30, 0.45),        # touching top-left
    (0.55, 0.62, 0.45, 0.38),      # touching bottom-right
    (0.0, 0.2, 1.0, 0.5),          # full height, touching top and bottom
    (0.3, 0.0, 0.4, 1.0),          # full width
    (-0.25, -0.10, 0.60, 0.50),    # partly outside, top-left
    (0.70, 0.80, 0.60, 0.55),      # partly outside, bottom-right
    (-0.9, 0.3, 0.8, 0.2),         # entirely above the map
    (-0.5, -0.5, 2.0, 2.0),        # larger than the image on every side
    (0.1, 0.6, 0.8, 0.15),         # tall and narrow (asymmetric)
    (0.6, 0.05, 0.12, 0.9),        # wide and flat (asymmetric)
]


def rrc_crops(rng, n, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), aspect=1.0):
    """RandomResizedCrop-like boxes as fractions (an image of aspect w/h)."""
    out = []
    while len(out) < n:
        area = rng.uniform(*scale)
        r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        wf = math.sqrt(area * r / aspect)
        hf = math.sqrt(area / r * aspect)
        if wf > 1 or hf > 1:
            continue
        out.append((rng.uniform(0, 1 - hf), rng.uniform(0, 1 - wf), hf, wf))
    return out


def make_maps(rng, B, K, k, h, w):
    """Top-k logits (descending, float16-representable) and distinct classes."""
    vals = np.sort(rng.normal(0.0, 3.0, size=(B, h, w, k)), axis=-1)[..., ::-1]
    vals = vals.astype(np.float16).astype(np.float32)
    idx = np.empty((B, h, w, k), dtype=np.int32)
    # spatially coherent classes: a few blobs, plus noise, like a real annotator
    for b in range(B):
        base = rng.permutation(K)[:max(k, 3)]
        for y in range(h):
            for x in range(w):
                if rng.uniform() < 0.7:
                    first = base[(y * 3 // h + x * 2 // w) % len(base)]
                else:
                    first = rng.integers(K)
                rest = rng.permutation(K)[:k + 1]
                rest = [c for c in rest if c != first][:k - 1]
                idx[b, y, x] = [first] + rest
    return (np.ascontiguousarray(vals.transpose(0, 3, 1, 2)),
            np.ascontiguousarray(idx.transpose(0, 3, 1, 2)))


def reference(vals, idx, crop, flip, K, S, s, swap_xy=False):
    B, k, h, w = vals.shape
    dense = torch.zeros(B, K, h, w, dtype=torch.float64)
    dense.scatter_(1, torch.from_numpy(idx).long(), torch.from_numpy(vals).double())
    c = crop.astype(np.float64)
    top, left, hh, ww = c[:, 0], c[:, 1], c[:, 2], c[:, 3]
    x1 = left * w - 0.5
    y1 = top * h - 0.5
    x2 = (left + ww) * w - 0.5
    y2 = (top + hh) * h - 0.5
    if swap_xy:  # the official code's quirk: (y, x) where torchvision expects (x, y)
        x1, y1, x2, y2 = top * h - 0.5, left * w - 0.5, (top + hh) * h - 0.5, (left + ww) * w - 0.5
    rois = torch.from_numpy(np.stack([np.arange(B, dtype=np.float64), x1, y1, x2, y2], axis=1))
    tok = roi_align(dense, rois, output_size=(S, S), spatial_scale=1.0, sampling_ratio=-1, aligned=False)
    cls = roi_align(dense, rois, output_size=(1, 1), spatial_scale=1.0, sampling_ratio=-1, aligned=False)
    for b in range(B):
        if flip[b]:
            tok[b] = torch.flip(tok[b], dims=[-1])
    tok = tok.permute(0, 2, 3, 1).reshape(B, S * S, K)
    cls = cls.reshape(B, K)
    t_dense = (1 - s) * torch.softmax(tok, dim=-1) + s / K
    t_cls = (1 - s) * torch.softmax(cls, dim=-1) + s / K
    return t_cls.numpy(), t_dense.numpy()


CASES = [
    dict(name="k10_14_S7_s0", seed=1, K=10, k=5, h=14, w=14, S=7, s=0.0, rand=6),
    dict(name="k10_18_S14_s01", seed=2, K=10, k=5, h=18, w=18, S=14, s=0.1, rand=6),
    dict(name="k10_nonsq_12x17_S7", seed=3, K=10, k=5, h=12, w=17, S=7, s=0.1, rand=6),
    dict(name="k10_nonsq_18x14_S14", seed=4, K=10, k=5, h=18, w=14, S=14, s=0.0, rand=6),
    dict(name="k10_tiny_2x1_S7", seed=5, K=10, k=5, h=2, w=1, S=7, s=0.0, rand=4),
    dict(name="k1000_18_S14_s01", seed=6, K=1000, k=5, h=18, w=18, S=14, s=0.1, rand=8),
    dict(name="k1000_14_S14_s0", seed=7, K=1000, k=5, h=14, w=14, S=14, s=0.0, rand=6),
    dict(name="k1000_nonsq_15x20_S14", seed=8, K=1000, k=5, h=15, w=20, S=14, s=0.1, rand=6),
    dict(name="k1000_18_S7_s0", seed=9, K=1000, k=5, h=18, w=18, S=7, s=0.0, rand=4),
]


def run_case(c, tl_bin, work):
    rng = np.random.default_rng(c["seed"])
    K, k, h, w, S, s = c["K"], c["k"], c["h"], c["w"], c["S"], c["s"]
    crops = SPECIAL_CROPS + rrc_crops(rng, c["rand"], aspect=w / h)
    # every special crop without and with flip, random crops with a random flip
    crops = crops + SPECIAL_CROPS
    B = len(crops)
    flip = np.concatenate([np.zeros(len(SPECIAL_CROPS)), rng.integers(0, 2, size=c["rand"]),
                           np.ones(len(SPECIAL_CROPS))]).astype(np.uint8)
    crop = np.array(crops, dtype=np.float32)
    vals, idx = make_maps(rng, B, K, k, h, w)
    d = os.path.join(work, c["name"])
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "T.json"), "w") as f:
        json.dump({"num_classes": K, "grid": S, "smoothing": s}, f)
    st_io.save(os.path.join(d, "IN.safetensors"),
               {"lm_values": vals, "lm_indices": idx, "crop": crop, "flip": flip})
    out_path = os.path.join(d, "OUT.safetensors")
    if os.path.exists(out_path):
        os.remove(out_path)
    p = subprocess.run([tl_bin, "--targets", "--config", os.path.join(d, "T.json"),
                        "--in", os.path.join(d, "IN.safetensors"), "--out", out_path],
                       capture_output=True, text=True)
    timing = p.stdout.strip().split(": ")[-1] if p.stdout.strip() else "?"
    if p.returncode != 0:
        return False, "tl-parity failed (%d): %s" % (p.returncode, p.stderr.strip()), None
    out, _ = st_io.load(out_path)
    ref_cls, ref_dense = reference(vals, idx, crop, flip, K, S, s)
    msgs = []
    ok = True
    for name, ref in (("target_cls", ref_cls), ("target_dense", ref_dense)):
        if name not in out:
            return False, "OUT lacks %s" % name, None
        got = out[name]
        if got.shape != ref.shape:
            return False, "%s shape %s, expected %s" % (name, got.shape, ref.shape), None
        err = np.abs(got.astype(np.float64) - ref)
        worst = float(err.max())
        if not worst <= TOL:
            ok = False
            b = int(np.unravel_index(np.argmax(err), err.shape)[0])
            msgs.append("%s max err %.3g (sample %d crop %s flip %d)" % (name, worst, b, tuple(crop[b]), flip[b]))
        else:
            msgs.append("%s max err %.2g" % (name, worst))
    sens = None
    if c["name"] == "k10_18_S14_s01":
        _, swapped = reference(vals, idx, crop, flip, K, S, s, swap_xy=True)
        sens = float(np.abs(out["target_dense"].astype(np.float64) - swapped).max())
    return ok, "; ".join(msgs) + "; " + timing, sens


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True, help="path to tl-parity")
    ap.add_argument("--work", required=True, help="scratch folder")
    ap.add_argument("--only", default=None, help="run only this case")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    torch.set_num_threads(1)
    passed = failed = 0
    for c in CASES:
        if a.only and c["name"] != a.only:
            continue
        try:
            ok, msg, sens = run_case(c, a.bin, a.work)
        except Exception as e:  # a crash in one case is that case's failure
            ok, msg, sens = False, "exception: %r" % (e,), None
        print("%s %s: %s" % ("PASS" if ok else "FAIL", c["name"], msg), flush=True)
        if sens is not None:
            good = sens > 100 * TOL
            print("%s sens_swapped: the (y,x)-swapped reference differs by %.3g (must be > %.0g)"
                  % ("PASS" if good else "FAIL", sens, 100 * TOL))
            if not good:
                ok = False
        if ok:
            passed += 1
        else:
            failed += 1
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
