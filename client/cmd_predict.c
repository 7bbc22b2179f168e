/*
 * cmd_predict.c: `tokenlab predict MODEL IMAGE... [--top-k K] [--tokens]`.
 *
 * One image goes as an image/jpeg body, several as one multipart/form-data
 * request (the server batches them). Images are read whole with a size cap;
 * the server judges whether they are JPEGs. For --tokens the model's class
 * labels are fetched once to name the classes of the token map's legend.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "cli.h"
#include "files.h"
#include "opts.h"
#include "out.h"
#include "tokens.h"

#define IMAGE_MAX (64u << 20)
#define IMAGES_MAX 256
#define UPLOAD_MAX (256u << 20)

static void print_problem(const char *file, const cJSON *p) {
    char d[600];
    out_sanitize(out_jstr(p, "detail", ""), d, sizeof d);
    fprintf(stderr, "%s: refused: HTTP %.0f %s: %s\n", file, out_jnum(p, "status", 0), out_jstr(p, "code", "?"), d);
}

/* One image's result (the fields of a single-image answer). */
static void print_result(cli *c, const char *file, const cJSON *res, const cJSON *classes, int tokens) {
    char name[300], lab[200];
    out_sanitize(file, name, sizeof name);
    const cJSON *preds = out_jarr(res, "predictions");
    const cJSON *best = cJSON_GetArrayItem(preds, 0);
    out_sanitize(out_jstr(best, "label", "?"), lab, sizeof lab);
    printf("%s: %s (%.1f%%)   [decode %.1f ms, queue %.1f ms, infer %.1f ms]\n", name, best ? lab : "no prediction",
           100 * out_jnum(best, "score", 0), out_jnum(res, "timing_ms.decode", 0), out_jnum(res, "timing_ms.queue", 0),
           out_jnum(res, "timing_ms.infer", 0));
    out_print_predictions(preds, stdout);
    if (tokens) {
        const cJSON *tk = out_jget(res, "tokens");
        int g = (int)out_jnum(tk, "grid", 0);
        int *map = g > 0 && g <= TOKENS_GRID_MAX ? malloc(sizeof *map * (size_t)g * (size_t)g) : NULL;
        if (map && tokens_from_json(out_jget(tk, "index"), g, map) == 0) {
            const int *maps[1] = {map};
            const char *titles[1] = {"token map (top class of each patch)"};
            tokens_print(stdout, g, 1, maps, titles, classes, c->color);
        } else {
            printf("(the answer holds no usable token map)\n");
        }
        free(map);
    }
    printf("\n");
}

int cmd_predict(cli *c, int argc, char **argv) {
    long long top_k = 5;
    int tokens = 0;
    opt_def defs[] = {{"--top-k", 'k', OPT_INT, &top_k, 1, 1000}, {"--tokens", 't', OPT_FLAG, &tokens, 0, 0}, {0}};
    char *pos[IMAGES_MAX + 1];
    int npos, rc = opts_parse(c, argc, argv, defs, pos, IMAGES_MAX + 1, &npos);
    if (rc || (rc = opts_count(c, npos, 2, -1))) return rc;
    const char *model = pos[0];
    if (!*model || strlen(model) > 64) return usage_error(c, "a MODEL name is 1..64 characters");
    int n = npos - 1;
    char esc[200], path[400];
    api_escape(model, esc, sizeof esc);
    snprintf(path, sizeof path, "/api/v1/models/%s/predict?top_k=%lld&tokens=%s", esc, top_k,
             tokens ? "true" : "false");

    api_part *parts = calloc((size_t)n, sizeof *parts);
    if (!parts) return EX_LOCAL;
    size_t total = 0;
    rc = EX_OK;
    for (int i = 0; i < n && rc == EX_OK; i++) {
        size_t len;
        char *data = files_read(c->cmd, pos[1 + i], IMAGE_MAX, &len);
        if (!data) {
            rc = EX_LOCAL;
            break;
        }
        parts[i] = (api_part){"file", files_base(pos[1 + i]), "image/jpeg", data, len};
        if ((total += len) > UPLOAD_MAX) {
            fprintf(stderr, "tokenlab %s: the images add up to more than %u MB; send fewer at a time\n", c->cmd,
                    UPLOAD_MAX >> 20);
            rc = EX_USAGE;
        }
    }
    cJSON *classes_doc = NULL;
    if (rc == EX_OK && tokens && !c->json) { /* labels for the legend; without them classes show as numbers */
        char mpath[300];
        snprintf(mpath, sizeof mpath, "/api/v1/models/%s", esc);
        api_req q = {.path = mpath, .timeout_s = 30};
        api_resp r;
        if (api_do(c, &q, &r) == EX_OK && r.status == 200) classes_doc = cJSON_ParseWithLength(r.body, r.len);
        api_free(&r);
    }
    const cJSON *classes = out_jget(classes_doc, "classes");
    if (rc == EX_OK) {
        api_req q = {.method = "POST", .path = path, .timeout_s = 300};
        if (n == 1) {
            q.ctype = "image/jpeg";
            q.body = parts[0].data;
            q.len = parts[0].len;
        } else {
            q.parts = parts;
            q.nparts = n;
        }
        api_resp r;
        rc = api_call(c, &q, &r);
        cJSON *o = rc == EX_OK ? cJSON_ParseWithLength(r.body ? r.body : "", r.len) : NULL;
        if (rc == EX_OK && !o) {
            fprintf(stderr, "tokenlab %s: the answer is not JSON (Content-Type '%s')\n", c->cmd, r.ctype);
            rc = EX_LOCAL;
        } else if (rc == EX_OK) {
            if (c->json) api_print_body(&r);
            const cJSON *results = out_jarr(o, "results"), *x;
            if (!results) {
                if (!c->json) print_result(c, pos[1], o, classes, tokens);
            } else {
                int i = 0;
                cJSON_ArrayForEach(x, results) {
                    const char *fn = out_jstr(x, "filename", i < n ? pos[1 + i] : "?");
                    const cJSON *err = out_jget(x, "error");
                    if (err) {
                        char safe[300];
                        out_sanitize(fn, safe, sizeof safe);
                        print_problem(safe, err);
                        rc = EX_SERVER;
                    } else if (!c->json) {
                        print_result(c, fn, x, classes, tokens);
                    }
                    i++;
                }
            }
        }
        cJSON_Delete(o);
        api_free(&r);
    }
    cJSON_Delete(classes_doc);
    for (int i = 0; i < n; i++) free((void *)parts[i].data);
    free(parts);
    return rc;
}
