/*
 * resize.c: a model's weights copied into a model of another input size
 * (tl_model_copy_resized, model.h): every tensor as it is except the position
 * embedding of the patch tokens, resampled bicubically with PyTorch's
 * upsample_bicubic2d arithmetic (tests/parity/run_posembed_parity.py checks
 * it against F.interpolate). Used by the annotator to label at a size other
 * than the training size, and by fine-tuning (tl_model_init_from, finetune.c)
 * through tl_pos_embed_resample.
 *
 * Owns nothing; reads src and writes dst on the calling thread.
 */
#include "model/model_internal.h"

#include <math.h>
#include <string.h>
/* PyTorch's cubic convolution weights (upsample_bicubic2d, A = -0.75) for fraction t. */
static void cubic_weights(float t, float w[4]) {
    const float A = -0.75f;
    float x1 = t + 1.0f, x2 = 1.0f - t, x3 = 2.0f - t;
    w[0] = ((A * x1 - 5.0f * A) * x1 + 8.0f * A) * x1 - 4.0f * A;
    w[1] = ((A + 2.0f) * t - (A + 3.0f)) * t * t + 1.0f;
    w[2] = ((A + 2.0f) * x2 - (A + 3.0f)) * x2 * x2 + 1.0f;
    w[3] = ((A * x3 - 5.0f * A) * x3 + 8.0f * A) * x3 - 4.0f * A;
}

/* Source taps of output o along an axis of n_in -> n_out, align_corners=False (no clamping of the
 * source coordinate; the taps are clamped to the border, as PyTorch does). */
static void cubic_taps(int o, int n_in, int n_out, int idx[4], float w[4]) {
    float scale = (float)n_in / (float)n_out;
    float src = scale * ((float)o + 0.5f) - 0.5f;
    float fl = floorf(src);
    int i0 = (int)fl;
    cubic_weights(src - fl, w);
    for (int j = 0; j < 4; j++) {
        int i = i0 - 1 + j;
        idx[j] = i < 0 ? 0 : i >= n_in ? n_in - 1 : i;
    }
}

/* The grid as a (D, gs, gs) image resized bicubically to (D, gd, gd). */
void tl_pos_embed_resample(float *out, const float *in, int gs, int gd, int D) {
    for (int y = 0; y < gd; y++) {
        int iy[4], ix[4];
        float wy[4], wx[4];
        cubic_taps(y, gs, gd, iy, wy);
        for (int x = 0; x < gd; x++) {
            cubic_taps(x, gs, gd, ix, wx);
            float *o = out + ((size_t)y * gd + x) * D;
            for (int d = 0; d < D; d++) {
                /* rows interpolated along x, then the four rows along y, as PyTorch's kernel */
                float r[4];
                for (int j = 0; j < 4; j++) {
                    const float *row = in + (size_t)iy[j] * gs * D;
                    r[j] = row[(size_t)ix[0] * D + d] * wx[0] + row[(size_t)ix[1] * D + d] * wx[1] +
                           row[(size_t)ix[2] * D + d] * wx[2] + row[(size_t)ix[3] * D + d] * wx[3];
                }
                o[d] = r[0] * wy[0] + r[1] * wy[1] + r[2] * wy[2] + r[3] * wy[3];
            }
        }
    }
}

static int config_same_but_size(const tl_config *a, const tl_config *b) {
    return a->patch_size == b->patch_size && a->embed_dim == b->embed_dim && a->depth == b->depth &&
           a->num_heads == b->num_heads && a->mlp_ratio == b->mlp_ratio && a->stem_channels == b->stem_channels &&
           a->skip_lam == b->skip_lam && a->num_classes == b->num_classes && a->drop_path_rate == b->drop_path_rate;
}

int tl_model_copy_resized(tl_model *dst, const tl_model *src, char *err, size_t errlen) {
    const tl_config *cd = tl_model_config(dst), *cs = tl_model_config(src);
    if (!config_same_but_size(cd, cs))
        return tl_seterr(err, errlen, "copy_resized: the models' configurations differ in more than img_size");
    if (tl_model_num_tensors(dst) != tl_model_num_tensors(src))
        return tl_seterr(err, errlen, "copy_resized: the models have different tensors");
    int gs = tl_config_grid(cs), gd = tl_config_grid(cd), D = cs->embed_dim;
    for (int i = 0; i < tl_model_num_tensors(src); i++) {
        const tl_tensor *ts = tl_model_tensor(src, i), *td = tl_model_tensor(dst, i);
        if (strcmp(ts->name, td->name) != 0)
            return tl_seterr(err, errlen, "copy_resized: tensor %d is %s in one model, %s in the other", i, ts->name,
                             td->name);
        if (strcmp(ts->name, "pos_embed") != 0 || gs == gd) {
            if (ts->numel != td->numel)
                return tl_seterr(err, errlen, "copy_resized: %s has different sizes", ts->name);
            memcpy(td->data, ts->data, sizeof(float) * ts->numel);
            continue;
        }
        /* (1, 1 + gs*gs, D) -> (1, 1 + gd*gd, D): the class token's position as it is, the grid resampled. */
        memcpy(td->data, ts->data, sizeof(float) * (size_t)D);
        tl_pos_embed_resample(td->data + D, ts->data + D, gs, gd, D);
    }
    for (int l = 0; l < 3; l++) *tl_model_bn_batches(dst, l) = *tl_model_bn_batches((tl_model *)src, l);
    return 0;
}

