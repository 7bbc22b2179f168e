/*
 * test_multipart.c: multipart/form-data parsing: one and three parts,
 * preamble and epilogue, binary data with "\r\n--" fragments that are not the
 * boundary, quoted and case-insensitive boundary parameters, and every
 * refusal (no or bad boundary, missing closing delimiter, every truncation of
 * valid bodies, too many parts, header block too long, part without blank
 * line, malformed headers). Bodies are copied into exact-size heap buffers so
 * AddressSanitizer catches any read past the end; a seeded mutation loop
 * checks that no input crashes the parser and that parts stay in the body.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/multipart.h"

#define CT "multipart/form-data; boundary=XyZ"

/* A heap copy of exactly n bytes (no terminator), so reading past n trips ASan. */
static uint8_t *dup_exact(const void *p, size_t n) {
    uint8_t *b = malloc(n ? n : 1);
    assert_non_null(b);
    if (n) memcpy(b, p, n);
    return b;
}

static int parse(const char *ct, const void *body, size_t len, tld_part *parts, int max, char *err) {
    uint8_t *b = dup_exact(body, len);
    int n = tld_multipart_parse(ct, b, len, parts, max, err, 256);
    /* parts point into b: callers of this helper only look at counts and errors, or use parse_keep */
    free(b);
    return n;
}

static void expect_error(const char *ct, const void *body, size_t len, int max, const char *needle) {
    tld_part parts[8];
    char err[256] = "";
    int n = parse(ct, body, len, parts, max, err);
    if (n != -1 || !strstr(err, needle)) {
        print_error("expected error containing '%s', got %d '%s'\n", needle, n, err);
        fail();
    }
    assert_null(strchr(err, '\n')); /* one line */
}

static void test_one_part(void **state) {
    (void)state;
    const char body[] = "--XyZ\r\n"
                        "Content-Disposition: form-data; name=\"image\"; filename=\"cat.jpg\"\r\n"
                        "Content-Type: image/jpeg\r\n"
                        "\r\n"
                        "JPEGDATA\r\n"
                        "--XyZ--\r\n";
    uint8_t *b = dup_exact(body, sizeof body - 1);
    tld_part p[4];
    char err[256] = "";
    assert_int_equal(tld_multipart_parse(CT, b, sizeof body - 1, p, 4, err, sizeof err), 1);
    assert_string_equal(p[0].name, "image");
    assert_string_equal(p[0].filename, "cat.jpg");
    assert_string_equal(p[0].content_type, "image/jpeg");
    assert_int_equal(p[0].len, 8);
    assert_memory_equal(p[0].data, "JPEGDATA", 8);
    assert_true(p[0].data >= b && p[0].data + p[0].len <= b + sizeof body - 1);
    free(b);
}

/* Three parts, a preamble and an epilogue, case-insensitive headers, binary data with near-delimiters. */
static void test_three_parts_binary(void **state) {
    (void)state;
    static const uint8_t bin[] = {0xFF, 0xD8, 0x00, '\r', '\n', '-', '-', 'X', 'y', '\r', '\n', '-', '-',
                                  'X',  'y',  'Q',  '\r', '\n', '-', '-', 'X', 'y', 'Z', 'a', '\r', '\n',
                                  '\r', '\n', '-',  '-',  0x00, '\r', '\n', '-', '-', '\r', '\n', 0xFF, 0xD9};
    char head[] = "This is a preamble.\r\n--XyZ\r\n"
                  "content-disposition: form-data; name=\"a\"; filename=\"one.jpg\"\r\n"
                  "CONTENT-TYPE: image/jpeg\r\n"
                  "\r\n";
    char mid1[] = "\r\n--XyZ  \t\r\n" /* transport padding after the boundary */
                  "Content-Disposition: form-data; name=b\r\n"
                  "X-Ignored: yes\r\n"
                  "\r\n"
                  "plain text";
    char mid2[] = "\r\n--XyZ\r\n"
                  "\r\n"; /* a part with no headers at all */
    char tail[] = "\r\n--XyZ--   epilogue\r\n--XyZ\r\nnot a part\r\n";
    size_t len = 0;
    uint8_t buf[1024];
    memcpy(buf + len, head, strlen(head)), len += strlen(head);
    size_t off1 = len;
    memcpy(buf + len, bin, sizeof bin), len += sizeof bin;
    memcpy(buf + len, mid1, strlen(mid1)), len += strlen(mid1);
    memcpy(buf + len, mid2, strlen(mid2)), len += strlen(mid2);
    size_t off3 = len;
    memcpy(buf + len, bin, sizeof bin), len += sizeof bin;
    memcpy(buf + len, tail, strlen(tail)), len += strlen(tail);
    uint8_t *b = dup_exact(buf, len);
    tld_part p[3];
    char err[256] = "";
    int n = tld_multipart_parse(CT, b, len, p, 3, err, sizeof err);
    if (n != 3) print_error("%s\n", err);
    assert_int_equal(n, 3);
    assert_string_equal(p[0].name, "a");
    assert_string_equal(p[0].filename, "one.jpg");
    assert_string_equal(p[0].content_type, "image/jpeg");
    assert_ptr_equal(p[0].data, b + off1);
    assert_int_equal(p[0].len, sizeof bin);
    assert_memory_equal(p[0].data, bin, sizeof bin);
    assert_string_equal(p[1].name, "b");
    assert_string_equal(p[1].filename, "");
    assert_string_equal(p[1].content_type, "");
    assert_int_equal(p[1].len, 10);
    assert_memory_equal(p[1].data, "plain text", 10);
    assert_string_equal(p[2].name, "");
    assert_ptr_equal(p[2].data, b + off3);
    assert_int_equal(p[2].len, sizeof bin);
    assert_memory_equal(p[2].data, bin, sizeof bin);
    free(b);
}

static void test_empty_parts_and_escapes(void **state) {
    (void)state;
    const char body[] = "--XyZ\r\n"
                        "Content-Disposition: form-data; name=\"e\"\r\n" /* headers, then no data at all */
                        "\r\n"
                        "--XyZ\r\n"
                        "\r\n" /* no headers, no data */
                        "\r\n"
                        "--XyZ\r\n"
                        "Content-Disposition: form-data ; name = \"q\\\"uo\\\\te\" ; filename=\"a b;c.jpg\"; "
                        "filename*=UTF-8''x.jpg\r\n"
                        "\r\n"
                        "x\r\n"
                        "--XyZ--";
    uint8_t *b = dup_exact(body, sizeof body - 1);
    tld_part p[4];
    char err[256] = "";
    int n = tld_multipart_parse(CT, b, sizeof body - 1, p, 4, err, sizeof err);
    if (n != 3) print_error("%s\n", err);
    assert_int_equal(n, 3);
    assert_string_equal(p[0].name, "e");
    assert_int_equal(p[0].len, 0);
    assert_non_null(p[0].data);
    assert_int_equal(p[1].len, 0);
    assert_string_equal(p[2].name, "q\"uo\\te");
    assert_string_equal(p[2].filename, "a b;c.jpg");
    assert_int_equal(p[2].len, 1);
    free(b);
    /* the first delimiter is the closing one: no parts */
    tld_part q[1];
    assert_int_equal(parse(CT, "--XyZ--\r\n", 9, q, 1, err), 0);
}

static void test_boundary_parameter(void **state) {
    (void)state;
    tld_part p[2];
    char err[256];
    const char body[] = "--a b'()+_,-./:=?\r\n\r\nv\r\n--a b'()+_,-./:=?--";
    int n = parse("Multipart/Form-Data; charset=utf-8; BOUNDARY=\"a b'()+_,-./:=?\"", body, sizeof body - 1, p, 2,
                  err);
    if (n != 1) print_error("%s\n", err);
    assert_int_equal(n, 1);
    const char body2[] = "--q\\\"x\r\n\r\nv\r\n--q\"x--";
    (void)body2;
    /* quoted with a backslash escape: the boundary is q"x, which RFC 2046 does not allow */
    expect_error("multipart/form-data; boundary=\"q\\\"x\"", body2, sizeof body2 - 1, 2, "not allowed");
    /* the 70-character limit */
    char ct[256], bd[200];
    memset(bd, 0, sizeof bd);
    memset(bd, 'k', 70);
    snprintf(ct, sizeof ct, "multipart/form-data; boundary=%s", bd);
    char ok[256];
    int ol = snprintf(ok, sizeof ok, "--%s\r\n\r\nv\r\n--%s--", bd, bd);
    assert_int_equal(parse(ct, ok, (size_t)ol, p, 2, err), 1);
    bd[70] = 'k';
    snprintf(ct, sizeof ct, "multipart/form-data; boundary=%s", bd);
    expect_error(ct, ok, (size_t)ol, 2, "longer than 70");
}

static void test_bad_content_type(void **state) {
    (void)state;
    const char body[] = "--XyZ\r\n\r\nv\r\n--XyZ--";
    size_t n = sizeof body - 1;
    expect_error("multipart/form-data", body, n, 2, "no boundary");
    expect_error("multipart/form-data; charset=utf-8", body, n, 2, "no boundary");
    expect_error("multipart/form-data; boundary=\"\"", body, n, 2, "empty");
    expect_error("multipart/form-data; boundary=", body, n, 2, "malformed");
    expect_error("multipart/form-data; boundary=\"XyZ", body, n, 2, "malformed");
    expect_error("multipart/form-data; boundary=a; boundary=b", body, n, 2, "more than one boundary");
    expect_error("multipart/form-dataX; boundary=XyZ", body, n, 2, "not multipart/form-data");
    expect_error("application/json", body, n, 2, "not multipart/form-data");
    expect_error(NULL, body, n, 2, "no Content-Type");
    expect_error("multipart/form-data; boundary=\"ends \"", body, n, 2, "ends with a space");
    expect_error("multipart/form-data; boundary=\"a\x01\"", body, n, 2, "malformed");
}

static void test_refusals(void **state) {
    (void)state;
    const char nodelim[] = "no delimiter here";
    expect_error(CT, nodelim, sizeof nodelim - 1, 2, "no multipart boundary delimiter");
    expect_error(CT, "", 0, 2, "no multipart boundary delimiter");
    const char noclose[] = "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\ndata\r\n";
    expect_error(CT, noclose, sizeof noclose - 1, 2, "missing closing delimiter");
    const char noclose2[] = "--XyZ\r\n\r\ndata\r\n--XyZ";
    expect_error(CT, noclose2, sizeof noclose2 - 1, 2, "missing closing delimiter");
    const char noblank[] = "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\ndata\r\n--XyZ--";
    expect_error(CT, noblank, sizeof noblank - 1, 2, "no blank line");
    const char noblank2[] = "--XyZ\r\n--XyZ--";
    expect_error(CT, noblank2, sizeof noblank2 - 1, 2, "no blank line");
    const char three[] = "--XyZ\r\n\r\n1\r\n--XyZ\r\n\r\n2\r\n--XyZ\r\n\r\n3\r\n--XyZ--";
    expect_error(CT, three, sizeof three - 1, 2, "more than 2 parts");
    expect_error(CT, three, sizeof three - 1, 0, "more than 0 parts");
    tld_part p[3];
    char err[256];
    assert_int_equal(parse(CT, three, sizeof three - 1, p, 3, err), 3);
    const char badline[] = "--XyZ\t-\r\n\r\n1\r\n--XyZ--";
    expect_error(CT, badline, sizeof badline - 1, 2, "malformed boundary delimiter");
    const char bareLF[] = "--XyZ\r\nContent-Type: a\nX: b\r\n\r\n1\r\n--XyZ--";
    expect_error(CT, bareLF, sizeof bareLF - 1, 2, "CRLF");
    const char folded[] = "--XyZ\r\nContent-Type: a\r\n b\r\n\r\n1\r\n--XyZ--";
    expect_error(CT, folded, sizeof folded - 1, 2, "folded");
    const char nocolon[] = "--XyZ\r\nContent-Type a\r\n\r\n1\r\n--XyZ--";
    expect_error(CT, nocolon, sizeof nocolon - 1, 2, "malformed header line");
    const char attach[] = "--XyZ\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\n1\r\n--XyZ--";
    expect_error(CT, attach, sizeof attach - 1, 2, "not form-data");
    const char unterminated[] = "--XyZ\r\nContent-Disposition: form-data; name=\"a\r\n\r\n1\r\n--XyZ--";
    expect_error(CT, unterminated, sizeof unterminated - 1, 2, "malformed Content-Disposition");
    const char twocd[] = "--XyZ\r\nContent-Disposition: form-data\r\nContent-Disposition: form-data\r\n\r\n1\r\n"
                         "--XyZ--";
    expect_error(CT, twocd, sizeof twocd - 1, 2, "more than one Content-Disposition");
    const char b64[] = "--XyZ\r\nContent-Transfer-Encoding: base64\r\n\r\nMQ==\r\n--XyZ--";
    expect_error(CT, b64, sizeof b64 - 1, 2, "Content-Transfer-Encoding");
    char longname[512];
    char nm[200];
    memset(nm, 'n', 150);
    nm[150] = 0;
    int ln = snprintf(longname, sizeof longname,
                      "--XyZ\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n1\r\n--XyZ--", nm);
    expect_error(CT, longname, (size_t)ln, 2, "name is longer than 127");
}

/* The header block limit counts header lines with their CRLFs: exactly the limit passes, one more fails. */
static void test_header_limit(void **state) {
    (void)state;
    size_t cap = TLD_MULTIPART_MAX_HEADERS + 256;
    char *body = malloc(cap);
    assert_non_null(body);
    for (int extra = 0; extra <= 1; extra++) {
        /* "X: " + filler + "\r\n" == limit + extra bytes */
        size_t line = (size_t)TLD_MULTIPART_MAX_HEADERS + (size_t)extra;
        size_t len = 0;
        len += (size_t)sprintf(body + len, "--XyZ\r\nX: ");
        memset(body + len, 'f', line - 5);
        len += line - 5;
        len += (size_t)sprintf(body + len, "\r\n\r\nD\r\n--XyZ--");
        tld_part p[1];
        char err[256] = "";
        int n = parse(CT, body, len, p, 1, err);
        if (extra == 0) {
            if (n != 1) print_error("%s\n", err);
            assert_int_equal(n, 1);
        } else {
            assert_int_equal(n, -1);
            assert_non_null(strstr(err, "header block longer than"));
        }
    }
    /* a huge header block without any blank line: refused as too long, not searched to the end */
    size_t big = 100000;
    char *huge = malloc(big + 64);
    assert_non_null(huge);
    size_t len = (size_t)sprintf(huge, "--XyZ\r\n");
    memset(huge + len, 'h', big);
    len += big;
    len += (size_t)sprintf(huge + len, "\r\n--XyZ--");
    expect_error(CT, huge, len, 1, "header block longer than");
    free(huge);
    free(body);
}

/* Every prefix of a valid body shorter than its closing delimiter is refused; longer ones parse. */
static void truncations(const char *body, size_t full, int parts_expected) {
    const char *close = NULL;
    for (const char *q = body; (q = strstr(q, "--XyZ--")) != NULL; q++) close = q;
    assert_non_null(close);
    size_t need = (size_t)(close - body) + 7;
    for (size_t len = 0; len <= full; len++) {
        tld_part p[4];
        char err[256] = "";
        uint8_t *b = dup_exact(body, len);
        int n = tld_multipart_parse(CT, b, len, p, 4, err, sizeof err);
        if (len < need) {
            if (n != -1) print_error("length %zu of %zu parsed as %d parts\n", len, full, n);
            assert_int_equal(n, -1);
            assert_true(err[0] != 0);
        } else {
            assert_int_equal(n, parts_expected);
            for (int i = 0; i < n; i++) assert_true(p[i].data >= b && p[i].data + p[i].len <= b + len);
        }
        free(b);
    }
}

static void test_truncated(void **state) {
    (void)state;
    const char one[] = "--XyZ\r\nContent-Disposition: form-data; name=\"a\"; filename=\"x.jpg\"\r\n"
                       "Content-Type: image/jpeg\r\n\r\n\xff\xd8\r\n--X\r\n\xff\xd9\r\n--XyZ--\r\n";
    truncations(one, sizeof one - 1, 1);
    const char three[] = "pre\r\n--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n"
                         "--XyZ \r\n\r\n22\r\n--XyZ\r\nContent-Type: text/plain\r\n\r\n\r\n--XyZ--epi";
    truncations(three, sizeof three - 1, 3);
}

/* Seeded mutations of a valid body: never crashes (under ASan), parts always lie inside the body. */
static void test_mutations(void **state) {
    (void)state;
    const char base[] = "--XyZ\r\nContent-Disposition: form-data; name=\"a\"; filename=\"x.jpg\"\r\n"
                        "Content-Type: image/jpeg\r\n\r\n\xff\xd8--XyZ\r\n\r\n\xff\xd9\r\n--XyZ\r\n"
                        "Content-Disposition: form-data; name=\"b\"\r\n\r\nbb\r\n--XyZ--\r\n";
    const size_t bl = sizeof base - 1;
    static const uint8_t alphabet[] = {'\r', '\n', '-', 'X', 'y', 'Z', '"', ';', ':', ' ', '\\', 0, 0xff};
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (int iter = 0; iter < 20000; iter++) {
        uint8_t buf[sizeof base + 16];
        memcpy(buf, base, bl);
        size_t len = bl;
        int edits = 1 + iter % 4;
        for (int k = 0; k < edits; k++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            size_t at = (size_t)(s % len);
            uint8_t c = alphabet[(s >> 32) % sizeof alphabet];
            switch ((s >> 40) % 3) {
            case 0: buf[at] = c; break;
            case 1: /* delete */
                memmove(buf + at, buf + at + 1, len - at - 1);
                len--;
                break;
            default: /* insert */
                if (len < sizeof buf) {
                    memmove(buf + at + 1, buf + at, len - at);
                    buf[at] = c;
                    len++;
                }
            }
        }
        uint8_t *b = dup_exact(buf, len);
        tld_part p[3];
        char err[256] = "";
        int n = tld_multipart_parse(CT, b, len, p, 3, err, sizeof err);
        assert_true(n >= -1 && n <= 3);
        if (n == -1) assert_true(err[0] != 0);
        for (int i = 0; i < n; i++) assert_true(p[i].data >= b && p[i].data + p[i].len <= b + len);
        free(b);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_part),
        cmocka_unit_test(test_three_parts_binary),
        cmocka_unit_test(test_empty_parts_and_escapes),
        cmocka_unit_test(test_boundary_parameter),
        cmocka_unit_test(test_bad_content_type),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_header_limit),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_mutations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
