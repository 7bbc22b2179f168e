/*
 * datasets.c: GET /api/v1/datasets (see datasets.h).
 *
 * Owns g_ds: a copy of the data root (tld_datasets_init) and the cached answer (a malloc'd JSON
 * text and the time it was made), guarded by g_ds.mu. The handler runs on
 * libmicrohttpd's connection threads; a scan runs under the mutex, so
 * concurrent requests wait for one scan instead of each doing their own.
 */
#include "api/datasets.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "tokenlab/base.h"
#include "tokenlab/data.h"
#include "tokenlab/files.h"
#include "api/handlers.h"
#include "api/routes.h"

static struct {
    char root[PATH_MAX];
    pthread_mutex_t mu;
    char *cached;       /* JSON answer, or NULL */
    int64_t cached_ms;
} g_ds = {.mu = PTHREAD_MUTEX_INITIALIZER};

typedef struct {
    char *rel;
    int depth;
} dir_item;

typedef struct {
    char *rel;
    int classes, images, has_maps;
} ds_entry;

static int cmp_entry(const void *a, const void *b) {
    return strcmp(((const ds_entry *)a)->rel, ((const ds_entry *)b)->rel);
}

/* rel joined to the root ("." is the root itself) into out; -1 if too long. */
static int join(const char *root, const char *rel, char *out, size_t len) {
    int n = strcmp(rel, ".") == 0 ? snprintf(out, len, "%s", root) : snprintf(out, len, "%s/%s", root, rel);
    return n < 0 || (size_t)n >= len ? -1 : 0;
}

/* Whether the folder holds a sub-folder (not hidden). */
static int has_subfolder(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    int found = 0;
    while (d && !found && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char sub[PATH_MAX];
        struct stat st;
        found = join(dir, e->d_name, sub, sizeof sub) == 0 && stat(sub, &st) == 0 && S_ISDIR(st.st_mode);
    }
    if (d) closedir(d);
    return found;
}

/* tl_dataset_open accepts any folder with one class folder holding images, so a folder of datasets
 * (e.g. one holding "imagenette/train/..." and "photos/x.jpg") would pass as one: a class folder without images
 * but with sub-folders of its own marks a folder of datasets, not a dataset. */
static int is_container(const tl_dataset *d) {
    int k = tl_dataset_num_classes(d), n = tl_dataset_count(d);
    char *has = calloc((size_t)k, 1);
    if (!has) return 0;
    for (int i = 0; i < n; i++) has[tl_dataset_label(d, i)] = 1;
    int container = 0;
    for (int c = 0; c < k && !container; c++) {
        char dir[PATH_MAX];
        if (!has[c] && join(tl_dataset_root(d), tl_dataset_class_folder(d, c), dir, sizeof dir) == 0)
            container = has_subfolder(dir);
    }
    free(has);
    return container;
}

/* Scans the data root; returns the JSON answer (malloc'd) or NULL when out of memory. */
static char *scan(const char *root) {
    char root_real[PATH_MAX];
    cJSON *o = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(o, "datasets");
    int truncated = 0;
    dir_item *queue = NULL;
    ds_entry *found = NULL;
    size_t qn = 0, qcap = 0, qhead = 0, nfound = 0;
    if (!realpath(root, root_real)) goto done;
    queue = malloc(sizeof *queue * 64);
    found = malloc(sizeof *found * TLD_DATASETS_MAX);
    if (!queue || !found) goto done;
    qcap = 64;
    queue[qn++] = (dir_item){strdup("."), 0};
    size_t visited = 0;
    while (qhead < qn) {
        dir_item it = queue[qhead++];
        char full[PATH_MAX], real[PATH_MAX], err[256];
        if (!it.rel || ++visited > TLD_DATASETS_MAX_DIRS) {
            truncated |= it.rel != NULL;
            free(it.rel);
            continue;
        }
        if (join(root_real, it.rel, full, sizeof full) != 0 ||
            tl_path_confine(root_real, it.rel, TL_PATH_WANT_ANY, real) != TL_PATH_OK) {
            free(it.rel);
            continue;
        }
        tl_dataset *d = tl_dataset_open(full, err, sizeof err);
        if (d && is_container(d)) {
            tl_dataset_free(d);
            d = NULL;
        }
        if (d) {
            if (nfound < TLD_DATASETS_MAX) {
                char maps[PATH_MAX + 8];
                struct stat st;
                int has = snprintf(maps, sizeof maps, "%s.tllm", full) < (int)sizeof maps && stat(maps, &st) == 0 &&
                          S_ISREG(st.st_mode);
                found[nfound++] = (ds_entry){it.rel, tl_dataset_num_classes(d), tl_dataset_count(d), has};
                it.rel = NULL;
            } else {
                truncated = 1;
            }
            tl_dataset_free(d);
            free(it.rel);
            continue;
        }
        if (it.depth >= TLD_DATASETS_DEPTH) {
            free(it.rel);
            continue;
        }
        DIR *dir = opendir(full);
        struct dirent *e;
        while (dir && (e = readdir(dir)) != NULL) {
            if (e->d_name[0] == '.' || strcmp(e->d_name, "node_modules") == 0) continue;
            char sub[PATH_MAX];
            struct stat st;
            if (join(full, e->d_name, sub, sizeof sub) != 0 || stat(sub, &st) != 0 || !S_ISDIR(st.st_mode)) continue;
            if (qn == qcap) {
                dir_item *g = realloc(queue, sizeof *queue * qcap * 2);
                if (!g) break;
                queue = g;
                qcap *= 2;
            }
            char rel[PATH_MAX];
            if (strcmp(it.rel, ".") == 0) snprintf(rel, sizeof rel, "%s", e->d_name);
            else if (snprintf(rel, sizeof rel, "%s/%s", it.rel, e->d_name) >= (int)sizeof rel) continue;
            queue[qn++] = (dir_item){strdup(rel), it.depth + 1};
        }
        if (dir) closedir(dir);
        free(it.rel);
    }
    qsort(found, nfound, sizeof *found, cmp_entry);
    for (size_t i = 0; i < nfound; i++) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "path", found[i].rel);
        cJSON_AddNumberToObject(d, "classes", found[i].classes);
        cJSON_AddNumberToObject(d, "images", found[i].images);
        cJSON_AddBoolToObject(d, "has_label_maps", found[i].has_maps);
        if (found[i].has_maps) {
            char maps[PATH_MAX + 8];
            snprintf(maps, sizeof maps, "%s.tllm", found[i].rel);
            cJSON_AddStringToObject(d, "label_maps", maps);
        } else {
            cJSON_AddNullToObject(d, "label_maps");
        }
        cJSON_AddItemToArray(arr, d);
        free(found[i].rel);
    }
done:
    while (qhead < qn) free(queue[qhead++].rel);
    free(queue);
    free(found);
    cJSON_AddBoolToObject(o, "truncated", truncated);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

void tld_h_datasets(tld_req *r, void *user) {
    (void)user;
    pthread_mutex_lock(&g_ds.mu);
    int64_t now = tl_clock_mono_ms();
    if (!g_ds.cached || now - g_ds.cached_ms > TLD_DATASETS_CACHE_MS) {
        char *s = scan(g_ds.root);
        if (s) {
            free(g_ds.cached);
            g_ds.cached = s;
            g_ds.cached_ms = tl_clock_mono_ms();
        }
    }
    if (g_ds.cached) tld_reply_json(r, 200, g_ds.cached);
    else tld_reply_problem(r, 500, "INTERNAL", NULL, "out of memory listing datasets");
    pthread_mutex_unlock(&g_ds.mu);
}


int tld_datasets_init(const char *data_root) {
    if (!data_root || strlen(data_root) >= sizeof g_ds.root) return -1;
    snprintf(g_ds.root, sizeof g_ds.root, "%s", data_root);
    return 0;
}
