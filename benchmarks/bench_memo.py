"""memoize hits against a plain cache.get and a joblib.Memory hit, in one run.

    .venv/bin/python benchmarks/bench_memo.py [--quick]

A function of two small arguments returning a small dict; every call is a hit.
Then a hit with a 1 MiB NumPy array argument.  Prints a PASS/FAIL line per goal
and exits 1 when any goal fails.
"""
from __future__ import annotations

import argparse
import os
import gc
import platform
import shutil
import statistics
import sys
import tempfile
import time

import joblib

import lmdbcache

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import cpu_model  # noqa: E402


NUMPY_HIT_GOAL_US = 150.0  # a memoize hit with a 1 MiB ndarray argument


def target(ok: bool, text: str) -> bool:
    print(f"  [{'PASS' if ok else 'FAIL'}] {text}")
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    results = small_hits(args.quick)
    print("\nBIG ARGUMENTS")
    results.append(numpy_hit(50 if args.quick else 200))
    failed = sum(not ok for ok in results)
    print(f"\n{'FAIL' if failed else 'PASS'}: {len(results) - failed} of {len(results)} goals met")
    return 1 if failed else 0


def small_hits(quick: bool) -> list:
    """memoize hits against cache.get and joblib.Memory; whether each goal passed."""
    n = 500 if quick else 5000
    nj = 100 if quick else 500  # joblib hits are slow: fewer calls
    rounds = 3 if quick else 7
    root = tempfile.mkdtemp(prefix="lmdbcache-bench-memo-")
    try:
        cache = lmdbcache.Cache(f"{root}/lc")

        @cache.memoize
        def features(a, b):
            return {"sum": a, "b": b, "name": "x" * 10}

        memory = joblib.Memory(f"{root}/joblib", verbose=0)

        @memory.cache
        def jfeatures(a, b):
            return {"sum": a, "b": b, "name": "x" * 10}

        for i in range(n):
            features(i, "ab")
        for i in range(nj):
            jfeatures(i, "ab")
        # the baseline reads as many distinct records as the memoized calls do
        # (a tuple key, a dict value): what memoize adds is its key building
        for i in range(n):
            cache[("plain", i)] = {"sum": i, "b": "ab", "name": "x" * 10}
        get = cache.get

        def memo_hits():
            for i in range(n):
                features(i, "ab")

        def plain_gets():
            for i in range(n):
                get(("plain", i))

        def joblib_hits():
            for i in range(nj):
                jfeatures(i, "ab")

        rows = [("memoize hit", memo_hits, n), ("cache.get", plain_gets, n),
                ("joblib.Memory hit", joblib_hits, nj)]
        res = {name: [] for name, _, _ in rows}
        for r in range(rounds):
            for name, fn, count in rows[r % 3:] + rows[:r % 3]:
                gc.disable()
                t0 = time.perf_counter()
                fn()
                res[name].append((time.perf_counter() - t0) / count * 1e9)
                gc.enable()
        med = {k: statistics.median(v) for k, v in res.items()}
        print("lmdbcache memoize benchmark")
        print(f"  Python     {platform.python_implementation()} {platform.python_version()}")
        print(f"  CPU        {cpu_model()}")
        print(f"  joblib     {joblib.__version__}")
        print(f"  calls      {n} memoize/get, {nj} joblib per round; {rounds} rounds, median ns/op\n")
        for name, _, _ in rows:
            print(f"  {name:20s} {med[name]:12,.0f}")
        print("\nTARGETS")
        r1 = med["joblib.Memory hit"] / med["memoize hit"]
        r2 = med["memoize hit"] / med["cache.get"]
        ok1 = target(r1 >= 30, f"memoize hit >= 30x faster than joblib.Memory hit: {r1:.0f}x")
        ok2 = target(r2 <= 2.5, f"memoize hit <= 2.5x a plain cache.get: {r2:.2f}x")
        cache.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return [ok1, ok2]




def numpy_hit(n: int = 200) -> bool:
    """A memo hit with a 1 MiB NumPy array argument, and the hash alone; True
    when the hit's median is within NUMPY_HIT_GOAL_US."""
    import numpy as np

    from lmdbcache import _core

    root = tempfile.mkdtemp(prefix="lmdbcache-bench-memo-np-")
    try:
        cache = lmdbcache.Cache(f"{root}/lc")

        @cache.memoize
        def total(a):
            return float(a.sum())

        arr = np.random.default_rng(0).random(1 << 17)  # 1 MiB of float64
        total(arr)
        import hashlib

        medians = {}
        for name, fn in (("memoize hit, 1 MiB ndarray", lambda: total(arr)),
                         ("_core._hash128(1 MiB)", lambda: _core._hash128(arr)),
                         ("hashlib.sha256(1 MiB) (before)", lambda: hashlib.sha256(arr).digest())):
            ts = []
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                ts.append((time.perf_counter() - t0) / n * 1e6)
            medians[name] = statistics.median(ts)
            print(f"  {name:32s} median {statistics.median(ts):8.1f} µs   min {min(ts):8.1f} µs")
        cache.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    hit = medians["memoize hit, 1 MiB ndarray"]
    print("\nTARGETS")
    return target(hit <= NUMPY_HIT_GOAL_US,
                  f"1 MiB ndarray argument hit <= {NUMPY_HIT_GOAL_US:.0f} µs: {hit:.1f} µs")


if __name__ == "__main__":
    sys.exit(main())
