/*
 * fuzz_specs.c: libFuzzer target for the job spec parsers
 * (engine/jobs/jobspec.c, annotate_spec.c): tl_jobspec_kind, the training
 * spec and the annotate spec, each with and without a data root (the root is
 * a folder this target makes under $TMPDIR with a train/ class folder, so
 * that path confinement runs). Input: the JSON text (any bytes; a NUL ends
 * it early, as it would for the daemon). Single-threaded.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tokenlab/annotate.h"
#include "tokenlab/jobspec.h"

static char g_root[512];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *tmp = getenv("TMPDIR");
    snprintf(g_root, sizeof g_root, "%s/tl-fuzz-specs-%d", tmp && *tmp ? tmp : "/tmp", (int)getpid());
    char p[600];
    mkdir(g_root, 0755);
    snprintf(p, sizeof p, "%s/train", g_root);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/train/a", g_root);
    mkdir(p, 0755);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *json = malloc(size + 1);
    if (!json) return 0;
    memcpy(json, data, size);
    json[size] = 0;
    static tl_train_spec spec;
    static tl_annotate_spec aspec;
    tl_spec_error e;
    char kind[16], msg[1024];
    tl_jobspec_kind(json, kind, sizeof kind, &e);
    const char *root = size && (data[0] & 1) ? g_root : NULL;
    if (tl_jobspec_parse(json, root, &spec, &e) != 0) tl_spec_error_format(&e, msg, sizeof msg);
    if (tl_annotate_spec_parse(json, root, &aspec, &e) != 0) tl_spec_error_format(&e, msg, sizeof msg);
    free(json);
    return 0;
}
