/*
 * cmd_logs.c: `tokenlab logs ID [-f]`: prints a job's log by reading the log
 * endpoint slice by slice (GET /api/v1/jobs/{id}/logs?offset=), so a log of
 * any length goes through a bounded buffer. With -f it polls once a second
 * until the job is final, then reads what the trainer wrote last and stops.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

#include "api.h"
#include "cli.h"
#include "clock.h"
#include "opts.h"
#include "out.h"
#include "watch.h"

#define SLICE 262144

/* Prints the log from *offset to its current end. Returns EX_OK or an error (explained). */
static int drain(cli *c, int64_t id, long long *offset) {
    for (;;) {
        char path[128];
        snprintf(path, sizeof path, "/api/v1/jobs/%lld/logs?offset=%lld&limit_bytes=%d", (long long)id, *offset, SLICE);
        api_resp r;
        cJSON *o;
        int rc = api_json(c, NULL, path, NULL, &r, &o);
        if (rc != EX_OK) return rc;
        const char *text = out_jstr(o, "text", "");
        long long next = (long long)out_jnum(o, "next_offset", (double)*offset);
        int eof = out_jbool(o, "eof", 1);
        if (c->json) {
            if (*text || *offset == 0) api_print_body(&r);
        } else {
            fputs(text, stdout); /* the log verbatim: it is the trainer's own text */
            fflush(stdout);
        }
        cJSON_Delete(o);
        api_free(&r);
        int moved = next > *offset;
        if (next > *offset) *offset = next;
        if (eof || !moved) return EX_OK;
    }
}

static int job_final(cli *c, int64_t id, int *final) {
    char path[64];
    snprintf(path, sizeof path, "/api/v1/jobs/%lld", (long long)id);
    api_resp r;
    cJSON *j;
    int rc = api_json(c, NULL, path, NULL, &r, &j);
    if (rc == EX_OK) {
        *final = watch_state_final(out_jstr(j, "state", ""));
    }
    cJSON_Delete(j);
    api_free(&r);
    return rc;
}

int cmd_logs(cli *c, int argc, char **argv) {
    int follow = 0;
    opt_def defs[] = {{"--follow", 'f', OPT_FLAG, &follow, 0, 0}, {0}};
    char *pos[1];
    int npos, rc = opts_parse(c, argc, argv, defs, pos, 1, &npos);
    int64_t id;
    if (rc || (rc = opts_count(c, npos, 1, 1)) || (rc = opts_job_id(c, pos[0], &id))) return rc;
    long long offset = 0;
    if ((rc = drain(c, id, &offset)) != EX_OK || !follow) return rc;
    for (;;) {
        int final = 0;
        if ((rc = job_final(c, id, &final)) != EX_OK) return rc;
        if (final) { /* the trainer's last line is appended just after the final state: read once more */
            clock_nap_s(0.5);
            return drain(c, id, &offset);
        }
        clock_nap_s(1.0);
        if (api_interrupted) {
            fprintf(stderr, "tokenlab %s: interrupted\n", c->cmd);
            return EX_INTERRUPTED;
        }
        if ((rc = drain(c, id, &offset)) != EX_OK) return rc;
    }
}
