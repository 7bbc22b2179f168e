/*
 * run_events.c: the event lines of `tokenlabd run --events` (see
 * run_events.h): the encoder behind the writer's hooks and the decoder that
 * calls the reader's hooks. Owns no state; the tee's struct is its caller's.
 * Any thread (the writer runs on rank 0's training thread, the reader on a
 * daemon worker thread).
 */
#include "jobs/run_events.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ encoding */

int tld_run_event_encode(cJSON *obj, char *buf, size_t len) {
    int n = -1;
    size_t cap = len < TLD_RUN_EVENT_MAX ? len : TLD_RUN_EVENT_MAX;
    if (!obj || cap < 2 || !cJSON_PrintPreallocated(obj, buf, (int)(cap - 1), 0)) goto fail;
    size_t l = strlen(buf);
    if (l + 2 > cap) goto fail;
    buf[l] = '\n';
    buf[l + 1] = 0;
    n = (int)(l + 1);
fail:
    cJSON_Delete(obj);
    return n;
}

/* A number as exact JSON: 17 significant digits (cJSON's own printing settles for 15 when they compare equal
 * within an epsilon), null when not finite. */
static cJSON *number(double v) {
    char b[40];
    if (!isfinite(v)) return cJSON_CreateNull();
    snprintf(b, sizeof b, "%.17g", v);
    return cJSON_CreateRaw(b);
}

static void add_num(cJSON *o, const char *key, double v) {
    cJSON_AddItemToObject(o, key, number(v));
}

/* A new event object whose first field is "event": name (NULL when out of memory). */
static cJSON *event(const char *name) {
    cJSON *o = cJSON_CreateObject();
    if (o && !cJSON_AddStringToObject(o, "event", name)) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* Writes one event (consumes obj); a failed write marks the tee failed and drops later events. */
static int emit(tld_run_events_tee *t, cJSON *obj) {
    static char line[TLD_RUN_EVENT_MAX];  /* the writer is one thread (rank 0's trainer) */
    if (t->failed) {
        cJSON_Delete(obj);
        return -1;
    }
    int n = tld_run_event_encode(obj, line, sizeof line);
    if (n < 0 || fwrite(line, 1, (size_t)n, t->f) != (size_t)n || fflush(t->f) != 0) {
        t->failed = 1;
        return -1;
    }
    return 0;
}

static void e_start(int64_t start, int64_t total, void *u) {
    tld_run_events_tee *t = u;
    cJSON *o = event("start");
    add_num(o, "start", (double)start);
    add_num(o, "total", (double)total);
    emit(t, o);
    if (t->inner.on_start) t->inner.on_start(start, total, t->inner.user);
}

static void e_ranks(const tl_ranks_info *in, void *u) {
    tld_run_events_tee *t = u;
    cJSON *o = event("ranks");
    add_num(o, "size", in->size);
    add_num(o, "micro_batches", in->micro_batches);
    cJSON *h = cJSON_AddArrayToObject(o, "hosts");
    for (int k = 0; k < in->size && k < TLD_RUN_EVENT_RANKS; k++)
        cJSON_AddItemToArray(h, cJSON_CreateString(in->hosts[k] ? in->hosts[k] : ""));
    emit(t, o);
    if (t->inner.on_ranks) t->inner.on_ranks(in, t->inner.user);
}

static void e_init(const tl_init_info *in, void *u) {
    tld_run_events_tee *t = u;
    cJSON *o = event("init");
    cJSON_AddStringToObject(o, "weights", in->weights);
    cJSON_AddBoolToObject(o, "from_ema", in->from_ema);
    add_num(o, "source_step", (double)in->source_step);
    add_num(o, "head", (int)in->head);
    add_num(o, "classes_matched", in->classes_matched);
    cJSON_AddBoolToObject(o, "pos_resized", in->rep.pos_resized);
    add_num(o, "src_grid", in->rep.src_grid);
    add_num(o, "dst_grid", in->rep.dst_grid);
    add_num(o, "head_rows_kept", in->rep.head_rows_kept);
    add_num(o, "head_rows_new", in->rep.head_rows_new);
    emit(t, o);
    if (t->inner.on_init) t->inner.on_init(in, t->inner.user);
}

static void e_step(const tl_step_report *r, void *u) {
    tld_run_events_tee *t = u;
    cJSON *o = event("step");
    add_num(o, "step", (double)r->step);
    add_num(o, "total_steps", (double)r->total_steps);
    add_num(o, "epoch", r->epoch);
    add_num(o, "epochs", r->epochs);
    add_num(o, "loss", r->loss);
    add_num(o, "loss_cls", r->loss_cls);
    add_num(o, "loss_dense", r->loss_dense);
    add_num(o, "lr", r->lr);
    add_num(o, "img_per_s", r->img_per_s);
    add_num(o, "eta_seconds", r->eta_seconds);
    add_num(o, "data_wait", r->data_wait);
    add_num(o, "skipped_images", (double)r->skipped_images);
    add_num(o, "ranks", r->ranks);
    cJSON *a = cJSON_AddArrayToObject(o, "rank_img_per_s");
    for (int k = 0; r->rank_img_per_s && k < r->ranks && k < TLD_RUN_EVENT_RANKS; k++)
        cJSON_AddItemToArray(a, number(r->rank_img_per_s[k]));
    add_num(o, "comm_seconds", r->comm_seconds);
    add_num(o, "step_seconds", r->step_seconds);
    emit(t, o);
    if (t->inner.on_step) t->inner.on_step(r, t->inner.user);
}

static void e_eval(const tl_eval_report *r, void *u) {
    tld_run_events_tee *t = u;
    cJSON *o = event("eval");
    add_num(o, "step", (double)r->step);
    add_num(o, "epoch", r->epoch);
    cJSON_AddBoolToObject(o, "ema", r->ema);
    add_num(o, "top1", r->top1);
    add_num(o, "top5", r->top5);
    add_num(o, "loss", r->loss);
    add_num(o, "images", r->images);
    add_num(o, "seconds", r->seconds);
    emit(t, o);
    if (t->inner.on_eval) t->inner.on_eval(r, t->inner.user);
}

static int e_before_checkpoint(int64_t step, void *u) {
    tld_run_events_tee *t = u;
    cJSON *o = event("before_checkpoint");
    add_num(o, "step", (double)step);
    emit(t, o);
    return t->inner.before_checkpoint ? t->inner.before_checkpoint(step, t->inner.user) : 0;
}

static void e_checkpoint(const char *path, int64_t step, int is_best, void *u) {
    tld_run_events_tee *t = u;
    cJSON *o = event("checkpoint");
    cJSON_AddStringToObject(o, "path", path);
    add_num(o, "step", (double)step);
    cJSON_AddBoolToObject(o, "is_best", is_best);
    emit(t, o);
    if (t->inner.on_checkpoint) t->inner.on_checkpoint(path, step, is_best, t->inner.user);
}

static void e_log(const char *msg, void *u) {
    tld_run_events_tee *t = u;
    char cut[4096]; /* a log line is short; a longer one is cut, so the event always fits */
    snprintf(cut, sizeof cut, "%s", msg);
    cJSON *o = event("log");
    cJSON_AddStringToObject(o, "message", cut);
    emit(t, o);
    if (t->inner.on_log) t->inner.on_log(msg, t->inner.user);
}

static int e_should_stop(void *u) {
    tld_run_events_tee *t = u;
    return t->inner.should_stop ? t->inner.should_stop(t->inner.user) : 0;
}

void tld_run_events_tee_init(tld_run_events_tee *t, FILE *f, const tl_train_hooks *inner, tl_train_hooks *out) {
    t->f = f;
    t->inner = *inner;
    t->failed = 0;
    *out = (tl_train_hooks){.on_start = e_start, .on_ranks = e_ranks, .on_init = e_init, .on_step = e_step,
                            .on_eval = e_eval, .before_checkpoint = e_before_checkpoint,
                            .on_checkpoint = e_checkpoint, .on_log = e_log, .should_stop = e_should_stop, .user = t};
}

int tld_run_events_end(tld_run_events_tee *t, tl_train_status st, const tl_train_result *res) {
    static const char *const names[] = {"SUCCEEDED", "STOPPED", "FAILED"};
    cJSON *o = event("end");
    cJSON_AddStringToObject(o, "status", (int)st >= 0 && (int)st < 3 ? names[st] : "FAILED");
    cJSON_AddStringToObject(o, "reason", res->reason);
    cJSON_AddStringToObject(o, "message", res->message);
    add_num(o, "step", (double)res->step);
    add_num(o, "skipped_images", (double)res->skipped_images);
    add_num(o, "best_top1", res->best_top1);
    return emit(t, o);
}

/* ------------------------------------------------------------------ decoding */

/* A number field: 0 and *v (null reads as NaN), or -1 with a message when absent or not a number. */
static int num(const cJSON *o, const char *key, double *v, char *err, size_t errlen) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsNull(it)) {
        *v = NAN;
        return 0;
    }
    if (!cJSON_IsNumber(it)) {
        snprintf(err, errlen, "field %s: must be a number", key);
        return -1;
    }
    *v = it->valuedouble;
    return 0;
}

/* An integer field in lo..hi: 0 and *v, or -1 with a message. */
static int integer(const cJSON *o, const char *key, int64_t lo, int64_t hi, int64_t *v, char *err, size_t errlen) {
    double d;
    if (num(o, key, &d, err, errlen) != 0) return -1;
    if (!(d >= (double)lo && d <= (double)hi) || d != floor(d)) {
        snprintf(err, errlen, "field %s: must be an integer in %lld..%lld", key, (long long)lo, (long long)hi);
        return -1;
    }
    *v = (int64_t)d;
    return 0;
}

/* A string field: its text, or NULL with a message. */
static const char *str(const cJSON *o, const char *key, char *err, size_t errlen) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(it)) {
        snprintf(err, errlen, "field %s: must be a string", key);
        return NULL;
    }
    return it->valuestring;
}

/* A boolean field: 0 and *v, or -1 with a message. */
static int boolean(const cJSON *o, const char *key, int *v, char *err, size_t errlen) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsBool(it)) {
        snprintf(err, errlen, "field %s: must be true or false", key);
        return -1;
    }
    *v = cJSON_IsTrue(it);
    return 0;
}

#define BIG ((int64_t)1 << 53)

static int d_start(const cJSON *o, const tl_train_hooks *h, char *err, size_t errlen) {
    int64_t start, total;
    if (integer(o, "start", 0, BIG, &start, err, errlen) || integer(o, "total", 0, BIG, &total, err, errlen)) return -1;
    if (h->on_start) h->on_start(start, total, h->user);
    return 0;
}

static int d_ranks(const cJSON *o, const tl_train_hooks *h, char *err, size_t errlen) {
    int64_t size, micro;
    if (integer(o, "size", 1, TLD_RUN_EVENT_RANKS, &size, err, errlen) ||
        integer(o, "micro_batches", 1, 1 << 20, &micro, err, errlen))
        return -1;
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "hosts");
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != (int)size) {
        snprintf(err, errlen, "field hosts: must be an array of %d strings", (int)size);
        return -1;
    }
    const char *hosts[TLD_RUN_EVENT_RANKS];
    int k = 0;
    for (const cJSON *it = a->child; it; it = it->next, k++) {
        if (!cJSON_IsString(it)) {
            snprintf(err, errlen, "field hosts: must be an array of %d strings", (int)size);
            return -1;
        }
        hosts[k] = it->valuestring;
    }
    tl_ranks_info in = {(int)size, (int)micro, hosts};
    if (h->on_ranks) h->on_ranks(&in, h->user);
    return 0;
}

static int d_init(const cJSON *o, const tl_train_hooks *h, char *err, size_t errlen) {
    static __thread tl_init_info in; /* ~ PATH_MAX + a config: not on the stack */
    memset(&in, 0, sizeof in);
    const char *w = str(o, "weights", err, errlen);
    int64_t step, head, matched, src, dst, kept, fresh;
    if (!w || boolean(o, "from_ema", &in.from_ema, err, errlen) ||
        integer(o, "source_step", -1, BIG, &step, err, errlen) || integer(o, "head", 0, 2, &head, err, errlen) ||
        integer(o, "classes_matched", 0, 1 << 30, &matched, err, errlen) ||
        boolean(o, "pos_resized", &in.rep.pos_resized, err, errlen) ||
        integer(o, "src_grid", 0, 1 << 20, &src, err, errlen) || integer(o, "dst_grid", 0, 1 << 20, &dst, err, errlen) ||
        integer(o, "head_rows_kept", 0, 1 << 30, &kept, err, errlen) ||
        integer(o, "head_rows_new", 0, 1 << 30, &fresh, err, errlen))
        return -1;
    if (strlen(w) >= sizeof in.weights) {
        snprintf(err, errlen, "field weights: longer than %zu bytes", sizeof in.weights - 1);
        return -1;
    }
    memcpy(in.weights, w, strlen(w) + 1);
    in.source_step = step;
    in.head = (tl_head_mode)head;
    in.classes_matched = (int)matched;
    in.rep.src_grid = (int)src, in.rep.dst_grid = (int)dst;
    in.rep.head_rows_kept = (int)kept, in.rep.head_rows_new = (int)fresh;
    if (h->on_init) h->on_init(&in, h->user);
    return 0;
}

static int d_step(const cJSON *o, const tl_train_hooks *h, char *err, size_t errlen) {
    tl_step_report r = {0};
    int64_t step, total, epoch, epochs, skipped, ranks;
    if (integer(o, "step", 0, BIG, &step, err, errlen) || integer(o, "total_steps", 0, BIG, &total, err, errlen) ||
        integer(o, "epoch", 0, 1 << 30, &epoch, err, errlen) || integer(o, "epochs", 0, 1 << 30, &epochs, err, errlen) ||
        num(o, "loss", &r.loss, err, errlen) || num(o, "loss_cls", &r.loss_cls, err, errlen) ||
        num(o, "loss_dense", &r.loss_dense, err, errlen) || num(o, "lr", &r.lr, err, errlen) ||
        num(o, "img_per_s", &r.img_per_s, err, errlen) || num(o, "eta_seconds", &r.eta_seconds, err, errlen) ||
        num(o, "data_wait", &r.data_wait, err, errlen) || integer(o, "skipped_images", 0, BIG, &skipped, err, errlen) ||
        integer(o, "ranks", 1, TLD_RUN_EVENT_RANKS, &ranks, err, errlen) ||
        num(o, "comm_seconds", &r.comm_seconds, err, errlen) || num(o, "step_seconds", &r.step_seconds, err, errlen))
        return -1;
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "rank_img_per_s");
    double ips[TLD_RUN_EVENT_RANKS];
    int n = cJSON_IsArray(a) ? cJSON_GetArraySize(a) : -1;
    if (n != 0 && n != (int)ranks) {
        snprintf(err, errlen, "field rank_img_per_s: must be an array of %d numbers (or empty)", (int)ranks);
        return -1;
    }
    int k = 0;
    for (const cJSON *it = n > 0 ? a->child : NULL; it; it = it->next) {
        if (!cJSON_IsNumber(it) && !cJSON_IsNull(it)) {
            snprintf(err, errlen, "field rank_img_per_s: must be an array of %d numbers", (int)ranks);
            return -1;
        }
        ips[k++] = cJSON_IsNull(it) ? NAN : it->valuedouble;
    }
    r.step = step, r.total_steps = total, r.epoch = (int)epoch, r.epochs = (int)epochs;
    r.skipped_images = skipped, r.ranks = (int)ranks;
    r.rank_img_per_s = n > 0 ? ips : NULL;
    if (h->on_step) h->on_step(&r, h->user);
    return 0;
}

static int d_eval(const cJSON *o, const tl_train_hooks *h, char *err, size_t errlen) {
    tl_eval_report r = {0};
    int64_t step, epoch, images;
    if (integer(o, "step", 0, BIG, &step, err, errlen) || integer(o, "epoch", 0, 1 << 30, &epoch, err, errlen) ||
        boolean(o, "ema", &r.ema, err, errlen) || num(o, "top1", &r.top1, err, errlen) ||
        num(o, "top5", &r.top5, err, errlen) || num(o, "loss", &r.loss, err, errlen) ||
        integer(o, "images", 0, 1 << 30, &images, err, errlen) || num(o, "seconds", &r.seconds, err, errlen))
        return -1;
    r.step = step, r.epoch = (int)epoch, r.images = (int)images;
    if (h->on_eval) h->on_eval(&r, h->user);
    return 0;
}

static int d_before_checkpoint(const cJSON *o, const tl_train_hooks *h, char *err, size_t errlen) {
    int64_t step;
    if (integer(o, "step", 0, BIG, &step, err, errlen)) return -1;
    /* the ranks do not wait for an answer: a refusal here cannot stop their checkpoint (docs/ROBUSTNESS.md) */
    if (h->before_checkpoint) (void)h->before_checkpoint(step, h->user);
    return 0;
}

static int d_checkpoint(const cJSON *o, const tl_train_hooks *h, char *err, size_t errlen) {
    int64_t step;
    int best;
    const char *path = str(o, "path", err, errlen);
    if (!path || integer(o, "step", 0, BIG, &step, err, errlen) || boolean(o, "is_best", &best, err, errlen)) return -1;
    if (h->on_checkpoint) h->on_checkpoint(path, step, best, h->user);
    return 0;
}

static int d_log(const cJSON *o, const tl_train_hooks *h, char *err, size_t errlen) {
    const char *m = str(o, "message", err, errlen);
    if (!m) return -1;
    if (h->on_log) h->on_log(m, h->user);
    return 0;
}

static int d_end(const cJSON *o, tl_train_status *st, tl_train_result *res, char *err, size_t errlen) {
    const char *status = str(o, "status", err, errlen);
    const char *reason = status ? str(o, "reason", err, errlen) : NULL;
    const char *msg = reason ? str(o, "message", err, errlen) : NULL;
    int64_t step, skipped;
    double best;
    if (!msg || integer(o, "step", 0, BIG, &step, err, errlen) ||
        integer(o, "skipped_images", 0, BIG, &skipped, err, errlen) || num(o, "best_top1", &best, err, errlen))
        return -1;
    if (!strcmp(status, "SUCCEEDED")) *st = TL_TRAIN_SUCCEEDED;
    else if (!strcmp(status, "STOPPED")) *st = TL_TRAIN_STOPPED;
    else if (!strcmp(status, "FAILED")) *st = TL_TRAIN_FAILED;
    else {
        snprintf(err, errlen, "field status: must be SUCCEEDED, STOPPED or FAILED");
        return -1;
    }
    memset(res, 0, sizeof *res);
    res->status = *st;
    snprintf(res->reason, sizeof res->reason, "%s", reason);
    snprintf(res->message, sizeof res->message, "%s", msg);
    res->step = step, res->skipped_images = skipped, res->best_top1 = best;
    return 0;
}

int tld_run_event_dispatch(const char *line, size_t len, const tl_train_hooks *h, tl_train_status *st,
                           tl_train_result *res, char *err, size_t errlen) {
    if (len >= TLD_RUN_EVENT_MAX) {
        snprintf(err, errlen, "an event line longer than %d bytes", TLD_RUN_EVENT_MAX - 1);
        return -1;
    }
    cJSON *o = cJSON_ParseWithLength(line, len);
    int rc = -1;
    const cJSON *ev = cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, "event") : NULL;
    if (!cJSON_IsString(ev)) {
        snprintf(err, errlen, "not an event (a JSON object with a string \"event\")");
        goto done;
    }
    const char *n = ev->valuestring;
    if (!strcmp(n, "start")) rc = d_start(o, h, err, errlen);
    else if (!strcmp(n, "ranks")) rc = d_ranks(o, h, err, errlen);
    else if (!strcmp(n, "init")) rc = d_init(o, h, err, errlen);
    else if (!strcmp(n, "step")) rc = d_step(o, h, err, errlen);
    else if (!strcmp(n, "eval")) rc = d_eval(o, h, err, errlen);
    else if (!strcmp(n, "before_checkpoint")) rc = d_before_checkpoint(o, h, err, errlen);
    else if (!strcmp(n, "checkpoint")) rc = d_checkpoint(o, h, err, errlen);
    else if (!strcmp(n, "log")) rc = d_log(o, h, err, errlen);
    else if (!strcmp(n, "end")) rc = d_end(o, st, res, err, errlen) == 0 ? 1 : -1;
    else snprintf(err, errlen, "unknown event \"%.40s\"", n);
    if (rc < 0 && strncmp(err, "field", 5) == 0) { /* name the event too */
        char e2[300];
        snprintf(e2, sizeof e2, "%.40s event: %.250s", n, err);
        snprintf(err, errlen, "%s", e2);
    }
done:
    cJSON_Delete(o);
    return rc;
}
