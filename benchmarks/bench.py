"""lmdbcache against an in-memory floor, py-lmdb, diskcache, sqlite3 and joblib, side by side.

    .venv/bin/python benchmarks/bench.py            # full run (~1-2 minutes)
    .venv/bin/python benchmarks/bench.py --quick    # smoke run (seconds)
    .venv/bin/python benchmarks/bench.py --n 50000  # more items
    .venv/bin/python benchmarks/bench.py --json benchmarks/results.json  # also write the medians

Every implementation gets the same str keys ("key:%d") and the same values: small
dicts (~80 bytes pickled) and, for the bytes row, 64-byte ``bytes`` values.  Each
round times one full pass over the keys for every (operation, implementation)
pair, round-robin, so machine noise lands on all of them alike; the table shows
the median over the rounds of each round's mean ns/op.  The Python ``for`` loop
that drives the calls is included in every number (~10-20 ns/op).

Implementations:

floor       a dict of pickled bytes: get = pickle.loads(d[k]), set = d[k] = pickle.dumps(v, 5)
            -- what any in-memory pickling cache pays, with no persistence at all.
lmdbcache   cache[k], cache[k] = v, cache.get(k) on a miss.
py-lmdb     tuned: lmdb.open(dir, map_size=1<<30, sync=False); k.encode() per call,
            one read transaction per get (a fresh snapshot, what a cache must give),
            one write transaction per put, values pickle.dumps(v, 5).
diskcache   diskcache.Cache(dir): dc[k], dc.set(k, v), dc.get(k).
naive       py-lmdb as a first wrapper would use it: pickled keys, default sync=True.
sqlite3     a tuned key-value table in the standard library's sqlite3:
            CREATE TABLE kv(k TEXT PRIMARY KEY, v BLOB) WITHOUT ROWID; PRAGMA journal_mode=WAL;
            PRAGMA synchronous=NORMAL; autocommit (isolation_level=None), so every set is its
            own committed transaction, like the per-op commits of the others (WAL + NORMAL:
            no fsync per commit, only at checkpoints -- the same "survives a process crash,
            not necessarily a power cut" as lmdbcache and tuned py-lmdb); one prepared
            statement per get/set (SELECT v FROM kv WHERE k=? / INSERT OR REPLACE), values
            pickle.dumps(v, 5).

memoize hit (a separate table): joblib.Memory is a function cache, not a key-value
store, so it is measured at what it is for, next to lmdbcache's cache.memoize: a
decorated f(key) called on arguments it has seen (hit), and on arguments it has
not (miss: call + store, fresh arguments every pass).

--json PATH writes the medians (ns/op per operation and implementation) with the
machine description to PATH; benchmarks/plot.py turns that file into docs/img/bench.png.

The exit status is 0 unless something crashed; the TARGET lines are informational.
"""
from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import pickle
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time

import diskcache
import joblib
import lmdb

import lmdbcache

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import cpu_model  # noqa: E402

IMPLS = ("floor", "lmdbcache", "py-lmdb", "diskcache", "sqlite3", "naive")
MEMO_IMPLS = ("lmdbcache", "joblib")
MEMO_OPS = (
    ("memoize hit", "memo_hit"),
    ("memoize miss (call + store)", "memo_miss"),
)
OPS = (
    ("get hit   (dict value)", "get"),
    ("set       (dict value)", "set"),
    ("get miss  (.get)", "miss"),
    ("get hit   (64 B bytes)", "bytes"),
)


# -- data -----------------------------------------------------------------------------


def make_data(n: int):
    keys = ["key:%d" % i for i in range(n)]
    values = [
        {"id": i, "name": f"item{i}", "tags": ["a", "b"], "score": i * 0.5}
        for i in range(n)
    ]
    bkeys = ["bytes:%d" % i for i in range(n)]
    bvalues = [(b"%08d" % i) * 8 for i in range(n)]  # 64 bytes each, all distinct
    missing = ["missing:%d" % i for i in range(n)]
    return keys, values, bkeys, bvalues, missing


# -- environment description ----------------------------------------------------------


def filesystem_of(path: str) -> str:
    """The filesystem type the temp directories live on (fsync cost depends on it)."""
    best, fstype = "", "unknown"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1]
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                    best, fstype = mnt, parts[2]
    except OSError:
        pass
    return fstype


# -- timing ---------------------------------------------------------------------------


def timed(fn, count: int) -> float:
    """Run one full pass fn() with the collector off; return mean ns per op."""
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        fn()
        t1 = time.perf_counter_ns()
    finally:
        gc.enable()
    return (t1 - t0) / count


# -- the implementations --------------------------------------------------------------
#
# Each builder stores the data set, then returns {op: (pass_function, ops_per_pass)}.
# Pass functions bind everything they use as default arguments (fast locals) so the
# loops measure the calls, not global lookups.


def build_floor(data, n_set):
    keys, values, bkeys, bvalues, missing = data
    dumps, loads = pickle.dumps, pickle.loads
    d = {}
    for k, v in zip(keys, values):
        d[k] = dumps(v, 5)
    for k, v in zip(bkeys, bvalues):
        d[k] = dumps(v, 5)
    kv = list(zip(keys, values))

    def get(keys=keys, d=d, loads=loads):
        for k in keys:
            loads(d[k])

    def set_(kv=kv, d=d, dumps=dumps):
        for k, v in kv:
            d[k] = dumps(v, 5)

    def miss(missing=missing, get=d.get):
        for k in missing:
            get(k)

    def bget(bkeys=bkeys, d=d, loads=loads):
        for k in bkeys:
            loads(d[k])

    def check(i):
        assert loads(d[keys[i]]) == values[i] and loads(d[bkeys[i]]) == bvalues[i]
        assert d.get(missing[i]) is None

    n = len(keys)
    return {"get": (get, n), "set": (set_, n), "miss": (miss, n), "bytes": (bget, n), "check": check}, None


def build_lmdbcache(data, n_set, path):
    keys, values, bkeys, bvalues, missing = data
    cache = lmdbcache.Cache(path)
    for k, v in zip(keys, values):
        cache[k] = v
    for k, v in zip(bkeys, bvalues):
        cache[k] = v
    kv = list(zip(keys, values))

    def get(keys=keys, c=cache):
        for k in keys:
            c[k]

    def set_(kv=kv, c=cache):
        for k, v in kv:
            c[k] = v

    def miss(missing=missing, get=cache.get):
        for k in missing:
            get(k)

    def bget(bkeys=bkeys, c=cache):
        for k in bkeys:
            c[k]

    def check(i):
        assert cache[keys[i]] == values[i], "lmdbcache returned a wrong value"
        got = cache[bkeys[i]]
        assert type(got) is bytes and got == bvalues[i]
        assert cache.get(missing[i]) is None and missing[i] not in cache

    n = len(keys)
    ops = {"get": (get, n), "set": (set_, n), "miss": (miss, n), "bytes": (bget, n), "check": check}
    return ops, cache.close


def _lmdb_fill(env, pairs):
    with env.begin(write=True) as txn:
        for k, v in pairs:
            txn.put(k, v)


def build_pylmdb(data, n_set, path):
    keys, values, bkeys, bvalues, missing = data
    dumps, loads = pickle.dumps, pickle.loads
    env = lmdb.open(path, map_size=1 << 30, sync=False)
    _lmdb_fill(env, ((k.encode(), dumps(v, 5)) for k, v in zip(keys, values)))
    _lmdb_fill(env, ((k.encode(), dumps(v, 5)) for k, v in zip(bkeys, bvalues)))
    kv = list(zip(keys, values))
    begin = env.begin

    def get(keys=keys, begin=begin, loads=loads):
        for k in keys:
            with begin() as txn:
                loads(txn.get(k.encode()))

    def set_(kv=kv, begin=begin, dumps=dumps):
        for k, v in kv:
            with begin(write=True) as txn:
                txn.put(k.encode(), dumps(v, 5))

    def miss(missing=missing, begin=begin):
        for k in missing:
            with begin() as txn:
                txn.get(k.encode())

    def bget(bkeys=bkeys, begin=begin, loads=loads):
        for k in bkeys:
            with begin() as txn:
                loads(txn.get(k.encode()))

    def check(i):
        with begin() as txn:
            assert loads(txn.get(keys[i].encode())) == values[i]
            assert loads(txn.get(bkeys[i].encode())) == bvalues[i]
            assert txn.get(missing[i].encode()) is None

    n = len(keys)
    ops = {"get": (get, n), "set": (set_, n), "miss": (miss, n), "bytes": (bget, n), "check": check}
    return ops, env.close


def build_diskcache(data, n_set, path):
    keys, values, bkeys, bvalues, missing = data
    dc = diskcache.Cache(path)
    with dc.transact():
        for k, v in zip(keys, values):
            dc.set(k, v)
        for k, v in zip(bkeys, bvalues):
            dc.set(k, v)
    kv = list(zip(keys[:n_set], values[:n_set]))

    def get(keys=keys, dc=dc):
        for k in keys:
            dc[k]

    def set_(kv=kv, set=dc.set):
        for k, v in kv:
            set(k, v)

    def miss(missing=missing, get=dc.get):
        for k in missing:
            get(k)

    def bget(bkeys=bkeys, dc=dc):
        for k in bkeys:
            dc[k]

    def check(i):
        assert dc[keys[i]] == values[i] and dc[bkeys[i]] == bvalues[i]
        assert dc.get(missing[i]) is None

    n = len(keys)
    ops = {"get": (get, n), "set": (set_, len(kv)), "miss": (miss, n), "bytes": (bget, n), "check": check}
    return ops, dc.close


def build_naive(data, n_set, path):
    keys, values, bkeys, bvalues, missing = data
    dumps, loads = pickle.dumps, pickle.loads
    env = lmdb.open(path, map_size=1 << 30)  # sync=True: the default
    # Filled in one transaction (fast); only the set row pays one fsync per write.
    _lmdb_fill(env, ((dumps(k), dumps(v)) for k, v in zip(keys, values)))
    _lmdb_fill(env, ((dumps(k), dumps(v)) for k, v in zip(bkeys, bvalues)))
    kv = list(zip(keys[:n_set], values[:n_set]))
    begin = env.begin

    def get(keys=keys, begin=begin, dumps=dumps, loads=loads):
        for k in keys:
            with begin() as txn:
                loads(txn.get(dumps(k)))

    def set_(kv=kv, begin=begin, dumps=dumps):
        for k, v in kv:
            with begin(write=True) as txn:
                txn.put(dumps(k), dumps(v))

    def miss(missing=missing, begin=begin, dumps=dumps):
        for k in missing:
            with begin() as txn:
                txn.get(dumps(k))

    def bget(bkeys=bkeys, begin=begin, dumps=dumps, loads=loads):
        for k in bkeys:
            with begin() as txn:
                loads(txn.get(dumps(k)))

    def check(i):
        with begin() as txn:
            assert loads(txn.get(dumps(keys[i]))) == values[i]
            assert loads(txn.get(dumps(bkeys[i]))) == bvalues[i]
            assert txn.get(dumps(missing[i])) is None

    n = len(keys)
    ops = {"get": (get, n), "set": (set_, len(kv)), "miss": (miss, n), "bytes": (bget, n), "check": check}
    return ops, env.close


def build_sqlite(data, n_set, path):
    keys, values, bkeys, bvalues, missing = data
    dumps, loads = pickle.dumps, pickle.loads
    os.makedirs(path, exist_ok=True)
    db = sqlite3.connect(os.path.join(path, "kv.sqlite3"), isolation_level=None)  # autocommit
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE kv(k TEXT PRIMARY KEY, v BLOB) WITHOUT ROWID")
    db.execute("BEGIN")  # the fill in one transaction (fast); the set row commits per write
    db.executemany("INSERT INTO kv VALUES (?, ?)", ((k, dumps(v, 5)) for k, v in zip(keys, values)))
    db.executemany("INSERT INTO kv VALUES (?, ?)", ((k, dumps(v, 5)) for k, v in zip(bkeys, bvalues)))
    db.execute("COMMIT")
    kv = list(zip(keys[:n_set], values[:n_set]))
    execute = db.execute
    q_get = "SELECT v FROM kv WHERE k = ?"
    q_set = "INSERT OR REPLACE INTO kv VALUES (?, ?)"

    def get(keys=keys, execute=execute, loads=loads, q=q_get):
        for k in keys:
            loads(execute(q, (k,)).fetchone()[0])

    def set_(kv=kv, execute=execute, dumps=dumps, q=q_set):
        for k, v in kv:
            execute(q, (k, dumps(v, 5)))

    def miss(missing=missing, execute=execute, q=q_get):
        for k in missing:
            execute(q, (k,)).fetchone()

    def bget(bkeys=bkeys, execute=execute, loads=loads, q=q_get):
        for k in bkeys:
            loads(execute(q, (k,)).fetchone()[0])

    def check(i):
        assert loads(execute(q_get, (keys[i],)).fetchone()[0]) == values[i]
        assert loads(execute(q_get, (bkeys[i],)).fetchone()[0]) == bvalues[i]
        assert execute(q_get, (missing[i],)).fetchone() is None

    n = len(keys)
    ops = {"get": (get, n), "set": (set_, len(kv)), "miss": (miss, n), "bytes": (bget, n), "check": check}
    return ops, db.close


# -- memoize: lmdbcache's cache.memoize against joblib.Memory ----------------------------


def _compute(key):
    """The memoized function's body: cheap, so the numbers are the caches' overhead."""
    return {"key": key, "tags": ["a", "b"], "score": 0.5}


def _memo_ops(cached, keys, n_miss):
    """{op: (pass, count)} for a memoized f(key): hits over *keys*, misses on fresh keys."""
    fresh = itertools.count()

    def hit(keys=keys, f=cached):
        for k in keys:
            f(k)

    def miss(f=cached, fresh=fresh, n=n_miss):
        for i in itertools.islice(fresh, n):
            f("fresh:%d" % i)

    for k in keys:  # warm: every hit key has been called once
        cached(k)

    def check(i):
        k = keys[i % len(keys)]
        assert cached(k) == _compute(k)

    return {"memo_hit": (hit, len(keys)), "memo_miss": (miss, n_miss), "check": check}


def build_memo_lmdbcache(keys, n_miss, path):
    cache = lmdbcache.Cache(path)
    return _memo_ops(cache.memoize(_compute), keys, n_miss), cache.close


def build_memo_joblib(keys, n_miss, path):
    mem = joblib.Memory(path, verbose=0)
    return _memo_ops(mem.cache(_compute), keys, n_miss), None


# -- report ---------------------------------------------------------------------------


def fmt_ns(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 100_000:
        return f"{x / 1000:,.0f} us"
    return f"{x:,.0f}"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: fewer items and rounds")
    ap.add_argument("--n", type=int, default=None, help="items per pass (default 20000; 2000 with --quick)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 7; 3 with --quick)")
    ap.add_argument("--dir", default=None, help="parent directory for the temp stores (default: $TMPDIR)")
    ap.add_argument("--json", default=None, metavar="PATH",
                    help="also write the medians and the machine description to PATH (for plot.py)")
    args = ap.parse_args(argv)

    n = args.n if args.n is not None else (2_000 if args.quick else 20_000)
    rounds = args.rounds if args.rounds is not None else (3 if args.quick else 7)
    if n < 1 or rounds < 1:
        ap.error("--n and --rounds must be at least 1")
    n_dc_set = max(1, min(n, n // 10))       # diskcache.set: ~10x fewer items
    n_naive_set = max(1, min(n, 300 if not args.quick else 30))  # an fsync per write
    n_memo_lc = max(1, min(n, 5_000))                          # memoize hits, lmdbcache
    n_memo_jl = max(1, min(n, 500 if not args.quick else 100))  # joblib hits: ~10-100 us each
    n_memo_miss = 200 if not args.quick else 20                 # joblib misses: ~ms each

    root = tempfile.mkdtemp(prefix="lmdbcache-bench-", dir=args.dir)
    paths = {name: os.path.join(root, name) for name in IMPLS[1:]}
    paths.update({"memo-" + name: os.path.join(root, "memo-" + name) for name in MEMO_IMPLS})
    closers = []
    try:
        data = make_data(n)
        pickled = [len(pickle.dumps(v, 5)) for v in data[1]]
        print("lmdbcache benchmark")
        print(f"  CPU          {cpu_model()} ({os.cpu_count()} logical CPUs)")
        print(f"  Python       {platform.python_implementation()} {platform.python_version()} ({sys.executable})")
        print(f"  liblmdb      {'.'.join(map(str, lmdbcache.lmdb_version()))}")
        print(f"  lmdbcache    {lmdbcache.__version__} ({os.path.dirname(lmdbcache.__file__)})")
        print(f"  py-lmdb      {lmdb.__version__} (liblmdb {'.'.join(map(str, lmdb.version()))})")
        print(f"  diskcache    {diskcache.__version__}")
        print(f"  sqlite3      SQLite {sqlite3.sqlite_version} (WAL, synchronous=NORMAL, autocommit)")
        print(f"  joblib       {joblib.__version__}")
        print(f"  stores in    {root} ({filesystem_of(os.path.realpath(root))})")
        print(f"  data         {n:,} str keys 'key:%d'; dict values {min(pickled)}-{max(pickled)} B pickled "
              f"(mean {statistics.mean(pickled):.0f}); 64 B bytes values")
        print(f"  rounds       {rounds}, round-robin; each cell = median over rounds of the round's mean ns/op")
        print(f"  fewer items  diskcache and sqlite3 set: {n_dc_set:,} per pass; naive set (fsync per write): "
              f"{n_naive_set:,} per pass")
        print(f"  memoize      hits: lmdbcache {n_memo_lc:,}, joblib {n_memo_jl:,} per pass; "
              f"misses (fresh args): {n_memo_miss:,} per pass each")
        print(flush=True)

        t_setup = time.perf_counter()
        impls = {}
        impls["floor"], _ = build_floor(data, n)
        impls["lmdbcache"], c = build_lmdbcache(data, n, paths["lmdbcache"])
        closers.append(c)
        impls["py-lmdb"], c = build_pylmdb(data, n, paths["py-lmdb"])
        closers.append(c)
        impls["diskcache"], c = build_diskcache(data, n_dc_set, paths["diskcache"])
        closers.append(c)
        impls["sqlite3"], c = build_sqlite(data, n_dc_set, paths["sqlite3"])
        closers.append(c)
        impls["naive"], c = build_naive(data, n_naive_set, paths["naive"])
        closers.append(c)
        memo = {}
        memo["lmdbcache"], c = build_memo_lmdbcache(data[0][:n_memo_lc], n_memo_miss, paths["memo-lmdbcache"])
        closers.append(c)
        memo["joblib"], _ = build_memo_joblib(data[0][:n_memo_jl], n_memo_miss, paths["memo-joblib"])
        t_setup = time.perf_counter() - t_setup

        # Warm-up pass (page cache, branch predictors, lazily built structures).
        for _, op in OPS:
            for name in IMPLS:
                fn, count = impls[name][op]
                timed(fn, count)
        for _, op in MEMO_OPS:
            for name in MEMO_IMPLS:
                fn, count = memo[name][op]
                timed(fn, count)

        samples = {(op, name): [] for _, op in OPS for name in IMPLS}
        msamples = {(op, name): [] for _, op in MEMO_OPS for name in MEMO_IMPLS}
        t_run = time.perf_counter()
        for r in range(rounds):
            gc.collect()
            order = IMPLS[r % len(IMPLS):] + IMPLS[: r % len(IMPLS)]  # rotate who goes first
            for _, op in OPS:
                for name in order:
                    fn, count = impls[name][op]
                    samples[(op, name)].append(timed(fn, count))
            for _, op in MEMO_OPS:
                for name in MEMO_IMPLS[r % 2:] + MEMO_IMPLS[: r % 2]:
                    fn, count = memo[name][op]
                    msamples[(op, name)].append(timed(fn, count))
            print(f"  round {r + 1}/{rounds} done ({time.perf_counter() - t_run:.1f} s)", flush=True)
        t_run = time.perf_counter() - t_run
        print()

        med = {key: statistics.median(v) for key, v in samples.items()}
        mmed = {key: statistics.median(v) for key, v in msamples.items()}

        # The table.
        cols = list(IMPLS)
        ratio_cols = ["lc/floor", "py-lmdb/lc", "dc/lc", "sq/lc", "naive/lc"]
        w0, w = 24, 11
        header = f"{'ns/op (median)':<{w0}}" + "".join(f"{c:>{w}}" for c in cols) + "  |" + "".join(
            f"{c:>{max(len(c) + 2, 10)}}" for c in ratio_cols)
        print(header)
        print("-" * len(header))
        for label, op in OPS:
            lc = med[(op, "lmdbcache")]
            row = f"{label:<{w0}}" + "".join(f"{fmt_ns(med[(op, c)]):>{w}}" for c in cols) + "  |"
            ratios = [lc / med[(op, "floor")]] + [med[(op, c)] / lc
                                                  for c in ("py-lmdb", "diskcache", "sqlite3", "naive")]
            row += "".join(f"{fmt_ratio(x):>{max(len(c) + 2, 10)}}" for c, x in zip(ratio_cols, ratios))
            print(row)
        print()
        print("  lc/floor: lmdbcache time / floor time (< 1: lmdbcache beats the in-memory dict+pickle floor).")
        print("  py-lmdb/lc, dc/lc (diskcache), sq/lc (sqlite3), naive/lc: how many times faster lmdbcache "
              "is than that one.")
        print(f"  diskcache and sqlite3 set measured over {n_dc_set:,} items per pass, naive set over "
              f"{n_naive_set:,} (one fsync each); every other cell over {n:,}.")
        print()
        mheader = f"{'ns/op (median)':<{w0 + 4}}" + "".join(f"{c:>{w}}" for c in MEMO_IMPLS) + "  |" + \
            f"{'joblib/lc':>{w}}"
        print(mheader)
        print("-" * len(mheader))
        for label, op in MEMO_OPS:
            lc, jl = mmed[(op, "lmdbcache")], mmed[(op, "joblib")]
            print(f"{label:<{w0 + 4}}" + "".join(f"{fmt_ns(mmed[(op, c)]):>{w}}" for c in MEMO_IMPLS)
                  + "  |" + f"{fmt_ratio(jl / lc):>{w}}")
        print()
        print("  A memoized f(key) (cache.memoize / joblib.Memory.cache): hit = called on seen arguments,")
        print("  miss = first call on fresh arguments (runs f, stores the result).")
        spread = max(
            (max(v) - min(v)) / statistics.median(v) for (op, name), v in samples.items() if name == "lmdbcache"
        )
        print(f"  largest lmdbcache round-to-round spread: {spread * 100:.0f}% of the median.")
        print(f"  setup {t_setup:.1f} s, timed rounds {t_run:.1f} s.")
        print()

        # The targets.
        def check(ok: bool, text: str) -> None:
            print(f"  [{'PASS' if ok else 'FAIL'}] {text}")

        floor_get, lc_get = med[("get", "floor")], med[("get", "lmdbcache")]
        pl_get = med[("get", "py-lmdb")]
        floor_b, lc_b = med[("bytes", "floor")], med[("bytes", "lmdbcache")]
        lc_set, dc_set, pl_set = med[("set", "lmdbcache")], med[("set", "diskcache")], med[("set", "py-lmdb")]
        print("TARGETS")
        check(lc_get <= 1.4 * floor_get,
              f"cache[k] hit <= 1.4x dict+pickle floor: {lc_get:,.0f} vs {floor_get:,.0f} ns "
              f"({lc_get / floor_get:.2f}x)")
        check(pl_get / lc_get >= 1.5,
              f"cache[k] hit >= 1.5x faster than tuned py-lmdb get: {lc_get:,.0f} vs {pl_get:,.0f} ns "
              f"({pl_get / lc_get:.2f}x faster)")
        check(lc_b < floor_b,
              f"bytes value read faster than the floor's bytes get: {lc_b:,.0f} vs {floor_b:,.0f} ns "
              f"({lc_b / floor_b:.2f}x)")
        check(dc_set / lc_set >= 15,
              f"cache[k]=v >= 15x faster than diskcache.set: {lc_set:,.0f} vs {dc_set:,.0f} ns "
              f"({dc_set / lc_set:.1f}x faster)")
        check(lc_set < pl_set,
              f"cache[k]=v faster than tuned py-lmdb put: {lc_set:,.0f} vs {pl_set:,.0f} ns "
              f"({pl_set / lc_set:.2f}x faster)")

        # A benchmark of wrong answers is worthless: spot-check every store after the runs.
        for name in IMPLS:
            for i in (0, n // 2, n - 1):
                impls[name]["check"](i)
        for name in MEMO_IMPLS:
            for i in (0, n // 2, n - 1):
                memo[name]["check"](i)
        print("  (values read back and checked in every implementation after the timed rounds)")

        if args.json:
            result = {
                "machine": {
                    "cpu": cpu_model(),
                    "logical_cpus": os.cpu_count(),
                    "python": f"{platform.python_implementation()} {platform.python_version()}",
                    "platform": platform.platform(),
                    "filesystem": filesystem_of(os.path.realpath(root)),
                },
                "versions": {
                    "lmdbcache": lmdbcache.__version__,
                    "liblmdb": ".".join(map(str, lmdbcache.lmdb_version())),
                    "py-lmdb": lmdb.__version__,
                    "diskcache": diskcache.__version__,
                    "sqlite": sqlite3.sqlite_version,
                    "joblib": joblib.__version__,
                },
                "run": {
                    "n": n, "rounds": rounds, "quick": bool(args.quick),
                    "n_set": {"diskcache": n_dc_set, "sqlite3": n_dc_set, "naive": n_naive_set},
                    "n_memo": {"lmdbcache": n_memo_lc, "joblib": n_memo_jl, "miss": n_memo_miss},
                    "date": time.strftime("%Y-%m-%d"),
                },
                "unit": "ns/op, median over rounds of each round's mean",
                "tables": [
                    {"title": "key-value get/set", "impls": list(IMPLS),
                     "ops": [{"op": op, "label": " ".join(label.split()),
                              "ns": {name: round(med[(op, name)], 1) for name in IMPLS}}
                             for label, op in OPS]},
                    {"title": "memoize", "impls": list(MEMO_IMPLS),
                     "ops": [{"op": op, "label": label,
                              "ns": {name: round(mmed[(op, name)], 1) for name in MEMO_IMPLS}}
                             for label, op in MEMO_OPS]},
                ],
            }
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
                f.write("\n")
            print(f"  medians written to {args.json}")
    finally:
        for close in closers:
            try:
                close()
            except Exception as exc:  # report, but keep cleaning up
                print(f"warning: close failed: {exc!r}", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
