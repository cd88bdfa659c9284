"""secret=, serializer="json" and compress="zstd", each against its baseline, in one run.

    .venv/bin/python benchmarks/bench_codecs.py [--quick]

Rows (median of interleaved rounds, ns per operation, and the ratio):

- get / set of a small dict with secret= against the same cache without;
- get / set of a small dict with serializer="json" against json.dumps/loads
  around a plain get/set of bytes (the floor for a json cache);
- a 1 MiB compressible str with compress="zstd": stored bytes and get/set
  time against no compression.

Targets (issue "Security"): secret <= 1.3x, json <= 1.5x, zstd >= 3x smaller.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

import lmdb

import lmdbcache

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import cpu_model  # noqa: E402

SECRET = b"benchmark-secret-benchmark-secret"
VALUE = {"id": 12345, "name": "lmdbcache", "tags": ["a", "b", "c"], "score": 0.5}


def timed(fn, n):
    t0 = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - t0) / n


def compare(pairs, n, rounds):
    """pairs: {name: fn}; interleaved rounds; medians in ns per op."""
    samples = {name: [] for name in pairs}
    for _ in range(rounds):
        for name, fn in pairs.items():
            samples[name].append(timed(fn, n))
    return {name: statistics.median(v) for name, v in samples.items()}


def stored_bytes(path):
    env = lmdb.open(path, max_dbs=64, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return sum(len(v) for k, v in txn.cursor() if not k.startswith(b"__"))
    finally:
        env.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    n = 2000 if args.quick else 20000
    rounds = 3 if args.quick else 9
    root = tempfile.mkdtemp(prefix="lmdbcache-bench-codecs-")
    rows = []
    try:
        plain = lmdbcache.Cache(f"{root}/plain")
        signed = lmdbcache.Cache(f"{root}/signed", secret=SECRET)
        jcache = lmdbcache.Cache(f"{root}/json", serializer="json")
        keys = [f"key-{i}" for i in range(n)]
        for c in (plain, signed, jcache):
            for k in keys:
                c[k] = VALUE
        for k in keys:
            plain["b" + k] = json.dumps(VALUE).encode()

        def gets(c):
            get = c.get
            return lambda: [get(k) for k in keys]

        def sets(c):
            st = c.set
            return lambda: [st(k, VALUE) for k in keys]

        def json_floor_get():
            get, loads = plain.get, json.loads
            for k in keys:
                loads(get("b" + k))

        def json_floor_set():
            st, dumps = plain.set, json.dumps
            for k in keys:
                st("b" + k, dumps(VALUE).encode())

        r = compare({"plain": gets(plain), "secret": gets(signed)}, n, rounds)
        rows.append(("get, secret= vs none", r["secret"], r["plain"], "<= 1.3"))
        r = compare({"plain": sets(plain), "secret": sets(signed)}, n, rounds)
        rows.append(("set, secret= vs none", r["secret"], r["plain"], "<= 1.3"))
        r = compare({"floor": json_floor_get, "json": gets(jcache)}, n, rounds)
        rows.append(('get, serializer="json" vs json.loads + get', r["json"], r["floor"], "<= 1.5"))
        r = compare({"floor": json_floor_set, "json": sets(jcache)}, n, rounds)
        rows.append(('set, serializer="json" vs json.dumps + set', r["json"], r["floor"], "<= 1.5"))

        # 1 MiB of compressible text: JSON records with varying numbers
        big = json.dumps([{"id": i, "user": f"user{i % 977}", "score": round(i * 0.37, 2),
                           "tags": ["a", "b"] if i % 3 else ["c"]} for i in range(20000)])
        big = big[: 1 << 20]
        zc = lmdbcache.Cache(f"{root}/zstd", compress="zstd")
        nz = 20 if args.quick else 100
        zr = compare({"plain": lambda: [plain.set("big", big) for _ in range(nz)],
                      "zstd": lambda: [zc.set("big", big) for _ in range(nz)]}, nz, rounds)
        zg = compare({"plain": lambda: [plain.get("big") for _ in range(nz)],
                      "zstd": lambda: [zc.get("big") for _ in range(nz)]}, nz, rounds)
        for c in (plain, signed, jcache, zc):
            c.close()
        z_bytes = stored_bytes(f"{root}/zstd")
        p = lmdbcache.Cache(f"{root}/onlybig")
        p["big"] = big
        p.close()
        plain_big = stored_bytes(f"{root}/onlybig")

        print(f"# lmdbcache codecs -- Python {platform.python_version()}, {cpu_model()}, "
              f"n={n}, {rounds} rounds")
        print(f"| {'operation':46} | {'ns/op':>9} | {'baseline':>9} | {'ratio':>6} | target |")
        print(f"|{'-' * 48}|{'-' * 11}|{'-' * 11}|{'-' * 8}|--------|")
        for name, t, base, target in rows:
            print(f"| {name:46} | {t:9.0f} | {base:9.0f} | {t / base:6.2f} | {target:6} |")
        print(f"| {'set 1 MiB str, zstd vs none (us/op)':46} | {zr['zstd'] / 1e3:9.0f} | "
              f"{zr['plain'] / 1e3:9.0f} | {zr['zstd'] / zr['plain']:6.2f} |        |")
        print(f"| {'get 1 MiB str, zstd vs none (us/op)':46} | {zg['zstd'] / 1e3:9.0f} | "
              f"{zg['plain'] / 1e3:9.0f} | {zg['zstd'] / zg['plain']:6.2f} |        |")
        print(f"| {'1 MiB str stored, zstd vs none (bytes)':46} | {z_bytes:9d} | "
              f"{plain_big:9d} | {plain_big / z_bytes:5.0f}x | >= 3x  |")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
