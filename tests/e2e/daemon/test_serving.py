#!/usr/bin/python3
"""End-to-end tests of model serving and token inspection in tokenlabd serve:
the real daemon on a loopback port, a real SQLite file, a real training job
on the built-in synthetic data, real photos from ../shared/data/photos
(skipped when absent), and an LV-ViT state_dict made by the PyTorch reference
(tests/parity/lvvit_ref.py) uploaded as safetensors.

usage: test_serving.py --bin build/bin/tokenlabd --work DIR

Covers: registering a model from a job (and every refusal), predict on photos
(shapes, token grid of the model, probabilities), multipart with a bad part,
every bad input (empty, not a JPEG, truncated, a 30000x30000 header, wrong
content type, too large, unknown model) answered 4xx while the daemon keeps
serving, dynamic batching under concurrent requests (batches formed, results
identical to sequential ones), queue full (429 + Retry-After), deadlines
(504), KServe v2 (health, metadata, UINT8 and FP32 infer, classification),
uploads (an official state_dict: scores equal PyTorch's; corrupt files
refused), PATCH, delete, models reloaded after a restart, and the token
inspection routes (samples, grids, image, heatmaps).
Prints `N passed, M failed` last; exits non-zero on any failure.
"""
import argparse
import http.client
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
import uuid

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "parity"))
import test_daemon as TD  # noqa: E402  (the Daemon class and helpers)

PHOTOS = os.path.join(os.environ.get("TL_SHARED_DATA") or os.path.join(HERE, "..", "..", "..", "..", "shared", "data"),
                      "photos")
RESULTS = TD.RESULTS
check = TD.check
problem = TD.problem


def photos():
    if not os.path.isdir(PHOTOS):
        return []
    return sorted(os.path.join(PHOTOS, f) for f in os.listdir(PHOTOS) if f.lower().endswith((".jpg", ".jpeg")))


def a_jpeg():
    """A real JPEG: a photo when present, else one of the synthetic training images."""
    p = photos()
    if p:
        return open(p[0], "rb").read()
    root = os.path.join(TD.ARGS.work, "data", "synth", "train")
    d = sorted(os.listdir(root))[0]
    return open(os.path.join(root, d, sorted(os.listdir(os.path.join(root, d)))[0]), "rb").read()


def multipart(files):
    """files: list of (filename, content_type, bytes) -> (content_type, body)."""
    b = "tokenlab-" + uuid.uuid4().hex
    out = io.BytesIO()
    for i, (fn, ct, data) in enumerate(files):
        out.write(("--%s\r\nContent-Disposition: form-data; name=\"image%d\"; filename=\"%s\"\r\n"
                   "Content-Type: %s\r\n\r\n" % (b, i, fn, ct)).encode())
        out.write(data)
        out.write(b"\r\n")
    out.write(("--%s--\r\n" % b).encode())
    return "multipart/form-data; boundary=" + b, out.getvalue()


def predict(d, model, data, ctype="image/jpeg", query=""):
    return d.request("POST", "/api/v1/models/%s/predict%s" % (model, query), raw=data,
                     headers={"Content-Type": ctype}, token=False)


STATE = {}


@check("train a job for serving")
def t_train(d):
    s = TD.spec("serve", epochs=20, extra_train={"ema_decay": 0.99, "lr": 2e-3, "eval_every_epochs": 5})
    st, body, _, _ = d.request("POST", "/api/v1/jobs", s)
    assert st == 201, (st, body)
    STATE["job"] = body["id"]
    j = d.wait_state(body["id"], ("SUCCEEDED", "FAILED"), timeout=300)
    assert j["state"] == "SUCCEEDED", j


@check("register a model from the job")
def t_register(d):
    job = STATE["job"]
    st, m, r, _ = d.request("POST", "/api/v1/models", {"name": "synth", "job_id": job})
    assert st == 201, (st, m)
    assert r.getheader("Location") == "/api/v1/models/synth"
    assert m["state"] == "READY" and m["error"] is None, m
    assert m["source"] == {"kind": "job", "job_id": job, "checkpoint": "best", "step": m["source"]["step"],
                           "ema": True, "bytes": m["source"]["bytes"]}, m["source"]
    assert m["source"]["step"] > 0
    assert m["num_classes"] == 4 and m["grid"] == 4 and m["input"]["size"] == 32, m
    assert [c["label"] for c in m["classes"]] == ["disc", "square", "triangle", "ring"], m["classes"]
    assert m["batching"] == {"max_batch": 8, "max_delay_ms": 5, "max_queue": 64}, m["batching"]
    st, lst, _, _ = d.request("GET", "/api/v1/models", token=False)
    assert st == 200 and [x["name"] for x in lst["models"]] == ["synth"], lst
    # the last checkpoint by step, raw weights
    st, m2, _, _ = d.request("POST", "/api/v1/models", {"name": "synth-last", "job_id": job, "checkpoint": "last",
                                                        "ema": False, "max_batch": 4})
    assert st == 201 and m2["source"]["checkpoint"] == "last" and m2["source"]["ema"] is False, m2
    st, m3, _, _ = d.request("POST", "/api/v1/models", {"name": "synth-step", "job_id": job,
                                                        "checkpoint": m2["source"]["step"]})
    assert st == 201 and m3["source"]["checkpoint"] == m2["source"]["step"], m3


@check("register refusals")
def t_register_bad(d):
    job = STATE["job"]
    st, b, _, _ = d.request("POST", "/api/v1/models", {"name": "synth", "job_id": job})
    problem(st, b, 409, "MODEL_EXISTS", "/name")
    st, b, _, _ = d.request("POST", "/api/v1/models", {"name": "x", "job_id": 999999})
    problem(st, b, 404, "JOB_NOT_FOUND", "/job_id")
    for bad in ("", "-x", "a b", "a/b", "x" * 65, "../etc"):
        st, b, _, _ = d.request("POST", "/api/v1/models", {"name": bad, "job_id": job})
        problem(st, b, 422, "INVALID_FIELD", "/name")
    st, b, _, _ = d.request("POST", "/api/v1/models", {"name": "y", "job_id": job, "checkpoint": 123456})
    problem(st, b, 422, "CHECKPOINT_NOT_FOUND", "/checkpoint")
    st, b, _, _ = d.request("POST", "/api/v1/models", {"name": "y", "job_id": job, "checkpoint": "first"})
    problem(st, b, 422, "INVALID_FIELD", "/checkpoint")
    st, b, _, _ = d.request("POST", "/api/v1/models", {"name": "y", "job_id": job, "path": "/etc/passwd"})
    problem(st, b, 422, "UNKNOWN_FIELD", "/path")
    st, b, _, _ = d.request("POST", "/api/v1/models", {"name": "y", "job_id": job, "max_batch": 65})
    problem(st, b, 422, "INVALID_FIELD", "/max_batch")
    st, b, _, _ = d.request("POST", "/api/v1/models", {"job_id": job})
    problem(st, b, 422, "INVALID_FIELD", "/name")
    st, b, _, _ = d.request("POST", "/api/v1/models", {"name": "y", "job_id": job}, token=False)
    problem(st, b, 401, "UNAUTHENTICATED")
    st, b, _, _ = d.request("GET", "/api/v1/models/nope", token=False)
    problem(st, b, 404, "MODEL_NOT_FOUND")


@check("predict photos")
def t_predict(d):
    imgs = photos() or [None]
    for p in imgs:
        data = open(p, "rb").read() if p else a_jpeg()
        st, b, _, _ = predict(d, "synth", data)
        assert st == 200, (st, b)
        assert b["model"] == "synth"
        preds = b["predictions"]
        assert len(preds) == 4, preds  # top_k 5 of 4 classes
        scores = [x["score"] for x in preds]
        assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-4, scores
        assert {x["index"] for x in preds} == {0, 1, 2, 3}
        assert all(x["label"] == ["disc", "square", "triangle", "ring"][x["index"]] for x in preds)
        t = b["tokens"]
        assert t["grid"] == 4 and len(t["index"]) == 16 and len(t["score"]) == 16, t
        assert all(0 <= i < 4 for i in t["index"]) and all(0.25 - 1e-3 <= s <= 1 for s in t["score"]), t
        tm = b["timing_ms"]
        assert tm["decode"] > 0 and tm["infer"] > 0 and tm["queue"] >= 0, tm
    st, b, _, _ = predict(d, "synth", a_jpeg(), query="?top_k=2&tokens=false")
    assert st == 200 and len(b["predictions"]) == 2 and "tokens" not in b, b


@check("predictions over HTTP match the job's evaluation")
def t_predict_synth(d):
    # The whole validation set through the predict route must give exactly the top-1 that the training
    # job measured at the model's checkpoint: same weights (EMA), same evaluation transform, same score.
    root = os.path.join(TD.ARGS.work, "data", "synth", "val")
    folders = sorted(f for f in os.listdir(root) if os.path.isdir(os.path.join(root, f)))
    right = total = 0
    for ci, folder in enumerate(folders):
        for f in sorted(os.listdir(os.path.join(root, folder))):
            st, b, _, _ = predict(d, "synth", open(os.path.join(root, folder, f), "rb").read(), query="?tokens=false")
            assert st == 200, b
            right += b["predictions"][0]["index"] == ci
            total += 1
    _, m, _, _ = d.request("GET", "/api/v1/models/synth", token=False)
    step = m["source"]["step"]
    _, series, _, _ = d.request("GET", "/api/v1/jobs/%d/metrics/ema_top1" % STATE["job"], token=False)
    points = {p["step"]: p["value"] for p in series["points"]}
    print("  val top-1 over HTTP %d/%d = %.4f; the job's ema_top1 at step %d: %.4f"
          % (right, total, right / total, step, points[step]))
    assert total == 32 and abs(right / total - points[step]) < 1e-9, (right, total, points)


@check("multipart with a bad part")
def t_multipart(d):
    imgs = [open(p, "rb").read() for p in photos()[:3]] or [a_jpeg()]
    files = [("p%d.jpg" % i, "image/jpeg", x) for i, x in enumerate(imgs)] + [("notes.txt", "text/plain", b"hello")]
    ct, body = multipart(files)
    st, b, _, _ = predict(d, "synth", body, ctype=ct)
    assert st == 200, (st, b)
    res = b["results"]
    assert len(res) == len(files), res
    for i, x in enumerate(imgs):
        assert res[i]["filename"] == "p%d.jpg" % i and len(res[i]["predictions"]) == 4, res[i]
        st1, one, _, _ = predict(d, "synth", x)
        assert abs(one["predictions"][0]["score"] - res[i]["predictions"][0]["score"]) < 1e-5, (one, res[i])
    assert res[-1]["filename"] == "notes.txt" and res[-1]["error"]["code"] == "NOT_A_JPEG", res[-1]
    st, b, _, _ = predict(d, "synth", b"--x\r\nnonsense", ctype="multipart/form-data; boundary=x")
    problem(st, b, 400, "BAD_MULTIPART")
    st, b, _, _ = predict(d, "synth", b"data", ctype="multipart/form-data")
    problem(st, b, 400, "BAD_MULTIPART")


def huge_header_jpeg():
    """A real JPEG whose frame header (SOF) is patched to claim 30000x30000 pixels."""
    b = bytearray(a_jpeg())
    i = 2
    while i + 9 < len(b):
        assert b[i] == 0xFF, "bad marker"
        marker, seglen = b[i + 1], struct.unpack(">H", b[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            b[i + 5:i + 9] = struct.pack(">HH", 30000, 30000)
            return bytes(b)
        i += 2 + seglen
    raise AssertionError("no SOF marker found")


def headers_only(d, path, ctype, length):
    """Sends a request's headers announcing a body of length bytes and reads the answer, sending no body:
    the daemon must refuse a too-large body from its Content-Length, before reading it."""
    import socket
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
        s.sendall(("POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
                   % (path, d.port, ctype, length)).encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        n = int([ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")][0])
        while len(rest) < n:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
    return int(head.split(b" ")[1]), json.loads(rest[:n])


@check("bad inputs answered 4xx")
def t_bad_inputs(d):
    good = a_jpeg()
    cases = [
        ("empty body", b"", "image/jpeg", 400, "EMPTY_BODY"),
        ("not a JPEG", b"GIF89a" + b"\0" * 100, "image/jpeg", 400, "NOT_A_JPEG"),
        ("truncated JPEG", good[:len(good) // 3], "image/jpeg", 400, "CORRUPT_IMAGE"),
        ("30000x30000 header", huge_header_jpeg(), "image/jpeg", 413, "IMAGE_TOO_LARGE"),
        ("wrong content type", good, "text/plain", 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("no content type", good, None, 415, "UNSUPPORTED_MEDIA_TYPE"),
    ]
    for name, data, ct, status, code in cases:
        h = {"Content-Type": ct} if ct else {}
        st, b, _, _ = d.request("POST", "/api/v1/models/synth/predict", raw=data, headers=h, token=False)
        try:
            problem(st, b, status, code)
        except AssertionError as e:
            raise AssertionError("%s: %s" % (name, e))
    st, b, _, _ = predict(d, "nope", good)
    problem(st, b, 404, "MODEL_NOT_FOUND")
    st, b = headers_only(d, "/api/v1/models/synth/predict", "image/jpeg", 9 * 1024 * 1024)  # over --max-body
    problem(st, b, 413, "BODY_TOO_LARGE")
    st, b, _, _ = predict(d, "synth", good, query="?top_k=0")
    problem(st, b, 400, "BAD_QUERY")
    st, b, _, _ = predict(d, "synth", good, query="?tokens=maybe")
    problem(st, b, 400, "BAD_QUERY")
    # still serving everyone
    st, b, _, _ = predict(d, "synth", good)
    assert st == 200, b
    st, h, _, _ = d.request("GET", "/healthz", token=False)
    assert st == 200


@check("dynamic batching")
def t_batching(d):
    imgs = [open(p, "rb").read() for p in photos()] or [a_jpeg()]
    imgs = (imgs * 16)[:16]
    seq = []
    for x in imgs:
        st, b, _, _ = predict(d, "synth-last", x, query="?tokens=true")
        assert st == 200, b
        seq.append(b)
    _, before, _, _ = d.request("GET", "/api/v1/models/synth-last", token=False)
    d.request("PATCH", "/api/v1/models/synth-last", {"max_delay_ms": 50})
    out = [None] * len(imgs)

    def worker(i):
        out[i] = predict(d, "synth-last", imgs[i], query="?tokens=true")

    for _ in range(3):
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(imgs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, (st, b, _, _) in enumerate(out):
            assert st == 200, b
            for p, q in zip(b["predictions"], seq[i]["predictions"]):
                assert p["index"] == q["index"] and abs(p["score"] - q["score"]) < 1e-5, (p, q)
            assert b["tokens"]["index"] == seq[i]["tokens"]["index"]
    _, after, _, _ = d.request("GET", "/api/v1/models/synth-last", token=False)
    images = after["stats"]["images"] - before["stats"]["images"]
    batches = after["stats"]["batches"] - before["stats"]["batches"]
    biggest = max(b["timing_ms"]["batch"] for _, b, _, _ in out)
    print("  %d concurrent images ran in %d batches (max_batch 4), largest %d" % (images, batches, biggest))
    assert images == 48 and batches < images and biggest > 1 and biggest <= 4, (images, batches, biggest)


@check("queue full and deadlines")
def t_queue(d):
    x = a_jpeg()
    st, m, _, _ = d.request("PATCH", "/api/v1/models/synth-step", {"max_queue": 1})
    assert st == 200 and m["batching"]["max_queue"] == 1, m
    ct, body = multipart([("a.jpg", "image/jpeg", x), ("b.jpg", "image/jpeg", x)])
    st, b, r, _ = predict(d, "synth-step", body, ctype=ct)
    problem(st, b, 413, "BATCH_TOO_LARGE")  # more images than the queue takes: no retry helps
    ct, body = multipart([("i%d.jpg" % i, "image/jpeg", x) for i in range(32)])
    st, b, _, _ = predict(d, "synth", body, ctype=ct, query="?timeout_ms=1")
    problem(st, b, 504, "DEADLINE_EXCEEDED")
    st, b, _, _ = d.request("PATCH", "/api/v1/models/synth-step", {"max_queue": 0})
    problem(st, b, 422, "INVALID_FIELD", "/max_queue")
    st, b, _, _ = d.request("PATCH", "/api/v1/models/synth-step", {"labels": ["a", "b"]})
    problem(st, b, 422, "INVALID_FIELD", "/labels")
    st, m, _, _ = d.request("PATCH", "/api/v1/models/synth-step", {"labels": ["A", "B", "C", "D"], "max_queue": 64})
    assert st == 200 and [c["label"] for c in m["classes"]] == ["A", "B", "C", "D"], m
    st, b, _, _ = predict(d, "synth-step", x)
    assert st == 200 and b["predictions"][0]["label"] in "ABCD", b


@check("KServe v2")
def t_kserve(d):
    for path, want in (("/v2/health/live", {"live": True}), ("/v2/health/ready", {"ready": True}),
                       ("/v2/models/synth/ready", {"ready": True})):
        st, b, _, _ = d.request("GET", path, token=False)
        assert st == 200 and b == want, (path, st, b)
    st, meta, _, _ = d.request("GET", "/v2/models/synth", token=False)
    assert st == 200 and meta["name"] == "synth" and meta["outputs"][0]["shape"] == [-1, 4], meta
    rng = np.random.default_rng(0)
    pix = rng.integers(0, 256, size=(2, 40, 50, 3))
    req = {"id": "r1", "inputs": [{"name": "image", "shape": [2, 40, 50, 3], "datatype": "UINT8",
                                   "data": pix.flatten().tolist()}]}
    st, b, _, _ = d.request("POST", "/v2/models/synth/infer", req, token=False)
    assert st == 200, b
    assert b["model_name"] == "synth" and b["id"] == "r1", b
    out = b["outputs"][0]
    assert out["datatype"] == "FP32" and out["shape"] == [2, 4] and len(out["data"]) == 8, out
    x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    req = {"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": x.tolist()}],
           "outputs": [{"name": "scores", "parameters": {"classification": 2}}]}
    st, b, _, _ = d.request("POST", "/v2/models/synth/infer", req, token=False)
    assert st == 200, b
    out = b["outputs"][0]
    assert out["datatype"] == "BYTES" and out["shape"] == [1, 2], out
    score, idx, label = out["data"][0].split(":", 2)
    assert 0 < float(score) <= 1 and label == ["disc", "square", "triangle", "ring"][int(idx)], out
    bad = {"inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0] * 768}]}
    st, b, _, _ = d.request("POST", "/v2/models/synth/infer", bad, token=False)
    problem(st, b, 400, "INVALID_INFER_REQUEST", "/inputs/0/shape")
    bad = {"inputs": [{"name": "image", "shape": [1, 2, 2, 3], "datatype": "UINT8", "data": [300] * 12}]}
    st, b, _, _ = d.request("POST", "/v2/models/synth/infer", bad, token=False)
    assert st == 400 and b["code"] == "INVALID_INFER_REQUEST" and b["pointer"].startswith("/inputs/0/data"), b
    st, b, _, _ = d.request("POST", "/v2/models/nope/infer", req, token=False)
    problem(st, b, 404, "MODEL_NOT_FOUND")


# The Open Inference Protocol's REST response objects (kserve's rest_predict_v2.yaml), as checks: every /v2
# answer, errors included, must be one of them.
def oip_tensor_meta(t):
    assert isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("datatype"), str), t
    assert isinstance(t.get("shape"), list) and all(isinstance(x, int) for x in t["shape"]), t


def oip_check(kind, st, b):
    """Holds one /v2 answer against the protocol's schema for it; an error status must carry {"error": str}."""
    if st >= 400:
        assert isinstance(b, dict) and isinstance(b.get("error"), str) and b["error"], (kind, st, b)
        return
    if kind == "server":
        assert isinstance(b.get("name"), str) and isinstance(b.get("version"), str), b
        assert isinstance(b.get("extensions"), list) and all(isinstance(x, str) for x in b["extensions"]), b
    elif kind == "model":
        assert isinstance(b.get("name"), str) and isinstance(b.get("platform"), str), b
        assert all(isinstance(v, str) for v in b.get("versions", [])), b
        for t in b.get("inputs", []) + b.get("outputs", []):
            oip_tensor_meta(t)
    elif kind == "infer":
        assert isinstance(b.get("model_name"), str) and isinstance(b.get("outputs"), list), b
        assert isinstance(b.get("model_version", ""), str) and isinstance(b.get("id", ""), str), b
        for o in b["outputs"]:
            oip_tensor_meta(o)
            assert isinstance(o.get("data"), list), o
    elif kind in ("live", "ready"):
        assert st == 200, (kind, st)
    else:
        raise AssertionError("unknown kind %s" % kind)


def vm_hwm_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


@check("Open Inference Protocol: versions, /v2/, error objects, every answer against the spec")
def t_oip(d):
    rng = np.random.default_rng(5)
    pix = rng.integers(0, 256, size=(1, 24, 24, 3)).flatten().tolist()
    req = {"inputs": [{"name": "image", "shape": [1, 24, 24, 3], "datatype": "UINT8", "data": pix}]}
    answers = [("server", "GET", "/v2", None), ("server", "GET", "/v2/", None),
               ("live", "GET", "/v2/health/live", None), ("ready", "GET", "/v2/health/ready", None),
               ("model", "GET", "/v2/models/synth", None), ("model", "GET", "/v2/models/synth/versions/1", None),
               ("ready", "GET", "/v2/models/synth/versions/1/ready", None),
               ("infer", "POST", "/v2/models/synth/infer", req), ("infer", "POST", "/v2/models/synth/versions/1/infer", req)]
    for kind, method, path, body in answers:
        st, b, _, _ = d.request(method, path, body, token=False)
        assert st == 200, (path, st, b)
        oip_check(kind, st, b)
    st, plain, _, _ = d.request("POST", "/v2/models/synth/infer", req, token=False)
    st, versioned, _, _ = d.request("POST", "/v2/models/synth/versions/1/infer", req, token=False)
    assert plain["outputs"] == versioned["outputs"], "the versioned route answers differently"
    # errors: each with the protocol's error string beside the problem's members
    errors = [("model", "GET", "/v2/models/synth/versions/2", None, 404, "MODEL_VERSION_NOT_FOUND"),
              ("ready", "GET", "/v2/models/synth/versions/7/ready", None, 404, "MODEL_VERSION_NOT_FOUND"),
              ("infer", "POST", "/v2/models/synth/versions/2/infer", req, 404, "MODEL_VERSION_NOT_FOUND"),
              ("model", "GET", "/v2/models/nope", None, 404, "MODEL_NOT_FOUND"),
              ("infer", "POST", "/v2/models/nope/versions/1/infer", req, 404, "MODEL_NOT_FOUND"),
              ("infer", "POST", "/v2/models/synth/infer", {"inputs": []}, 400, "INVALID_INFER_REQUEST")]
    for kind, method, path, body, status, code in errors:
        st, b, _, _ = d.request(method, path, body, token=False)
        problem(st, b, status, code)
        oip_check(kind, st, b)
        assert b["error"] == b["detail"], b

    # a small body asking for many images: refused before the images' tensors are allocated
    n = 20000
    big = {"inputs": [{"name": "image", "shape": [n, 1, 1, 3], "datatype": "UINT8", "data": [7] * (3 * n)}]}
    before = vm_hwm_kb(d.proc.pid)
    st, b, _, _ = d.request("POST", "/v2/models/synth/infer", big, token=False)
    problem(st, b, 413, "BATCH_TOO_LARGE")
    oip_check("infer", st, b)
    grown = vm_hwm_kb(d.proc.pid) - before
    # a 32 px model: 20000 images would be 20000 x 3 x 32 x 32 floats = 234 MiB; the parse of the body may
    # take a few MiB
    assert grown < 32 * 1024, "peak resident memory grew by %d KiB for a refused request" % grown


def lvvit_state_dict():
    """An LV-ViT made by the PyTorch reference with official state_dict names, and its inference score."""
    import torch
    import lvvit_ref as L
    import st_io
    torch.manual_seed(3)
    # LV-ViT-T's blocks (so the file alone tells num_heads and skip_lam, as for an official checkpoint),
    # at 32 px and 5 classes to keep the test fast
    cfg = L.preset("lvvit_t", img_size=32, num_classes=5, drop_path_rate=0.0)
    model = L.LVViT(cfg).eval()
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    path = os.path.join(TD.ARGS.work, "official.safetensors")
    st_io.save(path, sd)
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        cls, aux = model(torch.from_numpy(x))
        score = L.inference_score(cls, aux).numpy()
    return path, x, score


@check("upload an official state_dict")
def t_upload(d):
    try:
        path, x, want = lvvit_state_dict()
    except ImportError as e:
        print("  skipped: PyTorch reference unavailable (%s)" % e)
        return
    data = open(path, "rb").read()
    hdr = {"Content-Type": "application/octet-stream"}
    st, m, _, _ = d.request("PUT", "/api/v1/models/official", raw=data, headers=hdr)
    assert st == 201, (st, m)
    assert m["source"]["kind"] == "upload" and m["num_classes"] == 5 and m["config"]["embed_dim"] == 240, m
    req = {"inputs": [{"name": "input", "shape": [2, 3, 32, 32], "datatype": "FP32", "data": x.flatten().tolist()}]}
    st, b, _, _ = d.request("POST", "/v2/models/official/infer", req, token=False)
    assert st == 200, b
    got = np.array(b["outputs"][0]["data"], dtype=np.float64).reshape(2, 5)
    err = np.abs(got - want).max()
    print("  uploaded official state_dict: max |score - PyTorch| = %.2e" % err)
    assert err < 1e-4, err
    st, m, _, _ = d.request("PUT", "/api/v1/models/official?max_batch=2", raw=data, headers=hdr)
    assert st == 200 and m["batching"]["max_batch"] == 2, (st, m)  # replaced
    for name, bad in (("garbage", b"not safetensors at all"), ("truncated", data[:len(data) // 2]),
                      ("empty", b"")):
        st, b, _, _ = d.request("PUT", "/api/v1/models/broken", raw=bad, headers=hdr)
        assert st in (400, 422) and b["code"] in ("INVALID_MODEL", "EMPTY_BODY"), (name, st, b)
    # a state_dict missing a tensor
    import st_io
    sd, _ = st_io.load(path)
    sd.pop("aux_head.weight")
    p2 = os.path.join(TD.ARGS.work, "missing.safetensors")
    st_io.save(p2, sd)
    st, b, _, _ = d.request("PUT", "/api/v1/models/broken", raw=open(p2, "rb").read(), headers=hdr)
    problem(st, b, 422, "INVALID_MODEL")
    st, b, _, _ = d.request("PUT", "/api/v1/models/broken", raw=data, headers={"Content-Type": "image/jpeg"})
    problem(st, b, 415, "UNSUPPORTED_MEDIA_TYPE")
    st, b, _, _ = d.request("GET", "/api/v1/models/broken", token=False)
    problem(st, b, 404, "MODEL_NOT_FOUND")


def sanitized(binary):
    """True when the daemon was built with AddressSanitizer (its allocator ignores mallopt)."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    return "libasan" in out


def minor_faults(pid):
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])  # field 10, minflt


@check("predict requests reuse warm pages")
def t_warm_pages(_):
    # A fresh daemon serving lvvit_t (224 px, 1000 classes, as bench/serve_bench.py): each request
    # allocates about 1.6 MB (the body, the decoded photo, the resampler's rows, the model input).
    # glibc maps and unmaps blocks that size (its mmap threshold only rises when a mapped block of up
    # to 32 MiB is freed; the 34 MB upload is larger), faulting some 350 pages in again per request
    # (10-13 us each on a virtual machine: 4 ms of a 25 ms request); tokenlabd keeps them mapped
    # (engine/include/tokenlab/memtune.h). One keep-alive connection, as a client sending one request after another.
    if sanitized(TD.ARGS.bin):
        print("  skipped: AddressSanitizer's allocator ignores the malloc settings")
        return
    try:
        import torch
        import torchvision.io
        import lvvit_ref as L
        import st_io
    except ImportError as e:
        print("  skipped: PyTorch reference unavailable (%s)" % e)
        return
    torch.manual_seed(4)
    cfg = L.preset("lvvit_t", img_size=224, num_classes=1000, drop_path_rate=0.0)
    model = L.LVViT(cfg).eval()
    path = os.path.join(TD.ARGS.work, "lvvit_t.safetensors")
    st_io.save(path, {k: v.detach().numpy() for k, v in model.state_dict().items()})
    imgs = [open(p, "rb").read() for p in photos()]
    if not imgs:  # photo-sized JPEGs: 640x426 and 500x375 gradients
        for w, h in ((640, 426), (500, 375)):
            y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            rgb = torch.stack([(x * 255 // w), (y * 255 // h), ((x + y) % 256)]).to(torch.uint8)
            imgs.append(torchvision.io.encode_jpeg(rgb, quality=90).numpy().tobytes())
    work = os.path.join(TD.ARGS.work, "fresh")
    os.makedirs(os.path.join(work, "data"), exist_ok=True)
    d = TD.Daemon(work)
    d.start()
    try:
        st, m, _, _ = d.request("PUT", "/api/v1/models/lvvit-t", raw=open(path, "rb").read(),
                                headers={"Content-Type": "application/octet-stream"})
        assert st == 201 and m["input"]["size"] == 224, (st, m)
        conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
        hdr = {"Host": "127.0.0.1:%d" % d.port, "Content-Type": "image/jpeg"}

        def one(x):
            conn.request("POST", "/api/v1/models/lvvit-t/predict", body=x, headers=hdr)
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200, (r.status, body[:300])

        for x in imgs[:5]:
            one(x)
        f0 = minor_faults(d.proc.pid)
        n = 20
        for i in range(n):
            one(imgs[i % len(imgs)])
        per = (minor_faults(d.proc.pid) - f0) / n
        conn.close()
    finally:
        d.stop()
    print("  %.1f minor page faults per 224 px predict request after warm-up" % per)
    assert per < 20, per


@check("token inspection routes")
def t_samples(d):
    job = STATE["job"]
    st, s, _, _ = d.request("GET", "/api/v1/jobs/%d/samples" % job, token=False)
    assert st == 200, s
    assert s["grid"] == 4 and s["size"] == 32 and s["num_classes"] == 4, s
    splits = [x["split"] for x in s["samples"]]
    assert splits.count("val") == 4 and splits.count("train") == 4, splits
    assert all(x["target_kind"] == ("labelmap" if x["split"] == "train" else "class") for x in s["samples"]), s
    assert {x["label"] for x in s["samples"] if x["split"] == "val"} == {0, 1, 2, 3}, s["samples"]
    steps = s["steps"]
    assert len(steps) == 8 and [x["ema"] for x in steps] == [False, True] * 4, steps  # 4 evaluations, raw + EMA
    for x in s["samples"]:
        st, g, _, _ = d.request("GET", "/api/v1/jobs/%d/samples/%d" % (job, x["k"]), token=False)
        assert st == 200, g
        assert g["step"] == steps[-1]["step"] and g["ema"] is True, g
        for part in ("target", "pred"):
            assert len(g[part]["index"]) == 16 and len(g[part]["topk"]["index"]) == 48, g[part]
        if x["split"] == "val":
            assert g["target"]["index"] == [x["label"]] * 16 and g["target"]["score"] == [1] * 16, g["target"]
        assert abs(sum(t["score"] for t in g["pred"]["top5"]) - 1) < 1e-3, g["pred"]["top5"]
        st, img, r, raw = d.request("GET", "/api/v1/jobs/%d/samples/%d/image" % (job, x["k"]), token=False)
        assert st == 200 and r.getheader("Content-Type") == "image/jpeg" and raw[:2] == b"\xff\xd8"
        for kind in ("target", "pred"):
            st, _, r, raw = d.request("GET", "/api/v1/jobs/%d/samples/%d/heatmap.jpg?kind=%s" % (job, x["k"], kind),
                                      token=False)
            assert st == 200 and raw[:2] == b"\xff\xd8", (st, raw[:100])
    first = steps[0]["step"]
    st, g, _, _ = d.request("GET", "/api/v1/jobs/%d/samples/0?step=%d&ema=false" % (job, first), token=False)
    assert st == 200 and g["step"] == first and g["ema"] is False, g
    st, b, _, _ = d.request("GET", "/api/v1/jobs/%d/samples/0?step=999999" % job, token=False)
    problem(st, b, 404, "NOT_FOUND")
    st, b, _, _ = d.request("GET", "/api/v1/jobs/%d/samples/99" % job, token=False)
    problem(st, b, 404, "NOT_FOUND")
    st, b, _, _ = d.request("GET", "/api/v1/jobs/%d/samples/0/heatmap.jpg?kind=both" % job, token=False)
    problem(st, b, 400, "BAD_QUERY")
    st, b, _, _ = d.request("GET", "/api/v1/jobs/999999/samples", token=False)
    problem(st, b, 404, "NOT_FOUND")


@check("models survive a restart")
def t_restart(d):
    x = a_jpeg()
    st, before, _, _ = predict(d, "synth", x)
    assert st == 200
    assert d.stop() == 0
    d.start()
    deadline = time.time() + 60
    while time.time() < deadline:
        st, m, _, _ = d.request("GET", "/api/v1/models/synth", token=False)
        if st == 200 and m["state"] != "LOADING":
            break
        time.sleep(0.1)
    assert st == 200 and m["state"] == "READY", m
    st, after, _, _ = predict(d, "synth", x)
    assert st == 200 and after["predictions"] == before["predictions"], (before, after)
    st, r, _, _ = d.request("GET", "/v2/health/ready", token=False)
    assert st == 200 and r == {"ready": True}
    st, lst, _, _ = d.request("GET", "/api/v1/models", token=False)
    names = {m["name"] for m in lst["models"]}
    assert {"synth", "synth-last", "synth-step"} <= names, names


@check("delete a model")
def t_delete(d):
    st, _, _, _ = d.request("DELETE", "/api/v1/models/synth-step")
    assert st == 204
    st, b, _, _ = predict(d, "synth-step", a_jpeg())
    problem(st, b, 404, "MODEL_NOT_FOUND")
    st, b, _, _ = d.request("DELETE", "/api/v1/models/synth-step")
    problem(st, b, 404, "MODEL_NOT_FOUND")
    assert not os.path.exists(os.path.join(d.state, "models", "synth-step.safetensors"))
    st, b, _, _ = d.request("GET", "/metrics", token=False)
    assert st == 200


def prom_samples(text):
    """{(name, frozenset of label pairs): value} of a Prometheus text page."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$', line)
        assert m, "not a sample line: %r" % line
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def hist_ok(samples, name, labels):
    """The histogram's buckets are cumulative and end at its count; returns the count."""
    lab = set(labels.items())
    buckets = sorted(((float("inf") if dict(k[1])["le"] == "+Inf" else float(dict(k[1])["le"])), v)
                     for k, v in samples.items()
                     if k[0] == name + "_bucket" and lab <= set(k[1]) and len(set(k[1]) - lab) == 1)
    assert buckets, "no buckets of %s %s" % (name, labels)
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), "%s buckets not cumulative: %s" % (name, counts)
    count = samples[(name + "_count", frozenset(labels.items()))]
    assert buckets[-1][0] == float("inf") and counts[-1] == count, (name, buckets[-1], count)
    assert samples[(name + "_sum", frozenset(labels.items()))] >= 0
    return count


@check("Prometheus histograms and refusals by reason")
def t_prometheus(d):
    st, _, _, data = d.request("GET", "/metrics", token=False)
    assert st == 200
    s = prom_samples(data.decode())
    n = hist_ok(s, "tokenlab_http_request_duration_seconds",
                {"method": "POST", "route": "/api/v1/models/{name}/predict"})
    assert n >= 5, n
    assert hist_ok(s, "tokenlab_http_request_duration_seconds", {"method": "GET", "route": "/v2/models/{name}"}) >= 1
    assert hist_ok(s, "tokenlab_model_queue_seconds", {"model": "synth"}) >= 5
    assert hist_ok(s, "tokenlab_model_compute_seconds", {"model": "synth"}) >= 1
    assert hist_ok(s, "tokenlab_training_step_seconds", {}) >= 10
    for code, least in (("MODEL_NOT_FOUND", 2), ("BATCH_TOO_LARGE", 2), ("MODEL_VERSION_NOT_FOUND", 3)):
        got = s.get(("tokenlab_http_refused_total", frozenset({("code", code)})), 0)
        assert got >= least, "refused %s: %s, expected at least %d" % (code, got, least)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    TD.ARGS = ap.parse_args()
    shutil.rmtree(TD.ARGS.work, ignore_errors=True)
    os.makedirs(os.path.join(TD.ARGS.work, "data"))
    subprocess.run([TD.ARGS.bin, "synth", "--out", os.path.join(TD.ARGS.work, "data", "synth"), "--classes", "4",
                    "--train", "96", "--val", "32", "--size", "32"], check=True, stdout=subprocess.DEVNULL)
    if not photos():
        print("note: %s is absent; real-photo checks use synthetic JPEGs" % PHOTOS)
    d = TD.Daemon(TD.ARGS.work, extra=["--max-body", str(8 * 1024 * 1024)])
    return TD.run_checks(d, (t_train, t_register, t_register_bad, t_predict, t_predict_synth, t_multipart, t_bad_inputs,
                               t_batching, t_queue, t_kserve, t_oip, t_upload, t_warm_pages, t_samples, t_prometheus, t_restart, t_delete))


if __name__ == "__main__":
    sys.exit(main())
