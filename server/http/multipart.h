/*
 * multipart.h: a strict, bounded parser of multipart/form-data bodies
 * (RFC 7578), for predict requests that carry several images.
 *
 * multipart.c owns nothing: parts point into the caller's body, which must
 * stay alive while they are used. Pure functions; any thread.
 */
#ifndef TLD_MULTIPART_H
#define TLD_MULTIPART_H

#include <stddef.h>
#include <stdint.h>

#define TLD_MULTIPART_MAX_HEADERS 4096 /* bytes of headers per part, at most */

typedef struct {
    char name[128];           /* form field name ("" when absent) */
    char filename[256];       /* filename parameter ("" when absent) */
    char content_type[128];   /* the part's Content-Type ("" when absent) */
    const uint8_t *data;      /* into the body */
    size_t len;
} tld_part;

/* Parses body under the Content-Type header value content_type ("multipart/form-data; boundary=...",
 * quoted boundary allowed, RFC 2046 limits: 1..70 characters). Fills up to max_parts parts and
 * returns their count, or -1 with a one-line reason in err (no boundary, missing closing delimiter,
 * part without headers end, more than max_parts parts, a header block longer than
 * TLD_MULTIPART_MAX_HEADERS). Preamble and epilogue are ignored; header names are
 * case-insensitive; CRLF line ends are required. */
int tld_multipart_parse(const char *content_type, const uint8_t *body, size_t len, tld_part *parts, int max_parts,
                       char *err, size_t errlen);
/* (Additions:) the type must be multipart/form-data; a body whose first delimiter is the closing one
 * returns 0 parts. CRLF "--boundary" is a delimiter only when "--" or optional spaces/tabs and CRLF follow
 * (otherwise it is data). The header block limit counts the header lines with their CRLFs, not the blank
 * line. Content-Disposition, when present, must be form-data; name/filename longer than their fields,
 * folded header lines, bare CR or LF in headers, and a Content-Transfer-Encoding other than
 * binary/8bit/7bit are refused. */

#endif
