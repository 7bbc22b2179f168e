/*
 * train.c: the training loop of one job (see train.h).
 *
 * Owns, for the duration of tl_train_run: the datasets and label map, the
 * model and its EMA, a training context and evaluation contexts, the two
 * loaders, the token-inspection set and its result buffer, and the run
 * folder's checkpoints. Everything runs on the calling thread except the
 * engine's pools and the loaders' workers; hooks are called on the calling
 * thread.
 *
 * Token inspection (inspect.h) is built in setup when the caller has an
 * on_inspect hook, and runs at every evaluation point, validation data or
 * not, after each evaluation of the raw and of the EMA weights. It draws from
 * its own derived generator and runs eval-mode forwards only, so it changes
 * nothing the training computes. Failing to build it only logs a line.
 *
 * Fine-tuning (model.init, see train.h): on a fresh start the spec is copied
 * and merged with the source's configuration (tl_jobspec_apply_init), the
 * source is loaded into a weights-only model that lives only until the job's
 * model has been initialised from it (tl_model_init_from), and the first
 * evaluation point is step 0. A resumed fine-tuning job is an ordinary resume:
 * the architecture comes from its own last.safetensors, the source is not
 * read. train.freeze and train.layer_decay are not in the checkpoint, so they
 * are applied after the weights are in place on every start, fresh or
 * resumed; at their defaults (none, 1) nothing is called, a model is built
 * that way. Every checkpoint carries the training data's class folder names
 * (TL_META_CLASS_IDS) so that it can be a source with head "match".
 *
 * Micro-batches and ranks (train_step.c, train_dist.c): each step's
 * gradient is summed over train.micro_batches micro-batches, spread over the
 * ranks of a distributed job. On a distributed job only rank 0 reads and
 * writes the run folder and calls the hooks (but should_stop); evaluation is
 * sharded over the ranks and its counts summed.
 */
#include "tokenlab/train.h"
#include "tokenlab/base.h"
#include "tokenlab/files.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jobs/train_internal.h"

static const char *const HEAD_NAMES[] = {"reinit", "keep", "match"};
static const char *const FREEZE_NAMES[] = {"none", "stem", "trunk"};

#define WINDOW 20 /* steps over which images/s and data wait are measured */


tl_train_status train_fail(run *r, const char *reason, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    tl_train_result_vfail(r->res, reason, fmt, ap);
    va_end(ap);
    return TL_TRAIN_FAILED;
}

void train_log(run *r, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (r->hooks) tl_hook_vlog(r->hooks->on_log, r->hooks->user, fmt, ap);
    va_end(ap);
}

static void loader_log(const char *msg, void *user) { train_log(user, "%s", msg); }

double tl_train_lr(const tl_train_spec *s, int64_t step, int64_t steps_per_epoch) {
    int64_t total = (int64_t)s->epochs * steps_per_epoch;
    int64_t warm = (int64_t)llround(s->warmup_epochs * (double)steps_per_epoch);
    if (step < warm) return s->warmup_lr + (s->lr - s->warmup_lr) * (double)step / (double)warm;
    int64_t span = total - warm;
    if (span <= 0) return s->lr;
    double t = (double)(step - warm) / (double)span;
    return s->min_lr + 0.5 * (s->lr - s->min_lr) * (1.0 + cos(M_PI * t));
}

/* Section 4: lambda ~ Beta(1,1), cut = int(g*sqrt(1-lambda)), centre uniform on the grid. */
static tl_box mixtoken_box(uint64_t seed, int64_t step, int g) {
    tl_rng r;
    tl_rng_derive(&r, seed, TL_RNG_MIXTOKEN, (uint64_t)step, 0);
    double lam = tl_rng_beta11(&r);
    int cut = (int)(g * sqrt(1.0 - lam));
    int cy = (int)tl_rng_below(&r, (uint32_t)g), cx = (int)tl_rng_below(&r, (uint32_t)g);
    tl_box b = {cy - cut / 2, cx - cut / 2, cy + cut / 2, cx + cut / 2};
    if (b.r0 < 0) b.r0 = 0;
    if (b.c0 < 0) b.c0 = 0;
    if (b.r1 > g) b.r1 = g;
    if (b.c1 > g) b.c1 = g;
    return b;
}

static int path_join(char *buf, size_t len, const char *dir, const char *name) {
    int n = snprintf(buf, len, "%s/%s", dir, name);
    return (n < 0 || (size_t)n >= len) ? -1 : 0;
}

/* Writes checkpoint `name` (last.safetensors with the optimizer state, best.safetensors without) into the run
 * folder, crash-safely: a failed write leaves the previous file as it was. 0 when written (or not rank 0's to
 * write); -1 with the run failed (r->res, r->ckpt_failed) when the disk is full (DISK_FULL, naming the path and
 * the free space) or before_checkpoint refused; -1 with only a log line for another failure (the caller
 * decides). */
static int save_checkpoint(run *r, const char *name, int with_optim, int64_t step, int epoch) {
    char path[4096], err[TL_ERR_LEN], best[64], stepbuf[32];
    if (path_join(path, sizeof path, r->run_dir, name) != 0) {
        train_log(r, "checkpoint %s/%s: path too long", r->run_dir, name);
        return -1;
    }
    snprintf(best, sizeof best, "%.6f", r->best);
    snprintf(stepbuf, sizeof stepbuf, "%lld", (long long)step);
    const char *meta[] = {"tokenlab.best_top1", best,          "tokenlab.step", stepbuf, "tokenlab.job", r->spec->name,
                          TL_META_CLASS_IDS,    r->class_ids, NULL};
    tl_train_state st = {step, epoch, {0, 0, 0, 0}};
    if (!run_is_root(r)) return 0; /* rank 0 alone writes the run folder */
    int refused = r->hooks && r->hooks->before_checkpoint ? r->hooks->before_checkpoint(step, r->hooks->user) : 0;
    if (refused) {
        r->ckpt_failed = 1;
        train_fail(r, tl_errno_disk_full(refused) ? "DISK_FULL" : "IO_ERROR",
                   "the metrics up to step %lld could not be saved (%s); checkpoint %s was not written",
                   (long long)step, strerror(refused), path);
        return -1;
    }
    if (tl_checkpoint_save(r->model, r->ema, path, with_optim ? TL_CKPT_OPTIM : 0, &st, meta, err, sizeof err) != 0) {
        int e = errno;
        train_log(r, "checkpoint %s failed: %s", path, err);
        if (tl_errno_disk_full(e)) {
            char msg[sizeof r->res->message - 64];
            r->ckpt_failed = 1;
            train_fail(r, "DISK_FULL", "%s; the checkpoint of step %lld was not written, the previous one is kept",
                       tl_disk_full_message(msg, sizeof msg, path), (long long)step);
        }
        return -1;
    }
    if (r->hooks && r->hooks->on_checkpoint) r->hooks->on_checkpoint(path, step, !with_optim, r->hooks->user);
    return 0;
}

/* top-1, top-5 and loss of the inference score over the validation set; on a distributed job each rank
 * scores its slice and the counts and loss sums are added (collective). */
static void evaluate(run *r, tl_ctx *ctx, int ema, int64_t step, int epoch) {
    double t0 = tl_clock_mono_s();
    int K = r->cfg.num_classes, topk = K < 5 ? K : 5;
    tl_loader_start(r->val_ld, 0, 0);
    const tl_batch *b;
    float *scores = malloc(sizeof(float) * (size_t)r->spec->batch_size * K);
    int64_t n = 0, c1 = 0, c5 = 0;
    double loss = 0.0;
    while (scores && (b = tl_loader_next(r->val_ld, NULL)) != NULL) {
        tl_predict(ctx, b->images, b->n, scores);
        for (int i = 0; i < b->n; i++) {
            const float *s = scores + (size_t)i * K;
            int y = b->labels[i], above = 0;
            float mx = s[0];
            for (int k = 0; k < K; k++) {
                if (s[k] > s[y]) above++;
                mx = s[k] > mx ? s[k] : mx;
            }
            double se = 0.0;
            for (int k = 0; k < K; k++) se += exp((double)s[k] - mx);
            loss += mx + log(se) - s[y];
            c1 += above == 0;
            c5 += above < topk;
            n++;
        }
    }
    if (!scores) train_log(r, "evaluation at step %lld skipped: out of memory", (long long)step);
    free(scores);
    double sums[4] = {(double)n, (double)c1, (double)c5, loss};
    if (r->comm && tl_comm_sum_f64(r->comm, sums, 4) != 0) train_log(r, "evaluation: the ranks' sums failed");
    n = (int64_t)sums[0], c1 = (int64_t)sums[1], c5 = (int64_t)sums[2], loss = sums[3];
    tl_eval_report rep = {step, epoch, ema, n ? (double)c1 / n : 0, n ? (double)c5 / n : 0, n ? loss / n : 0, (int)n,
                          tl_clock_mono_s() - t0};
    if (r->hooks && r->hooks->on_eval) r->hooks->on_eval(&rep, r->hooks->user);
    r->last_eval_step = step;
    r->last_top1[ema] = rep.top1;
    r->last_top5[ema] = rep.top5;
    int counts = r->ema ? ema : 1; /* the EMA's top-1 decides "best" when there is an EMA */
    if (counts && rep.top1 > r->best) {
        r->best = rep.top1;
        r->res->best_top1 = rep.top1;
        save_checkpoint(r, "best.safetensors", 0, step, epoch);
    }
}

/* Runs the inspection set through ctx's model and hands the result to on_inspect. */
static void inspect(run *r, tl_ctx *ctx, int ema, int64_t step) {
    if (!r->iset || !ctx) return;
    char err[TL_ERR_LEN];
    if (tl_inspect_run(ctx, r->iset, r->ires, err, sizeof err) != 0) {
        train_log(r, "token inspection at step %lld: %s", (long long)step, err);
        return;
    }
    r->hooks->on_inspect(r->iset, r->ires, step, ema, r->hooks->user);
}

static void evaluate_all(run *r, int64_t step, int epoch) {
    if (r->val_ld) evaluate(r, r->eval_ctx, 0, step, epoch);
    inspect(r, r->eval_ctx, 0, step);
    if (r->ema) {
        if (r->val_ld) evaluate(r, r->ema_ctx, 1, step, epoch);
        inspect(r, r->ema_ctx, 1, step);
    }
}

typedef struct {
    double loss, loss_cls, loss_dense, seconds; /* sums over the epoch's steps run here */
    int64_t steps;
} epoch_sums;

/* should_stop after a step; on a distributed job any rank's request stops every rank (collective). */
static int stop_requested(run *r) {
    double want = r->hooks && r->hooks->should_stop && r->hooks->should_stop(r->hooks->user) ? 1.0 : 0.0;
    if (r->comm && tl_comm_sum_f64(r->comm, &want, 1) != 0) return 1;
    return want > 0.0;
}

/* The job log's line at the end of an epoch, as timm prints one: the epoch's mean losses, the last learning
 * rate, its training images/s, the evaluation at this step if there was one, the checkpoint if written. */
static void log_epoch(run *r, const epoch_sums *e, int64_t step, double lr, int ckpt) {
    char ev[160] = "";
    if (r->val_ld && r->last_eval_step == step) {
        int n = snprintf(ev, sizeof ev, "; top-1 %.2f%% top-5 %.2f%%", 100 * r->last_top1[0], 100 * r->last_top5[0]);
        if (r->ema && n > 0 && (size_t)n < sizeof ev)
            snprintf(ev + n, sizeof ev - (size_t)n, ", EMA top-1 %.2f%% top-5 %.2f%%", 100 * r->last_top1[1],
                     100 * r->last_top5[1]);
    }
    int epoch = (int)((step - 1) / r->nb) + 1;
    double k = e->steps > 0 ? (double)e->steps : 1.0;
    train_log(r, "epoch %d/%d: step %lld, loss %.4f (cls %.4f, dense %.4f), lr %.3g, %.1f img/s%s%s", epoch,
              r->spec->epochs, (long long)step, e->loss / k, e->loss_cls / k, e->loss_dense / k, lr,
              e->seconds > 0 ? (double)r->spec->batch_size * (double)e->steps / e->seconds : 0.0, ev,
              ckpt ? "; checkpoint written" : "");
}

static int64_t every(float epochs, int nb) {
    if (epochs <= 0.0f) return 0;
    int64_t s = (int64_t)llround((double)epochs * nb);
    return s < 1 ? 1 : s;
}

static int ncores(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* Builds the inspection set, its result buffer and (without validation data)
 * the evaluation contexts it runs on. Any failure logs and leaves inspection off. */
static void setup_inspect(run *r, int threads) {
    const tl_train_spec *s = r->spec;
    char err[TL_ERR_LEN];
    const char *what;
    r->iset = tl_inspect_new(r->train_ds, r->val_ds, r->lm, r->val_ds ? 4 : 0, 4, r->cfg.img_size,
                             tl_config_grid(&r->cfg), r->cfg.num_classes, &s->augment, s->seed, err, sizeof err);
    if (!r->iset) {
        train_log(r, "token inspection is off: %s", err);
        return;
    }
    what = "the result buffer";
    snprintf(err, sizeof err, "out of memory");
    r->ires = tl_inspect_result_new(r->iset);
    if (!r->ires) goto off;
    int batch = r->iset->n < 8 ? r->iset->n : 8;
    what = "an evaluation context";
    if (!r->eval_ctx && !(r->eval_ctx = tl_ctx_new(r->model, batch, 0, threads, err, sizeof err))) goto off;
    what = "an EMA evaluation context";
    if (r->ema && !r->ema_ctx && !(r->ema_ctx = tl_ctx_new(r->ema, batch, 0, threads, err, sizeof err))) goto off;
    return;
off:
    train_log(r, "token inspection is off: %s: %s", what, err);
    tl_inspect_result_free(r->ires);
    tl_inspect_free(r->iset);
    r->ires = NULL;
    r->iset = NULL;
    if (!r->val_ds) { /* contexts made for inspection only */
        tl_ctx_free(r->eval_ctx);
        tl_ctx_free(r->ema_ctx);
        r->eval_ctx = r->ema_ctx = NULL;
    }
}

/* Fine-tuning: the spec the job runs, a copy of the caller's (r->spec then points to it). Fresh start:
 * merged with the source's configuration, r->init_now set. Resume: the architecture of last.safetensors. */
static tl_train_status init_spec(run *r) {
    char err[TL_ERR_LEN], last[4096];
    r->own_spec = malloc(sizeof *r->own_spec);
    if (!r->own_spec) return train_fail(r, "OUT_OF_MEMORY", "out of memory");
    *r->own_spec = *r->spec;
    r->spec = r->own_spec;
    tl_train_spec *c = r->own_spec;
    if (path_join(last, sizeof last, r->run_dir, "last.safetensors") != 0)
        return train_fail(r, "IO_ERROR", "run folder path too long: %s", r->run_dir);
    if (access(last, F_OK) == 0) {
        tl_config lc;
        if (tl_checkpoint_config(last, &lc, err, sizeof err) != 0) return train_fail(r, "IO_ERROR", "cannot resume: %s", err);
        c->model = lc;
        c->drop_path = lc.drop_path_rate;
        return TL_TRAIN_SUCCEEDED;
    }
    if (!c->init_weights[0]) return train_fail(r, "CONFIG_ERROR", "model.init: no source file was given to the job");
    if (!(r->src_file = tl_st_open(c->init_weights, err, sizeof err)) ||
        tl_checkpoint_config_file(r->src_file, c->init_weights, &r->src_cfg, err, sizeof err) != 0)
        return train_fail(r, "CONFIG_ERROR", "model.init: cannot read the source %s: %s", c->init_weights, err);
    tl_spec_error se;
    if (tl_jobspec_apply_init(c, &r->src_cfg, &se) != 0) {
        char msg[1024];
        tl_spec_error_format(&se, msg, sizeof msg);
        return train_fail(r, "CONFIG_ERROR", "model.init: %s", msg);
    }
    r->init_now = 1;
    return TL_TRAIN_SUCCEEDED;
}

static tl_train_status setup(run *r) {
    char err[TL_ERR_LEN];
    tl_train_status root = TL_TRAIN_SUCCEEDED;
    if (run_is_root(r)) { /* the run folder and a fine-tuning source are rank 0's */
        if (mkdir(r->run_dir, 0755) != 0 && errno != EEXIST)
            root = train_fail(r, "IO_ERROR", "cannot create run folder %s: %s", r->run_dir, strerror(errno));
        else if (r->spec->init)
            root = init_spec(r);
    }
    if (train_dist_share_spec(r, root) != 0) return TL_TRAIN_FAILED;
    const tl_train_spec *s = r->spec;
    const char *confine = s->data_root[0] ? s->data_root : NULL;
    r->train_ds = tl_dataset_open_confined(s->train_dir, confine, err, sizeof err);
    if (!r->train_ds) return train_fail(r, "DATA_ERROR", "training data: %s", err);
    if (tl_dataset_outside(r->train_ds))
        train_log(r, "training data: %lld symbolic links leading outside the data root were skipped",
                  (long long)tl_dataset_outside(r->train_ds));
    int K = tl_dataset_num_classes(r->train_ds);
    r->class_ids = tl_class_ids_json(r->train_ds);
    if (!r->class_ids) return train_fail(r, "OUT_OF_MEMORY", "out of memory");
    if (s->val_dir[0]) {
        r->val_ds = tl_dataset_open_confined(s->val_dir, confine, err, sizeof err);
        if (!r->val_ds) return train_fail(r, "DATA_ERROR", "validation data: %s", err);
        if (tl_dataset_outside(r->val_ds))
            train_log(r, "validation data: %lld symbolic links leading outside the data root were skipped",
                      (long long)tl_dataset_outside(r->val_ds));
        if (tl_dataset_num_classes(r->val_ds) != K)
            return train_fail(r, "DATA_ERROR", "validation data has %d classes, training data %d",
                        tl_dataset_num_classes(r->val_ds), K);
    }
    if (s->label_maps[0]) {
        r->lm = tl_labelmap_open(s->label_maps, K, err, sizeof err);
        if (!r->lm) return train_fail(r, "DATA_ERROR", "label maps: %s", err);
    }
    r->cfg = s->model;
    if (r->cfg.num_classes != K) train_log(r, "model: num_classes set to %d, the classes of the training data", K);
    r->cfg.num_classes = K;
    r->cfg.drop_path_rate = s->drop_path;
    if (tl_config_validate(&r->cfg, err, sizeof err) != 0) return train_fail(r, "CONFIG_ERROR", "model: %s", err);
    /* fine-tuning fills every weight from the source, and the EMA model always starts as a copy or from
     * the checkpoint: neither needs the random initialisation */
    r->model = r->init_now ? tl_model_new_blank(&r->cfg, err, sizeof err) : tl_model_new(&r->cfg, s->seed, err, sizeof err);
    if (!r->model) return train_fail(r, "OUT_OF_MEMORY", "%s", err);
    if (s->ema_decay > 0.0f) {
        r->ema = tl_model_new_blank(&r->cfg, err, sizeof err);
        if (!r->ema) return train_fail(r, "OUT_OF_MEMORY", "%s", err);
    }
    int threads = s->threads > 0 ? s->threads : ncores();
    int eval_batch = s->batch_size < 64 ? s->batch_size : 64;
    r->ctx = tl_ctx_new(r->model, r->mb, 1, threads, err, sizeof err); /* one micro-batch at a time */
    if (!r->ctx) return train_fail(r, "OUT_OF_MEMORY", "%s", err);
    if (r->val_ds) {
        r->eval_ctx = tl_ctx_new(r->model, eval_batch, 0, threads, err, sizeof err);
        if (!r->eval_ctx) return train_fail(r, "OUT_OF_MEMORY", "%s", err);
        if (r->ema) {
            r->ema_ctx = tl_ctx_new(r->ema, eval_batch, 0, threads, err, sizeof err);
            if (!r->ema_ctx) return train_fail(r, "OUT_OF_MEMORY", "%s", err);
        }
    }
    tl_loader_cfg lc = {.ds = r->train_ds, .lm = r->lm, .train = 1, .S = r->cfg.img_size,
                        .grid = tl_config_grid(&r->cfg), .K = K, .smoothing = s->label_smoothing, .aug = s->augment,
                        .batch = s->batch_size / r->ranks, .shards = r->ranks, .shard = r->rank, .seed = s->seed,
                        .threads = s->loader_threads > 0 ? s->loader_threads : (ncores() > 2 ? ncores() / 2 : 1),
                        .prefetch = s->prefetch_batches, .cache_bytes = (size_t)s->cache_mb << 20,
                        .log = loader_log, .log_user = r};
    r->train_ld = tl_loader_new(&lc, err, sizeof err);
    if (!r->train_ld) return train_fail(r, "DATA_ERROR", "%s", err);
    if (r->val_ds) {
        tl_loader_cfg vc = lc;
        vc.ds = r->val_ds;
        vc.lm = NULL;
        vc.train = 0;
        vc.batch = eval_batch;
        vc.shards = r->ranks; /* each rank scores a slice */
        r->val_ld = tl_loader_new(&vc, err, sizeof err);
        if (!r->val_ld) return train_fail(r, "DATA_ERROR", "%s", err);
    }
    r->nb = tl_loader_batches(r->train_ld);
    r->total = (int64_t)s->epochs * r->nb;
    r->t_mix = malloc(sizeof(float) * (size_t)r->mb * K);
    if (!r->t_mix) return train_fail(r, "OUT_OF_MEMORY", "out of memory");
    if (train_dist_check_start(r) != 0) return TL_TRAIN_FAILED;
    if (r->hooks && r->hooks->on_inspect) setup_inspect(r, threads);
    return TL_TRAIN_SUCCEEDED;
}

/* Fine-tuning, fresh start: loads the source into a weights-only model, initialises the job's model from
 * it and reports on_init. 0, or -1 with the job failed. */
static int init_from_source(run *r) {
    const tl_train_spec *s = r->spec;
    char err[TL_ERR_LEN];
    int K = r->cfg.num_classes, Ks = r->src_cfg.num_classes, rc = -1;
    int *map = NULL;
    tl_model *src = NULL;
    const tl_st_file *f = r->src_file;
    tl_init_info *info = calloc(1, sizeof *info);
    if (!info) {
        train_fail(r, "OUT_OF_MEMORY", "out of memory");
        goto done;
    }
    snprintf(info->weights, sizeof info->weights, "%s", s->init_weights);
    info->from_ema = s->init_from_ema != 0;
    info->source_cfg = r->src_cfg;
    info->source_step = -1;
    int head = s->init_head >= 0 ? s->init_head : Ks == K ? TL_HEAD_KEEP : TL_HEAD_REINIT;
    info->head = (tl_head_mode)head;
    if (head == TL_HEAD_KEEP && Ks != K) {
        train_fail(r, "CONFIG_ERROR",
             "model.init: head \"keep\" needs as many classes as the source: the source has %d, the training data "
             "%d; use \"reinit\" or \"match\"",
             Ks, K);
        goto done;
    }
    const char *step = tl_st_meta(f, "tokenlab.step");
    if (step) info->source_step = strtoll(step, NULL, 10);
    if (head == TL_HEAD_MATCH) {
        const char **ids = malloc(sizeof *ids * (size_t)K);
        int *inet = malloc(sizeof *inet * (size_t)K);
        map = malloc(sizeof *map * (size_t)K);
        if (!ids || !inet || !map) {
            free(ids);
            free(inet);
            train_fail(r, "OUT_OF_MEMORY", "out of memory");
            goto done;
        }
        for (int k = 0; k < K; k++) {
            ids[k] = tl_dataset_class_folder(r->train_ds, k);
            inet[k] = tl_dataset_class_imagenet_index(r->train_ds, k);
        }
        int m = tl_class_match_ids(K, ids, inet, tl_st_meta(f, TL_META_CLASS_IDS), Ks, map, &info->classes_matched,
                                   err, sizeof err);
        free(ids);
        free(inet);
        if (m != 0) {
            train_fail(r, "CONFIG_ERROR", "model.init: %s", err);
            goto done;
        }
    }
    src = tl_model_new_inference(&r->src_cfg, err, sizeof err);
    if (!src) {
        train_fail(r, "OUT_OF_MEMORY", "model.init: %s", err);
        goto done;
    }
    if (tl_checkpoint_load_file(src, NULL, f, s->init_weights, s->init_from_ema ? TL_CKPT_FROM_EMA : 0, NULL, err,
                                sizeof err) != 0) {
        train_fail(r, "CONFIG_ERROR", "model.init: cannot load the %s weights of %s: %s", s->init_from_ema ? "EMA" : "raw",
             s->init_weights, err);
        goto done;
    }
    if (tl_model_init_from(r->model, src, (tl_head_mode)head, map, s->seed, &info->rep, err, sizeof err) != 0) {
        train_fail(r, "CONFIG_ERROR", "model.init: %s", err);
        goto done;
    }
    const tl_config *sc = &r->src_cfg;
    train_log(r, "model.init: loaded the %s weights of %s (step %lld; embed_dim %d, depth %d, %d px, %d classes)",
            info->from_ema ? "EMA" : "raw", s->init_weights, (long long)info->source_step, sc->embed_dim, sc->depth,
            sc->img_size, Ks);
    if (head == TL_HEAD_MATCH)
        train_log(r, "model.init: head match: %d of %d classes matched the source's, %d initialised afresh",
                info->classes_matched, K, K - info->classes_matched);
    else
        train_log(r, "model.init: head %s (%d source classes, %d here)", HEAD_NAMES[head], Ks, K);
    if (info->rep.pos_resized)
        train_log(r, "model.init: position embedding resized, grid %d -> %d", info->rep.src_grid, info->rep.dst_grid);
    else
        train_log(r, "model.init: position embedding kept (grid %d)", tl_config_grid(&r->cfg));
    if (r->hooks && r->hooks->on_init) r->hooks->on_init(info, r->hooks->user);
    rc = 0;
done:
    tl_st_close(r->src_file); /* read once: done with it */
    r->src_file = NULL;
    tl_model_free(src);
    free(map);
    free(info);
    return rc;
}

/* train.freeze and train.layer_decay (not stored in checkpoints): after the weights are in place. At their
 * defaults nothing is called (a new model trains every tensor at lr x 1). 0, or -1 with the job failed. */
int train_apply_recipe(run *r) {
    const tl_train_spec *s = r->spec;
    char err[TL_ERR_LEN];
    if (s->freeze != TL_FREEZE_NONE) {
        if (s->freeze < 0 || s->freeze > TL_FREEZE_TRUNK ||
            tl_model_set_freeze(r->model, (tl_freeze)s->freeze, err, sizeof err) != 0) {
            train_fail(r, "CONFIG_ERROR", "train.freeze: %s", s->freeze < 0 || s->freeze > TL_FREEZE_TRUNK ? "unknown" : err);
            return -1;
        }
        train_log(r, "train.freeze: %s frozen", FREEZE_NAMES[s->freeze]);
    }
    if (s->layer_decay != 1.0f) {
        if (tl_model_set_layer_decay(r->model, s->layer_decay, err, sizeof err) != 0) {
            train_fail(r, "CONFIG_ERROR", "train.layer_decay: %s", err);
            return -1;
        }
        train_log(r, "train.layer_decay: %g", (double)s->layer_decay);
    }
    return 0;
}

/* Resumes from last.safetensors when the run folder has one; returns the step to start at or -1. */
static int64_t resume(run *r) {
    char path[4096], err[TL_ERR_LEN];
    if (path_join(path, sizeof path, r->run_dir, "last.safetensors") != 0 || access(path, F_OK) != 0) {
        if (r->init_now && init_from_source(r) != 0) return -1;
        if (r->ema) tl_model_copy_weights(r->ema, r->model);
        return train_apply_recipe(r) != 0 ? -1 : 0;
    }
    tl_train_state st;
    int flags = TL_CKPT_OPTIM | (r->ema ? TL_CKPT_EMA : 0);
    if (tl_checkpoint_load(r->model, r->ema, path, flags, &st, err, sizeof err) != 0) {
        train_fail(r, "IO_ERROR", "cannot resume: %s", err);
        return -1;
    }
    tl_st_file *f = tl_st_open(path, err, sizeof err);
    const char *b = f ? tl_st_meta(f, "tokenlab.best_top1") : NULL;
    r->best = b ? atof(b) : -1.0;
    r->res->best_top1 = r->best;
    tl_st_close(f);
    train_log(r, "resumed from %s at step %lld", path, (long long)st.step);
    if (train_apply_recipe(r) != 0) return -1;
    return st.step;
}

static void cleanup(run *r) {
    train_step_free(r);
    tl_loader_free(r->train_ld);
    tl_loader_free(r->val_ld);
    tl_inspect_result_free(r->ires);
    tl_inspect_free(r->iset);
    tl_ctx_free(r->ctx);
    tl_ctx_free(r->eval_ctx);
    tl_ctx_free(r->ema_ctx);
    tl_model_free(r->model);
    tl_model_free(r->ema);
    tl_labelmap_close(r->lm);
    tl_dataset_free(r->train_ds);
    tl_dataset_free(r->val_ds);
    free(r->t_mix);
    free(r->class_ids);
    free(r->own_spec);
    tl_st_close(r->src_file); /* a run that failed before init_from_source */
}

static tl_train_status loop(run *r, int64_t step) {
    const tl_train_spec *s = r->spec;
    int B = s->batch_size, g = tl_config_grid(&r->cfg);
    int64_t eval_every = every(s->eval_every_epochs, r->nb), ckpt_every = every(s->checkpoint_every_epochs, r->nb);
    /* image-level mixup/cutmix is the baseline without label maps; with maps, MixToken mixes */
    int image_mix = s->mix != TL_MIX_NONE && !r->lm;
    if (s->mix != TL_MIX_NONE && r->lm) train_log(r, "train.mix is ignored: the job has label maps (MixToken mixes)");
    tl_adamw hp = {(float)s->lr, s->weight_decay, 0.9f, 0.999f, 1e-8f};
    double times[WINDOW] = {0}, waits[WINDOW] = {0}, t_prev = tl_clock_mono_s(), eval_seconds = 0.0;
    int started = 0;
    int64_t done_here = 0;
    epoch_sums es = {0};
    if (r->hooks && r->hooks->on_start) r->hooks->on_start(step, r->total, r->hooks->user);
    if (r->init_now && step == 0) { /* fine-tuning: the first point is where it starts */
        double t_eval = tl_clock_mono_s();
        evaluate_all(r, 0, 0);
        if (r->ckpt_failed) return TL_TRAIN_FAILED;
        eval_seconds = tl_clock_mono_s() - t_eval;
        t_prev = tl_clock_mono_s();
    }
    while (step < r->total) {
        int epoch = (int)(step / r->nb);
        if (!started || step % r->nb == 0) {
            tl_loader_start(r->train_ld, epoch, (int)(step % r->nb));
            started = 1;
        }
        double wait = 0.0;
        const tl_batch *b = tl_loader_next(r->train_ld, &wait);
        if (!b) return train_fail(r, "DATA_ERROR", "the loader ended the epoch early at step %lld", (long long)step);
        if (tl_loader_skipped(r->train_ld) >= tl_dataset_count(r->train_ds))
            return train_fail(r, "DATA_ERROR", "no image of %s could be read", s->train_dir);
        tl_box box = {0, 0, 0, 0};
        if (!image_mix && s->mixtoken) box = mixtoken_box(s->seed, step, g);
        hp.lr = (float)tl_train_lr(s, step, r->nb);
        train_step_out so;
        if (train_step_grads(r, b, step, image_mix, box, &so) != 0) return TL_TRAIN_FAILED;
        if (so.nonfinite)
            return train_fail(r, "NAN_LOSS", "the loss became %s at step %lld (lr %.3g); lower the learning rate",
                              isnan(so.lp.loss) ? "NaN" : "infinite", (long long)step + 1, (double)hp.lr);
        tl_ctx_adamw_step(r->ctx, &hp);
        if (r->ema) { /* warm-up: a short run's EMA must not be stuck at the initial weights */
            double warm = (1.0 + (double)step) / (10.0 + (double)step);
            tl_model_ema_update(r->ema, r->model, (float)(warm < s->ema_decay ? warm : s->ema_decay), r->ctx);
        }
        step++;
        done_here++;
        r->res->step = step;
        double t = tl_clock_mono_s();
        times[step % WINDOW] = t - t_prev;
        waits[step % WINDOW] = wait;
        es.loss += so.lp.loss;
        es.loss_cls += so.lp.loss_cls;
        es.loss_dense += so.lp.loss_dense;
        es.seconds += t - t_prev;
        es.steps++;
        t_prev = t;
        if (r->hooks && r->hooks->on_step) {
            int n = done_here < WINDOW ? (int)done_here : WINDOW;
            double st = 0, sw = 0;
            for (int i = 0; i < WINDOW; i++) st += times[i], sw += waits[i];
            int64_t evals_left = eval_every ? (r->total - step) / eval_every : 0;
            double eta = st / n * (double)(r->total - step) + eval_seconds * (double)(evals_left + 1);
            tl_step_report rep = {step, r->total, epoch, s->epochs, so.lp.loss, so.lp.loss_cls, so.lp.loss_dense, hp.lr,
                                  st > 0 ? (double)B * n / st : 0, st > 0 ? eta : -1.0, st > 0 ? sw / st : 0,
                                  tl_loader_skipped(r->train_ld), r->ranks, r->comm ? r->rank_ips : NULL,
                                  so.comm_s, times[step % WINDOW]};
            r->hooks->on_step(&rep, r->hooks->user);
        }
        int last = step == r->total, eval_now = last || (eval_every && step % eval_every == 0);
        int ckpt_now = last || (ckpt_every && step % ckpt_every == 0);
        int stop = !last && stop_requested(r);
        if (eval_now) {
            double t_eval = tl_clock_mono_s();
            evaluate_all(r, step, (int)((step - 1) / r->nb));
            eval_seconds = tl_clock_mono_s() - t_eval;
        }
        if (r->ckpt_failed) return TL_TRAIN_FAILED; /* best.safetensors found the disk full */
        if (ckpt_now || stop) {
            if (save_checkpoint(r, "last.safetensors", 1, step, (int)(step / r->nb)) != 0)
                return r->ckpt_failed ? TL_TRAIN_FAILED
                                      : train_fail(r, "IO_ERROR", "cannot write the checkpoint in %s", r->run_dir);
        }
        if (last || step % r->nb == 0) {
            log_epoch(r, &es, step, hp.lr, ckpt_now || stop);
            memset(&es, 0, sizeof es);
        }
        t_prev = tl_clock_mono_s(); /* images/s and the ETA measure training steps, not evaluations or checkpoints */
        if (stop) {
            r->res->status = TL_TRAIN_STOPPED;
            snprintf(r->res->reason, sizeof r->res->reason, "STOPPED");
            snprintf(r->res->message, sizeof r->res->message, "stopped after step %lld; checkpoint written",
                     (long long)step);
            return TL_TRAIN_STOPPED;
        }
    }
    r->res->status = TL_TRAIN_SUCCEEDED;
    snprintf(r->res->message, sizeof r->res->message, "finished %lld steps", (long long)step);
    return TL_TRAIN_SUCCEEDED;
}

void tl_hook_vlog(void (*on_log)(const char *msg, void *user), void *user, const char *fmt, va_list ap) {
    if (!on_log) return;
    char buf[1024];
    vsnprintf(buf, sizeof buf, fmt, ap);
    on_log(buf, user);
}

tl_train_status tl_train_result_vfail(tl_train_result *res, const char *reason, const char *fmt, va_list ap) {
    vsnprintf(res->message, sizeof res->message, fmt, ap);
    snprintf(res->reason, sizeof res->reason, "%s", reason);
    res->status = TL_TRAIN_FAILED;
    return TL_TRAIN_FAILED;
}

tl_train_status tl_train_run_ranks(const tl_train_spec *spec, const char *run_dir, const tl_train_hooks *hooks,
                                   tl_comm *comm, tl_train_result *res) {
    memset(res, 0, sizeof *res);
    res->best_top1 = -1.0;
    run r = {.spec = spec, .run_dir = run_dir, .hooks = hooks, .res = res, .best = -1.0, .last_eval_step = -1, .comm = comm,
             .rank = tl_comm_rank(comm), .ranks = tl_comm_size(comm), .micro = spec->micro_batches};
    tl_train_status st = TL_TRAIN_FAILED;
    train_dist_hooks(&r);
    if (r.micro < 1) r.micro = 1;
    if (spec->batch_size % r.micro != 0)
        train_fail(&r, "CONFIG_ERROR", "train.micro_batches (%d) must divide train.batch_size (%d)", r.micro,
                   spec->batch_size);
    else if (r.micro % r.ranks != 0)
        train_fail(&r, "CONFIG_ERROR", "the %d ranks must divide train.micro_batches (%d)", r.ranks, r.micro);
    else if (train_dist_check_spec(&r, spec) == 0) {
        r.local_micro = r.micro / r.ranks;
        r.mb = spec->batch_size / r.micro;
        st = setup(&r);
    }
    if (st == TL_TRAIN_SUCCEEDED) {
        int64_t step = run_is_root(&r) ? resume(&r) : 0;
        step = train_dist_share_state(&r, step);
        st = step < 0 || train_step_setup(&r) != 0 ? TL_TRAIN_FAILED : loop(&r, step);
    }
    res->skipped_images = r.train_ld ? tl_loader_skipped(r.train_ld) : 0;
    if (r.val_ld) res->skipped_images += tl_loader_skipped(r.val_ld);
    cleanup(&r);
    return st;
}

tl_train_status tl_train_run(const tl_train_spec *spec, const char *run_dir, const tl_train_hooks *hooks,
                             tl_train_result *res) {
    return tl_train_run_ranks(spec, run_dir, hooks, NULL, res);
}
