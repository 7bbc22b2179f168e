/*
 * fuzz_jpeg.c: libFuzzer target for JPEG decoding (engine/data/image.c:
 * tl_image_decode, libjpeg-turbo underneath), at the loader's training and
 * evaluation sizes. Input: the file's bytes. Single-threaded.
 */
#include <stdint.h>

#include "tokenlab/image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[512];
    tl_image im;
    tl_image_status st;
    if (tl_image_decode(data, size, size && (data[size - 1] & 1) ? 448 : 64, &im, &st, err, sizeof err) == 0)
        tl_image_free(&im);
    return 0;
}
