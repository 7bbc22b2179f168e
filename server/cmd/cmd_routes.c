/*
 * cmd_routes.c: `tokenlabd routes [--json]`: prints the HTTP API's route
 * table (api/route_table.c), the one list of what the daemon answers:
 * method, path and auth ("public", or "token": a bearer token is required),
 * one route a line, or with --json
 *   {"routes": [{"method", "path", "auth", "max_body"}]}
 * (max_body 0: the daemon's limit). tests/parity/check_openapi.py reads the
 * JSON to compare the table with schema/openapi.json. Starts nothing and
 * opens no file; runs on the main thread.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

#include "api/route_table.h"
#include "cmd/commands.h"

static const char *USAGE = "usage: tokenlabd routes [--json]\n";

int cmd_routes(int argc, char **argv) {
    int json = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(USAGE, stdout);
            return 0;
        } else {
            fprintf(stderr, "tokenlabd routes: unknown option '%s'\n%s", argv[i], USAGE);
            return 2;
        }
    }
    if (!json) {
        for (size_t i = 0; i < tld_route_table_len; i++) {
            const tld_route_def *t = &tld_route_table[i];
            printf("%-7s %-45s %s\n", t->method, t->pattern, tld_route_auth_name(t->auth));
        }
        return 0;
    }
    int rc = 1;
    char *text = NULL;
    cJSON *doc = cJSON_CreateObject();
    cJSON *arr = doc ? cJSON_AddArrayToObject(doc, "routes") : NULL;
    if (!arr) goto fail;
    for (size_t i = 0; i < tld_route_table_len; i++) {
        const tld_route_def *t = &tld_route_table[i];
        cJSON *o = cJSON_CreateObject();
        if (!o || !cJSON_AddItemToArray(arr, o) || !cJSON_AddStringToObject(o, "method", t->method) ||
            !cJSON_AddStringToObject(o, "path", t->pattern) ||
            !cJSON_AddStringToObject(o, "auth", tld_route_auth_name(t->auth)) ||
            !cJSON_AddNumberToObject(o, "max_body", (double)t->max_body))
            goto fail;
    }
    text = cJSON_Print(doc);
    if (!text) goto fail;
    printf("%s\n", text);
    rc = 0;
fail:
    if (rc != 0) fprintf(stderr, "tokenlabd routes: out of memory\n");
    cJSON_free(text);
    cJSON_Delete(doc);
    return rc;
}
