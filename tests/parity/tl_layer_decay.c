/*
 * tl_layer_decay.c: the engine's per-tensor optimizer settings for
 * fine-tuning (tl_model_set_layer_decay, engine/model/finetune.c), printed for
 * tests/parity/run_layer_decay_parity.py to compare with timm's
 * param_groups_layer_decay on the PyTorch reference model.
 *
 *   tl-layer-decay --config FILE.json --decay X
 *
 * Builds the model of that configuration (tl_config_from_json), sets layer
 * decay X and prints one JSON object: {"depth": L, "tensors": [{"name",
 * "param" (0 for BatchNorm buffers), "decay" (weight decay applies),
 * "lr_scale" (%.9g)}, ...]} in state_dict order. Exit 0, or 1 with a message.
 * Single-threaded.
 */
#include "tokenlab/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    if (buf) buf[n] = 0;
    fclose(f);
    return buf;
}

int main(int argc, char **argv) {
    const char *config = NULL;
    float decay = -1.0f;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--config")) config = argv[i + 1];
        else if (!strcmp(argv[i], "--decay")) decay = strtof(argv[i + 1], NULL);
        else {
            fprintf(stderr, "tl-layer-decay: unknown option %s\n", argv[i]);
            return 1;
        }
    }
    if (!config || decay < 0.0f) {
        fprintf(stderr, "usage: tl-layer-decay --config FILE.json --decay X\n");
        return 1;
    }
    char err[TL_ERR_LEN], *text = slurp(config);
    tl_config c;
    if (!text) {
        fprintf(stderr, "tl-layer-decay: cannot read %s\n", config);
        return 1;
    }
    int rc = tl_config_from_json(text, &c, err, sizeof err);
    free(text);
    tl_model *m = rc == 0 ? tl_model_new(&c, 0, err, sizeof err) : NULL;
    if (!m || tl_model_set_layer_decay(m, decay, err, sizeof err) != 0) {
        fprintf(stderr, "tl-layer-decay: %s\n", err);
        tl_model_free(m);
        return 1;
    }
    printf("{\"depth\": %d, \"tensors\": [", c.depth);
    for (int i = 0; i < tl_model_num_tensors(m); i++) {
        const tl_tensor *t = tl_model_tensor(m, i);
        printf("%s\n {\"name\": \"%s\", \"param\": %d, \"decay\": %d, \"lr_scale\": %.9g}", i ? "," : "", t->name,
               t->kind == TL_TENSOR_PARAM, t->decay, (double)t->lr_scale);
    }
    printf("]}\n");
    tl_model_free(m);
    return 0;
}
