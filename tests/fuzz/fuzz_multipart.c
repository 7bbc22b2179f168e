/*
 * fuzz_multipart.c: libFuzzer target for the multipart/form-data parser
 * (server/http/multipart.c) behind the predict route. Input: a Content-Type
 * line, a newline, then the body (an input without a newline is all body,
 * under a fixed boundary). Every part returned must lie inside the body.
 * Single-threaded.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http/multipart.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *nl = memchr(data, '\n', size < 256 ? size : 256);
    char ctype[300] = "multipart/form-data; boundary=XyZ";
    const uint8_t *body = data;
    size_t len = size;
    if (nl) {
        size_t cl = (size_t)(nl - data);
        memcpy(ctype, data, cl);
        ctype[cl] = 0;
        body = nl + 1;
        len = size - cl - 1;
    }
    uint8_t *copy = malloc(len ? len : 1); /* an exact-size buffer, so that an overread is caught */
    if (!copy) return 0;
    memcpy(copy, body, len);
    tld_part parts[16];
    char err[256];
    int n = tld_multipart_parse(ctype, copy, len, parts, 16, err, sizeof err);
    for (int i = 0; i < n; i++)
        if (parts[i].data < copy || parts[i].data + parts[i].len > copy + len) abort(); /* outside the body */
    free(copy);
    return 0;
}
