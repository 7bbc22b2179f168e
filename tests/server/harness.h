/*
 * harness.h: the whole daemon inside a test process, for the server tests
 * that go through HTTP (tests/server/harness.c): a synthetic dataset, a real
 * SQLite store, the event ring, the job manager, the model registry and the
 * HTTP layer with every route of the route table, on a loopback port; and a
 * small libcurl client to talk to it. One daemon per test program, started by
 * the group setup and stopped by the group teardown, on the test's thread.
 */
#ifndef TLT_HARNESS_H
#define TLT_HARNESS_H
#include <stddef.h>

#include "api/routes.h"
#include "http/http.h"
#include "jobs/events.h"
#include "jobs/jobs.h"
#include "serving/models.h"
#include "store/store.h"

#define TLT_TOKEN "route-test-token-0123456789"

/* The parts of the daemon, in the order tlt_daemon_start makes them. */
extern char g_root[1024], g_state[1100]; /* the test's folder (data root) and the daemon's state folder */
extern tld_store *g_store;
extern tld_events *g_ev;
extern tld_jobs *g_jobs;
extern tld_models *g_models;
extern tld_http *g_http;
extern tld_routes g_routes;
extern int g_port;

/* Makes $TL_TEST_TMP/<name>_<pid> with a synthetic dataset (3 classes, 16 + 8 pictures of 32 px, under
 * synth/) and starts the daemon on it (one job at a time, one thread per job, token TLT_TOKEN). 0 or -1
 * (with a message on stderr). */
int tlt_daemon_start(const char *name);
/* Stops the daemon in cmd_serve.c's order and removes the folder. 0 or -1. */
int tlt_daemon_stop(void);

typedef struct {
    char *data;
    size_t len;
} buf_t;

typedef struct {
    long status;
    buf_t body, headers;
    char ctype[128];
} resp_t;

void resp_free(resp_t *r);
/* One request to the daemon. auth: NULL none, else the bearer token to send. ctype: Content-Type of body,
 * may be NULL. extra_header: one more "Name: value" line, may be NULL. Fails the test when the request
 * cannot be made. */
void http(const char *method, const char *path, const char *auth, const char *ctype, const void *body,
          size_t body_len, const char *extra_header, resp_t *out);
/* The value of response header `name` (case-insensitive), or NULL; into out. */
const char *resp_header(const resp_t *r, const char *name, char *out, size_t outlen);
void sleep_ms(int ms);
/* GET path without a token. */
void get(const char *path, resp_t *out);
/* The reply is JSON with this status (the test fails otherwise); returns it parsed. */
struct cJSON *expect_json(resp_t *r, long status, const char *what);
/* The reply is a problem document with this status and code, and the pointer (when not NULL) given;
 * frees r. The test fails otherwise. */
void expect_problem(resp_t *r, long status, const char *code, const char *pointer, const char *what);

#endif
