/*
 * store.c -- the Store type: the mapping over one namespace of one LMDB
 * environment, the cache operations (TTL, atomic ops, batches, transactions,
 * stats), and the iterator over keys, values or items.
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

#include <math.h>
#include <string.h>

#define ITER_CHUNK 64
#define LRU_FLUSH_BYTES ((size_t)64 << 10)

typedef struct {
    PyObject_HEAD
    lmc_state *state;
    lmc_env *env;     /* NULL when closed (reopened on next use) */
    MDB_dbi dbi;      /* this namespace's sub-database in env */
    unsigned int ns_epoch; /* env->ns_epoch when dbi was looked up */
    char *path;       /* absolute directory path (filesystem encoding) */
    char *ns;         /* namespace name, "" = default */
    char *dbname;     /* LMDB sub-database name, "" = main DB */
    char *boot_id;    /* durability marker content, or NULL */
    double ttl;       /* default time-to-live in seconds, 0 = none */
    lmc_options opt;
    unsigned long long hits, misses, sets, deletes, evictions, expirations;
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

static inline int record_expired(const lmc_record *rec)
{
    return (rec->flags & LMC_FLAG_EXPIRES) && rec->expires <= lmc_now();
}

static char *raw_strdup(const char *s)
{
    char *copy = PyMem_RawMalloc(strlen(s) + 1);
    if (copy != NULL)
        strcpy(copy, s);
    return copy;
}

/* ---- the Env of a Store ---------------------------------------------------- */

static lmc_env *store_reopen(StoreObject *self)
{
    lmc_env *e = self->env;
    int rc;

    if (self->path == NULL) {
        PyErr_SetString(PyExc_ValueError, "Store.__init__ was not called");
        return NULL;
    }
    if (e != NULL && lmc_env_is_current(e)) {
        self->env = NULL; /* only the namespace handle is stale: look it up again */
    }
    else {
        if (e != NULL) {
            lmc_env_release(e); /* abandons it if inherited */
            self->env = NULL;
        }
        e = lmc_env_acquire(self->state, self->path, &self->opt);
        if (e == NULL)
            return NULL;
    }
    self->ns_epoch = e->ns_epoch;
    rc = lmc_env_namespace(e, self->ns, !self->opt.readonly, &self->dbi);
    if (rc != 0) {
        if (rc == MDB_NOTFOUND)
            PyErr_Format(self->state->Error, "namespace '%s' does not exist in '%s'", self->ns,
                         self->path);
        else if (rc == MDB_DBS_FULL)
            PyErr_Format(self->state->Error,
                         "cannot open namespace '%s' in '%s': too many namespaces", self->ns,
                         self->path);
        else
            lmc_raise(self->state, rc, "open the namespace", self->path);
        lmc_env_release(e);
        return NULL;
    }
    self->env = e;
    return e;
}

static inline lmc_env *store_env(StoreObject *self)
{
    lmc_env *e = self->env;
    if (LMC_LIKELY(e != NULL && lmc_env_is_current(e) && self->ns_epoch == e->ns_epoch))
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
    else if (rc == LMC_ERR_TXN_FAILED)
        PyErr_Format(self->state->Error,
                     "cannot %s in '%s': an earlier operation of this transaction failed, "
                     "so it will be rolled back", op, self->path);
    else if (rc == LMC_ERR_TOO_BIG)
        PyErr_Format(self->state->MapFullError,
                     "cannot %s in '%s': the data written is too large for the cache's "
                     "size_limit of %zu bytes", op, self->path, e->size_limit);
    else if (rc == LMC_ERR_NO_TXN)
        PyErr_Format(self->state->Error,
                     "no transaction of this thread is open on '%s' (was it started in "
                     "another thread or before a fork?)", self->path);
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

static void store_count(StoreObject *self, const lmc_evict_counts *c)
{
    self->evictions += c->evicted;
    self->expirations += c->expired;
}

/* ttl argument: None -> the default; a positive number of seconds.  Returns
 * the absolute expiry (0 = none) in *expires, or -1 with an exception. */
static int parse_ttl(StoreObject *self, PyObject *ttl, double *expires)
{
    double t;
    if (ttl == NULL || ttl == Py_None) {
        *expires = self->ttl > 0 ? lmc_now() + self->ttl : 0;
        return 0;
    }
    if (PyBool_Check(ttl) || !(PyFloat_Check(ttl) || PyLong_Check(ttl))) {
        PyErr_Format(PyExc_TypeError, "ttl must be a number of seconds or None, not %.100s",
                     Py_TYPE(ttl)->tp_name);
        return -1;
    }
    t = PyFloat_AsDouble(ttl);
    if (t == -1.0 && PyErr_Occurred())
        return -1;
    if (!(t > 0) || isinf(t)) {
        PyErr_Format(PyExc_ValueError, "ttl must be a positive, finite number of seconds, got %R",
                     ttl);
        return -1;
    }
    *expires = lmc_now() + t;
    return 0;
}

/* Parse (key, value=?, *, ttl=None)-style fastcall arguments: positional up
 * to npos, then keywords by name. */
static int parse_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                      const char *fname, const char *const *names, int nreq, int nmax,
                      PyObject **out)
{
    Py_ssize_t i, j, nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);

    for (i = 0; i < nmax; i++)
        out[i] = NULL;
    if (nargs > nmax) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %d arguments (%zd given)", fname,
                     nmax, nargs);
        return -1;
    }
    for (i = 0; i < nargs; i++)
        out[i] = args[i];
    for (j = 0; j < nkw; j++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, j);
        for (i = 0; i < nmax; i++) {
            if (PyUnicode_CompareWithASCIIString(name, names[i]) == 0)
                break;
        }
        if (i == nmax) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fname,
                         name);
            return -1;
        }
        if (out[i] != NULL) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", fname,
                         names[i]);
            return -1;
        }
        out[i] = args[nargs + j];
    }
    for (i = 0; i < nreq; i++) {
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fname,
                         names[i]);
            return -1;
        }
    }
    return 0;
}

/* ---- construction ---------------------------------------------------------- */

static int store_init(StoreObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"path",     "map_size",        "size_limit",  "readonly",
                             "sync",     "max_readers",     "namespace",   "ttl",
                             "eviction_policy", "boot_id",  NULL};
    PyObject *path = NULL;
    Py_ssize_t map_size = (Py_ssize_t)1 << 30, size_limit = 0;
    int readonly = 0, sync = 0, policy = LMC_POLICY_LRS;
    unsigned int max_readers = 1024;
    const char *ns = "", *boot_id = NULL;
    double ttl = 0;
    char *path_copy = NULL, *ns_copy = NULL, *dbname = NULL, *boot_copy = NULL;
    size_t n;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O&|$nnppIsdiz:Store", kwlist,
                                     PyUnicode_FSConverter, &path, &map_size, &size_limit,
                                     &readonly, &sync, &max_readers, &ns, &ttl, &policy,
                                     &boot_id))
        return -1;
    if (map_size <= 0 || size_limit < 0 || max_readers == 0 || ttl < 0 ||
        policy < LMC_POLICY_NONE || policy > LMC_POLICY_LRU) {
        PyErr_SetString(PyExc_ValueError, "invalid Store option");
        goto error;
    }
    path_copy = raw_strdup(PyBytes_AS_STRING(path));
    ns_copy = raw_strdup(ns);
    n = strlen(ns) + sizeof(LMC_NS_PREFIX);
    dbname = PyMem_RawMalloc(n);
    boot_copy = boot_id != NULL ? raw_strdup(boot_id) : NULL;
    if (path_copy == NULL || ns_copy == NULL || dbname == NULL ||
        (boot_id != NULL && boot_copy == NULL)) {
        PyErr_NoMemory();
        goto error;
    }
    if (ns[0] != '\0')
        PyOS_snprintf(dbname, n, "%s%s", LMC_NS_PREFIX, ns);
    else
        dbname[0] = '\0';
    Py_CLEAR(path);
    if (self->env != NULL) {
        lmc_env_release(self->env);
        self->env = NULL;
    }
    PyMem_RawFree(self->path);
    PyMem_RawFree(self->ns);
    PyMem_RawFree(self->dbname);
    PyMem_RawFree(self->boot_id);
    self->path = path_copy;
    self->ns = ns_copy;
    self->dbname = dbname;
    self->boot_id = boot_copy;
    self->ttl = ttl;
    self->opt.map_size = (size_t)map_size;
    self->opt.size_limit = (size_t)size_limit;
    self->opt.policy = policy;
    self->opt.readonly = readonly;
    self->opt.sync = sync;
    self->opt.max_readers = max_readers;
    self->opt.boot_id = boot_copy;
    return store_reopen(self) == NULL ? -1 : 0;

error:
    Py_XDECREF(path);
    PyMem_RawFree(path_copy);
    PyMem_RawFree(ns_copy);
    PyMem_RawFree(dbname);
    PyMem_RawFree(boot_copy);
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
    PyMem_RawFree(self->ns);
    PyMem_RawFree(self->dbname);
    PyMem_RawFree(self->boot_id);
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

static int noop_fn(MDB_txn *txn, lmc_env *e, void *arg)
{
    (void)txn;
    (void)e;
    (void)arg;
    return 0; /* the LRU log is flushed by env_run before this */
}

/* LRU bookkeeping after a hit: log it; write the log once it is large. */
static void store_note_use(StoreObject *self, lmc_env *e, const lmc_kref *k)
{
    lmc_lru_touch(e, self->dbname, &k->val);
    if (e->lru_len > LRU_FLUSH_BYTES && !self->opt.readonly) {
        /* a growing write: the index entries count against size_limit */
        int rc = lmc_env_write(e, noop_fn, NULL, LMC_WRITE_GROWS, 0, NULL);
        (void)rc; /* best effort: the log is kept for the next write otherwise */
    }
}

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
    rc = mdb_get(txn, self->dbi, &k.r.val, &v);
    if (LMC_LIKELY(rc == 0)) {
        if (LMC_UNLIKELY(lmc_record_parse(st, v.mv_data, v.mv_size, &rec, e->path) < 0))
            rc = -1;
        else if (LMC_UNLIKELY(!lmc_record_matches(&rec, &k.r) || record_expired(&rec)))
            rc = MDB_NOTFOUND;
        else if ((obj = lmc_record_take(&rec, &pickled)) == NULL)
            rc = -2;
    }
    lmc_read_end(e, txn);
    if (LMC_LIKELY(rc == 0)) {
        self->hits++;
        if (LMC_UNLIKELY(e->policy == LMC_POLICY_LRU) && lmc_env_evicts(e))
            store_note_use(self, e, &k.r);
    }
    if (LMC_LIKELY(rc == 0 || rc == -2)) { /* -2: finish turns the error into CorruptError */
        lmc_key_clear(&k);
        return lmc_value_finish(st, obj, pickled, e->path);
    }
    lmc_key_clear(&k);
    if (rc == MDB_NOTFOUND)
        self->misses++;
    else if (rc != -1)
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
    static const char *const names[] = {"key", "default"};
    PyObject *a[2], *value;

    if (LMC_LIKELY(kwnames == NULL && (nargs == 1 || nargs == 2))) {
        a[0] = args[0];
        a[1] = nargs == 2 ? args[1] : NULL;
    }
    else if (parse_args(args, nargs, kwnames, "get", names, 1, 2, a) < 0) {
        return NULL;
    }
    value = store_lookup(self, a[0]);
    if (value == NULL && !PyErr_Occurred())
        return Py_NewRef(a[1] != NULL ? a[1] : Py_None);
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
        rc = mdb_get(txn, self->dbi, &k.r.val, &v);
        if (rc == 0) {
            /* a corrupt record is present: `in` says so, reading it raises */
            found = lmc_record_parse_raw(v.mv_data, v.mv_size, &rec) != NULL ||
                    (lmc_record_matches(&rec, &k.r) && !record_expired(&rec));
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
        rc = lmc_env_count(e, txn, self->dbi, &count);
        lmc_read_end(e, txn);
    }
    if (rc != 0) {
        lmc_raise(self->state, rc, "count entries", e->path);
        return -1;
    }
    return (Py_ssize_t)count;
}

/* get_many(keys) -> dict of the hits, read from one snapshot. */
static PyObject *store_get_many(StoreObject *self, PyObject *keys)
{
    lmc_state *st = self->state;
    lmc_env *e = store_env(self);
    PyObject *seq = NULL, *result = NULL, **objs = NULL;
    lmc_keyset ks = {NULL, NULL, 0};
    char *pickled = NULL;
    lmc_record rec;
    MDB_txn *txn = NULL;
    MDB_val v;
    Py_ssize_t n, i;
    int rc = 0;

    if (e == NULL)
        return NULL;
    seq = PySequence_Fast(keys, "get_many() expects an iterable of keys");
    if (seq == NULL)
        return NULL;
    n = PySequence_Fast_GET_SIZE(seq);
    objs = PyMem_Calloc((size_t)n + 1, sizeof(*objs));
    pickled = PyMem_Calloc((size_t)n + 1, 1);
    if (objs == NULL || pickled == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (lmc_keyset_build(st, PySequence_Fast_ITEMS(seq), n, &ks) < 0)
        goto done;
    rc = lmc_read_begin(e, &txn);
    if (rc != 0)
        goto lmdb_error;
    /* under the txn: copies and native objects only (no user code) */
    for (i = 0; i < n; i++) {
        int p = 0;
        rc = mdb_get(txn, self->dbi, &ks.refs[i].val, &v);
        if (rc == MDB_NOTFOUND)
            continue;
        if (rc != 0 || lmc_record_parse(st, v.mv_data, v.mv_size, &rec, e->path) < 0)
            break;
        if (!lmc_record_matches(&rec, &ks.refs[i]) || record_expired(&rec))
            continue;
        objs[i] = lmc_record_take(&rec, &p);
        if (objs[i] == NULL) {
            rc = -2;
            break;
        }
        pickled[i] = (char)p;
    }
    lmc_read_end(e, txn);
    if (rc == -2) {
        lmc_value_finish(st, NULL, 0, e->path);
        goto done;
    }
    if (PyErr_Occurred())
        goto done;
    if (rc != 0 && rc != MDB_NOTFOUND)
        goto lmdb_error;
    result = PyDict_New();
    if (result == NULL)
        goto done;
    for (i = 0; i < n; i++) {
        PyObject *value;
        if (objs[i] == NULL) {
            self->misses++;
            continue;
        }
        self->hits++;
        if (e->policy == LMC_POLICY_LRU && lmc_env_evicts(e))
            store_note_use(self, e, &ks.refs[i]);
        value = lmc_value_finish(st, objs[i], pickled[i], e->path);
        objs[i] = NULL;
        if (value == NULL || PyDict_SetItem(result, PySequence_Fast_GET_ITEM(seq, i), value) < 0) {
            Py_XDECREF(value);
            Py_CLEAR(result);
            goto done;
        }
        Py_DECREF(value);
    }
    goto done;

lmdb_error:
    lmc_raise(st, rc, "read", e->path);
done:
    lmc_keyset_free(&ks);
    if (objs != NULL) {
        for (i = 0; i < n; i++)
            Py_XDECREF(objs[i]);
    }
    PyMem_Free(objs);
    PyMem_Free(pickled);
    Py_DECREF(seq);
    return result;
}

/* ---- writes ----------------------------------------------------------------- */

#define PUT_OVERWRITE 0
#define PUT_ADD 1      /* only when absent (or expired) */

typedef struct {
    MDB_dbi dbi;
    const char *dbname;
    Py_ssize_t n;        /* number of records */
    lmc_kref *keys;
    lmc_value *vals;
    int mode;            /* PUT_* */
    int added;           /* PUT_ADD: stored? */
} put_arg;

static int put_one(MDB_txn *txn, lmc_env *e, put_arg *a, Py_ssize_t i, unsigned int flags)
{
    MDB_val v;
    uint64_t seq = 0;
    int rc, evicts = lmc_env_evicts(e);

    v.mv_size = lmc_value_size(&a->vals[i]);
    v.mv_data = NULL;
    rc = mdb_put(txn, a->dbi, &a->keys[i].val, &v, MDB_RESERVE | flags);
    if (rc != 0)
        return rc;
    if (evicts)
        seq = lmc_evict_next_seq(e, txn);
    lmc_value_write(&a->vals[i], v.mv_data, seq);
    if (evicts)
        rc = lmc_evict_note(txn, e, a->dbname, &a->keys[i].val, seq);
    return rc;
}

typedef struct {
    const MDB_val *key;
    Py_ssize_t index;
} put_order;

/* LMDB's default key order (memcmp, then length); equal keys keep call order
 * so the last value given for a key wins. */
static int put_order_cmp(const void *pa, const void *pb)
{
    const put_order *a = pa, *b = pb;
    size_t n = a->key->mv_size < b->key->mv_size ? a->key->mv_size : b->key->mv_size;
    int c = memcmp(a->key->mv_data, b->key->mv_data, n);
    if (c == 0)
        c = (a->key->mv_size > b->key->mv_size) - (a->key->mv_size < b->key->mv_size);
    if (c == 0)
        c = (a->index > b->index) - (a->index < b->index);
    return c;
}

/* A batch: in key order through one cursor, so each insert searches from the
 * leaf page the previous one left the cursor on instead of from the root. */
static int put_batch(MDB_txn *txn, lmc_env *e, put_arg *a)
{
    put_order *order;
    MDB_cursor *cur = NULL;
    MDB_val v;
    Py_ssize_t i, j;
    uint64_t seq = 0;
    int rc, evicts = lmc_env_evicts(e);

    order = PyMem_RawMalloc((size_t)a->n * sizeof(*order));
    if (order == NULL)
        return ENOMEM;
    for (i = 0; i < a->n; i++) {
        order[i].key = &a->keys[i].val;
        order[i].index = i;
    }
    qsort(order, (size_t)a->n, sizeof(*order), put_order_cmp);
    rc = mdb_cursor_open(txn, a->dbi, &cur);
    for (j = 0; rc == 0 && j < a->n; j++) {
        i = order[j].index;
        v.mv_size = lmc_value_size(&a->vals[i]);
        v.mv_data = NULL;
        rc = mdb_cursor_put(cur, &a->keys[i].val, &v, MDB_RESERVE);
        if (rc != 0)
            break;
        if (evicts)
            seq = lmc_evict_next_seq(e, txn);
        lmc_value_write(&a->vals[i], v.mv_data, seq);
        if (evicts)
            rc = lmc_evict_note(txn, e, a->dbname, &a->keys[i].val, seq);
    }
    if (cur != NULL)
        mdb_cursor_close(cur);
    PyMem_RawFree(order);
    return rc;
}

static int put_fn(MDB_txn *txn, lmc_env *e, void *arg)
{
    put_arg *a = arg;
    MDB_val v;
    lmc_record rec;
    Py_ssize_t i;
    int rc = 0;

    if (a->n > 1)
        return put_batch(txn, e, a);

    if (a->mode == PUT_ADD) {
        a->added = 0;
        rc = mdb_get(txn, a->dbi, &a->keys[0].val, &v);
        if (rc == 0 && lmc_record_parse_raw(v.mv_data, v.mv_size, &rec) == NULL &&
            lmc_record_matches(&rec, &a->keys[0]) && !record_expired(&rec))
            return 0; /* present: nothing to do */
        if (rc != 0 && rc != MDB_NOTFOUND)
            return rc;
        a->added = 1;
        rc = 0;
    }
    for (i = 0; i < a->n && rc == 0; i++)
        rc = put_one(txn, e, a, i, 0);
    return rc;
}

/* Store n pairs in one txn.  mode PUT_ADD (n == 1): returns 1 if added, 0 if
 * present.  Returns -1 with an exception on error (nothing stored). */
static int store_put_pairs(StoreObject *self, PyObject *const *keys, PyObject *const *values,
                           Py_ssize_t n, double expires, int mode)
{
    lmc_state *st = self->state;
    lmc_key one;
    lmc_keyset ks = {NULL, NULL, 0};
    lmc_kref *refs;
    lmc_value vbuf, *vs = &vbuf;
    lmc_evict_counts counts = {0, 0};
    lmc_env *e;
    put_arg a;
    size_t bytes = 0;
    Py_ssize_t i, nval = 0;
    int rc = -1, with_seq;

    if (store_check_writable(self) < 0 || (e = store_env(self)) == NULL)
        return -1;
    with_seq = lmc_env_evicts(e);
    if (n == 1) {
        if (lmc_key_encode(st, keys[0], &one) < 0)
            return -1;
        refs = &one.r;
    }
    else {
        if (lmc_keyset_build(st, keys, n, &ks) < 0)
            return -1;
        refs = ks.refs;
        vs = PyMem_Malloc((size_t)n * sizeof(*vs));
        if (vs == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    for (nval = 0; nval < n; nval++) {
        if (lmc_value_encode(st, values[nval], &refs[nval], expires, with_seq, &vs[nval]) < 0)
            goto done;
        bytes += lmc_value_size(&vs[nval]) + refs[nval].val.mv_size;
    }
    a.dbi = self->dbi;
    a.dbname = self->dbname;
    a.n = n;
    a.keys = refs;
    a.vals = vs;
    a.mode = mode;
    a.added = 0;
    rc = lmc_env_write(e, put_fn, &a, LMC_WRITE_GROWS, bytes, &counts);
    store_count(self, &counts);
    if (rc != 0) {
        store_raise_write(self, e, rc, "store a value");
        rc = -1;
    }
    else if (mode == PUT_ADD) {
        rc = a.added;
        self->sets += (unsigned long long)a.added;
    }
    else {
        self->sets += (unsigned long long)n;
    }
done:
    for (i = 0; i < nval; i++)
        lmc_value_clear(&vs[i]);
    if (n == 1)
        lmc_key_clear(&one);
    else
        lmc_keyset_free(&ks);
    if (vs != &vbuf)
        PyMem_Free(vs);
    return rc;
}

static PyObject *store_set(StoreObject *self, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames)
{
    static const char *const names[] = {"key", "value", "ttl"};
    PyObject *a[3];
    double expires;

    if (LMC_LIKELY(kwnames == NULL && nargs == 2)) {
        a[0] = args[0];
        a[1] = args[1];
        a[2] = NULL;
    }
    else if (parse_args(args, nargs, kwnames, "set", names, 2, 3, a) < 0) {
        return NULL;
    }
    if (parse_ttl(self, a[2], &expires) < 0 ||
        store_put_pairs(self, &a[0], &a[1], 1, expires, PUT_OVERWRITE) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *store_add(StoreObject *self, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames)
{
    static const char *const names[] = {"key", "value", "ttl"};
    PyObject *a[3];
    double expires;
    int rc;

    if (parse_args(args, nargs, kwnames, "add", names, 2, 3, a) < 0 ||
        parse_ttl(self, a[2], &expires) < 0)
        return NULL;
    rc = store_put_pairs(self, &a[0], &a[1], 1, expires, PUT_ADD);
    if (rc < 0)
        return NULL;
    return PyBool_FromLong(rc);
}

/* _set_many(pairs: list of (key, value), ttl=None) */
static PyObject *store_set_many(StoreObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *seq, **keys = NULL, **values = NULL;
    double expires;
    Py_ssize_t n, i, held = 0;
    int rc = -1;

    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "_set_many(pairs, ttl=None)");
        return NULL;
    }
    if (parse_ttl(self, nargs == 2 ? args[1] : NULL, &expires) < 0)
        return NULL;
    seq = PySequence_Fast(args[0], "set_many() expects a mapping or (key, value) pairs");
    if (seq == NULL)
        return NULL;
    n = PySequence_Fast_GET_SIZE(seq);
    keys = PyMem_Malloc(((size_t)n + 1) * sizeof(PyObject *));
    values = PyMem_Malloc(((size_t)n + 1) * sizeof(PyObject *));
    if (keys == NULL || values == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (i = 0; i < n; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
        if ((!PyTuple_Check(pair) && !PyList_Check(pair)) || PySequence_Fast_GET_SIZE(pair) != 2) {
            PyErr_Format(PyExc_TypeError,
                         "set_many() item %zd is not a (key, value) pair", i);
            goto done;
        }
        /* strong refs: pickling a key or value runs user code, which could
         * mutate a list it came from */
        keys[i] = Py_NewRef(PySequence_Fast_GET_ITEM(pair, 0));
        values[i] = Py_NewRef(PySequence_Fast_GET_ITEM(pair, 1));
        held++;
    }
    rc = n == 0 ? 0 : store_put_pairs(self, keys, values, n, expires, PUT_OVERWRITE);
done:
    for (i = 0; i < held; i++) {
        Py_DECREF(keys[i]);
        Py_DECREF(values[i]);
    }
    PyMem_Free(keys);
    PyMem_Free(values);
    Py_DECREF(seq);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

typedef struct {
    MDB_dbi dbi;
    Py_ssize_t n;
    lmc_kref *keys;
    Py_ssize_t deleted;
    int want_old;        /* pop: copy the removed record out */
    char *old;
    size_t old_len;
} del_arg;

/* Delete one key.  Returns 1 deleted, 0 absent (expired ones are deleted
 * too but count as absent), or an LMDB code (< 0). */
static int del_one(MDB_txn *txn, del_arg *a, Py_ssize_t i)
{
    MDB_val v;
    lmc_record rec;
    int rc, live = 1;

    rc = mdb_get(txn, a->dbi, &a->keys[i].val, &v);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc != 0)
        return rc;
    if (lmc_record_parse_raw(v.mv_data, v.mv_size, &rec) == NULL) {
        if (!lmc_record_matches(&rec, &a->keys[i]))
            return 0; /* another key with the same digest */
        live = !record_expired(&rec);
    }
    if (live && a->want_old) {
        a->old = PyMem_RawMalloc(v.mv_size ? v.mv_size : 1);
        if (a->old == NULL)
            return ENOMEM;
        memcpy(a->old, v.mv_data, v.mv_size);
        a->old_len = v.mv_size;
    }
    rc = mdb_del(txn, a->dbi, &a->keys[i].val, NULL);
    return rc != 0 ? rc : live;
}

static int del_fn(MDB_txn *txn, lmc_env *e, void *arg)
{
    del_arg *a = arg;
    Py_ssize_t i;
    int rc;
    (void)e;
    PyMem_RawFree(a->old);
    a->old = NULL;
    a->deleted = 0;
    for (i = 0; i < a->n; i++) {
        rc = del_one(txn, a, i);
        if (rc < 0 || rc > 1)
            return rc;
        a->deleted += rc;
    }
    return 0;
}

/* Delete keys[0..n).  Returns the number deleted, or -1 with an exception.
 * With old: the single removed record (PyMem_Raw memory; caller frees). */
static Py_ssize_t store_remove(StoreObject *self, PyObject *const *keys, Py_ssize_t n,
                               char **old, size_t *old_len)
{
    lmc_state *st = self->state;
    lmc_key one;
    lmc_keyset ks = {NULL, NULL, 0};
    lmc_env *e;
    del_arg a;
    int rc;

    if (store_check_writable(self) < 0 || (e = store_env(self)) == NULL)
        return -1;
    if (n == 1) {
        if (lmc_key_encode(st, keys[0], &one) < 0)
            return -1;
        a.keys = &one.r;
    }
    else {
        if (lmc_keyset_build(st, keys, n, &ks) < 0)
            return -1;
        a.keys = ks.refs;
    }
    a.dbi = self->dbi;
    a.n = n;
    a.deleted = 0;
    a.want_old = old != NULL;
    a.old = NULL;
    a.old_len = 0;
    rc = lmc_env_write(e, del_fn, &a, LMC_WRITE_FREES, 0, NULL);
    if (n == 1)
        lmc_key_clear(&one);
    else
        lmc_keyset_free(&ks);
    if (rc == 0 && old != NULL && a.deleted) {
        *old = a.old;
        *old_len = a.old_len;
    }
    else {
        PyMem_RawFree(a.old);
    }
    if (rc != 0) {
        store_raise_write(self, e, rc, "delete a key");
        return -1;
    }
    self->deletes += (unsigned long long)a.deleted;
    return a.deleted;
}

static int store_ass_subscript(StoreObject *self, PyObject *key, PyObject *value)
{
    Py_ssize_t rc;
    double expires = 0;
    if (value != NULL) {
        if (LMC_UNLIKELY(self->ttl > 0))
            expires = lmc_now() + self->ttl;
        return store_put_pairs(self, &key, &value, 1, expires, PUT_OVERWRITE);
    }
    rc = store_remove(self, &key, 1, NULL, NULL);
    if (rc == 0)
        raise_key_error(key);
    return rc > 0 ? 0 : -1;
}

static PyObject *store_delete(StoreObject *self, PyObject *key)
{
    Py_ssize_t rc = store_remove(self, &key, 1, NULL, NULL);
    if (rc < 0)
        return NULL;
    return PyBool_FromLong(rc > 0);
}

static PyObject *store_delete_many(StoreObject *self, PyObject *keys)
{
    PyObject *seq = PySequence_Fast(keys, "delete_many() expects an iterable of keys");
    Py_ssize_t rc;
    if (seq == NULL)
        return NULL;
    rc = PySequence_Fast_GET_SIZE(seq) == 0
             ? 0
             : store_remove(self, PySequence_Fast_ITEMS(seq), PySequence_Fast_GET_SIZE(seq),
                            NULL, NULL);
    Py_DECREF(seq);
    if (rc < 0)
        return NULL;
    return PyLong_FromSsize_t(rc);
}

static PyObject *store_pop(StoreObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    lmc_record rec;
    char *old = NULL;
    size_t old_len = 0;
    PyObject *obj;
    Py_ssize_t rc;
    int pickled;

    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "pop(key[, default])");
        return NULL;
    }
    rc = store_remove(self, args, 1, &old, &old_len);
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

/* incr/touch: read-modify-write of one record inside the write txn. */
typedef struct {
    MDB_dbi dbi;
    const char *dbname;
    lmc_kref *key;
    long long delta, dflt, result;
    double expires;      /* incr: expiry of a new record; touch: the new expiry */
    int found;           /* touch: was the key present */
} rmw_arg;

static int incr_fn(MDB_txn *txn, lmc_env *e, void *arg)
{
    rmw_arg *a = arg;
    lmc_record rec;
    lmc_value val;
    MDB_val v;
    long long base = a->dflt;
    double expires = a->expires;
    uint64_t seq = 0;
    int rc, evicts = lmc_env_evicts(e);

    rc = mdb_get(txn, a->dbi, &a->key->val, &v);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return rc;
    if (rc == 0) {
        if (lmc_record_parse_raw(v.mv_data, v.mv_size, &rec) != NULL)
            return LMC_ERR_NOT_INT;
        if (lmc_record_matches(&rec, a->key) && !record_expired(&rec)) {
            if (rec.tag != LMC_VAL_INT)
                return LMC_ERR_NOT_INT;
            memcpy(&base, rec.data, 8);
            expires = (rec.flags & LMC_FLAG_EXPIRES) ? rec.expires : 0;
        }
    }
    if (__builtin_add_overflow(base, a->delta, &a->result))
        return LMC_ERR_OVERFLOW;
    memcpy(val.num, &a->result, 8);
    val.data = (const char *)val.num;
    val.data_len = 8;
    val.owner = NULL;
    lmc_value_head(&val, LMC_VAL_INT, expires, evicts, a->key);
    v.mv_size = lmc_value_size(&val);
    rc = mdb_put(txn, a->dbi, &a->key->val, &v, MDB_RESERVE);
    if (rc != 0)
        return rc;
    if (evicts)
        seq = lmc_evict_next_seq(e, txn);
    lmc_value_write(&val, v.mv_data, seq);
    return evicts ? lmc_evict_note(txn, e, a->dbname, &a->key->val, seq) : 0;
}

/* Run a read-modify-write fn on key: returns its LMDB code, or -1 with an
 * exception (read-only cache, bad key, no environment).  *env gets the Env. */
static int store_rmw(StoreObject *self, PyObject *key, lmc_write_fn fn, rmw_arg *a,
                     size_t hint, lmc_env **env)
{
    lmc_evict_counts counts = {0, 0};
    lmc_key k;
    int rc;

    if (store_check_writable(self) < 0 || (*env = store_env(self)) == NULL)
        return -1;
    if (lmc_key_encode(self->state, key, &k) < 0)
        return -1;
    a->dbi = self->dbi;
    a->dbname = self->dbname;
    a->key = &k.r;
    rc = lmc_env_write(*env, fn, a, LMC_WRITE_GROWS, hint + k.r.val.mv_size, &counts);
    store_count(self, &counts);
    lmc_key_clear(&k);
    return rc;
}

static int as_long_long(PyObject *obj, const char *name, long long *out)
{
    int overflow;
    if (PyBool_Check(obj) || !PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", name,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    *out = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (*out == -1 && PyErr_Occurred())
        return -1;
    if (overflow) {
        PyErr_Format(PyExc_OverflowError, "%s does not fit in 64 bits", name);
        return -1;
    }
    return 0;
}

static PyObject *store_incr(StoreObject *self, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames)
{
    static const char *const names[] = {"key", "delta", "default"};
    PyObject *p[3];
    lmc_env *e;
    rmw_arg a;
    int rc;

    if (parse_args(args, nargs, kwnames, "incr", names, 1, 3, p) < 0)
        return NULL;
    a.delta = 1;
    a.dflt = 0;
    if ((p[1] != NULL && as_long_long(p[1], "delta", &a.delta) < 0) ||
        (p[2] != NULL && as_long_long(p[2], "default", &a.dflt) < 0))
        return NULL;
    a.expires = self->ttl > 0 ? lmc_now() + self->ttl : 0;
    rc = store_rmw(self, p[0], incr_fn, &a, 64, &e);
    if (rc == -1)
        return NULL;
    if (rc == LMC_ERR_NOT_INT) {
        PyErr_Format(PyExc_TypeError,
                     "cannot increment %R in '%s': its value is not an int in the 64-bit range",
                     p[0], self->path);
        return NULL;
    }
    if (rc == LMC_ERR_OVERFLOW) {
        PyErr_Format(PyExc_OverflowError,
                     "incrementing %R in '%s' would leave the 64-bit range", p[0], self->path);
        return NULL;
    }
    if (rc != 0) {
        store_raise_write(self, e, rc, "increment a value");
        return NULL;
    }
    self->sets++;
    return PyLong_FromLongLong(a.result);
}

static int touch_fn(MDB_txn *txn, lmc_env *e, void *arg)
{
    rmw_arg *a = arg;
    lmc_record rec;
    lmc_value val;
    MDB_val v;
    char *copy;
    size_t payload_len;
    uint64_t seq;
    int rc;
    (void)e;

    a->found = 0;
    rc = mdb_get(txn, a->dbi, &a->key->val, &v);
    if (rc != 0)
        return rc == MDB_NOTFOUND ? 0 : rc;
    if (lmc_record_parse_raw(v.mv_data, v.mv_size, &rec) != NULL ||
        !lmc_record_matches(&rec, a->key) || record_expired(&rec))
        return 0;
    /* copy the payload out: the put below may move the old record */
    payload_len = rec.data_len;
    copy = PyMem_RawMalloc(payload_len ? payload_len : 1);
    if (copy == NULL)
        return ENOMEM;
    memcpy(copy, rec.data, payload_len);
    seq = rec.seq;
    val.data = copy;
    val.data_len = payload_len;
    val.owner = NULL;
    lmc_value_head(&val, rec.tag, a->expires, (rec.flags & LMC_FLAG_SEQ) != 0, a->key);
    v.mv_size = lmc_value_size(&val);
    rc = mdb_put(txn, a->dbi, &a->key->val, &v, MDB_RESERVE);
    if (rc == 0) {
        lmc_value_write(&val, v.mv_data, seq); /* same seq: not a new store */
        a->found = 1;
    }
    PyMem_RawFree(copy);
    return rc;
}

static PyObject *store_touch(StoreObject *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    static const char *const names[] = {"key", "ttl"};
    PyObject *p[2];
    lmc_env *e;
    rmw_arg a;
    int rc;

    if (parse_args(args, nargs, kwnames, "touch", names, 1, 2, p) < 0 ||
        parse_ttl(self, p[1], &a.expires) < 0)
        return NULL;
    rc = store_rmw(self, p[0], touch_fn, &a, 0, &e);
    if (rc == -1)
        return NULL;
    if (rc != 0) {
        store_raise_write(self, e, rc, "touch a key");
        return NULL;
    }
    return PyBool_FromLong(a.found);
}

typedef struct {
    MDB_dbi dbi;
    int is_main;
    size_t removed;
} scan_arg;

static int expire_fn(MDB_txn *txn, lmc_env *e, void *arg)
{
    scan_arg *a = arg;
    MDB_cursor *cur;
    MDB_val k = {1, (void *)"b"}, v;
    lmc_record rec;
    double now = lmc_now();
    int rc;
    (void)e;

    a->removed = 0;
    rc = mdb_cursor_open(txn, a->dbi, &cur);
    if (rc != 0)
        return rc;
    rc = mdb_cursor_get(cur, &k, &v, a->is_main ? MDB_SET_RANGE : MDB_FIRST);
    while (rc == 0) {
        if (lmc_record_parse_raw(v.mv_data, v.mv_size, &rec) == NULL &&
            (rec.flags & LMC_FLAG_EXPIRES) && rec.expires <= now) {
            rc = mdb_cursor_del(cur, 0);
            if (rc != 0)
                break;
            a->removed++;
        }
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int clear_fn(MDB_txn *txn, lmc_env *e, void *arg)
{
    scan_arg *a = arg;
    MDB_cursor *cur;
    MDB_val k = {1, (void *)"b"}, v;
    int rc;
    (void)e;

    if (!a->is_main)
        return mdb_drop(txn, a->dbi, 0); /* empties the sub-database */
    rc = mdb_cursor_open(txn, a->dbi, &cur);
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

static PyObject *store_scan_write(StoreObject *self, lmc_write_fn fn, const char *op)
{
    MDB_envinfo info;
    lmc_env *e;
    scan_arg a;
    int rc;

    if (store_check_writable(self) < 0 || (e = store_env(self)) == NULL)
        return NULL;
    a.dbi = self->dbi;
    a.is_main = self->dbi == e->main_dbi;
    a.removed = 0;
    /* deleting many keys may copy many pages: reserve the file's size */
    if ((rc = mdb_env_info(e->env, &info)) == 0)
        rc = lmc_env_write(e, fn, &a, LMC_WRITE_FREES, (info.me_last_pgno + 1) * e->page_size,
                           NULL);
    if (rc != 0) {
        store_raise_write(self, e, rc, op);
        return NULL;
    }
    return PyLong_FromSize_t(a.removed);
}

static PyObject *store_clear(StoreObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *r = store_scan_write(self, clear_fn, "clear");
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyObject *store_expire(StoreObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *r = store_scan_write(self, expire_fn, "remove expired entries");
    if (r != NULL)
        self->expirations += PyLong_AsUnsignedLongLong(r);
    return r;
}

/* Keys whose encoding starts with the encoding of a tuple `prefix`: a tuple
 * key (a, b, c) encodes as 't' + the items, so every key (a, b, ...) starts
 * with the encoding of (a, b).  (Digested long keys do not.) */
typedef struct {
    MDB_dbi dbi;
    MDB_val prefix;
    int delete;
    size_t count;
} prefix_arg;

static int prefix_scan(MDB_txn *txn, prefix_arg *a)
{
    MDB_cursor *cur;
    MDB_val k = a->prefix, v;
    int rc;

    a->count = 0;
    rc = mdb_cursor_open(txn, a->dbi, &cur);
    if (rc != 0)
        return rc;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size < a->prefix.mv_size ||
            memcmp(k.mv_data, a->prefix.mv_data, a->prefix.mv_size) != 0)
            break;
        if (a->delete && (rc = mdb_cursor_del(cur, 0)) != 0)
            break;
        a->count++;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND || rc == 0 ? 0 : rc;
}

static int prefix_fn(MDB_txn *txn, lmc_env *e, void *arg)
{
    (void)e;
    return prefix_scan(txn, arg);
}

static PyObject *store_prefix(StoreObject *self, PyObject *prefix, int delete)
{
    lmc_env *e;
    lmc_key k;
    MDB_txn *txn;
    prefix_arg a;
    int rc;

    if (!PyTuple_CheckExact(prefix) || PyTuple_GET_SIZE(prefix) == 0) {
        PyErr_SetString(PyExc_TypeError, "prefix must be a non-empty tuple");
        return NULL;
    }
    if ((delete && store_check_writable(self) < 0) || (e = store_env(self)) == NULL)
        return NULL;
    if (lmc_key_encode(self->state, prefix, &k) < 0)
        return NULL;
    if (k.r.full != NULL) {
        lmc_key_clear(&k);
        PyErr_SetString(PyExc_ValueError, "prefix is too long");
        return NULL;
    }
    a.dbi = self->dbi;
    a.prefix = k.r.val;
    a.delete = delete;
    if (delete) {
        rc = lmc_env_write(e, prefix_fn, &a, LMC_WRITE_FREES, 0, NULL);
    }
    else if ((rc = lmc_read_begin(e, &txn)) == 0) {
        rc = prefix_scan(txn, &a);
        lmc_read_end(e, txn);
    }
    if (rc != 0) {
        store_raise_write(self, e, rc, delete ? "delete keys" : "count keys");
        return NULL;
    }
    if (delete)
        self->deletes += a.count;
    return PyLong_FromSize_t(a.count);
}

static PyObject *store_prefix_count(StoreObject *self, PyObject *prefix)
{
    return store_prefix(self, prefix, 0);
}

static PyObject *store_prefix_delete(StoreObject *self, PyObject *prefix)
{
    return store_prefix(self, prefix, 1);
}

/* ---- transactions, sync, introspection ------------------------------------- */

static PyObject *store_txn_begin(StoreObject *self, PyObject *Py_UNUSED(ignored))
{
    lmc_env *e;
    int rc;
    if (store_check_writable(self) < 0 || (e = store_env(self)) == NULL)
        return NULL;
    rc = lmc_env_txn_begin(e);
    if (rc != 0) {
        store_raise_write(self, e, rc, "begin a transaction");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *store_txn_end(StoreObject *self, PyObject *commit)
{
    lmc_env *e = store_env(self);
    int rc, c = PyObject_IsTrue(commit);
    if (e == NULL || c < 0)
        return NULL;
    rc = lmc_env_txn_end(e, c);
    if (rc != 0) {
        store_raise_write(self, e, rc, "commit the transaction");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *store_in_txn(StoreObject *self, PyObject *Py_UNUSED(ignored))
{
    lmc_env *e = self->env;
    return PyBool_FromLong(e != NULL && lmc_env_is_current(e) && lmc_env_in_txn(e));
}

static PyObject *store_sync(StoreObject *self, PyObject *Py_UNUSED(ignored))
{
    lmc_env *e = store_env(self);
    int rc;
    if (e == NULL)
        return NULL;
    rc = lmc_env_sync(e);
    if (rc != 0) {
        lmc_raise(self->state, rc, "sync", e->path);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *store_stats(StoreObject *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    static const char *const names[] = {"reset"};
    PyObject *d, *p[1];
    int reset = 0;
    if (parse_args(args, nargs, kwnames, "stats", names, 0, 1, p) < 0)
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

static PyObject *store_env_info(StoreObject *self, PyObject *Py_UNUSED(ignored))
{
    lmc_env *e = store_env(self);
    MDB_envinfo info;
    MDB_stat ms;
    MDB_txn *txn;
    size_t pages = 0;
    int rc;

    if (e == NULL)
        return NULL;
    if ((rc = mdb_env_info(e->env, &info)) != 0 || (rc = mdb_env_stat(e->env, &ms)) != 0)
        goto error;
    if ((rc = lmc_read_begin(e, &txn)) != 0)
        goto error;
    rc = mdb_stat(txn, self->dbi, &ms);
    lmc_read_end(e, txn);
    if (rc != 0)
        goto error;
    pages = ms.ms_branch_pages + ms.ms_leaf_pages + ms.ms_overflow_pages;
    return Py_BuildValue("{s:n,s:n,s:n,s:n,s:I,s:I,s:n}", "map_size",
                         (Py_ssize_t)info.me_mapsize, "used_bytes",
                         (Py_ssize_t)((info.me_last_pgno + 1) * ms.ms_psize), "namespace_bytes",
                         (Py_ssize_t)(pages * ms.ms_psize), "page_size", (Py_ssize_t)ms.ms_psize,
                         "max_readers", info.me_maxreaders, "readers", info.me_numreaders,
                         "size_limit", (Py_ssize_t)e->size_limit);
error:
    lmc_raise(self->state, rc, "read environment info", e->path);
    return NULL;
}

/* ---- maintenance (maint.c) --------------------------------------------------
 * Each call holds a reference on the Env for its whole duration. */

static PyObject *store_copy(StoreObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *dest = NULL;
    lmc_env *e;
    int compact, rc;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_copy(dest, compact) takes 2 arguments");
        return NULL;
    }
    if (!PyUnicode_FSConverter(args[0], &dest))
        return NULL;
    if ((compact = PyObject_IsTrue(args[1])) < 0 || (e = store_env(self)) == NULL) {
        Py_DECREF(dest);
        return NULL;
    }
    e->refcnt++;
    rc = lmc_env_copy(e, PyBytes_AS_STRING(dest), compact);
    if (rc != 0)
        lmc_raise(self->state, rc, "copy the cache", PyBytes_AS_STRING(dest));
    lmc_env_release(e);
    Py_DECREF(dest);
    if (rc != 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *store_maint(StoreObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    lmc_env *e = store_env(self);
    PyObject *r;
    if (e == NULL)
        return NULL;
    e->refcnt++;
    r = lmc_maint(self->state, e, self->dbi, args, nargs);
    lmc_env_release(e);
    return r;
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
    rc = mdb_cursor_open(txn, s->dbi, &cur);
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
        k.mv_data = (void *)"b"; /* the main DB's first user key tag */
        k.mv_size = 1;
        rc = mdb_cursor_get(cur, &k, &v, s->dbi == e->main_dbi ? MDB_SET_RANGE : MDB_FIRST);
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
            lmc_value_finish(st, NULL, 0, e->path); /* invalid UTF-8 -> CorruptError */
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

#define FASTKW(f) (PyCFunction)(void (*)(void))(f), METH_FASTCALL | METH_KEYWORDS
#define FAST(f) (PyCFunction)(void (*)(void))(f), METH_FASTCALL

static PyMethodDef store_methods[] = {
    {"get", FASTKW(store_get),
     "get($self, key, default=None)\n--\n\nThe value under key, or default."},
    {"set", FASTKW(store_set),
     "set($self, key, value, ttl=None)\n--\n\nStore value under key (ttl: seconds to live)."},
    {"add", FASTKW(store_add),
     "add($self, key, value, ttl=None)\n--\n\n"
     "Store only if key is absent (atomic); True if stored."},
    {"incr", FASTKW(store_incr),
     "incr($self, key, delta=1, default=0)\n--\n\n"
     "Add delta to the int under key (atomic) and return the result."},
    {"touch", FASTKW(store_touch),
     "touch($self, key, ttl=None)\n--\n\nGive key a new time-to-live; True if present."},
    {"delete", (PyCFunction)store_delete, METH_O,
     "delete($self, key, /)\n--\n\nRemove key; True if it was present."},
    /* no text signature: default has no value that means "absent" */
    {"pop", FAST(store_pop),
     "pop(key[, default])\n\nRemove key and return its value (atomic); default, or\n"
     "KeyError, when absent."},
    {"get_many", (PyCFunction)store_get_many, METH_O,
     "get_many($self, keys, /)\n--\n\nThe hits among keys as a dict, read in one transaction."},
    {"_set_many", FAST(store_set_many),
     "_set_many($self, pairs, ttl=None, /)\n--\n\n"
     "Store (key, value) tuples or lists in one transaction."},
    {"delete_many", (PyCFunction)store_delete_many, METH_O,
     "delete_many($self, keys, /)\n--\n\n"
     "Remove keys in one transaction; how many were present."},
    {"clear", (PyCFunction)store_clear, METH_NOARGS,
     "clear($self, /)\n--\n\nRemove every entry of this namespace."},
    {"expire", (PyCFunction)store_expire, METH_NOARGS,
     "expire($self, /)\n--\n\nRemove expired entries; how many."},
    {"close", (PyCFunction)store_close, METH_NOARGS,
     "close($self, /)\n--\n\nRelease the environment; the next use reopens it."},
    {"sync", (PyCFunction)store_sync, METH_NOARGS,
     "sync($self, /)\n--\n\nFlush every committed write to disk."},
    {"stats", FASTKW(store_stats),
     "stats($self, reset=False)\n--\n\n"
     "This object's hit/miss/set/delete/eviction counts as a dict."},
    {"_txn_begin", (PyCFunction)store_txn_begin, METH_NOARGS,
     "_txn_begin($self, /)\n--\n\nBegin this thread's transaction."},
    {"_txn_end", (PyCFunction)store_txn_end, METH_O,
     "_txn_end($self, commit, /)\n--\n\nEnd this thread's transaction."},
    {"_in_txn", (PyCFunction)store_in_txn, METH_NOARGS,
     "_in_txn($self, /)\n--\n\nWhether this thread has a transaction open."},
    {"_prefix_count", (PyCFunction)store_prefix_count, METH_O,
     "_prefix_count($self, prefix, /)\n--\n\nKeys extending the tuple key (a, b, ...)."},
    {"_prefix_delete", (PyCFunction)store_prefix_delete, METH_O,
     "_prefix_delete($self, prefix, /)\n--\n\nDelete the keys extending the tuple key."},
    {"_iter", (PyCFunction)store_iter_mode, METH_O,
     "_iter($self, mode, /)\n--\n\nIterator over keys (0), values (1) or items (2)."},
    {"_env_info", (PyCFunction)store_env_info, METH_NOARGS,
     "_env_info($self, /)\n--\n\n"
     "Map size, bytes used, page size and reader counts of the environment."},
    {"_copy", FAST(store_copy),
     "_copy($self, dest, compact, /)\n--\n\nCopy the environment into directory dest."},
    {"_maint", FAST(store_maint),
     "_maint($self, op, /, *args)\n--\n\nMaintenance: 'survey', or 'scan' after limit."},
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

static PyObject *store_get_ns(StoreObject *self, void *Py_UNUSED(closure))
{
    if (self->ns == NULL || self->ns[0] == '\0')
        Py_RETURN_NONE;
    return PyUnicode_FromString(self->ns);
}

static PyGetSetDef store_getset[] = {
    {"path", (getter)store_get_path, NULL, "The cache directory.", NULL},
    {"readonly", (getter)store_get_readonly, NULL, "Whether writes are refused.", NULL},
    {"namespace_name", (getter)store_get_ns, NULL, "The namespace, None for the default.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot store_slots[] = {
    {Py_tp_doc, "Store(path, *, map_size, size_limit, readonly, sync, max_readers, namespace, "
                "ttl, eviction_policy, boot_id)\n\n"
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
