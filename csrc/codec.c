/*
 * codec.c -- the on-disk encoding of values (the keys are in keys.c).
 *
 * Values: LMC_RECORD_VERSION, tag, flags, 4-byte CRC32C checksum, [8-byte
 * expiry], [8-byte store sequence], [u32 length + full key], payload.  The
 * checksum covers the sub-database name, the LMDB key and every other byte
 * of the record (lmc_record_sum): a damaged record, or one moved to another
 * key or namespace, is CorruptError, never a wrong value.  With a secret
 * (flag LMC_FLAG_MAC) a 16-byte keyed BLAKE2b MAC follows the checksum, over
 * the same bytes minus both fields (lmc_record_mac).  bytes, str, int64,
 * float, None, True, False are stored natively; everything else goes through
 * the Store's serializer: tag 'p' pickle (protocol 5), 'j' json, 'm' msgpack,
 * 'c' a user's object.  A payload of at least compress_threshold bytes may be
 * a zstd frame (flag LMC_FLAG_ZSTD).  Numbers use the machine's byte order
 * (LMDB files do not move between byte orders either).
 */
#include "lmdbcache.h"

#include <string.h>

/* ---- values ------------------------------------------------------------------ */

/* Stored bytes that cannot be decoded -- a bad pickle, a class that moved
 * (ModuleNotFoundError, AttributeError), a __setstate__ that fails -- are a
 * CorruptError with the original exception as its cause.  MemoryError and
 * non-Exception errors (KeyboardInterrupt) pass unchanged. */
int lmc_decode_failed(lmc_state *st)
{
    return PyErr_ExceptionMatches(PyExc_Exception) && !PyErr_ExceptionMatches(PyExc_MemoryError) &&
           !PyErr_ExceptionMatches(st->Error);
}

/* Serialize a non-native value with c's serializer: a bytes object (new ref)
 * and its tag.  pickle's own errors pass unchanged (PicklingError and the
 * TypeError/AttributeError of unpicklable objects); another serializer's are
 * TypeError, with the original as __cause__. */
static PyObject *serialize(const lmc_codec *c, PyObject *value, int *tag)
{
    lmc_state *st = c->st;
    PyObject *out, *f;
    static const int tags[] = {LMC_VAL_PICKLE, LMC_VAL_JSON, LMC_VAL_MSGPACK, LMC_VAL_CUSTOM};

    *tag = tags[c->kind];
    if (c->kind == LMC_SER_PICKLE) {
        PyObject *args[2] = {value, st->protocol};
        return PyObject_Vectorcall(st->pickle_dumps, args, 2, NULL);
    }
    if (c->dumps == NULL) {
        PyErr_SetString(PyExc_ReferenceError, "the cache's serializer was cleared");
        return NULL;
    }
    f = Py_NewRef(c->dumps); /* user code may re-initialise the Store */
    out = PyObject_CallOneArg(f, value);
    Py_DECREF(f);
    if (out == NULL) {
        if (PyErr_ExceptionMatches(PyExc_Exception) && !PyErr_ExceptionMatches(PyExc_MemoryError))
            lmc_raise_from(PyExc_TypeError, "a value of type %.100s cannot be serialized by "
                                            "this cache's serializer",
                           Py_TYPE(value)->tp_name);
        return NULL;
    }
    if (PyUnicode_Check(out)) { /* json's encoder gives str */
        PyObject *b = PyUnicode_AsUTF8String(out);
        Py_SETREF(out, b);
    }
    if (out != NULL && !PyBytes_Check(out)) {
        PyErr_Format(PyExc_TypeError, "the serializer's dumps returned %.100s, not bytes",
                     Py_TYPE(out)->tp_name);
        Py_CLEAR(out);
    }
    return out;
}

/* Compress the payload of out when it is long enough and shrinks: 1 if it
 * was, 0 if not, -1 with an exception. */
static int maybe_compress(const lmc_codec *c, lmc_value *out)
{
    PyObject *raw, *z, *f;

    if (out->data_len < c->threshold || out->data_len == 0) /* the caller checked c->compress */
        return 0;
    raw = out->owner != NULL && PyBytes_Check(out->owner) &&
                  PyBytes_AS_STRING(out->owner) == out->data
              ? Py_NewRef(out->owner)
              : PyBytes_FromStringAndSize(out->data, (Py_ssize_t)out->data_len);
    if (raw == NULL)
        return -1;
    f = Py_NewRef(c->compress);
    z = PyObject_CallOneArg(f, raw);
    Py_DECREF(f);
    Py_DECREF(raw);
    if (z == NULL)
        return -1;
    if (!PyBytes_Check(z)) {
        PyErr_Format(PyExc_TypeError, "the compressor returned %.100s, not bytes",
                     Py_TYPE(z)->tp_name);
        Py_DECREF(z);
        return -1;
    }
    if ((size_t)PyBytes_GET_SIZE(z) >= out->data_len) {
        Py_DECREF(z);
        return 0;
    }
    Py_XSETREF(out->owner, z);
    out->data = PyBytes_AS_STRING(z);
    out->data_len = (size_t)PyBytes_GET_SIZE(z);
    return 1;
}

int lmc_value_encode(const lmc_codec *c, PyObject *value, const lmc_kref *key, double expires,
                     int with_seq, lmc_value *out)
{
    PyTypeObject *tp = Py_TYPE(value);
    Py_ssize_t slen;
    int tag, z, extra = c->sign ? LMC_FLAG_MAC : 0;

    out->owner = NULL;
    out->data = NULL;
    out->data_len = 0;
    if (tp == &PyBytes_Type) {
        tag = LMC_VAL_BYTES;
        out->data = PyBytes_AS_STRING(value);
        out->data_len = (size_t)PyBytes_GET_SIZE(value);
        out->owner = Py_NewRef(value);
    }
    else if (tp == &PyUnicode_Type && (out->data = PyUnicode_AsUTF8AndSize(value, &slen)) != NULL) {
        tag = LMC_VAL_STR;
        out->data_len = (size_t)slen;
        out->owner = Py_NewRef(value);
    }
    else if (value == Py_None) {
        tag = LMC_VAL_NONE;
    }
    else if (value == Py_True) {
        tag = LMC_VAL_TRUE;
    }
    else if (value == Py_False) {
        tag = LMC_VAL_FALSE;
    }
    else if (tp == &PyFloat_Type) {
        double d = PyFloat_AS_DOUBLE(value);
        tag = LMC_VAL_FLOAT;
        memcpy(out->num, &d, 8);
        out->data = (const char *)out->num;
        out->data_len = 8;
    }
    else {
        int overflow = 1;
        long long v = 0;
        if (tp == &PyLong_Type) {
            v = PyLong_AsLongLongAndOverflow(value, &overflow);
            if (v == -1 && PyErr_Occurred())
                return -1;
        }
        if (!overflow) {
            tag = LMC_VAL_INT;
            memcpy(out->num, &v, 8);
            out->data = (const char *)out->num;
            out->data_len = 8;
        }
        else {
            PyErr_Clear(); /* a str with lone surrogates lands here too */
            out->owner = serialize(c, value, &tag);
            if (out->owner == NULL)
                return -1;
            out->data = PyBytes_AS_STRING(out->owner);
            out->data_len = (size_t)PyBytes_GET_SIZE(out->owner);
        }
    }
    if (LMC_UNLIKELY(c->compress != NULL) && tag != LMC_VAL_INT && tag != LMC_VAL_FLOAT) {
        z = maybe_compress(c, out);
        if (z < 0) {
            Py_CLEAR(out->owner);
            return -1;
        }
        if (z)
            extra |= LMC_FLAG_ZSTD;
    }
    lmc_value_head(out, tag, extra, expires, with_seq, key);
    return 0;
}

void lmc_value_head(lmc_value *out, int tag, int extra, double expires, int with_seq,
                    const lmc_kref *key)
{
    size_t n = LMC_HEADER_SIZE;
    int flags = extra & (LMC_FLAG_MAC | LMC_FLAG_ZSTD);

    if (flags & LMC_FLAG_MAC) {
        memset(out->head + n, 0, LMC_MAC_SIZE); /* filled by lmc_value_write */
        n += LMC_MAC_SIZE;
    }
    out->seq_off = 0;
    out->key = NULL;
    out->key_len = 0;
    if (expires > 0) {
        flags |= LMC_FLAG_EXPIRES;
        memcpy(out->head + n, &expires, 8);
        n += 8;
    }
    if (with_seq) {
        flags |= LMC_FLAG_SEQ;
        out->seq_off = n;
        n += 8;
    }
    if (key != NULL && key->full_data != NULL) {
        uint32_t kl = (uint32_t)key->full_len;
        flags |= LMC_FLAG_LONGKEY;
        memcpy(out->head + n, &kl, 4);
        n += 4;
        out->key = key->full_data;
        out->key_len = kl;
    }
    out->head[0] = LMC_RECORD_VERSION;
    out->head[1] = (unsigned char)tag;
    out->head[2] = (unsigned char)flags;
    memset(out->head + LMC_SUM_OFF, 0, 4); /* filled by lmc_value_write */
    out->head_len = n;
}

void lmc_value_write(const lmc_value *v, char *dst, uint64_t seq, const char *dbname,
                     const MDB_val *key, const lmc_mac *mac)
{
    char *p = dst;
    uint32_t sum;

    memcpy(p, v->head, v->head_len);
    if (v->seq_off)
        memcpy(p + v->seq_off, &seq, 8);
    p += v->head_len;
    if (v->key_len) {
        memcpy(p, v->key, v->key_len);
        p += v->key_len;
    }
    if (v->data_len)
        memcpy(p, v->data, v->data_len);
    if ((v->head[2] & LMC_FLAG_MAC) && mac != NULL)
        lmc_record_mac(mac, dbname, key, dst, lmc_value_size(v),
                       (unsigned char *)dst + LMC_MAC_OFF);
    sum = lmc_record_sum(dbname, key, dst, lmc_value_size(v));
    memcpy(dst + LMC_SUM_OFF, &sum, 4);
}

int lmc_record_parse(lmc_state *st, const char *p, size_t n, lmc_record *rec, const char *path)
{
    const char *why = lmc_record_parse_raw(p, n, rec);
    if (LMC_LIKELY(why == NULL))
        return 0;
    PyErr_Format(st->CorruptError, "corrupt record in '%s': %s", path, why);
    return -1;
}

PyObject *lmc_record_take(const lmc_record *rec, int *pending)
{
    *pending = 0;
    if (LMC_UNLIKELY(rec->flags & LMC_FLAG_ZSTD)) {
        *pending = rec->tag | LMC_PENDING_ZSTD;
        return PyBytes_FromStringAndSize(rec->data, (Py_ssize_t)rec->data_len);
    }
    switch (rec->tag) {
    case LMC_VAL_BYTES:
        return PyBytes_FromStringAndSize(rec->data, (Py_ssize_t)rec->data_len);
    case LMC_VAL_STR:
        return PyUnicode_DecodeUTF8(rec->data, (Py_ssize_t)rec->data_len, "strict");
    case LMC_VAL_NONE:
        Py_RETURN_NONE;
    case LMC_VAL_TRUE:
        Py_RETURN_TRUE;
    case LMC_VAL_FALSE:
        Py_RETURN_FALSE;
    case LMC_VAL_INT: {
        long long v;
        memcpy(&v, rec->data, 8);
        return PyLong_FromLongLong(v);
    }
    case LMC_VAL_FLOAT: {
        double d;
        memcpy(&d, rec->data, 8);
        return PyFloat_FromDouble(d);
    }
    default: /* serialized: parse admitted no other tag */
        *pending = rec->tag;
        return PyBytes_FromStringAndSize(rec->data, (Py_ssize_t)rec->data_len);
    }
}

static const char *serializer_name(int tag)
{
    switch (tag) {
    case LMC_VAL_PICKLE: return "pickle";
    case LMC_VAL_JSON: return "json";
    case LMC_VAL_MSGPACK: return "msgpack";
    default: return "a custom serializer";
    }
}

PyObject *lmc_value_finish(const lmc_codec *c, PyObject *obj, int pending, const char *path)
{
    lmc_state *st = c->st;
    PyObject *value = NULL, *loads = NULL, *f;
    int tag = pending & 0xff, kind = -1;

    if (obj == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
            lmc_raise_from(st->CorruptError, "corrupt record in '%s': invalid UTF-8", path);
        return NULL;
    }
    if (LMC_LIKELY(pending == 0))
        return obj;
    if (tag != LMC_VAL_BYTES && tag != LMC_VAL_STR) {
        /* the decoder first: a refused record is not even decompressed */
        kind = tag == LMC_VAL_PICKLE    ? LMC_SER_PICKLE
               : tag == LMC_VAL_JSON    ? LMC_SER_JSON
               : tag == LMC_VAL_MSGPACK ? LMC_SER_MSGPACK
                                        : LMC_SER_CUSTOM;
        loads = kind == LMC_SER_PICKLE && c->kind == LMC_SER_PICKLE ? st->pickle_loads
                                                                     : c->loads[kind];
        if (loads == NULL) {
            PyErr_Format(st->CorruptError,
                         "refused a record in '%s' written by %s: this cache's serializer does "
                         "not decode it%s", path, serializer_name(tag),
                         kind == LMC_SER_PICKLE ? " (it never unpickles)" : "");
            goto done;
        }
        Py_INCREF(loads); /* user code below may re-initialise the Store */
    }
    if (pending & LMC_PENDING_ZSTD) {
        if (c->decompress == NULL) {
            PyErr_Format(st->Error, "a record in '%s' is zstd-compressed and this cache cannot "
                         "decompress it: install the zstandard package (pip install "
                         "'lmdbcache[zstd]')", path);
            goto done;
        }
        f = Py_NewRef(c->decompress);
        value = PyObject_CallOneArg(f, obj);
        Py_DECREF(f);
        if (value != NULL && !PyBytes_Check(value)) {
            Py_CLEAR(value);
            PyErr_SetString(PyExc_TypeError, "the decompressor did not return bytes");
        }
        if (value == NULL) {
            if (lmc_decode_failed(st))
                lmc_raise_from(st->CorruptError, "corrupt record in '%s': the stored value "
                               "cannot be decompressed", path);
            goto done;
        }
        Py_SETREF(obj, value);
        value = NULL;
    }
    if (tag == LMC_VAL_BYTES) {
        value = Py_NewRef(obj);
    }
    else if (tag == LMC_VAL_STR) {
        value = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(obj), PyBytes_GET_SIZE(obj), "strict");
        if (value == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
            lmc_raise_from(st->CorruptError, "corrupt record in '%s': invalid UTF-8", path);
    }
    else {
        value = PyObject_CallOneArg(loads, obj);
        if (value == NULL && lmc_decode_failed(st))
            lmc_raise_from(st->CorruptError, "corrupt record in '%s': the stored value cannot "
                           "be decoded (%s)", path, serializer_name(tag));
    }
done:
    Py_XDECREF(loads);
    Py_DECREF(obj);
    return value;
}
