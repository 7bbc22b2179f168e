/*
 * train_dist.c: what a distributed training job does beyond one process at
 * its start (see train_internal.h): the ranks agree on what they run, and
 * rank 0's starting state reaches every rank.
 *
 * Owns nothing beyond the calls; runs on the training thread of each rank.
 * Every function here is collective: all ranks call it, in the same order,
 * and all of them return the same verdict, so no rank is left waiting in a
 * sum that the others have abandoned.
 */
#include "jobs/train_internal.h"

#include "core/fnv.h"
#include "model/micro.h"
#include "tokenlab/base.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HOST_LEN 64

void train_dist_hooks(run *r) {
    if (run_is_root(r)) return;
    memset(&r->own_hooks, 0, sizeof r->own_hooks);
    if (r->hooks) {
        r->own_hooks.should_stop = r->hooks->should_stop;
        r->own_hooks.user = r->hooks->user;
    }
    r->hooks = &r->own_hooks;
}

/* Every rank's value against rank 0's; the first rank that differs fails the run on every rank, naming
 * what differs. 0 when all agree. */
static int agree(run *r, const char *what, uint64_t value, const char *hint) {
    uint64_t *all = malloc(sizeof(uint64_t) * (size_t)r->ranks);
    char (*hosts)[HOST_LEN] = malloc((size_t)HOST_LEN * (size_t)r->ranks);
    char mine[HOST_LEN] = {0};
    snprintf(mine, sizeof mine, "%s", tl_comm_host(r->comm));
    if (!all || !hosts || tl_comm_allgather(r->comm, &value, all, sizeof value) != 0 ||
        tl_comm_allgather(r->comm, mine, hosts, HOST_LEN) != 0) {
        free(all);
        free(hosts);
        return train_fail(r, "DIST_ERROR", "the ranks could not compare their %s", what), -1;
    }
    int bad = -1;
    for (int k = 1; k < r->ranks && bad < 0; k++)
        if (all[k] != all[0]) bad = k;
    if (bad > 0)
        train_fail(r, "DIST_MISMATCH", "rank %d (host %s) differs from rank 0 (host %s) in its %s%s%s", bad,
                   hosts[bad], hosts[0], what, hint ? ": " : "", hint ? hint : "");
    free(all);
    free(hosts);
    return bad > 0 ? -1 : 0;
}

static uint64_t hash_bytes(const void *p, size_t n) {
    tl_fnv f;
    tl_fnv_init(&f);
    tl_fnv_add(&f, p, n);
    return f.h;
}

/* The file list of a dataset: its count and every relative path, in the dataset's order. */
static uint64_t hash_files(const tl_dataset *ds) {
    tl_fnv f;
    tl_fnv_init(&f);
    int n = ds ? tl_dataset_count(ds) : -1;
    tl_fnv_add(&f, &n, sizeof n);
    for (int i = 0; i < n; i++) {
        const char *p = tl_dataset_relpath(ds, i);
        tl_fnv_add(&f, p, strlen(p) + 1);
    }
    return f.h;
}

/* A checksum of n floats: FNV-1a's multiply over 64-bit words (the bytes' hash is too slow for a model's
 * hundreds of megabytes at every start). */
static uint64_t hash_floats(const float *x, size_t n) {
    uint64_t h = 1469598103934665603ull, w;
    size_t i = 0;
    for (; i + 2 <= n; i += 2) {
        memcpy(&w, x + i, sizeof w);
        h = (h ^ w) * 1099511628211ull;
    }
    if (i < n) h = (h ^ (uint64_t)*(const uint32_t *)(const void *)(x + i)) * 1099511628211ull;
    return h;
}

int train_dist_check_spec(run *r, const tl_train_spec *given) {
    if (!r->comm) return 0;
    return agree(r, "job spec", hash_bytes(given, sizeof *given),
                 "every rank must run the same spec file, with the same data paths");
}

int train_dist_share_spec(run *r, tl_train_status root_status) {
    if (!r->comm) return root_status == TL_TRAIN_SUCCEEDED ? 0 : -1;
    int32_t hdr[2] = {(int32_t)root_status, r->init_now};
    if (tl_comm_bcast(r->comm, hdr, sizeof hdr, 0) != 0)
        return train_fail(r, "DIST_ERROR", "rank 0's job spec did not reach this rank"), -1;
    if (hdr[0] != TL_TRAIN_SUCCEEDED) {
        if (!run_is_root(r)) train_fail(r, "DIST_ERROR", "rank 0 could not start the job (its log says why)");
        return -1;
    }
    if (!r->spec->init) return 0; /* nothing merged: every rank holds the same spec (train_dist_check_spec) */
    if (!run_is_root(r)) {
        if (!(r->own_spec = malloc(sizeof *r->own_spec))) return train_fail(r, "OUT_OF_MEMORY", "out of memory"), -1;
        r->spec = r->own_spec;
    }
    if (tl_comm_bcast(r->comm, r->own_spec, sizeof *r->own_spec, 0) != 0)
        return train_fail(r, "DIST_ERROR", "rank 0's job spec did not reach this rank"), -1;
    r->init_now = hdr[1];
    return 0;
}

int train_dist_check_start(run *r) {
    if (!r->comm) return 0;
    const char *shared = "the data must be at the same path, with the same files, on every host";
    if (agree(r, "training files", hash_files(r->train_ds), shared) != 0) return -1;
    if (agree(r, "validation files", hash_files(r->val_ds), shared) != 0) return -1;
    char mine[HOST_LEN] = {0};
    snprintf(mine, sizeof mine, "%s", tl_comm_host(r->comm));
    char (*hosts)[HOST_LEN] = malloc((size_t)HOST_LEN * (size_t)r->ranks);
    const char **names = malloc(sizeof(char *) * (size_t)r->ranks);
    int rc = hosts && names && tl_comm_allgather(r->comm, mine, hosts, HOST_LEN) == 0 ? 0 : -1;
    if (rc == 0 && run_is_root(r)) {
        char line[1024];
        size_t len = (size_t)snprintf(line, sizeof line, "distributed: %d ranks, %d micro-batches of %d images per step; hosts",
                                      r->ranks, r->micro, r->mb);
        for (int k = 0; k < r->ranks; k++) {
            names[k] = hosts[k];
            if (len < sizeof line) len += (size_t)snprintf(line + len, sizeof line - len, "%s%s", k ? ", " : " ", hosts[k]);
        }
        train_log(r, "%s", line);
        tl_ranks_info info = {r->ranks, r->micro, names};
        if (r->hooks && r->hooks->on_ranks) r->hooks->on_ranks(&info, r->hooks->user);
    }
    free(hosts);
    free(names);
    if (rc != 0) train_fail(r, "DIST_ERROR", "the ranks could not exchange their host names");
    return rc;
}

/* Root's state fields, sent as one header. */
typedef struct {
    int64_t start;        /* the step to start at, -1: rank 0 failed */
    int64_t model_step;   /* AdamW's step count */
    int64_t bn[3], ema_bn[3];
    double best;
} state_hdr;

int64_t train_dist_share_state(run *r, int64_t root_step) {
    if (!r->comm) return root_step;
    state_hdr h = {.start = root_step, .model_step = tl_model_step(r->model), .best = r->best};
    for (int l = 0; l < 3; l++) {
        h.bn[l] = *tl_model_bn_batches(r->model, l);
        h.ema_bn[l] = r->ema ? *tl_model_bn_batches(r->ema, l) : 0;
    }
    if (tl_comm_bcast(r->comm, &h, sizeof h, 0) != 0)
        return train_fail(r, "DIST_ERROR", "rank 0's starting state did not reach this rank"), -1;
    if (h.start < 0) {
        if (!run_is_root(r)) train_fail(r, "DIST_ERROR", "rank 0 could not resume or initialise the job (its log says why)");
        return -1;
    }
    size_t bytes = 0, ema_bytes = 0;
    void *state = tl_model_state(r->model, &bytes), *ema_state = r->ema ? tl_model_state(r->ema, &ema_bytes) : NULL;
    if (tl_comm_bcast(r->comm, state, bytes, 0) != 0 || (ema_state && tl_comm_bcast(r->comm, ema_state, ema_bytes, 0) != 0))
        return train_fail(r, "DIST_ERROR", "rank 0's weights did not reach this rank"), -1;
    if (!run_is_root(r)) {
        tl_model_set_step(r->model, h.model_step);
        for (int l = 0; l < 3; l++) {
            *tl_model_bn_batches(r->model, l) = h.bn[l];
            if (r->ema) *tl_model_bn_batches(r->ema, l) = h.ema_bn[l];
        }
        r->best = h.best;
        r->res->best_top1 = h.best;
        if (train_apply_recipe(r) != 0) return -1;
    }
    uint64_t sum = hash_floats(state, bytes / sizeof(float));
    if (ema_state) sum ^= hash_floats(ema_state, ema_bytes / sizeof(float)) * 31u;
    if (agree(r, "weights", sum, "the broadcast of rank 0's state was corrupted") != 0) return -1;
    return h.start;
}
