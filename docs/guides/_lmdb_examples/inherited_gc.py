"""The second classic failure of LMDB wrappers under fork, which now simply works:
children never touch the Cache they inherited, yet it is garbage-collected in
them -- here by gc.collect() in Pool workers; interpreter shutdown does the same
in a forked child that exits normally -- while the parent keeps using it.

A plain LMDB wrapper closes its environment in a finalizer, so the collection
in the child does what an explicit close() does: it ends the parent's read
transaction through the shared reader table.  lmdbcache's finalizer, in a
forked child, releases nothing of LMDB.

    python inherited_gc.py [CACHE_DIR]       # default: a temporary directory
"""
import gc
import multiprocessing as mp
import os
import sys
import tempfile

import lmdbcache


class Model:
    """Some object of the application that holds the cache -- here inside a
    reference cycle, so only the garbage collector can free it."""

    def __init__(self, path):
        self.cache = lmdbcache.Cache(path)
        self.myself = self


model = None  # created by the parent before the pool forks its workers


def drop_inherited(x):
    global model
    model = None        # the child never used the cache: it just lets it go
    gc.collect()        # the cycle is collected: Model and its Cache are freed here
    return os.getpid(), x * x


def main(path):
    global model
    if "fork" not in mp.get_all_start_methods():
        print("OK: nothing to show: this platform has no fork()")
        return
    model = Model(path)
    model.cache["counter"] = 0
    print(f"parent {os.getpid()}: cache created in {path}")
    ctx = mp.get_context("fork")
    for round_ in range(3):
        assert model.cache["counter"] == round_  # the parent holds a read slot as it forks
        # maxtasksperchild=1: a fresh worker per task, each one inheriting the Model
        with ctx.Pool(2, maxtasksperchild=1) as pool:
            results = pool.map(drop_inherited, range(6))
        model.cache[("round", round_)] = [value for _, value in results]
        model.cache["counter"] += 1
        print(f"round {round_ + 1}: {len({pid for pid, _ in results})} children garbage-collected "
              f"the inherited Cache; parent counter = {model.cache['counter']}")
    assert [model.cache[("round", r)] for r in range(3)] == [[x * x for x in range(6)]] * 3
    model.cache.close()
    print("OK: the parent kept reading and writing while children garbage-collected the cache")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(os.path.join(tmp, "cache"))
