#!/usr/bin/python3
"""End-to-end tests of the `tokenlab` command-line client: the real client
binary against the real daemon (tokenlabd serve on a loopback port, a temp
state folder, the built-in synthetic data), plus a deliberately broken fake
server for the client's handling of bad answers.

usage: test_client.py --client build/bin/tokenlab --daemon build/bin/tokenlabd --work DIR
                      [--photos DIR, default $TL_SHARED_DATA/photos]

Covers every command and its --json output, usage errors (exit 2), server
refusals with code and field pointer (3), connection failures with the
address tried (4), a job that fails (5) and a cancelled job (6), watch and
logs -f ending with the job, metrics as CSV, config precedence (flag > env >
config file, token > token file), and malformed, oversized and truncated
answers from a fake server (no crash, exit 1/3/4). predict is skipped when
the shared photos are absent.
Prints `N passed, M failed, K skipped` last; exits non-zero on any failure.
"""
import argparse
import csv
import http.server
import io
import json
import os
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request

ARGS = None
RESULTS = []  # (name, status, message) with status "PASS", "FAIL", "SKIP"


class Skip(Exception):
    pass


# ---------------------------------------------------------------- daemon

class Daemon:
    def __init__(self, work):
        self.work = work
        self.state = os.path.join(work, "state")
        self.data = os.path.join(work, "data")
        self.proc = None
        self.port = None
        self.token = None

    def start(self):
        log = open(os.path.join(self.work, "daemon.log"), "ab")
        self.proc = subprocess.Popen(
            [ARGS.daemon, "serve", "--port", "0", "--state", self.state, "--data-root", self.data,
             "--threads-per-job", "2"],
            stdout=subprocess.PIPE, stderr=log)
        deadline = time.time() + 30
        while time.time() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                raise RuntimeError("daemon exited during start-up (see daemon.log)")
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line)
            if m:
                self.port = int(m.group(1))
                break
        if not self.port:
            raise RuntimeError("daemon did not report its port")
        # keep draining stdout so the daemon never blocks on a full pipe
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        with open(os.path.join(self.state, "token")) as f:
            self.token = f.read().strip()
        self.url = "http://127.0.0.1:%d" % self.port

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None

    def get(self, path):
        """GET on the daemon directly (to check what the client did)."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return e.code, json.loads(body)
            except ValueError:
                return e.code, body

    def job(self, jid):
        st, j = self.get("/api/v1/jobs/%d" % jid)
        assert st == 200, (st, j)
        return j

    def wait_state(self, jid, states, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            j = self.job(jid)
            if j["state"] in states:
                return j
            time.sleep(0.1)
        raise AssertionError("job %d did not reach %s: %s" % (jid, states, self.job(jid)["state"]))


D = None  # the daemon


# ---------------------------------------------------------------- running the client

def base_env(home):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENLAB_")}
    env.pop("XDG_CONFIG_HOME", None)
    env["HOME"] = home
    env["NO_COLOR"] = "1"
    return env


class Run:
    def __init__(self, argv, p, secs):
        self.argv, self.rc, self.out, self.err, self.secs = argv, p.returncode, p.stdout, p.stderr, secs

    def __repr__(self):
        return "tokenlab %s -> %s\nstdout: %s\nstderr: %s" % (
            " ".join(self.argv), self.rc, self.out[-3000:], self.err[-3000:])


def tl(*argv, env=None, server=True, token=True, timeout=120, stdin=None):
    """Runs the client. By default it is pointed at the daemon through the environment."""
    e = base_env(os.path.join(ARGS.work, "home"))
    if server:
        e["TOKENLAB_SERVER"] = D.url
    if token:
        e["TOKENLAB_TOKEN_FILE"] = os.path.join(D.state, "token")
    if env:
        for k, v in env.items():
            if v is None:
                e.pop(k, None)
            else:
                e[k] = v
    t0 = time.time()
    p = subprocess.run([ARGS.client] + list(argv), env=e, capture_output=True, text=True, errors="replace",
                       timeout=timeout, input=stdin)
    r = Run(argv, p, time.time() - t0)
    assert r.rc >= 0, "the client died of signal %d: %r" % (-r.rc, r)
    return r


def expect(r, rc, *needles, where="any"):
    assert r.rc == rc, "exit %s, expected %s: %r" % (r.rc, rc, r)
    text = {"out": r.out, "err": r.err, "any": r.out + r.err}[where]
    for n in needles:
        assert n in text, "%r not in the output: %r" % (n, r)
    return r


def as_json(r):
    try:
        return json.loads(r.out)
    except ValueError as e:
        raise AssertionError("stdout is not JSON (%s): %r" % (e, r))


def json_lines(r):
    out = []
    for line in r.out.splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError as e:
                raise AssertionError("a line is not JSON (%s): %r in %r" % (e, line, r))
    return out


def spec(name, epochs=3, lr=None, ckpt=1):
    s = {"kind": "train", "name": name,
         "model": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
                   "mlp_ratio": 2, "stem_channels": 8, "skip_lam": 1.0, "num_classes": 4, "drop_path_rate": 0.0},
         "data": {"train": "synth/train", "val": "synth/val", "label_maps": "synth/train.tllm"},
         "train": {"epochs": epochs, "batch_size": 16, "warmup_epochs": 0, "eval_every_epochs": 1,
                   "checkpoint_every_epochs": ckpt, "cache_mb": 16, "loader_threads": 1}}
    if lr is not None:
        s["train"]["lr"] = lr
    return s


def spec_file(name, **kw):
    path = os.path.join(ARGS.work, name + ".json")
    s = kw.pop("raw", None) or spec(name, **kw)
    with open(path, "w") as f:
        f.write(s if isinstance(s, str) else json.dumps(s, indent=2))
    return path


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def check(name):
    def deco(fn):
        def run():
            t0 = time.time()
            try:
                fn()
                RESULTS.append((name, "PASS", ""))
                print("PASS %-40s %.1fs" % (name, time.time() - t0), flush=True)
            except Skip as e:
                RESULTS.append((name, "SKIP", str(e)))
                print("SKIP %-40s %s" % (name, e), flush=True)
            except Exception as e:  # noqa: BLE001 - report every failure and continue
                RESULTS.append((name, "FAIL", str(e)))
                print("FAIL %-40s %s" % (name, e), flush=True)
                traceback.print_exc()
        run.__name__ = fn.__name__
        return run
    return deco


SHARED = {}  # results other checks build on: the id of a SUCCEEDED job, ...

COMMANDS = ["submit", "jobs", "show", "watch", "logs", "cancel", "delete", "metrics", "models", "register",
            "predict", "inspect"]


# ---------------------------------------------------------------- usage

@check("help and usage errors (exit 2)")
def t_usage():
    r = expect(tl("--help"), 0, "usage: tokenlab", "Exit status", "TOKENLAB_SERVER", "config.json")
    for c in COMMANDS:
        assert c in r.out, c
        expect(tl(c, "--help"), 0, "usage: tokenlab " + c)
    expect(tl("help", "watch"), 0, "usage: tokenlab watch", "5 ", "6 ")
    expect(tl("--version"), 0, "tokenlab ")
    expect(tl(), 2, "no command", where="err")
    expect(tl("frobnicate"), 2, "unknown command 'frobnicate'", where="err")
    expect(tl("--frob"), 2, "unknown option", where="err")
    # the hidden `palette` (for the browser test's palette comparison): not in the overview, no server needed
    assert "palette" not in r.out, "palette is hidden from the overview"
    assert as_json(expect(tl("palette", "3", server=False), 0)) == [[242, 73, 73], [73, 122, 242], [172, 242, 73]]
    expect(tl("palette", "0"), 2, "1..100000", where="err")
    for c in ["submit", "show", "watch", "logs", "cancel", "delete", "metrics", "register", "predict", "inspect"]:
        expect(tl(c), 2, "missing argument", "usage: tokenlab " + c, where="err")
    # `samples` is inspect's old name, kept for scripts: said in the overview and the help, same usage
    assert "(also `samples`)" in r.out, r.out
    r = expect(tl("samples", "--help"), 0, "usage: tokenlab inspect", "`tokenlab samples ...` is the same command")
    assert r.out == tl("inspect", "--help").out
    expect(tl("samples"), 2, "tokenlab samples: missing argument", "usage: tokenlab inspect", where="err")
    expect(tl("jobs", "--bogus"), 2, "unknown option '--bogus'", where="err")
    expect(tl("jobs", "--limit"), 2, "--limit needs a value", where="err")
    expect(tl("jobs", "--limit", "0"), 2, "--limit must be an integer in 1..200", where="err")
    expect(tl("jobs", "--limit=abc"), 2, "--limit", where="err")
    expect(tl("jobs", "--state", "BOGUS"), 2, "--state must be one of", where="err")
    expect(tl("jobs", "extra"), 2, "too many arguments", where="err")
    expect(tl("show", "abc"), 2, "positive integer", where="err")
    expect(tl("show", "0"), 2, "positive integer", where="err")
    expect(tl("show", "1", "2"), 2, "too many arguments", where="err")
    expect(tl("logs", "-x", "1"), 2, "unknown option '-x'", where="err")
    expect(tl("watch", "1", "--interval", "-3"), 2, "--interval", where="err")
    expect(tl("metrics", "1", "--csv"), 2, "--csv needs a metric NAME", where="err")
    expect(tl("--json", "metrics", "1", "loss", "--csv"), 2, "exclude each other", where="err")
    expect(tl("register", "m"), 2, "--job ID is required", where="err")
    expect(tl("register", "m", "--job", "1", "--checkpoint", "middle"), 2, "--checkpoint must be", where="err")
    expect(tl("register", "m", "--job", "x"), 2, "--job must be an integer", where="err")
    expect(tl("predict", "m"), 2, "missing argument", where="err")
    expect(tl("predict", "m", "a.jpg", "--top-k", "0"), 2, "--top-k", where="err")
    for c in ["inspect", "samples"]:
        expect(tl(c, "1", "--step", "3"), 2, "need a sample K", where="err")
        expect(tl(c, "1", "-1"), 2, "unknown option", where="err")
    expect(tl("submit", "x.json", "--name", ""), 2, "--name must not be empty", where="err")
    expect(tl("jobs", "--server"), 2, "--server needs a value", where="err")
    expect(tl("jobs", "--server", "ftp://example.org"), 2, "must start with http:// or https://", where="err")
    expect(tl("jobs", "--token", "has space"), 2, "token", where="err")
    # usage errors never need the server
    r = expect(tl("show", "abc", server=False, env={"TOKENLAB_SERVER": "http://127.0.0.1:%d" % free_port()}), 2)
    assert "connect" not in r.err


# ---------------------------------------------------------------- connection failures

@check("unreachable server (exit 4, address shown)")
def t_unreachable():
    port = free_port()
    addr = "http://127.0.0.1:%d" % port
    r = expect(tl("--server", addr, "jobs"), 4, addr, "daemon running", "--server", where="err")
    r = expect(tl("jobs", server=False, env={"TOKENLAB_SERVER": "127.0.0.1:%d" % port}), 4, addr, "TOKENLAB_SERVER",
               where="err")
    # the default address is named as such
    r = tl("jobs", server=False)
    if r.rc == 4:
        expect(r, 4, "http://127.0.0.1:8080", "the default", where="err")
    expect(tl("--server", addr, "watch", "1"), 4, addr, where="err")
    expect(tl("--server", addr, "logs", "1", "-f"), 4, addr, where="err")
    expect(tl("--server", addr, "submit", spec_file("unreach")), 4, addr, where="err")
    expect(tl("--server", "http://nonexistent.invalid:1", "jobs"), 4, "nonexistent.invalid", where="err")


# ---------------------------------------------------------------- server refusals

@check("refusals: 401, 403, 422 with pointer, 400, 404 (exit 3)")
def t_refusals():
    path = spec_file("refused")
    expect(tl("submit", path, token=False), 3, "401", "UNAUTHENTICATED", "hint", "--token", where="err")
    expect(tl("--token", "wrong-token-0123456789", "submit", path), 3, "403", "FORBIDDEN", "--token", where="err")
    bad = spec("bad")
    bad["train"]["lr"] = "fast"
    r = expect(tl("submit", spec_file("bad", raw=json.dumps(bad))), 3, "422", "SPEC_INVALID", "field:  /train/lr",
               where="err")
    bad = spec("bad2")
    bad["train"]["learning_rate"] = 1
    expect(tl("submit", spec_file("bad2", raw=json.dumps(bad))), 3, "field:  /train/learning_rate", where="err")
    # --json: the problem document on stdout too
    r = expect(tl("--json", "submit", spec_file("bad2", raw=json.dumps(bad))), 3)
    p = as_json(r)
    assert p["code"] == "SPEC_INVALID" and p["pointer"] == "/train/learning_rate", p
    expect(tl("submit", spec_file("notjson", raw="{not json")), 3, "400", "BAD_JSON", where="err")
    expect(tl("show", "999999"), 3, "404", "NOT_FOUND", where="err")
    expect(tl("cancel", "999999"), 3, "404", where="err")
    expect(tl("delete", "999999"), 3, "404", where="err")
    expect(tl("metrics", "999999"), 3, "404", where="err")
    expect(tl("logs", "999999"), 3, "404", where="err")
    expect(tl("watch", "999999"), 3, "404", where="err")
    # local files: exit 1
    expect(tl("submit", os.path.join(ARGS.work, "no-such.json")), 1, "cannot read", "no-such.json", where="err")
    expect(tl("submit", ARGS.work), 1, "folder", where="err")
    expect(tl("submit", spec_file("notjson2", raw="[1,2"), "--name", "x"), 1, "not a JSON object", where="err")


@check("submit --init: parsing, model.init in the spec, show's init line")
def t_init():
    path = spec_file("ft", epochs=1)
    before = len(as_json(expect(tl("--json", "jobs", "--limit", "200"), 0))["jobs"])
    # bad values: usage errors, nothing sent
    for bad, says in (("nope", "model:NAME or job:ID"), ("model:", "NAME must be"), ("model:-x", "NAME must be"),
                      ("model:a/b", "NAME must be"), ("job:", "model:NAME or job:ID"), ("job:0", "ID must be"),
                      ("job:abc", "ID must be"), ("job:12:first", "CHECKPOINT must be"),
                      ("job:12:0100", "CHECKPOINT must be"), ("job:99999999999999999999", "ID must be")):
        expect(tl("submit", path, "--init", bad), 2, says, where="err")
    expect(tl("submit", path, "--init"), 2)
    after = len(as_json(expect(tl("--json", "jobs", "--limit", "200"), 0))["jobs"])
    assert after == before, (before, after)
    # a valid --init reaches the daemon as model.init, refused there (the model does not exist): exit 3
    p = as_json(expect(tl("--json", "submit", path, "--init", "model:no-such-model"), 3))
    assert p["code"] == "SPEC_INVALID" and p["pointer"] == "/model/init/model", p
    # --init replaces a model.init already in the spec
    s = spec("ft2", epochs=1)
    s["model"] = {"init": {"model": "whatever"}}
    p = as_json(expect(tl("--json", "submit", spec_file("ft2", raw=json.dumps(s)), "--init", "job:987654:last"), 3))
    assert p["pointer"] == "/model/init/job_id", p
    expect(tl("submit", spec_file("ftarr", raw='{"model": 3}'), "--init", "job:1"), 1, "not an object", where="err")
    src = SHARED["ok"]
    s = spec("ft3", epochs=1)
    del s["model"]
    r = expect(tl("submit", spec_file("ft3", raw=json.dumps(s)), "--init", "job:%d:last" % src, "--wait"), 0,
               "SUCCEEDED", where="out")
    jid = int(re.search(r"submitted job (\d+)", r.out).group(1))
    j = D.job(jid)
    assert j["init"]["job_id"] == src and j["init"]["checkpoint"] == "last" and j["init"]["loaded"], j
    expect(tl("show", str(jid)), 0, "init", "job %d, last checkpoint" % src, "at step")


# ---------------------------------------------------------------- a job from submit to delete

@check("submit --wait: SUCCEEDED (exit 0)")
def t_submit_wait():
    r = expect(tl("submit", spec_file("ok"), "--wait", "--name", "renamed"), 0, "submitted job", "SUCCEEDED",
               where="out")
    jid = int(re.search(r"submitted job (\d+)", r.out).group(1))
    j = D.job(jid)
    assert j["state"] == "SUCCEEDED" and j["name"] == "renamed", j
    assert "18/18" in r.out, r
    SHARED["ok"] = jid
    # the same with --json: one JSON document, the final job
    r = expect(tl("--json", "submit", spec_file("okjson", epochs=1), "--wait"), 0)
    j = as_json(r)
    assert j["state"] == "SUCCEEDED" and j["name"] == "okjson", j
    # submitting from stdin, without waiting, --json: the Job object
    r = expect(tl("--json", "submit", "-", stdin=json.dumps(spec("stdin", epochs=1))), 0)
    j = as_json(r)
    assert j["name"] == "stdin" and j["state"] in ("QUEUED", "RUNNING", "SUCCEEDED"), j
    D.wait_state(j["id"], {"SUCCEEDED"})


@check("idempotency key")
def t_idempotency():
    path = spec_file("idem", epochs=1)
    r1 = expect(tl("--json", "submit", path, "--idempotency-key", "client-test-1"), 0)
    r2 = expect(tl("submit", path, "--idempotency-key", "client-test-1"), 0, "already submitted")
    j = as_json(r1)
    assert ("job %d" % j["id"]) in r2.out, r2
    D.wait_state(j["id"], {"SUCCEEDED"})


@check("jobs, show (tables and --json)")
def t_jobs_show():
    jid = SHARED["ok"]
    r = expect(tl("jobs"), 0, "ID", "STATE", "renamed", "SUCCEEDED")
    r = expect(tl("jobs", "--state", "succeeded"), 0, "renamed")
    assert "QUEUED" not in r.out
    r = expect(tl("jobs", "--state", "FAILED"), 0)
    lst = as_json(expect(tl("--json", "jobs", "--limit", "2"), 0))
    assert len(lst["jobs"]) <= 2 and "next_cursor" in lst, lst
    if lst["next_cursor"]:
        r = expect(tl("jobs", "--limit", "2"), 0, "--cursor", where="err")
        expect(tl("jobs", "--cursor", str(lst["next_cursor"])), 0)
    r = expect(tl("show", str(jid)), 0, "job %d 'renamed'" % jid, "SUCCEEDED", "18/18", "history", "checkpoints",
               "best", "latest metrics", "loss")
    j = as_json(expect(tl("--json", "show", str(jid)), 0))
    assert j["id"] == jid and j["state_history"], j
    # global options anywhere, --opt=value
    j2 = as_json(expect(tl("show", str(jid), "--json"), 0))
    assert j2["id"] == jid
    expect(tl("jobs", "--state=SUCCEEDED", "--limit=5"), 0, "renamed")


@check("metrics: names, series, --csv, buckets, --json")
def t_metrics():
    jid = SHARED["ok"]
    expect(tl("metrics", str(jid)), 0, "NAME", "loss", "top1", "lr")
    expect(tl("metrics", str(jid), "loss"), 0, "loss of job %d: 18 points" % jid, "STEP", "VALUE")
    r = expect(tl("metrics", str(jid), "loss", "--csv"), 0)
    rows = list(csv.DictReader(io.StringIO(r.out)))
    assert [int(x["step"]) for x in rows] == list(range(1, 19)), r.out[:300]
    assert all(float(x["value"]) > 0 for x in rows)
    st, series = D.get("/api/v1/jobs/%d/metrics/loss" % jid)
    assert [round(float(x["value"]), 5) for x in rows] == [round(p["value"], 5) for p in series["points"]]
    r = expect(tl("metrics", str(jid), "loss", "--csv", "--max-points", "5"), 0)
    rows = list(csv.DictReader(io.StringIO(r.out)))
    assert 0 < len(rows) <= 5 and set(rows[0]) == {"step", "time_ms", "last", "min", "max", "count"}, r.out
    assert sum(int(x["count"]) for x in rows) == 18
    for x in rows:
        assert float(x["min"]) <= float(x["last"]) <= float(x["max"])
    r = expect(tl("metrics", str(jid), "loss", "--csv", "--start", "5", "--end", "7"), 0)
    assert [int(x["step"]) for x in csv.DictReader(io.StringIO(r.out))] == [5, 6, 7], r.out
    j = as_json(expect(tl("--json", "metrics", str(jid), "top1"), 0))
    assert j["name"] == "top1" and len(j["points"]) == 3, j
    j = as_json(expect(tl("--json", "metrics", str(jid)), 0))
    assert any(m["name"] == "loss" for m in j["metrics"])
    expect(tl("metrics", str(jid), "no_such_metric"), 0, "no points")
    r = tl("metrics", str(jid), "we/ird name?")  # escaped into the path: no crash, no malformed request
    assert r.rc in (0, 3), r


@check("logs, logs -f ends with the job")
def t_logs():
    jid = SHARED["ok"]
    expect(tl("logs", str(jid)), 0, "finished 18 steps")
    lines = json_lines(expect(tl("--json", "logs", str(jid)), 0))
    assert lines and all("next_offset" in x for x in lines)
    assert "finished 18 steps" in "".join(x["text"] for x in lines)
    # -f on a job that is still running: returns once it ends, with its last line
    j = as_json(expect(tl("--json", "submit", spec_file("follow", epochs=30)), 0))
    t0 = time.time()
    r = expect(tl("logs", str(j["id"]), "-f", timeout=180), 0, "finished 180 steps")
    assert D.job(j["id"])["state"] == "SUCCEEDED"
    assert time.time() - t0 < 170
    # -f on a finished job returns at once
    r = expect(tl("logs", "--follow", str(jid), timeout=30), 0, "finished 18 steps")


@check("watch: cancelled job exits 6, --json NDJSON")
def t_watch_cancel():
    j = as_json(expect(tl("--json", "submit", spec_file("long", epochs=2000)), 0))
    jid = j["id"]
    e = base_env(os.path.join(ARGS.work, "home"))
    e["TOKENLAB_SERVER"] = D.url
    w = subprocess.Popen([ARGS.client, "watch", str(jid), "--interval", "0.5"], env=e, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    wj = subprocess.Popen([ARGS.client, "--json", "watch", str(jid)], env=e, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    try:
        D.wait_state(jid, {"RUNNING"})
        deadline = time.time() + 60
        while D.job(jid)["progress"]["step"] < 20 and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)
        expect(tl("delete", str(jid)), 3, "409", "INVALID_STATE", where="err")
        r = expect(tl("cancel", str(jid)), 0, "job %d" % jid)
        assert "CANCELLING" in r.out or "CANCELLED" in r.out, r
        out, err = w.communicate(timeout=60)
        assert w.returncode == 6, (w.returncode, out, err)
        assert "CANCELLED" in out and "USER_CANCEL" in out, out
        progress = [x for x in out.splitlines() if " step " in x and "/12000" in x]
        assert progress, out  # non-TTY: progress lines...
        assert "\r" not in out and "\033" not in out, "no terminal control codes when stdout is not a terminal"
        outj, errj = wj.communicate(timeout=60)
        assert wj.returncode == 6, (wj.returncode, outj, errj)
        evs = [json.loads(x) for x in outj.splitlines() if x.strip()]
        assert evs[0]["event"] == "snapshot" and evs[0]["data"]["id"] == jid, evs[0]
        types = {e["event"] for e in evs}
        assert {"progress", "state"} <= types, types
        assert evs[-1]["event"] == "state" and evs[-1]["data"]["state"] == "CANCELLED", evs[-1]
        ids = [e["id"] for e in evs if e["id"] is not None]
        assert ids == sorted(ids)
    finally:
        for p in (w, wj):
            if p.poll() is None:
                p.kill()
    # a finished job: watch says so at once
    expect(tl("watch", str(jid), timeout=30), 6, "CANCELLED")
    expect(tl("cancel", str(jid)), 3, "409", "INVALID_STATE", where="err")
    j = as_json(expect(tl("--json", "cancel", str(SHARED["ok"])), 3))
    assert j["code"] == "INVALID_STATE"
    expect(tl("delete", str(jid)), 0, "deleted job %d" % jid)
    expect(tl("show", str(jid)), 3, "404", where="err")
    SHARED["deleted"] = jid


@check("watch: throttled lines when not a terminal")
def t_watch_throttle():
    j = as_json(expect(tl("--json", "submit", spec_file("throttle", epochs=60)), 0))
    r = expect(tl("watch", str(j["id"]), "--interval", "1000", timeout=180), 0, "SUCCEEDED")
    progress = [x for x in r.out.splitlines() if "step " in x and "/360" in x and "eval" not in x]
    evals = [x for x in r.out.splitlines() if " eval at step " in x]
    # the first update, then nothing for 1000 s, then the final one
    assert 1 <= len(progress) <= 3, r.out
    assert len(evals) <= 4, r.out
    r = expect(tl("watch", str(j["id"]), "--interval", "0"), 0, "SUCCEEDED after 360/360 steps")


@check("watch on a terminal: a progress bar redrawn in place")
def t_watch_tty():
    import fcntl
    import pty
    import struct
    import termios
    j = as_json(expect(tl("--json", "submit", spec_file("tty", epochs=80)), 0))
    D.wait_state(j["id"], {"RUNNING"})
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    e = base_env(os.path.join(ARGS.work, "home"))
    e["TOKENLAB_SERVER"] = D.url
    p = subprocess.Popen([ARGS.client, "watch", str(j["id"])], env=e, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the client exited and the terminal closed
            break
        if not chunk:
            break
        out += chunk
    rc = p.wait(timeout=60)
    os.close(master)
    text = out.decode(errors="replace")
    assert rc == 0, (rc, text[-2000:])
    assert "\r\x1b[K" in text and "[#" in text, text[-2000:]
    frames = [f for f in re.split(r"\r\x1b\[K", text) if "img/s" in f]
    assert len(frames) >= 2, text[-2000:]
    for f in frames:  # every frame fits the terminal and has the numbers asked for
        line = f.split("\n")[0].rstrip("\r")
        assert len(line) <= 99, line
        for part in ("ep ", "loss ", "lr ", "img/s", "ETA "):
            assert part in line, (part, line)
    assert "SUCCEEDED after 480/480 steps" in text, text[-2000:]


@check("failed job: submit --wait and watch exit 5")
def t_failed():
    r = expect(tl("submit", spec_file("nan", lr=1e30), "--wait", timeout=180), 5, "FAILED", "NAN_LOSS")
    jid = int(re.search(r"submitted job (\d+)", r.out).group(1))
    assert D.job(jid)["state"] == "FAILED"
    expect(tl("watch", str(jid)), 5, "FAILED", "NAN_LOSS")
    j = as_json(expect(tl("--json", "submit", spec_file("nan2", lr=1e30), "--wait", timeout=180), 5))
    assert j["state"] == "FAILED" and j["state_reason"] == "NAN_LOSS", j
    expect(tl("show", str(jid)), 0, "FAILED", "NAN_LOSS")


# ---------------------------------------------------------------- configuration

@check("config precedence: flag > env > file; token > token file")
def t_config():
    good = D.url
    bad = "http://127.0.0.1:%d" % free_port()
    cfgdir = os.path.join(ARGS.work, "cfg")
    os.makedirs(cfgdir, exist_ok=True)
    cfg = os.path.join(cfgdir, "config.json")

    def write_cfg(d):
        with open(cfg, "w") as f:
            json.dump(d, f)

    env = {"TOKENLAB_CONFIG": cfg}
    # server: config file alone
    write_cfg({"server": good})
    expect(tl("jobs", server=False, token=False, env=env), 0, "renamed")
    write_cfg({"server": bad})
    expect(tl("jobs", server=False, token=False, env=env), 4, bad, "config file " + cfg, where="err")
    # env beats the file
    expect(tl("jobs", server=False, token=False, env=dict(env, TOKENLAB_SERVER=good)), 0)
    # the flag beats the env
    expect(tl("--server", bad, "jobs", server=False, token=False, env=dict(env, TOKENLAB_SERVER=good)), 4, bad,
           "--server", where="err")
    expect(tl("--server", good, "jobs", server=False, token=False, env=dict(env, TOKENLAB_SERVER=bad)), 0)
    # --config beats TOKENLAB_CONFIG
    cfg2 = os.path.join(cfgdir, "other.json")
    with open(cfg2, "w") as f:
        json.dump({"server": good}, f)
    expect(tl("--config", cfg2, "jobs", server=False, token=False, env=env), 0)
    # the default place: $HOME/.config/tokenlab/config.json, and XDG_CONFIG_HOME
    home = os.path.join(ARGS.work, "home")
    os.makedirs(os.path.join(home, ".config", "tokenlab"), exist_ok=True)
    with open(os.path.join(home, ".config", "tokenlab", "config.json"), "w") as f:
        json.dump({"server": good}, f)
    try:
        expect(tl("jobs", server=False, token=False), 0)
        xdg = os.path.join(ARGS.work, "xdg")
        os.makedirs(os.path.join(xdg, "tokenlab"), exist_ok=True)
        with open(os.path.join(xdg, "tokenlab", "config.json"), "w") as f:
            json.dump({"server": bad}, f)
        expect(tl("jobs", server=False, token=False, env={"XDG_CONFIG_HOME": xdg}), 4, bad, where="err")
    finally:
        os.remove(os.path.join(home, ".config", "tokenlab", "config.json"))

    # tokens, probed with a cancel of a finished job: 409 means the token was accepted
    done = str(SHARED["ok"])
    tokfile = os.path.join(cfgdir, "tok")
    with open(tokfile, "w") as f:
        f.write("\n  %s  \n" % D.token)
    wrong = "wrong-token-0123456789"
    write_cfg({"server": good, "token": D.token})
    expect(tl("cancel", done, server=False, token=False, env=env), 3, "409", where="err")
    write_cfg({"server": good, "token": wrong})
    expect(tl("cancel", done, server=False, token=False, env=env), 3, "403", "config file", where="err")
    expect(tl("cancel", done, server=False, token=False, env=dict(env, TOKENLAB_TOKEN=D.token)), 3, "409",
           where="err")
    expect(tl("cancel", done, server=False, token=False, env=dict(env, TOKENLAB_TOKEN_FILE=tokfile)), 3, "409",
           where="err")
    expect(tl("--token", wrong, "cancel", done, server=False, token=False, env=dict(env, TOKENLAB_TOKEN=D.token)),
           3, "403", "--token", where="err")
    expect(tl("--token-file", tokfile, "cancel", done, server=False, token=False,
              env=dict(env, TOKENLAB_TOKEN=wrong)), 3, "409", where="err")
    # a token beats a token file at the same level
    expect(tl("cancel", done, server=False, token=False,
              env=dict(env, TOKENLAB_TOKEN=wrong, TOKENLAB_TOKEN_FILE=tokfile)), 3, "403", "TOKENLAB_TOKEN",
           where="err")
    # token_file in the config file, relative to the config's folder
    write_cfg({"server": good, "token_file": "tok"})
    expect(tl("cancel", done, server=False, token=False, env=env), 3, "409", where="err")
    # the daemon's own token file
    expect(tl("--token-file", os.path.join(D.state, "token"), "cancel", done, token=False), 3, "409", where="err")
    # broken configuration: exit 1 with the file named
    expect(tl("--token-file", os.path.join(cfgdir, "missing"), "jobs"), 1, "missing", where="err")
    with open(cfg, "w") as f:
        f.write("{not json")
    expect(tl("jobs", server=False, env=env), 1, cfg, "not a JSON object", where="err")
    write_cfg({"server": 5})
    expect(tl("jobs", server=False, env=env), 1, "must be a string", where="err")
    write_cfg({"server": good, "colour": "blue"})
    expect(tl("jobs", server=False, env=env), 0, "unknown key 'colour'", where="err")
    expect(tl("jobs", server=False, env={"TOKENLAB_CONFIG": os.path.join(cfgdir, "absent.json")}), 1, "absent.json",
           where="err")
    # the server address may carry a trailing slash or /api/v1
    expect(tl("--server", good + "/api/v1/", "jobs"), 0, "renamed")
    expect(tl("--server", good.replace("http://", ""), "jobs"), 0, "renamed")


# ---------------------------------------------------------------- a broken server

class Fake(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def send(self, status, ctype, body, length=True):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        mode = self.server.mode
        if mode == "notjson":
            self.send(200, "application/json", b"<html>hello</html>")
        elif mode == "huge":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(40 << 20))
            self.end_headers()
            chunk = b" " * (1 << 20)
            try:
                for _ in range(40):
                    self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif mode == "html500":
            self.send(500, "text/html", b"<html><body>\x1b[31mInternal\x07 error</body></html>")
        elif mode == "wrongtypes":
            if "/metrics/" in self.path:
                body = {"name": 5, "bucketed": "yes", "points": [{"step": "x"}, None, 7, {"value": None}]}
            elif "/metrics" in self.path:
                body = {"metrics": {"a": 1}}
            elif "/logs" in self.path:
                body = {"text": 17, "eof": "no", "next_offset": -5}
            elif "/checkpoints" in self.path:
                body = {"checkpoints": [None, {"step": "a"}]}
            elif "/samples" in self.path:
                body = {"grid": 1000000, "samples": 3, "steps": {"x": 1},
                        "target": {"index": [1, 2]}, "pred": {"index": "no"}}
            elif "/models" in self.path:
                body = {"models": [{"name": None, "source": 5, "stats": [], "grid": "x"}], "classes": 9}
            elif self.path.startswith("/api/v1/jobs/"):
                body = {"id": "seven", "name": ["x"], "progress": None, "latest_metrics": [1, 2],
                        "state_history": [None, 5, {"to": 3}], "spec": {"model": 3, "train": {"epochs": "x"}}}
            else:
                body = {"jobs": [{"id": "x", "progress": 5, "latest_metrics": None}, 5, None], "next_cursor": "z"}
            self.send(200, "application/json", json.dumps(body).encode())
        elif mode == "problem_odd":
            body = {"code": 5, "detail": None, "pointer": 7}
            self.send(422, "application/problem+json", json.dumps(body).encode())
        elif mode == "truncated":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "1000")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b'{"jobs": [')
            self.close_connection = True
        elif mode == "sse":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            junk = (b"event: snapshot\ndata: {not json\n\n"
                    b"event: progress\ndata: {\"step\": \"x\", \"metrics\": 5}\n\n"
                    b"data: " + b"A" * (200 * 1024) + b"\n\n"
                    b"event: " + b"E" * 500 + b"\ndata: {}\n\n"
                    b"\x00\x01\x02\r\r\n\n: comment\n"
                    b"event: eval\ndata: {\"metrics\": null, \"weights\": 3}\n\n"
                    b"event: state\r\ndata: {\"state\": \"FAILED\", \"state_reason\": \"X\"}\r\n\r\n")
            self.wfile.write(junk)
        elif mode == "sse_random":
            import random
            rnd = random.Random(7)
            alphabet = [b"data", b"event", b"id", b"retry", b":", b": ", b" ", b"\n", b"\r", b"\r\n", b"{", b"}",
                        b"\"state\"", b"\"FAILED\"", b"progress", b"state", b"x", b"\x00", b"\xff", b"7"]
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for _ in range(200):
                    self.wfile.write(b"".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 400))))
                    self.wfile.flush()
                self.wfile.write(b"\n\nevent: state\ndata: {\"state\": \"FAILED\"}\n\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif mode == "sse_endless_lines":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                self.wfile.write(b"data: " + b"x" * (3 << 20) + b"\n\n")
                self.wfile.write(b"event: state\ndata: {\"state\": \"CANCELLED\"}\n\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
        else:
            self.send(404, "application/problem+json", b'{"code":"NOT_FOUND","status":404,"detail":"no"}')

    do_POST = do_GET
    do_DELETE = do_GET


class FakeServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


@check("a broken server: bad answers never crash the client")
def t_fake():
    srv = FakeServer(("127.0.0.1", 0), Fake)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = "http://127.0.0.1:%d" % srv.server_address[1]

    def run(mode, *argv, **kw):
        srv.mode = mode
        return tl("--server", url, *argv, **kw)

    try:
        expect(run("notjson", "jobs"), 1, "not JSON", where="err")
        expect(run("huge", "jobs"), 1, "larger than", where="err")
        r = expect(run("html500", "jobs"), 3, "HTTP 500", where="err")
        assert "\x1b" not in r.err and "\x07" not in r.err, "control characters from the server are not printed"
        expect(run("problem_odd", "show", "1"), 3, "HTTP 422", where="err")
        r = run("truncated", "jobs")
        assert r.rc in (1, 4), r
        for argv in (["jobs"], ["show", "1"], ["metrics", "1"], ["metrics", "1", "loss"], ["metrics", "1", "loss",
                     "--csv"], ["logs", "1"], ["models"], ["models", "m"], ["inspect", "1"], ["inspect", "1", "0"],
                     ["samples", "1"], ["samples", "1", "0"]):
            r = run("wrongtypes", *argv)
            assert r.rc in (0, 1, 3), r
        for argv in (["--json", "jobs"], ["--json", "show", "1"]):
            as_json(expect(run("wrongtypes", *argv), 0))
        r = run("sse", "watch", "1", timeout=60)
        assert r.rc in (0, 3, 4, 5), r
        r = run("sse", "--json", "watch", "1", timeout=60)
        json_lines(r)  # every line it printed is JSON, even for events whose data was not
        for argv in (["watch", "1"], ["--json", "watch", "1"]):
            r = run("sse_random", *argv, timeout=60)
            assert r.rc in (0, 3, 4, 5, 6), r
        json_lines(r)  # valid JSON lines (and UTF-8) even from random bytes
        r = run("sse_endless_lines", "watch", "1", timeout=60)
        assert r.rc in (0, 3, 4, 6), r
        r = run("wrongtypes", "register", "m", "--job", "1", "--no-wait")
        assert r.rc in (0, 1, 3), r
    finally:
        srv.shutdown()
        srv.server_close()


# ---------------------------------------------------------------- models, predict, inspect (issue 5)

def serving_available():
    st, body = D.get("/api/v1/models")
    assert st == 200, (st, body)


def photos():
    d = ARGS.photos
    if not d or not os.path.isdir(d):
        raise Skip("no photos folder (%s)" % d)
    files = sorted(os.path.join(d, f) for f in os.listdir(d) if f.lower().endswith((".jpg", ".jpeg")))
    if not files:
        raise Skip("no JPEGs in %s" % d)
    return files


@check("models and register")
def t_models():
    serving_available()
    jid = SHARED["ok"]
    r = expect(tl("register", "m1", "--job", str(jid)), 0, "model m1 READY", "job %d" % jid)
    expect(tl("models"), 0, "NAME", "m1", "READY")
    lst = as_json(expect(tl("--json", "models"), 0))
    assert any(m["name"] == "m1" for m in lst["models"]), lst
    expect(tl("models", "m1"), 0, "model m1", "READY", "classes")
    m = as_json(expect(tl("--json", "models", "m1"), 0))
    assert m["name"] == "m1" and m["state"] == "READY" and m["source"]["job_id"] == jid, m
    m = as_json(expect(tl("--json", "register", "m2", "--job", str(jid), "--checkpoint", "last", "--raw",
                          "--max-batch", "4"), 0))
    assert m["name"] == "m2" and m["batching"]["max_batch"] == 4 and m["source"]["checkpoint"] == "last", m
    st, cks = D.get("/api/v1/jobs/%d/checkpoints" % jid)
    step = max(c["step"] for c in cks["checkpoints"] if c["kind"] == "last")
    expect(tl("register", "m3", "--job", str(jid), "--checkpoint", str(step)), 0, "READY", "step %d" % step)
    expect(tl("register", "m1", "--job", str(jid)), 3, "409", "MODEL_EXISTS", where="err")
    expect(tl("register", "m4", "--job", "999999"), 3, "404", where="err")
    expect(tl("register", "bad name!", "--job", str(jid)), 3, "422", where="err")
    expect(tl("register", "m5", "--job", str(jid), token=False), 3, "401", where="err")
    expect(tl("models", "nosuch"), 3, "404", where="err")
    SHARED["model"] = "m1"


@check("predict: top-k, --tokens grid, several images, errors")
def t_predict():
    serving_available()
    if "model" not in SHARED:
        raise Skip("no model registered (see 'models and register')")
    files = photos()
    one = files[0]
    r = expect(tl("predict", "m1", one), 0, os.path.basename(one), "CLASS", "SCORE", "decode")
    ranks = [x for x in r.out.splitlines() if re.match(r"^\s*\d+\s+\d+\s+\S.*%$", x)]
    assert 1 <= len(ranks) <= 5, r.out  # 4 classes: top-5 gives at most all 4
    r = expect(tl("predict", "m1", one, "--top-k", "2"), 0)
    assert len([x for x in r.out.splitlines() if re.match(r"^\s*\d+\s+\d+\s+\S.*%$", x)]) == 2, r.out
    j = as_json(expect(tl("--json", "predict", "m1", one, "--top-k", "3"), 0))
    assert len(j["predictions"]) == 3 and "tokens" not in j, j
    r = expect(tl("predict", "m1", one, "--tokens"), 0, "token map", "(class ")
    g = 4  # 32 px, patch 8
    grid = [x for x in r.out.splitlines() if re.fullmatch(r"([A-Za-z0-9*] ){%d}" % g, x)]
    assert len(grid) == g, r.out
    j = as_json(expect(tl("--json", "predict", "m1", one, "--tokens"), 0))
    assert j["tokens"]["grid"] == g and len(j["tokens"]["index"]) == g * g
    r = expect(tl("predict", "m1", *files[:3]), 0)
    for f in files[:3]:
        assert os.path.basename(f) in r.out, r.out
    j = as_json(expect(tl("--json", "predict", "m1", *files[:2]), 0))
    assert len(j["results"]) == 2, j
    # errors: a file that is not a JPEG, a missing file, a missing model
    notjpeg = spec_file("notjpeg")
    expect(tl("predict", "m1", notjpeg), 3, "NOT_A_JPEG", where="err")
    expect(tl("predict", "m1", one, notjpeg), 3, "NOT_A_JPEG", where="err")
    expect(tl("predict", "m1", os.path.join(ARGS.work, "missing.jpg")), 1, "missing.jpg", where="err")
    expect(tl("predict", "nosuch", one), 3, "404", where="err")


@check("inspect: list, one sample's grids, --json; samples (old name) the same")
def t_inspect():
    serving_available()
    jid = SHARED["ok"]
    st, body = D.get("/api/v1/jobs/%d/samples" % jid)
    assert st == 200, (st, body)
    r = expect(tl("inspect", str(jid)), 0, "samples", "evaluations recorded at steps", "SPLIT", "LABEL",
               "tokenlab inspect %d K" % jid)
    lst = as_json(expect(tl("--json", "inspect", str(jid)), 0))
    assert lst["samples"], lst
    k = lst["samples"][0]["k"]
    g = lst["grid"]
    r = expect(tl("inspect", str(jid), str(k)), 0, "target", "prediction", "(class ")
    rows = [x for x in r.out.splitlines() if re.fullmatch(r"([A-Za-z0-9*] ){%d}\s+([A-Za-z0-9*] ){%d}" % (g, g), x)]
    assert len(rows) == g, r.out
    s = as_json(expect(tl("--json", "inspect", str(jid), str(k)), 0))
    assert s["k"] == k and len(s["target"]["index"]) == g * g, s
    step = lst["steps"][0]["step"]
    r = expect(tl("inspect", str(jid), str(k), "--step", str(step)), 0, "step %d" % step)
    expect(tl("inspect", str(jid), "9999"), 3, "404", where="err")
    # the old name, kept for scripts: the same answers (the list's hint names the word typed)
    old = expect(tl("samples", str(jid)), 0, "tokenlab samples %d K" % jid)
    new = tl("inspect", str(jid))
    assert old.out.replace("tokenlab samples", "tokenlab inspect") == new.out, (old.out, new.out)
    assert as_json(expect(tl("--json", "samples", str(jid)), 0)) == lst
    assert expect(tl("samples", str(jid), str(k), "--step", str(step)), 0).out == r.out
    assert as_json(expect(tl("--json", "samples", str(jid), str(k)), 0)) == s
    expect(tl("samples", str(jid), "9999"), 3, "404", where="err")


# ---------------------------------------------------------------- main

def main():
    global ARGS, D
    ap = argparse.ArgumentParser()
    ap.add_argument("--client", required=True)
    ap.add_argument("--daemon", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--photos", default=os.path.join(os.environ["TL_SHARED_DATA"], "photos")
                    if os.environ.get("TL_SHARED_DATA") else None)
    ARGS = ap.parse_args()
    ARGS.work = os.path.abspath(ARGS.work)
    shutil.rmtree(ARGS.work, ignore_errors=True)
    os.makedirs(os.path.join(ARGS.work, "data"))
    os.makedirs(os.path.join(ARGS.work, "home"))
    subprocess.run([ARGS.daemon, "synth", "--out", os.path.join(ARGS.work, "data", "synth"), "--classes", "4",
                    "--train", "96", "--val", "32", "--size", "32"], check=True, stdout=subprocess.DEVNULL)
    D = Daemon(ARGS.work)
    D.start()
    t0 = time.time()
    try:
        for t in (t_usage, t_unreachable, t_refusals, t_submit_wait, t_idempotency, t_jobs_show, t_init, t_metrics, t_logs,
                  t_watch_cancel, t_watch_throttle, t_watch_tty, t_failed, t_config, t_fake, t_models, t_predict, t_inspect):
            t()
    finally:
        D.stop()
    failed = sum(1 for _, s, _ in RESULTS if s == "FAIL")
    skipped = [(n, m) for n, s, m in RESULTS if s == "SKIP"]
    for n, m in skipped:
        print("skipped: %s: %s" % (n, m))
    print("%d passed, %d failed, %d skipped (%.0f s)" % (
        sum(1 for _, s, _ in RESULTS if s == "PASS"), failed, len(skipped), time.time() - t0))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
