/*
 * cli.h: what every part of the `tokenlab` client shares: the exit codes, the
 * resolved settings of one invocation (server, token, output mode) and the
 * entry point of every command.
 *
 * Commands are functions `int cmd_x(cli *c, int argc, char **argv)` that get
 * the words after the command name (global options already removed) and
 * return the process exit status; nothing below main() calls exit().
 */
#ifndef TOKENLAB_CLI_H
#define TOKENLAB_CLI_H

#include <stddef.h>
#include <stdint.h>

#define TOKENLAB_CLIENT_VERSION "0.1.0"

/* Exit statuses (documented in `tokenlab --help` and client/README.md). */
enum {
    EX_OK = 0,        /* success */
    EX_LOCAL = 1,     /* local problem: a named file cannot be read, bad config file, unreadable server answer */
    EX_USAGE = 2,     /* usage error: unknown command or option, missing or malformed argument */
    EX_SERVER = 3,    /* the server refused the request (HTTP 4xx/5xx) */
    EX_CONNECT = 4,   /* no connection: daemon not running, wrong address, timeout */
    EX_FAILED = 5,    /* the watched or waited-for job ended FAILED */
    EX_CANCELLED = 6, /* the watched or waited-for job ended CANCELLED */
    EX_INTERRUPTED = 130 /* Ctrl-C */
};

typedef struct {
    char server[512];      /* base URL, no trailing slash, e.g. http://127.0.0.1:8080 */
    char server_from[600]; /* where it came from: "--server", "TOKENLAB_SERVER", "config file X", "default" */
    char token[256];       /* "" when none */
    char token_from[600];
    char config_path[1024]; /* the config file that was read, "" when none */
    int json;              /* --json: print the server's JSON */
    int color;             /* colours on a terminal (not with NO_COLOR or --no-color) */
    const char *cmd;       /* the command's name, for messages */
} cli;

/* Every command. argv[0] is the first word after the command name. */
int cmd_submit(cli *c, int argc, char **argv);
int cmd_jobs(cli *c, int argc, char **argv);
int cmd_show(cli *c, int argc, char **argv);
int cmd_watch(cli *c, int argc, char **argv);
int cmd_logs(cli *c, int argc, char **argv);
int cmd_cancel(cli *c, int argc, char **argv);
int cmd_delete(cli *c, int argc, char **argv);
int cmd_metrics(cli *c, int argc, char **argv);
int cmd_models(cli *c, int argc, char **argv);
int cmd_register(cli *c, int argc, char **argv);
int cmd_predict(cli *c, int argc, char **argv);
int cmd_inspect(cli *c, int argc, char **argv); /* also run as `samples`, its old name */
int cmd_palette(cli *c, int argc, char **argv); /* hidden: the class palette as JSON, for tests */

#endif
