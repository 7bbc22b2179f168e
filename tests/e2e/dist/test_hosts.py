#!/usr/bin/python3
"""Distributed training on two hosts: `tokenlabd run` under mpirun with one
rank in each of two network namespaces joined by a veth pair, each with its
own host name (scripts/netns_hosts.sh; the ranks talk TCP over the veth).

usage: test_hosts.py --bin build/bin/tokenlabd --work DIR [--netns-script scripts/netns_hosts.sh]

Covers (docs/DISTRIBUTED.md):
- the tiny spec of test_ranks.py on 2 hosts succeeds, its run log names the
  two hosts, and its last.safetensors and best.safetensors are byte-identical
  to the same spec on one process without mpirun; its metric lines carry
  "comm_s" (the step's gradient sum), the one-process run's do not;
- SIGKILL of the rank on the second host (its `tokenlabd run` process) once
  the first checkpoint exists, within the epoch after it: mpirun ends within
  KILL_BOUND seconds with a non-zero status (not ending in time is a
  failure); the same command then resumes from the checkpoint ("resuming at
  step K"), finishes, metrics.jsonl holds every step exactly once, and the
  final last.safetensors equals the uninterrupted one-process run's.
Needs root and `ip netns`: without them it prints "SKIP: ..." and exits 0
(ctest reports it as skipped). The namespaces are named after this process
(tlh<pid>h0, tlh<pid>h1) and deleted at the end, also on failure; ones left
by an earlier run that was killed are deleted at the start.
Prints `N passed, M failed` last; exits non-zero on any failure.
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_ranks import RESULTS, TIMEOUT, Ctx, check, same, steps_once  # noqa: E402

KILL_BOUND = 120   # seconds mpirun may take to end after a rank is killed
PREFIX = "tlh"     # namespaces tlh<pid>h0 and tlh<pid>h1


class Hosts:
    """The two hosts of this run (scripts/netns_hosts.sh up/down/pids)."""
    def __init__(self, script, folder):
        self.script = script
        self.name = "%s%d" % (PREFIX, os.getpid())
        self.dir = folder

    def up(self):
        """0 when the hosts are up, 4 when namespaces cannot be made here, else the script's status."""
        return subprocess.run([self.script, "up", self.name, self.dir]).returncode

    def down(self, name=None):
        subprocess.run([self.script, "down", name or self.name])

    def down_stale(self):
        """Deletes the namespaces of earlier runs of this test whose process is gone."""
        out = subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE, text=True).stdout
        for pid in sorted(set(re.findall(r"^%s(\d+)h[01]\b" % PREFIX, out, re.M))):
            if int(pid) != os.getpid() and not os.path.exists("/proc/%s" % pid):
                self.down(PREFIX + pid)

    def mpirun(self, n):
        return [os.path.join(self.dir, "mpirun"), "-np", str(n)]

    def host(self, i):
        return "%s-host%d" % (self.name, i)

    def tokenlabd_pids(self, i):
        """The `tokenlabd` processes running in host i's namespace."""
        out = subprocess.run([self.script, "pids", self.name, str(i)], stdout=subprocess.PIPE, text=True).stdout
        pids = []
        for p in out.split():
            try:
                with open("/proc/%s/comm" % p) as f:
                    if f.read().strip() == "tokenlabd":
                        pids.append(int(p))
            except OSError:
                pass
        return pids


def metric_steps(path):
    """The training steps in a metrics file so far (complete lines only)."""
    steps = []
    try:
        with open(path) as f:
            for line in f:
                if line.endswith("\n") and '"eval"' not in line:
                    steps.append(json.loads(line)["step"])
    except OSError:
        pass
    return steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--netns-script", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                           "..", "..", "..", "scripts", "netns_hosts.sh"))
    a = ap.parse_args()
    work = os.path.abspath(a.work)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    hosts = Hosts(os.path.abspath(a.netns_script), os.path.join(work, "hosts"))
    if os.geteuid() != 0:
        print("SKIP: two hosts as network namespaces need root (uid %d)" % os.geteuid())
        return 0
    hosts.down_stale()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # the finally below still runs
    rc = hosts.up()
    if rc == 4:
        print("SKIP: network namespaces cannot be made here (scripts/netns_hosts.sh up said why above)")
        return 0
    if rc != 0:
        print("FAIL setting up the two hosts: scripts/netns_hosts.sh up exited %d" % rc)
        hosts.down()
        return 1
    try:
        run_checks(Ctx(os.path.abspath(a.bin), work, mpirun=hosts.mpirun), hosts)
    finally:
        hosts.down()
    print("%d passed, %d failed" % (RESULTS["passed"], RESULTS["failed"]))
    return 1 if RESULTS["failed"] else 0


def run_checks(c, hosts):
    c.synth()
    base = c.spec("base")

    def two_hosts():
        rc, out = c.run(base, "p1")
        assert rc == 0 and "done: finished 8 steps" in out, out
        rc, out = c.run(base, "h2", ranks=2)
        assert rc == 0, out
        assert "2 ranks on %s, %s" % (hosts.host(0), hosts.host(1)) in out, out
        assert "distributed: 2 ranks, 4 micro-batches of 4 images per step" in out, out
        same(c.file("p1"), c.file("h2"))
        same(c.file("p1", "best.safetensors"), c.file("h2", "best.safetensors"))
        steps_once(c.file("h2", "metrics.jsonl"), 8)
        for out, dist in (("h2", True), ("p1", False)):  # "comm_s": the gradient sum's seconds, distributed only
            for o in map(json.loads, open(c.file(out, "metrics.jsonl"))):
                assert "eval" in o or ("comm_s" in o) == dist and o.get("comm_s", 0) >= 0, (out, o)
    check("2 hosts: byte-identical checkpoints to one process", two_hosts)

    # Slower steps (64 px, 4 blocks) over 10 epochs of 4 steps, a checkpoint every epoch: the kill comes
    # after step 4's checkpoint, within the next epoch, with many steps still to go.
    spe, total = 4, 40
    long_spec = c.spec("long", epochs=10, eval_every_epochs=5, checkpoint_every_epochs=1,
                       model={"img_size": 64, "embed_dim": 64, "depth": 4})

    def kill_and_resume():
        rc, out = c.run(long_spec, "lp1")
        assert rc == 0 and "done: finished %d steps" % total in out, out
        cmd = hosts.mpirun(2) + [c.bin, "run", long_spec, "--out", os.path.join(c.work, "lh2")]
        log = open(os.path.join(c.work, "lh2.killed.log"), "w")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # metrics.jsonl is flushed before each checkpoint (not after every step), and a checkpoint appears
            # by rename: once last.safetensors exists the ranks are in the steps after it, in epoch 2.
            deadline = time.monotonic() + TIMEOUT
            while not os.path.exists(c.file("lh2")) or spe not in metric_steps(c.file("lh2", "metrics.jsonl")):
                assert p.poll() is None, "the 2-host run ended (status %s) before it could be killed" % p.returncode
                assert time.monotonic() < deadline, "no checkpoint within %d s" % TIMEOUT
                time.sleep(0.01)
            victims = hosts.tokenlabd_pids(1)
            assert len(victims) == 1, "tokenlabd processes on host 1: %s" % victims
            os.kill(victims[0], signal.SIGKILL)
            try:
                rc = p.wait(timeout=KILL_BOUND)
            except subprocess.TimeoutExpired:
                raise AssertionError("mpirun did not end within %d s after rank 1 was killed" % KILL_BOUND)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            log.close()
        with open(log.name) as f:
            killed_out = f.read()
        assert rc != 0, "mpirun exited 0 after a rank was killed:\n" + killed_out
        rc, out = c.run(long_spec, "lh2", ranks=2)
        assert rc == 0, out
        m = re.search(r"resuming at step (\d+) of %d" % total, out)
        assert m, out
        k = int(m.group(1))
        assert spe <= k < total and k % spe == 0, "resumed at step %d" % k
        print("     (rank 1 killed after the checkpoint at step %d; resumed there)" % k, flush=True)
        same(c.file("lp1"), c.file("lh2"))
        steps_once(c.file("lh2", "metrics.jsonl"), total)
    check("rank on host 1 killed in an epoch: mpirun ends, the rerun resumes and matches one process",
          kill_and_resume)


if __name__ == "__main__":
    sys.exit(main())
