/*
 * micro.c: a model's gradient block and state as flat buffers, and the
 * running BatchNorm statistics of a step over micro-batches (see micro.h).
 * Owns nothing; called from the training thread.
 */
#include "model/micro.h"

#include "model/model_internal.h"

#include <string.h>

float *tl_model_grad_vector(tl_model *m, size_t *n) {
    if (m->nblocks != 4) return NULL;
    *n = m->nfloats;
    return m->mem + m->nfloats;
}

void *tl_model_state(tl_model *m, size_t *bytes) {
    *bytes = sizeof(float) * m->nfloats * (size_t)m->nblocks;
    return m->mem;
}

size_t tl_model_bn_floats(const tl_model *m) { return (size_t)6 * m->cfg.stem_channels; }

int tl_model_bn_trains(const tl_model *m) { return m->freeze == TL_FREEZE_NONE; }

void tl_model_bn_save(const tl_model *m, float *dst, int64_t counters[3]) {
    size_t C = (size_t)m->cfg.stem_channels;
    for (int l = 0; l < 3; l++) {
        memcpy(dst + (2 * l) * C, m->wt[0].bn_rm[l], sizeof(float) * C);
        memcpy(dst + (2 * l + 1) * C, m->wt[0].bn_rv[l], sizeof(float) * C);
        counters[l] = m->bn_batches[l];
    }
}

void tl_model_bn_restore(tl_model *m, const float *src, const int64_t counters[3]) {
    size_t C = (size_t)m->cfg.stem_channels;
    for (int l = 0; l < 3; l++) {
        memcpy(m->wt[0].bn_rm[l], src + (2 * l) * C, sizeof(float) * C);
        memcpy(m->wt[0].bn_rv[l], src + (2 * l + 1) * C, sizeof(float) * C);
        m->bn_batches[l] = counters[l];
    }
}

void tl_model_bn_to_grads(tl_model *m) {
    size_t C = (size_t)m->cfg.stem_channels;
    if (TL_NEVER(m->nblocks != 4)) return;
    for (int l = 0; l < 3; l++) {
        memcpy(m->wt[1].bn_rm[l], m->wt[0].bn_rm[l], sizeof(float) * C);
        memcpy(m->wt[1].bn_rv[l], m->wt[0].bn_rv[l], sizeof(float) * C);
    }
}

void tl_model_bn_from_grads(tl_model *m, int micro, const int64_t counters[3]) {
    int C = m->cfg.stem_channels;
    if (TL_NEVER(m->nblocks != 4 || micro < 1)) return;
    for (int l = 0; l < 3; l++) {
        for (int c = 0; c < C; c++) {
            m->wt[0].bn_rm[l][c] = m->wt[1].bn_rm[l][c] / (float)micro;
            m->wt[0].bn_rv[l][c] = m->wt[1].bn_rv[l][c] / (float)micro;
        }
        m->bn_batches[l] = counters[l] + 1;
    }
}
