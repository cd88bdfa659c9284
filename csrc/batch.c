/*
 * batch.c -- the Store's multi-key methods (get_many, set_many, delete_many),
 * scans (clear, expire, prefix count/delete), explicit transactions and the
 * transaction context manager, sync and introspection.
 *
 * Same rules as store.c: every method holds a reference on its Env from its
 * first line to its last (lmc_store_enter/lmc_store_leave), and keys given by
 * the caller are held as strong references (lmc_objs_from) -- never through a
 * list's item array, which user code run while encoding or decoding could
 * change.
 */
#include "lmdbcache.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* See lmdbcache.h and docs/architecture.md, "Readahead".  The used part of
 * data.mdb, on a descriptor of its own (never lock.mdb: closing any descriptor
 * of that file drops the process's fcntl locks on it) and a mapping of its own
 * (LMDB tells not where its map is: me_mapaddr is the MDB_FIXEDMAP address):
 * mincore says which 1 MiB chunks are not all in the page cache, and those are
 * read with pread.  A warm file costs one mincore. */
#define WARM_CHUNK ((size_t)1 << 20)

static void warm_file(int fd, size_t used)
{
    size_t os_page = (size_t)sysconf(_SC_PAGESIZE), np = (used + os_page - 1) / os_page;
    size_t off, i, lo, hi;
    unsigned char *vec = malloc(np), all;
    char *buf = malloc(WARM_CHUNK);
    void *map = mmap(NULL, used, PROT_READ, MAP_SHARED, fd, 0);

    if (vec != NULL && buf != NULL && map != MAP_FAILED && mincore(map, used, vec) == 0) {
        /* a larger kernel readahead window for these preads */
        (void)posix_fadvise(fd, 0, (off_t)used, POSIX_FADV_SEQUENTIAL);
        for (off = 0; off < used; off += WARM_CHUNK) {
            lo = off / os_page;
            hi = (off + WARM_CHUNK) / os_page;
            for (all = 1, i = lo; i < hi && i < np; i++)
                all &= vec[i];
            if (!(all & 1) &&
                pread(fd, buf, used - off < WARM_CHUNK ? used - off : WARM_CHUNK, (off_t)off) <= 0)
                break;
        }
    }
    if (map != MAP_FAILED)
        munmap(map, used);
    free(vec);
    free(buf);
}

void lmc_env_warm(lmc_env *e)
{
    MDB_envinfo info;
    struct stat sb;
    size_t used, n = strlen(e->path) + sizeof("/data.mdb");
    double now = lmc_now();
    char *path;
    int fd;

    if (!(e->flags & MDB_NORDAHEAD) || now - e->warmed_at < LMC_WARM_INTERVAL ||
        mdb_env_info(e->env, &info) != 0 || (path = PyMem_RawMalloc(n)) == NULL)
        return;
    e->warmed_at = now;
    used = (info.me_last_pgno + 1) * e->page_size;
    PyOS_snprintf(path, n, "%s/data.mdb", e->path);
    Py_BEGIN_ALLOW_THREADS
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd >= 0) {
        if (fstat(fd, &sb) == 0 && used > (size_t)sb.st_size)
            used = (size_t)sb.st_size;
        if (used > 0)
            warm_file(fd, used);
        close(fd);
    }
    Py_END_ALLOW_THREADS
    PyMem_RawFree(path);
}

/* get_many(keys) -> dict of the hits, read from one snapshot. */
PyObject *lmc_store_get_many(StoreObject *self, PyObject *keys)
{
    lmc_state *st = self->state;
    lmc_env *e;
    PyObject **kobjs = NULL, **vals = NULL, *result = NULL;
    lmc_keyset ks = {NULL, NULL, 0};
    int *pending = NULL;
    const char *why = NULL;
    lmc_record rec;
    MDB_txn *txn;
    MDB_dbi dbi;
    Py_ssize_t n = 0, i;
    int rc = 0, status = LMC_ABSENT, failed = 0;

    if ((e = lmc_store_enter(self, &dbi)) == NULL)
        return NULL;
    if (lmc_objs_from(keys, "get_many() expects an iterable of keys", &kobjs, &n) < 0)
        goto leave;
    vals = PyMem_Calloc((size_t)n + 1, sizeof(*vals));
    pending = PyMem_Calloc((size_t)n + 1, sizeof(*pending));
    if (vals == NULL || pending == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (lmc_keyset_build(&self->codec, kobjs, n, &ks) < 0)
        goto done;
    rc = lmc_read_begin(e, &txn);
    if (rc != 0) {
        lmc_raise_env(st, rc, "begin a read", e);
        goto done;
    }
    /* under the txn: copies and native objects only (no user code) */
    for (i = 0; i < n; i++) {
        int p = 0;
        rc = lmc_lookup(e, txn, dbi, self->dbname, &ks.refs[i], &rec, &status, &why);
        if (rc != 0 || status == LMC_CORRUPT)
            break;
        if (status != LMC_LIVE)
            continue;
        vals[i] = lmc_record_take(&rec, &p);
        if (vals[i] == NULL) {
            failed = 1;
            break;
        }
        pending[i] = p;
    }
    lmc_read_end(e, txn);
    if (failed) {
        lmc_value_finish(&self->codec, NULL, 0, e->path); /* invalid UTF-8 -> CorruptError */
        goto done;
    }
    if (rc != 0) {
        lmc_raise_env(st, rc, "read", e);
        goto done;
    }
    if (status == LMC_CORRUPT) {
        PyErr_Format(st->CorruptError, "corrupt record in '%s': %s", e->path, why);
        goto done;
    }
    result = PyDict_New();
    if (result == NULL)
        goto done;
    for (i = 0; i < n; i++) {
        PyObject *value;
        if (vals[i] == NULL) {
            self->misses++;
            continue;
        }
        self->hits++;
        if (e->policy == LMC_POLICY_LRU && lmc_env_evicts(e))
            lmc_lru_touch(e, self->dbname, &ks.refs[i].val);
        value = lmc_value_finish(&self->codec, vals[i], pending[i], e->path);
        vals[i] = NULL;
        if (value == NULL || PyDict_SetItem(result, kobjs[i], value) < 0) {
            Py_XDECREF(value);
            Py_CLEAR(result);
            goto done;
        }
        Py_DECREF(value);
    }
done:
    lmc_keyset_free(&ks);
    if (vals != NULL) {
        for (i = 0; i < n; i++)
            Py_XDECREF(vals[i]);
    }
    PyMem_Free(vals);
    PyMem_Free(pending);
    if (kobjs != NULL)
        lmc_objs_free(kobjs, n);
leave:
    lmc_store_leave(e);
    return result;
}

/* _set_many(pairs, ttl=None): pairs is any iterable of 2-item sequences, as
 * for dict.update: a non-sequence item is a TypeError, a sequence of another
 * length a ValueError.  All or nothing is stored. */
PyObject *lmc_store_set_many(StoreObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject **items = NULL, **keys = NULL, **values = NULL;
    double expires;
    Py_ssize_t n = 0, i, held = 0;
    int rc = -1;

    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "_set_many(pairs, ttl=None)");
        return NULL;
    }
    if (lmc_parse_ttl(self, nargs == 2 ? args[1] : NULL, &expires) < 0)
        return NULL;
    if (lmc_objs_from(args[0], "set_many() expects a mapping or (key, value) pairs", &items,
                      &n) < 0)
        return NULL;
    keys = PyMem_Malloc(((size_t)n + 1) * sizeof(PyObject *));
    values = PyMem_Malloc(((size_t)n + 1) * sizeof(PyObject *));
    if (keys == NULL || values == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (i = 0; i < n; i++) {
        PyObject *pair = PySequence_Fast(items[i], "");
        if (pair == NULL) {
            PyErr_Format(PyExc_TypeError,
                         "cannot convert update sequence element #%zd to a sequence", i);
            goto done;
        }
        if (PySequence_Fast_GET_SIZE(pair) != 2) {
            PyErr_Format(PyExc_ValueError,
                         "update sequence element #%zd has length %zd; 2 is required", i,
                         PySequence_Fast_GET_SIZE(pair));
            Py_DECREF(pair);
            goto done;
        }
        keys[i] = Py_NewRef(PySequence_Fast_GET_ITEM(pair, 0));
        values[i] = Py_NewRef(PySequence_Fast_GET_ITEM(pair, 1));
        Py_DECREF(pair);
        held++;
    }
    rc = n == 0 ? 0 : lmc_store_put(self, keys, values, n, expires, LMC_PUT_OVERWRITE);
done:
    for (i = 0; i < held; i++) {
        Py_DECREF(keys[i]);
        Py_DECREF(values[i]);
    }
    PyMem_Free(keys);
    PyMem_Free(values);
    lmc_objs_free(items, n);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyObject *lmc_store_delete_many(StoreObject *self, PyObject *keys)
{
    PyObject **kobjs;
    Py_ssize_t n, rc;

    if (lmc_objs_from(keys, "delete_many() expects an iterable of keys", &kobjs, &n) < 0)
        return NULL;
    rc = n == 0 ? 0 : lmc_store_remove(self, kobjs, n, NULL, NULL);
    lmc_objs_free(kobjs, n);
    if (rc < 0)
        return NULL;
    return PyLong_FromSsize_t(rc);
}

/* ---- scans -------------------------------------------------------------------- */

static PyObject *store_scan_write(StoreObject *self, lmc_write_fn fn, const char *op)
{
    MDB_stat ms;
    MDB_txn *txn;
    lmc_env *e;
    lmc_scan_arg a;
    MDB_dbi dbi;
    PyObject *result = NULL;
    int rc;

    if (lmc_store_check_writable(self) < 0 || (e = lmc_store_enter(self, &dbi)) == NULL)
        return NULL;
    a.dbi = dbi;
    a.dbname = self->dbname;
    a.is_main = dbi == e->main_dbi;
    a.removed = 0;
    lmc_env_warm(e);
    /* deleting keys copies the leaf and branch pages it touches (overflow
     * pages are freed, not copied): reserve room for all of them */
    rc = lmc_read_begin(e, &txn);
    if (rc == 0) {
        rc = mdb_stat(txn, dbi, &ms);
        lmc_read_end(e, txn);
    }
    if (rc == 0)
        rc = lmc_env_write(e, fn, &a, LMC_WRITE_FREES,
                           (ms.ms_branch_pages + ms.ms_leaf_pages) * e->page_size / 2, NULL);
    if (rc != 0)
        lmc_raise_env(self->state, rc, op, e);
    else
        result = PyLong_FromSize_t(a.removed);
    lmc_store_leave(e);
    return result;
}

PyObject *lmc_store_clear(StoreObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *r = store_scan_write(self, lmc_clear_fn, "clear");
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

PyObject *lmc_store_expire(StoreObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *r = store_scan_write(self, lmc_expire_fn, "remove expired entries");
    if (r != NULL)
        self->expirations += PyLong_AsUnsignedLongLong(r);
    return r;
}

static PyObject *store_prefix(StoreObject *self, PyObject *prefix, int delete)
{
    lmc_env *e;
    lmc_key k;
    MDB_txn *txn;
    MDB_dbi dbi;
    lmc_prefix_arg a;
    PyObject *result = NULL;
    int rc;

    if (!PyTuple_CheckExact(prefix) || PyTuple_GET_SIZE(prefix) == 0) {
        PyErr_SetString(PyExc_TypeError, "prefix must be a non-empty tuple");
        return NULL;
    }
    if ((delete && lmc_store_check_writable(self) < 0) || (e = lmc_store_enter(self, &dbi)) == NULL)
        return NULL;
    if (lmc_key_encode(&self->codec, prefix, &k) < 0)
        goto leave;
    if (k.r.full != NULL) {
        PyErr_SetString(PyExc_ValueError, "prefix is too long");
        goto clear;
    }
    a.dbi = dbi;
    a.prefix = k.r.val;
    a.delete = delete;
    if (delete) {
        rc = lmc_env_write(e, lmc_prefix_fn, &a, LMC_WRITE_FREES, 0, NULL);
    }
    else if ((rc = lmc_read_begin(e, &txn)) == 0) {
        rc = lmc_prefix_scan(txn, &a);
        lmc_read_end(e, txn);
    }
    if (rc != 0) {
        lmc_raise_env(self->state, rc, delete ? "delete keys" : "count keys", e);
        goto clear;
    }
    if (delete)
        self->deletes += a.count;
    result = PyLong_FromSize_t(a.count);
clear:
    lmc_key_clear(&k);
leave:
    lmc_store_leave(e);
    return result;
}

PyObject *lmc_store_prefix_count(StoreObject *self, PyObject *prefix)
{
    return store_prefix(self, prefix, 0);
}

PyObject *lmc_store_prefix_delete(StoreObject *self, PyObject *prefix)
{
    return store_prefix(self, prefix, 1);
}

/* ---- transactions ---------------------------------------------------------------- */

PyObject *lmc_store_txn_begin(StoreObject *self, PyObject *Py_UNUSED(ignored))
{
    lmc_env *e;
    MDB_dbi dbi;
    int rc;
    if (lmc_store_check_writable(self) < 0 || (e = lmc_store_enter(self, &dbi)) == NULL)
        return NULL;
    rc = lmc_env_txn_begin(e);
    if (rc != 0)
        lmc_raise_env(self->state, rc, "begin a transaction", e);
    lmc_store_leave(e);
    if (rc != 0)
        return NULL;
    Py_RETURN_NONE;
}

PyObject *lmc_store_txn_end(StoreObject *self, PyObject *commit)
{
    lmc_env *e;
    MDB_dbi dbi;
    int rc, c = PyObject_IsTrue(commit);
    if (c < 0 || (e = lmc_store_enter(self, &dbi)) == NULL)
        return NULL;
    rc = lmc_env_txn_end(e, c);
    if (rc != 0)
        lmc_raise_env(self->state, rc, "commit the transaction", e);
    lmc_store_leave(e);
    if (rc != 0)
        return NULL;
    Py_RETURN_NONE;
}

PyObject *lmc_store_in_txn(StoreObject *self, PyObject *Py_UNUSED(ignored))
{
    lmc_env *e = self->env;
    return PyBool_FromLong(e != NULL && lmc_env_is_current(e) && lmc_env_in_txn(e));
}

/* The context manager of Store.transaction(), in C so that no Python code --
 * and so no asynchronous exception such as KeyboardInterrupt from a signal
 * handler -- can run between beginning the transaction and the `with`
 * statement's protection of it, nor between ending it and returning. */
typedef struct {
    PyObject_HEAD
    StoreObject *store;
    lmc_env *env;      /* the Env the transaction began on (a reference), or NULL */
} TxnObject;

PyObject *lmc_store_transaction(StoreObject *self, PyObject *Py_UNUSED(ignored))
{
    TxnObject *t = PyObject_GC_New(TxnObject, self->state->TxnType);
    if (t == NULL)
        return NULL;
    t->store = (StoreObject *)Py_NewRef(self);
    t->env = NULL;
    PyObject_GC_Track(t);
    return (PyObject *)t;
}

static PyObject *txn_enter(TxnObject *t, PyObject *Py_UNUSED(ignored))
{
    StoreObject *s = t->store;
    lmc_env *e;
    MDB_dbi dbi;
    int rc;

    if (t->env != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "this transaction() was entered already");
        return NULL;
    }
    if (lmc_store_check_writable(s) < 0 || (e = lmc_store_enter(s, &dbi)) == NULL)
        return NULL;
    rc = lmc_env_txn_begin(e);
    if (rc != 0) {
        lmc_raise_env(s->state, rc, "begin a transaction", e);
        lmc_store_leave(e);
        return NULL;
    }
    t->env = e; /* keeps the call's reference until __exit__ */
    return Py_NewRef((PyObject *)s);
}

static PyObject *txn_exit(TxnObject *t, PyObject *const *args, Py_ssize_t nargs)
{
    lmc_env *e = t->env;
    int rc;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "__exit__(exc_type, exc, tb)");
        return NULL;
    }
    if (e == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "this transaction() was not entered");
        return NULL;
    }
    t->env = NULL;
    rc = lmc_env_is_current(e) ? lmc_env_txn_end(e, args[0] == Py_None) : LMC_ERR_NO_TXN;
    if (rc != 0)
        lmc_raise_env(t->store->state, rc, "commit the transaction", e);
    lmc_store_leave(e);
    if (rc != 0)
        return NULL;
    Py_RETURN_FALSE;
}

static int txn_traverse(TxnObject *t, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(t));
    Py_VISIT(t->store);
    return 0;
}

static int txn_clear(TxnObject *t)
{
    Py_CLEAR(t->store);
    return 0;
}

static void txn_dealloc(TxnObject *t)
{
    PyTypeObject *tp = Py_TYPE(t);
    lmc_env *e = t->env;
    PyObject_GC_UnTrack(t);
    t->env = NULL;
    if (e != NULL) {
        /* entered, never exited: roll back if this thread owns it */
        if (lmc_env_is_current(e) && lmc_env_in_txn(e))
            (void)lmc_env_txn_end(e, 0);
        lmc_env_release(e);
    }
    txn_clear(t);
    PyObject_GC_Del(t);
    Py_DECREF(tp);
}

static PyMethodDef txn_methods[] = {
    {"__enter__", (PyCFunction)txn_enter, METH_NOARGS, "Begin the transaction."},
    {"__exit__", (PyCFunction)(void (*)(void))txn_exit, METH_FASTCALL,
     "Commit the transaction, or roll it back when the block raised."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot txn_slots[] = {
    {Py_tp_methods, txn_methods},
    {Py_tp_traverse, txn_traverse},
    {Py_tp_clear, txn_clear},
    {Py_tp_dealloc, txn_dealloc},
    {0, NULL},
};

PyType_Spec lmc_txn_spec = {
    .name = "lmdbcache._core.Transaction",
    .basicsize = sizeof(TxnObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = txn_slots,
};

/* ---- sync and introspection --------------------------------------------------- */

PyObject *lmc_store_sync(StoreObject *self, PyObject *Py_UNUSED(ignored))
{
    lmc_env *e;
    MDB_dbi dbi;
    int rc;
    if ((e = lmc_store_enter(self, &dbi)) == NULL)
        return NULL;
    rc = lmc_env_sync(e);
    if (rc != 0)
        lmc_raise_env(self->state, rc, "sync", e);
    lmc_store_leave(e);
    if (rc != 0)
        return NULL;
    Py_RETURN_NONE;
}

PyObject *lmc_store_stats(StoreObject *self, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames)
{
    static const char *const names[] = {"reset"};
    PyObject *d, *p[1];
    int reset = 0;
    if (lmc_parse_args(args, nargs, kwnames, "stats", names, 0, 1, p) < 0)
        return NULL;
    if (p[0] != NULL && (reset = PyObject_IsTrue(p[0])) < 0)
        return NULL;
    d = Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K}", "hits", self->hits, "misses", self->misses,
                      "sets", self->sets, "deletes", self->deletes, "evictions",
                      self->evictions, "expirations", self->expirations);
    if (d != NULL && reset)
        self->hits = self->misses = self->sets = self->deletes = self->evictions =
            self->expirations = 0;
    return d;
}

PyObject *lmc_store_env_info(StoreObject *self, PyObject *Py_UNUSED(ignored))
{
    lmc_env *e;
    MDB_envinfo info;
    MDB_stat ms, ns;
    MDB_txn *txn;
    MDB_dbi dbi;
    PyObject *result = NULL;
    size_t pages;
    int rc;

    if ((e = lmc_store_enter(self, &dbi)) == NULL)
        return NULL;
    if ((rc = mdb_env_info(e->env, &info)) != 0 || (rc = mdb_env_stat(e->env, &ms)) != 0 ||
        (rc = lmc_read_begin(e, &txn)) != 0)
        goto lmdb_error;
    rc = mdb_stat(txn, dbi, &ns);
    lmc_read_end(e, txn);
    if (rc != 0)
        goto lmdb_error;
    pages = ns.ms_branch_pages + ns.ms_leaf_pages + ns.ms_overflow_pages;
    result = Py_BuildValue(
        "{s:n,s:n,s:n,s:n,s:I,s:I,s:n,s:i}", "map_size", (Py_ssize_t)info.me_mapsize,
        "used_bytes", (Py_ssize_t)((info.me_last_pgno + 1) * ms.ms_psize), "namespace_bytes",
        (Py_ssize_t)(pages * ms.ms_psize), "page_size", (Py_ssize_t)ms.ms_psize, "max_readers",
        info.me_maxreaders, "readers", info.me_numreaders, "size_limit",
        (Py_ssize_t)e->size_limit, "bounds_checked", e->map_lo != NULL);
    goto leave;
lmdb_error:
    lmc_raise_env(self->state, rc, "read environment info", e);
leave:
    lmc_store_leave(e);
    return result;
}
