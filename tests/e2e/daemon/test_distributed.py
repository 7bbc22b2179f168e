#!/usr/bin/python3
"""End-to-end tests of distributed jobs in tokenlabd serve (issue 16): the
real daemon on a loopback port with --mpi-hostfile (localhost slots=4; the
ranks are oversubscribed through --mpi-arg), the built-in synthetic data,
real mpirun (Open MPI) and real ranks.

usage: test_distributed.py --bin build/bin/tokenlabd --work DIR

Covers:
- a 2-rank job succeeds: its metric steps and evaluations are in the store,
  GET /api/v1/jobs/{id} shows distributed.ranks 2, two hosts and per-rank
  images/s, and its last.safetensors is byte-identical to the same spec
  trained in the daemon without "distributed";
- refusals at submit (422 at /distributed/ranks): ranks from a daemon
  started without --mpi-hostfile, more ranks than the hostfile's slots,
  ranks that do not divide train.micro_batches; a malformed hostfile stops
  serve with exit status 2;
- cancelling a running 2-rank job: CANCELLED with a checkpoint, and no
  mpirun or rank of it left (/proc);
- SIGKILL of one rank mid-run: the attempt fails, the job resumes as
  attempt 2 from its checkpoint and succeeds, every loss step stored once.
Prints `N passed, M failed` last; exits non-zero on any failure.
"""
import argparse
import filecmp
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


def dist_spec(name, ranks=2, epochs=2, micro=4):
    s = TD.spec(name, epochs=epochs, extra_train={"micro_batches": micro, "cache_mb": 0})
    if ranks is not None:
        s["distributed"] = {"ranks": ranks}
    return s


def submit(d, s):
    return d.request("POST", "/api/v1/jobs", s)


def run_dir(d, jid):
    return os.path.join(d.state, "runs", str(jid))


def job_procs(d, jid):
    """(pid, comm, cmdline) of every process whose command line names job jid's run folder."""
    needle = run_dir(d, jid) + "/"
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % p, "rb") as f:
                cmd = f.read().split(b"\0")
            with open("/proc/%s/stat" % p) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in cmd if a]
        if state != "Z" and any(a.startswith(needle) or a == needle[:-1] for a in args):
            out.append((int(p), os.path.basename(args[0]) if args else "", args))
    return out


def rank_pids(d, jid):
    """The `tokenlabd run <this job's spec>` processes (the ranks, not mpirun)."""
    spec = os.path.join(run_dir(d, jid), "spec.json")
    return [p for p, name, args in job_procs(d, jid) if name == "tokenlabd" and "run" in args and spec in args]


def wait_progress(d, jid, step, timeout=300):
    """Waits until job jid has a last checkpoint and has trained past step."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        j = d.job(jid)
        if j["state"] != "RUNNING":
            raise AssertionError("job left RUNNING early: %s" % j)
        st, c, _, _ = d.request("GET", "/api/v1/jobs/%d/checkpoints" % jid)
        if any(x["kind"] == "last" for x in c["checkpoints"]) and j["progress"]["step"] > step:
            return j
        time.sleep(0.1)
    raise AssertionError("job %d did not get past step %d: %s" % (jid, step, d.job(jid)))


@check("2 ranks: stored, shown, identical")
def t_two_ranks(d):
    # the same name: the checkpoint's metadata holds it
    st, j, _, _ = submit(d, dist_spec("twin"))
    assert st == 201, (st, j)
    st, k, _, _ = submit(d, dist_spec("twin", ranks=None))
    assert st == 201, (st, k)
    assert k["distributed"] is None, k
    j = d.wait_state(j["id"], {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=300)
    assert j["state"] == "SUCCEEDED", j
    k = d.wait_state(k["id"], {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=300)
    assert k["state"] == "SUCCEEDED", k
    total = j["progress"]["total_steps"]
    assert total == 12, j["progress"]
    assert TD.loss_steps(d, j["id"]) == list(range(1, total + 1))
    st, m, _, _ = d.request("GET", "/api/v1/jobs/%d/metrics/top1" % j["id"])
    assert st == 200 and len(m["points"]) == 2, m
    dist = j["distributed"]
    assert dist["ranks_requested"] == 2 and dist["ranks"] == 2, dist
    assert len(dist["hosts"]) == 2 and all(isinstance(h, str) and h for h in dist["hosts"]), dist
    assert len(dist["rank_img_per_s"]) == 2 and all(v > 0 for v in dist["rank_img_per_s"]), dist
    assert isinstance(dist["comm_seconds"], (int, float)) and dist["comm_seconds"] >= 0, dist
    st, c, _, _ = d.request("GET", "/api/v1/jobs/%d/checkpoints" % j["id"])
    assert {x["kind"] for x in c["checkpoints"]} >= {"last", "best"}, c
    a = os.path.join(run_dir(d, j["id"]), "last.safetensors")
    b = os.path.join(run_dir(d, k["id"]), "last.safetensors")
    assert filecmp.cmp(a, b, shallow=False), "the 2-rank and in-daemon checkpoints differ"
    st, log, _, _ = d.request("GET", "/api/v1/jobs/%d/logs" % j["id"])
    assert "running on 2 ranks" in log["text"] and "token inspection is not recorded" in log["text"], log["text"]
    assert not job_procs(d, j["id"]), job_procs(d, j["id"])


@check("refusals at /distributed/ranks")
def t_refusals(d):
    st, b, _, _ = submit(d, dist_spec("too-many", ranks=8, micro=8))
    problem(st, b, 422, "SPEC_INVALID", "/distributed/ranks")
    assert "4" in b["detail"] and "slots" in b["detail"], b
    st, b, _, _ = submit(d, dist_spec("not-dividing", ranks=3, micro=4))
    problem(st, b, 422, "SPEC_INVALID", "/distributed/ranks")
    assert "micro_batches" in b["detail"], b
    other = TD.Daemon(os.path.join(TD.ARGS.work, "plain"))
    os.makedirs(other.work, exist_ok=True)
    os.symlink(os.path.join(TD.ARGS.work, "data"), other.data)
    other.start()
    try:
        st, b, _, _ = submit(other, dist_spec("no-hostfile"))
        problem(st, b, 422, "SPEC_INVALID", "/distributed/ranks")
        assert "--mpi-hostfile" in b["detail"], b
    finally:
        other.stop()
    bad = os.path.join(TD.ARGS.work, "bad-hosts")
    with open(bad, "w") as f:
        f.write("localhost slots=4\nnode2 slots=many\n")
    p = subprocess.run([TD.ARGS.bin, "serve", "--port", "0", "--state", os.path.join(TD.ARGS.work, "bad-state"),
                        "--data-root", d.data, "--mpi-hostfile", bad], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=60)
    assert p.returncode == 2 and "line 2" in p.stderr and "slots" in p.stderr, (p.returncode, p.stderr)


@check("cancel a 2-rank job")
def t_cancel(d):
    st, j, _, _ = submit(d, dist_spec("dist-cancel", epochs=400))
    assert st == 201, j
    jid = j["id"]
    d.wait_state(jid, {"RUNNING"}, timeout=120)
    wait_progress(d, jid, 8)
    assert len(rank_pids(d, jid)) == 2, job_procs(d, jid)
    st, b, _, _ = d.request("POST", "/api/v1/jobs/%d/cancel" % jid)
    assert st in (200, 202), (st, b)
    j = d.wait_state(jid, {"CANCELLED", "FAILED", "SUCCEEDED"}, timeout=300)
    assert j["state"] == "CANCELLED" and j["state_reason"] == "USER_CANCEL", j
    st, c, _, _ = d.request("GET", "/api/v1/jobs/%d/checkpoints" % jid)
    last = [x for x in c["checkpoints"] if x["kind"] == "last"]
    assert last and max(x["step"] for x in last) == j["progress"]["step"], (c, j["progress"])
    assert not job_procs(d, jid), "processes left: %s" % job_procs(d, jid)


@check("a lost rank: attempt 2 resumes")
def t_lost_rank(d):
    st, j, _, _ = submit(d, dist_spec("dist-kill", epochs=12))
    assert st == 201, j
    jid = j["id"]
    d.wait_state(jid, {"RUNNING"}, timeout=120)
    wait_progress(d, jid, 10)
    ranks = rank_pids(d, jid)
    assert len(ranks) == 2, job_procs(d, jid)
    os.kill(ranks[-1], signal.SIGKILL)
    j = d.wait_state(jid, {"SUCCEEDED", "FAILED", "CANCELLED"}, timeout=600)
    assert j["state"] == "SUCCEEDED", j
    assert j["attempt"] == 2, j
    st, hist, _, _ = d.request("GET", "/api/v1/jobs/%d/history" % jid)
    if st == 200:
        reasons = [h.get("reason") for h in hist.get("transitions", hist.get("history", []))]
        assert "RANK_LOST" in reasons, hist
    total = j["progress"]["total_steps"]
    assert TD.loss_steps(d, jid) == list(range(1, total + 1)), "loss steps lost or repeated"
    st, log, _, _ = d.request("GET", "/api/v1/jobs/%d/logs" % jid)
    assert "resuming from the checkpoint at step" in log["text"], log["text"]
    assert not job_procs(d, jid), job_procs(d, jid)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    TD.ARGS = ap.parse_args()
    TD.ARGS.work = os.path.abspath(TD.ARGS.work)
    TD.ARGS.bin = os.path.abspath(TD.ARGS.bin)
    shutil.rmtree(TD.ARGS.work, ignore_errors=True)
    os.makedirs(os.path.join(TD.ARGS.work, "data"))
    subprocess.run([TD.ARGS.bin, "synth", "--out", os.path.join(TD.ARGS.work, "data", "synth"), "--classes", "4",
                    "--train", "96", "--val", "32", "--size", "32"], check=True, stdout=subprocess.DEVNULL)
    hosts = os.path.join(TD.ARGS.work, "hosts")
    with open(hosts, "w") as f:
        f.write("# the test's one machine\nlocalhost slots=4\n")
    d = TD.Daemon(TD.ARGS.work, extra=["--threads-per-job", "1", "--mpi-hostfile", hosts,
                                       "--mpi-arg", "--oversubscribe"])
    return TD.run_checks(d, (t_two_ranks, t_refusals, t_cancel, t_lost_rank))


if __name__ == "__main__":
    sys.exit(main())
