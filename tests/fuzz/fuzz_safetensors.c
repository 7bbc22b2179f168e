/*
 * fuzz_safetensors.c: libFuzzer target for the safetensors reader
 * (engine/model/safetensors.c: tl_st_open_mem) and what a checkpoint's
 * reader does next with an accepted file: every tensor read as floats, the
 * metadata, and the model configuration inferred from the tensor shapes
 * (tl_checkpoint_config_file). Input: the file's bytes. Single-threaded.
 */
#include <stdint.h>
#include <stdlib.h>

#include "tokenlab/model.h"
#include "tokenlab/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[TL_ERR_LEN];
    tl_st_file *f = tl_st_open_mem(data, size, err, sizeof err);
    if (!f) return 0;
    for (int i = 0; i < tl_st_count(f); i++) {
        const tl_st_tensor *t = tl_st_at(f, i);
        if (t->nbytes <= ((size_t)16 << 20)) { /* read what a loader would, within reason */
            size_t n = 1;
            for (int d = 0; d < t->ndim; d++) n *= (size_t)t->shape[d];
            float *dst = malloc(sizeof(float) * (n ? n : 1));
            if (dst) tl_st_read_f32(t, dst);
            free(dst);
        }
    }
    (void)tl_st_meta(f, "tokenlab.step");
    (void)tl_st_get(f, "pos_embed");
    tl_config cfg;
    tl_checkpoint_config_file(f, "fuzz.safetensors", &cfg, err, sizeof err);
    tl_st_close(f);
    return 0;
}
