/*
 * args.c -- argument helpers shared by the Store methods (store.c, batch.c):
 * fastcall argument parsing, the ttl argument, and strong references to the
 * items of an iterable.  GIL held; no LMDB call.
 */
#include "lmdbcache.h"

#include <math.h>

/* ttl argument: None -> the default; a positive number of seconds.  Returns
 * the absolute expiry (0 = none) in *expires, or -1 with an exception. */
int lmc_parse_ttl(StoreObject *self, PyObject *ttl, double *expires)
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
int lmc_parse_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
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

int lmc_objs_from(PyObject *iterable, const char *what, PyObject ***out, Py_ssize_t *n)
{
    PyObject *seq = PySequence_Fast(iterable, what), **objs;
    Py_ssize_t i, len;

    if (seq == NULL)
        return -1;
    len = PySequence_Fast_GET_SIZE(seq);
    objs = PyMem_Malloc(((size_t)len + 1) * sizeof(*objs));
    if (objs == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (i = 0; i < len; i++)
        objs[i] = Py_NewRef(PySequence_Fast_GET_ITEM(seq, i));
    Py_DECREF(seq);
    *out = objs;
    *n = len;
    return 0;
}

void lmc_objs_free(PyObject **objs, Py_ssize_t n)
{
    Py_ssize_t i;
    for (i = 0; i < n; i++)
        Py_DECREF(objs[i]);
    PyMem_Free(objs);
}
