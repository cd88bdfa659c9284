"""Cache.copy / compact / verify / namespaces, and the C methods' signatures."""
import inspect
import os

import pytest

import lmdbcache


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
