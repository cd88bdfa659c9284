/*
 * env.c -- the LMDB environment: one per directory per process.
 *
 * CONTRACT
 *
 * Lifetime (THE RULE).  An Env is reference-counted with the GIL held.  Every
 * Store holds one reference while open, and every Store *call* holds its own
 * from its first line to its last (lmc_store_enter/lmc_store_leave, store.c):
 * user code run by the call (__hash__, __eq__, __reduce__, __setstate__,
 * finalizers) and other threads running while the GIL is released may close
 * the Store, but never free the Env under the call.  An explicit transaction
 * holds a reference from begin to end.  Code that waits (write_lock, another
 * process's lock) always holds a reference first.
 *
 * Registry.  LMDB forbids opening one environment twice in a process: closing
 * the second descriptor would drop the process's fcntl locks on the lock file,
 * and a second open re-initialises the reader table under the first.
 * `lmc_env_registry` lists this process's Envs keyed by the directory's
 * (st_dev, st_ino), each in a state: OPENING (mdb_env_open in progress, the
 * GIL released), OPEN, or CLOSING (the last reference went; the marker is
 * being released and mdb_env_close has not returned).  An Env is linked
 * before its open starts and unlinked only after mdb_env_close returns;
 * lmc_env_acquire shares an OPEN Env and waits (GIL released) while the entry
 * for its path is OPENING or CLOSING -- so one path never has two MDB_envs in
 * this process.  Construction and lazy reopen both go through
 * lmc_env_acquire.  The registry, states and reference counts are touched
 * only with the GIL held.
 *
 * Fork.  After fork() the child runs lmc_atfork_child (module.c), which bumps
 * lmc_fork_generation and empties the registry (pointer writes only).  An Env
 * whose `generation` differs from lmc_fork_generation was opened by an ancestor
 * process: it is *abandoned*.  Nothing of it -- the MDB_env, its cached read
 * txn, its descriptors, its mutexes -- is ever passed to LMDB, close() or
 * pthread again, because
 *   - ending an inherited read txn writes into the parent's reader slot (the
 *     reader table is a shared mapping): the parent then gets MDB_BAD_RSLOT or
 *     loses the protection of its snapshot;
 *   - closing an inherited descriptor of the lock file would drop the fcntl
 *     locks the child's *own* new Env holds on that file (POSIX record locks
 *     belong to the process and die with any of its descriptors to the file).
 * The child's Stores notice the stale generation on their next call (an integer
 * compare, no syscall) and acquire a fresh Env.  Releasing an abandoned Env
 * frees only this struct: the inherited MDB_env leaks until exit.
 *
 * Transactions.  Every txn starts in lmc_env_begin (one retry policy), except
 * two short read txns in space.c (free_pages, map_base): they run while the
 * map is being sized, under the size lock, so they must not adopt a map size
 * themselves; they fail soft (no free-page credit, no bounds check -- a test
 * asserts the check is on after open, growth and adoption).  The
 * Env is opened with MDB_NOTLS, so a reader slot belongs to a txn, not a
 * thread.  Reads use `rtxn`: renew -> get -> copy out -> reset, all with the
 * GIL held and no Python code running in between, so `rtxn` is never used by
 * two threads at once (rtxn_busy guards against reentry anyway).  Writes run
 * with the GIL released, under `write_lock`, a mutex taken only with the GIL
 * released.  Map resizing (mdb_env_set_mapsize) requires that no txn of this
 * process is active: it runs holding both write_lock (no writer) and the GIL
 * (no reader, since readers hold the GIL for a whole txn).
 */
#define _GNU_SOURCE /* fallocate */
#include "lmdbcache.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* The registry (see CONTRACT): linked and searched by envopen.c. */
lmc_env *lmc_env_registry = NULL;


void lmc_env_forget_all(void)
{
    /* Called in a freshly forked child: the entries stay owned by the Stores
     * that hold them and are abandoned when released. */
    lmc_env_registry = NULL;
}

void lmc_registry_unlink(lmc_env *e)
{
    lmc_env **p;
    for (p = &lmc_env_registry; *p != NULL; p = &(*p)->next) {
        if (*p == e) {
            *p = e->next;
            return;
        }
    }
}

void lmc_env_free(lmc_env *e)
{
    PyMem_RawFree(e->marker_path);
    PyMem_RawFree(e->torn_to);
    PyMem_RawFree(e->torn_boot);
    PyMem_RawFree(e->incompat_to);
    PyMem_RawFree(e->path);
    PyMem_RawFree(e);
}

/* Close a current Env whose last reference went.  It stays in the registry,
 * CLOSING, until mdb_env_close has returned: openers of the path wait. */
static void env_close(lmc_env *e)
{
    e->state = LMC_ENV_CLOSING;
    if (e->marker)
        lmc_marker_release(e); /* releases the GIL */
    if (e->rtxn != NULL)
        mdb_txn_abort(e->rtxn);
    e->rtxn = NULL;
    mdb_env_close(e->env);
    if (e->guard_fd >= 0)
        close(e->guard_fd);
    pthread_mutex_destroy(&e->write_lock);
    pthread_mutex_destroy(&e->lru_lock);
    lmc_ns_free(e);
    lmc_evict_free(e);
    lmc_registry_unlink(e);
}

void lmc_env_release(lmc_env *e)
{
    if (LMC_LIKELY(--e->refcnt > 0))
        return;
    if (lmc_env_is_current(e))
        env_close(e);
    /* else: inherited from an ancestor process -- abandoned, see CONTRACT.
     * Its tables may be mid-update by a parent thread: leaked with it. */
    lmc_env_free(e);
}

/* Adopt a map size grown by another process, from a thread holding the GIL
 * and not write_lock. */
static int env_adopt_mapsize(lmc_env *e)
{
    int rc;
    if (lmc_env_in_txn(e))
        return MDB_MAP_RESIZED; /* this thread's transaction holds write_lock */
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&e->write_lock);
    lmc_size_lock(e);
    Py_END_ALLOW_THREADS
    rc = lmc_env_adopt(e);
    lmc_size_unlock(e);
    pthread_mutex_unlock(&e->write_lock);
    return rc;
}

int lmc_env_begin(lmc_env *e, unsigned int flags, MDB_txn **txn, PyThreadState **save)
{
    int rc, attempt, dead;

    for (attempt = 0;; attempt++) {
        rc = mdb_txn_begin(e->env, NULL, flags, txn);
        if (rc == 0 || attempt >= 8)
            break;
        if (rc == MDB_READERS_FULL) {
            /* reclaim slots of dead pids; none reclaimed: really full */
            if (mdb_reader_check(e->env, &dead) != 0 || dead == 0)
                break;
        }
        else if (rc == MDB_MAP_RESIZED) {
            if (save == NULL) {
                rc = env_adopt_mapsize(e);
            }
            else {
                lmc_size_lock(e);
                PyEval_RestoreThread(*save);
                rc = lmc_env_adopt(e);
                *save = PyEval_SaveThread();
                lmc_size_unlock(e);
            }
            if (rc != 0)
                break;
        }
        else {
            break;
        }
    }
    return rc;
}

int lmc_read_begin_slow(lmc_env *e, MDB_txn **txn)
{
    int rc = lmc_env_begin(e, MDB_RDONLY, txn, NULL);
    if (rc != 0)
        return rc;
    if (e->rtxn == NULL) {
        e->rtxn = *txn;
        e->rtxn_busy = 1;
    }
    return 0;
}

int lmc_read_begin(lmc_env *e, MDB_txn **txn)
{
    if (LMC_UNLIKELY(e->wtxn != NULL) && lmc_env_in_txn(e)) {
        *txn = e->wtxn; /* reads inside transaction() see its writes */
        return 0;
    }
    if (LMC_LIKELY(e->rtxn != NULL && !e->rtxn_busy)) {
        int rc = mdb_txn_renew(e->rtxn);
        if (LMC_LIKELY(rc == 0)) {
            e->rtxn_busy = 1;
            *txn = e->rtxn;
            return 0;
        }
        /* MDB_BAD_RSLOT: our slot was given away (something outside lmdbcache
         * freed it); aborting would write into another process's slot, so the
         * txn is dropped unended.  Other failures end it normally. */
        if (rc != MDB_BAD_RSLOT)
            mdb_txn_abort(e->rtxn);
        e->rtxn = NULL;
    }
    return lmc_read_begin_slow(e, txn);
}

void lmc_read_end(lmc_env *e, MDB_txn *txn)
{
    if (txn == e->wtxn)
        return;
    if (txn == e->rtxn) {
        mdb_txn_reset(txn);
        e->rtxn_busy = 0;
    }
    else {
        mdb_txn_abort(txn);
    }
}

/* A tiny committed write.  LMDB reuses a freed page only once two newer txns
 * have committed (the previous meta page may still point at it), so a cache
 * that just hit size_limit and was emptied by one delete txn needs one more
 * commit before the room is usable.  write_lock held, GIL not needed. */
static int env_tick(lmc_env *e, PyThreadState **save)
{
    MDB_txn *txn;
    MDB_val k = {4, (void *)"tick"}, v;
    uint64_t id;
    int rc = lmc_env_begin(e, 0, &txn, save);

    if (rc != 0)
        return rc;
    id = (uint64_t)mdb_txn_id(txn);
    v.mv_size = sizeof(id);
    v.mv_data = &id;
    rc = mdb_put(txn, e->meta_dbi, &k, &v, 0);
    if (rc != 0) {
        mdb_txn_abort(txn);
        return rc;
    }
    return mdb_txn_commit(txn);
}

/* Does an error from inside a txn leave it unusable? */
static int rc_breaks_txn(int rc)
{
    return rc != 0 && rc != MDB_NOTFOUND && rc != MDB_KEYEXIST && !LMC_IS_LOGICAL(rc);
}

/* `hint`: bytes this operation adds; `pending`: bytes the txn added before it
 * (an explicit transaction's earlier writes, not yet in the committed file
 * size that eviction's fast path looks at). */
static int env_run(lmc_env *e, MDB_txn *txn, lmc_write_fn fn, void *arg, int kind,
                   size_t hint, size_t pending, lmc_evict_counts *counts)
{
    int rc = 0;
    if (e->policy == LMC_POLICY_LRU && e->lru_len != 0) {
        hint += 2 * e->lru_len; /* the log becomes index entries */
        rc = lmc_lru_flush(txn, e);
    }
    /* make room first: pages freed in this txn are not reusable before
     * the txn after next, so the write itself lands past them */
    if (rc == 0 && kind == LMC_WRITE_GROWS && lmc_env_evicts(e))
        rc = lmc_evict_enforce(txn, e, hint, pending, counts);
    if (rc == 0)
        rc = fn(txn, e, arg);
    return rc;
}

/* The caller holds a reference on e (THE RULE), so e outlives the waits. */
int lmc_env_write(lmc_env *e, lmc_write_fn fn, void *arg, int kind, size_t hint,
                  lmc_evict_counts *counts)
{
    MDB_txn *txn;
    int rc, again, attempts = 0, ticked = 0, waits = 0, dead;

    if (lmc_env_in_txn(e)) {
        /* Inside this thread's transaction(): it owns write_lock already. */
        if (e->wtxn_failed)
            return LMC_ERR_TXN_FAILED;
        rc = lmc_env_reserve(e, e->wtxn_added + hint, kind);
        if (rc != 0)
            return rc;
        rc = env_run(e, e->wtxn, fn, arg, kind, hint, e->wtxn_added, counts);
        e->wtxn_added += hint;
        if (rc_breaks_txn(rc))
            e->wtxn_failed = rc;
        return rc;
    }

    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&e->write_lock);
    do {
        again = 0;
        rc = lmc_env_reserve(e, hint, kind);
        if (rc == 0 && (rc = lmc_env_begin(e, 0, &txn, &_save)) == 0) {
            e->seq_counter = 0;
            rc = env_run(e, txn, fn, arg, kind, hint, 0, counts);
            if (rc == 0)
                rc = mdb_txn_commit(txn);
            else
                mdb_txn_abort(txn);
            lmc_ns_settle(e, rc == 0);
        }
        if (rc == MDB_MAP_RESIZED && attempts++ < 64) {
            lmc_size_lock(e);
            Py_BLOCK_THREADS
            rc = lmc_env_adopt(e);
            Py_UNBLOCK_THREADS
            lmc_size_unlock(e);
            again = rc == 0;
        }
        else if (rc == MDB_MAP_FULL && attempts++ < 64) {
            lmc_size_lock(e);
            Py_BLOCK_THREADS
            rc = lmc_env_grow(e, kind);
            Py_UNBLOCK_THREADS
            lmc_size_unlock(e);
            if (rc == MDB_MAP_FULL) {
                /* At the cap.  Freed pages may be pinned: by the snapshot
                 * before the last commit (a tick commits once more), by a
                 * reader that died (reclaim its slot), or by a live reader
                 * in the middle of a read (wait for it, briefly). */
                if (mdb_reader_check(e->env, &dead) == 0 && dead > 0)
                    rc = 0;
                else if (!ticked) {
                    ticked = 1;
                    rc = env_tick(e, &_save);
                }
                else if (lmc_env_evicts(e) && waits < 6) {
                    lmc_sleep_ms(1 << (2 * waits++)); /* 1, 4, 16, 64, 256, 1024 ms */
                    rc = env_tick(e, &_save);
                }
            }
            again = rc == 0;
        }
    } while (again);
    pthread_mutex_unlock(&e->write_lock);
    Py_END_ALLOW_THREADS
    return rc;
}

/* Begin this thread's explicit transaction.  The caller holds a reference on
 * e; on success the transaction takes its own, held until lmc_env_txn_end. */
int lmc_env_txn_begin(lmc_env *e)
{
    MDB_txn *txn = NULL;
    int rc;

    if (lmc_env_in_txn(e)) {
        e->wtxn_depth++;
        return 0;
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&e->write_lock);
    rc = lmc_env_reserve(e, 0, LMC_WRITE_GROWS);
    if (rc == 0)
        rc = lmc_env_begin(e, 0, &txn, &_save);
    if (rc != 0)
        pthread_mutex_unlock(&e->write_lock);
    Py_END_ALLOW_THREADS
    if (rc != 0)
        return rc;
    e->refcnt++; /* held until the transaction ends */
    e->wtxn = txn;
    e->wtxn_owner = pthread_self();
    e->wtxn_depth = 1;
    e->wtxn_failed = 0;
    e->wtxn_added = 0;
    e->seq_counter = 0;
    return 0;
}

/* End it.  The caller holds a reference on e besides the transaction's. */
int lmc_env_txn_end(lmc_env *e, int commit)
{
    MDB_txn *txn;
    int rc = 0;

    if (!lmc_env_in_txn(e))
        return LMC_ERR_NO_TXN;
    if (--e->wtxn_depth > 0) {
        if (!commit && !e->wtxn_failed)
            e->wtxn_failed = LMC_ERR_TXN_FAILED; /* an inner block rolled back */
        return 0;
    }
    txn = e->wtxn;
    e->wtxn = NULL;
    if (commit && !e->wtxn_failed) {
        Py_BEGIN_ALLOW_THREADS
        rc = mdb_txn_commit(txn);
        Py_END_ALLOW_THREADS
    }
    else {
        mdb_txn_abort(txn);
        rc = commit ? LMC_ERR_TXN_FAILED : 0;
    }
    lmc_ns_settle(e, commit && rc == 0);
    pthread_mutex_unlock(&e->write_lock);
    lmc_env_release(e);
    return rc;
}

int lmc_env_sync(lmc_env *e)
{
    int rc;
    if (e->flags & MDB_RDONLY)
        return 0;
    Py_BEGIN_ALLOW_THREADS
    rc = mdb_env_sync(e->env, 1);
    Py_END_ALLOW_THREADS
    return rc;
}

int lmc_env_count(lmc_env *e, MDB_txn *txn, MDB_dbi dbi, size_t *count)
{
    MDB_stat ms;
    MDB_cursor *cur = NULL;
    MDB_val k, v;
    size_t internal = 0;
    int rc;

    rc = mdb_stat(txn, dbi, &ms);
    if (rc != 0 || dbi != e->main_dbi) {
        if (rc == 0)
            *count = ms.ms_entries;
        goto done;
    }
    rc = mdb_cursor_open(txn, e->main_dbi, &cur);
    if (rc != 0)
        goto done;
    /* Sub-database records sort before every user key: count them. */
    rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    while (rc == 0 && k.mv_size > 0 && ((unsigned char *)k.mv_data)[0] < LMC_FIRST_KEY_TAG) {
        internal++;
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    if (rc == MDB_NOTFOUND)
        rc = 0;
    if (rc == 0)
        *count = ms.ms_entries - internal;
done:
    if (cur != NULL)
        mdb_cursor_close(cur);
    return rc;
}
