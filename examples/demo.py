"""An expensive function cached with lmdbcache across a fork-based process pool.

    .venv/bin/python examples/demo.py                  # cache in a temp dir, removed after
    .venv/bin/python examples/demo.py --dir ./democache --keep

The Cache is created once, in the parent, BEFORE the pool forks its workers; the
workers simply use the module-global ``cache`` they inherited.  The same batch of
inputs is processed twice: the first (cold) run computes every result and stores
it, the second (warm) run finds every result in the cache -- including the ones
written by other worker processes.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time

import lmdbcache

cache: lmdbcache.Cache | None = None  # set in main(), inherited by the forked workers


def expensive_features(item_id: int) -> dict:
    """Stands in for something slow: a model call, a feature pipeline, a remote API."""
    time.sleep(0.2)
    digest = hashlib.sha256(f"input-{item_id}".encode()).digest()
    signal = [b / 255.0 for b in digest]
    mean = sum(signal) / len(signal)
    return {
        "id": item_id,
        "mean": round(mean, 6),
        "std": round(math.sqrt(sum((x - mean) ** 2 for x in signal) / len(signal)), 6),
        "peak": max(signal),
        "fingerprint": digest[:8].hex(),
    }


def features(item_id: int) -> tuple[dict, bool, int]:
    """Cached wrapper, run in the workers: returns (result, computed?, worker pid)."""
    key = f"features:v1:{item_id}"
    result = cache.get(key)
    if result is not None:
        return result, False, os.getpid()
    result = expensive_features(item_id)
    cache[key] = result
    return result, True, os.getpid()


def run_batch(pool, inputs: list[int]) -> tuple[float, list[dict], int, int]:
    t0 = time.perf_counter()
    out = pool.map(features, inputs, chunksize=1)
    elapsed = time.perf_counter() - t0
    computed = sum(1 for _, was_computed, _ in out if was_computed)
    workers = len({pid for _, _, pid in out})
    return elapsed, [r for r, _, _ in out], computed, workers


def main(argv=None) -> int:
    global cache
    ap = argparse.ArgumentParser(description="lmdbcache across a fork-based multiprocessing.Pool")
    ap.add_argument("--dir", help="cache directory (default: a new temp directory)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the cache directory afterwards (a --dir that already existed is always kept)")
    ap.add_argument("--n", type=int, default=16, help="inputs per batch (default 16)")
    ap.add_argument("--workers", type=int, default=4, help="pool processes (default 4)")
    args = ap.parse_args(argv)

    if args.dir is None:
        path, created = tempfile.mkdtemp(prefix="lmdbcache-demo-"), True
    else:  # only ever remove a directory this run created
        path, created = os.path.abspath(args.dir), not os.path.exists(args.dir)
    inputs = list(range(args.n))

    try:
        # 1. The cache is opened in the parent, before any fork.
        cache = lmdbcache.Cache(path)
        print(f"cache: {path}  ({len(cache)} entries at start)")
        print(f"batch: {len(inputs)} inputs, expensive_features() sleeps 0.2 s each, "
              f"fork pool of {args.workers} workers\n")

        # 2. The workers inherit the module-global `cache` through fork().
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(args.workers) as pool:
            cold_s, cold, cold_computed, cold_workers = run_batch(pool, inputs)
            print(f"cold run: {cold_s:6.3f} s  ({cold_computed} computed, "
                  f"{len(inputs) - cold_computed} from cache, {cold_workers} worker processes)")

            warm_s, warm, warm_computed, warm_workers = run_batch(pool, inputs)
            print(f"warm run: {warm_s:6.3f} s  ({len(inputs) - warm_computed} from cache, "
                  f"{warm_computed} computed, {warm_workers} worker processes)")

        print(f"speedup:  {cold_s / warm_s:,.0f}x")

        # 3. The parent sees everything the workers wrote, and the answers agree.
        seen = sum(1 for i in inputs if f"features:v1:{i}" in cache)
        assert warm == cold, "cached results differ from computed ones"
        print(f"\nparent sees {seen}/{len(inputs)} results written by the workers; "
              f"warm results == cold results: {warm == cold}")
        print(f"example: features({inputs[-1]}) = {cache.get(f'features:v1:{inputs[-1]}')}")
        cache.close()
    finally:
        if args.keep or not created:
            print(f"\nkept the cache in {path} (run again with --dir {path} to start warm)")
        else:
            shutil.rmtree(path, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
