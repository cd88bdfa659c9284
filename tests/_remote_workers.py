"""Workers for tests/test_remote.py: each process is one "machine" (its own
local directory) sharing a Redis.  Importable so spawn workers find them."""
import os
import time

import lmdbcache


def machine_put_get(args):
    """Machine m stores its share, then reads everybody's."""
    url, path, m, n_machines, n = args
    c = lmdbcache.Cache(path, remote=url)
    for i in range(n):
        c.set(("k", m, i), {"m": m, "i": i, "blob": b"x" * 100})
    # wait for the others' results (they arrive through Redis)
    deadline = time.time() + 30
    while time.time() < deadline and any(c.get(("k", mm, n - 1)) is None
                                         for mm in range(n_machines)):
        time.sleep(0.01)
    out = {}
    for mm in range(n_machines):
        for i in range(n):
            v = c.get(("k", mm, i))
            out[(mm, i)] = v["i"] if v is not None and v["m"] == mm else None
    # a copy fetched while invalidations of other keys arrived is not kept
    # (the conservative race check): once writes are over, a read keeps it
    time.sleep(0.5)
    for mm in range(n_machines):
        for i in range(n):
            c.get(("k", mm, i))
    local = sum(1 for mm in range(n_machines) for i in range(n)
                if c._get_raw(("k", mm, i)) is not None)
    return out, local


def incr_worker(args):
    url, path, n = args
    c = lmdbcache.Cache(path, remote=url)
    for _ in range(n):
        c.incr("counter")
    return os.getpid()


def stampede_worker(args):
    url, path, start_at = args
    import redis

    global RAW
    RAW = redis.Redis.from_url(url)
    c = lmdbcache.Cache(path, remote=url)
    expensive = c.memoize(stampede=True)(_expensive)

    while time.time() < start_at:
        time.sleep(0.001)
    return expensive(7)


RAW = None


def _expensive(x):
    RAW.incr("test:computations")
    time.sleep(0.5)
    return x * 10


def pool_task(args):
    url, path, i = args
    c = lmdbcache.Cache(path, remote=url)
    c.set(("pool", i), i * i)
    return c.get(("pool", i)), os.getpid()


GLOBAL_CACHE = None


def pool_task_inherited(i):
    c = GLOBAL_CACHE
    c.set(("inh", i), i + 1)
    return c.get(("inh", i))


def coherence_reader(url, path, key, n, q, ready):
    """Read key in a tight loop; report when each new value is first seen."""
    c = lmdbcache.Cache(path, remote=url)
    c.get(key)
    ready.set()
    last = c.get(key)
    seen = []
    deadline = time.time() + 60
    while len(seen) < n and time.time() < deadline:
        v = c.get(key)
        if v != last:
            seen.append((v, time.time()))
            last = v
    q.put(seen)
