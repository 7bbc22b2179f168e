/*
 * loss.c: soft-target cross entropy and the LV-ViT inference score.
 *
 * Owns nothing. The loss is summed per thread in double and the partials are
 * added in thread order, so it is deterministic for a given thread count.
 */
#include "ops/ops.h"
#include "core/simd.h"

#include <math.h>

#define TL_MAX_THREADS 256

typedef struct {
    float *dlogits;
    const float *logits, *target;
    int M, K, group;
    float grad_scale;
    double partial[TL_MAX_THREADS];
} ce_job;

static void ce_part(void *arg, int tid, int nt) {
    ce_job *j = arg;
    size_t lo, hi;
    tl_split((size_t)j->M, tid, nt, &lo, &hi);
    double acc = 0.0;
    float gs = j->grad_scale / (float)j->M;
    for (size_t r = lo; r < hi; r++) {
        const float *x = j->logits + r * j->K, *t = j->target + (r / (size_t)j->group) * j->K;
        float mx = x[0];
        for (int c = 1; c < j->K; c++) mx = x[c] > mx ? x[c] : mx;
        double se = 0.0;
        for (int c = 0; c < j->K; c++) se += exp((double)x[c] - mx);
        double lse = mx + log(se), tsum = 0.0, row = 0.0;
        for (int c = 0; c < j->K; c++) {
            tsum += t[c];
            row -= (double)t[c] * ((double)x[c] - lse);
        }
        acc += row;
        if (!j->dlogits) continue;
        float *d = j->dlogits + r * j->K;
        for (int c = 0; c < j->K; c++) {
            double sm = exp((double)x[c] - lse);
            d[c] = gs * (float)(tsum * sm - t[c]);
        }
    }
    j->partial[tid] = acc;
}

double tl_soft_ce(tl_pool *p, float *dlogits, const float *logits, const float *target, int M, int K, int group,
                  float grad_scale) {
    if (M <= 0) return 0.0;
    ce_job j = {.dlogits = dlogits, .logits = logits, .target = target, .M = M, .K = K,
                .group = group > 0 ? group : 1, .grad_scale = grad_scale};
    int nt = tl_pool_size(p);
    if (nt > TL_MAX_THREADS) nt = TL_MAX_THREADS;
    if (M < 4 * nt) {
        ce_part(&j, 0, 1);
        return j.partial[0] / M;
    }
    tl_pool_run(p, ce_part, &j);
    double s = 0.0;
    for (int t = 0; t < nt; t++) s += j.partial[t];
    return s / M;
}

void tl_inference_score(float *score, const float *cls, const float *aux, int B, int N, int K) {
    for (int b = 0; b < B; b++) {
        float *s = score + (size_t)b * K;
        const float *a = aux + (size_t)b * N * K;
        for (int k = 0; k < K; k++) s[k] = a[k];
        for (int n = 1; n < N; n++)
            for (int k = 0; k < K; k++) s[k] = a[(size_t)n * K + k] > s[k] ? a[(size_t)n * K + k] : s[k];
        for (int k = 0; k < K; k++) s[k] = cls[(size_t)b * K + k] + 0.5f * s[k];
    }
}
