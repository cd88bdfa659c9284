/*
 * crc32c.c -- CRC32C (Castagnoli: polynomial 0x1EDC6F41, reflected 0x82F63B78),
 * the checksum of iSCSI, ext4 and LevelDB.  lmc_crc32c(0, "123456789", 9)
 * == 0xE3069283; pass a previous result as `crc` to continue over more data.
 *
 * Dispatch.  lmc_crc32c() calls through `impl`, a function pointer chosen on
 * the first call:
 *   x86-64   the SSE4.2 crc32 instruction, when __builtin_cpu_supports("sse4.2");
 *            the function carries target("sse4.2") because the extension is
 *            not built with -msse4.2;
 *   aarch64  the ARMv8 CRC32C instructions (Linux: when getauxval(AT_HWCAP)
 *            has HWCAP_CRC32; always, if the compiler already targets +crc);
 *   else     slicing-by-8 over tables built once (pthread_once).
 * `impl` is atomic: threads racing on the first call all store the same
 * pointer, and the release/acquire pair publishes the tables with it.
 * lmc_crc32c_portable() always takes the table path (tests compare the two).
 *
 * Internally every routine works on the inverted register (~crc), the
 * exported functions do the inversion once.
 */
#include "lmdbcache.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

uint32_t lmc_crc32c(uint32_t crc, const void *p, size_t n);
uint32_t lmc_crc32c_portable(uint32_t crc, const void *p, size_t n);

typedef uint32_t (*crc_fn)(uint32_t crc, const unsigned char *p, size_t n);

/* ---- portable: slicing-by-8 ---------------------------------------------- */

#define CRC32C_POLY 0x82F63B78u

/* table[0] is the classic byte table; table[k][b] is the CRC of byte b
   followed by k zero bytes, so eight lookups advance the CRC by 8 bytes. */
static uint32_t table[8][256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void table_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (CRC32C_POLY & (0u - (c & 1u)));
        table[0][i] = c;
    }
    for (int i = 0; i < 256; i++)
        for (int k = 1; k < 8; k++)
            table[k][i] = (table[k - 1][i] >> 8) ^ table[0][table[k - 1][i] & 0xff];
}

/* Needs table_init() done.  Byte-order independent: the word is assembled
   from bytes, so no unaligned or type-punned load happens. */
static uint32_t crc_sw(uint32_t crc, const unsigned char *p, size_t n)
{
    while (n >= 8) {
        uint32_t lo = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 |
                             (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
        crc = table[7][lo & 0xff] ^ table[6][(lo >> 8) & 0xff] ^
              table[5][(lo >> 16) & 0xff] ^ table[4][lo >> 24] ^
              table[3][p[4]] ^ table[2][p[5]] ^ table[1][p[6]] ^ table[0][p[7]];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xff];
    return crc;
}

/* ---- hardware ------------------------------------------------------------ */

#if defined(__x86_64__) && defined(__GNUC__)
#include <nmmintrin.h>
#define LMC_CRC_HW 1

__attribute__((target("sse4.2")))
static uint32_t crc_hw(uint32_t crc, const unsigned char *p, size_t n)
{
    uint64_t c = crc;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = _mm_crc32_u64(c, w);
        p += 8;
        n -= 8;
    }
    crc = (uint32_t)c;
    while (n--)
        crc = _mm_crc32_u8(crc, *p++);
    return crc;
}

static int hw_available(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2");
}

#elif defined(__aarch64__) && defined(__GNUC__) && \
    (defined(__ARM_FEATURE_CRC32) || defined(__linux__))
/* UNTESTED: written for GCC/Clang on aarch64, never compiled or run here. */
#include <arm_acle.h>
#define LMC_CRC_HW 1

#if defined(__ARM_FEATURE_CRC32)
#define LMC_CRC_TARGET
#elif defined(__clang__)
#define LMC_CRC_TARGET __attribute__((target("crc")))
#else
#define LMC_CRC_TARGET __attribute__((target("+crc")))
#endif

LMC_CRC_TARGET
static uint32_t crc_hw(uint32_t crc, const unsigned char *p, size_t n)
{
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        crc = __crc32cd(crc, w);
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = __crc32cb(crc, *p++);
    return crc;
}

#if defined(__ARM_FEATURE_CRC32)
static int hw_available(void) { return 1; }
#else
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif
static int hw_available(void) { return (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0; }
#endif

#endif /* hardware */

/* ---- dispatch ------------------------------------------------------------ */

static _Atomic(crc_fn) impl;

static crc_fn choose(void)
{
#ifdef LMC_CRC_HW
    if (hw_available())
        return crc_hw;
#endif
    pthread_once(&table_once, table_init);
    return crc_sw;
}

uint32_t lmc_crc32c(uint32_t crc, const void *p, size_t n)
{
    crc_fn f = atomic_load_explicit(&impl, memory_order_acquire);
    if (__builtin_expect(f == NULL, 0)) {
        f = choose();
        atomic_store_explicit(&impl, f, memory_order_release);
    }
    return ~f(~crc, (const unsigned char *)p, n);
}

uint32_t lmc_crc32c_portable(uint32_t crc, const void *p, size_t n)
{
    pthread_once(&table_once, table_init);
    return ~crc_sw(~crc, (const unsigned char *)p, n);
}
