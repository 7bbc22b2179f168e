#!/usr/bin/python3
"""Crashes at random points: kills tokenlabd with SIGKILL again and again while it
trains, annotates and serves, and checks after every restart that nothing was
lost or corrupted.

usage: bench/soak.py --bin build/bin/tokenlabd [--kills 50] [--min 1.5] [--max 6] [--work DIR]

Before the soak a small job is trained and registered as model "teacher".
Then an annotate job with the teacher and three training jobs (checkpoints
four times an epoch) are queued, in that order, a client sends predict requests to the
teacher all along, and the daemon is killed with SIGKILL after a random
time in [--min, --max] seconds, --kills times, restarted at once each time.
After each restart, once the daemon answers:
  - every job's loss metric holds each step at most once, steps 1..k with no
    gap (a step after the last checkpoint is dropped at the restart);
  - every checkpoint the store lists exists and is a whole safetensors file
    (its header's offsets end at the file's size);
  - the teacher model is listed and its file whole; every label map the
    daemon lists opens (no "error").
At the end the daemon runs undisturbed until every job has ended; each must
be SUCCEEDED with its steps exactly 1..total. Prints a JSON summary and exits
non-zero on any violation. Standard library only.
"""
import argparse
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e", "daemon"))
import test_daemon as TD  # noqa: E402  (the Daemon class)

VIOLATIONS = []


def violation(msg):
    VIOLATIONS.append(msg)
    print("VIOLATION: " + msg, flush=True)


def safetensors_whole(path):
    """1 when the file's header parses and its data offsets end exactly at the file's size."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            hdr = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in hdr.items() if k != "__metadata__"), default=0)
        return 8 + n + end == size
    except Exception:  # noqa: BLE001 (any failure to read is a broken file)
        return False


def wait_ready(d, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            st, _, _, _ = d.request("GET", "/healthz", token=False)
            if st == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the daemon did not answer after a restart")


def check_state(d, jobs, final=False):
    for jid in jobs:
        st, m, _, _ = d.request("GET", "/api/v1/jobs/%d/metrics/loss?max_points=100000" % jid)
        steps = [p["step"] for p in m.get("points", [])] if st == 200 else []
        if steps != list(range(1, len(steps) + 1)):
            violation("job %d: loss steps are not 1..k once each: %s" % (jid, steps[:5] + ["..."] + steps[-5:]))
        st, c, _, _ = d.request("GET", "/api/v1/jobs/%d/checkpoints" % jid)
        for ck in (c or {}).get("checkpoints", []):
            if ck.get("path") and os.path.exists(ck["path"]) and not safetensors_whole(ck["path"]):
                violation("job %d: checkpoint %s is not whole" % (jid, ck["path"]))
        if final:
            j = d.job(jid)
            if j["state"] != "SUCCEEDED":
                violation("job %d ended %s (%s)" % (jid, j["state"], j.get("state_message")))
            elif j["spec"].get("kind") == "train" and steps != list(range(1, j["progress"]["total_steps"] + 1)):
                violation("job %d: %d loss points for %d steps" % (jid, len(steps), j["progress"]["total_steps"]))
    st, m, _, _ = d.request("GET", "/api/v1/models/teacher", token=False)
    if st != 200:
        violation("the teacher model is gone (%s)" % st)
    elif not safetensors_whole(os.path.join(d.state, "models", "teacher.safetensors")):
        violation("the teacher model's file is not whole")
    st, lst, _, _ = d.request("GET", "/api/v1/labelmaps", token=False)
    for lm in (lst or {}).get("labelmaps", []):
        if lm.get("error"):
            violation("label map %s does not open: %s" % (lm["path"], lm["error"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--min", type=float, default=1.5)
    ap.add_argument("--max", type=float, default=6.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    random.seed(a.seed)
    work = a.work or tempfile.mkdtemp(prefix="tl-soak.")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    TD.ARGS = argparse.Namespace(bin=os.path.abspath(a.bin), work=work)
    subprocess.run([TD.ARGS.bin, "synth", "--out", os.path.join(work, "data", "synth"), "--classes", "4",
                    "--train", "256", "--val", "32", "--size", "32"], check=True, stdout=subprocess.DEVNULL)
    d = TD.Daemon(work)
    d.start()
    st, j, _, _ = d.request("POST", "/api/v1/jobs", body=TD.spec("teacher", epochs=2))
    d.wait_state(j["id"], {"SUCCEEDED"}, timeout=300)
    st, m, _, _ = d.request("POST", "/api/v1/models", body={"name": "teacher", "job_id": j["id"]})
    assert st == 201, m
    jobs = []
    # the annotate job first, so that kills land on it as well as on the training jobs
    st, ann, _, _ = d.request("POST", "/api/v1/jobs", body={
        "kind": "annotate", "name": "soak maps", "source": {"model": "teacher"},
        "data": {"images": "synth/train", "out": "synth/soak.tllm"}, "annotate": {"batch_size": 4, "topk": 3, "size": 160, "part_images": 32}})  # slow enough to be killed; 8 parts
    assert st == 201, ann
    jobs.append(ann["id"])
    for i in range(3):
        st, jj, _, _ = d.request("POST", "/api/v1/jobs", body=TD.spec("soak %d" % i, epochs=100, ckpt=0.25))
        assert st == 201, jj
        jobs.append(jj["id"])

    stop = threading.Event()
    served = {"ok": 0, "failed": 0}
    jpeg = None
    for root, _, files in os.walk(os.path.join(work, "data", "synth", "train")):
        for f in sorted(files):
            if f.endswith(".jpg") and jpeg is None:
                with open(os.path.join(root, f), "rb") as fh:
                    jpeg = fh.read()

    def client():
        while not stop.is_set():
            try:
                st, _, _, _ = d.request("POST", "/api/v1/models/teacher/predict", raw=jpeg,
                                        headers={"Content-Type": "image/jpeg"}, token=False)
                served["ok" if st == 200 else "failed"] += 1
            except Exception:  # noqa: BLE001 (the daemon is down while it restarts)
                served["failed"] += 1
                time.sleep(0.05)

    th = threading.Thread(target=client, daemon=True)
    th.start()
    t0 = time.time()
    for k in range(a.kills):
        time.sleep(random.uniform(a.min, a.max))
        d.stop(signal.SIGKILL)
        d.start()
        wait_ready(d)
        check_state(d, jobs)
    stop.set()
    th.join(timeout=10)
    deadline = time.time() + 900
    while time.time() < deadline and any(d.job(x)["state"] not in ("SUCCEEDED", "FAILED", "CANCELLED") for x in jobs):
        time.sleep(1)
    check_state(d, jobs, final=True)
    summary = {"kills": a.kills, "soak_seconds": round(time.time() - t0, 1),
               "jobs": {str(x): {"state": d.job(x)["state"], "attempts": d.job(x)["attempt"]} for x in jobs},
               "predict_ok": served["ok"], "predict_failed_while_down": served["failed"],
               "violations": len(VIOLATIONS)}
    d.stop()
    print(json.dumps(summary))
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if VIOLATIONS else 0)


if __name__ == "__main__":
    main()
