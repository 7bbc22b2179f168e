/*
 * config.c: resolves the server address and API token of one invocation
 * (see config.h for the order). The config file is a small JSON object:
 *
 *   {"server": "http://127.0.0.1:8080", "token": "...", "token_file": "/path/to/state/token"}
 *
 * read from --config FILE, $TOKENLAB_CONFIG, or $XDG_CONFIG_HOME/tokenlab/config.json
 * (default ~/.config/tokenlab/config.json); a missing default file is not an error.
 * Everything read from disk is size-capped; tokens must be printable ASCII
 * without spaces (they go into an HTTP header).
 */
#include "config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define CONFIG_MAX (64u * 1024u)

void config_default_path(char *out, size_t len) {
    const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
    if (xdg && *xdg) snprintf(out, len, "%s/tokenlab/config.json", xdg);
    else snprintf(out, len, "%s/.config/tokenlab/config.json", home && *home ? home : ".");
}

/* Reads a whole small file into a NUL-terminated malloc'd buffer; NULL with errno on failure
 * (EFBIG when it is larger than cap). */
static char *slurp(const char *path, size_t cap, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = malloc(cap + 1);
    if (!buf) {
        fclose(f);
        errno = ENOMEM;
        return NULL;
    }
    size_t n = fread(buf, 1, cap + 1, f);
    int bad = ferror(f);
    fclose(f);
    if (bad || n > cap) {
        free(buf);
        errno = bad ? EIO : EFBIG;
        return NULL;
    }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

static int token_ok(const char *t) {
    if (!*t) return 0;
    for (const unsigned char *p = (const unsigned char *)t; *p; p++)
        if (*p <= ' ' || *p >= 127) return 0;
    return 1;
}

static int set_token(cli *c, const char *tok, const char *from, int bad_code) {
    if (strlen(tok) >= sizeof c->token || !token_ok(tok)) {
        fprintf(stderr, "tokenlab: the API token from %s is not usable (1..%zu printable characters, no spaces)\n",
                from, sizeof c->token - 1);
        return bad_code;
    }
    snprintf(c->token, sizeof c->token, "%s", tok);
    snprintf(c->token_from, sizeof c->token_from, "%.500s", from);
    return EX_OK;
}

/* The token in a file (first line, surrounding whitespace removed). */
static int token_from_file(cli *c, const char *path, const char *how) {
    char from[700];
    snprintf(from, sizeof from, "%s %s", how, path);
    char *buf = slurp(path, 4096, NULL);
    if (!buf) {
        fprintf(stderr, "tokenlab: cannot read the token file %s (%s): %s\n", path, how,
                errno == EFBIG ? "larger than 4 KiB, not a token file" : strerror(errno));
        return EX_LOCAL;
    }
    char *s = buf;
    while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n') s++;
    s[strcspn(s, "\r\n")] = 0;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t')) s[--n] = 0;
    int rc = set_token(c, s, from, EX_LOCAL);
    free(buf);
    return rc;
}

static int set_server(cli *c, const char *url, const char *from, int bad_code) {
    char tmp[sizeof c->server];
    while (*url == ' ' || *url == '\t') url++;
    if (!*url) {
        fprintf(stderr, "tokenlab: the server address from %s is empty\n", from);
        return bad_code;
    }
    int n = strstr(url, "://") ? snprintf(tmp, sizeof tmp, "%s", url) : snprintf(tmp, sizeof tmp, "http://%s", url);
    if (n < 0 || (size_t)n >= sizeof tmp) {
        fprintf(stderr, "tokenlab: the server address from %s is too long\n", from);
        return bad_code;
    }
    if (strncasecmp(tmp, "http://", 7) != 0 && strncasecmp(tmp, "https://", 8) != 0) {
        fprintf(stderr, "tokenlab: the server address '%s' (from %s) must start with http:// or https://\n", url, from);
        return bad_code;
    }
    for (const unsigned char *p = (const unsigned char *)tmp; *p; p++)
        if (*p <= ' ' || *p >= 127) {
            fprintf(stderr, "tokenlab: the server address '%s' (from %s) holds spaces or control characters\n", url,
                    from);
            return bad_code;
        }
    size_t len = strlen(tmp);
    while (len > 0 && tmp[len - 1] == '/') tmp[--len] = 0;
    if (len >= 7 && strcmp(tmp + len - 7, "/api/v1") == 0) tmp[len -= 7] = 0; /* the API root is added per call */
    while (len > 0 && tmp[len - 1] == '/') tmp[--len] = 0;
    if (strlen(tmp) <= strlen("http://") || tmp[strcspn(tmp, ":") + 3] == 0) {
        fprintf(stderr, "tokenlab: the server address '%s' (from %s) names no host\n", url, from);
        return bad_code;
    }
    snprintf(c->server, sizeof c->server, "%s", tmp);
    snprintf(c->server_from, sizeof c->server_from, "%.500s", from);
    return EX_OK;
}

typedef struct {
    char *server, *token, *token_file; /* point into the parsed document */
    cJSON *doc;
} file_cfg;

static int read_config(cli *c, const char *path, int required, file_cfg *fc) {
    memset(fc, 0, sizeof *fc);
    size_t len;
    char *buf = slurp(path, CONFIG_MAX, &len);
    if (!buf) {
        if (!required && errno == ENOENT) return EX_OK;
        fprintf(stderr, "tokenlab: cannot read the config file %s: %s\n", path,
                errno == EFBIG ? "larger than 64 KiB" : strerror(errno));
        return EX_LOCAL;
    }
    const char *end = NULL;
    fc->doc = cJSON_ParseWithLengthOpts(buf, len + 1, &end, 1); /* + its NUL: nothing may follow */
    if (!cJSON_IsObject(fc->doc)) {
        fprintf(stderr, "tokenlab: the config file %s is not a JSON object%s (expected {\"server\": URL, \"token\": "
                        "TOKEN, \"token_file\": PATH}, each optional)\n",
                path, fc->doc ? "" : " (not valid JSON)");
        free(buf);
        cJSON_Delete(fc->doc);
        fc->doc = NULL;
        return EX_LOCAL;
    }
    free(buf);
    snprintf(c->config_path, sizeof c->config_path, "%s", path);
    for (cJSON *it = fc->doc->child; it; it = it->next) {
        char **dst = NULL;
        if (strcmp(it->string, "server") == 0) dst = &fc->server;
        else if (strcmp(it->string, "token") == 0) dst = &fc->token;
        else if (strcmp(it->string, "token_file") == 0) dst = &fc->token_file;
        else {
            fprintf(stderr, "tokenlab: warning: the config file %s has an unknown key '%s' (ignored)\n", path,
                    it->string);
            continue;
        }
        if (!cJSON_IsString(it)) {
            fprintf(stderr, "tokenlab: the config file %s: \"%s\" must be a string\n", path, it->string);
            cJSON_Delete(fc->doc);
            fc->doc = NULL;
            return EX_LOCAL;
        }
        *dst = it->valuestring;
    }
    return EX_OK;
}

/* A token_file from the config file: ~/ expands to $HOME, a relative path is relative to the config's folder. */
static void config_relative(const char *cfg_path, const char *p, char *out, size_t len) {
    const char *home = getenv("HOME");
    if (p[0] == '~' && p[1] == '/' && home) {
        snprintf(out, len, "%s/%s", home, p + 2);
    } else if (p[0] != '/' && strrchr(cfg_path, '/')) {
        int dir = (int)(strrchr(cfg_path, '/') - cfg_path);
        snprintf(out, len, "%.*s/%s", dir, cfg_path, p);
    } else {
        snprintf(out, len, "%s", p);
    }
}

int config_resolve(cli *c, const config_flags *f) {
    char path[1024], from[1100];
    int required = 1;
    const char *env_cfg = getenv("TOKENLAB_CONFIG");
    if (f->config) snprintf(path, sizeof path, "%s", f->config);
    else if (env_cfg && *env_cfg) snprintf(path, sizeof path, "%s", env_cfg);
    else {
        config_default_path(path, sizeof path);
        required = 0;
    }
    file_cfg fc;
    int rc = read_config(c, path, required, &fc);
    if (rc != EX_OK) return rc;

    const char *env_server = getenv("TOKENLAB_SERVER");
    snprintf(from, sizeof from, "config file %s", path);
    if (f->server) rc = set_server(c, f->server, "--server", EX_USAGE);
    else if (env_server && *env_server) rc = set_server(c, env_server, "TOKENLAB_SERVER", EX_USAGE);
    else if (fc.server) rc = set_server(c, fc.server, from, EX_LOCAL);
    else rc = set_server(c, TOKENLAB_DEFAULT_SERVER, "the default", EX_LOCAL);

    const char *env_tok = getenv("TOKENLAB_TOKEN"), *env_tokf = getenv("TOKENLAB_TOKEN_FILE");
    if (rc != EX_OK) {
    } else if (f->token) {
        rc = set_token(c, f->token, "--token", EX_USAGE);
    } else if (f->token_file) {
        rc = token_from_file(c, f->token_file, "--token-file");
    } else if (env_tok && *env_tok) {
        rc = set_token(c, env_tok, "TOKENLAB_TOKEN", EX_USAGE);
    } else if (env_tokf && *env_tokf) {
        rc = token_from_file(c, env_tokf, "TOKENLAB_TOKEN_FILE");
    } else if (fc.token) {
        rc = set_token(c, fc.token, from, EX_LOCAL);
    } else if (fc.token_file) {
        char p[1100];
        config_relative(path, fc.token_file, p, sizeof p);
        rc = token_from_file(c, p, "token_file of the config file");
    }
    cJSON_Delete(fc.doc);
    return rc;
}
