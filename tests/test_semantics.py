"""Cache semantics: expiry, bounded size and eviction, atomic operations across
processes, batches, transactions, stats and info, namespaces, asyncio, the
durability guard, and bad input.

Every test states what a user does and checks what they rely on.  The
cross-process tests run real processes (the ``fork`` start method, and fresh
interpreters through ``subprocess`` where the process must exit abruptly).
Every wait has a timeout, so a hang fails the test instead of blocking it.
"""
import asyncio
import glob
import math
import multiprocessing as mp
import os
import pickle
import queue
import random
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import warnings

import lmdb
import pytest

import lmdbcache
from lmdbcache import Cache

pytestmark = [
    # Python >= 3.12 warns when a process with threads forks; the children here
    # only use lmdbcache, which is fork-safe.
    pytest.mark.filterwarnings("ignore:.*multi-threaded.*:DeprecationWarning"),
]

KiB = 1 << 10
MiB = 1 << 20
TTL = 0.2  # a short time-to-live ...
PAST_TTL = 0.35  # ... and a sleep that outlasts it
TIMEOUT = 60  # the longest any single wait may take before the test fails
LRS = "least-recently-stored"
LRU = "least-recently-used"

FORK = mp.get_context("fork")


# ---- helpers --------------------------------------------------------------------------


class Unpicklable:
    def __reduce__(self):
        raise ValueError("refuse to pickle")


def data_bytes(path):
    """Bytes of the pages of every sub-database of the cache in *path* (the data that
    size_limit bounds), read with py-lmdb.  Every Cache on path must be closed."""
    env = lmdb.open(path, readonly=True, lock=False, max_dbs=64)
    try:
        total = 0
        with env.begin() as txn:
            st = env.stat()  # the main DB
            total += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
            names = [k for k, _ in txn.cursor() if k.startswith(b"_")]
        for name in names:
            db = env.open_db(name, create=False)
            with env.begin() as txn:
                st = txn.stat(db)
            total += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return total * env.stat()["psize"]
    finally:
        env.close()


def file_bound(limit):
    """The most file an evicting cache with size_limit=*limit* may use."""
    return limit + limit // 4 + 4 * MiB


def _child_main(target, index, args, results):
    try:
        results.put((index, "ok", target(*args)))
    except BaseException:  # report everything, including assertion errors
        results.put((index, "error", traceback.format_exc()))


def run_processes(target, args_list, timeout=TIMEOUT):
    """Run target(*args) in one forked process per args; return their results in
    order.  A child that raises or dies fails the test."""
    results = FORK.Queue()
    procs = [
        FORK.Process(target=_child_main, args=(target, i, args, results), daemon=True)
        for i, args in enumerate(args_list)
    ]
    for p in procs:
        p.start()
    out = {}
    deadline = time.monotonic() + timeout
    try:
        while len(out) < len(procs):
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"child processes did not finish within {timeout} s")
            try:
                index, status, value = results.get(timeout=min(left, 1.0))
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    pytest.fail(f"a child process died with exit code {dead[0].exitcode}")
                continue
            if status != "ok":
                pytest.fail(f"child {index} failed:\n{value}")
            out[index] = value
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    assert all(p.exitcode == 0 for p in procs)
    return [out[i] for i in range(len(procs))]


def run_python(code, cwd, **env):
    """Run *code* in a fresh interpreter with extra environment variables."""
    full_env = dict(os.environ, **env)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd, env=full_env,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# ---- 1. expiry -------------------------------------------------------------------------


def test_entry_set_with_ttl_is_readable_until_it_expires(cache):
    cache.set("k", "v", ttl=TTL)
    assert cache["k"] == "v"
    assert cache.get("k") == "v"
    assert "k" in cache
    time.sleep(PAST_TTL)
    assert cache.get("k") is None
    assert cache.get("k", "dflt") == "dflt"


def test_expired_entry_is_a_miss_for_every_read(cache):
    cache["live"] = 1
    cache.set("gone", 2, ttl=TTL)
    cache.set(("tuple", 3), [3], ttl=TTL)
    time.sleep(PAST_TTL)
    with pytest.raises(KeyError):
        cache["gone"]
    assert "gone" not in cache
    assert ("tuple", 3) not in cache
    assert cache.get_many(["live", "gone", ("tuple", 3)]) == {"live": 1}
    assert cache.pop("gone", "dflt") == "dflt"
    with pytest.raises(KeyError):
        cache.pop(("tuple", 3))
    assert list(cache) == ["live"]
    assert list(cache.keys()) == ["live"]
    assert list(cache.values()) == [1]
    assert list(cache.items()) == [("live", 1)]
    assert dict(cache) == {"live": 1}


def test_delete_of_an_expired_entry_reports_absent(cache):
    cache.set("k", 1, ttl=TTL)
    time.sleep(PAST_TTL)
    assert cache.delete("k") is False
    with pytest.raises(KeyError):
        del cache["k"]


def test_add_stores_over_an_expired_entry(cache):
    cache.set("k", "old", ttl=TTL)
    assert cache.add("k", "other") is False
    time.sleep(PAST_TTL)
    assert cache.add("k", "new") is True
    assert cache["k"] == "new"
    time.sleep(PAST_TTL)
    assert cache["k"] == "new"  # the add had no ttl: it does not expire


def test_incr_of_an_expired_counter_starts_from_default(cache):
    cache.set("n", 40, ttl=TTL)
    assert cache.incr("n") == 41
    time.sleep(PAST_TTL)
    assert cache.incr("n", 5, default=100) == 105
    time.sleep(PAST_TTL)
    assert cache["n"] == 105  # restarted without expiry


def test_incr_keeps_the_expiry_of_an_existing_counter(cache):
    cache.set("window", 0, ttl=TTL)
    assert cache.incr("window") == 1
    time.sleep(PAST_TTL)
    assert "window" not in cache


def test_default_ttl_applies_to_every_way_of_storing(cache_dir):
    with Cache(cache_dir, ttl=TTL) as c:
        c["item"] = 1
        c.set("set", 2)
        assert c.add("add", 3) is True
        c.set_many({"many1": 4, "many2": 5})
        c.update({"upd": 6})
        assert c.incr("counter") == 1
        keys = ["item", "set", "add", "many1", "many2", "upd", "counter"]
        assert all(k in c for k in keys)
        time.sleep(PAST_TTL)
        assert c.get_many(keys) == {}
        assert list(c) == []


def test_explicit_ttl_overrides_the_default(cache_dir):
    with Cache(cache_dir, ttl=TTL) as c:
        c.set("long", 1, ttl=60)
        c.add("long-add", 2, ttl=60)
        c.set_many({"long-many": 3}, ttl=60)
        c.set("short", 4)
        time.sleep(PAST_TTL)
        assert c.get_many(["long", "long-add", "long-many", "short"]) == {
            "long": 1, "long-add": 2, "long-many": 3}


def test_default_ttl_belongs_to_the_cache_object_that_stores(cache_dir):
    with Cache(cache_dir, ttl=TTL) as short, Cache(cache_dir) as plain:
        short["a"] = 1
        plain["b"] = 2
        time.sleep(PAST_TTL)
        assert "a" not in plain
        assert short["b"] == 2  # stored without expiry by the other object


def test_touch_extends_the_life_of_an_entry(cache):
    cache.set("k", "v", ttl=TTL)
    assert cache.touch("k", ttl=60) is True
    time.sleep(PAST_TTL)
    assert cache["k"] == "v"


def test_touch_can_shorten_the_life_of_an_entry(cache):
    cache["k"] = "v"
    assert cache.touch("k", ttl=TTL) is True
    assert cache["k"] == "v"
    time.sleep(PAST_TTL)
    assert "k" not in cache


def test_touch_without_ttl_and_without_default_removes_the_expiry(cache):
    cache.set("k", "v", ttl=TTL)
    assert cache.touch("k") is True
    time.sleep(PAST_TTL)
    assert cache["k"] == "v"


def test_touch_without_ttl_uses_the_cache_default(cache_dir):
    with Cache(cache_dir, ttl=TTL) as c:
        c.set("k", "v", ttl=60)
        assert c.touch("k") is True
        time.sleep(PAST_TTL)
        assert "k" not in c


def test_touch_of_a_missing_or_expired_key_returns_false(cache):
    assert cache.touch("never", ttl=60) is False
    assert "never" not in cache
    cache.set("k", "v", ttl=TTL)
    time.sleep(PAST_TTL)
    assert cache.touch("k", ttl=60) is False
    assert "k" not in cache


def test_touch_keeps_the_value(cache):
    value = {"a": [1, 2, 3], "b": b"x" * 5000}
    cache["k"] = value
    cache.touch("k", ttl=60)
    assert cache["k"] == value


def test_expire_removes_expired_entries_and_counts_them(cache):
    for i in range(5):
        cache.set(("short", i), i, ttl=TTL)
    cache.set("long", 1, ttl=60)
    cache["forever"] = 2
    time.sleep(PAST_TTL)
    assert cache.expire() == 5
    assert sorted(cache, key=repr) == ["forever", "long"]
    assert cache.expire() == 0


def test_len_may_count_expired_entries_until_expire(cache):
    cache["forever"] = 1
    cache.set("short", 2, ttl=TTL)
    assert len(cache) == 2
    time.sleep(PAST_TTL)
    assert len(cache) in (1, 2)  # documented: counted until swept
    cache.expire()
    assert len(cache) == 1
    assert cache.info()["entries"] == 1


def test_expired_entries_are_misses_in_other_processes(cache_dir):
    with Cache(cache_dir) as c:
        c.set("k", "v", ttl=TTL)
        c["stay"] = 1
    time.sleep(PAST_TTL)

    def reader(path):
        with Cache(path) as c:
            return c.get("k", "miss"), "k" in c, c.get("stay")

    assert run_processes(reader, [(cache_dir,)]) == [("miss", False, 1)]


# ---- 2. bounded size and eviction --------------------------------------------------------


def test_size_limit_below_64_kib_is_rejected(cache_dir):
    for bad in (0, 1, 4096, 65535, -1):
        with pytest.raises(ValueError):
            Cache(cache_dir, size_limit=bad)
    with pytest.raises(TypeError):
        Cache(cache_dir, size_limit=1.5e6)
    with Cache(cache_dir, size_limit=65536) as c:
        c["k"] = 1
        assert c.options["size_limit"] == 65536


def test_unknown_eviction_policy_is_rejected(cache_dir):
    for bad in ("lru", "LRU", "least-recently-stored ", "", None):
        with pytest.raises(ValueError):
            Cache(cache_dir, size_limit=MiB, eviction_policy=bad)
    assert not os.path.exists(os.path.join(cache_dir, "data.mdb"))


@pytest.mark.parametrize("policy", [LRS, LRU])
def test_writing_past_size_limit_evicts_and_keeps_the_limits(cache_dir, policy):
    limit = MiB
    rng = random.Random(7)
    with Cache(cache_dir, size_limit=limit, eviction_policy=policy) as c:
        for i in range(3000):  # several times the limit, varied sizes
            c[i] = os.urandom(rng.choice((100, 1000, 3000, 9000)))
            if i % 7 == 0:
                c.get(rng.randrange(i + 1))
            if i % 100 == 0:
                assert c.info()["file_bytes"] <= file_bound(limit)
        assert c.stats()["evictions"] > 0
        assert 0 < len(c) < 3000
        assert c.info()["file_bytes"] <= file_bound(limit)
        assert 2999 in c  # the newest entry is never the one evicted
        survivors = set(c)
    assert data_bytes(cache_dir) <= limit
    with Cache(cache_dir, size_limit=limit, eviction_policy=policy) as c:
        assert set(c) == survivors


def _fill(c, start, stop, value):
    for i in range(start, stop):
        c[i] = value


def test_lrs_evicts_in_store_order(cache_dir):
    value = b"v" * 1000
    with Cache(cache_dir, size_limit=256 * KiB, eviction_policy=LRS) as c:
        _fill(c, 0, 60, value)
        assert c.stats()["evictions"] == 0 and len(c) == 60
        i = 1000
        while 0 in c:
            assert i < 5000, "key 0 never evicted"
            c[i] = value
            i += 1
        present = [k in c for k in range(60)]
        # what went is a prefix of the store order, and every newer entry stayed
        first_kept = present.index(True)
        assert first_kept >= 1 and all(present[first_kept:])
        assert all(k in c for k in range(1000, i))


def test_lrs_overwriting_a_key_makes_it_newest(cache_dir):
    value = b"v" * 1000
    with Cache(cache_dir, size_limit=256 * KiB, eviction_policy=LRS) as c:
        _fill(c, 0, 60, value)
        assert c.stats()["evictions"] == 0
        c[0] = b"fresh"
        i = 1000
        while 1 in c:
            assert i < 5000, "key 1 never evicted"
            c[i] = value
            i += 1
        assert c[0] == b"fresh"


def test_lrs_reading_a_key_does_not_save_it(cache_dir):
    value = b"v" * 1000
    with Cache(cache_dir, size_limit=256 * KiB, eviction_policy=LRS) as c:
        _fill(c, 0, 60, value)
        assert c[0] == value
        i = 1000
        while 1 in c:
            assert i < 5000, "key 1 never evicted"
            c[i] = value
            i += 1
        assert 0 not in c


def test_lru_a_recently_read_key_survives_eviction(cache_dir):
    value = b"v" * 1000
    with Cache(cache_dir, size_limit=256 * KiB, eviction_policy=LRU) as c:
        _fill(c, 0, 60, value)
        assert c.stats()["evictions"] == 0
        assert c[0] == value  # logged now, recorded with the next write
        assert c.get_many([5]) == {5: value}
        i = 1000
        while 1 in c:
            assert i < 5000, "key 1 never evicted"
            c[i] = value
            i += 1
        assert c[0] == value
        assert 5 in c
        assert 2 not in c  # unread older keys go first
        assert c.stats()["evictions"] > 0


def test_lru_reads_in_another_process_count_once_it_writes(cache_dir):
    value = b"v" * 1000
    with Cache(cache_dir, size_limit=256 * KiB, eviction_policy=LRU) as c:
        _fill(c, 0, 60, value)

    def reader(path):
        with Cache(path, size_limit=256 * KiB, eviction_policy=LRU) as c:
            assert c[0] == value
            c["reader-wrote"] = 1  # the process's next write records its reads
        return True

    run_processes(reader, [(cache_dir,)])
    with Cache(cache_dir, size_limit=256 * KiB, eviction_policy=LRU) as c:
        i = 1000
        while 1 in c:
            assert i < 5000, "key 1 never evicted"
            c[i] = value
            i += 1
        assert 0 in c


def test_policy_none_raises_mapfullerror_and_deleting_makes_room(cache_dir):
    value = b"n" * (16 * KiB)
    with Cache(cache_dir, size_limit=512 * KiB, eviction_policy="none") as c:
        written = []
        with pytest.raises(lmdbcache.MapFullError):
            for i in range(200):
                c[i] = value
                written.append(i)
        failed = len(written)
        assert len(written) >= 8
        assert failed not in c  # the failed write stored nothing
        assert all(c[k] == value for k in written)  # reads keep working, nothing evicted
        assert c.stats()["evictions"] == 0
        with pytest.raises(lmdbcache.MapFullError):
            c.set_many({("batch", j): value for j in range(10)})
        assert ("batch", 0) not in c
        for k in written[: len(written) // 2]:
            del c[k]
        c[failed] = value
        assert c[failed] == value


def test_no_size_limit_means_no_eviction(cache_dir):
    with Cache(cache_dir, map_size=MiB) as c:
        for i in range(400):
            c[i] = os.urandom(20 * KiB)  # 8 MB into a 1 MiB initial map
        assert len(c) == 400
        assert all(i in c for i in range(400))
        assert c.stats()["evictions"] == 0


def test_evictions_are_counted_by_the_object_that_wrote(cache_dir):
    opts = dict(size_limit=256 * KiB, eviction_policy=LRS)
    with Cache(cache_dir, **opts) as writer, Cache(cache_dir, **opts) as bystander:
        for i in range(1000):
            writer[i] = b"x" * 1000
        evicted = 1000 - len(writer)
        assert writer.stats()["evictions"] == evicted > 0
        assert bystander.stats()["evictions"] == 0


def _store_huge_value(c, limit):
    c["huge"] = b"h" * (4 * limit)


def _store_huge_batch(c, limit):
    c.set_many({("batch", i): b"b" * 1000 for i in range(4 * limit // 1000)})


@pytest.mark.parametrize("policy", [LRS, LRU])
@pytest.mark.parametrize("write", [_store_huge_value, _store_huge_batch], ids=["value", "set_many"])
def test_a_write_larger_than_size_limit_does_not_break_the_limit(cache_dir, policy, write):
    limit = 64 * KiB
    with Cache(cache_dir, size_limit=limit, eviction_policy=policy) as c:
        for i in range(20):
            c[i] = b"s" * 1000
        try:
            write(c, limit)
        except lmdbcache.Error:
            pass  # refusing the write is fine; storing it past the limit is not
        assert c.info()["file_bytes"] <= file_bound(limit)
    assert data_bytes(cache_dir) <= limit


def test_lru_reads_alone_keep_the_cache_within_its_limits(cache_dir):
    limit = 256 * KiB
    with Cache(cache_dir, size_limit=limit, eviction_policy=LRU) as c:
        for i in range(3000):
            c[i] = b"v" * 40
        keys = list(c)
        rng = random.Random(1)
        for _ in range(300_000):  # a read-mostly workload: no writes at all
            c.get(rng.choice(keys))
        assert c.info()["file_bytes"] <= file_bound(limit)
    assert data_bytes(cache_dir) <= limit


@pytest.mark.parametrize("policy", [LRS, LRU])
def test_writes_of_a_transaction_that_fit_all_commit_in_a_full_cache(cache_dir, policy):
    limit = 256 * KiB
    with Cache(cache_dir, size_limit=limit, eviction_policy=policy) as c:
        _fill(c, 0, 400, b"old" * 300)  # full: evicting already
        assert c.stats()["evictions"] > 0
        with c.transaction():
            for i in range(100):  # about 40 % of the limit
                c[("txn", i)] = b"t" * 1000
        missing = [i for i in range(100) if ("txn", i) not in c]
        assert missing == []  # older entries make room, not the transaction's own
        assert 399 in c
    assert data_bytes(cache_dir) <= limit


def test_namespaces_share_the_size_limit(cache_dir):
    limit = 256 * KiB
    opts = dict(size_limit=limit, eviction_policy=LRS)
    with Cache(cache_dir, **opts) as c:
        _fill(c, 0, 60, b"d" * 1000)
        ns = c.namespace("other")
        for i in range(1000):
            ns[i] = b"o" * 1000
        assert 0 not in c  # the oldest entries of the default keyspace went
        assert 999 in ns
        ns.close()
    assert data_bytes(cache_dir) <= limit


def _evicting_writer(path, seed, limit):
    rng = random.Random(seed)
    with Cache(path, size_limit=limit, eviction_policy=LRS) as c:
        for i in range(400):
            c[(seed, i)] = os.urandom(rng.choice((200, 1500, 5000)))
            c.get((seed, rng.randrange(i + 1)))
            if i % 50 == 0:
                c.incr(("count", seed))
        assert (seed, 399) in c
        return c.stats()["evictions"]


def _namespace_writer(path, limit, n_namespaces):
    with Cache(path, size_limit=limit, eviction_policy=LRS) as c:
        for n in range(n_namespaces):
            with c.namespace(f"ns{n}") as ns:
                for i in range(25):
                    ns[i] = b"n" * 1000
    return True


@pytest.mark.parametrize("policy", [LRS, LRU])
def test_namespaces_made_by_another_process_count_against_the_limit(cache_dir, policy):
    limit = 512 * KiB
    with Cache(cache_dir, size_limit=limit, eviction_policy=policy) as c:
        c["first"] = 1  # this process opened the file before the namespaces existed
        run_processes(_namespace_writer, [(cache_dir, limit, 12)])
        for i in range(800):
            c[i] = b"d" * 1000
        with c.namespace("ns0") as ns0:
            assert len(ns0) == 0  # the oldest entries, in another namespace, went first
        assert 799 in c
    assert data_bytes(cache_dir) <= limit


def test_several_writer_processes_stay_within_size_limit(cache_dir):
    limit = 512 * KiB
    with Cache(cache_dir, size_limit=limit, eviction_policy=LRS) as c:
        c["start"] = 1
    evictions = run_processes(_evicting_writer, [(cache_dir, s, limit) for s in range(4)])
    assert sum(evictions) > 0
    with Cache(cache_dir, size_limit=limit, eviction_policy=LRS) as c:
        assert c.info()["file_bytes"] <= file_bound(limit)
        items = dict(c.items())  # everything left reads back
        assert 0 < len(items) < 1600
    assert data_bytes(cache_dir) <= limit


def test_a_reader_killed_mid_read_does_not_make_eviction_fail(cache_dir, tmp_path):
    """A process killed (OOM killer, kill -9) while it reads leaves its reader slot
    behind, pinning an old snapshot.  py-lmdb stands in for that reader, because
    the moment of a kill inside one of lmdbcache's short reads cannot be chosen."""
    limit = 256 * KiB
    with Cache(cache_dir, size_limit=limit, eviction_policy=LRS) as c:
        _fill(c, 0, 100, b"x" * 1000)
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(f"""
                import os, signal, lmdb
                env = lmdb.open({cache_dir!r}, readonly=True, max_dbs=64)
                txn = env.begin()
                txn.get(b"anything")
                os.kill(os.getpid(), signal.SIGKILL)
            """)],
            cwd=str(tmp_path), timeout=TIMEOUT,
        )
        assert proc.returncode == -9
        for i in range(100, 3000):  # ten times the limit
            c[i] = b"x" * 1000
        assert c.info()["file_bytes"] <= file_bound(limit)
        assert 2999 in c


# ---- 3. atomic operations -------------------------------------------------------------------


def test_add_stores_only_when_absent(cache):
    assert cache.add("k", 1) is True
    assert cache.add("k", 2) is False
    assert cache["k"] == 1
    cache.delete("k")
    assert cache.add("k", 3) is True
    assert cache["k"] == 3


def test_add_with_ttl(cache):
    assert cache.add("k", 1, ttl=TTL) is True
    time.sleep(PAST_TTL)
    assert "k" not in cache


def test_incr_and_decr_count(cache):
    assert cache.incr("n") == 1
    assert cache.incr("n") == 2
    assert cache.incr("n", 10) == 12
    assert cache.incr("n", delta=-2) == 10
    assert cache.decr("n") == 9
    assert cache.decr("n", 4) == 5
    assert cache["n"] == 5
    assert cache.incr("new", 3, default=100) == 103
    assert cache.decr("other", default=10) == 9
    assert cache.decr("below", 5) == -5
    cache["set-int"] = 7
    assert cache.incr("set-int") == 8


def test_incr_works_up_to_the_64_bit_limits(cache):
    big = 2**63 - 2
    cache["n"] = big
    assert cache.incr("n") == 2**63 - 1
    assert cache.decr("low", default=-(2**63) + 1) == -(2**63)


@pytest.mark.parametrize("value", [1.5, "1", b"1", [1], None, True])
def test_incr_of_a_non_int_value_raises_typeerror_and_changes_nothing(cache, value):
    cache["k"] = value
    with pytest.raises(TypeError):
        cache.incr("k")
    with pytest.raises(TypeError):
        cache.decr("k")
    assert cache["k"] == value
    assert type(cache["k"]) is type(value)


def test_incr_past_64_bits_raises_overflowerror_and_changes_nothing(cache):
    cache["max"] = 2**63 - 1
    cache["min"] = -(2**63)
    with pytest.raises(OverflowError):
        cache.incr("max")
    with pytest.raises(OverflowError):
        cache.decr("min")
    with pytest.raises(OverflowError):
        cache.incr("new", 1, default=2**63 - 1)
    assert cache["max"] == 2**63 - 1
    assert cache["min"] == -(2**63)
    assert "new" not in cache
    with pytest.raises(OverflowError):
        cache.incr("max", 2**64)  # a delta that does not fit in 64 bits
    assert cache["max"] == 2**63 - 1
    cache["huge"] = 2**70  # an int beyond 64 bits is stored (pickled) but not counted
    with pytest.raises((OverflowError, TypeError)):
        cache.incr("huge")
    assert cache["huge"] == 2**70


@pytest.mark.parametrize("bad", [1.0, "1", None, b"1", [1]])
def test_incr_with_a_non_int_delta_or_default_raises_typeerror(cache, bad):
    cache["n"] = 5
    with pytest.raises(TypeError):
        cache.incr("n", bad)
    with pytest.raises(TypeError):
        cache.decr("n", bad)
    with pytest.raises(TypeError):
        cache.incr("fresh", 1, bad)
    with pytest.raises(TypeError):
        cache.decr("fresh", 1, default=bad)
    assert cache["n"] == 5
    assert "fresh" not in cache


def test_pop_removes_and_returns(cache):
    cache["k"] = {"v": 1}
    assert cache.pop("k") == {"v": 1}
    assert "k" not in cache
    assert cache.pop("k", None) is None
    with pytest.raises(KeyError):
        cache.pop("k")


def test_incr_and_add_from_many_threads_are_exact(cache):
    def work(t):
        for i in range(200):
            cache.incr("counter")
            if cache.add(("slot", i), t):
                won.append(i)

    won = []
    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert cache["counter"] == 8 * 200
    assert sorted(won) == list(range(200))


def _adder(path, worker, keys, barrier):
    with Cache(path) as c:
        barrier.wait(TIMEOUT)
        return [k for k in keys if c.add(k, worker)]


def test_add_from_many_processes_has_exactly_one_winner_per_key(cache_dir):
    Cache(cache_dir).close()
    n, keys = 6, list(range(300))
    barrier = FORK.Barrier(n)
    won = run_processes(_adder, [(cache_dir, w, keys, barrier) for w in range(n)])
    winners = {}
    for worker, ks in enumerate(won):
        for k in ks:
            assert k not in winners, f"key {k} added by two processes"
            winners[k] = worker
    assert sorted(winners) == keys
    with Cache(cache_dir) as c:
        assert {k: c[k] for k in keys} == winners


def _incrementer(path, m, barrier):
    with Cache(path) as c:
        barrier.wait(TIMEOUT)
        for i in range(m):
            if i % 2:
                c.incr("counter")
            else:
                c.incr("counter", 3)
                c.decr("counter", 2)
        return True


def test_incr_from_many_processes_loses_no_update(cache_dir):
    n, m = 6, 300
    Cache(cache_dir).close()
    barrier = FORK.Barrier(n)
    run_processes(_incrementer, [(cache_dir, m, barrier) for _ in range(n)])
    with Cache(cache_dir) as c:
        assert c["counter"] == n * m


def _popper(path, keys, barrier):
    with Cache(path) as c:
        barrier.wait(TIMEOUT)
        got = {}
        for k in keys:
            v = c.pop(k, None)
            if v is not None:
                got[k] = v
        return got


def test_pop_from_many_processes_hands_each_value_out_once(cache_dir):
    keys = list(range(300))
    with Cache(cache_dir) as c:
        c.set_many({k: f"value-{k}" for k in keys})
    n = 5
    barrier = FORK.Barrier(n)
    results = run_processes(_popper, [(cache_dir, keys, barrier) for _ in range(n)])
    seen = {}
    for got in results:
        for k, v in got.items():
            assert k not in seen, f"key {k} popped twice"
            seen[k] = v
    assert seen == {k: f"value-{k}" for k in keys}
    with Cache(cache_dir) as c:
        assert len(c) == 0


# ---- 4. batches -------------------------------------------------------------------------------


def test_get_many_returns_the_hits_only(cache):
    cache.set_many({"a": 1, ("t", 2): [2], 3: b"3"})
    assert cache.get_many(["a", "missing", ("t", 2), 3]) == {"a": 1, ("t", 2): [2], 3: b"3"}
    assert cache.get_many([]) == {}
    assert cache.get_many(iter(["a"])) == {"a": 1}


def test_set_many_accepts_mappings_and_pairs(cache):
    cache.set_many({"a": 1, "b": 2})
    cache.set_many([("c", 3), ["d", 4]])
    cache.set_many((k, k * 2) for k in range(3))
    cache.set_many({})
    assert dict(cache.items()) == {"a": 1, "b": 2, "c": 3, "d": 4, 0: 0, 1: 2, 2: 4}


def test_set_many_with_ttl(cache):
    cache.set_many({"a": 1, "b": 2}, ttl=TTL)
    cache["c"] = 3
    time.sleep(PAST_TTL)
    assert dict(cache.items()) == {"c": 3}


def test_set_many_stores_nothing_if_one_value_fails_to_pickle(cache):
    cache["a"] = "old"
    with pytest.raises(ValueError, match="refuse to pickle"):
        cache.set_many([("a", "new"), ("b", 2), ("c", Unpicklable()), ("d", 4)])
    assert dict(cache.items()) == {"a": "old"}


def test_set_many_stores_nothing_if_one_key_is_unhashable(cache):
    with pytest.raises(TypeError):
        cache.set_many([("a", 1), (["unhashable"], 2)])
    assert len(cache) == 0


def test_update_stores_nothing_if_one_value_fails_to_pickle(cache):
    with pytest.raises(ValueError):
        cache.update({"a": 1, "b": Unpicklable()})
    assert len(cache) == 0
    with pytest.raises(ValueError):
        cache.update({"a": 1}, b=Unpicklable())  # mapping and keywords: one transaction
    assert len(cache) == 0


def test_delete_many_counts_what_was_present(cache):
    cache.set_many({"a": 1, "b": 2, "c": 3})
    cache.set("expired", 4, ttl=TTL)
    time.sleep(PAST_TTL)
    assert cache.delete_many(["a", "c", "missing", "expired"]) == 2
    assert list(cache) == ["b"]
    assert cache.delete_many([]) == 0


def _batch_writer(path, keys, rounds, batch_fn):
    with Cache(path) as c:
        for r in range(rounds):
            batch_fn(c, {k: r for k in keys})
        return True


def _set_many(c, mapping):
    c.set_many(mapping)


def _update(c, mapping):
    c.update(mapping)


@pytest.mark.parametrize("batch_fn", [_set_many, _update], ids=["set_many", "update"])
def test_batches_are_seen_whole_by_other_processes(cache_dir, batch_fn):
    keys = [("k", i) for i in range(40)]
    with Cache(cache_dir) as c:
        c.set_many({k: -1 for k in keys})
        proc = FORK.Process(target=_batch_writer, args=(cache_dir, keys, 300, batch_fn))
        proc.start()
        try:
            mixed = []
            while proc.is_alive():
                values = set(c.get_many(keys).values())
                if len(values) != 1:
                    mixed.append(values)
            proc.join(TIMEOUT)
        finally:
            if proc.is_alive():
                proc.kill()
                proc.join()
        assert proc.exitcode == 0
        assert mixed == []
        assert set(c.get_many(keys).values()) == {299}


# ---- 5. transactions ----------------------------------------------------------------------------


def test_transaction_commits_every_write_together(cache):
    cache["gone"] = 0
    cache["n"] = 1
    with cache.transaction() as t:
        assert t is cache
        cache["a"] = 1
        cache.set("b", 2)
        cache.set_many({"c": 3})
        del cache["gone"]
        cache.incr("n")
        assert cache.add("d", 4) is True
    assert dict(cache.items()) == {"a": 1, "b": 2, "c": 3, "d": 4, "n": 2}


def test_transaction_rolls_back_on_exception_and_propagates_it(cache):
    cache["keep"] = "old"
    cache["del"] = "here"
    with pytest.raises(ZeroDivisionError):
        with cache.transaction():
            cache["keep"] = "new"
            cache["added"] = 1
            del cache["del"]
            cache.incr("counter")
            1 / 0
    assert dict(cache.items()) == {"keep": "old", "del": "here"}
    cache["after"] = 1  # the cache is usable again
    assert cache["after"] == 1


def test_reads_inside_a_transaction_see_its_writes(cache):
    cache["old"] = 0
    with cache.transaction():
        cache["a"] = 1
        del cache["old"]
        assert cache["a"] == 1
        assert cache.get("a") == 1
        assert "a" in cache and "old" not in cache
        assert cache.get_many(["a", "old"]) == {"a": 1}
        assert len(cache) == 1
        assert list(cache.items()) == [("a", 1)]
        assert cache.incr("a") == 2
        assert cache.pop("a") == 2
        assert "a" not in cache


def test_other_cache_objects_in_the_same_thread_join_the_transaction(cache, cache_dir):
    other = Cache(cache_dir)
    ns = cache.namespace("ns")
    try:
        with pytest.raises(RuntimeError):
            with cache.transaction():
                cache["a"] = 1
                other["b"] = 2
                ns["c"] = 3
                assert other["a"] == 1  # sees the transaction's writes
                raise RuntimeError("roll back")
        assert len(cache) == 0 and len(ns) == 0
        with other.transaction():
            cache["a"] = 1
            ns["c"] = 3
        assert cache["a"] == 1 and ns["c"] == 3
    finally:
        other.close()
        ns.close()


def test_another_thread_does_not_see_uncommitted_writes(cache):
    seen = []
    with cache.transaction():
        cache["a"] = 1
        t = threading.Thread(target=lambda: seen.append((cache.get("a"), "a" in cache, len(cache))))
        t.start()
        t.join(TIMEOUT)
        assert seen == [(None, False, 0)]
    t = threading.Thread(target=lambda: seen.append(cache.get("a")))
    t.start()
    t.join(TIMEOUT)
    assert seen[1] == 1


def test_another_thread_writes_wait_for_the_commit(cache):
    done = threading.Event()

    def write():
        cache["b"] = 2
        done.set()

    with cache.transaction():
        cache["a"] = 1
        t = threading.Thread(target=write)
        t.start()
        assert not done.wait(0.3)  # blocked while the transaction is open
        assert "b" not in cache
    assert done.wait(TIMEOUT)
    t.join(TIMEOUT)
    assert cache["a"] == 1 and cache["b"] == 2


def _write_when_told(path, go, done, result):
    with Cache(path) as c:
        assert go.wait(TIMEOUT)
        c["from-child"] = "child"
        result.put(c.get("in-txn"))
        done.set()


def test_another_process_writes_wait_for_the_commit(cache, cache_dir):
    cache["warm"] = 1
    go, done, result = FORK.Event(), FORK.Event(), FORK.Queue()
    proc = FORK.Process(target=_write_when_told, args=(cache_dir, go, done, result))
    proc.start()
    try:
        with cache.transaction():
            cache["in-txn"] = "parent"
            go.set()
            assert not done.wait(0.3)  # the child waits for the write lock
        assert done.wait(TIMEOUT)
        assert result.get(timeout=TIMEOUT) == "parent"  # committed before the child wrote
        proc.join(TIMEOUT)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert proc.exitcode == 0
    assert cache["from-child"] == "child"


def test_nested_transactions_join_the_outer_one(cache):
    with pytest.raises(KeyError):
        with cache.transaction():
            cache["outer"] = 1
            with cache.transaction():
                cache["inner"] = 2
            assert cache["inner"] == 2
            raise KeyError("outer fails")
    assert len(cache) == 0
    with cache.transaction():
        with cache.transaction():
            cache["inner"] = 2
        cache["outer"] = 1
    assert dict(cache.items()) == {"inner": 2, "outer": 1}


def test_a_failed_inner_block_rolls_back_the_whole_transaction(cache):
    cache["keep"] = 0
    with pytest.raises(lmdbcache.Error):
        with cache.transaction():
            cache["outer"] = 1
            try:
                with cache.transaction():
                    cache["inner"] = 2
                    raise ValueError("inner fails")
            except ValueError:
                pass
    assert dict(cache.items()) == {"keep": 0}


def test_transaction_on_a_readonly_cache_raises(cache, cache_dir):
    cache["a"] = 1
    cache.close()
    with Cache(cache_dir, readonly=True) as ro:
        with pytest.raises(lmdbcache.ReadOnlyError):
            with ro.transaction():
                pass


# ---- 6. stats and info ----------------------------------------------------------------------------


def test_stats_count_operations_of_this_object(cache, cache_dir):
    assert cache.stats() == dict(hits=0, misses=0, sets=0, deletes=0, evictions=0, expirations=0)
    cache["a"] = 1
    cache.set("b", 2)
    cache.set_many({"c": 3, "d": 4})
    cache.get("a")
    cache["b"]
    cache.get("missing")
    with pytest.raises(KeyError):
        cache["missing"]
    cache.get_many(["c", "nope"])
    cache.delete("a")
    cache.delete("never")
    cache.delete_many(["b", "c", "never"])
    cache.set("short", 1, ttl=TTL)
    time.sleep(PAST_TTL)
    assert cache.expire() == 1
    s = cache.stats()
    assert s["sets"] == 5
    assert s["hits"] == 3
    assert s["misses"] == 3
    assert s["deletes"] == 3
    assert s["expirations"] == 1
    assert s["evictions"] == 0
    with Cache(cache_dir) as other:  # another object on the same path has its own counts
        assert other.get("d") == 4
        assert other.stats()["hits"] == 1
    assert cache.stats()["hits"] == 3


def test_stats_reset_returns_counts_and_zeroes_them(cache):
    cache["a"] = 1
    cache.get("a")
    before = cache.stats(reset=True)
    assert before["sets"] == 1 and before["hits"] == 1
    assert cache.stats() == dict(hits=0, misses=0, sets=0, deletes=0, evictions=0, expirations=0)


def test_stats_are_per_process(cache, cache_dir):
    def child(path):
        with Cache(path) as c:
            c["x"] = 1
            c.get("x")
            return c.stats()

    cache.get("nothing")
    [child_stats] = run_processes(child, [(cache_dir,)])
    assert child_stats["sets"] == 1 and child_stats["hits"] == 1
    assert child_stats["misses"] == 0
    assert cache.stats()["sets"] == 0 and cache.stats()["misses"] == 1


def test_info_describes_the_cache(cache_dir):
    with Cache(cache_dir, size_limit=4 * MiB, ttl=30, max_readers=64) as c:
        c.set_many({i: b"x" * 100 for i in range(50)})
        info = c.info()
        assert set(info) >= {"path", "namespace", "entries", "bytes", "file_bytes", "map_size",
                             "page_size", "readers", "max_readers", "options"}
        assert info["path"] == cache_dir
        assert info["namespace"] is None
        assert info["entries"] == 50 == len(c)
        assert info["page_size"] >= 512
        assert 0 < info["bytes"] <= info["file_bytes"] <= info["map_size"]
        assert info["readers"] >= 1
        assert info["max_readers"] >= 64
        assert info["options"]["size_limit"] == 4 * MiB
        assert info["options"]["ttl"] == 30
        ns = c.namespace("ns")
        ns["one"] = 1
        ns_info = ns.info()
        assert ns_info["namespace"] == "ns"
        assert ns_info["entries"] == 1
        assert ns_info["bytes"] < info["bytes"]
        ns.close()


# ---- 7. namespaces --------------------------------------------------------------------------------


def test_namespaces_are_independent_keyspaces(cache):
    a = cache.namespace("a")
    b = cache.namespace("b")
    try:
        cache["k"] = "default"
        a["k"] = "a"
        b["k"] = "b"
        a["only-a"] = 1
        assert (cache["k"], a["k"], b["k"]) == ("default", "a", "b")
        assert "only-a" not in cache and "only-a" not in b
        assert (len(cache), len(a), len(b)) == (1, 2, 1)
        assert sorted(a) == ["k", "only-a"]
        assert list(cache.items()) == [("k", "default")]
        assert b.pop("k") == "b"
        assert a["k"] == "a"
    finally:
        a.close()
        b.close()


def test_namespace_option_of_the_constructor_is_the_same_keyspace(cache, cache_dir):
    with cache.namespace("ns") as ns, Cache(cache_dir, namespace="ns") as same:
        ns["k"] = 1
        assert same["k"] == 1
        assert same.namespace_name == "ns"
        assert same.options["namespace"] == "ns"
    assert cache.namespace_name is None


def test_clearing_a_namespace_leaves_the_others_alone(cache):
    with cache.namespace("a") as a, cache.namespace("b") as b:
        cache["d"] = 0
        a.update({"x": 1, "y": 2})
        b["x"] = 3
        a.clear()
        assert len(a) == 0
        assert b["x"] == 3 and cache["d"] == 0
        a["z"] = 1
        cache.clear()
        assert len(cache) == 0
        assert a["z"] == 1 and b["x"] == 3


def test_expire_of_a_namespace_leaves_the_others_alone(cache):
    with cache.namespace("a") as a:
        cache.set("d", 0, ttl=TTL)
        a.set("x", 1, ttl=TTL)
        a.set("y", 2, ttl=TTL)
        time.sleep(PAST_TTL)
        assert a.expire() == 2
        assert len(cache) == 1  # not swept yet: another namespace
        assert cache.expire() == 1


def test_namespaces_survive_reopen(cache_dir):
    with Cache(cache_dir) as c, c.namespace("sessions") as s:
        c["d"] = 0
        s["user"] = {"id": 7}
    with Cache(cache_dir) as c, c.namespace("sessions") as s:
        assert s["user"] == {"id": 7}
        assert list(c) == ["d"]
    with Cache(cache_dir, namespace="sessions", readonly=True) as ro:
        assert ro["user"] == {"id": 7}


def test_pickled_namespace_cache_keeps_its_namespace(cache):
    with cache.namespace("ns") as ns:
        ns["k"] = "in ns"
        cache["k"] = "default"
        clone = pickle.loads(pickle.dumps(ns))
        try:
            assert clone.namespace_name == "ns"
            assert clone["k"] == "in ns"
        finally:
            clone.close()


def test_namespace_cache_travels_to_another_process(cache):
    def child(ns):
        ns["from-child"] = True
        return ns.namespace_name, ns["k"]

    with cache.namespace("ns") as ns:
        ns["k"] = "v"
        assert run_processes(child, [(ns,)]) == [("ns", "v")]
        assert ns["from-child"] is True
        assert "from-child" not in cache


@pytest.mark.parametrize("name", [b"ns", 1, None, ("a",)])
def test_namespace_name_that_is_not_str_raises_typeerror(cache, cache_dir, name):
    with pytest.raises(TypeError):
        cache.namespace(name)
    if name is not None:
        with pytest.raises(TypeError):
            Cache(cache_dir, namespace=name)


@pytest.mark.parametrize(
    "name",
    ["", "__meta__", "__order__", "__x", "x" * 201, "é" * 101, "a\0b"],
    ids=["empty", "meta", "order", "dunder", "201-bytes", "202-utf8-bytes", "nul"],
)
def test_reserved_or_invalid_namespace_names_raise_valueerror(cache, cache_dir, name):
    with pytest.raises(ValueError):
        cache.namespace(name)
    with pytest.raises(ValueError):
        Cache(cache_dir, namespace=name)


def test_namespace_names_up_to_200_utf8_bytes_work(cache):
    for name in ("x" * 200, "é" * 100, "_single", "with space/and:colon"):
        with cache.namespace(name) as ns:
            ns["k"] = name
    for name in ("x" * 200, "é" * 100, "_single", "with space/and:colon"):
        with cache.namespace(name) as ns:
            assert ns["k"] == name


# ---- 8. asyncio --------------------------------------------------------------------------------------


def test_async_methods_work(cache):
    async def main():
        assert await cache.aget("k") is None
        assert await cache.aget("k", "dflt") == "dflt"
        await cache.aset("k", "v")
        assert await cache.aget("k") == "v"
        assert await cache.acontains("k") is True
        assert await cache.aadd("k", "other") is False
        assert await cache.aadd("new", 1) is True
        assert await cache.aincr("n") == 1
        assert await cache.aincr("n", 5) == 6
        assert await cache.adecr("n", 2) == 4
        await cache.aset_many({"m1": 1, "m2": 2})
        assert await cache.aget_many(["m1", "m2", "nope"]) == {"m1": 1, "m2": 2}
        assert await cache.adelete_many(["m1", "nope"]) == 1
        assert await cache.apop("m2") == 2
        assert await cache.apop("m2", "gone") == "gone"
        with pytest.raises(KeyError):
            await cache.apop("m2")
        assert await cache.adelete("new") is True
        assert await cache.adelete("new") is False
        await cache.aset("short", 1, ttl=TTL)
        assert await cache.atouch("k", ttl=TTL) is True
        assert await cache.atouch("absent") is False
        await asyncio.sleep(PAST_TTL)
        assert await cache.acontains("short") is False
        assert await cache.aexpire() == 2  # "short" and the touched "k"
        await cache.aset_many([("t", 1)], ttl=60)
        assert dict(cache.items()) == {"n": 4, "t": 1}
        await cache.aclear()
        assert len(cache) == 0

    asyncio.run(main())


def test_async_methods_run_concurrently(cache):
    async def main():
        await asyncio.gather(*(cache.aset(i, i * i) for i in range(50)))
        results = await asyncio.gather(*(cache.aincr("n") for _ in range(50)))
        assert sorted(results) == list(range(1, 51))
        values = await asyncio.gather(*(cache.aget(i) for i in range(50)))
        assert values == [i * i for i in range(50)]

    asyncio.run(main())


def test_async_write_inside_a_transaction_joins_it(cache):
    async def main():
        with pytest.raises(RuntimeError):
            with cache.transaction():
                await cache.aset("a", 1)
                assert await cache.aget("a") == 1
                raise RuntimeError
        assert await cache.acontains("a") is False

    asyncio.run(main())


def _hold_write_lock(path, ready, seconds):
    with Cache(path) as c:
        with c.transaction():
            c["held"] = "child"
            ready.set()
            time.sleep(seconds)
    return True


def test_aset_waiting_for_another_process_does_not_block_the_event_loop(cache, cache_dir):
    cache["warm"] = 1
    ready = FORK.Event()
    proc = FORK.Process(target=_hold_write_lock, args=(cache_dir, ready, 1.0))
    proc.start()
    try:
        assert ready.wait(TIMEOUT), "the child never took the write lock"

        async def main():
            ticks = []
            stop = asyncio.Event()

            async def ticker():
                while not stop.is_set():
                    ticks.append(time.monotonic())
                    await asyncio.sleep(0.01)

            task = asyncio.create_task(ticker())
            await asyncio.sleep(0)
            start = time.monotonic()
            await cache.aset("parent", "value")
            waited = time.monotonic() - start
            stop.set()
            await task
            return ticks, waited

        ticks, waited = asyncio.run(main())
    finally:
        proc.join(TIMEOUT)
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert proc.exitcode == 0
    assert waited > 0.2  # it did wait for the child's transaction
    assert len(ticks) >= 10
    assert max(b - a for a, b in zip(ticks, ticks[1:])) < 0.5  # the loop kept running
    assert cache["parent"] == "value"
    assert cache["held"] == "child"


# ---- 9. durability guard -----------------------------------------------------------------------------


def marker(path):
    return os.path.join(path, "unsynced")


def read_marker(path):
    with open(marker(path)) as f:
        return f.read().strip()


def write_and_exit(path, tmp_path, boot, clean):
    """In a fresh process under boot id *boot*, store k=v and exit: with os._exit(0)
    (the marker stays, as after an OS crash) or after a clean close."""
    run_python(
        f"""
        import os, lmdbcache
        c = lmdbcache.Cache({path!r})
        c["k"] = "v"
        if {clean!r}:
            c.close()
        else:
            os._exit(0)
        """,
        cwd=str(tmp_path), LMDBCACHE_BOOT_ID=boot,
    )


def test_marker_holds_the_boot_id_while_open_and_goes_on_last_close(cache_dir, monkeypatch):
    monkeypatch.setenv("LMDBCACHE_BOOT_ID", "boot-A")
    assert lmdbcache.cache.boot_id() == "boot-A"
    c1 = Cache(cache_dir)
    c2 = Cache(cache_dir)
    c1["k"] = 1
    assert read_marker(cache_dir) == "boot-A"
    c1.close()
    assert os.path.exists(marker(cache_dir))
    c2.close()
    assert not os.path.exists(marker(cache_dir))
    with Cache(cache_dir) as c:
        assert c["k"] == 1
        assert read_marker(cache_dir) == "boot-A"
    assert not os.path.exists(marker(cache_dir))


def test_marker_stays_while_another_process_has_the_cache_open(cache_dir, monkeypatch):
    monkeypatch.setenv("LMDBCACHE_BOOT_ID", "boot-A")
    ready, release = FORK.Event(), FORK.Event()

    def holder(path):
        with Cache(path) as c:
            c["child"] = 1
            ready.set()
            assert release.wait(TIMEOUT)
        return True

    with Cache(cache_dir) as c:
        c["parent"] = 1
    proc = FORK.Process(target=holder, args=(cache_dir,))
    proc.start()
    try:
        assert ready.wait(TIMEOUT)
        with Cache(cache_dir) as c:
            c["parent2"] = 1
        assert os.path.exists(marker(cache_dir))  # the child still has it open
        release.set()
        proc.join(TIMEOUT)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert proc.exitcode == 0
    assert not os.path.exists(marker(cache_dir))


def test_readonly_cache_writes_no_marker(cache_dir):
    with Cache(cache_dir) as c:
        c["k"] = 1
    with Cache(cache_dir, readonly=True) as ro:
        assert ro["k"] == 1
        assert not os.path.exists(marker(cache_dir))


def test_full_durability_writes_no_marker(cache_dir):
    with Cache(cache_dir, durability="full") as c:
        c["k"] = 1
        assert not os.path.exists(marker(cache_dir))
        assert c["k"] == 1


def test_cache_left_unsynced_by_another_boot_is_moved_aside(cache_dir, tmp_path, monkeypatch):
    write_and_exit(cache_dir, tmp_path, "boot-one", clean=False)
    assert read_marker(cache_dir) == "boot-one"
    monkeypatch.setenv("LMDBCACHE_BOOT_ID", "boot-two")
    with pytest.warns(RuntimeWarning, match="torn"):
        c = Cache(cache_dir)
    try:
        assert len(c) == 0
        assert "k" not in c
        c["new"] = 1
        assert read_marker(cache_dir) == "boot-two"
    finally:
        c.close()
    [aside] = glob.glob(os.path.join(cache_dir, "torn-*"))
    assert os.path.isfile(os.path.join(aside, "data.mdb"))
    with Cache(aside, readonly=True) as old:  # the old file is kept for inspection
        assert old["k"] == "v"
    with Cache(cache_dir) as c:
        assert dict(c.items()) == {"new": 1}


def test_cache_left_unsynced_in_this_boot_is_intact(cache_dir, tmp_path, monkeypatch):
    write_and_exit(cache_dir, tmp_path, "boot-one", clean=False)
    monkeypatch.setenv("LMDBCACHE_BOOT_ID", "boot-one")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Cache(cache_dir) as c:
            assert c["k"] == "v"
    assert glob.glob(os.path.join(cache_dir, "torn-*")) == []


def test_cleanly_closed_cache_survives_a_reboot(cache_dir, tmp_path, monkeypatch):
    write_and_exit(cache_dir, tmp_path, "boot-one", clean=True)
    assert not os.path.exists(marker(cache_dir))
    monkeypatch.setenv("LMDBCACHE_BOOT_ID", "boot-two")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Cache(cache_dir) as c:
            assert c["k"] == "v"
    assert glob.glob(os.path.join(cache_dir, "torn-*")) == []


def test_readonly_open_of_a_torn_cache_raises_corrupterror(cache_dir, tmp_path, monkeypatch):
    write_and_exit(cache_dir, tmp_path, "boot-one", clean=False)
    monkeypatch.setenv("LMDBCACHE_BOOT_ID", "boot-two")
    with pytest.raises(lmdbcache.CorruptError):
        Cache(cache_dir, readonly=True)
    assert os.path.exists(os.path.join(cache_dir, "data.mdb"))  # nothing was moved
    assert read_marker(cache_dir) == "boot-one"


def test_sync_flushes_and_keeps_working(cache, cache_dir):
    cache["k"] = "v"
    assert cache.sync() is None
    cache["k2"] = "v2"
    cache.sync()
    assert cache["k"] == "v" and cache["k2"] == "v2"
    cache.close()
    with Cache(cache_dir, readonly=True) as ro:
        assert ro.sync() is None
        assert ro["k2"] == "v2"


# ---- 10. bad input -----------------------------------------------------------------------------------

BAD_TTLS = [
    pytest.param(-1, ValueError, id="negative"),
    pytest.param(0, ValueError, id="zero"),
    pytest.param(0.0, ValueError, id="zero-float"),
    pytest.param(math.inf, ValueError, id="inf"),
    pytest.param(math.nan, ValueError, id="nan"),
    pytest.param("10", TypeError, id="str"),
    pytest.param([1], TypeError, id="list"),
]


@pytest.mark.parametrize("ttl, exc", BAD_TTLS)
def test_bad_default_ttl_is_rejected(cache_dir, ttl, exc):
    with pytest.raises(exc):
        Cache(cache_dir, ttl=ttl)


@pytest.mark.parametrize("ttl, exc", BAD_TTLS)
def test_bad_ttl_in_a_write_raises_and_changes_nothing(cache, ttl, exc):
    cache.set("k", "old", ttl=60)
    with pytest.raises(exc):
        cache.set("k", "new", ttl=ttl)
    with pytest.raises(exc):
        cache.set("fresh", 1, ttl=ttl)
    with pytest.raises(exc):
        cache.add("fresh", 1, ttl=ttl)
    with pytest.raises(exc):
        cache.set_many({"fresh": 1, "k": "new"}, ttl=ttl)
    with pytest.raises(exc):
        cache.touch("k", ttl=ttl)
    assert dict(cache.items()) == {"k": "old"}


@pytest.mark.parametrize("ttl, exc", BAD_TTLS)
def test_bad_ttl_in_an_async_write_raises(cache, ttl, exc):
    async def main():
        with pytest.raises(exc):
            await cache.aset("k", 1, ttl=ttl)
        with pytest.raises(exc):
            await cache.atouch("k", ttl=ttl)

    asyncio.run(main())
    assert "k" not in cache


def test_touch_with_a_bad_ttl_keeps_the_old_expiry(cache):
    cache.set("k", "v", ttl=TTL)
    with pytest.raises(ValueError):
        cache.touch("k", ttl=-5)
    time.sleep(PAST_TTL)
    assert "k" not in cache
