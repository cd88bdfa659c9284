"""Correct usage, the way the LMDB rules ask for it: every worker opens its own Cache.

Each worker of a multiprocessing Pool opens the cache in its initializer, so no
LMDB environment ever crosses a fork.  This pattern was always right and stays
right with lmdbcache -- it is simply no longer required (see inherited_close.py
and inherited_gc.py).

    python correct_usage.py [CACHE_DIR]      # default: a temporary directory
"""
import multiprocessing as mp
import os
import sys
import tempfile

import lmdbcache

cache = None  # this worker's own Cache, opened by init_worker


def init_worker(path):
    global cache
    cache = lmdbcache.Cache(path)


def slow_square(x):
    """An "expensive" function whose results are cached across processes."""
    key = ("square", x)
    if key not in cache:
        cache[key] = x * x
    return os.getpid(), cache[key]


def main(path):
    ctx = mp.get_context()  # the platform's default start method
    print(f"cache directory: {path}")
    print(f"start method: {ctx.get_start_method()}")
    with ctx.Pool(4, initializer=init_worker, initargs=(path,)) as pool:
        results = pool.map(slow_square, range(20))
    pids = {pid for pid, _ in results}
    assert [value for _, value in results] == [x * x for x in range(20)]
    print(f"{len(pids)} worker processes computed and cached 20 squares")

    with lmdbcache.Cache(path) as parent_cache:  # the parent's own Cache
        cached = {x: parent_cache[("square", x)] for x in range(20)}
    assert cached == {x: x * x for x in range(20)}
    print(f"the parent reads them back: square(7) = {cached[7]}, square(19) = {cached[19]}")
    print("OK: each worker opened its own Cache; the parent sees all 20 results")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(os.path.join(tmp, "cache"))
