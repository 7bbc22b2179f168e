#!/usr/bin/python3
"""run_layer_decay_parity.py: checks the engine's layer-wise learning-rate
decay (tl_model_set_layer_decay, engine/model/finetune.c, printed by
tl-layer-decay) against the parameter groups timm's
optim_factory.param_groups_layer_decay builds for a ViT, applied to the
PyTorch reference LV-ViT (lvvit_ref.py). timm is not installed; its rule is
written out below from its documented behaviour:

    num_layers = depth + 2; layer_max = num_layers - 1
    layer id: 0 for patch_embed.*, cls_token, pos_embed (the "stem" group of
              ViT's group_matcher), i + 1 for blocks.i.*, depth + 1 for the
              final norm and everything else (head, aux_head)
    lr_scale = layer_decay ** (layer_max - layer_id)
    weight decay 0 for 1-d parameters and the no_weight_decay list
              (cls_token, pos_embed), weight_decay otherwise
    one group per (layer id, decay or not); the scheduler sets each group's
              lr = base lr * lr_scale.

    /usr/bin/python3 tests/parity/run_layer_decay_parity.py --bin build/bin/tl-layer-decay --work /tmp/ld

For every parameter: the engine's lr_scale equals the group's within 1e-6
relative (the engine takes decay as a float and the power in double, then
rounds to float; timm works in double), its weight-decay flag equals the
group's, and the engine's tensors are exactly the reference's parameters and
BatchNorm buffers. As a sensitivity check, a rule off by one layer
(num_layers = depth + 1) must NOT match (not counted).
Last line: "N passed, M failed". Exit 0 only if all pass.
"""
import argparse
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lvvit_ref import LVViT, LVViTConfig, MODEL_FIELDS, preset  # noqa: E402

NO_WEIGHT_DECAY = ("cls_token", "pos_embed")


def layer_id(name, depth):
    if name.startswith(("patch_embed.", "cls_token", "pos_embed")):
        return 0
    m = re.match(r"^blocks\.(\d+)\.", name)
    if m:
        return int(m.group(1)) + 1
    return depth + 1


def param_groups_layer_decay(model, depth, weight_decay, layer_decay, extra_layers=2):
    """timm's param_groups_layer_decay, for the ViT layer ids above."""
    num_layers = depth + extra_layers
    layer_max = num_layers - 1
    layer_scales = [layer_decay ** (layer_max - i) for i in range(num_layers)]
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim == 1 or name in NO_WEIGHT_DECAY:
            g_decay, this_decay = "no_decay", 0.0
        else:
            g_decay, this_decay = "decay", weight_decay
        lid = min(layer_id(name, depth), layer_max)
        key = f"layer_{lid}_{g_decay}"
        if key not in groups:
            groups[key] = {"lr_scale": layer_scales[lid], "weight_decay": this_decay, "param_names": [], "params": []}
        groups[key]["param_names"].append(name)
        groups[key]["params"].append(p)
    return list(groups.values())


def per_param(groups):
    out = {}
    for g in groups:
        for n in g["param_names"]:
            out[n] = (g["lr_scale"], g["weight_decay"] > 0)
    return out


def run_case(binary, work, cfg, decay):
    path = os.path.join(work, f"cfg_d{cfg.depth}_{cfg.embed_dim}.json")
    with open(path, "w") as f:
        json.dump({k: getattr(cfg, k) for k in MODEL_FIELDS}, f)
    res = subprocess.run([binary, "--config", path, "--decay", repr(decay)], check=True, capture_output=True,
                         text=True)
    eng = json.loads(res.stdout)
    assert eng["depth"] == cfg.depth
    model = LVViT(cfg)
    ref = per_param(param_groups_layer_decay(model, cfg.depth, 0.05, decay))
    off = per_param(param_groups_layer_decay(model, cfg.depth, 0.05, decay, extra_layers=1))
    buffers = {n for n, _ in model.named_buffers() if not n.endswith("num_batches_tracked")}
    params = {t["name"]: t for t in eng["tensors"] if t["param"]}
    problems = []
    if set(params) != set(ref):
        problems.append(f"parameter names differ: {sorted(set(params) ^ set(ref))}")
    eng_buffers = {t["name"] for t in eng["tensors"] if not t["param"]}
    if eng_buffers != buffers:
        problems.append(f"buffer names differ: {sorted(eng_buffers ^ buffers)}")
    worst, worst_off = 0.0, 0.0
    for n, t in params.items():
        if n not in ref:
            continue
        scale, wd = ref[n]
        rel = abs(t["lr_scale"] - scale) / scale
        worst = max(worst, rel)
        worst_off = max(worst_off, abs(t["lr_scale"] - off[n][0]) / off[n][0])
        if rel > 1e-6:
            problems.append(f"{n}: lr_scale {t['lr_scale']:.9g}, timm {scale:.9g}")
        if bool(t["decay"]) != wd:
            problems.append(f"{n}: weight decay {'on' if t['decay'] else 'off'} here, {'on' if wd else 'off'} in timm")
    groups = len({(v[0], v[1]) for v in ref.values()})
    return problems, worst, worst_off, groups, len(params)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    small = dict(img_size=32, patch_size=8, embed_dim=48, num_heads=3, mlp_ratio=3.0, stem_channels=16,
                 skip_lam=2.0, num_classes=5, drop_path_rate=0.1)
    configs = [LVViTConfig(depth=2, **small).validate(), LVViTConfig(depth=3, **small).validate(),
               preset("lvvit_t")]
    passed = failed = 0
    sens = []
    for cfg in configs:
        for decay in (0.75, 0.65, 0.9, 1.0):
            problems, worst, worst_off, groups, n = run_case(a.bin, a.work, cfg, decay)
            ok = not problems
            print(f"depth {cfg.depth:2d}, decay {decay}: {n} parameters in {groups} groups, worst relative "
                  f"lr_scale error {worst:.3g}  [{'ok' if ok else 'FAIL'}]  (vs a rule one layer off: {worst_off:.3g})")
            for p in problems[:10]:
                print("   ", p)
            passed += ok
            failed += not ok
            if decay != 1.0:
                sens.append(worst_off)
    if sens and min(sens) <= 1e-6:
        print("sensitivity check failed: a rule one layer off also matches")
        failed += 1
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
