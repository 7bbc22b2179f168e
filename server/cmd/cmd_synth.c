/*
 * cmd_synth.c: `tokenlabd synth --out DIR [--classes N] [--train N] [--val N]
 * [--size PX] [--seed S]`, writes the built-in synthetic dataset and its
 * exact label maps (engine/data/synth.c). Single-threaded.
 */
#include "cmd/commands.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenlab/synth.h"
#include "tokenlab/model.h"

static int parse_int(const char *flag, const char *v, long lo, long hi, long *out) {
    char *end;
    long x = strtol(v, &end, 10);
    if (!*v || *end || x < lo || x > hi) {
        fprintf(stderr, "tokenlabd synth: %s must be an integer in %ld..%ld, got '%s'\n", flag, lo, hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

int cmd_synth(int argc, char **argv) {
    tl_synth_cfg c;
    tl_synth_defaults(&c);
    const char *out = NULL;
    for (int i = 0; i < argc; i += 2) { /* options with their values */
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long x = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            printf("usage: tokenlabd synth --out DIR [--classes N] [--train N] [--val N] [--size PX] [--seed S]\n"
                   "Writes a deterministic dataset of pictures with several objects each (label: the\n"
                   "largest) in DIR/train and DIR/val, with exact token-label maps DIR/train.tllm and\n"
                   "DIR/val.tllm. Defaults: %d classes, %d train, %d val, %d px, seed %llu.\n",
                   c.classes, c.train, c.val, c.size, (unsigned long long)c.seed);
            return 0;
        }
        if (!v) {
            fprintf(stderr, "tokenlabd synth: %s needs a value\n", a);
            return 2;
        }
        if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--classes")) { if (parse_int(a, v, 2, 64, &x)) return 2; c.classes = (int)x; }
        else if (!strcmp(a, "--train")) { if (parse_int(a, v, 1, 10000000, &x)) return 2; c.train = (int)x; }
        else if (!strcmp(a, "--val")) { if (parse_int(a, v, 0, 10000000, &x)) return 2; c.val = (int)x; }
        else if (!strcmp(a, "--size")) { if (parse_int(a, v, 32, 512, &x)) return 2; c.size = (int)x; c.map_size = 0; }
        else if (!strcmp(a, "--seed")) { if (parse_int(a, v, 0, 2147483647, &x)) return 2; c.seed = (uint64_t)x; }
        else {
            fprintf(stderr, "tokenlabd synth: unknown option %s\n", a);
            return 2;
        }
    }
    if (!out) {
        fprintf(stderr, "tokenlabd synth: --out DIR is required\n");
        return 2;
    }
    if (c.map_size == 0) c.map_size = c.size / 4;
    char err[TL_ERR_LEN];
    if (tl_synth_write(out, &c, err, sizeof err) != 0) {
        fprintf(stderr, "tokenlabd synth: %s\n", err);
        return 1;
    }
    printf("wrote %d train and %d val images of %d classes at %d px to %s (label maps %s/train.tllm, %s/val.tllm)\n",
           c.train, c.val, c.classes, c.size, out, out, out);
    return 0;
}
