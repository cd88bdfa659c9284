/*
 * keys.c -- the on-disk encoding of keys (the values are in codec.c).
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

PyObject *lmc_key_decode(const lmc_codec *c, const char *p, size_t n)
{
    lmc_state *st = c->st;
    PyObject *key = decode_one(c, (const unsigned char *)p, n, 0);
    if (key == NULL && lmc_decode_failed(st))
        lmc_raise_from(st->CorruptError, "a stored key cannot be decoded");
    return key;
}
