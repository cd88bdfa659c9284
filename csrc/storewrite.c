/*
 * storewrite.c -- the single-key writes of the Store type: set, add, delete,
 * pop, item assignment and deletion, and lmc_store_put / lmc_store_remove
 * under them (and under the batch writes of batch.c).  The method table and
 * the type spec are in store.c (and its comment on reentrancy holds here);
 * the txn bodies these run are in txnops.c.
 */
#include "lmdbcache.h"

#include <stdlib.h>

/* ---- writes ----------------------------------------------------------------- */

int lmc_store_put(StoreObject *self, PyObject *const *keys, PyObject *const *values,
                  Py_ssize_t n, double expires, int mode)
{
    lmc_state *st = self->state;
    lmc_key one;
    lmc_keyset ks = {NULL, NULL, 0};
    lmc_kref *refs = NULL;
    lmc_value vbuf, *vs = &vbuf;
    lmc_evict_counts counts = {0, 0};
    lmc_env *e;
    lmc_put_arg a;
    MDB_dbi dbi;
    size_t bytes = 0;
    Py_ssize_t i, nval = 0;
    int rc = -1, with_seq;

    if (lmc_store_check_writable(self) < 0 || (e = lmc_store_enter(self, &dbi)) == NULL)
        return -1;
    with_seq = lmc_env_evicts(e);
    if (n == 1) {
        if (lmc_key_encode(&self->codec, keys[0], &one) < 0)
            goto leave;
        refs = &one.r;
    }
    else {
        if (lmc_keyset_build(&self->codec, keys, n, &ks) < 0)
            goto leave;
        refs = ks.refs;
        vs = PyMem_Malloc((size_t)n * sizeof(*vs));
        if (vs == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    for (nval = 0; nval < n; nval++) {
        if (lmc_value_encode(&self->codec, values[nval], &refs[nval], expires, with_seq, &vs[nval]) < 0)
            goto done;
        bytes += lmc_value_size(&vs[nval]) + refs[nval].val.mv_size;
    }
    a.dbi = dbi;
    a.dbname = self->dbname;
    a.n = n;
    a.keys = refs;
    a.vals = vs;
    a.mode = mode;
    a.added = 0;
    rc = lmc_env_write(e, lmc_put_fn, &a, LMC_WRITE_GROWS, bytes, &counts);
    lmc_store_count(self, &counts);
    if (rc != 0) {
        lmc_raise_env(st, rc, "store a value", e);
        rc = -1;
    }
    else if (mode == LMC_PUT_ADD) {
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
leave:
    lmc_store_leave(e);
    return rc;
}

PyObject *lmc_store_set(StoreObject *self, PyObject *const *args, Py_ssize_t nargs,
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
    else if (lmc_parse_args(args, nargs, kwnames, "set", names, 2, 3, a) < 0) {
        return NULL;
    }
    if (lmc_parse_ttl(self, a[2], &expires) < 0 ||
        lmc_store_put(self, &a[0], &a[1], 1, expires, LMC_PUT_OVERWRITE) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyObject *lmc_store_add(StoreObject *self, PyObject *const *args, Py_ssize_t nargs,
                        PyObject *kwnames)
{
    static const char *const names[] = {"key", "value", "ttl"};
    PyObject *a[3];
    double expires;
    int rc;

    if (lmc_parse_args(args, nargs, kwnames, "add", names, 2, 3, a) < 0 ||
        lmc_parse_ttl(self, a[2], &expires) < 0)
        return NULL;
    rc = lmc_store_put(self, &a[0], &a[1], 1, expires, LMC_PUT_ADD);
    if (rc < 0)
        return NULL;
    return PyBool_FromLong(rc);
}

Py_ssize_t lmc_store_remove(StoreObject *self, PyObject *const *keys, Py_ssize_t n,
                            char **old, size_t *old_len)
{
    lmc_state *st = self->state;
    lmc_key one;
    lmc_keyset ks = {NULL, NULL, 0};
    lmc_env *e;
    lmc_del_arg a;
    MDB_dbi dbi;
    Py_ssize_t result = -1;
    int rc;

    if (lmc_store_check_writable(self) < 0 || (e = lmc_store_enter(self, &dbi)) == NULL)
        return -1;
    if (n == 1) {
        if (lmc_key_encode(&self->codec, keys[0], &one) < 0)
            goto leave;
        a.keys = &one.r;
    }
    else {
        if (lmc_keyset_build(&self->codec, keys, n, &ks) < 0)
            goto leave;
        a.keys = ks.refs;
    }
    a.dbi = dbi;
    a.dbname = self->dbname;
    a.n = n;
    a.deleted = 0;
    a.want_old = old != NULL;
    a.old = NULL;
    a.old_len = 0;
    a.old_why = NULL;
    rc = lmc_env_write(e, lmc_del_fn, &a, LMC_WRITE_FREES, 0, NULL);
    if (n == 1)
        lmc_key_clear(&one);
    else
        lmc_keyset_free(&ks);
    if (rc == 0 && old != NULL && a.deleted && a.old_why != NULL) {
        free(a.old);
        PyErr_Format(st->CorruptError, "corrupt record in '%s': %s (it was removed)", e->path,
                     a.old_why);
        goto leave;
    }
    if (rc == 0 && old != NULL && a.deleted) {
        *old = a.old;
        *old_len = a.old_len;
    }
    else {
        free(a.old);
    }
    if (rc != 0) {
        lmc_raise_env(st, rc, "delete a key", e);
    }
    else {
        self->deletes += (unsigned long long)a.deleted;
        result = a.deleted;
    }
leave:
    lmc_store_leave(e);
    return result;
}

int lmc_store_ass_subscript(StoreObject *self, PyObject *key, PyObject *value)
{
    Py_ssize_t rc;
    double expires = 0;
    if (value != NULL) {
        if (LMC_UNLIKELY(self->ttl > 0))
            expires = lmc_now() + self->ttl;
        return lmc_store_put(self, &key, &value, 1, expires, LMC_PUT_OVERWRITE);
    }
    rc = lmc_store_remove(self, &key, 1, NULL, NULL);
    if (rc == 0)
        lmc_raise_key_error(key);
    return rc > 0 ? 0 : -1;
}

PyObject *lmc_store_delete(StoreObject *self, PyObject *key)
{
    Py_ssize_t rc = lmc_store_remove(self, &key, 1, NULL, NULL);
    if (rc < 0)
        return NULL;
    return PyBool_FromLong(rc > 0);
}

PyObject *lmc_store_pop(StoreObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    lmc_record rec;
    char *old = NULL;
    size_t old_len = 0;
    PyObject *obj = NULL;
    Py_ssize_t rc;
    int pending;

    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "pop(key[, default])");
        return NULL;
    }
    rc = lmc_store_remove(self, args, 1, &old, &old_len);
    if (rc < 0)
        return NULL;
    if (rc == 0) {
        if (nargs == 2)
            return Py_NewRef(args[1]);
        lmc_raise_key_error(args[0]);
        return NULL;
    }
    if (lmc_record_parse(self->state, old, old_len, &rec, self->path) == 0) {
        obj = lmc_record_take(&rec, &pending);
        free(old);
        return lmc_value_finish(&self->codec, obj, pending, self->path);
    }
    free(old);
    return NULL;
}
