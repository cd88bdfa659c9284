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
 * `registry` lists this process's Envs keyed by the directory's
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

#define LMC_MAX_DBS 64
static lmc_env *registry = NULL;


void lmc_env_forget_all(void)
{
    /* Called in a freshly forked child: the entries stay owned by the Stores
     * that hold them and are abandoned when released. */
    registry = NULL;
}

static void registry_unlink(lmc_env *e)
{
    lmc_env **p;
    for (p = &registry; *p != NULL; p = &(*p)->next) {
        if (*p == e) {
            *p = e->next;
            return;
        }
    }
}

static void env_free(lmc_env *e)
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
    registry_unlink(e);
}

void lmc_env_release(lmc_env *e)
{
    if (LMC_LIKELY(--e->refcnt > 0))
        return;
    if (lmc_env_is_current(e))
        env_close(e);
    /* else: inherited from an ancestor process -- abandoned, see CONTRACT.
     * Its tables may be mid-update by a parent thread: leaked with it. */
    env_free(e);
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

static int read_begin_slow(lmc_env *e, MDB_txn **txn)
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
    return read_begin_slow(e, txn);
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

/* ---- opening --------------------------------------------------------------- */

static int parse_format(const MDB_val *v, long *out)
{
    char buf[16];
    char *end;
    if (v->mv_size == 0 || v->mv_size >= sizeof(buf))
        return -1;
    memcpy(buf, v->mv_data, v->mv_size);
    buf[v->mv_size] = '\0';
    *out = strtol(buf, &end, 10);
    return *end == '\0' ? 0 : -1;
}

/* Does the main DB hold nothing but our bookkeeping (no user key, no
 * namespace)?  1 yes, 0 no, or an LMDB code. */
static int env_is_bare(MDB_txn *txn, MDB_dbi dbi)
{
    static const char *const ours[] = {LMC_META_DB, LMC_ORDER_DB, LMC_ATIME_DB};
    MDB_cursor *cur = NULL;
    MDB_val k, v;
    size_t i;
    int rc, bare = 1;

    rc = mdb_cursor_open(txn, dbi, &cur);
    if (rc != 0)
        return rc;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0 && bare;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        for (i = 0, bare = 0; i < sizeof(ours) / sizeof(ours[0]) && !bare; i++)
            bare = k.mv_size == strlen(ours[i]) && memcmp(k.mv_data, ours[i], k.mv_size) == 0;
    }
    mdb_cursor_close(cur);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return rc;
    return bare;
}

static int count_other_pid(const char *msg, void *ctx)
{
    int pid;
    if (sscanf(msg, "%d", &pid) == 1 && pid != (int)getpid()) /* the header line does not scan */
        (*(int *)ctx)++;
    return 0;
}

/* The signature record of a signed cache: its presence says every record
 * carries a MAC, its value (the MAC of LMC_SIGNED_TEXT) names the secret.
 * 0: checked (e is set up to verify when signed), 1: it must be written and
 * the txn is read-only, -1: an exception. */
static int env_check_signed(lmc_state *st, lmc_env *e, const lmc_options *opt, MDB_txn *txn,
                            int writing, int created)
{
    MDB_val key = {6, (void *)"signed"}, val;
    unsigned char id[LMC_MAC_SIZE];
    int rc;

    if (opt->mac != NULL)
        lmc_mac_of(opt->mac, LMC_SIGNED_TEXT, sizeof(LMC_SIGNED_TEXT) - 1, id);
    rc = created ? MDB_NOTFOUND : mdb_get(txn, e->meta_dbi, &key, &val);
    if (rc == 0) {
        if (opt->mac == NULL) {
            PyErr_Format(st->SecretError,
                         "'%s' is a signed cache: open it with its secret (secret= or the "
                         "LMDBCACHE_SECRET environment variable)", e->path);
            return -1;
        }
        if (val.mv_size != LMC_MAC_SIZE || memcmp(val.mv_data, id, LMC_MAC_SIZE) != 0) {
            PyErr_Format(st->SecretError, "'%s' is signed with another secret", e->path);
            return -1;
        }
    }
    else if (rc != MDB_NOTFOUND) {
        lmc_raise(st, rc, "read the signature record", e->path);
        return -1;
    }
    else if (opt->mac != NULL) {
        rc = created ? 1 : env_is_bare(txn, e->main_dbi);
        if (rc == 0 || (rc == 1 && (e->flags & MDB_RDONLY))) {
            PyErr_Format(st->SecretError,
                         "'%s' holds a cache written without a secret, whose records cannot be "
                         "authenticated: open it without secret=, or delete the directory and "
                         "let the cache start empty", e->path);
            return -1;
        }
        if (rc != 1) {
            lmc_raise(st, rc, "read the cache", e->path);
            return -1;
        }
        if (!created) {
            /* another process with the bare cache open would go on writing
             * unsigned records into it (stale readers were reclaimed at open) */
            int others = 0;
            if (mdb_reader_list(e->env, count_other_pid, &others) < 0 || others > 0) {
                PyErr_Format(st->SecretError,
                             "'%s' holds an empty cache without a secret that other processes "
                             "have open: it can be signed (secret=) once they have closed it",
                             e->path);
                return -1;
            }
        }
        if (!writing)
            return 1;
        val.mv_size = LMC_MAC_SIZE;
        val.mv_data = id;
        rc = mdb_put(txn, e->meta_dbi, &key, &val, 0);
        if (rc != 0) {
            lmc_raise(st, rc, "sign the cache", e->path);
            return -1;
        }
    }
    if (opt->mac != NULL) {
        e->is_signed = 1;
        e->mac = *opt->mac;
        memcpy(e->mac_id, id, LMC_MAC_SIZE);
    }
    return 0;
}

/* Check (and on a new cache, write) the format record and the signature
 * record; open the dbi handles. */
static int env_init_meta(lmc_state *st, lmc_env *e, const lmc_options *opt)
{
    MDB_txn *txn = NULL;
    MDB_val key = {6, (void *)"format"}, lmdb_key = {4, (void *)"lmdb"}, val;
    MDB_stat ms;
    char verbuf[16];
    const char *op = "read the cache format";
    long version;
    int rc, readonly = (e->flags & MDB_RDONLY) != 0, writing = 0, major, minor, patch;
    int created = 0;

again:
    if (writing) {
        /* The Env is OPENING: no other thread of this process uses it, so
         * write_lock is not needed to adopt a resized map. */
        Py_BEGIN_ALLOW_THREADS
        rc = lmc_env_reserve(e, 0, LMC_WRITE_GROWS);
        if (rc == 0)
            rc = lmc_env_begin(e, 0, &txn, &_save);
        Py_END_ALLOW_THREADS
    }
    else {
        rc = lmc_env_begin(e, MDB_RDONLY, &txn, NULL);
    }
    if (rc != 0)
        goto lmdb_error;
    rc = mdb_dbi_open(txn, NULL, 0, &e->main_dbi);
    if (rc != 0)
        goto lmdb_error;
    rc = mdb_dbi_open(txn, LMC_META_DB, 0, &e->meta_dbi);
    if (rc == MDB_NOTFOUND) {
        /* No __meta__: a new cache, unless the database holds other things. */
        rc = mdb_stat(txn, e->main_dbi, &ms);
        if (rc != 0)
            goto lmdb_error;
        if (ms.ms_entries != 0) {
            PyErr_Format(st->FormatError,
                         "'%s' holds an LMDB database that is not an lmdbcache cache", e->path);
            goto error;
        }
        if (readonly) {
            PyErr_Format(st->FormatError,
                         "'%s' holds no lmdbcache cache yet and readonly=True cannot create one",
                         e->path);
            goto error;
        }
        if (!writing) {
            mdb_txn_abort(txn);
            txn = NULL;
            writing = 1;
            goto again;
        }
        op = "create the cache";
        rc = mdb_dbi_open(txn, LMC_META_DB, MDB_CREATE, &e->meta_dbi);
        if (rc != 0)
            goto lmdb_error;
        PyOS_snprintf(verbuf, sizeof(verbuf), "%d", LMC_FORMAT_VERSION);
        val.mv_size = strlen(verbuf);
        val.mv_data = verbuf;
        rc = mdb_put(txn, e->meta_dbi, &key, &val, 0);
        if (rc != 0)
            goto lmdb_error;
        /* the LMDB release that created the file (a clue when another
         * release cannot read it) */
        mdb_version(&major, &minor, &patch);
        PyOS_snprintf(verbuf, sizeof(verbuf), "%d.%d.%d", major, minor, patch);
        val.mv_size = strlen(verbuf);
        rc = mdb_put(txn, e->meta_dbi, &lmdb_key, &val, 0);
        if (rc != 0)
            goto lmdb_error;
        created = 1;
    }
    else if (rc != 0) {
        goto lmdb_error;
    }
    else {
        rc = mdb_get(txn, e->meta_dbi, &key, &val);
        if (rc != 0 || parse_format(&val, &version) != 0 || version < 1) {
            PyErr_Format(st->FormatError, "'%s' has a damaged or missing format record",
                         e->path);
            goto error;
        }
        if (version < LMC_FORMAT_VERSION) {
            PyErr_Format(st->FormatError,
                         "'%s' holds a cache of format %ld, written by an older lmdbcache; this "
                         "version reads format %d (its records changed): delete the "
                         "directory or move it away, and the cache starts empty",
                         e->path, version, LMC_FORMAT_VERSION);
            goto error;
        }
        if (version > LMC_FORMAT_VERSION) {
            PyErr_Format(st->FormatError,
                         "'%s' was written by a newer lmdbcache (format %ld); this version "
                         "reads format %d: upgrade lmdbcache or use another directory",
                         e->path, version, LMC_FORMAT_VERSION);
            goto error;
        }
    }
    rc = env_check_signed(st, e, opt, txn, writing, created);
    if (rc < 0)
        goto error;
    if (rc == 1) {
        mdb_txn_abort(txn);
        txn = NULL;
        writing = 1;
        goto again;
    }
    if (lmc_env_evicts(e)) {
        /* the eviction index (and for LRU the access index) */
        op = "create the eviction index";
        rc = mdb_dbi_open(txn, LMC_ORDER_DB, writing ? MDB_CREATE : 0, &e->order_dbi);
        if (rc == 0 && e->policy == LMC_POLICY_LRU)
            rc = mdb_dbi_open(txn, LMC_ATIME_DB, writing ? MDB_CREATE : 0, &e->atime_dbi);
        if (rc == MDB_NOTFOUND && !writing) {
            mdb_txn_abort(txn);
            txn = NULL;
            writing = 1;
            goto again;
        }
        if (rc != 0)
            goto lmdb_error;
    }
    /* Committing (even a read txn) makes the dbi handles env-wide. */
    Py_BEGIN_ALLOW_THREADS
    rc = mdb_txn_commit(txn);
    Py_END_ALLOW_THREADS
    txn = NULL;
    if (rc != 0)
        goto lmdb_error;
    return 0;

lmdb_error:
    lmc_raise(st, rc, op, e->path);
error:
    if (txn != NULL)
        mdb_txn_abort(txn);
    return -1;
}

/* Open a new Env for path.  It is linked into the registry, OPENING, before
 * anything releases the GIL, so other threads wait for it instead of opening
 * the path a second time. */
static lmc_env *env_open(lmc_state *st, const char *path, const struct stat *sb,
                         const lmc_options *opt)
{
    lmc_env *e;
    size_t map_size = opt->map_size;
    const char *op = "open the environment";
    MDB_stat ms;
    MDB_txn *txn;
    size_t file_size = 0;
    int rc, fd, dead, created = 0, locks = 0, lock_fd = -1;

    e = PyMem_RawCalloc(1, sizeof(*e));
    if (e == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    e->path = PyMem_RawMalloc(strlen(path) + 1);
    if (e->path == NULL) {
        PyMem_RawFree(e);
        PyErr_NoMemory();
        return NULL;
    }
    strcpy(e->path, path);
    e->state = LMC_ENV_OPENING;
    e->generation = lmc_fork_generation;
    e->dev = sb->st_dev;
    e->ino = sb->st_ino;
    e->refcnt = 1;
    e->fd = -1;
    e->guard_fd = -1;
    e->next = registry;
    registry = e;

    e->flags = MDB_NOTLS | (opt->readahead ? 0 : MDB_NORDAHEAD); /* see lmc_env_warm */
    if (opt->readonly)
        e->flags |= MDB_RDONLY;
    else if (!opt->sync)
        e->flags |= MDB_NOSYNC | MDB_WRITEMAP; /* see space.c */
    e->size_limit = opt->size_limit;
    e->policy = opt->policy;
    if (e->size_limit != 0 && map_size > lmc_env_map_cap(e))
        map_size = lmc_env_map_cap(e);
    if (pthread_mutex_init(&e->write_lock, NULL) != 0) {
        PyErr_SetString(PyExc_MemoryError, "pthread_mutex_init failed");
        goto error;
    }
    if (pthread_mutex_init(&e->lru_lock, NULL) != 0) {
        pthread_mutex_destroy(&e->write_lock);
        PyErr_SetString(PyExc_MemoryError, "pthread_mutex_init failed");
        goto error;
    }
    locks = 1;
    if (lmc_guard_enter(st, e, opt, &lock_fd) < 0)
        goto error;
    if (lmc_files_check(st, e, opt, &file_size) < 0)
        goto error;
    /* never map less than the file: LMDB would truncate it (see size_lock) */
    if (file_size > map_size)
        map_size = file_size;
    rc = mdb_env_create(&e->env);
    if (rc != 0)
        goto lmdb_error;
    created = 1;
    if ((rc = mdb_env_set_maxreaders(e->env, opt->max_readers)) != 0 ||
        (rc = mdb_env_set_maxdbs(e->env, LMC_MAX_DBS)) != 0 ||
        (rc = mdb_env_set_mapsize(e->env, map_size)) != 0)
        goto lmdb_error;
    Py_BEGIN_ALLOW_THREADS
    rc = mdb_env_open(e->env, path, e->flags, 0600);
    Py_END_ALLOW_THREADS
    if (rc != 0)
        goto lmdb_error;
    /* LMDB leaves the data descriptor inheritable: an exec'd program must not
     * keep it (nor hold the file open after we close it). */
    op = "set close-on-exec";
    rc = mdb_env_get_fd(e->env, &fd);
    if (rc != 0)
        goto lmdb_error;
    e->fd = fd;
    e->can_reserve = 1;

    if (fcntl(fd, F_SETFD, fcntl(fd, F_GETFD) | FD_CLOEXEC) == -1) {
        rc = errno;
        goto lmdb_error;
    }
    if (mdb_env_get_maxkeysize(e->env) < LMC_MAX_KEY) {
        PyErr_Format(st->Error, "liblmdb was built with a key limit below %d bytes",
                     LMC_MAX_KEY);
        goto error;
    }
    op = "reclaim stale readers";
    if ((rc = mdb_reader_check(e->env, &dead)) != 0)
        goto lmdb_error;
    op = "stat the environment";
    if ((rc = mdb_env_stat(e->env, &ms)) != 0)
        goto lmdb_error;
    e->page_size = ms.ms_psize;
    if (env_init_meta(st, e, opt) < 0)
        goto error;
    /* Take this Env's reader slot now: the slot table then tells which
     * processes have the cache open (see lmc_marker_release). */
    {
        struct stat fsb; /* where the map is, for the bounds check of reads */
        if (fstat(fd, &fsb) == 0)
            lmc_env_note_map(e, (size_t)fsb.st_size, 1);
    }
    op = "begin a read";
    if ((rc = read_begin_slow(e, &txn)) != 0)
        goto lmdb_error;
    lmc_read_end(e, txn);
    if (opt->boot_id != NULL && (e->flags & MDB_NOSYNC) && lmc_marker_create(st, e, opt) < 0)
        goto error;
    lmc_guard_leave(lock_fd);
    /* Only now: while OPENING, lock_fd holds the flock for the whole open, and
     * size_unlock on it would drop that early. */
    e->guard_fd = lock_fd;
    e->state = LMC_ENV_OPEN;
    if (lmc_guard_warn(e) < 0) {
        lmc_env_release(e);
        return NULL;
    }
    return e;

lmdb_error:
    lmc_raise(st, rc, op, path);
error:
    if (lock_fd >= 0)
        close(lock_fd);
    if (e->rtxn != NULL)
        mdb_txn_abort(e->rtxn);
    lmc_ns_free(e);
    lmc_evict_free(e);
    if (created)
        mdb_env_close(e->env);
    if (locks) {
        pthread_mutex_destroy(&e->write_lock);
        pthread_mutex_destroy(&e->lru_lock);
    }
    registry_unlink(e);
    env_free(e);
    return NULL;
}

lmc_env *lmc_env_acquire(lmc_state *st, const char *path, const lmc_options *opt)
{
    struct stat sb;
    lmc_env *e;
    const char *clash = NULL;

    if (lmc_trust_check(st, path, opt) < 0)
        return NULL;
    if (stat(path, &sb) != 0) {
        lmc_raise(st, errno, "open the cache directory", path);
        return NULL;
    }
    if (!S_ISDIR(sb.st_mode)) {
        lmc_raise(st, ENOTDIR, "open the cache directory", path);
        return NULL;
    }
again:
    for (e = registry; e != NULL; e = e->next) {
        if (e->dev == sb.st_dev && e->ino == sb.st_ino)
            break;
    }
    if (e == NULL)
        return env_open(st, path, &sb, opt);
    if (e->state != LMC_ENV_OPEN) {
        /* another thread is opening or closing it: wait, never open twice */
        Py_BEGIN_ALLOW_THREADS
        lmc_sleep_ms(1);
        Py_END_ALLOW_THREADS
        goto again;
    }
    /* A read-only opener only reads: any open Env of the path serves it. */
    if ((e->flags & MDB_RDONLY) && !opt->readonly)
        clash = "it is open read-only; close those caches to open it for writing";
    else if (opt->readonly)
        clash = NULL;
    else if (((e->flags & MDB_NOSYNC) == 0) != (opt->sync != 0))
        clash = "it is open with another durability";
    else if (e->size_limit != opt->size_limit)
        clash = "it is open with another size_limit";
    else if (e->size_limit != 0 && e->policy != opt->policy)
        clash = "it is open with another eviction_policy";
    if (clash != NULL) {
        PyErr_Format(st->Error, "cannot open '%s' in this process: %s", path, clash);
        return NULL;
    }
    if (e->is_signed || opt->mac != NULL) {
        /* every Store of a signed Env has its secret */
        unsigned char id[LMC_MAC_SIZE];
        if (opt->mac != NULL)
            lmc_mac_of(opt->mac, LMC_SIGNED_TEXT, sizeof(LMC_SIGNED_TEXT) - 1, id);
        if (!e->is_signed)
            clash = "holds a cache written without a secret, and secret= was given";
        else if (opt->mac == NULL)
            clash = "is a signed cache: open it with its secret (secret= or the "
                    "LMDBCACHE_SECRET environment variable)";
        else if (memcmp(id, e->mac_id, LMC_MAC_SIZE) != 0)
            clash = "is signed with another secret";
        if (clash != NULL) {
            PyErr_Format(st->SecretError, "'%s' %s", path, clash);
            return NULL;
        }
    }
    e->refcnt++;
    return e;
}
