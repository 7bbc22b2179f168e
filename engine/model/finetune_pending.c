/*
 * finetune_pending.c: PLACEHOLDER, ft-train branch only. The integrator deletes
 * this file when merging ft-engine, whose engine/model/finetune.c implements
 * these functions (contract in tokenlab/model.h).
 *
 * Until then every function here fails with "not implemented", so that the
 * engine links and the parts of fine-tuning that do not need the model-level
 * functions (spec parsing, tl_jobspec_apply_init, class matching, the
 * `tokenlabd run --init` plumbing) can be built and tested. The end-to-end
 * fine-tuning tests recognise this message and skip.
 */
#include "tokenlab/base.h"
#include "tokenlab/model.h"

int tl_model_init_from(tl_model *dst, const tl_model *src, tl_head_mode head, const int *class_map, uint64_t seed,
                       tl_init_report *rep, char *err, size_t errlen) {
    (void)dst, (void)src, (void)head, (void)class_map, (void)seed, (void)rep;
    tl_seterr(err, errlen, "tl_model_init_from: not implemented (placeholder until ft-engine is merged)");
    return -1;
}

int tl_model_set_freeze(tl_model *m, tl_freeze f, char *err, size_t errlen) {
    (void)m, (void)f;
    tl_seterr(err, errlen, "tl_model_set_freeze: not implemented (placeholder until ft-engine is merged)");
    return -1;
}

tl_freeze tl_model_freeze(const tl_model *m) {
    (void)m;
    return TL_FREEZE_NONE;
}

int tl_model_set_layer_decay(tl_model *m, float decay, char *err, size_t errlen) {
    (void)m, (void)decay;
    tl_seterr(err, errlen, "tl_model_set_layer_decay: not implemented (placeholder until ft-engine is merged)");
    return -1;
}
