/*
 * blake2b.c -- keyed BLAKE2b (RFC 7693), the record MAC of Cache(secret=...).
 *
 * Written from the RFC's description: 64-bit words read little-endian, a
 * 128-byte block, 12 rounds of the G mixing function over a 4x4 state with
 * the message-word schedule SIGMA, a 128-bit byte counter and a final-block
 * flag.  A keyed hash processes the key, zero-padded to one block, as the
 * first block.  Output: the first `outlen` bytes of the state, little-endian.
 *
 * lmc_mac_init compresses that key block once, so each MAC costs one
 * compression per 128 bytes of message (never zero: every message this
 * package authenticates is at least 11 bytes, so the key block is never the
 * last block -- the one case where the shortcut would differ from the RFC).
 * tests/test_secret.py checks the result against hashlib.blake2b(key=...).
 * No Py* call: MACs are computed inside write txns without the GIL.
 */
#include "lmdbcache.h"

#include <string.h>

static const uint64_t B2_IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

static const unsigned char B2_SIGMA[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

static inline uint64_t b2_rotr(uint64_t x, unsigned n)
{
    return (x >> n) | (x << (64 - n));
}

static inline uint64_t b2_load(const unsigned char *p)
{
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 |
           (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 |
           (uint64_t)p[7] << 56;
}

#define B2_G(a, b, c, d, x, y)                                                                     \
    do {                                                                                           \
        v[a] = v[a] + v[b] + (x);                                                                  \
        v[d] = b2_rotr(v[d] ^ v[a], 32);                                                           \
        v[c] = v[c] + v[d];                                                                        \
        v[b] = b2_rotr(v[b] ^ v[c], 24);                                                           \
        v[a] = v[a] + v[b] + (y);                                                                  \
        v[d] = b2_rotr(v[d] ^ v[a], 16);                                                           \
        v[c] = v[c] + v[d];                                                                        \
        v[b] = b2_rotr(v[b] ^ v[c], 63);                                                           \
    } while (0)

static void b2_compress(lmc_blake2b *s, const unsigned char *block, int last)
{
    uint64_t v[16], m[16];
    int i;

    for (i = 0; i < 16; i++)
        m[i] = b2_load(block + 8 * i);
    for (i = 0; i < 8; i++) {
        v[i] = s->h[i];
        v[i + 8] = B2_IV[i];
    }
    v[12] ^= s->t[0];
    v[13] ^= s->t[1];
    if (last)
        v[14] = ~v[14];
    for (i = 0; i < 12; i++) {
        const unsigned char *z = B2_SIGMA[i];
        B2_G(0, 4, 8, 12, m[z[0]], m[z[1]]);
        B2_G(1, 5, 9, 13, m[z[2]], m[z[3]]);
        B2_G(2, 6, 10, 14, m[z[4]], m[z[5]]);
        B2_G(3, 7, 11, 15, m[z[6]], m[z[7]]);
        B2_G(0, 5, 10, 15, m[z[8]], m[z[9]]);
        B2_G(1, 6, 11, 12, m[z[10]], m[z[11]]);
        B2_G(2, 7, 8, 13, m[z[12]], m[z[13]]);
        B2_G(3, 4, 9, 14, m[z[14]], m[z[15]]);
    }
    for (i = 0; i < 8; i++)
        s->h[i] ^= v[i] ^ v[i + 8];
}

static void b2_count(lmc_blake2b *s, size_t n)
{
    s->t[0] += (uint64_t)n;
    if (s->t[0] < (uint64_t)n)
        s->t[1]++;
}

void lmc_blake2b_update(lmc_blake2b *s, const void *in, size_t n)
{
    const unsigned char *p = in;
    size_t take;

    while (n > 0) {
        if (s->c == sizeof(s->b)) { /* a full block, and more follows: not the last */
            b2_count(s, s->c);
            b2_compress(s, s->b, 0);
            s->c = 0;
        }
        take = sizeof(s->b) - s->c;
        if (take > n)
            take = n;
        memcpy(s->b + s->c, p, take);
        s->c += take;
        p += take;
        n -= take;
    }
}

void lmc_blake2b_final(lmc_blake2b *s, unsigned char *out)
{
    size_t i;

    b2_count(s, s->c);
    memset(s->b + s->c, 0, sizeof(s->b) - s->c);
    b2_compress(s, s->b, 1);
    for (i = 0; i < s->outlen; i++) /* the state, little-endian, cut to outlen */
        out[i] = (unsigned char)(s->h[i / 8] >> (8 * (i % 8)));
}

int lmc_mac_init(lmc_mac *mac, const void *secret, size_t len)
{
    lmc_blake2b *s = &mac->keyed;
    unsigned char key[64];
    int i;

    if (len == 0)
        return -1;
    if (len > sizeof(key)) {
        /* longer secrets are first hashed (unkeyed BLAKE2b-512) to a key */
        memset(s, 0, sizeof(*s));
        for (i = 0; i < 8; i++)
            s->h[i] = B2_IV[i];
        s->h[0] ^= 0x01010000ULL ^ 64;
        s->outlen = 64;
        lmc_blake2b_update(s, secret, len);
        lmc_blake2b_final(s, key);
        secret = key;
        len = sizeof(key);
    }
    memset(s, 0, sizeof(*s));
    for (i = 0; i < 8; i++)
        s->h[i] = B2_IV[i];
    s->h[0] ^= 0x01010000ULL ^ ((uint64_t)len << 8) ^ LMC_MAC_SIZE;
    s->outlen = LMC_MAC_SIZE;
    memcpy(s->b, secret, len); /* the key block, zero-padded */
    b2_count(s, sizeof(s->b));
    b2_compress(s, s->b, 0);
    memset(s->b, 0, sizeof(s->b));
    memset(key, 0, sizeof(key));
    return 0;
}
