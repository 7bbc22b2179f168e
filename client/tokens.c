/*
 * tokens.c: letter grids for token maps (see tokens.h). Classes are given
 * letters by how many tokens they hold (most first): A-Z, a-z, 0-9; classes
 * beyond those 62 share '*'. Allocation: one count array for the classes
 * seen, bounded by the number of tokens. Colours come from the class palette
 * in tokenlab/palette.h (header-only, so no engine library is linked).
 */
#include "tokens.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "out.h"
#include "tokenlab/palette.h"

static const char SYMBOLS[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
#define NSYM ((int)sizeof SYMBOLS - 1)
#define NMAPS_MAX 4

int tokens_from_json(const cJSON *arr, int g, int *out) {
    if (g < 1 || g > TOKENS_GRID_MAX || !cJSON_IsArray(arr) || cJSON_GetArraySize(arr) != g * g) return -1;
    int i = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, arr) {
        if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble > 1e9 || x->valuedouble != floor(x->valuedouble))
            return -1;
        out[i++] = (int)x->valuedouble;
    }
    return 0;
}

typedef struct {
    int cls, total, count[NMAPS_MAX];
    char sym;
} seen;

static int by_count(const void *a, const void *b) {
    const seen *x = a, *y = b;
    if (x->total != y->total) return y->total - x->total;
    return x->cls - y->cls;
}

static const char *label_of(const cJSON *classes, int cls, char *buf, size_t len) {
    const cJSON *x;
    const cJSON *arr = cJSON_IsArray(classes) ? classes : NULL;
    cJSON_ArrayForEach(x, arr) {
        if ((int)out_jnum(x, "index", -1) == cls) {
            out_sanitize(out_jstr(x, "label", ""), buf, len);
            if (*buf) return buf;
        }
    }
    snprintf(buf, len, "class %d", cls);
    return buf;
}

void tokens_print(FILE *f, int g, int n, const int *const *maps, const char *const *titles, const cJSON *classes,
                  int color) {
    if (g < 1 || g > TOKENS_GRID_MAX || n < 1) return;
    if (n > NMAPS_MAX) n = NMAPS_MAX;
    int cells = g * g, nseen = 0;
    seen *s = calloc((size_t)cells * (size_t)n, sizeof *s);
    if (!s) return;
    for (int m = 0; m < n; m++)
        for (int i = 0; i < cells; i++) {
            int c = maps[m][i], k = 0;
            while (k < nseen && s[k].cls != c) k++;
            if (k == nseen) s[nseen++].cls = c;
            s[k].count[m]++;
            s[k].total++;
        }
    qsort(s, (size_t)nseen, sizeof *s, by_count);
    for (int k = 0; k < nseen; k++) s[k].sym = k < NSYM ? SYMBOLS[k] : '*';

    /* titles, then the rows of every map side by side; a column is as wide as its grid or title */
    int colw[NMAPS_MAX];
    char t[NMAPS_MAX][128];
    for (int m = 0; m < n; m++) {
        out_sanitize(titles && titles[m] ? titles[m] : "", t[m], sizeof t[m]);
        colw[m] = (int)strlen(t[m]) > 2 * g ? (int)strlen(t[m]) : 2 * g;
    }
    for (int m = 0; m < n; m++) fprintf(f, "%-*s%s", m < n - 1 ? colw[m] : 0, t[m], m < n - 1 ? "    " : "\n");
    for (int y = 0; y < g; y++) {
        for (int m = 0; m < n; m++) {
            for (int x = 0; x < g; x++) {
                int c = maps[m][y * g + x], k = 0;
                while (k < nseen && s[k].cls != c) k++;
                char sym = k < nseen ? s[k].sym : '?';
                if (color) {
                    uint8_t rgb[3];
                    tl_class_colour(c, rgb);
                    int dark = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 140;
                    fprintf(f, "\033[48;2;%d;%d;%dm\033[38;2;%s%c \033[0m", rgb[0], rgb[1], rgb[2],
                            dark ? "0;0;0m" : "255;255;255m", sym);
                } else {
                    fprintf(f, "%c ", sym);
                }
            }
            if (m < n - 1) fprintf(f, "%*s", colw[m] - 2 * g + 4, "");
            else fputc('\n', f);
        }
    }
    /* legend */
    int others = 0;
    for (int k = 0; k < nseen; k++) {
        if (k >= NSYM) {
            others += s[k].total;
            continue;
        }
        char lab[200];
        label_of(classes, s[k].cls, lab, sizeof lab);
        if (color) {
            uint8_t rgb[3];
            tl_class_colour(s[k].cls, rgb);
            fprintf(f, "  \033[48;2;%d;%d;%dm  \033[0m %c  %s (class %d):", rgb[0], rgb[1], rgb[2], s[k].sym, lab,
                    s[k].cls);
        } else {
            fprintf(f, "  %c  %s (class %d):", s[k].sym, lab, s[k].cls);
        }
        for (int m = 0; m < n; m++) fprintf(f, "%s %d", m ? " |" : "", s[k].count[m]);
        fprintf(f, " token%s\n", s[k].total == 1 ? "" : "s");
    }
    if (others) fprintf(f, "  *  %d other classes: %d tokens\n", nseen - NSYM, others);
    free(s);
}
