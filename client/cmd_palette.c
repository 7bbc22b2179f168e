/*
 * cmd_palette.c: `tokenlab palette [N]`, a hidden debugging command (not in
 * the overview): prints the class palette's first N colours (default 1000)
 * as one JSON array of [r, g, b], computed by tl_class_colour from
 * tokenlab/palette.h, the one C copy of the palette. It exists so that
 * tests/e2e/browser/run.mjs can hold the dashboard's JavaScript copy
 * (web/src/palette.js) against the C one byte for byte. Talks to no server;
 * single-threaded like the rest of the client.
 */
#include <stdint.h>
#include <stdio.h>

#include "cli.h"
#include "opts.h"
#include "tokenlab/palette.h"

#define PALETTE_MAX 100000

int cmd_palette(cli *c, int argc, char **argv) {
    char *pos[1];
    int npos, rc = opts_parse(c, argc, argv, NULL, pos, 1, &npos);
    if (rc || (rc = opts_count(c, npos, 0, 1))) return rc;
    int64_t n = 1000;
    if (npos == 1 && (parse_id(pos[0], &n) != 0 || n > PALETTE_MAX))
        return usage_error(c, "N is an integer in 1..%d, got '%s'", PALETTE_MAX, pos[0]);
    putchar('[');
    for (int64_t k = 0; k < n; k++) {
        uint8_t rgb[3];
        tl_class_colour((int)k, rgb);
        printf("%s[%d,%d,%d]", k ? "," : "", rgb[0], rgb[1], rgb[2]);
    }
    printf("]\n");
    return EX_OK;
}
