/*
 * cmd_run.c: `tokenlabd run SPEC.json [--out DIR] [--weights PATH [--ema]]
 * [--init FILE [--init-ema] [--init-head MODE]]`, one job in the foreground,
 * without a server: a training job, or an annotate job (the spec's "kind"
 * decides; tl_jobspec_kind).
 *
 * Fine-tuning from a file (--init): there is no model registry or job store
 * here, so the source is a safetensors file (a tokenlab checkpoint, or an
 * official LV-ViT state_dict saved as safetensors, whose config
 * tl_checkpoint_config infers from the tensor shapes). The spec's model.init
 * must be absent: this file adds one (as if the spec said "init" with the
 * --init-head mode), so the model object may give only what changes, and the
 * parser's rules hold as in the daemon. The file's config is merged with
 * tl_jobspec_apply_init before the job starts; a bad file, a spec that does
 * not fit it, or a head that cannot be used is reported with exit status 2.
 * EMA weights: --init-ema, else the EMA weights when the file holds any.
 *
 * Annotate jobs: there is no model registry here, so the weights come from
 * --weights (a safetensors checkpoint); the spec's source must still be
 * valid but only its "ema" is used: --ema, or "ema": true, annotates with the
 * checkpoint's EMA weights, "ema": false with its raw weights, and no choice
 * with the EMA weights when the checkpoint holds any. The run folder (default
 * runs/<name>) receives the part files; Ctrl-C writes a part at the current
 * batch and exits, and the same command resumes after the last part.
 *
 * Owns the run folder's metrics file (metrics.jsonl: one JSON object per
 * training step and per evaluation; a distributed run's steps add "comm_s",
 * the seconds of the step's gradient sum across the ranks) and the terminal progress display. A run
 * folder that already holds last.safetensors is resumed; metric lines after
 * the resumed step are dropped first, so no step appears twice.
 * The metrics file is a write stream of files.h (the full-disk switch
 * applies): a line that cannot be written refuses the next checkpoint, so no
 * checkpoint stands past a metric line that was lost.
 * A full disk (a checkpoint, part, label-map or metrics write failing with
 * ENOSPC or EDQUOT) ends the run with exit status 4 and a message naming the
 * path and the free space; the failed write left the previous checkpoint or
 * part as it was, so the same command resumes once there is room.
 * Single-threaded (the engine's threads never call back here).
 * SIGINT/SIGTERM (and, for training jobs, SIGUSR1: mpirun forwards it to
 * every rank, where it kills the ranks a second after a SIGTERM) set a flag;
 * the loop then finishes its step, writes a checkpoint and exits, so the same
 * command resumes it.
 */
#include "cmd/commands.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jobs/run_events.h"
#include "tokenlab/annotate.h"
#include "tokenlab/comm.h"
#include "tokenlab/files.h"
#include "tokenlab/jobspec.h"
#include "tokenlab/safetensors.h"
#include "tokenlab/train.h"

static volatile sig_atomic_t g_stop;
static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

typedef struct {
    FILE *metrics;
    int metrics_errno;        /* the first failed write of a metric line (0: none) */
    int tty;
    int64_t step, stop_at;    /* the last step reported; --stop-at (0: none) */
    int64_t last_print_step;
    int events;               /* --events: the log lines go out as events only */
    double last_eta;
    char run_dir[4096];
} run_ui;

static void fmt_eta(char *buf, size_t n, double s) {
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, n, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else
        snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
}

static void on_start(int64_t start, int64_t total, void *user) {
    ((run_ui *)user)->step = start;
    if (start > 0) printf("resuming at step %lld of %lld\n", (long long)start, (long long)total);
    else printf("training %lld steps\n", (long long)total);
}

/* Writes one line of the metrics file; a failure is kept for before_checkpoint. */
static void metric_line(run_ui *ui, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void metric_line(run_ui *ui, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vfprintf(ui->metrics, fmt, ap);
    va_end(ap);
    if (n < 0 && !ui->metrics_errno) ui->metrics_errno = errno ? errno : EIO;
}

static void on_step(const tl_step_report *r, void *user) {
    run_ui *ui = user;
    ui->step = r->step;
    char comm[40] = ""; /* distributed runs: seconds of this step's gradient sum across the ranks */
    if (r->ranks > 1) snprintf(comm, sizeof comm, ",\"comm_s\":%.4g", r->comm_seconds);
    metric_line(ui,
            "{\"step\":%lld,\"epoch\":%d,\"loss\":%.6g,\"loss_cls\":%.6g,\"loss_dense\":%.6g,\"lr\":%.6g,"
            "\"img_per_s\":%.4g,\"data_wait\":%.4g,\"skipped_images\":%lld%s}\n",
            (long long)r->step, r->epoch, r->loss, r->loss_cls, r->loss_dense, r->lr, r->img_per_s, r->data_wait,
            (long long)r->skipped_images, comm);
    int every = ui->tty ? 1 : 50;
    if (r->step % every != 0 && r->step != r->total_steps) return;
    char eta[32];
    fmt_eta(eta, sizeof eta, r->eta_seconds);
    double frac = (double)r->step / (double)r->total_steps;
    char bar[25];
    int fill = (int)(frac * 24);
    for (int i = 0; i < 24; i++) bar[i] = i < fill ? '#' : '-';
    bar[24] = 0;
    printf("%sepoch %d/%d [%s] %3.0f%% step %lld/%lld loss %.4f lr %.2e %.0f img/s ETA %s%s", ui->tty ? "\r" : "",
           r->epoch + 1, r->epochs, bar, 100 * frac, (long long)r->step, (long long)r->total_steps, r->loss, r->lr,
           r->img_per_s, eta, ui->tty ? "\033[K" : "\n");
    fflush(stdout);
}

static void on_eval(const tl_eval_report *r, void *user) {
    run_ui *ui = user;
    metric_line(ui, "{\"step\":%lld,\"epoch\":%d,\"eval\":\"%s\",\"top1\":%.6g,\"top5\":%.6g,\"loss\":%.6g}\n",
                (long long)r->step, r->epoch, r->ema ? "ema" : "raw", r->top1, r->top5, r->loss);
    if (fflush(ui->metrics) != 0 && !ui->metrics_errno) ui->metrics_errno = errno ? errno : EIO;
    printf("%seval %-3s epoch %d step %lld: top-1 %.2f%% top-5 %.2f%% loss %.4f (%d images, %.1fs)\n",
           ui->tty ? "\r\033[K" : "", r->ema ? "ema" : "raw", r->epoch + 1, (long long)r->step, 100 * r->top1,
           100 * r->top5, r->loss, r->images, r->seconds);
}

/* Metric lines up to a checkpoint's step must reach the file before the checkpoint exists: 0, or the errno of a
 * line that did not (the checkpoint is then refused). */
static int before_checkpoint(int64_t step, void *user) {
    run_ui *ui = user;
    (void)step;
    if (fflush(ui->metrics) != 0 && !ui->metrics_errno) ui->metrics_errno = errno ? errno : EIO;
    return ui->metrics_errno;
}

static void on_log(const char *msg, void *user) {
    run_ui *ui = user;
    if (ui->events) return; /* an event already carries it */
    fprintf(stderr, "%s%s\n", ui->tty ? "\r\033[K" : "", msg); /* the job log: what it loaded, resumed, skipped */
}

static void on_init(const tl_init_info *in, void *user) {
    run_ui *ui = user;
    static const char *const heads[] = {"reinit", "keep", "match"};
    const char *head = (unsigned)in->head < 3 ? heads[in->head] : "?";
    printf("%sinit: %s (%s weights", ui->tty ? "\r\033[K" : "", in->weights, in->from_ema ? "EMA" : "raw");
    if (in->source_step >= 0) printf(", step %lld", (long long)in->source_step);
    printf("), %d classes, head %s", in->source_cfg.num_classes, head);
    if (in->head == TL_HEAD_MATCH) printf(" (%d classes matched)", in->classes_matched);
    if (in->rep.pos_resized) printf(", position embedding grid %d -> %d", in->rep.src_grid, in->rep.dst_grid);
    printf("\n");
    fflush(stdout);
}

/* Called after each step (on every rank; only rank 0 knows the step): stop on a signal, or at the
 * --stop-at step. */
static int should_stop(void *user) {
    run_ui *ui = user;
    return g_stop || (ui && ui->stop_at > 0 && ui->step >= ui->stop_at);
}

static void on_ranks(const tl_ranks_info *in, void *user) {
    (void)user;
    printf("%d ranks on", in->size);
    for (int k = 0; k < in->size; k++) printf("%s%s", k ? ", " : " ", in->hosts[k]);
    printf("\n");
    fflush(stdout);
}

/* mkdir -p: creates path and any missing parents. */
static int mkdir_p(const char *path) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) return -1;
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    return (mkdir(buf, 0755) != 0 && errno != EEXIST) ? -1 : 0;
}

/* Keeps the metric lines whose step is <= keep_step (a resumed run redoes the rest); crash-safe. */
static int trim_metrics(const char *path, int64_t keep_step) {
    FILE *in = fopen(path, "r");
    if (!in) return errno == ENOENT ? 0 : -1;
    char tmp[TL_TEMP_NAME_LEN(4300)];
    FILE *out = strlen(path) < 4300 ? tl_file_create_temp(path, tmp, sizeof tmp) : NULL;
    if (!out) {
        fclose(in);
        return -1;
    }
    char line[2048];
    while (fgets(line, sizeof line, in)) {
        const char *p = strstr(line, "\"step\":");
        if (!p || strtoll(p + 7, NULL, 10) > keep_step || line[strlen(line) - 1] != '\n') continue;
        fputs(line, out);
    }
    fclose(in);
    return tl_file_commit(out, tmp, path, NULL);
}

/* The step of the run folder's last checkpoint (0 when there is none). */
static int64_t checkpoint_step(const char *run_dir) {
    char path[4200];
    int64_t step = 0;
    snprintf(path, sizeof path, "%s/last.safetensors", run_dir);
    tl_checkpoint_train_step(path, &step);
    return step;
}

static char *read_file(const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            if (cap > (16u << 20)) {
                snprintf(err, errlen, "%s is larger than 16 MB", path);
                free(buf);
                fclose(f);
                return NULL;
            }
            char *nb = realloc(buf, cap);
            if (!nb) break;
            buf = nb;
        }
        size_t n = fread(buf + len, 1, 4096, f);
        len += n;
        if (n < 4096) break;
    }
    fclose(f);
    if (!buf) {
        snprintf(err, errlen, "out of memory reading %s", path);
        return NULL;
    }
    buf[len] = 0;
    return buf;
}

/* The exit status of a failed run: 4 for a full disk (after a line saying how to go on), else status. */
static int disk_full_exit(const tl_train_result *res, int status) {
    if (strcmp(res->reason, "DISK_FULL") != 0) return status;
    fprintf(stderr, "tokenlabd run: the disk is full; make room and run the same command to resume\n");
    return 4;
}

/* ------------------------------------------------------------------ annotate jobs */

typedef struct {
    int tty;
    int64_t reports;
} annotate_ui;

static void a_start(int64_t done, int64_t total, void *user) {
    (void)user;
    if (done > 0) printf("resuming after %lld of %lld images\n", (long long)done, (long long)total);
    else printf("annotating %lld images\n", (long long)total);
    fflush(stdout);
}

static void a_progress(const tl_annotate_report *r, void *user) {
    annotate_ui *ui = user;
    ui->reports++;
    if (!ui->tty && ui->reports % 20 != 0 && r->done != r->total) return;
    char eta[32];
    if (r->eta_seconds >= 0) fmt_eta(eta, sizeof eta, r->eta_seconds);
    else snprintf(eta, sizeof eta, "?");
    double frac = r->total > 0 ? (double)r->done / (double)r->total : 1.0;
    char bar[25];
    int fill = (int)(frac * 24);
    for (int i = 0; i < 24; i++) bar[i] = i < fill ? '#' : '-';
    bar[24] = 0;
    printf("%sannotate [%s] %3.0f%% %lld/%lld images, %lld skipped, %.1f img/s ETA %s%s", ui->tty ? "\r" : "", bar,
           100 * frac, (long long)r->done, (long long)r->total, (long long)r->skipped, r->img_per_s, eta,
           ui->tty ? "\033[K" : "\n");
    fflush(stdout);
}

static void a_checkpoint(const char *path, int64_t done, void *user) {
    annotate_ui *ui = user;
    if (!ui->tty) printf("part written: %s (%lld images done)\n", path, (long long)done);
}

static int a_should_stop(void *user) {
    (void)user;
    return g_stop;
}

static void a_log(const char *msg, void *user) {
    annotate_ui *ui = user;
    fprintf(stderr, "%s%s\n", ui->tty ? "\r\033[K" : "", msg); /* the job log: what it loaded, resumed, skipped */
}

/* Does the checkpoint hold EMA weights ("ema.<name>")? */
static int checkpoint_has_ema(const char *path) {
    char err[TL_ERR_LEN];
    tl_st_file *f = tl_st_open(path, err, sizeof err);
    if (!f) return 0;
    int has = tl_st_get(f, "ema.pos_embed") != NULL;
    tl_st_close(f);
    return has;
}

static int run_annotate(const char *spec_path, const char *json, const char *out, const char *weights, int ema) {
    static tl_annotate_spec spec;
    tl_spec_error se;
    char err[1024];
    if (tl_annotate_spec_parse(json, NULL, &spec, &se) != 0) {
        tl_spec_error_format(&se, err, sizeof err);
        fprintf(stderr, "tokenlabd run: %s: %s\n", spec_path, err);
        return 1;
    }
    if (!weights) {
        fprintf(stderr, "tokenlabd run: %s is an annotate spec: give the annotator's checkpoint with --weights PATH\n",
                spec_path);
        return 2;
    }
    if (strlen(weights) >= sizeof spec.weights_path) {
        fprintf(stderr, "tokenlabd run: --weights path too long\n");
        return 2;
    }
    memcpy(spec.weights_path, weights, strlen(weights) + 1);
    int has_ema = checkpoint_has_ema(weights);
    spec.from_ema = ema ? 1 : spec.source_ema >= 0 ? spec.source_ema : has_ema;
    if (spec.from_ema && !has_ema) {
        fprintf(stderr, "tokenlabd run: %s holds no EMA weights (asked for by %s)\n", weights,
                ema ? "--ema" : "the spec's source.ema");
        return 1;
    }
    char run_dir[4096];
    if (out) snprintf(run_dir, sizeof run_dir, "%s", out);
    else snprintf(run_dir, sizeof run_dir, "runs/%s", spec.name);
    if (mkdir_p(run_dir) != 0) {
        fprintf(stderr, "tokenlabd run: cannot create %s: %s\n", run_dir, strerror(errno));
        return 1;
    }
    annotate_ui ui = {.tty = isatty(STDOUT_FILENO)};
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    printf("annotate %s -> %s with %s (%s weights), parts in %s (BLAS %s)\n", spec.name, spec.out_path, weights,
           spec.from_ema ? "EMA" : "raw", run_dir, tl_blas_corename());
    fflush(stdout);
    tl_annotate_hooks hooks = {.on_start = a_start, .on_progress = a_progress, .on_checkpoint = a_checkpoint,
                               .on_log = a_log, .should_stop = a_should_stop, .user = &ui};
    tl_train_result res;
    tl_train_status st = tl_annotate_run(&spec, run_dir, &hooks, &res);
    if (ui.tty) printf("\n");
    switch (st) {
    case TL_TRAIN_SUCCEEDED:
        printf("done: %s\n", res.message);
        return 0;
    case TL_TRAIN_STOPPED:
        printf("stopped: %s; run the same command to resume\n", res.message);
        return 3;
    default:
        fprintf(stderr, "tokenlabd run: failed (%s): %s\n", res.reason, res.message);
        return disk_full_exit(&res, 1);
    }
}

/* ------------------------------------------------------------------ fine-tuning from a file */

/* The spec's text with model.init = {"model": "init-file"[, "head": head]} added, malloc'd; NULL with a
 * message (exit 2) when the spec already has model.init. A document the parser will refuse anyway (not
 * JSON, no model object) is returned unchanged, so that its refusal is the usual one. */
static char *add_init(const char *json, const char *head, char *err, size_t errlen) {
    cJSON *doc = cJSON_ParseWithOpts(json, NULL, 1);
    cJSON *model = cJSON_IsObject(doc) ? cJSON_GetObjectItemCaseSensitive(doc, "model") : NULL;
    char *out = NULL;
    if (!cJSON_IsObject(model)) {
        cJSON_Delete(doc);
        out = strdup(json);
        if (!out) snprintf(err, errlen, "out of memory");
        return out;
    }
    if (cJSON_GetObjectItemCaseSensitive(model, "init")) {
        snprintf(err, errlen,
                 "the spec has model.init (a daemon model or job); with --init FILE the file is the source: "
                 "leave model.init out (use --init-ema and --init-head for its choices)");
        goto done;
    }
    cJSON *init = cJSON_AddObjectToObject(model, "init");
    if (!init || !cJSON_AddStringToObject(init, "model", "init-file") ||
        (head && !cJSON_AddStringToObject(init, "head", head))) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    out = cJSON_PrintUnformatted(doc);
    if (!out) snprintf(err, errlen, "out of memory");
done:
    cJSON_Delete(doc);
    return out;
}

/* Fills the spec's source from a file (--init FILE, or --init-source-path FILE, flag names which): the
 * file's config merged into the spec, its path and which weights to load (ema: 1 its EMA weights, refused
 * when it has none; 0 its raw weights; -1 its EMA weights when it has them). 0, or -1 with a message
 * (exit 2). */
static int resolve_init_file(tl_train_spec *spec, const char *flag, const char *file, int ema, char *err,
                             size_t errlen) {
    tl_config src;
    char e2[TL_ERR_LEN];
    if (tl_checkpoint_config(file, &src, e2, sizeof e2) != 0) {
        snprintf(err, errlen, "%s %.400s: %s", flag, file, e2);
        return -1;
    }
    char real[PATH_MAX];
    errno = 0;
    if (!realpath(file, real) || strlen(real) >= sizeof spec->init_weights) {
        snprintf(err, errlen, "%s %.400s: %s", flag, file, strerror(errno ? errno : ENAMETOOLONG));
        return -1;
    }
    snprintf(spec->init_weights, sizeof spec->init_weights, "%s", real);
    int has_ema = checkpoint_has_ema(file);
    if (ema == 1 && !has_ema) {
        snprintf(err, errlen, "%s %.400s holds no EMA weights (asked for by %s)", flag, file,
                 strcmp(flag, "--init") ? "model.init.ema" : "--init-ema");
        return -1;
    }
    spec->init_from_ema = ema < 0 ? has_ema : ema;
    tl_spec_error se;
    if (tl_jobspec_apply_init(spec, &src, &se) != 0) {
        char msg[1024];
        tl_spec_error_format(&se, msg, sizeof msg);
        snprintf(err, errlen, "the spec does not fit %s %.200s: %.760s", flag, file, msg);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ training jobs */

/* Runs the parsed training spec (on this rank of comm, or alone when comm is NULL). Rank 0 owns the run
 * folder, the metrics file and the terminal; other ranks print only their failure. The exit status. */
static int run_train(const tl_train_spec *spec, const char *out, tl_comm *comm, long long stop_at, int init_file,
                     int events) {
    int root = tl_comm_rank(comm) == 0;
    run_ui ui = {.stop_at = root ? stop_at : 0, .events = events};
    static tld_run_events_tee tee;
    FILE *ev = NULL;
    if (events) { /* stdout carries the events alone: the rest of what this process prints is dropped */
        int fd = root ? dup(STDOUT_FILENO) : -1, null = open("/dev/null", O_WRONLY | O_CLOEXEC);
        ev = fd >= 0 ? fdopen(fd, "w") : NULL;
        fflush(stdout);
        if (null < 0 || dup2(null, STDOUT_FILENO) < 0 || (root && !ev)) {
            fprintf(stderr, "tokenlabd run: cannot set up --events: %s\n", strerror(errno));
            if (comm) tl_comm_abort(comm, 1);
            return 1;
        }
        close(null);
    }
    if (out) snprintf(ui.run_dir, sizeof ui.run_dir, "%s", out);
    else snprintf(ui.run_dir, sizeof ui.run_dir, "runs/%s", spec->name);
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL); /* mpirun forwards SIGUSR1 to every rank (tokenlabd serve's cancel) */
    tl_train_hooks hooks = {.should_stop = should_stop, .user = &ui};
    if (root) {
        if (mkdir_p(ui.run_dir) != 0) {
            fprintf(stderr, "tokenlabd run: cannot create %s: %s\n", ui.run_dir, strerror(errno));
            if (comm) tl_comm_abort(comm, 1); /* the other ranks would wait for rank 0 */
            return 1;
        }
        tl_file_remove_temps(ui.run_dir); /* what a crash left mid-write; nothing writes here yet */
        char mpath[4200];
        snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", ui.run_dir);
        if (trim_metrics(mpath, checkpoint_step(ui.run_dir)) != 0 || !(ui.metrics = tl_file_open(mpath, 1))) {
            int e = errno;
            char msg[4400];
            if (tl_errno_disk_full(e)) fprintf(stderr, "tokenlabd run: %s\n", tl_disk_full_message(msg, sizeof msg, mpath));
            else fprintf(stderr, "tokenlabd run: cannot rewrite %s: %s\n", mpath, strerror(e));
            if (comm) tl_comm_abort(comm, 1);
            return tl_errno_disk_full(e) ? 4 : 1;
        }
        ui.tty = isatty(STDOUT_FILENO);
        printf("job %s -> %s (BLAS %s)\n", spec->name, ui.run_dir, tl_blas_corename());
        hooks = (tl_train_hooks){.on_start = on_start, .on_ranks = on_ranks, .on_init = on_init, .on_step = on_step,
                                 .on_eval = on_eval, .before_checkpoint = before_checkpoint, .on_log = on_log,
                                 .should_stop = should_stop, .user = &ui};
        if (ev) {
            tl_train_hooks inner = hooks;
            tld_run_events_tee_init(&tee, ev, &inner, &hooks);
        }
    }
    tl_train_result res;
    tl_train_status st = tl_train_run_ranks(spec, ui.run_dir, &hooks, comm, &res);
    if (ui.metrics) fclose(ui.metrics);
    if (ev) {
        tld_run_events_end(&tee, st, &res);
        fclose(ev);
    }
    if (!root) {
        if (st == TL_TRAIN_FAILED)
            fprintf(stderr, "tokenlabd run: rank %d failed (%s): %s\n", tl_comm_rank(comm), res.reason, res.message);
        return st == TL_TRAIN_FAILED ? 1 : st == TL_TRAIN_STOPPED ? 3 : 0;
    }
    if (ui.tty) printf("\n");
    if (res.skipped_images) printf("%lld unreadable images were skipped\n", (long long)res.skipped_images);
    switch (st) {
    case TL_TRAIN_SUCCEEDED:
        printf("done: %s; best top-1 %.2f%%; run folder %s\n", res.message, 100 * res.best_top1, ui.run_dir);
        return 0;
    case TL_TRAIN_STOPPED:
        printf("stopped: %s; run the same command to resume\n", res.message);
        return 3;
    default:
        if (!events) fprintf(stderr, "tokenlabd run: failed (%s): %s\n", res.reason, res.message);
        return disk_full_exit(&res, init_file && !strcmp(res.reason, "CONFIG_ERROR") ? 2 : 1); /* 2: a bad --init */
    }
}

/* ------------------------------------------------------------------ the command */

#define RUN_USAGE                                                                                                      \
    "usage: tokenlabd run SPEC.json [--out DIR] [--weights CHECKPOINT [--ema]]\n"                                       \
    "                              [--init FILE.safetensors [--init-ema] [--init-head reinit|keep|match]]\n"          \
    "                              [--stop-at STEP] [--events] [--init-source-path FILE]\n"                         \
    "       mpirun -np N tokenlabd run SPEC.json [options]   (a training job on N ranks)\n"

int cmd_run(int argc, char **argv) {
    const char *spec_path = NULL, *out = NULL, *weights = NULL, *init_file = NULL, *init_head = NULL;
    const char *source_path = NULL;
    int ema = 0, init_ema = 0, events = 0;
    long long stop_at = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
        else if (!strcmp(argv[i], "--weights") && i + 1 < argc) weights = argv[++i];
        else if (!strcmp(argv[i], "--ema")) ema = 1;
        else if (!strcmp(argv[i], "--init") && i + 1 < argc) init_file = argv[++i];
        else if (!strcmp(argv[i], "--init-ema")) init_ema = 1;
        else if (!strcmp(argv[i], "--init-head") && i + 1 < argc) init_head = argv[++i];
        else if (!strcmp(argv[i], "--init-source-path") && i + 1 < argc) source_path = argv[++i];
        else if (!strcmp(argv[i], "--events")) events = 1;
        else if (!strcmp(argv[i], "--stop-at") && i + 1 < argc) {
            char *end;
            stop_at = strtoll(argv[++i], &end, 10);
            if (*end || stop_at < 1) {
                fprintf(stderr, "tokenlabd run: --stop-at must be a step >= 1, got %s\n", argv[i]);
                return 2;
            }
        }
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf(RUN_USAGE
                   "Runs one job in the foreground; the spec's \"kind\" decides which.\n"
                   "train: DIR (default runs/<name>) receives last.safetensors, best.safetensors and\n"
                   "metrics.jsonl; running the same command again resumes from last.safetensors.\n"
                   "Ctrl-C stops after the current step and writes a checkpoint.\n"
                   "annotate: --weights is the annotator's checkpoint (the spec's source is not\n"
                   "resolved here); --ema annotates with its EMA weights (default: the spec's\n"
                   "source.ema, else the EMA weights when the checkpoint has them). DIR (default\n"
                   "runs/<name>) receives the part files; Ctrl-C writes a part at the current batch\n"
                   "and the same command resumes; at the end data.out is written.\n"
                   "--init FILE (train): fine-tune from FILE, a tokenlab checkpoint or an official\n"
                   "LV-ViT state_dict saved as safetensors, instead of random weights. The spec's\n"
                   "model.init must be absent (the file is the source); the model object then gives\n"
                   "only what changes (img_size, num_classes, drop_path_rate), the rest comes from\n"
                   "FILE. --init-ema loads FILE's EMA weights (default: them when FILE has any);\n"
                   "--init-head chooses the heads (default: keep when the class counts are equal,\n"
                   "else reinit). The job evaluates once at step 0. Resume with the same command.\n"
                   "--stop-at STEP (train): stop after that step with a checkpoint, as Ctrl-C does.\n"
                   "--events (train; how tokenlabd serve follows the jobs it launches): rank 0 writes one\n"
                   "JSON object per line to stdout for each event of the run (start, ranks, init, step,\n"
                   "eval, before_checkpoint, checkpoint, log, end) and nothing else; the progress\n"
                   "display is off and the log lines are events.\n"
                   "--init-source-path FILE (train): the spec keeps its model.init (a daemon model or\n"
                   "job) and FILE is the safetensors file it resolved to; its model.init.ema applies.\n"
                   "Under mpirun (train): every rank runs this command with the same spec; rank 0\n"
                   "reads and writes DIR and prints, the others print only a failure. The data\n"
                   "folders must be at the same path on every host. See docs/DISTRIBUTED.md.\n"
                   "Exit status: 0 done, 1 failed, 2 bad usage or a bad --init (unreadable file,\n"
                   "a spec that does not fit it, a head that cannot be used), 3 stopped.\n");
            return 0;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "tokenlabd run: unknown option %s\n", argv[i]);
            return 2;
        } else if (!spec_path) spec_path = argv[i];
        else {
            fprintf(stderr, "tokenlabd run: unexpected argument %s\n", argv[i]);
            return 2;
        }
    }
    if (!spec_path) {
        fprintf(stderr, RUN_USAGE);
        return 2;
    }
    char err[1024];
    char *json = read_file(spec_path, err, sizeof err);
    if (!json) {
        fprintf(stderr, "tokenlabd run: %s\n", err);
        return 1;
    }
    char kind[16];
    tl_spec_error se;
    if (tl_jobspec_kind(json, kind, sizeof kind, &se) != 0) {
        free(json);
        tl_spec_error_format(&se, err, sizeof err);
        fprintf(stderr, "tokenlabd run: %s: %s\n", spec_path, err);
        return 1;
    }
    if (source_path && init_file) {
        free(json);
        fprintf(stderr, "tokenlabd run: --init and --init-source-path exclude each other\n");
        return 2;
    }
    if (events && strcmp(kind, "train") != 0) {
        free(json);
        fprintf(stderr, "tokenlabd run: --events is for train specs\n");
        return 2;
    }
    if ((init_ema || init_head) && !init_file) {
        free(json);
        fprintf(stderr, "tokenlabd run: --init-ema and --init-head go with --init FILE\n");
        return 2;
    }
    if (init_head && strcmp(init_head, "reinit") && strcmp(init_head, "keep") && strcmp(init_head, "match")) {
        free(json);
        fprintf(stderr, "tokenlabd run: --init-head must be reinit, keep or match\n");
        return 2;
    }
    if (init_file && strcmp(kind, "train") != 0) {
        free(json);
        fprintf(stderr, "tokenlabd run: --init is for train specs (annotate specs take --weights)\n");
        return 2;
    }
    if (strcmp(kind, "annotate") == 0 && tl_comm_launched_by_mpirun()) {
        free(json);
        fprintf(stderr, "tokenlabd run: annotate jobs run on one process: start them without mpirun\n");
        return 2;
    }
    if (strcmp(kind, "annotate") == 0) {
        int rc = run_annotate(spec_path, json, out, weights, ema);
        free(json);
        return rc;
    }
    if (strcmp(kind, "train") != 0) {
        free(json);
        fprintf(stderr, "tokenlabd run: %s: /kind: must be \"train\" or \"annotate\"\n", spec_path);
        return 1;
    }
    if (weights || ema) {
        free(json);
        fprintf(stderr, "tokenlabd run: --weights and --ema are for annotate specs\n");
        return 2;
    }
    if (init_file) {
        char *with_init = add_init(json, init_head, err, sizeof err);
        free(json);
        if (!with_init) {
            fprintf(stderr, "tokenlabd run: %s: %s\n", spec_path, err);
            return 2;
        }
        json = with_init;
    }
    static tl_train_spec spec;
    int rc = tl_jobspec_parse(json, NULL, &spec, &se);
    free(json);
    if (rc != 0) {
        tl_spec_error_format(&se, err, sizeof err);
        fprintf(stderr, "tokenlabd run: %s: %s%s\n", spec_path, err,
                init_file ? " (with --init, the model object gives only what changes: img_size, num_classes, "
                            "drop_path_rate)"
                          : "");
        return 1;
    }
    if (source_path && !spec.init) {
        fprintf(stderr, "tokenlabd run: --init-source-path goes with a spec that has model.init\n");
        return 2;
    }
    if ((init_file && resolve_init_file(&spec, "--init", init_file, init_ema ? 1 : -1, err, sizeof err) != 0) ||
        (source_path && resolve_init_file(&spec, "--init-source-path", source_path, spec.init_ema, err, sizeof err) != 0)) {
        fprintf(stderr, "tokenlabd run: %s\n", err);
        return 2;
    }
    tl_comm *comm = NULL;
    if (tl_comm_launched_by_mpirun()) {
        comm = tl_comm_mpi_init(NULL, NULL, err, sizeof err);
        if (!comm) {
            fprintf(stderr, "tokenlabd run: started by mpirun, but %s\n", err);
            return 1;
        }
    }
    rc = run_train(&spec, out, comm, stop_at, init_file || source_path, events);
    if (comm && tl_comm_size(comm) > 1 && rc != 0 && rc != 3) {
        /* A rank that failed on its own (its data, its disk) would leave the others waiting in the next sum,
         * and MPI_Finalize waits for them too: end every rank now. Its message is already printed. */
        fflush(stdout);
        fflush(stderr);
        tl_comm_abort(comm, rc);
    }
    tl_comm_finalize(comm);
    return rc;
}
