/*
 * micro.h: what one optimizer step over several micro-batches (and ranks)
 * needs of a model: its gradient block as one vector, its whole state as one
 * buffer, and the running BatchNorm statistics carried through the gradient
 * sum (micro.c). Used by the training step (jobs/train_step.c) and the
 * distributed start (jobs/train_dist.c). Not installed.
 */
#ifndef TL_MODEL_MICRO_H
#define TL_MODEL_MICRO_H

#include <stddef.h>
#include <stdint.h>

#include "tokenlab/model.h"

/* The gradient block (*n floats, the same layout as the parameters; running statistics' slots are
 * zero unless tl_model_bn_to_grads put something there). NULL for an inference model. */
float *tl_model_grad_vector(tl_model *m, size_t *n);
/* Every block of the model (parameters, gradients, AdamW moments) as one buffer of *bytes bytes, for
 * sending a model's whole state to other ranks. */
void *tl_model_state(tl_model *m, size_t *bytes);

/* Running BatchNorm statistics across micro-batches. Each micro-batch's training forward starts from the
 * statistics the step started with (tl_model_bn_restore of a tl_model_bn_save), and leaves its updated
 * statistics, (1-momentum) x r0 + momentum x its batch's, in their gradient slots (tl_model_bn_to_grads);
 * after the gradient sum, tl_model_bn_from_grads sets each to the sum / micro: the mean over the step's
 * micro-batches, with the same bits as a single forward's update when micro is 1. The counter
 * num_batches_tracked advances by one per step. The stem must be training (not frozen). */
size_t tl_model_bn_floats(const tl_model *m);
void tl_model_bn_save(const tl_model *m, float *dst /* tl_model_bn_floats */, int64_t counters[3]);
void tl_model_bn_restore(tl_model *m, const float *src, const int64_t counters[3]);
void tl_model_bn_to_grads(tl_model *m);
void tl_model_bn_from_grads(tl_model *m, int micro, const int64_t counters[3]);
/* 1 when the stem trains (its BatchNorm updates running statistics in a training forward). */
int tl_model_bn_trains(const tl_model *m);

#endif
