/*
 * fuzz_labelmap.c: libFuzzer target for the label-map reader
 * (engine/data/labelmap.c): the input is the whole .tllm file, handed to
 * tl_labelmap_open through an in-memory file (memfd), then every entry's key
 * is looked up and its maps read, as the loader does. Single-threaded.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "tokenlab/labelmap.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int fd = memfd_create("tllm", 0);
    if (fd < 0) return 0;
    if (write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return 0;
    }
    char path[64], err[512];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    tl_labelmap *lm = tl_labelmap_open(path, 0, err, sizeof err);
    if (lm) {
        size_t n = (size_t)tl_labelmap_topk(lm) * (size_t)tl_labelmap_h(lm) * (size_t)tl_labelmap_w(lm);
        float *vals = n <= ((size_t)1 << 22) ? malloc(sizeof(float) * (n ? n : 1)) : NULL;
        int32_t *inds = vals ? malloc(sizeof(int32_t) * (n ? n : 1)) : NULL;
        int64_t count = tl_labelmap_count(lm);
        for (int64_t i = 0; i < count && i < 64; i++) {
            int64_t entry = -1;
            const char *key = tl_labelmap_key(lm, i, &entry);
            if (key) (void)tl_labelmap_find(lm, key);
            if (inds && entry >= 0) tl_labelmap_read(lm, entry, vals, inds, err, sizeof err);
        }
        free(vals);
        free(inds);
        tl_labelmap_close(lm);
    }
    close(fd);
    return 0;
}
