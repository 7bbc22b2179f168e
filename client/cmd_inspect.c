/*
 * cmd_inspect.c: `tokenlab inspect ID [K]` (also `tokenlab samples`, its
 * old name, kept for scripts): the token inspection the daemon records at
 * each evaluation of a job, the feature the dashboard shows at
 * #/jobs/ID/inspect. Without K the list of inspected samples
 * (GET /api/v1/jobs/{id}/samples); with K sample K's target token map next
 * to the model's prediction as letter grids (GET /api/v1/jobs/{id}/samples/{k}),
 * with its top-5. Single-threaded; owns only the answers it frees.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "cli.h"
#include "opts.h"
#include "out.h"
#include "tokens.h"

static int list_samples(cli *c, int64_t id, const cJSON *o) {
    const cJSON *steps = out_jarr(o, "steps"), *x, *samples = out_jarr(o, "samples");
    printf("job %lld: %d samples, %.0fx%.0f tokens over a %.0f px view, %.0f classes\n", (long long)id,
           cJSON_GetArraySize(out_jget(o, "samples")), out_jnum(o, "grid", 0), out_jnum(o, "grid", 0),
           out_jnum(o, "view", 0), out_jnum(o, "num_classes", 0));
    if (cJSON_GetArraySize(steps) == 0) {
        printf("no evaluation recorded yet\n");
    } else {
        printf("evaluations recorded at steps:");
        int i = 0;
        cJSON_ArrayForEach(x, steps) {
            if (i++ == 30) {
                printf(" ...");
                break;
            }
            printf(" %.0f%s", out_jnum(x, "step", 0), out_jbool(x, "ema", 0) ? " (EMA)" : "");
        }
        printf("\n");
    }
    static const char *const head[] = {">K", "SPLIT", "LABEL", "TARGET", "PATH"};
    out_table t;
    out_table_init(&t, 5, head);
    cJSON_ArrayForEach(x, samples) {
        char k[16], label[200];
        snprintf(k, sizeof k, "%.0f", out_jnum(x, "k", 0));
        snprintf(label, sizeof label, "%s (%.0f)", out_jstr(x, "label_name", "?"), out_jnum(x, "label", -1));
        out_table_row(&t, k, out_jstr(x, "split", "?"), label, out_jstr(x, "target_kind", "?"), out_jstr(x, "path", ""));
    }
    out_table_print(&t, stdout);
    out_table_free(&t);
    printf("(see one with `tokenlab %s %lld K`)\n", c->cmd, (long long)id);
    return EX_OK;
}

static int show_sample(cli *c, const cJSON *s, const cJSON *classes) {
    char path[600], label[200];
    out_sanitize(out_jstr(s, "path", ""), path, sizeof path);
    out_sanitize(out_jstr(s, "label_name", "?"), label, sizeof label);
    printf("sample %.0f (%s) %s\n  label %s (class %.0f)", out_jnum(s, "k", 0), out_jstr(s, "split", "?"), path, label,
           out_jnum(s, "label", -1));
    const cJSON *pred = out_jget(s, "pred");
    if (cJSON_IsObject(pred)) printf("; prediction at step %.0f (%s weights)\n", out_jnum(s, "step", 0),
                                     out_jbool(s, "ema", 0) ? "EMA" : "raw");
    else printf("; no evaluation recorded yet\n");
    int g = (int)out_jnum(s, "grid", 0);
    if (g < 1 || g > TOKENS_GRID_MAX) {
        fprintf(stderr, "tokenlab %s: the answer has no usable grid size\n", c->cmd);
        return EX_LOCAL;
    }
    int *target = malloc(sizeof(int) * (size_t)g * (size_t)g), *pr = malloc(sizeof(int) * (size_t)g * (size_t)g);
    int rc = EX_OK;
    if (!target || !pr || tokens_from_json(out_jget(s, "target.index"), g, target) != 0) {
        fprintf(stderr, "tokenlab %s: the answer has no usable target token map\n", c->cmd);
        rc = EX_LOCAL;
    } else {
        const int *maps[2] = {target, pr};
        char tt[64];
        snprintf(tt, sizeof tt, "target (%s)", out_jstr(s, "target.kind", "?"));
        const char *titles[2] = {tt, "prediction"};
        int n = cJSON_IsObject(pred) && tokens_from_json(out_jget(pred, "index"), g, pr) == 0 ? 2 : 1;
        printf("\n");
        tokens_print(stdout, g, n, maps, titles, classes, c->color);
        const cJSON *top5 = out_jarr(pred, "top5");
        if (cJSON_GetArraySize(top5) > 0) {
            printf("\nimage-level prediction\n");
            out_print_predictions(top5, stdout);
        }
    }
    free(target);
    free(pr);
    return rc;
}

int cmd_inspect(cli *c, int argc, char **argv) {
    long long step = -1;
    int raw = 0;
    opt_def defs[] = {{"--step", 0, OPT_INT, &step, 0, INT64_MAX}, {"--raw", 0, OPT_FLAG, &raw, 0, 0}, {0}};
    char *pos[2];
    int npos, rc = opts_parse(c, argc, argv, defs, pos, 2, &npos);
    int64_t id, k = -1;
    if (rc || (rc = opts_count(c, npos, 1, 2)) || (rc = opts_job_id(c, pos[0], &id))) return rc;
    if (npos == 2) {
        if (strcmp(pos[1], "0") == 0) k = 0;
        else if (parse_id(pos[1], &k) != 0) return usage_error(c, "a sample K is an integer >= 0, got '%s'", pos[1]);
    } else if (step >= 0 || raw) {
        return usage_error(c, "--step and --raw need a sample K");
    }
    char path[200];
    api_resp r;
    cJSON *list;
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/samples", (long long)id);
    if (k < 0 || !c->json) { /* the list: wanted itself, or for the class labels of a sample's legend */
        if ((rc = api_json(c, NULL, path, NULL, &r, &list)) != EX_OK) return rc;
        if (k < 0) {
            if (c->json) api_print_body(&r);
            else rc = list_samples(c, id, list);
            cJSON_Delete(list);
            api_free(&r);
            return rc;
        }
        api_free(&r);
    } else {
        list = NULL;
    }
    int n = snprintf(path, sizeof path, "/api/v1/jobs/%lld/samples/%lld", (long long)id, (long long)k);
    if (step >= 0) n += snprintf(path + n, sizeof path - (size_t)n, "?step=%lld", step);
    if (raw) snprintf(path + n, sizeof path - (size_t)n, "%sema=false", step >= 0 ? "&" : "?");
    cJSON *s;
    if ((rc = api_json(c, NULL, path, NULL, &r, &s)) == EX_OK) {
        if (c->json) api_print_body(&r);
        else rc = show_sample(c, s, out_jget(list, "classes"));
    }
    cJSON_Delete(s);
    cJSON_Delete(list);
    api_free(&r);
    return rc;
}
