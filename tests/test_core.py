"""Core behaviour of lmdbcache.Cache: the mapping protocol, values, keys, identity,
options, bad input and corruption, and threads."""
import collections.abc
import math
import os
import pickle
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading

import lmdb
import pytest

import lmdbcache
from lmdbcache import Cache

MiB = 1 << 20


# ---- helpers and module-level types (picklable) ----------------------------------


class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y

    def __eq__(self, other):
        return type(other) is Point and (self.x, self.y) == (other.x, other.y)

    def __hash__(self):
        return hash((self.x, self.y))


class Tag(str):
    """A str subclass: must come back as a Tag, not a plain str."""


class ExplodingReduce:
    def __reduce__(self):
        raise ValueError("refuse to pickle")


class HashableExplodingReduce:
    def __hash__(self):
        return 7

    def __eq__(self, other):
        return isinstance(other, HashableExplodingReduce)

    def __reduce__(self):
        raise RuntimeError("refuse to pickle key")


def data_fds(directory):
    """How many of this process's descriptors are open on <directory>/data.mdb."""
    target = os.path.realpath(os.path.join(directory, "data.mdb"))
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.path.realpath(os.readlink(f"/proc/self/fd/{fd}")) == target:
                n += 1
        except OSError:
            pass  # the descriptor listdir itself used
    return n


def run_python(code, *args, cwd):
    """Run code in a fresh interpreter (cwd outside the source tree)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True, text=True, timeout=60, cwd=cwd,
    )


def make_cache(path, items):
    with Cache(path) as c:
        for k, v in items.items():
            c[k] = v


def lmdb_put_raw(path, key, value, db_name=None):
    """Write raw bytes with py-lmdb; every Cache on path must be closed."""
    env = lmdb.open(path, max_dbs=64)
    try:
        db = env.open_db(db_name) if db_name is not None else None
        with env.begin(write=True, db=db) as txn:
            txn.put(key, value)
    finally:
        env.close()


# ---- 1. mapping protocol ------------------------------------------------------------


def test_cache_is_a_mutable_mapping(cache):
    assert isinstance(cache, collections.abc.MutableMapping)
    assert isinstance(cache, collections.abc.Mapping)


def test_getitem_returns_stored_value(cache):
    cache["a"] = 1
    assert cache["a"] == 1


def test_getitem_missing_raises_keyerror_with_the_key(cache):
    with pytest.raises(KeyError) as exc:
        cache["missing"]
    assert exc.value.args[0] == "missing"


def test_getitem_missing_tuple_key_keyerror_args_is_the_tuple(cache):
    key = (1, "two", b"three")
    with pytest.raises(KeyError) as exc:
        cache[key]
    assert exc.value.args[0] == key
    assert len(exc.value.args) == 1


def test_get_returns_none_or_default(cache):
    assert cache.get("nope") is None
    assert cache.get("nope", default=42) == 42
    assert cache.get("nope", 42) == 42
    cache["yes"] = "here"
    assert cache.get("yes") == "here"
    assert cache.get("yes", 42) == "here"
    assert cache.get("yes", default=42) == "here"


def test_get_rejects_unknown_keyword(cache):
    with pytest.raises(TypeError):
        cache.get("k", dflt=1)


def test_set_method_stores(cache):
    assert cache.set("k", "v") is None
    assert cache["k"] == "v"


def test_setitem_overwrites(cache):
    cache["k"] = "first"
    cache["k"] = "second"
    assert cache["k"] == "second"
    assert len(cache) == 1
    cache["k"] = [1, 2]  # overwrite with a value of another type
    assert cache["k"] == [1, 2]


def test_del_removes_key(cache):
    cache["k"] = 1
    cache["other"] = 2
    del cache["k"]
    assert "k" not in cache
    assert cache.get("k") is None
    assert cache["other"] == 2
    assert len(cache) == 1


def test_del_missing_raises_keyerror_with_the_key(cache):
    with pytest.raises(KeyError) as exc:
        del cache["absent"]
    assert exc.value.args[0] == "absent"
    with pytest.raises(KeyError) as exc:
        del cache[("a", 1)]
    assert exc.value.args[0] == ("a", 1)


def test_in_checks_membership(cache):
    assert "k" not in cache
    cache["k"] = None  # a stored None is still present
    assert "k" in cache
    assert "K" not in cache


def test_len_counts_entries(cache):
    assert len(cache) == 0
    for i in range(10):
        cache[i] = i
    assert len(cache) == 10
    cache[3] = "again"
    assert len(cache) == 10
    del cache[0]
    assert len(cache) == 9


def test_iteration_yields_every_key_once(cache):
    keys = {f"k{i}" for i in range(200)}  # several iteration chunks
    for k in keys:
        cache[k] = k.upper()
    listed = list(cache)
    assert len(listed) == 200
    assert set(listed) == keys


def test_iteration_of_empty_cache(cache):
    assert list(cache) == []
    assert list(cache.values()) == []
    assert list(cache.items()) == []


def test_keys_values_items_views(cache):
    data = {"a": 1, "b": 2, "c": 3}
    cache.update(data)
    keys, values, items = cache.keys(), cache.values(), cache.items()
    assert len(keys) == len(values) == len(items) == 3
    assert "a" in keys and "z" not in keys
    assert 2 in values and 5 not in values
    assert ("c", 3) in items and ("c", 4) not in items and ("z", 3) not in items
    assert set(keys) == set(data)
    assert sorted(values) == [1, 2, 3]
    assert dict(items) == data
    # views are live
    cache["d"] = 4
    assert len(keys) == 4 and "d" in keys and ("d", 4) in items


def test_keys_view_set_operations(cache):
    cache.update({"a": 1, "b": 2, "c": 3})
    keys = cache.keys()
    assert keys & {"a", "z"} == {"a"}
    assert keys | {"z"} == {"a", "b", "c", "z"}
    assert keys - {"a"} == {"b", "c"}
    assert keys ^ {"a", "z"} == {"b", "c", "z"}
    assert keys == {"a", "b", "c"}
    assert keys.isdisjoint({"x", "y"})
    assert not keys.isdisjoint({"c"})
    assert cache.items() & {("a", 1), ("b", 9)} == {("a", 1)}


def test_pop_returns_and_removes(cache):
    cache["k"] = {"v": 1}
    assert cache.pop("k") == {"v": 1}
    assert "k" not in cache
    with pytest.raises(KeyError) as exc:
        cache.pop("k")
    assert exc.value.args[0] == "k"
    assert cache.pop("k", "dflt") == "dflt"
    assert cache.pop("k", None) is None
    assert "k" not in cache


def test_pop_missing_tuple_key_keyerror_args(cache):
    with pytest.raises(KeyError) as exc:
        cache.pop((1, 2))
    assert exc.value.args[0] == (1, 2)


def test_popitem_removes_one_pair_until_empty(cache):
    data = {"a": 1, "b": 2, "c": 3}
    cache.update(data)
    seen = {}
    for _ in range(3):
        k, v = cache.popitem()
        assert k not in seen
        seen[k] = v
        assert k not in cache
    assert seen == data
    assert len(cache) == 0
    with pytest.raises(KeyError):
        cache.popitem()


def test_setdefault(cache):
    assert cache.setdefault("k", 5) == 5
    assert cache["k"] == 5
    assert cache.setdefault("k", 6) == 5
    assert cache["k"] == 5
    assert cache.setdefault("n") is None
    assert "n" in cache and cache["n"] is None


def test_update_from_dict_pairs_kwargs_and_cache(cache, tmp_path):
    cache.update({"a": 1, "b": 2})
    cache.update([("c", 3), ("a", 10)])
    cache.update(d=4, e=5)
    cache.update({"f": 6}, g=7)
    assert dict(cache.items()) == {"a": 10, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6, "g": 7}
    with Cache(str(tmp_path / "other")) as other:
        other.update({"h": 8, "a": 11})
        cache.update(other)
    assert cache["h"] == 8 and cache["a"] == 11


def test_equality_with_dict(cache, tmp_path):
    assert cache == {}
    cache.update({"a": 1, (1, 2): [3]})
    assert cache == {"a": 1, (1, 2): [3]}
    assert {"a": 1, (1, 2): [3]} == cache
    assert cache != {"a": 1}
    assert cache != {"a": 2, (1, 2): [3]}
    assert cache != {"a": 1, (1, 2): [3], "x": 0}
    assert not (cache == {"a": 1})
    assert cache != [("a", 1), ((1, 2), [3])]
    with Cache(str(tmp_path / "twin")) as twin:
        twin.update({(1, 2): [3], "a": 1})
        assert cache == twin
        twin["a"] = 2
        assert cache != twin


def test_cache_is_unhashable(cache):
    with pytest.raises(TypeError):
        hash(cache)


def test_truthiness(cache):
    assert not cache
    assert bool(cache) is False
    cache["k"] = 0
    assert cache
    del cache["k"]
    assert not cache


def test_clear_empties_and_cache_stays_usable(cache, cache_dir):
    for i in range(100):
        cache[f"k{i}"] = i
    cache[b""] = "empty bytes key"
    cache[""] = "empty str key"
    cache.clear()
    assert len(cache) == 0
    assert list(cache) == []
    assert "k1" not in cache and b"" not in cache and "" not in cache
    cache.clear()  # clearing an empty cache is fine
    cache["after"] = 1
    cache.close()
    with Cache(cache_dir) as again:  # the cache's own metadata survived clear()
        assert dict(again.items()) == {"after": 1}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_operations_match_a_dict(cache, seed):
    rng = random.Random(seed)
    pool = (
        [f"s{i}" for i in range(8)]
        + [f"b{i}".encode() for i in range(4)]
        + [-3, 0, 7, 2**70]
        + [(1, "t"), ("t", (2, b"x")), ()]
        + ["", b"", "L" * 700, "L" * 699 + "M"]
    )
    model = {}
    for step in range(400):
        op = rng.choice(["set", "set", "del", "pop", "pop_default", "get", "contains"])
        key = rng.choice(pool)
        value = rng.choice([rng.randint(-10**6, 10**6), f"v{step}", [step, "list"], None,
                            b"\x00" * rng.randint(0, 40), 2**80 + step, rng.random()])
        if op == "set":
            cache[key] = value
            model[key] = value
        elif op == "del":
            if key in model:
                del cache[key]
                del model[key]
            else:
                with pytest.raises(KeyError):
                    del cache[key]
        elif op == "pop":
            if key in model:
                assert cache.pop(key) == model.pop(key)
            else:
                with pytest.raises(KeyError):
                    cache.pop(key)
        elif op == "pop_default":
            assert cache.pop(key, "D") == model.pop(key, "D")
        elif op == "get":
            assert cache.get(key, "D") == model.get(key, "D")
        else:
            assert (key in cache) == (key in model)
        assert len(cache) == len(model), (seed, step, op, key)
        assert dict(cache.items()) == model, (seed, step, op, key)


# ---- 2. values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        b"bytes", b"", b"\x00\xff" * 10, "str", "", "ünïcødé ☃ 𝄞",
        0, 1, -1, -12345, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**100, -(2**100),
        0.0, 1.5, -2.25, 1e308, 5e-324, math.inf, -math.inf,
        None, True, False,
    ],
    ids=repr,
)
def test_scalar_values_round_trip_with_exact_type(cache, value):
    cache["k"] = value
    got = cache["k"]
    assert type(got) is type(value)
    assert got == value


def test_nan_round_trips(cache):
    cache["nan"] = math.nan
    got = cache["nan"]
    assert type(got) is float and math.isnan(got)


def test_negative_zero_keeps_its_sign(cache):
    cache["z"] = -0.0
    got = cache["z"]
    assert got == 0.0 and math.copysign(1.0, got) == -1.0
    cache["z"] = 0.0
    assert math.copysign(1.0, cache["z"]) == 1.0


def test_bool_values_are_not_ints(cache):
    cache["t"] = True
    cache["one"] = 1
    assert cache["t"] is True
    assert type(cache["one"]) is int
    cache["f"] = False
    cache["zero"] = 0
    assert cache["f"] is False
    assert type(cache["zero"]) is int
    cache["none"] = None
    assert cache["none"] is None


@pytest.mark.parametrize(
    "value",
    [
        {"a": [1, 2, {"b": (3, 4)}], 5: None},
        [1, "two", b"three", 4.0, [5]],
        {1, 2, 3},
        frozenset({"x"}),
        (1, (2, 3)),
        Point(1, 2),
        [Point(3, 4), Point(3, 4)],
        bytearray(b"mutable bytes"),
        bytearray(),
        Tag("a str subclass"),
        "\ud800",
        "lone \udfff surrogate in text",
        complex(1, -2),
    ],
    ids=lambda v: type(v).__name__,
)
def test_pickled_values_round_trip(cache, value):
    cache["k"] = value
    got = cache["k"]
    assert type(got) is type(value)
    assert got == value


def test_container_values_are_copies(cache):
    value = {"list": [1, 2]}
    cache["k"] = value
    value["list"].append(3)  # mutating the original does not change the stored value
    assert cache["k"] == {"list": [1, 2]}
    got = cache["k"]
    got["list"].append(4)
    assert cache["k"] == {"list": [1, 2]}


def test_large_value_round_trips(cache):
    big = os.urandom(MiB) * 10  # 10 MiB
    cache["big"] = big
    assert cache["big"] == big
    cache["big-str"] = "é" * (5 * MiB)
    assert cache["big-str"] == "é" * (5 * MiB)


VALUES_FOR_PERSISTENCE = {
    "bytes": b"\x00raw",
    "str": "text ☃",
    "int": -(2**63),
    "bigint": 2**100,
    "float": -0.5,
    "none": None,
    "true": True,
    "false": False,
    "dict": {"nested": [1, (2, 3)]},
    ("tuple", 1): {1, 2},
    b"bin": bytearray(b"ba"),
    "x" * 1000: "long key",
}


def test_values_persist_across_close_and_reopen(cache_dir):
    make_cache(cache_dir, VALUES_FOR_PERSISTENCE)
    with Cache(cache_dir) as c:
        assert len(c) == len(VALUES_FOR_PERSISTENCE)
        for k, v in VALUES_FOR_PERSISTENCE.items():
            got = c[k]
            assert type(got) is type(v) and got == v, k
        assert set(c) == set(VALUES_FOR_PERSISTENCE)


def test_values_persist_into_a_fresh_process(cache_dir, tmp_path):
    make_cache(cache_dir, {"a": 1, "b": [2, "three"], ("t", 4): b"five", "f": 0.25})
    result = run_python(
        """
        import sys, lmdbcache
        c = lmdbcache.Cache(sys.argv[1])
        assert c["a"] == 1 and type(c["a"]) is int
        assert c["b"] == [2, "three"]
        assert c[("t", 4)] == b"five"
        assert c["f"] == 0.25
        assert len(c) == 4
        c["written-by-child"] = {"ok": True}
        c.close()
        print("CHILD-OK")
        """,
        cache_dir,
        cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert "CHILD-OK" in result.stdout
    with Cache(cache_dir) as c:
        assert c["written-by-child"] == {"ok": True}
        assert len(c) == 5


# ---- 3. keys -------------------------------------------------------------------------


KEYS = [
    "str", "", "ünï☃", b"bytes", b"", b"\x00\xff",
    0, 1, -1, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**64, 2**100, -(2**100),
    1.5, -0.25, float("inf"),
    (), (1,), (1, "a", b"b"), ((1, 2), ("x", (b"y", (3.5, None)))), (2**70, -5),
    ("",), (b"",), ("a", ""),
    None, False, frozenset({1, 2}), Point(1, 2), "\ud800",
]


def test_every_kind_of_key_round_trips(cache):
    for i, k in enumerate(KEYS):
        cache[k] = i
    assert len(cache) == len(KEYS)
    for i, k in enumerate(KEYS):
        assert k in cache, k
        assert cache[k] == i, k
    listed = list(cache)
    assert len(listed) == len(KEYS)
    # every key comes back from iteration equal to the original, with its type
    for k in KEYS:
        matches = [x for x in listed if type(x) is type(k) and x == k]
        assert len(matches) == 1, k
    # items pair each key with its own value (0/False and 1.0/1 would merge in a dict)
    for k, v in cache.items():
        assert KEYS[v] == k and type(KEYS[v]) is type(k)


def test_int_keys_come_back_as_int(cache):
    for k in (-(2**63), -1, 0, 1, 2**63 - 1, 2**64, -(2**100)):
        cache[k] = k
    for k in cache:
        assert type(k) is int
        assert cache[k] == k
    assert sorted(cache) == sorted([-(2**63), -1, 0, 1, 2**63 - 1, 2**64, -(2**100)])


def test_one_one_point_zero_and_true_are_three_keys(cache):
    cache[1] = "int"
    cache[1.0] = "float"
    cache[True] = "bool"
    assert len(cache) == 3
    assert cache[1] == "int"
    assert cache[1.0] == "float"
    assert cache[True] == "bool"
    assert sorted(type(k).__name__ for k in cache) == ["bool", "float", "int"]
    del cache[1.0]
    assert cache[1] == "int" and cache[True] == "bool" and 1.0 not in cache


def test_str_and_bytes_keys_are_distinct(cache):
    cache["a"] = "str"
    cache[b"a"] = "bytes"
    assert len(cache) == 2
    assert cache["a"] == "str"
    assert cache[b"a"] == "bytes"
    del cache["a"]
    assert b"a" in cache and "a" not in cache


def test_int_and_str_of_digits_are_distinct(cache):
    cache[5] = "int"
    cache["5"] = "str"
    cache[(5,)] = "tuple"
    assert (cache[5], cache["5"], cache[(5,)]) == ("int", "str", "tuple")


def test_empty_str_and_empty_bytes_keys(cache):
    cache[""] = "empty str"
    cache[b""] = "empty bytes"
    assert cache[""] == "empty str"
    assert cache[b""] == "empty bytes"
    assert "" in cache and b"" in cache
    assert len(cache) == 2
    assert sorted(cache, key=repr) == sorted(["", b""], key=repr)
    assert cache.pop(b"") == "empty bytes"
    assert b"" not in cache and "" in cache
    del cache[""]
    assert len(cache) == 0


LONG_KEYS = [
    "x" * 1000,
    b"y" * 5000,
    tuple(range(200)),
    ("long", "z" * 600, b"w" * 600),
    "é" * 300,  # 600 bytes of UTF-8
    "a" * 511,  # one byte over the limit once tagged
    2**5000,
]


def test_long_keys_set_get_contains_delete(cache):
    for i, k in enumerate(LONG_KEYS):
        cache[k] = i
    assert len(cache) == len(LONG_KEYS)
    for i, k in enumerate(LONG_KEYS):
        assert k in cache
        assert cache[k] == i
        assert cache.get(k) == i
    cache[LONG_KEYS[0]] = "overwritten"
    assert cache[LONG_KEYS[0]] == "overwritten"
    assert len(cache) == len(LONG_KEYS)
    del cache[LONG_KEYS[0]]
    assert LONG_KEYS[0] not in cache
    with pytest.raises(KeyError) as exc:
        cache[LONG_KEYS[0]]
    assert exc.value.args[0] == LONG_KEYS[0]
    assert cache.pop(LONG_KEYS[1]) == 1
    assert LONG_KEYS[1] not in cache
    assert cache.pop(LONG_KEYS[1], "gone") == "gone"
    with pytest.raises(KeyError):
        del cache[LONG_KEYS[1]]
    assert len(cache) == len(LONG_KEYS) - 2


def test_long_keys_come_back_intact_from_iteration(cache):
    for i, k in enumerate(LONG_KEYS):
        cache[k] = i
    listed = list(cache)
    assert len(listed) == len(LONG_KEYS)
    for k in LONG_KEYS:
        assert [x for x in listed if type(x) is type(k) and x == k] == [k]
    assert dict(cache.items()) == {k: i for i, k in enumerate(LONG_KEYS)}
    assert sorted(cache.values()) == list(range(len(LONG_KEYS)))


def test_long_keys_sharing_a_prefix_are_distinct(cache):
    prefix = "p" * 600
    a, b = prefix + "A", prefix + "B"
    cache[a] = "A"
    assert b not in cache
    assert cache.get(b) is None
    cache[b] = "B"
    assert (cache[a], cache[b]) == ("A", "B")
    del cache[a]
    assert b in cache and a not in cache
    assert list(cache) == [b]


def test_long_str_and_long_bytes_key_are_distinct(cache):
    cache["q" * 1000] = "str"
    cache[b"q" * 1000] = "bytes"
    assert cache["q" * 1000] == "str"
    assert cache[b"q" * 1000] == "bytes"
    assert len(cache) == 2


def test_keys_at_the_length_limit(cache):
    # "a"*510 encodes in 511 bytes (fits); "a"*511 does not and is digested
    short, long_ = "a" * 510, "a" * 511
    cache[short] = "short"
    cache[long_] = "long"
    assert (cache[short], cache[long_]) == ("short", "long")
    assert set(cache) == {short, long_}


def test_long_keys_persist(cache_dir):
    make_cache(cache_dir, {k: i for i, k in enumerate(LONG_KEYS)})
    with Cache(cache_dir) as c:
        assert dict(c.items()) == {k: i for i, k in enumerate(LONG_KEYS)}


# ---- 4. identity, lifecycle, pickling -------------------------------------------------


def test_lmdbcache_alias():
    assert lmdbcache.LMDBCache is Cache
    assert issubclass(lmdbcache.MapFullError, lmdbcache.Error)
    assert issubclass(lmdbcache.ReadOnlyError, lmdbcache.Error)
    assert issubclass(lmdbcache.CorruptError, lmdbcache.Error)
    assert issubclass(lmdbcache.FormatError, lmdbcache.Error)
    assert issubclass(lmdbcache.LockError, lmdbcache.Error)


def test_context_manager_closes_and_returns_cache(cache_dir):
    with Cache(cache_dir) as c:
        assert isinstance(c, Cache)
        c["k"] = "v"
        assert data_fds(cache_dir) == 1
    assert data_fds(cache_dir) == 0  # the environment was closed


def test_using_a_closed_cache_reopens_it(cache_dir):
    c = Cache(cache_dir)
    c["k"] = "v"
    c.close()
    assert data_fds(cache_dir) == 0
    assert c["k"] == "v"
    c["k2"] = "v2"
    assert len(c) == 2 and set(c) == {"k", "k2"}
    assert data_fds(cache_dir) == 1
    c.close()
    c.close()  # closing twice is harmless
    with c:  # and a closed cache can be used as a context manager again
        assert c["k2"] == "v2"
    assert data_fds(cache_dir) == 0


def test_repr_names_class_and_path(cache):
    assert repr(cache) == f"Cache({cache.path!r})"


def test_path_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Cache("relative/dir") as c:
        assert c.path == str(tmp_path / "relative" / "dir")
        assert os.path.isabs(c.path)
        c["k"] = 1
    assert os.path.exists(tmp_path / "relative" / "dir" / "data.mdb")


def test_path_expands_user(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with Cache("~/homecache") as c:
        assert c.path == str(tmp_path / "homecache")
        c["k"] = 1
    assert (tmp_path / "homecache" / "data.mdb").exists()


def test_path_accepts_pathlike(tmp_path):
    with Cache(tmp_path / "pl") as c:
        assert c.path == str(tmp_path / "pl")
        assert isinstance(c.path, str)


def test_directory_is_created_with_mode_0700(tmp_path):
    target = tmp_path / "deep" / "er" / "cache"
    with Cache(str(target)) as c:
        c["k"] = 1
    assert target.is_dir()
    assert (target.stat().st_mode & 0o777) == 0o700


def test_pickled_cache_works_on_same_path_with_same_options(tmp_path):
    path = str(tmp_path / "p")
    opts = dict(map_size=4 * MiB, size_limit=64 * MiB, durability="full", max_readers=200)
    with Cache(path, **opts) as c:
        c["k"] = "v"
        clone = pickle.loads(pickle.dumps(c))
        try:
            assert type(clone) is Cache
            assert clone is not c
            assert clone.path == c.path
            assert clone.options == c.options
            assert {k: clone.options[k] for k in opts} == opts
            assert clone.options["readonly"] is False
            assert clone["k"] == "v"
            clone["from-clone"] = 1
            assert c["from-clone"] == 1
        finally:
            clone.close()
    default = Cache(str(tmp_path / "d"))
    try:
        assert pickle.loads(pickle.dumps(default)).options == default.options
        assert default.options == {"map_size": lmdbcache.cache.DEFAULT_MAP_SIZE, "size_limit": None, "readonly": False,
                                   "durability": "process", "max_readers": 1024,
                                   "eviction_policy": "least-recently-stored", "ttl": None,
                                   "namespace": None, "timeout": 60.0,
                                   "on_incompatible": "raise", "readahead": False,
                                   "allow_shared": False, "secret": None,
                                   "serializer": "pickle", "compress": None,
                                   "compress_threshold": 4096}
    finally:
        default.close()


def test_options_property_is_a_copy(cache):
    cache.options["readonly"] = True
    assert cache.options["readonly"] is False
    cache["still-writable"] = 1


# ---- 5. one environment per path per process -------------------------------------------


def test_two_caches_on_one_path_share_one_environment(cache_dir):
    a = Cache(cache_dir)
    b = Cache(cache_dir)
    try:
        assert data_fds(cache_dir) == 1
        a["x"] = 1
        assert b["x"] == 1
        b["y"] = 2
        assert a["y"] == 2
        assert len(a) == len(b) == 2
    finally:
        a.close()
        b.close()
    assert data_fds(cache_dir) == 0


def test_closing_one_of_two_caches_leaves_the_other_working(cache_dir):
    a = Cache(cache_dir)
    b = Cache(cache_dir)
    a["x"] = 1
    a.close()
    assert data_fds(cache_dir) == 1
    assert b["x"] == 1
    b["y"] = 2
    assert dict(b.items()) == {"x": 1, "y": 2}
    b.close()
    assert data_fds(cache_dir) == 0
    # and the closed one reopens on use, alone
    assert a["y"] == 2
    assert data_fds(cache_dir) == 1
    a.close()
    assert data_fds(cache_dir) == 0


def test_a_symlinked_path_shares_the_environment(tmp_path):
    real = str(tmp_path / "real")
    link = str(tmp_path / "link")
    a = Cache(real)
    os.symlink(real, link)
    b = Cache(link)
    try:
        assert data_fds(real) == 1
        b["k"] = "v"
        assert a["k"] == "v"
    finally:
        a.close()
        b.close()
    assert data_fds(real) == 0


def test_deleted_cache_object_releases_environment(cache_dir):
    c = Cache(cache_dir)
    c["k"] = 1
    del c
    assert data_fds(cache_dir) == 0


# ---- 6. options ------------------------------------------------------------------------


def test_small_map_size_grows_to_fit_writes(cache_dir):
    chunk = MiB
    with Cache(cache_dir, map_size=MiB) as c:
        start = c._env_info()["map_size"]
        assert start <= 2 * MiB
        for i in range(50):
            c[f"v{i}"] = bytes([i]) * chunk
        info = c._env_info()
        assert info["map_size"] >= 50 * chunk
        assert info["map_size"] > start
        assert len(c) == 50
        for i in range(50):
            assert c[f"v{i}"] == bytes([i]) * chunk
    with Cache(cache_dir, map_size=MiB) as c:  # reopening with the small size still reads all
        assert c["v49"] == bytes([49]) * chunk
        c["after"] = b"z" * chunk
        assert len(c) == 51


def test_size_limit_raises_mapfullerror_and_keeps_data(cache_dir):
    limit = MiB
    value = b"v" * (64 * 1024)
    with Cache(cache_dir, size_limit=limit, eviction_policy="none") as c:
        written = []
        with pytest.raises(lmdbcache.MapFullError) as exc:
            for i in range(100):  # 6.4 MB: must hit the 1 MiB limit
                c[f"k{i}"] = value
                written.append(f"k{i}")
        assert cache_dir in str(exc.value)
        assert isinstance(exc.value, lmdbcache.Error)
        failed = f"k{len(written)}"
        assert len(written) >= 4  # a good part of the limit was usable
        # earlier keys still read; the failed write left nothing behind
        for k in written:
            assert c[k] == value
        assert failed not in c
        assert c.get(failed) is None
        assert len(c) == len(written)
        # overwriting an existing key with a bigger value fails and keeps the old one
        with pytest.raises(lmdbcache.MapFullError):
            c[written[0]] = b"B" * (4 * limit)
        assert c[written[0]] == value
        with pytest.raises(lmdbcache.MapFullError):
            c.set("another", b"C" * (2 * limit))
        assert "another" not in c
        # deleting entries makes room again
        for k in written[: len(written) // 2 + 1]:
            del c[k]
        c[failed] = value
        assert c[failed] == value
        c["small"] = "fits"
        assert c["small"] == "fits"


def test_evicting_one_entry_makes_room_for_one_of_the_same_size(cache_dir):
    size = 32 * 1024
    with Cache(cache_dir, size_limit=MiB, eviction_policy="none") as c:
        order = []
        with pytest.raises(lmdbcache.MapFullError):
            for i in range(100):
                c[f"old{i}"] = os.urandom(size)
                order.append(f"old{i}")
        for j in range(6):  # the eviction loop of a size-bounded cache
            del c[order.pop(0)]
            c[f"new{j}"] = os.urandom(size)
            order.append(f"new{j}")
        assert set(c) == set(order)


def test_full_cache_can_be_emptied_with_clear(cache_dir):
    with Cache(cache_dir, size_limit=MiB, eviction_policy="none") as c:
        with pytest.raises(lmdbcache.MapFullError):
            for i in range(100):
                c[i] = os.urandom(32 * 1024)
        c.clear()
        assert len(c) == 0
        c["k"] = os.urandom(32 * 1024)
        assert len(c) == 1


def test_readonly_reads_existing_cache(cache_dir):
    make_cache(cache_dir, {"a": 1, "b": [2], ("c",): b"3"})
    with Cache(cache_dir, readonly=True) as ro:
        assert ro.readonly is True
        assert ro.options["readonly"] is True
        assert ro["a"] == 1
        assert ro.get("b") == [2]
        assert ("c",) in ro
        assert len(ro) == 3
        assert dict(ro.items()) == {"a": 1, "b": [2], ("c",): b"3"}


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda c: c.__setitem__("a", 2), id="setitem"),
        pytest.param(lambda c: c.__setitem__("new", 2), id="setitem-new"),
        pytest.param(lambda c: c.set("a", 2), id="set"),
        pytest.param(lambda c: c.__delitem__("a"), id="del"),
        pytest.param(lambda c: c.delete("a"), id="delete"),
        pytest.param(lambda c: c.pop("a"), id="pop"),
        pytest.param(lambda c: c.pop("a", None), id="pop-default"),
        pytest.param(lambda c: c.popitem(), id="popitem"),
        pytest.param(lambda c: c.clear(), id="clear"),
        pytest.param(lambda c: c.update({"a": 3}), id="update"),
        pytest.param(lambda c: c.setdefault("new", 1), id="setdefault-new"),
    ],
)
def test_readonly_refuses_every_write(cache_dir, write):
    make_cache(cache_dir, {"a": 1, "b": 2})
    with Cache(cache_dir, readonly=True) as ro:
        with pytest.raises(lmdbcache.ReadOnlyError) as exc:
            write(ro)
        assert cache_dir in str(exc.value)
        assert dict(ro.items()) == {"a": 1, "b": 2}
    with Cache(cache_dir) as c:
        assert dict(c.items()) == {"a": 1, "b": 2}


def test_readonly_on_missing_directory_raises_naming_the_path(tmp_path):
    missing = str(tmp_path / "does" / "not" / "exist")
    with pytest.raises((FileNotFoundError, lmdbcache.Error)) as exc:
        Cache(missing, readonly=True)
    assert missing in str(exc.value)
    assert not os.path.exists(missing)


def test_durability_full_works(cache_dir):
    with Cache(cache_dir, durability="full") as c:
        c["k"] = "durable"
        assert c.options["durability"] == "full"
    with Cache(cache_dir, durability="full") as c:
        assert c["k"] == "durable"


@pytest.mark.parametrize(
    "kwargs, exc_type, name",
    [
        ({"durability": "bogus"}, ValueError, "durability"),
        ({"durability": None}, ValueError, "durability"),
        ({"map_size": 0}, ValueError, "map_size"),
        ({"map_size": -1}, ValueError, "map_size"),
        ({"map_size": "x"}, TypeError, "map_size"),
        ({"map_size": 1.5}, TypeError, "map_size"),
        ({"size_limit": 10}, ValueError, "size_limit"),
        ({"size_limit": "big"}, TypeError, "size_limit"),
        ({"max_readers": 0}, ValueError, "max_readers"),
    ],
    ids=lambda p: repr(p) if not isinstance(p, type) else p.__name__,
)
def test_bad_options_raise_naming_the_option(cache_dir, kwargs, exc_type, name):
    with pytest.raises(exc_type) as exc:
        Cache(cache_dir, **kwargs)
    assert name in str(exc.value)
    assert not os.path.exists(cache_dir)  # nothing was created


def test_options_are_keyword_only(cache_dir):
    with pytest.raises(TypeError):
        Cache(cache_dir, MiB)


# ---- 7. bad input, errors, corruption ----------------------------------------------------


@pytest.mark.parametrize(
    "bad, exc_types",
    [
        pytest.param(lambda: None, (pickle.PicklingError, TypeError), id="lambda"),
        pytest.param(threading.Lock(), (pickle.PicklingError, TypeError), id="lock"),
        pytest.param([1, threading.Lock()], (pickle.PicklingError, TypeError), id="nested-lock"),
    ],
)
def test_unpicklable_value_raises_and_keeps_old_value(cache, bad, exc_types):
    cache["k"] = "old"
    with pytest.raises(exc_types):
        cache["k"] = bad
    assert cache["k"] == "old"
    with pytest.raises(exc_types):
        cache.set("k", bad)
    assert cache["k"] == "old"
    with pytest.raises(exc_types):
        cache["fresh"] = bad
    assert "fresh" not in cache
    assert len(cache) == 1


def test_pickling_error_from_reduce_propagates_unchanged(cache):
    cache["k"] = "old"
    with pytest.raises(ValueError, match="refuse to pickle"):
        cache["k"] = ExplodingReduce()
    assert cache["k"] == "old"
    assert len(cache) == 1


@pytest.mark.parametrize("key", [[1, 2], {"a": 1}, {1, 2}, ([1],), bytearray(b"x")],
                         ids=lambda k: type(k).__name__)
def test_unhashable_key_raises_typeerror(cache, key):
    cache["present"] = 1
    with pytest.raises(TypeError):
        cache[key] = "v"
    with pytest.raises(TypeError):
        cache[key]
    with pytest.raises(TypeError):
        cache.get(key)
    with pytest.raises(TypeError):
        key in cache
    with pytest.raises(TypeError):
        del cache[key]
    assert dict(cache.items()) == {"present": 1}


def test_unpicklable_hashable_key_raises_typeerror(cache):
    class Local:  # local classes cannot be pickled
        def __hash__(self):
            return 1

    cache["present"] = 1
    for key in (Local(), HashableExplodingReduce(), ("ok", Local())):
        with pytest.raises(TypeError):
            cache[key] = "v"
        with pytest.raises(TypeError):
            cache.set(key, "v")
        with pytest.raises(TypeError):
            cache.get(key)
    assert dict(cache.items()) == {"present": 1}


def test_path_that_is_a_file_raises_naming_the_path(tmp_path):
    f = tmp_path / "afile"
    f.write_bytes(b"not a directory")
    with pytest.raises(NotADirectoryError) as exc:
        Cache(str(f))
    assert str(f) in str(exc.value)
    assert f.read_bytes() == b"not a directory"
    with pytest.raises(OSError) as exc:
        Cache(str(f / "below"))
    assert str(f) in str(exc.value)


def test_directory_without_permission_raises_permissionerror(tmp_path):
    # Root ignores permissions: run as root, the child drops to nobody first and
    # meets a root-owned 0700 directory; run as another user, the directory is 0000.
    root_dir = tempfile.mkdtemp(prefix="lmdbcache-noperm-")  # mode 0700
    try:
        make_cache(root_dir, {"k": "secret"})
        os.chmod(root_dir, 0o700 if os.geteuid() == 0 else 0)
        code = """
            import os, sys
            import lmdbcache
            path = sys.argv[1]
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            assert os.geteuid() != 0
            for target in (path, os.path.join(path, "sub")):
                try:
                    lmdbcache.Cache(target)
                except PermissionError as e:
                    assert target in str(e) or e.filename == target, (str(e), e.filename)
                    print("PERMISSION-ERROR", target)
                except BaseException as e:
                    print("OTHER", type(e).__name__, e)
                else:
                    print("OPENED", target)
        """
        result = run_python(code, root_dir, cwd=str(tmp_path))
        assert result.returncode == 0, result.stderr
        lines = result.stdout.split("\n")
        assert f"PERMISSION-ERROR {root_dir}" in lines, result.stdout
        assert f"PERMISSION-ERROR {os.path.join(root_dir, 'sub')}" in lines, result.stdout
        os.chmod(root_dir, 0o700)
        with Cache(root_dir) as c:
            assert dict(c.items()) == {"k": "secret"}
    finally:
        os.chmod(root_dir, 0o700)
        shutil.rmtree(root_dir, ignore_errors=True)


CORRUPT_RECORDS = [
    pytest.param(b"\x01p\x00garbage", id="bad-pickle"),
    pytest.param(b"\x01p\x00", id="empty-pickle"),
    pytest.param(b"\x09", id="short"),
    pytest.param(b"", id="empty"),
    pytest.param(b"\x01s\x00\xff\xfe", id="bad-utf8"),
    pytest.param(b"\x01i\x00abc", id="short-int"),
    pytest.param(b"\x01d\x00" + b"\x00" * 9, id="long-float"),
    pytest.param(b"\x01N\x00x", id="payload-after-none"),
    pytest.param(b"\x01?\x00", id="unknown-tag"),
    pytest.param(b"\x02b\x00data", id="unknown-record-version"),
    pytest.param(b"\x01b\x80data", id="unknown-flags"),
    pytest.param(b"\x01b\x02\xff\xff\xff\x00x", id="truncated-long-key"),
]


@pytest.mark.parametrize("raw", CORRUPT_RECORDS)
def test_corrupt_record_raises_corrupterror_and_can_be_deleted(cache_dir, raw):
    make_cache(cache_dir, {"bad": "value", "good": "fine", "other": [1, 2]})
    lmdb_put_raw(cache_dir, b"sbad", raw)
    with Cache(cache_dir) as c:
        with pytest.raises(lmdbcache.CorruptError) as exc:
            c["bad"]
        assert cache_dir in str(exc.value)
        with pytest.raises(lmdbcache.CorruptError):
            c.get("bad")
        with pytest.raises(lmdbcache.CorruptError):
            c.get("bad", "default")
        with pytest.raises(lmdbcache.CorruptError):
            list(c.values())
        assert c["good"] == "fine"
        assert c["other"] == [1, 2]
        del c["bad"]
        assert "bad" not in c
        assert dict(c.items()) == {"good": "fine", "other": [1, 2]}
        c["bad"] = "repaired"
        assert c["bad"] == "repaired"


def test_corrupt_key_encoding_raises_corrupterror_on_iteration(cache_dir):
    make_cache(cache_dir, {"good": 1})
    # an int key must be 8 bytes after its tag
    lmdb_put_raw(cache_dir, b"i\x01\x02", b"\x01N\x00")
    with Cache(cache_dir) as c:
        assert c["good"] == 1
        with pytest.raises(lmdbcache.CorruptError):
            list(c)


def test_newer_format_raises_formaterror(cache_dir):
    make_cache(cache_dir, {"k": 1})
    lmdb_put_raw(cache_dir, b"format", b"99", db_name=b"__meta__")
    with pytest.raises(lmdbcache.FormatError) as exc:
        Cache(cache_dir)
    assert "newer" in str(exc.value)
    assert cache_dir in str(exc.value)
    with pytest.raises(lmdbcache.FormatError):
        Cache(cache_dir, readonly=True)
    assert data_fds(cache_dir) == 0  # the failed open left nothing open


def test_damaged_format_record_raises_formaterror(cache_dir):
    make_cache(cache_dir, {"k": 1})
    lmdb_put_raw(cache_dir, b"format", b"one", db_name=b"__meta__")
    with pytest.raises(lmdbcache.FormatError) as exc:
        Cache(cache_dir)
    assert cache_dir in str(exc.value)


def test_foreign_lmdb_database_raises_formaterror(cache_dir):
    os.makedirs(cache_dir)
    lmdb_put_raw(cache_dir, b"foo", b"bar")
    with pytest.raises(lmdbcache.FormatError) as exc:
        Cache(cache_dir)
    assert cache_dir in str(exc.value)
    # and the foreign data is untouched
    env = lmdb.open(cache_dir, max_dbs=64)
    try:
        with env.begin() as txn:
            assert txn.get(b"foo") == b"bar"
    finally:
        env.close()


def test_garbage_data_file_raises_corrupterror(cache_dir):
    os.makedirs(cache_dir)
    with open(os.path.join(cache_dir, "data.mdb"), "wb") as f:
        f.write(b"this is not an LMDB file " * 2000)
    with pytest.raises(lmdbcache.Error) as exc:
        Cache(cache_dir)
    assert isinstance(exc.value, lmdbcache.CorruptError)
    assert cache_dir in str(exc.value)
    assert data_fds(cache_dir) == 0


# ---- 8. threads --------------------------------------------------------------------------


def test_threads_share_one_cache(cache):
    n_threads, n_ops = 8, 2000
    errors = []
    finals = [None] * n_threads
    shared = [f"shared{i}" for i in range(5)]
    barrier = threading.Barrier(n_threads)

    def work(tid):
        try:
            rng = random.Random(1000 + tid)
            mine = {}
            barrier.wait()
            for i in range(n_ops):
                r = rng.random()
                key = (tid, rng.randrange(50))
                if r < 0.4:
                    value = [tid, i]
                    cache[key] = value
                    mine[key] = value
                elif r < 0.6:
                    assert cache.get(key) == mine.get(key)
                elif r < 0.75:
                    if key in mine:
                        del cache[key]
                        del mine[key]
                    else:
                        assert cache.pop(key, None) is None
                elif r < 0.9:
                    cache[rng.choice(shared)] = (tid, i)
                else:
                    got = cache.get(rng.choice(shared))
                    assert got is None or (type(got) is tuple and len(got) == 2)
            finals[tid] = mine
        except BaseException as e:  # reported by the main thread
            errors.append((tid, e))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    expected = {}
    for mine in finals:
        expected.update(mine)
    actual = dict(cache.items())
    for k in shared:
        got = actual.pop(k, None)
        assert got is None or (got[0] in range(n_threads) and got[1] in range(n_ops))
    assert actual == expected
    assert len(cache) == len(expected) + sum(k in cache for k in shared)
