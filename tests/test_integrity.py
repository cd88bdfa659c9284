"""Record checksums, the format version, and read-only views beside a writable
cache (issue "Never lose or corrupt the cache")."""
import os
import subprocess
import sys
import textwrap

import pytest

import lmdbcache
from lmdbcache import Cache


def raw_edit(path, code):
    """Run py-lmdb code on the cache's file in another process (no Cache open)."""
    script = textwrap.dedent("""
        import lmdb, sys
        env = lmdb.open(sys.argv[1], max_dbs=64, map_size=1 << 30)
        with env.begin(write=True) as txn:
    """) + textwrap.indent(textwrap.dedent(code), "        ")
    subprocess.run([sys.executable, "-c", script, path], check=True, timeout=60)


@pytest.mark.parametrize("durability", ["process", "full"])
def test_readonly_view_beside_a_writable_cache(tmp_path, durability):
    path = str(tmp_path / "c")
    w = Cache(path, durability=durability, size_limit=1 << 22)
    w["k"] = "v"
    w.namespace("ns")["a"] = 1
    r = Cache(path, readonly=True)  # other durability and size_limit: just a view
    assert r["k"] == "v"
    assert r.namespace("ns")["a"] == 1
    with pytest.raises(lmdbcache.ReadOnlyError):
        r["x"] = 1
    w["k"] = "v2"
    assert r["k"] == "v2"
    with pytest.raises(lmdbcache.Error, match="does not exist"):
        r.namespace("missing")
    r.close()
    w.close()


def test_a_record_moved_to_another_key_is_corrupt_not_a_wrong_value(tmp_path):
    path = str(tmp_path / "c")
    with Cache(path) as c:
        c["alice"] = "alice's secret"
        c["bob"] = "bob's data"
    raw_edit(path, """
        main = env.open_db(None, txn=txn)
        txn.put(b"sbob", txn.get(b"salice", db=main), db=main)
    """)
    with Cache(path) as c:
        assert c["alice"] == "alice's secret"
        with pytest.raises(lmdbcache.CorruptError, match="checksum"):
            c["bob"]
        with pytest.raises(lmdbcache.CorruptError):
            c.get("bob", "default")
        c["bob"] = "new"  # a write replaces the damaged record
        assert c["bob"] == "new"


def test_a_record_moved_to_another_namespace_is_corrupt(tmp_path):
    path = str(tmp_path / "c")
    with Cache(path) as c:
        c["k"] = "default namespace"
        c.namespace("other")["k"] = "other namespace"
    raw_edit(path, """
        main = env.open_db(None, txn=txn)
        other = env.open_db(b"__ns__:other", txn=txn)
        txn.put(b"sk", txn.get(b"sk", db=main), db=other)
    """)
    with Cache(path) as c:
        assert c["k"] == "default namespace"
        with pytest.raises(lmdbcache.CorruptError):
            c.namespace("other")["k"]
        with pytest.raises(lmdbcache.CorruptError):
            list(c.namespace("other").items())


def test_a_flipped_payload_byte_is_corrupt(tmp_path):
    path = str(tmp_path / "c")
    with Cache(path) as c:
        c["k"] = b"x" * 100
    raw_edit(path, """
        main = env.open_db(None, txn=txn)
        rec = bytearray(txn.get(b"sk", db=main))
        rec[-1] ^= 1
        txn.put(b"sk", bytes(rec), db=main)
    """)
    with Cache(path) as c:
        with pytest.raises(lmdbcache.CorruptError, match="checksum"):
            c["k"]
        with pytest.raises(lmdbcache.CorruptError):
            "k" in c
        with pytest.raises(lmdbcache.CorruptError, match="removed"):
            c.pop("k", None)  # removes the damaged record, and says so
        assert "k" not in c


def test_a_cache_of_the_previous_format_is_refused_with_a_clear_error(tmp_path):
    path = str(tmp_path / "c")
    with Cache(path) as c:
        c["k"] = 1
    raw_edit(path, """
        meta = env.open_db(b"__meta__", txn=txn)
        txn.put(b"format", b"1", db=meta)
    """)
    with pytest.raises(lmdbcache.FormatError, match="format 1.*reads format 3"):
        Cache(path)
    assert lmdbcache.FORMAT_VERSION == 3


@pytest.mark.parametrize("durability", ["process", "full"])
def test_reads_are_bounds_checked_after_open_growth_and_adoption(tmp_path, durability):
    """Every record read is checked against the file-backed part of the map;
    the check needs the map's base address, found from a page at open and
    after every remap.  If it cannot be found the check silently turns off --
    so assert it is on: after open, after this process grows the map, after
    adopting another process's growth, and in a read-only view."""
    path = str(tmp_path / "c")
    c = Cache(path, durability=durability)
    assert c._env_info()["bounds_checked"]
    start = c._env_info()["map_size"]
    for i in range(3000):
        c[i] = os.urandom(1000)
    assert c._env_info()["map_size"] > start  # grown (and remapped) here
    assert c._env_info()["bounds_checked"]
    code = textwrap.dedent("""
        import os, sys
        from lmdbcache import Cache
        c = Cache(sys.argv[1], durability=sys.argv[2])
        for i in range(3000, 9000):
            c[i] = os.urandom(1000)
        print(c._env_info()["map_size"])
    """)
    other = subprocess.run([sys.executable, *(["-P"] if sys.version_info >= (3, 11) else []),
                            "-c", code, path, durability], capture_output=True, text=True,
                           cwd=str(tmp_path), timeout=120)
    assert other.returncode == 0, other.stderr
    before = c._env_info()["map_size"]
    assert c[8999] is not None  # adopts the other process's larger map
    assert c._env_info()["map_size"] > before
    assert c._env_info()["bounds_checked"]
    with Cache(path, readonly=True) as ro:
        assert ro[5] is not None and ro._env_info()["bounds_checked"]
    c.close()
