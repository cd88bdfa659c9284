"""csrc/crc32c.c on its own: compiled with gcc into a small driver program
(against a stub lmdbcache.h, so neither Python.h nor lmdb.h is needed) and
checked against the RFC 3720 vectors, the table-driven path, and a bitwise
CRC32C written here in Python."""
import os
import random
import shutil
import subprocess
import sys
import textwrap

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _records import crc32c  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "csrc", "crc32c.c")
GCC = shutil.which("gcc")
CFLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2"]

pytestmark = pytest.mark.skipif(GCC is None, reason="gcc not found on PATH: cannot compile csrc/crc32c.c")

STUB_HEADER = "#include <stdint.h>\n#include <stddef.h>\n"

DRIVER = textwrap.dedent(r"""
    #define _POSIX_C_SOURCE 200809L
    #include <stdint.h>
    #include <stdio.h>
    #include <stdlib.h>
    #include <string.h>
    #include <time.h>

    uint32_t lmc_crc32c(uint32_t crc, const void *p, size_t n);
    uint32_t lmc_crc32c_portable(uint32_t crc, const void *p, size_t n);

    static uint64_t rng = 0x9E3779B97F4A7C15u;
    static unsigned char rnd(void)
    {
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
        return (unsigned char)(rng >> 32);
    }

    /* crc: stdin -> "hardware portable" CRC of all of it */
    static int do_crc(void)
    {
        static unsigned char buf[1 << 20];
        size_t n = fread(buf, 1, sizeof buf, stdin);
        printf("%08x %08x\n", (unsigned)lmc_crc32c(0, buf, n),
               (unsigned)lmc_crc32c_portable(0, buf, n));
        return 0;
    }

    /* agree: every length 0..300 at every alignment 0..7, whole and split
       at every point, hardware == portable */
    static int do_agree(void)
    {
        static unsigned char buf[300 + 8];
        long checks = 0;
        for (size_t align = 0; align < 8; align++) {
            for (size_t len = 0; len <= 300; len++) {
                for (size_t i = 0; i < sizeof buf; i++)
                    buf[i] = rnd();
                const unsigned char *p = buf + align;
                uint32_t hw = lmc_crc32c(0, p, len), sw = lmc_crc32c_portable(0, p, len);
                if (hw != sw) {
                    printf("MISMATCH align=%zu len=%zu hw=%08x sw=%08x\n", align, len,
                           (unsigned)hw, (unsigned)sw);
                    return 1;
                }
                for (size_t k = 0; k <= len; k++) {
                    uint32_t h2 = lmc_crc32c(lmc_crc32c(0, p, k), p + k, len - k);
                    uint32_t s2 = lmc_crc32c_portable(lmc_crc32c_portable(0, p, k), p + k, len - k);
                    if (h2 != hw || s2 != hw) {
                        printf("SPLIT MISMATCH align=%zu len=%zu k=%zu whole=%08x hw=%08x sw=%08x\n",
                               align, len, k, (unsigned)hw, (unsigned)h2, (unsigned)s2);
                        return 1;
                    }
                    checks++;
                }
            }
        }
        if (lmc_crc32c(0x12345678u, NULL, 0) != 0x12345678u ||
            lmc_crc32c_portable(0x12345678u, NULL, 0) != 0x12345678u) {
            printf("n == 0 changed the crc\n");
            return 1;
        }
        printf("ok %ld\n", checks);
        return 0;
    }

    static double now(void)
    {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec + ts.tv_nsec * 1e-9;
    }

    static double mbps(uint32_t (*f)(uint32_t, const void *, size_t), const unsigned char *b,
                       size_t n, volatile uint32_t *sink)
    {
        int reps = 0;
        double t0 = now(), t;
        do {
            *sink ^= f(*sink, b, n);
            reps++;
        } while ((t = now() - t0) < 0.2);
        return (double)n * reps / t / 1e6;
    }

    /* speed: MB/s of both over a 1 MiB buffer */
    static int do_speed(void)
    {
        size_t n = 1 << 20;
        unsigned char *b = malloc(n);
        volatile uint32_t sink = 0;
        if (!b)
            return 1;
        for (size_t i = 0; i < n; i++)
            b[i] = rnd();
        double hw = mbps(lmc_crc32c, b, n, &sink);
        double sw = mbps(lmc_crc32c_portable, b, n, &sink);
        printf("%.0f %.0f\n", hw, sw);
        free(b);
        return 0;
    }

    int main(int argc, char **argv)
    {
        if (argc == 2 && !strcmp(argv[1], "crc"))
            return do_crc();
        if (argc == 2 && !strcmp(argv[1], "agree"))
            return do_agree();
        if (argc == 2 && !strcmp(argv[1], "speed"))
            return do_speed();
        if (argc == 2 && !strcmp(argv[1], "hwinfo")) {
    #if defined(__x86_64__)
            __builtin_cpu_init();
            printf("x86-64 sse4.2=%d\n", __builtin_cpu_supports("sse4.2") ? 1 : 0);
    #else
            printf("not x86-64: hardware path not checked here\n");
    #endif
            return 0;
        }
        fprintf(stderr, "usage: driver crc|agree|speed|hwinfo\n");
        return 2;
    }
""")


def build(directory, extra_flags=()):
    """Compile crc32c.c + the driver into directory/driver; return its path."""
    inc = os.path.join(directory, "include")
    os.makedirs(inc, exist_ok=True)
    with open(os.path.join(inc, "lmdbcache.h"), "w") as f:  # the stub
        f.write(STUB_HEADER)
    # A copy of crc32c.c: `#include "lmdbcache.h"` looks first in the source
    # file's own directory, which for the original is csrc/ with the real header.
    src_copy = os.path.join(directory, "crc32c.c")
    shutil.copyfile(SRC, src_copy)
    drv = os.path.join(directory, "driver.c")
    with open(drv, "w") as f:
        f.write(DRIVER)
    exe = os.path.join(directory, "driver")
    objs = []
    for src in (src_copy, drv):
        obj = os.path.join(directory, os.path.basename(src) + ".o")
        cmd = [GCC, *CFLAGS, "-fPIC", *extra_flags, "-I" + inc, "-c", src, "-o", obj]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, "compile failed:\n%s\n%s" % (" ".join(cmd), proc.stderr)
        objs.append(obj)
    cmd = [GCC, *extra_flags, *objs, "-o", exe, "-lpthread"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return None, proc.stderr
    return exe, ""


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    exe, err = build(str(tmp_path_factory.mktemp("crc32c")))
    assert exe, "link failed:\n" + err
    return exe


def run(exe, mode, data=b""):
    proc = subprocess.run([exe, mode], input=data, capture_output=True, timeout=120)
    assert proc.returncode == 0, (mode, proc.stdout, proc.stderr)
    return proc.stdout.decode()


def crc_both(exe, data):
    hw, sw = run(exe, "crc", data).split()
    return int(hw, 16), int(sw, 16)


crc32c_bitwise = crc32c  # the definition, one bit at a time (tests/_records.py)


VECTORS = [
    (b"123456789", 0xE3069283),
    (b"", 0x00000000),
    (bytes(32), 0x8A9136AA),               # RFC 3720 B.4: 32 bytes of zeros
    (b"\xff" * 32, 0x62A8AB43),            # 32 bytes of ones
    (bytes(range(32)), 0x46DD794E),        # 32 incrementing bytes
    (bytes(range(31, -1, -1)), 0x113FDB5C),  # 32 decrementing bytes
]


@pytest.mark.parametrize("data,expected", VECTORS, ids=lambda v: v.hex()[:16] if isinstance(v, bytes) else "%08x" % v)
def test_known_vectors(driver, data, expected):
    assert crc32c_bitwise(data) == expected  # the Python reference itself
    hw, sw = crc_both(driver, data)
    assert (hw, sw) == (expected, expected), "hw=%08x sw=%08x want %08x" % (hw, sw, expected)


def test_hardware_and_portable_agree_every_length_alignment_and_split(driver):
    print(run(driver, "hwinfo").strip())
    out = run(driver, "agree")
    assert out.startswith("ok "), out


def test_matches_python_bitwise_on_random_buffers(driver):
    rng = random.Random(32)
    for n in (1, 7, 8, 9, 63, 64, 65, 1000, 4099):
        data = bytes(rng.getrandbits(8) for _ in range(n))
        want = crc32c_bitwise(data)
        assert crc_both(driver, data) == (want, want), n


def test_speed(driver):
    hw, sw = run(driver, "speed").split()
    print("\ncrc32c on 1 MiB: lmc_crc32c %s MB/s, lmc_crc32c_portable %s MB/s" % (hw, sw))


def test_clean_under_sanitizers(tmp_path):
    """-fsanitize=address,undefined: compiles without warnings; the agreement
    run finds no unaligned access, overflow or out-of-bounds read.  Skipped
    only when the toolchain cannot link sanitizer runtimes."""
    exe, err = build(str(tmp_path), ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                                     "-fno-omit-frame-pointer"])
    if exe is None:
        pytest.skip("gcc cannot link -fsanitize=address,undefined here: " + err.strip()[:200])
    out = run(exe, "agree")
    assert out.startswith("ok "), out
