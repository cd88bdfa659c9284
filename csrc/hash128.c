/*
 * hash128.c -- _core._hash128(buffer) -> 16 bytes: a fast non-cryptographic
 * 128-bit hash for memoize's argument digests.
 *
 * The hash: two independent 64-bit accumulators, 32 input bytes per
 * iteration; each accumulator absorbs 16 bytes with one folded 64x64->128
 * multiply (the product's high and low halves xor-ed).  The tail is padded
 * with zeros, the length is mixed into the finaliser, and both output words
 * go through a full avalanche (xorshift-multiply) finaliser.  Not meant to
 * resist adversarial collisions; equal bytes always give equal digests on a
 * given byte order.  The GIL is released for inputs above 64 KiB.
 */
#include "lmdbcache.h"

#include <string.h>

#define H_K0 0x9E3779B97F4A7C15ULL
#define H_K1 0xC2B2AE3D27D4EB4FULL
#define H_K2 0x165667B19E3779F9ULL
#define H_K3 0xD6E8FEB86659FD93ULL
#define H_NOGIL (64 * 1024)

static inline uint64_t h_read64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint64_t h_fold(uint64_t a, uint64_t b)
{
#if defined(__SIZEOF_INT128__)
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
#else
    uint64_t al = a & 0xffffffffULL, ah = a >> 32, bl = b & 0xffffffffULL, bh = b >> 32;
    uint64_t ll = al * bl, lh = al * bh, hl = ah * bl, hh = ah * bh;
    uint64_t mid = (ll >> 32) + (lh & 0xffffffffULL) + (hl & 0xffffffffULL);
    uint64_t lo = (ll & 0xffffffffULL) | (mid << 32);
    uint64_t hi = hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
    return lo ^ hi;
#endif
}

static inline uint64_t h_avalanche(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xFF51AFD7ED558CCDULL;
    x ^= x >> 33;
    x *= 0xC4CEB9FE1A85EC53ULL;
    x ^= x >> 33;
    return x;
}

static void hash128(const unsigned char *p, size_t n, uint64_t out[2])
{
    uint64_t s0 = H_K0, s1 = H_K1;
    size_t len = n;
    unsigned char tail[32];

    while (n >= 32) {
        s0 = h_fold(h_read64(p) ^ H_K2, h_read64(p + 8) ^ s0);
        s1 = h_fold(h_read64(p + 16) ^ H_K3, h_read64(p + 24) ^ s1);
        p += 32;
        n -= 32;
    }
    if (n > 0) {
        memset(tail, 0, sizeof(tail));
        memcpy(tail, p, n);
        s0 = h_fold(h_read64(tail) ^ H_K2, h_read64(tail + 8) ^ s0);
        s1 = h_fold(h_read64(tail + 16) ^ H_K3, h_read64(tail + 24) ^ s1);
    }
    s0 ^= (uint64_t)len;
    s1 ^= (uint64_t)len * H_K0;
    {
        uint64_t a = h_fold(s0 ^ H_K1, s1 ^ H_K3);
        uint64_t b = h_fold(s1 ^ H_K0, s0 ^ H_K2);
        out[0] = h_avalanche(a + s1);
        out[1] = h_avalanche(b ^ (s0 << 23 | s0 >> 41));
    }
}

PyObject *lmc_hash128(PyObject *Py_UNUSED(module), PyObject *arg)
{
    Py_buffer view;
    uint64_t out[2];
    unsigned char digest[16];
    int i;

    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (view.len > H_NOGIL) {
        Py_BEGIN_ALLOW_THREADS
        hash128(view.buf, (size_t)view.len, out);
        Py_END_ALLOW_THREADS
    }
    else {
        hash128(view.buf, (size_t)view.len, out);
    }
    PyBuffer_Release(&view);
    for (i = 0; i < 8; i++) { /* little-endian output on every machine */
        digest[i] = (unsigned char)(out[0] >> (8 * i));
        digest[8 + i] = (unsigned char)(out[1] >> (8 * i));
    }
    return PyBytes_FromStringAndSize((const char *)digest, 16);
}
