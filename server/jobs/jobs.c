/*
 * jobs.c: the job manager (see jobs.h).
 *
 * Owns: the scheduler thread, the worker slots (one thread each while a job
 * trains), copies of the configuration strings, the holds of jobs paused for
 * a full disk. `mu` guards the slots, the holds and the quit flag; the
 * scheduler sleeps on `wake` (signalled by submissions, slot releases and
 * shutdown). Workers talk to the store and the event bus, both thread-safe,
 * and read their own slot's stop flag atomically.
 *
 * A full disk (docs/ROBUSTNESS.md): an attempt that ends with DISK_FULL (a
 * checkpoint, part or label-map write met ENOSPC, or the store lost metric
 * points to SQLITE_FULL and refused the checkpoint) pauses the job: its
 * points past its last checkpoint are dropped and it goes back to QUEUED with
 * the reason DISK_FULL (not a new attempt: the crash-loop guard does not
 * count it). The scheduler holds such a job until the file systems it writes
 * have the room it needs (space_needed: twice its last checkpoint, or its
 * parts, and a margin), read at most every DISK_CHECK_MS, and until a backoff
 * that doubles with each pause in a row (2 s to 60 s) has run out; then it
 * resumes by itself. A worker whose state change the store cannot write
 * because its own disk is full (errno ENOSPC) keeps its slot and tries again
 * every few seconds (settle); the scheduler never polls faster than its 1 s
 * tick, so nothing spins while the disk stays full.
 */
#include "jobs/jobs.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "tokenlab/annotate.h"
#include "tokenlab/base.h"
#include "tokenlab/files.h"
#include "jobs/init_source.h"
#include "jobs/inspect_record.h"
#include "jobs/mpi_job.h"
#include "jobs/run_events.h"
#include "serving/models.h"
#include "tokenlab/train.h"

#define MAX_SLOTS 64
#define MAX_HOLDS (4 * MAX_SLOTS)
#define DISK_MARGIN ((int64_t)1 << 20) /* bytes a paused job needs beyond its files (space_needed) */
#define DISK_CHECK_MS 2000             /* a held job's free space is read at most this often */
#define HOLD_MIN_MS 2000               /* the backoff of a job paused for a full disk: doubles per pause in a row */
#define HOLD_MAX_MS 60000
#define SETTLE_MIN_MS 2000             /* a state change the full store refused is tried again after this, */
#define SETTLE_MAX_MS 30000            /* doubling up to this */
#define TRAIN_NICE 5
#define STOP_CANCEL 1
#define STOP_SHUTDOWN 2

typedef struct {
    struct tld_jobs *J;
    int64_t id;
    pthread_t thread;
    int busy;                 /* guarded by J->mu */
    atomic_int stop;          /* 0, STOP_CANCEL or STOP_SHUTDOWN */
    _Atomic double img_s;
    int annotate;             /* 1: an annotate job (aspec), 0: a training job (spec) */
    tl_train_spec spec;
    tl_annotate_spec aspec;
    char run_dir[1200];
    int inspect_set_written;  /* this run has stored (or found) its inspection set */
    int ranks;                /* a distributed job: the ranks of this attempt (0: in-process) */
} slot;

/* A job paused for a full disk (guarded by J->mu): when it may start, and what the last look at the disk found. */
typedef struct {
    int64_t id;          /* 0: a free entry */
    int64_t until_ms;    /* not before (monotonic) */
    int64_t backoff_ms;  /* the pause's backoff; doubles with each pause before a checkpoint */
    int64_t checked_ms;  /* when room was last read (0: never) */
    int room;            /* the file systems had the room space_needed asks */
} hold;

struct tld_jobs {
    tld_jobs_cfg cfg;
    char *state_dir, *data_root;
    tld_store *store;
    tld_events *ev;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    int quit;
    pthread_t scheduler;
    int scheduler_started;
    slot slots[MAX_SLOTS];
    pthread_mutex_t hist_mu; /* step_hist */
    tld_hist step_hist;      /* training step time, every job */
    hold holds[MAX_HOLDS];   /* under mu */
    atomic_int settling;     /* workers waiting for the store to take a state change */
    atomic_ullong disk_full_attempts; /* attempts that ended with DISK_FULL */
};

static void publish(tld_jobs *J, int64_t id, const char *type, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void publish(tld_jobs *J, int64_t id, const char *type, const char *fmt, ...) {
    char buf[TLD_EVENT_DATA_LEN];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > 0 && (size_t)n < sizeof buf) tld_events_publish(J->ev, id, type, buf);
}

/* A number as JSON: non-finite values become null (JSON has no NaN). */
static const char *jnum(char *buf, size_t len, double v) {
    if (isfinite(v)) snprintf(buf, len, "%.6g", v);
    else snprintf(buf, len, "null");
    return buf;
}

/* JSON string escaping into a bounded buffer (messages go into events). */
static void json_escape(char *out, size_t len, const char *s) {
    size_t o = 0;
    for (; *s && o + 7 < len; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20) {
            o += (size_t)snprintf(out + o, len - o, "\\u%04x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    out[o] = 0;
}

/* Publishes the state event of a change to `state` that has just been committed, with its own reason and
 * message: never the job's current state read back, which another thread may already have moved on (a job
 * submitted and started at once would otherwise announce RUNNING twice and QUEUED never). The attempt is
 * read from the store; it changes only while the job is QUEUED, under J->mu. */
static void publish_state(tld_jobs *J, int64_t id, tld_job_state state, const char *reason, const char *message) {
    tld_job job;
    char err[256], msg[300];
    if (tld_store_job_get(J->store, id, &job, err, sizeof err) != 0) return;
    json_escape(msg, sizeof msg, message ? message : "");
    publish(J, id, "state", "{\"id\":%lld,\"state\":\"%s\",\"state_reason\":\"%s\",\"state_message\":\"%s\",\"attempt\":%d}",
            (long long)id, tld_job_state_name(state), reason ? reason : "", msg, job.attempt);
    tld_job_free(&job);
}

/* Moves a job along the state machine and publishes its new state. The scheduler asks only for transitions the
 * state machine allows from every state of `from` (an invariant: a request outside it is refused here). */
static int transition_e(tld_jobs *J, int64_t id, unsigned from, tld_job_state to, const char *reason, const char *msg,
                        char *err, size_t errlen) {
    for (int f = 0; f < TLD_JOB_NSTATES; f++)
        if ((from & (1u << f)) && TL_NEVER(!tld_job_transition_allowed((tld_job_state)f, to))) {
            errno = EINVAL;
            return tl_seterr(err, errlen, "a transition the state machine forbids");
        }
    int rc = tld_store_job_transition(J->store, id, from, to, reason, msg, err, errlen);
    int e = errno;
    if (rc == 0) publish_state(J, id, to, reason, msg);
    errno = e; /* ENOSPC: the store's disk is full (store.h) */
    return rc;
}

static int transition(tld_jobs *J, int64_t id, unsigned from, tld_job_state to, const char *reason, const char *msg) {
    char err[256];
    return transition_e(J, id, from, to, reason, msg, err, sizeof err);
}

#define M(s) (1u << (s))

static int requeue_resume(tld_jobs *J, int64_t id, const char *run_dir, int annotate, const char *reason,
                          const char *why, char *stalled_msg, size_t stalled_len);

/* ---- worker hooks ---- */
static void h_start(int64_t start, int64_t total, void *u) {
    slot *s = u;
    char line[128];
    if (start > 0) {
        snprintf(line, sizeof line, "resuming from step %lld of %lld", (long long)start, (long long)total);
        tld_store_log_append(s->J->store, s->id, line);
    }
    int64_t per_epoch = s->spec.epochs > 0 ? total / s->spec.epochs : 0;
    tld_store_job_set_progress(s->J->store, s->id, per_epoch ? start / per_epoch : 0, start, total, -1.0);
}

/* A distributed job's ranks reported their hosts (the "ranks" event): recorded with the ranks asked for. */
static void h_ranks(const tl_ranks_info *in, void *u) {
    slot *s = u;
    cJSON *a = cJSON_CreateArray();
    for (int k = 0; a && k < in->size; k++) cJSON_AddItemToArray(a, cJSON_CreateString(in->hosts[k]));
    char *txt = a ? cJSON_PrintUnformatted(a) : NULL, err[256];
    cJSON_Delete(a);
    if (!txt || tld_store_job_dist_put(s->J->store, s->id, s->spec.ranks, in->size, txt, err, sizeof err) != 0) {
        char line[400];
        snprintf(line, sizeof line, "the ranks' hosts were not recorded: %s", txt ? err : "out of memory");
        tld_store_log_append(s->J->store, s->id, line);
    }
    free(txt);
}

/* A distributed job's step: each rank's images/s and the gradient sum's seconds, the latest kept. */
static void record_rank_rates(slot *s, const tl_step_report *r) {
    char buf[TLD_RUN_EVENT_RANKS * 24 + 8], num[32], err[256];
    size_t o = 0;
    buf[o++] = '[';
    for (int k = 0; k < r->ranks && k < TLD_RUN_EVENT_RANKS; k++)
        o += (size_t)snprintf(buf + o, sizeof buf - o, "%s%s", k ? "," : "", jnum(num, sizeof num, r->rank_img_per_s[k]));
    snprintf(buf + o, sizeof buf - o, "]");
    tld_store_job_dist_rates(s->J->store, s->id, buf, isfinite(r->comm_seconds) ? r->comm_seconds : 0.0, err,
                             sizeof err);
}

static void h_step(const tl_step_report *r, void *u) {
    slot *s = u;
    tld_jobs *J = s->J;
    int64_t t = tl_clock_wall_ms();
    atomic_store(&s->img_s, r->img_per_s);
    pthread_mutex_lock(&J->hist_mu);
    tld_hist_observe(&J->step_hist, r->step_seconds);
    pthread_mutex_unlock(&J->hist_mu);
    tld_store_job_set_progress(J->store, s->id, r->epoch, r->step, r->total_steps, r->eta_seconds);
    tld_store_metric_add(J->store, s->id, "loss", r->step, r->loss, t);
    tld_store_metric_add(J->store, s->id, "loss_cls", r->step, r->loss_cls, t);
    tld_store_metric_add(J->store, s->id, "loss_dense", r->step, r->loss_dense, t);
    tld_store_metric_add(J->store, s->id, "lr", r->step, r->lr, t);
    tld_store_metric_add(J->store, s->id, "img_per_s", r->step, r->img_per_s, t);
    tld_store_metric_add(J->store, s->id, "data_wait", r->step, r->data_wait, t);
    if (r->skipped_images > 0)
        tld_store_metric_add(J->store, s->id, "skipped_images", r->step, (double)r->skipped_images, t);
    if (s->ranks > 0 && r->rank_img_per_s) record_rank_rates(s, r);
    char a[6][32];
    publish(J, s->id, "progress",
            "{\"id\":%lld,\"epoch\":%d,\"step\":%lld,\"total_steps\":%lld,\"eta_seconds\":%.1f,\"time_ms\":%lld,"
            "\"metrics\":{\"loss\":%s,\"loss_cls\":%s,\"loss_dense\":%s,\"lr\":%s,\"img_per_s\":%s,"
            "\"data_wait\":%s}}",
            (long long)s->id, r->epoch, (long long)r->step, (long long)r->total_steps, r->eta_seconds, (long long)t,
            jnum(a[0], 32, r->loss), jnum(a[1], 32, r->loss_cls), jnum(a[2], 32, r->loss_dense), jnum(a[3], 32, r->lr),
            jnum(a[4], 32, r->img_per_s), jnum(a[5], 32, r->data_wait));
}

static void h_eval(const tl_eval_report *r, void *u) {
    slot *s = u;
    tld_jobs *J = s->J;
    int64_t t = tl_clock_wall_ms();
    const char *p = r->ema ? "ema_" : "";
    char n1[32], n5[32], nl[32];
    snprintf(n1, sizeof n1, "%stop1", p);
    snprintf(n5, sizeof n5, "%stop5", p);
    snprintf(nl, sizeof nl, "%sval_loss", p);
    tld_store_metric_add(J->store, s->id, n1, r->step, r->top1, t);
    tld_store_metric_add(J->store, s->id, n5, r->step, r->top5, t);
    tld_store_metric_add(J->store, s->id, nl, r->step, r->loss, t);
    char a[3][32];
    publish(J, s->id, "eval",
            "{\"id\":%lld,\"step\":%lld,\"epoch\":%d,\"weights\":\"%s\",\"time_ms\":%lld,\"metrics\":{\"%s\":%s,"
            "\"%s\":%s,\"%s\":%s}}",
            (long long)s->id, (long long)r->step, r->epoch, r->ema ? "ema" : "raw", (long long)t, n1,
            jnum(a[0], 32, r->top1), n5, jnum(a[1], 32, r->top5), nl, jnum(a[2], 32, r->loss));
}

static void unhold(tld_jobs *J, int64_t id);

/* Metric points up to the checkpoint's step must be committed before the checkpoint exists,
 * or a kill -9 right after it would lose them (recovery only redoes steps after it). When some
 * were lost (the store's disk was full), the checkpoint is refused: ENOSPC (the attempt ends
 * with DISK_FULL) or EIO. */
static int h_before_checkpoint(int64_t step, void *u) {
    slot *s = u;
    (void)step;
    return tld_store_metrics_durable(s->J->store, s->id);
}

static void h_checkpoint(const char *path, int64_t step, int is_best, void *u) {
    slot *s = u;
    tld_checkpoint_row row = {.step = step, .time_ms = tl_clock_wall_ms(), .top1 = -1.0};
    snprintf(row.kind, sizeof row.kind, "%s", is_best ? "best" : "last");
    snprintf(row.path, sizeof row.path, "%s", path);
    struct stat st;
    row.bytes = stat(path, &st) == 0 ? (int64_t)st.st_size : 0;
    char err[256];
    tld_store_checkpoint_add(s->J->store, s->id, &row, err, sizeof err);
    if (!is_best) unhold(s->J, s->id); /* progress: a later pause for a full disk starts its backoff afresh */
    publish(s->J, s->id, "checkpoint", "{\"id\":%lld,\"step\":%lld,\"kind\":\"%s\",\"bytes\":%lld}", (long long)s->id,
            (long long)step, row.kind, (long long)row.bytes);
}

static void h_log(const char *msg, void *u) {
    slot *s = u;
    tld_store_log_append(s->J->store, s->id, msg);
    char esc[400];
    json_escape(esc, sizeof esc, msg);
    publish(s->J, s->id, "log", "{\"id\":%lld,\"line\":\"%s\"}", (long long)s->id, esc);
}

/* Token inspection: the set once per run, then each evaluation's predictions; a failure is logged, never fatal. */
static void h_inspect(const tl_inspect_set *set, const tl_inspect_result *res, int64_t step, int ema, void *u) {
    slot *s = u;
    char err[512];
    if (tld_inspect_record(s->J->store, s->id, s->spec.train_dir, &s->inspect_set_written, set, res, step, ema, err,
                          sizeof err) != 0) {
        char line[600];
        snprintf(line, sizeof line, "token inspection not recorded at step %lld: %s", (long long)step, err);
        h_log(line, u);
        return;
    }
    publish(s->J, s->id, "inspect", "{\"id\":%lld,\"job_id\":%lld,\"step\":%lld,\"ema\":%s}", (long long)s->id,
            (long long)s->id, (long long)step, ema ? "true" : "false");
}

/* model.init on a fresh start: what was loaded goes into the store (job_inits: the job's "init" and the
 * lineage of models made from it) and the log. Awaited, so a client that sees the step-0 evaluation finds it. */
static void h_init(const tl_init_info *info, void *u) {
    slot *s = u;
    static const char *const heads[] = {"reinit", "keep", "match"};
    tld_job_init_row row;
    memset(&row, 0, sizeof row);
    if (s->spec.init_model[0]) {
        snprintf(row.source_kind, sizeof row.source_kind, "model");
        snprintf(row.source_model, sizeof row.source_model, "%s", s->spec.init_model);
    } else {
        snprintf(row.source_kind, sizeof row.source_kind, "job");
        row.source_job = s->spec.init_job;
        snprintf(row.checkpoint, sizeof row.checkpoint, "%s", s->spec.init_checkpoint[0] ? s->spec.init_checkpoint : "best");
    }
    row.step = info->source_step < 0 ? -1 : info->source_step;
    row.ema = info->from_ema ? 1 : 0;
    int h = (int)info->head;
    snprintf(row.head, sizeof row.head, "%s", h >= 0 && h < 3 ? heads[h] : "reinit");
    row.classes_matched = info->head == TL_HEAD_MATCH && info->classes_matched > 0 ? info->classes_matched : 0;
    if (info->rep.pos_resized && info->rep.src_grid > 0 && info->rep.dst_grid > 0) {
        row.pos_from = info->rep.src_grid;
        row.pos_to = info->rep.dst_grid;
    }
    if (strlen(info->weights) < sizeof row.weights) memcpy(row.weights, info->weights, strlen(info->weights) + 1);
    else snprintf(row.weights, sizeof row.weights, "(a path longer than %zu bytes)", sizeof row.weights - 1);
    row.time_ms = tl_clock_wall_ms();
    char err[512], line[400], src[128], match[48] = "", pos[80] = "";
    if (row.source_model[0]) snprintf(src, sizeof src, "model %s", row.source_model);
    else snprintf(src, sizeof src, "job %lld (%s checkpoint)", (long long)row.source_job, row.checkpoint);
    if (info->head == TL_HEAD_MATCH) snprintf(match, sizeof match, " (%d classes matched)", row.classes_matched);
    if (row.pos_from)
        snprintf(pos, sizeof pos, "; position embedding resampled from %dx%d to %dx%d", row.pos_from, row.pos_from,
                 row.pos_to, row.pos_to);
    snprintf(line, sizeof line, "started from %s at step %lld, %s weights; head %s%s%s", src, (long long)row.step,
             row.ema ? "EMA" : "raw", row.head, match, pos);
    if (tld_store_job_init_put(s->J->store, s->id, &row, err, sizeof err) != 0) {
        char l2[700];
        snprintf(l2, sizeof l2, "where the job started was not recorded: %s", err);
        h_log(l2, u);
    }
    h_log(line, u);
}

static int h_stop(void *u) {
    slot *s = u;
    return atomic_load(&s->stop) != 0;
}

/* ---- annotate-job hooks ---- */
static void a_start(int64_t done, int64_t total, void *u) {
    slot *s = u;
    if (done > 0) {
        char line[128];
        snprintf(line, sizeof line, "resuming after %lld of %lld images", (long long)done, (long long)total);
        tld_store_log_append(s->J->store, s->id, line);
    }
    tld_store_job_set_progress(s->J->store, s->id, 0, done, total, -1.0);
}

static void a_progress(const tl_annotate_report *r, void *u) {
    slot *s = u;
    tld_jobs *J = s->J;
    int64_t t = tl_clock_wall_ms();
    atomic_store(&s->img_s, r->img_per_s);
    tld_store_job_set_progress(J->store, s->id, 0, r->done, r->total, r->eta_seconds);
    tld_store_metric_add(J->store, s->id, "img_per_s", r->done, r->img_per_s, t);
    tld_store_metric_add(J->store, s->id, "skipped_images", r->done, (double)r->skipped, t);
    char a[2][32];
    publish(J, s->id, "progress",
            "{\"id\":%lld,\"epoch\":0,\"step\":%lld,\"total_steps\":%lld,\"eta_seconds\":%.1f,\"time_ms\":%lld,"
            "\"metrics\":{\"img_per_s\":%s,\"skipped_images\":%s}}",
            (long long)s->id, (long long)r->done, (long long)r->total, r->eta_seconds, (long long)t,
            jnum(a[0], 32, r->img_per_s), jnum(a[1], 32, (double)r->skipped));
}

static void a_checkpoint(const char *path, int64_t done, void *u) {
    slot *s = u;
    unhold(s->J, s->id);
    char line[1400];
    snprintf(line, sizeof line, "%lld images annotated and saved (%s)", (long long)done, path);
    tld_store_log_append(s->J->store, s->id, line);
}

/* Writes text to path crash-safely (tl_file_create_temp, tl_file_commit). 0, or -1 with errno set (the
 * temporary file removed). */
static int write_durable(const char *path, const char *text) {
    char tmp[TL_TEMP_NAME_LEN(PATH_MAX)];
    FILE *f = tl_file_create_temp(path, tmp, sizeof tmp);
    if (!f) return -1;
    if (fputs(text, f) < 0) {
        tl_file_abandon(f, tmp);
        return -1;
    }
    return tl_file_commit(f, tmp, path, NULL);
}

/* <out>.json beside a finished label map: which dataset it annotates (relative to the data root, for the
 * label-map routes) and where it came from. Crash-safe (temp file, fsync, rename, fsync of the folder). */
static void write_sidecar(tld_jobs *J, const slot *s) {
    const tl_annotate_spec *a = &s->aspec;
    char root[PATH_MAX], path[PATH_MAX + 16];
    const char *ds = a->images_dir;
    if (realpath(J->data_root, root) && tl_path_is_inside(ds, root) && strcmp(ds, root) != 0)
        ds += strcmp(root, "/") == 0 ? 1 : strlen(root) + 1; /* relative to the data root */
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "dataset", ds);
    cJSON_AddNumberToObject(o, "job_id", (double)s->id);
    if (a->source_model[0]) cJSON_AddStringToObject(o, "model", a->source_model);
    else cJSON_AddNumberToObject(o, "source_job_id", (double)a->source_job);
    cJSON_AddNumberToObject(o, "topk", a->topk);
    cJSON_AddNumberToObject(o, "created_ms", (double)tl_clock_wall_ms());
    char *txt = cJSON_Print(o);
    cJSON_Delete(o);
    snprintf(path, sizeof path, "%s.json", a->out_path);
    if (!txt || write_durable(path, txt) != 0) {
        char line[PATH_MAX + 64];
        snprintf(line, sizeof line, "could not write %s: %s", path, strerror(errno));
        tld_store_log_append(J->store, s->id, line);
    }
    free(txt);
}

/* The weights an annotate job reads: a registered model's file, or a training job's checkpoint
 * (the rule of init_source.c, shared with fine-tuning). */
static int resolve_source(tld_jobs *J, tl_annotate_spec *a, char *msg, size_t len) {
    tld_source src;
    tl_spec_error se;
    tld_source_req q = {.prefix = "/source", .model = a->source_model, .job_id = a->source_job,
                        .checkpoint = a->source_checkpoint, .ema = a->source_ema};
    if (tld_source_resolve(J->store, &q, &src, &se) != 0) {
        tl_spec_error_format(&se, msg, len);
        return -1;
    }
    snprintf(a->weights_path, sizeof a->weights_path, "%s", src.path);
    a->from_ema = src.from_ema;
    return 0;
}

/* ---- distributed jobs: mpirun launched and followed on the worker thread (mpi_job.c) ---- */

/* The spec file the ranks read: the submitted spec with the data paths resolved against the data root
 * (absolute: every host must see them at the same path), distributed.ranks = ranks (this attempt's world)
 * and train.threads = the daemon's threads per job. Written crash-safely into the run folder as spec.json.
 * 0, or -1 with a message. */
static int write_rank_spec(tld_jobs *J, slot *s, int ranks, char *path, size_t plen, char *msg, size_t mlen) {
    tld_job job;
    char err[256];
    if (tld_store_job_get(J->store, s->id, &job, err, sizeof err) != 0) {
        snprintf(msg, mlen, "cannot read the job: %s", err);
        return -1;
    }
    cJSON *doc = cJSON_Parse(job.spec_json);
    tld_job_free(&job);
    cJSON *data = doc ? cJSON_GetObjectItemCaseSensitive(doc, "data") : NULL;
    cJSON *dist = doc ? cJSON_GetObjectItemCaseSensitive(doc, "distributed") : NULL;
    cJSON *train = doc ? cJSON_GetObjectItemCaseSensitive(doc, "train") : NULL;
    const char *keys[] = {"train", "val", "label_maps"};
    const char *vals[] = {s->spec.train_dir, s->spec.val_dir, s->spec.label_maps};
    int ok = cJSON_IsObject(data) && cJSON_IsObject(dist);
    for (int k = 0; ok && k < 3; k++)
        if (vals[k][0] && cJSON_GetObjectItemCaseSensitive(data, keys[k]))
            ok = cJSON_ReplaceItemInObjectCaseSensitive(data, keys[k], cJSON_CreateString(vals[k]));
    ok = ok && cJSON_ReplaceItemInObjectCaseSensitive(dist, "ranks", cJSON_CreateNumber(ranks));
    if (ok && !cJSON_IsObject(train)) ok = (train = cJSON_AddObjectToObject(doc, "train")) != NULL;
    if (ok) {
        cJSON_DeleteItemFromObjectCaseSensitive(train, "threads");
        ok = cJSON_AddNumberToObject(train, "threads", s->spec.threads) != NULL;
    }
    char *txt = ok ? cJSON_Print(doc) : NULL;
    cJSON_Delete(doc);
    snprintf(path, plen, "%s/spec.json", s->run_dir);
    int rc = txt && (mkdir(s->run_dir, 0755) == 0 || errno == EEXIST) ? write_durable(path, txt) : -1;
    if (!txt) snprintf(msg, mlen, "cannot write the ranks' spec: out of memory or a spec without data");
    else if (rc != 0) snprintf(msg, mlen, "cannot write %.800s: %s", path, strerror(errno));
    free(txt);
    return rc;
}

static void log_to_job(const char *line, void *u) {
    h_log(line, u);
}

/* One attempt of a distributed job: probes the hosts, chooses the world size, writes the ranks' spec and runs
 * mpirun. *lost = 1 when the attempt failed without the job failing (a rank or host lost, mpirun killed, no
 * host answering): the caller re-queues the job to resume. The job's status otherwise. */
static tl_train_status run_distributed(tld_jobs *J, slot *s, const tl_train_hooks *hooks, tl_train_result *res,
                                       int *lost) {
    const tld_mpi *m = J->cfg.mpi;
    int answering[TLD_HOSTFILE_HOSTS];
    char line[600], spec_path[1300], err[256];
    *lost = 0;
    memset(res, 0, sizeof *res);
    res->best_top1 = -1.0;
    int slots = tld_mpi_probe(m, answering, log_to_job, s);
    int world = tld_mpi_world_size(s->spec.ranks, slots, s->spec.micro_batches);
    if (world < 1) {
        *lost = 1;
        snprintf(res->reason, sizeof res->reason, "DIST_ERROR");
        snprintf(res->message, sizeof res->message, "no host of %.900s answers", m->hostfile);
        return TL_TRAIN_FAILED;
    }
    int n = snprintf(line, sizeof line, "distributed: %d ranks asked for, %d slots answering", s->spec.ranks, slots);
    if (world < s->spec.ranks)
        snprintf(line + n, sizeof line - n, "; running on %d ranks (the largest that fits and divides "
                 "train.micro_batches = %d)", world, s->spec.micro_batches);
    else
        snprintf(line + n, sizeof line - n, "; running on %d ranks", world);
    h_log(line, s);
    s->ranks = world;
    if (tld_store_job_dist_put(J->store, s->id, s->spec.ranks, world, "[]", err, sizeof err) != 0) {
        snprintf(line, sizeof line, "the ranks were not recorded: %s", err);
        h_log(line, s);
    }
    if (write_rank_spec(J, s, world, spec_path, sizeof spec_path, res->message, sizeof res->message) != 0) {
        snprintf(res->reason, sizeof res->reason, "IO_ERROR");
        return TL_TRAIN_FAILED;
    }
    h_log("token inspection is not recorded for distributed jobs (its samples live in the ranks' memory)", s);
    if (atomic_load(&s->stop)) { /* cancelled or shut down while the hosts were probed: nothing started */
        snprintf(res->reason, sizeof res->reason, "STOPPED");
        snprintf(res->message, sizeof res->message, "stopped before the ranks started");
        return TL_TRAIN_STOPPED;
    }
    tld_mpi_launch l = {world, spec_path, s->run_dir, s->spec.init_weights[0] ? s->spec.init_weights : NULL};
    tl_train_status st;
    int rc = tld_mpi_run(m, &l, hooks, &st, res);
    if (rc != 1 || (st == TL_TRAIN_FAILED && !strcmp(res->reason, "DIST_ERROR"))) {
        *lost = 1;
        return TL_TRAIN_FAILED;
    }
    return st;
}

/* ---- a full disk ---- */

static int64_t checkpoint_step(const char *run_dir, int *has);

/* J->mu held: job id's hold, made (free, or the one that would start first) when make; NULL otherwise. */
static hold *hold_find(tld_jobs *J, int64_t id, int make) {
    hold *free_h = NULL, *first = NULL;
    for (int i = 0; i < MAX_HOLDS; i++) {
        hold *h = &J->holds[i];
        if (h->id == id) return h;
        if (!h->id && !free_h) free_h = h;
        if (h->id && (!first || h->until_ms < first->until_ms)) first = h;
    }
    if (!make) return NULL;
    hold *h = free_h ? free_h : first; /* a full table forgets the hold that would end first */
    memset(h, 0, sizeof *h);
    h->id = id;
    return h;
}

/* Job id made progress or ended: its next pause starts with the shortest backoff. */
static void unhold(tld_jobs *J, int64_t id) {
    pthread_mutex_lock(&J->mu);
    hold *h = hold_find(J, id, 0);
    if (h) memset(h, 0, sizeof *h);
    pthread_mutex_unlock(&J->mu);
}

/* Job id was paused for a full disk: it waits at least its backoff, which doubles with each pause in a row. */
static void hold_job(tld_jobs *J, int64_t id) {
    pthread_mutex_lock(&J->mu);
    hold *h = hold_find(J, id, 1);
    h->backoff_ms = h->backoff_ms ? h->backoff_ms * 2 : HOLD_MIN_MS;
    if (h->backoff_ms > HOLD_MAX_MS) h->backoff_ms = HOLD_MAX_MS;
    h->until_ms = tl_clock_mono_ms() + h->backoff_ms;
    h->checked_ms = 0;
    pthread_mutex_unlock(&J->mu);
}

static int64_t file_bytes(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (int64_t)st.st_size : 0;
}

/* The free bytes a job paused for a full disk needs on the file system of its run folder before it resumes: a
 * training job twice its last.safetensors (the new one is written beside it, and best.safetensors with it), an
 * annotate job twice its largest part file, plus DISK_MARGIN (the store's own writes, small files). An annotate
 * job also needs, in the folder of its output (*out_need; 0 for a training job), the label map it will merge:
 * about the sum of its parts, plus DISK_MARGIN. */
static int64_t space_needed(const char *run_dir, int annotate, int64_t *out_need) {
    char path[1400];
    *out_need = 0;
    if (!annotate) {
        snprintf(path, sizeof path, "%s/last.safetensors", run_dir);
        return 2 * file_bytes(path) + DISK_MARGIN;
    }
    int64_t largest = 0, sum = 0;
    DIR *d = run_dir[0] ? opendir(run_dir) : NULL;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (n <= 7 || strncmp(e->d_name, "part-", 5) != 0 || strcmp(e->d_name + n - 7, ".tlpart") != 0) continue;
        snprintf(path, sizeof path, "%s/%s", run_dir, e->d_name);
        int64_t b = file_bytes(path);
        sum += b;
        largest = b > largest ? b : largest;
    }
    if (d) closedir(d);
    *out_need = sum + DISK_MARGIN;
    return 2 * largest + DISK_MARGIN;
}

/* 1 when the file systems job j writes have the room space_needed asks for (free space as tl_fs_free_bytes reads
 * it: the full-disk switch counts), in the run folder's beside what the store's reserve lacks (it is made again
 * first); 0 otherwise. An annotate job's output folder comes from its spec. */
static int has_room(tld_jobs *J, const tld_job *j) {
    char kind[16] = "";
    tl_spec_error se;
    tl_jobspec_kind(j->spec_json, kind, sizeof kind, &se);
    int annotate = strcmp(kind, "annotate") == 0;
    int64_t out_need, need = space_needed(j->run_dir, annotate, &out_need);
    int64_t free_b = tl_fs_free_bytes(j->run_dir[0] ? j->run_dir : J->state_dir);
    if (free_b >= 0 && free_b < need + tld_store_reserve_missing(J->store)) return 0; /* the store's reserve first */
    if (!annotate) return 1;
    tl_annotate_spec *a = malloc(sizeof *a);
    int ok = 1;
    if (a && tl_annotate_spec_parse(j->spec_json, J->data_root, a, &se) == 0) {
        free_b = tl_fs_free_bytes(a->out_path);
        ok = free_b < 0 || free_b >= out_need;
    }
    free(a);
    return ok;
}

/* J->mu held (the scheduler): 1 when QUEUED job j, paused for a full disk, must wait still: its backoff has not run
 * out, or the last look (at most DISK_CHECK_MS old) found too little room. A job paused before the daemon started
 * has no hold yet: it gets one, and waits only for room. */
static int held(tld_jobs *J, const tld_job *j, int64_t now) {
    if (strcmp(j->state_reason, "DISK_FULL") != 0) return 0;
    hold *h = hold_find(J, j->id, 1);
    if (now < h->until_ms) return 1;
    if (!h->checked_ms || now - h->checked_ms >= DISK_CHECK_MS) {
        h->room = has_room(J, j);
        h->checked_ms = now;
    }
    return !h->room;
}

/* The worker waits up to ms for a retry (woken early by the scheduler's signals); 0 when the daemon is shutting
 * down and the worker must give up (the job stays RUNNING in the store and is recovered at the next start). */
static int settle_wait(tld_jobs *J, int64_t ms) {
    pthread_mutex_lock(&J->mu);
    if (!J->quit) {
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        dl.tv_sec += ms / 1000;
        dl.tv_nsec += (ms % 1000) * 1000000L;
        if (dl.tv_nsec >= 1000000000L) dl.tv_sec++, dl.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&J->wake, &J->mu, &dl);
    }
    int go_on = !J->quit;
    pthread_mutex_unlock(&J->mu);
    return go_on;
}

/* The worker's last state change, written even when the store's own disk is full: a change the store refused
 * with ENOSPC is tried again after SETTLE_MIN_MS, doubling to SETTLE_MAX_MS, until it is written, refused
 * otherwise, or the daemon shuts down. The job keeps its slot meanwhile (it is still RUNNING in the store). The
 * transition's result. */
static int settle(tld_jobs *J, int64_t id, unsigned from, tld_job_state to, const char *reason, const char *msg) {
    int rc, waiting = 0;
    char err[256];
    for (int64_t wait = SETTLE_MIN_MS;; wait = wait * 2 > SETTLE_MAX_MS ? SETTLE_MAX_MS : wait * 2) {
        rc = transition_e(J, id, from, to, reason, msg, err, sizeof err);
        if (rc == 0 || errno != ENOSPC) break;
        if (!waiting) {
            waiting = 1;
            atomic_fetch_add(&J->settling, 1);
            fprintf(stderr, "tokenlabd: job %lld: the store's disk is full; its state %s is written when there is "
                            "room\n", (long long)id, tld_job_state_name(to));
        }
        if (!settle_wait(J, wait)) break;
    }
    if (waiting) atomic_fetch_sub(&J->settling, 1);
    return rc;
}

/* Pauses the job of slot s, whose attempt found the disk full (why: its message): its metric and inspection
 * points past its last checkpoint are dropped (the resumed run redoes those steps) and it goes back to QUEUED
 * with the reason DISK_FULL and a message naming the room it waits for; the scheduler holds it until then.
 * Not a new attempt. Tried again, as settle does, while the store's disk is full. 0 when paused; 1 when the
 * daemon shut down meanwhile (the job is left RUNNING: the next start recovers it); -1 when the job is no longer
 * RUNNING (a cancel came) or the store refused otherwise. */
static int pause_disk_full(tld_jobs *J, slot *s, const char *why) {
    int has;
    int64_t step = checkpoint_step(s->run_dir, &has), out_need, need = space_needed(s->run_dir, s->annotate, &out_need);
    int64_t reserve = tld_store_reserve_missing(J->store);
    char msg[1000], nb[96], job_b[32], res_b[32], err[512];
    tl_format_bytes(nb, sizeof nb, need + reserve);
    if (reserve > 0) /* the store's reserve is made again first (has_room) */
        snprintf(nb + strlen(nb), sizeof nb - strlen(nb), " (%s for the job, %s for the store's reserve)",
                 tl_format_bytes(job_b, sizeof job_b, need), tl_format_bytes(res_b, sizeof res_b, reserve));
    if (s->annotate)
        snprintf(msg, sizeof msg, "%.700s; waiting for %s free, then resuming after its last saved part", why, nb);
    else if (has)
        snprintf(msg, sizeof msg, "%.700s; waiting for %s free, then resuming from the checkpoint at step %lld", why,
                 nb, (long long)step);
    else
        snprintf(msg, sizeof msg, "%.700s; waiting for %s free, then starting again (no checkpoint yet)", why, nb);
    int rc, waiting = 0, quit = 0;
    for (int64_t wait = SETTLE_MIN_MS;; wait = wait * 2 > SETTLE_MAX_MS ? SETTLE_MAX_MS : wait * 2) {
        rc = 0;
        if (!s->annotate) {
            rc = tld_store_metric_truncate(J->store, s->id, step, err, sizeof err);
            if (rc == 0) rc = tld_store_inspect_truncate(J->store, s->id, step, err, sizeof err);
        }
        if (rc == 0) rc = transition_e(J, s->id, M(TLD_JOB_RUNNING), TLD_JOB_QUEUED, "DISK_FULL", msg, err, sizeof err);
        if (rc == 0 || errno != ENOSPC) break;
        if (!waiting) atomic_fetch_add(&J->settling, 1), waiting = 1;
        if (!settle_wait(J, wait)) {
            quit = 1;
            break;
        }
    }
    if (waiting) atomic_fetch_sub(&J->settling, 1);
    if (rc == 0) {
        tld_store_log_append(J->store, s->id, msg);
        hold_job(J, s->id);
        return 0;
    }
    fprintf(stderr, "tokenlabd: job %lld: not paused for the full disk%s: %s\n", (long long)s->id,
            quit ? " before the daemon stopped" : "", err);
    return quit ? 1 : -1;
}

static void *worker_main(void *arg) {
    slot *s = arg;
    tld_jobs *J = s->J;
    /* Training yields to inference: this thread and every thread it starts (the engine's pool, the
     * loader) inherit a lower priority, so a predict request gets the cores at once while training
     * keeps the share CFS gives nice TRAIN_NICE against nice 0 (about a quarter) and all of them when
     * nothing else runs. */
    if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), TRAIN_NICE) != 0) {
        char line[128];
        snprintf(line, sizeof line, "could not lower the training threads' priority: %s", strerror(errno));
        tld_store_log_append(J->store, s->id, line);
    }
    tl_train_result res;
    tl_train_status st;
    int lost = 0;             /* a distributed attempt failed without the job failing */
    if (s->annotate) {
        tl_annotate_hooks ah = {.on_start = a_start, .on_progress = a_progress, .before_checkpoint = h_before_checkpoint,
                                .on_checkpoint = a_checkpoint, .on_log = h_log, .should_stop = h_stop, .user = s};
        st = tl_annotate_run(&s->aspec, s->run_dir, &ah, &res);
    } else {
        tl_train_hooks hooks = {.on_start = h_start, .on_ranks = h_ranks, .on_init = h_init, .on_step = h_step,
                                .on_eval = h_eval, .before_checkpoint = h_before_checkpoint,
                                .on_checkpoint = h_checkpoint, .on_log = h_log, .should_stop = h_stop,
                                .on_inspect = h_inspect, .user = s};
        if (s->spec.ranks > 0) st = run_distributed(J, s, &hooks, &res, &lost);
        else st = tl_train_run(&s->spec, s->run_dir, &hooks, &res);
    }
    tld_store_flush(J->store);
    tld_store_metrics_forget(J->store, s->id); /* the points a full store lost are past the last checkpoint */
    int stop = atomic_load(&s->stop);
    int disk_full = !lost && st == TL_TRAIN_FAILED && strcmp(res.reason, "DISK_FULL") == 0;
    if (disk_full) atomic_fetch_add(&J->disk_full_attempts, 1);
    if (res.skipped_images) {
        char line[128];
        snprintf(line, sizeof line, "%lld unreadable images were skipped", (long long)res.skipped_images);
        tld_store_log_append(J->store, s->id, line);
    }
    if (st == TL_TRAIN_SUCCEEDED && s->annotate) write_sidecar(J, s);
    /* The last log line goes out before the state change: a client that reads the log when it sees the
     * final state must find it there (the store applies writes in order). */
    h_log(res.message, s);
    char guard[300] = "";
    int paused = 0;
    int requeued = lost && stop == 0 &&
                   requeue_resume(J, s->id, s->run_dir, 0, "RANK_LOST", res.message, guard, sizeof guard) == 0;
    if (lost && guard[0]) { /* the crash-loop guard: this job fails instead of trying again */
        snprintf(res.reason, sizeof res.reason, "RANK_LOST");
        snprintf(res.message, sizeof res.message, "a rank was lost: %s", guard);
        st = TL_TRAIN_FAILED;
    }
    if (lost && stop != 0) st = TL_TRAIN_STOPPED; /* cancelled or shut down while the ranks went away: a stop */
    switch (requeued ? -1 : (int)st) {
    case -1: /* the attempt failed; the job resumes as attempt + 1 */
        break;
    case TL_TRAIN_SUCCEEDED:
        settle(J, s->id, M(TLD_JOB_RUNNING) | M(TLD_JOB_CANCELLING), TLD_JOB_SUCCEEDED, "", res.message);
        break;
    case TL_TRAIN_STOPPED:
        if (stop == STOP_CANCEL)
            settle(J, s->id, M(TLD_JOB_CANCELLING), TLD_JOB_CANCELLED, "USER_CANCEL",
                   "cancelled by the user; a checkpoint was written");
        else if (settle(J, s->id, M(TLD_JOB_RUNNING), TLD_JOB_QUEUED, "DAEMON_SHUTDOWN",
                        "the daemon stopped; the job resumes from its checkpoint") != 0)
            settle(J, s->id, M(TLD_JOB_CANCELLING), TLD_JOB_CANCELLED, "USER_CANCEL", "cancelled by the user");
        break;
    default:
        /* a full disk pauses the job (a shutdown too: it waits for room when the daemon is back); a cancel that
         * came meanwhile cancels it, with its last checkpoint kept */
        if (disk_full && stop != STOP_CANCEL) {
            int pr = pause_disk_full(J, s, res.message);
            paused = pr == 0;
            if (pr >= 0) break; /* paused, or left RUNNING for the next start (the daemon stopped meanwhile) */
        }
        if (disk_full &&
            settle(J, s->id, M(TLD_JOB_CANCELLING), TLD_JOB_CANCELLED, "USER_CANCEL",
                   "cancelled by the user; the disk was full, the last checkpoint is kept") == 0)
            break;
        settle(J, s->id, M(TLD_JOB_RUNNING) | M(TLD_JOB_CANCELLING), TLD_JOB_FAILED, res.reason, res.message);
        break;
    }
    if (!paused) unhold(J, s->id);
    atomic_store(&s->img_s, 0.0);
    pthread_mutex_lock(&J->mu);
    s->busy = 0;
    pthread_cond_broadcast(&J->wake);
    pthread_mutex_unlock(&J->mu);
    return NULL;
}

/* ---- scheduler ---- */
/* J->mu held: the oldest QUEUED job that may start now (0: none), passing over the jobs paused for a full disk that
 * must wait still (held). */
static int64_t oldest_queued(tld_jobs *J) {
    tld_job jobs[64];
    int n = 0;
    char err[256];
    int64_t before = 0, oldest = 0, now = tl_clock_mono_ms();
    for (;;) { /* newest first, paged: the last one that may start is the oldest */
        if (tld_store_job_list(J->store, TLD_JOB_QUEUED, before, 64, jobs, &n, err, sizeof err) != 0 || n == 0) break;
        before = jobs[n - 1].id;
        for (int i = 0; i < n; i++) {
            if (!held(J, &jobs[i], now)) oldest = jobs[i].id;
            tld_job_free(&jobs[i]);
        }
        if (n < 64) break;
    }
    return oldest;
}

/* 1 when job id's run folder holds its own last.safetensors: it resumes from that, not from model.init. */
static int has_own_checkpoint(tld_jobs *J, int64_t id) {
    char path[1400];
    snprintf(path, sizeof path, "%s/runs/%lld/last.safetensors", J->state_dir, (long long)id);
    return access(path, F_OK) == 0;
}

/* Starts job id in slot s (J->mu held). 0 when the job left QUEUED (running, or failed on its spec); -1 when
 * it could not be moved on (the store did not answer, no thread could be made): it stays QUEUED and the
 * scheduler waits before trying again instead of spinning on it. */
static int start_job(tld_jobs *J, slot *s, int64_t id) {
    tld_job job;
    char err[512];
    if (tld_store_job_get(J->store, id, &job, err, sizeof err) != 0) return -1;
    tl_spec_error se;
    char kind[16] = "", msg[900] = "";
    tl_jobspec_kind(job.spec_json, kind, sizeof kind, &se);
    s->annotate = strcmp(kind, "annotate") == 0;
    int ok = s->annotate ? tl_annotate_spec_parse(job.spec_json, J->data_root, &s->aspec, &se) == 0
                         : tl_jobspec_parse(job.spec_json, J->data_root, &s->spec, &se) == 0;
    tld_job_free(&job);
    if (!ok) tl_spec_error_format(&se, msg, sizeof msg);
    else if (s->annotate && resolve_source(J, &s->aspec, msg, sizeof msg) != 0) ok = 0;
    else if (!s->annotate && !has_own_checkpoint(J, id) && tld_init_prepare(J->store, &s->spec, NULL, &se) != 0) {
        /* the source, once more (a job that already has its own checkpoint resumes from it without the source) */
        tl_spec_error_format(&se, msg, sizeof msg);
        ok = 0;
    }
    if (transition(J, id, M(TLD_JOB_QUEUED), TLD_JOB_RUNNING, "", s->annotate ? "annotating" : "training") != 0)
        return -1;
    if (!ok) {
        transition(J, id, M(TLD_JOB_RUNNING), TLD_JOB_FAILED, "DATA_ERROR", msg);
        return 0;
    }
    if (J->cfg.threads_per_job > 0) s->spec.threads = s->aspec.threads = J->cfg.threads_per_job;
    snprintf(s->run_dir, sizeof s->run_dir, "%s/runs/%lld", J->state_dir, (long long)id);
    tld_store_job_set_run_dir(J->store, id, s->run_dir, err, sizeof err);
    tl_file_remove_temps(s->run_dir); /* what a crash left mid-write (no worker writes there until it starts) */
    s->J = J;
    s->id = id;
    s->inspect_set_written = 0;
    s->ranks = 0;
    atomic_store(&s->stop, 0);
    s->busy = 1;
    if (pthread_create(&s->thread, NULL, worker_main, s) != 0) {
        s->busy = 0;
        transition(J, id, M(TLD_JOB_RUNNING), TLD_JOB_QUEUED, "DAEMON_BUSY", "could not start a worker thread");
        return -1;
    }
    pthread_detach(s->thread);
    return 0;
}

static void *scheduler_main(void *arg) {
    tld_jobs *J = arg;
    pthread_mutex_lock(&J->mu);
    while (!J->quit) {
        slot *free_slot = NULL;
        for (int i = 0; i < J->cfg.max_running && !free_slot; i++)
            if (!J->slots[i].busy) free_slot = &J->slots[i];
        int64_t id = free_slot ? oldest_queued(J) : 0;
        if (id > 0 && start_job(J, free_slot, id) == 0) continue;
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        dl.tv_sec += 1;
        pthread_cond_timedwait(&J->wake, &J->mu, &dl);
    }
    pthread_mutex_unlock(&J->mu);
    return NULL;
}

/* ---- recovery ---- */
static int64_t checkpoint_step(const char *run_dir, int *has) {
    char path[1300];
    int64_t step = 0;
    *has = run_dir[0] && snprintf(path, sizeof path, "%s/last.safetensors", run_dir) < (int)sizeof path &&
           tl_checkpoint_train_step(path, &step);
    return step;
}

/* How far a job has got that a new attempt keeps (store.h: the progress mark): a training job's last
 * checkpoint step, -1 without one; an annotate job's saved part files (part-NNNNN.tlpart). */
static int64_t progress_mark(const char *run_dir, int annotate) {
    int has;
    if (!annotate) {
        int64_t step = checkpoint_step(run_dir, &has);
        return has ? step : -1;
    }
    DIR *d = run_dir[0] ? opendir(run_dir) : NULL;
    if (!d) return -1;
    int64_t parts = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        parts += n > 7 && strncmp(e->d_name, "part-", 5) == 0 && strcmp(e->d_name + n - 7, ".tlpart") == 0;
    }
    closedir(d);
    return parts;
}

/* The crash-loop guard: 1 when another attempt of job would be the max_attempts-th in a row to begin from
 * no further than the one before (it made no progress since: it keeps crashing the daemon, or dying, before
 * it gets anywhere), with the reason in msg; 0 when the job may try again. Attempts that each moved the
 * job on never count: a long job on a machine that is restarted many times survives. */
static int stalled_out(tld_jobs *J, const tld_job *job, int64_t mark, char *msg, size_t len) {
    int stalled = mark > job->attempt_mark ? 0 : job->stalled_attempts + 1;
    if (stalled < J->cfg.max_attempts) return 0;
    if (mark >= 0)
        snprintf(msg, len, "%d attempts in a row ended without getting past the progress of the one before "
                           "(checkpoint step or saved parts: %lld)", stalled, (long long)mark);
    else
        snprintf(msg, len, "%d attempts in a row ended before the job's first checkpoint", stalled);
    return 1;
}

/* Re-queues job id (RUNNING) as attempt + 1 to resume from its run folder: a training job's metric and
 * inspection points after its last checkpoint's step are dropped first (the resumed run redoes those steps,
 * so each step is stored once); an annotate job resumes after its last part (its points are upserts). why
 * starts the logged message; reason is the state reason. 0 when re-queued; -1 when the crash-loop guard
 * stops it (stalled_out; it is left RUNNING, the guard's reason in stalled_msg when not NULL, for the
 * caller to fail) or it is no longer RUNNING. */
static int requeue_resume(tld_jobs *J, int64_t id, const char *run_dir, int annotate, const char *reason,
                          const char *why, char *stalled_msg, size_t stalled_len) {
    char err[512], msg[700], guard[300];
    tld_job job;
    if (tld_store_job_get(J->store, id, &job, err, sizeof err) != 0) return -1;
    int running = job.state == TLD_JOB_RUNNING;
    int64_t mark = progress_mark(run_dir, annotate);
    int out = running && stalled_out(J, &job, mark, guard, sizeof guard);
    tld_job_free(&job);
    if (out && stalled_msg) snprintf(stalled_msg, stalled_len, "%s", guard);
    if (!running || out) return -1;
    int has;
    int64_t step = checkpoint_step(run_dir, &has);
    if (!annotate) {
        tld_store_metric_truncate(J->store, id, step, err, sizeof err);
        tld_store_inspect_truncate(J->store, id, step, err, sizeof err);
    }
    tld_store_job_begin_attempt(J->store, id, mark, err, sizeof err);
    if (annotate) snprintf(msg, sizeof msg, "%.500s; annotation resumes after its last saved part", why);
    else if (has) snprintf(msg, sizeof msg, "%.500s; resuming from the checkpoint at step %lld", why, (long long)step);
    else snprintf(msg, sizeof msg, "%.500s; no checkpoint yet, starting again", why);
    tld_store_log_append(J->store, id, msg);
    return transition(J, id, M(TLD_JOB_RUNNING), TLD_JOB_QUEUED, reason, msg);
}

static void recover(tld_jobs *J) {
    for (int state = TLD_JOB_RUNNING; state <= TLD_JOB_CANCELLING; state++) {
        tld_job jobs[64];
        int n = 0;
        char err[512], msg[256];
        while (tld_store_job_list(J->store, state, 0, 64, jobs, &n, err, sizeof err) == 0 && n > 0) {
            for (int i = 0; i < n; i++) {
                tld_job *jb = &jobs[i];
                if (state == TLD_JOB_CANCELLING) {
                    transition(J, jb->id, M(TLD_JOB_CANCELLING), TLD_JOB_CANCELLED, "USER_CANCEL",
                               "cancelled (the daemon stopped before the job did)");
                } else {
                    char kind[16] = "", guard[300] = "";
                    tl_spec_error kse;
                    tl_jobspec_kind(jb->spec_json, kind, sizeof kind, &kse);
                    if (requeue_resume(J, jb->id, jb->run_dir, strcmp(kind, "annotate") == 0, "DAEMON_RESTART",
                                       "the daemon restarted", guard, sizeof guard) != 0 && guard[0]) {
                        snprintf(msg, sizeof msg, "the daemon stopped under it: %.200s", guard);
                        transition(J, jb->id, M(TLD_JOB_RUNNING), TLD_JOB_FAILED, "DAEMON_RESTART", msg);
                    }
                }
                tld_job_free(jb);
            }
        }
    }
}

tld_jobs *tld_jobs_new(const tld_jobs_cfg *cfg, tld_store *store, tld_events *events, char *err, size_t errlen) {
    tld_jobs *J = calloc(1, sizeof *J);
    if (!J) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    J->cfg = *cfg;
    if (J->cfg.max_running < 1) J->cfg.max_running = 1;
    if (J->cfg.max_running > MAX_SLOTS) J->cfg.max_running = MAX_SLOTS;
    if (J->cfg.max_attempts < 1) J->cfg.max_attempts = 3;
    if (J->cfg.threads_per_job <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        int per = (int)(n > 0 ? n : 1) / J->cfg.max_running;
        J->cfg.threads_per_job = per > 0 ? per : 1;
    }
    J->state_dir = strdup(cfg->state_dir);
    J->data_root = strdup(cfg->data_root);
    J->store = store;
    J->ev = events;
    pthread_mutex_init(&J->mu, NULL);
    pthread_mutex_init(&J->hist_mu, NULL);
    pthread_cond_init(&J->wake, NULL);
    char runs[1100];
    snprintf(runs, sizeof runs, "%s/runs", J->state_dir);
    if (!J->state_dir || !J->data_root || (mkdir(runs, 0755) != 0 && errno != EEXIST)) {
        snprintf(err, errlen, "cannot create %s: %s", runs, strerror(errno));
        tld_jobs_free(J);
        return NULL;
    }
    recover(J);
    if (pthread_create(&J->scheduler, NULL, scheduler_main, J) != 0) {
        snprintf(err, errlen, "cannot start the scheduler thread");
        tld_jobs_free(J);
        return NULL;
    }
    J->scheduler_started = 1;
    return J;
}

/* A distributed spec against this daemon: it needs --mpi-hostfile, and no more ranks than its slots.
 * 0, or -1 with se at /distributed/ranks. */
static int check_ranks(tld_jobs *J, const tl_train_spec *spec, tl_spec_error *se) {
    snprintf(se->pointer, sizeof se->pointer, "/distributed/ranks");
    if (!J->cfg.mpi) {
        snprintf(se->message, sizeof se->message,
                 "this daemon runs no distributed jobs: it was started without --mpi-hostfile (start it with "
                 "`tokenlabd serve --mpi-hostfile FILE`, FILE an Open MPI hostfile of lines `host slots=K`), "
                 "or leave \"distributed\" out to train in the daemon");
        return -1;
    }
    if (spec->ranks > J->cfg.mpi->hosts.total_slots) {
        snprintf(se->message, sizeof se->message,
                 "must be at most %d, the slots of the daemon's --mpi-hostfile (%d hosts), got %d",
                 J->cfg.mpi->hosts.total_slots, J->cfg.mpi->hosts.n, spec->ranks);
        return -1;
    }
    return 0;
}

int tld_jobs_submit(tld_jobs *J, const char *spec_json, const char *key, int64_t *id, int *existed, tl_spec_error *se,
                   char *err, size_t errlen) {
    tl_train_spec *spec = malloc(sizeof *spec); /* ~13 KB: not on an HTTP thread's stack */
    if (!spec) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    char kind[16] = "", name[128] = "";
    int rc = tl_jobspec_kind(spec_json, kind, sizeof kind, se);
    if (rc == 0 && strcmp(kind, "annotate") == 0) {
        tl_annotate_spec *a = malloc(sizeof *a);
        rc = a ? tl_annotate_spec_parse(spec_json, J->data_root, a, se) : -1;
        if (!a) snprintf(se->pointer, sizeof se->pointer, "%s", ""), snprintf(se->message, sizeof se->message, "out of memory");
        if (rc == 0) { /* the source must exist now; its checkpoint is resolved when the job starts */
            tld_source src;
            tld_source_req q = {.prefix = "/source", .model = a->source_model, .job_id = a->source_job,
                                .exists_only = 1};
            rc = tld_source_resolve(J->store, &q, &src, se);
        }
        if (a) snprintf(name, sizeof name, "%s", a->name);
        free(a);
    } else if (rc == 0) {
        rc = tl_jobspec_parse(spec_json, J->data_root, spec, se);
        /* model.init: the source must be there and finished now, with a checkpoint that fits the spec */
        if (rc == 0) rc = tld_init_prepare(J->store, spec, NULL, se);
        if (rc == 0 && spec->ranks > 0) rc = check_ranks(J, spec, se);
        snprintf(name, sizeof name, "%s", spec->name);
    }
    free(spec);
    if (rc != 0) {
        snprintf(err, errlen, "spec");
        return -1;
    }
    /* stored and served in canonical form: the document as parsed, printed without whitespace (padding never
     * reaches the store; the parser bounded the values and their lengths) */
    cJSON *doc = cJSON_Parse(spec_json);
    char *canon = doc ? cJSON_PrintUnformatted(doc) : NULL;
    cJSON_Delete(doc);
    if (!canon) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    /* under J->mu, so the scheduler cannot start the job between its creation and its QUEUED event */
    pthread_mutex_lock(&J->mu);
    rc = tld_store_job_create(J->store, name, canon, key, id, existed, err, errlen);
    free(canon);
    if (rc != 0) {
        pthread_mutex_unlock(&J->mu);
        return -1;
    }
    if (!*existed) publish_state(J, *id, TLD_JOB_QUEUED, "", "");
    pthread_cond_broadcast(&J->wake);
    pthread_mutex_unlock(&J->mu);
    return 0;
}

int tld_jobs_cancel(tld_jobs *J, int64_t id, char *err, size_t errlen) {
    static const char *const queued_msg = "cancelled by the user before it started";
    static const char *const running_msg = "cancelling: the current step ends and a checkpoint is written";
    pthread_mutex_lock(&J->mu);
    int rc = -1;
    tld_job_state to = TLD_JOB_CANCELLED; /* the state this call moved the job to, if it moved it */
    int moved = 0;
    if (tld_store_job_transition(J->store, id, M(TLD_JOB_QUEUED), TLD_JOB_CANCELLED, "USER_CANCEL", queued_msg, err,
                                 errlen) == 0) {
        rc = 0;
        moved = 1;
    } else if (tld_store_job_transition(J->store, id, M(TLD_JOB_RUNNING), TLD_JOB_CANCELLING, "USER_CANCEL",
                                        running_msg, err, errlen) == 0) {
        rc = 0;
        moved = 1;
        to = TLD_JOB_CANCELLING;
    } else if (strstr(err, "not found") == NULL) {
        tld_job job; /* already cancelling counts as accepted (no new state, no event) */
        char e2[128];
        if (tld_store_job_get(J->store, id, &job, e2, sizeof e2) == 0) {
            if (job.state == TLD_JOB_CANCELLING) rc = 0;
            tld_job_free(&job);
        }
    }
    /* the CANCELLING event goes out before the worker is told to stop, so it precedes the worker's CANCELLED */
    if (moved) publish_state(J, id, to, "USER_CANCEL", to == TLD_JOB_CANCELLED ? queued_msg : running_msg);
    if (moved && to == TLD_JOB_CANCELLING)
        for (int i = 0; i < J->cfg.max_running; i++)
            if (J->slots[i].busy && J->slots[i].id == id) atomic_store(&J->slots[i].stop, STOP_CANCEL);
    pthread_mutex_unlock(&J->mu);
    return rc;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

int tld_jobs_delete(tld_jobs *J, int64_t id, char *err, size_t errlen) {
    tld_job job;
    if (tld_store_job_get(J->store, id, &job, err, errlen) != 0) return -1;
    tld_job_state state = job.state;
    char run_dir[1024];
    snprintf(run_dir, sizeof run_dir, "%s", job.run_dir);
    tld_job_free(&job);
    if (!tld_job_state_final(state)) {
        snprintf(err, errlen, "invalid transition: job %lld is %s; cancel it first", (long long)id,
                 tld_job_state_name(state));
        return -1;
    }
    if (tld_store_job_delete(J->store, id, err, errlen) != 0) return -1;
    if (run_dir[0]) nftw(run_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    publish(J, id, "deleted", "{\"id\":%lld}", (long long)id);
    return 0;
}

int tld_jobs_running(tld_jobs *J) {
    pthread_mutex_lock(&J->mu);
    int n = 0;
    for (int i = 0; i < J->cfg.max_running; i++) n += J->slots[i].busy;
    pthread_mutex_unlock(&J->mu);
    return n;
}

void tld_jobs_disk(tld_jobs *J, tld_jobs_disk_info *out) {
    memset(out, 0, sizeof *out);
    out->state_free_bytes = tl_fs_free_bytes(J->state_dir);
    out->store_full = tld_store_full(J->store);
    out->store_events = tld_store_full_events(J->store);
    out->job_events = atomic_load(&J->disk_full_attempts);
    out->jobs_waiting = atomic_load(&J->settling);
    tld_job jobs[64];
    int n = 0;
    char err[256];
    int64_t before = 0;
    for (;;) { /* the QUEUED jobs paused for a full disk */
        if (tld_store_job_list(J->store, TLD_JOB_QUEUED, before, 64, jobs, &n, err, sizeof err) != 0 || n == 0) break;
        before = jobs[n - 1].id;
        for (int i = 0; i < n; i++) {
            out->jobs_waiting += strcmp(jobs[i].state_reason, "DISK_FULL") == 0;
            tld_job_free(&jobs[i]);
        }
        if (n < 64) break;
    }
    out->full = out->store_full || out->jobs_waiting > 0;
}

void tld_jobs_step_times(tld_jobs *J, tld_hist *out) {
    pthread_mutex_lock(&J->hist_mu);
    *out = J->step_hist;
    pthread_mutex_unlock(&J->hist_mu);
}

double tld_jobs_images_per_second(tld_jobs *J) {
    double s = 0.0;
    for (int i = 0; i < J->cfg.max_running; i++) s += atomic_load(&J->slots[i].img_s);
    return s;
}

void tld_jobs_shutdown(tld_jobs *J) {
    pthread_mutex_lock(&J->mu);
    J->quit = 1;
    for (int i = 0; i < J->cfg.max_running; i++)
        if (J->slots[i].busy) atomic_store(&J->slots[i].stop, STOP_SHUTDOWN);
    pthread_cond_broadcast(&J->wake);
    pthread_mutex_unlock(&J->mu);
    if (J->scheduler_started) {
        pthread_join(J->scheduler, NULL);
        J->scheduler_started = 0;
    }
    pthread_mutex_lock(&J->mu); /* workers are detached: wait until every slot is free */
    for (;;) {
        int busy = 0;
        for (int i = 0; i < J->cfg.max_running; i++) busy |= J->slots[i].busy;
        if (!busy) break;
        pthread_cond_wait(&J->wake, &J->mu);
    }
    pthread_mutex_unlock(&J->mu);
}

void tld_jobs_free(tld_jobs *J) {
    if (!J) return;
    tld_jobs_shutdown(J);
    pthread_mutex_destroy(&J->mu);
    pthread_mutex_destroy(&J->hist_mu);
    pthread_cond_destroy(&J->wake);
    free(J->state_dir);
    free(J->data_root);
    free(J);
}
