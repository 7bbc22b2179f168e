#!/usr/bin/python3
"""Read-only API tokens: `tokenlabd token` against the real daemon and its SQLite file.

usage: test_tokens.py --bin build/bin/tokenlabd --work DIR

Covers (issue 17, who may do what):
- `tokenlabd token add --read NAME` while the daemon runs: the printed token opens reads, event streams and
  inference of a daemon bound to 0.0.0.0 (where every route needs a token), and is refused with 403
  READ_ONLY_TOKEN on submitting, cancelling and deleting; the admin token still does everything;
- the database keeps only the token's SHA-256 (Python's hashlib agrees), never its text;
- bad use of the command: no database yet, a repeated or malformed name, no role, revoking an unknown name:
  each a message and a non-zero exit;
- `tokenlabd token revoke NAME` takes effect with the running daemon's next request (403 naming the revoked
  token), `token list --json` shows it revoked, and the name can be given to a new token, which works while
  the revoked one stays refused;
- on loopback, reads need no token, and a read token still cannot submit.
Prints `N passed, M failed` last; exits non-zero on any failure.
"""
import argparse
import hashlib
import http.client
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import test_daemon as TD  # noqa: E402  (the Daemon class and helpers)

check = TD.check
problem = TD.problem


def tokenctl(state, *args):
    """Runs `tokenlabd token ARGS --state STATE`: (exit code, stdout, stderr)."""
    p = subprocess.run([TD.ARGS.bin, "token"] + list(args) + ["--state", state], capture_output=True, text=True,
                       timeout=60)
    return p.returncode, p.stdout, p.stderr


def stream_status(d, token):
    """The status line of GET /api/v1/events with the token (the stream is closed after its headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
    h = {"Host": "127.0.0.1:%d" % d.port}
    if token:
        h["Authorization"] = "Bearer " + token
    conn.request("GET", "/api/v1/events", headers=h)
    r = conn.getresponse()
    st = r.status
    conn.close()
    return st


SPEC = TD.spec("t", epochs=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    TD.ARGS = ap.parse_args()
    work = TD.ARGS.work
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "data"))
    subprocess.run([TD.ARGS.bin, "synth", "--out", os.path.join(work, "data", "synth"), "--classes", "4",
                    "--train", "32", "--val", "16", "--size", "32"], check=True, stdout=subprocess.DEVNULL)
    state = os.path.join(work, "state")
    d = TD.Daemon(work, extra=["--bind", "0.0.0.0"])
    tok = {}

    @check("no database yet: token add says where it looked")
    def t_nodb(_):
        rc, out, err = tokenctl(state, "add", "--read", "early")
        assert rc != 0 and not out and "no database" in err and state in err, (rc, out, err)

    t_nodb(None)

    @check("off loopback every route needs a token")
    def t_closed(d):
        st, b, _, _ = d.request("GET", "/api/v1/jobs", token=False)
        problem(st, b, 401, "UNAUTHENTICATED")
        assert stream_status(d, None) == 401
        st, b, _, _ = d.request("GET", "/v2/health/ready", token=False)
        assert st == 401, st

    @check("token add --read while the daemon runs; the token reads, streams and infers")
    def t_add(d):
        rc, out, err = tokenctl(state, "add", "--read", "viewer")
        assert rc == 0, (rc, err)
        t = out.strip()
        assert re.fullmatch(r"tlr_[0-9a-f]{64}", t), out
        assert "shown only now" in err
        tok["viewer"] = t
        st, b, _, _ = d.request("GET", "/api/v1/jobs", token=t)
        assert st == 200 and "jobs" in b, (st, b)
        assert stream_status(d, t) == 200
        st, _, _, _ = d.request("GET", "/v2/health/ready", token=t)
        assert st == 200, st
        st, b, _, _ = d.request("GET", "/api/v1/jobs", token=t[:-1] + ("0" if t[-1] != "0" else "1"))
        problem(st, b, 403, "FORBIDDEN")

    @check("a read token cannot submit, cancel or delete; the admin token can")
    def t_readonly(d):
        t = tok["viewer"]
        st, b, _, _ = d.request("POST", "/api/v1/jobs", body=SPEC, token=t)
        problem(st, b, 403, "READ_ONLY_TOKEN")
        assert "viewer" in b["detail"], b
        st, b, _, _ = d.request("POST", "/api/v1/jobs", body=SPEC)
        assert st in (201, 202), (st, b)
        jid = b["id"]
        st, b, _, _ = d.request("POST", "/api/v1/jobs/%d/cancel" % jid, token=t)
        problem(st, b, 403, "READ_ONLY_TOKEN")
        st, b, _, _ = d.request("DELETE", "/api/v1/jobs/%d" % jid, token=t)
        problem(st, b, 403, "READ_ONLY_TOKEN")
        st, b, _, _ = d.request("POST", "/api/v1/jobs/%d/cancel" % jid)
        assert st in (200, 202), (st, b)

    @check("the database holds the token's SHA-256, never the token")
    def t_hashed(d):
        t = tok["viewer"]
        db = sqlite3.connect("file:%s?mode=ro" % os.path.join(state, "tokenlab.db"), uri=True)
        rows = db.execute("SELECT name, role, hash, revoked_ms FROM api_tokens").fetchall()
        db.close()
        assert rows == [("viewer", "read", hashlib.sha256(t.encode()).digest(), None)], rows
        for name in os.listdir(state):
            p = os.path.join(state, name)
            if os.path.isfile(p):
                with open(p, "rb") as f:
                    assert t.encode() not in f.read(), "the token's text is in %s" % p

    @check("bad use of token: each a message and a non-zero exit")
    def t_bad(_):
        rc, out, err = tokenctl(state, "add", "--read", "viewer")
        assert rc != 0 and not out and "exists" in err, (rc, out, err)
        rc, out, err = tokenctl(state, "add", "--read", "two words")
        assert rc != 0 and not out and "A-Z a-z 0-9" in err, (rc, out, err)
        rc, out, err = tokenctl(state, "add", "--read", "x" * 65)
        assert rc != 0 and not out, (rc, out, err)
        rc, out, err = tokenctl(state, "add", "nobody")
        assert rc == 2 and "--read" in err, (rc, out, err)
        rc, out, err = tokenctl(state, "revoke", "nobody")
        assert rc != 0 and "no valid token is named 'nobody'" in err, (rc, out, err)
        rc, out, err = tokenctl(state, "frobnicate")
        assert rc == 2 and "unknown action" in err, (rc, out, err)

    @check("revoke takes effect with the next request; the name can be reused")
    def t_revoke(d):
        t = tok["viewer"]
        rc, _, err = tokenctl(state, "revoke", "viewer")
        assert rc == 0, (rc, err)
        st, b, _, _ = d.request("GET", "/api/v1/jobs", token=t)
        problem(st, b, 403, "FORBIDDEN")
        assert "revoked" in b["detail"] and "viewer" in b["detail"], b
        rc, out, _ = tokenctl(state, "list", "--json")
        listed = json.loads(out)
        assert len(listed) == 1 and listed[0]["name"] == "viewer" and listed[0]["revoked"], listed
        rc, _, err = tokenctl(state, "revoke", "viewer")
        assert rc != 0, "revoking twice succeeded"
        rc, out, err = tokenctl(state, "add", "--read", "viewer")
        assert rc == 0, (rc, err)
        t2 = out.strip()
        st, _, _, _ = d.request("GET", "/api/v1/jobs", token=t2)
        assert st == 200, st
        st, b, _, _ = d.request("GET", "/api/v1/jobs", token=t)
        problem(st, b, 403, "FORBIDDEN")
        rc, out, _ = tokenctl(state, "list")
        lines = out.strip().splitlines()
        assert lines[0].split() == ["NAME", "ROLE", "CREATED", "REVOKED"] and len(lines) == 3, out
        tok["viewer2"] = t2

    status = TD.run_checks(d, (t_closed, t_add, t_readonly, t_hashed, t_bad, t_revoke))

    d2 = TD.Daemon(work, extra=["--bind", "127.0.0.1"])

    @check("on loopback reads are open, and a read token still cannot submit")
    def t_loopback(d):
        st, _, _, _ = d.request("GET", "/api/v1/jobs", token=False)
        assert st == 200, st
        st, b, _, _ = d.request("POST", "/api/v1/jobs", body=SPEC, token=tok["viewer2"])
        problem(st, b, 403, "READ_ONLY_TOKEN")

    return TD.run_checks(d2, (t_loopback,)) or status


if __name__ == "__main__":
    sys.exit(main())
