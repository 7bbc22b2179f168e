/*
 * model.h: the LV-ViT model of the engine: its configuration
 * (engine/model/config.c), parameters, AdamW and EMA (model.c), batch
 * contexts and their profiles (ctx.c), the forward pass, token-labeling
 * loss and prediction (forward.c), the backward pass (backward.c),
 * checkpoints in safetensors (checkpoint.c), the copy of weights to another
 * input size (resize.c), and the runtime: BLAS and CPU features
 * (engine/core/blas.c).
 *
 * Threads: a tl_model and the tl_ctx built on it belong to one caller thread
 * at a time; each tl_ctx owns a pool of worker threads that it drives for the
 * duration of one call. Two contexts on two different models may run
 * concurrently (OpenBLAS is always called single-threaded by the engine).
 * Errors follow tokenlab.h: 0 or -1 with a message in err (TL_ERR_LEN bytes
 * is always enough).
 */
#ifndef TL_MODEL_H
#define TL_MODEL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TL_ERR_LEN 512
#define TL_VERSION "0.1.0"

/* ---- configuration ---- */
typedef struct {
    int img_size;        /* input side in pixels, divisible by patch_size */
    int patch_size;      /* even; the stem has stride 2, proj kernel = stride = patch/2 */
    int embed_dim;       /* D, divisible by num_heads */
    int depth;           /* number of transformer blocks */
    int num_heads;
    float mlp_ratio;     /* MLP hidden = (int)(embed_dim * mlp_ratio) */
    int stem_channels;   /* C of the convolutional stem */
    float skip_lam;      /* residual branches are divided by this */
    int num_classes;     /* K */
    float drop_path_rate;/* max stochastic depth rate, linear over blocks */
} tl_config;

/* Fills *out with a preset: lvvit_t, lvvit_s, lvvit_m, lvvit_l (ImageNet sizes,
 * 224 px, 1000 classes; lvvit_l at 448). Returns -1 for an unknown name. */
int tl_config_preset(const char *name, tl_config *out);
/* Names of the presets, NULL-terminated. */
const char *const *tl_config_preset_names(void);
/* Checks every field; on error names the field and the rule. */
int tl_config_validate(const tl_config *c, char *err, size_t errlen);
/* Parses a JSON object of config fields. When it holds "preset", that preset is
 * the base and the other fields override it; otherwise every field is required.
 * Unknown fields are refused. The result is validated. */
int tl_config_from_json(const char *json, tl_config *out, char *err, size_t errlen);
/* Writes the config as a JSON object (all fields) into buf; returns the length
 * or -1 when buf is too small. */
int tl_config_to_json(const tl_config *c, char *buf, size_t buflen);
/* Derived sizes. */
int tl_config_grid(const tl_config *c);        /* g = img_size / patch_size */
int tl_config_tokens(const tl_config *c);      /* N = g*g */
int tl_config_hidden(const tl_config *c);      /* MLP hidden */
/* Forward FLOPs of one image (2 per multiply-add), training step ~ 3x this. */
double tl_config_forward_flops(const tl_config *c);

/* ---- model: parameters, gradients, optimizer state ---- */
typedef struct tl_model tl_model;
typedef struct tl_ctx tl_ctx;

typedef enum { TL_TENSOR_PARAM = 0, TL_TENSOR_BUFFER = 1 } tl_tensor_kind;

typedef struct {
    const char *name;     /* PyTorch state_dict name */
    tl_tensor_kind kind;  /* parameters get gradients; buffers are BN running stats */
    int ndim;
    int64_t shape[4];
    size_t numel;
    float *data;          /* into the model's parameter block */
    float *grad;          /* NULL for buffers */
    float *m, *v;         /* AdamW moments, NULL for buffers */
    int decay;            /* 1 when weight decay applies */
    size_t offset;        /* floats from the start of the parameter block */
    float lr_scale;       /* AdamW's lr is multiplied by this (layer-wise decay); 1 by default */
    int frozen;           /* 1: no gradient, no AdamW update, no weight decay (tl_model_set_freeze) */
} tl_tensor;

/* Allocates and initialises a model (section 2 init) from a seed. */
tl_model *tl_model_new(const tl_config *c, uint64_t seed, char *err, size_t errlen);
/* A trainable model whose weights are all zero, for a caller that fills every one of them at once
 * (tl_model_init_from, a checkpoint): it skips tl_model_new's random initialisation. */
tl_model *tl_model_new_blank(const tl_config *c, char *err, size_t errlen);
/* A model of weights only, for inference: no gradients, no optimizer moments (a quarter of the
 * memory of tl_model_new). Weights start at zero: load a checkpoint. Eval contexts only: a training
 * context on it is refused; zero_grad and AdamW do nothing. */
tl_model *tl_model_new_inference(const tl_config *c, char *err, size_t errlen);
int tl_model_trainable(const tl_model *m);          /* 1 for tl_model_new, 0 for an inference model */
/* Frees the model and its one parameter block; NULL is allowed. No context built on it may remain. */
void tl_model_free(tl_model *m);
/* The validated configuration the model was built with (owned by the model). */
const tl_config *tl_model_config(const tl_model *m);
/* The tensor table, in state_dict order: parameters and BatchNorm buffers. */
int tl_model_num_tensors(const tl_model *m);
/* Tensor i, 0 <= i < tl_model_num_tensors (NULL outside that range). */
const tl_tensor *tl_model_tensor(const tl_model *m, int i);
/* The tensor of that state_dict name, or NULL. */
const tl_tensor *tl_model_find(const tl_model *m, const char *name);
size_t tl_model_num_params(const tl_model *m);      /* trainable scalars */
int64_t *tl_model_bn_batches(tl_model *m, int layer); /* num_batches_tracked, layer 0..2 */
void tl_model_zero_grad(tl_model *m);
/* ema = decay * ema + (1 - decay) * m over parameters and BN statistics
 * (ctx: whose pool to use, may be NULL). Same config required (-1 otherwise). */
int tl_model_ema_update(tl_model *ema, const tl_model *m, float decay, tl_ctx *ctx);
/* Copies parameters and BN statistics (not gradients or moments). */
int tl_model_copy_weights(tl_model *dst, const tl_model *src);
/* A copy of src's weights into dst, whose config may differ from src's only in img_size: the
 * position embedding of the patch tokens is resampled bicubically (PyTorch's
 * F.interpolate(mode="bicubic", align_corners=False), as timm's resample_abs_pos_embed), the class
 * token's kept. -1 with a message when the configs differ otherwise. */
int tl_model_copy_resized(tl_model *dst, const tl_model *src, char *err, size_t errlen);
/* Bytes held by parameters, gradients and optimizer state. */
size_t tl_model_bytes(const tl_model *m);

/* ---- fine-tuning: starting from trained weights (engine/model/finetune.c) ---- */

typedef enum { TL_HEAD_REINIT = 0, TL_HEAD_KEEP = 1, TL_HEAD_MATCH = 2 } tl_head_mode;

typedef struct {
    int pos_resized;      /* 1 when the patch tokens' position embedding was resampled */
    int src_grid, dst_grid;
    int head_rows_kept;   /* rows of head/aux_head taken from the source (K for KEEP, the matches for MATCH) */
    int head_rows_new;    /* rows drawn afresh */
} tl_init_report;

/* Copies the weights of src (any model, e.g. an inference model loaded from a checkpoint) into dst, a
 * trainable model, to fine-tune it. The configs may differ only in img_size (the position embedding of
 * the patch tokens is resampled bicubically as tl_model_copy_resized does, the class token's entry kept;
 * patch_size must be equal), num_classes and drop_path_rate; any other difference is refused (-1, the
 * message names the field and both values, e.g. "embed_dim: 192 in the source, 384 here"). BatchNorm
 * running statistics and num_batches_tracked are copied. Heads (head.*, aux_head.*): TL_HEAD_KEEP copies
 * them (the class counts must be equal); TL_HEAD_REINIT draws them afresh (weights truncated normal with
 * std 0.02, bias 0, from seed, as the official fine-tuning does); TL_HEAD_MATCH copies row class_map[k] of
 * src into row k of dst where class_map[k] >= 0 (class_map has dst's num_classes entries, each -1 or a
 * source class) and draws the other rows afresh. Fresh heads come from a stream of their own derived from
 * seed (head.weight, head.bias, aux_head.weight, aux_head.bias in that order), so MATCH's unmatched rows equal
 * REINIT's for the same seed. dst's gradients, AdamW moments and step counter are zeroed; its freeze and
 * lr_scale settings are left as they are. Everything is checked before anything is written: a refused call
 * leaves dst unchanged. rep may be NULL. */
int tl_model_init_from(tl_model *dst, const tl_model *src, tl_head_mode head, const int *class_map, uint64_t seed,
                       tl_init_report *rep, char *err, size_t errlen);

/* What trains. TL_FREEZE_STEM freezes the patch embedding (the convolutional stem, its BatchNorm layers
 * and the patch projection): its BatchNorm then normalises with its running statistics, which stay
 * unchanged (as timm's FrozenBatchNorm2d), and backward computes nothing for it. TL_FREEZE_TRUNK freezes
 * everything but head.* and aux_head.* (the stem as above, class token, position embedding, blocks, final
 * norm): backward stops at the heads. Frozen tensors get no gradient, no AdamW update and no weight
 * decay; their values stay bit-identical (a frozen stem's BatchNorm buffers and num_batches_tracked
 * included; their tl_tensor.frozen is set too). Frozen blocks still run in training mode (drop path, MixToken).
 * The setting takes effect at the next training forward; tl_backward skips what that forward ran frozen.
 * -1 with a message for an inference model or an unknown value. */
typedef enum { TL_FREEZE_NONE = 0, TL_FREEZE_STEM = 1, TL_FREEZE_TRUNK = 2 } tl_freeze;
int tl_model_set_freeze(tl_model *m, tl_freeze f, char *err, size_t errlen);
tl_freeze tl_model_freeze(const tl_model *m);

/* Layer-wise learning-rate decay with timm's semantics (param_groups_layer_decay, depth L): head.*,
 * aux_head.* and the final norm get lr x 1, block i (0-based) lr x decay^(L - i), and the patch embedding,
 * class token and position embedding lr x decay^(L + 1). decay in (0, 1]; 1 turns it off (every
 * tl_tensor.lr_scale 1). BatchNorm buffers get their layer's scale (unused). -1 with a message otherwise, the
 * scales then unchanged. */
int tl_model_set_layer_decay(tl_model *m, float decay, char *err, size_t errlen);

/* ---- optimizer ---- */
typedef struct {
    float lr, weight_decay, beta1, beta2, eps;
} tl_adamw;
/* One AdamW step with PyTorch semantics over every parameter (decay only where
 * tl_tensor.decay is set), with lr x tl_tensor.lr_scale in both the decoupled
 * decay and the step; frozen tensors are skipped (values and moments
 * untouched). Increments the model's step counter. */
void tl_adamw_step(tl_model *m, const tl_adamw *hp, int nthreads);
/* The same, on a context's thread pool. */
void tl_ctx_adamw_step(tl_ctx *c, const tl_adamw *hp);
/* The optimizer steps taken (AdamW's bias correction uses it); set when a training checkpoint is loaded. */
int64_t tl_model_step(const tl_model *m);
void tl_model_set_step(tl_model *m, int64_t step);

/* ---- a batch context: activations and scratch for one batch size ---- */

/* MixToken box on the token grid, half-open: rows [r0,r1), cols [c0,c1).
 * Empty (r0>=r1 or c0>=c1) means no mixing. Sample i takes the box of B-1-i. */
typedef struct { int r0, c0, r1, c1; } tl_box;

/* training != 0 allocates what backward needs as well. nthreads >= 1. */
tl_ctx *tl_ctx_new(tl_model *m, int batch, int training, int nthreads, char *err, size_t errlen);
/* Stops the context's worker threads and frees its activations; NULL is allowed. */
void tl_ctx_free(tl_ctx *c);
/* The largest batch the context was built for. */
int tl_ctx_batch(const tl_ctx *c);
/* Per-phase timing of forward and backward (off by default); on resets it. */
void tl_ctx_profile(tl_ctx *c, int on);
/* The caller promises that the model's weights no longer change while c is
 * used (a served model): eval forwards then fold and pack the stem's weights
 * once instead of at every call. */
void tl_ctx_freeze_weights(tl_ctx *c);
/* "phase fwd/bwd ms, ..." summed since profiling was switched on. */
int tl_ctx_profile_report(const tl_ctx *c, char *buf, size_t len);
/* Bytes of activations and scratch the context holds. */
size_t tl_ctx_bytes(const tl_ctx *c);

/* Forward pass. images (B,3,H,W) already normalised. train != 0 uses batch
 * statistics in BatchNorm (and updates running statistics), drop path with
 * per-sample masks drawn from drop_seed, and the MixToken box (may be NULL).
 * Eval mode ignores box and drop path. batch may be smaller than the context's.
 * images must stay valid until tl_backward of a training forward returns. */
int tl_forward(tl_ctx *c, const float *images, int batch, int train, const tl_box *box, uint64_t drop_seed);
const float *tl_logits_cls(const tl_ctx *c);   /* (B,K) */
const float *tl_logits_aux(const tl_ctx *c);   /* (B,N,K), box swapped back */

typedef struct {
    float cls_weight, dense_weight;
    /* 0 or 1: the gradient of this batch's mean loss. 1/M: of one of M equal micro-batches of a larger
     * batch, so that their summed gradients are that of its mean loss. The loss values are not scaled. */
    float grad_scale;
} tl_loss_weights;
typedef struct {
    double loss, loss_cls, loss_dense;   /* loss = cw*loss_cls + dw*loss_dense */
    float lam;                            /* class-target mixing weight used */
} tl_loss_parts;

/* Token-labeling loss after a training forward. t_cls (B,K) per-sample class
 * targets (mixed here with the box's lambda); t_dense (B,N,K) per-token
 * targets, or NULL for plain training (each token's target is its image's
 * t_cls). Also stores dlogits for tl_backward. */
int tl_loss(tl_ctx *c, const float *t_cls, const float *t_dense, const tl_loss_weights *w, tl_loss_parts *out);
/* Backward pass of the last forward+loss; gradients are accumulated into the
 * model's grad buffers (call tl_model_zero_grad first). */
int tl_backward(tl_ctx *c);

/* Inference: eval-mode forward and score = cls + 0.5 * max_tokens(aux).
 * scores (B,K). */
int tl_predict(tl_ctx *c, const float *images, int batch, float *scores);

/* ---- checkpoints (safetensors) ---- */
typedef struct {
    int64_t step;          /* optimizer steps taken */
    int64_t epoch;
    uint64_t rng_state[4]; /* the training loop's generator */
} tl_train_state;

#define TL_CKPT_OPTIM 1    /* save/load the AdamW moments and train state */
#define TL_CKPT_EMA 2      /* load: the EMA weights ("ema.<name>") into the ema model too */
#define TL_CKPT_FROM_EMA 4 /* load: the EMA weights as the model's own (serving EMA weights) */

/* Saves parameters and buffers under their state_dict names, the config in
 * the metadata ("tokenlab.config"), and with TL_CKPT_OPTIM the moments under
 * "optim.exp_avg.<name>" / "optim.exp_avg_sq.<name>" and the train state under
 * "train.*". ema: NULL, or an EMA model (same config) whose weights are also
 * written, as "ema.<name>". extra_meta: NULL or NULL-terminated key,value
 * pairs. Crash-safe: temp file, fsync, rename, fsync of the folder; a failed
 * write leaves the file at path as it was. -1 with a message and errno (ENOSPC
 * or EDQUOT: the disk is full; 0 for a failure that is not the file system's). */
int tl_checkpoint_save(const tl_model *m, const tl_model *ema, const char *path, int flags, const tl_train_state *st,
                       const char *const *extra_meta, char *err, size_t errlen);
/* Loads into an existing model, whose config must match the file's tensors
 * (missing, extra, mistyped or misshaped tensors are refused). With
 * TL_CKPT_OPTIM the moments and train state must be present. ema: NULL, or
 * the EMA model that TL_CKPT_EMA fills (required with that flag). */
int tl_checkpoint_load(tl_model *m, tl_model *ema, const char *path, int flags, tl_train_state *st, char *err,
                       size_t errlen);
/* The optimizer step a training checkpoint was written at ("train.step"):
 * 1 with *step set, 0 when the file is absent or holds no train state. */
int tl_checkpoint_train_step(const char *path, int64_t *step);
/* Reads the config of a checkpoint: from its metadata, or inferred from the
 * tensor shapes of a plain LV-ViT state_dict (num_heads and skip_lam then come
 * from the preset of the same width and depth). */
int tl_checkpoint_config(const char *path, tl_config *out, char *err, size_t errlen);
/* The same two readings of a checkpoint already open (tokenlab/safetensors.h), for a caller that needs
 * the file's metadata too and reads it once; name is the file's name in messages. */
typedef struct tl_st_file tl_st_file;
int tl_checkpoint_config_file(const tl_st_file *f, const char *name, tl_config *out, char *err, size_t errlen);
int tl_checkpoint_load_file(tl_model *m, tl_model *ema, const tl_st_file *f, const char *name, int flags,
                            tl_train_state *st, char *err, size_t errlen);

/* ---- runtime information ---- */
/* Loads BLAS if needed; returns 0 or -1 with a message. Called implicitly. */
int tl_runtime_init(char *err, size_t errlen);
/* e.g. "OpenBLAS 0.3.21 ... SkylakeX" and the kernel family chosen. */
const char *tl_blas_config(void);
/* The OpenBLAS kernel family in use (e.g. "SkylakeX", "Haswell"), as OpenBLAS names it. */
const char *tl_blas_corename(void);
/* Comma-separated CPU features the engine cares about (avx2,fma,avx512f,...). */
const char *tl_cpu_features(void);
/* The engine's kernel level: "generic", "avx2" or "avx512": the CPU's best, or TL_ISA
 * (generic|avx2|avx512) capped at it; OpenBLAS's kernel family follows it. Any thread. */
const char *tl_isa_name(void);

#ifdef __cplusplus
}
#endif
#endif
