/*
 * test_diskfull.c: the engine on a full disk, through the full-disk switch
 * (tokenlab/files.h) driven by a switch file (TL_FAULT_ENOSPC_FILE, set
 * before the first write of the process):
 *  - the choke point: a write stream fails with ENOSPC past the file's byte
 *    budget, the crash-safe commit leaves the old file and no temporary file,
 *    the budget starts again when the file changes, "files" and "store" limit
 *    it, removing the file gives the space back, tl_fs_free_bytes follows it;
 *  - append streams, fseek, tl_file_fd and tl_file_sync on write streams;
 *  - a checkpoint and a label map that hit a full disk fail with errno
 *    ENOSPC and leave the previous file loadable, byte for byte;
 *  - a training run whose checkpoint write (or its before_checkpoint hook)
 *    hits a full disk ends with DISK_FULL, a message naming the path and the
 *    free space, the previous checkpoint intact; with room again it resumes
 *    from that checkpoint and finishes;
 *  - an annotation whose label-map merge hits a full disk ends with
 *    DISK_FULL, the older label map untouched, and finishes once resumed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tokenlab/annotate.h"
#include "tokenlab/files.h"
#include "tokenlab/jobspec.h"
#include "tokenlab/labelmap.h"
#include "tokenlab/model.h"
#include "tokenlab/safetensors.h"
#include "tokenlab/synth.h"
#include "tokenlab/train.h"

static char g_root[1024], g_switch[1100];

/* Sets the switch file's content (a byte budget and an optional scope), or removes it (NULL). */
static void set_switch(const char *content) {
    if (!content) {
        unlink(g_switch);
        return;
    }
    char tmp[1200];
    snprintf(tmp, sizeof tmp, "%s.new", g_switch);
    FILE *f = fopen(tmp, "w"); /* plain stdio: the test's own files are outside the switch */
    assert_non_null(f);
    fputs(content, f);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(rename(tmp, g_switch), 0); /* a new file each time: the budget starts again */
}

static void path_in(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", g_root, name); }

static int64_t size_of(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (int64_t)st.st_size : -1;
}

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* The temporary files (tl_file_is_temp_name, or a part's ".tmp") left in dir. */
static int temps_in(const char *dir) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        n += tl_file_is_temp_name(e->d_name) || (len > 4 && strcmp(e->d_name + len - 4, ".tmp") == 0);
    }
    closedir(d);
    return n;
}

/* Writes n bytes of `byte` to path crash-safely; 0, or -1 with errno. */
static int write_file(const char *path, size_t n, int byte) {
    char tmp[TL_TEMP_NAME_LEN(1200)];
    FILE *f = tl_file_create_temp(path, tmp, sizeof tmp);
    if (!f) return -1;
    char *buf = malloc(n);
    assert_non_null(buf);
    memset(buf, byte, n);
    size_t w = fwrite(buf, 1, n, f);
    free(buf);
    if (w != n) {
        int e = errno;
        tl_file_abandon(f, tmp);
        errno = e;
        return -1;
    }
    return tl_file_commit(f, tmp, path, NULL);
}

static void test_choke_point(void **state) {
    (void)state;
    char path[1200];
    path_in(path, sizeof path, "plain.bin");
    set_switch(NULL);
    assert_true(tl_fault_enospc_enabled());
    assert_int_equal(write_file(path, 20000, 'a'), 0);
    assert_int_equal(size_of(path), 20000);
    int64_t room = tl_fs_free_bytes(g_root);
    assert_true(room > 100000); /* the test's file system has room */

    /* 100 bytes allowed: the write fails with ENOSPC, the old file and no temporary file are left */
    set_switch("100");
    assert_int_equal(tl_fs_free_bytes(g_root), 100);
    errno = 0;
    assert_int_equal(write_file(path, 20000, 'b'), -1);
    assert_int_equal(errno, ENOSPC);
    assert_true(tl_errno_disk_full(errno));
    assert_int_equal(size_of(path), 20000);
    size_t len;
    char *back = read_all(path, &len);
    assert_int_equal(back[0], 'a');
    assert_int_equal(back[len - 1], 'a');
    free(back);
    assert_int_equal(temps_in(g_root), 0);
    assert_int_equal(tl_fs_free_bytes(g_root), 0); /* the budget is spent */
    char msg[1400];
    tl_disk_full_message(msg, sizeof msg, path);
    if (!strstr(msg, path) || !strstr(msg, "0 bytes free")) fail_msg("message: %s", msg);

    /* a new budget: small writes fit until it is spent, then fail; a commit that fits succeeds */
    set_switch("3000 ");
    assert_int_equal(write_file(path, 1000, 'c'), 0);
    assert_int_equal(write_file(path, 1500, 'd'), 0);
    assert_int_equal(write_file(path, 1000, 'e'), -1);
    assert_int_equal(errno, ENOSPC);
    assert_int_equal(size_of(path), 1500);

    /* scopes: "store" leaves the file streams alone, "files" the store */
    set_switch("0 store");
    assert_int_equal(write_file(path, 5000, 'f'), 0);
    assert_int_equal(tl_fault_enospc_allow(TL_FAULT_STORE, 10), 0);
    set_switch("0 files");
    assert_int_equal(tl_fault_enospc_allow(TL_FAULT_STORE, 10), 10);
    assert_int_equal(tl_fault_enospc_allow(TL_FAULT_FILES, 10), 0);
    assert_int_equal(write_file(path, 10, 'g'), -1);

    /* the space is back */
    set_switch(NULL);
    assert_int_equal(tl_fault_enospc_room(TL_FAULT_FILES | TL_FAULT_STORE), UINT64_MAX);
    assert_true(tl_fs_free_bytes(g_root) > 100000);
    assert_int_equal(write_file(path, 7000, 'h'), 0);
    assert_int_equal(size_of(path), 7000);
}

static void test_streams(void **state) {
    (void)state;
    set_switch(NULL);
    char path[1200];
    path_in(path, sizeof path, "lines.txt");
    unlink(path);
    for (int round = 0; round < 2; round++) { /* append: the second stream adds to the first's lines */
        FILE *f = tl_file_open(path, 1);
        assert_non_null(f);
        int fd = tl_file_fd(f);
        struct stat st;
        assert_true(fd >= 0);
        assert_int_equal(fstat(fd, &st), 0);
        assert_true(fprintf(f, "line %d\n", round) > 0);
        assert_int_equal(tl_file_sync(f), 0);
        assert_int_equal(fclose(f), 0);
    }
    size_t len;
    char *text = read_all(path, &len);
    assert_int_equal(len, 14);
    assert_memory_equal(text, "line 0\nline 1\n", 14);
    free(text);
    /* truncate, and a placeholder rewritten after a seek (as the label-map and part writers do) */
    FILE *f = tl_file_open(path, 0);
    assert_non_null(f);
    assert_int_equal(fwrite("0000body", 1, 8, f), 8);
    assert_int_equal(fseek(f, 0, SEEK_SET), 0);
    assert_int_equal(fwrite("HEAD", 1, 4, f), 4);
    assert_int_equal(fclose(f), 0);
    text = read_all(path, &len);
    assert_int_equal(len, 8);
    assert_memory_equal(text, "HEADbody", 8);
    free(text);
    /* an append stream on a full disk: the failure shows at the flush, with ENOSPC */
    set_switch("4");
    f = tl_file_open(path, 1);
    assert_non_null(f);
    fputs("more than four bytes\n", f);
    errno = 0;
    assert_int_not_equal(fflush(f), 0);
    assert_int_equal(errno, ENOSPC);
    fclose(f);
    assert_int_equal(size_of(path), 12);
    set_switch(NULL);
}

static tl_config tiny_config(void) {
    tl_config c = {.img_size = 32, .patch_size = 8, .embed_dim = 24, .depth = 2, .num_heads = 2, .mlp_ratio = 2.0f,
                   .stem_channels = 8, .skip_lam = 1.0f, .num_classes = 4, .drop_path_rate = 0.0f};
    return c;
}

static void test_checkpoint_and_labelmap(void **state) {
    (void)state;
    set_switch(NULL);
    char err[TL_ERR_LEN], path[1200];
    tl_config c = tiny_config();
    tl_model *m = tl_model_new(&c, 1, err, sizeof err), *m2 = tl_model_new(&c, 2, err, sizeof err);
    assert_non_null(m);
    assert_non_null(m2);
    path_in(path, sizeof path, "model.safetensors");
    assert_int_equal(tl_checkpoint_save(m, NULL, path, 0, NULL, NULL, err, sizeof err), 0);
    size_t len0;
    char *before = read_all(path, &len0);
    set_switch("5000");
    errno = 0;
    assert_int_equal(tl_checkpoint_save(m2, NULL, path, 0, NULL, NULL, err, sizeof err), -1);
    assert_int_equal(errno, ENOSPC);
    if (!strstr(err, "No space left on device")) fail_msg("message: %s", err);
    set_switch(NULL);
    size_t len1;
    char *after = read_all(path, &len1);
    assert_int_equal(len0, len1);
    assert_memory_equal(before, after, len0);
    free(before);
    free(after);
    assert_int_equal(tl_checkpoint_load(m2, NULL, path, 0, NULL, err, sizeof err), 0); /* still a whole file */
    assert_int_equal(temps_in(g_root), 0);
    tl_model_free(m);
    tl_model_free(m2);

    /* a label map: the older file stays as it was, no temporary file */
    char lm_path[1200], src[1200];
    path_in(lm_path, sizeof lm_path, "maps.tllm");
    path_in(src, sizeof src, "synth/train.tllm");
    before = read_all(src, &len0);
    FILE *f = fopen(lm_path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(before, 1, len0, f), len0);
    fclose(f);
    set_switch("3000");
    tl_labelmap_writer *wr = tl_labelmap_writer_new(lm_path, 4, 2, 4, 4, err, sizeof err);
    assert_non_null(wr);
    float vals[2 * 16];
    int32_t idx[2 * 16];
    for (int i = 0; i < 32; i++) vals[i] = (float)i, idx[i] = i % 4;
    int rc = 0;
    for (int k = 0; k < 200 && rc == 0; k++) {
        char key[32];
        snprintf(key, sizeof key, "img%03d.jpg", k);
        rc = tl_labelmap_writer_add(wr, key, vals, idx, err, sizeof err);
    }
    int e = 0;
    if (rc == 0) {
        rc = tl_labelmap_writer_finish(wr, err, sizeof err);
        e = errno;
    } else {
        e = errno;
        tl_labelmap_writer_abort(wr);
    }
    assert_int_equal(rc, -1);
    assert_int_equal(e, ENOSPC);
    set_switch(NULL);
    after = read_all(lm_path, &len1);
    assert_int_equal(len0, len1);
    assert_memory_equal(before, after, len0);
    free(before);
    free(after);
    tl_labelmap *lm = tl_labelmap_open(lm_path, 4, err, sizeof err);
    assert_non_null(lm);
    tl_labelmap_close(lm);
    assert_int_equal(temps_in(g_root), 0);
}

/* ---- runs ---- */

typedef struct {
    int64_t last_step;       /* the step of the latest last.safetensors written */
    int64_t fill_after;      /* once a last.safetensors at this step or later is written, the disk is full */
    int refuse_at;           /* before_checkpoint refuses its refuse_at-th call with ENOSPC (0: never) */
    int befores;
    int64_t steps_seen[64];  /* on_step calls per step */
} recorder;

static void r_step(const tl_step_report *s, void *u) {
    recorder *r = u;
    if (s->step < 64) r->steps_seen[s->step]++;
}
static int r_before(int64_t step, void *u) {
    recorder *r = u;
    (void)step;
    return ++r->befores == r->refuse_at ? ENOSPC : 0;
}
static void r_ckpt(const char *path, int64_t step, int best, void *u) {
    recorder *r = u;
    (void)path;
    if (best) return;
    r->last_step = step;
    if (r->fill_after > 0 && step >= r->fill_after) set_switch("0 files");
}

static void make_spec(tl_train_spec *spec) {
    char json[4096];
    snprintf(json, sizeof json,
             "{\"kind\":\"train\",\"name\":\"full\",\"model\":{\"img_size\":32,\"patch_size\":8,\"embed_dim\":24,"
             "\"depth\":2,\"num_heads\":2,\"mlp_ratio\":2,\"stem_channels\":8,\"skip_lam\":1,\"num_classes\":4,"
             "\"drop_path_rate\":0},\"data\":{\"train\":\"%s/synth/train\",\"val\":\"%s/synth/val\"},"
             "\"train\":{\"epochs\":4,\"batch_size\":16,\"ema_decay\":0.9,\"threads\":2,\"loader_threads\":1,"
             "\"cache_mb\":16,\"eval_every_epochs\":1,\"checkpoint_every_epochs\":1,\"warmup_epochs\":0}}",
             g_root, g_root);
    tl_spec_error e;
    if (tl_jobspec_parse(json, NULL, spec, &e) != 0) fail_msg("spec refused: %s: %s", e.pointer, e.message);
}

static tl_train_status train(const tl_train_spec *spec, const char *dir, recorder *r, tl_train_result *res) {
    tl_train_hooks h = {.on_step = r_step, .before_checkpoint = r_before, .on_checkpoint = r_ckpt, .user = r};
    return tl_train_run(spec, dir, &h, res);
}

static int64_t ckpt_step(const char *dir) {
    char path[1300];
    int64_t step = -1;
    snprintf(path, sizeof path, "%s/last.safetensors", dir);
    if (!tl_checkpoint_train_step(path, &step)) return -1;
    return step;
}

static void test_train(void **state) {
    (void)state;
    set_switch(NULL);
    static tl_train_spec spec;
    make_spec(&spec);
    char dir[1200];
    path_in(dir, sizeof dir, "run_full");
    tl_train_result res;
    /* the disk fills after the checkpoint at step 4 (an epoch is 4 steps): the next checkpoint fails */
    recorder r = {.fill_after = 4};
    assert_int_equal(train(&spec, dir, &r, &res), TL_TRAIN_FAILED);
    assert_string_equal(res.reason, "DISK_FULL");
    if (!strstr(res.message, "no space left on the device for ") || !strstr(res.message, ".safetensors") ||
        !strstr(res.message, "free on its file system") || !strstr(res.message, "the previous one is kept"))
        fail_msg("message: %s", res.message);
    assert_int_equal(r.last_step, 4);
    assert_int_equal(ckpt_step(dir), 4); /* the checkpoint of step 4, whole */
    assert_int_equal(temps_in(dir), 0);
    /* room again: the run resumes from step 4 and finishes, each step after it run once more */
    set_switch(NULL);
    recorder r2 = {0};
    assert_int_equal(train(&spec, dir, &r2, &res), TL_TRAIN_SUCCEEDED);
    assert_int_equal(res.step, 16);
    for (int s = 1; s <= 16; s++) assert_int_equal(r2.steps_seen[s], s <= 4 ? 0 : 1);
    assert_int_equal(ckpt_step(dir), 16);

    /* before_checkpoint refuses (the daemon's store lost metric points to a full disk): no checkpoint */
    char dir2[1200];
    path_in(dir2, sizeof dir2, "run_refused");
    recorder r3 = {.refuse_at = 2};
    assert_int_equal(train(&spec, dir2, &r3, &res), TL_TRAIN_FAILED);
    assert_string_equal(res.reason, "DISK_FULL");
    if (!strstr(res.message, "could not be saved") || !strstr(res.message, "was not written"))
        fail_msg("message: %s", res.message);
    char best[1300];
    snprintf(best, sizeof best, "%s/best.safetensors", dir2);
    assert_int_equal(r3.befores, 2);       /* step 4: best.safetensors (the first evaluation), then last refused */
    assert_int_equal(access(best, F_OK), 0);
    assert_int_equal(ckpt_step(dir2), -1); /* the refused checkpoint was not written */
    assert_int_equal(temps_in(dir2), 0);
}

/* ---- annotation ---- */

typedef struct {
    int64_t total;
} a_recorder;

static void a_ckpt(const char *path, int64_t done, void *u) {
    a_recorder *r = u;
    (void)path;
    if (done == r->total) set_switch("0 files"); /* the last part is written: the merge finds the disk full */
}

static void test_annotate(void **state) {
    (void)state;
    set_switch(NULL);
    char err[TL_ERR_LEN], weights[1200], out[1200], src[1200], dir[1200];
    tl_config c = tiny_config();
    tl_model *m = tl_model_new(&c, 7, err, sizeof err);
    assert_non_null(m);
    path_in(weights, sizeof weights, "teacher.safetensors");
    assert_int_equal(tl_checkpoint_save(m, NULL, weights, 0, NULL, NULL, err, sizeof err), 0);
    tl_model_free(m);
    path_in(out, sizeof out, "annotated.tllm");
    path_in(src, sizeof src, "synth/val.tllm");
    path_in(dir, sizeof dir, "run_annotate");
    size_t len0, len1;
    char *older = read_all(src, &len0);
    FILE *f = fopen(out, "wb");
    assert_non_null(f);
    fwrite(older, 1, len0, f);
    fclose(f);
    static tl_annotate_spec spec;
    tl_annotate_defaults(&spec);
    snprintf(spec.name, sizeof spec.name, "annotate");
    path_in(spec.images_dir, sizeof spec.images_dir, "synth/val");
    snprintf(spec.out_path, sizeof spec.out_path, "%s", out);
    snprintf(spec.weights_path, sizeof spec.weights_path, "%s", weights);
    spec.topk = 2;
    spec.batch_size = 8;
    spec.part_images = 8;
    spec.threads = 2;
    a_recorder r = {.total = 16};
    tl_annotate_hooks h = {.on_checkpoint = a_ckpt, .user = &r};
    tl_train_result res;
    assert_int_equal(tl_annotate_run(&spec, dir, &h, &res), TL_TRAIN_FAILED);
    assert_string_equal(res.reason, "DISK_FULL");
    if (!strstr(res.message, out) || !strstr(res.message, "an older file there is kept"))
        fail_msg("message: %s", res.message);
    char *now = read_all(out, &len1);
    assert_int_equal(len0, len1);
    assert_memory_equal(older, now, len0); /* the older label map, untouched */
    free(now);
    free(older);
    assert_int_equal(temps_in(g_root), 0);
    assert_int_equal(temps_in(dir), 0);
    /* room again: the run merges its parts and writes the map */
    set_switch(NULL);
    tl_annotate_hooks h2 = {0};
    assert_int_equal(tl_annotate_run(&spec, dir, &h2, &res), TL_TRAIN_SUCCEEDED);
    tl_labelmap *lm = tl_labelmap_open(out, 4, err, sizeof err);
    if (!lm) fail_msg("%s", err);
    assert_int_equal(tl_labelmap_count(lm), 16);
    tl_labelmap_close(lm);
}

static int setup(void **state) {
    (void)state;
    char err[TL_ERR_LEN], data[1100];
    snprintf(data, sizeof data, "%s/synth", g_root);
    tl_synth_cfg c;
    tl_synth_defaults(&c);
    c.classes = 4;
    c.train = 64;
    c.val = 16;
    c.size = 32;
    c.map_size = 4;
    c.seed = 5;
    set_switch(NULL);
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

int main(void) {
    const char *tmp = getenv("TL_TEST_TMP");
    snprintf(g_root, sizeof g_root, "%s/diskfull_%d", tmp && *tmp ? tmp : "/tmp", (int)getpid());
    mkdir(g_root, 0755);
    char real[PATH_MAX];
    if (!realpath(g_root, real) || strlen(real) >= sizeof g_root) return 1;
    memcpy(g_root, real, strlen(real) + 1);
    snprintf(g_switch, sizeof g_switch, "%s/switch", g_root);
    setenv("TL_FAULT_ENOSPC_FILE", g_switch, 1); /* before the process's first write: the switch is read once */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_choke_point), cmocka_unit_test(test_streams),
        cmocka_unit_test(test_checkpoint_and_labelmap), cmocka_unit_test(test_train), cmocka_unit_test(test_annotate),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
