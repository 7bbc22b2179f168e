/*
 * tl_posembed.c: the bicubic resampling of the position embedding
 * (tl_model_copy_resized, engine/model/resize.c) on random values, for
 * tests/parity/run_posembed_parity.py to compare with PyTorch.
 *
 *   tl-posembed --from G1 --to G2 --dim D --seed S --out FILE
 *
 * Builds two tiny LV-ViTs (patch 2, so grids G1 x G1 and G2 x G2), fills the
 * first one's pos_embed with uniform values in [-1, 1) from the seed, copies
 * it into the second with tl_model_copy_resized and writes FILE: int32 G1,
 * G2, D, then float32 src pos_embed [(1+G1*G1) * D], then float32 dst
 * pos_embed [(1+G2*G2) * D], little-endian. Exit 0, or 1 with a message.
 */
#include "tokenlab/annotate.h"
#include "tokenlab/model.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static tl_model *tiny(int grid, int dim, char *err) {
    tl_config c = {.img_size = 2 * grid, .patch_size = 2, .embed_dim = dim, .depth = 1, .num_heads = 1,
                   .mlp_ratio = 1.0f, .stem_channels = 4, .skip_lam = 1.0f, .num_classes = 2, .drop_path_rate = 0.0f};
    return tl_model_new(&c, 0, err, TL_ERR_LEN);
}

int main(int argc, char **argv) {
    int g1 = 0, g2 = 0, dim = 0;
    unsigned long long seed = 1;
    const char *out = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--from")) g1 = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--to")) g2 = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--dim")) dim = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seed")) seed = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--out")) out = argv[i + 1];
        else {
            fprintf(stderr, "tl-posembed: unknown option %s\n", argv[i]);
            return 1;
        }
    }
    if (g1 < 1 || g2 < 1 || dim < 1 || !out) {
        fprintf(stderr, "usage: tl-posembed --from G1 --to G2 --dim D --seed S --out FILE\n");
        return 1;
    }
    char err[TL_ERR_LEN];
    tl_model *a = tiny(g1, dim, err), *b = a ? tiny(g2, dim, err) : NULL;
    if (!a || !b) {
        fprintf(stderr, "tl-posembed: %s\n", err);
        return 1;
    }
    const tl_tensor *pa = tl_model_find(a, "pos_embed"), *pb = tl_model_find(b, "pos_embed");
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < pa->numel; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        pa->data[i] = (float)((double)(x >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    }
    if (tl_model_copy_resized(b, a, err, sizeof err) != 0) {
        fprintf(stderr, "tl-posembed: %s\n", err);
        return 1;
    }
    FILE *f = fopen(out, "wb");
    int32_t hdr[3] = {g1, g2, dim};
    int ok = f && fwrite(hdr, sizeof hdr, 1, f) == 1 && fwrite(pa->data, sizeof(float), pa->numel, f) == pa->numel &&
             fwrite(pb->data, sizeof(float), pb->numel, f) == pb->numel;
    if (f && fclose(f) != 0) ok = 0;
    tl_model_free(a);
    tl_model_free(b);
    if (!ok) {
        fprintf(stderr, "tl-posembed: cannot write %s\n", out);
        return 1;
    }
    return 0;
}
