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
