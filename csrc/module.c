/*
 * module.c -- lmdbcache._core: multi-phase init, module state, the exception
 * types, the one table from LMDB return codes to exceptions, and the fork
 * generation counter.
 */
#include "lmdbcache.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>

unsigned long lmc_fork_generation = 1;

/* pthread_atfork child handler: the child is single-threaded here and may not
 * call into LMDB or Python.  It only moves the generation on, which marks every
 * Env of the parent as inherited; lmc_env_forget_all empties the registry. */
static void lmc_atfork_child(void)
{
    lmc_fork_generation++;
    lmc_env_forget_all();
}

/* ---- errors ---------------------------------------------------------------- */

enum { EXC_ERROR, EXC_MAPFULL, EXC_READONLY, EXC_CORRUPT, EXC_LOCK, EXC_FORMAT };

static const struct {
    int rc;
    int exc;
} lmc_error_table[] = {
    {MDB_MAP_FULL, EXC_MAPFULL},        {MDB_READERS_FULL, EXC_LOCK},
    {MDB_BAD_RSLOT, EXC_LOCK},          {MDB_CORRUPTED, EXC_CORRUPT},
    {MDB_PAGE_NOTFOUND, EXC_CORRUPT},   {MDB_INVALID, EXC_CORRUPT},
    {MDB_PANIC, EXC_CORRUPT},           {MDB_VERSION_MISMATCH, EXC_FORMAT},
    {MDB_INCOMPATIBLE, EXC_FORMAT},     {MDB_BAD_VALSIZE, EXC_ERROR},
    {MDB_TXN_FULL, EXC_ERROR},          {MDB_CURSOR_FULL, EXC_ERROR},
    {MDB_PAGE_FULL, EXC_CORRUPT},       {MDB_MAP_RESIZED, EXC_ERROR},
    {MDB_DBS_FULL, EXC_ERROR},          {MDB_TLS_FULL, EXC_ERROR},
    {MDB_BAD_TXN, EXC_ERROR},           {MDB_BAD_DBI, EXC_ERROR},
    {EROFS, EXC_READONLY},
};

void lmc_raise(lmc_state *st, int rc, const char *op, const char *path)
{
    PyObject *exc = NULL;
    size_t i;

    for (i = 0; i < sizeof(lmc_error_table) / sizeof(lmc_error_table[0]); i++) {
        if (lmc_error_table[i].rc == rc) {
            switch (lmc_error_table[i].exc) {
            case EXC_MAPFULL: exc = st->MapFullError; break;
            case EXC_READONLY: exc = st->ReadOnlyError; break;
            case EXC_CORRUPT: exc = st->CorruptError; break;
            case EXC_LOCK: exc = st->LockError; break;
            case EXC_FORMAT: exc = st->FormatError; break;
            default: exc = st->Error; break;
            }
            break;
        }
    }
    if (exc == NULL && rc > 0) {
        /* A system errno: the matching OSError subclass (PermissionError,
         * FileNotFoundError, ...), with the path as its filename. */
        PyObject *args = Py_BuildValue("(isz)", rc, strerror(rc), path);
        if (args != NULL) {
            PyObject *err = PyObject_Call(PyExc_OSError, args, NULL);
            Py_DECREF(args);
            if (err != NULL) {
                PyObject *msg = PyUnicode_FromFormat("%s: %s", op, strerror(rc));
                if (msg != NULL) {
                    PyObject_SetAttrString(err, "strerror", msg);
                    Py_DECREF(msg);
                }
                PyErr_SetObject((PyObject *)Py_TYPE(err), err);
                Py_DECREF(err);
            }
        }
        return;
    }
    if (exc == NULL)
        exc = st->Error;
    PyErr_Format(exc, "%s failed on '%s': %s", op, path ? path : "?", mdb_strerror(rc));
}

void lmc_raise_from(PyObject *type, const char *fmt, ...)
{
    PyObject *ctype, *cause, *ctb, *t, *v, *tb;
    va_list va;

    PyErr_Fetch(&ctype, &cause, &ctb);
    PyErr_NormalizeException(&ctype, &cause, &ctb);
    if (cause != NULL && ctb != NULL)
        PyException_SetTraceback(cause, ctb);
    va_start(va, fmt);
    PyErr_FormatV(type, fmt, va);
    va_end(va);
    PyErr_Fetch(&t, &v, &tb);
    PyErr_NormalizeException(&t, &v, &tb);
    if (cause != NULL && v != NULL) {
        Py_INCREF(cause);
        PyException_SetCause(v, cause);   /* steals */
        PyException_SetContext(v, cause); /* steals */
        cause = NULL;
    }
    Py_XDECREF(ctype);
    Py_XDECREF(cause);
    Py_XDECREF(ctb);
    PyErr_Restore(t, v, tb);
}

/* ---- module-level functions ------------------------------------------------ */

static PyObject *after_fork_in_child(PyObject *Py_UNUSED(mod), PyObject *Py_UNUSED(arg))
{
    lmc_fork_generation++;
    lmc_env_forget_all();
    Py_RETURN_NONE;
}

static PyObject *fork_generation(PyObject *Py_UNUSED(mod), PyObject *Py_UNUSED(arg))
{
    return PyLong_FromUnsignedLong(lmc_fork_generation);
}

static PyObject *lmdb_version(PyObject *Py_UNUSED(mod), PyObject *Py_UNUSED(arg))
{
    int major, minor, patch;
    mdb_version(&major, &minor, &patch);
    return Py_BuildValue("(iii)", major, minor, patch);
}

static PyMethodDef module_methods[] = {
    {"_after_fork_in_child", after_fork_in_child, METH_NOARGS,
     "Invalidate every environment inherited from the parent (fork hook)."},
    {"_fork_generation", fork_generation, METH_NOARGS,
     "How many forks this process descends from since the module loaded."},
    {"lmdb_version", lmdb_version, METH_NOARGS,
     "The (major, minor, patch) version of the liblmdb in use."},
    {NULL, NULL, 0, NULL},
};

/* ---- init ------------------------------------------------------------------ */

static int add_exception(PyObject *mod, PyObject **slot, const char *name,
                         const char *doc, PyObject *base)
{
    char qualname[64];
    PyOS_snprintf(qualname, sizeof(qualname), "lmdbcache.%s", name);
    *slot = PyErr_NewExceptionWithDoc(qualname, doc, base, NULL);
    if (*slot == NULL)
        return -1;
    return PyModule_AddObjectRef(mod, name, *slot);
}

static int module_exec(PyObject *mod)
{
    static int atfork_registered = 0;
    lmc_state *st = PyModule_GetState(mod);
    PyObject *pickle = NULL, *hashlib = NULL;
    int major, minor, patch;

    mdb_version(&major, &minor, &patch);
    if (major != MDB_VERSION_MAJOR || minor != MDB_VERSION_MINOR) {
        PyErr_Format(PyExc_ImportError,
                     "lmdbcache was built against liblmdb %d.%d but %d.%d is loaded",
                     MDB_VERSION_MAJOR, MDB_VERSION_MINOR, major, minor);
        goto error;
    }
    if (add_exception(mod, &st->Error, "Error",
                      "Base class of lmdbcache errors.", NULL) < 0 ||
        add_exception(mod, &st->MapFullError, "MapFullError",
                      "The cache reached its size_limit.", st->Error) < 0 ||
        add_exception(mod, &st->ReadOnlyError, "ReadOnlyError",
                      "A write to a cache opened read-only.", st->Error) < 0 ||
        add_exception(mod, &st->CorruptError, "CorruptError",
                      "Stored bytes failed validation.", st->Error) < 0 ||
        add_exception(mod, &st->LockError, "LockError",
                      "The LMDB lock or reader table is unusable.", st->Error) < 0 ||
        add_exception(mod, &st->FormatError, "FormatError",
                      "The directory holds no cache of a format this version reads.",
                      st->Error) < 0)
        goto error;

    /* pickle's C accelerator: the very dumps, loads and UnpicklingError that
     * pickle re-exports, without pickle.py's own imports (re, ...): ~5 ms off
     * `import lmdbcache`. */
    pickle = PyImport_ImportModule("_pickle");
    if (pickle == NULL)
        goto error;
    st->pickle_dumps = PyObject_GetAttrString(pickle, "dumps");
    st->pickle_loads = PyObject_GetAttrString(pickle, "loads");
    st->UnpicklingError = PyObject_GetAttrString(pickle, "UnpicklingError");
    if (st->pickle_dumps == NULL || st->pickle_loads == NULL || st->UnpicklingError == NULL)
        goto error;
    hashlib = PyImport_ImportModule("hashlib");
    if (hashlib == NULL)
        goto error;
    st->sha256 = PyObject_GetAttrString(hashlib, "sha256");
    st->protocol = PyLong_FromLong(5);
    if (st->sha256 == NULL || st->protocol == NULL)
        goto error;

    st->StoreType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &lmc_store_spec, NULL);
    if (st->StoreType == NULL || PyModule_AddType(mod, st->StoreType) < 0)
        goto error;
    st->IterType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &lmc_iter_spec, NULL);
    if (st->IterType == NULL || PyModule_AddType(mod, st->IterType) < 0)
        goto error;
    if (PyModule_AddIntConstant(mod, "FORMAT_VERSION", LMC_FORMAT_VERSION) < 0 ||
        PyModule_AddIntConstant(mod, "MAX_KEY_SIZE", LMC_MAX_KEY) < 0)
        goto error;

    if (!atfork_registered) {
        if (pthread_atfork(NULL, NULL, lmc_atfork_child) != 0) {
            PyErr_SetString(PyExc_ImportError, "pthread_atfork failed");
            goto error;
        }
        atfork_registered = 1;
    }
    Py_DECREF(pickle);
    Py_DECREF(hashlib);
    return 0;

error:
    Py_XDECREF(pickle);
    Py_XDECREF(hashlib);
    return -1;
}

static int module_traverse(PyObject *mod, visitproc visit, void *arg)
{
    lmc_state *st = PyModule_GetState(mod);
    Py_VISIT(st->Error);
    Py_VISIT(st->MapFullError);
    Py_VISIT(st->ReadOnlyError);
    Py_VISIT(st->CorruptError);
    Py_VISIT(st->LockError);
    Py_VISIT(st->FormatError);
    Py_VISIT(st->pickle_dumps);
    Py_VISIT(st->pickle_loads);
    Py_VISIT(st->UnpicklingError);
    Py_VISIT(st->sha256);
    Py_VISIT(st->protocol);
    Py_VISIT(st->StoreType);
    Py_VISIT(st->IterType);
    return 0;
}

static int module_clear(PyObject *mod)
{
    lmc_state *st = PyModule_GetState(mod);
    Py_CLEAR(st->Error);
    Py_CLEAR(st->MapFullError);
    Py_CLEAR(st->ReadOnlyError);
    Py_CLEAR(st->CorruptError);
    Py_CLEAR(st->LockError);
    Py_CLEAR(st->FormatError);
    Py_CLEAR(st->pickle_dumps);
    Py_CLEAR(st->pickle_loads);
    Py_CLEAR(st->UnpicklingError);
    Py_CLEAR(st->sha256);
    Py_CLEAR(st->protocol);
    Py_CLEAR(st->StoreType);
    Py_CLEAR(st->IterType);
    return 0;
}

static void module_free(void *mod)
{
    module_clear((PyObject *)mod);
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
#ifdef Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED
    /* The Env registry is process-wide: LMDB allows one MDB_env per file per process. */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
#ifdef Py_mod_gil
    {Py_mod_gil, Py_MOD_GIL_USED},
#endif
    {0, NULL},
};

PyModuleDef lmc_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "lmdbcache._core",
    .m_doc = "C core of lmdbcache: the LMDB environment, codec and Store type.",
    .m_size = sizeof(lmc_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__core(void)
{
    return PyModuleDef_Init(&lmc_module_def);
}
