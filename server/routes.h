/*
 * routes.h: the REST API handlers (routes.c) and what they share.
 * The struct is filled once at start-up and read-only afterwards.
 */
#ifndef TL_ROUTES_H
#define TL_ROUTES_H

#include <stddef.h>

#include "events.h"
#include "http.h"
#include "jobs.h"
#include "store.h"

typedef struct {
    tl_http *http;
    tl_store *store;
    tl_events *events;
    tl_jobs *jobs;
    const char *openapi;   /* the OpenAPI document served at /api/v1/openapi.json */
    size_t max_body;
    int max_running, threads_per_job;
} tl_routes;

int tl_routes_register(tl_routes *R);

#endif
