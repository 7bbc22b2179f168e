#!/usr/bin/python3
"""Distributed training on one machine: `tokenlabd run` under real mpirun
(Open MPI, --oversubscribe) on 1, 2, 3 and 4 ranks.

usage: test_ranks.py --bin build/bin/tokenlabd --work DIR

Covers (docs/DISTRIBUTED.md):
- the same spec (label maps with MixToken, drop path, EMA, 4 micro-batches)
  gives byte-identical last.safetensors and best.safetensors on 1 process
  without mpirun, and on 2 and 4 ranks; a different micro-batch count gives
  different weights (so the comparison can fail);
- a run stopped at step 3 on 2 ranks (--stop-at: exit status 3) resumes on 1
  and on 4 ranks and ends byte-identical to the uninterrupted run, with every
  metric step in metrics.jsonl exactly once;
- 3 ranks (not a power of two) repeat their own result exactly;
- refusals: ranks that do not divide micro_batches (CONFIG_ERROR on every
  rank), ranks given different specs (DIST_MISMATCH naming the rank), a rank
  whose spec names missing data, an annotate spec under mpirun; all exit
  non-zero without hanging (a hang fails at the subprocess timeout).
Prints `N passed, M failed` last; exits non-zero on any failure.
"""
import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys

RESULTS = {"passed": 0, "failed": 0}
TIMEOUT = 300


def check(name, fn):
    try:
        fn()
        RESULTS["passed"] += 1
        print("ok   %s" % name, flush=True)
    except Exception as e:  # noqa: BLE001 (a failed check is reported, the others still run)
        RESULTS["failed"] += 1
        print("FAIL %s: %s" % (name, e), flush=True)


def mpirun_base(n):
    cmd = ["mpirun", "-np", str(n), "--oversubscribe", "--bind-to", "none"]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    return cmd


class Ctx:
    """The tokenlabd binary, the work folder, and how to start N ranks (mpirun(n): the command's start)."""
    def __init__(self, binary, work, mpirun=mpirun_base):
        self.bin = binary
        self.work = work
        self.mpirun = mpirun

    def spec(self, name, micro=4, batch=16, epochs=2, model=None, **train):
        t = {"epochs": epochs, "batch_size": batch, "micro_batches": micro, "warmup_epochs": 0.5,
             "ema_decay": 0.99, "drop_path": 0.1, "mixtoken": True, "threads": 1, "eval_every_epochs": 1,
             "cache_mb": 0, "loader_threads": 1}
        t.update(train)
        s = {"kind": "train", "name": name,
             "model": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
                       "mlp_ratio": 2, "stem_channels": 8, "skip_lam": 1, "num_classes": 4,
                       "drop_path_rate": 0.1},
             "data": {"train": os.path.join(self.work, "data", "train"),
                      "val": os.path.join(self.work, "data", "val"),
                      "label_maps": os.path.join(self.work, "data", "train.tllm")},
             "train": t}
        s["model"].update(model or {})
        path = os.path.join(self.work, name + ".json")
        with open(path, "w") as f:
            json.dump(s, f)
        return path

    def synth(self):
        """The tiny data set the specs name: 64 training and 22 validation pictures of 4 classes, 32 px."""
        subprocess.run([self.bin, "synth", "--out", os.path.join(self.work, "data"), "--classes", "4", "--train",
                        "64", "--val", "22", "--size", "32"], check=True, stdout=subprocess.DEVNULL)

    def run(self, spec, out, ranks=None, extra=()):
        """tokenlabd run on `ranks` ranks (None: without mpirun). (exit status, output)."""
        cmd = [self.bin, "run", spec, "--out", os.path.join(self.work, out)] + list(extra)
        if ranks is not None:
            cmd = self.mpirun(ranks) + cmd
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=TIMEOUT, text=True)
        return p.returncode, p.stdout

    def file(self, out, name="last.safetensors"):
        return os.path.join(self.work, out, name)


def same(a, b):
    assert os.path.exists(a) and os.path.exists(b), (a, b)
    assert filecmp.cmp(a, b, shallow=False), "%s and %s differ" % (a, b)


def steps_once(path, total):
    steps = []
    with open(path) as f:
        for line in f:
            o = json.loads(line)
            if "eval" not in o:
                steps.append(o["step"])
    assert steps == list(range(1, total + 1)), "metric steps %s" % steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    a = ap.parse_args()
    work = os.path.abspath(a.work)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    c = Ctx(os.path.abspath(a.bin), work)
    c.synth()
    base = c.spec("base")

    def one_process():
        rc, out = c.run(base, "p1")
        assert rc == 0, out
        assert "done: finished 8 steps" in out, out
    check("4 micro-batches on one process, without mpirun", one_process)

    for n in (2, 4):
        def ranks(n=n):
            rc, out = c.run(base, "r%d" % n, ranks=n)
            assert rc == 0, out
            assert "distributed: %d ranks, 4 micro-batches of 4 images per step" % n in out, out
            same(c.file("p1"), c.file("r%d" % n))
            same(c.file("p1", "best.safetensors"), c.file("r%d" % n, "best.safetensors"))
            steps_once(c.file("r%d" % n, "metrics.jsonl"), 8)
        check("%d ranks: byte-identical checkpoints to one process" % n, ranks)

    def grouping_matters():
        rc, out = c.run(c.spec("micro2", micro=2), "m2")
        assert rc == 0, out
        assert not filecmp.cmp(c.file("p1"), c.file("m2"), shallow=False), \
            "2 and 4 micro-batches gave the same weights: the comparison above could not fail"
    check("another micro-batch count gives other weights", grouping_matters)

    def resume_elsewhere():
        rc, out = c.run(base, "s2", ranks=2, extra=["--stop-at", "3"])
        assert rc != 0 and "stopped after step 3" in out, (rc, out)
        shutil.copytree(os.path.join(work, "s2"), os.path.join(work, "s2to4"))
        rc, out = c.run(base, "s2")  # the 2-rank checkpoint resumed on one process
        assert rc == 0 and "resuming at step 3 of 8" in out, out
        same(c.file("p1"), c.file("s2"))
        steps_once(c.file("s2", "metrics.jsonl"), 8)
        rc, out = c.run(base, "s2to4", ranks=4)
        assert rc == 0 and "resuming at step 3 of 8" in out, out
        same(c.file("p1"), c.file("s2to4"))
        steps_once(c.file("s2to4", "metrics.jsonl"), 8)
    check("stopped on 2 ranks, resumed on 1 and on 4: identical", resume_elsewhere)

    def three_ranks():
        s = c.spec("three", micro=6, batch=12)
        for out in ("t3a", "t3b"):
            rc, text = c.run(s, out, ranks=3)
            assert rc == 0, text
        same(c.file("t3a"), c.file("t3b"))
    check("3 ranks repeat their own result exactly", three_ranks)

    def refusals():
        rc, out = c.run(base, "bad3", ranks=3)
        assert rc != 0 and "the 3 ranks must divide train.micro_batches (4)" in out, (rc, out)
        other = c.spec("other", lr=0.002)
        cmd = mpirun_base(1) + [c.bin, "run", base, "--out", os.path.join(work, "mm")] + [":"] + \
            ["-np", "1", c.bin, "run", other, "--out", os.path.join(work, "mm")]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=TIMEOUT, text=True)
        assert p.returncode != 0 and "DIST_MISMATCH" in p.stdout and \
            "rank 1 (host" in p.stdout and "in its job spec" in p.stdout, p.stdout
        # a rank that cannot start (its spec names data that is not there) ends the job, no rank waits
        broken = os.path.join(work, "broken.json")
        with open(base) as f:
            doc = json.load(f)
        doc["data"]["train"] = os.path.join(work, "no-such-folder")
        with open(broken, "w") as f:
            json.dump(doc, f)
        cmd = mpirun_base(1) + [c.bin, "run", base, "--out", os.path.join(work, "br")] + [":"] + \
            ["-np", "1", c.bin, "run", broken, "--out", os.path.join(work, "br")]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=TIMEOUT, text=True)
        assert p.returncode != 0 and "no-such-folder" in p.stdout, p.stdout
        ann = os.path.join(work, "ann.json")
        with open(ann, "w") as f:
            json.dump({"kind": "annotate", "name": "a"}, f)
        rc, out = c.run(ann, "ann", ranks=2)
        assert rc != 0 and "annotate jobs run on one process" in out, out
    check("refusals: ranks vs micro_batches, different specs, annotate", refusals)

    print("%d passed, %d failed" % (RESULTS["passed"], RESULTS["failed"]))
    sys.exit(1 if RESULTS["failed"] else 0)


if __name__ == "__main__":
    main()
