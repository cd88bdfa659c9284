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

/* ---- errors ----------------------------------------------------------------
 * The one error table.  lmc_exc_specs creates the exception types (module
 * state holds them by index); lmc_error_table maps every code -- LMDB's, our
 * LMC_ERR_* and the errnos we treat specially -- to a type and, for our own
 * codes, the message.  Other errnos become the matching OSError subclass. */

enum { EXC_ERROR, EXC_MAPFULL, EXC_READONLY, EXC_CORRUPT, EXC_LOCK, EXC_FORMAT, EXC_UNSAFE,
       EXC_SECRET, EXC_N };

static const struct {
    const char *name;
    const char *doc;
    int base;   /* -1: Exception */
    int oserror; /* also a subclass of PermissionError */
} lmc_exc_specs[EXC_N] = {
    [EXC_ERROR] = {"Error", "Base class of lmdbcache errors.", -1},
    [EXC_MAPFULL] = {"MapFullError", "The cache reached its size_limit.", EXC_ERROR},
    [EXC_READONLY] = {"ReadOnlyError", "A write to a cache opened read-only.", EXC_ERROR},
    [EXC_CORRUPT] = {"CorruptError", "Stored bytes failed validation.", EXC_ERROR},
    [EXC_LOCK] = {"LockError", "The LMDB lock or reader table is unusable, or a wait for "
                               "another process's lock timed out.", EXC_ERROR},
    [EXC_FORMAT] = {"FormatError",
                    "The directory holds no cache of a format this version reads.", EXC_ERROR},
    [EXC_UNSAFE] = {"UnsafeCacheError",
                    "The cache directory or one of its files could be written by another user "
                    "(writable by group or others, owned by another uid, or a symlink): "
                    "refused, since whoever can write the cache can run code in this process "
                    "through pickle.  Cache(path, allow_shared=True) opts in.",
                    EXC_ERROR, 1},
    [EXC_SECRET] = {"SecretError",
                    "The cache is signed and no secret, or another secret, was given; or "
                    "secret= was given for a cache written without one.",
                    EXC_ERROR, 1},
};

static PyObject **exc_slot(lmc_state *st, int exc)
{
    switch (exc) {
    case EXC_MAPFULL: return &st->MapFullError;
    case EXC_READONLY: return &st->ReadOnlyError;
    case EXC_CORRUPT: return &st->CorruptError;
    case EXC_LOCK: return &st->LockError;
    case EXC_FORMAT: return &st->FormatError;
    case EXC_UNSAFE: return &st->UnsafeCacheError;
    case EXC_SECRET: return &st->SecretError;
    default: return &st->Error;
    }
}

static const struct {
    int rc;
    int exc;
    const char *msg; /* our own codes: the text after "cannot <op> in '<path>': " */
} lmc_error_table[] = {
    {MDB_MAP_FULL, EXC_MAPFULL, NULL},
    {MDB_READERS_FULL, EXC_LOCK, NULL},
    {MDB_BAD_RSLOT, EXC_LOCK, NULL},
    {MDB_CORRUPTED, EXC_CORRUPT, NULL},
    {MDB_PAGE_NOTFOUND, EXC_CORRUPT, NULL},
    {MDB_INVALID, EXC_CORRUPT, NULL},
    {MDB_PANIC, EXC_CORRUPT, NULL},
    {MDB_VERSION_MISMATCH, EXC_FORMAT, NULL},
    {MDB_INCOMPATIBLE, EXC_FORMAT, NULL},
    {MDB_BAD_VALSIZE, EXC_ERROR, NULL},
    {MDB_TXN_FULL, EXC_ERROR, NULL},
    {MDB_CURSOR_FULL, EXC_ERROR, NULL},
    {MDB_PAGE_FULL, EXC_CORRUPT, NULL},
    {MDB_MAP_RESIZED, EXC_ERROR, NULL},
    {MDB_DBS_FULL, EXC_ERROR, NULL},
    {MDB_TLS_FULL, EXC_ERROR, NULL},
    {MDB_BAD_TXN, EXC_ERROR, NULL},
    {MDB_BAD_DBI, EXC_ERROR, NULL},
    {EROFS, EXC_READONLY, NULL},
    {LMC_ERR_TXN_FAILED, EXC_ERROR,
     "an earlier operation of this transaction failed, so it will be rolled back"},
    {LMC_ERR_TOO_BIG, EXC_MAPFULL, "the data written is too large for the cache's size_limit"},
    {LMC_ERR_NO_TXN, EXC_ERROR,
     "no transaction of this thread is open (was it started in another thread or before a "
     "fork?)"},
    {LMC_ERR_CORRUPT, EXC_CORRUPT, "the stored record is corrupt"},
    {LMC_ERR_NS_MISSING, EXC_ERROR, "the namespace does not exist"},
    {LMC_ERR_TIMEOUT, EXC_LOCK,
     "timed out waiting for another process's lock on guard.lock (see the timeout option)"},
};

static void raise_os(int rc, const char *op, const char *path)
{
    /* A system errno: the matching OSError subclass (PermissionError,
     * FileNotFoundError, ...), with the path as its filename. */
    PyObject *args = Py_BuildValue("(isz)", rc, strerror(rc), path);
    PyObject *err = NULL, *msg = NULL;

    if (args == NULL)
        return;
    err = PyObject_Call(PyExc_OSError, args, NULL);
    if (err == NULL)
        goto done;
    msg = PyUnicode_FromFormat("%s: %s", op, strerror(rc));
    if (msg == NULL || PyObject_SetAttrString(err, "strerror", msg) < 0)
        goto done;
    PyErr_SetObject((PyObject *)Py_TYPE(err), err);
done:
    Py_XDECREF(msg);
    Py_XDECREF(err);
    Py_DECREF(args);
}

static void raise_code(lmc_state *st, int rc, const char *op, const char *path,
                       size_t size_limit)
{
    size_t i, n = sizeof(lmc_error_table) / sizeof(lmc_error_table[0]);

    if (path == NULL)
        path = "?";
    for (i = 0; i < n && lmc_error_table[i].rc != rc; i++)
        ;
    if (i == n && rc > 0) {
        raise_os(rc, op, path);
        return;
    }
    if (i == n) {
        PyErr_Format(st->Error, "cannot %s in '%s': %s", op, path, mdb_strerror(rc));
        return;
    }
    if (rc == MDB_MAP_FULL && size_limit != 0)
        PyErr_Format(st->MapFullError,
                     "cannot %s in '%s': the cache reached its size_limit of %zu bytes "
                     "(delete entries or raise size_limit)", op, path, size_limit);
    else if (lmc_error_table[i].msg != NULL)
        PyErr_Format(*exc_slot(st, lmc_error_table[i].exc), "cannot %s in '%s': %s", op, path,
                     lmc_error_table[i].msg);
    else
        PyErr_Format(*exc_slot(st, lmc_error_table[i].exc), "cannot %s in '%s': %s", op, path,
                     mdb_strerror(rc));
}

void lmc_raise(lmc_state *st, int rc, const char *op, const char *path)
{
    raise_code(st, rc, op, path, 0);
}

void lmc_raise_env(lmc_state *st, int rc, const char *op, const lmc_env *e)
{
    raise_code(st, rc, op, e->path, e->size_limit);
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
    {"_hash128", lmc_hash128, METH_O, "_hash128(buffer, /)\n--\n\nA fast non-cryptographic 128-bit digest (16 bytes)."},
    {NULL, NULL, 0, NULL},
};

/* ---- init ------------------------------------------------------------------ */

static int add_exception(PyObject *mod, PyObject **slot, const char *name,
                         const char *doc, PyObject *base, int oserror)
{
    char qualname[64];
    PyObject *bases = NULL;
    PyOS_snprintf(qualname, sizeof(qualname), "lmdbcache.%s", name);
    if (oserror) {
        bases = PyTuple_Pack(2, base != NULL ? base : PyExc_Exception, PyExc_PermissionError);
        if (bases == NULL)
            return -1;
    }
    *slot = PyErr_NewExceptionWithDoc(qualname, doc, bases != NULL ? bases : base, NULL);
    Py_XDECREF(bases);
    if (*slot == NULL)
        return -1;
    return PyModule_AddObjectRef(mod, name, *slot);
}

static int module_exec(PyObject *mod)
{
    static int atfork_registered = 0;
    lmc_state *st = PyModule_GetState(mod);
    PyObject *pickle = NULL;
    int major, minor, patch, i;

    mdb_version(&major, &minor, &patch);
    if (major != MDB_VERSION_MAJOR || minor != MDB_VERSION_MINOR) {
        PyErr_Format(PyExc_ImportError,
                     "lmdbcache was built against liblmdb %d.%d but %d.%d is loaded",
                     MDB_VERSION_MAJOR, MDB_VERSION_MINOR, major, minor);
        goto error;
    }
    for (i = 0; i < EXC_N; i++) {
        PyObject *base = lmc_exc_specs[i].base < 0 ? NULL : *exc_slot(st, lmc_exc_specs[i].base);
        if (add_exception(mod, exc_slot(st, i), lmc_exc_specs[i].name, lmc_exc_specs[i].doc,
                          base, lmc_exc_specs[i].oserror) < 0)
            goto error;
    }

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
    /* sha256 is looked up on first use (lmc_sha256): only long keys need it,
     * and importing hashlib (OpenSSL) costs ~4 ms of `import lmdbcache`. */
    st->sha256 = NULL;
    st->protocol = PyLong_FromLong(5);
    if (st->protocol == NULL)
        goto error;

    st->StoreType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &lmc_store_spec, NULL);
    if (st->StoreType == NULL || PyModule_AddType(mod, st->StoreType) < 0)
        goto error;
    st->IterType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &lmc_iter_spec, NULL);
    if (st->IterType == NULL || PyModule_AddType(mod, st->IterType) < 0)
        goto error;
    st->TxnType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &lmc_txn_spec, NULL);
    if (st->TxnType == NULL || PyModule_AddType(mod, st->TxnType) < 0)
        goto error;
    if (PyModule_AddIntConstant(mod, "FORMAT_VERSION", LMC_FORMAT_VERSION) < 0 ||
        PyModule_AddIntConstant(mod, "MAX_KEY_SIZE", LMC_MAX_KEY) < 0 ||
        PyModule_AddIntConstant(mod, "MAX_NAMESPACE_BYTES", LMC_MAX_NS) < 0)
        goto error;

    if (!atfork_registered) {
        if (pthread_atfork(NULL, NULL, lmc_atfork_child) != 0) {
            PyErr_SetString(PyExc_ImportError, "pthread_atfork failed");
            goto error;
        }
        atfork_registered = 1;
    }
    Py_DECREF(pickle);
    return 0;

error:
    Py_XDECREF(pickle);
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
    Py_VISIT(st->UnsafeCacheError);
    Py_VISIT(st->SecretError);
    Py_VISIT(st->pickle_dumps);
    Py_VISIT(st->pickle_loads);
    Py_VISIT(st->UnpicklingError);
    Py_VISIT(st->sha256);
    Py_VISIT(st->protocol);
    Py_VISIT(st->StoreType);
    Py_VISIT(st->IterType);
    Py_VISIT(st->TxnType);
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
    Py_CLEAR(st->UnsafeCacheError);
    Py_CLEAR(st->SecretError);
    Py_CLEAR(st->pickle_dumps);
    Py_CLEAR(st->pickle_loads);
    Py_CLEAR(st->UnpicklingError);
    Py_CLEAR(st->sha256);
    Py_CLEAR(st->protocol);
    Py_CLEAR(st->StoreType);
    Py_CLEAR(st->IterType);
    Py_CLEAR(st->TxnType);
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
