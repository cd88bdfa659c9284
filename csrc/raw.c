/*
 * raw.c -- the encoded record of a key, in and out, for the remote tier
 * (lmdbcache/remote.py): the bytes a shared server holds are the same record
 * the local tier stores, so moving a value between tiers never pickles.
 *
 * A record on the wire is in canonical form: no sequence number, and its
 * CRC32C (and with a secret its MAC) computed over the default namespace's
 * name ("") + the key encoding + the record.  The wire key (prefix +
 * namespace + key encoding) carries the namespace; the local sub-database
 * of a namespace changes with the remote generation, so the canonical form
 * cannot name it (a record can be moved between namespaces on the server,
 * never between keys).
 * Locally the record is re-headed for the Store's own sub-database (whose
 * name may carry a generation) and, with eviction, given a sequence number:
 * the sequence number lives inside the record under the checksum, so the
 * simplest correct way is to rebuild the header with lmc_value_head and write
 * header + payload with lmc_value_write (a memcpy of the payload and one
 * CRC32C, plus a MAC when signed; no Python object is created or pickled).
 *
 * Every method follows THE RULE (lmc_store_enter / lmc_store_leave).
 */
#include "lmdbcache.h"

#include <stdlib.h>
#include <string.h>

/* A record parsed from bytes: the value to rebuild from it. */
static void raw_value_from(lmc_value *v, const lmc_record *rec, const lmc_env *e,
                           double expires, int with_seq, const lmc_kref *key)
{
    int extra = (rec->flags & LMC_FLAG_ZSTD) | (e->is_signed ? LMC_FLAG_MAC : 0);
    lmc_kref k = *key;
    /* a long key's full encoding travels in the record (checked to match) */
    if (rec->key != NULL) {
        k.full_data = rec->key;
        k.full_len = rec->key_len;
    }
    lmc_value_head(v, rec->tag, extra, expires, with_seq, &k);
    v->data = rec->data;
    v->data_len = rec->data_len;
    v->owner = NULL;
}

typedef struct {
    const lmc_env *e;
    const lmc_kref *key;
    PyObject *bytes; /* the canonical record; NULL with an exception */
    double expires;
} get_raw_arg;

/* Under the read txn: the record in canonical form (a copy, no user code). */
static void take_raw(const lmc_record *rec, void *arg)
{
    get_raw_arg *a = arg;
    lmc_value v;

    a->expires = (rec->flags & LMC_FLAG_EXPIRES) ? rec->expires : 0;
    raw_value_from(&v, rec, a->e, a->expires, 0, a->key);
    a->bytes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)lmc_value_size(&v));
    if (a->bytes != NULL)
        lmc_value_write(&v, PyBytes_AS_STRING(a->bytes), 0, "", &a->key->val,
                        lmc_env_mac(a->e));
}

/* Store._get_raw(key) -> (record, expires) | None */
PyObject *lmc_store_get_raw(StoreObject *self, PyObject *key)
{
    lmc_env *e;
    lmc_key k;
    MDB_dbi dbi;
    PyObject *result = NULL;
    get_raw_arg a;
    int status;

    if ((e = lmc_store_enter(self, &dbi)) == NULL)
        return NULL;
    if (lmc_key_encode(&self->codec, key, &k) < 0)
        goto leave;
    a.e = e;
    a.key = &k.r;
    a.bytes = NULL;
    a.expires = 0;
    status = lmc_store_read(self, e, dbi, &k.r, take_raw, &a);
    if (status == LMC_LIVE && a.bytes != NULL)
        result = Py_BuildValue("(Od)", a.bytes, a.expires);
    else if (status >= 0 && status != LMC_LIVE)
        result = Py_NewRef(Py_None);
    Py_XDECREF(a.bytes);
    lmc_key_clear(&k);
leave:
    lmc_store_leave(e);
    return result;
}

typedef struct {
    MDB_dbi dbi;
    const char *dbname;
    const lmc_kref *key;
    lmc_value *val;
} raw_put_arg;

static int raw_put_fn(MDB_txn *txn, lmc_env *e, void *arg)
{
    raw_put_arg *a = arg;
    MDB_val v;
    uint64_t seq = 0;
    int rc, evicts = lmc_env_evicts(e);

    v.mv_size = lmc_value_size(a->val);
    v.mv_data = NULL;
    rc = mdb_put(txn, a->dbi, (MDB_val *)&a->key->val, &v, MDB_RESERVE);
    if (rc != 0)
        return rc;
    if (evicts)
        seq = lmc_evict_next_seq(e, txn);
    lmc_value_write(a->val, v.mv_data, seq, a->dbname, &a->key->val, lmc_env_mac(e));
    if (evicts)
        rc = lmc_evict_note(txn, e, a->dbname, &a->key->val, seq);
    return rc;
}

/* Store._put_raw(key, record, expires=-1.0, store=True) -> value
 * Check a canonical record against key, store it re-headed for this
 * namespace (expires: -1 keeps the record's, 0 none, else the unix time),
 * and return its value.  store=False (or a read-only Store): decode only. */
PyObject *lmc_store_put_raw(StoreObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    lmc_state *st = self->state;
    lmc_env *e;
    lmc_key k;
    lmc_record rec;
    lmc_value v;
    MDB_dbi dbi;
    Py_buffer buf;
    const char *why;
    PyObject *obj = NULL;
    double expires = -1;
    int store = 1, rc, pending = 0;
    lmc_evict_counts counts = {0, 0};

    if (nargs < 2 || nargs > 4) {
        PyErr_SetString(PyExc_TypeError, "_put_raw(key, record, expires=-1.0, store=True)");
        return NULL;
    }
    if (nargs >= 3) {
        expires = PyFloat_AsDouble(args[2]);
        if (expires == -1.0 && PyErr_Occurred())
            return NULL;
    }
    if (nargs == 4) {
        if (PyLong_Check(args[3]) && PyLong_AsLong(args[3]) == 2)
            store = 2;
        else if ((store = PyObject_IsTrue(args[3])) < 0)
            return NULL;
    }
    if ((e = lmc_store_enter(self, &dbi)) == NULL)
        return NULL;
    if (lmc_key_encode(&self->codec, args[0], &k) < 0)
        goto leave;
    if (PyObject_GetBuffer(args[1], &buf, PyBUF_SIMPLE) < 0)
        goto clear;
    why = lmc_record_check("", &k.r.val, buf.buf, (size_t)buf.len, &rec, lmc_env_mac(e));
    if (why == NULL && !lmc_record_matches(&rec, &k.r))
        why = "the record belongs to another key";
    if (why != NULL) {
        PyErr_Format(st->CorruptError, "corrupt record for '%s': %s", e->path, why);
        goto release;
    }
    if (expires < 0)
        expires = (rec.flags & LMC_FLAG_EXPIRES) ? rec.expires : 0;
    if (expires > 0 && expires <= lmc_now()) {
        PyObject *t = PyTuple_Pack(1, args[0]); /* already expired: a miss */
        if (t != NULL) {
            PyErr_SetObject(PyExc_KeyError, t);
            Py_DECREF(t);
        }
        goto release;
    }
    if (store && !self->opt.readonly) {
        raw_put_arg a;
        raw_value_from(&v, &rec, e, expires, lmc_env_evicts(e), &k.r);
        a.dbi = dbi;
        a.dbname = self->dbname;
        a.key = &k.r;
        a.val = &v;
        rc = lmc_env_write(e, raw_put_fn, &a, LMC_WRITE_GROWS, lmc_value_size(&v) + k.r.val.mv_size,
                           &counts);
        lmc_store_count(self, &counts);
        if (rc != 0) {
            lmc_raise_env(st, rc, "write", e);
            goto release;
        }
        self->sets++;
    }
    if (store == 2) { /* a write: the caller has the value */
        PyBuffer_Release(&buf);
        lmc_key_clear(&k);
        lmc_store_leave(e);
        Py_RETURN_NONE;
    }
    obj = lmc_record_take(&rec, &pending);
    PyBuffer_Release(&buf);
    lmc_key_clear(&k);
    lmc_store_leave(e);
    return obj == NULL ? NULL : lmc_value_finish(&self->codec, obj, pending, self->path);
release:
    PyBuffer_Release(&buf);
clear:
    lmc_key_clear(&k);
leave:
    lmc_store_leave(e);
    return obj;
}

/* Store._encode_raw(key, value, ttl=None) -> (key encoding, record, expires)
 * The canonical record of value under key (pickling when needed), for a
 * write that goes to the shared server before the local tier. */
PyObject *lmc_store_encode_raw(StoreObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    lmc_env *e;
    lmc_key k;
    lmc_value v;
    MDB_dbi dbi;
    double expires = 0;
    PyObject *bytes, *result = NULL;

    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "_encode_raw(key, value, ttl=None)");
        return NULL;
    }
    if ((e = lmc_store_enter(self, &dbi)) == NULL)
        return NULL;
    if (lmc_parse_ttl(self, nargs == 3 ? args[2] : Py_None, &expires) < 0)
        goto leave;
    if (lmc_key_encode(&self->codec, args[0], &k) < 0)
        goto leave;
    if (lmc_value_encode(&self->codec, args[1], &k.r, expires, 0, &v) < 0)
        goto clear;
    bytes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)lmc_value_size(&v));
    if (bytes != NULL) {
        lmc_value_write(&v, PyBytes_AS_STRING(bytes), 0, "", &k.r.val, lmc_env_mac(e));
        result = Py_BuildValue("(y#Nd)", (const char *)k.r.val.mv_data,
                               (Py_ssize_t)k.r.val.mv_size, bytes, expires);
    }
    lmc_value_clear(&v);
clear:
    lmc_key_clear(&k);
leave:
    lmc_store_leave(e);
    return result;
}

/* Store._key_raw(key) -> bytes: the key's encoding (a digest for long keys). */
PyObject *lmc_store_key_raw(StoreObject *self, PyObject *key)
{
    lmc_env *e;
    lmc_key k;
    MDB_dbi dbi;
    PyObject *result = NULL;

    if ((e = lmc_store_enter(self, &dbi)) == NULL)
        return NULL;
    if (lmc_key_encode(&self->codec, key, &k) == 0) {
        result = PyBytes_FromStringAndSize(k.r.val.mv_data, (Py_ssize_t)k.r.val.mv_size);
        lmc_key_clear(&k);
    }
    lmc_store_leave(e);
    return result;
}

static int raw_del_fn(MDB_txn *txn, lmc_env *e, void *arg)
{
    lmc_del_arg *a = arg;
    int rc;
    (void)e;
    rc = mdb_del(txn, a->dbi, &a->keys[0].val, NULL);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc == 0)
        a->deleted = 1;
    return rc;
}

/* Store._delete_raw(key_encoding) -> bool: drop the local record stored under
 * a key encoding (an invalidation from another machine names keys so). */
PyObject *lmc_store_delete_raw(StoreObject *self, PyObject *kb)
{
    lmc_env *e;
    MDB_dbi dbi;
    lmc_kref k;
    lmc_del_arg a;
    int rc;

    if (!PyBytes_Check(kb) || PyBytes_GET_SIZE(kb) == 0 || PyBytes_GET_SIZE(kb) > LMC_MAX_KEY) {
        PyErr_SetString(PyExc_ValueError, "_delete_raw needs a key encoding (bytes)");
        return NULL;
    }
    if (lmc_store_check_writable(self) < 0)
        return NULL;
    if ((e = lmc_store_enter(self, &dbi)) == NULL)
        return NULL;
    memset(&k, 0, sizeof(k));
    k.val.mv_data = PyBytes_AS_STRING(kb);
    k.val.mv_size = (size_t)PyBytes_GET_SIZE(kb);
    /* Most invalidations name keys this machine does not hold: a read says
     * so without a write txn.  (A copy kept right after the read is the same
     * as one kept right after the delete: the miss path checks for
     * invalidations that arrive while it fetches.) */
    {
        MDB_txn *txn;
        MDB_val v;
        rc = lmc_read_begin(e, &txn);
        if (rc == 0) {
            rc = mdb_get(txn, dbi, &k.val, &v);
            lmc_read_end(e, txn);
        }
        if (rc == MDB_NOTFOUND) {
            lmc_store_leave(e);
            Py_RETURN_FALSE;
        }
    }
    memset(&a, 0, sizeof(a));
    a.dbi = dbi;
    a.dbname = self->dbname;
    a.n = 1;
    a.keys = &k;
    rc = lmc_env_write(e, raw_del_fn, &a, LMC_WRITE_FREES, 0, NULL);
    if (rc != 0) {
        lmc_raise_env(self->state, rc, "delete", e);
        lmc_store_leave(e);
        return NULL;
    }
    lmc_store_leave(e);
    return PyBool_FromLong(a.deleted > 0);
}

/* Store._set_namespace(name): point this Store at another namespace of the
 * same file (the remote tier's O(1) generation bump).  Safe while another
 * thread is inside a call on this Store: that call keeps using the old dbi
 * and names, which are never freed here -- the few bytes of the old names
 * are left allocated (a bump happens once per Redis outage). */
PyObject *lmc_store_set_namespace(StoreObject *self, PyObject *name)
{
    lmc_env *e;
    MDB_dbi dbi;
    const char *ns;
    Py_ssize_t len;
    char *ns_copy, *dbname;
    size_t n;

    if (!PyUnicode_Check(name)) {
        PyErr_SetString(PyExc_TypeError, "namespace name must be a str");
        return NULL;
    }
    ns = PyUnicode_AsUTF8AndSize(name, &len);
    if (ns == NULL)
        return NULL;
    if ((size_t)len != strlen(ns) || len > LMC_MAX_NS) {
        PyErr_Format(PyExc_ValueError, "namespace name must be at most %d UTF-8 bytes without NUL",
                     LMC_MAX_NS);
        return NULL;
    }
    if ((e = lmc_store_enter(self, &dbi)) == NULL)
        return NULL;
    n = (size_t)len + sizeof(LMC_NS_PREFIX);
    ns_copy = PyMem_RawMalloc((size_t)len + 1);
    dbname = PyMem_RawMalloc(n);
    if (ns_copy == NULL || dbname == NULL) {
        PyMem_RawFree(ns_copy);
        PyMem_RawFree(dbname);
        lmc_store_leave(e);
        return PyErr_NoMemory();
    }
    memcpy(ns_copy, ns, (size_t)len + 1);
    if (len > 0)
        PyOS_snprintf(dbname, n, "%s%s", LMC_NS_PREFIX, ns);
    else
        dbname[0] = '\0';
    self->ns = ns_copy;         /* the old strings stay valid for calls in flight */
    self->dbname = dbname;
    self->ns_epoch = e->ns_epoch - 1; /* a past epoch: the next call looks the name up */
    lmc_store_leave(e);
    Py_RETURN_NONE;
}
