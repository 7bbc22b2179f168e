/*
 * cmd_token.c: `tokenlabd token`: read-only API tokens, kept in the state
 * folder's database by their SHA-256 (schema/store_v6.sql).
 *
 *   tokenlabd token add --read NAME    makes a token, records its hash, prints the token once
 *   tokenlabd token list [--json]      every token: name, role, created, revoked
 *   tokenlabd token revoke NAME        the token stops working with the daemon's next request
 *   --state DIR (TOKENLAB_STATE, default ./tokenlab-data) names the state folder, as for serve.
 *
 * Owns the store it opens for the command (one thread); a running daemon
 * shares the database file (WAL) and sees each change at its next lookup.
 * The admin token (<state>/token or TOKENLAB_TOKEN) is not managed here.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>

#include "cmd/commands.h"
#include "http/sha256.h"
#include "store/store.h"

#define TOKEN_PREFIX "tlr_" /* read-only tokens say what they are, so secret scanners and people can tell */
#define TOKEN_LIST_MAX 4096

static const char *USAGE = "usage: tokenlabd token add --read NAME [--state DIR]\n"
                           "       tokenlabd token list [--json] [--state DIR]\n"
                           "       tokenlabd token revoke NAME [--state DIR]\n"
                           "A read-only token opens reads and inference to clients of a daemon bound to an address\n"
                           "that is not loopback; it cannot submit, cancel, delete or upload (that takes the admin\n"
                           "token in <state>/token). NAME: 1 to 64 of A-Z a-z 0-9 . _ -. The state folder is\n"
                           "--state, else TOKENLAB_STATE, else ./tokenlab-data.\n";

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Writes the time ms (UTC) as ISO 8601 into out. */
static void iso_time(int64_t ms, char *out, size_t n) {
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Opens <state>/tokenlab.db, which must exist (the daemon made it): a typo in --state must not make a new,
 * empty store that no daemon reads. */
static tld_store *open_store(const char *state) {
    char path[1200], err[512] = "";
    snprintf(path, sizeof path, "%s/tokenlab.db", state);
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "tokenlabd token: no database at %s (%s); start tokenlabd with --state %s once, or name "
                        "the daemon's state folder with --state\n", path, strerror(errno), state);
        return NULL;
    }
    tld_store *s = tld_store_open(path, err, sizeof err);
    if (!s) fprintf(stderr, "tokenlabd token: %s: %s\n", path, err);
    return s;
}

static int token_add(tld_store *s, const char *name) {
    uint8_t rnd[32], hash[TLD_SHA256_BYTES];
    char token[sizeof TOKEN_PREFIX + 2 * sizeof rnd], err[512] = "";
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) {
        fprintf(stderr, "tokenlabd token: no randomness for a token: %s\n", strerror(errno));
        return 1;
    }
    memcpy(token, TOKEN_PREFIX, sizeof TOKEN_PREFIX - 1);
    for (size_t i = 0; i < sizeof rnd; i++) snprintf(token + sizeof TOKEN_PREFIX - 1 + 2 * i, 3, "%02x", rnd[i]);
    tld_sha256(token, strlen(token), hash);
    if (tld_store_token_add(s, name, "read", hash, now_ms(), err, sizeof err) != 0) {
        fprintf(stderr, "tokenlabd token add: %s\n", err);
        return 1;
    }
    printf("%s\n", token);
    fprintf(stderr, "read-only token '%s' created; it is shown only now (the daemon keeps its SHA-256). Send it "
                    "as 'Authorization: Bearer <token>'.\n", name);
    return 0;
}

static int token_list(tld_store *s, int json) {
    static tld_token_row rows[TOKEN_LIST_MAX];
    char err[512] = "";
    int n = 0;
    if (tld_store_token_list(s, rows, TOKEN_LIST_MAX, &n, err, sizeof err) != 0) {
        fprintf(stderr, "tokenlabd token list: %s\n", err);
        return 1;
    }
    if (json) {
        cJSON *arr = cJSON_CreateArray();
        for (int i = 0; arr && i < n; i++) {
            char c[32], r[32];
            iso_time(rows[i].created_ms, c, sizeof c);
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "name", rows[i].name);
            cJSON_AddStringToObject(o, "role", rows[i].role);
            cJSON_AddStringToObject(o, "created", c);
            if (rows[i].revoked_ms) {
                iso_time(rows[i].revoked_ms, r, sizeof r);
                cJSON_AddStringToObject(o, "revoked", r);
            } else {
                cJSON_AddNullToObject(o, "revoked");
            }
            cJSON_AddItemToArray(arr, o);
        }
        char *txt = arr ? cJSON_Print(arr) : NULL;
        cJSON_Delete(arr);
        if (!txt) {
            fprintf(stderr, "tokenlabd token list: out of memory\n");
            return 1;
        }
        printf("%s\n", txt);
        cJSON_free(txt);
        return 0;
    }
    printf("%-24s %-6s %-21s %s\n", "NAME", "ROLE", "CREATED", "REVOKED");
    for (int i = 0; i < n; i++) {
        char c[32], r[32] = "-";
        iso_time(rows[i].created_ms, c, sizeof c);
        if (rows[i].revoked_ms) iso_time(rows[i].revoked_ms, r, sizeof r);
        printf("%-24s %-6s %-21s %s\n", rows[i].name, rows[i].role, c, r);
    }
    return 0;
}

static int token_revoke(tld_store *s, const char *name) {
    char err[512] = "";
    if (tld_store_token_revoke(s, name, now_ms(), err, sizeof err) != 0) {
        if (!strcmp(err, "not found"))
            fprintf(stderr, "tokenlabd token revoke: no valid token is named '%s' (see tokenlabd token list)\n", name);
        else
            fprintf(stderr, "tokenlabd token revoke: %s\n", err);
        return 1;
    }
    fprintf(stderr, "token '%s' revoked\n", name);
    return 0;
}

int cmd_token(int argc, char **argv) {
    const char *verb = argc > 0 ? argv[0] : NULL, *name = NULL, *state = getenv("TOKENLAB_STATE");
    int json = 0, read_role = 0;
    if (!verb || !strcmp(verb, "--help") || !strcmp(verb, "-h")) {
        fputs(USAGE, verb ? stdout : stderr);
        return verb ? 0 : 2;
    }
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--state") && i + 1 < argc) {
            state = argv[++i];
        } else if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else if (!strcmp(argv[i], "--read")) {
            read_role = 1;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "tokenlabd token: unknown option %s\n%s", argv[i], USAGE);
            return 2;
        } else if (!name) {
            name = argv[i];
        } else {
            fprintf(stderr, "tokenlabd token: one NAME only, got '%s' too\n%s", argv[i], USAGE);
            return 2;
        }
    }
    if (!state || !*state) state = "tokenlab-data";
    int add = !strcmp(verb, "add"), list = !strcmp(verb, "list"), revoke = !strcmp(verb, "revoke");
    if (!add && !list && !revoke) {
        fprintf(stderr, "tokenlabd token: unknown action '%s'\n%s", verb, USAGE);
        return 2;
    }
    if ((add || revoke) && !name) {
        fprintf(stderr, "tokenlabd token %s: NAME is missing\n%s", verb, USAGE);
        return 2;
    }
    if (add && !read_role) {
        fprintf(stderr, "tokenlabd token add: give the role: --read (the only role a new token can have; the admin "
                        "token is <state>/token)\n");
        return 2;
    }
    if (list && name) {
        fprintf(stderr, "tokenlabd token list: takes no NAME\n");
        return 2;
    }
    tld_store *s = open_store(state);
    if (!s) return 1;
    int rc = add ? token_add(s, name) : list ? token_list(s, json) : token_revoke(s, name);
    tld_store_close(s);
    return rc;
}
