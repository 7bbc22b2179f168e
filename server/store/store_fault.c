/*
 * store_fault.c: the store's side of the full-disk switch (tokenlab/files.h):
 * a SQLite VFS shim over the default VFS whose xWrite answers SQLITE_FULL
 * once the switch's byte budget for the store (TL_FAULT_STORE) is spent, as
 * the unix VFS answers when write() fails with ENOSPC. Everything else is the
 * default VFS's own method.
 *
 * Owns the shim's VFS and I/O-method tables (static, made once). Installed
 * by tld_store_fault_install before the store opens its first connection,
 * and only when a variable of the switch is set: without one SQLite runs on
 * its default VFS and nothing here is ever called. Threads: any (SQLite calls
 * the methods on the connection's thread; the switch has its own lock).
 */
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

#include "store/store_internal.h"
#include "tokenlab/files.h"

typedef struct {
    sqlite3_file base;   /* pMethods: the shim's methods, or NULL when the real open failed */
    sqlite3_file *real;  /* the default VFS's file, in the bytes that follow this struct */
} shim_file;

static sqlite3_vfs shim_vfs, *real_vfs;
static sqlite3_io_methods shim_io;
static pthread_once_t install_once = PTHREAD_ONCE_INIT;

#define REAL(f) (((shim_file *)(f))->real)

static int x_close(sqlite3_file *f) { return REAL(f)->pMethods->xClose(REAL(f)); }
static int x_read(sqlite3_file *f, void *p, int n, sqlite3_int64 off) {
    return REAL(f)->pMethods->xRead(REAL(f), p, n, off);
}
/* The switch's choke point for the store: the whole write, or SQLITE_FULL (nothing written). */
static int x_write(sqlite3_file *f, const void *p, int n, sqlite3_int64 off) {
    if (n > 0 && tl_fault_enospc_allow(TL_FAULT_STORE, (size_t)n) < (size_t)n) return SQLITE_FULL;
    return REAL(f)->pMethods->xWrite(REAL(f), p, n, off);
}
static int x_truncate(sqlite3_file *f, sqlite3_int64 size) { return REAL(f)->pMethods->xTruncate(REAL(f), size); }
static int x_sync(sqlite3_file *f, int flags) { return REAL(f)->pMethods->xSync(REAL(f), flags); }
static int x_file_size(sqlite3_file *f, sqlite3_int64 *size) { return REAL(f)->pMethods->xFileSize(REAL(f), size); }
static int x_lock(sqlite3_file *f, int l) { return REAL(f)->pMethods->xLock(REAL(f), l); }
static int x_unlock(sqlite3_file *f, int l) { return REAL(f)->pMethods->xUnlock(REAL(f), l); }
static int x_check_reserved(sqlite3_file *f, int *out) {
    return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}
static int x_file_control(sqlite3_file *f, int op, void *arg) {
    return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}
static int x_sector_size(sqlite3_file *f) { return REAL(f)->pMethods->xSectorSize(REAL(f)); }
static int x_device_chars(sqlite3_file *f) { return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f)); }
/* The version-2 and -3 methods, for a real file whose methods lack them: no shared memory, no mapping. */
#define REAL_HAS(f, v) (REAL(f)->pMethods->iVersion >= (v))
static int x_shm_map(sqlite3_file *f, int pg, int sz, int extend, void volatile **pp) {
    if (!REAL_HAS(f, 2)) return SQLITE_IOERR_SHMMAP;
    return REAL(f)->pMethods->xShmMap(REAL(f), pg, sz, extend, pp);
}
static int x_shm_lock(sqlite3_file *f, int off, int n, int flags) {
    if (!REAL_HAS(f, 2)) return SQLITE_IOERR_SHMLOCK;
    return REAL(f)->pMethods->xShmLock(REAL(f), off, n, flags);
}
static void x_shm_barrier(sqlite3_file *f) {
    if (REAL_HAS(f, 2)) REAL(f)->pMethods->xShmBarrier(REAL(f));
}
static int x_shm_unmap(sqlite3_file *f, int del) {
    return REAL_HAS(f, 2) ? REAL(f)->pMethods->xShmUnmap(REAL(f), del) : SQLITE_OK;
}
static int x_fetch(sqlite3_file *f, sqlite3_int64 off, int n, void **pp) {
    if (!REAL_HAS(f, 3)) {
        *pp = NULL;
        return SQLITE_OK;
    }
    return REAL(f)->pMethods->xFetch(REAL(f), off, n, pp);
}
static int x_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p) {
    return REAL_HAS(f, 3) ? REAL(f)->pMethods->xUnfetch(REAL(f), off, p) : SQLITE_OK;
}

/* Opens the default VFS's file behind the shim's; the shim's methods mirror the version it offers. */
static int x_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *out_flags) {
    (void)vfs;
    shim_file *sf = (shim_file *)f;
    sf->real = (sqlite3_file *)(sf + 1);
    int rc = real_vfs->xOpen(real_vfs, name, sf->real, flags, out_flags);
    sf->base.pMethods = rc == SQLITE_OK && sf->real->pMethods ? &shim_io : NULL;
    return rc;
}

static int x_delete(sqlite3_vfs *v, const char *name, int sync) { return real_vfs->xDelete(real_vfs, name, sync); }
static int x_access(sqlite3_vfs *v, const char *name, int flags, int *out) {
    return real_vfs->xAccess(real_vfs, name, flags, out);
}
static int x_full_pathname(sqlite3_vfs *v, const char *name, int n, char *out) {
    return real_vfs->xFullPathname(real_vfs, name, n, out);
}
static void *x_dl_open(sqlite3_vfs *v, const char *name) { return real_vfs->xDlOpen(real_vfs, name); }
static void x_dl_error(sqlite3_vfs *v, int n, char *msg) { real_vfs->xDlError(real_vfs, n, msg); }
static void (*x_dl_sym(sqlite3_vfs *v, void *h, const char *sym))(void) { return real_vfs->xDlSym(real_vfs, h, sym); }
static void x_dl_close(sqlite3_vfs *v, void *h) { real_vfs->xDlClose(real_vfs, h); }
static int x_randomness(sqlite3_vfs *v, int n, char *out) { return real_vfs->xRandomness(real_vfs, n, out); }
static int x_sleep(sqlite3_vfs *v, int us) { return real_vfs->xSleep(real_vfs, us); }
static int x_current_time(sqlite3_vfs *v, double *t) { return real_vfs->xCurrentTime(real_vfs, t); }
static int x_get_last_error(sqlite3_vfs *v, int n, char *msg) {
    return real_vfs->xGetLastError ? real_vfs->xGetLastError(real_vfs, n, msg) : 0;
}
static int x_current_time_i64(sqlite3_vfs *v, sqlite3_int64 *t) {
    return real_vfs->xCurrentTimeInt64(real_vfs, t);
}

static void install(void) {
    if (!tl_fault_enospc_enabled()) return;
    real_vfs = sqlite3_vfs_find(NULL);
    if (!real_vfs || real_vfs->iVersion < 2) {
        tld_store_report("the full-disk switch is set but the default SQLite VFS cannot be wrapped");
        return;
    }
    shim_io = (sqlite3_io_methods){
        .iVersion = 3,
        .xClose = x_close, .xRead = x_read, .xWrite = x_write, .xTruncate = x_truncate, .xSync = x_sync,
        .xFileSize = x_file_size, .xLock = x_lock, .xUnlock = x_unlock, .xCheckReservedLock = x_check_reserved,
        .xFileControl = x_file_control, .xSectorSize = x_sector_size, .xDeviceCharacteristics = x_device_chars,
        .xShmMap = x_shm_map, .xShmLock = x_shm_lock, .xShmBarrier = x_shm_barrier, .xShmUnmap = x_shm_unmap,
        .xFetch = x_fetch, .xUnfetch = x_unfetch,
    };
    shim_vfs = (sqlite3_vfs){
        .iVersion = 2,
        .szOsFile = (int)sizeof(shim_file) + real_vfs->szOsFile,
        .mxPathname = real_vfs->mxPathname,
        .zName = "tokenlab-full-disk",
        .xOpen = x_open, .xDelete = x_delete, .xAccess = x_access, .xFullPathname = x_full_pathname,
        .xDlOpen = x_dl_open, .xDlError = x_dl_error, .xDlSym = x_dl_sym, .xDlClose = x_dl_close,
        .xRandomness = x_randomness, .xSleep = x_sleep, .xCurrentTime = x_current_time,
        .xGetLastError = x_get_last_error, .xCurrentTimeInt64 = x_current_time_i64,
    };
    if (sqlite3_vfs_register(&shim_vfs, 1) != SQLITE_OK) tld_store_report("cannot register the full-disk VFS shim");
}

void tld_store_fault_install(void) {
    pthread_once(&install_once, install);
}
