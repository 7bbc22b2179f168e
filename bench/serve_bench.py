#!/usr/bin/python3
"""serve_bench.py: inference serving speed of tokenlabd, against PyTorch, in one run.

usage: /usr/bin/python3 bench/serve_bench.py [--bin build/bin/tokenlabd] [--work DIR]
           [--requests 120] [--clients 8] [--rounds 3] [--preset lvvit_t] [--no-train] [--no-torch]
           [--no-engine] [--json OUT]

What it does, one after the other (never two measurements at once):
  1. PyTorch 1.13 (Debian's, 2 threads): eval-mode forward + inference score of one
     224 px image (bench/bench_pytorch.py --mode infer --batch 1), ms per image, and
     img/s in batches of 8. Then the bare engine (build/bin/tl-bench, no HTTP): one
     image on 2 threads, and two single-threaded batches of 4 side by side, the most
     the cores give concurrent requests (skip with --no-engine).
  2. Starts tokenlabd serve (temporary state, synthetic data), uploads an LV-ViT made by
     the PyTorch reference (official state_dict names, random weights, 1000 classes) as
     safetensors with PUT /api/v1/models/bench, and sends real photos from
     ../shared/data/photos (JPEG in, JSON with top-5 and the token map out, over HTTP
     with keep-alive connections):
       a. sequential: one client, one request at a time;
       b. concurrent: --clients clients at once (dynamic batching);
     a and b alternate --rounds times; the ratio reported is the median round's;
  3. The same two while a training job runs in the daemon (synthetic data, 64 px),
     and the job's training speed with and without the requests.
Prints p50/p99 latency (ms) and throughput (requests/s) per case, the ratios the issue
asks for (p50 against PyTorch's single-image time, concurrent against sequential
throughput), and with --json one JSON object per case.
"""
import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "parity"))
PHOTOS = os.path.join(os.environ.get("TL_SHARED_DATA") or os.path.join(ROOT, "..", "shared", "data"), "photos")


def pct(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


class Daemon:
    def __init__(self, binary, work):
        self.bin, self.work = binary, work
        self.state = os.path.join(work, "state")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([self.bin, "serve", "--port", "0", "--state", self.state, "--data-root",
                                      os.path.join(self.work, "data")],
                                     stdout=subprocess.PIPE, stderr=open(os.path.join(self.work, "daemon.log"), "ab"))
        while True:
            line = self.proc.stdout.readline().decode()
            if not line:
                raise RuntimeError("tokenlabd exited (see %s/daemon.log)" % self.work)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line)
            if m:
                self.port = int(m.group(1))
                break
        self.token = open(os.path.join(self.state, "token")).read().strip()

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=120)

    def conn(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)

    def call(self, method, path, body=None, ctype="application/json", conn=None):
        c = conn or self.conn()
        h = {"Host": "127.0.0.1:%d" % self.port, "Authorization": "Bearer " + self.token}
        if body is not None:
            h["Content-Type"] = ctype
            if ctype == "application/json":
                body = json.dumps(body).encode()
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        if not conn:
            c.close()
        return r.status, (json.loads(data) if data and "json" in r.getheader("Content-Type", "") else data)


def run_clients(d, images, n_requests, clients):
    """n_requests predict calls spread over `clients` threads; returns (latencies ms, seconds, batches seen)."""
    lat, batches, errors = [], [], []
    lock = threading.Lock()
    counter = [0]

    def worker():
        c = d.conn()
        while True:
            with lock:
                i = counter[0]
                counter[0] += 1
            if i >= n_requests:
                break
            t0 = time.perf_counter()
            st, b = d.call("POST", "/api/v1/models/bench/predict", images[i % len(images)], "image/jpeg", conn=c)
            dt = (time.perf_counter() - t0) * 1000.0
            with lock:
                if st != 200:
                    errors.append((st, b))
                else:
                    lat.append(dt)
                    batches.append(b["timing_ms"]["batch"])
        c.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.perf_counter() - t0
    if errors:
        raise RuntimeError("%d requests failed, first: %s" % (len(errors), errors[0]))
    return lat, secs, batches


def case(name, lat, secs, batches):
    r = {"case": name, "requests": len(lat), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
         "mean_ms": statistics.mean(lat), "req_per_s": len(lat) / secs, "mean_batch": statistics.mean(batches)}
    print("%-34s p50 %7.1f ms  p99 %7.1f ms  %6.2f req/s  mean batch %.2f" %
          (name, r["p50_ms"], r["p99_ms"], r["req_per_s"], r["mean_batch"]), flush=True)
    return r


def torch_run(preset, batch, steps):
    out = subprocess.run(["/usr/bin/python3", os.path.join(HERE, "bench_pytorch.py"), "--preset", preset,
                          "--img-size", "224", "--batch", str(batch), "--mode", "infer", "--steps", str(steps),
                          "--warmup", "3" if batch == 1 else "1", "--json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def engine_runs(tl_bench, preset, specs):
    """tl-bench inference runs started together, one per (threads, batch, steps); their JSON results."""
    procs = [subprocess.Popen([tl_bench, "--preset", preset, "--img-size", "224", "--mode", "infer",
                               "--threads", str(t), "--batch", str(b), "--steps", str(n), "--warmup", "1", "--json"],
                              stdout=subprocess.PIPE, text=True) for t, b, n in specs]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode != 0 for p in procs):
        raise RuntimeError("tl-bench failed")
    return [json.loads(o.strip().splitlines()[-1]) for o in outs]


def make_model(path, preset):
    import numpy as np  # noqa: F401
    import torch
    import lvvit_ref as L
    import st_io
    torch.manual_seed(0)
    m = L.LVViT(L.preset(preset, img_size=224, num_classes=1000, drop_path_rate=0.0)).eval()
    st_io.save(path, {k: v.detach().numpy() for k, v in m.state_dict().items()})


def train_speed(d, job, since_step):
    """Mean img_per_s of the job's steps after since_step."""
    st, s = d.call("GET", "/api/v1/jobs/%d/metrics/img_per_s?start_step=%d" % (job, since_step + 1))
    pts = [p["value"] for p in s.get("points", [])] or [p["last"] for p in s.get("buckets", [])]
    return statistics.mean(pts) if pts else float("nan"), len(pts)


def job_step(d, job):
    return d.call("GET", "/api/v1/jobs/%d" % job)[1]["progress"]["step"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "bin", "tokenlabd"))
    ap.add_argument("--work", default="/tmp/tokenlab-serve-bench")
    ap.add_argument("--requests", type=int, default=120)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--preset", default="lvvit_t")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-engine", action="store_true", help="skip the tl-bench runs of the bare engine")
    ap.add_argument("--rounds", type=int, default=3,
                    help="idle sequential/concurrent pairs, run alternately (default 3); the ratio is their median")
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.rounds < 1:
        sys.exit("serve_bench: --rounds must be >= 1")
    images = [open(os.path.join(PHOTOS, f), "rb").read() for f in sorted(os.listdir(PHOTOS))] \
        if os.path.isdir(PHOTOS) else []
    if not images:
        sys.exit("serve_bench: no photos in %s" % PHOTOS)
    results = []
    torch_ms = torch_ips = None
    if not a.no_torch:
        torch_ms = torch_run(a.preset, 1, 20)["ms_per_step_median"]
        torch_ips = torch_run(a.preset, 8, 4)["img_per_s"]
        print("PyTorch 1.13, 2 threads, %s 224 px (forward + score, no HTTP, no decode): one image %.1f ms; "
              "batches of 8 %.2f img/s" % (a.preset, torch_ms, torch_ips), flush=True)
        results.append({"case": "pytorch", "single_image_ms": torch_ms, "batch8_img_per_s": torch_ips})
    # The engine alone, no HTTP, no decoding: what one request on every thread costs,
    # and the most the cores can do when they run separate single-threaded batches
    # (what the batcher lanes do under concurrent load).
    engine_ips = None
    if not a.no_engine:
        tl_bench = os.path.join(os.path.dirname(a.bin), "tl-bench")
        one = engine_runs(tl_bench, a.preset, [(2, 1, 20)])[0]
        pair = engine_runs(tl_bench, a.preset, [(1, 4, 6), (1, 4, 6)])
        engine_ips = sum(r["img_per_s"] for r in pair)
        print("engine alone (tl-bench, no HTTP, no decode): one image on 2 threads %.1f ms (%.2f img/s); "
              "two single-threaded batches of 4 side by side %.2f img/s (%.2fx)"
              % (one["ms_per_step"], one["img_per_s"], engine_ips, engine_ips / one["img_per_s"]), flush=True)
        results.append({"case": "engine", "one_image_2_threads_ms": one["ms_per_step"],
                        "one_image_2_threads_img_per_s": one["img_per_s"], "two_lanes_img_per_s": engine_ips})
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(os.path.join(a.work, "data"))
    subprocess.run([a.bin, "synth", "--out", os.path.join(a.work, "data", "synth"), "--train", "2000", "--val", "200"],
                   check=True, stdout=subprocess.DEVNULL)
    model_path = os.path.join(a.work, "model.safetensors")
    make_model(model_path, a.preset)
    d = Daemon(a.bin, a.work)
    d.start()
    try:
        st, m = d.call("PUT", "/api/v1/models/bench?max_batch=8&max_delay_ms=5", open(model_path, "rb").read(),
                       "application/octet-stream")
        assert st == 201, (st, m)
        print("model: %s, %d parameters, input %d px, %d classes, token grid %d" %
              (a.preset, m["params"], m["input"]["size"], m["num_classes"], m["grid"]), flush=True)
        run_clients(d, images, 10, 1)  # warm-up
        run_clients(d, images, 16, a.clients)
        # Sequential and concurrent alternate so that both see the same share of the
        # machine; other tenants move single runs by tens of percent here.
        ratios, pairs = [], []
        for r in range(a.rounds):
            tag = " [round %d/%d]" % (r + 1, a.rounds) if a.rounds > 1 else ""
            seq = case("idle: sequential (1 client)" + tag, *run_clients(d, images, a.requests, 1))
            con = case("idle: concurrent (%d clients)%s" % (a.clients, tag),
                       *run_clients(d, images, a.requests * 2, a.clients))
            seq["round"] = con["round"] = r + 1
            results += [seq, con]
            ratios.append(con["req_per_s"] / seq["req_per_s"])
            pairs.append((seq, con))
        mid = sorted(range(a.rounds), key=lambda i: ratios[i])[a.rounds // 2]
        seq, con = pairs[mid]
        if not a.no_train:
            spec = json.load(open(os.path.join(ROOT, "schema", "examples", "synth-quickstart.json")))
            spec["data"] = {"train": "synth/train", "val": "synth/val", "label_maps": "synth/train.tllm"}
            spec["train"]["epochs"] = 200
            spec["train"]["eval_every_epochs"] = 100
            st, job = d.call("POST", "/api/v1/jobs", spec)
            assert st == 201, job
            jid = job["id"]
            while job_step(d, jid) < 40:
                time.sleep(0.5)
            s0 = job_step(d, jid)
            time.sleep(20)
            alone, n_alone = train_speed(d, jid, s0)
            s1 = job_step(d, jid)
            seq_t = case("training: sequential (1 client)", *run_clients(d, images, a.requests, 1))
            con_t = case("training: concurrent (%d clients)" % a.clients,
                         *run_clients(d, images, a.requests * 2, a.clients))
            shared, n_shared = train_speed(d, jid, s1)
            print("training job alone: %.1f img/s (%d steps); while serving: %.1f img/s (%d steps)"
                  % (alone, n_alone, shared, n_shared), flush=True)
            d.call("POST", "/api/v1/jobs/%d/cancel" % jid)
            results += [seq_t, con_t, {"case": "training_img_per_s", "alone": alone, "while_serving": shared}]
        print()
        if torch_ms:
            print("p50 of one request (JPEG in, JSON out, over HTTP) / PyTorch's bare forward of one image: "
                  "%.1f / %.1f ms = %.3f (target <= 0.25)" % (seq["p50_ms"], torch_ms, seq["p50_ms"] / torch_ms))
        print("throughput, %d concurrent clients / sequential: %.2f / %.2f req/s = %.2fx (target >= 1.5)%s"
              % (a.clients, con["req_per_s"], seq["req_per_s"], con["req_per_s"] / seq["req_per_s"],
                 "; median of %d rounds, all: %s" % (a.rounds, " ".join("%.2fx" % x for x in ratios))
                 if a.rounds > 1 else ""))
        if torch_ips:
            print("throughput, %d concurrent clients over HTTP / PyTorch's bare forward in batches of 8: "
                  "%.2f / %.2f = %.2fx" % (a.clients, con["req_per_s"], torch_ips, con["req_per_s"] / torch_ips))
        if engine_ips:
            print("throughput, %d concurrent clients over HTTP / the bare engine on both cores: %.2f / %.2f = %.2f"
                  % (a.clients, con["req_per_s"], engine_ips, con["req_per_s"] / engine_ips))
        results.append({"case": "throughput_ratio", "median": ratios[mid], "rounds": ratios})
    finally:
        d.stop()
    if a.json:
        with open(a.json, "w") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
