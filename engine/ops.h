/*
 * ops.h: the engine's layer kernels, one forward/backward pair per op.
 *
 * Owns nothing: every buffer is the caller's. Outputs come first in each
 * signature, with a shape comment on every array. Row-major throughout.
 * Convolution activations use a channel-major layout (C,B,H,W) so that a
 * BatchNorm channel is one contiguous run over the whole batch.
 *
 * Threads: each op splits its work over the pool's threads for the duration
 * of the call (pool may be NULL: then the calling thread does everything).
 * BLAS is called single-threaded from each pool thread.
 *
 * Backward conventions: parameter gradients (dw, db, dgamma, ...) are
 * accumulated (+=). Input gradients are overwritten (=) unless the name says
 * _accum. The scratch argument, where present, must hold the number of floats
 * returned by the matching *_scratch() function.
 */
#ifndef TL_OPS_H
#define TL_OPS_H

#include <stddef.h>
#include <stdint.h>
#include "pool.h"

/* ---- GEMM on the pool: C = alpha * op(A) op(B) + beta * C (row-major) ---- */
void tl_gemm(tl_pool *p, int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
             const float *B, int ldb, float beta, float *C, int ldc);

/* ---- convolution without bias, output channel-major (Cout,B,Ho,Wo) ----
 * The input is addressed as in[c*in_cstride + b*in_bstride + y*W + x], so it
 * can be NCHW (cstride H*W, bstride C*H*W) or channel-major (cstride B*H*W,
 * bstride H*W). din, when not NULL, uses the same layout as in. */
size_t tl_conv2d_scratch(int nthreads, int Cin, int Cout, int Ho, int Wo, int k);
void tl_conv2d_forward(tl_pool *p, float *out /*(Cout,B,Ho,Wo)*/, const float *in /*(Cin,B,H,W) strided*/,
                       int in_cstride, int in_bstride, const float *w /*(Cout,Cin,k,k)*/, int B, int Cin, int H,
                       int W, int Cout, int k, int stride, int pad, float *scratch);
void tl_conv2d_backward(tl_pool *p, float *din /*(Cin,B,H,W) strided or NULL*/, float *dw /*(Cout,Cin,k,k)*/,
                        const float *dout /*(Cout,B,Ho,Wo)*/, const float *in, int in_cstride, int in_bstride,
                        const float *w, int B, int Cin, int H, int W, int Cout, int k, int stride, int pad,
                        float *scratch);
static inline int tl_conv_out(int n, int k, int stride, int pad) { return (n + 2 * pad - k) / stride + 1; }

/* ---- BatchNorm (+ optional ReLU) over channel-major (C,M), M = B*H*W ----
 * train: batch statistics (biased variance to normalise), running statistics
 * updated with momentum and the unbiased variance; eval: running statistics.
 * mean/rstd receive the statistics used (needed by backward). */
void tl_bn_forward(tl_pool *p, float *y /*(C,M)*/, float *mean /*(C)*/, float *rstd /*(C)*/, const float *x /*(C,M)*/,
                   const float *gamma /*(C)*/, const float *beta /*(C)*/, float *run_mean /*(C)*/,
                   float *run_var /*(C)*/, int C, size_t M, int train, float momentum, float eps, int relu);
/* Train-mode backward. y is the forward output (for the ReLU mask). dx may
 * alias dy. */
void tl_bn_backward(tl_pool *p, float *dx /*(C,M)*/, float *dgamma /*(C)*/, float *dbeta /*(C)*/,
                    const float *dy /*(C,M)*/, const float *x /*(C,M)*/, const float *y /*(C,M)*/,
                    const float *mean /*(C)*/, const float *rstd /*(C)*/, const float *gamma /*(C)*/, int C, size_t M,
                    int relu);

/* ---- non-overlapping patches (kernel = stride = k) of a channel-major map ---- */
/* patches row (b, ty, tx), column (c, ky, kx): the layout of a conv weight. */
void tl_patch_gather(tl_pool *p, float *patches /*(B*g*g, C*k*k)*/, const float *x /*(C,B,H,W)*/, int B, int C,
                     int H, int W, int k);
void tl_patch_scatter(tl_pool *p, float *dx /*(C,B,H,W)*/, const float *dpatches /*(B*g*g, C*k*k)*/, int B, int C,
                      int H, int W, int k);

/* ---- linear layer: out = in W^T + b ---- */
void tl_linear_forward(tl_pool *p, float *out /*(M,N) ld ldo*/, int ldo, const float *in /*(M,K) ld ldi*/, int ldi,
                       const float *w /*(N,K)*/, const float *b /*(N) or NULL*/, int M, int K, int N);
/* din (if not NULL) overwritten, dw/db accumulated. */
void tl_linear_backward(tl_pool *p, float *din /*(M,K) ld ldi or NULL*/, float *dw /*(N,K)*/, float *db /*(N)*/,
                        const float *dout /*(M,N) ld ldo*/, int ldo, const float *in /*(M,K) ld ldi*/, int ldi,
                        const float *w /*(N,K)*/, int M, int K, int N);

/* ---- LayerNorm over the last dimension ---- */
void tl_layernorm_forward(tl_pool *p, float *out /*(M,D)*/, float *mean /*(M)*/, float *rstd /*(M)*/,
                          const float *x /*(M,D)*/, const float *w /*(D)*/, const float *b /*(D)*/, int M, int D,
                          float eps);
size_t tl_layernorm_scratch(int nthreads, int D);
/* dx is accumulated into (+=): it is the residual stream's gradient. */
void tl_layernorm_backward(tl_pool *p, float *dx_accum /*(M,D)*/, float *dw /*(D)*/, float *db /*(D)*/,
                           const float *dout /*(M,D)*/, const float *x /*(M,D)*/, const float *w /*(D)*/,
                           const float *mean /*(M)*/, const float *rstd /*(M)*/, int M, int D, float *scratch);

/* ---- multi-head self-attention core (qkv projection and output proj are
 * linear layers around it). qkv rows are [q | k | v], each heads x hd. ---- */
void tl_attention_forward(tl_pool *p, float *out /*(B,T,D)*/, float *att /*(B,H,T,T)*/, const float *qkv /*(B,T,3D)*/,
                          int B, int T, int D, int H);
size_t tl_attention_scratch(int nthreads, int T);
void tl_attention_backward(tl_pool *p, float *dqkv /*(B,T,3D)*/, const float *dout /*(B,T,D)*/,
                           const float *qkv /*(B,T,3D)*/, const float *att /*(B,H,T,T)*/, int B, int T, int D, int H,
                           float *scratch);

/* ---- exact (erf) GELU ---- */
void tl_gelu_forward(tl_pool *p, float *out /*(n)*/, const float *x /*(n)*/, size_t n);
/* dx = dout * gelu'(x); dx may alias dout. */
void tl_gelu_backward(tl_pool *p, float *dx /*(n)*/, const float *x /*(n)*/, const float *dout /*(n)*/, size_t n);

/* ---- residual with drop path and skip scaling:
 * x[b] += branch[b] * scale[b] * inv_skip, scale NULL means 1 ---- */
void tl_residual_forward(tl_pool *p, float *x /*(B,S)*/, const float *branch /*(B,S)*/, const float *scale /*(B)*/,
                         float inv_skip, int B, size_t S);
/* dbranch = dx * scale[b] * inv_skip (overwritten) */
void tl_residual_backward(tl_pool *p, float *dbranch /*(B,S)*/, const float *dx /*(B,S)*/, const float *scale /*(B)*/,
                          float inv_skip, int B, size_t S);
/* Per-sample drop path scales: 0 with probability rate, else 1/(1-rate). */
void tl_drop_path_scales(float *scale /*(B)*/, int B, float rate, uint64_t seed);

/* ---- token assembly: x = [cls; patch tokens] + pos ---- */
void tl_tokens_forward(tl_pool *p, float *x /*(B,N+1,D)*/, const float *tokens /*(B,N,D)*/, const float *cls /*(D)*/,
                       const float *pos /*(N+1,D)*/, int B, int N, int D);
/* dtokens overwritten; dcls, dpos accumulated. */
void tl_tokens_backward(tl_pool *p, float *dtokens /*(B,N,D)*/, float *dcls /*(D)*/, float *dpos /*(N+1,D)*/,
                        const float *dx /*(B,N+1,D)*/, int B, int N, int D);

/* ---- MixToken: swap the box's tokens between samples i and B-1-i, in place.
 * It is its own inverse, so it mixes, un-mixes and routes gradients. ---- */
void tl_mixtoken_swap(float *x /*(B,g*g,C)*/, int B, int g, int C, int r0, int c0, int r1, int c1);
/* lambda of the class target for a box: 1 - area/N (1 for an empty box). */
float tl_mixtoken_lambda(int g, int r0, int c0, int r1, int c1);

/* ---- soft-target cross entropy ----
 * loss = mean over M rows of sum_c -t_c log_softmax(logits)_c. Row r uses
 * target row r / group (group 1: one target per row; group N: per image).
 * When dlogits is not NULL it receives grad_scale * (softmax - t) / M.
 * Returns the mean loss (double accumulation). */
double tl_soft_ce(tl_pool *p, float *dlogits /*(M,K) or NULL*/, const float *logits /*(M,K)*/,
                  const float *target /*(M/group,K)*/, int M, int K, int group, float grad_scale);

/* ---- inference score: cls + 0.5 * max over tokens of aux ---- */
void tl_inference_score(float *score /*(B,K)*/, const float *cls /*(B,K)*/, const float *aux /*(B,N,K)*/, int B, int N,
                        int K);

/* ---- AdamW (PyTorch semantics), step t >= 1 ---- */
void tl_adamw_update(tl_pool *p, float *param /*(n)*/, const float *grad /*(n)*/, float *m /*(n)*/, float *v /*(n)*/,
                     size_t n, float lr, float beta1, float beta2, float eps, float weight_decay, int64_t t);

#endif
