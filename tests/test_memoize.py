"""memoize: keys, invalidation, the functools-like methods, ttl, stampede control,
multiprocessing, and bad input -- all with real calls, real processes and the real
cache file.

Multi-process tests run small driver programs (``python -c``) that import
``tests/_memo_workers.py``; every wait has a timeout, and no test asserts speed:
"finishes within N seconds" timeouts are far above what the operation needs and
below what the failure mode would take (a 30 s sleep or a 60 s lease).
"""
import json
import linecache
import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

import lmdbcache
from lmdbcache import Cache

pytestmark = [
    # Python >= 3.12 warns when a multi-threaded process forks.
    pytest.mark.filterwarnings("ignore:.*multi-threaded.*:DeprecationWarning"),
]

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 60  # seconds any subprocess or wait may take before the test fails
TAKEOVER = 15  # seconds a lease takeover may take (the failure mode takes 30-60 s)
MEMO = "__memo__"

# Memoized test functions record their computations here.  It is a module global,
# not a local captured by the function: values a nested function captures are
# part of its cache key, so a captured list that grows would change the key at
# every call.  For the same reason GATE (an Event, which cannot be pickled) is a
# global; both are reset for each test.
LOG = []
GATE = threading.Event()


@pytest.fixture(autouse=True)
def _fresh_log():
    global GATE
    LOG.clear()
    GATE = threading.Event()
    yield
    GATE.set()  # never leave a thread blocked on it


# ---- helpers ------------------------------------------------------------------------


def memo_store(cache):
    """The internal namespace memoize keeps its entries in."""
    return cache._internal_namespace(MEMO)


def result_keys(cache, func):
    """The stored result keys of *func* (every code version)."""
    fid = f"{func.__module__}.{func.__qualname__}"
    return [k for k in memo_store(cache).keys() if k[:2] == ("r", fid)]


def define(cache, source, name="compute", module="memo_versions", **options):
    """Compile *source* as if it were module *module* and memoize its function
    *name*: two sources give two versions of one function (same id)."""
    ns = {"__name__": module}
    exec(compile(textwrap.dedent(source), f"<{module}>", "exec"), ns)
    func = ns[name]
    assert (func.__module__, func.__qualname__) == (module, name)
    return cache.memoize(func, **options)


def wait_for(predicate, timeout=TIMEOUT, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def in_thread(func, *args, **kwargs):
    """Start func(*args) in a daemon thread; returns (thread, outcome) where
    outcome gets "value" or "error" once it ends."""
    outcome = {}

    def run():
        try:
            outcome["value"] = func(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 (reported to the test)
            outcome["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, outcome


def driver_env(cache_dir, **extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS_DIR, env.get("PYTHONPATH")]))
    env["LMDBCACHE_MEMO_DIR"] = cache_dir
    env.update(extra)
    return env


def popen_driver(code, *args, cache_dir, cwd, **env):
    """Start ``python -c code args...`` importing tests/ modules; cwd is a
    scratch directory so the source tree never shadows the installed package."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        cwd=cwd,
        env=driver_env(cache_dir, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc, timeout=TIMEOUT):
    """Wait for *proc*, assert it succeeded, return its stdout parsed as JSON."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"driver still running after {timeout} s\nstderr:\n{err}")
    assert proc.returncode == 0, f"driver failed ({proc.returncode}):\n{err}"
    return json.loads(out.strip().splitlines()[-1])


def run_driver(code, *args, cache_dir, cwd, timeout=TIMEOUT, **env):
    return finish(popen_driver(code, *args, cache_dir=cache_dir, cwd=cwd, **env), timeout)


class Point:
    """Module-level so instances pickle (by reference to the class)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def norm2(self, scale=1):
        return (self.x * self.x + self.y * self.y) * scale


class Locked:
    def __init__(self):
        self.lock = threading.Lock()


# ---- the decorator forms ----------------------------------------------------------------


def test_decorator_forms(cache, tmp_path):
    @cache.memoize
    def bare(x):
        LOG.append(("bare", x))
        return x + 1

    @cache.memoize()
    def empty_parens(x):
        LOG.append(("empty", x))
        return x + 2

    @cache.memoize(ttl=60, typed=True)
    def with_options(x):
        LOG.append(("options", x))
        return x + 3

    @lmdbcache.memoize(cache)
    def module_with_cache(x):
        LOG.append(("module-cache", x))
        return x + 4

    assert [bare(1), bare(1)] == [2, 2]
    assert [empty_parens(1), empty_parens(1)] == [3, 3]
    assert [with_options(1), with_options(1)] == [4, 4]
    assert [module_with_cache(1), module_with_cache(1)] == [5, 5]
    assert LOG == [("bare", 1), ("empty", 1), ("options", 1), ("module-cache", 1)]
    for f in (bare, empty_parens, with_options, module_with_cache):
        assert f.cache_info().hits == 1 and f.cache_info().currsize == 1
        assert f.cache.path == cache.path

    # A directory path (str or PathLike) opens a Cache there.
    for path in (str(tmp_path / "by-str"), tmp_path / "by-pathlike"):
        @lmdbcache.memoize(path, typed=True)
        def by_path(x):
            LOG.append(("path", x))
            return x * 10

        try:
            assert by_path(2) == 20 and by_path(2) == 20
            assert by_path.cache.path == os.fspath(path)
            with Cache(path) as other:
                assert len(result_keys(other, by_path)) == 1
        finally:
            by_path.cache.close()
    assert LOG.count(("path", 2)) == 2  # once per directory


def test_bare_module_decorator_uses_the_default_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # the default is ~/.cache/lmdbcache

    @lmdbcache.memoize
    def double(x):
        LOG.append(x)
        return 2 * x

    try:
        assert double.cache.path == str(tmp_path / ".cache" / "lmdbcache")
        assert double(21) == 42 and double(21) == 42
        assert LOG == [21]
        assert os.path.exists(tmp_path / ".cache" / "lmdbcache" / "data.mdb")
    finally:
        double.cache.close()


def test_wrapper_attributes(cache):
    def area(w, h):
        """Width times height."""
        return w * h

    f = cache.memoize(area)
    assert f.__wrapped__ is area
    assert f.__name__ == "area" and f.__doc__ == "Width times height."
    assert f.__qualname__ == area.__qualname__ and f.__module__ == area.__module__
    assert f.check_call_in_cache(2, 3) is False
    f(2, 3)
    assert f.check(2, 3) is True and f.check_call_in_cache(2, 3) is True
    info = f.cache_info()
    assert info == (0, 1, None, 1)
    assert (info.hits, info.misses, info.maxsize, info.currsize) == (0, 1, None, 1)
    assert repr(info) == "CacheInfo(hits=0, misses=1, maxsize=None, currsize=1)"
    # __wrapped__ is the plain function: it computes and stores nothing
    assert f.__wrapped__(4, 5) == 20 and not f.check(4, 5)


# ---- keys: binding, typing, scalars vs hashes -------------------------------------


def test_arguments_bound_to_the_signature_share_one_entry(cache):
    @cache.memoize
    def f(a, b=2):
        LOG.append((a, b))
        return a * 10 + b

    assert {f(1, 2), f(1, b=2), f(a=1, b=2), f(b=2, a=1), f(1)} == {12}
    assert LOG == [(1, 2)]
    assert f.cache_info() == (4, 1, None, 1)
    assert f(1, 3) == 13 and f(1, b=3) == 13  # another b: another entry
    assert LOG == [(1, 2), (1, 3)] and f.cache_info().currsize == 2


def test_keyword_only_and_defaults(cache):
    @cache.memoize
    def features(path, *, resolution=1):
        LOG.append((path, resolution))
        return f"{path}@{resolution}"

    assert features("a.png") == "a.png@1"
    assert features("a.png", resolution=1) == "a.png@1"
    assert features(path="a.png") == "a.png@1"
    assert features(path="a.png", resolution=1) == "a.png@1"
    assert features("a.png", resolution=2) == "a.png@2"
    assert LOG == [("a.png", 1), ("a.png", 2)]
    assert features.cache_info() == (3, 2, None, 2)


def test_var_positional_and_var_keyword(cache):
    @cache.memoize
    def f(*args, **kwargs):
        LOG.append((args, kwargs))
        return len(args) + len(kwargs)

    assert f(1, 2, x=1, y=2) == 4
    assert f(1, 2, y=2, x=1) == 4  # keyword order does not matter
    assert f(1, 2, x=1) == 3
    assert f(2, 1, x=1, y=2) == 4  # positional order does
    assert len(LOG) == 3 and f.cache_info().currsize == 3


def test_a_bad_call_raises_like_the_function_and_computes_nothing(cache):
    @cache.memoize
    def f(a, b=2):
        LOG.append(a)
        return a

    with pytest.raises(TypeError):
        f(1, 2, 3)
    with pytest.raises(TypeError):
        f(b=1)
    with pytest.raises(TypeError):
        f(1, c=3)
    with pytest.raises(TypeError):
        f(1, a=1)
    assert LOG == [] and f.cache_info().currsize == 0


def test_typed_false_shares_equal_numbers(cache):
    @cache.memoize
    def kind(x):
        LOG.append(x)
        return type(x).__name__

    assert kind(1) == "int"
    assert kind(1.0) == "int" and kind(True) == "int"  # the stored result
    assert len(LOG) == 1 and kind.cache_info().currsize == 1
    assert kind(1.5) == "float" and kind(2) == "int"
    assert len(LOG) == 3


def test_typed_true_distinguishes_types(cache):
    @cache.memoize(typed=True)
    def kind(x):
        LOG.append(x)
        return type(x).__name__

    assert [kind(1), kind(1.0), kind(True)] == ["int", "float", "bool"]
    assert [kind(1), kind(1.0), kind(True)] == ["int", "float", "bool"]
    assert len(LOG) == 3
    assert kind.cache_info() == (3, 3, None, 3)


def test_small_scalars_stay_in_the_key_the_rest_is_hashed(cache):
    @cache.memoize
    def f(a, b, c, d):
        return 0

    short, limit = "s" * 10, "L" * 256
    f(7, short, None, b"raw")
    f(8, limit, None, b"b" * 256)
    (k1,) = [k for k in result_keys(cache, f) if k[-4] == 7]
    (k2,) = [k for k in result_keys(cache, f) if k[-4] == 8]
    assert k1[-4:] == (7, short, None, b"raw")
    assert k2[-4:] == (8, limit, None, b"b" * 256)

    # Anything else -- a longer str or bytes, a list, a dict, an object -- is hashed:
    # it appears nowhere in the key, and the key stays small.
    for args in [
        (7, "x" * 257, None, b""),
        (7, "s", None, b"y" * 257),
        (7, "s", [1, 2], b""),
        (7, "s", {"k": 1}, b""),
        (7, "s", Point(1, 2), b""),
    ]:
        before = set(result_keys(cache, f))
        f(*args)
        (key,) = set(result_keys(cache, f)) - before
        assert not any(a in key for a in args if isinstance(a, (str, bytes)) and len(a) > 256)
        assert len(pickle.dumps(key)) < 300, key


def test_large_arguments_are_never_stored_in_keys(cache):
    @cache.memoize
    def size(blob, text):
        LOG.append(1)
        return len(blob) + len(text)

    blob = os.urandom(1 << 20)
    text = "t" * (1 << 20)
    assert size(blob, text) == 2 << 20
    assert size(bytes(blob), "".join(["t"] * (1 << 20))) == 2 << 20  # equal copies: a hit
    assert len(LOG) == 1
    (key,) = result_keys(cache, size)
    assert len(pickle.dumps(key)) < 300
    changed = bytearray(blob)
    changed[-1] ^= 1
    size(bytes(changed), text)
    assert len(LOG) == 2


def test_unhashable_arguments_are_keyed_by_value(cache):
    @cache.memoize
    def total(items, weights=None):
        LOG.append(1)
        return sum(items) * (weights or {}).get("w", 1)

    assert total([1, 2, 3]) == 6 and total([1, 2, 3]) == 6
    assert total([1, 2, 3], {"w": 2}) == 12 and total(list((1, 2, 3)), {"w": 2}) == 12
    assert total([1, 2, 4]) == 7
    assert len(LOG) == 3


def test_numpy_arrays_are_keyed_by_dtype_shape_and_content(cache):
    import numpy as np  # numpy is a test dependency (see the test extra)


    @cache.memoize
    def checksum(a):
        LOG.append(1)
        return float(a.sum())

    a = np.arange(12, dtype=np.int64).reshape(3, 4)
    assert checksum(a) == 66.0
    # equal arrays -- a copy, another memory layout, a strided view -- share the entry
    assert checksum(a.copy()) == 66.0
    assert checksum(np.asfortranarray(a)) == 66.0
    wide = np.zeros((3, 8), dtype=np.int64)
    wide[:, ::2] = a
    assert checksum(wide[:, ::2]) == 66.0  # a non-contiguous view
    assert len(LOG) == 1 and checksum.cache_info().currsize == 1

    b = a.copy()
    b[1, 2] += 1
    assert checksum(b) == 67.0  # a changed element
    assert checksum(a.astype(np.int32)) == 66.0  # another dtype
    assert checksum(a.reshape(4, 3)) == 66.0  # another shape
    assert checksum(a.ravel()) == 66.0
    assert len(LOG) == 5 and checksum.cache_info().currsize == 5

    big = np.zeros(1 << 20)  # 8 MiB: hashed, not stored in the key
    checksum(big)
    assert max(len(pickle.dumps(k)) for k in result_keys(cache, checksum)) < 300
    assert checksum.check(np.zeros(1 << 20)) and not checksum.check(np.ones(1 << 20))


def test_equal_sets_share_one_entry(cache):
    @cache.memoize
    def size(s):
        LOG.append(1)
        return len(s)

    # {1, 9} and {9, 1} are equal but iterate (and pickle) in different orders
    assert size({1, 9}) == 2 and size({9, 1}) == 2
    assert size(frozenset([1, 9])) == 2 and size(frozenset([9, 1])) == 2
    assert len(LOG) == 2  # one set, one frozenset


# ---- closures, lambdas and nested functions ------------------------------------------


def test_closure_values_are_part_of_the_key(cache):
    def make(factor):
        @cache.memoize
        def scale(x):
            LOG.append((factor, x))
            return x * factor

        return scale

    double, triple = make(2), make(3)
    assert double.fingerprint == triple.fingerprint  # same code ...
    assert double(5) == 10 and triple(5) == 15  # ... different captured values
    assert make(2)(5) == 10  # the same captured value: a hit, even in a new wrapper
    assert LOG == [(2, 5), (3, 5)]

    offset = 1

    @cache.memoize
    def shifted(x):
        LOG.append(("shifted", offset))
        return x + offset

    assert shifted(1) == 2
    offset = 100  # rebinding the captured variable changes the key
    assert shifted(1) == 101
    offset = 1
    assert shifted(1) == 2
    assert LOG[2:] == [("shifted", 1), ("shifted", 100)]


def test_lambdas_with_different_code_never_share_results(cache):
    inc = cache.memoize(lambda x: x + 1)
    dec = cache.memoize(lambda x: x - 1)
    assert inc.__qualname__ == dec.__qualname__ and inc.__module__ == dec.__module__
    assert inc.fingerprint != dec.fingerprint
    for _ in range(2):
        assert inc(10) == 11
        assert dec(10) == 9
        assert inc(10) == 11

    # Different defaults or captured values: different results too.
    k1 = cache.memoize(lambda x, k=1: x * k)
    k2 = cache.memoize(lambda x, k=2: x * k)
    assert (k1(10), k2(10), k1(10)) == (10, 20, 10)
    c = [cache.memoize(lambda x, n=n: x + n) for n in (1, 2)]  # n is a default here
    assert (c[0](0), c[1](0)) == (1, 2)

    # The same code is one function: a new wrapper reuses the results.
    first = cache.memoize(lambda x: LOG.append(x) or x * 7)
    second = cache.memoize(lambda x: LOG.append(x) or x * 7)
    assert first(6) == 42 and second(6) == 42 and LOG == [6]


def test_nested_functions_with_the_same_qualname(cache):
    def factory(flag):
        if flag:
            def inner(x):
                return ("plus", x + 1)
        else:
            def inner(x):
                return ("minus", x - 1)
        return cache.memoize(inner)

    plus, minus = factory(True), factory(False)
    assert plus.__qualname__ == minus.__qualname__
    assert plus.__qualname__.endswith(".<locals>.factory.<locals>.inner")
    for _ in range(2):
        assert plus(5) == ("plus", 6)
        assert minus(5) == ("minus", 4)
    assert factory(True)(5) == ("plus", 6)


# ---- methods ---------------------------------------------------------------------


def test_methods_with_self_ignored_share_results_across_instances(cache):
    class Model:
        def __init__(self, name):
            self.name = name

        @cache.memoize(ignore=("self",))
        def predict(self, x):
            LOG.append((self.name, x))
            return x * 2

    a, b = Model("a"), Model("b")
    assert a.predict(3) == 6 and b.predict(3) == 6 and b.predict(x=3) == 6
    assert LOG == [("a", 3)]
    assert Model.predict.check(None, 3)  # self is not part of the key
    assert Model.predict.cache_info().currsize == 1


def test_methods_key_on_the_state_of_self(cache):
    norm2 = cache.memoize(Point.norm2)
    Point.cached_norm2 = norm2
    try:
        p, same, other = Point(3, 4), Point(3, 4), Point(6, 8)
        assert p.cached_norm2() == 25
        assert same.cached_norm2() == 25 and p.cached_norm2(scale=1) == 25
        assert norm2.cache_info() == (2, 1, None, 1)  # equal state: one entry
        assert other.cached_norm2() == 100  # other state: another entry
        assert p.cached_norm2(2) == 50
        assert norm2.cache_info() == (2, 3, None, 3)
        p.x = 0
        assert p.cached_norm2() == 16  # the state changed, so did the key
    finally:
        del Point.cached_norm2


def test_unpicklable_self_raises_type_error_naming_it(cache):
    def use(self, n):
        LOG.append(n)
        return n

    f = cache.memoize(use)
    with pytest.raises(TypeError, match=r"'self'"):
        f(Locked(), 1)
    assert LOG == []
    g = cache.memoize(use, ignore=("self",))
    assert g(Locked(), 1) == 1 and g(Locked(), 1) == 1 and LOG == [1]


# ---- invalidation ------------------------------------------------------------------

VERSIONS = {
    "body": ("def compute(x):\n    return x + 1\n", "def compute(x):\n    return x - 1\n"),
    "constant": ("def compute(x):\n    return x + 1\n", "def compute(x):\n    return x + 2\n"),
    "names": (
        "import math\ndef compute(x):\n    return math.floor(x / 3)\n",
        "import math\ndef compute(x):\n    return math.ceil(x / 3)\n",
    ),
    "nested-code": (
        "def compute(x):\n    return (lambda y: y * 3)(x)\n",
        "def compute(x):\n    return (lambda y: y * 4)(x)\n",
    ),
    "defaults": (
        "def compute(x, k=1):\n    return x + k\n",
        "def compute(x, k=5):\n    return x + k\n",
    ),
    "kwdefaults": (
        "def compute(x, *, k=1):\n    return x * k\n",
        "def compute(x, *, k=5):\n    return x * k\n",
    ),
}


@pytest.mark.parametrize("change", sorted(VERSIONS))
def test_changed_code_invalidates_old_results(cache, change):
    old_src, new_src = VERSIONS[change]
    store = memo_store(cache)
    old = define(cache, old_src)
    expected_old = [old.__wrapped__(x) for x in (10, 11)]
    assert [old(10), old(11)] == expected_old
    assert old.cache_info().currsize == 2
    entries = len(store)

    new = define(cache, new_src)
    assert new.fingerprint != old.fingerprint
    expected_new = new.__wrapped__(10)
    assert expected_new != expected_old[0]
    assert new(10) == expected_new  # not the old version's result
    assert new.cache_info() == (0, 1, None, 1)
    # the first call of the new version deleted the old version's two entries
    assert old.cache_info().currsize == 0
    assert len(store) == entries - 2 + 1
    assert not new.check(11)
    with pytest.raises(KeyError):
        new.lookup(11)


def test_unchanged_code_keeps_its_results(cache):
    source = "def compute(x):\n    return [x] * 3\n"
    first = define(cache, source)
    assert first(1) == [1, 1, 1] and first(2) == [2, 2, 2]
    # the same source compiled again (as in the next run of the program)
    again = define(cache, "\n\n" + source)  # line numbers are not code
    assert again.fingerprint == first.fingerprint
    assert again.cache_info().currsize == 2
    assert again(1) == [1, 1, 1] and again(2) == [2, 2, 2]
    assert again.cache_info() == (2, 0, None, 2)


FINGERPRINT_DRIVER = """
    import json, _memo_workers as w
    w.classify("beta")
    w.count_words({"alpha", "beta", "gamma", "delta", "epsilon", "zeta"})
    print(json.dumps({
        "fingerprint": w.classify.fingerprint,
        "classify": list(w.classify.cache_info()),
        "count_words": list(w.count_words.cache_info()),
        "calls": [w.calls("classify"), w.calls("count_words")],
    }))
"""


def test_fingerprint_is_the_same_in_every_interpreter_run(cache_dir, tmp_path):
    """A persistent cache must keep results across runs of the program: a str
    hash seed that differs per run must not change the code fingerprint (here, a
    function whose code holds a frozenset of str constants)."""
    runs = [
        run_driver(FINGERPRINT_DRIVER, cache_dir=cache_dir, cwd=tmp_path, PYTHONHASHSEED=str(seed))
        for seed in (1, 2, 3, 4)
    ]
    assert len({r["fingerprint"] for r in runs}) == 1, [r["fingerprint"] for r in runs]
    assert [r["classify"][:2] for r in runs] == [[0, 1], [1, 0], [1, 0], [1, 0]]
    assert runs[-1]["calls"][0] == 1


def test_set_arguments_hit_in_every_interpreter_run(cache_dir, tmp_path):
    runs = [
        run_driver(FINGERPRINT_DRIVER, cache_dir=cache_dir, cwd=tmp_path, PYTHONHASHSEED=str(seed))
        for seed in (1, 2, 3, 4)
    ]
    assert [r["count_words"][:2] for r in runs] == [[0, 1], [1, 0], [1, 0], [1, 0]]
    assert runs[-1]["calls"][1] == 1


# ---- cache_clear, cache_info, check, lookup -----------------------------------------


def test_cache_clear(cache):
    @cache.memoize
    def area(w, h):
        LOG.append(1)
        return w * h

    @cache.memoize
    def area_sq(w):  # its id starts with area's id
        return w * w

    for i in range(5):
        area(i, 2)
    area_sq(3)
    assert area.cache_info() == (0, 5, None, 5)
    assert area.cache_clear() == 5
    assert area.cache_info() == (0, 0, None, 0)
    assert not area.check(1, 2)
    assert area_sq.check(3) and area_sq.cache_info().currsize == 1  # untouched
    assert area.cache_clear() == 0
    area(1, 2)
    assert len(LOG) == 6  # recomputed


def test_cache_info_counts_this_process_only(cache):
    def cube(x):
        LOG.append(x)
        return x ** 3

    first = cache.memoize(cube)
    [first(i) for i in range(3)]
    first(0)
    assert first.cache_info() == (1, 3, None, 3)
    # Another wrapper (as in another process) sees the entries, not the counts.
    second = cache.memoize(cube)
    assert second.cache_info() == (0, 0, None, 3)
    assert [second(i) for i in range(3)] == [0, 1, 8]
    assert second.cache_info() == (3, 0, None, 3)
    assert first.cache_info() == (1, 3, None, 3)
    assert len(LOG) == 3


def test_check_and_lookup_never_compute(cache):
    @cache.memoize
    def f(a, b=1):
        LOG.append(a)
        return {"sum": a + b}

    assert f.check(1) is False and f.check_call_in_cache(1, b=1) is False
    with pytest.raises(KeyError):
        f.lookup(1)
    assert LOG == [] and f.cache_info() == (0, 0, None, 0)

    f(1)
    assert f.check(1) and f.check(1, 1) and f.check(a=1, b=1)
    assert f.lookup(1) == {"sum": 2} and f.lookup(a=1, b=1) == {"sum": 2}
    assert not f.check(2)
    with pytest.raises(KeyError):
        f.lookup(1, b=5)
    with pytest.raises(TypeError):
        f.check(1, 2, 3)  # arguments are bound like a call
    assert LOG == [1]
    assert f.cache_info() == (0, 1, None, 1)


def test_ttl_expires_results(cache):
    @cache.memoize(ttl=0.5)
    def now(x):
        LOG.append(x)
        return len(LOG)

    assert now(1) == 1 and now(1) == 1
    assert now.check(1)
    time.sleep(1.2)
    assert not now.check(1)
    with pytest.raises(KeyError):
        now.lookup(1)
    assert now(1) == 2  # recomputed
    assert now(1) == 2
    assert LOG == [1, 1]


def test_exceptions_propagate_and_are_not_cached(cache):
    @cache.memoize
    def fragile(x):
        LOG.append(x)
        if len(LOG) == 1:
            raise ValueError("first call fails")
        return x

    with pytest.raises(ValueError, match="first call fails"):
        fragile(1)
    assert not fragile.check(1) and fragile.cache_info().currsize == 0
    assert fragile(1) == 1 and fragile(1) == 1
    assert LOG == [1, 1]


# ---- stampede control --------------------------------------------------------------


def test_stampede_threads_compute_once(cache):
    barrier = threading.Barrier(8)

    @cache.memoize(stampede=True)
    def slow(x):
        LOG.append(threading.get_ident())
        time.sleep(0.5)
        return uuid.uuid4().hex  # unique per computation

    def caller():
        barrier.wait(TIMEOUT)
        return slow("k")

    runs = [in_thread(caller) for _ in range(8)]
    for t, _ in runs:
        t.join(TIMEOUT)
    outcomes = [o for _, o in runs]
    assert all("value" in o for o in outcomes), outcomes
    assert len({o["value"] for o in outcomes}) == 1
    assert len(LOG) == 1


STAMPEDE_DRIVER = """
    import json, os, sys, threading, time
    import _memo_workers as w
    ready, go = sys.argv[1], sys.argv[2]
    open(ready, "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            sys.exit("never told to go")
        time.sleep(0.002)
    out = []
    threads = [threading.Thread(target=lambda: out.append(w.shared("k", 1.0))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"pid": os.getpid(), "results": out}))
"""


def test_stampede_processes_compute_once(cache_dir, tmp_path):
    """4 processes x 2 threads ask for the same missing key at once: exactly one
    computes it, the other 7 callers get the stored result."""
    go = tmp_path / "go"
    procs = [
        popen_driver(STAMPEDE_DRIVER, tmp_path / f"ready{i}", go, cache_dir=cache_dir, cwd=tmp_path)
        for i in range(4)
    ]
    try:
        wait_for(lambda: all((tmp_path / f"ready{i}").exists() for i in range(4)), what="drivers")
        go.touch()
        outs = [finish(p) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = [tuple(r) for o in outs for r in o["results"]]
    assert len(results) == 8
    assert len(set(results)) == 1, results  # one computation's result for everyone
    key, computing_pid, _ = results[0]
    assert key == "k" and computing_pid in {o["pid"] for o in outs}
    with Cache(cache_dir) as c:
        assert c[("calls", "shared")] == 1


HANG_DRIVER = """
    import json, sys, _memo_workers as w
    if len(sys.argv) > 2:
        open(sys.argv[2], "w").close()  # about to call
    print(json.dumps(w.first_call_hangs("k", sys.argv[1])))
"""


def test_stampede_lease_of_a_killed_process_is_taken_over(cache_dir, tmp_path):
    """A holds the lease, computing (a 30 s sleep); B waits for it.  A is
    SIGKILLed: B takes over and finishes long before A's sleep or the 60 s lease
    would have ended."""
    marker, b_calling = tmp_path / "a-computing", tmp_path / "b-calling"
    a = popen_driver(HANG_DRIVER, marker, cache_dir=cache_dir, cwd=tmp_path)
    b = None
    try:
        wait_for(lambda: marker.exists() or a.poll() is not None, what="A to take the lease")
        assert a.poll() is None, a.communicate()[1]
        b = popen_driver(HANG_DRIVER, marker, b_calling, cache_dir=cache_dir, cwd=tmp_path)
        wait_for(b_calling.exists, what="B to call")
        time.sleep(0.5)
        assert b.poll() is None, f"B ended while A held the lease: {b.communicate()}"
        os.kill(a.pid, signal.SIGKILL)
        a.wait(TIMEOUT)
        assert a.returncode == -signal.SIGKILL
        assert finish(b, timeout=TAKEOVER) == ["k", 2]
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    with Cache(cache_dir) as c:
        assert c[("calls", "first_call_hangs")] == 2
    # and the result B computed is stored: a third process hits
    assert run_driver(HANG_DRIVER, marker, cache_dir=cache_dir, cwd=tmp_path) == ["k", 2]
    with Cache(cache_dir) as c:
        assert c[("calls", "first_call_hangs")] == 2


def test_stampede_lease_of_a_killed_child_is_taken_over_before_it_is_reaped(cache, tmp_path):
    """The parent forks a worker that takes the lease and is SIGKILLed; the
    parent, not having reaped it yet (it is waiting for the result), takes over.
    A dead process that is still a zombie holds no lease."""
    marker = tmp_path / "computing"

    @cache.memoize(stampede=True)  # lease_timeout: the default 60 s
    def hang(x):
        n = cache.incr("calls")
        if n == 1:
            marker.touch()
            time.sleep(30)
        return x, n

    child = mp.get_context("fork").Process(target=hang, args=(1,))
    child.start()
    try:
        wait_for(marker.exists, what="the child to take the lease")
        os.kill(child.pid, signal.SIGKILL)
        t, outcome = in_thread(hang, 1)  # the child is a zombie until joined
        t.join(TAKEOVER)
        assert not t.is_alive(), "the dead child's lease was not taken over"
        assert outcome == {"value": (1, 2)}
    finally:
        child.join(TIMEOUT)  # reaps it: a waiter still waiting takes over now
    t.join(TIMEOUT)


def test_stampede_lease_expires_after_lease_timeout(cache):
    """A computation that outlives lease_timeout loses its lease: another caller
    computes instead of waiting for it."""

    @cache.memoize(stampede=True, lease_timeout=0.5)
    def slow(x):
        LOG.append(x)
        n = len(LOG)
        if n == 1:
            GATE.wait(TIMEOUT)
        return n

    t1, first = in_thread(slow, 1)
    try:
        wait_for(lambda: LOG, what="the first computation")
        time.sleep(1.0)  # twice the lease timeout
        t2, second = in_thread(slow, 1)
        t2.join(TAKEOVER)
        assert not t2.is_alive(), "the expired lease was not taken over"
        assert second == {"value": 2}
        assert len(LOG) == 2
    finally:
        GATE.set()
        t1.join(TIMEOUT)
    assert first == {"value": 1}


def test_stampede_exception_propagates_and_a_waiter_computes(cache):
    @cache.memoize(stampede=True)
    def flaky(x):
        LOG.append(x)
        if len(LOG) == 1:
            GATE.wait(TIMEOUT)
            raise ValueError("computation failed")
        return "ok"

    t1, first = in_thread(flaky, 1)
    try:
        wait_for(lambda: LOG, what="the first computation")
        t2, second = in_thread(flaky, 1)
        wait_for(lambda: flaky.cache_info().misses == 2, what="the second caller")
        time.sleep(0.3)
        assert LOG == [1], "a waiter computed while the lease was held"
    finally:
        GATE.set()
    t1.join(TIMEOUT)
    t2.join(TIMEOUT)
    assert isinstance(first.get("error"), ValueError) and "failed" in str(first["error"])
    assert second == {"value": "ok"}  # computed by the waiter itself
    assert LOG == [1, 1]
    assert flaky.lookup(1) == "ok" and flaky.cache_info().currsize == 1


# ---- multiprocessing pools -----------------------------------------------------------

METHODS = ["fork", "spawn", "forkserver"]

POOL_DRIVER = """
    import json, multiprocessing as mp, os, sys
    import _memo_workers as w
    with mp.get_context(sys.argv[1]).Pool(2) as pool:
        in_workers = pool.map(w.square, range(6))
    in_parent = [w.square(i) for i in range(6)]
    print(json.dumps({"pid": os.getpid(), "workers": in_workers, "parent": in_parent,
                      "info": list(w.square.cache_info()), "calls": w.calls("square")}))
"""

MAIN_SCRIPT = """
    import json, multiprocessing as mp, os, sys
    import lmdbcache

    cache = lmdbcache.Cache(os.environ["LMDBCACHE_MEMO_DIR"])

    @cache.memoize
    def square(x):
        cache.incr("calls")
        return x * x, os.getpid()

    if __name__ == "__main__":
        with mp.get_context(sys.argv[1]).Pool(2) as pool:
            in_workers = pool.map(square, range(6))
        in_parent = [square(i) for i in range(6)]
        print(json.dumps({"pid": os.getpid(), "workers": in_workers, "parent": in_parent,
                          "info": list(square.cache_info()), "calls": cache["calls"]}))
"""


def check_pool_run(out):
    assert out["workers"] == [[i * i, out["workers"][i][1]] for i in range(6)]
    assert out["parent"] == out["workers"]  # the workers' results, as stored
    assert all(pid != out["pid"] for _, pid in out["workers"])  # computed in workers
    assert out["info"] == [6, 0, None, 6]  # 6 hits in the parent, no computation
    assert out["calls"] == 6


@pytest.mark.parametrize("method", METHODS)
def test_pool_workers_share_results_with_the_parent(method, cache_dir, tmp_path):
    check_pool_run(run_driver(POOL_DRIVER, method, cache_dir=cache_dir, cwd=tmp_path))


@pytest.mark.parametrize("method", METHODS)
def test_pool_workers_running_a_function_of_the_main_script(method, cache_dir, tmp_path):
    """The same, for a function defined in the script being run (``__main__``),
    which spawn and forkserver workers import under another module name."""
    script = tmp_path / "main_script.py"
    script.write_text(textwrap.dedent(MAIN_SCRIPT))
    proc = subprocess.Popen(
        [sys.executable, str(script), method],
        cwd=tmp_path,
        env=driver_env(cache_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    check_pool_run(finish(proc))


# ---- bad input ---------------------------------------------------------------------


def test_unpicklable_result_is_returned_not_cached_with_a_warning(cache):
    @cache.memoize
    def make_lock(x):
        LOG.append(x)
        return threading.Lock()

    @cache.memoize(stampede=True)
    def make_function(x):
        LOG.append(x)
        return lambda: x

    for f, check in [(make_lock, lambda v: hasattr(v, "acquire")), (make_function, callable)]:
        for _ in range(2):
            with pytest.warns(RuntimeWarning, match=r"not cached.*cannot be pickled") as rec:
                value = f(1)
            assert check(value)
            assert f.__qualname__ in str(rec[0].message)
        assert not f.check(1) and f.cache_info().currsize == 0
    assert LOG == [1, 1, 1, 1]  # computed every time
    assert len([k for k in memo_store(cache).keys() if k[0] == "l"]) == 0  # lease released


@pytest.mark.parametrize("stampede", [False, True])
def test_unpicklable_result_warning_points_at_the_caller(cache, stampede):
    @cache.memoize(stampede=stampede)
    def make_lock(x):
        return threading.Lock()

    with pytest.warns(RuntimeWarning, match="cannot be pickled") as rec:
        make_lock(1)
    assert rec[0].filename == __file__
    assert linecache.getline(rec[0].filename, rec[0].lineno).strip() == "make_lock(1)"


def test_unpicklable_argument_raises_type_error_naming_it(cache):
    @cache.memoize
    def f(data, lock=None, *, flag=None):
        LOG.append(1)
        return 0

    lock = threading.Lock()
    with pytest.raises(TypeError, match=r"'data'"):
        f(lock)
    with pytest.raises(TypeError, match=r"'lock'"):
        f([1], lock)
    with pytest.raises(TypeError, match=r"'lock'"):
        f([1], lock=lock)
    with pytest.raises(TypeError, match=r"'flag'"):
        f(1, flag=lock)
    assert LOG == []
    assert cache.memoize(f.__wrapped__, ignore=("lock",))(1, lock) == 0  # ignored: fine


def test_ignore_must_name_parameters(cache):
    def f(x, verbose=False):
        return x

    with pytest.raises(ValueError, match="nope"):
        cache.memoize(f, ignore=("nope",))
    with pytest.raises(ValueError, match="self"):
        cache.memoize(f, ignore=("x", "self"))

    @cache.memoize(ignore=("verbose",))
    def g(x, verbose=False):
        LOG.append(verbose)
        return x

    assert g(1) == 1 and g(1, verbose=True) == 1 and g(1, True) == 1
    assert LOG == [False]


def test_non_callables_are_rejected(cache):
    for bad in (42, "name", object()):
        with pytest.raises(TypeError):
            cache.memoize(bad)
        with pytest.raises(TypeError):
            lmdbcache.memoize(cache, bad)
        with pytest.raises(TypeError):
            cache.memoize(ttl=1)(bad)
    with pytest.raises(TypeError):
        lmdbcache.memoize(42)  # neither a cache, a path nor a function


def test_bad_ttl_and_lease_timeout(cache):
    def f(x):
        return x

    for ttl in (-1, -0.5, 0):
        with pytest.raises(ValueError):
            cache.memoize(f, ttl=ttl)
        with pytest.raises(ValueError):
            cache.memoize(ttl=ttl)(f)
    with pytest.raises(ValueError):
        cache.memoize(f, stampede=True, lease_timeout=0)
    with pytest.raises(ValueError):
        cache.memoize(f, stampede=True, lease_timeout=-5)


# ---- round 2: the key means the same call (issue 11) --------------------------------


def _add(a, b):
    LOG.append(("add", a, b))
    return a + b


def _mul(a, b):
    LOG.append(("mul", a, b))
    return a * b


class Scaler:
    def __init__(self, factor):
        self.factor = factor

    def scale(self, x):
        LOG.append(("scale", self.factor, x))
        return self.factor * x

    def __call__(self, x):
        LOG.append(("call", self.factor, x))
        return self.factor * x + 1


def test_partials_are_keyed_by_func_args_and_keywords(cache):
    import functools

    add1 = cache.memoize(functools.partial(_add, 1))
    mul10 = cache.memoize(functools.partial(_mul, 10))
    add2 = cache.memoize(functools.partial(_add, b=2))
    assert add1(5) == 6
    assert mul10(5) == 50
    assert add2(5) == 7
    assert add1(5) == 6 and mul10(5) == 50 and add2(5) == 7
    assert LOG == [("add", 1, 5), ("mul", 10, 5), ("add", 5, 2)]


def test_callable_instances_are_keyed_by_their_state(cache):
    two, three = cache.memoize(Scaler(2)), cache.memoize(Scaler(3))
    assert (two(5), three(5), two(5), three(5)) == (11, 16, 11, 16)
    assert LOG == [("call", 2, 5), ("call", 3, 5)]


def test_bound_methods_are_keyed_by_self_unless_ignored(cache):
    s2, s3 = cache.memoize(Scaler(2).scale), cache.memoize(Scaler(3).scale)
    assert (s2(5), s3(5), s2(5), s3(5)) == (10, 15, 10, 15)
    assert LOG == [("scale", 2, 5), ("scale", 3, 5)]
    LOG.clear()
    cache.memoize(Scaler(2).scale, ignore=("self",)).cache_clear()
    i2 = cache.memoize(Scaler(2).scale, ignore=("self",))
    i3 = cache.memoize(Scaler(3).scale, ignore=("self",))
    assert (i2(7), i3(7)) == (14, 14)  # self left out: one entry
    assert LOG == [("scale", 2, 7)]


def test_code_swapped_after_decoration_is_seen(cache):
    def f(x):
        return x + 1

    def g(x):
        return x * 100

    mf = cache.memoize(f)
    assert mf(2) == 3
    fp = mf.fingerprint
    f.__code__ = g.__code__  # what IPython's autoreload does
    assert mf(2) == 200
    assert mf.fingerprint != fp
    assert mf(2) == 200


def test_captured_mutable_state_is_not_in_the_key(cache):
    seen = []
    factor = 3

    @cache.memoize
    def f(x):
        seen.append(x)
        return x * factor

    for _ in range(5):
        assert f(2) == 6
    assert seen == [2]
    assert f.cache_info().currsize == 1


def test_captured_immutable_values_are_in_the_key(cache):
    def make(offset, names):
        @cache.memoize
        def f(x):
            LOG.append((offset, x))
            return (x + offset, names)
        return f

    assert make(1, ("a",))(1) == (2, ("a",))
    assert make(2, ("a",))(1) == (3, ("a",))
    assert make(1, ("a",))(1) == (2, ("a",))
    assert LOG == [(1, 1), (2, 1)]


def test_captured_functions_and_local_classes_are_keyed_by_behaviour(cache):
    # Functions made by one factory share a qualname but not their behaviour:
    # a closure capturing make(1) must not return what one capturing make(2)
    # computed.
    def make(k):
        def step(x):
            return x + k
        return step

    def use(fn):
        @cache.memoize
        def apply(x):
            LOG.append(("apply", x))
            return fn(x)
        return apply

    assert use(make(1))(10) == 11
    assert use(make(2))(10) == 12  # same qualname, other captured value
    assert use(make(1))(10) == 11  # equal behaviour: a hit
    assert LOG == [("apply", 10), ("apply", 10)]

    # Same qualname, different code (two branches of one factory).
    def pick(flag):
        if flag:
            def op(x):
                return x * 10
        else:
            def op(x):
                return x * 100
        return op

    assert use(pick(True))(3) == 30
    assert use(pick(False))(3) == 300

    # Same qualname, different defaults.
    def with_default(d):
        def op(x, d=d):
            return x - d
        return op

    assert use(with_default(1))(10) == 9
    assert use(with_default(5))(10) == 5

    # Nested: a captured function capturing a captured function.
    def compose(f):
        def g(x):
            return f(x) * 2
        return g

    assert use(compose(make(1)))(1) == 4
    assert use(compose(make(3)))(1) == 8

    # Classes defined inside a function share a qualname too.
    def klass(flag):
        if flag:
            class Op:
                def run(self, x):
                    return x + 1000
        else:
            class Op:
                def run(self, x):
                    return x + 2000
        return Op

    def use_class(cls):
        @cache.memoize
        def run(x):
            return cls().run(x)
        return run

    assert use_class(klass(True))(1) == 1001
    assert use_class(klass(False))(1) == 2001
    assert use_class(klass(True))(1) == 1001

    # ... and by the values their methods capture (super() makes a cycle).
    def klass_of(k):
        class Base:
            def run(self, x):
                return x

        class Op(Base):
            def run(self, x):
                return super().run(x) + k
        return Op

    assert use_class(klass_of(1))(1) == 2
    assert use_class(klass_of(2))(1) == 3

    # A value a captured function captures is read at each call, like the
    # memoized function's own: rebinding it changes the key.
    k = 1

    def inner(x):
        return x + k

    @cache.memoize
    def outer(x):
        return inner(x)

    assert outer(1) == 2
    k = 2
    assert outer(1) == 3
    k = 1
    assert outer(1) == 2

    # A recursive captured function (it captures itself) works.
    def fact_maker():
        def fact(n):
            return 1 if n <= 1 else n * fact(n - 1)
        return fact

    assert use(fact_maker())(5) == 120


def test_function_arguments_and_defaults_are_keyed_by_behaviour(cache):
    # A function passed as an argument, or used as a default, that cannot be
    # found by name (a lambda, a nested function) is keyed by what it does:
    # make(1) and make(2) share a qualname, not a result.
    import functools

    def make(k):
        return lambda x: x + k

    @cache.memoize
    def apply(fn, x):
        LOG.append(x)
        return fn(x)

    assert apply(make(1), 10) == 11
    assert apply(make(2), 10) == 12  # same qualname, other captured value
    assert apply(make(1), 10) == 11  # equal behaviour: a hit
    assert apply(fn=make(2), x=10) == 12  # bound by keyword: the same entry
    assert LOG == [10, 10]

    # Nested functions of one factory; two lambdas with one qualname and
    # different code.
    def make_step(k):
        def step(x):
            return x * k
        return step

    assert apply(make_step(2), 10) == 20
    assert apply(make_step(3), 10) == 30
    lams = [lambda x: x + 1, lambda x: x * 100]
    assert lams[0].__qualname__ == lams[1].__qualname__
    assert apply(lams[0], 5) == 6
    assert apply(lams[1], 5) == 500

    # Inside containers and partials, and a memoized local function.
    @cache.memoize
    def apply_all(fns, x):
        return [f(x) for f in fns]

    assert apply_all([make(1), make_step(2)], 3) == [4, 6]
    assert apply_all([make(2), make_step(2)], 3) == [5, 6]
    assert apply(functools.partial(make_step(2)), 7) == 14
    assert apply(functools.partial(make_step(5)), 7) == 35
    assert apply(cache.memoize(make(100)), 1) == 101
    assert apply(cache.memoize(make(200)), 1) == 201

    # A function the argument captures is keyed by behaviour too, and a value
    # it captures is read at each call.
    def compose(f):
        return lambda x: f(x) * 2

    assert apply(compose(make(1)), 1) == 4
    assert apply(compose(make(3)), 1) == 8
    k = 1

    def add_k(x):
        return x + k

    assert apply(add_k, 1) == 2
    k = 2
    assert apply(add_k, 1) == 3

    # Classes defined inside a function.
    def klass(k):
        class Op:
            def run(self, x):
                return x + k
        return Op

    assert apply(lambda x, c=klass(1): c().run(x), 1) == 2
    assert apply(lambda x, c=klass(2): c().run(x), 1) == 3

    @cache.memoize
    def run_class(cls, x):
        return cls().run(x)

    assert run_class(klass(1), 1) == 2
    assert run_class(klass(2), 1) == 3

    # A default value of the memoized function's parameters.
    def use_default(k):
        @cache.memoize
        def f(x, fn=make(k)):
            return fn(x)
        return f

    assert use_default(1)(10) == 11
    assert use_default(2)(10) == 12
    assert use_default(1)(10) == 11

    # A function whose default is itself (a cycle) is keyed, not recursed into.
    def selfish(x, me=None):
        return x

    selfish.__defaults__ = (selfish,)
    assert apply(selfish, 4) == 4
    assert apply(selfish, 4) == 4


def test_importable_function_arguments_keep_their_name_key(cache):
    # A function of a module (found by module.qualname) is keyed by its name,
    # exactly as before behaviour keys: the key of a call passing one is the
    # digest of ("<function>", "module.qualname"), so entries stored by
    # earlier versions are still found.
    import functools
    from lmdbcache import memo

    @cache.memoize
    def apply(fn, x):
        return fn(x, x)

    def old_key(*values):
        parts = []
        for v in values:
            if isinstance(v, functools.partial):
                v = ("<partial>", ("<function>", memo.function_id(v.func)), v.args, ("<dict>", []))
            elif callable(v):
                v = ("<function>", memo.function_id(v))
            parts.append(memo._hash128(pickle.dumps(v, protocol=5)))
        return apply._state._prefix + (memo._hash128(b"".join(parts)),)

    assert apply._state._key((_add, 3), {}) == old_key(_add, 3)
    assert apply._state._key((functools.partial(_mul), 3), {}) == old_key(
        functools.partial(_mul), 3)
    assert apply._state._key((len, 3), {}) == old_key(len, 3)
    assert apply(_add, 3) == 6 and apply(_mul, 3) == 9


def test_joblib_scenarios_lambda_nested_args_as_kwargs(cache):
    lam = cache.memoize(lambda x, y=1: LOG.append((x, y)) or x + y)
    assert lam(1) == lam(1, 1) == lam(x=1, y=1) == lam(1, y=1) == 2
    assert LOG == [(1, 1)]


def test_async_functions_are_memoized(cache):
    import asyncio

    @cache.memoize
    async def fetch(x):
        LOG.append(x)
        await asyncio.sleep(0)
        return x * 2

    import inspect
    assert inspect.iscoroutinefunction(fetch)

    async def main():
        return [await fetch(3), await fetch(3), await fetch(4)]

    with warnings_as_errors():
        assert asyncio.run(main()) == [6, 6, 8]
    assert LOG == [3, 4]
    assert fetch.check(3)


def test_async_stampede_waiters_do_not_block_the_loop(cache):
    import asyncio

    @cache.memoize(stampede=True)
    async def slow(x):
        LOG.append(x)
        await asyncio.sleep(0.3)
        return x + 1

    ticks = []

    async def ticker():
        for _ in range(10):
            ticks.append(time.monotonic())
            await asyncio.sleep(0.02)

    async def main():
        return await asyncio.gather(slow(1), slow(1), slow(1), ticker())

    with warnings_as_errors():
        results = asyncio.run(main())
    assert results[:3] == [2, 2, 2]
    assert LOG == [1]
    assert len(ticks) == 10 and max(b - a for a, b in zip(ticks, ticks[1:])) < 0.2


class warnings_as_errors:
    def __enter__(self):
        import warnings
        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def test_result_larger_than_size_limit_is_returned_with_one_warning(cache_dir):
    with Cache(cache_dir, size_limit=1 << 16) as small:
        @small.memoize
        def big(n):
            LOG.append(n)
            return b"x" * n

        with pytest.warns(RuntimeWarning, match="does not fit"):
            assert len(big(1 << 20)) == 1 << 20
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert len(big(1 << 20)) == 1 << 20  # computed again, no second warning
        assert LOG == [1 << 20, 1 << 20]
        assert big(10) == b"x" * 10 and big(10) == b"x" * 10
        assert LOG[-1] == 10 and len(LOG) == 3


def test_plain_call_wrapper_pickles(cache):
    fast = cache.memoize(_add)
    clone = pickle.loads(pickle.dumps(fast))
    assert clone(1, 2) == 3 and fast(1, 2) == 3
    assert LOG == [("add", 1, 2)]  # the clone stored, the original read it


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_plain_call_wrapper_in_pool_map(method, cache_dir, tmp_path):
    out = run_driver(
        """
        import json, multiprocessing as mp, os, sys
        import _memo_workers as w
        if __name__ == "__main__":
            with mp.get_context(sys.argv[1]).Pool(2) as pool:
                res = pool.map(w.fast_cube, range(5))
            print(json.dumps({"res": res, "parent": [w.fast_cube(i) for i in range(5)],
                              "calls": w.calls("cube"), "pid": os.getpid()}))
        """,
        method, cache_dir=cache_dir, cwd=tmp_path)
    assert [r[0] for r in out["res"]] == [i ** 3 for i in range(5)]
    assert all(r[1] != out["pid"] for r in out["res"])
    assert out["parent"] == out["res"] and out["calls"] == 5


def test_key_function_refresh_bypass_and_ignore_positions(cache):
    @cache.memoize(key=lambda path, verbose=False: path.lower())
    def load(path, verbose=False):
        LOG.append(path)
        return len(LOG)

    assert load("A") == 1 and load("a") == 1 and load("a", verbose=True) == 1
    assert load.refresh("a") == 2 and load("A") == 2
    assert load.bypass("a") == 3 and load("a") == 2
    assert load.__wrapped__("a") == 4 and load("a") == 2

    @cache.memoize(ignore=(1,))
    def g(x, verbose):
        LOG.append(x)
        return x

    LOG.clear()
    assert g(1, True) == g(1, False) == 1 and LOG == [1]
    with pytest.raises(ValueError):
        cache.memoize(_add, ignore=(5,))


def test_frozenset_keys_are_independent_of_the_hash_seed(cache_dir, tmp_path):
    code = """
        import json, sys, lmdbcache
        c = lmdbcache.Cache(sys.argv[1])
        key = frozenset({"alpha", "beta", "gamma", "delta", "eps", ("t", 1), 3})
        if sys.argv[2] == "set":
            c[key] = "v"
        print(json.dumps(c.get(key)))
    """
    assert run_driver(code, cache_dir, "set", cache_dir=cache_dir, cwd=tmp_path,
                      PYTHONHASHSEED="1") == "v"
    for seed in ("2", "3", "4", "5"):
        assert run_driver(code, cache_dir, "get", cache_dir=cache_dir, cwd=tmp_path,
                          PYTHONHASHSEED=seed) == "v"


def test_expire_time(cache):
    cache.set("a", 1, ttl=100)
    cache["b"] = 2
    t = cache.expire_time("a")
    assert t is not None and abs(t - (time.time() + 100)) < 5
    assert cache.expire_time("b") is None
    with pytest.raises(KeyError):
        cache.expire_time("missing")


def test_memoize_signature_checks_with_mypy(tmp_path):
    pytest.importorskip("mypy")
    example = tmp_path / "typed_example.py"
    example.write_text(textwrap.dedent("""
        import lmdbcache

        cache = lmdbcache.Cache("/tmp/unused-typed-example")

        @cache.memoize
        def f(a: int, b: str = "x") -> float:
            return 1.0

        @cache.memoize(ttl=10)
        def g(a: int) -> str:
            return "s"

        @lmdbcache.memoize(cache)
        async def h(a: int) -> int:
            return a

        x: float = f(1, "y")
        y: str = g(2)
        z: bool = f.check(1)
        r: float = f.refresh(1)
        """))
    bad = tmp_path / "typed_bad.py"
    bad.write_text(textwrap.dedent("""
        import lmdbcache

        cache = lmdbcache.Cache("/tmp/unused-typed-example")

        @cache.memoize
        def f(a: int) -> float:
            return 1.0

        f("not an int")
        """))
    cmd = [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
           "--cache-dir", str(tmp_path / ".mypy")]
    ok = subprocess.run(cmd + [str(example)], capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    ko = subprocess.run(cmd + [str(bad)], capture_output=True, text=True, cwd=tmp_path)
    assert ko.returncode == 1 and "arg-type" in ko.stdout, ko.stdout


def test_hash128_is_a_stable_16_byte_digest():
    from lmdbcache import _core

    assert len(_core._hash128(b"")) == 16
    seen = {_core._hash128(bytes(n)) for n in range(200)}
    assert len(seen) == 200  # the length is part of the digest
    big = bytes(range(256)) * 1024  # above the GIL-release threshold
    assert _core._hash128(big) == _core._hash128(memoryview(big))
    flipped = bytearray(big)
    flipped[12345] ^= 1
    assert _core._hash128(bytes(flipped)) != _core._hash128(big)
    with pytest.raises(TypeError):
        _core._hash128("not a buffer")
