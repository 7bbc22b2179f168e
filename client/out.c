/*
 * out.c: formatting for people (see out.h). Everything here is bounded by the
 * caller's buffers; the table grows its cell array and reports nothing on
 * allocation failure but prints what it has.
 */
#include "out.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CELL_MAX 48

const cJSON *out_jget(const cJSON *o, const char *path) {
    char key[128];
    while (o && path && *path) {
        size_t n = strcspn(path, ".");
        if (n >= sizeof key) return NULL;
        memcpy(key, path, n);
        key[n] = 0;
        o = cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
        path += n;
        if (*path == '.') path++;
    }
    return o;
}

const char *out_jstr(const cJSON *o, const char *path, const char *dflt) {
    const cJSON *v = out_jget(o, path);
    return cJSON_IsString(v) && v->valuestring ? v->valuestring : dflt;
}

double out_jnum(const cJSON *o, const char *path, double dflt) {
    const cJSON *v = out_jget(o, path);
    return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

const cJSON *out_jarr(const cJSON *o, const char *path) {
    const cJSON *v = out_jget(o, path);
    return cJSON_IsArray(v) ? v : NULL;
}

int out_jbool(const cJSON *o, const char *path, int dflt) {
    const cJSON *v = out_jget(o, path);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

/* Length of the valid UTF-8 sequence at p (1..4), or 0 when it is not one. */
static size_t utf8_len(const unsigned char *p) {
    size_t n = p[0] < 0x80 ? 1 : (p[0] & 0xE0) == 0xC0 ? 2 : (p[0] & 0xF0) == 0xE0 ? 3 : (p[0] & 0xF8) == 0xF0 ? 4 : 0;
    if (n == 2 && p[0] < 0xC2) return 0; /* overlong */
    for (size_t i = 1; i < n; i++)
        if ((p[i] & 0xC0) != 0x80) return 0;
    return n;
}

int out_utf8_valid(const char *s) {
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        size_t n = utf8_len(p);
        if (!n) return 0;
        p += n;
    }
    return 1;
}

void out_sanitize(const char *in, char *out, size_t len) {
    size_t o = 0;
    if (!len) return;
    for (const unsigned char *p = (const unsigned char *)(in ? in : ""); *p && o + 1 < len;) {
        size_t n = utf8_len(p);
        if (n == 1) {
            out[o++] = (*p < 0x20 || *p == 0x7f) ? '?' : (char)*p;
            p++;
        } else if (n == 0) { /* not UTF-8 */
            out[o++] = '?';
            p++;
        } else if (o + n < len) {
            memmove(out + o, p, n);
            o += n;
            p += n;
        } else {
            break; /* a whole character does not fit */
        }
    }
    out[o] = 0;
}

void out_duration(double s, char *buf, size_t len) {
    if (!(s >= 0) || s > 1e9) {
        snprintf(buf, len, "-");
        return;
    }
    long long t = llround(s);
    if (t < 60) snprintf(buf, len, "%llds", t);
    else if (t < 3600) snprintf(buf, len, "%lldm%02llds", t / 60, t % 60);
    else if (t < 86400) snprintf(buf, len, "%lldh%02lldm", t / 3600, t % 3600 / 60);
    else snprintf(buf, len, "%lldd%02lldh", t / 86400, t % 86400 / 3600);
}

void out_time(double ms, char *buf, size_t len) {
    if (!(ms > 0) || ms > 1e15) {
        snprintf(buf, len, "-");
        return;
    }
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (!localtime_r(&t, &tm) || !strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm)) snprintf(buf, len, "-");
}

void out_bytes(double b, char *buf, size_t len) {
    if (!(b >= 0)) snprintf(buf, len, "-");
    else if (b < 1000) snprintf(buf, len, "%.0f B", b);
    else if (b < 1e6) snprintf(buf, len, "%.1f kB", b / 1e3);
    else if (b < 1e9) snprintf(buf, len, "%.1f MB", b / 1e6);
    else snprintf(buf, len, "%.2f GB", b / 1e9);
}

void out_count(double n, char *buf, size_t len) {
    if (!isfinite(n)) snprintf(buf, len, "-");
    else if (fabs(n) < 10000) snprintf(buf, len, "%.0f", n);
    else if (fabs(n) < 1e6) snprintf(buf, len, "%.1fk", n / 1e3);
    else if (fabs(n) < 1e9) snprintf(buf, len, "%.2fM", n / 1e6);
    else snprintf(buf, len, "%.2fG", n / 1e9);
}

void out_metric(double v, char *buf, size_t len) {
    if (isnan(v)) snprintf(buf, len, "nan");
    else snprintf(buf, len, "%.4g", v);
}

void out_table_init(out_table *t, int ncols, const char *const *head) {
    memset(t, 0, sizeof *t);
    t->ncols = ncols > 16 ? 16 : ncols;
    for (int i = 0; i < t->ncols; i++) t->head[i] = head[i];
}

static char *cell_copy(const char *s) {
    char tmp[CELL_MAX * 4 + 8];
    out_sanitize(s ? s : "", tmp, sizeof tmp);
    /* cut at CELL_MAX characters (UTF-8 code points) */
    size_t chars = 0, i = 0;
    for (; tmp[i]; i++) {
        if (((unsigned char)tmp[i] & 0xC0) != 0x80 && ++chars > CELL_MAX) break;
    }
    if (tmp[i]) {
        while (i > 0 && chars > CELL_MAX - 2) {
            i--;
            if (((unsigned char)tmp[i] & 0xC0) != 0x80) chars--;
        }
        snprintf(tmp + i, sizeof tmp - i, "..");
    }
    return strdup(tmp);
}

void out_table_row(out_table *t, ...) {
    if (t->oom) return;
    if (t->rows == t->cap) {
        int cap = t->cap ? t->cap * 2 : 32;
        char **c = realloc(t->cells, sizeof *c * (size_t)cap * (size_t)t->ncols);
        if (!c) {
            t->oom = 1;
            return;
        }
        t->cells = c;
        t->cap = cap;
    }
    va_list ap;
    va_start(ap, t);
    for (int i = 0; i < t->ncols; i++) t->cells[t->rows * t->ncols + i] = cell_copy(va_arg(ap, const char *));
    va_end(ap);
    t->rows++;
}

static int width(const char *s) {
    int w = 0;
    for (; s && *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80) w++;
    return w;
}

static void put_cell(FILE *f, const char *s, int w, int right, int last) {
    int pad = w - width(s);
    if (right) fprintf(f, "%*s%s", pad > 0 ? pad : 0, "", s);
    else if (last) fputs(s, f);
    else fprintf(f, "%s%*s", s, pad > 0 ? pad : 0, "");
}

void out_table_print(const out_table *t, FILE *f) {
    int w[16];
    for (int c = 0; c < t->ncols; c++) {
        const char *h = t->head[c];
        w[c] = width(h[0] == '>' ? h + 1 : h);
        for (int r = 0; r < t->rows; r++) {
            int x = width(t->cells[r * t->ncols + c]);
            if (x > w[c]) w[c] = x;
        }
    }
    for (int r = -1; r < t->rows; r++) {
        for (int c = 0; c < t->ncols; c++) {
            const char *h = t->head[c];
            int right = h[0] == '>';
            const char *s = r < 0 ? h + right : t->cells[r * t->ncols + c];
            put_cell(f, s ? s : "", w[c], right, c == t->ncols - 1);
            if (c < t->ncols - 1) fputs("  ", f);
        }
        fputc('\n', f);
    }
}

void out_table_free(out_table *t) {
    for (int i = 0; i < t->rows * t->ncols; i++) free(t->cells[i]);
    free(t->cells);
    memset(t, 0, sizeof *t);
}

void out_print_predictions(const cJSON *preds, FILE *f) {
    static const char *const head[] = {">#", ">CLASS", "LABEL", ">SCORE"};
    out_table t;
    const cJSON *p;
    int rank = 0;
    out_table_init(&t, 4, head);
    cJSON_ArrayForEach(p, preds) {
        char r[16], idx[24], sc[24];
        snprintf(r, sizeof r, "%d", ++rank);
        snprintf(idx, sizeof idx, "%.0f", out_jnum(p, "index", -1));
        snprintf(sc, sizeof sc, "%.2f%%", 100 * out_jnum(p, "score", 0));
        out_table_row(&t, r, idx, out_jstr(p, "label", "?"), sc);
    }
    out_table_print(&t, f);
    out_table_free(&t);
}

int out_tty(FILE *f) { return isatty(fileno(f)); }
