#!/usr/bin/python3
"""End-to-end tests of tokenlabd serve: the real daemon on a loopback port,
a real SQLite file, real training jobs on the built-in synthetic data.

usage: test_daemon.py --bin build/bin/tokenlabd --work DIR

Covers: health/info/openapi/metrics, authentication (401/403), the Host
check, bad specs and bodies (400/413/415/422 with the field's JSON pointer),
a job followed through Server-Sent Events to SUCCEEDED with metrics, logs
and checkpoints, idempotent submits, cancel and delete, SIGTERM (running
jobs checkpoint and return to QUEUED), and kill -9 in the middle of a job
(it resumes as attempt 2 and no metric step is lost or duplicated).
Prints `N passed, M failed` last; exits non-zero on any failure.
"""
import argparse
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback

ARGS = None
RESULTS = []


class Daemon:
    def __init__(self, work, extra=()):
        self.work = work
        self.state = os.path.join(work, "state")
        self.data = os.path.join(work, "data")
        self.extra = list(extra)
        self.proc = None
        self.port = None
        self.token = None

    def start(self):
        log = open(os.path.join(self.work, "daemon.log"), "ab")
        self.proc = subprocess.Popen(
            [ARGS.bin, "serve", "--port", "0", "--state", self.state, "--data-root", self.data,
             "--threads-per-job", "2"] + self.extra,
            stdout=subprocess.PIPE, stderr=log)
        deadline = time.time() + 30
        while time.time() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                raise RuntimeError("daemon exited during start-up (see daemon.log)")
            m = re.search(r"listening on http://[^ ]*:(\d+)/", line)  # any --bind; requests go to 127.0.0.1
            if m:
                self.port = int(m.group(1))
                break
        if not self.port:
            raise RuntimeError("daemon did not report its port")
        with open(os.path.join(self.state, "token")) as f:
            self.token = f.read().strip()

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            rc = self.proc.wait(timeout=timeout)
        else:
            rc = self.proc.returncode if self.proc else None
        self.proc = None
        return rc

    def request(self, method, path, body=None, headers=None, token=True, raw=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        h = {"Host": "127.0.0.1:%d" % self.port}
        if token:
            h["Authorization"] = "Bearer " + (self.token if token is True else token)
        if body is not None:
            raw = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        if headers:
            h.update(headers)
        conn.request(method, path, body=raw, headers=h)
        r = conn.getresponse()
        data = r.read()
        conn.close()
        ctype = r.getheader("Content-Type", "")
        parsed = None
        if "json" in ctype and data:
            parsed = json.loads(data)
        return r.status, parsed, r, data

    def job(self, jid):
        st, j, _, _ = self.request("GET", "/api/v1/jobs/%d" % jid)
        assert st == 200, (st, j)
        return j

    def wait_state(self, jid, states, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            j = self.job(jid)
            if j["state"] in states:
                return j
            time.sleep(0.2)
        raise AssertionError("job %d did not reach %s: %s" % (jid, states, self.job(jid)))


def spec(name, epochs=3, ckpt=1, extra_train=None):
    s = {"kind": "train", "name": name,
         "model": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
                   "mlp_ratio": 2, "stem_channels": 8, "skip_lam": 1.0, "num_classes": 4, "drop_path_rate": 0.0},
         "data": {"train": "synth/train", "val": "synth/val", "label_maps": "synth/train.tllm"},
         "train": {"epochs": epochs, "batch_size": 16, "warmup_epochs": 0, "eval_every_epochs": 1,
                   "checkpoint_every_epochs": ckpt, "cache_mb": 16, "loader_threads": 1}}
    if extra_train:
        s["train"].update(extra_train)
    return s


def check(name):
    def deco(fn):
        def run(d):
            t0 = time.time()
            try:
                fn(d)
                RESULTS.append((name, True, ""))
                print("PASS %-28s %.1fs" % (name, time.time() - t0), flush=True)
            except Exception as e:  # noqa: BLE001 - report every failure and continue
                RESULTS.append((name, False, str(e)))
                print("FAIL %-28s %s" % (name, e), flush=True)
                traceback.print_exc()
        run.__name__ = fn.__name__
        return run
    return deco


def problem(st, body, status, code, pointer=None):
    assert st == status, "status %s, expected %s: %s" % (st, status, body)
    assert body and body.get("code") == code, "code %s, expected %s" % (body, code)
    assert body.get("status") == status and body.get("detail")
    if pointer is not None:
        assert body.get("pointer") == pointer, "pointer %r, expected %r" % (body.get("pointer"), pointer)


@check("health, info, openapi")
def t_health(d):
    st, b, _, _ = d.request("GET", "/healthz", token=False)
    assert st == 200 and b["status"] == "ok"
    st, b, _, _ = d.request("GET", "/readyz", token=False)
    assert st == 200
    st, b, _, _ = d.request("GET", "/api/v1/info", token=False)
    assert st == 200 and b["version"] and "blas" in b and "limits" in b
    st, b, _, _ = d.request("GET", "/api/v1/openapi.json", token=False)
    assert st == 200 and b["openapi"].startswith("3.")
    st, _, r, data = d.request("GET", "/metrics", token=False)
    assert st == 200 and b"tokenlab_jobs{state=\"QUEUED\"}" in data and b"tokenlab_queue_depth" in data


@check("auth and host check")
def t_auth(d):
    st, b, r, _ = d.request("POST", "/api/v1/jobs", body=spec("x"), token=False)
    problem(st, b, 401, "UNAUTHENTICATED")
    assert "Bearer" in (r.getheader("WWW-Authenticate") or "")
    st, b, _, _ = d.request("POST", "/api/v1/jobs", body=spec("x"), token="wrong-token-0123456789")
    problem(st, b, 403, "FORBIDDEN")
    st, b, _, _ = d.request("GET", "/api/v1/jobs", headers={"Host": "evil.example"}, token=False)
    problem(st, b, 403, "HOST_NOT_ALLOWED")
    st, b, _, _ = d.request("GET", "/api/v1/jobs", headers={"Host": "localhost:%d" % d.port}, token=False)
    assert st == 200


@check("bad specs and bodies")
def t_bad(d):
    st, b, _, _ = d.request("POST", "/api/v1/jobs", raw=b"{not json", headers={"Content-Type": "application/json"})
    problem(st, b, 400, "BAD_JSON")
    s = spec("bad")
    s["train"]["lr"] = "fast"
    st, b, _, _ = d.request("POST", "/api/v1/jobs", body=s)
    problem(st, b, 422, "SPEC_INVALID", "/train/lr")
    s = spec("bad")
    s["train"]["learning_rate"] = 1
    st, b, _, _ = d.request("POST", "/api/v1/jobs", body=s)
    problem(st, b, 422, "SPEC_INVALID", "/train/learning_rate")
    s = spec("bad")
    s["data"]["train"] = "../outside"
    st, b, _, _ = d.request("POST", "/api/v1/jobs", body=s)
    problem(st, b, 422, "SPEC_INVALID", "/data/train")
    s = spec("bad")
    s["data"]["train"] = "/etc"
    st, b, _, _ = d.request("POST", "/api/v1/jobs", body=s)
    problem(st, b, 422, "SPEC_INVALID", "/data/train")
    st, b, _, _ = d.request("POST", "/api/v1/jobs", raw=json.dumps(spec("x")).encode(),
                            headers={"Content-Type": "text/plain"})
    problem(st, b, 415, "UNSUPPORTED_MEDIA_TYPE")
    big = b"{" + b" " * (17 << 20) + b"}"
    try:
        st, b, _, _ = d.request("POST", "/api/v1/jobs", raw=big, headers={"Content-Type": "application/json"})
        problem(st, b, 413, "BODY_TOO_LARGE")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may close the connection after answering 413 before the body is sent
    st, b, _, _ = d.request("GET", "/api/v1/jobs/999999")
    problem(st, b, 404, "NOT_FOUND")
    st, b, _, _ = d.request("GET", "/api/v1/jobs?state=BOGUS")
    problem(st, b, 400, "BAD_QUERY")


def follow_events(d, jid, timeout=180, last_id=None):
    """Reads the job's SSE stream until it ends; returns the events."""
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=timeout)
    h = {"Host": "127.0.0.1:%d" % d.port}
    if last_id is not None:
        h["Last-Event-ID"] = str(last_id)
    conn.request("GET", "/api/v1/jobs/%d/events" % jid, headers=h)
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Content-Type").startswith("text/event-stream")
    events, cur = [], {}
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = r.readline()
        if not line:
            break
        line = line.decode().rstrip("\n")
        if not line:
            if cur:
                events.append(cur)
            cur = {}
        elif line.startswith(":"):
            continue
        else:
            k, _, v = line.partition(": ")
            cur[k] = v
    conn.close()
    return events


@check("job runs to SUCCEEDED")
def t_job(d):
    st, j, r, _ = d.request("POST", "/api/v1/jobs", body=spec("ok", epochs=3))
    assert st == 201, (st, j)
    jid = j["id"]
    assert r.getheader("Location") == "/api/v1/jobs/%d" % jid
    assert j["state"] in ("QUEUED", "RUNNING") and j["spec"]["name"] == "ok"
    evs = follow_events(d, jid)
    types = [e.get("event") for e in evs]
    assert "progress" in types and "eval" in types and "checkpoint" in types, types
    states = [json.loads(e["data"])["state"] for e in evs if e.get("event") == "state"]
    assert states and states[-1] == "SUCCEEDED", states
    ids = [int(e["id"]) for e in evs if "id" in e]
    assert ids == sorted(ids)
    # Last-Event-ID: a reconnecting client gets exactly the events after the one it names
    mid = ids[len(ids) // 2]
    again = follow_events(d, jid, last_id=mid)
    again_ids = [int(e["id"]) for e in again if "id" in e]
    assert again_ids and again_ids == [i for i in ids if i > mid], (mid, again_ids[:5])
    assert "snapshot" not in [e.get("event") for e in again]
    j = d.job(jid)
    assert j["state"] == "SUCCEEDED" and j["started_ms"] and j["ended_ms"] >= j["started_ms"]
    hist = [(h["from"], h["to"]) for h in j["state_history"]]
    assert hist == [(None, "QUEUED"), ("QUEUED", "RUNNING"), ("RUNNING", "SUCCEEDED")], hist
    assert j["progress"]["step"] == j["progress"]["total_steps"] == 18
    assert "loss" in j["latest_metrics"] and "top1" in j["latest_metrics"]
    st, m, _, _ = d.request("GET", "/api/v1/jobs/%d/metrics" % jid)
    names = {x["name"]: x for x in m["metrics"]}
    assert names["loss"]["count"] == 18 and names["loss"]["last_step"] == 18
    st, s, _, _ = d.request("GET", "/api/v1/jobs/%d/metrics/loss" % jid)
    assert st == 200 and not s["bucketed"] and [p["step"] for p in s["points"]] == list(range(1, 19))
    st, s, _, _ = d.request("GET", "/api/v1/jobs/%d/metrics/loss?max_points=5" % jid)
    assert s["bucketed"] and len(s["buckets"]) <= 5 and sum(b["count"] for b in s["buckets"]) == 18
    for b in s["buckets"]:
        assert b["min"] <= b["last"] <= b["max"]
    st, c, _, _ = d.request("GET", "/api/v1/jobs/%d/checkpoints" % jid)
    kinds = {x["kind"] for x in c["checkpoints"]}
    assert kinds == {"last", "best"}, c
    st, lg, _, _ = d.request("GET", "/api/v1/jobs/%d/logs?limit_bytes=10" % jid)
    assert st == 200 and lg["next_offset"] == lg["offset"] + len(lg["text"].encode())
    st, lst, _, _ = d.request("GET", "/api/v1/jobs?state=SUCCEEDED")
    assert any(x["id"] == jid for x in lst["jobs"])


@check("idempotent submit")
def t_idem(d):
    h = {"Idempotency-Key": "abc-123"}
    st1, j1, _, _ = d.request("POST", "/api/v1/jobs", body=spec("idem", epochs=1), headers=h)
    st2, j2, _, _ = d.request("POST", "/api/v1/jobs", body=spec("idem", epochs=1), headers=h)
    assert st1 == 201 and st2 == 200 and j1["id"] == j2["id"]
    d.wait_state(j1["id"], {"SUCCEEDED"})
    # a spec padded with a megabyte of whitespace is stored and served in canonical form
    raw = json.dumps(spec("padded", epochs=1), indent=1).replace("\n", "\n" + " " * 4096).encode()
    assert len(raw) > 100000, len(raw)
    st, j, _, _ = d.request("POST", "/api/v1/jobs", raw=raw, headers={"Content-Type": "application/json"})
    assert st == 201, j
    st, _, _, data = d.request("GET", "/api/v1/jobs/%d" % j["id"])
    assert st == 200 and len(data) < 8192, "GET of a padded job is %d bytes" % len(data)
    assert json.loads(data)["spec"] == spec("padded", epochs=1)
    # a document of many values is refused before it is parsed
    st, b, _, _ = d.request("POST", "/api/v1/jobs", raw=("[" + ",".join(["0"] * 100000) + "]").encode(),
                            headers={"Content-Type": "application/json"})
    problem(st, b, 422, "SPEC_INVALID")
    assert "JSON values" in b["detail"], b


@check("cancel and delete")
def t_cancel(d):
    st, j, _, _ = d.request("POST", "/api/v1/jobs", body=spec("long", epochs=400))
    jid = j["id"]
    d.wait_state(jid, {"RUNNING"})
    deadline = time.time() + 60
    while d.job(jid)["progress"]["step"] < 3 and time.time() < deadline:
        time.sleep(0.1)
    st, b, _, _ = d.request("DELETE", "/api/v1/jobs/%d" % jid)
    problem(st, b, 409, "INVALID_STATE")
    st, j, _, _ = d.request("POST", "/api/v1/jobs/%d/cancel" % jid)
    assert st == 202 and j["state"] in ("CANCELLING", "CANCELLED"), j
    j = d.wait_state(jid, {"CANCELLED"})
    assert j["state_reason"] == "USER_CANCEL"
    st, c, _, _ = d.request("GET", "/api/v1/jobs/%d/checkpoints" % jid)
    assert any(x["kind"] == "last" for x in c["checkpoints"]), c
    st, b, _, _ = d.request("POST", "/api/v1/jobs/%d/cancel" % jid)
    problem(st, b, 409, "INVALID_STATE")
    run_dir = os.path.join(d.state, "runs", str(jid))
    assert os.path.isdir(run_dir)
    st, _, _, _ = d.request("DELETE", "/api/v1/jobs/%d" % jid)
    assert st == 204
    assert not os.path.exists(run_dir)
    st, b, _, _ = d.request("GET", "/api/v1/jobs/%d" % jid)
    problem(st, b, 404, "NOT_FOUND")


def loss_steps(d, jid):
    st, s, _, _ = d.request("GET", "/api/v1/jobs/%d/metrics/loss?max_points=100000" % jid)
    return [p["step"] for p in s["points"]]


@check("SIGTERM requeues, restart resumes")
def t_sigterm(d):
    st, j, _, _ = d.request("POST", "/api/v1/jobs", body=spec("term", epochs=30))
    jid = j["id"]
    d.wait_state(jid, {"RUNNING"})
    deadline = time.time() + 60
    while d.job(jid)["progress"]["step"] < 8 and time.time() < deadline:
        time.sleep(0.1)
    rc = d.stop(signal.SIGTERM)
    assert rc == 0, "exit code %s" % rc
    d.start()
    j = d.job(jid)
    assert j["state"] in ("QUEUED", "RUNNING", "SUCCEEDED"), j
    j = d.wait_state(jid, {"SUCCEEDED"}, timeout=240)
    steps = loss_steps(d, jid)
    assert steps == list(range(1, j["progress"]["total_steps"] + 1)), "steps lost or repeated"


@check("kill -9 recovery")
def t_kill(d):
    st, j, _, _ = d.request("POST", "/api/v1/jobs", body=spec("kill", epochs=40))
    jid = j["id"]
    d.wait_state(jid, {"RUNNING"})
    deadline = time.time() + 120
    while time.time() < deadline:
        st, c, _, _ = d.request("GET", "/api/v1/jobs/%d/checkpoints" % jid)
        if any(x["kind"] == "last" and x["step"] >= 12 for x in c["checkpoints"]) and d.job(jid)["progress"]["step"] > 15:
            break
        time.sleep(0.1)
    d.stop(signal.SIGKILL)
    # what a crash mid-write leaves: temporary files of a checkpoint and of an upload (removed when the job
    # restarts and when the daemon starts), beside a file of another name (kept)
    run_dir = os.path.join(d.state, "runs", str(jid))
    models = os.path.join(d.state, "models")
    os.makedirs(models, exist_ok=True)
    planted = [os.path.join(run_dir, "last.safetensors.tmp.Ab12Cd"), os.path.join(models, ".upload.tmp.Zz99yY")]
    kept = os.path.join(run_dir, "notes.tmp.x")
    for p in planted + [kept]:
        with open(p, "w") as f:
            f.write("partial")
    d.start()
    j = d.job(jid)
    assert j["attempt"] == 2 and j["state_reason"] in ("DAEMON_RESTART", ""), j
    j = d.wait_state(jid, {"SUCCEEDED"}, timeout=300)
    total = j["progress"]["total_steps"]
    steps = loss_steps(d, jid)
    assert steps == list(range(1, total + 1)), "steps lost or repeated: %d points for %d steps" % (len(steps), total)
    left = [p for p in planted if os.path.exists(p)]
    assert not left, "temporary files a crash left are still there: %s" % left
    assert os.path.exists(kept), "a file that is not a temporary file was removed"


@check("killed 3 times, each after progress: the job still succeeds")
def t_kill_many(d):
    st, j, _, _ = d.request("POST", "/api/v1/jobs", body=spec("kill-many", epochs=40))
    jid = j["id"]
    last_ckpt = 0
    for k in range(3):  # as many kills as --max-attempts allows attempts without progress
        d.wait_state(jid, {"RUNNING"}, timeout=120)
        deadline = time.time() + 120
        while time.time() < deadline:
            st, c, _, _ = d.request("GET", "/api/v1/jobs/%d/checkpoints" % jid)
            steps = [x["step"] for x in c["checkpoints"] if x["kind"] == "last"]
            if steps and max(steps) > last_ckpt:
                last_ckpt = max(steps)
                break
            time.sleep(0.05)
        else:
            raise AssertionError("no new checkpoint after kill %d" % k)
        d.stop(signal.SIGKILL)
        d.start()
    j = d.wait_state(jid, {"SUCCEEDED", "FAILED"}, timeout=300)
    assert j["state"] == "SUCCEEDED", "the crash-loop guard failed a job that made progress: %s" % j
    assert j["attempt"] == 4, j
    total = j["progress"]["total_steps"]
    assert loss_steps(d, jid) == list(range(1, total + 1)), "steps lost or repeated"


def run_checks(d, tests):
    """Starts daemon d, runs the checks in order and stops it; prints `N passed, M failed` (every check of
    RESULTS so far) and returns the exit status."""
    d.start()
    try:
        for t in tests:
            t(d)
    finally:
        d.stop()
    failed = sum(1 for _, ok, _ in RESULTS if not ok)
    print("%d passed, %d failed" % (len(RESULTS) - failed, failed))
    return 1 if failed else 0


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ARGS = ap.parse_args()
    shutil.rmtree(ARGS.work, ignore_errors=True)
    os.makedirs(os.path.join(ARGS.work, "data"))
    subprocess.run([ARGS.bin, "synth", "--out", os.path.join(ARGS.work, "data", "synth"), "--classes", "4",
                    "--train", "96", "--val", "32", "--size", "32"], check=True, stdout=subprocess.DEVNULL)
    d = Daemon(ARGS.work)
    return run_checks(d, (t_health, t_auth, t_bad, t_job, t_idem, t_cancel, t_sigterm, t_kill, t_kill_many))


if __name__ == "__main__":
    sys.exit(main())
