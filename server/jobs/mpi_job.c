/*
 * mpi_job.c: launching and following mpirun for distributed training jobs
 * (see mpi_job.h). Owns the children it starts, from fork to waitpid, on
 * the calling worker thread; the tld_mpi settings are read-only after start.
 */
#include "jobs/mpi_job.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "jobs/run_events.h"

#define PROBE_TIMEOUT_MS 30000   /* a host that has not run `hostname` by then does not answer */
#define STOP_GRACE_MS 300000     /* after SIGUSR1: the ranks finish a step and checkpoint */
#define TERM_GRACE_MS 10000      /* after SIGTERM, before SIGKILL to the process group */
#define EOF_GRACE_MS 60000       /* mpirun closed its output but has not exited: then SIGTERM */
#define ERR_LINE 2048            /* stderr lines are cut at this length */
#define POLL_MS 200

static int64_t now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

int tld_mpi_init(tld_mpi *m, const char *hostfile, const char *const *args, int nargs, char *err, size_t errlen) {
    memset(m, 0, sizeof *m);
    if (nargs > TLD_MPI_ARGS) {
        snprintf(err, errlen, "at most %d --mpi-arg options", TLD_MPI_ARGS);
        return -1;
    }
    for (int i = 0; i < nargs; i++) {
        if (strlen(args[i]) >= sizeof m->args[i]) {
            snprintf(err, errlen, "--mpi-arg '%.40s...' is longer than %zu bytes", args[i], sizeof m->args[i] - 1);
            return -1;
        }
        snprintf(m->args[i], sizeof m->args[i], "%s", args[i]);
    }
    m->nargs = nargs;
    char e2[600];
    if (tld_hostfile_load(hostfile, &m->hosts, e2, sizeof e2) != 0) {
        snprintf(err, errlen, "--mpi-hostfile %s", e2);
        return -1;
    }
    if (!realpath(hostfile, m->hostfile)) {
        snprintf(err, errlen, "--mpi-hostfile %s: %s", hostfile, strerror(errno));
        return -1;
    }
    ssize_t n = readlink("/proc/self/exe", m->self, sizeof m->self - 1);
    if (n <= 0 || n >= (ssize_t)sizeof m->self - 1) {
        snprintf(err, errlen, "cannot find this executable (/proc/self/exe)");
        return -1;
    }
    m->self[n] = 0;
    const char *path = getenv("PATH");
    char dir[PATH_MAX];
    for (const char *p = path ? path : "/usr/bin:/bin"; p && *p;) {
        const char *c = strchr(p, ':');
        size_t l = c ? (size_t)(c - p) : strlen(p);
        if (l > 0 && l < sizeof dir - 8) {
            snprintf(dir, sizeof dir, "%.*s/mpirun", (int)l, p);
            if (access(dir, X_OK) == 0 && realpath(dir, m->mpirun)) return 0;
        }
        p = c ? c + 1 : NULL;
    }
    snprintf(err, errlen, "--mpi-hostfile needs Open MPI's mpirun on PATH (Debian: apt install openmpi-bin)");
    return -1;
}

/* Starts argv[0] (an absolute path) in its own process group with stdout to out_fd and stderr to err_fd,
 * stdin from /dev/null, no other descriptor, SIGTERM when this thread dies. The child's pid, or -1. */
static pid_t spawn(char *const argv[], int out_fd, int err_fd) {
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null < 0) return -1;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) { /* only async-signal-safe calls from here to execv */
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) _exit(127);
        if (dup2(null, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(err_fd, 2) < 0) _exit(127);
        if (syscall(SYS_close_range, 3u, ~0u, 0u) != 0)
            for (int fd = 3; fd < 65536; fd++) close(fd);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execv(argv[0], argv);
        _exit(127);
    }
    close(null);
    if (pid > 0) setpgid(pid, pid); /* both sides, so a signal to the group right after fork finds it */
    return pid;
}

/* The argument vector's common start: mpirun -np N, the hostfile (and --host H for a probe), --bind-to none,
 * --allow-run-as-root as root, the operator's arguments. Returns the count filled (argv has room for 64). */
static int mpirun_args(const tld_mpi *m, char *argv[], char *np, size_t nplen, int ranks, const char *host) {
    int a = 0;
    snprintf(np, nplen, "%d", ranks);
    argv[a++] = (char *)m->mpirun;
    argv[a++] = "-np";
    argv[a++] = np;
    argv[a++] = "--hostfile";
    argv[a++] = (char *)m->hostfile;
    if (host) {
        argv[a++] = "--host";
        argv[a++] = (char *)host;
    }
    argv[a++] = "--bind-to";
    argv[a++] = "none";
    if (geteuid() == 0) argv[a++] = "--allow-run-as-root";
    for (int i = 0; i < m->nargs; i++) argv[a++] = (char *)m->args[i];
    return a;
}

/* Kills a child's group and reaps it (the child may have exited already); its wait status. */
static int kill_reap(pid_t pid) {
    int status = 0;
    kill(-pid, SIGKILL);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return status;
}

int tld_mpi_probe(const tld_mpi *m, int *answering, void (*log)(const char *line, void *u), void *u) {
    int n = m->hosts.n, slots = 0;
    pid_t pid[TLD_HOSTFILE_HOSTS];
    int fd[TLD_HOSTFILE_HOSTS];
    char last[TLD_HOSTFILE_HOSTS][160];
    for (int k = 0; k < n; k++) {
        char *argv[64], np[16];
        int a = mpirun_args(m, argv, np, sizeof np, 1, m->hosts.host[k]);
        argv[a++] = "hostname";
        argv[a] = NULL;
        int p[2];
        answering[k] = 0;
        pid[k] = -1;
        fd[k] = -1;
        last[k][0] = 0;
        if (pipe2(p, O_CLOEXEC) != 0) {
            snprintf(last[k], sizeof last[k], "no pipe: %s", strerror(errno));
            continue;
        }
        pid[k] = spawn(argv, p[1], p[1]);
        close(p[1]);
        if (pid[k] < 0) {
            snprintf(last[k], sizeof last[k], "cannot start mpirun: %s", strerror(errno));
            close(p[0]);
            continue;
        }
        fd[k] = p[0];
    }
    int64_t deadline = now_ms() + PROBE_TIMEOUT_MS;
    for (;;) { /* drain every probe's output until EOF or the deadline (the last line says why it failed) */
        struct pollfd pf[TLD_HOSTFILE_HOSTS];
        int map[TLD_HOSTFILE_HOSTS], np = 0;
        for (int k = 0; k < n; k++)
            if (fd[k] >= 0) pf[np] = (struct pollfd){.fd = fd[k], .events = POLLIN}, map[np++] = k;
        int64_t left = deadline - now_ms();
        if (np == 0 || left <= 0) break;
        if (poll(pf, (nfds_t)np, (int)(left < POLL_MS ? left : POLL_MS)) < 0 && errno != EINTR) break;
        for (int i = 0; i < np; i++) {
            if (!pf[i].revents) continue;
            int k = map[i];
            char buf[512];
            ssize_t r = read(fd[k], buf, sizeof buf - 1);
            if (r > 0) {
                buf[r] = 0;
                char *nl;
                while (r > 0 && (buf[r - 1] == '\n' || buf[r - 1] == '\r')) buf[--r] = 0;
                nl = strrchr(buf, '\n');
                if (r > 0) snprintf(last[k], sizeof last[k], "%.150s", nl ? nl + 1 : buf);
            } else if (r == 0 || errno != EINTR) {
                close(fd[k]);
                fd[k] = -1;
            }
        }
    }
    for (int k = 0; k < n; k++) {
        if (fd[k] >= 0) {
            close(fd[k]);
            snprintf(last[k], sizeof last[k], "no answer within %d s", PROBE_TIMEOUT_MS / 1000);
        }
        if (pid[k] < 0) continue;
        int st = 0;
        pid_t w;
        while ((w = waitpid(pid[k], &st, WNOHANG)) == 0 && now_ms() < deadline) { /* it closed its output */
            struct timespec t = {0, 20 * 1000000L};
            nanosleep(&t, NULL);
        }
        if (w == 0) st = kill_reap(pid[k]); /* a probe past the deadline is killed */
        else kill(-pid[k], SIGKILL);        /* anything it left behind */
        answering[k] = w == pid[k] && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    for (int k = 0; k < n; k++) {
        if (answering[k]) {
            slots += m->hosts.slots[k];
        } else if (log) {
            char line[512];
            snprintf(line, sizeof line, "host %.200s does not answer: %.160s", m->hosts.host[k],
                     last[k][0] ? last[k] : "mpirun failed");
            log(line, u);
        }
    }
    return slots;
}

int tld_mpi_world_size(int requested, int slots, int micro_batches) {
    int w = requested < slots ? requested : slots;
    while (w > 0 && micro_batches % w != 0) w--;
    return w;
}

/* A line buffer of a child's stream: complete lines are handed on; a line longer than cap is cut (stderr) or
 * refused (events) and the rest of it skipped. */
typedef struct {
    int fd;
    char *buf;
    size_t len, cap;
    int skipping;             /* inside an overlong line */
} stream;

typedef struct {
    const tl_train_hooks *hooks;
    tl_train_status *st;
    tl_train_result *res;
    int ended;
    int events;               /* event lines handed over (the ranks' signal handlers are in place) */
} follow;

static void log_line(const follow *f, const char *line) {
    if (f->hooks->on_log) f->hooks->on_log(line, f->hooks->user);
}

/* One complete line of stdout (events) or stderr (logged). */
static void on_line(follow *f, int is_events, const char *line, size_t len) {
    if (!is_events) {
        if (len > 0) log_line(f, line);
        return;
    }
    if (len == 0) return;
    char err[400];
    int rc = tld_run_event_dispatch(line, len, f->hooks, f->st, f->res, err, sizeof err);
    if (rc >= 0) f->events++;
    if (rc == 1) f->ended = 1;
    if (rc < 0) {
        char msg[600];
        snprintf(msg, sizeof msg, "tokenlabd run printed a line that is not an event (%s): %.120s", err, line);
        log_line(f, msg);
    }
}

/* Reads what is there; 0, or -1 at EOF (or a read error). */
static int pump(follow *f, stream *s, int is_events) {
    char chunk[8192];
    ssize_t r = read(s->fd, chunk, sizeof chunk);
    if (r < 0 && errno == EINTR) return 0;
    if (r <= 0) {
        if (s->len > 0 && !s->skipping) { /* a last line without its newline */
            s->buf[s->len] = 0;
            on_line(f, is_events, s->buf, s->len);
        }
        s->len = 0;
        return -1;
    }
    for (ssize_t i = 0; i < r; i++) {
        char c = chunk[i];
        if (c == '\n') {
            if (!s->skipping) {
                s->buf[s->len] = 0;
                on_line(f, is_events, s->buf, s->len);
            }
            s->len = 0;
            s->skipping = 0;
        } else if (s->skipping) {
            continue;
        } else if (s->len + 1 >= s->cap) {
            if (is_events) {
                char msg[200];
                snprintf(msg, sizeof msg, "tokenlabd run sent an event line longer than %zu bytes: dropped", s->cap - 1);
                log_line(f, msg);
            } else { /* a long stderr line: what fits is logged */
                s->buf[s->len] = 0;
                on_line(f, 0, s->buf, s->len);
            }
            s->skipping = 1;
            s->len = 0;
        } else {
            s->buf[s->len++] = c;
        }
    }
    return 0;
}

int tld_mpi_run(const tld_mpi *m, const tld_mpi_launch *l, const tl_train_hooks *hooks, tl_train_status *st,
                tl_train_result *res) {
    memset(res, 0, sizeof *res);
    res->best_top1 = -1.0;
    *st = TL_TRAIN_FAILED;
    snprintf(res->reason, sizeof res->reason, "DIST_ERROR");
    char *argv[80], np[16];
    int a = mpirun_args(m, argv, np, sizeof np, l->ranks, NULL);
    argv[a++] = (char *)m->self;
    argv[a++] = "run";
    argv[a++] = (char *)l->spec_path;
    argv[a++] = "--out";
    argv[a++] = (char *)l->run_dir;
    argv[a++] = "--events";
    if (l->init_source) {
        argv[a++] = "--init-source-path";
        argv[a++] = (char *)l->init_source;
    }
    argv[a] = NULL;
    int po[2] = {-1, -1}, pe[2] = {-1, -1};
    stream out = {.fd = -1, .cap = TLD_RUN_EVENT_MAX}, errs = {.fd = -1, .cap = ERR_LINE};
    out.buf = malloc(out.cap);
    errs.buf = malloc(errs.cap);
    pid_t pid = -1;
    if (!out.buf || !errs.buf || pipe2(po, O_CLOEXEC) != 0 || pipe2(pe, O_CLOEXEC) != 0) {
        snprintf(res->message, sizeof res->message, "cannot start mpirun: %s", out.buf && errs.buf ? strerror(errno) : "out of memory");
        goto fail;
    }
    pid = spawn(argv, po[1], pe[1]);
    close(po[1]);
    close(pe[1]);
    po[1] = pe[1] = -1;
    if (pid < 0) {
        snprintf(res->message, sizeof res->message, "cannot start %.800s: %s", m->mpirun, strerror(errno));
        goto fail;
    }
    out.fd = po[0], errs.fd = pe[0];
    po[0] = pe[0] = -1;
    follow f = {hooks, st, res, 0, 0};
    int stage = 0;            /* 0 running, 1 stopping (SIGUSR1), 2 SIGTERM sent, 3 SIGKILL sent */
    int usr1_due = 0;         /* SIGUSR1 waits for the first event: before it a rank may lack its handler */
    int64_t since = 0, eof_at = 0;
    int status = 0, reaped = 0;
    while (!reaped) {
        struct pollfd pf[2];
        int n = 0;
        if (out.fd >= 0) pf[n++] = (struct pollfd){.fd = out.fd, .events = POLLIN};
        if (errs.fd >= 0) pf[n++] = (struct pollfd){.fd = errs.fd, .events = POLLIN};
        if (n > 0) {
            if (poll(pf, (nfds_t)n, POLL_MS) > 0)
                for (int i = 0; i < n; i++) {
                    if (!pf[i].revents) continue;
                    stream *s = pf[i].fd == out.fd ? &out : &errs;
                    if (pump(&f, s, s == &out) != 0) {
                        close(s->fd);
                        s->fd = -1;
                    }
                }
        } else {
            struct timespec t = {0, POLL_MS * 1000000L};
            nanosleep(&t, NULL);
        }
        int64_t now = now_ms();
        if (out.fd < 0 && errs.fd < 0) {
            if (!eof_at) eof_at = now;
            pid_t w = waitpid(pid, &status, WNOHANG);
            if (w == pid) reaped = 1;
            else if (w < 0 && errno != EINTR) break;
        }
        if (reaped) break;
        int want_stop = hooks->should_stop && hooks->should_stop(hooks->user);
        if (usr1_due && f.events > 0) {
            kill(pid, SIGUSR1);
            usr1_due = 0;
        }
        if (stage == 0 && (want_stop || (eof_at && now - eof_at > EOF_GRACE_MS))) {
            if (want_stop) usr1_due = 1;
            else kill(pid, SIGTERM);
            stage = want_stop ? 1 : 2;
            since = now;
        } else if (stage == 1 && now - since > STOP_GRACE_MS) {
            log_line(&f, "the ranks did not stop after SIGUSR1: sending mpirun SIGTERM");
            kill(pid, SIGTERM);
            stage = 2;
            since = now;
        } else if (stage == 2 && now - since > TERM_GRACE_MS) {
            log_line(&f, "mpirun did not stop after SIGTERM: killing its process group");
            kill(-pid, SIGKILL);
            stage = 3;
        }
    }
    if (!reaped) status = kill_reap(pid);
    else kill(-pid, SIGKILL); /* whatever is left in its group */
    pid = -1;
    if (f.ended) {
        free(out.buf);
        free(errs.buf);
        return 1;
    }
    if (WIFEXITED(status))
        snprintf(res->message, sizeof res->message,
                 "mpirun exited with status %d before the job ended (a rank was lost or could not start)",
                 WEXITSTATUS(status));
    else
        snprintf(res->message, sizeof res->message, "mpirun was killed by signal %d before the job ended",
                 WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    free(out.buf);
    free(errs.buf);
    return 0;
fail:
    for (int i = 0; i < 2; i++) {
        if (po[i] >= 0) close(po[i]);
        if (pe[i] >= 0) close(pe[i]);
    }
    free(out.buf);
    free(errs.buf);
    return -1;
}
