"""The cost of cache semantics, as ratios measured in one run on one machine.

    .venv/bin/python benchmarks/bench_semantics.py [--quick] [--n N]

Rows (median ns/op over rounds, round-robin so noise lands on all alike):

get, no ttl / get, ttl          the same cache, keys stored with and without a ttl
set, no size_limit / set, LRS   cache[k] = v without and with eviction enabled
                                (below the limit: the bookkeeping alone)
set, LRS at the limit           eviction at work: every write culls old entries
set / set_many per item         one transaction per item vs one for all
get / get_many per item         one read transaction per item vs one per 100 keys

Values are small dicts (~80 bytes pickled) unless the row says bytes.
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

import lmdbcache

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import cpu_model  # noqa: E402


def timed(fn, count):
    gc.disable()
    try:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) / count * 1e9
    finally:
        gc.enable()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args(argv)
    n = args.n or (2000 if args.quick else 20000)
    rounds = args.rounds or (3 if args.quick else 7)
    keys = ["key:%d" % i for i in range(n)]
    values = [{"id": i, "name": f"item{i}", "tags": ["a", "b"], "score": i * 0.5} for i in range(n)]
    bvalues = [b"v" * 64 for _ in range(n)]
    root = tempfile.mkdtemp(prefix="lmdbcache-bench-sem-")
    try:
        plain = lmdbcache.Cache(f"{root}/plain")  # read rows only: never overwritten
        ttlc = lmdbcache.Cache(f"{root}/plain")  # same file: ttl keys live beside plain keys
        setc = lmdbcache.Cache(f"{root}/set")
        bytesc = lmdbcache.Cache(f"{root}/bytes")
        lrs = lmdbcache.Cache(f"{root}/lrs", size_limit=1 << 30)
        # a limit the data exceeds, so writes evict as they go
        full = lmdbcache.Cache(f"{root}/full", size_limit=max(1 << 16, n * 60))
        for k, v in zip(keys, values):
            plain[k] = v
            ttlc.set("t" + k, v, ttl=3600)
        tkeys = ["t" + k for k in keys]
        for k, v in zip(keys, values):
            full[k] = v

        def get_plain():
            for k in keys:
                plain[k]

        def get_ttl():
            for k in tkeys:
                ttlc[k]

        def set_plain():
            for k, v in zip(keys, values):
                setc[k] = v

        def set_lrs():
            for k, v in zip(keys, values):
                lrs[k] = v

        def set_full():
            for k, v in zip(keys, values):
                full[k] = v

        pairs_b = list(zip(keys, bvalues))

        def set_bytes():
            for k, v in pairs_b:
                bytesc[k] = v

        def set_many_bytes():
            bytesc.set_many(pairs_b)

        def set_many_dicts():
            setc.set_many(list(zip(keys, values)))

        batches = [keys[i:i + 100] for i in range(0, n, 100)]

        def get_many():
            for batch in batches:
                plain.get_many(batch)

        rows = [
            ("get, no ttl", get_plain),
            ("get, ttl", get_ttl),
            ("set, no size_limit", set_plain),
            ("set, LRS below limit", set_lrs),
            ("set, LRS at the limit", set_full),
            ("set (dict)", set_plain),
            ("set_many per item (dict)", set_many_dicts),
            ("set (64 B bytes)", set_bytes),
            ("set_many per item (bytes)", set_many_bytes),
            ("get (dict)", get_plain),
            ("get_many per item (dict, 100/call)", get_many),
        ]
        results = {name: [] for name, _ in rows}
        for fn in dict(rows).values():
            fn()  # warm up
        for r in range(rounds):
            order = rows[r % len(rows):] + rows[: r % len(rows)]
            for name, fn in order:
                results[name].append(timed(fn, n))
        med = {name: statistics.median(v) for name, v in results.items()}

        print("lmdbcache semantics benchmark")
        print(f"  Python     {platform.python_implementation()} {platform.python_version()}")
        print(f"  CPU        {cpu_model()}")
        print(f"  liblmdb    {'.'.join(map(str, lmdbcache.lmdb_version()))}")
        print(f"  data       {n} keys, {rounds} rounds, median ns/op\n")
        for name, _ in rows:
            print(f"  {name:28s} {med[name]:10,.0f}")
        print()

        def check(label, ok, detail):
            print(f"  [{'PASS' if ok else 'FAIL'}] {label}: {detail}")

        print("TARGETS")
        r = med["get, ttl"] / med["get, no ttl"]
        check("get of a key with a ttl costs the same as without (within 10%)", r <= 1.10, f"{r:.2f}x")
        r = med["set, LRS below limit"] / med["set, no size_limit"]
        check("set with eviction enabled <= 1.5x set without", r <= 1.5, f"{r:.2f}x")
        r2 = med["set, LRS at the limit"] / med["set, no size_limit"]
        print(f"         (at the limit, evicting as it writes: {r2:.2f}x)")
        r = med["set (dict)"] / med["set_many per item (dict)"]
        rb = med["set (64 B bytes)"] / med["set_many per item (bytes)"]
        check("set_many >= 5x cheaper per item than set", max(r, rb) >= 5,
              f"{rb:.1f}x for bytes values, {r:.1f}x for dict values (pickling is per item either way)")
        r = med["get (dict)"] / med["get_many per item (dict, 100/call)"]
        check("get_many cheaper per item than get", r > 1, f"{r:.2f}x")
        for c in (plain, ttlc, setc, bytesc, lrs, full):
            c.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
