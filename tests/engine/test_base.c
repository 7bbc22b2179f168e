/*
 * test_base.c: the rules every layer shares (engine/core/base.c, files.c):
 * the error formatter, the clocks, the invariant checks (fatal in the
 * sanitizer build, logged and refused in release), and path confinement,
 * including a root of "/", names that share a prefix with the root, and
 * symbolic links leading in and out of the root; crash-safe writes (unique
 * temporary files created exclusively, commit, abandon, and the start-up
 * sweep that removes only names of that form).
 *
 * Files live in a fresh folder under $TL_TEST_TMP (or /tmp). Single-threaded
 * but for the forked children of the invariant test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tokenlab/base.h"
#include "tokenlab/files.h"
#include "tokenlab/tokenlab.h" /* the umbrella compiles on its own and with what came before */

static char g_dir[PATH_MAX];  /* realpath of the test folder */
static char g_root[PATH_MAX + 16]; /* g_dir/root: the confining root */

static void put_file(const char *path) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("x", f);
    fclose(f);
}

static int setup(void **state) {
    (void)state;
    const char *tmp = getenv("TL_TEST_TMP");
    char d[PATH_MAX];
    snprintf(d, sizeof d, "%s/test_base.XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(d)) return -1;
    if (!realpath(d, g_dir)) return -1;
    char p[PATH_MAX + 64];
    snprintf(g_root, sizeof g_root, "%s/root", g_dir);
    mkdir(g_root, 0755);
    snprintf(p, sizeof p, "%s/root/sub", g_dir);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/root/sub/a.jpg", g_dir);
    put_file(p);
    snprintf(p, sizeof p, "%s/rootless", g_dir); /* shares the prefix "root" */
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/rootless/secret.txt", g_dir);
    put_file(p);
    snprintf(p, sizeof p, "%s/root/in_link", g_dir); /* a link that stays inside */
    if (symlink("sub", p) != 0) return -1;
    snprintf(p, sizeof p, "%s/root/out_link", g_dir); /* a link that leads out */
    if (symlink("../rootless", p) != 0) return -1;
    snprintf(p, sizeof p, "%s/root/file_out", g_dir); /* a file link that leads out */
    char target[PATH_MAX + 32];
    snprintf(target, sizeof target, "%s/rootless/secret.txt", g_dir);
    if (symlink(target, p) != 0) return -1;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_seterr(void **state) {
    (void)state;
    char err[8];
    assert_int_equal(tl_seterr(err, sizeof err, "value %d too large", 12345), -1);
    assert_string_equal(err, "value 1"); /* truncated, terminated */
    assert_int_equal(tl_seterr(NULL, 0, "ignored %s", "x"), -1);
}

static void test_clocks(void **state) {
    (void)state;
    double a = tl_clock_mono_s();
    int64_t am = tl_clock_mono_ms();
    usleep(20000);
    double b = tl_clock_mono_s();
    int64_t bm = tl_clock_mono_ms();
    assert_true(b - a >= 0.019 && b - a < 5.0);
    assert_true(bm - am >= 19 && bm - am < 5000);
    int64_t w = tl_clock_wall_ms();
    assert_true(w > 1700000000000LL); /* after 2023 */
}

/* In a child: a broken TL_NEVER must take the refusing branch and count (release), or
 * abort (TL_INVARIANT_FATAL); a kept invariant must do neither. */
static void test_invariants(void **state) {
    (void)state;
    uint64_t before = tl_invariant_failures();
    int kept = 3;
    assert_false(TL_NEVER(kept > 5));
    assert_true(TL_ALWAYS(kept == 3));
    assert_int_equal(tl_invariant_failures(), before);

    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int refused = 0;
        volatile int len = 9, cap = 8;
        if (TL_NEVER(len > cap)) refused++;
        if (!TL_ALWAYS(len <= cap)) refused++;
        _exit(refused == 2 && tl_invariant_failures() == before + 2 ? 0 : 1);
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
#ifdef TL_INVARIANT_FATAL
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
#else
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
#endif
}

static void test_is_inside(void **state) {
    (void)state;
    assert_true(tl_path_is_inside("/data", "/data"));
    assert_true(tl_path_is_inside("/data/a/b", "/data"));
    assert_false(tl_path_is_inside("/database", "/data"));
    assert_false(tl_path_is_inside("/dat", "/data"));
    assert_false(tl_path_is_inside("/other/data", "/data"));
    /* the root "/" holds every absolute path, and nothing relative */
    assert_true(tl_path_is_inside("/", "/"));
    assert_true(tl_path_is_inside("/etc/passwd", "/"));
    assert_false(tl_path_is_inside("etc", "/"));
    assert_false(tl_path_is_inside(NULL, "/"));
}

static void test_confine(void **state) {
    (void)state;
    char out[PATH_MAX], want[PATH_MAX + 64];
    assert_int_equal(tl_path_confine(g_root, "sub", TL_PATH_WANT_DIR, out), TL_PATH_OK);
    snprintf(want, sizeof want, "%s/sub", g_root);
    assert_string_equal(out, want);
    assert_int_equal(tl_path_confine(g_root, "sub/a.jpg", TL_PATH_WANT_FILE, out), TL_PATH_OK);
    assert_int_equal(tl_path_confine(g_root, "", TL_PATH_WANT_DIR, out), TL_PATH_OK);
    assert_string_equal(out, g_root);
    assert_int_equal(tl_path_confine(g_root, "./sub//", TL_PATH_WANT_DIR, out), TL_PATH_OK);
    /* refused before the file system is asked */
    assert_int_equal(tl_path_confine(g_root, "/etc", TL_PATH_WANT_ANY, out), TL_PATH_ABSOLUTE);
    assert_int_equal(tl_path_confine(g_root, "sub/../sub", TL_PATH_WANT_ANY, out), TL_PATH_DOTDOT);
    assert_int_equal(tl_path_confine(g_root, "..", TL_PATH_WANT_ANY, out), TL_PATH_DOTDOT);
    /* "..." and "..a" are names, not parent references */
    assert_int_equal(tl_path_confine(g_root, "...", TL_PATH_WANT_ANY, out), TL_PATH_NOT_FOUND);
    assert_int_equal(tl_path_confine(g_root, "missing/x", TL_PATH_WANT_ANY, out), TL_PATH_NOT_FOUND);
    assert_int_equal(tl_path_confine(g_root, "sub/a.jpg/x", TL_PATH_WANT_ANY, out), TL_PATH_NOT_FOUND);
    /* kinds */
    assert_int_equal(tl_path_confine(g_root, "sub", TL_PATH_WANT_FILE, out), TL_PATH_NOT_FILE);
    assert_int_equal(tl_path_confine(g_root, "sub/a.jpg", TL_PATH_WANT_DIR, out), TL_PATH_NOT_DIR);
    /* symbolic links: inside is fine, out is refused, for folders and files */
    assert_int_equal(tl_path_confine(g_root, "in_link/a.jpg", TL_PATH_WANT_FILE, out), TL_PATH_OK);
    snprintf(want, sizeof want, "%s/sub/a.jpg", g_root);
    assert_string_equal(out, want);
    assert_int_equal(tl_path_confine(g_root, "out_link", TL_PATH_WANT_DIR, out), TL_PATH_OUTSIDE);
    assert_int_equal(tl_path_confine(g_root, "out_link/secret.txt", TL_PATH_WANT_FILE, out), TL_PATH_OUTSIDE);
    assert_int_equal(tl_path_confine(g_root, "file_out", TL_PATH_WANT_FILE, out), TL_PATH_OUTSIDE);
    /* out is left alone on failure */
    strcpy(out, "unchanged");
    assert_int_not_equal(tl_path_confine(g_root, "out_link", TL_PATH_WANT_ANY, out), TL_PATH_OK);
    assert_string_equal(out, "unchanged");
    /* a root of "/": everything that exists is inside, links included */
    char rel[PATH_MAX + 64];
    snprintf(rel, sizeof rel, "%s", g_root + 1);
    strcat(rel, "/out_link/secret.txt");
    assert_int_equal(tl_path_confine("/", rel, TL_PATH_WANT_FILE, out), TL_PATH_OK);
    snprintf(want, sizeof want, "%s/rootless/secret.txt", g_dir);
    assert_string_equal(out, want);
    assert_int_equal(tl_path_confine("/", "", TL_PATH_WANT_DIR, out), TL_PATH_OK);
    assert_string_equal(out, "/");
    /* absolute paths found by walking a folder */
    snprintf(want, sizeof want, "%s/out_link", g_root);
    assert_int_equal(tl_path_confine_abs(g_root, want, TL_PATH_WANT_ANY, out), TL_PATH_OUTSIDE);
    snprintf(want, sizeof want, "%s/in_link", g_root);
    assert_int_equal(tl_path_confine_abs(g_root, want, TL_PATH_WANT_DIR, out), TL_PATH_OK);
    /* every status has a message */
    for (int s = TL_PATH_OK; s <= TL_PATH_NOT_FILE; s++) assert_true(strlen(tl_path_status_str((tl_path_status)s)) > 1);
}

static int exists(const char *p) {
    struct stat st;
    return lstat(p, &st) == 0;
}

static void test_temp_files(void **state) {
    (void)state;
    char dir[PATH_MAX + 16], path[PATH_MAX + 32], t1[PATH_MAX + 64], t2[PATH_MAX + 64];
    snprintf(dir, sizeof dir, "%s/temps", g_dir);
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(path, sizeof path, "%s/out.bin", dir);
    /* two writers of one path never share a temporary file */
    FILE *a = tl_file_create_temp(path, t1, sizeof t1), *b = tl_file_create_temp(path, t2, sizeof t2);
    assert_non_null(a);
    assert_non_null(b);
    assert_string_not_equal(t1, t2);
    assert_int_equal(strncmp(t1, path, strlen(path)), 0);
    const char *n1 = strrchr(t1, '/') + 1;
    assert_true(tl_file_is_temp_name(n1));
    struct stat st;
    assert_int_equal(stat(t1, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);
    fputs("first", a);
    const char *step = NULL;
    assert_int_equal(tl_file_commit(a, t1, path, &step), 0);
    assert_false(exists(t1));
    tl_file_abandon(b, t2);
    assert_false(exists(t2));
    FILE *f = fopen(path, "r");
    char buf[16] = "";
    assert_non_null(fgets(buf, sizeof buf, f));
    fclose(f);
    assert_string_equal(buf, "first");
    /* a failed rename (onto a non-empty folder) reports its step and leaves no temporary file */
    char busy[PATH_MAX + 32], inner[PATH_MAX + 48];
    snprintf(busy, sizeof busy, "%s/busy", dir);
    assert_int_equal(mkdir(busy, 0755), 0);
    snprintf(inner, sizeof inner, "%s/keep", busy);
    put_file(inner);
    a = tl_file_create_temp(busy, t1, sizeof t1);
    assert_non_null(a);
    assert_int_equal(tl_file_commit(a, t1, busy, &step), -1);
    assert_string_equal(step, "rename");
    assert_false(exists(t1));
    /* too long a name is refused, nothing created */
    assert_null(tl_file_create_temp(path, t1, strlen(path) + 4));
    /* the start-up sweep removes what a crash left, and only that */
    char left[PATH_MAX + 64], keep1[PATH_MAX + 64], keep2[PATH_MAX + 64], keep3[PATH_MAX + 64];
    a = tl_file_create_temp(path, left, sizeof left);
    assert_non_null(a);
    fclose(a); /* a crash between create and commit */
    snprintf(keep1, sizeof keep1, "%s/model.tmp.abc", dir);        /* five characters */
    snprintf(keep2, sizeof keep2, "%s/model.tmp.abcde!", dir);     /* not alphanumeric */
    snprintf(keep3, sizeof keep3, "%s/notes.txt", dir);
    put_file(keep1);
    put_file(keep2);
    put_file(keep3);
    assert_int_equal(tl_file_remove_temps(dir), 1);
    assert_false(exists(left));
    assert_true(exists(keep1) && exists(keep2) && exists(keep3) && exists(path));
    assert_false(tl_file_is_temp_name("x.tmp.12345"));
    assert_false(tl_file_is_temp_name(".tmp.abcdef"));
    assert_true(tl_file_is_temp_name("a.tmp.Zz09aB"));
    snprintf(t1, sizeof t1, "%s/missing", dir);
    assert_int_equal(tl_file_remove_temps(t1), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seterr),    cmocka_unit_test(test_clocks),  cmocka_unit_test(test_invariants),
        cmocka_unit_test(test_is_inside), cmocka_unit_test(test_confine), cmocka_unit_test(test_temp_files),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
