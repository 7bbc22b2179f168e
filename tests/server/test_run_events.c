/*
 * test_run_events.c: the event lines of `tokenlabd run --events`
 * (server/jobs/run_events.c) and the operator's hostfile
 * (server/jobs/hostfile.c).
 *
 * Events: every hook written by the tee and read back by the dispatcher
 * reaches the reader's hook with the same values (doubles exactly, NaN as
 * NaN, the per-rank arrays, the end result); malformed lines (not JSON, no
 * event, an unknown one, missing or mistyped fields, wrong array lengths,
 * too long, binary bytes) are refused with a message and call nothing.
 * Hostfile: the accepted lines, comments and defaults; every malformed form
 * names its line. Single-threaded.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobs/hostfile.h"
#include "jobs/run_events.h"

/* ------------------------------------------------------------------ what the reader's hooks received */

typedef struct {
    int starts, ranks, inits, steps, evals, befores, checkpoints, logs;
    int64_t start, total;
    int size, micro;
    char hosts[4][32];
    tl_step_report step;
    double ips[4];
    int has_ips;
    tl_eval_report eval;
    char path[64];
    int64_t ck_step;
    int best;
    char log[8192];
    int64_t init_step;
    int init_head, init_ema;
    char init_weights[64];
} got;

static void r_start(int64_t s, int64_t t, void *u) {
    got *g = u;
    g->starts++, g->start = s, g->total = t;
}
static void r_ranks(const tl_ranks_info *in, void *u) {
    got *g = u;
    g->ranks++, g->size = in->size, g->micro = in->micro_batches;
    for (int k = 0; k < in->size && k < 4; k++) snprintf(g->hosts[k], sizeof g->hosts[k], "%s", in->hosts[k]);
}
static void r_init(const tl_init_info *in, void *u) {
    got *g = u;
    g->inits++, g->init_step = in->source_step, g->init_head = (int)in->head, g->init_ema = in->from_ema;
    snprintf(g->init_weights, sizeof g->init_weights, "%.60s", in->weights);
}
static void r_step(const tl_step_report *r, void *u) {
    got *g = u;
    g->steps++, g->step = *r;
    g->has_ips = r->rank_img_per_s != NULL;
    for (int k = 0; g->has_ips && k < r->ranks && k < 4; k++) g->ips[k] = r->rank_img_per_s[k];
    g->step.rank_img_per_s = NULL;
}
static void r_eval(const tl_eval_report *r, void *u) {
    got *g = u;
    g->evals++, g->eval = *r;
}
static int r_before(int64_t step, void *u) {
    got *g = u;
    g->befores++, g->ck_step = step;
    return 0;
}
static void r_checkpoint(const char *path, int64_t step, int best, void *u) {
    got *g = u;
    g->checkpoints++, g->ck_step = step, g->best = best;
    snprintf(g->path, sizeof g->path, "%s", path);
}
static void r_log(const char *m, void *u) {
    got *g = u;
    g->logs++;
    snprintf(g->log, sizeof g->log, "%s", m);
}

static tl_train_hooks reader(got *g) {
    return (tl_train_hooks){.on_start = r_start, .on_ranks = r_ranks, .on_init = r_init, .on_step = r_step,
                            .on_eval = r_eval, .before_checkpoint = r_before, .on_checkpoint = r_checkpoint,
                            .on_log = r_log, .user = g};
}

/* Reads every line of the stream text into g; returns the count of lines, and *ended / *st / *res. */
static int read_all(char *text, got *g, int *ended, tl_train_status *st, tl_train_result *res) {
    tl_train_hooks h = reader(g);
    int n = 0;
    char err[300];
    for (char *line = text, *nl; line && *line; line = nl ? nl + 1 : NULL) {
        nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        int rc = tld_run_event_dispatch(line, len, &h, st, res, err, sizeof err);
        if (rc < 0) fail_msg("line %d refused: %s", n + 1, err);
        if (rc == 1) *ended = 1;
        n++;
    }
    return n;
}

static int inner_stop_calls;
static int inner_stop(void *u) {
    (void)u;
    inner_stop_calls++;
    return 1;
}

static void test_round_trip(void **state) {
    (void)state;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    got inner = {0};
    tl_train_hooks in = reader(&inner), h;
    in.should_stop = inner_stop;
    tld_run_events_tee tee;
    tld_run_events_tee_init(&tee, f, &in, &h);

    const char *hosts[] = {"node-a", "node-b"};
    tl_ranks_info ri = {2, 4, hosts};
    h.on_ranks(&ri, h.user);
    h.on_start(3, 12, h.user);
    static tl_init_info ii;
    memset(&ii, 0, sizeof ii);
    snprintf(ii.weights, sizeof ii.weights, "/src/best.safetensors");
    ii.from_ema = 1, ii.source_step = 77, ii.head = TL_HEAD_MATCH, ii.classes_matched = 3;
    h.on_init(&ii, h.user);
    double ips[2] = {123.456789012345678, 0.1 + 0.2};
    tl_step_report r = {.step = 4, .total_steps = 12, .epoch = 1, .epochs = 3, .loss = NAN, .loss_cls = 1.0 / 3.0,
                        .loss_dense = 2.5, .lr = 1e-300, .img_per_s = 250.0, .eta_seconds = 7.5, .data_wait = 0.01,
                        .skipped_images = 2, .ranks = 2, .rank_img_per_s = ips, .comm_seconds = 0.001234};
    h.on_step(&r, h.user);
    tl_eval_report e = {.step = 4, .epoch = 1, .ema = 1, .top1 = 0.75, .top5 = 1.0, .loss = 0.5, .images = 22,
                        .seconds = 0.25};
    h.on_eval(&e, h.user);
    h.before_checkpoint(4, h.user);
    h.on_checkpoint("/run/last.safetensors", 4, 0, h.user);
    char longmsg[6000];
    memset(longmsg, 'q', sizeof longmsg - 1);
    longmsg[sizeof longmsg - 1] = 0;
    h.on_log("a \"quoted\"\nline\twith \\ escapes", h.user);
    h.on_log(longmsg, h.user);
    assert_int_equal(h.should_stop(h.user), 1);
    assert_int_equal(inner_stop_calls, 1);
    tl_train_result res = {.status = TL_TRAIN_STOPPED, .reason = "STOPPED", .message = "stopped after step 4",
                           .step = 4, .skipped_images = 2, .best_top1 = 0.75};
    assert_int_equal(tld_run_events_end(&tee, TL_TRAIN_STOPPED, &res), 0);
    fclose(f);

    /* the inner hooks saw everything (the run folder's metrics file is written through them) */
    assert_int_equal(inner.steps, 1);
    assert_int_equal(inner.logs, 2);
    assert_int_equal((int)strlen(inner.log), (int)sizeof longmsg - 1);

    got g = {0};
    int ended = 0;
    tl_train_status st = TL_TRAIN_FAILED;
    tl_train_result back;
    assert_int_equal(read_all(buf, &g, &ended, &st, &back), 10);
    assert_int_equal(ended, 1);
    assert_int_equal(g.ranks, 1);
    assert_int_equal(g.size, 2);
    assert_int_equal(g.micro, 4);
    assert_string_equal(g.hosts[1], "node-b");
    assert_int_equal(g.start, 3);
    assert_int_equal(g.total, 12);
    assert_int_equal(g.inits, 1);
    assert_int_equal(g.init_step, 77);
    assert_int_equal(g.init_head, TL_HEAD_MATCH);
    assert_int_equal(g.init_ema, 1);
    assert_string_equal(g.init_weights, "/src/best.safetensors");
    assert_int_equal(g.steps, 1);
    assert_true(isnan(g.step.loss));
    assert_true(g.step.loss_cls == 1.0 / 3.0); /* exact round trip */
    assert_true(g.step.lr == 1e-300);
    assert_true(g.step.comm_seconds == 0.001234);
    assert_int_equal(g.step.skipped_images, 2);
    assert_int_equal(g.step.ranks, 2);
    assert_true(g.has_ips);
    assert_true(g.ips[0] == ips[0] && g.ips[1] == ips[1]);
    assert_int_equal(g.evals, 1);
    assert_int_equal(g.eval.ema, 1);
    assert_true(g.eval.top1 == 0.75);
    assert_int_equal(g.eval.images, 22);
    assert_int_equal(g.befores, 1);
    assert_int_equal(g.checkpoints, 1);
    assert_string_equal(g.path, "/run/last.safetensors");
    assert_int_equal(g.best, 0);
    assert_int_equal(g.logs, 2);
    assert_int_equal((int)strlen(g.log), 4095); /* a long message is cut, the event still fits */
    assert_int_equal(st, TL_TRAIN_STOPPED);
    assert_string_equal(back.reason, "STOPPED");
    assert_string_equal(back.message, "stopped after step 4");
    assert_int_equal(back.step, 4);
    assert_true(back.best_top1 == 0.75);
    free(buf);
}

static void test_malformed(void **state) {
    (void)state;
    static const char *const bad[] = {
        "",
        "not json",
        "[1,2]",
        "{}",
        "{\"event\":7}",
        "{\"event\":\"explode\"}",
        "{\"event\":\"start\",\"start\":1}",
        "{\"event\":\"start\",\"start\":-1,\"total\":3}",
        "{\"event\":\"start\",\"start\":1.5,\"total\":3}",
        "{\"event\":\"start\",\"start\":\"1\",\"total\":3}",
        "{\"event\":\"ranks\",\"size\":2,\"micro_batches\":4,\"hosts\":[\"a\"]}",
        "{\"event\":\"ranks\",\"size\":2,\"micro_batches\":4,\"hosts\":[\"a\",3]}",
        "{\"event\":\"ranks\",\"size\":100000,\"micro_batches\":4,\"hosts\":[]}",
        "{\"event\":\"step\",\"step\":1}",
        "{\"event\":\"step\",\"step\":1,\"total_steps\":2,\"epoch\":0,\"epochs\":1,\"loss\":1,\"loss_cls\":1,"
        "\"loss_dense\":1,\"lr\":1,\"img_per_s\":1,\"eta_seconds\":1,\"data_wait\":0,\"skipped_images\":0,\"ranks\":2,"
        "\"rank_img_per_s\":[1,2,3],\"comm_seconds\":0}",
        "{\"event\":\"step\",\"step\":1,\"total_steps\":2,\"epoch\":0,\"epochs\":1,\"loss\":1,\"loss_cls\":1,"
        "\"loss_dense\":1,\"lr\":1,\"img_per_s\":1,\"eta_seconds\":1,\"data_wait\":0,\"skipped_images\":0,\"ranks\":2,"
        "\"rank_img_per_s\":[1,\"x\"],\"comm_seconds\":0}",
        "{\"event\":\"eval\",\"step\":1,\"epoch\":0,\"ema\":1,\"top1\":1,\"top5\":1,\"loss\":1,\"images\":1,\"seconds\":1}",
        "{\"event\":\"checkpoint\",\"path\":null,\"step\":1,\"is_best\":false}",
        "{\"event\":\"log\"}",
        "{\"event\":\"init\",\"weights\":\"w\"}",
        ("{\"event\":\"end\",\"status\":\"MAYBE\",\"reason\":\"\",\"message\":\"\",\"step\":1,\"skipped_images\":0,"
         "\"best_top1\":1}"),
        "{\"event\":\"start\",\"start\":1,\"total\":3",
    };
    got g = {0};
    tl_train_hooks h = reader(&g);
    tl_train_status st;
    tl_train_result res;
    char err[300];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        if (tld_run_event_dispatch(bad[i], strlen(bad[i]), &h, &st, &res, err, sizeof err) != -1)
            fail_msg("accepted: %s", bad[i]);
        if (!err[0]) fail_msg("no message for: %s", bad[i]);
    }
    /* binary bytes and an embedded NUL: refused, never read past len */
    char bin[64];
    for (int i = 0; i < 64; i++) bin[i] = (char)(i * 37 + 1);
    bin[10] = 0;
    assert_int_equal(tld_run_event_dispatch(bin, sizeof bin, &h, &st, &res, err, sizeof err), -1);
    /* a line of TLD_RUN_EVENT_MAX bytes or more is refused before parsing */
    char *big = malloc(TLD_RUN_EVENT_MAX + 10);
    assert_non_null(big);
    memset(big, ' ', TLD_RUN_EVENT_MAX + 10);
    memcpy(big, "{\"event\":\"log\",\"message\":\"", 26);
    assert_int_equal(tld_run_event_dispatch(big, TLD_RUN_EVENT_MAX, &h, &st, &res, err, sizeof err), -1);
    assert_non_null(strstr(err, "longer"));
    free(big);
    assert_int_equal(g.starts + g.ranks + g.steps + g.evals + g.checkpoints + g.logs + g.inits, 0);
    /* a too small buffer: the encoder refuses instead of cutting the line */
    char small[16];
    assert_int_equal(tld_run_event_encode(NULL, small, sizeof small), -1);
}

/* ------------------------------------------------------------------ hostfile */

static void test_hostfile(void **state) {
    (void)state;
    static tld_hostfile hf;
    char err[300];
    const char *good = "# the cluster\n\nnode1 slots=4\n  node2   slots=2  # the small one\r\nnode3\n10.0.0.9 slots=1";
    assert_int_equal(tld_hostfile_parse(good, strlen(good), &hf, err, sizeof err), 0);
    assert_int_equal(hf.n, 4);
    assert_string_equal(hf.host[0], "node1");
    assert_string_equal(hf.host[1], "node2");
    assert_int_equal(hf.slots[1], 2);
    assert_int_equal(hf.slots[2], 1); /* no slots=K: one */
    assert_string_equal(hf.host[3], "10.0.0.9");
    assert_int_equal(hf.total_slots, 8);
    static const struct {
        const char *text, *want;
    } bad[] = {
        {"", "no host"},
        {"# only a comment\n\n", "no host"},
        {"node1 slots=4\nnode1 slots=2\n", "line 2: host node1 is listed twice"},
        {"node1 slots=0\n", "line 1: slots"},
        {"node1 slots=many\n", "line 1: slots"},
        {"node1 slots=\n", "line 1: slots"},
        {"node1 slots=99999999999999999999\n", "line 1: slots"},
        {"node1 max_slots=4\n", "line 1: unexpected"},
        {"node1 slots=1 slots=2\n", "line 1: unexpected"},
        {"\nno$de slots=1\n", "line 2: 'no$de' is not a host name"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        if (tld_hostfile_parse(bad[i].text, strlen(bad[i].text), &hf, err, sizeof err) != -1)
            fail_msg("accepted: %s", bad[i].text);
        if (!strstr(err, bad[i].want)) fail_msg("for '%s': message '%s' lacks '%s'", bad[i].text, err, bad[i].want);
    }
    /* a line too long, a NUL byte, too many hosts, a name too long: refused, never overrun */
    char *big = malloc(300000);
    assert_non_null(big);
    memset(big, 'a', TLD_HOSTFILE_LINE + 5);
    assert_int_equal(tld_hostfile_parse(big, TLD_HOSTFILE_LINE + 5, &hf, err, sizeof err), -1);
    assert_non_null(strstr(err, "longer than"));
    memset(big, 'a', 300);
    assert_int_equal(tld_hostfile_parse(big, 300, &hf, err, sizeof err), -1);
    assert_non_null(strstr(err, "host name longer"));
    assert_int_equal(tld_hostfile_parse("node\0x slots=1", 14, &hf, err, sizeof err), -1);
    assert_non_null(strstr(err, "NUL"));
    size_t o = 0;
    for (int k = 0; k <= TLD_HOSTFILE_HOSTS; k++) o += (size_t)sprintf(big + o, "h%d\n", k);
    assert_int_equal(tld_hostfile_parse(big, o, &hf, err, sizeof err), -1);
    assert_non_null(strstr(err, "more than"));
    free(big);
    assert_int_equal(tld_hostfile_load("/nonexistent/hosts", &hf, err, sizeof err), -1);
    assert_non_null(strstr(err, "/nonexistent/hosts"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_hostfile),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
