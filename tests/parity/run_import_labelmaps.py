#!/usr/bin/python3
"""run_import_labelmaps.py: checks scripts/import_label_maps.py end to end,
reading its output back through the C reader (engine/data/labelmap.c) with
`tl-parity --labelmap-dump`.

    /usr/bin/python3 tests/parity/run_import_labelmaps.py --bin build/bin/tl-parity --work /tmp/ti

Builds a fake official tree in WORK: images/<class>/<name>.JPEG (plus a nested
folder and a .png) and maps/<class>/<name>.pt written with torch.save of
random float16 tensors [2, 5, h, w] (logits; class indices stored as float16),
one map saved as .pth, one image without a map, one map without an image.
Checks:
  import     the importer succeeds and reports the unmatched image and map
  dump       tl-parity --labelmap-dump reads the file; keys are the images'
             relative paths in byte order; values equal the float16 logits
             exactly and indices the float16 class numbers
  layout     header fields, section offsets and file size as schema/labelmap.md says
  strict     --strict refuses the unmatched files, writing nothing
  refusals   an index >= K, a non-integer index, an inf logit and a map of a
             different shape are refused, no output or temporary file left;
             the C reader refuses the file truncated by one byte
Last line: "N passed, M failed". Exit 0 only if all pass.
"""
import argparse
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
IMPORTER = os.path.join(ROOT, "scripts", "import_label_maps.py")
sys.path.insert(0, HERE)
import st_io  # noqa: E402

K = 50
k, h, w = 5, 6, 7


def fake_tree(work, rng):
    """-> {key: (values f16 [k,h,w], indices [k,h,w])} of the matched images."""
    img_root, map_root = os.path.join(work, "images"), os.path.join(work, "maps")
    for d in (img_root, map_root):
        shutil.rmtree(d, ignore_errors=True)
    names = [("n001", "a_1", ".JPEG", ".pt"), ("n001", "a_2", ".JPEG", ".pt"), ("n001", "a_10", ".JPEG", ".pth"),
             ("n002", "b_1", ".jpg", ".pt"), ("n002", "sub/b_2", ".JPEG", ".pt"), ("n002", "b_3", ".png", ".pt"),
             ("n002", "b_1x", ".JPEG", ".pt")]
    expected = {}
    for cls, stem, iext, mext in names:
        ip = os.path.join(img_root, cls, stem + iext)
        os.makedirs(os.path.dirname(ip), exist_ok=True)
        with open(ip, "wb") as f:
            f.write(b"\xff\xd8 not a real jpeg")
        t = make_map(rng)
        mp = os.path.join(map_root, cls, stem + mext)
        os.makedirs(os.path.dirname(mp), exist_ok=True)
        torch.save(t, mp)
        expected["%s/%s%s" % (cls, stem, iext)] = (t[0].numpy().copy(), t[1].numpy().astype(np.int64))
    # an image without a map, a map without an image
    with open(os.path.join(img_root, "n001", "lonely.JPEG"), "wb") as f:
        f.write(b"x")
    torch.save(make_map(rng), os.path.join(map_root, "n002", "orphan.pt"))
    # not images / not maps: ignored
    with open(os.path.join(img_root, "classes.tsv"), "w") as f:
        f.write("folder\tname\n")
    with open(os.path.join(map_root, "README.txt"), "w") as f:
        f.write("x")
    return img_root, map_root, expected


def make_map(rng, shape=(k, h, w)):
    vals = np.sort(rng.normal(0, 4, size=(shape[1], shape[2], shape[0])), axis=-1)[..., ::-1].transpose(2, 0, 1)
    ind = np.stack([rng.permutation(K)[:shape[0]] for _ in range(shape[1] * shape[2])], axis=1)
    ind = ind.reshape(shape[0], shape[1], shape[2])
    return torch.from_numpy(np.stack([vals, ind]).astype(np.float16))


def run_importer(img_root, map_root, out, *extra):
    return subprocess.run([sys.executable, IMPORTER, "--maps", map_root, "--images", img_root,
                           "--num-classes", str(K), "--out", out] + list(extra), capture_output=True, text=True)


def leftovers(out):
    d, base = os.path.split(out)
    return [f for f in os.listdir(d) if f.startswith(base)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True, help="path to tl-parity")
    ap.add_argument("--work", required=True, help="scratch folder")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    rng = np.random.default_rng(5)
    results = []

    def check(name, ok, msg=""):
        results.append(ok)
        print("%s %s%s" % ("PASS" if ok else "FAIL", name, (": " + msg) if msg else ""), flush=True)

    img_root, map_root, expected = fake_tree(a.work, rng)
    out = os.path.join(a.work, "out", "maps.tllm")
    shutil.rmtree(os.path.dirname(out), ignore_errors=True)
    os.makedirs(os.path.dirname(out))

    # import
    p = run_importer(img_root, map_root, out)
    ok = (p.returncode == 0 and "n001/lonely.JPEG" in p.stdout and "n002/orphan.pt" in p.stdout
          and "images without a map: 1" in p.stdout and "maps without an image: 1" in p.stdout
          and leftovers(out) == ["maps.tllm"])
    check("import", ok, "" if ok else "rc %d\n%s\n%s" % (p.returncode, p.stdout, p.stderr))

    # dump through the C reader
    dump = os.path.join(a.work, "dump.safetensors")
    if os.path.exists(dump):
        os.remove(dump)
    p = subprocess.run([a.bin, "--labelmap-dump", out, "--out", dump], capture_output=True, text=True)
    if p.returncode != 0:
        check("dump", False, "tl-parity failed: %s" % p.stderr.strip())
    else:
        t, meta = st_io.load(dump)
        keys = meta.get("keys", "").split("\n")
        want_keys = sorted(expected, key=lambda s: s.encode("utf-8"))
        msgs = []
        if keys != want_keys:
            msgs.append("keys %s, expected %s" % (keys, want_keys))
        if meta.get("num_classes") != str(K) or meta.get("topk") != str(k):
            msgs.append("metadata %s" % {x: meta.get(x) for x in ("num_classes", "topk")})
        if t["values"].shape != (len(want_keys), k, h, w) or t["indices"].shape != (len(want_keys), k, h, w):
            msgs.append("shapes %s %s" % (t["values"].shape, t["indices"].shape))
        else:
            for i, key in enumerate(want_keys):
                v16, ind = expected[key]
                if not np.array_equal(t["values"][i], v16.astype(np.float32)):
                    msgs.append("%s: values differ (max %g)" % (key, np.abs(t["values"][i] - v16).max()))
                if not np.array_equal(t["indices"][i], ind):
                    msgs.append("%s: indices differ" % key)
        check("dump", not msgs, "; ".join(msgs[:5]) if msgs else "%d entries equal" % len(want_keys))

    # layout
    with open(out, "rb") as f:
        buf = f.read()
    hd = struct.unpack("<8sIIIIIIQQQQQ", buf[:72])
    n = len(expected)
    rec = 4 * k * h * w
    want = (b"TLLMAP01", 1, K, k, h, w, 0, n, 72, 72 + n * rec, 72 + n * rec + 24 * n, len(buf))
    blob = buf[hd[10]:]
    ok = hd == want and blob == b"".join(s.encode() + b"\0" for s in sorted(expected))
    check("layout", ok, "" if ok else "header %s, expected %s" % (hd, want))

    # strict
    out2 = os.path.join(a.work, "out", "strict.tllm")
    p = run_importer(img_root, map_root, out2, "--strict")
    ok = p.returncode != 0 and "--strict" in p.stderr and not leftovers(out2)
    check("strict", ok, "" if ok else "rc %d %s" % (p.returncode, p.stderr))

    # refusals: each on a copy of the maps with one bad file
    def refused(name, mutate, want_msg):
        bad_maps = os.path.join(a.work, "maps_" + name)
        shutil.rmtree(bad_maps, ignore_errors=True)
        shutil.copytree(map_root, bad_maps)
        mutate(os.path.join(bad_maps, "n002", "b_1.pt"))
        o = os.path.join(a.work, "out", name + ".tllm")
        p = run_importer(img_root, bad_maps, o)
        ok = p.returncode != 0 and want_msg in p.stderr and not leftovers(o)
        check("refuse_" + name, ok, p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "rc %d" % p.returncode)

    def idx_k(path):
        t = make_map(rng)
        t[1, 2, 3, 4] = K
        torch.save(t, path)

    def idx_frac(path):
        t = make_map(rng)
        t[1, 0, 0, 0] = 2.5
        torch.save(t, path)

    def inf_logit(path):
        t = make_map(rng)
        t[0, 1, 1, 1] = float("inf")
        torch.save(t, path)

    def other_shape(path):
        torch.save(make_map(rng, (k, h + 1, w)), path)

    refused("index_ge_K", idx_k, "is not an integer in [0, K = %d)" % K)
    refused("index_fraction", idx_frac, "class index 2.5")
    refused("inf_logit", inf_logit, "inf or NaN")
    refused("shape", other_shape, "differs from the first map")

    # the C reader refuses a truncated import
    trunc = os.path.join(a.work, "out", "trunc.tllm")
    with open(trunc, "wb") as f:
        f.write(buf[:-1])
    p = subprocess.run([a.bin, "--labelmap-dump", trunc, "--out", dump + ".2"], capture_output=True, text=True)
    check("reader_refuses_truncated", p.returncode != 0 and "file_size" in p.stderr, p.stderr.strip())

    passed = sum(results)
    failed = len(results) - passed
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
