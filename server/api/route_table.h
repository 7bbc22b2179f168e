/*
 * route_table.h: the one table of the HTTP API (route_table.c): every
 * (method, path) the daemon answers besides the dashboard's static files,
 * with its auth, handler (api/handlers.h) and body limit. The daemon
 * registers it (tld_routes_register), `tokenlabd routes [--json]` prints it
 * (cmd/cmd_routes.c), and tests/parity/check_openapi.py compares that print
 * with schema/openapi.json. Constant data: any thread may read it.
 */
#ifndef TLD_ROUTE_TABLE_H
#define TLD_ROUTE_TABLE_H

#include <stddef.h>

#include "api/routes.h"
#include "http/http.h"

/* One route. */
typedef struct {
    const char *method, *pattern;
    tld_auth auth;
    tld_handler fn;
    size_t max_body;    /* 0: the daemon's limit */
} tld_route_def;

/* The whole API, in registration order (also the order of the request counters on /metrics). */
extern const tld_route_def tld_route_table[];
extern const size_t tld_route_table_len;

/* Registers every route of the table on R->http, each with R as its user pointer. Before tld_http_start.
 * 0, or -1 when the HTTP layer refuses one. */
int tld_routes_register(tld_routes *R);

/* "public" or "token", as `tokenlabd routes` prints an auth. */
const char *tld_route_auth_name(tld_auth a);

#endif
