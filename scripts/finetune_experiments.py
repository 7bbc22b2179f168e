#!/usr/bin/env python3
"""finetune_experiments.py: the two fine-tuning experiments of docs/EXPERIMENTS.md on Imagenette.

1. Higher resolution: an LV-ViT D128x6 trained at 64 px, fine-tuned at 96 px for a few epochs (position
   embedding resized bicubically, heads kept), against the same model trained from scratch at 96 px for
   the same number of steps.
2. Few images: the same model trained on five Imagenette classes, fine-tuned on the other five with 50
   training images per class (heads re-initialised), against training from scratch on those 250 images
   with the same budget.

Every run is `tokenlabd run` in the foreground (fine-tuning with --init); results are read from each run
folder's metrics.jsonl. Run folders under --out are resumed when the script runs again. The subsets are
folders of symbolic links to the photos (the photos stay where they are).

usage: /usr/bin/python3 scripts/finetune_experiments.py [--bin build/bin/tokenlabd] [--out runs/finetune]
           [--data $TL_SHARED_DATA/imagenette2-224] [--scale 1.0]
--scale multiplies every epoch count (0.2 for a quick look).
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODEL64 = {"img_size": 64, "patch_size": 8, "embed_dim": 128, "depth": 6, "num_heads": 4, "mlp_ratio": 3,
           "stem_channels": 32, "skip_lam": 1.0, "num_classes": 10, "drop_path_rate": 0.05}
RECIPE = {"batch_size": 64, "lr": 1e-3, "min_lr": 1e-5, "weight_decay": 0.05, "label_smoothing": 0.1,
          "cls_weight": 1.0, "dense_weight": 0.5, "mixtoken": False, "ema_decay": 0.99, "seed": 42,
          "augment": {"scale": [0.25, 1.0], "randaug": "rand-m6-mstd0.5-inc1", "reprob": 0.1}}


def subset(src, dst, classes, per_class=None):
    """dst/<class>/ holds links to the first per_class images of src/<class>/ (all when None)."""
    for c in classes:
        os.makedirs(os.path.join(dst, c), exist_ok=True)
        files = sorted(f for f in os.listdir(os.path.join(src, c)) if f.lower().endswith((".jpg", ".jpeg")))
        for f in files[:per_class] if per_class else files:
            link = os.path.join(dst, c, f)
            if not os.path.lexists(link):
                os.symlink(os.path.join(src, c, f), link)


def write_classes(src_tsv, dst_dir, classes):
    with open(src_tsv) as f:
        lines = f.read().splitlines()
    keep = [lines[0]] + [l for l in lines[1:] if l.split("\t")[0] in classes]
    with open(os.path.join(dst_dir, "classes.tsv"), "w") as f:
        f.write("\n".join(keep) + "\n")


def run(a, name, model, train, data, init=None, head=None):
    out = os.path.join(a.out, name)
    spec = {"kind": "train", "name": name, "model": model, "data": data, "train": train}
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, name + ".json")
    with open(path, "w") as f:
        json.dump(spec, f, indent=1)
    cmd = [a.bin, "run", path, "--out", out]
    if init:
        cmd += ["--init", init]
    if head:
        cmd += ["--init-head", head]
    t0 = time.time()
    if not os.path.exists(os.path.join(out, "done")):
        print("== %s: %s" % (name, " ".join(cmd)), flush=True)
        with open(os.path.join(a.out, name + ".log"), "ab") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
        if rc != 0:
            sys.exit("%s failed (exit %d, see %s.log)" % (name, rc, os.path.join(a.out, name)))
        with open(os.path.join(out, "done"), "w") as f:
            f.write("%.1f\n" % (time.time() - t0))
    with open(os.path.join(out, "done")) as f:
        seconds = float(f.read())
    evals = []
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "top1" in r:
                evals.append(r)
    return {"name": name, "seconds": seconds, "evals": evals}


def best(res, ema):
    xs = [e for e in res["evals"] if (e.get("eval") == "ema") == ema]
    return max(xs, key=lambda e: e["top1"]) if xs else None


def first(res, ema):
    xs = [e for e in res["evals"] if (e.get("eval") == "ema") == ema]
    return min(xs, key=lambda e: e["step"]) if xs else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "bin", "tokenlabd"))
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "finetune"))
    shared = os.environ.get("TL_SHARED_DATA") or os.path.join(ROOT, "..", "shared", "data")
    ap.add_argument("--data", default=os.path.join(shared, "imagenette2-224"))
    ap.add_argument("--scale", type=float, default=1.0)
    a = ap.parse_args()
    a.out = os.path.abspath(a.out)
    ep = lambda n: max(1, int(round(n * a.scale)))
    tr, va = os.path.join(a.data, "train"), os.path.join(a.data, "val")
    classes = sorted(os.listdir(tr))
    classes = [c for c in classes if os.path.isdir(os.path.join(tr, c))]
    full = {"train": tr, "val": va}
    results = {}

    # 1. higher resolution
    base = run(a, "res64-base", MODEL64, dict(RECIPE, epochs=ep(12), warmup_epochs=1, eval_every_epochs=ep(3),
                                             checkpoint_every_epochs=ep(3)), full)
    ft_train = dict(RECIPE, epochs=ep(3), lr=5e-4, warmup_epochs=0, eval_every_epochs=1,
                    checkpoint_every_epochs=1)
    ft = run(a, "res96-finetune", {"img_size": 96}, ft_train, full,
             init=os.path.join(a.out, "res64-base", "best.safetensors"))
    scratch = run(a, "res96-scratch", dict(MODEL64, img_size=96),
                  dict(RECIPE, epochs=ep(3), warmup_epochs=min(1.0, 0.3 * ep(3)), eval_every_epochs=1, checkpoint_every_epochs=1), full)
    results["resolution"] = [base, ft, scratch]

    # 2. few images: five classes to learn from, five new ones with 50 images each
    fa, fb = classes[:5], classes[5:]
    d = os.path.join(a.out, "data")
    subset(tr, os.path.join(d, "five-a", "train"), fa)
    subset(va, os.path.join(d, "five-a", "val"), fa)
    subset(tr, os.path.join(d, "five-b-50", "train"), fb, per_class=50)
    subset(va, os.path.join(d, "five-b-50", "val"), fb)
    for sub, cl in (("five-a", fa), ("five-b-50", fb)):
        write_classes(os.path.join(a.data, "classes.tsv"), os.path.join(d, sub), cl)
    da = {"train": os.path.join(d, "five-a", "train"), "val": os.path.join(d, "five-a", "val")}
    db = {"train": os.path.join(d, "five-b-50", "train"), "val": os.path.join(d, "five-b-50", "val")}
    m5 = dict(MODEL64, num_classes=5)
    base5 = run(a, "five-a-base", m5, dict(RECIPE, epochs=ep(12), warmup_epochs=1, eval_every_epochs=ep(3),
                                            checkpoint_every_epochs=ep(3)), da)
    few = dict(RECIPE, batch_size=50, epochs=ep(30), warmup_epochs=0, eval_every_epochs=ep(5), checkpoint_every_epochs=ep(5))
    ft5 = run(a, "five-b-finetune", {"num_classes": 5}, dict(few, lr=5e-4), db,
              init=os.path.join(a.out, "five-a-base", "best.safetensors"), head="reinit")
    sc5 = run(a, "five-b-scratch", m5, dict(few, warmup_epochs=ep(3)), db)
    results["few_images"] = [base5, ft5, sc5]

    print("\n| run | wall clock | first eval top-1 raw / EMA | best top-1 raw / EMA |")
    print("|---|---|---|---|")
    for group in results.values():
        for r in group:
            f0, f1, b0, b1 = first(r, False), first(r, True), best(r, False), best(r, True)
            fmt = lambda e: "%.1f%%" % (100 * e["top1"]) if e else "-"
            print("| %s | %.1f min | %s / %s (step %s) | %s / %s |" % (
                r["name"], r["seconds"] / 60, fmt(f0), fmt(f1), f0["step"] if f0 else "-", fmt(b0), fmt(b1)))
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
