/*
 * multipart.c: the multipart/form-data parser (see multipart.h).
 *
 * Owns nothing and allocates nothing: the boundary is copied into a stack
 * buffer (at most 70 bytes), parts point into the caller's body. Pure; any
 * thread. Every read is bounded by the body's length, so a truncated or
 * hostile body can make it fail but never read past the end.
 *
 * Grammar (RFC 2046 section 5.1.1, RFC 7578):
 *   body      := [preamble CRLF] "--" boundary padding CRLF part
 *                *(CRLF "--" boundary padding CRLF part)
 *                CRLF "--" boundary "--" [anything: the epilogue]
 *   padding   := *(SP / HT)
 *   part      := headers CRLF data      (headers: zero or more "Name: value" CRLF lines)
 * The first delimiter may open the body without a CRLF before it. A sequence
 * CRLF "--" boundary is a delimiter only when "--" or padding CRLF follows it
 * (as Go's mime/multipart does); otherwise it is part data, so binary data that
 * happens to contain "\r\n--" plus a prefix of the boundary is kept intact.
 * A part's data ends at the CRLF of the next delimiter; that CRLF belongs to
 * the delimiter, not to the data.
 */
#include "http/multipart.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define TLD_MP_BOUNDARY_MAX 70

static int mp_fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int mp_fail(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static int is_ws(int c) { return c == ' ' || c == '\t'; }

/* RFC 2045 token characters. */
static int is_tchar(int c) {
    if (c <= 32 || c >= 127) return 0;
    return strchr("()<>@,;:\\\"/[]?=", c) == NULL;
}

/* RFC 2046 bchars (space allowed except last). */
static int is_bchar(int c) {
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return 1;
    return c != 0 && strchr("'()+_,-./:=? ", c) != NULL;
}

/* Reads a token or quoted-string value at *p (NUL-terminated string s) into out (cap bytes incl. NUL).
 * Returns 0, -1 on syntax error, -2 when the value does not fit. Advances *p past the value. */
static int read_value(const char **p, char *out, size_t cap) {
    const char *s = *p;
    size_t n = 0;
    int toolong = 0;
    if (*s == '"') {
        s++;
        for (;;) {
            unsigned char c = (unsigned char)*s;
            if (c == 0) return -1; /* unterminated */
            if (c == '"') {
                s++;
                break;
            }
            if (c == '\\') {
                s++;
                c = (unsigned char)*s;
                if (c == 0) return -1;
            }
            if ((c < 32 && c != '\t') || c == 127) return -1;
            if (n + 1 < cap) out[n++] = (char)c;
            else toolong = 1;
            s++;
        }
    } else {
        while (is_tchar((unsigned char)*s)) {
            if (n + 1 < cap) out[n++] = *s;
            else toolong = 1;
            s++;
        }
        if (s == *p) return -1; /* empty token */
    }
    if (cap) out[n] = 0;
    *p = s;
    return toolong ? -2 : 0;
}

/* Parses ";" separated "name=value" parameters from s (just after the type). For each parameter
 * fn(name, value, user) is called; a non-zero return stops with that code. Returns 0 or -1 on syntax,
 * -2 on a value that does not fit in vcap bytes. */
typedef int (*param_fn)(const char *name, const char *value, void *user);

static int parse_params(const char *s, char *value, size_t vcap, param_fn fn, void *user) {
    for (;;) {
        while (is_ws(*s)) s++;
        if (*s == 0) return 0;
        if (*s != ';') return -1;
        s++;
        while (is_ws(*s)) s++;
        if (*s == 0) return 0; /* tolerate a trailing ";" */
        char name[64];
        size_t n = 0;
        while (is_tchar((unsigned char)*s)) {
            if (n + 1 >= sizeof name) return -1;
            name[n++] = *s++;
        }
        name[n] = 0;
        if (n == 0) return -1;
        while (is_ws(*s)) s++;
        if (*s != '=') return -1;
        s++;
        while (is_ws(*s)) s++;
        int rc = read_value(&s, value, vcap);
        if (rc) return rc;
        rc = fn(name, value, user);
        if (rc) return rc;
    }
}

/* ---- Content-Type of the request ---- */

typedef struct {
    char boundary[TLD_MP_BOUNDARY_MAX + 1];
    int found, dup, toolong;
} ct_state;

static int ct_param(const char *name, const char *value, void *user) {
    ct_state *st = user;
    if (strcasecmp(name, "boundary") != 0) return 0;
    if (st->found++) {
        st->dup = 1;
        return 0;
    }
    size_t n = strlen(value);
    if (n > TLD_MP_BOUNDARY_MAX) st->toolong = 1;
    else memcpy(st->boundary, value, n + 1);
    return 0;
}

static int get_boundary(const char *ct, char *boundary, char *err, size_t errlen) {
    if (!ct) return mp_fail(err, errlen, "no Content-Type header");
    while (is_ws(*ct)) ct++;
    static const char type[] = "multipart/form-data";
    const size_t tn = sizeof type - 1;
    if (strncasecmp(ct, type, tn) != 0 || (ct[tn] != 0 && ct[tn] != ';' && !is_ws(ct[tn])))
        return mp_fail(err, errlen, "Content-Type is not multipart/form-data");
    ct_state st;
    memset(&st, 0, sizeof st);
    char value[512];
    int rc = parse_params(ct + tn, value, sizeof value, ct_param, &st);
    if (rc) return mp_fail(err, errlen, "malformed parameters in Content-Type");
    if (!st.found) return mp_fail(err, errlen, "no boundary parameter in Content-Type");
    if (st.dup) return mp_fail(err, errlen, "more than one boundary parameter in Content-Type");
    if (st.toolong)
        return mp_fail(err, errlen, "multipart boundary is longer than %d characters", TLD_MP_BOUNDARY_MAX);
    size_t n = strlen(st.boundary);
    if (n < 1) return mp_fail(err, errlen, "multipart boundary is empty");
    for (size_t i = 0; i < n; i++)
        if (!is_bchar((unsigned char)st.boundary[i]))
            return mp_fail(err, errlen, "multipart boundary has a character not allowed by RFC 2046");
    if (st.boundary[n - 1] == ' ') return mp_fail(err, errlen, "multipart boundary ends with a space");
    memcpy(boundary, st.boundary, n + 1);
    return 0;
}

/* ---- delimiters ---- */

/* What follows "--boundary" at q (end e): 1 delimiter (sets *next to the part start, after the CRLF),
 * 2 closing delimiter, 0 not a delimiter (data), -1 malformed delimiter line, -3 body ends before
 * the line is complete. */
static int delim_kind(const uint8_t *q, const uint8_t *e, const uint8_t **next) {
    if (q == e) return -3;
    if (*q == '-') {
        if (q + 1 == e) return -3;
        return q[1] == '-' ? 2 : 0;
    }
    if (!is_ws(*q) && *q != '\r' && *q != '\n') return 0;
    while (q < e && is_ws(*q)) q++;
    if (q == e) return -3;
    if (*q != '\r') return -1;
    if (q + 1 == e) return -3;
    if (q[1] != '\n') return -1;
    *next = q + 2;
    return 1;
}

/* Finds the next delimiter CRLF "--" boundary at or after p. Returns its position (at the CRLF) with its
 * kind and next pointer, or NULL with *kind = 0 when none (or the negative kind of a bad one). */
static const uint8_t *find_delim(const uint8_t *p, const uint8_t *e, const char *dash_b, size_t dlen, int *kind,
                                 const uint8_t **next) {
    *kind = 0;
    while (p < e && (size_t)(e - p) >= dlen + 2) {
        const uint8_t *c = memmem(p, (size_t)(e - p), "\r\n", 2);
        if (!c) return NULL;
        if ((size_t)(e - c) >= dlen + 2 && memcmp(c + 2, dash_b, dlen) == 0) {
            int k = delim_kind(c + 2 + dlen, e, next);
            if (k != 0) {
                *kind = k;
                return k > 0 ? c : NULL;
            }
        }
        p = c + 1;
    }
    return NULL;
}

/* ---- part headers ---- */

static int parse_disposition(const char *v, tld_part *part, char *err, size_t errlen, int idx) {
    const char *s = v;
    static const char fd[] = "form-data";
    if (strncasecmp(s, fd, sizeof fd - 1) != 0 || is_tchar((unsigned char)s[sizeof fd - 1]))
        return mp_fail(err, errlen, "part %d: Content-Disposition is not form-data", idx);
    s += sizeof fd - 1;
    int have_name = 0, have_file = 0;
    for (;;) {
        while (is_ws(*s)) s++;
        if (*s == 0) break;
        if (*s != ';') return mp_fail(err, errlen, "part %d: malformed Content-Disposition", idx);
        s++;
        while (is_ws(*s)) s++;
        if (*s == 0) break;
        char name[64];
        size_t n = 0;
        while (is_tchar((unsigned char)*s)) {
            if (n + 1 >= sizeof name) return mp_fail(err, errlen, "part %d: malformed Content-Disposition", idx);
            name[n++] = *s++;
        }
        name[n] = 0;
        while (is_ws(*s)) s++;
        if (n == 0 || *s != '=') return mp_fail(err, errlen, "part %d: malformed Content-Disposition", idx);
        s++;
        while (is_ws(*s)) s++;
        char tmp[TLD_MULTIPART_MAX_HEADERS + 1];
        int rc = read_value(&s, tmp, sizeof tmp);
        if (rc) return mp_fail(err, errlen, "part %d: malformed Content-Disposition parameter %s", idx, name);
        if (strcasecmp(name, "name") == 0) {
            if (have_name++) return mp_fail(err, errlen, "part %d: more than one name parameter", idx);
            if (strlen(tmp) >= sizeof part->name)
                return mp_fail(err, errlen, "part %d: name is longer than %zu bytes", idx, sizeof part->name - 1);
            memcpy(part->name, tmp, strlen(tmp) + 1);
        } else if (strcasecmp(name, "filename") == 0) {
            if (have_file++) return mp_fail(err, errlen, "part %d: more than one filename parameter", idx);
            if (strlen(tmp) >= sizeof part->filename)
                return mp_fail(err, errlen, "part %d: filename is longer than %zu bytes", idx,
                               sizeof part->filename - 1);
            memcpy(part->filename, tmp, strlen(tmp) + 1);
        } /* other parameters (filename*, ...) are ignored */
    }
    return 0;
}

/* Parses the header block [h, h+n) (lines separated by CRLF, no final CRLF) into part. */
static int parse_headers(const uint8_t *h, size_t n, tld_part *part, int idx, char *err, size_t errlen) {
    int have_cd = 0, have_ct = 0;
    const uint8_t *e = h + n, *line = h;
    while (line < e) {
        const uint8_t *le = memmem(line, (size_t)(e - line), "\r\n", 2);
        if (!le) le = e;
        size_t ll = (size_t)(le - line);
        if (ll == 0) return mp_fail(err, errlen, "part %d: empty header line", idx);
        if (is_ws(line[0])) return mp_fail(err, errlen, "part %d: folded header lines are not supported", idx);
        char buf[TLD_MULTIPART_MAX_HEADERS + 1];
        for (size_t i = 0; i < ll; i++) {
            uint8_t c = line[i];
            if (c == '\r' || c == '\n') return mp_fail(err, errlen, "part %d: header lines must end with CRLF", idx);
            if (c == 0 || c == 127 || (c < 32 && c != '\t'))
                return mp_fail(err, errlen, "part %d: control character in a header", idx);
            buf[i] = (char)c;
        }
        buf[ll] = 0;
        char *colon = strchr(buf, ':');
        if (!colon || colon == buf) return mp_fail(err, errlen, "part %d: malformed header line", idx);
        *colon = 0;
        for (char *q = buf; *q; q++)
            if (!is_tchar((unsigned char)*q)) return mp_fail(err, errlen, "part %d: malformed header name", idx);
        char *v = colon + 1;
        while (is_ws(*v)) v++;
        size_t vl = strlen(v);
        while (vl && is_ws(v[vl - 1])) v[--vl] = 0;
        if (strcasecmp(buf, "Content-Disposition") == 0) {
            if (have_cd++) return mp_fail(err, errlen, "part %d: more than one Content-Disposition", idx);
            if (parse_disposition(v, part, err, errlen, idx)) return -1;
        } else if (strcasecmp(buf, "Content-Type") == 0) {
            if (have_ct++) return mp_fail(err, errlen, "part %d: more than one Content-Type", idx);
            if (vl >= sizeof part->content_type)
                return mp_fail(err, errlen, "part %d: Content-Type is longer than %zu bytes", idx,
                               sizeof part->content_type - 1);
            memcpy(part->content_type, v, vl + 1);
        } else if (strcasecmp(buf, "Content-Transfer-Encoding") == 0) {
            if (strcasecmp(v, "binary") != 0 && strcasecmp(v, "8bit") != 0 && strcasecmp(v, "7bit") != 0)
                return mp_fail(err, errlen, "part %d: Content-Transfer-Encoding %.32s is not supported", idx, v);
        } /* other headers are ignored */
        line = le == e ? e : le + 2;
    }
    return 0;
}

/* ---- body ---- */

int tld_multipart_parse(const char *content_type, const uint8_t *body, size_t len, tld_part *parts, int max_parts,
                       char *err, size_t errlen) {
    if (err && errlen) err[0] = 0;
    char boundary[TLD_MP_BOUNDARY_MAX + 1];
    if (get_boundary(content_type, boundary, err, errlen)) return -1;
    if (!body && len) return mp_fail(err, errlen, "no body");
    if (!body) body = (const uint8_t *)"";
    char dash_b[TLD_MP_BOUNDARY_MAX + 3];
    size_t dlen = (size_t)snprintf(dash_b, sizeof dash_b, "--%s", boundary);
    const uint8_t *e = body + len, *start = NULL;
    int kind = 0;

    /* The first delimiter: at the very start, or after a preamble and CRLF. */
    if (len >= dlen && memcmp(body, dash_b, dlen) == 0) kind = delim_kind(body + dlen, e, &start);
    if (kind == 0) find_delim(body, e, dash_b, dlen, &kind, &start);
    if (kind == 0) return mp_fail(err, errlen, "no multipart boundary delimiter in the body");
    if (kind == -3) return mp_fail(err, errlen, "missing closing delimiter (body truncated?)");
    if (kind == -1) return mp_fail(err, errlen, "malformed boundary delimiter line");
    int count = 0;
    while (kind == 1) {
        /* start: just after the CRLF of a delimiter line. */
        if (count >= max_parts) return mp_fail(err, errlen, "more than %d parts", max_parts < 0 ? 0 : max_parts);
        int idx = count + 1;
        const uint8_t *next = NULL;
        int nkind = 0;
        const uint8_t *d = find_delim(start, e, dash_b, dlen, &nkind, &next);
        if (!d) {
            if (nkind == -1) return mp_fail(err, errlen, "part %d: malformed boundary delimiter line", idx);
            if ((size_t)(e - start) >= dlen && memcmp(start, dash_b, dlen) == 0)
                return mp_fail(err, errlen, "part %d: no blank line after the headers", idx);
            return mp_fail(err, errlen, "missing closing delimiter (body truncated?)");
        }
        /* Header block: from start to the first CRLF CRLF, searched from the delimiter line's own CRLF
         * (start - 2) so that an empty block (a CRLF right away) is found, and up to the delimiter's CRLF
         * (d + 2) so that headers followed by no data at all are found too. */
        const uint8_t *hs = start - 2;
        size_t region = (size_t)(d + 2 - hs);
        size_t cap = (size_t)TLD_MULTIPART_MAX_HEADERS + 4;
        const uint8_t *he = memmem(hs, region < cap ? region : cap, "\r\n\r\n", 4);
        if (!he) {
            if (region > cap)
                return mp_fail(err, errlen, "part %d: header block longer than %d bytes", idx,
                               TLD_MULTIPART_MAX_HEADERS);
            return mp_fail(err, errlen, "part %d: no blank line after the headers", idx);
        }
        tld_part *pt = &parts[count];
        memset(pt, 0, sizeof *pt);
        /* he == hs: no header lines; otherwise the lines are [start, he) (he + 2 - start <= the limit,
         * counting each line's CRLF, by the bound of the search above). */
        size_t hlen = he > hs ? (size_t)(he - start) : 0;
        if (parse_headers(start, hlen, pt, idx, err, errlen)) return -1;
        const uint8_t *data = he + 4;
        if (data > d) data = d; /* headers then directly the delimiter: no data */
        pt->data = data;
        pt->len = (size_t)(d - data);
        count++;
        kind = nkind;
        start = next;
    }
    if (kind != 2) return mp_fail(err, errlen, "malformed boundary delimiter line");
    return count;
}
