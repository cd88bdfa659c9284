/*
 * store.c -- the Store type: the mapping over one LMDB environment, and the
 * iterator over its keys, values or items.
 *
 * Every entry point first calls store_env(), which compares the Env's fork
 * generation with the process's (an integer compare) and reopens lazily when
 * the Env was inherited from a parent or the Store was closed.
 *
 * Reentrancy: user code (pickle's __reduce__/__setstate__, __hash__, GC
 * finalizers) never runs while a read txn is live: values are copied out of
 * the map and the txn is reset before anything is unpickled.  Writes encode
 * (and pickle) before the write txn begins; the txn then runs with the GIL
 * released and touches no Python object.
 */
#include "lmdbcache.h"

#include <string.h>
#include <time.h>

#define ITER_CHUNK 64

typedef struct {
    PyObject_HEAD
    lmc_state *state;
    lmc_env *env;     /* NULL when closed (reopened on next use) */
    char *path;       /* absolute directory path (filesystem encoding) */
    lmc_options opt;
} StoreObject;

typedef struct {
    PyObject_HEAD
    StoreObject *store;
    PyObject *last;   /* raw encoding of the last key visited, or NULL */
    PyObject *chunk;  /* list of ready results */
    Py_ssize_t pos;
    int mode;         /* 0 keys, 1 values, 2 items */
    int done;
} IterObject;

static double lmc_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline int record_expired(const lmc_record *rec)
{
    return (rec->flags & LMC_FLAG_EXPIRES) && rec->expires <= lmc_now();
}

/* ---- the Env of a Store ---------------------------------------------------- */

static lmc_env *store_reopen(StoreObject *self)
{
    if (self->path == NULL) {
        PyErr_SetString(PyExc_ValueError, "Store.__init__ was not called");
        return NULL;
    }
    if (self->env != NULL) {
        lmc_env_release(self->env); /* abandons it if inherited */
        self->env = NULL;
    }
    self->env = lmc_env_acquire(self->state, self->path, &self->opt);
    return self->env;
}

static inline lmc_env *store_env(StoreObject *self)
{
    lmc_env *e = self->env;
    if (LMC_LIKELY(e != NULL && lmc_env_is_current(e)))
        return e;
    return store_reopen(self);
}

static int store_check_writable(StoreObject *self)
{
    if (LMC_UNLIKELY(self->opt.readonly)) {
        PyErr_Format(self->state->ReadOnlyError,
                     "cannot write to '%s': the cache was opened with readonly=True", self->path);
        return -1;
    }
    return 0;
}

static void store_raise_write(StoreObject *self, lmc_env *e, int rc, const char *op)
{
    if (rc == MDB_MAP_FULL && e->size_limit != 0)
        PyErr_Format(self->state->MapFullError,
                     "cannot %s in '%s': the cache reached its size_limit of %zu bytes "
                     "(delete entries or raise size_limit)", op, self->path, e->size_limit);
    else
        lmc_raise(self->state, rc, op, self->path);
}

static void raise_key_error(PyObject *key)
{
    PyObject *t = PyTuple_Pack(1, key);
    if (t != NULL) {
        PyErr_SetObject(PyExc_KeyError, t);
        Py_DECREF(t);
    }
}

/* ---- construction ---------------------------------------------------------- */

static int store_init(StoreObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"path", "map_size", "size_limit", "readonly", "sync",
                             "max_readers", NULL};
    PyObject *path = NULL;
    Py_ssize_t map_size = (Py_ssize_t)1 << 30, size_limit = 0;
    int readonly = 0, sync = 0;
    unsigned int max_readers = 1024;
    lmc_env *e;
    char *copy;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O&|$nnppI:Store", kwlist,
                                     PyUnicode_FSConverter, &path, &map_size, &size_limit,
                                     &readonly, &sync, &max_readers))
        return -1;
    if (map_size <= 0 || size_limit < 0 || max_readers == 0) {
        PyErr_SetString(PyExc_ValueError,
                        "map_size and max_readers must be positive, size_limit non-negative");
        goto error;
    }
    copy = PyMem_RawMalloc((size_t)PyBytes_GET_SIZE(path) + 1);
    if (copy == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    strcpy(copy, PyBytes_AS_STRING(path));
    Py_CLEAR(path);
    if (self->env != NULL) {
        lmc_env_release(self->env);
        self->env = NULL;
    }
    PyMem_RawFree(self->path);
    self->path = copy;
    self->opt.map_size = (size_t)map_size;
    self->opt.size_limit = (size_t)size_limit;
    self->opt.readonly = readonly;
    self->opt.sync = sync;
    self->opt.max_readers = max_readers;
    e = store_reopen(self);
    return e == NULL ? -1 : 0;

error:
    Py_XDECREF(path);
    return -1;
}

static PyObject *store_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    StoreObject *self = (StoreObject *)type->tp_alloc(type, 0);
    PyObject *mod;
    (void)args;
    (void)kwds;
    if (self == NULL)
        return NULL;
    mod = PyType_GetModuleByDef(type, &lmc_module_def);
    if (mod == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->state = PyModule_GetState(mod);
    return (PyObject *)self;
}

static int store_traverse(StoreObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static void store_dealloc(StoreObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->env != NULL)
        lmc_env_release(self->env);
    PyMem_RawFree(self->path);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *store_close(StoreObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->env != NULL) {
        lmc_env_release(self->env);
        self->env = NULL;
    }
    Py_RETURN_NONE;
}

/* ---- reads ------------------------------------------------------------------ */

/* Look key up.  Returns the value (new ref), or NULL: with an exception set,
 * or without one for a miss. */
static PyObject *store_lookup(StoreObject *self, PyObject *key)
{
    lmc_state *st = self->state;
    lmc_env *e = store_env(self);
    lmc_key k;
    lmc_record rec;
    MDB_txn *txn;
    MDB_val v;
    PyObject *obj = NULL;
    int rc, pickled = 0;

    if (LMC_UNLIKELY(e == NULL))
        return NULL;
    if (LMC_UNLIKELY(lmc_key_encode(st, key, &k) < 0))
        return NULL;
    rc = lmc_read_begin(e, &txn);
    if (LMC_UNLIKELY(rc != 0)) {
        lmc_key_clear(&k);
        lmc_raise(st, rc, "begin a read", e->path);
        return NULL;
    }
    rc = mdb_get(txn, e->main_dbi, &k.val, &v);
    if (LMC_LIKELY(rc == 0)) {
        if (LMC_UNLIKELY(lmc_record_parse(st, v.mv_data, v.mv_size, &rec, e->path) < 0))
            rc = -1;
        else if (LMC_UNLIKELY(!lmc_record_matches(&rec, &k) || record_expired(&rec)))
            rc = MDB_NOTFOUND;
        else if ((obj = lmc_record_take(&rec, &pickled)) == NULL)
            rc = -2;
    }
    lmc_read_end(e, txn);
    lmc_key_clear(&k);
    if (LMC_LIKELY(rc == 0 || rc == -2))
        return lmc_value_finish(st, obj, pickled, e->path);
    if (rc > 0 || (rc != MDB_NOTFOUND && rc != -1))
        lmc_raise(st, rc, "read", e->path);
    return NULL;
}

static PyObject *store_subscript(StoreObject *self, PyObject *key)
{
    PyObject *value = store_lookup(self, key);
    if (value == NULL && !PyErr_Occurred())
        raise_key_error(key);
    return value;
}

static PyObject *store_get(StoreObject *self, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames)
{
    PyObject *dflt = Py_None, *value;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);

    if (LMC_UNLIKELY(nargs < 1 || nargs + nkw > 2 ||
                     (nkw == 1 && !PyUnicode_Check(PyTuple_GET_ITEM(kwnames, 0))))) {
        PyErr_SetString(PyExc_TypeError, "get(key, default=None)");
        return NULL;
    }
    if (nkw == 1) {
        if (PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "default") != 0) {
            PyErr_Format(PyExc_TypeError, "get() got an unexpected keyword argument '%U'",
                         PyTuple_GET_ITEM(kwnames, 0));
            return NULL;
        }
        dflt = args[1];
    }
    else if (nargs == 2) {
        dflt = args[1];
    }
    value = store_lookup(self, args[0]);
    if (value == NULL && !PyErr_Occurred())
        return Py_NewRef(dflt);
    return value;
}

static int store_contains(StoreObject *self, PyObject *key)
{
    lmc_state *st = self->state;
    lmc_env *e = store_env(self);
    lmc_key k;
    lmc_record rec;
    MDB_txn *txn;
    MDB_val v;
    int rc, found = 0;

    if (e == NULL || lmc_key_encode(st, key, &k) < 0)
        return -1;
    rc = lmc_read_begin(e, &txn);
    if (rc == 0) {
        rc = mdb_get(txn, e->main_dbi, &k.val, &v);
        if (rc == 0) {
            /* a corrupt record is present: `in` says so, reading it raises */
            found = lmc_record_parse_raw(v.mv_data, v.mv_size, &rec) != NULL ||
                    (lmc_record_matches(&rec, &k) && !record_expired(&rec));
        }
        lmc_read_end(e, txn);
    }
    lmc_key_clear(&k);
    if (rc != 0 && rc != MDB_NOTFOUND) {
        lmc_raise(st, rc, "read", e->path);
        return -1;
    }
    return found;
}

static Py_ssize_t store_length(StoreObject *self)
{
    lmc_env *e = store_env(self);
    MDB_txn *txn;
    size_t count = 0;
    int rc;

    if (e == NULL)
        return -1;
    rc = lmc_read_begin(e, &txn);
    if (rc == 0) {
        rc = lmc_env_count(e, txn, &count);
        lmc_read_end(e, txn);
    }
    if (rc != 0) {
        lmc_raise(self->state, rc, "count entries", e->path);
        return -1;
    }
    return (Py_ssize_t)count;
}

/* ---- writes ----------------------------------------------------------------- */

typedef struct {
    MDB_dbi dbi;
    MDB_val key;
    const lmc_key *k;
    const lmc_value *val;
    char *old;        /* pop: copy of the removed record (PyMem_Raw) */
    size_t old_len;
} write_arg;

static int put_fn(MDB_txn *txn, lmc_env *e, void *arg)
{
    write_arg *a = arg;
    MDB_val v;
    int rc;
    (void)e;
    v.mv_size = lmc_value_size(a->val);
    v.mv_data = NULL;
    rc = mdb_put(txn, a->dbi, &a->key, &v, MDB_RESERVE);
    if (rc == 0)
        lmc_value_write(a->val, v.mv_data);
    return rc;
}

/* Delete the record of a->k; MDB_NOTFOUND when absent.  With a->old set to
 * non-NULL storage request, the removed record is copied out first. */
static int del_fn(MDB_txn *txn, lmc_env *e, void *arg)
{
    write_arg *a = arg;
    MDB_val v;
    lmc_record rec;
    int rc;
    (void)e;
    PyMem_RawFree(a->old);
    a->old = NULL;
    rc = mdb_get(txn, a->dbi, &a->key, &v);
    if (rc != 0)
        return rc;
    if (lmc_record_parse_raw(v.mv_data, v.mv_size, &rec) == NULL &&
        (!lmc_record_matches(&rec, a->k) || record_expired(&rec))) {
        if (!lmc_record_matches(&rec, a->k))
            return MDB_NOTFOUND; /* another key with the same digest */
        rc = mdb_del(txn, a->dbi, &a->key, NULL); /* expired: gone anyway */
        return rc == 0 ? MDB_NOTFOUND : rc;
    }
    if (a->old_len == 1) { /* pop: keep a copy */
        a->old = PyMem_RawMalloc(v.mv_size ? v.mv_size : 1);
        if (a->old == NULL)
            return ENOMEM;
        memcpy(a->old, v.mv_data, v.mv_size);
        a->old_len = v.mv_size;
    }
    return mdb_del(txn, a->dbi, &a->key, NULL);
}

static int clear_fn(MDB_txn *txn, lmc_env *e, void *arg)
{
    MDB_cursor *cur;
    MDB_val k = {1, (void *)"b"}, v;
    int rc;
    (void)arg;
    rc = mdb_cursor_open(txn, e->main_dbi, &cur);
    if (rc != 0)
        return rc;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        rc = mdb_cursor_del(cur, 0);
        if (rc != 0)
            break;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int store_put(StoreObject *self, PyObject *key, PyObject *value, double expires)
{
    lmc_state *st = self->state;
    lmc_env *e;
    lmc_key k;
    lmc_value val;
    write_arg a;
    int rc;

    if (store_check_writable(self) < 0 || (e = store_env(self)) == NULL)
        return -1;
    if (lmc_key_encode(st, key, &k) < 0)
        return -1;
    if (lmc_value_encode(st, value, &k, expires, &val) < 0) {
        lmc_key_clear(&k);
        return -1;
    }
    a.dbi = e->main_dbi;
    a.key = k.val;
    a.k = &k;
    a.val = &val;
    rc = lmc_env_write(e, put_fn, &a, LMC_WRITE_GROWS, lmc_value_size(&val) + k.val.mv_size);
    lmc_value_clear(&val);
    lmc_key_clear(&k);
    if (rc != 0) {
        store_raise_write(self, e, rc, "store a value");
        return -1;
    }
    return 0;
}

/* Delete key.  Returns 1 deleted, 0 absent, -1 error.  With `old`, the removed
 * record is returned through it (PyMem_Raw memory, caller frees). */
static int store_remove(StoreObject *self, PyObject *key, char **old, size_t *old_len)
{
    lmc_state *st = self->state;
    lmc_env *e;
    lmc_key k;
    write_arg a;
    int rc;

    if (store_check_writable(self) < 0 || (e = store_env(self)) == NULL)
        return -1;
    if (lmc_key_encode(st, key, &k) < 0)
        return -1;
    a.dbi = e->main_dbi;
    a.key = k.val;
    a.k = &k;
    a.old = NULL;
    a.old_len = old != NULL;
    rc = lmc_env_write(e, del_fn, &a, LMC_WRITE_FREES, 0);
    lmc_key_clear(&k);
    if (rc == 0 && old != NULL) {
        *old = a.old;
        *old_len = a.old_len;
    }
    else {
        PyMem_RawFree(a.old);
    }
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc != 0) {
        store_raise_write(self, e, rc, "delete a key");
        return -1;
    }
    return 1;
}

static int store_ass_subscript(StoreObject *self, PyObject *key, PyObject *value)
{
    int rc;
    if (value != NULL)
        return store_put(self, key, value, 0);
    rc = store_remove(self, key, NULL, NULL);
    if (rc == 0)
        raise_key_error(key);
    return rc > 0 ? 0 : -1;
}

static PyObject *store_set(StoreObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set(key, value)");
        return NULL;
    }
    if (store_put(self, args[0], args[1], 0) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *store_delete(StoreObject *self, PyObject *key)
{
    int rc = store_remove(self, key, NULL, NULL);
    if (rc < 0)
        return NULL;
    return PyBool_FromLong(rc);
}

static PyObject *store_pop(StoreObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    lmc_record rec;
    char *old = NULL;
    size_t old_len = 0;
    PyObject *obj;
    int rc, pickled;

    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "pop(key[, default])");
        return NULL;
    }
    rc = store_remove(self, args[0], &old, &old_len);
    if (rc < 0)
        return NULL;
    if (rc == 0) {
        if (nargs == 2)
            return Py_NewRef(args[1]);
        raise_key_error(args[0]);
        return NULL;
    }
    if (lmc_record_parse(self->state, old, old_len, &rec, self->path) < 0) {
        PyMem_RawFree(old);
        return NULL;
    }
    obj = lmc_record_take(&rec, &pickled);
    PyMem_RawFree(old);
    return lmc_value_finish(self->state, obj, pickled, self->path);
}

static PyObject *store_clear(StoreObject *self, PyObject *Py_UNUSED(ignored))
{
    MDB_envinfo info;
    lmc_env *e;
    int rc;

    if (store_check_writable(self) < 0 || (e = store_env(self)) == NULL)
        return NULL;
    /* deleting every key may copy every page: reserve the file's size */
    if ((rc = mdb_env_info(e->env, &info)) == 0)
        rc = lmc_env_write(e, clear_fn, NULL, LMC_WRITE_FREES,
                           (info.me_last_pgno + 1) * e->page_size);
    if (rc != 0) {
        store_raise_write(self, e, rc, "clear");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *store_env_info(StoreObject *self, PyObject *Py_UNUSED(ignored))
{
    lmc_env *e = store_env(self);
    MDB_envinfo info;
    MDB_stat ms;
    int rc;

    if (e == NULL)
        return NULL;
    if ((rc = mdb_env_info(e->env, &info)) != 0 || (rc = mdb_env_stat(e->env, &ms)) != 0) {
        lmc_raise(self->state, rc, "read environment info", e->path);
        return NULL;
    }
    return Py_BuildValue("{s:n,s:n,s:n,s:I,s:I,s:n}", "map_size", (Py_ssize_t)info.me_mapsize,
                         "used_bytes", (Py_ssize_t)((info.me_last_pgno + 1) * ms.ms_psize),
                         "page_size", (Py_ssize_t)ms.ms_psize, "max_readers",
                         info.me_maxreaders, "readers", info.me_numreaders, "size_limit",
                         (Py_ssize_t)e->size_limit);
}

/* ---- iteration --------------------------------------------------------------- */

static PyObject *store_make_iter(StoreObject *self, int mode)
{
    IterObject *it = PyObject_GC_New(IterObject, self->state->IterType);
    if (it == NULL)
        return NULL;
    it->store = (StoreObject *)Py_NewRef(self);
    it->last = NULL;
    it->chunk = NULL;
    it->pos = 0;
    it->mode = mode;
    it->done = 0;
    PyObject_GC_Track(it);
    return (PyObject *)it;
}

static PyObject *store_iter(StoreObject *self)
{
    return store_make_iter(self, 0);
}

static PyObject *store_iter_mode(StoreObject *self, PyObject *arg)
{
    long mode = PyLong_AsLong(arg);
    if (mode == -1 && PyErr_Occurred())
        return NULL;
    if (mode < 0 || mode > 2) {
        PyErr_SetString(PyExc_ValueError, "mode must be 0 (keys), 1 (values) or 2 (items)");
        return NULL;
    }
    return store_make_iter(self, (int)mode);
}

/* Read the next ITER_CHUNK live entries after it->last into it->chunk. */
static int iter_fill(IterObject *it)
{
    StoreObject *s = it->store;
    lmc_state *st = s->state;
    lmc_env *e = store_env(s);
    PyObject *rk[ITER_CHUNK], *rv[ITER_CHUNK], *last = NULL, *chunk = NULL;
    char pk[ITER_CHUNK];
    MDB_txn *txn = NULL;
    MDB_cursor *cur = NULL;
    MDB_val k, v;
    lmc_record rec;
    const char *why = NULL;
    int rc, n = 0, i;

    if (e == NULL)
        return -1;
    rc = lmc_read_begin(e, &txn);
    if (rc != 0)
        goto lmdb_error;
    rc = mdb_cursor_open(txn, e->main_dbi, &cur);
    if (rc != 0)
        goto lmdb_error;
    if (it->last != NULL) {
        k.mv_data = PyBytes_AS_STRING(it->last);
        k.mv_size = (size_t)PyBytes_GET_SIZE(it->last);
        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        if (rc == 0 && k.mv_size == (size_t)PyBytes_GET_SIZE(it->last) &&
            memcmp(k.mv_data, PyBytes_AS_STRING(it->last), k.mv_size) == 0)
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    else {
        k.mv_data = (void *)"b";
        k.mv_size = 1;
        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    }
    /* Under the txn: only copies and native objects, no user code. */
    for (; rc == 0 && n < ITER_CHUNK; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        Py_XSETREF(last, PyBytes_FromStringAndSize(k.mv_data, (Py_ssize_t)k.mv_size));
        if (last == NULL)
            goto error;
        if ((why = lmc_record_parse_raw(v.mv_data, v.mv_size, &rec)) != NULL)
            goto corrupt;
        if (record_expired(&rec))
            continue;
        if (rec.key != NULL)
            rk[n] = PyBytes_FromStringAndSize(rec.key, (Py_ssize_t)rec.key_len);
        else
            rk[n] = Py_NewRef(last);
        if (rk[n] == NULL)
            goto error;
        rv[n] = NULL;
        i = 0;
        if (it->mode != 0 && (rv[n] = lmc_record_take(&rec, &i)) == NULL) {
            Py_DECREF(rk[n]);
            goto error;
        }
        pk[n++] = (char)i;
    }
    if (rc != 0 && rc != MDB_NOTFOUND)
        goto lmdb_error;
    it->done = rc == MDB_NOTFOUND;
    mdb_cursor_close(cur);
    cur = NULL;
    lmc_read_end(e, txn);
    txn = NULL;
    if (last != NULL)
        Py_XSETREF(it->last, last);
    last = NULL;

    /* The txn is over: decode (pickle may run user code). */
    chunk = PyList_New(0);
    if (chunk == NULL)
        goto error;
    for (i = 0; i < n; i++) {
        PyObject *key = NULL, *value = NULL, *res = NULL;
        if (it->mode != 1) {
            key = lmc_key_decode(st, PyBytes_AS_STRING(rk[i]), (size_t)PyBytes_GET_SIZE(rk[i]));
        }
        if (it->mode != 0) {
            value = lmc_value_finish(st, rv[i], pk[i], e->path);
            rv[i] = NULL;
        }
        if (it->mode == 0)
            res = key;
        else if (it->mode == 1)
            res = value;
        else if (key != NULL && value != NULL)
            res = PyTuple_Pack(2, key, value);
        if (it->mode == 2) {
            Py_XDECREF(key);
            Py_XDECREF(value);
        }
        Py_CLEAR(rk[i]);
        if (res == NULL || PyList_Append(chunk, res) < 0) {
            Py_XDECREF(res);
            for (i++; i < n; i++) {
                Py_XDECREF(rk[i]);
                Py_XDECREF(rv[i]);
            }
            n = 0;
            goto error;
        }
        Py_DECREF(res);
    }
    Py_XSETREF(it->chunk, chunk);
    it->pos = 0;
    return 0;

corrupt:
    PyErr_Format(st->CorruptError, "corrupt record in '%s': %s", e->path, why);
    goto error;
lmdb_error:
    lmc_raise(st, rc, "iterate", e->path);
error:
    for (i = 0; i < n; i++) {
        Py_XDECREF(rk[i]);
        Py_XDECREF(rv[i]);
    }
    if (cur != NULL)
        mdb_cursor_close(cur);
    if (txn != NULL)
        lmc_read_end(e, txn);
    Py_XDECREF(last);
    Py_XDECREF(chunk);
    return -1;
}

static PyObject *iter_next(IterObject *it)
{
    for (;;) {
        if (it->chunk != NULL && it->pos < PyList_GET_SIZE(it->chunk))
            return Py_NewRef(PyList_GET_ITEM(it->chunk, it->pos++));
        if (it->done)
            return NULL;
        if (iter_fill(it) < 0)
            return NULL;
    }
}

static int iter_traverse(IterObject *it, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(it));
    Py_VISIT(it->store);
    Py_VISIT(it->chunk);
    return 0;
}

static int iter_clear(IterObject *it)
{
    Py_CLEAR(it->store);
    Py_CLEAR(it->chunk);
    Py_CLEAR(it->last);
    return 0;
}

static void iter_dealloc(IterObject *it)
{
    PyTypeObject *tp = Py_TYPE(it);
    PyObject_GC_UnTrack(it);
    iter_clear(it);
    PyObject_GC_Del(it);
    Py_DECREF(tp);
}

/* ---- type specs ------------------------------------------------------------ */

static PyMethodDef store_methods[] = {
    {"get", (PyCFunction)(void (*)(void))store_get, METH_FASTCALL | METH_KEYWORDS,
     "get(key, default=None): the value stored under key, or default."},
    {"set", (PyCFunction)(void (*)(void))store_set, METH_FASTCALL,
     "set(key, value): store value under key."},
    {"delete", (PyCFunction)store_delete, METH_O,
     "delete(key) -> bool: remove key; True if it was present."},
    {"pop", (PyCFunction)(void (*)(void))store_pop, METH_FASTCALL,
     "pop(key[, default]): remove key and return its value, atomically."},
    {"clear", (PyCFunction)store_clear, METH_NOARGS, "Remove every entry."},
    {"close", (PyCFunction)store_close, METH_NOARGS,
     "Release the environment; the next use reopens it."},
    {"_iter", (PyCFunction)store_iter_mode, METH_O,
     "_iter(mode): iterator over keys (0), values (1) or items (2)."},
    {"_env_info", (PyCFunction)store_env_info, METH_NOARGS,
     "Map size, bytes used, page size and reader counts of the environment."},
    {NULL, NULL, 0, NULL},
};

static PyObject *store_get_path(StoreObject *self, void *Py_UNUSED(closure))
{
    if (self->path == NULL)
        Py_RETURN_NONE;
    return PyUnicode_DecodeFSDefault(self->path);
}

static PyObject *store_get_readonly(StoreObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->opt.readonly);
}

static PyGetSetDef store_getset[] = {
    {"path", (getter)store_get_path, NULL, "The cache directory.", NULL},
    {"readonly", (getter)store_get_readonly, NULL, "Whether writes are refused.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot store_slots[] = {
    {Py_tp_doc, "Store(path, *, map_size, size_limit, readonly, sync, max_readers)\n\n"
                "The C mapping over an LMDB environment; use lmdbcache.Cache."},
    {Py_tp_new, store_new},
    {Py_tp_init, store_init},
    {Py_tp_dealloc, store_dealloc},
    {Py_tp_traverse, store_traverse},
    {Py_tp_iter, store_iter},
    {Py_tp_methods, store_methods},
    {Py_tp_getset, store_getset},
    {Py_mp_subscript, store_subscript},
    {Py_mp_ass_subscript, store_ass_subscript},
    {Py_mp_length, store_length},
    {Py_sq_length, store_length},
    {Py_sq_contains, store_contains},
    {0, NULL},
};

PyType_Spec lmc_store_spec = {
    .name = "lmdbcache._core.Store",
    .basicsize = sizeof(StoreObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE,
    .slots = store_slots,
};

static PyType_Slot iter_slots[] = {
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, iter_next},
    {Py_tp_traverse, iter_traverse},
    {Py_tp_clear, iter_clear},
    {Py_tp_dealloc, iter_dealloc},
    {0, NULL},
};

PyType_Spec lmc_iter_spec = {
    .name = "lmdbcache._core.StoreIterator",
    .basicsize = sizeof(IterObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = iter_slots,
};
