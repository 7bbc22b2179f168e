/*
 * tokenlab.h: the public API of the tokenlab engine (LV-ViT with token
 * labeling), every public header in one include. The daemon, the client and
 * the tools see nothing else of the engine.
 *
 * The engine owns: model configuration, parameters, gradients, AdamW state,
 * activations for one batch size, the forward and backward passes, the
 * token-labeling loss with MixToken, checkpoints in safetensors, images,
 * datasets, augmentation, label maps and their targets, synthetic data, and
 * the jobs built on them (training, token inspection, machine annotation).
 * It has no HTTP, no SQL and no global mutable state apart from the BLAS
 * loader (engine/core/blas.c, initialised once under pthread_once) and the
 * invariant counter (base.h).
 *
 *   base.h        error formatter, clocks, invariant checks (TL_NEVER/TL_ALWAYS)
 *   files.h       durable renames, confinement of paths to a data root
 *   rng.h         deterministic random numbers
 *   memtune.h     the allocator settings of the programs built on the engine
 *   model.h       config, model, AdamW, contexts, forward/backward, checkpoints, runtime
 *   safetensors.h the safetensors reader and writer
 *   image.h       JPEG decode and encode
 *   dataset.h     image-folder datasets
 *   augment.h     training and evaluation transforms
 *   data.h        image.h, dataset.h and augment.h together
 *   labelmap.h    token-label map files
 *   targets.h     a sample's targets from its label-map entry
 *   synth.h       the synthetic dataset
 *   jobspec.h     training job specs, the kind of any job document
 *   train.h       the training loop of one job
 *   inspect.h     token inspection, top-k of logits
 *   annotate.h    the machine annotator and its spec
 *
 * Errors: functions that can fail on user input return 0 on success and -1
 * on failure (or NULL for constructors), writing a message into the
 * caller's err buffer (TL_ERR_LEN bytes is always enough); a few also
 * return a status enum (tl_image_status, tl_path_status, tl_train_status).
 * Nothing calls exit() or abort() on bad input; a broken invariant of the
 * engine itself is reported by TL_NEVER/TL_ALWAYS (base.h).
 *
 * Threads: each header states its own rules. In short: a tl_model and the
 * tl_ctx built on it belong to one caller thread at a time, each tl_ctx
 * drives its own pool of workers for the duration of a call; datasets and
 * open label maps are read-only and shareable; jobs run on the caller's
 * thread (plus the engine's pools and loader threads) and call their hooks
 * there; everything else is reentrant.
 */
#ifndef TOKENLAB_H
#define TOKENLAB_H

#include "tokenlab/base.h"
#include "tokenlab/files.h"
#include "tokenlab/rng.h"
#include "tokenlab/memtune.h"
#include "tokenlab/model.h"
#include "tokenlab/safetensors.h"
#include "tokenlab/image.h"
#include "tokenlab/dataset.h"
#include "tokenlab/augment.h"
#include "tokenlab/data.h"
#include "tokenlab/labelmap.h"
#include "tokenlab/targets.h"
#include "tokenlab/synth.h"
#include "tokenlab/jobspec.h"
#include "tokenlab/train.h"
#include "tokenlab/inspect.h"
#include "tokenlab/annotate.h"

#endif
