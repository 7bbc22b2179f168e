/*
 * inspect_record.c: the store records of token inspection (see
 * inspect_record.h). Runs on a job's worker thread; owns only temporary
 * buffers (freed before returning). Token grids become the store's blob
 * layout (store.h: g*g*3 int32 indices, then g*g*3 float32 probabilities),
 * display images become JPEGs (libjpeg-turbo, quality 90), class names come
 * from the training dataset's classes.tsv or folders, as a JSON array.
 */
#include "jobs/inspect_record.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tokenlab/data.h"
#include "tokenlab/base.h"

/* (g*g,3) indices and probabilities as one blob. */
static void *grid_blob(const tl_token_topk *t, int grid) {
    size_t n = (size_t)grid * (size_t)grid * TL_INSPECT_TOPK;
    uint8_t *b = malloc(TLD_GRID_BLOB_BYTES(grid));
    if (!b) return NULL;
    memcpy(b, t->index, n * sizeof(int32_t));
    memcpy(b + n * sizeof(int32_t), t->prob, n * sizeof(float));
    return b;
}

static char *labels_json(const char *train_dir, int K, char *err, size_t errlen) {
    tl_dataset *ds = tl_dataset_open(train_dir, err, errlen);
    if (!ds) return NULL;
    cJSON *arr = cJSON_CreateArray();
    char *out = NULL;
    for (int c = 0; arr && c < K; c++) {
        const char *name = c < tl_dataset_num_classes(ds) ? tl_dataset_class_name(ds, c) : NULL;
        char fallback[32];
        snprintf(fallback, sizeof fallback, "class %d", c);
        cJSON_AddItemToArray(arr, cJSON_CreateString(name ? name : fallback));
    }
    if (arr) out = cJSON_PrintUnformatted(arr);
    if (!out) snprintf(err, errlen, "out of memory");
    cJSON_Delete(arr);
    tl_dataset_free(ds);
    return out;
}

static int write_set(tld_store *s, int64_t job, const char *train_dir, const tl_inspect_set *set, char *err,
                     size_t errlen) {
    int n = set->n, rc = -1;
    tld_inspect_sample_info *info = calloc((size_t)n + 1, sizeof *info);
    uint8_t **jpegs = calloc((size_t)n + 1, sizeof *jpegs);
    size_t *lens = calloc((size_t)n + 1, sizeof *lens);
    void **targets = calloc((size_t)n + 1, sizeof *targets);
    tld_inspect_set_row row = {set->S, set->grid, set->view, set->K, NULL};
    if (!info || !jpegs || !lens || !targets) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    row.labels_json = labels_json(train_dir, set->K, err, errlen);
    if (!row.labels_json) goto done;
    size_t view_px = (size_t)set->view * (size_t)set->view * 3;
    for (int i = 0; i < n; i++) {
        const tl_inspect_sample *sm = &set->samples[i];
        info[i].k = i;
        snprintf(info[i].split, sizeof info[i].split, "%s", sm->split);
        snprintf(info[i].path, sizeof info[i].path, "%s", sm->relpath);
        info[i].label = sm->label;
        snprintf(info[i].target_kind, sizeof info[i].target_kind, "%s",
                 sm->target_kind == TL_TARGET_LABELMAP ? "labelmap" : "class");
        if (tl_image_encode(set->view_rgb + view_px * (size_t)i, set->view, set->view, 90, &jpegs[i], &lens[i], err,
                            errlen) != 0)
            goto done;
        targets[i] = grid_blob(&set->targets[i], set->grid);
        if (!targets[i]) {
            snprintf(err, errlen, "out of memory");
            goto done;
        }
    }
    rc = tld_store_inspect_set_put(s, job, &row, n, info, (const void *const *)jpegs, lens,
                                  (const void *const *)targets, err, errlen);
done:
    for (int i = 0; i < n && jpegs && targets; i++) {
        free(jpegs[i]);
        free(targets[i]);
    }
    free(info);
    free(jpegs);
    free(lens);
    free(targets);
    free(row.labels_json);
    return rc;
}

int tld_inspect_record(tld_store *s, int64_t job, const char *train_dir, int *set_written, const tl_inspect_set *set,
                      const tl_inspect_result *res, int64_t step, int ema, char *err, size_t errlen) {
    if (!*set_written) {
        if (write_set(s, job, train_dir, set, err, errlen) != 0) return -1;
        *set_written = 1;
    }
    int n = res->n, rc = -1;
    void **tokens = calloc((size_t)n + 1, sizeof *tokens);
    uint8_t (*top5)[TLD_TOP5_BLOB_BYTES] = calloc((size_t)n + 1, sizeof *top5);
    const void **top5p = calloc((size_t)n + 1, sizeof *top5p);
    if (!tokens || !top5 || !top5p) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    for (int i = 0; i < n; i++) {
        tokens[i] = grid_blob(&res->tokens[i], res->grid);
        if (!tokens[i]) {
            snprintf(err, errlen, "out of memory");
            goto done;
        }
        memcpy(top5[i], res->top_index + (size_t)i * TL_INSPECT_TOP5, 5 * sizeof(int32_t));
        memcpy(top5[i] + 20, res->top_prob + (size_t)i * TL_INSPECT_TOP5, 5 * sizeof(float));
        top5p[i] = top5[i];
    }
    rc = tld_store_inspect_preds_put(s, job, step, ema, n, (const void *const *)tokens, top5p, tl_clock_wall_ms(), err, errlen);
done:
    for (int i = 0; i < n && tokens; i++) free(tokens[i]);
    free(tokens);
    free(top5);
    free(top5p);
    return rc;
}
