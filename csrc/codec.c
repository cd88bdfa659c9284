/*
 * codec.c -- the on-disk encodings of keys and values.
 *
 * Keys: one tag byte, then
 *   's' str as UTF-8          'b' bytes as they are
 *   'i' int in [-2**63, 2**63) as 8 big-endian bytes with the sign bit flipped
 *       (order-preserving)
 *   'l' any other int, as signed hexadecimal ASCII ("-0x1f...")
 *   'd' float: its IEEE bits, big-endian, sign-flipped to sort (-0.0 is 0.0)
 *   'k' bool: one byte, 0 or 1          'n' None: nothing
 *   't' tuple: for each item, a LEB128 length then the item's own encoding
 *   'f' frozenset: as a tuple, the items' encodings sorted bytewise, so the
 *       encoding does not depend on the hash seed (PYTHONHASHSEED)
 *   'p' anything else hashable, pickled (protocol 5) -- under the pickle
 *       serializer only: any other refuses such keys (TypeError) and never
 *       decodes a stored one
 *   'h' SHA-256 of an encoding longer than LMC_MAX_KEY; the full encoding is
 *       then kept in the value record and compared on every lookup.
 * Keys are equal when their encodings are: 1, 1.0 and True are three keys.
 * str, bytes and int subclasses encode as their base type.
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

#define LMC_MAX_DEPTH 32

/* ---- keys -------------------------------------------------------------------- */

typedef struct {
    unsigned char *p;
    size_t len, cap;
    unsigned char *stack; /* initial storage, not freed */
} kbuf;

static int kbuf_reserve(kbuf *b, size_t extra)
{
    size_t need = b->len + extra, cap;
    unsigned char *p;

    if (need <= b->cap)
        return 0;
    cap = b->cap * 2 > need ? b->cap * 2 : need;
    if (b->p == b->stack) {
        p = PyMem_Malloc(cap);
        if (p != NULL)
            memcpy(p, b->p, b->len);
    }
    else {
        p = PyMem_Realloc(b->p, cap);
    }
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static int kbuf_put(kbuf *b, int tag, const void *data, size_t n)
{
    if (kbuf_reserve(b, n + 1) < 0)
        return -1;
    b->p[b->len++] = (unsigned char)tag;
    memcpy(b->p + b->len, data, n);
    b->len += n;
    return 0;
}

static int encode_into(const lmc_codec *c, kbuf *b, PyObject *key, int depth);

static int encode_pickled(const lmc_codec *c, kbuf *b, PyObject *key)
{
    lmc_state *st = c->st;
    PyObject *args[2] = {key, st->protocol};
    PyObject *pickled;
    int rc;

    if (PyObject_Hash(key) == -1)
        return -1; /* TypeError: unhashable type */
    if (c->kind != LMC_SER_PICKLE) {
        PyErr_Format(PyExc_TypeError,
                     "cache key of type %.100s would need pickling, which this cache's "
                     "serializer does not allow: use str, bytes, int, float, bool, None, or "
                     "tuples and frozensets of them",
                     Py_TYPE(key)->tp_name);
        return -1;
    }
    pickled = PyObject_Vectorcall(st->pickle_dumps, args, 2, NULL);
    if (pickled == NULL) {
        lmc_raise_from(PyExc_TypeError, "cache key of type %.100s cannot be pickled",
                       Py_TYPE(key)->tp_name);
        return -1;
    }
    rc = kbuf_put(b, LMC_KEY_PICKLE, PyBytes_AS_STRING(pickled),
                  (size_t)PyBytes_GET_SIZE(pickled));
    Py_DECREF(pickled);
    return rc;
}

static int encode_tuple(const lmc_codec *c, kbuf *b, PyObject *key, int depth)
{
    Py_ssize_t i, n = PyTuple_GET_SIZE(key);
    size_t start, item, len, shift;
    unsigned char varint[10];
    int nv;

    if (kbuf_reserve(b, 1) < 0)
        return -1;
    b->p[b->len++] = LMC_KEY_TUPLE;
    for (i = 0; i < n; i++) {
        /* Encode the item first, then insert its length in front of it. */
        start = b->len;
        if (encode_into(c, b, PyTuple_GET_ITEM(key, i), depth + 1) < 0)
            return -1;
        item = b->len - start;
        for (len = item, nv = 0, shift = 0; nv == 0 || len != 0; shift += 7) {
            varint[nv++] = (unsigned char)((len & 0x7f) | (len >= 0x80 ? 0x80 : 0));
            len >>= 7;
        }
        if (kbuf_reserve(b, (size_t)nv) < 0)
            return -1;
        memmove(b->p + start + nv, b->p + start, item);
        memcpy(b->p + start, varint, (size_t)nv);
        b->len += (size_t)nv;
    }
    return 0;
}

typedef struct {
    size_t off, n;
} kitem;

static const unsigned char *kitem_base;

static int kitem_cmp(const void *a, const void *b)
{
    const kitem *x = a, *y = b;
    int c = memcmp(kitem_base + x->off, kitem_base + y->off, x->n < y->n ? x->n : y->n);
    if (c != 0)
        return c;
    return x->n < y->n ? -1 : x->n > y->n;
}

/* Items encoded one after the other in a scratch buffer, then written in the
 * bytewise order of their encodings.  kitem_base is set just before qsort,
 * which runs no Python code: no other thread can use it meanwhile. */
static int encode_frozenset(const lmc_codec *c, kbuf *b, PyObject *key, int depth)
{
    unsigned char stack[256], varint[10];
    kbuf tmp;
    kitem *items;
    PyObject *it, *item;
    Py_ssize_t n = PySet_GET_SIZE(key), i = 0, k;
    size_t len;
    int nv, rc = -1;

    items = PyMem_Calloc((size_t)(n > 0 ? n : 1), sizeof(kitem));
    if (items == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    tmp.p = tmp.stack = stack;
    tmp.len = 0;
    tmp.cap = sizeof(stack);
    it = PyObject_GetIter(key);
    if (it == NULL)
        goto done;
    while ((item = PyIter_Next(it)) != NULL) {
        size_t start = tmp.len;
        int r = i < n ? encode_into(c, &tmp, item, depth + 1) : -1;
        Py_DECREF(item);
        if (r < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_RuntimeError, "frozenset changed size during encoding");
            Py_DECREF(it);
            goto done;
        }
        items[i].off = start;
        items[i].n = tmp.len - start;
        i++;
    }
    Py_DECREF(it);
    if (PyErr_Occurred())
        goto done;
    kitem_base = tmp.p;
    qsort(items, (size_t)i, sizeof(kitem), kitem_cmp);
    if (kbuf_reserve(b, 1) < 0)
        goto done;
    b->p[b->len++] = LMC_KEY_FROZENSET;
    for (k = 0; k < i; k++) {
        for (len = items[k].n, nv = 0; nv == 0 || len != 0;) {
            varint[nv++] = (unsigned char)((len & 0x7f) | (len >= 0x80 ? 0x80 : 0));
            len >>= 7;
        }
        if (kbuf_reserve(b, (size_t)nv + items[k].n) < 0)
            goto done;
        memcpy(b->p + b->len, varint, (size_t)nv);
        memcpy(b->p + b->len + nv, tmp.p + items[k].off, items[k].n);
        b->len += (size_t)nv + items[k].n;
    }
    rc = 0;
done:
    if (tmp.p != tmp.stack)
        PyMem_Free(tmp.p);
    PyMem_Free(items);
    return rc;
}

static int encode_float(kbuf *b, double d)
{
    unsigned char be[8];
    uint64_t u;
    int i;

    if (d == 0.0)
        d = 0.0; /* -0.0 == 0.0: one key */
    memcpy(&u, &d, 8);
    u = (u >> 63) ? ~u : u ^ ((uint64_t)1 << 63);
    for (i = 7; i >= 0; i--, u >>= 8)
        be[i] = (unsigned char)(u & 0xff);
    return kbuf_put(b, LMC_KEY_FLOAT, be, 8);
}

static int encode_bigint(kbuf *b, PyObject *key)
{
    /* base 16: no digit limit (sys.set_int_max_str_digits), and an int
     * subclass's own __str__/__repr__ is never called */
    PyObject *text = PyNumber_ToBase(key, 16);
    Py_ssize_t n;
    const char *p;
    int rc;

    if (text == NULL)
        return -1;
    p = PyUnicode_AsUTF8AndSize(text, &n);
    rc = p == NULL ? -1 : kbuf_put(b, LMC_KEY_BIGINT, p, (size_t)n);
    Py_DECREF(text);
    return rc;
}

static int encode_into(const lmc_codec *c, kbuf *b, PyObject *key, int depth)
{
    if (depth > LMC_MAX_DEPTH) {
        PyErr_SetString(PyExc_TypeError, "cache key is nested too deeply");
        return -1;
    }
    if (PyUnicode_Check(key)) {
        Py_ssize_t n;
        const char *p = PyUnicode_AsUTF8AndSize(key, &n);
        if (p != NULL)
            return kbuf_put(b, LMC_KEY_STR, p, (size_t)n);
        PyErr_Clear(); /* lone surrogates: not UTF-8, pickled below */
    }
    else if (PyBytes_Check(key)) {
        return kbuf_put(b, LMC_KEY_BYTES, PyBytes_AS_STRING(key), (size_t)PyBytes_GET_SIZE(key));
    }
    else if (PyLong_Check(key) && !PyBool_Check(key)) {
        int overflow, i;
        long long v = PyLong_AsLongLongAndOverflow(key, &overflow);
        unsigned char be[8];
        uint64_t u;
        if (v == -1 && PyErr_Occurred())
            return -1;
        if (!overflow) {
            u = (uint64_t)v ^ ((uint64_t)1 << 63);
            for (i = 7; i >= 0; i--, u >>= 8)
                be[i] = (unsigned char)(u & 0xff);
            return kbuf_put(b, LMC_KEY_INT, be, 8);
        }
        return encode_bigint(b, key);
    }
    else if (PyFloat_Check(key)) {
        return encode_float(b, PyFloat_AS_DOUBLE(key));
    }
    else if (key == Py_None) {
        return kbuf_put(b, LMC_KEY_NONE, "", 0);
    }
    else if (PyBool_Check(key)) {
        return kbuf_put(b, LMC_KEY_BOOL, key == Py_True ? "\1" : "\0", 1);
    }
    else if (PyTuple_CheckExact(key)) {
        return encode_tuple(c, b, key, depth);
    }
    else if (PyFrozenSet_CheckExact(key)) {
        return encode_frozenset(c, b, key, depth);
    }
    return encode_pickled(c, b, key);
}

/* The sha256 constructor, imported on first use: the built-in _sha2 (3.12+)
 * or _sha256 module, which load in well under a millisecond, else hashlib. */
static PyObject *lmc_sha256(lmc_state *st)
{
    static const char *const mods[] = {"_sha2", "_sha256", "hashlib"};
    size_t i;
    for (i = 0; st->sha256 == NULL && i < sizeof(mods) / sizeof(mods[0]); i++) {
        PyObject *m = PyImport_ImportModule(mods[i]);
        if (m == NULL) {
            PyErr_Clear();
            continue;
        }
        st->sha256 = PyObject_GetAttrString(m, "sha256");
        Py_DECREF(m);
        if (st->sha256 == NULL)
            PyErr_Clear();
    }
    if (st->sha256 == NULL)
        PyErr_SetString(PyExc_ImportError, "no sha256 implementation (_sha2, _sha256, hashlib)");
    return st->sha256;
}

static int key_digest(lmc_state *st, const unsigned char *p, size_t n, lmc_key *out)
{
    PyObject *hasher = NULL, *digest = NULL;
    int rc = -1;

    out->r.full = PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n);
    if (out->r.full == NULL)
        goto done;
    if (lmc_sha256(st) == NULL)
        goto done;
    hasher = PyObject_CallOneArg(st->sha256, out->r.full);
    if (hasher == NULL)
        goto done;
    digest = PyObject_CallMethod(hasher, "digest", NULL);
    if (digest == NULL)
        goto done;
    if (!PyBytes_Check(digest) || PyBytes_GET_SIZE(digest) != 32) {
        PyErr_SetString(PyExc_SystemError, "sha256 digest is not 32 bytes");
        goto done;
    }
    out->r.full_data = PyBytes_AS_STRING(out->r.full);
    out->r.full_len = (size_t)n;
    out->buf[0] = LMC_KEY_DIGEST;
    memcpy(out->buf + 1, PyBytes_AS_STRING(digest), 32);
    out->r.val.mv_data = out->buf;
    out->r.val.mv_size = 33;
    rc = 0;
done:
    Py_XDECREF(hasher);
    Py_XDECREF(digest);
    if (rc < 0) {
        Py_CLEAR(out->r.full);
        out->r.full_data = NULL;
        out->r.full_len = 0;
    }
    return rc;
}

int lmc_key_encode(const lmc_codec *c, PyObject *key, lmc_key *out)
{
    kbuf b;
    int rc;

    out->r.full = NULL;
    out->r.full_data = NULL;
    out->r.full_len = 0;
    /* Fast path: an exact str that fits. */
    if (LMC_LIKELY(PyUnicode_CheckExact(key))) {
        Py_ssize_t n;
        const char *p = PyUnicode_AsUTF8AndSize(key, &n);
        if (LMC_LIKELY(p != NULL && n < LMC_MAX_KEY)) {
            out->buf[0] = LMC_KEY_STR;
            memcpy(out->buf + 1, p, (size_t)n);
            out->r.val.mv_data = out->buf;
            out->r.val.mv_size = (size_t)n + 1;
            return 0;
        }
        if (p == NULL)
            PyErr_Clear();
    }
    b.p = b.stack = out->buf;
    b.len = 0;
    b.cap = sizeof(out->buf);
    rc = encode_into(c, &b, key, 0);
    if (rc == 0) {
        if (b.len <= LMC_MAX_KEY) {
            if (b.p != out->buf)
                memcpy(out->buf, b.p, b.len);
            out->r.val.mv_data = out->buf;
            out->r.val.mv_size = b.len;
        }
        else {
            rc = key_digest(c->st, b.p, b.len, out);
        }
    }
    if (b.p != b.stack)
        PyMem_Free(b.p);
    return rc;
}

int lmc_keyset_build(const lmc_codec *c, PyObject *const *keys, Py_ssize_t n, lmc_keyset *ks)
{
    lmc_key k;
    size_t len = 0, cap = (size_t)n * 32 + 64, *off = NULL;
    unsigned char *p;
    Py_ssize_t i;

    ks->n = 0;
    ks->refs = PyMem_Calloc((size_t)n + 1, sizeof(*ks->refs));
    ks->buf = PyMem_Malloc(cap);
    off = PyMem_Malloc(((size_t)n + 1) * sizeof(*off));
    if (ks->refs == NULL || ks->buf == NULL || off == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    for (i = 0; i < n; i++) {
        if (lmc_key_encode(c, keys[i], &k) < 0)
            goto error;
        if (len + k.r.val.mv_size > cap) {
            cap = (cap + k.r.val.mv_size) * 2;
            p = PyMem_Realloc(ks->buf, cap);
            if (p == NULL) {
                lmc_key_clear(&k);
                PyErr_NoMemory();
                goto error;
            }
            ks->buf = p;
        }
        memcpy(ks->buf + len, k.r.val.mv_data, k.r.val.mv_size);
        off[i] = len;
        len += k.r.val.mv_size;
        ks->refs[i].val.mv_size = k.r.val.mv_size;
        ks->refs[i].full = k.r.full; /* steals */
        ks->refs[i].full_data = k.r.full_data;
        ks->refs[i].full_len = k.r.full_len;
        ks->n++;
    }
    for (i = 0; i < n; i++)
        ks->refs[i].val.mv_data = ks->buf + off[i];
    PyMem_Free(off);
    return 0;
error:
    PyMem_Free(off);
    lmc_keyset_free(ks);
    return -1;
}

void lmc_keyset_free(lmc_keyset *ks)
{
    Py_ssize_t i;
    if (ks->refs != NULL) {
        for (i = 0; i < ks->n; i++)
            Py_XDECREF(ks->refs[i].full);
    }
    PyMem_Free(ks->refs);
    PyMem_Free(ks->buf);
    ks->refs = NULL;
    ks->buf = NULL;
    ks->n = 0;
}

static PyObject *decode_one(const lmc_codec *c, const unsigned char *p, size_t n, int depth);

static PyObject *decode_tuple(const lmc_codec *c, const unsigned char *p, size_t n, int depth)
{
    PyObject *list = PyList_New(0), *item, *tuple = NULL;
    size_t pos = 0, len, shift;

    if (list == NULL)
        return NULL;
    while (pos < n) {
        for (len = 0, shift = 0;; shift += 7) {
            if (pos >= n || shift > 56)
                goto bad;
            len |= (size_t)(p[pos] & 0x7f) << shift;
            if ((p[pos++] & 0x80) == 0)
                break;
        }
        if (len == 0 || len > n - pos)
            goto bad;
        item = decode_one(c, p + pos, len, depth + 1);
        if (item == NULL || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            goto error;
        }
        Py_DECREF(item);
        pos += len;
    }
    tuple = PyList_AsTuple(list);
    Py_DECREF(list);
    return tuple;
bad:
    PyErr_SetString(PyExc_ValueError, "bad tuple key encoding");
error:
    Py_DECREF(list);
    return NULL;
}

static PyObject *decode_one(const lmc_codec *c, const unsigned char *p, size_t n, int depth)
{
    if (n == 0 || depth > LMC_MAX_DEPTH)
        goto bad;
    switch (p[0]) {
    case LMC_KEY_STR:
        return PyUnicode_DecodeUTF8((const char *)p + 1, (Py_ssize_t)n - 1, "strict");
    case LMC_KEY_BYTES:
        return PyBytes_FromStringAndSize((const char *)p + 1, (Py_ssize_t)n - 1);
    case LMC_KEY_INT: {
        uint64_t u = 0;
        size_t i;
        if (n != 9)
            goto bad;
        for (i = 1; i < 9; i++)
            u = (u << 8) | p[i];
        return PyLong_FromLongLong((long long)(u ^ ((uint64_t)1 << 63)));
    }
    case LMC_KEY_BIGINT: {
        PyObject *text, *v;
        if (n < 2)
            goto bad;
        text = PyUnicode_DecodeASCII((const char *)p + 1, (Py_ssize_t)n - 1, "strict");
        if (text == NULL)
            return NULL;
        v = PyLong_FromUnicodeObject(text, 16);
        Py_DECREF(text);
        return v;
    }
    case LMC_KEY_FLOAT: {
        uint64_t u = 0;
        double d;
        size_t i;
        if (n != 9)
            goto bad;
        for (i = 1; i < 9; i++)
            u = (u << 8) | p[i];
        u = (u >> 63) ? u ^ ((uint64_t)1 << 63) : ~u;
        memcpy(&d, &u, 8);
        return PyFloat_FromDouble(d);
    }
    case LMC_KEY_NONE:
        if (n != 1)
            goto bad;
        Py_RETURN_NONE;
    case LMC_KEY_BOOL:
        if (n != 2 || p[1] > 1)
            goto bad;
        return PyBool_FromLong(p[1]);
    case LMC_KEY_TUPLE:
        return decode_tuple(c, p + 1, n - 1, depth);
    case LMC_KEY_FROZENSET: {
        PyObject *t = decode_tuple(c, p + 1, n - 1, depth), *fs;
        if (t == NULL)
            return NULL;
        fs = PyFrozenSet_New(t);
        Py_DECREF(t);
        return fs;
    }
    case LMC_KEY_PICKLE: {
        PyObject *b, *key;
        if (c->kind != LMC_SER_PICKLE) {
            PyErr_SetString(PyExc_ValueError, "a pickled key, refused: this cache's serializer "
                                              "is not pickle");
            return NULL;
        }
        b = PyBytes_FromStringAndSize((const char *)p + 1, (Py_ssize_t)n - 1);
        if (b == NULL)
            return NULL;
        key = PyObject_CallOneArg(c->st->pickle_loads, b);
        Py_DECREF(b);
        return key;
    }
    default:
        break;
    }
bad:
    PyErr_SetString(PyExc_ValueError, "unknown key encoding");
    return NULL;
}

/* Stored bytes that cannot be decoded -- a bad pickle, a class that moved
 * (ModuleNotFoundError, AttributeError), a __setstate__ that fails -- are a
 * CorruptError with the original exception as its cause.  MemoryError and
 * non-Exception errors (KeyboardInterrupt) pass unchanged. */
static int decode_failed(lmc_state *st)
{
    return PyErr_ExceptionMatches(PyExc_Exception) && !PyErr_ExceptionMatches(PyExc_MemoryError) &&
           !PyErr_ExceptionMatches(st->Error);
}

PyObject *lmc_key_decode(const lmc_codec *c, const char *p, size_t n)
{
    lmc_state *st = c->st;
    PyObject *key = decode_one(c, (const unsigned char *)p, n, 0);
    if (key == NULL && decode_failed(st))
        lmc_raise_from(st->CorruptError, "a stored key cannot be decoded");
    return key;
}

/* ---- values ------------------------------------------------------------------ */

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
            if (decode_failed(st))
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
        if (value == NULL && decode_failed(st))
            lmc_raise_from(st->CorruptError, "corrupt record in '%s': the stored value cannot "
                           "be decoded (%s)", path, serializer_name(tag));
    }
done:
    Py_XDECREF(loads);
    Py_DECREF(obj);
    return value;
}
