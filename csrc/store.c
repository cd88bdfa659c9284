/*
 * store.c -- the Store type: the mapping over one namespace of one LMDB
 * environment.  Construction, the Env of a Store (lmc_store_enter, THE RULE of
 * env.c), the mapping slots and the single-key reads; the method table and
 * the type spec.  The single-key writes are in storewrite.c, multi-key
 * methods and scans in batch.c, the iterator in iter.c, the bodies of write
 * txns in txnops.c, incr and touch in rmw.c, argument helpers in args.c and
 * Store._copy and Store._maint in maint.c.
 *
 * Reentrancy: user code (pickle's __reduce__/__setstate__, __hash__, GC
 * finalizers) never runs while a read txn is live: values are copied out of
 * the map and the txn is reset before anything is unpickled.  Writes encode
 * (and pickle) before the write txn begins; the txn then runs with the GIL
 * released and touches no Python object.  Every method holds a reference on
 * its Env from its first line to its last, so a close() from user code or
 * another thread never frees the Env under it.
 */
#include "lmdbcache.h"

#include <stdlib.h>
#include <string.h>

#define LRU_FLUSH_BYTES ((size_t)64 << 10)

static char *raw_strdup(const char *s)
{
    char *copy = PyMem_RawMalloc(strlen(s) + 1);
    if (copy != NULL)
        strcpy(copy, s);
    return copy;
}

/* ---- the Env of a Store ---------------------------------------------------- */

/* Acquire the Env again (closed, inherited, or a stale namespace handle).
 * Returns a new reference for the caller; self->env gets its own. */
static lmc_env *store_reopen(StoreObject *self, MDB_dbi *dbi)
{
    lmc_env *e = self->env, *old;
    unsigned int epoch;
    int rc;

    if (self->path == NULL) {
        PyErr_SetString(PyExc_ValueError, "Store.__init__ was not called");
        return NULL;
    }
    if (e != NULL && lmc_env_is_current(e)) {
        e->refcnt++; /* only the namespace handle is stale: look it up again */
    }
    else {
        if (e != NULL) {
            self->env = NULL;
            lmc_env_release(e); /* abandons it if inherited */
        }
        e = lmc_env_acquire(self->state, self->path, &self->opt);
        if (e == NULL)
            return NULL;
    }
    epoch = e->ns_epoch;
    rc = lmc_env_namespace(e, self->ns, !self->opt.readonly, dbi);
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
    e->refcnt++; /* the caller's; the first is the Store's */
    old = self->env;
    self->env = e;
    self->dbi = *dbi;
    self->ns_epoch = epoch;
    if (old != NULL)
        lmc_env_release(old); /* another thread reopened meanwhile */
    return e;
}

lmc_env *lmc_store_enter(StoreObject *self, MDB_dbi *dbi)
{
    lmc_env *e = self->env;
    if (LMC_LIKELY(e != NULL && lmc_env_is_current(e) && self->ns_epoch == e->ns_epoch)) {
        e->refcnt++;
        *dbi = self->dbi;
        return e;
    }
    return store_reopen(self, dbi);
}

int lmc_store_check_writable(StoreObject *self)
{
    if (LMC_UNLIKELY(self->opt.readonly)) {
        PyErr_Format(self->state->ReadOnlyError,
                     "cannot write to '%s': the cache was opened with readonly=True", self->path);
        return -1;
    }
    return 0;
}

void lmc_store_count(StoreObject *self, const lmc_evict_counts *c)
{
    self->evictions += c->evicted;
    self->expirations += c->expired;
}

void lmc_raise_key_error(PyObject *key)
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
    static char *kwlist[] = {"path",     "map_size",        "size_limit",  "readonly",
                             "sync",     "max_readers",     "namespace",   "ttl",
                             "eviction_policy", "boot_id",  "timeout",     "on_incompatible",
                             "readahead", "allow_shared", "secret", "serializer", "dumps",
                             "loads", "compress", "decompress", "compress_threshold", NULL};
    PyObject *path = NULL, *secret = Py_None, *dumps = Py_None, *loads = Py_None;
    PyObject *compress = Py_None, *decompress = Py_None;
    Py_ssize_t threshold = 4096;
    int kind = LMC_SER_PICKLE, i;
    Py_ssize_t map_size = (Py_ssize_t)1 << 30, size_limit = 0;
    int readonly = 0, sync = 0, policy = LMC_POLICY_LRS, readahead = 0, allow_shared = 0;
    unsigned int max_readers = 1024;
    const char *ns = "", *boot_id = NULL, *on_incompatible = "raise";
    double ttl = 0, timeout = 60;
    char *path_copy = NULL, *ns_copy = NULL, *dbname = NULL, *boot_copy = NULL;
    lmc_env *old;
    MDB_dbi dbi;
    size_t n;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O&|$nnppIsdizdsppOiOOOOn:Store", kwlist,
                                     PyUnicode_FSConverter, &path, &map_size, &size_limit,
                                     &readonly, &sync, &max_readers, &ns, &ttl, &policy,
                                     &boot_id, &timeout, &on_incompatible, &readahead,
                                     &allow_shared, &secret, &kind, &dumps, &loads, &compress,
                                     &decompress, &threshold))
        return -1;
    if (kind < LMC_SER_PICKLE || kind > LMC_SER_CUSTOM || threshold < 0 ||
        (kind != LMC_SER_PICKLE && !PyCallable_Check(dumps)) ||
        (loads != Py_None && (!PyTuple_Check(loads) || PyTuple_GET_SIZE(loads) != 4)) ||
        (secret != Py_None && (!PyBytes_Check(secret) || PyBytes_GET_SIZE(secret) == 0))) {
        PyErr_SetString(PyExc_ValueError, "invalid Store codec option");
        goto error;
    }
    if (map_size <= 0 || size_limit < 0 || max_readers == 0 || ttl < 0 ||
        policy < LMC_POLICY_NONE || policy > LMC_POLICY_LRU || !(timeout >= 0) ||
        (strcmp(on_incompatible, "raise") != 0 && strcmp(on_incompatible, "reset") != 0)) {
        PyErr_SetString(PyExc_ValueError, "invalid Store option");
        goto error;
    }
    if (strlen(ns) > LMC_MAX_NS) {
        PyErr_Format(PyExc_ValueError, "namespace name must be at most %d UTF-8 bytes",
                     LMC_MAX_NS);
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
    old = self->env;
    self->env = NULL;
    if (old != NULL)
        lmc_env_release(old);
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
    self->opt.timeout = timeout;
    self->opt.reset_incompatible = strcmp(on_incompatible, "reset") == 0;
    self->opt.readahead = readahead;
    self->opt.allow_shared = allow_shared;
    self->opt.mac = NULL;
    self->codec.sign = 0;
    if (secret != Py_None) {
        lmc_mac_init(&self->mac, PyBytes_AS_STRING(secret), (size_t)PyBytes_GET_SIZE(secret));
        self->opt.mac = &self->mac;
        self->codec.sign = 1;
    }
    self->codec.kind = kind;
    Py_XSETREF(self->codec.dumps, kind == LMC_SER_PICKLE ? NULL : Py_NewRef(dumps));
    for (i = 0; i < 4; i++) {
        PyObject *f = loads == Py_None ? Py_None : PyTuple_GET_ITEM(loads, i);
        Py_XSETREF(self->codec.loads[i], f == Py_None ? NULL : Py_NewRef(f));
    }
    Py_XSETREF(self->codec.compress, compress == Py_None ? NULL : Py_NewRef(compress));
    Py_XSETREF(self->codec.decompress, decompress == Py_None ? NULL : Py_NewRef(decompress));
    self->codec.threshold = (size_t)threshold;
    old = store_reopen(self, &dbi);
    if (old == NULL)
        return -1;
    lmc_store_leave(old);
    return 0;

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
    self->codec.st = self->state;
    return (PyObject *)self;
}

static int store_traverse(StoreObject *self, visitproc visit, void *arg)
{
    int i;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->miss_hook);
    Py_VISIT(self->codec.dumps);
    for (i = 0; i < 4; i++)
        Py_VISIT(self->codec.loads[i]);
    Py_VISIT(self->codec.compress);
    Py_VISIT(self->codec.decompress);
    return 0;
}

static void store_clear_codec(StoreObject *self)
{
    int i;
    Py_CLEAR(self->codec.dumps);
    for (i = 0; i < 4; i++)
        Py_CLEAR(self->codec.loads[i]);
    Py_CLEAR(self->codec.compress);
    Py_CLEAR(self->codec.decompress);
}

/* Breaks cycles through the codec (a serializer object that refers back to
 * its cache) or the miss hook.  A Store so cleared refuses to serialize. */
static int store_tp_clear(StoreObject *self)
{
    Py_CLEAR(self->miss_hook);
    store_clear_codec(self);
    return 0;
}

static void store_dealloc(StoreObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    lmc_env *e = self->env;
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->miss_hook);
    store_clear_codec(self);
    memset(&self->mac, 0, sizeof(self->mac));
    self->env = NULL;
    if (e != NULL)
        lmc_env_release(e);
    PyMem_RawFree(self->path);
    PyMem_RawFree(self->ns);
    PyMem_RawFree(self->dbname);
    PyMem_RawFree(self->boot_id);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *store_close(StoreObject *self, PyObject *Py_UNUSED(ignored))
{
    lmc_env *e = self->env;
    self->env = NULL; /* first: releasing may run other threads */
    if (e != NULL)
        lmc_env_release(e);
    Py_RETURN_NONE;
}

/* ---- reads ------------------------------------------------------------------ */

/* LRU bookkeeping after a hit: log it; write the log once it is large. */
static void store_note_use(StoreObject *self, lmc_env *e, const lmc_kref *k)
{
    lmc_lru_touch(e, self->dbname, &k->val);
    if (e->lru_len > LRU_FLUSH_BYTES && !self->opt.readonly) {
        /* a growing write: the index entries count against size_limit */
        int rc = lmc_env_write(e, lmc_noop_fn, NULL, LMC_WRITE_GROWS, 0, NULL);
        (void)rc; /* best effort: the log is kept for the next write otherwise */
    }
}

int lmc_store_read(StoreObject *self, lmc_env *e, MDB_dbi dbi, const lmc_kref *key,
                   lmc_take_fn take, void *arg)
{
    MDB_txn *txn;
    lmc_record rec;
    const char *why;
    int rc, status = -1;

    rc = lmc_read_begin(e, &txn);
    if (LMC_UNLIKELY(rc != 0)) {
        lmc_raise_env(self->state, rc, "begin a read", e);
        return -1;
    }
    rc = lmc_lookup(e, txn, dbi, self->dbname, key, &rec, &status, &why);
    if (LMC_LIKELY(rc == 0 && status == LMC_LIVE))
        take(&rec, arg);
    lmc_read_end(e, txn);
    if (LMC_UNLIKELY(rc != 0)) {
        lmc_raise_env(self->state, rc, "read", e);
        status = -1;
    }
    else if (LMC_UNLIKELY(status == LMC_CORRUPT)) {
        PyErr_Format(self->state->CorruptError, "corrupt record in '%s': %s", e->path, why);
        status = -1;
    }
    return status;
}

typedef struct {
    PyObject *obj; /* NULL with an exception: invalid UTF-8 */
    int pending;
} take_value_arg;

static void take_value(const lmc_record *rec, void *arg)
{
    take_value_arg *a = arg;
    a->obj = lmc_record_take(rec, &a->pending);
}

/* Look key up.  Returns the value (new ref), or NULL: with an exception set,
 * or without one for a miss. */
static PyObject *store_lookup(StoreObject *self, PyObject *key)
{
    lmc_env *e;
    lmc_key k;
    MDB_dbi dbi;
    take_value_arg a = {NULL, 0};
    int status;

    e = lmc_store_enter(self, &dbi);
    if (LMC_UNLIKELY(e == NULL))
        return NULL;
    if (LMC_UNLIKELY(lmc_key_encode(&self->codec, key, &k) < 0))
        goto leave;
    status = lmc_store_read(self, e, dbi, &k.r, take_value, &a);
    if (LMC_LIKELY(status == LMC_LIVE)) {
        self->hits++;
        if (LMC_UNLIKELY(e->policy == LMC_POLICY_LRU) && lmc_env_evicts(e) && a.obj != NULL)
            store_note_use(self, e, &k.r);
        a.obj = lmc_value_finish(&self->codec, a.obj, a.pending, e->path);
    }
    else if (status >= 0) {
        self->misses++;
    }
    lmc_key_clear(&k);
leave:
    lmc_store_leave(e);
    return a.obj;
}

static void take_expiry(const lmc_record *rec, void *arg)
{
    *(double *)arg = rec->expires;
}

/* Store._expire_time(key): the record's absolute expiry (time.time() scale),
 * None when it has none; KeyError when the key is missing or expired. */
PyObject *lmc_store_expire_time(StoreObject *self, PyObject *key)
{
    lmc_env *e;
    lmc_key k;
    MDB_dbi dbi;
    PyObject *obj = NULL;
    double expires = 0;
    int status;

    e = lmc_store_enter(self, &dbi);
    if (e == NULL)
        return NULL;
    if (lmc_key_encode(&self->codec, key, &k) < 0)
        goto leave;
    status = lmc_store_read(self, e, dbi, &k.r, take_expiry, &expires);
    if (status == LMC_LIVE)
        obj = expires > 0 ? PyFloat_FromDouble(expires) : Py_NewRef(Py_None);
    else if (status >= 0)
        PyErr_SetObject(PyExc_KeyError, key);
    lmc_key_clear(&k);
leave:
    lmc_store_leave(e);
    return obj;
}

/* After a local miss with a miss hook (the remote tier): 1 and *value (new
 * ref) for a remote hit, 0 for a miss, -1 with an exception. */
static int store_ask_hook(StoreObject *self, PyObject *key, PyObject **value)
{
    PyObject *hook = Py_NewRef(self->miss_hook), *r;
    r = PyObject_CallOneArg(hook, key);
    Py_DECREF(hook);
    if (r == NULL)
        return -1;
    if (PyTuple_Check(r) && PyTuple_GET_SIZE(r) == 1) {
        *value = Py_NewRef(PyTuple_GET_ITEM(r, 0));
        Py_DECREF(r);
        return 1;
    }
    Py_DECREF(r);
    return 0;
}

static PyObject *store_set_miss_hook(StoreObject *self, PyObject *hook)
{
    if (hook != Py_None && !PyCallable_Check(hook)) {
        PyErr_SetString(PyExc_TypeError, "the miss hook must be callable or None");
        return NULL;
    }
    Py_XSETREF(self->miss_hook, hook == Py_None ? NULL : Py_NewRef(hook));
    Py_RETURN_NONE;
}

static PyObject *store_subscript(StoreObject *self, PyObject *key)
{
    PyObject *value = store_lookup(self, key);
    if (LMC_UNLIKELY(value == NULL && self->miss_hook != NULL) && !PyErr_Occurred() &&
        store_ask_hook(self, key, &value) < 0)
        return NULL;
    if (value == NULL && !PyErr_Occurred())
        lmc_raise_key_error(key);
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
    else if (lmc_parse_args(args, nargs, kwnames, "get", names, 1, 2, a) < 0) {
        return NULL;
    }
    value = store_lookup(self, a[0]);
    if (LMC_UNLIKELY(value == NULL && self->miss_hook != NULL) && !PyErr_Occurred() &&
        store_ask_hook(self, a[0], &value) < 0)
        return NULL;
    if (value == NULL && !PyErr_Occurred())
        return Py_NewRef(a[1] != NULL ? a[1] : Py_None);
    return value;
}

static int store_contains(StoreObject *self, PyObject *key)
{
    lmc_state *st = self->state;
    lmc_env *e;
    lmc_key k;
    lmc_record rec;
    MDB_txn *txn;
    MDB_dbi dbi;
    const char *why = NULL;
    int rc, status = LMC_ABSENT, result = -1;

    if ((e = lmc_store_enter(self, &dbi)) == NULL)
        return -1;
    if (lmc_key_encode(&self->codec, key, &k) < 0)
        goto leave;
    rc = lmc_read_begin(e, &txn);
    if (rc == 0) {
        rc = lmc_lookup(e, txn, dbi, self->dbname, &k.r, &rec, &status, &why);
        lmc_read_end(e, txn);
    }
    lmc_key_clear(&k);
    if (rc != 0)
        lmc_raise_env(st, rc, "read", e);
    else if (status == LMC_CORRUPT)
        PyErr_Format(st->CorruptError, "corrupt record in '%s': %s", e->path, why);
    else
        result = status == LMC_LIVE;
leave:
    lmc_store_leave(e);
    if (LMC_UNLIKELY(result == 0 && self->miss_hook != NULL)) {
        PyObject *value = NULL;
        result = store_ask_hook(self, key, &value);
        Py_XDECREF(value);
    }
    return result;
}

static Py_ssize_t store_length(StoreObject *self)
{
    lmc_env *e;
    MDB_txn *txn;
    MDB_dbi dbi;
    size_t count = 0;
    int rc;

    if ((e = lmc_store_enter(self, &dbi)) == NULL)
        return -1;
    rc = lmc_read_begin(e, &txn);
    if (rc == 0) {
        rc = lmc_env_count(e, txn, dbi, &count);
        lmc_read_end(e, txn);
    }
    if (rc != 0)
        lmc_raise_env(self->state, rc, "count entries", e);
    lmc_store_leave(e);
    return rc != 0 ? -1 : (Py_ssize_t)count;
}

/* ---- type specs ------------------------------------------------------------ */

#define FASTKW(f) (PyCFunction)(void (*)(void))(f), METH_FASTCALL | METH_KEYWORDS
#define FAST(f) (PyCFunction)(void (*)(void))(f), METH_FASTCALL

static PyMethodDef store_methods[] = {
    {"get", FASTKW(store_get),
     "get($self, key, default=None)\n--\n\nThe value under key, or default."},
    {"set", FASTKW(lmc_store_set),
     "set($self, key, value, ttl=None)\n--\n\nStore value under key (ttl: seconds to live)."},
    {"add", FASTKW(lmc_store_add),
     "add($self, key, value, ttl=None)\n--\n\n"
     "Store only if key is absent (atomic); True if stored."},
    {"incr", FASTKW(lmc_store_incr),
     "incr($self, key, delta=1, default=0)\n--\n\n"
     "Add delta to the int under key (atomic) and return the result."},
    {"touch", FASTKW(lmc_store_touch),
     "touch($self, key, ttl=None)\n--\n\nGive key a new time-to-live; True if present."},
    {"delete", (PyCFunction)lmc_store_delete, METH_O,
     "delete($self, key, /)\n--\n\nRemove key; True if it was present."},
    /* no text signature: default has no value that means "absent" */
    {"pop", FAST(lmc_store_pop),
     "pop(key[, default])\n\nRemove key and return its value (atomic); default, or\n"
     "KeyError, when absent."},
    {"get_many", (PyCFunction)lmc_store_get_many, METH_O,
     "get_many($self, keys, /)\n--\n\nThe hits among keys as a dict, read in one transaction."},
    {"_set_many", FAST(lmc_store_set_many),
     "_set_many($self, pairs, ttl=None, /)\n--\n\n"
     "Store (key, value) tuples or lists in one transaction."},
    {"delete_many", (PyCFunction)lmc_store_delete_many, METH_O,
     "delete_many($self, keys, /)\n--\n\n"
     "Remove keys in one transaction; how many were present."},
    {"clear", (PyCFunction)lmc_store_clear, METH_NOARGS,
     "clear($self, /)\n--\n\nRemove every entry of this namespace."},
    {"_expire_time", (PyCFunction)lmc_store_expire_time, METH_O,
     "_expire_time($self, key, /)\n--\n\nThe absolute expiry of key, or None; KeyError when absent."},
    {"expire", (PyCFunction)lmc_store_expire, METH_NOARGS,
     "expire($self, /)\n--\n\nRemove expired entries; how many."},
    {"close", (PyCFunction)store_close, METH_NOARGS,
     "close($self, /)\n--\n\nRelease the environment; the next use reopens it."},
    {"sync", (PyCFunction)lmc_store_sync, METH_NOARGS,
     "sync($self, /)\n--\n\nFlush every committed write to disk."},
    {"stats", FASTKW(lmc_store_stats),
     "stats($self, reset=False)\n--\n\n"
     "This object's hit/miss/set/delete/eviction counts as a dict."},
    {"transaction", (PyCFunction)lmc_store_transaction, METH_NOARGS,
     "transaction($self, /)\n--\n\n"
     "A context manager: every write inside commits together, or none does."},
    {"_txn_begin", (PyCFunction)lmc_store_txn_begin, METH_NOARGS,
     "_txn_begin($self, /)\n--\n\nBegin this thread's transaction."},
    {"_txn_end", (PyCFunction)lmc_store_txn_end, METH_O,
     "_txn_end($self, commit, /)\n--\n\nEnd this thread's transaction."},
    {"_in_txn", (PyCFunction)lmc_store_in_txn, METH_NOARGS,
     "_in_txn($self, /)\n--\n\nWhether this thread has a transaction open."},
    {"_prefix_count", (PyCFunction)lmc_store_prefix_count, METH_O,
     "_prefix_count($self, prefix, /)\n--\n\nKeys extending the tuple key (a, b, ...)."},
    {"_prefix_delete", (PyCFunction)lmc_store_prefix_delete, METH_O,
     "_prefix_delete($self, prefix, /)\n--\n\nDelete the keys extending the tuple key."},
    {"_iter", (PyCFunction)lmc_store_iter_mode, METH_O,
     "_iter($self, mode, /)\n--\n\nIterator over keys (0), values (1) or items (2)."},
    {"_env_info", (PyCFunction)lmc_store_env_info, METH_NOARGS,
     "_env_info($self, /)\n--\n\n"
     "Map size, bytes used, page size and reader counts of the environment."},
    {"_copy", FAST(lmc_store_copy),
     "_copy($self, dest, compact, /)\n--\n\nCopy the environment into directory dest."},
    {"_get_raw", (PyCFunction)lmc_store_get_raw, METH_O,
     "_get_raw($self, key, /)\n--\n\n"
     "(record, expires) of the live entry in canonical form (expires 0: none), or None."},
    {"_put_raw", FAST(lmc_store_put_raw),
     "_put_raw($self, key, record, expires=-1.0, store=True, /)\n--\n\n"
     "Check a canonical record against key, store it, return its value (store=2: None)."},
    {"_encode_raw", FAST(lmc_store_encode_raw),
     "_encode_raw($self, key, value, ttl=None, /)\n--\n\n"
     "(key encoding, canonical record, expires) of value under key."},
    {"_key_raw", (PyCFunction)lmc_store_key_raw, METH_O,
     "_key_raw($self, key, /)\n--\n\nThe key's encoding."},
    {"_delete_raw", (PyCFunction)lmc_store_delete_raw, METH_O,
     "_delete_raw($self, key_encoding, /)\n--\n\nDrop the record under a key encoding."},
    {"_set_namespace", (PyCFunction)lmc_store_set_namespace, METH_O,
     "_set_namespace($self, name, /)\n--\n\nUse another namespace of the same file."},
    {"_set_miss_hook", (PyCFunction)store_set_miss_hook, METH_O,
     "_set_miss_hook($self, hook, /)\n--\n\n"
     "hook(key) -> (value,) | None, asked after a local miss by [], get and in."},
    {"_maint", FAST(lmc_store_maint),
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
                "ttl, eviction_policy, boot_id, timeout, on_incompatible, readahead, "
                "allow_shared)\n\n"
                "The C mapping over an LMDB environment; use lmdbcache.Cache."},
    {Py_tp_new, store_new},
    {Py_tp_init, store_init},
    {Py_tp_dealloc, store_dealloc},
    {Py_tp_traverse, store_traverse},
    {Py_tp_clear, store_tp_clear},
    {Py_tp_iter, lmc_store_iter},
    {Py_tp_methods, store_methods},
    {Py_tp_getset, store_getset},
    {Py_mp_subscript, store_subscript},
    {Py_mp_ass_subscript, lmc_store_ass_subscript},
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

