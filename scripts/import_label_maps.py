#!/usr/bin/python3
"""import_label_maps.py: converts the official token-labeling label maps into
one tokenlab label-map file (schema/labelmap.md).

    /usr/bin/python3 scripts/import_label_maps.py --maps DIR --images DIR --num-classes K --out FILE.tllm [--strict]

Official maps: one file per image written with torch.save, holding a float16
tensor [2, k, h, w]: [0] = the annotator's top-k logits, [1] = their class
indices stored as float16; the files sit in class folders mirroring the image
tree and are named like the image with a .pt (or .pth) extension.

Each map is matched to its image by the relative path without extension
(n01440764/n01440764_10026.pt <-> n01440764/n01440764_10026.JPEG); the key is
the image's path relative to the images root with '/' separators. Images
without a map and maps without an image are reported (counts and the first
few names); --strict makes either a failure. Refused (nothing written): an
index that is not an integer in [0, K) (float16 holds every integer up to 2048
exactly, so K > 2048 cannot come from this format), a logit that is inf/NaN,
maps of different shapes, a tensor that is not [2, k, h, w] with k <= K and
1 <= h, w <= 1024, two images (or two maps) with the same path stem.

Writing: records in key order (entry i = i-th key), the key table and the
keys blob, then the header; to "<out>.tmp.<pid>", fsync, rename over <out>,
fsync of the folder. A failure removes the temporary file. Needs torch (only
to read the .pt files) and numpy: use /usr/bin/python3.
"""
import argparse
import os
import struct
import sys

import numpy as np

MAGIC = b"TLLMAP01"
VERSION = 1
HEADER = struct.Struct("<8sIIIIIIQQQQQ")  # 72 bytes
ENTRY = struct.Struct("<QIIQ")            # 24 bytes
MAX_SIDE = 1024
MAX_CLASSES = 65535
MAX_KEY = 4096
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff", ".gif"}
MAP_EXTS = {".pt", ".pth"}

assert HEADER.size == 72 and ENTRY.size == 24


class ImportError_(Exception):
    pass


def scan(root, exts):
    """{relative path without extension: relative path} of files with one of exts (case-insensitive)."""
    out, dup = {}, []
    root = os.path.abspath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            if fn.startswith("."):
                continue
            stem, ext = os.path.splitext(fn)
            if ext.lower() not in exts:
                continue
            rel = os.path.relpath(os.path.join(dirpath, fn), root).replace(os.sep, "/")
            rstem = rel[:len(rel) - len(ext)]
            if rstem in out:
                dup.append((out[rstem], rel))
            else:
                out[rstem] = rel
    return out, dup


def load_map(path):
    import torch
    try:
        t = torch.load(path, map_location="cpu", weights_only=True)
    except TypeError:  # torch without weights_only
        t = torch.load(path, map_location="cpu")
    if isinstance(t, dict) and len(t) == 1:
        t = next(iter(t.values()))
    if not isinstance(t, torch.Tensor):
        raise ImportError_("%s: holds a %s, not a tensor" % (path, type(t).__name__))
    if t.dim() != 4 or t.shape[0] != 2:
        raise ImportError_("%s: tensor of shape %s, expected [2, k, h, w]" % (path, list(t.shape)))
    if t.dtype != torch.float16:
        if not t.is_floating_point():
            raise ImportError_("%s: tensor of dtype %s, expected float16" % (path, t.dtype))
        t16 = t.to(torch.float16)
        if not torch.equal(t16.to(t.dtype), t):
            raise ImportError_("%s: %s values not representable in float16" % (path, t.dtype))
        t = t16
    return t.contiguous().numpy()


def convert(arr, path, K):
    """-> (float16 logits [k,h,w], uint16 indices [k,h,w]) or raises."""
    vals = np.ascontiguousarray(arr[0])
    ind = arr[1].astype(np.float64)
    if not np.all(np.isfinite(vals)):
        raise ImportError_("%s: a logit is inf or NaN" % path)
    bad = ~np.isfinite(ind) | (ind != np.floor(ind)) | (ind < 0) | (ind >= K)
    if bad.any():
        pos = tuple(int(p) for p in np.argwhere(bad)[0])
        raise ImportError_("%s: class index %r at [%d][%d][%d] is not an integer in [0, K = %d)"
                           % (path, float(ind[pos]), pos[0], pos[1], pos[2], K))
    return vals.astype("<f2"), ind.astype("<u2")


def sync_dir(path):
    d = os.path.dirname(os.path.abspath(path)) or "."
    fd = os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_labelmap(out, K, k, h, w, items):
    """items: iterable of (key, float16 [k,h,w], uint16 [k,h,w]) in key order."""
    tmp = "%s.tmp.%d" % (out, os.getpid())
    keys = []
    try:
        with open(tmp, "wb") as f:
            f.write(b"\0" * HEADER.size)
            for key, vals, ind in items:
                keys.append(key.encode("utf-8"))
                f.write(vals.tobytes())
                f.write(ind.tobytes())
            n = len(keys)
            order = sorted(range(n), key=lambda i: keys[i])
            rec_bytes = n * 4 * k * h * w
            tab_off = HEADER.size + rec_bytes
            blob_off = tab_off + n * ENTRY.size
            off = 0
            for i in order:
                f.write(ENTRY.pack(off, len(keys[i]), 0, i))
                off += len(keys[i]) + 1
            for i in order:
                f.write(keys[i] + b"\0")
            size = blob_off + off
            f.seek(0)
            f.write(HEADER.pack(MAGIC, VERSION, K, k, h, w, 0, n, HEADER.size, tab_off, blob_off, size))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
        sync_dir(out)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return len(keys)


def report(title, names, limit=10):
    print("%s: %d" % (title, len(names)))
    for n in names[:limit]:
        print("  %s" % n)
    if len(names) > limit:
        print("  ... and %d more" % (len(names) - limit))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--maps", required=True, help="root of the official label maps (.pt/.pth files)")
    ap.add_argument("--images", required=True, help="root of the image tree (keys are relative to it)")
    ap.add_argument("--num-classes", type=int, required=True, help="K")
    ap.add_argument("--out", required=True, help="output label-map file (.tllm)")
    ap.add_argument("--strict", action="store_true", help="fail when an image lacks a map or a map an image")
    a = ap.parse_args(argv)
    K = a.num_classes
    try:
        if not 1 <= K <= MAX_CLASSES:
            raise ImportError_("--num-classes %d outside [1, %d]" % (K, MAX_CLASSES))
        for d, what in ((a.maps, "--maps"), (a.images, "--images")):
            if not os.path.isdir(d):
                raise ImportError_("%s %s is not a folder" % (what, d))
        images, dup_i = scan(a.images, IMAGE_EXTS)
        maps, dup_m = scan(a.maps, MAP_EXTS)
        if dup_i:
            raise ImportError_("images with the same path stem: %s and %s" % dup_i[0])
        if dup_m:
            raise ImportError_("maps with the same path stem: %s and %s" % dup_m[0])
        both = sorted(set(images) & set(maps), key=lambda s: images[s].encode("utf-8"))
        no_map = sorted(images[s] for s in set(images) - set(maps))
        no_image = sorted(maps[s] for s in set(maps) - set(images))
        print("images: %d, maps: %d, matched: %d" % (len(images), len(maps), len(both)))
        report("images without a map", no_map)
        report("maps without an image", no_image)
        if a.strict and (no_map or no_image):
            raise ImportError_("--strict: %d images without a map, %d maps without an image"
                               % (len(no_map), len(no_image)))
        if not both:
            raise ImportError_("no image has a map")
        first = load_map(os.path.join(a.maps, maps[both[0]]))
        _, k, h, w = first.shape
        if not (1 <= k <= K and 1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
            raise ImportError_("%s: maps of k=%d, %d x %d: need 1 <= k <= K = %d and sides in [1, %d]"
                               % (maps[both[0]], k, h, w, K, MAX_SIDE))

        def items():
            for s in both:
                key = images[s]
                if len(key.encode("utf-8")) > MAX_KEY or "\0" in key or "\n" in key:
                    raise ImportError_("%s: key unusable (longer than %d bytes, or holds NUL or newline)"
                                       % (key, MAX_KEY))
                path = os.path.join(a.maps, maps[s])
                arr = load_map(path)
                if arr.shape != (2, k, h, w):
                    raise ImportError_("%s: shape %s differs from the first map's %s"
                                       % (maps[s], list(arr.shape), [2, k, h, w]))
                vals, ind = convert(arr, maps[s], K)
                yield key, vals, ind

        n = write_labelmap(a.out, K, k, h, w, items())
        print("wrote %s: %d entries, K=%d k=%d h=%d w=%d" % (a.out, n, K, k, h, w))
        return 0
    except ImportError_ as e:
        print("import_label_maps: %s" % e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
