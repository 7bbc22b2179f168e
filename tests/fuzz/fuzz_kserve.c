/*
 * fuzz_kserve.c: libFuzzer target for the KServe v2 / Open Inference
 * Protocol request parser (server/api/kserve.c), with the element bound the
 * infer route uses. Input: the request body. An accepted request's tensor
 * must hold exactly N*H*W*3 elements within the bound. Single-threaded.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api/kserve.h"

#define MAX_ELEMS ((size_t)1 << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *json = malloc(size ? size : 1);
    if (!json) return 0;
    memcpy(json, data, size);
    tld_ks_request q;
    char ptr[128], err[512];
    if (tld_kserve_parse(json, size, MAX_ELEMS, &q, ptr, sizeof ptr, err, sizeof err) == 0) {
        size_t elems = (size_t)q.n * (size_t)q.h * (size_t)q.w * 3;
        if (q.n < 1 || q.h < 1 || q.w < 1 || elems > MAX_ELEMS) abort(); /* outside the bound */
        volatile uint8_t sink = 0;
        if (q.u8) sink ^= q.u8[elems - 1]; /* the whole tensor is there */
        if (q.f32) sink ^= (uint8_t)(q.f32[elems - 1] != 0.0f);
        (void)sink;
        tld_kserve_request_free(&q);
    }
    free(json);
    return 0;
}
