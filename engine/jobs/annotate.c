/*
 * annotate.c: the machine annotator's run (tl_annotate_run, annotate.h): set
 * up the dataset and the model at the annotation size, resume after the part
 * files already written, annotate batch by batch into part files, and merge
 * the parts into the output label map. The spec is parsed by
 * annotate_spec.c; the part-file format and its validation are
 * annotate_parts.c's.
 *
 * Owns, for the duration of tl_annotate_run, on the calling thread: the
 * dataset, the model at the annotation size, an eval context (its own pool),
 * a decoding pool, the batch buffers, the part being written and the
 * label-map writer of the merge. Hooks are called on the calling thread.
 *
 * Batches are fixed by index ([i*B, (i+1)*B)), so the record of an image does
 * not depend on where parts end or where a run was stopped and resumed.
 */
#include "tokenlab/annotate.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fnv.h"
#include "core/pool.h"
#include "jobs/annotate_parts.h"
#include "tokenlab/base.h"
#include "tokenlab/data.h"
#include "tokenlab/files.h"
#include "tokenlab/inspect.h"
#include "tokenlab/labelmap.h"

#define WINDOW 10 /* batches over which images/s is measured */

/* ======================================================================== */
/* run                                                                        */

typedef struct {
    const tl_annotate_spec *spec;
    const char *run_dir;
    const tl_annotate_hooks *hooks;
    tl_train_result *res;
    tl_dataset *ds;
    tl_model *model;
    tl_ctx *ctx;
    tl_pool *dpool;          /* decoding, NULL when single-threaded */
    int S, g, N, K, k, B, threads;
    int64_t total, part_images;
    uint64_t fingerprint;
    /* batch buffers */
    float *images;           /* (B,3,S,S) */
    int *ok;                 /* (B) decoded */
    char (*why)[256];        /* (B) reasons of failed decodes */
    float *vals;             /* (k,N) of one image */
    uint16_t *idx16;         /* (k,N) */
    int32_t *idx32;          /* (k,N) for the writer */
    /* the part files: what they must match, the one being written, the parts finished */
    tl_parts ps;
    tl_part_writer pw;
    int part_no;
    int64_t done, skipped;
} run;

static tl_train_status fail(run *r, const char *reason, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static tl_train_status fail(run *r, const char *reason, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    tl_train_result_vfail(r->res, reason, fmt, ap);
    va_end(ap);
    return TL_TRAIN_FAILED;
}

/* A write to path that failed with errno e (what: its message): DISK_FULL, naming path and the free space of
 * its file system, when the disk is full; IO_ERROR with what otherwise. */
static tl_train_status write_fail(run *r, int e, const char *path, const char *what) {
    if (!tl_errno_disk_full(e)) return fail(r, "IO_ERROR", "%s", what);
    char msg[sizeof r->res->message - 128];
    int merging = r->done == r->total && strcmp(path, r->spec->out_path) == 0;
    return fail(r, "DISK_FULL", "%s; %s", tl_disk_full_message(msg, sizeof msg, path),
                merging ? "an older file there is kept; the part files are kept for the merge"
                        : "the part files written before are kept and the annotation resumes after them");
}

static void log_msg(run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void log_msg(run *r, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (r->hooks) tl_hook_vlog(r->hooks->on_log, r->hooks->user, fmt, ap);
    va_end(ap);
}

static int ncores(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* ---- setup ---- */

static tl_train_status setup(run *r) {
    const tl_annotate_spec *s = r->spec;
    char err[TL_ERR_LEN];
    if (s->batch_size < 1 || s->topk < 1 || s->part_images < 1 || s->size < 0)
        return fail(r, "CONFIG_ERROR", "invalid annotate spec (batch_size, topk, part_images or size)");
    if (!s->weights_path[0]) return fail(r, "CONFIG_ERROR", "no weights: the spec's weights_path is empty");
    if (mkdir(r->run_dir, 0755) != 0 && errno != EEXIST)
        return fail(r, "IO_ERROR", "cannot create run folder %s: %s", r->run_dir, strerror(errno));
    r->ds = tl_dataset_open_confined(s->images_dir, s->data_root[0] ? s->data_root : NULL, err, sizeof err);
    if (!r->ds) return fail(r, "DATA_ERROR", "images: %s", err);
    if (tl_dataset_outside(r->ds))
        log_msg(r, "images: %lld symbolic links leading outside the data root were skipped",
                 (long long)tl_dataset_outside(r->ds));
    tl_config ck;
    if (tl_checkpoint_config(s->weights_path, &ck, err, sizeof err) != 0)
        return fail(r, "CONFIG_ERROR", "weights %s: %s", s->weights_path, err);
    r->K = ck.num_classes;
    if (tl_dataset_num_classes(r->ds) != r->K)
        return fail(r, "DATA_ERROR", "the model has %d classes, the dataset %s has %d", r->K, s->images_dir,
                    tl_dataset_num_classes(r->ds));
    r->S = s->size > 0 ? s->size : ck.img_size;
    if (r->S % ck.patch_size != 0)
        return fail(r, "CONFIG_ERROR", "annotate.size %d is not a multiple of the model's patch_size %d", r->S,
                    ck.patch_size);
    if (s->topk > r->K)
        return fail(r, "CONFIG_ERROR", "annotate.topk %d is more than the model's %d classes", s->topk, r->K);
    r->k = s->topk;
    r->B = s->batch_size;
    r->part_images = (s->part_images + r->B - 1) / r->B * r->B;
    tl_config cfg = ck;
    cfg.img_size = r->S;
    r->g = tl_config_grid(&cfg);
    r->N = r->g * r->g;
    if (r->g > 1024) return fail(r, "CONFIG_ERROR", "the map would be %d x %d, more than 1024 per side", r->g, r->g);
    if (tl_config_validate(&cfg, err, sizeof err) != 0)
        return fail(r, "CONFIG_ERROR", "model at size %d: %s", r->S, err);
    tl_model *loaded = tl_model_new(&ck, 0, err, sizeof err);
    if (!loaded) return fail(r, "OUT_OF_MEMORY", "%s", err);
    if (tl_checkpoint_load(loaded, NULL, s->weights_path, s->from_ema ? TL_CKPT_FROM_EMA : 0, NULL, err, sizeof err) != 0) {
        tl_model_free(loaded);
        return fail(r, "CONFIG_ERROR", "weights %s: %s", s->weights_path, err);
    }
    if (r->S == ck.img_size) {
        r->model = loaded;
    } else {
        r->model = tl_model_new(&cfg, 0, err, sizeof err);
        if (!r->model) {
            tl_model_free(loaded);
            return fail(r, "OUT_OF_MEMORY", "%s", err);
        }
        int rc = tl_model_copy_resized(r->model, loaded, err, sizeof err);
        tl_model_free(loaded);
        if (rc != 0) return fail(r, "CONFIG_ERROR", "%s", err);
        log_msg(r, "position embedding resampled from %d x %d to %d x %d (input %d px, trained at %d px)",
                ck.img_size / ck.patch_size, ck.img_size / ck.patch_size, r->g, r->g, r->S, ck.img_size);
    }
    r->threads = s->threads > 0 ? s->threads : ncores();
    r->ctx = tl_ctx_new(r->model, r->B, 0, r->threads, err, sizeof err);
    tl_ctx_freeze_weights(r->ctx); /* the annotating model is fixed */
    if (!r->ctx) return fail(r, "OUT_OF_MEMORY", "%s", err);
    if (r->threads > 1 && !(r->dpool = tl_pool_new(r->threads)))
        return fail(r, "OUT_OF_MEMORY", "cannot start %d decoding threads", r->threads);
    size_t plane = (size_t)r->k * r->N;
    r->images = malloc(sizeof(float) * (size_t)r->B * 3 * r->S * r->S);
    r->ok = calloc((size_t)r->B, sizeof *r->ok);
    r->why = calloc((size_t)r->B, sizeof *r->why);
    r->vals = malloc(sizeof(float) * plane);
    r->idx16 = malloc(sizeof(uint16_t) * plane);
    r->idx32 = malloc(sizeof(int32_t) * plane);
    if (!r->images || !r->ok || !r->why || !r->vals || !r->idx16 || !r->idx32)
        return fail(r, "OUT_OF_MEMORY", "out of memory for the batch buffers");
    r->total = tl_dataset_count(r->ds);
    /* what makes a part this run's own */
    tl_fnv f;
    tl_fnv_init(&f);
    tl_fnv_add(&f, TL_PART_MAGIC, 8);
    uint64_t dims[] = {TL_PART_VERSION, (uint64_t)r->K, (uint64_t)r->k, (uint64_t)r->g, (uint64_t)r->g,
                       (uint64_t)r->S, (uint64_t)r->B, (uint64_t)r->total};
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++) tl_fnv_u64(&f, dims[i]);
    for (int64_t i = 0; i < r->total; i++) {
        const char *key = tl_dataset_relpath(r->ds, (int)i);
        tl_fnv_add(&f, key, strlen(key) + 1);
    }
    for (int i = 0; i < tl_model_num_tensors(r->model); i++) {
        const tl_tensor *t = tl_model_tensor(r->model, i);
        tl_fnv_add(&f, t->name, strlen(t->name) + 1);
        tl_fnv_add(&f, t->data, sizeof(float) * t->numel);
    }
    r->fingerprint = f.h;
    r->ps = (tl_parts){r->run_dir, r->K, r->k, r->g, r->B, r->total,
                       r->fingerprint, r->ds, r->vals, r->idx16, r->idx32};
    return TL_TRAIN_SUCCEEDED;
}

static void cleanup(run *r) {
    tl_part_abort(&r->pw);
    free(r->images);
    free(r->ok);
    free(r->why);
    free(r->vals);
    free(r->idx16);
    free(r->idx32);
    tl_pool_free(r->dpool);
    tl_ctx_free(r->ctx);
    tl_model_free(r->model);
    tl_dataset_free(r->ds);
}

/* ---- part files (annotate_parts.c), failures as the run's IO_ERROR ---- */

static int part_begin(run *r) {
    char err[sizeof r->res->message];
    if (tl_part_begin(&r->ps, r->part_no, r->done, &r->pw, err, sizeof err) == 0) return 0;
    write_fail(r, errno, r->pw.tmp, err);
    return -1;
}

/* Header, fsync, rename into place, fsync of the folder; the hooks around it. */
static int part_finish(run *r) {
    int refused = r->hooks && r->hooks->before_checkpoint ? r->hooks->before_checkpoint(r->done, r->hooks->user) : 0;
    if (refused) {
        fail(r, tl_errno_disk_full(refused) ? "DISK_FULL" : "IO_ERROR",
             "the progress up to %lld images could not be saved (%s); part %s was not written", (long long)r->done,
             strerror(refused), r->pw.path);
        return -1;
    }
    char err[sizeof r->res->message];
    if (tl_part_finish(&r->ps, &r->pw, r->done, err, sizeof err) != 0) {
        write_fail(r, errno, r->pw.path, err);
        return -1;
    }
    if (r->hooks && r->hooks->on_checkpoint) r->hooks->on_checkpoint(r->pw.path, r->done, r->hooks->user);
    r->part_no++;
    return 0;
}

/* Reads and validates part n (tl_part_read); -1 with the run failed otherwise. */
static int part_read(run *r, int n, int64_t start, int64_t *end, int64_t *skipped, tl_part_record_fn fn,
                     void *user) {
    char err[sizeof r->res->message];
    int rc = tl_part_read(&r->ps, n, start, end, skipped, fn, user, err, sizeof err);
    if (rc < 0) fail(r, "IO_ERROR", "%s", err);
    return rc == 0 ? 0 : -1; /* rc 1: fn failed the run itself */
}

static void log_removed(const char *path, void *user) {
    log_msg(user, "removed %s (a part whose writing was interrupted)", path);
}

/* Validates every part; sets done, skipped and part_no. */
static int resume(run *r) {
    int n = 0;
    char err[sizeof r->res->message];
    if (tl_part_list(&r->ps, &n, log_removed, r, err, sizeof err) != 0) {
        fail(r, "IO_ERROR", "%s", err);
        return -1;
    }
    int64_t pos = 0, skipped = 0;
    for (int i = 0; i < n; i++) {
        int64_t end = 0, sk = 0;
        if (part_read(r, i, pos, &end, &sk, NULL, NULL) != 0) return -1;
        pos = end;
        skipped += sk;
    }
    r->done = pos;
    r->skipped = skipped;
    r->part_no = n;
    r->res->step = pos;
    r->res->skipped_images = skipped;
    if (n > 0)
        log_msg(r, "resumed after %d part files: %lld of %lld images done", n, (long long)pos, (long long)r->total);
    return 0;
}

/* ---- annotation ---- */

typedef struct {
    run *r;
    int64_t lo;
    int n;
} decode_job;

static void decode_part(void *arg, int tid, int nt) {
    decode_job *j = arg;
    run *r = j->r;
    size_t img = (size_t)3 * r->S * r->S;
    for (int i = tid; i < j->n; i += nt) {
        char path[PATH_MAX];
        tl_image im = {0};
        r->ok[i] = 0;
        if (tl_dataset_path(r->ds, (int)(j->lo + i), path, sizeof path) != 0) {
            snprintf(r->why[i], sizeof r->why[i], "path too long");
            continue;
        }
        /* the smallest DCT scaling that keeps both sides >= S: no side is upsampled */
        if (tl_image_load(path, r->S, &im, r->why[i], sizeof r->why[i]) != 0) continue;
        tl_transform_full(&im, r->S, r->images + (size_t)i * img);
        tl_image_free(&im);
        r->ok[i] = 1;
    }
}

/* One batch [lo, hi): decode, forward, top-k, records to the part. */
static int annotate_batch(run *r, int64_t lo, int64_t hi) {
    int n = (int)(hi - lo);
    size_t img = (size_t)3 * r->S * r->S;
    decode_job j = {r, lo, n};
    tl_pool_run(r->dpool, decode_part, &j);
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (!r->ok[i]) {
            r->skipped++;
            r->pw.skipped++;
            log_msg(r, "skipped %s: %s", tl_dataset_relpath(r->ds, (int)(lo + i)), r->why[i]);
            continue;
        }
        if (m != i) memmove(r->images + (size_t)m * img, r->images + (size_t)i * img, sizeof(float) * img);
        m++;
    }
    if (m == 0) return 0;
    if (tl_forward(r->ctx, r->images, m, 0, NULL, 0) != 0) {
        fail(r, "CONFIG_ERROR", "the forward pass failed on images %lld..%lld", (long long)lo, (long long)hi - 1);
        return -1;
    }
    const float *aux = tl_logits_aux(r->ctx);
    int K = r->K, k = r->k, N = r->N;
    float tv[64];
    int32_t tc[64];
    float *val = k <= 64 ? tv : malloc(sizeof(float) * (size_t)k);
    int32_t *cls = k <= 64 ? tc : malloc(sizeof(int32_t) * (size_t)k);
    if (!val || !cls) {
        if (val != tv) free(val);
        if (cls != tc) free(cls);
        fail(r, "OUT_OF_MEMORY", "out of memory");
        return -1;
    }
    int rc = 0, b = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        if (!r->ok[i]) continue;
        const char *key = tl_dataset_relpath(r->ds, (int)(lo + i));
        for (int p = 0; p < N; p++) {
            if (tl_topk(aux + ((size_t)b * N + p) * K, K, k, cls, val) != 0) {
                rc = -1;
                fail(r, "CONFIG_ERROR", "the model produced a NaN logit for %s; the weights are broken", key);
                break;
            }
            for (int t = 0; t < k; t++) {
                float x = val[t] > TL_PART_F16_MAX    ? TL_PART_F16_MAX
                          : val[t] < -TL_PART_F16_MAX ? -TL_PART_F16_MAX
                                                      : val[t];
                r->vals[(size_t)t * N + p] = x;
                r->idx16[(size_t)t * N + p] = (uint16_t)cls[t];
            }
        }
        if (rc) break;
        size_t klen = strlen(key);
        if (klen < 1 || klen > TL_PART_KEY_MAX) {
            rc = -1;
            fail(r, "DATA_ERROR", "image path longer than %d bytes: %.200s", TL_PART_KEY_MAX, key);
            break;
        }
        if (tl_part_write_record(&r->ps, &r->pw, (uint32_t)(lo + i), key, klen) != 0) {
            int e = errno;
            char what[PATH_MAX + 64];
            snprintf(what, sizeof what, "cannot write %s: %s", r->pw.tmp, strerror(e));
            rc = -1;
            write_fail(r, e, r->pw.tmp, what);
            break;
        }
        b++;
    }
    if (val != tv) free(val);
    if (cls != tc) free(cls);
    return rc;
}

typedef struct {
    run *r;
    tl_labelmap_writer *wr;
} merge_job;

static int merge_record(const tl_parts *ps, const char *key, void *user) {
    merge_job *m = user;
    char err[TL_ERR_LEN];
    if (tl_labelmap_writer_add(m->wr, key, ps->vals, ps->idx32, err, sizeof err) != 0) {
        write_fail(m->r, errno, m->r->spec->out_path, err);
        return -1;
    }
    return 0;
}

/* The parts, in order, into the output; then the parts are removed. */
static tl_train_status merge(run *r) {
    char err[TL_ERR_LEN];
    if (r->skipped >= r->total)
        return fail(r, "DATA_ERROR", "no image of %s could be read", r->spec->images_dir);
    tl_labelmap_writer *wr = tl_labelmap_writer_new(r->spec->out_path, r->K, r->k, r->g, r->g, err, sizeof err);
    if (!wr) return write_fail(r, errno, r->spec->out_path, err);
    int64_t pos = 0;
    merge_job mj = {r, wr};
    for (int i = 0; i < r->part_no; i++) {
        int64_t end = 0, sk = 0;
        if (part_read(r, i, pos, &end, &sk, merge_record, &mj) != 0) {
            tl_labelmap_writer_abort(wr);
            return TL_TRAIN_FAILED;
        }
        pos = end;
    }
    if (pos != r->total) {
        tl_labelmap_writer_abort(wr);
        return fail(r, "IO_ERROR", "the part files cover %lld of %lld images", (long long)pos, (long long)r->total);
    }
    if (tl_labelmap_writer_finish(wr, err, sizeof err) != 0) return write_fail(r, errno, r->spec->out_path, err);
    for (int i = 0; i < r->part_no; i++) {
        char p[PATH_MAX];
        if (tl_part_name(r->run_dir, i, 0, p) == 0) unlink(p);
    }
    char p0[PATH_MAX];
    if (tl_part_name(r->run_dir, 0, 0, p0) == 0) tl_fsync_parent_dir(p0);
    r->res->status = TL_TRAIN_SUCCEEDED;
    snprintf(r->res->message, sizeof r->res->message, "annotated %lld images (%lld skipped) into %.900s",
             (long long)(r->total - r->skipped), (long long)r->skipped, r->spec->out_path);
    return TL_TRAIN_SUCCEEDED;
}

static tl_train_status loop(run *r) {
    const tl_annotate_hooks *h = r->hooks;
    if (h && h->on_start) h->on_start(r->done, r->total, h->user);
    double times[WINDOW] = {0}, t_prev = tl_clock_mono_s();
    int64_t counts[WINDOW] = {0}, batches = 0;
    if (r->done < r->total && part_begin(r) != 0) return TL_TRAIN_FAILED;
    while (r->done < r->total) {
        int64_t lo = r->done, hi = lo + r->B < r->total ? lo + r->B : r->total;
        if (annotate_batch(r, lo, hi) != 0) return TL_TRAIN_FAILED;
        r->done = hi;
        r->res->step = r->done;
        r->res->skipped_images = r->skipped;
        double t = tl_clock_mono_s();
        times[batches % WINDOW] = t - t_prev;
        counts[batches % WINDOW] = hi - lo;
        t_prev = t;
        batches++;
        if (h && h->on_progress) {
            double st = 0;
            int64_t sn = 0;
            for (int i = 0; i < WINDOW; i++) st += times[i], sn += counts[i];
            double ips = st > 0 ? (double)sn / st : 0.0;
            tl_annotate_report rep = {r->done, r->total, r->skipped, ips,
                                      ips > 0 ? (double)(r->total - r->done) / ips : -1.0};
            h->on_progress(&rep, h->user);
        }
        int last = r->done == r->total;
        int stop = !last && h && h->should_stop && h->should_stop(h->user);
        if (last || stop || r->done % r->part_images == 0) {
            if (part_finish(r) != 0) return TL_TRAIN_FAILED;
            if (!last && !stop && part_begin(r) != 0) return TL_TRAIN_FAILED;
        }
        t_prev = tl_clock_mono_s(); /* images/s measures batches, not part writes */
        if (stop) {
            r->res->status = TL_TRAIN_STOPPED;
            snprintf(r->res->reason, sizeof r->res->reason, "STOPPED");
            snprintf(r->res->message, sizeof r->res->message, "stopped after %lld of %lld images; part written",
                     (long long)r->done, (long long)r->total);
            return TL_TRAIN_STOPPED;
        }
    }
    return merge(r);
}

tl_train_status tl_annotate_run(const tl_annotate_spec *spec, const char *run_dir, const tl_annotate_hooks *hooks,
                                tl_train_result *res) {
    memset(res, 0, sizeof *res);
    res->best_top1 = -1.0;
    run r = {.spec = spec, .run_dir = run_dir, .hooks = hooks, .res = res};
    tl_train_status st = setup(&r);
    if (st == TL_TRAIN_SUCCEEDED) st = resume(&r) != 0 ? TL_TRAIN_FAILED : loop(&r);
    res->step = r.done;
    res->skipped_images = r.skipped;
    cleanup(&r);
    return st;
}
