/*
 * main.c: `tokenlab`, the command-line client of tokenlabd.
 *
 * Owns the command table (names, usage lines, help texts), the global
 * options (accepted anywhere before `--`), the SIGINT handler and libcurl's
 * global set-up; everything else lives in one file per command group. The
 * exit status of the process is the return value of the command.
 */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "cli.h"
#include "config.h"
#include "opts.h"
#include "out.h"

typedef struct {
    const char *name;
    int (*fn)(cli *, int, char **);
    const char *usage;   /* after "tokenlab " */
    const char *summary;
    const char *help;    /* options and details */
} command;

static const command COMMANDS[] = {
    {"submit", cmd_submit, "submit SPEC.json [--name N] [--init SOURCE] [--wait] [--idempotency-key K]",
     "submit a training job",
     "  SPEC.json                 a job spec (schema/jobspec.schema.json); '-' reads it from stdin.\n"
     "  --name N                  use N as the job's name instead of the spec's \"name\".\n"
     "  --init SOURCE             fine-tune: start from trained weights instead of random ones (sets the spec's\n"
     "                            model.init, replacing any there). SOURCE is model:NAME (a registered model)\n"
     "                            or job:ID[:CHECKPOINT] (a finished training job's checkpoint: best, the\n"
     "                            default, last, or a step number). The architecture then comes from the\n"
     "                            source; the daemon refuses a source that is missing or still training.\n"
     "  --wait                    follow the job until it ends (a progress bar as in `watch`); the exit\n"
     "                            status is then the job's: 0 SUCCEEDED, 5 FAILED, 6 CANCELLED.\n"
     "  --idempotency-key K       send K as Idempotency-Key: submitting again with the same key returns the\n"
     "                            first job instead of a new one. Without it a random key is made, so the\n"
     "                            one automatic retry after a broken connection cannot submit twice.\n"
     "  Prints the job's id (with --json: the Job object; with --wait --json: the final Job object).\n"},
    {"jobs", cmd_jobs, "jobs [--state S] [--limit N] [--cursor ID]", "list jobs, newest first",
     "  --state S                 only jobs in state S: QUEUED, RUNNING, CANCELLING, SUCCEEDED, FAILED, CANCELLED.\n"
     "  --limit N                 at most N jobs (1..200, default 50).\n"
     "  --cursor ID               jobs older than job ID (the next page; printed when there is one).\n"},
    {"show", cmd_show, "show ID", "a job's state, progress, metrics, history and checkpoints",
     "  A fine-tuned job also shows where it started (model or job, checkpoint, step, EMA, head, resize).\n"
     "  With --json: the Job object as GET /api/v1/jobs/{id} returns it.\n"},
    {"watch", cmd_watch, "watch ID [--interval S]", "follow a job live until it ends",
     "  Shows a progress bar (epoch, step, loss, learning rate, images/s, ETA) from the job's event stream\n"
     "  and a line per evaluation and state change. When stdout is not a terminal it prints one line per\n"
     "  update, at most every --interval seconds (default 5; 0 prints every update).\n"
     "  With --json: one JSON object per event, {\"event\", \"id\", \"data\"}, data as the server sent it.\n"
     "  Exit status: 0 SUCCEEDED, 5 FAILED, 6 CANCELLED, 3 if the job was deleted.\n"
     "  A broken connection is retried for up to a minute, resuming after the last event seen.\n"},
    {"logs", cmd_logs, "logs ID [-f]", "print a job's log",
     "  -f, --follow              keep printing new lines until the job ends.\n"
     "  With --json: LogSlice objects {offset, next_offset, eof, text}, one per line.\n"},
    {"cancel", cmd_cancel, "cancel ID", "cancel a queued or running job (it checkpoints first)",
     "  Prints the job's new state (CANCELLING, then CANCELLED once the trainer stopped).\n"},
    {"delete", cmd_delete, "delete ID", "delete a finished job with its metrics, logs and checkpoints",
     "  Running jobs must be cancelled first.\n"},
    {"metrics", cmd_metrics, "metrics ID [NAME] [--csv] [--max-points N] [--start STEP] [--end STEP]",
     "a job's metric series (without NAME: the metric names)",
     "  NAME                      loss, lr, top1, ema_top1, val_loss, img_per_s, ... (omit to list them).\n"
     "  --csv                     comma-separated values with a header row.\n"
     "  --max-points N            at most N points (1..100000, default 1000); longer series come in buckets\n"
     "                            with last, min, max and count.\n"
     "  --start STEP, --end STEP  a range of steps.\n"},
    {"models", cmd_models, "models [NAME]", "list the models being served (with NAME: one model in detail)", ""},
    {"register", cmd_register,
     "register NAME --job ID [--checkpoint best|last|STEP] [--raw] [--max-batch N] [--max-delay-ms MS] [--no-wait]",
     "serve a job's checkpoint as model NAME",
     "  --job ID                  the training job whose checkpoint to serve.\n"
     "  --checkpoint C            best (default), last, or a step number.\n"
     "  --raw                     serve the raw weights even when the checkpoint holds EMA weights.\n"
     "  --max-batch N             requests batched together (1..64, server default 8).\n"
     "  --max-delay-ms MS         how long a batch waits to fill (0..1000, server default 5).\n"
     "  --no-wait                 return at once instead of waiting until the model is READY.\n"},
    {"predict", cmd_predict, "predict MODEL IMAGE... [--top-k K] [--tokens]", "classify JPEG images with a model",
     "  --top-k K                 classes to show per image (1..1000, default 5).\n"
     "  --tokens                  also print the token map: each patch's top class as a letter, with a legend.\n"
     "  Several images are sent in one multipart request. With --json: the server's answer.\n"},
    {"inspect", cmd_inspect, "inspect ID [K] [--step S] [--raw]", "token-level inspection of a job's samples",
     "  Without K: the inspected samples and the evaluations recorded for them.\n"
     "  With K: sample K's target token map and the model's predicted map as letter grids, and its top-5.\n"
     "  --step S                  the evaluation at step S (default: the latest).\n"
     "  --raw                     the raw weights' prediction instead of the EMA's.\n"
     "  `tokenlab samples ...` is the same command under its old name, kept for scripts.\n"},
};
#define NCOMMANDS (sizeof COMMANDS / sizeof COMMANDS[0])

/* Other names of commands, kept so that scripts written for them go on working: the same function,
 * options and output; messages name the word that was typed. */
static const struct {
    const char *alias, *name;
} ALIASES[] = {{"samples", "inspect"}};
#define NALIASES (sizeof ALIASES / sizeof ALIASES[0])

/* Commands left out of the overview and the list of commands: debugging aids for the tests. */
static const command HIDDEN[] = {
    {"palette", cmd_palette, "palette [N]", "the class palette's first N colours (default 1000) as JSON",
     "  Prints [[r, g, b], ...] for classes 0..N-1 (N in 1..100000), the colours of tokenlab/palette.h;\n"
     "  tests/e2e/browser/run.mjs compares them with the dashboard's web/src/palette.js.\n"},
};

static const char *GLOBAL_HELP =
    "Global options (anywhere on the line):\n"
    "  --server URL         the daemon (TOKENLAB_SERVER, config \"server\"; default http://127.0.0.1:8080)\n"
    "  --token TOKEN        API token for changes (TOKENLAB_TOKEN, config \"token\")\n"
    "  --token-file FILE    read the token from FILE, e.g. the daemon's <state>/token\n"
    "                       (TOKENLAB_TOKEN_FILE, config \"token_file\")\n"
    "  --config FILE        config file (TOKENLAB_CONFIG; default ~/.config/tokenlab/config.json),\n"
    "                       a JSON object {\"server\": URL, \"token\": T, \"token_file\": PATH}, all optional\n"
    "  --json               print the server's JSON instead of tables\n"
    "  --no-color           no colours (also NO_COLOR=1)\n"
    "  -h, --help           help (also `tokenlab help COMMAND`)\n"
    "  --version            the client's version\n"
    "Settings: flags beat the environment, which beats the config file; a token beats a token file\n"
    "given at the same level.\n"
    "\n"
    "Exit status:\n"
    "  0    success\n"
    "  1    local problem: a named file cannot be read, a bad config file, an answer not understood\n"
    "  2    usage error: unknown command or option, missing or malformed argument\n"
    "  3    the server refused the request (HTTP 4xx/5xx; its code, field and detail are printed)\n"
    "  4    no connection to the server (is the daemon running? the address tried is printed)\n"
    "  5    the watched or waited-for job FAILED\n"
    "  6    the watched or waited-for job was CANCELLED\n"
    "  130  interrupted (Ctrl-C)\n";

static const command *find_command(const char *name) {
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(COMMANDS[i].name, name) == 0) return &COMMANDS[i];
    for (size_t i = 0; i < sizeof HIDDEN / sizeof HIDDEN[0]; i++)
        if (strcmp(HIDDEN[i].name, name) == 0) return &HIDDEN[i];
    for (size_t i = 0; i < NALIASES; i++)
        if (strcmp(ALIASES[i].alias, name) == 0) return find_command(ALIASES[i].name);
    return NULL;
}

static void print_overview(FILE *f) {
    fprintf(f, "usage: tokenlab [global options] COMMAND [arguments]\n\n"
               "The command-line client of tokenlabd, the LV-ViT token-labeling training daemon.\n\nCommands:\n");
    for (size_t i = 0; i < NCOMMANDS; i++) {
        fprintf(f, "  %-10s %s", COMMANDS[i].name, COMMANDS[i].summary);
        for (size_t k = 0; k < NALIASES; k++)
            if (strcmp(ALIASES[k].name, COMMANDS[i].name) == 0) fprintf(f, " (also `%s`)", ALIASES[k].alias);
        fputc('\n', f);
    }
    fprintf(f, "\n%s\nRun `tokenlab COMMAND --help` for a command's options.\n", GLOBAL_HELP);
}

static void print_command_help(const command *cmd) {
    printf("usage: tokenlab %s\n\n%s.\n\n%s%s%s", cmd->usage, cmd->summary, cmd->help, cmd->help[0] ? "\n" : "",
           GLOBAL_HELP);
}

static const command *g_current;

int usage_error(const cli *c, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "tokenlab %s: ", c && c->cmd ? c->cmd : "");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (g_current) fprintf(stderr, "usage: tokenlab %s\n(see `tokenlab %s --help`)\n", g_current->usage, g_current->name);
    return EX_USAGE;
}

static void on_sigint(int sig) {
    if (api_interrupted) { /* a second Ctrl-C ends the process at once */
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    api_interrupted = 1;
}

/* Global options, recognised anywhere before "--"; the other words are copied to rest. */
typedef struct {
    config_flags cf;
    int json, no_color, help, version;
} globals;

static const char *const VALUED[] = {"--server", "--token", "--token-file", "--config"};

static int take_globals(int argc, char **argv, globals *g, char **rest, int *nrest) {
    int n = 0, ended = 0;
    for (int i = 1; i < argc; i++) {
        char *a = argv[i];
        if (ended) {
            rest[n++] = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            ended = 1;
            rest[n++] = a;
            continue;
        }
        if (!strcmp(a, "--json")) g->json = 1;
        else if (!strcmp(a, "--no-color")) g->no_color = 1;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) g->help = 1;
        else if (!strcmp(a, "--version")) g->version = 1;
        else {
            int matched = 0;
            for (size_t k = 0; k < sizeof VALUED / sizeof VALUED[0] && !matched; k++) {
                size_t len = strlen(VALUED[k]);
                const char *val = NULL;
                if (strcmp(a, VALUED[k]) == 0) {
                    if (i + 1 >= argc) {
                        fprintf(stderr, "tokenlab: %s needs a value (see `tokenlab --help`)\n", VALUED[k]);
                        return EX_USAGE;
                    }
                    val = argv[++i];
                } else if (strncmp(a, VALUED[k], len) == 0 && a[len] == '=') {
                    val = a + len + 1;
                } else {
                    continue;
                }
                matched = 1;
                const char **dst[] = {&g->cf.server, &g->cf.token, &g->cf.token_file, &g->cf.config};
                *dst[k] = val;
            }
            if (!matched) rest[n++] = a;
        }
    }
    *nrest = n;
    return EX_OK;
}

static int run(int argc, char **argv) {
    globals g = {0};
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    if (!rest) return EX_LOCAL;
    int n = 0, rc = take_globals(argc, argv, &g, rest, &n);
    if (rc != EX_OK) {
        free(rest);
        return rc;
    }
    if (g.version) {
        printf("tokenlab %s\n", TOKENLAB_CLIENT_VERSION);
        free(rest);
        return EX_OK;
    }
    /* the command: the first word; `help CMD` is `CMD --help` */
    const char *name = n > 0 ? rest[0] : NULL;
    int first = 1;
    if (name && strcmp(name, "help") == 0) {
        g.help = 1;
        name = n > 1 ? rest[1] : NULL;
        first = 2;
    }
    if (!name || name[0] == '-') {
        if (g.help) {
            print_overview(stdout);
            free(rest);
            return EX_OK;
        }
        if (name && strcmp(name, "--") != 0) fprintf(stderr, "tokenlab: unknown option '%s'\n\n", name);
        else fprintf(stderr, "tokenlab: no command given\n\n");
        print_overview(stderr);
        free(rest);
        return EX_USAGE;
    }
    const command *cmd = find_command(name);
    if (!cmd) {
        fprintf(stderr, "tokenlab: unknown command '%s'; the commands are:", name);
        for (size_t i = 0; i < NCOMMANDS; i++) fprintf(stderr, " %s", COMMANDS[i].name);
        fprintf(stderr, "\n(see `tokenlab --help`)\n");
        free(rest);
        return EX_USAGE;
    }
    if (g.help) {
        print_command_help(cmd);
        free(rest);
        return EX_OK;
    }
    g_current = cmd;
    cli c = {0};
    c.cmd = name; /* the word typed: under an alias, messages name the alias */
    c.json = g.json;
    const char *term = getenv("TERM"), *nc = getenv("NO_COLOR");
    c.color = !g.no_color && !(nc && *nc) && !(term && strcmp(term, "dumb") == 0) && out_tty(stdout);
    rc = config_resolve(&c, &g.cf);
    if (rc == EX_OK) rc = cmd->fn(&c, n - first, rest + first);
    free(rest);
    return rc;
}

int main(int argc, char **argv) {
    if (api_init() != 0) {
        fprintf(stderr, "tokenlab: libcurl failed to initialise\n");
        return EX_LOCAL;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    int rc = run(argc, argv);
    fflush(stdout);
    api_cleanup();
    return rc;
}
