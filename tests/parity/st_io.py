"""st_io.py: a minimal safetensors reader/writer on numpy (no extra packages).

Format: 8-byte little-endian u64 header length, a JSON header
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
then the data area (offsets are relative to its start), little-endian.

    save(path, {name: ndarray}, metadata=None)
    load(path) -> ({name: ndarray}, {str: str})

Dtypes: F32 F16 F64 I64 I32 U8 (read and write), BF16 (read only, returned as
float32).
"""
import json
import os
import struct

import numpy as np

_NP_OF = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "F64": np.dtype("<f8"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "U8": np.dtype("u1"),
}
_ST_OF = {}
for _k, _v in _NP_OF.items():
    _ST_OF[_v.str[1:]] = _k  # e.g. "f4" -> "F32"


def _st_dtype(a):
    key = a.dtype.str[1:]
    if key not in _ST_OF:
        raise TypeError("st_io: unsupported dtype %s" % a.dtype)
    return _ST_OF[key]


def save(path, tensors, metadata=None):
    """Writes tensors (name -> numpy array) in name order, packed with no gaps
    as Hugging Face's safetensors requires."""
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    off = 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        dt = _st_dtype(a)
        raw = np.ascontiguousarray(a.astype(_NP_OF[dt], copy=False)).tobytes()
        header[name] = {"dtype": dt, "shape": [int(s) for s in a.shape],
                        "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((-len(hj)) % 8)
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def load(path):
    """Returns (dict name -> numpy array, metadata dict). Validates offsets."""
    with open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 8:
        raise ValueError("st_io: %s: file shorter than 8 bytes" % path)
    (hlen,) = struct.unpack("<Q", buf[:8])
    if hlen > len(buf) - 8:
        raise ValueError("st_io: %s: header length %d past end of file" % (path, hlen))
    header = json.loads(buf[8:8 + hlen].decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError("st_io: %s: header is not a JSON object" % path)
    data = memoryview(buf)[8 + hlen:]
    meta = header.pop("__metadata__", None) or {}
    out = {}
    for name, info in header.items():
        dt = info["dtype"]
        shape = tuple(int(s) for s in info["shape"])
        b, e = (int(x) for x in info["data_offsets"])
        if not (0 <= b <= e <= len(data)):
            raise ValueError("st_io: %s: tensor %s: offsets [%d,%d] outside data area of %d bytes"
                             % (path, name, b, e, len(data)))
        n = int(np.prod(shape)) if shape else 1
        if dt == "BF16":
            if e - b != 2 * n:
                raise ValueError("st_io: %s: tensor %s: %d bytes for %d BF16 values" % (path, name, e - b, n))
            u = np.frombuffer(data[b:e], dtype="<u2").astype(np.uint32) << 16
            out[name] = u.view(np.float32).reshape(shape)
            continue
        if dt not in _NP_OF:
            raise ValueError("st_io: %s: tensor %s: unsupported dtype %s" % (path, name, dt))
        npdt = _NP_OF[dt]
        if e - b != npdt.itemsize * n:
            raise ValueError("st_io: %s: tensor %s: %d bytes for %d %s values" % (path, name, e - b, n, dt))
        out[name] = np.frombuffer(data[b:e], dtype=npdt).reshape(shape).copy()
    return out, meta
