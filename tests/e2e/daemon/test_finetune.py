#!/usr/bin/python3
"""End-to-end tests of fine-tuning (model.init, issue 15) in tokenlabd serve:
the real daemon on a loopback port, the built-in synthetic data, a training
job fine-tuned from another job's checkpoint and one fine-tuned from an
LV-ViT state_dict made by the PyTorch reference (tests/parity/lvvit_ref.py)
and uploaded as a model.

usage: test_finetune.py --bin build/bin/tokenlabd --work DIR

Covers: a refusal at submit (422 at /model/init/..., nothing queued); a job
started from a job's best checkpoint (Job.init before and after loading, the
source's step, the step-0 evaluation of the loaded weights, the log line);
a job started from an uploaded model at another input size and class count
(head reinit, position embedding resampled); Model.lineage of models
registered from both (job -> job, job -> model).
The uploaded state_dict is made by the PyTorch reference (Debian's
python3-torch, which the test command installs).
Prints `N passed, M failed` last; exits non-zero on any failure.
"""
import argparse
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "parity"))
import test_daemon as TD  # noqa: E402  (the Daemon class and helpers)

RESULTS = TD.RESULTS
check = TD.check
problem = TD.problem
SHARED = {}


def submit(d, s):
    return d.request("POST", "/api/v1/jobs", s)


def finetune_spec(name, init, epochs=1, **model):
    s = TD.spec(name, epochs=epochs)
    s["model"] = dict(model, init=init)
    return s


def step0(d, jid):
    st, b, _, _ = d.request("GET", "/api/v1/jobs/%d/metrics/top1" % jid)
    assert st == 200, (st, b)
    pts = b.get("points") or []
    assert pts and pts[0]["step"] == 0, "no step-0 evaluation: %s" % b
    return pts[0]["last"] if "last" in pts[0] else pts[0].get("value")


def job_count(d):
    st, b, _, _ = d.request("GET", "/api/v1/jobs?limit=200")
    return len(b["jobs"])


def register(d, name, jid, checkpoint="best"):
    st, m, _, _ = d.request("POST", "/api/v1/models", {"name": name, "job_id": jid, "checkpoint": checkpoint})
    assert st == 201, (st, m)
    st, m, _, _ = d.request("GET", "/api/v1/models/%s" % name, token=False)
    assert st == 200, (st, m)
    return m


@check("fine-tune from a job's checkpoint")
def t_from_job(d):
    st, j, _, _ = submit(d, TD.spec("ft-source", epochs=2))
    assert st == 201, j
    src = d.wait_state(j["id"], {"SUCCEEDED", "FAILED"}, timeout=300)
    assert src["state"] == "SUCCEEDED", src
    n = job_count(d)
    st, b, _, _ = submit(d, finetune_spec("ft-bad", {"job_id": src["id"], "checkpoint": "99999"}))
    problem(st, b, 422, "SPEC_INVALID", "/model/init/checkpoint")
    assert job_count(d) == n
    st, j, _, _ = submit(d, finetune_spec("ft-from-job", {"job_id": src["id"]}))
    assert st == 201, j
    assert j["init"] == {"job_id": src["id"], "checkpoint": "best", "step": None, "ema": None, "head": None,
                         "classes_matched": None, "pos_embed": None, "loaded": False} or j["init"]["loaded"], j["init"]
    ft = d.wait_state(j["id"], {"SUCCEEDED", "FAILED"}, timeout=300)
    assert ft["state"] == "SUCCEEDED", ft
    init = ft["init"]
    st, ck, _, _ = d.request("GET", "/api/v1/jobs/%d/checkpoints" % src["id"])
    best = [c for c in ck["checkpoints"] if c["kind"] == "best"]
    assert init["loaded"] and init["job_id"] == src["id"] and init["checkpoint"] == "best", init
    assert best and init["step"] == best[0]["step"], (init, best)
    assert init["head"] == "keep" and init["pos_embed"] is None, init
    v = step0(d, ft["id"])
    print("  step-0 top1 of the loaded weights: %s" % v)
    st, log, _, _ = d.request("GET", "/api/v1/jobs/%d/logs" % ft["id"])
    assert "started from job %d" % src["id"] in log["text"], log
    m = register(d, "ft-job-model", ft["id"])
    assert [x.get("job") for x in m["lineage"]] == [ft["id"], src["id"]], m["lineage"]
    SHARED["src"] = src["id"]


@check("fine-tune from an uploaded state_dict")
def t_from_upload(d):
    import test_serving as TS
    path, _, _ = TS.lvvit_state_dict()  # LV-ViT-T blocks, 32 px (grid 2), 5 classes
    st, m, _, _ = d.request("PUT", "/api/v1/models/official", raw=open(path, "rb").read(),
                            headers={"Content-Type": "application/octet-stream"})
    assert st == 201, (st, m)
    # 4 classes instead of 5: fresh heads; 48 px: the position embedding goes from 2x2 to 3x3
    st, j, _, _ = submit(d, finetune_spec("ft-from-upload", {"model": "official"}, img_size=48, num_classes=4))
    assert st == 201, j
    ft = d.wait_state(j["id"], {"SUCCEEDED", "FAILED"}, timeout=600)
    assert ft["state"] == "SUCCEEDED", ft
    init = ft["init"]
    assert init["loaded"] and init["model"] == "official" and init["head"] == "reinit", init
    assert init["pos_embed"] == {"from": 2, "to": 3}, init
    step0(d, ft["id"])
    m = register(d, "ft-upload-model", ft["id"])
    assert m["lineage"][0]["job"] == ft["id"] and m["lineage"][-1].get("model") == "official", m["lineage"]
    assert m["config"]["embed_dim"] == 240 and m["config"]["img_size"] == 48, m["config"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    TD.ARGS = ap.parse_args()
    shutil.rmtree(TD.ARGS.work, ignore_errors=True)
    os.makedirs(os.path.join(TD.ARGS.work, "data"))
    subprocess.run([TD.ARGS.bin, "synth", "--out", os.path.join(TD.ARGS.work, "data", "synth"), "--classes", "4",
                    "--train", "96", "--val", "32", "--size", "32"], check=True, stdout=subprocess.DEVNULL)
    d = TD.Daemon(TD.ARGS.work, extra=["--max-body", str(64 * 1024 * 1024)])
    return TD.run_checks(d, (t_from_job, t_from_upload))


if __name__ == "__main__":
    sys.exit(main())
