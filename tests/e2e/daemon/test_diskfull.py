#!/usr/bin/python3
"""End-to-end tests of a full disk: the real daemon on a loopback port, a real
SQLite file, real jobs on the built-in synthetic data, and the disk made full
two ways: the full-disk switch (TL_FAULT_ENOSPC_FILE, engine/include/tokenlab/
files.h), which needs nothing, and a small tmpfs filled with a filler file,
which needs root (that variant prints SKIP and passes when it cannot mount).

usage: test_diskfull.py --bin build/bin/tokenlabd --work DIR

Covers: a training job whose checkpoint write finds the disk full goes back to
QUEUED with DISK_FULL and a message naming the path and the free space, its
last checkpoint whole and no temporary file left, while /healthz (which says
the disk is full), the job list and /metrics answer and the daemon uses less
than 0.5 s of CPU in 5 s (the scheduler does not spin); once the space is back
it resumes by itself and SUCCEEDS with every metric step exactly once. The
same with the store's disk full too (its writes refused with SQLITE_FULL: the
job's state waits until it can be written). An annotate job whose label-map
write finds the disk full leaves the older label map byte for byte and
finishes once there is room. `tokenlabd run` exits 4 with a clear message on a
full disk and resumes with the same command. The tmpfs variant: a real ENOSPC.
Prints `N passed, M failed` last; exits non-zero on any failure.
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import test_daemon as TD  # noqa: E402  (the Daemon class and helpers)

check = TD.check
STATE = {}
CPU_LIMIT_S = 0.5  # CPU the daemon may use in CPU_WINDOW_S while a job waits for space
CPU_WINDOW_S = 5.0


def switch(content):
    """Sets the full-disk switch file (content: bytes allowed [files|store]), or removes it (None)."""
    path = STATE["switch"]
    if content is None:
        if os.path.exists(path):
            os.unlink(path)
        return
    with open(path + ".new", "w") as f:
        f.write(content)
    os.rename(path + ".new", path)


def safetensors_info(path):
    """(step, whole): the checkpoint's tokenlab.step and whether the file holds exactly what its header says."""
    with open(path, "rb") as f:
        raw = f.read()
    (hlen,) = struct.unpack("<Q", raw[:8])
    hdr = json.loads(raw[8:8 + hlen])
    end = max(v["data_offsets"][1] for k, v in hdr.items() if k != "__metadata__")
    return int(hdr["__metadata__"]["tokenlab.step"]), len(raw) == 8 + hlen + end


def temps(folder):
    return [n for n in os.listdir(folder) if ".tmp" in n]


def last_checkpoint(d, jid):
    st, c, _, _ = d.request("GET", "/api/v1/jobs/%d/checkpoints" % jid)
    assert st == 200, c
    rows = [x for x in c["checkpoints"] if x["kind"] == "last"]
    return max(rows, key=lambda x: x["step"]) if rows else None


def wait_checkpoint(d, jid, at_least, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        row = last_checkpoint(d, jid)
        if row and row["step"] >= at_least:
            return row
        time.sleep(0.05)
    raise AssertionError("no checkpoint at step >= %d: %s" % (at_least, d.job(jid)))


def wait_for(pred, what, timeout=120, every=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise AssertionError("timed out waiting for " + what)


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def answers(d):
    """The daemon answers while the disk is full: /healthz (saying so), the job list, /metrics."""
    st, h, _, _ = d.request("GET", "/healthz", token=False)
    assert st == 200 and h["status"] == "ok", (st, h)
    st, lst, _, _ = d.request("GET", "/api/v1/jobs")
    assert st == 200 and "jobs" in lst, (st, lst)
    st, _, _, data = d.request("GET", "/metrics", token=False)
    assert st == 200 and b"tokenlab_disk_full_events_total" in data
    return h["disk"]


def idle_cpu(d):
    """The daemon's CPU seconds over CPU_WINDOW_S while nothing can run (behaviour: no busy loop)."""
    c0 = cpu_seconds(d.proc.pid)
    time.sleep(CPU_WINDOW_S)
    used = cpu_seconds(d.proc.pid) - c0
    print("  daemon CPU while a job waits for space: %.2f s in %.0f s" % (used, CPU_WINDOW_S))
    assert used < CPU_LIMIT_S, "the daemon used %.2f s of CPU in %.0f s while waiting for space" % (used, CPU_WINDOW_S)


def loss_steps(d, jid):
    return TD.loss_steps(d, jid)


def paused_for_space(d, jid):
    j = d.job(jid)
    return j if j["state"] == "QUEUED" and j["state_reason"] == "DISK_FULL" else None


def held_then_resumed(d, jid, run_dir, ckpt, free_space):
    """Common checks of a job paused for a full disk, then the space given back by free_space()."""
    j = wait_for(lambda: paused_for_space(d, jid), "job %d to pause with DISK_FULL" % jid)
    msg = j["state_message"]
    print("  paused: " + msg)
    assert "no space left on the device" in msg or "could not be saved" in msg, msg
    assert "waiting for" in msg and "free" in msg, msg
    step, whole = safetensors_info(os.path.join(run_dir, "last.safetensors"))
    assert whole, "last.safetensors is not whole"
    assert step >= ckpt["step"], (step, ckpt)
    assert not temps(run_dir), "temporary files left: %s" % temps(run_dir)
    disk = answers(d)
    assert disk["full"] and disk["jobs_waiting_for_space"] >= 1, disk
    st, _, _, data = d.request("GET", "/metrics", token=False)
    assert b'tokenlab_disk_full_events_total{where="job"} 0' not in data
    idle_cpu(d)
    assert paused_for_space(d, jid), "the job left its pause while the disk was full: %s" % d.job(jid)
    free_space()
    j = d.wait_state(jid, {"SUCCEEDED", "FAILED"}, timeout=300)
    assert j["state"] == "SUCCEEDED", j
    total = j["progress"]["total_steps"]
    steps = loss_steps(d, jid)
    assert steps == list(range(1, total + 1)), "steps lost or repeated: %d points for %d steps" % (len(steps), total)
    hist = [(h["from"], h["to"], h["reason"]) for h in j["state_history"]]
    assert ("RUNNING", "QUEUED", "DISK_FULL") in hist, hist
    assert j["attempt"] == 1, "a pause for a full disk is not a new attempt: %s" % j
    return j


@check("checkpoint write on a full disk (switch)")
def t_checkpoint(d):
    switch(None)
    st, j, _, _ = d.request("POST", "/api/v1/jobs", body=TD.spec("full-ckpt", epochs=12))
    assert st == 201, j
    jid = j["id"]
    ckpt = wait_checkpoint(d, jid, 6)
    switch("0 files")  # every file write of the daemon fails from now on; the store still writes
    run_dir = os.path.join(d.state, "runs", str(jid))
    j = held_then_resumed(d, jid, run_dir, ckpt, lambda: switch(None))
    STATE["teacher_job"] = jid
    print("  paused at the checkpoint after step %d, resumed, %d steps" % (ckpt["step"], j["progress"]["total_steps"]))


@check("the store's disk full too (switch)")
def t_store(d):
    switch(None)
    st, j, _, _ = d.request("POST", "/api/v1/jobs", body=TD.spec("full-store", epochs=12))
    assert st == 201, j
    jid = j["id"]
    ckpt = wait_checkpoint(d, jid, 6)
    switch("0")  # the store's writes fail too (SQLITE_FULL): the job's state cannot be written yet
    disk = wait_for(lambda: (lambda h: h if h["full"] else None)(answers(d)), "/healthz to report the full disk")
    print("  /healthz while everything is full: %s" % disk)
    st, b, _, _ = d.request("POST", "/api/v1/jobs", body=TD.spec("refused", epochs=1))
    TD.problem(st, b, 507, "DISK_FULL")
    j = d.job(jid)
    assert j["state"] in ("RUNNING", "QUEUED"), j
    idle_cpu(d)
    # the store writes again, the files still cannot: the job's pause is written within the retry's backoff
    switch("0 files")
    run_dir = os.path.join(d.state, "runs", str(jid))
    held_then_resumed(d, jid, run_dir, ckpt, lambda: switch(None))


def part_bytes(images_dir, topk, grid):
    """The bytes written for the part file of an annotation of images_dir in one part (annotate_parts.c's
    format: a placeholder header, the records, the header again)."""
    n = 0
    for cls in sorted(os.listdir(images_dir)):
        folder = os.path.join(images_dir, cls)
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            n += 8 + len(cls + "/" + name) + topk * grid * grid * (4 + 2)
    return 2 * 104 + n


@check("label-map write on a full disk (switch)")
def t_labelmap(d):
    switch(None)
    st, m, _, _ = d.request("POST", "/api/v1/models", {"name": "teacher", "job_id": STATE["teacher_job"]})
    assert st == 201, m
    out = os.path.join(d.data, "synth", "annotated.tllm")
    shutil.copy(os.path.join(d.data, "synth", "train.tllm"), out)  # an older label map there
    older = open(out, "rb").read()
    spec = {"kind": "annotate", "name": "full-map", "source": {"model": "teacher"},
            "data": {"images": "synth/train", "out": "synth/annotated.tllm"},
            "annotate": {"topk": 3, "batch_size": 16}}
    # room for the part file and 100 bytes: the label map's write is the one that finds the disk full
    switch("%d files" % (part_bytes(os.path.join(d.data, "synth", "train"), 3, 4) + 100))
    st, j, _, _ = d.request("POST", "/api/v1/jobs", body=spec)
    assert st == 201, j
    jid = j["id"]
    j = wait_for(lambda: paused_for_space(d, jid), "the annotate job to pause with DISK_FULL")
    assert out in j["state_message"] and "an older file there is kept" in j["state_message"], j["state_message"]
    assert open(out, "rb").read() == older, "the older label map changed"
    assert not temps(os.path.dirname(out)), temps(os.path.dirname(out))
    answers(d)
    switch(None)
    j = d.wait_state(jid, {"SUCCEEDED", "FAILED"}, timeout=300)
    assert j["state"] == "SUCCEEDED", j
    st, lst, _, _ = d.request("GET", "/api/v1/labelmaps", token=False)
    m = [x for x in lst["labelmaps"] if x["path"] == "synth/annotated.tllm"]
    assert m and m[0]["count"] == 96 and not m[0].get("error"), m


def run_cmd(args, env_extra=None):
    env = dict(os.environ)
    env.pop("TL_FAULT_ENOSPC_FILE", None)
    env.update(env_extra or {})
    return subprocess.run([TD.ARGS.bin, "run"] + args, env=env, capture_output=True, text=True, timeout=600)


@check("tokenlabd run on a full disk exits 4")
def t_run(d):
    work = os.path.join(TD.ARGS.work, "run")
    os.makedirs(work, exist_ok=True)
    spec = TD.spec("cli", epochs=4)
    for k in ("train", "val", "label_maps"):
        spec["data"][k] = os.path.join(d.data, spec["data"][k])
    path = os.path.join(work, "spec.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    out = os.path.join(work, "out")
    r = run_cmd([path, "--out", out, "--stop-at", "6"])
    assert r.returncode == 3, (r.returncode, r.stderr[-2000:])
    size = os.path.getsize(os.path.join(out, "last.safetensors"))
    # room for a little more than the metric lines of an epoch: the next checkpoint finds the disk full
    r = run_cmd([path, "--out", out], {"TL_FAULT_ENOSPC_AFTER": str(size // 4)})
    assert r.returncode == 4, (r.returncode, r.stderr[-2000:])
    assert "failed (DISK_FULL)" in r.stderr and "no space left on the device for " + out in r.stderr, r.stderr[-2000:]
    assert "make room and run the same command to resume" in r.stderr, r.stderr[-2000:]
    step, whole = safetensors_info(os.path.join(out, "last.safetensors"))
    assert step == 6 and whole, (step, whole)
    assert not temps(out), temps(out)
    r = run_cmd([path, "--out", out])
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "resuming at step 6" in r.stdout, r.stdout[-2000:]
    steps = []
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            o = json.loads(line)
            if "loss" in o and "eval" not in o:
                steps.append(o["step"])
    assert steps == list(range(1, 25)), steps


def mount_tmpfs(where, size):
    """Mounts a tmpfs of size at where; None, or why it cannot."""
    if os.geteuid() != 0:
        return "not root"
    os.makedirs(where, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", where], capture_output=True, text=True)
    return None if r.returncode == 0 else "mount failed: " + r.stderr.strip()


def fill(filler, slack):
    """Fills the file system of filler but slack bytes (the daemon writes meanwhile: tried again when it took some)."""
    folder = os.path.dirname(filler)
    with open(filler, "wb") as f:
        for _ in range(50):
            v = os.statvfs(folder)
            try:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size + max(v.f_bavail * v.f_frsize - slack, 1))
                return
            except OSError as e:
                if e.errno != 28:
                    raise
    raise AssertionError("could not fill " + folder)


@check("checkpoint write on a full tmpfs (real ENOSPC)")
def t_tmpfs(d):
    work = os.path.join(TD.ARGS.work, "tmpfs")
    os.makedirs(work, exist_ok=True)
    state = os.path.join(work, "state")
    why = mount_tmpfs(state, "24m")
    if why:
        print("  SKIP tmpfs variant: %s (the switch variants above ran)" % why)
        return
    d2 = TD.Daemon(work)
    os.symlink(d.data, d2.data)
    try:
        saved = os.environ.pop("TL_FAULT_ENOSPC_FILE", None)
        try:
            d2.start()
        finally:
            if saved:
                os.environ["TL_FAULT_ENOSPC_FILE"] = saved
        st, j, _, _ = d2.request("POST", "/api/v1/jobs", body=TD.spec("tmpfs", epochs=12))
        assert st == 201, j
        jid = j["id"]
        ckpt = wait_checkpoint(d2, jid, 6)
        filler = os.path.join(state, "filler")
        slack = ckpt["bytes"] // 2 - (16 << 10)  # no new checkpoint fits (best.safetensors is half of last's)
        fill(filler, slack)
        print("  tmpfs filled but %d KiB (checkpoints of %d KiB)" % (slack >> 10, ckpt["bytes"] >> 10))
        run_dir = os.path.join(state, "runs", str(jid))
        held_then_resumed(d2, jid, run_dir, ckpt, lambda: os.unlink(filler))
    finally:
        d2.stop()
        subprocess.run(["umount", state], check=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    TD.ARGS = ap.parse_args()
    TD.ARGS.work = os.path.abspath(TD.ARGS.work)
    subprocess.run(["umount", os.path.join(TD.ARGS.work, "tmpfs", "state")], capture_output=True, check=False)
    shutil.rmtree(TD.ARGS.work, ignore_errors=True)
    os.makedirs(os.path.join(TD.ARGS.work, "data"))
    subprocess.run([TD.ARGS.bin, "synth", "--out", os.path.join(TD.ARGS.work, "data", "synth"), "--classes", "4",
                    "--train", "96", "--val", "32", "--size", "32"], check=True, stdout=subprocess.DEVNULL)
    STATE["switch"] = os.path.join(TD.ARGS.work, "full-disk-switch")
    os.environ["TL_FAULT_ENOSPC_FILE"] = STATE["switch"]  # the daemon reads it at start-up
    d = TD.Daemon(TD.ARGS.work)
    return TD.run_checks(d, (t_checkpoint, t_store, t_labelmap, t_run, t_tmpfs))


if __name__ == "__main__":
    sys.exit(main())
