/*
 * rmw.c -- the read-modify-write methods of the Store: incr and touch.  The
 * key is encoded first; the txn body (lmc_incr_fn, lmc_touch_fn in txnops.c)
 * reads, changes and writes the record with the GIL released.  THE RULE
 * applies: store_rmw enters and leaves.
 */
#include "lmdbcache.h"

/* Run a read-modify-write fn on key: returns its code (0, an LMDB code or
 * LMC_ERR_*), or -1 with an exception set. */
static int store_rmw(StoreObject *self, PyObject *key, lmc_write_fn fn, lmc_rmw_arg *a,
                     size_t hint, const char *op)
{
    lmc_evict_counts counts = {0, 0};
    lmc_env *e;
    lmc_key k;
    MDB_dbi dbi;
    int rc = -1;

    if (lmc_store_check_writable(self) < 0 || (e = lmc_store_enter(self, &dbi)) == NULL)
        return -1;
    if (lmc_key_encode(&self->codec, key, &k) < 0)
        goto leave;
    a->dbi = dbi;
    a->dbname = self->dbname;
    a->key = &k.r;
    rc = lmc_env_write(e, fn, a, LMC_WRITE_GROWS, hint + k.r.val.mv_size, &counts);
    lmc_store_count(self, &counts);
    lmc_key_clear(&k);
    if (rc != 0 && rc != LMC_ERR_NOT_INT && rc != LMC_ERR_OVERFLOW) {
        lmc_raise_env(self->state, rc, op, e);
        rc = -1;
    }
leave:
    lmc_store_leave(e);
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

PyObject *lmc_store_incr(StoreObject *self, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames)
{
    static const char *const names[] = {"key", "delta", "default"};
    PyObject *p[3];
    lmc_rmw_arg a;
    int rc;

    if (lmc_parse_args(args, nargs, kwnames, "incr", names, 1, 3, p) < 0)
        return NULL;
    a.delta = 1;
    a.dflt = 0;
    if ((p[1] != NULL && as_long_long(p[1], "delta", &a.delta) < 0) ||
        (p[2] != NULL && as_long_long(p[2], "default", &a.dflt) < 0))
        return NULL;
    a.expires = self->ttl > 0 ? lmc_now() + self->ttl : 0;
    rc = store_rmw(self, p[0], lmc_incr_fn, &a, 64, "increment a value");
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
    self->sets++;
    return PyLong_FromLongLong(a.result);
}

PyObject *lmc_store_touch(StoreObject *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    static const char *const names[] = {"key", "ttl"};
    PyObject *p[2];
    lmc_rmw_arg a;

    if (lmc_parse_args(args, nargs, kwnames, "touch", names, 1, 2, p) < 0 ||
        lmc_parse_ttl(self, p[1], &a.expires) < 0)
        return NULL;
    if (store_rmw(self, p[0], lmc_touch_fn, &a, 0, "touch a key") != 0)
        return NULL;
    return PyBool_FromLong(a.found);
}
