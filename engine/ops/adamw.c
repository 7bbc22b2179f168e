/*
 * adamw.c: the AdamW update of one parameter block (PyTorch semantics,
 * tl_adamw_update): decoupled weight decay, bias-corrected moments.
 *
 * Owns nothing; blocks of 65536 floats or more are split over the pool's
 * threads, each element updated by one thread with the same arithmetic
 * whatever the split. At the AVX2 and AVX-512 levels (tl_isa()) the update
 * runs on elementwise_avx2.c's kernel; the plain loop is the generic level's.
 */
#include "ops/elementwise_avx2.h"
#include "ops/ops.h"
#include "core/simd.h"

#include <math.h>

typedef struct {
    float *p, *m, *v;
    const float *g;
    size_t n;
    float lr, b1, b2, eps, wd, step_size, bc2_sqrt;
} adamw_job;

/* The plain loop: the generic level's (sqrtf keeps it scalar); the AVX2 and
 * AVX-512 levels run elementwise_avx2.c's kernel, the same operations. */
static void adamw_part(void *arg, int tid, int nt) {
    adamw_job *j = arg;
    size_t lo, hi;
    tl_split(j->n, tid, nt, &lo, &hi);
    float decay = 1.0f - j->lr * j->wd;
#if defined(__x86_64__)
    if (tl_isa() >= TL_ISA_AVX2) {
        tl_adamw_avx2(j->p + lo, j->m + lo, j->v + lo, j->g + lo, hi - lo, decay, j->b1, j->b2, j->eps, j->step_size,
                      j->bc2_sqrt);
        return;
    }
#endif
    for (size_t i = lo; i < hi; i++) {
        float g = j->g[i];
        float p = j->p[i] * decay;
        float m = j->m[i] * j->b1 + (1.0f - j->b1) * g;
        float v = j->v[i] * j->b2 + (1.0f - j->b2) * g * g;
        float denom = sqrtf(v) / j->bc2_sqrt + j->eps;
        j->p[i] = p - j->step_size * (m / denom);
        j->m[i] = m;
        j->v[i] = v;
    }
}

void tl_adamw_update(tl_pool *p, float *param, const float *grad, float *m, float *v, size_t n, float lr, float beta1,
                     float beta2, float eps, float weight_decay, int64_t t) {
    double bc1 = 1.0 - pow(beta1, (double)t), bc2 = 1.0 - pow(beta2, (double)t);
    adamw_job j = {param, m, v, grad, n, lr, beta1, beta2, eps, weight_decay, (float)(lr / bc1), (float)sqrt(bc2)};
    if (n < 65536)
        adamw_part(&j, 0, 1);
    else
        tl_pool_run(p, adamw_part, &j);
}
