/*
 * cmd_serve.c: `tokenlabd serve` (the default subcommand): the daemon.
 *
 * Owns the daemon's configuration (flags, then TOKENLAB_* environment, then
 * an optional JSON config file, then defaults), the state folder with its
 * database and API token, and the start-up and shutdown order of the
 * components. The main thread only waits for a signal: the handlers set a
 * flag and nothing else. Shutdown: event streams are closed, running jobs
 * finish their step, checkpoint and return to QUEUED, the HTTP server stops,
 * the store flushes and closes.
 */
#include "cmd/commands.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "api/datasets.h"
#include "jobs/events.h"
#include "http/http.h"
#include "http/sha256.h"
#include "jobs/jobs.h"
#include "jobs/mpi_job.h"
#include "api/route_table.h"
#include "api/routes.h"
#include "http/static.h"
#include "store/store.h"

extern const char tld_openapi_json[]; /* generated from schema/openapi.json at build time */

static volatile sig_atomic_t g_quit;
static void on_signal(int sig) {
    (void)sig;
    g_quit = 1;
}

#define SERVE_MAX_ORIGINS 16 /* --allow-origin values */

typedef struct {
    char bind[64];
    int port;
    char state_dir[1024];
    char data_root[1024];
    int max_running;
    int threads_per_job;
    long long max_body;
    int timeout_s;
    int max_connections;     /* clients held at once */
    int per_client;          /* connections per client address */
    int handler_threads;
    int header_timeout_s;
    int max_attempts;        /* attempts in a row without progress before a job fails */
    char token[128];         /* from TOKENLAB_TOKEN, else the token file */
    char web_dir[1024];      /* the built dashboard; "" = TL_WEB_DIST (web/CMakeLists.txt) */
    char mpi_hostfile[1024]; /* "" = no distributed jobs */
    const char *mpi_args[TLD_MPI_ARGS]; /* --mpi-arg values (pointers into argv) */
    int n_mpi_args;
    const char *origins[SERVE_MAX_ORIGINS + 1]; /* --allow-origin values (pointers into argv), NULL-terminated */
    int n_origins;
    int public_read;         /* --public-read: off loopback, reads and inference without the token */
} serve_cfg;

static const char *USAGE =
    "usage: tokenlabd serve [options]        (also the default with no subcommand)\n"
    "  --bind ADDR            address to listen on (TOKENLAB_BIND, default 127.0.0.1)\n"
    "  --port N               port (TOKENLAB_PORT, default 8080; 0 = any free port)\n"
    "  --state DIR            state folder: database, token, runs (TOKENLAB_STATE, default ./tokenlab-data)\n"
    "  --data-root DIR        job specs name datasets relative to it (TOKENLAB_DATA_ROOT, default .)\n"
    "  --max-running N        jobs that train at once (TOKENLAB_MAX_RUNNING, default 1)\n"
    "  --threads-per-job N    compute threads per job (TOKENLAB_THREADS_PER_JOB, default cores/max-running)\n"
    "  --max-body BYTES       request body limit (TOKENLAB_MAX_BODY, default 16777216)\n"
    "  --timeout S            idle connection timeout (TOKENLAB_TIMEOUT, default 30)\n"
    "  --max-clients N        connections held at once; past it 503 (TOKENLAB_MAX_CLIENTS, default 10000)\n"
    "  --per-client N         connections one client address may hold (TOKENLAB_PER_CLIENT, default 1024)\n"
    "  --handler-threads N    threads that run request handlers (TOKENLAB_HANDLER_THREADS, default 16)\n"
    "  --header-timeout S     a request's headers must arrive within S (TOKENLAB_HEADER_TIMEOUT, default 10)\n"
    "  --max-attempts N       a job fails after N attempts in a row that made no progress, each ended by a\n"
    "                         restart or a lost rank (TOKENLAB_MAX_ATTEMPTS, default 3)\n"
    "  --web-dir DIR          the built dashboard served at / (TOKENLAB_WEB_DIR, default: the build's web/dist)\n"
    "  --mpi-hostfile FILE    run jobs whose spec has \"distributed\": {\"ranks\": N} with Open MPI's mpirun\n"
    "                         on the hosts of FILE, an Open MPI hostfile: lines `host [slots=K]`, # comments\n"
    "                         (TOKENLAB_MPI_HOSTFILE; default: none, such jobs are refused)\n"
    "  --allow-origin ORIGIN  a web origin (scheme://host[:port]) whose pages may send changing requests,\n"
    "                         besides the daemon's own address (repeat it); others get 403\n"
    "  --public-read          bound to an address that is not loopback, every route needs the token;\n"
    "                         with this, reads and inference stay open (TOKENLAB_PUBLIC_READ=1)\n"
    "  --mpi-arg ARG          one more argument for every mpirun (repeat it; e.g. --mpi-arg --mca\n"
    "                         --mpi-arg btl_tcp_if_include --mpi-arg eth0)\n"
    "  --config FILE          JSON object with any of: bind, port, state, data_root, max_running,\n"
    "                         threads_per_job, max_body, timeout, max_clients, per_client, handler_threads,\n"
    "                         header_timeout, max_attempts, web_dir, mpi_hostfile\n"
    "The admin API token (every route) is read from TOKENLAB_TOKEN or <state>/token, created (mode\n"
    "0600) on first start; read-only tokens (reads and inference): `tokenlabd token add --read NAME`.\n"
    "OpenBLAS's kernels: SkylakeX on AVX-512 CPUs (over an inherited\n"
    "OPENBLAS_CORETYPE naming an older family); TL_BLAS_CORETYPE=NAME chooses another.\n";

static int set_int(const char *name, const char *v, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (!*v || *end || errno || x < lo || x > hi) {
        fprintf(stderr, "tokenlabd serve: %s must be an integer in %lld..%lld, got '%s'\n", name, lo, hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

/* Applies one setting by key (from a flag, the environment or the config file). */
static int apply(serve_cfg *c, const char *key, const char *v) {
    long long x;
    if (!strcmp(key, "bind")) snprintf(c->bind, sizeof c->bind, "%s", v);
    else if (!strcmp(key, "port")) { if (set_int(key, v, 0, 65535, &x)) return -1; c->port = (int)x; }
    else if (!strcmp(key, "state")) snprintf(c->state_dir, sizeof c->state_dir, "%s", v);
    else if (!strcmp(key, "data_root")) snprintf(c->data_root, sizeof c->data_root, "%s", v);
    else if (!strcmp(key, "max_running")) { if (set_int(key, v, 1, 64, &x)) return -1; c->max_running = (int)x; }
    else if (!strcmp(key, "threads_per_job")) { if (set_int(key, v, 0, 256, &x)) return -1; c->threads_per_job = (int)x; }
    else if (!strcmp(key, "max_body")) { if (set_int(key, v, 1024, 1LL << 34, &x)) return -1; c->max_body = x; }
    else if (!strcmp(key, "timeout")) { if (set_int(key, v, 1, 3600, &x)) return -1; c->timeout_s = (int)x; }
    else if (!strcmp(key, "max_clients")) { if (set_int(key, v, 16, 1000000, &x)) return -1; c->max_connections = (int)x; }
    else if (!strcmp(key, "per_client")) { if (set_int(key, v, 1, 1000000, &x)) return -1; c->per_client = (int)x; }
    else if (!strcmp(key, "handler_threads")) { if (set_int(key, v, 1, 1024, &x)) return -1; c->handler_threads = (int)x; }
    else if (!strcmp(key, "header_timeout")) { if (set_int(key, v, 1, 3600, &x)) return -1; c->header_timeout_s = (int)x; }
    else if (!strcmp(key, "max_attempts")) { if (set_int(key, v, 1, 1000, &x)) return -1; c->max_attempts = (int)x; }
    else if (!strcmp(key, "web_dir")) snprintf(c->web_dir, sizeof c->web_dir, "%s", v);
    else if (!strcmp(key, "mpi_hostfile")) snprintf(c->mpi_hostfile, sizeof c->mpi_hostfile, "%s", v);
    else {
        fprintf(stderr, "tokenlabd serve: unknown setting '%s'\n", key);
        return -1;
    }
    return 0;
}

static int load_config_file(serve_cfg *c, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "tokenlabd serve: --config %s: %s\n", path, strerror(errno));
        return -1;
    }
    char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    cJSON *o = cJSON_ParseWithOpts(buf, NULL, 1);
    if (!cJSON_IsObject(o)) {
        fprintf(stderr, "tokenlabd serve: --config %s: not a JSON object\n", path);
        cJSON_Delete(o);
        return -1;
    }
    int rc = 0;
    for (cJSON *it = o->child; it && rc == 0; it = it->next) {
        char v[1024];
        if (cJSON_IsString(it)) snprintf(v, sizeof v, "%s", it->valuestring);
        else if (cJSON_IsNumber(it)) snprintf(v, sizeof v, "%.0f", it->valuedouble);
        else {
            fprintf(stderr, "tokenlabd serve: --config %s: %s must be a string or a number\n", path, it->string);
            rc = -1;
            break;
        }
        rc = apply(c, it->string, v);
    }
    cJSON_Delete(o);
    return rc;
}

static const struct {
    const char *flag, *env, *key;
} OPTS[] = {
    {"--bind", "TOKENLAB_BIND", "bind"},           {"--port", "TOKENLAB_PORT", "port"},
    {"--state", "TOKENLAB_STATE", "state"},        {"--data-root", "TOKENLAB_DATA_ROOT", "data_root"},
    {"--max-running", "TOKENLAB_MAX_RUNNING", "max_running"},
    {"--threads-per-job", "TOKENLAB_THREADS_PER_JOB", "threads_per_job"},
    {"--max-body", "TOKENLAB_MAX_BODY", "max_body"}, {"--timeout", "TOKENLAB_TIMEOUT", "timeout"},
    {"--max-clients", "TOKENLAB_MAX_CLIENTS", "max_clients"}, {"--per-client", "TOKENLAB_PER_CLIENT", "per_client"},
    {"--handler-threads", "TOKENLAB_HANDLER_THREADS", "handler_threads"},
    {"--header-timeout", "TOKENLAB_HEADER_TIMEOUT", "header_timeout"},
    {"--max-attempts", "TOKENLAB_MAX_ATTEMPTS", "max_attempts"},
    {"--web-dir", "TOKENLAB_WEB_DIR", "web_dir"},
    {"--mpi-hostfile", "TOKENLAB_MPI_HOSTFILE", "mpi_hostfile"},
};
#define NOPTS (sizeof OPTS / sizeof OPTS[0])

static int parse_args(serve_cfg *c, int argc, char **argv) {
    *c = (serve_cfg){.bind = "127.0.0.1", .port = 8080, .state_dir = "tokenlab-data", .data_root = ".",
                     .max_running = 1, .max_body = 16 << 20, .timeout_s = 30, .max_connections = 10000,
                     .per_client = 1024, .handler_threads = 16, .header_timeout_s = 10,
                     .max_attempts = 3};
    const char *config = NULL;
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--config") && i + 1 < argc) config = argv[i + 1];
    if (config && load_config_file(c, config) != 0) return -1;
    for (size_t k = 0; k < NOPTS; k++) {
        const char *v = getenv(OPTS[k].env);
        if (v && *v && apply(c, OPTS[k].key, v) != 0) return -1;
    }
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(USAGE, stdout);
            return 1;
        }
        if (!strcmp(argv[i], "--config")) {
            i++;
            continue;
        }
        if (!strcmp(argv[i], "--public-read")) {
            c->public_read = 1;
            continue;
        }
        if (!strcmp(argv[i], "--allow-origin")) {
            if (i + 1 >= argc || c->n_origins >= SERVE_MAX_ORIGINS) {
                fprintf(stderr, "tokenlabd serve: --allow-origin needs a value (at most %d of them)\n",
                        SERVE_MAX_ORIGINS);
                return -1;
            }
            const char *o = argv[++i];
            if (strncmp(o, "http://", 7) && strncmp(o, "https://", 8)) {
                fprintf(stderr, "tokenlabd serve: --allow-origin '%s' must be scheme://host[:port] (http or https)\n", o);
                return -1;
            }
            c->origins[c->n_origins++] = o;
            continue;
        }
        if (!strcmp(argv[i], "--mpi-arg")) {
            if (i + 1 >= argc || c->n_mpi_args >= TLD_MPI_ARGS) {
                fprintf(stderr, "tokenlabd serve: --mpi-arg needs a value (at most %d of them)\n", TLD_MPI_ARGS);
                return -1;
            }
            c->mpi_args[c->n_mpi_args++] = argv[++i];
            continue;
        }
        size_t k = 0;
        while (k < NOPTS && strcmp(argv[i], OPTS[k].flag) != 0) k++;
        if (k == NOPTS) {
            fprintf(stderr, "tokenlabd serve: unknown option %s (see --help)\n", argv[i]);
            return -1;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "tokenlabd serve: %s needs a value\n", argv[i]);
            return -1;
        }
        if (apply(c, OPTS[k].key, argv[++i]) != 0) return -1;
    }
    const char *t = getenv("TOKENLAB_TOKEN");
    if (t && *t) snprintf(c->token, sizeof c->token, "%s", t);
    const char *pr = getenv("TOKENLAB_PUBLIC_READ");
    if (pr && !strcmp(pr, "1")) c->public_read = 1;
    return 0;
}

/* tld_http_read_token_fn over the store: the token's SHA-256 looked up in api_tokens (tokenlabd token). */
static tld_token_status read_token(void *user, const char *tok, size_t len, char *name, size_t namelen) {
    uint8_t hash[TLD_SHA256_BYTES];
    tld_token_row row;
    char err[256] = "";
    tld_sha256(tok, len, hash);
    int rc = tld_store_token_find(user, hash, &row, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "tokenlabd serve: token lookup: %s\n", err);
        return TLD_TOKEN_ERROR;
    }
    if (rc > 0) return TLD_TOKEN_UNKNOWN;
    snprintf(name, namelen, "%s", row.name);
    return row.revoked_ms ? TLD_TOKEN_REVOKED : TLD_TOKEN_VALID;
}

/* Reads <state>/token, or creates it with a random token (mode 0600). */
static int load_token(serve_cfg *c, char *path, size_t plen) {
    snprintf(path, plen, "%s/token", c->state_dir);
    if (c->token[0]) return 0;
    FILE *f = fopen(path, "r");
    if (f) {
        int ok = fgets(c->token, sizeof c->token, f) != NULL;
        fclose(f);
        c->token[strcspn(c->token, "\r\n")] = 0;
        if (ok && strlen(c->token) >= 16) return 0;
        fprintf(stderr, "tokenlabd serve: %s holds no usable token (16+ characters); remove it to make a new one\n",
                path);
        return -1;
    }
    unsigned char rnd[24];
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) {
        fprintf(stderr, "tokenlabd serve: no randomness for a token\n");
        return -1;
    }
    for (size_t i = 0; i < sizeof rnd; i++) snprintf(c->token + 2 * i, 3, "%02x", rnd[i]);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0 || write(fd, c->token, strlen(c->token)) != (ssize_t)strlen(c->token) || write(fd, "\n", 1) != 1 ||
        fsync(fd) != 0) {
        fprintf(stderr, "tokenlabd serve: cannot write %s: %s\n", path, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    close(fd);
    printf("created an API token in %s (mode 0600); send it as 'Authorization: Bearer <token>'\n", path);
    return 0;
}

int cmd_serve(int argc, char **argv) {
    serve_cfg c;
    int rc = parse_args(&c, argc, argv);
    if (rc != 0) return rc > 0 ? 0 : 2;
    static tld_mpi mpi; /* ~100 KB: not on the stack; read-only once the jobs start */
    char merr[1200];
    if (!c.mpi_hostfile[0] && c.n_mpi_args > 0) {
        fprintf(stderr, "tokenlabd serve: --mpi-arg goes with --mpi-hostfile\n");
        return 2;
    }
    if (c.mpi_hostfile[0] && tld_mpi_init(&mpi, c.mpi_hostfile, c.mpi_args, c.n_mpi_args, merr, sizeof merr) != 0) {
        fprintf(stderr, "tokenlabd serve: %s\n", merr);
        return 2;
    }
    char err[1024], token_path[1100], db_path[1100];
    tld_store *store = NULL;
    tld_events *events = NULL;
    tld_jobs *jobs = NULL;
    tld_models *models = NULL;
    tld_http *http = NULL;
    int status = 1;
    if (mkdir(c.state_dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "tokenlabd serve: cannot create state folder %s: %s\n", c.state_dir, strerror(errno));
        return 1;
    }
    struct stat st;
    if (stat(c.data_root, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "tokenlabd serve: data root %s is not a folder\n", c.data_root);
        return 1;
    }
    if (load_token(&c, token_path, sizeof token_path) != 0) return 1;
    if (tl_runtime_init(err, sizeof err) != 0) {
        fprintf(stderr, "tokenlabd serve: %s\n", err);
        return 1;
    }
    snprintf(db_path, sizeof db_path, "%s/tokenlab.db", c.state_dir);
    store = tld_store_open(db_path, err, sizeof err);
    if (!store) {
        fprintf(stderr, "tokenlabd serve: store: %s\n", err);
        goto fail;
    }
    events = tld_events_new(65536);
    if (!events) {
        fprintf(stderr, "tokenlabd serve: out of memory for the event bus\n");
        goto fail;
    }
    tld_jobs_cfg jc = {c.state_dir, c.data_root, c.max_running, c.threads_per_job, c.max_attempts,
                       c.mpi_hostfile[0] ? &mpi : NULL};
    jobs = tld_jobs_new(&jc, store, events, err, sizeof err);
    if (!jobs) {
        fprintf(stderr, "tokenlabd serve: jobs: %s\n", err);
        goto fail;
    }
    tld_models_cfg mc = {c.state_dir, c.data_root, store, 0};
    models = tld_models_new(&mc, err, sizeof err);
    if (!models) {
        fprintf(stderr, "tokenlabd serve: models: %s\n", err);
        goto fail;
    }
    tld_http_cfg hc = {c.bind, c.port, c.max_connections, c.timeout_s, (size_t)c.max_body, c.token, NULL,
                       c.per_client, c.handler_threads, c.header_timeout_s, c.origins, c.public_read,
                       read_token, store};
    http = tld_http_new(&hc, err, sizeof err);
    if (!http) {
        fprintf(stderr, "tokenlabd serve: http: %s\n", err);
        goto fail;
    }
    static tld_routes routes;
    routes = (tld_routes){http, store, events, jobs, models, tld_openapi_json, (size_t)c.max_body, c.max_running,
                         c.threads_per_job, c.data_root};
    /* the dashboard: an explicit --web-dir must work; the build's default may be absent */
#ifdef TL_WEB_DIST
    const char *web_dir = c.web_dir[0] ? c.web_dir : TL_WEB_DIST;
#else
    const char *web_dir = c.web_dir[0] ? c.web_dir : NULL;
#endif
    char web_err[1200] = "no web folder configured (--web-dir)";
    int web_ok = web_dir && tld_static_init(http, web_dir, web_err, sizeof web_err) == 0;
    if (!web_ok && c.web_dir[0]) {
        fprintf(stderr, "tokenlabd serve: dashboard: %s\n", web_err);
        goto fail;
    }
    if (tld_datasets_init(c.data_root) != 0) {
        fprintf(stderr, "tokenlabd serve: cannot register /api/v1/datasets\n");
        goto fail;
    }
    if (tld_routes_register(&routes) != 0 || tld_http_start(http, err, sizeof err) != 0) {
        fprintf(stderr, "tokenlabd serve: cannot listen on %s:%d: %s\n", c.bind, c.port, err);
        goto fail;
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    printf("tokenlabd %s listening on http://%s:%d/ (API under /api/v1; state in %s; data root %s; kernels %s; BLAS %s)\n",
           TL_VERSION, c.bind, tld_http_port(http), c.state_dir, c.data_root, tl_isa_name(), tl_blas_corename());
    printf("clients: up to %d connections (%d per address), handlers on %d threads, headers within %d s\n",
           tld_http_capacity(http), c.per_client, c.handler_threads, c.header_timeout_s);
    if (c.mpi_hostfile[0])
        printf("distributed jobs: mpirun %s on %d hosts, %d slots (%s)\n", mpi.mpirun, mpi.hosts.n,
               mpi.hosts.total_slots, mpi.hostfile);
    if (web_ok) printf("dashboard: http://%s:%d/ (files from %s)\n", c.bind, tld_http_port(http), web_dir);
    else printf("dashboard: not served: %s\n", web_err);
    fflush(stdout);
    while (!g_quit) {
        struct timespec t = {0, 200 * 1000000L};
        nanosleep(&t, NULL);
    }
    printf("tokenlabd: stopping: running jobs checkpoint and return to the queue\n");
    fflush(stdout);
    status = 0;
fail:
    if (events) tld_events_close(events);
    if (jobs) tld_jobs_shutdown(jobs);
    if (http) { /* requests waiting for a batch finish first: the batchers still run */
        tld_http_stop(http);
        tld_http_free(http);
    }
    tld_models_free(models);
    tld_jobs_free(jobs);
    tld_events_free(events);
    tld_store_close(store);
    return status;
}
