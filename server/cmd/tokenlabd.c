/*
 * tokenlabd.c: the tokenlab daemon's entry point: dispatches to the
 * subcommands (commands.h). `serve` is the default.
 */
#include <stdio.h>
#include <string.h>

#include "cmd/commands.h"
#include "tokenlab/memtune.h"
#include "tokenlab/model.h"

static const char *USAGE = "usage: tokenlabd [serve] [options]            the daemon (see tokenlabd serve --help)\n"
                           "       tokenlabd run SPEC.json [--out DIR]   train one job in the foreground\n"
                           "       tokenlabd synth --out DIR [...]        write the synthetic dataset\n"
                           "       tokenlabd routes [--json]             print the HTTP API's route table\n"
                           "       tokenlabd token add --read NAME | list | revoke NAME   read-only API tokens\n"
                           "       tokenlabd --version | --help\n";

int main(int argc, char **argv) {
    /* Per-request image buffers reuse warm pages instead of faulting them in
     * again (memtune.h). A refusal (e.g. under a sanitizer's allocator) only
     * costs speed. */
    (void)tl_malloc_keep_pages();
    if (argc >= 2 && !strcmp(argv[1], "--version")) {
        printf("tokenlabd %s\n", TL_VERSION);
        return 0;
    }
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help"))) {
        fputs(USAGE, stdout);
        return 0;
    }
    if (argc < 2 || argv[1][0] == '-') return cmd_serve(argc - 1, argv + 1); /* serve is the default */
    if (!strcmp(argv[1], "serve")) return cmd_serve(argc - 2, argv + 2);
    if (!strcmp(argv[1], "run")) return cmd_run(argc - 2, argv + 2);
    if (!strcmp(argv[1], "synth")) return cmd_synth(argc - 2, argv + 2);
    if (!strcmp(argv[1], "routes")) return cmd_routes(argc - 2, argv + 2);
    if (!strcmp(argv[1], "token")) return cmd_token(argc - 2, argv + 2);
    fprintf(stderr, "tokenlabd: unknown command '%s'\n%s", argv[1], USAGE);
    return 2;
}
