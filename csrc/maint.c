/*
 * maint.c -- maintenance of a whole environment: consistent copies (with or
 * without compaction), a survey of the environment (other processes in the
 * reader table, sub-databases, sizes, format), and a raw walk over the records
 * of a namespace that checks every record (checksum included), decodes every
 * key and value and reports the damaged ones.
 *
 * The two Store methods here, Store._copy and Store._maint, follow THE RULE
 * (lmdbcache.h, env.c): lmc_store_enter first, lmc_store_leave on every way
 * out, so the Env outlives a close() from user code or another thread.
 */
#include "lmdbcache.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- copy ------------------------------------------------------------------ */

/* fsync path (a file or a directory).  0 or an errno. */
static int sync_path(const char *path, int dir)
{
    int fd = open(path, (dir ? O_RDONLY | O_DIRECTORY : O_RDWR) | O_CLOEXEC);
    int rc = 0;
    if (fd < 0)
        return errno;
    if (fsync(fd) != 0 && errno != EINVAL) /* some filesystems cannot sync dirs */
        rc = errno;
    close(fd);
    return rc;
}

/* Copy e into dest_dir and flush the copy.  0 or an LMDB/errno code. */
static int env_copy(lmc_env *e, const char *dest_dir, int compact)
{
    size_t n = strlen(dest_dir) + sizeof("/data.mdb");
    char *file = PyMem_RawMalloc(n);
    MDB_txn *txn;
    int rc, attempt;

    if (file == NULL)
        return ENOMEM;
    PyOS_snprintf(file, n, "%s/data.mdb", dest_dir);
    for (attempt = 0;; attempt++) {
        Py_BEGIN_ALLOW_THREADS
        /* A read txn of its own: other processes keep reading and writing.
         * The plain copy takes LMDB's writer lock for a moment (the meta
         * pages). */
        rc = mdb_env_copy2(e->env, dest_dir, compact ? MDB_CP_COMPACT : 0);
        /* LMDB does not flush the copy: a copy is a backup, make it durable. */
        if (rc == 0)
            rc = sync_path(file, 0);
        if (rc == 0)
            rc = sync_path(dest_dir, 1);
        Py_END_ALLOW_THREADS
        if (rc != MDB_MAP_RESIZED || attempt >= 3)
            break;
        /* another process grew the map: adopt its size (a read begin does)
         * and start over; LMDB creates the copy exclusively */
        unlink(file);
        if ((rc = lmc_read_begin(e, &txn)) != 0)
            break;
        lmc_read_end(e, txn);
    }
    PyMem_RawFree(file);
    return rc;
}

PyObject *lmc_store_copy(StoreObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *dest = NULL;
    lmc_env *e;
    MDB_dbi dbi;
    int compact, rc;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_copy(dest, compact) takes 2 arguments");
        return NULL;
    }
    if ((e = lmc_store_enter(self, &dbi)) == NULL)
        return NULL;
    if (!PyUnicode_FSConverter(args[0], &dest))
        goto leave;
    if ((compact = PyObject_IsTrue(args[1])) < 0)
        goto leave;
    rc = env_copy(e, PyBytes_AS_STRING(dest), compact);
    if (rc != 0) {
        lmc_raise(self->state, rc, "copy the cache", PyBytes_AS_STRING(dest));
        goto leave;
    }
    Py_DECREF(dest);
    lmc_store_leave(e);
    Py_RETURN_NONE;

leave:
    Py_XDECREF(dest);
    lmc_store_leave(e);
    return NULL;
}

/* ---- survey ---------------------------------------------------------------- */

typedef struct {
    long pids[64];
    int n;
    int truncated;
} pid_list;

static int collect_pid(const char *msg, void *ctx)
{
    pid_list *l = ctx;
    int pid, i;

    if (sscanf(msg, "%d", &pid) != 1 || pid == (int)getpid())
        return 0;
    for (i = 0; i < l->n; i++)
        if (l->pids[i] == pid)
            return 0;
    if (l->n < (int)(sizeof(l->pids) / sizeof(l->pids[0])))
        l->pids[l->n++] = pid;
    else
        l->truncated = 1;
    return 0;
}

/* Other live processes with a reader slot (an Env takes one at open, so this
 * lists the processes that have the cache open), after reclaiming the slots
 * of dead processes.  Returns an LMDB code. */
static int other_readers(lmc_env *e, pid_list *out)
{
    int dead, rc;
    memset(out, 0, sizeof(*out));
    rc = mdb_reader_check(e->env, &dead);
    if (rc != 0)
        return rc;
    return mdb_reader_list(e->env, collect_pid, out) < 0 ? EIO : 0;
}

/* Names of the sub-database records of the main DB (they sort before every
 * user key, see LMC_FIRST_KEY_TAG), the format version in __meta__ and the
 * LMDB release that created the cache ("" when not recorded).  No Python code
 * runs under the txn: decoding bytes calls none. */
static int list_subdbs(lmc_env *e, PyObject *names, long *format, char *created, size_t cap)
{
    MDB_txn *txn;
    MDB_cursor *cur;
    MDB_val k, v, fk = {6, (void *)"format"}, lk = {4, (void *)"lmdb"};
    char buf[16], *end;
    int rc = lmc_read_begin(e, &txn);

    if (rc != 0)
        return rc;
    *format = 0;
    if (mdb_get(txn, e->meta_dbi, &fk, &v) == 0 && v.mv_size > 0 && v.mv_size < sizeof(buf)) {
        memcpy(buf, v.mv_data, v.mv_size);
        buf[v.mv_size] = '\0';
        *format = strtol(buf, &end, 10);
        if (*end != '\0')
            *format = 0;
    }
    created[0] = '\0';
    if (mdb_get(txn, e->meta_dbi, &lk, &v) == 0 && v.mv_size < cap &&
        memchr(v.mv_data, '\0', v.mv_size) == NULL) {
        memcpy(created, v.mv_data, v.mv_size);
        created[v.mv_size] = '\0';
    }
    rc = mdb_cursor_open(txn, e->main_dbi, &cur);
    if (rc == 0) {
        for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
             rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            PyObject *name;
            if (k.mv_size > 0 && ((unsigned char *)k.mv_data)[0] >= LMC_FIRST_KEY_TAG)
                break;
            name = PyUnicode_DecodeUTF8(k.mv_data, (Py_ssize_t)k.mv_size, "surrogateescape");
            if (name == NULL || PyList_Append(names, name) < 0) {
                Py_XDECREF(name);
                rc = -1;
                break;
            }
            Py_DECREF(name);
        }
        mdb_cursor_close(cur);
    }
    lmc_read_end(e, txn);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static PyObject *maint_survey(lmc_state *st, lmc_env *e)
{
    MDB_envinfo info;
    MDB_stat ms;
    pid_list pids;
    PyObject *names = NULL, *pidl = NULL, *res = NULL;
    long format = 0;
    char created[32];
    int rc, i;

    if ((rc = mdb_env_info(e->env, &info)) != 0 || (rc = mdb_env_stat(e->env, &ms)) != 0 ||
        (rc = other_readers(e, &pids)) != 0)
        goto lmdb_error;
    /* mdb_env_info counted slots before the check reclaimed the dead ones */
    if ((rc = mdb_env_info(e->env, &info)) != 0)
        goto lmdb_error;
    names = PyList_New(0);
    pidl = PyList_New(pids.n);
    if (names == NULL || pidl == NULL)
        goto error;
    for (i = 0; i < pids.n; i++) {
        PyObject *p = PyLong_FromLong(pids.pids[i]);
        if (p == NULL)
            goto error;
        PyList_SET_ITEM(pidl, i, p);
    }
    rc = list_subdbs(e, names, &format, created, sizeof(created));
    if (rc == -1)
        goto error;
    if (rc != 0)
        goto lmdb_error;
    res = Py_BuildValue(
        "{s:O,s:O,s:i,s:K,s:n,s:n,s:n,s:I,s:I,s:n,s:i,s:i,s:l,s:s}", "subdbs", names, "other_pids",
        pidl, "pids_truncated", pids.truncated, "last_txnid",
        (unsigned long long)info.me_last_txnid, "map_size", (Py_ssize_t)info.me_mapsize,
        "used_bytes", (Py_ssize_t)((info.me_last_pgno + 1) * ms.ms_psize), "page_size",
        (Py_ssize_t)ms.ms_psize, "readers", info.me_numreaders, "max_readers",
        info.me_maxreaders, "env_refs", e->refcnt, "readonly", (e->flags & MDB_RDONLY) != 0,
        "nosync", (e->flags & MDB_NOSYNC) != 0, "format", format, "created_lmdb", created);
    Py_DECREF(names);
    Py_DECREF(pidl);
    return res;

lmdb_error:
    lmc_raise_env(st, rc, "survey the environment", e);
error:
    Py_XDECREF(names);
    Py_XDECREF(pidl);
    return NULL;
}

/* ---- raw walk (verify) ------------------------------------------------------- */

/* The raised exception, taken out of the error indicator (normalised). */
static PyObject *take_exception(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    PyErr_NormalizeException(&t, &v, &tb);
    if (v != NULL && tb != NULL)
        PyException_SetTraceback(v, tb);
    Py_XDECREF(t);
    Py_XDECREF(tb);
    return v;
#endif
}

/* Append (raw key, reason) to problems; a failed append leaves an exception. */
static int add_problem(PyObject *problems, PyObject *raw, const char *why, PyObject *exc)
{
    PyObject *t;
    if (exc != NULL)
        t = Py_BuildValue("(OsO)", raw, why, exc);
    else
        t = Py_BuildValue("(OsO)", raw, why, Py_None);
    if (t == NULL)
        return -1;
    if (PyList_Append(problems, t) < 0) {
        Py_DECREF(t);
        return -1;
    }
    Py_DECREF(t);
    return 0;
}

static int list_append_int(PyObject *list, int v)
{
    PyObject *o = PyLong_FromLong(v);
    int rc = o == NULL ? -1 : PyList_Append(list, o);
    Py_XDECREF(o);
    return rc;
}

/* Walk up to `limit` records of dbi (LMDB sub-database dbname) after the raw
 * key `after` (None: from the first), checking each record (bounds, format,
 * checksum) and decoding each key and value.  Returns a dict: records, expired,
 * bytes, problems [(raw key, reason, exception or None)], last (raw key or
 * None), done. */
static PyObject *maint_scan(StoreObject *self, lmc_env *e, MDB_dbi dbi, const char *dbname,
                            PyObject *after, Py_ssize_t limit)
{
    lmc_state *st = self->state;
    MDB_txn *txn = NULL;
    MDB_cursor *cur = NULL;
    MDB_val k, v;
    lmc_record rec;
    PyObject *raws = NULL, *fulls = NULL, *vals = NULL, *kinds = NULL, *problems = NULL;
    PyObject *last = NULL, *res = NULL;
    Py_ssize_t records = 0, expired = 0, i, n;
    size_t bytes = 0;
    const char *why;
    int rc, done = 0;

    if (after != Py_None && !PyBytes_Check(after)) {
        PyErr_SetString(PyExc_TypeError, "after must be bytes or None");
        return NULL;
    }
    raws = PyList_New(0);
    fulls = PyList_New(0);
    vals = PyList_New(0);
    kinds = PyList_New(0);
    problems = PyList_New(0);
    if (raws == NULL || fulls == NULL || vals == NULL || kinds == NULL || problems == NULL)
        goto error;
    if ((rc = lmc_read_begin(e, &txn)) != 0)
        goto lmdb_error;
    if ((rc = mdb_cursor_open(txn, dbi, &cur)) != 0)
        goto lmdb_error;
    if (after != Py_None) {
        k.mv_data = PyBytes_AS_STRING(after);
        k.mv_size = (size_t)PyBytes_GET_SIZE(after);
        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        if (rc == 0 && k.mv_size == (size_t)PyBytes_GET_SIZE(after) &&
            memcmp(k.mv_data, PyBytes_AS_STRING(after), k.mv_size) == 0)
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    else if (dbi == e->main_dbi) {
        k.mv_data = (void *)"b"; /* LMC_FIRST_KEY_TAG: user keys only */
        k.mv_size = 1;
        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    }
    else {
        rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    }
    /* Under the txn: copies only, no user code. */
    for (; rc == 0 && records < limit; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        PyObject *raw = PyBytes_FromStringAndSize(k.mv_data, (Py_ssize_t)k.mv_size);
        PyObject *full, *val;
        int pending = 0;

        if (raw == NULL)
            goto error;
        Py_XSETREF(last, raw);
        records++;
        bytes += k.mv_size + v.mv_size;
        if (!lmc_record_in_file(e, txn, v.mv_data, v.mv_size))
            why = "the record lies outside the data file";
        else
            why = lmc_record_check(dbname, &k, v.mv_data, v.mv_size, &rec, lmc_env_mac(e));
        if (why != NULL) {
            if (add_problem(problems, raw, why, NULL) < 0)
                goto error;
            continue;
        }
        if ((rec.flags & LMC_FLAG_EXPIRES) && rec.expires <= lmc_now())
            expired++;
        if (rec.key != NULL)
            full = PyBytes_FromStringAndSize(rec.key, (Py_ssize_t)rec.key_len);
        else
            full = Py_NewRef(raw);
        if (full == NULL)
            goto error;
        val = lmc_record_take(&rec, &pending);
        if (val == NULL) {
            Py_DECREF(full);
            if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
                goto error;
            PyErr_Clear();
            if (add_problem(problems, raw, "invalid UTF-8 in a str value", NULL) < 0)
                goto error;
            continue;
        }
        if (PyList_Append(raws, raw) < 0 || PyList_Append(fulls, full) < 0 ||
            PyList_Append(vals, val) < 0 || list_append_int(kinds, pending) < 0) {
            Py_DECREF(full);
            Py_DECREF(val);
            goto error;
        }
        Py_DECREF(full);
        Py_DECREF(val);
    }
    if (rc != 0 && rc != MDB_NOTFOUND)
        goto lmdb_error;
    done = rc == MDB_NOTFOUND;
    mdb_cursor_close(cur);
    cur = NULL;
    lmc_read_end(e, txn);
    txn = NULL;

    /* The txn is over: decode (unpickling may run user code). */
    n = PyList_GET_SIZE(raws);
    for (i = 0; i < n; i++) {
        PyObject *full = PyList_GET_ITEM(fulls, i), *obj;
        obj = lmc_key_decode(&self->codec, PyBytes_AS_STRING(full),
                             (size_t)PyBytes_GET_SIZE(full));
        if (obj == NULL) {
            PyObject *exc;
            if (!PyErr_ExceptionMatches(PyExc_Exception))
                goto error;
            exc = take_exception();
            rc = add_problem(problems, PyList_GET_ITEM(raws, i), "key cannot be decoded", exc);
            Py_XDECREF(exc);
            if (rc < 0)
                goto error;
            continue;
        }
        Py_DECREF(obj);
        obj = lmc_value_finish(&self->codec, Py_NewRef(PyList_GET_ITEM(vals, i)),
                               (int)PyLong_AsLong(PyList_GET_ITEM(kinds, i)), e->path);
        if (obj == NULL) {
            PyObject *exc;
            if (!PyErr_ExceptionMatches(PyExc_Exception))
                goto error;
            exc = take_exception();
            rc = add_problem(problems, PyList_GET_ITEM(raws, i), "value cannot be decoded", exc);
            Py_XDECREF(exc);
            if (rc < 0)
                goto error;
            continue;
        }
        Py_DECREF(obj);
        /* drop the payload now: a chunk of big values is not kept twice */
        if (PyList_SetItem(vals, i, Py_NewRef(Py_None)) < 0)
            goto error;
    }
    res = Py_BuildValue("{s:n,s:n,s:n,s:O,s:O,s:O}", "records", records, "expired", expired,
                        "bytes", (Py_ssize_t)bytes, "problems", problems, "last",
                        last != NULL ? last : Py_None, "done", done ? Py_True : Py_False);
    goto error; /* cleanup */

lmdb_error:
    lmc_raise_env(st, rc, "walk the records", e);
error:
    if (cur != NULL)
        mdb_cursor_close(cur);
    if (txn != NULL)
        lmc_read_end(e, txn);
    Py_XDECREF(raws);
    Py_XDECREF(fulls);
    Py_XDECREF(vals);
    Py_XDECREF(kinds);
    Py_XDECREF(problems);
    Py_XDECREF(last);
    return res;
}

PyObject *lmc_store_maint(StoreObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    const char *op;
    Py_ssize_t limit;
    PyObject *res = NULL;
    lmc_env *e;
    MDB_dbi dbi;

    if ((e = lmc_store_enter(self, &dbi)) == NULL)
        return NULL;
    if (nargs < 1 || !PyUnicode_Check(args[0]) || (op = PyUnicode_AsUTF8(args[0])) == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "_maint(op, ...): op must be a str");
    }
    else if (strcmp(op, "survey") == 0 && nargs == 1) {
        res = maint_survey(self->state, e);
    }
    else if (strcmp(op, "scan") == 0 && nargs == 3) {
        limit = PyLong_AsSsize_t(args[2]);
        if (limit < 1 && !PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "limit must be at least 1");
        if (!PyErr_Occurred())
            res = maint_scan(self, e, dbi, self->dbname, args[1], limit);
    }
    else {
        PyErr_Format(PyExc_ValueError, "unknown maintenance operation %R with %zd arguments",
                     args[0], nargs - 1);
    }
    lmc_store_leave(e);
    return res;
}
