/*
 * envopen.c -- opening an Env: lmc_env_acquire, the open itself and the
 * checks of the cache's format and signature records.
 *
 * The lifetime, registry and transaction rules are in the CONTRACT at the top
 * of env.c; the registry itself (lmc_env_registry) lives there too.
 */
#include "lmdbcache.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LMC_MAX_DBS 64

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
    e->next = lmc_env_registry;
    lmc_env_registry = e;

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
    if ((rc = lmc_read_begin_slow(e, &txn)) != 0)
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
    lmc_registry_unlink(e);
    lmc_env_free(e);
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
    for (e = lmc_env_registry; e != NULL; e = e->next) {
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
