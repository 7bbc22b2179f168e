#!/usr/bin/python3
"""run_checkpoint_interop.py: checkpoints exchanged between the C engine and the
PyTorch reference (lvvit_ref.py), through build/bin/tl-ckpt.

    /usr/bin/python3 tests/parity/run_checkpoint_interop.py --bin build/bin/tl-parity --work DIR

--bin is the path of tl-parity (what ctest passes); tl-ckpt is its sibling file.
Checks (one line each, then "N passed, M failed"; exit 0 only if all pass):
  hf_selftest      hf_strict_check refuses a gap, an overlap, a bad size and an
                   uncovered tail, and accepts a well-formed file
  a_engine_to_pt   tl-ckpt init -> Hugging Face-strict file -> st_io ->
                   LVViT.load_state_dict(strict=True) (num_batches_tracked I64
                   scalars) -> reference eval score == tl-ckpt predict (1e-4)
  b_pt_to_engine   a reference model of lvvit_t width and depth (small images)
                   with perturbed BN statistics, its full state_dict saved with
                   st_io without tokenlab metadata -> tl-ckpt info infers the
                   config (num_heads 4 ...) -> tl-ckpt predict == reference (1e-4)
  b_hf_layout      the same with the file packed as safetensors.torch.save_file
                   does (passes hf_strict_check)
  c_f16            the same kind of state_dict with every float tensor in F16
                   -> tl-ckpt predict within 1e-2 of the float32 reference (and
                   within 1e-4 of the reference holding the F16-rounded weights)
  d_*              tl-ckpt info refuses (non-zero exit, message naming the
                   problem, no crash) a missing tensor, an extra tensor, a wrong
                   shape, a wrong dtype and a truncated file, both with and
                   without tokenlab metadata
  e_cli_errors     tl-ckpt's own bad inputs (invalid config, missing files,
                   wrong input tensor, bad usage) give a message and exit 1 or 2
Errors: err = max|ours - ref| / max|ref|.
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import traceback

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import lvvit_ref as L  # noqa: E402
import st_io  # noqa: E402

TOL_F32 = 1e-4
TOL_F16 = 1e-2
TIMEOUT = 300

# ---------------------------------------------------------------- Hugging Face rules

# dtype -> bytes per element, as in the safetensors crate (Dtype::size).
HF_DTYPE_SIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
HF_MAX_HEADER = 100_000_000


class HFError(ValueError):
    pass


def _no_dup_pairs(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise HFError("duplicate key %r in the header" % k)
        d[k] = v
    return d


def hf_strict_check(path):
    """Re-validates a safetensors file with the rules of Hugging Face's
    safetensors (SafeTensors::deserialize / Metadata::validate). Raises HFError
    naming the problem; returns the number of tensors."""
    with open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 8:
        raise HFError("HeaderTooSmall: file of %d bytes" % len(buf))
    (n,) = struct.unpack("<Q", buf[:8])
    if n > HF_MAX_HEADER:
        raise HFError("HeaderTooLarge: %d" % n)
    if 8 + n > len(buf):
        raise HFError("InvalidHeaderLength: %d past the end of a %d-byte file" % (n, len(buf)))
    try:
        text = buf[8:8 + n].decode("utf-8")
    except UnicodeDecodeError as e:
        raise HFError("InvalidHeader: not UTF-8 (%s)" % e)
    if not text.startswith("{"):
        raise HFError("InvalidHeaderStart: header does not start with '{'")
    try:
        header = json.loads(text, object_pairs_hook=_no_dup_pairs)
    except HFError:
        raise
    except ValueError as e:
        raise HFError("InvalidHeaderDeserialization: %s" % e)
    if not isinstance(header, dict):
        raise HFError("InvalidHeaderDeserialization: not an object")
    meta = header.pop("__metadata__", None)
    if meta is not None:
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise HFError("InvalidHeaderDeserialization: __metadata__ must map strings to strings")
    entries = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise HFError("InvalidHeaderDeserialization: tensor %r needs exactly dtype, shape, data_offsets" % name)
        dt, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if dt not in HF_DTYPE_SIZE:
            raise HFError("InvalidHeaderDeserialization: tensor %r has unknown dtype %r" % (name, dt))
        if (not isinstance(shape, list) or
                not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
            raise HFError("InvalidHeaderDeserialization: tensor %r shape %r" % (name, shape))
        if (not isinstance(offs, list) or len(offs) != 2 or
                not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offs)):
            raise HFError("InvalidHeaderDeserialization: tensor %r data_offsets %r" % (name, offs))
        entries.append((offs[0], offs[1], name, dt, shape))
    entries.sort(key=lambda e: e[0])      # HF sorts by data_offsets (begin first)
    start = 0
    for b, e, name, dt, shape in entries:
        if b != start or e < b:
            raise HFError("InvalidOffset(%s): [%d, %d] but the previous tensor ends at %d" % (name, b, e, start))
        start = e
        numel = 1
        for s in shape:
            numel *= s
        if numel * HF_DTYPE_SIZE[dt] >= 2 ** 64:
            raise HFError("ValidationOverflow: %s" % name)
        if e - b != numel * HF_DTYPE_SIZE[dt]:
            raise HFError("TensorInvalidInfo(%s): %d bytes for %s %s" % (name, e - b, dt, shape))
    if start + n + 8 != len(buf):
        raise HFError("MetadataIncompleteBuffer: tensors cover %d data bytes, the file has %d"
                      % (start, len(buf) - 8 - n))
    return len(entries)


def write_raw(path, entries, data, meta=None, pad_header=True):
    """Writes a safetensors file from explicit header entries (for self-tests)."""
    h = dict(entries)
    if meta:
        h["__metadata__"] = meta
    hj = json.dumps(h).encode()
    if pad_header:
        hj += b" " * ((-len(hj)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)) + hj + data)


def hf_save(path, tensors, meta=None):
    """Writes like safetensors.torch.save_file: tensors sorted by dtype size
    (largest first) then name, packed with no gaps, header space-padded to 8."""
    items = []
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        dt = {"f4": "F32", "f2": "F16", "f8": "F64", "i8": "I64", "i4": "I32", "u1": "U8"}[a.dtype.str[1:]]
        items.append((-HF_DTYPE_SIZE[dt], name, dt, a))
    items.sort(key=lambda t: (t[0], t[1]))
    entries, blobs, off = [], [], 0
    for _, name, dt, a in items:
        raw = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        entries.append((name, {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}))
        blobs.append(raw)
        off += len(raw)
    write_raw(path, entries, b"".join(blobs), meta)


# ---------------------------------------------------------------- helpers

def model_dict(img, patch, D, depth, heads, mlp, stem, skip, K, dpr):
    return dict(img_size=img, patch_size=patch, embed_dim=D, depth=depth, num_heads=heads,
                mlp_ratio=mlp, stem_channels=stem, skip_lam=skip, num_classes=K,
                drop_path_rate=dpr)


def state_numpy(model, float_dtype=None):
    """Full state_dict as numpy; float tensors optionally cast."""
    out = {}
    for k, v in model.state_dict().items():
        a = v.detach().cpu().numpy()
        if float_dtype is not None and a.dtype.kind == "f":
            a = a.astype(float_dtype)
        out[k] = a
    return out


def perturb(model, gen):
    """BN running stats and affine params, LayerNorm params and counters away from init."""
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                C = mod.num_features
                mod.running_mean.copy_(0.2 * torch.randn(C, generator=gen))
                mod.running_var.copy_(0.5 + 1.5 * torch.rand(C, generator=gen))
                mod.weight.copy_(1.0 + 0.2 * torch.randn(C, generator=gen))
                mod.bias.copy_(0.1 * torch.randn(C, generator=gen))
                mod.num_batches_tracked.fill_(17)
            elif isinstance(mod, torch.nn.LayerNorm):
                D = mod.normalized_shape[0]
                mod.weight.copy_(1.0 + 0.1 * torch.randn(D, generator=gen))
                mod.bias.copy_(0.05 * torch.randn(D, generator=gen))
        for m in (model.head, model.aux_head):
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))


def ref_outputs(model, x):
    model.eval()
    with torch.no_grad():
        cls, aux = model(torch.from_numpy(x))
        score = L.inference_score(cls, aux)
    return score.numpy(), cls.numpy(), aux.numpy()


def rel_err(ours, ref):
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        return float("inf")
    den = np.max(np.abs(ref))
    return float(np.max(np.abs(ours - ref)) / (den if den > 0 else 1.0))


class Runner:
    def __init__(self, ckpt_bin, work):
        self.bin = ckpt_bin
        self.work = work

    def path(self, name):
        return os.path.join(self.work, name)

    def run(self, *args):
        """Returns (returncode, stdout, stderr); raises on a crash (signal or sanitizer report)."""
        p = subprocess.run([self.bin] + list(args), capture_output=True, text=True, timeout=TIMEOUT)
        crash = p.returncode < 0 or "Sanitizer" in p.stderr or "runtime error:" in p.stderr
        if crash:
            raise AssertionError("tl-ckpt %s crashed (status %d): %s" % (" ".join(args), p.returncode,
                                                                       p.stderr.strip()[-2000:]))
        return p.returncode, p.stdout, p.stderr

    def ok(self, *args):
        rc, out, err = self.run(*args)
        if rc != 0:
            raise AssertionError("tl-ckpt %s failed (%d): %s" % (" ".join(args), rc, err.strip()))
        return out

    def predict(self, ckpt, x, tag):
        inp, outp = self.path(tag + "_in.safetensors"), self.path(tag + "_out.safetensors")
        st_io.save(inp, {"input": x.astype(np.float32)})
        self.ok("predict", ckpt, "--in", inp, "--out", outp)
        hf_strict_check(outp)
        out, _ = st_io.load(outp)
        for k in ("logits_pred", "logits_cls", "logits_aux"):
            if k not in out or out[k].dtype != np.float32:
                raise AssertionError("predict output lacks F32 %s" % k)
        return out

    def info(self, ckpt):
        out = self.ok("info", ckpt)
        lines = [ln for ln in out.splitlines() if ln.strip()]
        if len(lines) != 1:
            raise AssertionError("info printed %d lines, expected 1: %r" % (len(lines), out))
        return json.loads(lines[0])


def compare_config(got, want):
    for k in L.MODEL_FIELDS:
        if k not in got:
            raise AssertionError("config lacks %s" % k)
        if abs(float(got[k]) - float(want[k])) > 1e-6 * max(1.0, abs(float(want[k]))):
            raise AssertionError("config %s = %r, expected %r" % (k, got[k], want[k]))


def compare_outputs(out, ref, tol):
    score, cls, aux = ref
    errs = {"pred": rel_err(out["logits_pred"], score), "cls": rel_err(out["logits_cls"], cls),
            "aux": rel_err(out["logits_aux"], aux)}
    msg = " ".join("%s %.2e" % kv for kv in errs.items())
    bad = [k for k, v in errs.items() if not v <= tol]
    if bad:
        raise AssertionError("err above %g: %s" % (tol, msg))
    return msg


# ---------------------------------------------------------------- checks

def check_hf_selftest(r):
    a = np.arange(3, dtype="<f4").tobytes()      # 12 bytes
    b = np.arange(2, dtype="<i8").tobytes()      # 16 bytes
    good = [("a", {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}),
            ("b", {"dtype": "I64", "shape": [2], "data_offsets": [12, 28]})]
    p = r.path("hf_self.safetensors")
    write_raw(p, good, a + b, {"k": "v"})
    hf_strict_check(p)
    bad_cases = {
        "gap": ([("a", {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}),
                 ("b", {"dtype": "I64", "shape": [2], "data_offsets": [16, 32]})], a + b"\0" * 4 + b),
        "overlap": ([("a", {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}),
                     ("b", {"dtype": "I64", "shape": [2], "data_offsets": [8, 24]})], a + b),
        "size": ([("a", {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}),
                  ("b", {"dtype": "I64", "shape": [2], "data_offsets": [12, 28]})], a + b),
        "tail": (good, a + b + b"\0" * 8),
        "short": (good, a + b[:-1]),
    }
    for what, (ents, data) in bad_cases.items():
        write_raw(p, ents, data)
        try:
            hf_strict_check(p)
        except HFError:
            continue
        raise AssertionError("hf_strict_check accepted a file with a %s" % what)
    # st_io packs tensors like Hugging Face: a 5-float tensor followed by an I64 leaves no gap.
    st_io.save(p, {"a": np.zeros(5, np.float32), "b": np.zeros(1, np.int64)})
    hf_strict_check(p)
    return "refuses gap/overlap/size/tail/short; accepts st_io's packed file"


CFG_A = model_dict(32, 8, 48, 2, 3, 3.0, 16, 2.0, 7, 0.1)
# lvvit_t width and depth (so num_heads and skip_lam can be inferred), small images.
CFG_B = model_dict(32, 16, 240, 12, 4, 3.0, 8, 1.0, 5, 0.1)


def check_a(r):
    cfg_path = r.path("a_model.json")
    with open(cfg_path, "w") as f:
        json.dump(CFG_A, f)
    ck = r.path("a_engine.safetensors")
    r.ok("init", "--config", cfg_path, "--seed", "11", "--out", ck)
    ntens = hf_strict_check(ck)
    tensors, meta = st_io.load(ck)
    if "tokenlab.config" not in meta:
        raise AssertionError("engine checkpoint lacks tokenlab.config metadata")
    compare_config(json.loads(meta["tokenlab.config"]), CFG_A)
    for l in (1, 2, 3):
        k = "patch_embed.bn%d.num_batches_tracked" % l
        if k not in tensors:
            raise AssertionError("engine checkpoint lacks %s" % k)
        if tensors[k].dtype != np.int64 or tensors[k].shape != ():
            raise AssertionError("%s is %s %s, expected an int64 scalar" % (k, tensors[k].dtype, tensors[k].shape))
    model = L.LVViT(L.LVViTConfig(**CFG_A))
    sd = {k: torch.from_numpy(v) for k, v in tensors.items()}
    model.load_state_dict(sd, strict=True)   # raises on missing/unexpected/misshaped
    for k, v in model.state_dict().items():
        if v.dtype != sd[k].dtype:
            raise AssertionError("%s: dtype %s in the file, %s in the model" % (k, sd[k].dtype, v.dtype))
    info = r.info(ck)
    compare_config(info["config"], CFG_A)
    nparams = sum(p.numel() for p in model.parameters())
    if info["num_params"] != nparams or info["tensors"] != ntens:
        raise AssertionError("info says %d params / %d tensors, expected %d / %d"
                             % (info["num_params"], info["tensors"], nparams, ntens))
    x = np.random.RandomState(5).randn(3, 3, 32, 32).astype(np.float32)
    out = r.predict(ck, x, "a")
    return compare_outputs(out, ref_outputs(model, x), TOL_F32)


def reference_b(seed):
    torch.manual_seed(seed)
    model = L.LVViT(L.LVViTConfig(**CFG_B))
    perturb(model, torch.Generator().manual_seed(seed + 1))
    return model


def check_b(r):
    model = reference_b(21)
    ck = r.path("b_torch.safetensors")
    sd = state_numpy(model)
    st_io.save(ck, sd)                                  # no tokenlab metadata
    info = r.info(ck)
    compare_config(info["config"], CFG_B)
    nparams = sum(p.numel() for p in model.parameters())
    if info["num_params"] != nparams or info["tensors"] != len(sd):
        raise AssertionError("info says %d params / %d tensors, expected %d / %d"
                             % (info["num_params"], info["tensors"], nparams, len(sd)))
    x = np.random.RandomState(6).randn(2, 3, 32, 32).astype(np.float32)
    out = r.predict(ck, x, "b")
    return "num_heads %d; %s" % (info["config"]["num_heads"], compare_outputs(out, ref_outputs(model, x), TOL_F32))


def check_b_hf_layout(r):
    """The same direction with the file laid out exactly as Hugging Face writes it."""
    model = reference_b(22)
    ck = r.path("b_hf.safetensors")
    sd = state_numpy(model)
    hf_save(ck, sd, {"format": "pt"})
    hf_strict_check(ck)
    info = r.info(ck)
    compare_config(info["config"], CFG_B)
    x = np.random.RandomState(8).randn(2, 3, 32, 32).astype(np.float32)
    out = r.predict(ck, x, "b_hf")
    return compare_outputs(out, ref_outputs(model, x), TOL_F32)


def check_c(r):
    model = reference_b(31)
    ck = r.path("c_f16.safetensors")
    sd = state_numpy(model, np.float16)
    if not all(v.dtype in (np.float16, np.int64) for v in sd.values()):
        raise AssertionError("F16 conversion left other dtypes")
    st_io.save(ck, sd)
    info = r.info(ck)
    compare_config(info["config"], CFG_B)
    x = np.random.RandomState(7).randn(2, 3, 32, 32).astype(np.float32)
    out = r.predict(ck, x, "c")
    msg = compare_outputs(out, ref_outputs(model, x), TOL_F16)
    # the F16 values themselves must be decoded exactly: against the reference
    # holding the same rounded weights the float32 tolerance applies
    model.load_state_dict({k: torch.from_numpy(v.astype(np.float32) if v.dtype == np.float16 else v)
                           for k, v in sd.items()}, strict=True)
    exact = compare_outputs(out, ref_outputs(model, x), TOL_F32)
    return "%s (vs the float32 model); %s (vs the F16-rounded model)" % (msg, exact)


def check_cli_errors(r):
    """tl-ckpt's own error paths: each exits non-zero with a message, none crashes."""
    ck = r.path("a_engine.safetensors")
    good_in = r.path("e_in.safetensors")
    st_io.save(good_in, {"input": np.zeros((1, 3, 32, 32), np.float32)})
    cases = []

    def add(name, args, needle, status=1):
        cases.append((name, args, needle, status))

    bad_cfg = r.path("e_bad_model.json")
    with open(bad_cfg, "w") as f:
        json.dump(dict(CFG_A, num_heads=5), f)
    add("init invalid config", ["init", "--config", bad_cfg, "--seed", "1", "--out", r.path("e.safetensors")],
        "embed_dim")
    unk_cfg = r.path("e_unknown.json")
    with open(unk_cfg, "w") as f:
        json.dump(dict(CFG_A, heads=3), f)
    add("init unknown field", ["init", "--config", unk_cfg, "--seed", "1", "--out", r.path("e.safetensors")], "heads")
    add("init missing config file", ["init", "--config", r.path("nope.json"), "--seed", "1", "--out",
                                     r.path("e.safetensors")], "nope.json")
    add("init bad seed", ["init", "--config", unk_cfg, "--seed", "x1", "--out", r.path("e.safetensors")], "seed")
    add("init unwritable out", ["init", "--config", r.path("a_model.json"), "--seed", "1", "--out",
                                r.path("no/such/dir/e.safetensors")], "e.safetensors")
    add("info missing file", ["info", r.path("nope.safetensors")], "nope.safetensors")
    add("info not safetensors", ["info", r.path("a_model.json")], "header")
    add("predict no input tensor", ["predict", ck, "--in", ck, "--out", r.path("e_out.safetensors")], "input")
    wrong = r.path("e_wrong.safetensors")
    st_io.save(wrong, {"input": np.zeros((1, 3, 16, 16), np.float32)})
    add("predict wrong input size", ["predict", ck, "--in", wrong, "--out", r.path("e_out.safetensors")], "input")
    ints = r.path("e_ints.safetensors")
    st_io.save(ints, {"input": np.zeros((1, 3, 32, 32), np.int32)})
    add("predict integer input", ["predict", ck, "--in", ints, "--out", r.path("e_out.safetensors")], "dtype")
    add("predict missing checkpoint", ["predict", r.path("nope.safetensors"), "--in", good_in, "--out",
                                       r.path("e_out.safetensors")], "nope.safetensors")
    add("predict missing --out", ["predict", ck, "--in", good_in], "--out", 2)
    add("unknown command", ["frobnicate"], "usage", 2)
    add("no arguments", [], "usage", 2)
    bad = []
    for name, args, needle, status in cases:
        rc, _, err = r.run(*args)
        if rc != status or needle not in err:
            bad.append("%s: exit %d (want %d), stderr %r" % (name, rc, status, err.strip()[:200]))
    if bad:
        raise AssertionError("; ".join(bad))
    return "%d error cases reported cleanly" % len(cases)


def refusal_cases(base, K):
    """(tag, tensors, what the message must mention) from a base state_dict."""
    cases = []
    t = dict(base)
    del t["blocks.1.mlp.fc2.bias"]
    cases.append(("missing", t, ["blocks.1.mlp.fc2.bias"]))
    t = dict(base)
    t["blocks.0.attn.qkv.bias"] = np.zeros(base["blocks.0.attn.qkv.weight"].shape[0], np.float32)
    cases.append(("extra", t, ["blocks.0.attn.qkv.bias"]))
    t = dict(base)
    t["head.bias"] = np.zeros(K + 1, np.float32)
    cases.append(("shape", t, ["head.bias"]))
    t = dict(base)
    t["norm.weight"] = np.ones(base["norm.weight"].shape, np.int32)
    cases.append(("dtype", t, ["norm.weight"]))
    return cases


def check_refusals(r, tag, base, meta, K):
    results = []
    for what, tensors, needles in refusal_cases(base, K):
        p = r.path("d_%s_%s.safetensors" % (tag, what))
        st_io.save(p, tensors, meta)
        results.append(("d_%s_%s" % (tag, what), p, needles))
    # truncated: a valid file missing its last 100 bytes
    p = r.path("d_%s_truncated.safetensors" % tag)
    st_io.save(p, base, meta)
    with open(p, "rb") as f:
        raw = f.read()
    with open(p, "wb") as f:
        f.write(raw[:-100])
    results.append(("d_%s_truncated" % tag, p, ["beyond", "larger than", "shorter", "truncat", "past", "outside",
                                               "end of"]))
    checks = []
    for name, p, needles in results:
        def one(r, p=p, needles=needles):
            rc, out, err = r.run("info", p)
            if rc == 0:
                raise AssertionError("accepted: %s" % out.strip())
            msg = err.strip()
            if not msg.startswith("tl-ckpt: "):
                raise AssertionError("message does not start with 'tl-ckpt: ': %r" % msg)
            if not any(n in msg for n in needles):
                raise AssertionError("message does not mention %s: %r" % (" or ".join(needles), msg))
            return "exit %d: %s" % (rc, msg[:150])
        checks.append((name, one))
    return checks


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="path of tl-parity; tl-ckpt is its sibling")
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    ckpt_bin = os.path.join(os.path.dirname(os.path.abspath(args.bin)), "tl-ckpt")
    os.makedirs(args.work, exist_ok=True)
    torch.set_num_threads(2)
    r = Runner(ckpt_bin, args.work)
    if not os.access(ckpt_bin, os.X_OK):
        print("FAIL setup: %s is not an executable" % ckpt_bin)
        print("0 passed, 1 failed")
        return 1

    checks = [("hf_selftest", check_hf_selftest), ("a_engine_to_pt", check_a), ("b_pt_to_engine", check_b),
              ("b_hf_layout", check_b_hf_layout), ("c_f16", check_c), ("e_cli_errors", check_cli_errors)]
    passed = failed = 0

    def run_one(name, fn):
        nonlocal passed, failed
        try:
            msg = fn(r)
            print("PASS %s: %s" % (name, msg), flush=True)
            passed += 1
        except Exception as e:  # noqa: BLE001 - every failure is reported, then counted
            detail = "".join(traceback.format_exception_only(type(e), e)).strip()
            print("FAIL %s: %s" % (name, detail), flush=True)
            failed += 1

    for name, fn in checks:
        run_one(name, fn)

    # refusals: from the engine's own checkpoint (config in the metadata) and from
    # a PyTorch state_dict without metadata (config inferred from the shapes)
    try:
        eng, eng_meta = st_io.load(r.path("a_engine.safetensors"))
        bases = [("meta", eng, eng_meta, CFG_A["num_classes"]),
                 ("nometa", state_numpy(reference_b(41)), None, CFG_B["num_classes"])]
        for tag, base, meta, K in bases:
            for name, fn in check_refusals(r, tag, base, meta, K):
                run_one(name, fn)
    except Exception as e:  # noqa: BLE001
        print("FAIL d_setup: %s" % e)
        failed += 1

    if failed == 0:  # keep the files of a failed run for inspection; they reach ~250 MB
        for name in os.listdir(args.work):
            if name.endswith(".safetensors") or name.endswith(".json"):
                os.remove(os.path.join(args.work, name))
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
