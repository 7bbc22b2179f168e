#!/usr/bin/python3
"""tokenlabd holding many idle event-stream clients while it trains and answers.

usage: bench/clients_bench.py --bin build/bin/tokenlabd [--streams 10000] [--rate 200] [--seconds 30]
                              [--work DIR]

Starts the real daemon on a loopback port with a training job on synthetic
data, and measures, in one run:
  1. the job's training images/s with no client (the daemon's own
     img_per_s, averaged over --seconds);
  2. the same while --streams idle Server-Sent Event clients are connected
     (--watch queued: GET /api/v1/jobs/{id}/events of a job that stays queued;
     --watch all: GET /api/v1/events, which carries the training job's
     progress to every client);
  3. the same while, besides, GET /api/v1/jobs/{id} is sent at --rate
     requests/s on fresh connections, with the latency of each request
     (p50, p99, max). The load comes from this process, on the same machine:
     on a small machine it takes CPU time from the training job;
and prints the figures, the daemon's threads and resident memory with the
streams held, and the throughput ratio. Standard library only.
"""
import argparse
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e", "daemon"))
import test_daemon as TD  # noqa: E402  (the Daemon class)


def proc_status(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def open_streams(port, n, path):
    """n sockets with an event stream's 200 headers read, opened without blocking on each."""
    sel = selectors.DefaultSelector()
    socks, pending = [], 0
    req = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (path, port)).encode()
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(req)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, [b""])
        socks.append(s)
        pending += 1
        while pending > 512 or (i == n - 1 and pending):  # read headers as they come
            for key, _ in sel.select(timeout=30):
                buf = key.data
                buf[0] += key.fileobj.recv(4096)
                if b"\r\n\r\n" in buf[0]:
                    if not buf[0].startswith(b"HTTP/1.1 200"):
                        raise RuntimeError("stream refused: %r" % buf[0][:200])
                    sel.unregister(key.fileobj)
                    pending -= 1
    return socks


def job_ips(d, jid, seconds):
    """The job's mean img_per_s over `seconds` (sampled twice a second)."""
    vals, t_end = [], time.time() + seconds
    while time.time() < t_end:
        v = d.job(jid).get("latest_metrics", {}).get("img_per_s")
        if v:
            vals.append(v)
        time.sleep(0.5)
    return sum(vals) / len(vals) if vals else 0.0


def get_latency(port, path):
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n" % (path, port)).encode())
    data = b""
    while True:
        c = s.recv(65536)
        if not c:
            break
        data += c
    s.close()
    dt = time.perf_counter() - t0
    if not data.startswith(b"HTTP/1.1 200"):
        raise RuntimeError("GET %s: %r" % (path, data[:200]))
    return dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--streams", type=int, default=10000)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--work", default=None)
    ap.add_argument("--watch", choices=("queued", "all"), default="queued",
                    help="the streams watch a queued job's events (idle clients), or every job's (each gets "
                         "the training job's progress)")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, a.streams + 1024), hard))
    work = a.work or tempfile.mkdtemp(prefix="tl-clients-bench.")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    TD.ARGS = argparse.Namespace(bin=os.path.abspath(a.bin), work=work)
    subprocess.run([TD.ARGS.bin, "synth", "--out", os.path.join(work, "data", "synth"), "--classes", "10",
                    "--train", "4000", "--val", "100", "--size", "64"], check=True, stdout=subprocess.DEVNULL)
    d = TD.Daemon(work, extra=["--per-client", str(a.streams + 100), "--max-clients", str(a.streams + 100)])
    d.start()
    try:
        spec = TD.spec("bench", epochs=200, ckpt=50)
        spec["model"] = {"preset": "lvvit_t", "img_size": 64, "num_classes": 10}
        spec["train"].update({"batch_size": 32, "eval_every_epochs": 50})
        st, j, _, _ = d.request("POST", "/api/v1/jobs", body=spec)
        assert st == 201, j
        jid = j["id"]
        d.wait_state(jid, {"RUNNING"})
        st, q, _, _ = d.request("POST", "/api/v1/jobs", body=TD.spec("waiting", epochs=1))  # stays QUEUED
        assert st == 201, q
        path = "/api/v1/jobs/%d/events" % q["id"] if a.watch == "queued" else "/api/v1/events"
        time.sleep(10)  # past the first steps
        idle = job_ips(d, jid, a.seconds)
        base_threads = proc_status(d.proc.pid, "Threads")
        rss0 = proc_status(d.proc.pid, "VmRSS")
        t0 = time.time()
        socks = open_streams(d.port, a.streams, path)
        opened = time.time() - t0
        threads = proc_status(d.proc.pid, "Threads")
        rss = proc_status(d.proc.pid, "VmRSS")
        held = job_ips(d, jid, a.seconds)  # the streams alone
        lat, t_next, t_end = [], time.time(), time.time() + a.seconds
        ips = []
        while time.time() < t_end:
            now = time.time()
            if now < t_next:
                time.sleep(t_next - now)
            t_next += 1.0 / a.rate
            lat.append(get_latency(d.port, "/api/v1/jobs/%d" % jid))
            if len(lat) % int(a.rate / 2) == 0:
                v = d.job(jid).get("latest_metrics", {}).get("img_per_s")
                if v:
                    ips.append(v)
        busy = sum(ips) / len(ips) if ips else 0.0
        lat.sort()
        p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000.0  # noqa: E731
        for s in socks:
            s.close()
        print(json.dumps({"streams": a.streams, "watch": path, "open_seconds": round(opened, 1), "daemon_threads_idle": base_threads,
                          "daemon_threads_with_streams": threads, "daemon_rss_mb_with_streams": round(rss / 1024, 1),
                          "get_requests": len(lat), "get_rate": a.rate, "get_p50_ms": round(p(0.5), 2),
                          "get_p99_ms": round(p(0.99), 2), "get_max_ms": round(lat[-1] * 1000, 2),
                          "daemon_rss_mb_idle": round(rss0 / 1024, 1),
                          "train_img_s_idle": round(idle, 1), "train_img_s_streams_held": round(held, 1),
                          "train_img_s_streams_and_gets": round(busy, 1),
                          "train_ratio_streams": round(held / idle, 3) if idle else None,
                          "train_ratio_streams_and_gets": round(busy / idle, 3) if idle else None}))
    finally:
        d.stop(signal.SIGTERM)
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
