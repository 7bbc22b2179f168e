/*
 * cmd_jobs.c: the job commands: submit, jobs, show, cancel, delete.
 *
 * Each command is one or two requests and a printout; with --json the
 * server's answer is printed as it came. submit sends the spec file's bytes
 * verbatim (the daemon stores them as submitted) unless --name or --init
 * asks for a change (--init sets model.init: fine-tuning from a registered
 * model or a job's checkpoint), and always with an Idempotency-Key so its single automatic retry
 * after a broken connection cannot create a second job.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <unistd.h>

#include "api.h"
#include "cli.h"
#include "clock.h"
#include "files.h"
#include "opts.h"
#include "out.h"
#include "watch.h"

#define SPEC_MAX (16u << 20)

static const char *const STATES[] = {"QUEUED", "RUNNING", "CANCELLING", "SUCCEEDED", "FAILED", "CANCELLED"};

/* "model:NAME" or "job:ID[:best|last|STEP]" (--init) as a model.init object; NULL after a usage message
 * (*rc = EX_USAGE). The rules are the job spec's: a model name of 1..64 characters of A-Z a-z 0-9 . _ -
 * starting with a letter or digit, a job id in 1..2^53-1, a step of 1 to 18 digits without a leading 0. */
static cJSON *parse_init(cli *c, const char *v, int *rc) {
    static const char *const usage = "--init must be model:NAME or job:ID[:best|last|STEP]; got '%s'";
    *rc = EX_USAGE;
    cJSON *o = NULL;
    if (strncmp(v, "model:", 6) == 0) {
        const char *n = v + 6;
        size_t len = strlen(n);
        int ok = len >= 1 && len <= 64 && strchr(".-_", n[0]) == NULL;
        for (size_t i = 0; ok && i < len; i++)
            ok = (n[i] >= 'A' && n[i] <= 'Z') || (n[i] >= 'a' && n[i] <= 'z') || (n[i] >= '0' && n[i] <= '9') ||
                 strchr("._-", n[i]) != NULL;
        if (!ok) {
            usage_error(c, "--init model:NAME: NAME must be 1..64 characters of A-Z a-z 0-9 . _ -, starting with a "
                           "letter or digit; got '%s'", n);
            return NULL;
        }
        if (!(o = cJSON_CreateObject()) || !cJSON_AddStringToObject(o, "model", n)) goto oom;
    } else if (strncmp(v, "job:", 4) == 0) {
        char id[32], ck[32] = "";
        const char *colon = strchr(v + 4, ':');
        size_t ilen = colon ? (size_t)(colon - (v + 4)) : strlen(v + 4);
        if (ilen == 0 || ilen >= sizeof id) {
            usage_error(c, usage, v);
            return NULL;
        }
        memcpy(id, v + 4, ilen);
        id[ilen] = '\0';
        char *end;
        long long n = strtoll(id, &end, 10);
        if (*end || id[0] < '1' || id[0] > '9' || n < 1 || n > 9007199254740991LL) {
            usage_error(c, "--init job:ID: ID must be a job id (1..9007199254740991); got '%s'", id);
            return NULL;
        }
        if (colon) {
            const char *k = colon + 1;
            size_t klen = strlen(k);
            int ok = strcmp(k, "best") == 0 || strcmp(k, "last") == 0;
            if (!ok && klen >= 1 && klen <= 18 && k[0] >= '1' && k[0] <= '9') {
                ok = 1;
                for (size_t i = 0; i < klen; i++) ok &= k[i] >= '0' && k[i] <= '9';
            }
            if (!ok) {
                usage_error(c, "--init job:ID:CHECKPOINT: CHECKPOINT must be best, last or a step number; got '%s'", k);
                return NULL;
            }
            snprintf(ck, sizeof ck, "%s", k);
        }
        if (!(o = cJSON_CreateObject()) || !cJSON_AddNumberToObject(o, "job_id", (double)n)) goto oom;
        if (ck[0] && !cJSON_AddStringToObject(o, "checkpoint", ck)) goto oom;
    } else {
        usage_error(c, usage, v);
        return NULL;
    }
    *rc = EX_OK;
    return o;
oom:
    cJSON_Delete(o);
    fprintf(stderr, "tokenlab %s: out of memory\n", c->cmd);
    *rc = EX_LOCAL;
    return NULL;
}

/* Replaces (or adds) o's member key with item (taken over, also on failure); 0 or -1. */
static int put_member(cJSON *o, const char *key, cJSON *item) {
    if (!item) return -1;
    if (cJSON_HasObjectItem(o, key)) return cJSON_ReplaceItemInObjectCaseSensitive(o, key, item) ? 0 : -1;
    return cJSON_AddItemToObject(o, key, item) ? 0 : -1;
}

/* The spec with its "name" replaced (name not NULL) and model.init set (init not NULL, taken over): a new
 * malloc'd text, or NULL after printing why. */
static char *edit_spec(cli *c, const char *path, const char *spec, size_t len, const char *name, cJSON *init) {
    cJSON *o = cJSON_ParseWithLength(spec, len);
    if (!cJSON_IsObject(o)) {
        fprintf(stderr, "tokenlab %s: %s is not a JSON object, so %s cannot be applied\n", c->cmd, path,
                name ? "--name" : "--init");
        cJSON_Delete(o);
        cJSON_Delete(init);
        return NULL;
    }
    int bad = name && put_member(o, "name", cJSON_CreateString(name)) != 0;
    if (!bad && init) {
        cJSON *m = cJSON_GetObjectItemCaseSensitive(o, "model");
        if (m && !cJSON_IsObject(m)) {
            fprintf(stderr, "tokenlab %s: %s: \"model\" is not an object, so --init cannot be applied\n", c->cmd, path);
            cJSON_Delete(o);
            cJSON_Delete(init);
            return NULL;
        }
        if (!m && !(m = cJSON_AddObjectToObject(o, "model"))) bad = 1;
        bad = bad || put_member(m, "init", init) != 0;
        init = NULL;
    }
    cJSON_Delete(init);
    char *out = bad ? NULL : cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!out) fprintf(stderr, "tokenlab %s: out of memory\n", c->cmd);
    return out;
}

static void random_key(char *out, size_t len) {
    unsigned char r[16];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) { /* unlikely; time and pid are unique enough here */
        unsigned long long t = (unsigned long long)clock_wall_ms();
        snprintf(out, len, "tokenlab-%llx-%x", t, (unsigned)getpid());
        return;
    }
    size_t o = (size_t)snprintf(out, len, "tokenlab-");
    for (size_t i = 0; i < sizeof r && o + 2 < len; i++, o += 2) snprintf(out + o, len - o, "%02x", r[i]);
}

int cmd_submit(cli *c, int argc, char **argv) {
    const char *name = NULL, *key = NULL, *init_arg = NULL;
    int wait = 0;
    double interval = 5;
    opt_def defs[] = {{"--name", 0, OPT_STR, &name, 0, 0},
                      {"--init", 0, OPT_STR, &init_arg, 0, 0},
                      {"--wait", 'w', OPT_FLAG, &wait, 0, 0},
                      {"--idempotency-key", 0, OPT_STR, &key, 0, 0},
                      {"--interval", 0, OPT_NUM, &interval, 0, 3600},
                      {0}};
    char *pos[1];
    int npos, rc = opts_parse(c, argc, argv, defs, pos, 1, &npos);
    if (rc || (rc = opts_count(c, npos, 1, 1))) return rc;
    if (key && (!*key || strlen(key) > 127)) return usage_error(c, "--idempotency-key must be 1..127 characters");
    if (name && !*name) return usage_error(c, "--name must not be empty");
    cJSON *init = NULL;
    if (init_arg && !(init = parse_init(c, init_arg, &rc))) return rc;
    size_t len;
    char *spec = files_read(c->cmd, pos[0], SPEC_MAX, &len);
    if (!spec) {
        cJSON_Delete(init);
        return EX_LOCAL;
    }
    if (name || init) {
        char *edited = edit_spec(c, pos[0], spec, len, name, init);
        free(spec);
        if (!edited) return EX_LOCAL;
        spec = edited;
        len = strlen(spec);
    }
    char keybuf[160], hdr[200];
    if (!key) {
        random_key(keybuf, sizeof keybuf);
        key = keybuf;
    }
    snprintf(hdr, sizeof hdr, "Idempotency-Key: %s", key);
    api_req q = {.method = "POST", .path = "/api/v1/jobs", .ctype = "application/json", .body = spec, .len = len,
                 .header = hdr};
    api_resp r;
    rc = api_do(c, &q, &r);
    if (rc == EX_CONNECT && api_broke_midway(&r)) { /* the job may exist: the same key finds it */
        api_free(&r);
        sleep(1);
        rc = api_do(c, &q, &r);
    }
    free(spec);
    if (rc != EX_OK) {
        api_explain_transport(c, &r, rc);
        api_free(&r);
        return rc;
    }
    if ((rc = api_explain_status(c, &r)) != EX_OK) {
        api_free(&r);
        return rc;
    }
    cJSON *j = cJSON_ParseWithLength(r.body ? r.body : "", r.len);
    int64_t id = (int64_t)out_jnum(j, "id", 0);
    if (!j || id <= 0) {
        fprintf(stderr, "tokenlab %s: the server's answer holds no job id\n", c->cmd);
        cJSON_Delete(j);
        api_free(&r);
        return EX_LOCAL;
    }
    if (c->json && !wait) {
        api_print_body(&r);
    } else if (!c->json) {
        char nm[160];
        out_sanitize(out_jstr(j, "name", ""), nm, sizeof nm);
        if (r.status == 200)
            printf("job %lld '%s' was already submitted with this idempotency key (%s)\n", (long long)id, nm,
                   out_jstr(j, "state", "?"));
        else if (out_jget(j, "queue_position"))
            printf("submitted job %lld '%s' (%s, queue position %.0f)\n", (long long)id, nm, out_jstr(j, "state", "?"),
                   out_jnum(j, "queue_position", 0));
        else
            printf("submitted job %lld '%s' (%s)\n", (long long)id, nm, out_jstr(j, "state", "?"));
        fflush(stdout);
    }
    cJSON_Delete(j);
    api_free(&r);
    if (!wait) return EX_OK;
    watch_opts wo = {.interval_s = interval, .quiet = c->json};
    rc = watch_job(c, id, &wo);
    if (c->json && (rc == EX_OK || rc == EX_FAILED || rc == EX_CANCELLED)) {
        char path[64];
        snprintf(path, sizeof path, "/api/v1/jobs/%lld", (long long)id);
        api_req g = {.path = path};
        int grc = api_call(c, &g, &r);
        if (grc == EX_OK) api_print_body(&r);
        else rc = grc;
        api_free(&r);
    }
    return rc;
}

static void fmt_progress(const cJSON *j, char *buf, size_t len) {
    double step = out_jnum(j, "progress.step", 0), total = out_jnum(j, "progress.total_steps", 0);
    if (total > 0) snprintf(buf, len, "%.0f/%.0f %3.0f%%", step, total, 100.0 * step / total);
    else snprintf(buf, len, "-");
}

static void fmt_pct(double v, char *buf, size_t len) {
    if (isnan(v)) snprintf(buf, len, "-");
    else snprintf(buf, len, "%.1f%%", 100 * v);
}

/* Running time: ended - started, or now - started while it runs. */
static void fmt_took(const cJSON *j, char *buf, size_t len) {
    double s = out_jnum(j, "started_ms", 0), e = out_jnum(j, "ended_ms", 0);
    if (s <= 0) snprintf(buf, len, "-");
    else out_duration(((e > 0 ? e : clock_wall_ms()) - s) / 1000.0, buf, len);
}

int cmd_jobs(cli *c, int argc, char **argv) {
    const char *state = NULL;
    long long limit = 50, cursor = -1;
    opt_def defs[] = {{"--state", 's', OPT_STR, &state, 0, 0},
                      {"--limit", 'n', OPT_INT, &limit, 1, 200},
                      {"--cursor", 0, OPT_INT, &cursor, 1, INT64_MAX},
                      {0}};
    char *pos[1];
    int npos, rc = opts_parse(c, argc, argv, defs, pos, 0, &npos);
    if (rc) return rc;
    char st[16] = "";
    if (state) {
        size_t k = 0;
        for (; k < sizeof STATES / sizeof STATES[0]; k++)
            if (strcasecmp(state, STATES[k]) == 0) break;
        if (k == sizeof STATES / sizeof STATES[0])
            return usage_error(c, "--state must be one of QUEUED, RUNNING, CANCELLING, SUCCEEDED, FAILED, CANCELLED; "
                                  "got '%s'", state);
        snprintf(st, sizeof st, "%s", STATES[k]);
    }
    char path[160];
    int n = snprintf(path, sizeof path, "/api/v1/jobs?limit=%lld", limit);
    if (st[0]) n += snprintf(path + n, sizeof path - (size_t)n, "&state=%s", st);
    if (cursor > 0) snprintf(path + n, sizeof path - (size_t)n, "&cursor=%lld", cursor);
    api_resp r;
    cJSON *o;
    if ((rc = api_json(c, NULL, path, NULL, &r, &o)) != EX_OK) return rc;
    if (c->json) {
        api_print_body(&r);
    } else {
        const cJSON *arr = out_jarr(o, "jobs"), *j;
        static const char *const head[] = {">ID", "NAME", "STATE", ">PROGRESS", ">LOSS", ">TOP1", ">EMA TOP1",
                                           "CREATED", ">TOOK"};
        out_table t;
        out_table_init(&t, 9, head);
        cJSON_ArrayForEach(j, arr) {
            char id[24], prog[40], loss[24], top1[24], etop1[24], created[32], took[24];
            snprintf(id, sizeof id, "%.0f", out_jnum(j, "id", 0));
            fmt_progress(j, prog, sizeof prog);
            double l = out_jnum(j, "latest_metrics.loss", NAN);
            if (out_jget(j, "latest_metrics.loss")) out_metric(l, loss, sizeof loss);
            else snprintf(loss, sizeof loss, "-");
            fmt_pct(out_jnum(j, "latest_metrics.top1", NAN), top1, sizeof top1);
            fmt_pct(out_jnum(j, "latest_metrics.ema_top1", NAN), etop1, sizeof etop1);
            out_time(out_jnum(j, "created_ms", 0), created, sizeof created);
            fmt_took(j, took, sizeof took);
            out_table_row(&t, id, out_jstr(j, "name", ""), out_jstr(j, "state", "?"), prog, loss, top1, etop1,
                          created, took);
        }
        if (t.rows == 0) printf("no jobs%s%s\n", st[0] ? " in state " : "", st);
        else out_table_print(&t, stdout);
        out_table_free(&t);
        double next = out_jnum(o, "next_cursor", 0);
        if (next > 0)
            fprintf(stderr, "(more: tokenlab jobs%s%s --limit %lld --cursor %.0f)\n", st[0] ? " --state " : "", st,
                    limit, next);
    }
    cJSON_Delete(o);
    api_free(&r);
    return EX_OK;
}

static void kv(const char *k, const char *v) {
    char safe[1024];
    out_sanitize(v, safe, sizeof safe);
    printf("  %-11s %s\n", k, safe);
}

static void show_spec(const cJSON *spec) {
    char buf[512];
    const cJSON *m = out_jget(spec, "model");
    if (m) {
        snprintf(buf, sizeof buf, "LV-ViT %g px, patch %g, dim %g x %g blocks, %g heads, %g classes",
                 out_jnum(m, "img_size", NAN), out_jnum(m, "patch_size", NAN), out_jnum(m, "embed_dim", NAN),
                 out_jnum(m, "depth", NAN), out_jnum(m, "num_heads", NAN), out_jnum(m, "num_classes", NAN));
        kv("model", buf);
    }
    const cJSON *d = out_jget(spec, "data");
    if (d) {
        snprintf(buf, sizeof buf, "train %s, val %s%s%s", out_jstr(d, "train", "-"), out_jstr(d, "val", "-"),
                 out_jget(d, "label_maps") ? ", label maps " : "", out_jstr(d, "label_maps", ""));
        kv("data", buf);
    }
    const cJSON *t = out_jget(spec, "train");
    if (t) {
        int n = snprintf(buf, sizeof buf, "%g epochs", out_jnum(t, "epochs", NAN));
        if (out_jget(t, "batch_size")) n += snprintf(buf + n, sizeof buf - (size_t)n, ", batch %g", out_jnum(t, "batch_size", 0));
        if (out_jget(t, "lr")) snprintf(buf + n, sizeof buf - (size_t)n, ", lr %g", out_jnum(t, "lr", 0));
        kv("training", buf);
    }
}

/* A checkpoint as the API gives it: "best", "last" or a step number. */
static void fmt_checkpoint(const cJSON *ck, char *buf, size_t len) {
    if (cJSON_IsNumber(ck)) snprintf(buf, len, "step %.0f", ck->valuedouble);
    else snprintf(buf, len, "%s", cJSON_IsString(ck) ? ck->valuestring : "best");
}

/* "init": where a fine-tuned job starts (Job.init); nothing for a job trained from scratch. */
static void show_init(const cJSON *in) {
    if (!cJSON_IsObject(in)) return;
    char buf[600], ck[48];
    int n;
    if (out_jget(in, "model")) {
        n = snprintf(buf, sizeof buf, "model %s", out_jstr(in, "model", "?"));
    } else {
        fmt_checkpoint(out_jget(in, "checkpoint"), ck, sizeof ck);
        n = snprintf(buf, sizeof buf, "job %.0f, %s checkpoint", out_jnum(in, "job_id", 0), ck);
    }
    const cJSON *loaded = out_jget(in, "loaded"), *ema = out_jget(in, "ema"), *pe = out_jget(in, "pos_embed");
    if (cJSON_IsNumber(out_jget(in, "step")) && n < (int)sizeof buf)
        n += snprintf(buf + n, sizeof buf - (size_t)n, " at step %.0f", out_jnum(in, "step", 0));
    if (cJSON_IsBool(ema) && n < (int)sizeof buf)
        n += snprintf(buf + n, sizeof buf - (size_t)n, ", %s weights", cJSON_IsTrue(ema) ? "EMA" : "raw");
    if (cJSON_IsString(out_jget(in, "head")) && n < (int)sizeof buf)
        n += snprintf(buf + n, sizeof buf - (size_t)n, ", head %s", out_jstr(in, "head", ""));
    if (strcmp(out_jstr(in, "head", ""), "match") == 0 && n < (int)sizeof buf)
        n += snprintf(buf + n, sizeof buf - (size_t)n, " (%.0f classes matched)", out_jnum(in, "classes_matched", 0));
    if (cJSON_IsObject(pe) && n < (int)sizeof buf)
        n += snprintf(buf + n, sizeof buf - (size_t)n, ", position embedding %.0fx%.0f -> %.0fx%.0f",
                      out_jnum(pe, "from", 0), out_jnum(pe, "from", 0), out_jnum(pe, "to", 0), out_jnum(pe, "to", 0));
    if (!cJSON_IsTrue(loaded) && n < (int)sizeof buf)
        snprintf(buf + n, sizeof buf - (size_t)n, " (asked; not loaded yet)");
    kv("init", buf);
}

static void show_checkpoints(cli *c, int64_t id) {
    char path[80];
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/checkpoints", (long long)id);
    api_req q = {.path = path};
    api_resp r;
    if (api_do(c, &q, &r) == EX_OK && r.status == 200) {
        cJSON *o = cJSON_ParseWithLength(r.body, r.len);
        const cJSON *arr = out_jarr(o, "checkpoints"), *x;
        static const char *const head[] = {">STEP", "KIND", ">SIZE", "WRITTEN"};
        out_table t;
        out_table_init(&t, 4, head);
        cJSON_ArrayForEach(x, arr) {
            char step[24], size[24], when[32];
            snprintf(step, sizeof step, "%.0f", out_jnum(x, "step", 0));
            out_bytes(out_jnum(x, "bytes", -1), size, sizeof size);
            out_time(out_jnum(x, "time_ms", 0), when, sizeof when);
            out_table_row(&t, step, out_jstr(x, "kind", "?"), size, when);
        }
        if (t.rows) {
            printf("checkpoints\n");
            out_table_print(&t, stdout);
        }
        out_table_free(&t);
        cJSON_Delete(o);
    }
    api_free(&r);
}

int cmd_show(cli *c, int argc, char **argv) {
    char *pos[1];
    int npos, rc = opts_parse(c, argc, argv, NULL, pos, 1, &npos);
    int64_t id;
    if (rc || (rc = opts_count(c, npos, 1, 1)) || (rc = opts_job_id(c, pos[0], &id))) return rc;
    char path[64], buf[600], a[40], b[40];
    snprintf(path, sizeof path, "/api/v1/jobs/%lld", (long long)id);
    api_resp r;
    cJSON *j;
    if ((rc = api_json(c, NULL, path, NULL, &r, &j)) != EX_OK) return rc;
    if (c->json) {
        api_print_body(&r);
        cJSON_Delete(j);
        api_free(&r);
        return EX_OK;
    }
    char nm[160];
    out_sanitize(out_jstr(j, "name", ""), nm, sizeof nm);
    printf("job %lld '%s'\n", (long long)id, nm);
    const char *reason = out_jstr(j, "state_reason", ""), *msg = out_jstr(j, "state_message", "");
    snprintf(buf, sizeof buf, "%s%s%s%s%s%s", out_jstr(j, "state", "?"), *reason ? " (" : "", reason,
             *reason ? ")" : "", *msg ? ": " : "", msg);
    kv("state", buf);
    if (out_jget(j, "queue_position")) {
        snprintf(buf, sizeof buf, "%.0f", out_jnum(j, "queue_position", 0));
        kv("queue", buf);
    }
    snprintf(buf, sizeof buf, "%.0f", out_jnum(j, "attempt", 1));
    kv("attempt", buf);
    double epochs = out_jnum(j, "spec.train.epochs", 0);
    fmt_progress(j, a, sizeof a);
    if (epochs > 0) snprintf(buf, sizeof buf, "epoch %.0f/%.0f, step %s", out_jnum(j, "progress.epoch", 0) + 1, epochs, a);
    else snprintf(buf, sizeof buf, "step %s", a);
    kv("progress", buf);
    if (out_jnum(j, "eta_seconds", -1) >= 0) {
        out_duration(out_jnum(j, "eta_seconds", -1), a, sizeof a);
        kv("ETA", a);
    }
    out_time(out_jnum(j, "created_ms", 0), a, sizeof a);
    kv("created", a);
    out_time(out_jnum(j, "started_ms", 0), a, sizeof a);
    kv("started", a);
    out_time(out_jnum(j, "ended_ms", 0), a, sizeof a);
    fmt_took(j, b, sizeof b);
    snprintf(buf, sizeof buf, "%s (ran %s)", a, b);
    kv("ended", out_jnum(j, "ended_ms", 0) > 0 ? buf : "-");
    show_spec(out_jget(j, "spec"));
    show_init(out_jget(j, "init"));
    const cJSON *m = out_jget(j, "latest_metrics"), *x;
    if (cJSON_IsObject(m) && m->child) {
        printf("latest metrics\n");
        cJSON_ArrayForEach(x, m) {
            if (!x->string) continue;
            char v[32];
            out_metric(cJSON_IsNumber(x) ? x->valuedouble : NAN, v, sizeof v);
            kv(x->string, v);
        }
    }
    const cJSON *h = out_jarr(j, "state_history");
    if (cJSON_GetArraySize(h) > 0) {
        static const char *const head[] = {"TIME", "FROM", "TO", "REASON", "MESSAGE"};
        out_table t;
        out_table_init(&t, 5, head);
        cJSON_ArrayForEach(x, h) {
            out_time(out_jnum(x, "time_ms", 0), a, sizeof a);
            out_table_row(&t, a, out_jstr(x, "from", "-"), out_jstr(x, "to", "?"), out_jstr(x, "reason", ""),
                          out_jstr(x, "message", ""));
        }
        printf("history\n");
        out_table_print(&t, stdout);
        out_table_free(&t);
    }
    show_checkpoints(c, id);
    cJSON_Delete(j);
    api_free(&r);
    return EX_OK;
}

int cmd_cancel(cli *c, int argc, char **argv) {
    char *pos[1];
    int npos, rc = opts_parse(c, argc, argv, NULL, pos, 1, &npos);
    int64_t id;
    if (rc || (rc = opts_count(c, npos, 1, 1)) || (rc = opts_job_id(c, pos[0], &id))) return rc;
    char path[80];
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/cancel", (long long)id);
    api_resp r;
    cJSON *j;
    if ((rc = api_json(c, "POST", path, NULL, &r, &j)) == EX_OK) {
        if (c->json) api_print_body(&r);
        else printf("job %lld: %s (the job checkpoints and stops)\n", (long long)id, out_jstr(j, "state", "?"));
    }
    cJSON_Delete(j);
    api_free(&r);
    return rc;
}

int cmd_delete(cli *c, int argc, char **argv) {
    char *pos[1];
    int npos, rc = opts_parse(c, argc, argv, NULL, pos, 1, &npos);
    int64_t id;
    if (rc || (rc = opts_count(c, npos, 1, 1)) || (rc = opts_job_id(c, pos[0], &id))) return rc;
    char path[64];
    snprintf(path, sizeof path, "/api/v1/jobs/%lld", (long long)id);
    api_req q = {.method = "DELETE", .path = path};
    api_resp r;
    if ((rc = api_call(c, &q, &r)) == EX_OK) {
        if (c->json) printf("{\"id\":%lld,\"deleted\":true}\n", (long long)id);
        else printf("deleted job %lld\n", (long long)id);
    }
    api_free(&r);
    return rc;
}

int cmd_watch(cli *c, int argc, char **argv) {
    double interval = 5;
    opt_def defs[] = {{"--interval", 'i', OPT_NUM, &interval, 0, 3600}, {0}};
    char *pos[1];
    int npos, rc = opts_parse(c, argc, argv, defs, pos, 1, &npos);
    int64_t id;
    if (rc || (rc = opts_count(c, npos, 1, 1)) || (rc = opts_job_id(c, pos[0], &id))) return rc;
    watch_opts wo = {.interval_s = interval};
    return watch_job(c, id, &wo);
}
