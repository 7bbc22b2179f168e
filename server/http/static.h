/*
 * static.h: serving the web dashboard (the vite build of web/, "dist") from
 * tokenlabd's own port.
 *
 * tld_static_init registers the HTTP fallback (http.h: every request no API
 * route matches) to serve the files of web_dir:
 *   - GET and HEAD only (405 METHOD_NOT_ALLOWED with Allow otherwise);
 *   - "/" and unknown paths without a file extension get index.html (the
 *     dashboard routes with the URL's #fragment, so any page address works);
 *     unknown paths under /api/ and /v2/, and missing files with an
 *     extension, get a 404 application/problem+json;
 *   - the resolved path (realpath, symbolic links followed) must stay inside
 *     web_dir, else 404; only regular files up to TLD_STATIC_MAX_BYTES;
 *   - Content-Type by extension; an ETag (size and modification time) with
 *     If-None-Match answered by 304; Cache-Control "public, max-age=31536000,
 *     immutable" under /assets/ (vite's content-hashed names), "no-cache"
 *     for everything else (index.html is revalidated on every load);
 *   - a Content-Security-Policy on HTML (scripts and connections to the
 *     page's own origin only).
 * The site's state is static storage, read-only after tld_static_init, so the
 * handler is thread-safe. Call before tld_http_start.
 */
#ifndef TLD_STATIC_H
#define TLD_STATIC_H

#include <stddef.h>

#include "http/http.h"

#define TLD_STATIC_MAX_BYTES ((size_t)32 << 20) /* larger files are refused (500) */

/* Returns 0, or -1 with a reason in err (web_dir missing, not a folder, no index.html). */
int tld_static_init(tld_http *h, const char *web_dir, char *err, size_t errlen);

#endif
