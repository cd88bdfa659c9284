"""Cache.copy / compact / verify / namespaces, and the C methods' signatures."""
import inspect
import os
import subprocess
import sys
import textwrap

import pytest

import lmdbcache

# Python 3.10 has no -P; its test run starts in tests/, where no source package can shadow.
SAFE_PATH = ["-P"] if sys.version_info >= (3, 11) else []


def fill(c, n=5000):
    c.update({i: b"v" * 100 for i in range(n)})


def test_copy_is_consistent_and_durable(cache, tmp_path):
    fill(cache)
    cache.namespace("ns")["k"] = "v"
    seen = []
    cache.copy(tmp_path / "a", progress=lambda done, total: seen.append((done, total)))
    assert seen[0][0] == 0 and seen[-1][0] == seen[-1][1]
    cache.copy(str(tmp_path / "b"), compact=True)
    mode = os.stat(os.path.join(cache.path, "data.mdb")).st_mode & 0o777
    assert os.stat(tmp_path / "b" / "data.mdb").st_mode & 0o777 == mode
    for d in ("a", "b"):
        with lmdbcache.Cache(tmp_path / d) as c:
            assert len(c) == 5000 and c.namespace("ns")["k"] == "v"
            assert c.verify().ok


def test_copy_refusals(cache, tmp_path):
    fill(cache, 10)
    with pytest.raises(ValueError, match="onto itself"):
        cache.copy(cache.path)
    cache.copy(tmp_path / "d")
    with pytest.raises(FileExistsError):
        cache.copy(tmp_path / "d")
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError):
        cache.copy(tmp_path / "f")
    with cache.transaction():
        with pytest.raises(lmdbcache.Error, match="transaction"):
            cache.copy(tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_compact_shrinks_and_keeps_everything(cache):
    fill(cache, 30000)
    cache.delete_many(range(29000))
    data = os.path.join(cache.path, "data.mdb")
    os.chmod(data, 0o600)
    result = cache.compact()
    assert os.stat(data).st_mode & 0o777 == 0o600  # the swapped-in file keeps the mode
    assert isinstance(result, lmdbcache.CompactResult)
    assert result.after_disk < result.before_disk / 4
    assert result.after_bytes == os.stat(os.path.join(cache.path, "data.mdb")).st_size
    assert len(cache) == 1000 and cache[29999] == b"v" * 100  # reopened on use
    cache["new"] = 1
    assert cache.verify().ok


def test_compact_twice_and_after_close(cache):
    """compact() closes this process's Env; a second compact() (or one after
    close()) reopens it before taking guard.lock, which the C core's open
    takes too: no wait for its own lock."""
    import time

    fill(cache, 2000)
    cache.delete_many(range(1000))
    t0 = time.monotonic()
    cache.compact()
    cache.compact()
    cache.close()
    cache.compact()
    assert time.monotonic() - t0 < 10
    assert len(cache) == 1000 and cache[1999] == b"v" * 100
    data = os.path.join(cache.path, "data.mdb")
    page = cache._env_info()["page_size"]
    assert os.stat(data).st_size >= cache._env_info()["used_bytes"] >= page


def test_compact_refuses_while_this_process_shares_the_env(cache):
    fill(cache, 10)
    other = cache.namespace("other")
    with pytest.raises(lmdbcache.Error, match="other Cache objects of this process"):
        cache.compact()
    other.close()
    cache.compact()
    with cache.transaction():
        with pytest.raises(lmdbcache.Error, match="transaction"):
            cache.compact()


def test_compact_of_a_readonly_cache(cache_dir):
    lmdbcache.Cache(cache_dir).close()
    with lmdbcache.Cache(cache_dir, readonly=True) as ro:
        with pytest.raises(lmdbcache.ReadOnlyError):
            ro.compact()


def test_two_readonly_opens_share_the_env(cache_dir):
    lmdbcache.Cache(cache_dir).close()
    a = lmdbcache.Cache(cache_dir, readonly=True)
    b = lmdbcache.Cache(cache_dir, readonly=True)
    assert len(a) == len(b) == 0
    a.close()
    b.close()


def test_verify_counts_namespaces_and_expired(cache):
    fill(cache, 100)
    cache.namespace("a")["x"] = 1
    cache.set("gone", 1, ttl=0.001)
    import time

    time.sleep(0.01)
    report = cache.verify()
    assert report.ok and bool(report)
    assert report.records == 102 and report.expired == 1
    assert report.namespaces == {None: 101, "a": 1}
    assert "damaged=0" in repr(report)


def test_verify_detects_a_checksum_mismatch(cache_dir):
    """A flipped byte in a payload decodes fine (bytes stay bytes): only the
    record checksum (format 2) finds it."""
    with lmdbcache.Cache(cache_dir) as c:
        c["ok"] = b"fine"
        c["flip"] = b"x" * 64
        c.namespace("ns")["flip"] = b"y" * 64
    script = textwrap.dedent(f"""
        import lmdb
        env = lmdb.open({cache_dir!r}, max_dbs=64, map_size=1 << 30)
        ns = env.open_db(b"__ns__:ns")
        with env.begin(write=True) as txn:
            for db in (None, ns):
                for k, v in list(txn.cursor(db=db)):
                    if v.endswith(b"x" * 64) or v.endswith(b"y" * 64):
                        txn.put(k, v[:-1] + b"z", db=db)
        env.close()
    """)
    subprocess.run([sys.executable, *SAFE_PATH, "-c", script], check=True, timeout=60)
    with lmdbcache.Cache(cache_dir) as c:
        report = c.verify()
        assert report.damaged == 2 and report.records == 3
        assert {(p.namespace, p.reason) for p in report.problems} == {
            (None, "checksum mismatch"), ("ns", "checksum mismatch")}
        with pytest.raises(lmdbcache.CorruptError, match="checksum mismatch"):
            c["flip"]
        assert c["ok"] == b"fine"


def test_namespaces(cache):
    assert cache.namespaces() == [None]
    cache.namespace("b")["k"] = 1
    cache.namespace("a")["k"] = 1

    @cache.memoize
    def f(x):
        return x

    f(1)
    assert cache.namespaces() == [None, "a", "b"]
    assert cache.namespaces(internal=True) == [None, "__memo__", "a", "b"]


@pytest.mark.parametrize("name, params", [
    ("get", "(key, default=None)"),
    ("set", "(key, value, ttl=None)"),
    ("add", "(key, value, ttl=None)"),
    ("incr", "(key, delta=1, default=0)"),
    ("touch", "(key, ttl=None)"),
    ("delete", "(key, /)"),
    ("get_many", "(keys, /)"),
    ("delete_many", "(keys, /)"),
    ("clear", "()"),
    ("expire", "()"),
    ("close", "()"),
    ("sync", "()"),
    ("stats", "(reset=False)"),
])
def test_c_methods_have_signatures(cache, name, params):
    assert str(inspect.signature(getattr(cache, name))) == params
    assert str(inspect.signature(getattr(lmdbcache.Cache, name))).startswith("(self")
