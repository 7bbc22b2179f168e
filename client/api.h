/*
 * api.h: HTTP requests to the daemon (libcurl), with bounded answers.
 *
 * api_do() performs one request and reports what happened without printing;
 * api_call() also explains failures on stderr (connection problems with the
 * address tried and where it came from, server refusals with their code,
 * field pointer and detail). Answers are capped (API_MAX_BODY unless the
 * request says otherwise); streams hand their bytes to a sink instead.
 */
#ifndef TOKENLAB_API_H
#define TOKENLAB_API_H

#include <cjson/cJSON.h>
#include <signal.h>
#include <stddef.h>

#include "cli.h"

#define API_MAX_BODY (32u << 20) /* largest JSON answer accepted */

typedef struct {
    const char *name, *filename, *type; /* a multipart/form-data part */
    const char *data;
    size_t len;
} api_part;

/* Receives the body of a 2xx answer as it arrives; returns nonzero to end the transfer. */
typedef int (*api_sink)(const char *data, size_t n, void *u);

typedef struct {
    const char *method;       /* "GET" when NULL */
    const char *path;         /* "/api/v1/...", appended to the server's address */
    const char *ctype;        /* Content-Type of body */
    const char *body;
    size_t len;
    const api_part *parts;    /* multipart/form-data instead of body when nparts > 0 */
    int nparts;
    const char *header;       /* one extra request header ("Name: value") or NULL */
    long timeout_s;           /* whole request; 0: 60 s; negative: none (streams: stalls of 60 s end it) */
    size_t max_bytes;         /* answer cap; 0: API_MAX_BODY */
    api_sink sink;            /* 2xx bodies go here instead of r->body */
    void *sink_u;
} api_req;

typedef struct {
    long status;              /* HTTP status, 0 when no answer arrived */
    char *body;               /* NUL-terminated answer (non-2xx answers always land here), or NULL */
    size_t len;
    char ctype[128];
    char location[512];
    long retry_after;         /* seconds, -1 when absent */
    int curl_code;
    int stopped;              /* the sink ended the transfer */
    int too_large;            /* the answer exceeded the cap */
    char err[512];            /* why no (complete) answer arrived */
} api_resp;

/* Set by the SIGINT handler that main installs; transfers and waits end when it is set. */
extern volatile sig_atomic_t api_interrupted;

int api_init(void);
void api_cleanup(void);

/* One request. Returns EX_OK when an answer arrived (whatever its status) or the sink ended it,
 * EX_CONNECT when there was no usable connection, EX_LOCAL for local failures (answer too large,
 * out of memory), EX_INTERRUPTED on Ctrl-C. Prints nothing. Free r with api_free. */
int api_do(cli *c, const api_req *q, api_resp *r);

/* Whether a failed api_do had reached the server (the connection broke after the request may
 * have been sent): only then can a retry with the same Idempotency-Key help. */
int api_broke_midway(const api_resp *r);

/* Prints why api_do failed (rc is its return value). */
void api_explain_transport(const cli *c, const api_resp *r, int rc);

/* EX_OK for a 2xx answer; otherwise prints the server's problem (code, field, detail, a hint) and,
 * with --json, the problem document on stdout; returns EX_SERVER. */
int api_explain_status(const cli *c, const api_resp *r);

/* api_do, then both explanations: EX_OK only for a 2xx answer. */
int api_call(cli *c, const api_req *q, api_resp *r);

/* api_call for a JSON answer, parsed into *out (free with cJSON_Delete); EX_LOCAL when it is not
 * JSON. method NULL means GET; body, when given, is sent as application/json. On failure r is
 * already released (api_free may still be called). */
int api_json(cli *c, const char *method, const char *path, const char *body, api_resp *r, cJSON **out);

void api_free(api_resp *r);

/* Percent-encodes s for a path segment or query value into out (truncated to len). */
void api_escape(const char *s, char *out, size_t len);

/* Prints r->body to stdout as it is, with a final newline (for --json). */
void api_print_body(const api_resp *r);

#endif
