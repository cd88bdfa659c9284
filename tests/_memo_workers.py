"""Module-level memoized functions for tests/test_memoize.py's multi-process tests.

The tests run small driver programs (``python -c ...``) that import this module;
multiprocessing workers of every start method import it too.  The cache
directory comes from the environment variable ``LMDBCACHE_MEMO_DIR``, which the
test sets for the driver (workers inherit it).

Every function counts its computations with ``cache.incr(("calls", name))`` in
the cache's main keyspace, so a test can tell computations from cache hits
across all processes.
"""
import os
import time
import uuid

import lmdbcache

CACHE_DIR = os.environ.get("LMDBCACHE_MEMO_DIR")
if not CACHE_DIR:
    raise RuntimeError("set LMDBCACHE_MEMO_DIR before importing _memo_workers")

cache = lmdbcache.Cache(CACHE_DIR)


def calls(name):
    """How many times the function *name* was computed, in all processes."""
    return cache.get(("calls", name), 0)


@cache.memoize
def square(x):
    """A plain memoized function for the Pool tests: (x*x, computing pid)."""
    cache.incr(("calls", "square"))
    return x * x, os.getpid()


@cache.memoize(stampede=True)
def shared(key, seconds):
    """Slow enough that concurrent callers overlap; returns a token unique to the
    computation, so callers can tell whether they got the same result."""
    cache.incr(("calls", "shared"))
    time.sleep(seconds)
    return key, os.getpid(), uuid.uuid4().hex


@cache.memoize(stampede=True)  # lease_timeout: the default 60 s
def first_call_hangs(key, marker):
    """The first computation (in any process) creates *marker*, then sleeps 30 s
    holding the lease; later computations return at once."""
    n = cache.incr(("calls", "first_call_hangs"))
    if n == 1:
        with open(marker, "w"):
            pass
        time.sleep(30)
    return key, n


@cache.memoize
def classify(word):
    """Its code holds a frozenset of str constants (``in {...}``), whose iteration
    order depends on the interpreter's string hash seed."""
    cache.incr(("calls", "classify"))
    return word in {"alpha", "beta", "gamma", "delta", "epsilon"}


@cache.memoize
def count_words(words):
    """Takes a set of str: equal sets must share one entry in every process."""
    cache.incr(("calls", "count_words"))
    return len(words)


def _slow_cube(x):
    """Memoized by a plain call below: the module attribute ``_slow_cube`` is
    the undecorated function, so the wrapper cannot pickle by reference."""
    cache.incr(("calls", "cube"))
    return x ** 3, os.getpid()


fast_cube = cache.memoize(_slow_cube)
