/*
 * cmd_models.c: the model-serving registry: `tokenlab models [NAME]` lists
 * the served models (GET /api/v1/models) or shows one, and `tokenlab
 * register NAME --job ID` serves a job's checkpoint (POST /api/v1/models),
 * then waits (polling GET /api/v1/models/{name}) until it has loaded.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "cli.h"
#include "clock.h"
#include "opts.h"
#include "out.h"

#define LOAD_WAIT_S 300

static void source_text(const cJSON *m, char *buf, size_t len) {
    const cJSON *s = out_jget(m, "source");
    const char *kind = out_jstr(s, "kind", "?");
    if (strcmp(kind, "job") == 0) {
        const cJSON *ck = out_jget(s, "checkpoint");
        char cp[40];
        if (cJSON_IsString(ck)) snprintf(cp, sizeof cp, "%s", ck->valuestring);
        else snprintf(cp, sizeof cp, "step %.0f", out_jnum(s, "checkpoint", 0));
        snprintf(buf, len, "job %.0f, %s checkpoint (step %.0f)%s", out_jnum(s, "job_id", 0), cp,
                 out_jnum(s, "step", 0), out_jbool(s, "ema", 0) ? ", EMA" : "");
    } else if (strcmp(kind, "upload") == 0) {
        char b[32];
        out_bytes(out_jnum(s, "bytes", -1), b, sizeof b);
        snprintf(buf, len, "upload (%s)", b);
    } else {
        snprintf(buf, len, "%s", kind);
    }
}

static int model_path(cli *c, const char *name, char *path, size_t len) {
    if (!*name || strlen(name) > 64) return usage_error(c, "a model NAME is 1..64 characters, got '%s'", name);
    char esc[200];
    api_escape(name, esc, sizeof esc);
    snprintf(path, len, "/api/v1/models/%s", esc);
    return EX_OK;
}

static void show_model(const cJSON *m) {
    char buf[600], a[64];
    char name[160];
    out_sanitize(out_jstr(m, "name", "?"), name, sizeof name);
    printf("model %s\n", name);
    const char *err = out_jstr(m, "error", NULL);
    snprintf(buf, sizeof buf, "%s%s%s", out_jstr(m, "state", "?"), err ? ": " : "", err ? err : "");
    out_sanitize(buf, buf, sizeof buf);
    printf("  %-10s %s\n", "state", buf);
    source_text(m, buf, sizeof buf);
    printf("  %-10s %s\n", "source", buf);
    out_time(out_jnum(m, "created_ms", 0), a, sizeof a);
    printf("  %-10s %s\n", "created", a);
    out_count(out_jnum(m, "params", NAN), a, sizeof a);
    printf("  %-10s %.0f classes, %s parameters, %.0f x %.0f tokens, input %.0f px\n", "model",
           out_jnum(m, "num_classes", 0), a, out_jnum(m, "grid", 0), out_jnum(m, "grid", 0),
           out_jnum(m, "input.size", 0));
    printf("  %-10s max batch %.0f, max delay %.0f ms, queue %.0f\n", "batching", out_jnum(m, "batching.max_batch", 0),
           out_jnum(m, "batching.max_delay_ms", 0), out_jnum(m, "batching.max_queue", 0));
    printf("  %-10s %.0f requests, %.0f images, %.0f batches (mean %.2f), %.0f rejected\n", "served",
           out_jnum(m, "stats.requests", 0), out_jnum(m, "stats.images", 0), out_jnum(m, "stats.batches", 0),
           out_jnum(m, "stats.mean_batch", 0), out_jnum(m, "stats.rejected", 0));
    const cJSON *cls = out_jarr(m, "classes"), *x;
    int n = cJSON_GetArraySize(cls), shown = 0;
    if (n > 0) {
        printf("  classes   ");
        cJSON_ArrayForEach(x, cls) {
            if (shown == 20) {
                printf(" ... (%d more)", n - shown);
                break;
            }
            out_sanitize(out_jstr(x, "label", "?"), buf, sizeof buf);
            printf("%s%.0f %s", shown ? ", " : "", out_jnum(x, "index", 0), buf);
            shown++;
        }
        printf("\n");
    }
}

int cmd_models(cli *c, int argc, char **argv) {
    char *pos[1];
    int npos, rc = opts_parse(c, argc, argv, NULL, pos, 1, &npos);
    if (rc) return rc;
    char path[300] = "/api/v1/models";
    if (npos == 1 && (rc = model_path(c, pos[0], path, sizeof path))) return rc;
    api_resp r;
    cJSON *o;
    if ((rc = api_json(c, NULL, path, NULL, &r, &o)) != EX_OK) return rc;
    if (c->json) {
        api_print_body(&r);
    } else if (npos == 1) {
        show_model(o);
    } else {
        static const char *const head[] = {"NAME", "STATE", ">CLASSES", ">GRID", ">PARAMS", "SOURCE", ">REQUESTS",
                                           "CREATED"};
        out_table t;
        out_table_init(&t, 8, head);
        const cJSON *arr = out_jarr(o, "models"), *m;
        cJSON_ArrayForEach(m, arr) {
            char ncls[24], grid[24], params[24], src[200], req[24], created[32];
            snprintf(ncls, sizeof ncls, "%.0f", out_jnum(m, "num_classes", 0));
            snprintf(grid, sizeof grid, "%.0fx%.0f", out_jnum(m, "grid", 0), out_jnum(m, "grid", 0));
            out_count(out_jnum(m, "params", NAN), params, sizeof params);
            source_text(m, src, sizeof src);
            snprintf(req, sizeof req, "%.0f", out_jnum(m, "stats.requests", 0));
            out_time(out_jnum(m, "created_ms", 0), created, sizeof created);
            out_table_row(&t, out_jstr(m, "name", "?"), out_jstr(m, "state", "?"), ncls, grid, params, src, req,
                          created);
        }
        if (t.rows) out_table_print(&t, stdout);
        else printf("no models (serve one with `tokenlab register NAME --job ID`)\n");
        out_table_free(&t);
    }
    cJSON_Delete(o);
    api_free(&r);
    return EX_OK;
}

int cmd_register(cli *c, int argc, char **argv) {
    long long job = 0, max_batch = 0, max_delay = -1;
    const char *ckpt = "best";
    int raw = 0, no_wait = 0;
    opt_def defs[] = {{"--job", 'j', OPT_INT, &job, 1, INT64_MAX},
                      {"--checkpoint", 0, OPT_STR, &ckpt, 0, 0},
                      {"--raw", 0, OPT_FLAG, &raw, 0, 0},
                      {"--max-batch", 0, OPT_INT, &max_batch, 1, 64},
                      {"--max-delay-ms", 0, OPT_INT, &max_delay, 0, 1000},
                      {"--no-wait", 0, OPT_FLAG, &no_wait, 0, 0},
                      {0}};
    char *pos[1];
    int npos, rc = opts_parse(c, argc, argv, defs, pos, 1, &npos);
    if (rc || (rc = opts_count(c, npos, 1, 1))) return rc;
    if (job == 0) return usage_error(c, "--job ID is required");
    char path[300];
    if ((rc = model_path(c, pos[0], path, sizeof path))) return rc;
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "name", pos[0]);
    cJSON_AddNumberToObject(b, "job_id", (double)job);
    int64_t step;
    if (strcmp(ckpt, "best") == 0 || strcmp(ckpt, "last") == 0) cJSON_AddStringToObject(b, "checkpoint", ckpt);
    else if (parse_id(ckpt, &step) == 0) cJSON_AddNumberToObject(b, "checkpoint", (double)step);
    else {
        cJSON_Delete(b);
        return usage_error(c, "--checkpoint must be best, last or a step number, got '%s'", ckpt);
    }
    if (raw) cJSON_AddFalseToObject(b, "ema");
    if (max_batch) cJSON_AddNumberToObject(b, "max_batch", (double)max_batch);
    if (max_delay >= 0) cJSON_AddNumberToObject(b, "max_delay_ms", (double)max_delay);
    char *body = cJSON_PrintUnformatted(b);
    cJSON_Delete(b);
    if (!body) return EX_LOCAL;
    api_resp r;
    cJSON *m;
    rc = api_json(c, "POST", "/api/v1/models", body, &r, &m);
    free(body);
    /* wait while it loads */
    int waited = 0;
    while (rc == EX_OK && !no_wait && strcmp(out_jstr(m, "state", ""), "LOADING") == 0) {
        if (waited++ > LOAD_WAIT_S * 5) {
            fprintf(stderr, "tokenlab %s: model %s is still LOADING after %d s\n", c->cmd, pos[0], LOAD_WAIT_S);
            break;
        }
        clock_nap_s(0.2);
        if (api_interrupted) {
            fprintf(stderr, "tokenlab %s: interrupted (the model keeps loading on the server)\n", c->cmd);
            rc = EX_INTERRUPTED;
            break;
        }
        cJSON_Delete(m);
        m = NULL;
        api_free(&r);
        rc = api_json(c, NULL, path, NULL, &r, &m);
    }
    if (rc == EX_OK) {
        if (c->json) api_print_body(&r);
        const char *state = out_jstr(m, "state", "?");
        if (strcmp(state, "FAILED") == 0) {
            char err[600];
            out_sanitize(out_jstr(m, "error", "no reason given"), err, sizeof err);
            fprintf(stderr, "tokenlab %s: model %s FAILED to load: %s\n", c->cmd, pos[0], err);
            rc = EX_SERVER;
        } else if (!c->json) {
            char src[200], nm[160];
            source_text(m, src, sizeof src);
            out_sanitize(out_jstr(m, "name", pos[0]), nm, sizeof nm);
            printf("model %s %s: %.0f classes, %.0fx%.0f tokens, from %s\n", nm, state, out_jnum(m, "num_classes", 0),
                   out_jnum(m, "grid", 0), out_jnum(m, "grid", 0), src);
        }
    }
    cJSON_Delete(m);
    api_free(&r);
    return rc;
}
