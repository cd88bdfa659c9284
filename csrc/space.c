/*
 * space.c -- the data file's size and disk space.
 *
 *  - The file never shrinks: under MDB_WRITEMAP LMDB truncates the file to the
 *    map size on every map, so every map (open, growth, adopting another
 *    process's growth) happens under an exclusive flock on guard.lock and maps
 *    at least the file's current size (lmc_size_lock, size_floor).
 *  - A full disk is ENOSPC before a write txn, never SIGBUS or EIO: blocks are
 *    reserved ahead with fallocate (lmc_env_reserve), keeping a headroom that
 *    only deletes may use.
 *  - With a size_limit the map stays within lmc_env_map_cap.
 */
#define _GNU_SOURCE /* fallocate */
#include "lmdbcache.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* Room deletions may take beyond size_limit, so that a full cache can always
 * be emptied: LMDB copies pages on write, a delete needs a few free pages. */
#define LMC_DELETE_RESERVE ((size_t)1 << 20)
/* Disk blocks growing writes leave reserved for deletes (see lmc_env_reserve). */
#define LMC_DELETE_HEADROOM ((size_t)512 << 10)
#define LMC_DELETE_SLACK ((size_t)256 << 10)

/* With MDB_WRITEMAP, LMDB writes pages through a shared mapping of a sparse
 * file: on a full disk a store into a hole raises SIGBUS instead of failing a
 * write().  Before every write txn, file blocks are reserved (fallocate) for
 * everything the txn may add past the last used page, so a full disk is an
 * ENOSPC error with nothing written. */
#define LMC_RESERVE_SLACK ((size_t)1 << 20)
#define LMC_RESERVE_STEP ((size_t)512 << 10)

/* Pages in LMDB's freelist (some may still be pinned by readers).  A short
 * read txn; write_lock held, GIL released. */
static size_t free_pages(lmc_env *e)
{
    MDB_txn *txn;
    MDB_cursor *cur;
    MDB_val k, v;
    size_t total = 0, n;
    int rc;

    if (mdb_txn_begin(e->env, NULL, MDB_RDONLY, &txn) != 0)
        return 0;
    if (mdb_cursor_open(txn, 0 /* FREE_DBI */, &cur) == 0) {
        for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
             rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            if (v.mv_size >= sizeof(size_t)) {
                memcpy(&n, v.mv_data, sizeof(n)); /* an IDL: count, then page numbers */
                total += n;
            }
        }
        mdb_cursor_close(cur);
    }
    mdb_txn_abort(txn);
    return total;
}

/* Reserve disk blocks for a write adding up to `hint` bytes, so that a full
 * disk is ENOSPC before the txn instead of SIGBUS (MDB_WRITEMAP stores into a
 * hole of a sparse file) or EIO (LMDB turns a short pwrite into EIO).
 *
 * Safety: LMDB takes new pages only past the last used page, so the blocks up
 * to last page + 2 * hint (page fill) + LMC_DELETE_SLACK must be allocated.
 * Normally a write reserves much more ahead (LMC_RESERVE_SLACK, in steps).
 * When the disk is full, a growing write may still go ahead within what is
 * allocated, but must leave LMC_DELETE_HEADROOM of it to deletes -- counting
 * the freelist, whose pages it reuses first -- so that deleting entries
 * always makes room again.  Without MDB_WRITEMAP the file is extended too
 * (LMDB's pwrite would extend it anyway), which keeps the file at least as
 * long as its last used page.  write_lock held, GIL not needed. */
int lmc_env_reserve(lmc_env *e, size_t hint, int kind)
{
#ifdef __linux__
    MDB_envinfo info;
    size_t used, need, target, must, free_bytes;
    int rc, writemap = (e->flags & MDB_WRITEMAP) != 0;

    if (!e->can_reserve || (e->flags & MDB_RDONLY))
        return 0;
    rc = mdb_env_info(e->env, &info);
    if (rc != 0)
        return rc;
    if (e->reserved >= info.me_mapsize)
        return 0; /* the whole map is allocated: LMDB writes nowhere else */
    used = (info.me_last_pgno + 1) * e->page_size;
    must = used + 2 * hint + LMC_DELETE_SLACK;
    need = must + (kind == LMC_WRITE_GROWS ? LMC_RESERVE_SLACK + LMC_DELETE_HEADROOM : 0);
    if (need <= e->reserved)
        return 0;
    target = need + (kind == LMC_WRITE_GROWS ? need / 8 : 0);
    target = (target + LMC_RESERVE_STEP - 1) / LMC_RESERVE_STEP * LMC_RESERVE_STEP;
    if (target > info.me_mapsize)
        target = info.me_mapsize;
    if (target > e->reserved &&
        fallocate(e->fd, writemap ? FALLOC_FL_KEEP_SIZE : 0, 0, (off_t)target) == 0) {
        e->reserved = target;
        return 0;
    }
    if (target > e->reserved && (errno == EOPNOTSUPP || errno == ENOSYS)) {
        e->can_reserve = 0; /* filesystem without fallocate: nothing to do */
        return 0;
    }
    rc = target > e->reserved ? errno : 0;
    if (rc == 0 && e->reserved >= info.me_mapsize)
        return 0;
    /* Out of space: what is allocated may do. */
    if (must > e->reserved)
        return rc ? rc : ENOSPC;
    if (kind == LMC_WRITE_GROWS) {
        free_bytes = free_pages(e) * e->page_size;
        /* freed pages are reused first: a write that fits in them leaves
         * the tail (and so the deletes' headroom) alone */
        must = 2 * hint <= free_bytes ? 0 : used + LMC_DELETE_SLACK + LMC_DELETE_HEADROOM +
                                               2 * hint - free_bytes;
        if (must > e->reserved)
            return rc ? rc : ENOSPC;
    }
    return 0;
#else
    (void)e;
    (void)hint;
    (void)kind;
    return 0;
#endif
}

/* The size to map: `want`, but never below the data file's size -- under
 * MDB_WRITEMAP LMDB truncates the file to the map size on every map, and a
 * smaller map would cut the file under other processes' mappings (SIGBUS,
 * lost pages) -- nor below the last used page.  Page-rounded. */
static size_t size_floor(lmc_env *e, size_t want)
{
    struct stat sb;
    MDB_envinfo info;
    size_t ps = e->page_size ? e->page_size : 4096;

    if (e->fd > 0 && fstat(e->fd, &sb) == 0 && (size_t)sb.st_size > want)
        want = (size_t)sb.st_size;
    if (e->env != NULL && e->fd > 0 && mdb_env_info(e->env, &info) == 0 &&
        (info.me_last_pgno + 1) * ps > want)
        want = (info.me_last_pgno + 1) * ps;
    return (want + ps - 1) / ps * ps;
}

/* Every size change (growth, adopting another process's growth) and every
 * open of a writable Env happens under an exclusive flock on guard.lock:
 * reading the file size and mapping at least that much is then atomic with
 * respect to other processes' size changes, so the file never shrinks.
 * Called without the GIL; the flock is taken before the GIL (lock order:
 * write_lock, guard.lock, GIL). */
void lmc_size_lock(lmc_env *e)
{
    if (e->guard_fd >= 0) {
        while (flock(e->guard_fd, LOCK_EX) != 0 && errno == EINTR)
            ;
    }
}

void lmc_size_unlock(lmc_env *e)
{
    if (e->guard_fd >= 0)
        flock(e->guard_fd, LOCK_UN);
}

/* Map want (at least) bytes.  size lock, write_lock and the GIL held (no txn
 * of this process is active). */
static int remap(lmc_env *e, size_t want)
{
    struct stat sb;
    int rc = mdb_env_set_mapsize(e->env, size_floor(e, want));
    if (fstat(e->fd, &sb) == 0)
        lmc_env_note_map(e, (size_t)sb.st_size, 1);
    else
        e->map_lo = NULL; /* unknown: no bounds check */
    return rc;
}

/* Where this process mapped the file.  mdb_env_info's me_mapaddr is the
 * meta page's fixed address (NULL without MDB_FIXEDMAP), so find it from a
 * page: a key in the main DB's first leaf lies in page P of the map, whose
 * header starts with P's number; the map starts P pages before that page.
 * NULL (no bounds check) when it cannot tell. */
static const char *map_base(lmc_env *e)
{
    MDB_txn *txn;
    MDB_cursor *cur;
    MDB_val k, v;
    uintptr_t page, ps = e->page_size;
    uint64_t pgno;
    const char *base = NULL;

    if (ps == 0 || (long)ps != sysconf(_SC_PAGESIZE))
        return NULL; /* LMDB pages not aligned with the OS pages of the map */
    if (mdb_txn_begin(e->env, NULL, MDB_RDONLY, &txn) != 0)
        return NULL;
    if (mdb_cursor_open(txn, 1 /* MAIN_DBI */, &cur) == 0) {
        if (mdb_cursor_get(cur, &k, &v, MDB_FIRST) == 0) {
            page = (uintptr_t)k.mv_data - (uintptr_t)k.mv_data % ps;
            memcpy(&pgno, (const void *)page, sizeof(pgno));
            if (pgno <= page / ps)
                base = (const char *)(page - (uintptr_t)pgno * ps);
        }
        mdb_cursor_close(cur);
    }
    mdb_txn_abort(txn);
    return base;
}

void lmc_env_note_map(lmc_env *e, size_t file_size, int rebase)
{
    MDB_envinfo info;
    if (mdb_env_info(e->env, &info) != 0) {
        e->map_lo = NULL;
        return;
    }
    if (rebase)
        e->map_lo = map_base(e);
    e->map_len = info.me_mapsize < file_size ? info.me_mapsize : file_size;
}

/* Adopt the map size another process grew to: at least the last used page
 * and the file's size.  Never mdb_env_set_mapsize(0): the size recorded in
 * the meta page can be below the file's size, and mapping less truncates. */
int lmc_env_adopt(lmc_env *e)
{
    return remap(e, 0);
}

/* Grow the map after MDB_MAP_FULL.  Size lock, GIL and write_lock held.
 * With a size_limit the map stays within lmc_env_map_cap: growing writes up
 * to the cap less LMC_DELETE_RESERVE, deletes up to the cap itself. */
int lmc_env_grow(lmc_env *e, int kind)
{
    MDB_envinfo info;
    size_t cur, want, cap;
    int rc = mdb_env_info(e->env, &info);

    if (rc != 0)
        return rc;
    cur = info.me_mapsize;
    want = cur * 2;
    if (e->size_limit != 0) {
        cap = lmc_env_map_cap(e);
        if (kind == LMC_WRITE_GROWS && cap > LMC_DELETE_RESERVE * 2)
            cap -= LMC_DELETE_RESERVE;
        if (cur >= cap)
            return MDB_MAP_FULL;
        if (want > cap)
            want = cap;
    }
    return remap(e, want);
}

