"""Helpers for tests/test_fork.py that must live in an importable module.

multiprocessing pickles functions by reference, so the functions run by
``spawn``/``forkserver`` workers (and by every Pool) are defined here.  Run as a
script, this file also hosts two helper programs (see ``main``):

    python _workers.py fork-exits DIR ROUNDS
        the seed's "child drops the inherited cache" case, with children that end
        through a real interpreter exit (sys.exit, falling off the end of the
        script, an uncaught exception) -- impossible inside pytest's process.
    python _workers.py reader-table DIR
        answers each line on stdin with the pids holding slots in DIR's LMDB
        reader table (one JSON list per line), read with py-lmdb.
"""
import gc
import json
import os
import signal
import sys
import weakref

import lmdbcache

# Set by a test before it starts a fork-based pool: the workers inherit it.
GLOBAL_CACHE = None


# ---- pool and process workers ---------------------------------------------------


def pool_task(cache, i):
    """Read the parent's value, write (task, i) -> i*i, read it back."""
    seen = cache["parent"]
    cache[("task", i)] = i * i
    assert cache[("task", i)] == i * i
    return os.getpid(), seen


def global_pool_task(i):
    """Like pool_task, on the module-global Cache inherited through fork."""
    cache = GLOBAL_CACHE
    seen = cache["parent"]
    cache[("global", i)] = i * i
    assert cache[("global", i)] == i * i
    if i % 3 == 0:
        cache.close()  # closing the inherited (or reopened) cache must not matter
    return os.getpid(), seen


def process_main(cache, tag, expected):
    """Target of a multiprocessing.Process given the Cache as an argument."""
    assert cache["parent"] == expected, cache.get("parent")
    cache[("process", tag)] = os.getpid()
    assert cache[("process", tag)] == os.getpid()
    cache.close()
    assert cache["parent"] == expected  # a closed cache reopens on use


# ---- script mode: children that exit through the interpreter ---------------------

MODES = ("sys.exit", "fall-off-end", "uncaught-exception", "os._exit", "sigkill", "gc")
CACHE = None  # module global: torn down by the interpreter at exit


def _child(mode, i, touch):
    global CACHE
    if touch:
        assert CACHE["parent"] == i
        CACHE[("child", mode, i)] = i
    if mode == "sys.exit":
        sys.exit(0)
    if mode == "uncaught-exception":
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)  # keep the expected traceback out of the output
        raise RuntimeError("raised on purpose in the child")
    if mode == "os._exit":
        os._exit(0)
    if mode == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "gc":
        ref = weakref.ref(CACHE)
        node = {"cache": CACHE}
        node["self"] = node  # a cycle: only the collector frees it
        CACHE = None
        del node
        gc.collect()
        assert ref() is None, "the Cache was not freed"
        os._exit(0)
    # "fall-off-end": return to the top level; the script then ends normally.


def fork_exits(path, rounds):
    global CACHE
    CACHE = lmdbcache.Cache(path)
    CACHE["parent"] = 0
    expected_codes = {"sys.exit": 0, "fall-off-end": 0, "uncaught-exception": 1,
                      "os._exit": 0, "sigkill": -signal.SIGKILL, "gc": 0}
    for i in range(rounds):
        for mode in MODES:
            touch = (i + len(mode)) % 2 == 0
            assert CACHE["parent"] == i  # the parent holds a reader slot at fork time
            pid = os.fork()
            if pid == 0:
                _child(mode, i, touch)
                return "child"
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            assert code == expected_codes[mode], (mode, code)
            # The parent carries on reading and writing.
            assert CACHE["parent"] == i
            if touch:
                assert CACHE[("child", mode, i)] == i, (mode, i)
            else:
                assert ("child", mode, i) not in CACHE
            CACHE[("parent-after", mode, i)] = i
            assert CACHE[("parent-after", mode, i)] == i
        CACHE["parent"] = i + 1
    print(f"OK: {rounds} rounds x {len(MODES)} exit modes, {len(CACHE)} entries", flush=True)
    return "parent"


def reader_table(path):
    """Serve reader-table listings of the environment in `path`."""
    import lmdb

    env = lmdb.open(path, readonly=True, max_dbs=64, lock=True)
    for _ in sys.stdin:
        pids = []
        for line in env.readers().splitlines()[1:]:
            fields = line.split()
            if fields and fields[0].isdigit():
                pids.append(int(fields[0]))
        print(json.dumps(pids), flush=True)


def main(argv):
    if argv[1] == "fork-exits":
        fork_exits(argv[2], int(argv[3]))
    elif argv[1] == "reader-table":
        reader_table(argv[2])
    else:
        raise SystemExit(f"unknown mode {argv[1]!r}")


if __name__ == "__main__":
    main(sys.argv)
