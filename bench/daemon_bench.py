#!/usr/bin/python3
"""Daemon benchmarks (issue 4), printed as figures, never asserted:

1. training throughput of one job under `tokenlabd serve` against
   `tokenlabd run` of the same spec (the daemon's cost);
2. p50/p99 latency of GET /api/v1/jobs/{id} and of a downsampled metric
   series at 200 requests/s (wrk from Debian, paced with a Lua delay) while a
   job trains on the same 2 cores.
(The 1,000,000-point downsampled query is timed by tests/server/test_store.c.)

usage: bench/daemon_bench.py [--bin build/bin/tokenlabd] [--work /tmp/tokenlab-daemon-bench] [--epochs 4]
"""
import argparse
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

SPEC = {"kind": "train", "name": "bench",
        "model": {"img_size": 64, "patch_size": 8, "embed_dim": 128, "depth": 6, "num_heads": 4, "mlp_ratio": 3,
                  "stem_channels": 32, "skip_lam": 1.0, "num_classes": 10, "drop_path_rate": 0.05},
        "data": {"train": "synth/train", "val": "synth/val", "label_maps": "synth/train.tllm"},
        "train": {"epochs": 4, "batch_size": 64, "warmup_epochs": 1, "eval_every_epochs": 0,
                  "checkpoint_every_epochs": 0, "seed": 1}}


def mean_img_s(points):
    """Mean of the engine's own images/s over the steps after the first 40 (warm-up, cache filling)."""
    vals = [v for s, v in points if s > 40]
    return statistics.mean(vals) if vals else float("nan")


class Daemon:
    def __init__(self, binary, work):
        self.proc = subprocess.Popen([binary, "serve", "--port", "0", "--state", os.path.join(work, "state"),
                                      "--data-root", os.path.join(work, "data")],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        for _ in range(300):
            line = self.proc.stdout.readline().decode()
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line)
            if m:
                self.port = int(m.group(1))
                break
        with open(os.path.join(work, "state", "token")) as f:
            self.token = f.read().strip()

    def req(self, method, path, body=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        h = {"Authorization": "Bearer " + self.token}
        if body is not None:
            h["Content-Type"] = "application/json"
        c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
        r = c.getresponse()
        data = json.loads(r.read() or b"null")
        c.close()
        return data

    def wait(self, jid, pred, timeout=900):
        t0 = time.time()
        while time.time() - t0 < timeout:
            j = self.req("GET", "/api/v1/jobs/%d" % jid)
            if pred(j):
                return j
            time.sleep(0.5)
        raise RuntimeError("timeout waiting for job %d" % jid)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)


def wrk_latency(port, path, rate, seconds, work):
    conns = 4
    lua = os.path.join(work, "pace.lua")
    with open(lua, "w") as f:
        f.write("function delay() return %d end\n" % int(1000 * conns / rate))
    out = subprocess.run(["wrk", "-t2", "-c%d" % conns, "-d%ds" % seconds, "--latency", "-s", lua,
                          "http://127.0.0.1:%d%s" % (port, path)], capture_output=True, text=True, check=True).stdout
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    reqs = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return lat.get("50"), lat.get("99"), float(reqs.group(1)) if reqs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="build/bin/tokenlabd")
    ap.add_argument("--work", default="/tmp/tokenlab-daemon-bench")
    ap.add_argument("--epochs", type=int, default=4)
    a = ap.parse_args()
    if not shutil.which("wrk"):
        print("daemon_bench: wrk is needed for the latency figures: apt-get install wrk", file=sys.stderr)
        return 2
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(os.path.join(a.work, "data"))
    subprocess.run([a.bin, "synth", "--out", os.path.join(a.work, "data", "synth"), "--classes", "10",
                    "--train", "2000", "--val", "200", "--size", "64"], check=True, stdout=subprocess.DEVNULL)
    spec = json.loads(json.dumps(SPEC))
    spec["train"]["epochs"] = a.epochs

    # 1a. foreground run
    spec_path = os.path.join(a.work, "spec.json")
    fg = json.loads(json.dumps(spec))
    for k in ("train", "val", "label_maps"):
        fg["data"][k] = os.path.join(a.work, "data", spec["data"][k])
    with open(spec_path, "w") as f:
        json.dump(fg, f)
    subprocess.run([a.bin, "run", spec_path, "--out", os.path.join(a.work, "run")], check=True,
                   stdout=subprocess.DEVNULL)
    pts = []
    with open(os.path.join(a.work, "run", "metrics.jsonl")) as f:
        for line in f:
            o = json.loads(line)
            if "img_per_s" in o:
                pts.append((o["step"], o["img_per_s"]))
    run_ips = mean_img_s(pts)

    # 1b. the same job under the daemon
    d = Daemon(a.bin, a.work)
    jid = d.req("POST", "/api/v1/jobs", spec)["id"]
    d.wait(jid, lambda j: j["state"] in ("SUCCEEDED", "FAILED"))
    series = d.req("GET", "/api/v1/jobs/%d/metrics/img_per_s?max_points=100000" % jid)["points"]
    daemon_ips = mean_img_s([(p["step"], p["value"]) for p in series])

    # 2. latency while a long job trains
    long_spec = json.loads(json.dumps(spec))
    long_spec["train"]["epochs"] = 50
    jid2 = d.req("POST", "/api/v1/jobs", long_spec)["id"]
    d.wait(jid2, lambda j: j["state"] == "RUNNING" and j["progress"]["step"] > 20)
    lat_job = wrk_latency(d.port, "/api/v1/jobs/%d" % jid2, 200, 15, a.work)
    lat_metric = wrk_latency(d.port, "/api/v1/jobs/%d/metrics/loss?max_points=200" % jid2, 200, 15, a.work)
    d.req("POST", "/api/v1/jobs/%d/cancel" % jid2)
    d.stop()

    print("daemon benchmarks (%s, %d epochs of 2000 synthetic pictures at 64 px, LV-ViT D128x6, batch 64)"
          % (time.strftime("%Y-%m-%d"), a.epochs))
    print("  training throughput: tokenlabd run %.1f img/s, tokenlabd serve %.1f img/s, daemon cost %.1f%%"
          % (run_ips, daemon_ips, 100.0 * (1.0 - daemon_ips / run_ips)))
    print("  GET /api/v1/jobs/{id} at 200 req/s while training: p50 %s, p99 %s (%.0f req/s served)" % lat_job)
    print("  GET /api/v1/jobs/{id}/metrics/loss?max_points=200 at 200 req/s while training: p50 %s, p99 %s "
          "(%.0f req/s served)" % lat_metric)
    return 0


if __name__ == "__main__":
    sys.exit(main())
