/*
 * compat.h -- what lmdbcache._core uses from the C API of a newer Python than
 * the oldest it supports (3.10), provided here for the older ones.  Included
 * by lmdbcache.h before anything else; it includes Python.h itself.
 *
 * Every shim is compiled only where the interpreter lacks the real thing, so
 * on 3.11+ this file changes nothing.
 */
#ifndef LMDBCACHE_COMPAT_H
#define LMDBCACHE_COMPAT_H

/* env.c defines _GNU_SOURCE (for fallocate) as an empty macro; the pyconfig.h
 * of Python 3.10 defines it as 1 without checking, a "redefined" warning that
 * the strict build turns into an error.  Give it pyconfig.h's value first.
 * Nothing has been included yet in any file of the module, so this changes no
 * feature selection. */
#if defined(_GNU_SOURCE)
#undef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#ifndef PY_SSIZE_T_CLEAN
#define PY_SSIZE_T_CLEAN
#endif
#include <Python.h>

#if PY_VERSION_HEX < 0x030A0000
#error "lmdbcache needs Python 3.10 or newer"
#endif

/* PyType_GetModuleByDef: new in 3.11.  Find the module of the first class in
 * type's MRO that was created by PyType_FromModuleAndSpec with a module of
 * def.  Returns a borrowed reference, or NULL with TypeError set, like the
 * real function. */
#if PY_VERSION_HEX < 0x030B0000
static inline PyObject *lmc_compat_GetModuleByDef(PyTypeObject *type, PyModuleDef *def)
{
    PyObject *mro = type->tp_mro;
    Py_ssize_t i, n;

    if (mro != NULL && PyTuple_Check(mro)) {
        n = PyTuple_GET_SIZE(mro);
        for (i = 0; i < n; i++) {
            PyTypeObject *t = (PyTypeObject *)PyTuple_GET_ITEM(mro, i);
            PyObject *mod;
            if (!PyType_HasFeature(t, Py_TPFLAGS_HEAPTYPE))
                continue;
            mod = ((PyHeapTypeObject *)t)->ht_module;
            if (mod != NULL && PyModule_GetDef(mod) == def)
                return mod;
        }
    }
    PyErr_Format(PyExc_TypeError,
                 "PyType_GetModuleByDef: No superclass of '%s' has the given module",
                 type->tp_name);
    return NULL;
}
#define PyType_GetModuleByDef lmc_compat_GetModuleByDef
#endif

#endif /* LMDBCACHE_COMPAT_H */
