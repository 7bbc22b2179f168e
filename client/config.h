/*
 * config.h: where the client finds its server address and API token.
 *
 * Order, first found wins: command-line flags, then the environment, then the
 * config file. The token can also come from a file holding it (the daemon's
 * <state>/token): --token-file / TOKENLAB_TOKEN_FILE / "token_file" in the
 * config, each just after the plain token of the same level.
 */
#ifndef TOKENLAB_CONFIG_H
#define TOKENLAB_CONFIG_H

#include "cli.h"

typedef struct {
    const char *server;     /* --server */
    const char *token;      /* --token */
    const char *token_file; /* --token-file */
    const char *config;     /* --config */
} config_flags;

#define TOKENLAB_DEFAULT_SERVER "http://127.0.0.1:8080"

/* Fills c->server, c->token and their origins. Returns EX_OK, or EX_USAGE / EX_LOCAL after printing
 * what is wrong (a malformed URL or token, an unreadable or malformed config or token file). */
int config_resolve(cli *c, const config_flags *f);

/* The config file used when neither --config nor TOKENLAB_CONFIG names one. */
void config_default_path(char *out, size_t len);

#endif
