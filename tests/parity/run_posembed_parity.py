#!/usr/bin/python3
"""run_posembed_parity.py: checks the bicubic resampling of the position
embedding (tl_model_copy_resized in engine/jobs/annotate.c, through tl-posembed)
against PyTorch, as timm's resample_abs_pos_embed does it:

    grid = pos_embed[:, 1:].reshape(1, G1, G1, D).permute(0, 3, 1, 2)
    F.interpolate(grid, size=(G2, G2), mode="bicubic", align_corners=False)

with the class token's position copied as it is.

    /usr/bin/python3 tests/parity/run_posembed_parity.py --bin build/bin/tl-posembed --work /tmp/pe

Cases: up- and downsampling by integer and fractional factors, the same size,
1 -> n. Tolerance: max |ours - torch| <= 1e-5, the class position exact.
As a sensitivity check, align_corners=True must NOT match (not counted).
Last line: "N passed, M failed". Exit 0 only if all pass.
"""
import argparse
import os
import struct
import subprocess
import sys

import torch
import torch.nn.functional as F

CASES = [(4, 6), (4, 7), (6, 4), (8, 3), (2, 5), (7, 7), (14, 24), (24, 14), (1, 3), (3, 16), (16, 9)]


def run_case(binary, work, g1, g2, dim, seed):
    path = os.path.join(work, f"pe_{g1}_{g2}.bin")
    subprocess.run([binary, "--from", str(g1), "--to", str(g2), "--dim", str(dim), "--seed", str(seed),
                    "--out", path], check=True)
    data = open(path, "rb").read()
    h1, h2, d = struct.unpack("<3i", data[:12])
    assert (h1, h2, d) == (g1, g2, dim)
    n1, n2 = (1 + g1 * g1) * dim, (1 + g2 * g2) * dim
    assert len(data) == 12 + 4 * (n1 + n2), "bad file size"
    src = torch.frombuffer(bytearray(data[12:12 + 4 * n1]), dtype=torch.float32).reshape(1 + g1 * g1, dim)
    dst = torch.frombuffer(bytearray(data[12 + 4 * n1:]), dtype=torch.float32).reshape(1 + g2 * g2, dim)
    grid = src[1:].reshape(1, g1, g1, dim).permute(0, 3, 1, 2)

    def ref(align):
        r = F.interpolate(grid, size=(g2, g2), mode="bicubic", align_corners=align)
        return r.permute(0, 2, 3, 1).reshape(g2 * g2, dim)

    err = (dst[1:] - ref(False)).abs().max().item()
    cls_ok = torch.equal(dst[0], src[0])
    err_ac = (dst[1:] - ref(True)).abs().max().item()
    return err, cls_ok, err_ac


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    passed = failed = 0
    sens = []
    for i, (g1, g2) in enumerate(CASES):
        err, cls_ok, err_ac = run_case(a.bin, a.work, g1, g2, 24, 100 + i)
        ok = err <= 1e-5 and cls_ok
        print(f"{g1:2d} -> {g2:2d}: max |ours - torch| = {err:.3g}, class position {'kept' if cls_ok else 'CHANGED'}"
              f"  [{'ok' if ok else 'FAIL'}]  (vs align_corners=True: {err_ac:.3g})")
        passed += ok
        failed += not ok
        if g1 != g2 and g1 > 1:
            sens.append(err_ac)
    if sens and min(sens) <= 1e-5:
        print("sensitivity check failed: align_corners=True also matches")
        failed += 1
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
