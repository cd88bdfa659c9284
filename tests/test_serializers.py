"""Cache(serializer=...) and Cache(compress="zstd").

With any serializer but pickle nothing in the read path calls pickle: keys
are native (str, bytes, int, float, bool, None, tuples and frozensets of
them), a record written by pickle is refused, and a value the serializer
cannot encode is a TypeError with nothing stored.
"""
import json
import os
import pickle
import subprocess
import sys
import textwrap

import lmdb
import pytest

from lmdbcache import Cache, CorruptError

# Python 3.10 has no -P; its test run starts in tests/, where no source package can shadow.
SAFE_PATH = ["-P"] if sys.version_info >= (3, 11) else []

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _records import drain, recrc  # noqa: E402

SERIALIZERS = ["json", "msgpack"]


class Payload:
    """Unpickling this creates the file *path*."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class Upper:
    """A custom serializer: bytes of repr, parsed back with a tiny grammar."""

    def __init__(self):
        self.calls = 0

    def dumps(self, value):
        self.calls += 1
        if not isinstance(value, list):
            raise ValueError("Upper stores lists only")
        return ",".join(map(str, value)).encode()

    def loads(self, data):
        return [int(x) for x in data.decode().split(",")] if data else []


def no_pickle_loads(monkeypatch):
    """Make every pickle.loads/_pickle.loads call fail the test."""
    import _pickle

    def boom(*args, **kwargs):
        raise AssertionError("pickle.loads was called")

    monkeypatch.setattr(_pickle, "loads", boom)
    monkeypatch.setattr(pickle, "loads", boom)


# ---- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_values_round_trip(tmp_path, serializer):
    with Cache(str(tmp_path / "c"), serializer=serializer) as c:
        value = {"name": "ünïcode", "list": [1, 2.5, None, True, "x"], "nested": {"a": {"b": []}}}
        c["doc"] = value
        assert c["doc"] == value
        for native in (b"bytes", "str", 7, 1.5, None, True, False):
            c["n"] = native
            assert c["n"] == native and type(c["n"]) is type(native)
        # an int beyond 64 bits is no native value: it is the serializer's
        if serializer == "json":
            c["n"] = 2 ** 70
            assert c["n"] == 2 ** 70
        else:
            with pytest.raises(TypeError, match="cannot be serialized"):
                c["n"] = 2 ** 70
            assert c["n"] is False
        c.set_many({"a": [1], "b": {"x": 1}})
        assert c.get_many(["a", "b"]) == {"a": [1], "b": {"x": 1}}
        assert dict(c.items())["doc"] == value
        assert c.verify().ok


def test_json_is_json_on_disk(tmp_path):
    path = str(tmp_path / "c")
    with Cache(path, serializer="json") as c:
        c["doc"] = {"a": [1, 2]}
    env = lmdb.open(path, max_dbs=8, readonly=True, lock=False)
    with env.begin() as txn:
        rec = txn.get(b"sdoc")
    env.close()
    assert rec[1:2] == b"j" and json.loads(rec[7:]) == {"a": [1, 2]}


def test_json_semantics_are_json(tmp_path):
    """What json does to Python values is what the cache gives back."""
    with Cache(str(tmp_path / "c"), serializer="json") as c:
        c["t"] = (1, 2)
        c["d"] = {1: "int key"}
        assert c["t"] == [1, 2]
        assert c["d"] == {"1": "int key"}


def test_custom_serializer(tmp_path):
    ser = Upper()
    path = str(tmp_path / "c")
    with Cache(path, serializer=ser) as c:
        c["k"] = [1, 2, 3]
        assert c["k"] == [1, 2, 3] and ser.calls == 1
        with pytest.raises(TypeError, match="cannot be serialized") as info:
            c["bad"] = {"a": 1}
        assert isinstance(info.value.__cause__, ValueError)
        assert "bad" not in c
    # another serializer refuses the custom records
    with Cache(path, serializer="json") as c:
        with pytest.raises(CorruptError, match="custom serializer"):
            c["k"]
    with pytest.raises(TypeError, match="dumps.*loads"):
        Cache(path, serializer=object())
    with pytest.raises(ValueError, match="serializer must be"):
        Cache(path, serializer="yaml")


def test_dumps_must_return_bytes(tmp_path):
    class Bad:
        dumps = staticmethod(lambda v: 12)
        loads = staticmethod(lambda b: b)

    with Cache(str(tmp_path / "c"), serializer=Bad()) as c:
        with pytest.raises(TypeError, match="not bytes"):
            c["k"] = [1]
        assert "k" not in c


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_unencodable_value_is_type_error_and_nothing_is_lost(tmp_path, serializer):
    with Cache(str(tmp_path / "c"), serializer=serializer) as c:
        c["k"] = "kept"
        with pytest.raises(TypeError, match="cannot be serialized"):
            c["k"] = object()
        with pytest.raises(TypeError):
            c.set_many({"k": "replaced", "x": object()})
        assert c["k"] == "kept" and "x" not in c and len(c) == 1


# ---- keys -----------------------------------------------------------------------------


@pytest.mark.parametrize("serializer", ["pickle", *SERIALIZERS])
def test_native_keys(tmp_path, serializer):
    keys = ["s", b"b", 1, -(2 ** 80), 2 ** 64, 10 ** 5000, 1.5, -0.0, float("inf"), True, False, None,
            ("t", 1, (2.5, None)), frozenset({1, "a"})]
    with Cache(str(tmp_path / "c"), serializer=serializer) as c:
        for i, k in enumerate(keys):
            c[k] = i
        assert [c[k] for k in keys] == list(range(len(keys)))
        assert c[0.0] == keys.index(-0.0)  # -0.0 == 0.0: one key
        assert 1 in c and True in c and 1.0 not in c  # 1, 1.0, True: three keys
        assert set(c) == set(keys) - {-0.0} | {0.0}
        assert all(type(k) in (str, bytes, int, float, bool, type(None), tuple, frozenset)
                   for k in c)


def test_float_keys_sort_numerically(tmp_path):
    keys = [-1e300, -2.5, -1.0, -1e-300, 0.0, 1e-300, 1.0, 2.5, 1e300]
    with Cache(str(tmp_path / "c")) as c:
        for k in reversed(keys):
            c[k] = 1
        assert list(c) == keys


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_keys_that_need_pickle_are_type_errors(tmp_path, serializer):
    with Cache(str(tmp_path / "c"), serializer=serializer) as c:
        for key in (object(), ("ok", object()), 1j):
            with pytest.raises(TypeError, match="would need pickling"):
                c[key] = 1
            with pytest.raises(TypeError):
                c.get(key)
        assert len(c) == 0


# ---- a planted pickle is never executed -----------------------------------------------


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_planted_pickles_are_refused_unread(tmp_path, serializer, monkeypatch):
    path = str(tmp_path / "c")
    marker = tmp_path / "payload-ran"
    with Cache(path) as writer:  # a pickle writer (the attacker, or an old config)
        writer["k"] = Payload(marker)
        writer[Payload(marker)] = 1
        writer["fine"] = "native"
    no_pickle_loads(monkeypatch)
    with Cache(path, serializer=serializer) as c:
        with pytest.raises(CorruptError, match="refused a record .* written by pickle"):
            c["k"]
        with pytest.raises(CorruptError):
            c.get_many(["k"])
        assert c["fine"] == "native"
        seen, refused = drain(c, CorruptError)
        assert sorted(map(str, seen)) == ["fine", "k"] and len(refused) == 1
        with pytest.raises(CorruptError):
            dict(c.items())
    assert not marker.exists()


def test_planted_memo_pickle_is_refused_with_json(tmp_path):
    path = str(tmp_path / "c")
    marker = tmp_path / "payload-ran"
    script = textwrap.dedent(f"""
        import lmdbcache, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_serializers import Payload
        def expensive(x):
            return Payload({str(marker)!r}) if planting else x * 2
        planting = sys.argv[1] == "plant"
        ser = "json" if sys.argv[1] == "use" else "pickle"
        c = lmdbcache.Cache({path!r}, serializer=ser)
        try:
            print(c.memoize()(expensive)(21))
        except lmdbcache.CorruptError as e:
            print("refused", e)
    """)
    run = lambda mode: subprocess.run([sys.executable, *SAFE_PATH, "-c", script, mode],
                                      capture_output=True, text=True, timeout=60)
    out = run("plant")
    assert out.returncode == 0, out.stderr
    assert not marker.exists()
    out = run("use")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused") and "written by pickle" in out.stdout
    assert not marker.exists()
    out = run("control")  # the pickle serializer does run it: the test proves something
    assert out.returncode == 0, out.stderr
    assert marker.exists()


# ---- memoize with every serializer ----------------------------------------------------


@pytest.mark.parametrize("serializer", ["pickle", *SERIALIZERS, "custom"])
def test_memoize_works_with_every_serializer(tmp_path, serializer):
    ser = Upper() if serializer == "custom" else serializer
    calls = []
    with Cache(str(tmp_path / "c"), serializer=ser) as c:

        @c.memoize(stampede=True)
        def f(x, y=1.5, z=None):
            calls.append(x)
            return [x, 2] if serializer == "custom" else {"x": x, "list": [1, 2]}

        first = f(1)
        assert f(1) == first and f(1, 1.5, None) == first and calls == [1]
        other = 3 if serializer == "custom" else ("a", 2.5)  # Upper stores int lists
        f(other)
        f(other)
        assert calls == [1, other]
        f.cache_clear()
        f(1)
        assert len(calls) == 3


# ---- compression ----------------------------------------------------------------------


def _data_file_bytes(path):
    env = lmdb.open(path, max_dbs=64, readonly=True, lock=False)
    with env.begin() as txn:
        total = sum(len(v) for _, v in txn.cursor())
    env.close()
    return total


def test_zstd_compresses_large_values(tmp_path):
    # 1 MiB of compressible text: JSON records with varying numbers
    value = json.dumps([{"id": i, "user": f"user{i % 977}", "score": round(i * 0.37, 2)}
                        for i in range(30000)])[: 1 << 20]
    plain, packed = str(tmp_path / "plain"), str(tmp_path / "packed")
    with Cache(plain) as c:
        c["v"] = value
    with Cache(packed, compress="zstd") as c:
        c["v"] = value
        c["b"] = value.encode()
        c["o"] = {"list": [value]}
        c["small"] = "x" * 100  # below compress_threshold: stored as is
        assert c["v"] == value and c["b"] == value.encode() and c["o"] == {"list": [value]}
        assert c.verify().ok
    ratio = _data_file_bytes(plain) / (_data_file_bytes(packed) / 3)
    assert ratio >= 3, ratio
    # a reader without compress= reads them too (the records say so)
    with Cache(packed) as c:
        assert c["v"] == value and c["small"] == "x" * 100


def test_zstd_skips_incompressible_and_small(tmp_path):
    noise = os.urandom(1 << 16)
    path = str(tmp_path / "c")
    with Cache(path, compress="zstd", compress_threshold=1024) as c:
        c["noise"] = noise
        c["small"] = b"a" * 1000
        c["big"] = b"a" * 2000
    env = lmdb.open(path, max_dbs=64, readonly=True, lock=False)
    with env.begin() as txn:
        flags = {k: v[2] & 0x10 for k, v in txn.cursor()}
    env.close()
    flags = {k: v for k, v in flags.items() if not k.startswith(b"__")}
    assert flags == {b"snoise": 0, b"ssmall": 0, b"sbig": 0x10}


def test_zstd_with_secret_serializer_and_touch(tmp_path):
    value = {"text": "abc" * 5000}
    path = str(tmp_path / "c")
    secret = b"0123456789abcdef0123456789abcdef"
    with Cache(path, compress="zstd", serializer="json", secret=secret) as c:
        c["k"] = value
        assert c.touch("k", ttl=60)
        assert c["k"] == value
        kb, rec, _ = c._encode_raw("k", value)
        assert c._put_raw("k", rec) == value


def test_damaged_compressed_record_is_corrupt(tmp_path):
    path = str(tmp_path / "c")
    with Cache(path, compress="zstd") as c:
        c["k"] = b"z" * 100000
        kb, rec, _ = c._encode_raw("k", b"z" * 100000)
        bad = bytearray(rec)
        bad[-3] ^= 0xFF
        bad = recrc(b"", kb, bad)  # only the zstd frame is wrong
        with pytest.raises(CorruptError, match="decompressed"):
            c._put_raw("k", bad, -1.0, False)


def test_compress_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="compress must be"):
        Cache(str(tmp_path / "c"), compress="gzip")
    with pytest.raises(ValueError, match="compress_threshold"):
        Cache(str(tmp_path / "c"), compress="zstd", compress_threshold=-1)


def test_reader_without_zstandard_gets_a_clear_error(tmp_path):
    path = str(tmp_path / "c")
    with Cache(path, compress="zstd") as c:
        c["k"] = b"a" * 10000
    script = textwrap.dedent(f"""
        import sys
        sys.modules["zstandard"] = None  # not installed
        import lmdbcache
        with lmdbcache.Cache({path!r}) as c:
            try:
                c["k"]
            except lmdbcache.Error as e:
                print(type(e).__name__, e)
    """)
    out = subprocess.run([sys.executable, *SAFE_PATH, "-c", script], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Error") and "pip install 'lmdbcache[zstd]'" in out.stdout


# ---- user code in the serializer re-enters the cache -------------------------------


def test_serializer_code_may_reenter_close_and_reinit_the_cache(tmp_path):
    """dumps/loads/compress run user code: it may read, write, close or even
    re-initialise the very cache (with another serializer) mid-call."""
    path = str(tmp_path / "c")
    state = {"cache": None, "n": 0}

    class Meddler:
        def dumps(self, value):
            c = state["cache"]
            state["n"] += 1
            c.get("other")
            c.set("side", b"effect")
            c.close()
            if state["n"] % 3 == 0:
                c.__init__(path, serializer="json")  # the codec under us changes
            return json.dumps(value).encode()

        def loads(self, data):
            c = state["cache"]
            c.close()
            c["during-loads"] = b"x"
            if state["n"] % 2 == 0:
                c.__init__(path, serializer=Meddler(), compress="zstd", compress_threshold=1)
            state["n"] += 1
            return json.loads(data)

    with Cache(path, serializer=Meddler(), compress="zstd", compress_threshold=1) as c:
        state["cache"] = c
        for i in range(30):
            try:
                c[f"k{i}"] = {"i": i, "pad": "p" * 50}
                got = c.get(f"k{i}")
            except CorruptError:  # a json cache refuses the custom records: fine
                c.__init__(path, serializer=Meddler(), compress="zstd", compress_threshold=1)
                continue
            assert got == {"i": i, "pad": "p" * 50}
        assert c["side"] == b"effect"


def test_a_refused_record_is_not_even_decompressed(tmp_path, monkeypatch):
    """A compressed pickle in a json cache is refused before zstd sees it (a
    planted frame could claim any decompressed size)."""
    import lmdbcache.cache

    path = str(tmp_path / "c")
    with Cache(path, compress="zstd", compress_threshold=16) as c:
        c["p"] = {"x": "y" * 1000}  # pickled, then compressed
        c["s"] = "z" * 1000  # a compressed str: every cache decompresses it
    calls = []

    def spy(data):
        calls.append(len(data))
        import zstandard
        return zstandard.decompress(data)

    monkeypatch.setattr(lmdbcache.cache, "_zstd_decompress", spy)
    with Cache(path, serializer="json") as c:
        with pytest.raises(CorruptError, match="written by pickle"):
            c["p"]
        assert calls == []
        assert c["s"] == "z" * 1000 and len(calls) == 1


def test_the_standard_librarys_zstd_serves_without_zstandard(tmp_path):
    """Without the zstandard package, Python 3.14's compression.zstd is used
    (stood in for here by a module with its interface)."""
    path = str(tmp_path / "c")
    script = textwrap.dedent(f"""
        import sys, types, zlib
        sys.modules["zstandard"] = None  # not installed
        calls = []
        zstd = types.ModuleType("compression.zstd")
        def compress(data, level=None):
            calls.append(("c", level))
            return zlib.compress(data)  # the stand-in's own frame format
        def decompress(data):
            calls.append(("d", None))
            return zlib.decompress(data)
        zstd.compress, zstd.decompress = compress, decompress
        compression = types.ModuleType("compression")
        compression.zstd = zstd
        sys.modules["compression"], sys.modules["compression.zstd"] = compression, zstd
        import lmdbcache
        with lmdbcache.Cache({path!r}, compress="zstd") as c:
            c["k"] = b"a" * 10000
            assert c["k"] == b"a" * 10000
        print(calls)
    """)
    out = subprocess.run([sys.executable, *SAFE_PATH, "-c", script], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[('c', 3), ('d', None)]"
