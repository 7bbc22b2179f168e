/*
 * routes.c: the REST API under /api/v1 (described by schema/openapi.json).
 *
 * Owns nothing long-lived: each handler reads the request, talks to the job
 * manager, the store and the event bus (all thread-safe), and replies once.
 * Handlers run on libmicrohttpd's connection threads. Server-Sent Event
 * streams keep a small state per connection (routes_stream), freed when the
 * connection ends.
 */
#include "api/routes.h"
#include "api/handlers.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenlab/base.h"
#include "tokenlab/model.h"

#define LIST_MAX 200
#define METRIC_NAMES_MAX 64
#define POINTS_MAX 100000
#define LOG_MAX (1 << 20)

/* ---- helpers ---- */
int tld_routes_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out) {
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*end || errno || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

/* Query parameter as an integer in [lo, hi], dflt when absent; replies 400 and returns -1 when bad. */
static int query_i64(tld_req *r, const char *name, int64_t lo, int64_t hi, int64_t dflt, int64_t *out) {
    const char *v = tld_req_query(r, name);
    if (!v) {
        *out = dflt;
        return 0;
    }
    if (tld_routes_parse_i64(v, lo, hi, out) == 0) return 0;
    tld_reply_problem(r, 400, "BAD_QUERY", NULL, "query parameter %s: must be an integer in %" PRId64 "..%" PRId64,
                     name, lo, hi);
    return -1;
}

static int job_id(tld_req *r, int64_t *id) {
    if (tld_routes_parse_i64(tld_req_param(r, "id"), 1, INT64_MAX, id) == 0) return 0;
    tld_reply_problem(r, 404, "NOT_FOUND", NULL, "no job %s", tld_req_param(r, "id"));
    return -1;
}

void tld_routes_reply_cjson(tld_req *r, int status, struct cJSON *o) {
    char *s = cJSON_PrintUnformatted(o); /* NULL for a NULL o (out of memory building it) */
    if (s) tld_reply_json(r, status, s);
    else tld_reply_problem(r, 500, "INTERNAL", NULL, "out of memory");
    free(s);
    cJSON_Delete(o);
}

/* Maps a store/jobs error text to a problem reply. */
static void reply_error(tld_req *r, const char *err) {
    if (strstr(err, "not found")) tld_reply_problem(r, 404, "NOT_FOUND", NULL, "%s", err);
    /* SQLite's text for SQLITE_FULL (sqlite3_errstr): the store's disk is full, nothing was written */
    else if (strstr(err, "database or disk is full"))
        tld_reply_problem(r, 507, "DISK_FULL", NULL, "the daemon's disk is full; nothing was changed (%s)", err);
    else if (strstr(err, "invalid transition")) tld_reply_problem(r, 409, "INVALID_STATE", NULL, "%s", err);
    else tld_reply_problem(r, 500, "INTERNAL", NULL, "%s", err);
}

/* A distributed job's ranks (Job.distributed): what it asked for, what runs, each rank's host and its
 * latest images/s, the latest gradient sum's seconds. NULL for a job that runs in the daemon. */
static cJSON *job_dist_json(tld_routes *R, int64_t id) {
    tld_job_dist_row d;
    char err[256];
    if (tld_store_job_dist_get(R->store, id, &d, err, sizeof err) != 0) return NULL;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "ranks_requested", d.ranks_requested);
    cJSON_AddNumberToObject(o, "ranks", d.ranks);
    cJSON *hosts = cJSON_Parse(d.hosts_json), *ips = cJSON_Parse(d.rank_img_per_s_json);
    cJSON_AddItemToObject(o, "hosts", hosts ? hosts : cJSON_CreateArray());
    cJSON_AddItemToObject(o, "rank_img_per_s", ips ? ips : cJSON_CreateArray());
    if (d.has_comm_seconds) cJSON_AddNumberToObject(o, "comm_seconds", d.comm_seconds);
    else cJSON_AddNullToObject(o, "comm_seconds");
    tld_job_dist_free(&d);
    return o;
}

static cJSON *job_json(tld_routes *R, const tld_job *j) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "id", (double)j->id);
    cJSON_AddStringToObject(o, "name", j->name);
    cJSON_AddItemToObject(o, "spec", cJSON_CreateRaw(j->spec_json ? j->spec_json : "null"));
    cJSON_AddStringToObject(o, "state", tld_job_state_name(j->state));
    cJSON_AddStringToObject(o, "state_reason", j->state_reason);
    cJSON_AddStringToObject(o, "state_message", j->state_message);
    if (j->state == TLD_JOB_QUEUED)
        cJSON_AddNumberToObject(o, "queue_position", tld_store_job_queue_position(R->store, j->id));
    cJSON *p = cJSON_AddObjectToObject(o, "progress");
    cJSON_AddNumberToObject(p, "epoch", (double)j->epoch);
    cJSON_AddNumberToObject(p, "step", (double)j->step);
    cJSON_AddNumberToObject(p, "total_steps", (double)j->total_steps);
    if (j->eta_seconds >= 0 && j->state == TLD_JOB_RUNNING) cJSON_AddNumberToObject(o, "eta_seconds", j->eta_seconds);
    else cJSON_AddNullToObject(o, "eta_seconds");
    cJSON_AddNumberToObject(o, "created_ms", (double)j->created_ms);
    if (j->started_ms) cJSON_AddNumberToObject(o, "started_ms", (double)j->started_ms);
    else cJSON_AddNullToObject(o, "started_ms");
    if (j->ended_ms) cJSON_AddNumberToObject(o, "ended_ms", (double)j->ended_ms);
    else cJSON_AddNullToObject(o, "ended_ms");
    cJSON_AddNumberToObject(o, "attempt", j->attempt);
    cJSON *init = tld_lineage_job_init(R->store, j);
    if (init) cJSON_AddItemToObject(o, "init", init);
    else cJSON_AddNullToObject(o, "init");
    cJSON *dist = job_dist_json(R, j->id);
    if (dist) cJSON_AddItemToObject(o, "distributed", dist);
    else cJSON_AddNullToObject(o, "distributed");
    cJSON *m = cJSON_AddObjectToObject(o, "latest_metrics");
    tld_metric_summary ms[METRIC_NAMES_MAX];
    int n = 0;
    char err[256];
    if (tld_store_metric_names(R->store, j->id, ms, METRIC_NAMES_MAX, &n, err, sizeof err) == 0)
        for (int i = 0; i < n; i++) cJSON_AddNumberToObject(m, ms[i].name, ms[i].last_value);
    return o;
}

/* The job named by the {id} of the route, into *j (free with tld_job_free); on failure a problem
 * (404 for an unknown id) has been sent and -1 is returned. */
static int load_job(tld_req *r, tld_routes *R, int64_t *id, tld_job *j) {
    char err[256];
    if (job_id(r, id)) return -1;
    if (tld_store_job_get(R->store, *id, j, err, sizeof err) == 0) return 0;
    reply_error(r, err);
    return -1;
}

/* Only checks that the route's job exists (the reply has been sent when it does not). */
static int require_job(tld_req *r, tld_routes *R, int64_t *id) {
    tld_job j;
    if (load_job(r, R, id, &j) != 0) return -1;
    tld_job_free(&j);
    return 0;
}

/* Replies with the current state of job id. */
static void reply_job(tld_req *r, tld_routes *R, int64_t id, int status) {
    tld_job j;
    char err[256];
    if (tld_store_job_get(R->store, id, &j, err, sizeof err) != 0) {
        reply_error(r, err);
        return;
    }
    tld_routes_reply_cjson(r, status, job_json(R, &j));
    tld_job_free(&j);
}

/* ---- jobs ---- */
void tld_h_job_submit(tld_req *r, void *u) {
    tld_routes *R = u;
    const char *ct = tld_req_header(r, "Content-Type");
    if (!ct || strncmp(ct, "application/json", 16) != 0) {
        tld_reply_problem(r, 415, "UNSUPPORTED_MEDIA_TYPE", NULL, "send the job spec as application/json");
        return;
    }
    size_t len;
    const char *body = tld_req_body(r, &len);
    if (!body || len == 0) {
        tld_reply_problem(r, 400, "BAD_JSON", "", "the body is empty; send a job spec");
        return;
    }
    const char *key = tld_req_header(r, "Idempotency-Key");
    if (key && (strlen(key) == 0 || strlen(key) > 127)) {
        tld_reply_problem(r, 400, "BAD_HEADER", NULL, "Idempotency-Key: must be 1..127 characters");
        return;
    }
    int64_t id;
    int existed = 0;
    tl_spec_error se;
    char err[512];
    if (tld_jobs_submit(R->jobs, body, key, &id, &existed, &se, err, sizeof err) != 0) {
        if (strcmp(err, "spec") == 0) {
            int syntax = strncmp(se.message, "not valid JSON", 14) == 0 || strstr(se.message, "text after") != NULL;
            tld_reply_problem(r, syntax ? 400 : 422, syntax ? "BAD_JSON" : "SPEC_INVALID", se.pointer, "%s%s%s",
                             se.pointer, se.pointer[0] ? ": " : "", se.message);
        } else {
            reply_error(r, err);
        }
        return;
    }
    char loc[64];
    snprintf(loc, sizeof loc, "/api/v1/jobs/%" PRId64, id);
    tld_reply_header(r, "Location", loc);
    reply_job(r, R, id, existed ? 200 : 201);
}

void tld_h_job_list(tld_req *r, void *u) {
    tld_routes *R = u;
    int state = -1;
    const char *sv = tld_req_query(r, "state");
    if (sv) {
        tld_job_state s;
        if (tld_job_state_parse(sv, &s) != 0) {
            tld_reply_problem(r, 400, "BAD_QUERY", NULL,
                             "query parameter state: must be one of QUEUED, RUNNING, CANCELLING, SUCCEEDED, FAILED, "
                             "CANCELLED");
            return;
        }
        state = (int)s;
    }
    int64_t limit, cursor;
    if (query_i64(r, "limit", 1, LIST_MAX, 50, &limit) || query_i64(r, "cursor", 0, INT64_MAX, 0, &cursor)) return;
    tld_job *jobs = calloc((size_t)limit, sizeof *jobs);
    int n = 0;
    char err[256];
    if (!jobs || tld_store_job_list(R->store, state, cursor, (int)limit, jobs, &n, err, sizeof err) != 0) {
        free(jobs);
        tld_reply_problem(r, 500, "INTERNAL", NULL, "listing jobs failed");
        return;
    }
    cJSON *o = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(o, "jobs");
    for (int i = 0; i < n; i++) {
        cJSON_AddItemToArray(arr, job_json(R, &jobs[i]));
        tld_job_free(&jobs[i]);
    }
    if (n == limit && n > 0) cJSON_AddNumberToObject(o, "next_cursor", (double)jobs[n - 1].id);
    else cJSON_AddNullToObject(o, "next_cursor");
    free(jobs);
    tld_routes_reply_cjson(r, 200, o);
}

#define HISTORY_MAX 64

void tld_h_job_get(tld_req *r, void *u) {
    tld_routes *R = u;
    int64_t id;
    tld_job j;
    char err[256];
    if (load_job(r, R, &id, &j) != 0) return;
    cJSON *o = job_json(R, &j);
    tld_job_free(&j);
    tld_state_change *h = calloc(HISTORY_MAX, sizeof *h);
    int n = 0;
    cJSON *arr = cJSON_AddArrayToObject(o, "state_history");
    if (h && tld_store_job_history(R->store, id, h, HISTORY_MAX, &n, err, sizeof err) == 0)
        for (int i = 0; i < n; i++) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddNumberToObject(e, "time_ms", (double)h[i].time_ms);
            if (h[i].from[0]) cJSON_AddStringToObject(e, "from", h[i].from);
            else cJSON_AddNullToObject(e, "from");
            cJSON_AddStringToObject(e, "to", h[i].to);
            cJSON_AddStringToObject(e, "reason", h[i].reason);
            cJSON_AddStringToObject(e, "message", h[i].message);
            cJSON_AddItemToArray(arr, e);
        }
    free(h);
    tld_routes_reply_cjson(r, 200, o);
}

void tld_h_job_cancel(tld_req *r, void *u) {
    tld_routes *R = u;
    int64_t id;
    char err[512];
    if (job_id(r, &id)) return;
    if (tld_jobs_cancel(R->jobs, id, err, sizeof err) != 0) {
        reply_error(r, err);
        return;
    }
    reply_job(r, R, id, 202);
}

void tld_h_job_delete(tld_req *r, void *u) {
    tld_routes *R = u;
    int64_t id;
    char err[512];
    if (job_id(r, &id)) return;
    if (tld_jobs_delete(R->jobs, id, err, sizeof err) != 0) {
        reply_error(r, err);
        return;
    }
    tld_reply_bytes(r, 204, "application/json", "", 0);
}

/* ---- metrics, logs, checkpoints ---- */
void tld_h_job_metric_names(tld_req *r, void *u) {
    tld_routes *R = u;
    int64_t id;
    char err[256];
    if (require_job(r, R, &id) != 0) return;
    tld_metric_summary ms[METRIC_NAMES_MAX];
    int n = 0;
    if (tld_store_metric_names(R->store, id, ms, METRIC_NAMES_MAX, &n, err, sizeof err) != 0) {
        reply_error(r, err);
        return;
    }
    cJSON *o = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(o, "metrics");
    for (int i = 0; i < n; i++) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "name", ms[i].name);
        cJSON_AddNumberToObject(m, "last_value", ms[i].last_value);
        cJSON_AddNumberToObject(m, "last_step", (double)ms[i].last_step);
        cJSON_AddNumberToObject(m, "count", (double)ms[i].count);
        cJSON_AddItemToArray(arr, m);
    }
    tld_routes_reply_cjson(r, 200, o);
}

void tld_h_job_metric_series(tld_req *r, void *u) {
    tld_routes *R = u;
    int64_t id, start, end, maxp;
    if (job_id(r, &id)) return;
    const char *name = tld_req_param(r, "name");
    if (query_i64(r, "start_step", 0, INT64_MAX, 0, &start) || query_i64(r, "end_step", -1, INT64_MAX, -1, &end) ||
        query_i64(r, "max_points", 1, POINTS_MAX, 1000, &maxp))
        return;
    tld_metric_point *pts = malloc(sizeof *pts * (size_t)maxp);
    int n = 0, bucketed = 0;
    char err[256];
    if (!pts || tld_store_metric_query(R->store, id, name, start, end, (int)maxp, pts, &n, &bucketed, err, sizeof err) != 0) {
        free(pts);
        reply_error(r, pts ? err : "out of memory");
        return;
    }
    /* an unknown job is a 404; an unknown series or an empty range is an empty answer */
    if (n == 0 && require_job(r, R, &id) != 0) {
        free(pts);
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", name);
    cJSON_AddBoolToObject(o, "bucketed", bucketed);
    cJSON *arr = cJSON_AddArrayToObject(o, bucketed ? "buckets" : "points");
    for (int i = 0; i < n; i++) {
        cJSON *p = cJSON_CreateObject();
        cJSON_AddNumberToObject(p, "step", (double)pts[i].step);
        cJSON_AddNumberToObject(p, "time_ms", (double)pts[i].time_ms);
        if (bucketed) {
            cJSON_AddNumberToObject(p, "last", pts[i].last);
            cJSON_AddNumberToObject(p, "min", pts[i].min);
            cJSON_AddNumberToObject(p, "max", pts[i].max);
            cJSON_AddNumberToObject(p, "count", (double)pts[i].count);
        } else {
            cJSON_AddNumberToObject(p, "value", pts[i].last);
        }
        cJSON_AddItemToArray(arr, p);
    }
    free(pts);
    tld_routes_reply_cjson(r, 200, o);
}

void tld_h_job_logs(tld_req *r, void *u) {
    tld_routes *R = u;
    int64_t id, offset, limit;
    if (job_id(r, &id)) return;
    if (query_i64(r, "offset", 0, INT64_MAX, 0, &offset) || query_i64(r, "limit_bytes", 1, LOG_MAX, 65536, &limit))
        return;
    char *buf = malloc((size_t)limit + 1), err[256];
    size_t len = 0;
    int64_t next = offset;
    int eof = 1;
    if (!buf || tld_store_log_read(R->store, id, offset, (size_t)limit, buf, &len, &next, &eof, err, sizeof err) != 0) {
        free(buf);
        reply_error(r, buf ? err : "out of memory");
        return;
    }
    buf[len] = 0;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "offset", (double)offset);
    cJSON_AddNumberToObject(o, "next_offset", (double)next);
    cJSON_AddBoolToObject(o, "eof", eof);
    cJSON_AddStringToObject(o, "text", buf);
    free(buf);
    tld_routes_reply_cjson(r, 200, o);
}

void tld_h_job_checkpoints(tld_req *r, void *u) {
    tld_routes *R = u;
    int64_t id;
    tld_checkpoint_row rows[64];
    int n = 0;
    char err[256];
    if (require_job(r, R, &id) != 0) return;
    if (tld_store_checkpoint_list(R->store, id, rows, 64, &n, err, sizeof err) != 0) {
        reply_error(r, err);
        return;
    }
    cJSON *o = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(o, "checkpoints");
    for (int i = 0; i < n; i++) {
        cJSON *c = cJSON_CreateObject();
        cJSON_AddNumberToObject(c, "step", (double)rows[i].step);
        cJSON_AddStringToObject(c, "kind", rows[i].kind);
        cJSON_AddNumberToObject(c, "bytes", (double)rows[i].bytes);
        cJSON_AddNumberToObject(c, "time_ms", (double)rows[i].time_ms);
        cJSON_AddItemToArray(arr, c);
    }
    tld_routes_reply_cjson(r, 200, o);
}

/* ---- Server-Sent Events ---- */
typedef struct {
    tld_routes *R;
    int64_t job;
    uint64_t after;
    char *pending;   /* bytes to send, allocated while there are some (an idle stream holds none) */
    size_t plen, pos;
    int finished;    /* the job reached a final state: end after pending is sent */
    double grace;    /* when the job was first seen final with nothing newer (0: not yet): its last
                      * events get SSE_GRACE_S more */
    double last_sent;/* when bytes last went out: a heartbeat after SSE_HEARTBEAT_S of quiet */
} sse_state;

#define SSE_HEARTBEAT_S 15.0
#define SSE_GRACE_S 0.5

static int job_final(tld_routes *R, int64_t id) {
    tld_job j;
    char err[128];
    if (tld_store_job_get(R->store, id, &j, err, sizeof err) != 0) return 1;
    int f = tld_job_state_final(j.state);
    tld_job_free(&j);
    return f;
}

#define SSE_PENDING (64 * 1024) /* bytes a stream gathers at once, at most */

static void sse_append(sse_state *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sse_append(sse_state *s, const char *fmt, ...) {
    if (!s->pending && !(s->pending = malloc(SSE_PENDING))) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(s->pending + s->plen, SSE_PENDING - s->plen, fmt, ap);
    va_end(ap);
    if (n > 0 && (size_t)n < SSE_PENDING - s->plen) s->plen += (size_t)n;
}

static void sse_free(void *state) {
    sse_state *s = state;
    free(s->pending);
    free(s);
}

static long sse_fn(void *state, uint64_t pos, char *buf, size_t max) {
    sse_state *s = state;
    (void)pos;
    if (s->pos == s->plen) {
        s->pos = s->plen = 0;
        if (s->finished) return -1;
        tld_event ev[32];
        int n = 0;
        uint64_t next;
        double now = tl_clock_mono_s();
        /* never waits: with nothing to send the HTTP layer parks the stream until an event is published */
        tld_ev_status st = tld_events_wait(s->R->events, s->after, s->job, ev, 32, &n, &next, 0);
        if (st == TLD_EV_CLOSED) return -1;
        if (st == TLD_EV_GAP) sse_append(s, "event: reset\ndata: {\"id\":%lld}\n\n", (long long)s->job);
        for (int i = 0; i < n && s->plen + 600 < SSE_PENDING; i++) {
            sse_append(s, "id: %llu\nevent: %s\ndata: %s\n\n", (unsigned long long)ev[i].id, ev[i].type, ev[i].data);
            s->after = ev[i].id;
        }
        if (n == 0) s->after = next > s->after ? next : s->after;
        if (n == 0 && s->plen == 0 && now - s->last_sent >= SSE_HEARTBEAT_S) sse_append(s, ": heartbeat\n\n");
        /* The store commits a final state just before its event is published: seeing the state final with
         * nothing newer on the bus, wait a little (SSE_GRACE_S) so that the final state event is sent too. */
        int soon = 0;
        if (s->job && job_final(s->R, s->job) && tld_events_last_id(s->R->events) <= s->after) {
            if (s->grace == 0.0) s->grace = now;
            if (now - s->grace >= SSE_GRACE_S) s->finished = 1;
            else soon = 1;
        }
        if (s->plen == 0) {
            free(s->pending); /* about to be parked: an idle stream keeps no buffer, an active one reuses it */
            s->pending = NULL;
            return s->finished ? -1 : soon ? TLD_STREAM_SOON : 0;
        }
        s->last_sent = now;
    }
    size_t k = s->plen - s->pos < max ? s->plen - s->pos : max;
    memcpy(buf, s->pending + s->pos, k);
    s->pos += k;
    return (long)k;
}

void tld_h_job_events(tld_req *r, void *u) {
    tld_routes *R = u;
    int64_t id;
    tld_job j;
    if (load_job(r, R, &id, &j) != 0) return;
    sse_state *s = calloc(1, sizeof *s);
    if (!s) {
        tld_job_free(&j);
        tld_reply_problem(r, 500, "INTERNAL", NULL, "out of memory");
        return;
    }
    s->R = R;
    s->job = id;
    const char *last = tld_req_header(r, "Last-Event-ID");
    int64_t after;
    if (last && tld_routes_parse_i64(last, 0, INT64_MAX, &after) == 0) {
        s->after = (uint64_t)after;
    } else { /* a fresh subscriber starts with the job's current state */
        s->after = tld_events_last_id(R->events);
        cJSON *o = job_json(R, &j);
        char *txt = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        /* the verbatim spec may span lines; an SSE data field may not. Outside strings a newline is
         * insignificant JSON whitespace, and inside strings valid JSON has none, so a space is safe. */
        for (char *c = txt; c && *c; c++)
            if (*c == '\n' || *c == '\r') *c = ' ';
        if (txt && strlen(txt) + 64 < SSE_PENDING)
            sse_append(s, "id: %llu\nevent: snapshot\ndata: %s\n\n", (unsigned long long)s->after, txt);
        free(txt);
    }
    s->finished = 0;
    s->last_sent = tl_clock_mono_s();
    /* a finished job's stream ends after what is left on the bus */
    s->grace = tld_job_state_final(j.state) ? s->last_sent - SSE_GRACE_S : 0.0;
    tld_job_free(&j);
    tld_reply_header(r, "X-Accel-Buffering", "no");
    tld_reply_stream_key(r, (uint64_t)id); /* woken by this job's events only */
    tld_reply_stream(r, 200, "text/event-stream", sse_fn, s, sse_free);
}

/* Every job's events (the dashboard's job list); never ends by itself. */
void tld_h_events_all(tld_req *r, void *u) {
    tld_routes *R = u;
    sse_state *s = calloc(1, sizeof *s);
    if (!s) {
        tld_reply_problem(r, 500, "INTERNAL", NULL, "out of memory");
        return;
    }
    s->R = R;
    s->job = 0;
    const char *last = tld_req_header(r, "Last-Event-ID");
    int64_t after;
    s->after = last && tld_routes_parse_i64(last, 0, INT64_MAX, &after) == 0 ? (uint64_t)after : tld_events_last_id(R->events);
    s->last_sent = tl_clock_mono_s();
    tld_reply_header(r, "X-Accel-Buffering", "no");
    tld_reply_stream(r, 200, "text/event-stream", sse_fn, s, sse_free);
}

/* ---- daemon ---- */
void tld_h_info(tld_req *r, void *u) {
    tld_routes *R = u;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "version", TL_VERSION);
    cJSON_AddStringToObject(o, "blas", tl_blas_corename());
    cJSON_AddStringToObject(o, "blas_config", tl_blas_config());
    cJSON_AddStringToObject(o, "cpu_features", tl_cpu_features());
    cJSON_AddStringToObject(o, "isa", tl_isa_name());
    cJSON *l = cJSON_AddObjectToObject(o, "limits");
    cJSON_AddNumberToObject(l, "max_body_bytes", (double)R->max_body);
    cJSON_AddNumberToObject(l, "max_running_jobs", R->max_running);
    cJSON_AddNumberToObject(l, "threads_per_job", R->threads_per_job);
    cJSON_AddNumberToObject(l, "list_limit", LIST_MAX);
    cJSON_AddNumberToObject(l, "max_points", POINTS_MAX);
    cJSON_AddNumberToObject(l, "max_log_bytes", LOG_MAX);
    tld_routes_reply_cjson(r, 200, o);
}

/* Always 200 while the daemon answers; "disk" tells whether a full disk holds jobs back (tld_jobs_disk). */
void tld_h_healthz(tld_req *r, void *u) {
    tld_routes *R = u;
    tld_jobs_disk_info d;
    tld_jobs_disk(R->jobs, &d);
    char body[256];
    snprintf(body, sizeof body,
             "{\"status\":\"ok\",\"disk\":{\"full\":%s,\"state_free_bytes\":%lld,\"jobs_waiting_for_space\":%d}}",
             d.full ? "true" : "false", (long long)d.state_free_bytes, d.jobs_waiting);
    tld_reply_json(r, 200, body);
}

void tld_h_readyz(tld_req *r, void *u) {
    tld_routes *R = u;
    int64_t counts[TLD_JOB_NSTATES];
    if (tld_store_job_counts(R->store, counts) != 0) {
        tld_reply_problem(r, 503, "NOT_READY", NULL, "the store does not answer");
        return;
    }
    tld_reply_json(r, 200, "{\"status\":\"ready\"}");
}

typedef struct {
    char *buf;
    size_t len, cap;
} textbuf;

static void tb_printf(textbuf *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tb_printf(textbuf *t, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->buf ? t->buf + t->len : NULL, t->buf ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) return;
        if (t->buf && (size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = (t->cap ? t->cap * 2 : 4096) + (size_t)n;
        char *b = realloc(t->buf, cap);
        if (!b) return;
        t->buf = b;
        t->cap = cap;
    }
}

static void timing_lines(const char *method, const char *route, const tld_hist *h, void *u) {
    textbuf *t = u;
    char labels[256], buf[4096];
    size_t len = 0;
    snprintf(labels, sizeof labels, "method=\"%s\",route=\"%s\"", method, route);
    tld_hist_format(buf, sizeof buf, &len, "tokenlab_http_request_duration_seconds", labels, h);
    tb_printf(t, "%s", buf);
}

static void refusal_line(const char *code, uint64_t n, void *u) {
    tb_printf(u, "tokenlab_http_refused_total{code=\"%s\"} %llu\n", code, (unsigned long long)n);
}

static void counter_line(const char *method, const char *route, int status, uint64_t n, void *u) {
    tb_printf(u, "tokenlab_http_requests_total{method=\"%s\",route=\"%s\",status=\"%d\"} %llu\n", method, route,
              status, (unsigned long long)n);
}

void tld_h_prometheus(tld_req *r, void *u) {
    tld_routes *R = u;
    textbuf t = {0};
    tb_printf(&t, "# HELP tokenlab_http_requests_total HTTP requests by route and status.\n"
                  "# TYPE tokenlab_http_requests_total counter\n");
    tld_http_counters(R->http, counter_line, &t);
    tb_printf(&t, "# HELP tokenlab_http_request_duration_seconds Time from a request's arrival to its reply, by "
                  "route.\n# TYPE tokenlab_http_request_duration_seconds histogram\n");
    tld_http_timings(R->http, timing_lines, &t);
    tb_printf(&t, "# HELP tokenlab_http_refused_total Requests answered with a problem, by its code.\n"
                  "# TYPE tokenlab_http_refused_total counter\n");
    tld_http_refusals(R->http, refusal_line, &t);
    {
        tld_hist steps;
        char buf[4096];
        size_t len = 0;
        tld_jobs_step_times(R->jobs, &steps);
        tld_hist_format(buf, sizeof buf, &len, "tokenlab_training_step_seconds", "", &steps);
        tb_printf(&t, "# HELP tokenlab_training_step_seconds Wall time of a training step, every job.\n"
                      "# TYPE tokenlab_training_step_seconds histogram\n%s", buf);
    }
    int64_t counts[TLD_JOB_NSTATES] = {0};
    tld_store_job_counts(R->store, counts);
    tb_printf(&t, "# HELP tokenlab_jobs Jobs by state.\n# TYPE tokenlab_jobs gauge\n");
    for (int s = 0; s < TLD_JOB_NSTATES; s++)
        tb_printf(&t, "tokenlab_jobs{state=\"%s\"} %lld\n", tld_job_state_name((tld_job_state)s), (long long)counts[s]);
    tb_printf(&t, "# HELP tokenlab_queue_depth Jobs waiting to train.\n# TYPE tokenlab_queue_depth gauge\n"
                  "tokenlab_queue_depth %lld\n", (long long)counts[TLD_JOB_QUEUED]);
    tb_printf(&t, "# HELP tokenlab_training_images_per_second Training throughput of the running jobs.\n"
                  "# TYPE tokenlab_training_images_per_second gauge\ntokenlab_training_images_per_second %.3f\n",
              tld_jobs_images_per_second(R->jobs));
    tld_jobs_disk_info disk;
    tld_jobs_disk(R->jobs, &disk);
    tb_printf(&t, "# HELP tokenlab_disk_full_events_total Writes that found the disk full: job attempts ended with "
                  "DISK_FULL, and runs of store writes refused with SQLITE_FULL.\n"
                  "# TYPE tokenlab_disk_full_events_total counter\n"
                  "tokenlab_disk_full_events_total{where=\"job\"} %llu\ntokenlab_disk_full_events_total{where=\"store\"} %llu\n"
                  "# HELP tokenlab_jobs_waiting_for_space Jobs paused until there is room on the disk.\n"
                  "# TYPE tokenlab_jobs_waiting_for_space gauge\ntokenlab_jobs_waiting_for_space %d\n"
                  "# HELP tokenlab_state_free_bytes Free space of the state folder's file system.\n"
                  "# TYPE tokenlab_state_free_bytes gauge\ntokenlab_state_free_bytes %lld\n",
              disk.job_events, disk.store_events, disk.jobs_waiting, (long long)disk.state_free_bytes);
    tb_printf(&t, "# HELP tokenlabd_invariant_failures_total Broken invariants (TL_NEVER / TL_ALWAYS) logged and "
                  "refused since the daemon started.\n# TYPE tokenlabd_invariant_failures_total counter\n"
                  "tokenlabd_invariant_failures_total %llu\n",
              (unsigned long long)tl_invariant_failures());
    char *mp = R->models ? tld_models_prometheus(R->models) : NULL;
    if (mp) tb_printf(&t, "%s", mp);
    free(mp);
    tld_reply_bytes(r, 200, "text/plain; version=0.0.4", t.buf ? t.buf : "", t.len);
    free(t.buf);
}

void tld_h_openapi(tld_req *r, void *u) {
    tld_routes *R = u;
    if (!R->openapi) {
        tld_reply_problem(r, 500, "INTERNAL", NULL, "the OpenAPI document was not found at start-up");
        return;
    }
    tld_reply_json(r, 200, R->openapi);
}
