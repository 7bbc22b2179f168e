#!/usr/bin/python3
"""imagenette_ablation.py: the token-labeling ablation on real photos, run through tokenlabd's API.

usage: /usr/bin/python3 scripts/imagenette_ablation.py --server http://127.0.0.1:8080 --token-file STATE/token
           [--train shared/data/imagenette2-224/train] [--val shared/data/imagenette2-224/val]
           [--maps main/data/imagenette-teacher.tllm] [--teacher-epochs 24] [--student-epochs 10]
           [--seeds 42,43] [--only teacher|annotate|students] [--out results.json]

Dataset paths are relative to the daemon's data root (start it with --data-root /work, say, so that
both the read-only Imagenette folder and a writable folder for the label maps are inside it).

The steps, each submitted as a job with an Idempotency-Key (running the script again picks up the
jobs already submitted instead of starting them again, so it can be stopped and resumed at any point):
  1. teacher: LV-ViT D128x6 at 64 px trained for --teacher-epochs (plain, no label maps);
  2. register the teacher's best (EMA) checkpoint as model "ablation-teacher";
  3. annotate: the teacher over every training image, the whole image resized to its input
     (not a centre crop), top-5 logits of the aux head per token -> a label-map file;
  4. students, the same model and budget (--student-epochs) three ways, for each seed:
       plain: class token only (dense_weight 0), CutMix;
       mixtoken: + MixToken (each token's target is its image's class);
       token_labeling: + token labeling with the teacher's maps (MixToken on);
Prints a table of validation top-1/top-5 (raw and EMA, at the end) and time per run.
"""
import argparse
import http.client
import json
import os
import sys
import time
import urllib.parse

STUDENT_MODEL = {"img_size": 64, "patch_size": 8, "embed_dim": 128, "depth": 6, "num_heads": 4, "mlp_ratio": 3,
                 "stem_channels": 32, "skip_lam": 1.0, "num_classes": 10, "drop_path_rate": 0.05}
AUGMENT = {"scale": [0.25, 1.0], "randaug": "rand-m6-mstd0.5-inc1", "reprob": 0.1}


class Api:
    def __init__(self, server, token):
        u = urllib.parse.urlparse(server)
        self.host, self.port, self.token = u.hostname, u.port or 80, token

    def call(self, method, path, body=None, key=None):
        c = http.client.HTTPConnection(self.host, self.port, timeout=120)
        h = {"Authorization": "Bearer " + self.token}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        if key:
            h["Idempotency-Key"] = key
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        raw = r.read()
        c.close()
        return r.status, (json.loads(raw) if raw else None)

    def submit(self, spec, key):
        st, b = self.call("POST", "/api/v1/jobs", spec, key)
        if st not in (200, 201):
            sys.exit("submit %s: %s %s" % (key, st, b))
        return b["id"]

    def wait(self, jid, what):
        last = None
        while True:
            st, j = self.call("GET", "/api/v1/jobs/%d" % jid)
            if j["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                print("  %s: job %d %s (%s)" % (what, jid, j["state"], j["state_message"]), flush=True)
                if j["state"] != "SUCCEEDED":
                    sys.exit("%s did not succeed" % what)
                return j
            p = j["progress"]
            line = "  %s: job %d %s step %s/%s" % (what, jid, j["state"], p["step"], p["total_steps"])
            if line != last and int(time.time()) % 60 < 10:
                print(line, flush=True)
                last = line
            time.sleep(10)

    def final_metrics(self, jid):
        out = {}
        for name in ("top1", "top5", "ema_top1", "ema_top5"):
            st, s = self.call("GET", "/api/v1/jobs/%d/metrics/%s" % (jid, name))
            pts = s.get("points", []) if st == 200 else []
            out[name] = pts[-1]["value"] if pts else None
        return out


def teacher_spec(a):
    return {"kind": "train", "name": "ablation-teacher",
            "model": STUDENT_MODEL, "data": {"train": a.train, "val": a.val},
            "train": {"epochs": a.teacher_epochs, "batch_size": 64, "lr": 1e-3, "min_lr": 1e-5, "warmup_epochs": 3,
                      "weight_decay": 0.05, "label_smoothing": 0.1, "mixtoken": False, "ema_decay": 0.999,
                      "seed": 7, "eval_every_epochs": 6, "checkpoint_every_epochs": 3, "augment": AUGMENT}}


def student_spec(a, variant, seed):
    t = {"epochs": a.student_epochs, "batch_size": 64, "lr": 1e-3, "min_lr": 1e-5, "warmup_epochs": 2,
         "weight_decay": 0.05, "label_smoothing": 0.1, "ema_decay": 0.999, "seed": seed,
         "eval_every_epochs": 0, "checkpoint_every_epochs": 2, "augment": AUGMENT}
    data = {"train": a.train, "val": a.val}
    if variant == "plain":
        t.update({"mixtoken": False, "mix": "cutmix", "mix_alpha": 1.0, "dense_weight": 0.0})
    elif variant == "mixtoken":
        t.update({"mixtoken": True, "mix": "none", "dense_weight": 0.5})
    else:
        t.update({"mixtoken": True, "mix": "none", "dense_weight": 0.5})
        data["label_maps"] = a.maps
    return {"kind": "train", "name": "ablation-%s-seed%d" % (variant, seed), "model": STUDENT_MODEL, "data": data,
            "train": t}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", default="http://127.0.0.1:8080")
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--train", default="shared/data/imagenette2-224/train")
    ap.add_argument("--val", default="shared/data/imagenette2-224/val")
    ap.add_argument("--maps", default="main/data/imagenette-teacher.tllm")
    ap.add_argument("--teacher-epochs", type=int, default=24)
    ap.add_argument("--student-epochs", type=int, default=10)
    ap.add_argument("--seeds", default="42,43")
    ap.add_argument("--only", choices=("teacher", "annotate", "students"))
    ap.add_argument("--out")
    a = ap.parse_args()
    api = Api(a.server, open(a.token_file).read().strip())
    tag = "ablation-v1-t%d-s%d" % (a.teacher_epochs, a.student_epochs)

    teacher = api.submit(teacher_spec(a), tag + "-teacher")
    print("teacher: job %d" % teacher, flush=True)
    if a.only == "teacher":
        return
    tj = api.wait(teacher, "teacher")
    st, m = api.call("GET", "/api/v1/models/ablation-teacher")
    if st == 404:
        st, m = api.call("POST", "/api/v1/models", {"name": "ablation-teacher", "job_id": teacher,
                                                    "checkpoint": "best"})
        if st != 201:
            sys.exit("register: %s %s" % (st, m))
    print("teacher model: step %d, EMA %s" % (m["source"]["step"], m["source"]["ema"]), flush=True)

    ann = api.submit({"kind": "annotate", "name": "ablation-teacher-maps", "source": {"model": "ablation-teacher"},
                      "data": {"images": a.train, "out": a.maps}, "annotate": {"topk": 5, "batch_size": 64}},
                     tag + "-annotate")
    aj = api.wait(ann, "annotate")
    if a.only == "annotate":
        return

    results = {"teacher": {"job": teacher, **api.final_metrics(teacher),
                           "seconds": (tj["ended_ms"] - tj["started_ms"]) / 1000.0},
               "annotate": {"job": ann, "seconds": (aj["ended_ms"] - aj["started_ms"]) / 1000.0}, "students": []}
    for seed in [int(s) for s in a.seeds.split(",")]:
        for variant in ("plain", "mixtoken", "token_labeling"):
            jid = api.submit(student_spec(a, variant, seed), "%s-%s-%d" % (tag, variant, seed))
            j = api.wait(jid, "%s seed %d" % (variant, seed))
            r = {"variant": variant, "seed": seed, "job": jid, **api.final_metrics(jid),
                 "seconds": (j["ended_ms"] - j["started_ms"]) / 1000.0}
            results["students"].append(r)
            print("  %-15s seed %d: top-1 %.1f%% (EMA %.1f%%), top-5 %.1f%%, %.0f s" %
                  (variant, seed, 100 * r["top1"], 100 * r["ema_top1"], 100 * r["top5"], r["seconds"]), flush=True)
    print("\n| student | seed | top-1 raw / EMA | top-5 raw / EMA | time |\n|---|---|---|---|---|")
    for r in results["students"]:
        print("| %s | %d | %.1f / %.1f | %.1f / %.1f | %.1f min |" % (
            r["variant"], r["seed"], 100 * r["top1"], 100 * r["ema_top1"], 100 * r["top5"], 100 * r["ema_top5"],
            r["seconds"] / 60))
    if a.out:
        json.dump(results, open(a.out, "w"), indent=2)


if __name__ == "__main__":
    main()
