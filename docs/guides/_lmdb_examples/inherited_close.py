"""The first classic failure of LMDB wrappers under fork, which now simply works:
children close the Cache they inherited through fork() while the parent keeps
using it.

With a plain LMDB wrapper that keeps a read transaction between reads, the
child's close() ends the parent's read transaction through the shared reader
table, and the parent's next read fails with MDB_BAD_RSLOT (py-lmdb:
BadRslotError).  lmdbcache notices the fork and
never hands an inherited environment back to LMDB.

    python inherited_close.py [CACHE_DIR]    # default: a temporary directory
"""
import multiprocessing as mp
import os
import sys
import tempfile

import lmdbcache

cache = None  # created by the parent before the pool forks its workers


def use_then_close(x):
    value = cache["base"] + x       # read in the child...
    cache[("child", x)] = value     # ...write in the child...
    cache.close()                   # ...and close the inherited Cache
    return os.getpid(), value


def main(path):
    global cache
    if "fork" not in mp.get_all_start_methods():
        print("OK: nothing to show: this platform has no fork()")
        return
    cache = lmdbcache.Cache(path)
    cache["base"] = 100
    print(f"parent {os.getpid()}: cache created in {path}, base = {cache['base']}")
    ctx = mp.get_context("fork")
    for round_ in range(3):
        assert cache["base"] == 100 + round_  # the parent holds a read slot as it forks
        with ctx.Pool(2) as pool:
            results = pool.map(use_then_close, range(round_ * 10, round_ * 10 + 10))
        # The parent carries on reading and writing, and sees the children's writes.
        children = {x: cache[("child", x)] for x in range(round_ * 10, round_ * 10 + 10)}
        assert list(children.values()) == [value for _, value in results]
        cache["base"] += 1
        print(f"round {round_ + 1}: {len({pid for pid, _ in results})} children closed their "
              f"inherited Cache; parent reads {len(children)} child writes, base = {cache['base']}")
    count = len(cache)
    cache.close()
    print(f"OK: the parent kept reading and writing ({count} entries) while children closed the cache")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(os.path.join(tmp, "cache"))
