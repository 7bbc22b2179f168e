#!/usr/bin/python3
"""End-to-end tests of annotate jobs and the label-map routes in tokenlabd serve:
the real daemon on a loopback port, a real SQLite file, real jobs on the
built-in synthetic data (whose exact token-label maps are the truth to check
the annotator's maps against).

usage: test_annotate.py --bin build/bin/tokenlabd --work DIR

Covers: annotate spec refusals at submission (422 with the JSON pointer), an
annotate job from a registered model followed to SUCCEEDED (progress, the
label map and its sidecar, one entry per image), agreement of the written maps
with the exact maps far above chance, an annotate job from a training job's
checkpoint, the label-map routes (list, keys, entry, image, heatmap and their
refusals), a corrupt image skipped and counted, and kill -9 in the middle of an
annotation: the job resumes after its last part and writes a file identical,
byte for byte, to an uninterrupted run's.
Prints `N passed, M failed` last; exits non-zero on any failure.
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import test_daemon as TD  # noqa: E402  (the Daemon class and helpers)

RESULTS = TD.RESULTS
check = TD.check
problem = TD.problem
STATE = {}


def annotate_spec(name, out, source, images="synth/train", extra=None):
    s = {"kind": "annotate", "name": name, "source": source, "data": {"images": images, "out": out},
         "annotate": {"topk": 3, "batch_size": 16}}
    if extra:
        s["annotate"].update(extra)
    return s


def submit(d, spec):
    st, b, _, _ = d.request("POST", "/api/v1/jobs", spec)
    assert st == 201, (st, b)
    return b["id"]


@check("train and register a teacher")
def t_teacher(d):
    s = TD.spec("teacher", epochs=20, extra_train={"ema_decay": 0.99, "lr": 2e-3, "eval_every_epochs": 10})
    jid = submit(d, s)
    j = d.wait_state(jid, ("SUCCEEDED", "FAILED"), timeout=300)
    assert j["state"] == "SUCCEEDED", j
    STATE["teacher_job"] = jid
    st, m, _, _ = d.request("POST", "/api/v1/models", {"name": "teacher", "job_id": jid})
    assert st == 201, m


@check("annotate spec refusals")
def t_refusals(d):
    bad = [
        (annotate_spec("x", "synth/a.tllm", {"model": "nope"}), "/source/model"),
        (annotate_spec("x", "synth/a.tllm", {"model": "teacher", "job_id": 1}), "/source"),
        (annotate_spec("x", "synth/a.tllm", {}), "/source"),
        (annotate_spec("x", "synth/a.tllm", {"job_id": 99999}), "/source/job_id"),
        (annotate_spec("x", "../a.tllm", {"model": "teacher"}), "/data/out"),
        (annotate_spec("x", "synth/a.bin", {"model": "teacher"}), "/data/out"),
        (annotate_spec("x", "nofolder/a.tllm", {"model": "teacher"}), "/data/out"),
        (annotate_spec("x", "synth/a.tllm", {"model": "teacher"}, images="synth/none"), "/data/images"),
        (annotate_spec("x", "synth/a.tllm", {"model": "teacher"}, extra={"topk": 0}), "/annotate/topk"),
        (annotate_spec("x", "synth/a.tllm", {"model": "teacher"}, extra={"colour": 1}), "/annotate/colour"),
    ]
    for spec, ptr in bad:
        st, b, _, _ = d.request("POST", "/api/v1/jobs", spec)
        assert st == 422, (spec, st, b)
        assert b.get("pointer") == ptr, "pointer %r, expected %r: %s" % (b.get("pointer"), ptr, b)


def entry(d, path, key, dataset=None):
    q = "/api/v1/labelmaps/entry?path=%s&key=%s" % (path, key) + ("&dataset=%s" % dataset if dataset else "")
    st, e, _, _ = d.request("GET", q, token=False)
    assert st == 200, (st, e)
    return e


@check("annotate from a registered model")
def t_annotate_model(d):
    jid = submit(d, annotate_spec("teacher maps", "synth/teacher.tllm", {"model": "teacher"}))
    j = d.wait_state(jid, ("SUCCEEDED", "FAILED"), timeout=300)
    assert j["state"] == "SUCCEEDED", j
    assert j["progress"]["step"] == j["progress"]["total_steps"] == 96, j["progress"]
    STATE["maps_job"] = jid
    st, lst, _, _ = d.request("GET", "/api/v1/labelmaps", token=False)
    assert st == 200, lst
    maps = {m["path"]: m for m in lst["labelmaps"]}
    m = maps.get("synth/teacher.tllm")
    assert m and m["dataset"] == "synth/train" and m["count"] == 96, (m, list(maps))
    assert m["num_classes"] == 4 and m["topk"] == 3 and m["h"] == 4 and m["w"] == 4, m
    assert maps["synth/train.tllm"]["dataset"] == "synth/train", maps["synth/train.tllm"]
    # the listing does not follow symbolic links out of the data root (inside ones are followed)
    outside = os.path.join(d.work, "outside")
    os.makedirs(outside, exist_ok=True)
    shutil.copy(os.path.join(d.data, "synth", "train.tllm"), os.path.join(outside, "secret.tllm"))
    os.symlink(outside, os.path.join(d.data, "linked-out"))
    os.symlink(os.path.join(outside, "secret.tllm"), os.path.join(d.data, "synth", "out.tllm"))
    os.symlink(os.path.join(d.data, "synth"), os.path.join(d.data, "linked-in"))
    try:
        st, lst, _, _ = d.request("GET", "/api/v1/labelmaps", token=False)
        paths = [m["path"] for m in lst["labelmaps"]]
        assert "linked-out/secret.tllm" not in paths and "synth/out.tllm" not in paths, paths
        assert "linked-in/train.tllm" in paths, paths
    finally:
        for p in ("linked-out", "synth/out.tllm", "linked-in"):
            os.unlink(os.path.join(d.data, p))
    # agreement of the teacher's maps with the exact maps of the synthetic pictures
    st, keys, _, _ = d.request("GET", "/api/v1/labelmaps/keys?path=synth/teacher.tllm&limit=1000", token=False)
    assert st == 200 and keys["count"] == 96 and len(keys["keys"]) == 96 and not keys["more"], keys
    agree = total = 0
    for k in keys["keys"]:
        ours, truth = entry(d, "synth/teacher.tllm", k), entry(d, "synth/train.tllm", k)
        assert ours["classes"] == ["disc", "square", "triangle", "ring"], ours["classes"]
        assert len(ours["top1"]["index"]) == 16 and len(ours["topk_logits"]["index"]) == 48
        agree += sum(a == b for a, b in zip(ours["top1"]["index"], truth["top1"]["index"]))
        total += 16
    print("  token agreement of the annotator's maps with the exact maps: %.3f (chance 0.25)" % (agree / total))
    assert agree / total > 0.4, agree / total  # 1.6x chance; 0.52 measured


@check("label-map routes")
def t_routes(d):
    st, keys, _, _ = d.request("GET", "/api/v1/labelmaps/keys?path=synth/teacher.tllm&prefix=c01_&limit=5", token=False)
    assert st == 200 and len(keys["keys"]) == 5 and all(k.startswith("c01_") for k in keys["keys"]), keys
    k = keys["keys"][0]
    st, _, r, raw = d.request("GET", "/api/v1/labelmaps/image?path=synth/teacher.tllm&key=%s" % k, token=False)
    assert st == 200 and r.getheader("Content-Type") == "image/jpeg" and raw[:2] == b"\xff\xd8"
    st, _, r, raw = d.request("GET", "/api/v1/labelmaps/heatmap.jpg?path=synth/teacher.tllm&key=%s" % k, token=False)
    assert st == 200 and raw[:2] == b"\xff\xd8"
    for q, status, code in (("/api/v1/labelmaps/entry?path=synth/teacher.tllm&key=nope.jpg", 404, "NOT_FOUND"),
                            ("/api/v1/labelmaps/entry?path=../etc/passwd.tllm&key=x", 404, "NOT_FOUND"),
                            ("/api/v1/labelmaps/entry?path=/etc/x.tllm&key=x", 404, "NOT_FOUND"),
                            ("/api/v1/labelmaps/entry?path=synth/train&key=x", 400, "BAD_QUERY"),
                            ("/api/v1/labelmaps/entry?key=x", 400, "BAD_QUERY"),
                            ("/api/v1/labelmaps/entry?path=synth/teacher.tllm", 400, "BAD_QUERY"),
                            ("/api/v1/labelmaps/keys?path=synth/teacher.tllm&limit=0", 400, "BAD_QUERY")):
        st, b, _, _ = d.request("GET", q, token=False)
        problem(st, b, status, code)
    # a file that is not a label map
    with open(os.path.join(TD.ARGS.work, "data", "synth", "junk.tllm"), "wb") as f:
        f.write(b"TLLMAP01" + b"\0" * 10)
    st, b, _, _ = d.request("GET", "/api/v1/labelmaps/entry?path=synth/junk.tllm&key=x", token=False)
    problem(st, b, 422, "INVALID_LABELMAP")
    st, lst, _, _ = d.request("GET", "/api/v1/labelmaps", token=False)
    junk = [m for m in lst["labelmaps"] if m["path"] == "synth/junk.tllm"]
    assert junk and junk[0]["error"], junk


@check("annotate from a job's checkpoint, corrupt image")
def t_annotate_job(d):
    # a corrupt picture in a copy of the validation set
    src = os.path.join(TD.ARGS.work, "data", "synth", "val")
    dst = os.path.join(TD.ARGS.work, "data", "valcopy")
    shutil.copytree(src, dst)
    folder = sorted(f for f in os.listdir(dst) if os.path.isdir(os.path.join(dst, f)))[0]
    victim = sorted(os.listdir(os.path.join(dst, folder)))[0]
    with open(os.path.join(dst, folder, victim), "r+b") as f:
        f.truncate(100)
    jid = submit(d, annotate_spec("from job", "valcopy.tllm", {"job_id": STATE["teacher_job"], "checkpoint": "last",
                                                                "ema": False}, images="valcopy"))
    j = d.wait_state(jid, ("SUCCEEDED", "FAILED"), timeout=300)
    assert j["state"] == "SUCCEEDED", j
    st, lst, _, _ = d.request("GET", "/api/v1/labelmaps", token=False)
    m = [x for x in lst["labelmaps"] if x["path"] == "valcopy.tllm"][0]
    assert m["count"] == 31 and m["dataset"] == "valcopy", m
    st, s, _, _ = d.request("GET", "/api/v1/jobs/%d/metrics/skipped_images" % jid, token=False)
    assert st == 200 and s["points"][-1]["value"] == 1, s
    st, log, _, _ = d.request("GET", "/api/v1/jobs/%d/logs" % jid, token=False)
    assert victim in log["text"], log


@check("kill -9 mid-annotation resumes to an identical file")
def t_resume(d):
    big = os.path.join(TD.ARGS.work, "data", "big")
    subprocess.run([TD.ARGS.bin, "synth", "--out", big, "--classes", "4", "--train", "1500", "--val", "8", "--size",
                    "64", "--seed", "5"], check=True, stdout=subprocess.DEVNULL)
    spec = lambda out: annotate_spec(out, out, {"model": "teacher"}, images="big/train",  # noqa: E731
                                     extra={"size": 64, "batch_size": 16, "part_images": 64})
    jid = submit(d, spec("big/once.tllm"))
    j = d.wait_state(jid, ("SUCCEEDED", "FAILED"), timeout=300)
    assert j["state"] == "SUCCEEDED", j
    jid = submit(d, spec("big/resumed.tllm"))
    deadline = time.time() + 120
    while time.time() < deadline and d.job(jid)["progress"]["step"] < 256:
        time.sleep(0.05)
    step = d.job(jid)["progress"]["step"]
    assert 256 <= step < 1500, "the annotation went too fast to interrupt (%d of 1500)" % step
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    d.proc = None
    d.start()
    j = d.wait_state(jid, ("SUCCEEDED", "FAILED"), timeout=300)
    assert j["state"] == "SUCCEEDED" and j["attempt"] == 2, j
    st, log, _, _ = d.request("GET", "/api/v1/jobs/%d/logs" % jid, token=False)
    assert "resuming after" in log["text"], log["text"]
    a = open(os.path.join(big, "once.tllm"), "rb").read()
    b = open(os.path.join(big, "resumed.tllm"), "rb").read()
    print("  killed at %d of 1500 images; resumed file %d bytes, identical: %s" % (step, len(b), a == b))
    assert a == b


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    TD.ARGS = ap.parse_args()
    shutil.rmtree(TD.ARGS.work, ignore_errors=True)
    os.makedirs(os.path.join(TD.ARGS.work, "data"))
    subprocess.run([TD.ARGS.bin, "synth", "--out", os.path.join(TD.ARGS.work, "data", "synth"), "--classes", "4",
                    "--train", "96", "--val", "32", "--size", "32"], check=True, stdout=subprocess.DEVNULL)
    d = TD.Daemon(TD.ARGS.work)
    return TD.run_checks(d, (t_teacher, t_refusals, t_annotate_model, t_routes, t_annotate_job, t_resume))


if __name__ == "__main__":
    sys.exit(main())
