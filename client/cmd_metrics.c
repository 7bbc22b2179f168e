/*
 * cmd_metrics.c: `tokenlab metrics ID [NAME]`: without NAME the job's metric
 * names (GET /api/v1/jobs/{id}/metrics); with NAME the series endpoint
 * (GET /api/v1/jobs/{id}/metrics/{name}), as a table, as CSV (--csv) or as
 * the server's JSON. Long series come bucketed (last, min, max, count).
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "api.h"
#include "cli.h"
#include "opts.h"
#include "out.h"

static void csv_num(double v, char *buf, size_t len) {
    if (isnan(v)) snprintf(buf, len, "nan");
    else snprintf(buf, len, "%.9g", v);
}

static int list_names(cli *c, int64_t id) {
    char path[80];
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/metrics", (long long)id);
    api_resp r;
    cJSON *o;
    int rc = api_json(c, NULL, path, NULL, &r, &o);
    if (rc == EX_OK && c->json) {
        api_print_body(&r);
    } else if (rc == EX_OK) {
        static const char *const head[] = {"NAME", ">LAST", ">LAST STEP", ">POINTS"};
        out_table t;
        out_table_init(&t, 4, head);
        const cJSON *x, *arr = out_jarr(o, "metrics");
        cJSON_ArrayForEach(x, arr) {
            char last[32], step[32], count[32];
            out_metric(out_jnum(x, "last_value", NAN), last, sizeof last);
            snprintf(step, sizeof step, "%.0f", out_jnum(x, "last_step", 0));
            snprintf(count, sizeof count, "%.0f", out_jnum(x, "count", 0));
            out_table_row(&t, out_jstr(x, "name", "?"), last, step, count);
        }
        if (t.rows) out_table_print(&t, stdout);
        else printf("job %lld has no metrics yet\n", (long long)id);
        out_table_free(&t);
    }
    cJSON_Delete(o);
    api_free(&r);
    return rc;
}

int cmd_metrics(cli *c, int argc, char **argv) {
    int csv = 0;
    long long maxp = 1000, start = 0, end = -1;
    opt_def defs[] = {{"--csv", 0, OPT_FLAG, &csv, 0, 0},
                      {"--max-points", 'n', OPT_INT, &maxp, 1, 100000},
                      {"--start", 0, OPT_INT, &start, 0, INT64_MAX},
                      {"--end", 0, OPT_INT, &end, 0, INT64_MAX},
                      {0}};
    char *pos[2];
    int npos, rc = opts_parse(c, argc, argv, defs, pos, 2, &npos);
    int64_t id;
    if (rc || (rc = opts_count(c, npos, 1, 2)) || (rc = opts_job_id(c, pos[0], &id))) return rc;
    if (csv && c->json) return usage_error(c, "--csv and --json exclude each other");
    if (npos == 1) {
        if (csv) return usage_error(c, "--csv needs a metric NAME");
        return list_names(c, id);
    }
    if (!*pos[1] || strlen(pos[1]) > 128) return usage_error(c, "a metric NAME is 1..128 characters");
    char name[400], path[600];
    api_escape(pos[1], name, sizeof name);
    int n = snprintf(path, sizeof path, "/api/v1/jobs/%lld/metrics/%s?max_points=%lld&start_step=%lld",
                     (long long)id, name, maxp, start);
    if (end >= 0) snprintf(path + n, sizeof path - (size_t)n, "&end_step=%lld", end);
    api_resp r;
    cJSON *o;
    if ((rc = api_json(c, NULL, path, NULL, &r, &o)) != EX_OK) return rc;
    if (c->json) {
        api_print_body(&r);
        cJSON_Delete(o);
        api_free(&r);
        return EX_OK;
    }
    int bucketed = out_jbool(o, "bucketed", 0);
    const cJSON *arr = out_jarr(o, bucketed ? "buckets" : "points"), *x;
    int count = cJSON_IsArray(arr) ? cJSON_GetArraySize(arr) : 0;
    if (csv) {
        printf(bucketed ? "step,time_ms,last,min,max,count\n" : "step,time_ms,value\n");
        cJSON_ArrayForEach(x, arr) {
            char a[40], b[40], d[40];
            if (bucketed) {
                csv_num(out_jnum(x, "last", NAN), a, sizeof a);
                csv_num(out_jnum(x, "min", NAN), b, sizeof b);
                csv_num(out_jnum(x, "max", NAN), d, sizeof d);
                printf("%.0f,%.0f,%s,%s,%s,%.0f\n", out_jnum(x, "step", 0), out_jnum(x, "time_ms", 0), a, b, d,
                       out_jnum(x, "count", 0));
            } else {
                csv_num(out_jnum(x, "value", NAN), a, sizeof a);
                printf("%.0f,%.0f,%s\n", out_jnum(x, "step", 0), out_jnum(x, "time_ms", 0), a);
            }
        }
    } else if (count == 0) {
        char safe[200];
        out_sanitize(pos[1], safe, sizeof safe);
        printf("job %lld has no points of '%s' in this range (see `tokenlab metrics %lld` for the names)\n",
               (long long)id, safe, (long long)id);
    } else {
        double lo = INFINITY, hi = -INFINITY;
        cJSON_ArrayForEach(x, arr) {
            double a = out_jnum(x, bucketed ? "min" : "value", NAN), b = out_jnum(x, bucketed ? "max" : "value", NAN);
            if (a < lo) lo = a;
            if (b > hi) hi = b;
        }
        char safe[200], slo[32], shi[32];
        out_sanitize(pos[1], safe, sizeof safe);
        out_metric(lo, slo, sizeof slo);
        out_metric(hi, shi, sizeof shi);
        printf("%s of job %lld: %d %s, steps %.0f..%.0f, min %s, max %s\n", safe, (long long)id, count,
               bucketed ? "buckets" : "points", out_jnum(cJSON_GetArrayItem(arr, 0), "step", 0),
               out_jnum(cJSON_GetArrayItem(arr, count - 1), "step", 0), slo, shi);
        static const char *const hp[] = {">STEP", ">VALUE", "TIME"};
        static const char *const hb[] = {">STEP", ">LAST", ">MIN", ">MAX", ">COUNT"};
        out_table t;
        out_table_init(&t, bucketed ? 5 : 3, bucketed ? hb : hp);
        cJSON_ArrayForEach(x, arr) {
            char step[32], a[32], b[32], d[40], e[32];
            snprintf(step, sizeof step, "%.0f", out_jnum(x, "step", 0));
            if (bucketed) {
                out_metric(out_jnum(x, "last", NAN), a, sizeof a);
                out_metric(out_jnum(x, "min", NAN), b, sizeof b);
                out_metric(out_jnum(x, "max", NAN), d, sizeof d);
                snprintf(e, sizeof e, "%.0f", out_jnum(x, "count", 0));
                out_table_row(&t, step, a, b, d, e);
            } else {
                out_metric(out_jnum(x, "value", NAN), a, sizeof a);
                out_time(out_jnum(x, "time_ms", 0), d, sizeof d);
                out_table_row(&t, step, a, d);
            }
        }
        out_table_print(&t, stdout);
        out_table_free(&t);
    }
    cJSON_Delete(o);
    api_free(&r);
    return EX_OK;
}
