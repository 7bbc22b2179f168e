/*
 * dataset.c: the class-per-folder image dataset (see data.h).
 *
 * Owns: a tl_dataset, built once by tl_dataset_open on the calling thread and
 * read-only afterwards, so any number of loader threads may query it at once.
 *
 * Layout: <root>/<class folder>/<image>. Class folders are the sub-directories
 * of root (symlinks to directories count), sorted by strcmp, hidden ones
 * (leading '.') skipped; a class folder without images still counts, so class
 * indices match across splits. Images are the regular files (symlinks that
 * resolve to regular files count) whose extension is jpg or jpeg in any case,
 * hidden ones (e.g. macOS "._x.jpg" resource forks) skipped, sorted by strcmp
 * within each class. Sub-folders of class folders are not descended into.
 *
 * Memory: relpaths "class/file" live in one growing arena, indexed by offsets,
 * so 1.28 M files cost one allocation per doubling, not one per file; sorting
 * is qsort per class and classes.tsv lookups are binary searches, so opening
 * is O(n log n). stat() is called only when readdir cannot tell the type.
 *
 * Confinement (tl_dataset_open_confined): an entry that is a symbolic link is
 * canonicalised and kept only when it lies inside the confining folder
 * (tl_path_is_inside, the engine's one rule); the others are counted. Plain
 * folders and files below a confined root are inside by construction. A link
 * swapped in after the scan is not seen here.
 *
 * classes.tsv (optional, in root, else in root's parent so that the train/
 * and val/ splits of one dataset share it): "folder<TAB>readable name[<TAB>...]" per
 * line; the first line is a header if its first field is not a class folder;
 * lines naming unknown folders are ignored; classes it does not name keep
 * their folder name. When the header names a column "imagenet_index"
 * (ImageNet's classes.tsv: wnid<TAB>name<TAB>imagenet_index), that column
 * gives each class its ImageNet-1k index (tl_dataset_class_imagenet_index),
 * which fine-tuning uses to match a 1000-class source's head rows; a value
 * that is not a plain integer in 0..999999 counts as absent (-1).
 *
 * tl_dataset_count_classes counts the class folders as tl_dataset_open does,
 * without listing their images (the job-spec checks use it).
 */
#include "tokenlab/dataset.h"
#include "tokenlab/base.h"
#include "tokenlab/files.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#define TL_CLASSES_TSV_MAX (64u << 20)

struct tl_dataset {
    char *root;
    int nclass;
    char **folder; /* sorted */
    char **name;   /* owned; equal to folder's text when classes.tsv has none */
    int *imagenet; /* classes.tsv's imagenet_index column, -1 where absent */
    int n;
    size_t *off; /* relpath i = arena + off[i] */
    int *label;
    char *arena;
    int64_t outside; /* links skipped for leading outside the confining folder */
};

#define FAIL(...)                                                  \
    do {                                                           \
        tl_seterr(err, errlen, __VA_ARGS__);                       \
        goto fail;                                                 \
    } while (0)

/* Growing list of strings in an arena. */
typedef struct {
    char *buf;
    size_t len, cap;
    size_t *off;
    size_t n, ncap;
} strlist;

static int sl_push(strlist *l, const char *a, const char *b) {
    size_t la = strlen(a), lb = b ? strlen(b) : 0, need = la + (b ? 1 + lb : 0) + 1;
    if (l->len + need > l->cap) {
        size_t cap = l->cap ? l->cap : 4096;
        while (cap < l->len + need) cap *= 2;
        char *nb = realloc(l->buf, cap);
        if (!nb) return -1;
        l->buf = nb;
        l->cap = cap;
    }
    if (l->n == l->ncap) {
        size_t nc = l->ncap ? l->ncap * 2 : 256;
        size_t *no = realloc(l->off, nc * sizeof *no);
        if (!no) return -1;
        l->off = no;
        l->ncap = nc;
    }
    l->off[l->n++] = l->len;
    memcpy(l->buf + l->len, a, la);
    l->len += la;
    if (b) {
        l->buf[l->len++] = '/';
        memcpy(l->buf + l->len, b, lb);
        l->len += lb;
    }
    l->buf[l->len++] = '\0';
    return 0;
}

static void sl_free(strlist *l) {
    free(l->buf);
    free(l->off);
    memset(l, 0, sizeof *l);
}

/* qsort over offsets into one arena: the arena is passed through a
 * thread-local pointer, since qsort has no context argument (qsort_r would
 * do, but keeping to C11 + POSIX is simpler to port). */
static _Thread_local const char *g_sort_arena;

static int cmp_off(const void *a, const void *b) {
    return strcmp(g_sort_arena + *(const size_t *)a, g_sort_arena + *(const size_t *)b);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int is_jpeg_name(const char *s) {
    const char *dot = strrchr(s, '.');
    if (!dot || dot == s) return 0;
    return strcasecmp(dot + 1, "jpg") == 0 || strcasecmp(dot + 1, "jpeg") == 0;
}

/* 1 directory, 2 regular file, 0 other or unknown. With confine, a symbolic link that resolves outside it
 * is 0 and counted in *outside. */
static int entry_kind(const char *dir, const struct dirent *e, const char *confine, int64_t *outside) {
#ifdef DT_DIR
    if (e->d_type == DT_DIR) return 1;
    if (e->d_type == DT_REG) return 2;
    if (e->d_type != DT_LNK && e->d_type != DT_UNKNOWN) return 0;
#endif
    char path[PATH_MAX];
    int k = snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    if (k < 0 || (size_t)k >= sizeof path) return 0;
    struct stat st;
    if (confine && lstat(path, &st) == 0 && S_ISLNK(st.st_mode)) {
        char real[PATH_MAX];
        if (!realpath(path, real)) return 0; /* dangling */
        if (!tl_path_is_inside(real, confine)) {
            (*outside)++;
            return 0;
        }
    }
    if (stat(path, &st) != 0) return 0; /* dangling symlink: not an image */
    return S_ISDIR(st.st_mode) ? 1 : S_ISREG(st.st_mode) ? 2 : 0;
}

static int find_class(const tl_dataset *d, const char *folder) {
    int lo = 0, hi = d->nclass - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2, c = strcmp(d->folder[mid], folder);
        if (c == 0) return mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

#define TSV_MAX_COLS 16

/* Splits line at tabs in place into at most TSV_MAX_COLS fields (the last keeps any further tabs);
 * returns the count (>= 1). */
static int split_tabs(char *line, char **field) {
    int n = 0;
    field[n++] = line;
    for (char *p = line; *p && n < TSV_MAX_COLS; p++) {
        if (*p != '\t') continue;
        *p = '\0';
        field[n++] = p + 1;
    }
    return n;
}

/* A plain decimal integer in 0..999999, else -1. */
static int parse_index(const char *s) {
    if (!*s || strlen(s) > 6) return -1;
    int v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return -1;
        v = v * 10 + (*s - '0');
    }
    return v;
}

/* Reads classes.tsv from root, else from root's parent (the usual place
 * when root is a split: <dataset>/classes.tsv beside train/ and val/);
 * 0 on success or absence. */
static int read_classes_tsv(tl_dataset *d, char *err, size_t errlen) {
    char path[PATH_MAX];
    char *text = NULL;
    FILE *f = NULL;
    for (int up = 0; up < 2 && !f; up++) {
        int k = snprintf(path, sizeof path, up ? "%s/../classes.tsv" : "%s/classes.tsv", d->root);
        if (k < 0 || (size_t)k >= sizeof path) return 0;
        f = fopen(path, "rb");
        if (!f && errno != ENOENT) FAIL("%s: %s", path, strerror(errno));
    }
    if (!f) return 0;
    struct stat st;
    if (fstat(fileno(f), &st) != 0) FAIL("%s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) FAIL("%s: not a regular file", path);
    if ((uint64_t)st.st_size > TL_CLASSES_TSV_MAX) FAIL("%s: larger than %u MiB", path, TL_CLASSES_TSV_MAX >> 20);
    size_t n = (size_t)st.st_size;
    text = malloc(n + 1);
    if (!text) FAIL("%s: out of memory", path);
    if (fread(text, 1, n, f) != n) FAIL("%s: short read", path);
    text[n] = '\0';
    fclose(f);
    f = NULL;
    /* A first line naming no folder (a header) and later lines naming unknown
     * folders are both simply skipped; the header only tells which column, if
     * any, is imagenet_index. */
    char *line = text;
    int first = 1, inet_col = -1;
    while (line && *line) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = '\0';
        size_t ll = strlen(line);
        if (ll && line[ll - 1] == '\r') line[--ll] = '\0';
        if (ll) {
            char *field[TSV_MAX_COLS];
            int nf = split_tabs(line, field);
            int c = find_class(d, field[0]);
            if (first && c < 0) {
                for (int i = 1; i < nf; i++)
                    if (strcmp(field[i], "imagenet_index") == 0) inet_col = i;
            }
            first = 0;
            if (c >= 0 && nf > 1 && field[1][0]) {
                char *dup = strdup(field[1]);
                if (!dup) FAIL("%s: out of memory", path);
                free(d->name[c]);
                d->name[c] = dup;
            }
            if (c >= 0 && inet_col > 0 && inet_col < nf) d->imagenet[c] = parse_index(field[inet_col]);
        }
        line = nl ? nl + 1 : NULL;
    }
    free(text);
    return 0;
fail:
    if (f) fclose(f);
    free(text);
    return -1;
}

tl_dataset *tl_dataset_open(const char *root, char *err, size_t errlen) {
    return tl_dataset_open_confined(root, NULL, err, errlen);
}

int64_t tl_dataset_outside(const tl_dataset *d) { return d ? d->outside : 0; }

tl_dataset *tl_dataset_open_confined(const char *root, const char *confine, char *err, size_t errlen) {
    tl_dataset *d = NULL;
    DIR *dir = NULL;
    strlist classes = {0}, files = {0}, all = {0};
    int *labels = NULL;
    size_t labcap = 0;
    if (!root || !*root) FAIL("dataset: no root folder given");
    struct stat st;
    if (stat(root, &st) != 0) FAIL("dataset root %s: %s", root, strerror(errno));
    if (!S_ISDIR(st.st_mode)) FAIL("dataset root %s: not a folder", root);
    d = calloc(1, sizeof *d);
    if (!d) FAIL("dataset: out of memory");
    d->root = strdup(root);
    if (!d->root) FAIL("dataset: out of memory");
    for (size_t l = strlen(d->root); l > 1 && d->root[l - 1] == '/'; l--) d->root[l - 1] = '\0';

    dir = opendir(d->root);
    if (!dir) FAIL("dataset root %s: %s", root, strerror(errno));
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        if (e->d_name[0] == '.') continue;
        if (entry_kind(d->root, e, confine, &d->outside) != 1) continue;
        if (sl_push(&classes, e->d_name, NULL) != 0) FAIL("dataset: out of memory");
    }
    closedir(dir);
    dir = NULL;
    if (classes.n == 0) FAIL("dataset root %s: no class folders (expected <root>/<class>/<image>.jpg)", root);
    if (classes.n > 1000000) FAIL("dataset root %s: %zu class folders, more than 1000000", root, classes.n);
    d->nclass = (int)classes.n;
    d->folder = calloc(classes.n, sizeof *d->folder);
    d->name = calloc(classes.n, sizeof *d->name);
    d->imagenet = malloc(classes.n * sizeof *d->imagenet);
    if (!d->folder || !d->name || !d->imagenet) FAIL("dataset: out of memory");
    for (size_t c = 0; c < classes.n; c++) d->imagenet[c] = -1;
    for (size_t c = 0; c < classes.n; c++) {
        d->folder[c] = strdup(classes.buf + classes.off[c]);
        if (!d->folder[c]) FAIL("dataset: out of memory");
    }
    qsort(d->folder, classes.n, sizeof *d->folder, cmp_str);
    for (size_t c = 0; c < classes.n; c++) {
        d->name[c] = strdup(d->folder[c]);
        if (!d->name[c]) FAIL("dataset: out of memory");
    }

    for (int c = 0; c < d->nclass; c++) {
        char cdir[PATH_MAX];
        int k = snprintf(cdir, sizeof cdir, "%s/%s", d->root, d->folder[c]);
        if (k < 0 || (size_t)k >= sizeof cdir) FAIL("dataset: path too long: %s/%s", d->root, d->folder[c]);
        dir = opendir(cdir);
        if (!dir) FAIL("dataset class folder %s: %s", cdir, strerror(errno));
        files.len = 0;
        files.n = 0;
        while ((e = readdir(dir)) != NULL) {
            if (e->d_name[0] == '.' || !is_jpeg_name(e->d_name)) continue;
            if (entry_kind(cdir, e, confine, &d->outside) != 2) continue;
            if (sl_push(&files, e->d_name, NULL) != 0) FAIL("dataset: out of memory");
        }
        closedir(dir);
        dir = NULL;
        if (files.n > 1) {
            g_sort_arena = files.buf;
            qsort(files.off, files.n, sizeof *files.off, cmp_off);
        }
        if (all.n + files.n > (size_t)INT_MAX) FAIL("dataset root %s: more than %d images", root, INT_MAX);
        if (all.n + files.n > labcap) {
            size_t nc = labcap ? labcap : 1024;
            while (nc < all.n + files.n) nc *= 2;
            int *nl = realloc(labels, nc * sizeof *nl);
            if (!nl) FAIL("dataset: out of memory");
            labels = nl;
            labcap = nc;
        }
        for (size_t i = 0; i < files.n; i++) {
            labels[all.n] = c;
            if (sl_push(&all, d->folder[c], files.buf + files.off[i]) != 0) FAIL("dataset: out of memory");
        }
    }
    sl_free(&files);
    sl_free(&classes);
    if (all.n == 0) FAIL("dataset root %s: no images (.jpg/.jpeg files) in its %d class folders", root, d->nclass);
    d->n = (int)all.n;
    d->arena = all.buf;
    d->off = all.off;
    d->label = labels;
    labels = NULL;
    memset(&all, 0, sizeof all);
    if (read_classes_tsv(d, err, errlen) != 0) goto fail;
    return d;
fail:
    if (dir) closedir(dir);
    sl_free(&classes);
    sl_free(&files);
    sl_free(&all);
    free(labels);
    tl_dataset_free(d);
    return NULL;
}

void tl_dataset_free(tl_dataset *d) {
    if (!d) return;
    for (int c = 0; c < d->nclass; c++) {
        if (d->folder) free(d->folder[c]);
        if (d->name) free(d->name[c]);
    }
    free(d->folder);
    free(d->name);
    free(d->imagenet);
    free(d->off);
    free(d->label);
    free(d->arena);
    free(d->root);
    free(d);
}

const char *tl_dataset_root(const tl_dataset *d) { return d ? d->root : NULL; }
int tl_dataset_count(const tl_dataset *d) { return d ? d->n : 0; }
int tl_dataset_num_classes(const tl_dataset *d) { return d ? d->nclass : 0; }

const char *tl_dataset_class_folder(const tl_dataset *d, int c) {
    return d && c >= 0 && c < d->nclass ? d->folder[c] : NULL;
}

const char *tl_dataset_class_name(const tl_dataset *d, int c) {
    return d && c >= 0 && c < d->nclass ? d->name[c] : NULL;
}

int tl_dataset_class_imagenet_index(const tl_dataset *d, int c) {
    return d && c >= 0 && c < d->nclass ? d->imagenet[c] : -1;
}

int tl_dataset_count_classes(const char *root, char *err, size_t errlen) {
    if (!root || !*root) return tl_seterr(err, errlen, "dataset: no root folder given");
    DIR *dir = opendir(root);
    if (!dir) return tl_seterr(err, errlen, "dataset root %s: %s", root, strerror(errno));
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL)
        if (e->d_name[0] != '.' && entry_kind(root, e, NULL, NULL) == 1 && n < INT_MAX) n++;
    closedir(dir);
    if (n == 0) return tl_seterr(err, errlen, "dataset root %s: no class folders", root);
    return n;
}

const char *tl_dataset_relpath(const tl_dataset *d, int i) {
    return d && i >= 0 && i < d->n ? d->arena + d->off[i] : NULL;
}

int tl_dataset_label(const tl_dataset *d, int i) { return d && i >= 0 && i < d->n ? d->label[i] : -1; }

int tl_dataset_path(const tl_dataset *d, int i, char *buf, size_t len) {
    if (!d || i < 0 || i >= d->n || !buf || len == 0) return -1;
    int k = snprintf(buf, len, "%s/%s", d->root, d->arena + d->off[i]);
    return k < 0 || (size_t)k >= len ? -1 : 0;
}
