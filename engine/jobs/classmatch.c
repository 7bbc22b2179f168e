/*
 * classmatch.c: which class of a fine-tuning source each class of the
 * training data is (model.init.head "match"; declared in train.h), and the
 * class identities a training checkpoint carries so that it can be a source.
 *
 * Identities. A target class is its class folder name (ImageNet's wnid, e.g.
 * "n01440764") and, where the dataset's classes.tsv has an imagenet_index
 * column, that index (tl_dataset_class_imagenet_index). A source's classes
 * are named by its checkpoint metadata "tokenlab.class_ids", a JSON array of
 * class folder names in class order, which train.c writes into every
 * checkpoint (last and best). A source without it but with exactly 1000
 * classes (an official ImageNet-1k LV-ViT, or any 1000-class file) is taken as
 * ImageNet-1k in index order and matched through the targets' imagenet_index.
 * Anything else cannot be matched and is refused with a message saying why.
 *
 * The result is a class map: map[k] = the source class whose head rows
 * initialise target class k, or -1 (drawn afresh), as tl_model_init_from
 * takes it. Matching by name sorts the source's names once and binary-searches
 * each target: O((K_src + K) log K_src). A match with no class in common is
 * refused too ("reinit" says that honestly).
 *
 * Pure functions on their arguments (and one read-only file); any thread.
 */
#include "tokenlab/train.h"
#include "tokenlab/base.h"
#include "tokenlab/safetensors.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *name;
    int index;
} named;

static int cmp_named(const void *a, const void *b) {
    const named *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x->index > y->index) - (x->index < y->index);
}

int tl_class_match_ids(int target_k, const char *const *target_ids, const int *target_inet, const char *source_ids_json,
                       int source_k, int *map, int *matched, char *err, size_t errlen) {
    cJSON *doc = NULL;
    named *idx = NULL;
    int n = 0;
    if (matched) *matched = 0;
    if (target_k < 1 || source_k < 1 || !map) return tl_seterr(err, errlen, "class match: no classes");
    for (int k = 0; k < target_k; k++) map[k] = -1;
    if (source_ids_json) {
        doc = cJSON_Parse(source_ids_json);
        if (!cJSON_IsArray(doc) || cJSON_GetArraySize(doc) != source_k) {
            tl_seterr(err, errlen,
                      "head \"match\": the source's tokenlab.class_ids is not a JSON array of its %d class names",
                      source_k);
            goto fail;
        }
        idx = malloc(sizeof *idx * (size_t)source_k);
        if (!idx) {
            tl_seterr(err, errlen, "class match: out of memory");
            goto fail;
        }
        int i = 0;
        for (const cJSON *it = doc->child; it; it = it->next, i++) {
            if (!cJSON_IsString(it) || !it->valuestring || !it->valuestring[0]) {
                tl_seterr(err, errlen, "head \"match\": the source's tokenlab.class_ids[%d] is not a class name", i);
                goto fail;
            }
            idx[i] = (named){it->valuestring, i};
        }
        qsort(idx, (size_t)source_k, sizeof *idx, cmp_named);
        for (i = 1; i < source_k; i++)
            if (strcmp(idx[i - 1].name, idx[i].name) == 0) {
                tl_seterr(err, errlen, "head \"match\": the source's tokenlab.class_ids names '%.64s' twice",
                          idx[i].name);
                goto fail;
            }
        for (int k = 0; k < target_k; k++) {
            if (!target_ids || !target_ids[k]) continue;
            named key = {target_ids[k], -1};
            int lo = 0, hi = source_k - 1;
            while (lo <= hi) {
                int mid = lo + (hi - lo) / 2, c = strcmp(idx[mid].name, key.name);
                if (c == 0) {
                    map[k] = idx[mid].index;
                    break;
                }
                if (c < 0) lo = mid + 1;
                else hi = mid - 1;
            }
        }
    } else if (source_k == 1000) {
        int have = 0;
        for (int k = 0; target_inet && k < target_k; k++) {
            if (target_inet[k] < 0) continue;
            have = 1;
            if (target_inet[k] < 1000) map[k] = target_inet[k];
        }
        if (!have) {
            tl_seterr(err, errlen,
                      "head \"match\": the source names no classes (no tokenlab.class_ids metadata), so its 1000 "
                      "classes are taken as ImageNet-1k, but the training data's classes.tsv has no imagenet_index "
                      "column to match them by; add one (wnid<TAB>name<TAB>imagenet_index) or use \"reinit\"");
            goto fail;
        }
    } else {
        tl_seterr(err, errlen,
                  "head \"match\" needs the source's class names: it has no tokenlab.class_ids metadata and %d "
                  "classes (only a 1000-class source is taken as ImageNet-1k); use \"reinit\"",
                  source_k);
        goto fail;
    }
    for (int k = 0; k < target_k; k++) n += map[k] >= 0;
    if (n == 0) {
        tl_seterr(err, errlen, "head \"match\": no class of the training data is among the source's %d classes; use "
                               "\"reinit\"",
                  source_k);
        goto fail;
    }
    if (matched) *matched = n;
    free(idx);
    cJSON_Delete(doc);
    return 0;
fail:
    for (int k = 0; k < target_k; k++) map[k] = -1;
    free(idx);
    cJSON_Delete(doc);
    return -1;
}

int tl_class_match(const tl_dataset *target, const char *source_path, int source_k, int *map, int *matched, char *err,
                   size_t errlen) {
    int K = tl_dataset_num_classes(target), rc = -1;
    const char **ids = NULL;
    int *inet = NULL;
    char e2[TL_ERR_LEN];
    tl_st_file *f = tl_st_open(source_path, e2, sizeof e2);
    if (!f) return tl_seterr(err, errlen, "head \"match\": %s", e2);
    ids = malloc(sizeof *ids * (size_t)(K > 0 ? K : 1));
    inet = malloc(sizeof *inet * (size_t)(K > 0 ? K : 1));
    if (!ids || !inet) {
        tl_seterr(err, errlen, "class match: out of memory");
        goto done;
    }
    for (int k = 0; k < K; k++) {
        ids[k] = tl_dataset_class_folder(target, k);
        inet[k] = tl_dataset_class_imagenet_index(target, k);
    }
    rc = tl_class_match_ids(K, ids, inet, tl_st_meta(f, TL_META_CLASS_IDS), source_k, map, matched, err, errlen);
done:
    free(ids);
    free(inet);
    tl_st_close(f);
    return rc;
}

char *tl_class_ids_json(const tl_dataset *d) {
    cJSON *a = cJSON_CreateArray();
    if (!a) return NULL;
    for (int k = 0; k < tl_dataset_num_classes(d); k++) {
        cJSON *s = cJSON_CreateString(tl_dataset_class_folder(d, k));
        if (!s) {
            cJSON_Delete(a);
            return NULL;
        }
        cJSON_AddItemToArray(a, s);
    }
    char *out = cJSON_PrintUnformatted(a);
    cJSON_Delete(a);
    return out;
}
