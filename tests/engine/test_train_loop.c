/*
 * test_train_loop.c: the training loop on the built-in synthetic data.
 *  - a run stopped after step 5 (mid-epoch) and resumed from its checkpoint
 *    gives the same losses, bit for bit, and the same final weights (raw and
 *    EMA) as the uninterrupted run;
 *  - evaluation reports and checkpoints appear; best.safetensors loads;
 *  - a diverging loss stops the job with NAN_LOSS;
 *  - a corrupt image is skipped, counted, and training still succeeds.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tokenlab/jobspec.h"
#include "tokenlab/safetensors.h"
#include "tokenlab/synth.h"
#include "tokenlab/train.h"

#define MAXSTEPS 64

typedef struct {
    double loss[MAXSTEPS + 1];
    int64_t skipped;
    int64_t stop_after;
    int evals, checkpoints, starts;
    int64_t start_step;
    int epoch_lines;         /* job-log lines "epoch E/N: ..." */
    char last_epoch_line[1024];
} recorder;

static void on_start(int64_t start, int64_t total, void *u) {
    recorder *r = u;
    r->starts++;
    r->start_step = start;
    (void)total;
}
static void on_step(const tl_step_report *s, void *u) {
    recorder *r = u;
    if (s->step <= MAXSTEPS) r->loss[s->step] = s->loss;
    r->skipped = s->skipped_images;
}
static void on_eval(const tl_eval_report *e, void *u) {
    recorder *r = u;
    r->evals++;
    assert_true(e->top1 >= 0.0 && e->top1 <= 1.0);
    assert_true(e->top5 >= e->top1);
    assert_int_equal(e->images, 16);
}
static void on_ckpt(const char *path, int64_t step, int best, void *u) {
    recorder *r = u;
    r->checkpoints++;
    assert_int_equal(access(path, F_OK), 0);
    (void)step, (void)best;
}
static void on_log(const char *msg, void *u) {
    recorder *r = u;
    if (strncmp(msg, "epoch ", 6) == 0 && strstr(msg, ": step ")) {
        r->epoch_lines++;
        snprintf(r->last_epoch_line, sizeof r->last_epoch_line, "%s", msg);
    }
}
static int should_stop(void *u) {
    recorder *r = u;
    return r->stop_after > 0 && r->loss[r->stop_after] != 0.0;
}

static char g_root[1024];

static int setup(void **state) {
    (void)state;
    const char *tmp = getenv("TL_TEST_TMP");
    snprintf(g_root, sizeof g_root, "%s/train_loop_%d", tmp ? tmp : "/tmp", (int)getpid());
    mkdir(g_root, 0755);
    char data[1100], err[TL_ERR_LEN];
    snprintf(data, sizeof data, "%s/synth", g_root);
    tl_synth_cfg c;
    tl_synth_defaults(&c);
    c.classes = 4;
    c.train = 64;
    c.val = 16;
    c.size = 32;
    c.map_size = 8;
    c.seed = 3;
    if (tl_synth_write(data, &c, err, sizeof err) != 0) {
        fprintf(stderr, "synth: %s\n", err);
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
    return system(cmd) == 0 ? 0 : -1;
}

static void make_spec(tl_train_spec *spec, const char *extra_train, int label_maps) {
    char json[4096];
    snprintf(json, sizeof json,
             "{\"kind\":\"train\",\"name\":\"loop\",\"model\":{\"img_size\":32,\"patch_size\":8,\"embed_dim\":32,"
             "\"depth\":2,\"num_heads\":2,\"mlp_ratio\":2,\"stem_channels\":8,\"skip_lam\":1,\"num_classes\":4,"
             "\"drop_path_rate\":0.1},\"data\":{\"train\":\"%s/synth/train\",\"val\":\"%s/synth/val\"%s%s%s},"
             "\"train\":{\"batch_size\":16,\"ema_decay\":0.9,"
             "\"threads\":2,\"loader_threads\":2,\"cache_mb\":16,\"eval_every_epochs\":1,"
             "\"checkpoint_every_epochs\":1%s}}",
             g_root, g_root, label_maps ? ",\"label_maps\":\"" : "", label_maps ? g_root : "",
             label_maps ? "/synth/train.tllm\"" : "", extra_train ? extra_train : "");
    tl_spec_error e;
    if (tl_jobspec_parse(json, NULL, spec, &e) != 0) fail_msg("spec refused: %s: %s", e.pointer, e.message);
}

static tl_train_status run(const tl_train_spec *spec, const char *dir, recorder *r, tl_train_result *res) {
    tl_train_hooks h = {.on_start = on_start, .on_step = on_step, .on_eval = on_eval, .on_checkpoint = on_ckpt,
                        .on_log = on_log, .should_stop = should_stop, .user = r};
    return tl_train_run(spec, dir, &h, res);
}

static void assert_same_checkpoints(const char *a, const char *b) {
    char err[TL_ERR_LEN];
    tl_st_file *fa = tl_st_open(a, err, sizeof err), *fb = tl_st_open(b, err, sizeof err);
    assert_non_null(fa);
    assert_non_null(fb);
    assert_int_equal(tl_st_count(fa), tl_st_count(fb));
    int ema = 0;
    for (int i = 0; i < tl_st_count(fa); i++) {
        const tl_st_tensor *ta = tl_st_at(fa, i), *tb = tl_st_get(fb, ta->name);
        assert_non_null(tb);
        assert_int_equal(ta->nbytes, tb->nbytes);
        if (memcmp(ta->data, tb->data, ta->nbytes) != 0) fail_msg("tensor %s differs", ta->name);
        ema += strncmp(ta->name, "ema.", 4) == 0;
    }
    assert_true(ema > 0);
    tl_st_close(fa);
    tl_st_close(fb);
}

static void test_exact_resume(void **state) {
    (void)state;
    static tl_train_spec spec;
    make_spec(&spec, ",\"epochs\":3,\"lr\":0.002,\"warmup_epochs\":1", 1);
    char da[1200], db[1200], pa[1300], pb[1300];
    snprintf(da, sizeof da, "%s/run_a", g_root);
    snprintf(db, sizeof db, "%s/run_b", g_root);
    recorder ra = {0}, rb = {0};
    tl_train_result res;
    assert_int_equal(run(&spec, da, &ra, &res), TL_TRAIN_SUCCEEDED);
    assert_int_equal(res.step, 12);
    assert_int_equal(ra.evals, 6);            /* 3 epochs x (raw + EMA) */
    assert_int_equal(ra.epoch_lines, 3);      /* the job log: a line per epoch, with its evaluation */
    if (!strstr(ra.last_epoch_line, "epoch 3/3: step 12, loss ") || !strstr(ra.last_epoch_line, "EMA top-1 ") ||
        !strstr(ra.last_epoch_line, "checkpoint written"))
        fail_msg("last epoch line: %s", ra.last_epoch_line);
    assert_true(res.best_top1 >= 0.0);
    rb.stop_after = 5;
    assert_int_equal(run(&spec, db, &rb, &res), TL_TRAIN_STOPPED);
    assert_int_equal(res.step, 5);
    rb.stop_after = 0;
    assert_int_equal(run(&spec, db, &rb, &res), TL_TRAIN_SUCCEEDED);
    assert_int_equal(rb.start_step, 5);
    for (int s = 1; s <= 12; s++)
        if (ra.loss[s] != rb.loss[s]) fail_msg("step %d: loss %.17g uninterrupted, %.17g resumed", s, ra.loss[s], rb.loss[s]);
    snprintf(pa, sizeof pa, "%s/last.safetensors", da);
    snprintf(pb, sizeof pb, "%s/last.safetensors", db);
    assert_same_checkpoints(pa, pb);
    /* the loss went down over 3 epochs */
    assert_true(ra.loss[12] < ra.loss[1]);
    /* best.safetensors holds weights that load */
    snprintf(pa, sizeof pa, "%s/best.safetensors", da);
    char err[TL_ERR_LEN];
    tl_config c;
    assert_int_equal(tl_checkpoint_config(pa, &c, err, sizeof err), 0);
    tl_model *m = tl_model_new(&c, 0, err, sizeof err);
    assert_non_null(m);
    assert_int_equal(tl_checkpoint_load(m, NULL, pa, TL_CKPT_FROM_EMA, NULL, err, sizeof err), 0);
    tl_model_free(m);
}

static void test_plain_training_with_mixup(void **state) {
    (void)state;
    static tl_train_spec spec;
    make_spec(&spec, ",\"epochs\":1,\"warmup_epochs\":0,\"mix\":\"both\",\"mixtoken\":false", 0);
    char d[1200];
    snprintf(d, sizeof d, "%s/run_plain", g_root);
    recorder r = {0};
    tl_train_result res;
    assert_int_equal(run(&spec, d, &r, &res), TL_TRAIN_SUCCEEDED);
    assert_int_equal(res.step, 4);
}

static void test_nan_loss_stops(void **state) {
    (void)state;
    static tl_train_spec spec;
    make_spec(&spec, ",\"epochs\":2,\"lr\":1e30,\"warmup_epochs\":0", 1);
    char d[1200];
    snprintf(d, sizeof d, "%s/run_nan", g_root);
    recorder r = {0};
    tl_train_result res;
    assert_int_equal(run(&spec, d, &r, &res), TL_TRAIN_FAILED);
    assert_string_equal(res.reason, "NAN_LOSS");
    assert_non_null(strstr(res.message, "step"));
}

static void test_corrupt_image_skipped(void **state) {
    (void)state;
    char cls[1200], bad[1600], dirent_name[256] = "";
    snprintf(cls, sizeof cls, "%s/synth/train", g_root);
    /* the first class folder */
    FILE *p;
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "ls '%s' | grep -v tsv | head -1", cls);
    p = popen(cmd, "r");
    assert_non_null(p);
    assert_non_null(fgets(dirent_name, sizeof dirent_name, p));
    pclose(p);
    dirent_name[strcspn(dirent_name, "\n")] = 0;
    snprintf(bad, sizeof bad, "%s/%s/zz_corrupt.jpg", cls, dirent_name);
    FILE *f = fopen(bad, "wb");
    assert_non_null(f);
    fputs("\xff\xd8\xff\xe0 this is not really a jpeg", f);
    fclose(f);
    static tl_train_spec spec;
    make_spec(&spec, ",\"epochs\":2,\"warmup_epochs\":1", 1);
    char d[1200];
    snprintf(d, sizeof d, "%s/run_corrupt", g_root);
    recorder r = {0};
    tl_train_result res;
    tl_train_status st = run(&spec, d, &r, &res);
    unlink(bad);
    assert_int_equal(st, TL_TRAIN_SUCCEEDED);
    assert_true(res.skipped_images >= 1);
    assert_true(r.skipped >= 1); /* reported with the steps, so it reaches the job's metrics */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_resume),
        cmocka_unit_test(test_plain_training_with_mixup),
        cmocka_unit_test(test_nan_loss_stops),
        cmocka_unit_test(test_corrupt_image_skipped),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
