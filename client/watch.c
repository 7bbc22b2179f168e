/*
 * watch.c: follows a job's event stream (GET /api/v1/jobs/{id}/events) and
 * draws its progress (see watch.h).
 *
 * On a terminal one status line is redrawn in place (at most 10 times a
 * second) and evaluations and state changes are printed above it; otherwise
 * one line per update at most every interval. The stream's events drive the
 * display; when the stream ends the job is fetched once (GET) for the final
 * summary. A stream that ends before the job does (daemon restart, broken
 * connection) is resumed with Last-Event-ID, retrying for up to a minute.
 */
#include "watch.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "api.h"
#include "clock.h"
#include "out.h"
#include "sse.h"

#define RECONNECT_S 60.0

typedef struct {
    cli *c;
    const watch_opts *o;
    int64_t id;
    char name[128], state[16], reason[40], message[400];
    int epoch, epochs, have_progress;
    long long step, total, shown_step;
    double eta, loss, lr, ips, top1, ema_top1;
    int done, deleted, tty, bar_shown, bar_used, events, reconnecting;
    double last_draw, last_eval_line;
    long long eval_step_shown;
    sse_parser sse;
} wstate;

int watch_exit_for_state(const char *state) {
    if (strcmp(state, "FAILED") == 0) return EX_FAILED;
    if (strcmp(state, "CANCELLED") == 0) return EX_CANCELLED;
    return EX_OK;
}

int watch_state_final(const char *s) {
    return strcmp(s, "SUCCEEDED") == 0 || strcmp(s, "FAILED") == 0 || strcmp(s, "CANCELLED") == 0;
}

static int term_cols(void) {
    struct winsize ws;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 20) return ws.ws_col;
    return 80;
}

static void clear_bar(wstate *w) {
    if (w->bar_shown) {
        fputs("\r\033[K", stdout);
        w->bar_shown = 0;
    }
}

/* The numbers of the status line, without the bar. */
static void status_text(const wstate *w, char *buf, size_t len) {
    char ep[32] = "", eta[32], loss[32], lr[32];
    if (w->epochs > 0) snprintf(ep, sizeof ep, "epoch %d/%d", w->epoch + 1, w->epochs);
    else snprintf(ep, sizeof ep, "epoch %d", w->epoch + 1);
    out_duration(w->eta, eta, sizeof eta);
    out_metric(w->loss, loss, sizeof loss);
    snprintf(lr, sizeof lr, isnan(w->lr) ? "nan" : "%.2e", w->lr);
    double pct = w->total > 0 ? 100.0 * (double)w->step / (double)w->total : 0;
    int n = snprintf(buf, len, "%s  step %lld/%lld (%.0f%%)  loss %s  lr %s  %.1f img/s  ETA %s", ep, w->step,
                     w->total, pct, loss, lr, w->ips, eta);
    if (n > 0 && (size_t)n < len && !isnan(w->top1))
        n += snprintf(buf + n, len - (size_t)n, "  top1 %.1f%%", 100 * w->top1);
    if (n > 0 && (size_t)n < len && !isnan(w->ema_top1))
        snprintf(buf + n, len - (size_t)n, " (EMA %.1f%%)", 100 * w->ema_top1);
}

/* The terminal's status line: the most useful parts that fit the width, in a fixed order, and a bar
 * in the room that is left. */
static void draw_bar(wstate *w) {
    enum { NSEG = 10 };
    char seg[NSEG][48];
    static const int prio[NSEG] = {0, 0, 1, 2, 7, 3, 5, 6, 4, 8}; /* lower: kept first */
    double pct = w->total > 0 ? 100.0 * (double)w->step / (double)w->total : 0;
    char eta[24], loss[24];
    out_duration(w->eta, eta, sizeof eta);
    out_metric(w->loss, loss, sizeof loss);
    snprintf(seg[0], sizeof seg[0], "job %lld", (long long)w->id);
    snprintf(seg[1], sizeof seg[1], "%s", strcmp(w->state, "RUNNING") ? w->state : "");
    snprintf(seg[2], sizeof seg[2], "%.0f%%", pct);
    if (w->epochs > 0) snprintf(seg[3], sizeof seg[3], "ep %d/%d", w->epoch + 1, w->epochs);
    else snprintf(seg[3], sizeof seg[3], "ep %d", w->epoch + 1);
    snprintf(seg[4], sizeof seg[4], "step %lld/%lld", w->step, w->total);
    snprintf(seg[5], sizeof seg[5], "loss %s", loss);
    snprintf(seg[6], sizeof seg[6], isnan(w->lr) ? "lr nan" : "lr %.1e", w->lr);
    snprintf(seg[7], sizeof seg[7], "%.0f img/s", w->ips);
    snprintf(seg[8], sizeof seg[8], "ETA %s", eta);
    if (!isnan(w->ema_top1)) snprintf(seg[9], sizeof seg[9], "top1 %.1f%%", 100 * w->ema_top1);
    else if (!isnan(w->top1)) snprintf(seg[9], sizeof seg[9], "top1 %.1f%%", 100 * w->top1);
    else seg[9][0] = 0;
    int cols = term_cols() - 1, used = 0, keep[NSEG] = {0};
    for (int p = 0; p <= 8; p++) {
        if (p == 5) used += 12; /* room for a bar of 8 before the less useful parts */
        for (int i = 0; i < NSEG; i++)
            if (prio[i] == p && seg[i][0] && used + (int)strlen(seg[i]) + 2 <= cols) {
                keep[i] = 1;
                used += (int)strlen(seg[i]) + 2;
            }
    }
    if (used > w->bar_used) w->bar_used = used; /* the bar only shrinks: no jitter as numbers change */
    int barw = cols - w->bar_used + 12 - 4;
    if (barw > 30) barw = 30;
    char line[600];
    size_t n = 0;
    for (int i = 0; i < NSEG; i++) {
        if (i == 2 && barw >= 8) { /* the bar goes before the percentage */
            int fill = w->total > 0 ? (int)((double)barw * (double)w->step / (double)w->total) : 0;
            if (fill > barw) fill = barw;
            line[n++] = '[';
            for (int k = 0; k < barw; k++) line[n++] = k < fill ? '#' : '-';
            line[n++] = ']';
            line[n++] = ' ';
        }
        if (!keep[i]) continue;
        n += (size_t)snprintf(line + n, sizeof line - n, "%s  ", seg[i]);
        if (n >= sizeof line) n = sizeof line - 1;
    }
    while (n > 0 && line[n - 1] == ' ') n--;
    line[n] = 0;
    if ((int)n > cols && cols > 0) line[cols] = 0;
    fputs("\r\033[K", stdout);
    fputs(line, stdout);
    fflush(stdout);
    w->bar_shown = 1;
}

/* A line that stays (evaluations, state changes). */
static void say(wstate *w, const char *line) {
    if (w->o->quiet || w->c->json) return;
    clear_bar(w);
    char safe[600];
    out_sanitize(line, safe, sizeof safe);
    printf("%s\n", safe);
    if (w->tty && w->have_progress && !w->done) draw_bar(w);
    fflush(stdout);
}

static void show_progress(wstate *w, int force) {
    if (w->o->quiet || w->c->json || !w->have_progress) return;
    double now = clock_mono_s();
    if (w->tty) {
        if (force || now - w->last_draw >= 0.1) {
            draw_bar(w);
            w->last_draw = now;
        }
        return;
    }
    if (force || w->shown_step < 0 || now - w->last_draw >= w->o->interval_s) {
        char text[256];
        status_text(w, text, sizeof text);
        printf("job %lld %s  %s\n", (long long)w->id, w->state, text);
        fflush(stdout);
        w->last_draw = now;
        w->shown_step = w->step;
    }
}

static void take_job(wstate *w, const cJSON *j) {
    snprintf(w->name, sizeof w->name, "%s", out_jstr(j, "name", ""));
    snprintf(w->state, sizeof w->state, "%s", out_jstr(j, "state", "?"));
    snprintf(w->reason, sizeof w->reason, "%s", out_jstr(j, "state_reason", ""));
    snprintf(w->message, sizeof w->message, "%s", out_jstr(j, "state_message", ""));
    w->epochs = (int)out_jnum(j, "spec.train.epochs", 0);
    w->epoch = (int)out_jnum(j, "progress.epoch", 0);
    w->step = (long long)out_jnum(j, "progress.step", 0);
    w->total = (long long)out_jnum(j, "progress.total_steps", 0);
    w->eta = out_jnum(j, "eta_seconds", -1);
    w->loss = out_jnum(j, "latest_metrics.loss", NAN);
    w->lr = out_jnum(j, "latest_metrics.lr", NAN);
    w->ips = out_jnum(j, "latest_metrics.img_per_s", 0);
    w->top1 = out_jnum(j, "latest_metrics.top1", NAN);
    w->ema_top1 = out_jnum(j, "latest_metrics.ema_top1", NAN);
    if (w->step > 0) w->have_progress = 1;
}

static void state_line(wstate *w) {
    char line[600];
    snprintf(line, sizeof line, "job %lld %s%s%s%s%s", (long long)w->id, w->state, w->reason[0] ? " (" : "", w->reason,
             w->reason[0] ? ")" : "", "");
    if (w->message[0]) snprintf(line + strlen(line), sizeof line - strlen(line), ": %s", w->message);
    say(w, line);
}

static void on_eval(wstate *w, const cJSON *d) {
    int ema = strcmp(out_jstr(d, "weights", "raw"), "ema") == 0;
    const char *p = ema ? "ema_" : "";
    char k1[32], k5[32], kl[32], loss[32], line[256];
    snprintf(k1, sizeof k1, "metrics.%stop1", p);
    snprintf(k5, sizeof k5, "metrics.%stop5", p);
    snprintf(kl, sizeof kl, "metrics.%sval_loss", p);
    if (ema) w->ema_top1 = out_jnum(d, k1, NAN);
    else w->top1 = out_jnum(d, k1, NAN);
    /* evaluations are part of the status line; a line of their own at most once per interval */
    double now = clock_mono_s();
    long long step = (long long)out_jnum(d, "step", 0);
    if (step != w->eval_step_shown && w->last_eval_line > 0 && now - w->last_eval_line < w->o->interval_s) return;
    w->last_eval_line = now;
    w->eval_step_shown = step;
    out_metric(out_jnum(d, kl, NAN), loss, sizeof loss);
    snprintf(line, sizeof line, "job %lld eval at step %lld (epoch %d, %s weights): top1 %.1f%%  top5 %.1f%%  val_loss %s",
             (long long)w->id, step, (int)out_jnum(d, "epoch", 0) + 1, ema ? "EMA" : "raw",
             100.0 * out_jnum(d, k1, NAN), 100.0 * out_jnum(d, k5, NAN), loss);
    say(w, line);
}

static int on_event(const char *type, const char *id, const char *data, void *u) {
    wstate *w = u;
    w->events++;
    char *clean = NULL;
    if (!out_utf8_valid(data)) { /* JSON output must be UTF-8: mend the data first */
        size_t n = strlen(data) + 1;
        clean = malloc(n);
        if (!clean) return 0;
        out_sanitize(data, clean, n);
        data = clean;
    } else if (strpbrk(data, "\r\n")) { /* data of several lines: outside JSON strings a line break is
                                          * whitespace, and valid JSON strings hold none, so a space keeps
                                          * the meaning and the event on one output line */
        clean = strdup(data);
        if (!clean) return 0;
        for (char *p = clean; *p; p++)
            if (*p == '\r' || *p == '\n') *p = ' ';
        data = clean;
    }
    cJSON *d = cJSON_ParseWithOpts(data, NULL, 1); /* the whole data, nothing after it */
    if (w->c->json && !w->o->quiet) {
        char *enc = NULL;
        if (!d) { /* not JSON: pass it on as a string */
            cJSON *s = cJSON_CreateString(data);
            enc = cJSON_PrintUnformatted(s);
            cJSON_Delete(s);
        }
        char tclean[80];
        out_sanitize(type, tclean, sizeof tclean);
        cJSON *t = cJSON_CreateString(tclean);
        char *te = cJSON_PrintUnformatted(t);
        cJSON_Delete(t);
        char *endp;
        long long nid = strtoll(id, &endp, 10);
        if (*id && !*endp) printf("{\"event\":%s,\"id\":%lld,\"data\":%s}\n", te ? te : "\"?\"", nid, d ? data : enc);
        else printf("{\"event\":%s,\"id\":null,\"data\":%s}\n", te ? te : "\"?\"", d ? data : (enc ? enc : "null"));
        fflush(stdout);
        free(te);
        free(enc);
    }
    free(clean); /* d does not point into it */
    data = NULL;
    if (!d) return 0;
    if (strcmp(type, "snapshot") == 0) {
        take_job(w, d);
        if (watch_state_final(w->state)) w->done = 1;
        if (!w->c->json && !w->o->quiet) {
            char name[160];
            out_sanitize(w->name, name, sizeof name);
            char line[300];
            snprintf(line, sizeof line, "job %lld '%s': %s", (long long)w->id, name, w->state);
            say(w, line);
        }
        if (watch_state_final(w->state)) w->done = 1;
        show_progress(w, 1);
    } else if (strcmp(type, "state") == 0) {
        const char *s = out_jstr(d, "state", "?");
        int changed = strcmp(s, w->state) != 0;
        snprintf(w->state, sizeof w->state, "%s", s);
        snprintf(w->reason, sizeof w->reason, "%s", out_jstr(d, "state_reason", ""));
        snprintf(w->message, sizeof w->message, "%s", out_jstr(d, "state_message", ""));
        if (watch_state_final(w->state)) {
            w->done = 1;
        } else if (changed) {
            state_line(w);
        }
    } else if (strcmp(type, "progress") == 0) {
        w->epoch = (int)out_jnum(d, "epoch", w->epoch);
        w->step = (long long)out_jnum(d, "step", (double)w->step);
        w->total = (long long)out_jnum(d, "total_steps", (double)w->total);
        w->eta = out_jnum(d, "eta_seconds", -1);
        w->loss = out_jnum(d, "metrics.loss", NAN);
        w->lr = out_jnum(d, "metrics.lr", NAN);
        w->ips = out_jnum(d, "metrics.img_per_s", 0);
        w->have_progress = 1;
        if (strcmp(w->state, "QUEUED") == 0 || w->state[0] == '?') snprintf(w->state, sizeof w->state, "RUNNING");
        show_progress(w, 0);
    } else if (strcmp(type, "eval") == 0) {
        on_eval(w, d);
    } else if (strcmp(type, "deleted") == 0) {
        w->deleted = w->done = 1;
    }
    cJSON_Delete(d);
    return w->done; /* the stream has nothing more to say once the job is final */
}

static int feed(const char *data, size_t n, void *u) {
    wstate *w = u;
    if (w->reconnecting) {
        clear_bar(w);
        fprintf(stderr, "tokenlab %s: reconnected to %s\n", w->c->cmd, w->c->server);
        w->reconnecting = 0;
    }
    return sse_feed(&w->sse, data, n);
}

/* The job by GET /api/v1/jobs/{id}: the parsed Job (the caller deletes it), or NULL when the answer
 * is not one (no connection, another status, not JSON); a 404 sets w->deleted. Nothing is printed. */
static cJSON *fetch_job(wstate *w) {
    char path[64];
    snprintf(path, sizeof path, "/api/v1/jobs/%lld", (long long)w->id);
    api_resp r;
    api_req q = {.path = path, .timeout_s = 30};
    cJSON *j = NULL;
    if (api_do(w->c, &q, &r) == EX_OK) {
        if (r.status == 200) j = cJSON_ParseWithLength(r.body, r.len);
        if (r.status == 404) w->deleted = 1;
    }
    api_free(&r);
    return j;
}

/* Final report from GET /api/v1/jobs/{id} (falls back on what the events said). */
static int finish(wstate *w) {
    cJSON *j = fetch_job(w);
    if (j) take_job(w, j);
    clear_bar(w);
    if (w->deleted) {
        cJSON_Delete(j);
        fprintf(stderr, "tokenlab %s: job %lld was deleted\n", w->c->cmd, (long long)w->id);
        return EX_SERVER;
    }
    if (!w->o->quiet && !w->c->json) {
        if (w->have_progress && !w->tty && w->shown_step != w->step) show_progress(w, 1);
        char line[700], dur[32] = "", extra[160] = "";
        double t0 = out_jnum(j, "started_ms", 0), t1 = out_jnum(j, "ended_ms", 0);
        if (t0 > 0 && t1 >= t0) {
            char d[24];
            out_duration((t1 - t0) / 1000.0, d, sizeof d);
            snprintf(dur, sizeof dur, " in %s", d);
        }
        double top1 = out_jnum(j, "latest_metrics.top1", NAN), etop1 = out_jnum(j, "latest_metrics.ema_top1", NAN);
        if (!isnan(top1)) snprintf(extra, sizeof extra, "; top1 %.1f%%", 100 * top1);
        if (!isnan(etop1)) snprintf(extra + strlen(extra), sizeof extra - strlen(extra), " (EMA %.1f%%)", 100 * etop1);
        snprintf(line, sizeof line, "job %lld %s%s%s%s after %lld/%lld steps%s%s", (long long)w->id, w->state,
                 w->reason[0] ? " (" : "", w->reason, w->reason[0] ? ")" : "", w->step, w->total, dur, extra);
        if (w->message[0] && strcmp(w->state, "SUCCEEDED") != 0)
            snprintf(line + strlen(line), sizeof line - strlen(line), ": %s", w->message);
        char safe[800];
        out_sanitize(line, safe, sizeof safe);
        printf("%s\n", safe);
        fflush(stdout);
    }
    cJSON_Delete(j);
    return watch_exit_for_state(w->state);
}

/* Whether the job is final or gone, by GET (after a stream ended without saying so). */
static void job_ended(wstate *w) {
    cJSON *j = fetch_job(w);
    if (w->deleted || watch_state_final(out_jstr(j, "state", ""))) w->done = 1;
    cJSON_Delete(j);
}

int watch_job(cli *c, int64_t id, const watch_opts *o) {
    wstate w = {.c = c, .o = o, .id = id, .state = "?", .eta = -1, .loss = NAN, .lr = NAN, .top1 = NAN,
                .ema_top1 = NAN, .shown_step = -1};
    w.tty = out_tty(stdout) && !c->json;
    sse_init(&w.sse, on_event, &w);
    char path[96], hdr[128];
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/events", (long long)id);
    double last_ok = clock_mono_s();
    int attempts = 0, warned = 0, rc = EX_OK;
    while (!w.done) {
        api_req q = {.path = path, .timeout_s = -1, .sink = feed, .sink_u = &w};
        if (w.sse.last_id[0]) {
            snprintf(hdr, sizeof hdr, "Last-Event-ID: %s", w.sse.last_id);
            q.header = hdr;
        }
        api_resp r;
        int before = w.events;
        rc = api_do(c, &q, &r);
        attempts++;
        if (rc == EX_INTERRUPTED) {
            clear_bar(&w);
            api_explain_transport(c, &r, rc);
            api_free(&r);
            break;
        }
        if (rc == EX_OK && !r.stopped && (r.status < 200 || r.status >= 300)) {
            clear_bar(&w);
            rc = api_explain_status(c, &r); /* e.g. 404: no such job */
            api_free(&r);
            break;
        }
        if (rc == EX_LOCAL) {
            clear_bar(&w);
            api_explain_transport(c, &r, rc);
            api_free(&r);
            break;
        }
        if (rc == EX_CONNECT && attempts == 1) { /* never connected: say so at once */
            clear_bar(&w);
            api_explain_transport(c, &r, rc);
            api_free(&r);
            break;
        }
        if (rc == EX_OK || w.events > before) last_ok = clock_mono_s();
        api_free(&r);
        if (w.done) break;
        if (rc == EX_OK) job_ended(&w); /* the stream ended early: maybe the job is final and we missed it */
        if (w.done) break;
        if (clock_mono_s() - last_ok > RECONNECT_S) {
            clear_bar(&w);
            fprintf(stderr, "tokenlab %s: lost the connection to %s for more than %.0f s; job %lld was %s\n", c->cmd,
                    c->server, RECONNECT_S, (long long)id, w.state);
            rc = EX_CONNECT;
            break;
        }
        if (rc != EX_OK && !warned && !o->quiet) {
            clear_bar(&w);
            fprintf(stderr, "tokenlab %s: the connection to %s broke; reconnecting...\n", c->cmd, c->server);
            warned = 1;
            w.reconnecting = !o->quiet;
        }
        if (rc == EX_OK) warned = 0;
        clock_nap_s(rc == EX_OK ? 0.2 : 1.0);
        if (api_interrupted) {
            clear_bar(&w);
            fprintf(stderr, "\ntokenlab %s: interrupted\n", c->cmd);
            rc = EX_INTERRUPTED;
            break;
        }
    }
    if (w.done) rc = finish(&w);
    else clear_bar(&w);
    sse_free(&w.sse);
    return rc;
}
