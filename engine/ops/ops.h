/*
 * ops.h: the engine's layer kernels, one forward/backward pair per op, of
 * linear.c (GEMM on the pool, linear), conv.c (convolution; its row path on
 * the AVX-512 and AVX2 levels and Winograd in conv_rows.c and winograd.c,
 * conv_internal.h), batchnorm.c, stem_eval.c (the fused eval stem), patch.c,
 * transformer.c (LayerNorm, attention, GELU, residual, tokens, MixToken),
 * loss.c (soft cross entropy, inference score) and adamw.c. gemm_avx512.h
 * has the attention's AVX-512 products, gemm_avx2.h the AVX2 ones,
 * elementwise_avx2.h the AVX2 GELU, softmax and AdamW. Every op follows the
 * kernel level tl_isa() (core/simd.h, docs/ISA.md).
 *
 * Owns nothing: every buffer is the caller's. Outputs come first in each
 * signature, with a shape comment on every array. Row-major throughout.
 * Convolution activations are NHWC (B,H,W,C): im2col copies runs of C floats
 * and every stem GEMM has the channel dimension innermost.
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
#include "core/pool.h"

/* ---- GEMM on the pool: C = alpha * op(A) op(B) + beta * C (row-major) ---- */
void tl_gemm(tl_pool *p, int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
             const float *B, int ldb, float beta, float *C, int ldc);

/* ---- convolution without bias, NHWC output (B,Ho,Wo,Cout) ----
 * The input is NHWC (B,H,W,Cin), or NCHW (B,Cin,H,W) when in_nchw (the
 * images entering conv1; then no input gradient is computed). Weights are
 * packed (k,k,Cin,Cout) by tl_conv_weight_pack; the weight gradient dwt is
 * accumulated in that packed layout. */
size_t tl_conv2d_scratch(int nthreads, int Cin, int Cout, int Ho, int Wo, int k);
void tl_conv_weight_pack(float *wt /*(k,k,Cin,Cout)*/, const float *w /*(Cout,Cin,k,k)*/, int Cout, int Cin, int k);
/* dw += unpacked dwt */
void tl_conv_weight_unpack_accum(float *dw /*(Cout,Cin,k,k)*/, const float *dwt /*(k,k,Cin,Cout)*/, int Cout, int Cin,
                                 int k);
void tl_conv2d_forward(tl_pool *p, float *out /*(B,Ho,Wo,Cout)*/, const float *in /*(B,H,W,Cin) or (B,Cin,H,W)*/,
                       int in_nchw, const float *wt /*(k,k,Cin,Cout)*/, int B, int Cin, int H, int W, int Cout, int k,
                       int stride, int pad, float *scratch);
/* din (NHWC, overwritten; ignored when in_nchw) may be NULL; dwt accumulated. */
void tl_conv2d_backward(tl_pool *p, float *din /*(B,H,W,Cin) or NULL*/, float *dwt /*(k,k,Cin,Cout)*/,
                        const float *dout /*(B,Ho,Wo,Cout)*/, const float *in, int in_nchw, const float *wt, int B,
                        int Cin, int H, int W, int Cout, int k, int stride, int pad, float *scratch);
static inline int tl_conv_out(int n, int k, int stride, int pad) { return (n + 2 * pad - k) / stride + 1; }

/* ---- BatchNorm (+ optional ReLU) over NHWC rows: x (M,C), M = B*H*W ----
 * train: batch statistics (biased variance to normalise), running statistics
 * updated with momentum and the unbiased variance; eval: running statistics.
 * mean/rstd receive the statistics used (needed by backward). */
size_t tl_bn_scratch(int nthreads, int C);
void tl_bn_forward(tl_pool *p, float *y /*(M,C)*/, float *mean /*(C)*/, float *rstd /*(C)*/, const float *x /*(M,C)*/,
                   const float *gamma /*(C)*/, const float *beta /*(C)*/, float *run_mean /*(C)*/,
                   float *run_var /*(C)*/, int C, size_t M, int train, float momentum, float eps, int relu,
                   float *scratch);
/* Train-mode backward. y is the forward output (for the ReLU mask). dx may
 * alias dy. */
void tl_bn_backward(tl_pool *p, float *dx /*(M,C)*/, float *dgamma /*(C)*/, float *dbeta /*(C)*/,
                    const float *dy /*(M,C)*/, const float *x /*(M,C)*/, const float *y /*(M,C)*/,
                    const float *mean /*(C)*/, const float *rstd /*(C)*/, const float *gamma /*(C)*/, int C, size_t M,
                    int relu, float *scratch);

/* ---- eval-mode stem, fused (see stem_eval.c): three convolutions with
 * BatchNorm (running statistics) folded into weights and bias, ReLU, and the
 * patch gather, row by row per image so activations stay in cache. Writes the
 * same patch matrix as tl_patch_gather after the unfused stem. */
size_t tl_stem_eval_scratch(int nthreads, int C, int W1);
/* first: conv1 packed (Cin,k,k,Cout); else (k,k,Cin,Cout). */
void tl_stem_eval_fold(float *wt, float *bias /*(Cout)*/, const float *w /*(Cout,Cin,k,k)*/, const float *gamma,
                       const float *beta, const float *rmean, const float *rvar, int Cout, int Cin, int k, int first,
                       float eps);
void tl_stem_eval_forward(tl_pool *p, float *patches /*(B*g*g, k*k*C)*/, const float *images /*(B,3,H,H)*/,
                          const float *w1 /*(3,7,7,C)*/, const float *b1, const float *w2 /*(3,3,C,C)*/,
                          const float *b2, const float *w3, const float *b3, int B, int C, int H, int k,
                          float *scratch);

/* ---- non-overlapping patches (kernel = stride = k) of an NHWC map ---- */
/* patches row (b, ty, tx), columns (ky, kx, c); the projection weight is used
 * packed the same way (tl_patch_weight_pack). */
void tl_patch_gather(tl_pool *p, float *patches /*(B*g*g, k*k*C)*/, const float *x /*(B,H,W,C)*/, int B, int C, int H,
                     int W, int k);
void tl_patch_scatter(tl_pool *p, float *dx /*(B,H,W,C)*/, const float *dpatches /*(B*g*g, k*k*C)*/, int B, int C,
                      int H, int W, int k);
void tl_patch_weight_pack(float *wp /*(D, k*k*C)*/, const float *w /*(D,C,k,k)*/, int D, int C, int k);
void tl_patch_weight_unpack_accum(float *dw /*(D,C,k,k)*/, const float *dwp /*(D, k*k*C)*/, int D, int C, int k);

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
/* Eval only: the same up to float rounding, vectorised sums. */
void tl_layernorm_forward_eval(tl_pool *p, float *out /*(M,D)*/, float *mean /*(M)*/, float *rstd /*(M)*/,
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
size_t tl_attention_scratch(int nthreads, int T, int hd);
/* Eval only: the same output without keeping the probabilities (scratch from
 * tl_attention_scratch). */
void tl_attention_forward_eval(tl_pool *p, float *out /*(B,T,D)*/, const float *qkv /*(B,T,3D)*/, int B, int T, int D,
                               int H, float *scratch);
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
