"""Reference leaks: every operation, repeated many times, must not grow memory.

A leaked reference per call (a bytes object, a key, a tuple) grows the memory
that tracemalloc sees by tens of bytes per call, i.e. by megabytes over these
loops; the bound below is far under that and far above allocator noise.
"""
import gc
import tracemalloc

import pytest

import lmdbcache

ROUNDS = 3000
BOUND = 64 * 1024  # bytes


def _growth(fn):
    for _ in range(200):
        fn()  # warm up caches, free lists, the read txn
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(ROUNDS):
            fn()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return after - before


@pytest.fixture
def filled(tmp_path):
    c = lmdbcache.Cache(str(tmp_path / "c"))
    for i in range(100):
        c[f"k{i}"] = {"i": i, "s": "x" * 20}
    c[("t", 1)] = b"bytes"
    c["L" * 700] = "long key"
    ns = c.namespace("ns")
    ns["a"] = 1
    yield c
    ns.close()
    c.close()


OPS = {
    "getitem hit": lambda c: c["k1"],
    "get miss": lambda c: c.get("missing"),
    "getitem miss": lambda c: pytest.raises(KeyError, c.__getitem__, "missing"),
    "long key": lambda c: c["L" * 700],
    "tuple key": lambda c: c[("t", 1)],
    "contains": lambda c: "k2" in c,
    "len": lambda c: len(c),
    "setitem": lambda c: c.__setitem__("w", {"a": [1, 2]}),
    "set ttl": lambda c: c.set("w2", b"x", ttl=100),
    "add": lambda c: c.add("k1", 0),
    "incr": lambda c: c.incr("counter"),
    "pop": lambda c: (c.__setitem__("p", "v"), c.pop("p")),
    "pop default": lambda c: c.pop("nope", None),
    "delete": lambda c: (c.__setitem__("d", 1), c.delete("d")),
    "touch": lambda c: c.touch("k3", ttl=1000),
    "get_many": lambda c: c.get_many(["k1", "k2", "missing", ("t", 1)]),
    "set_many": lambda c: c.set_many({"m1": 1, "m2": [2]}),
    "delete_many": lambda c: c.delete_many(["m1", "m2", "nope"]),
    "iterate items": lambda c: list(c.items()),
    "transaction": lambda c: _txn(c),
    "stats": lambda c: c.stats(),
    "unpicklable value": lambda c: pytest.raises(Exception, c.__setitem__, "u", lambda: 0),
    "unhashable key": lambda c: pytest.raises(TypeError, c.__setitem__, [1], 0),
}


def _txn(c):
    with c.transaction():
        c["tx"] = 1
        c["tx"]


@pytest.mark.parametrize("name", sorted(OPS))
def test_repeated_operation_does_not_leak(filled, name):
    op = OPS[name]
    growth = _growth(lambda: op(filled))
    assert growth < BOUND, f"{name}: memory grew by {growth} bytes over {ROUNDS} calls"


def test_opening_and_closing_does_not_leak(tmp_path):
    path = str(tmp_path / "oc")
    lmdbcache.Cache(path).close()

    def cycle():
        c = lmdbcache.Cache(path)
        c["x"] = 1
        c.close()

    global ROUNDS
    saved, ROUNDS = ROUNDS, 300
    try:
        growth = _growth(cycle)
    finally:
        ROUNDS = saved
    assert growth < BOUND, f"open/close grew memory by {growth} bytes"
