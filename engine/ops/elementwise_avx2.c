/*
 * elementwise_avx2.c: see elementwise_avx2.h.
 *
 * 8 floats a step; the last n % 8 go through the same arithmetic with masked
 * loads and stores, so every element gets the same formula. GELU's gradient
 * takes exp(-x^2/2) from the erf it computes anyway (erf(x/sqrt 2) uses
 * exp(-(x/sqrt 2)^2)): one exp per element, not two.
 *
 * Owns nothing; any thread.
 */
#include "ops/elementwise_avx2.h"

#if defined(__x86_64__)
#include "core/simd.h"

#include <immintrin.h>
#include <math.h>

/* Lanes [0, m) of 8 set: the mask of a tail of m < 8 elements. */
static inline __attribute__((always_inline, target("avx2,fma"))) __m256i tail_mask(size_t m) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)m), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static inline __attribute__((always_inline, target("avx2,fma"))) __m256 gelu8(__m256 x) {
    __m256 e, erf = tl_erff_avx2(_mm256_mul_ps(x, _mm256_set1_ps((float)M_SQRT1_2)), &e);
    return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), _mm256_add_ps(_mm256_set1_ps(1.0f), erf));
}

__attribute__((target("avx2,fma"))) void tl_gelu_forward_avx2(float *out, const float *x, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, gelu8(_mm256_loadu_ps(x + i)));
    if (i < n) {
        __m256i m = tail_mask(n - i);
        _mm256_maskstore_ps(out + i, m, gelu8(_mm256_maskload_ps(x + i, m)));
    }
}

/* dout * (cdf + x pdf), pdf = exp(-x^2/2) / sqrt(2 pi) */
static inline __attribute__((always_inline, target("avx2,fma"))) __m256 gelu_grad8(__m256 x, __m256 d) {
    __m256 e, erf = tl_erff_avx2(_mm256_mul_ps(x, _mm256_set1_ps((float)M_SQRT1_2)), &e);
    __m256 cdf = _mm256_mul_ps(_mm256_set1_ps(0.5f), _mm256_add_ps(_mm256_set1_ps(1.0f), erf));
    __m256 pdf = _mm256_mul_ps(_mm256_set1_ps(0.3989422804014327f), e);
    return _mm256_mul_ps(d, _mm256_fmadd_ps(x, pdf, cdf));
}

__attribute__((target("avx2,fma"))) void tl_gelu_backward_avx2(float *dx, const float *x, const float *dout,
                                                               size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dx + i, gelu_grad8(_mm256_loadu_ps(x + i), _mm256_loadu_ps(dout + i)));
    if (i < n) {
        __m256i m = tail_mask(n - i);
        _mm256_maskstore_ps(dx + i, m, gelu_grad8(_mm256_maskload_ps(x + i, m), _mm256_maskload_ps(dout + i, m)));
    }
}

static inline __attribute__((always_inline, target("avx2,fma"))) float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

static inline __attribute__((always_inline, target("avx2,fma"))) float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) void tl_softmax_rows_avx2(float *a, int rows, int cols, size_t ld) {
    size_t n = cols > 0 ? (size_t)cols : 0, nv = n & ~(size_t)7;
    __m256i m = tail_mask(n - nv);
    __m256 ninf = _mm256_set1_ps(-INFINITY);
    for (int r = 0; r < rows; r++) {
        float *x = a + (size_t)r * ld;
        __m256 mx = ninf;
        for (size_t i = 0; i < nv; i += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(x + i));
        if (nv < n) mx = _mm256_max_ps(mx, _mm256_blendv_ps(ninf, _mm256_maskload_ps(x + nv, m), _mm256_castsi256_ps(m)));
        __m256 vmax = _mm256_set1_ps(hmax8(mx)), s = _mm256_setzero_ps();
        for (size_t i = 0; i < nv; i += 8) {
            __m256 e = tl_expf_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmax));
            _mm256_storeu_ps(x + i, e);
            s = _mm256_add_ps(s, e);
        }
        if (nv < n) {
            __m256 e = tl_expf_avx2(_mm256_sub_ps(_mm256_maskload_ps(x + nv, m), vmax));
            e = _mm256_and_ps(e, _mm256_castsi256_ps(m));
            _mm256_maskstore_ps(x + nv, m, e);
            s = _mm256_add_ps(s, e);
        }
        __m256 inv = _mm256_set1_ps(1.0f / hsum8(s));
        for (size_t i = 0; i < nv; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
        if (nv < n) _mm256_maskstore_ps(x + nv, m, _mm256_mul_ps(_mm256_maskload_ps(x + nv, m), inv));
    }
}

/* One step of 8 (or fewer, masked) elements; the scalar loop's operations in its order. */
static inline __attribute__((always_inline, target("avx2,fma"))) void adamw8(__m256 *p, __m256 *m, __m256 *v, __m256 g,
                                                                             __m256 decay, __m256 b1, __m256 b2,
                                                                             __m256 eps, __m256 step, __m256 bc2) {
    __m256 one = _mm256_set1_ps(1.0f);
    __m256 pd = _mm256_mul_ps(*p, decay);
    __m256 mn = _mm256_fmadd_ps(*m, b1, _mm256_mul_ps(_mm256_sub_ps(one, b1), g));
    __m256 vn = _mm256_fmadd_ps(*v, b2, _mm256_mul_ps(_mm256_mul_ps(_mm256_sub_ps(one, b2), g), g));
    __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vn), bc2), eps);
    *p = _mm256_fnmadd_ps(step, _mm256_div_ps(mn, denom), pd);
    *m = mn;
    *v = vn;
}

__attribute__((target("avx2,fma"))) void tl_adamw_avx2(float *p, float *m, float *v, const float *g, size_t n,
                                                       float decay, float b1, float b2, float eps, float step,
                                                       float bc2) {
    __m256 vd = _mm256_set1_ps(decay), vb1 = _mm256_set1_ps(b1), vb2 = _mm256_set1_ps(b2), ve = _mm256_set1_ps(eps);
    __m256 vs = _mm256_set1_ps(step), vc = _mm256_set1_ps(bc2);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 pv = _mm256_loadu_ps(p + i), mv = _mm256_loadu_ps(m + i), vv = _mm256_loadu_ps(v + i);
        adamw8(&pv, &mv, &vv, _mm256_loadu_ps(g + i), vd, vb1, vb2, ve, vs, vc);
        _mm256_storeu_ps(p + i, pv);
        _mm256_storeu_ps(m + i, mv);
        _mm256_storeu_ps(v + i, vv);
    }
    if (i < n) {
        __m256i k = tail_mask(n - i);
        __m256 pv = _mm256_maskload_ps(p + i, k), mv = _mm256_maskload_ps(m + i, k), vv = _mm256_maskload_ps(v + i, k);
        adamw8(&pv, &mv, &vv, _mm256_maskload_ps(g + i, k), vd, vb1, vb2, ve, vs, vc);
        _mm256_maskstore_ps(p + i, k, pv);
        _mm256_maskstore_ps(m + i, k, mv);
        _mm256_maskstore_ps(v + i, k, vv);
    }
}

#endif
