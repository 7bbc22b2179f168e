/*
 * store_logs.c: the store's job logs, one text stream per job addressed by
 * byte offset (store.h, schema/store.sql table logs).
 *
 * Logs: lines are coalesced per job within a batch into chunks of up to 64
 * KiB, each stored at the byte offset where the previous one ended. A line
 * longer than that is cut (UTF-8-safely) and marked. A read cut short by its
 * limit ends before a UTF-8 sequence it would split (unless that leaves
 * nothing), so each slice is valid text when the log is; buf is
 * NUL-terminated when there is room after the bytes.
 *
 * Threads: tld_store_log_append queues (any thread); tld_store_log_read
 * reads on the calling thread's read connection. tld_store_logs_add and
 * tld_store_logs_flush run only on the writer thread and use its batch
 * scratch (s->logbuf).
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store.h"
#include "store/store_internal.h"
#include "tokenlab/base.h"

/* Length of buf[0..len) without a UTF-8 sequence left incomplete at its end (at most 3 bytes go). */
static size_t utf8_complete(const char *buf, size_t len) {
    for (size_t back = 1; back <= 4 && back <= len; back++) {
        unsigned char c = (unsigned char)buf[len - back];
        if ((c & 0xC0) == 0x80) continue; /* a continuation byte: look further back for the lead */
        size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        return need > back ? len - back : len;
    }
    return len; /* not UTF-8: leave it */
}

/* Writes the pending log chunk of the batch. */
void tld_store_logs_flush(tld_store *s) {
    if (s->loglen == 0) return;
    sqlite3_bind_int64(s->w[W_LOG_PUT], 1, s->logjob);
    sqlite3_bind_text(s->w[W_LOG_PUT], 2, s->logbuf, (int)s->loglen, SQLITE_STATIC);
    if (tld_store_wstep(s, W_LOG_PUT) != 0) {
        char what[64];
        snprintf(what, sizeof what, "log lines of job %" PRId64, s->logjob);
        tld_store_queued_failed(s, 0, s->loglines, what);
    }
    s->loglen = 0;
    s->loglines = 0;
}

void tld_store_logs_add(tld_store *s, int64_t job, const char *text, size_t len) {
    if (s->loglen && (s->logjob != job || s->loglen + len > STORE_LOG_CHUNK)) tld_store_logs_flush(s);
    s->logjob = job;
    memcpy(s->logbuf + s->loglen, text, len); /* len <= STORE_LOG_CHUNK (tld_store_log_append) */
    s->loglen += len;
    s->loglines++;
}

int tld_store_log_append(tld_store *s, int64_t job, const char *line) {
    if (!line) {
        tld_store_report("log line of job %" PRId64 " refused: no text", job);
        return -1;
    }
    static const char cut_mark[] = " [line cut]\n";
    size_t len = strlen(line), keep = len, extra = 1;
    if (len + 1 > STORE_LOG_CHUNK) {
        keep = tld_store_utf8_cut(line, len, STORE_LOG_CHUNK - sizeof cut_mark);
        extra = sizeof cut_mark - 1;
    }
    wop op;
    op.kind = OP_LOG;
    op.job = job;
    op.u.log.len = keep + extra;
    op.u.log.text = malloc(op.u.log.len);
    if (!op.u.log.text) {
        tld_store_report("log line of job %" PRId64 " lost: out of memory", job);
        return -1;
    }
    memcpy(op.u.log.text, line, keep);
    if (extra == 1) op.u.log.text[keep] = '\n';
    else memcpy(op.u.log.text + keep, cut_mark, extra);
    if (tld_store_enqueue(s, &op) != 0) {
        free(op.u.log.text);
        return -1;
    }
    return 0;
}

int tld_store_log_read(tld_store *s, int64_t job, int64_t offset, size_t limit, char *buf, size_t *len, int64_t *next,
                      int *eof, char *err, size_t errlen) {
    *len = 0;
    *next = offset;
    *eof = 0;
    if (offset < 0) {
        tl_seterr(err, errlen, "negative log offset %" PRId64, offset);
        return -1;
    }
    rconn *c = tld_store_reader(s, err, errlen);
    if (!c) return -1;
    sqlite3_stmt *at = tld_store_rstmt(c, R_LOG_AT, err, errlen), *after = tld_store_rstmt(c, R_LOG_AFTER, err, errlen);
    sqlite3_stmt *exists = tld_store_rstmt(c, R_JOB_EXISTS, err, errlen);
    if (!at || !after || !exists || tld_store_rexec(c, R_BEGIN, err, errlen) != 0) return -1;
    int rc = -1, r;
    size_t got = 0;
    int64_t pos = offset; /* the stream offset of buf[got] */

    /* The chunk holding offset: the last one starting at or before it. */
    sqlite3_bind_int64(at, 1, job);
    sqlite3_bind_int64(at, 2, offset);
    r = sqlite3_step(at);
    if (r == SQLITE_ROW) {
        int64_t c0 = sqlite3_column_int64(at, 0);
        const char *t = (const char *)sqlite3_column_text(at, 1);
        int64_t clen = sqlite3_column_bytes(at, 1);
        if (offset > c0 + clen) {
            tl_seterr(err, errlen, "log offset %" PRId64 " of job %" PRId64 " is past the end (%" PRId64 " bytes)",
                      offset, job, c0 + clen);
            goto fail;
        }
        size_t avail = (size_t)(c0 + clen - offset), take = avail < limit ? avail : limit;
        if (take) memcpy(buf, t + (offset - c0), take);
        got = take;
        pos = offset + (int64_t)take;
        if (take < avail) { /* buf full inside this chunk */
            *eof = 0;
            rc = 0;
            goto fail;
        }
    } else if (r == SQLITE_DONE) {
        sqlite3_bind_int64(exists, 1, job);
        r = sqlite3_step(exists);
        sqlite3_reset(exists);
        if (r == SQLITE_DONE) {
            tl_seterr(err, errlen, "job %" PRId64 " not found", job);
            goto fail;
        }
        if (r != SQLITE_ROW) {
            tl_seterr(err, errlen, "cannot read job %" PRId64 ": %s", job, sqlite3_errmsg(c->db));
            goto fail;
        }
        if (offset > 0) {
            tl_seterr(err, errlen, "log offset %" PRId64 " of job %" PRId64 " is past the end (0 bytes)", offset, job);
            goto fail;
        }
    } else {
        tl_seterr(err, errlen, "cannot read the log of job %" PRId64 ": %s", job, sqlite3_errmsg(c->db));
        goto fail;
    }

    /* The chunks after it, while there is room. */
    sqlite3_bind_int64(after, 1, job);
    sqlite3_bind_int64(after, 2, offset);
    *eof = 1;
    while ((r = sqlite3_step(after)) == SQLITE_ROW) {
        int64_t c0 = sqlite3_column_int64(after, 0);
        if (c0 != pos) {
            tl_seterr(err, errlen, "the log of job %" PRId64 " has a gap at byte %" PRId64, job, pos);
            goto fail;
        }
        if (got == limit) { /* more follows */
            *eof = 0;
            break;
        }
        const char *t = (const char *)sqlite3_column_text(after, 1);
        size_t clen = (size_t)sqlite3_column_bytes(after, 1), take = clen < limit - got ? clen : limit - got;
        memcpy(buf + got, t, take);
        got += take;
        pos += (int64_t)take;
        if (take < clen) {
            *eof = 0;
            break;
        }
    }
    if (r != SQLITE_ROW && r != SQLITE_DONE) {
        tl_seterr(err, errlen, "cannot read the log of job %" PRId64 ": %s", job, sqlite3_errmsg(c->db));
        goto fail;
    }
    rc = 0;
fail:
    sqlite3_reset(at);
    sqlite3_clear_bindings(at);
    sqlite3_reset(after);
    sqlite3_clear_bindings(after);
    sqlite3_clear_bindings(exists);
    tld_store_rexec(c, R_COMMIT, NULL, 0);
    if (rc == 0 && !*eof) { /* cut short by limit: do not end inside a UTF-8 sequence (the next read starts it) */
        size_t keep = utf8_complete(buf, got);
        if (keep > 0) {
            pos -= (int64_t)(got - keep);
            got = keep;
        }
    }
    if (rc == 0) {
        *len = got;
        *next = pos;
        if (got < limit) buf[got] = '\0'; /* a convenience when there is room; not promised by store.h */
    } else {
        *eof = 0;
    }
    return rc;
}
