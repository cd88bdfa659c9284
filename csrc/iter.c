/*
 * iter.c -- the iterator over a Store's keys (mode 0), values (1) or items (2).
 *
 * Entries are read ITER_CHUNK at a time in one read txn, as raw copies (the
 * key encoding, the native value or the pickled bytes; a record that fails
 * validation becomes a "corrupt" entry).  Decoding -- which may unpickle and
 * so run user code -- happens one entry at a time in next(), after the txn
 * ended.  An entry that cannot be decoded raises CorruptError for that entry
 * only: a caller that catches it and calls next() again goes on with the
 * entry after it.  `last` is the raw key of the last entry read, so the next
 * chunk starts after it even when other writers changed the cache meanwhile.
 */
#include "lmdbcache.h"

#include <string.h>

#define ITER_CHUNK 64

#define ENT_NATIVE 0
#define ENT_PENDING 1 /* val: a payload for lmc_value_finish */
#define ENT_CORRUPT 2 /* val: a str saying why */

typedef struct {
    PyObject *key; /* raw key encoding (bytes) */
    PyObject *val; /* NULL for keys-only iteration */
    int kind;
    int pending;   /* ENT_PENDING: what lmc_record_take said */
} it_entry;

typedef struct {
    PyObject_HEAD
    StoreObject *store;
    PyObject *last;   /* raw encoding of the last key read, or NULL */
    it_entry ent[ITER_CHUNK];
    int n, pos;
    int mode;         /* 0 keys, 1 values, 2 items */
    int done;
    int filling;      /* iter_fill in progress (reentrancy guard) */
    int warmed;       /* lmc_env_warm called for this iterator */
} IterObject;

static PyObject *store_make_iter(StoreObject *self, int mode)
{
    IterObject *it = PyObject_GC_New(IterObject, self->state->IterType);
    if (it == NULL)
        return NULL;
    it->store = (StoreObject *)Py_NewRef(self);
    it->last = NULL;
    memset(it->ent, 0, sizeof(it->ent));
    it->n = it->pos = 0;
    it->mode = mode;
    it->done = 0;
    it->filling = 0;
    it->warmed = 0;
    PyObject_GC_Track(it);
    return (PyObject *)it;
}

PyObject *lmc_store_iter(StoreObject *self)
{
    return store_make_iter(self, 0);
}

PyObject *lmc_store_iter_mode(StoreObject *self, PyObject *arg)
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

static void iter_drop_entries(IterObject *it)
{
    int i;
    for (i = 0; i < it->n; i++) {
        Py_CLEAR(it->ent[i].key);
        Py_CLEAR(it->ent[i].val);
    }
    it->n = it->pos = 0;
}

/* One entry from the record under the cursor.  Runs no Python code: only
 * bytes/str/int/float objects are made.  -1 with an exception. */
static int iter_take(IterObject *it, it_entry *ent, PyObject *last, const MDB_val *k,
                     const MDB_val *v, const lmc_mac *mac)
{
    lmc_record rec;
    const char *why = lmc_record_check(it->store->dbname, k, v->mv_data, v->mv_size, &rec, mac);
    int pending = 0;

    ent->kind = ENT_NATIVE;
    if (why != NULL) {
        ent->kind = ENT_CORRUPT;
        ent->key = Py_NewRef(last);
        ent->val = PyUnicode_FromString(why);
        return ent->val == NULL ? -1 : 0;
    }
    if (rec.key != NULL)
        ent->key = PyBytes_FromStringAndSize(rec.key, (Py_ssize_t)rec.key_len);
    else
        ent->key = Py_NewRef(last);
    if (ent->key == NULL)
        return -1;
    if (it->mode == 0)
        return 0;
    ent->val = lmc_record_take(&rec, &pending);
    if (ent->val == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
            return -1;
        PyErr_Clear();
        ent->kind = ENT_CORRUPT;
        ent->val = PyUnicode_FromString("invalid UTF-8");
        return ent->val == NULL ? -1 : 0;
    }
    ent->kind = pending ? ENT_PENDING : ENT_NATIVE;
    ent->pending = pending;
    return 0;
}

/* Read the next ITER_CHUNK live entries after it->last. */
static int iter_fill(IterObject *it)
{
    StoreObject *s = it->store;
    lmc_env *e;
    PyObject *last = NULL;
    MDB_txn *txn = NULL;
    MDB_cursor *cur = NULL;
    MDB_val k, v;
    MDB_dbi dbi;
    lmc_record rec;
    int rc, result = -1;

    if (it->filling) {
        PyErr_SetString(PyExc_RuntimeError, "the cache iterator is already running");
        return -1;
    }
    iter_drop_entries(it);
    if ((e = lmc_store_enter(s, &dbi)) == NULL)
        return -1;
    it->filling = 1;
    if (it->last != NULL && !it->warmed) {
        /* a second chunk: a scan, not a peek at the first entries */
        it->warmed = 1;
        lmc_env_warm(e);
    }
    rc = lmc_read_begin(e, &txn);
    if (rc != 0)
        goto lmdb_error;
    rc = mdb_cursor_open(txn, dbi, &cur);
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
        rc = mdb_cursor_get(cur, &k, &v, dbi == e->main_dbi ? MDB_SET_RANGE : MDB_FIRST);
    }
    /* Under the txn: only copies and native objects, no user code. */
    for (; rc == 0 && it->n < ITER_CHUNK; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        Py_XSETREF(last, PyBytes_FromStringAndSize(k.mv_data, (Py_ssize_t)k.mv_size));
        if (last == NULL)
            goto error;
        if (!lmc_record_in_file(e, txn, v.mv_data, v.mv_size)) {
            /* a damaged page points outside the file: never read there */
            it->ent[it->n].kind = ENT_CORRUPT;
            it->ent[it->n].key = Py_NewRef(last);
            it->ent[it->n].val = PyUnicode_FromString("the record lies outside the data file");
            if (it->ent[it->n++].val == NULL)
                goto error;
            continue;
        }
        if (lmc_record_parse_raw(v.mv_data, v.mv_size, &rec) == NULL &&
            (rec.flags & LMC_FLAG_EXPIRES) && rec.expires <= lmc_now())
            continue;
        if (iter_take(it, &it->ent[it->n], last, &k, &v, lmc_env_mac(e)) < 0) {
            Py_CLEAR(it->ent[it->n].key);
            Py_CLEAR(it->ent[it->n].val);
            goto error;
        }
        it->n++;
    }
    if (rc != 0 && rc != MDB_NOTFOUND)
        goto lmdb_error;
    it->done = rc == MDB_NOTFOUND;
    if (last != NULL)
        Py_XSETREF(it->last, Py_NewRef(last));
    result = 0;
    goto error;

lmdb_error:
    lmc_raise_env(s->state, rc, "iterate", e);
error:
    if (cur != NULL)
        mdb_cursor_close(cur);
    if (txn != NULL)
        lmc_read_end(e, txn);
    Py_XDECREF(last);
    it->filling = 0;
    if (result < 0)
        iter_drop_entries(it);
    lmc_store_leave(e);
    return result;
}

/* Decode one entry (may run user code). */
static PyObject *iter_decode(IterObject *it, it_entry *ent)
{
    lmc_state *st = it->store->state;
    PyObject *key = NULL, *value = NULL, *res = NULL;

    if (ent->kind == ENT_CORRUPT) {
        PyErr_Format(st->CorruptError, "corrupt record in '%s': %U", it->store->path, ent->val);
        goto done;
    }
    if (it->mode != 1) {
        key = lmc_key_decode(&it->store->codec, PyBytes_AS_STRING(ent->key),
                             (size_t)PyBytes_GET_SIZE(ent->key));
        if (key == NULL)
            goto done;
    }
    if (it->mode != 0) {
        value = lmc_value_finish(&it->store->codec, ent->val,
                                 ent->kind == ENT_PENDING ? ent->pending : 0, it->store->path);
        ent->val = NULL; /* stolen */
        if (value == NULL)
            goto done;
    }
    if (it->mode == 0)
        res = Py_NewRef(key);
    else if (it->mode == 1)
        res = Py_NewRef(value);
    else
        res = PyTuple_Pack(2, key, value);
done:
    Py_XDECREF(key);
    Py_XDECREF(value);
    return res;
}

static PyObject *iter_next(IterObject *it)
{
    it_entry ent;
    PyObject *res;

    for (;;) {
        if (it->pos < it->n) {
            /* take the entry out first: decoding may reenter this iterator */
            ent = it->ent[it->pos];
            it->ent[it->pos].key = NULL;
            it->ent[it->pos].val = NULL;
            it->pos++;
            res = iter_decode(it, &ent);
            Py_XDECREF(ent.key);
            Py_XDECREF(ent.val);
            return res;
        }
        if (it->done || it->store == NULL)
            return NULL;
        if (iter_fill(it) < 0)
            return NULL;
    }
}

static int iter_traverse(IterObject *it, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(it));
    Py_VISIT(it->store);
    return 0;
}

static int iter_clear(IterObject *it)
{
    iter_drop_entries(it);
    Py_CLEAR(it->store);
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
