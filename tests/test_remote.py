"""The remote tier (Cache(path, remote="redis://...")) against a real
redis-server: several "machines" (processes with their own local directory)
sharing one Redis, coherence measured, Redis killed and restarted."""
import multiprocessing as mp
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings

import pytest

import lmdbcache
from lmdbcache import _core

redis = pytest.importorskip("redis")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _remote_workers as W  # noqa: E402

SAFE_PATH = ["-P"] if sys.version_info >= (3, 11) else []
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"

pytestmark = [
    pytest.mark.skipif(not os.path.exists(REDIS_SERVER), reason="needs redis-server (make deps)"),
    pytest.mark.filterwarnings("ignore:.*multi-threaded.*:DeprecationWarning"),
]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server on a loopback port, started and killed by the tests."""

    def __init__(self, tmp, *extra):
        self.extra = list(extra)
        self.port = _free_port()
        self.dir = tmp
        self.proc = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 10
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=1).ping()
                return
            except redis.ConnectionError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.02)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def client(self):
        return redis.Redis(port=self.port)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = RedisServer(tmp_path_factory.mktemp("redis"))
    s.start()
    try:
        yield s
    finally:
        s.kill()


@pytest.fixture
def url(server):
    if server.proc.poll() is not None:
        server.start()
    server.client().flushall()
    return server.url


def machine(tmp_path, name, url, **kw):
    c = lmdbcache.Cache(str(tmp_path / name), remote=url, **kw)
    # The listener subscribes in the background, and a remote hit is kept in
    # the local tier only once it has (waiting at most remote_timeout): on a
    # loaded machine, let it subscribe first, so that tests relying on local
    # copies do not depend on scheduling.
    wait_for(lambda: c._r().listening(c), 10)
    return c


def wait_for(pred, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.005)
    return pred()


# ---- construction -------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    "http://127.0.0.1:6379", "memcached://h:1", "redis://:notaport/0", "redis://h:1/notadb",
    "redis://", "not a url", "unix://",
])
def test_bad_urls_are_value_errors(tmp_path, bad):
    with pytest.raises(ValueError):
        lmdbcache.Cache(str(tmp_path / "c"), remote=bad)


def test_bad_remote_options(tmp_path, url):
    with pytest.raises(ValueError):
        lmdbcache.Cache(str(tmp_path / "c"), remote=url, remote_errors="ignore")
    with pytest.raises(ValueError):
        lmdbcache.Cache(str(tmp_path / "c"), remote=url, remote_timeout=0)
    with pytest.raises(TypeError):
        lmdbcache.Cache(str(tmp_path / "c"), remote=42)


def test_without_redis_installed_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ImportError, match=r"lmdbcache\[redis\]"):
        lmdbcache.Cache(str(tmp_path / "c"), remote="redis://127.0.0.1:1/0")
    # the core keeps working
    c = lmdbcache.Cache(str(tmp_path / "d"))
    c["a"] = 1
    assert c["a"] == 1


def test_pickle_keeps_the_url(tmp_path, url):
    a = machine(tmp_path, "a", url, remote_prefix="p:")
    b = pickle.loads(pickle.dumps(a))
    assert type(b) is type(a)
    assert b.options["remote"] == url and b.options["remote_prefix"] == "p:"
    a["k"] = 1
    assert b["k"] == 1
    # a ready client pickles as an equivalent URL
    c = lmdbcache.Cache(str(tmp_path / "c"), remote=redis.Redis.from_url(url))
    assert pickle.loads(pickle.dumps(c)).options["remote"].startswith("redis://127.0.0.1:")


# ---- reads and writes across machines --------------------------------------------------


def test_two_machines_in_one_process(tmp_path, url, server):
    a, b = machine(tmp_path, "a", url), machine(tmp_path, "b", url)
    a["k"] = [1, 2]
    assert b["k"] == [1, 2] and b.get("k") == [1, 2] and "k" in b
    # the remote hit was stored locally, as the same record
    assert b._get_raw("k") == a._get_raw("k")
    # the bytes in Redis are that record
    stored = server.client().get(b"lmdbcache:\0" + a._key_raw("k"))
    assert stored == a._get_raw("k")[0]
    # a's invalidation of its own first write may reach b after b kept the
    # copy (and drops it, conservatively): read until b keeps one again
    assert wait_for(lambda: b.get("k") == [1, 2] and b._get_raw("k") is not None)
    a["k"] = "new"
    assert wait_for(lambda: b.get("k") == "new", 1)
    assert a.add("once", 1) and not b.add("once", 2) and b["once"] == 1
    assert b.pop("once") == 1
    assert wait_for(lambda: "once" not in a, 1)
    with pytest.raises(KeyError):
        b.pop("once")
    assert b.pop("once", "d") == "d"
    a.set_many({"m1": 1, "m2": "two"})
    assert b.get_many(["m1", "m2", "m3"]) == {"m1": 1, "m2": "two"}
    assert b.delete_many(["m1", "m2", "m3"]) == 2
    assert wait_for(lambda: a.get("m1") is None and a.get("m2") is None, 1)
    a.update({"u": 1}, v=2)
    assert b["u"] == 1 and b["v"] == 2
    del b["u"]
    with pytest.raises(KeyError):
        del b["u"]
    assert wait_for(lambda: "u" not in a, 1)
    a["big"] = 7
    assert b.incr("big", 3) == 10 and a.decr("big") == 9
    assert wait_for(lambda: b.get("big") == 9, 1)
    a.clear()
    assert wait_for(lambda: len(b) == 0 and b.get("v") is None, 1)


def test_namespaces_and_long_keys(tmp_path, url):
    a, b = machine(tmp_path, "a", url), machine(tmp_path, "b", url)
    long_key = ("x" * 1000, 3)
    a.namespace("n1")[long_key] = b"v" * 5000
    assert b.namespace("n1")[long_key] == b"v" * 5000
    assert b.get(long_key) is None  # another namespace
    a.namespace("n2").clear()
    assert b.namespace("n1").get(long_key) == b"v" * 5000


def test_a_record_for_another_key_is_refused(tmp_path, url, server):
    a, b = machine(tmp_path, "a", url), machine(tmp_path, "b", url)
    a["good"] = "value"
    rec = a._get_raw("good")[0]
    with pytest.raises(lmdbcache.CorruptError):
        a._put_raw("other", rec)
    # a record copied to another key in Redis is not served there
    server.client().set(b"lmdbcache:\0" + a._key_raw("other"), rec)
    with pytest.warns(RuntimeWarning, match="corrupt"):
        assert b.get("other") is None


def test_ttl_across_tiers(tmp_path, url, server):
    a, b = machine(tmp_path, "a", url), machine(tmp_path, "b", url)
    a.set("t", "v", ttl=0.6)
    assert 0 < server.client().pttl(b"lmdbcache:\0" + a._key_raw("t")) <= 600
    time.sleep(0.2)
    assert b["t"] == "v"
    raw, expires = b._get_raw("t")
    assert 0.2 < expires - time.time() <= 0.45  # the remaining TTL, not the full one
    time.sleep(0.5)
    assert b.get("t") is None and a.get("t") is None and b._get_raw("t") is None
    c = machine(tmp_path, "c", url, ttl=0.3)  # a default ttl reaches Redis too
    c["d"] = 1
    assert 0 < server.client().pttl(b"lmdbcache:\0" + c._key_raw("d")) <= 300
    a.set("touched", 1)
    assert b.touch("touched", ttl=0.3)
    time.sleep(0.4)
    assert a.get("touched") is None


def test_readonly_reads_through_without_writing_locally(tmp_path, url):
    a = machine(tmp_path, "a", url)
    lmdbcache.Cache(str(tmp_path / "ro")).close()  # the local directory exists
    ro = machine(tmp_path, "ro", url, readonly=True)
    a["k"] = "v"
    assert ro["k"] == "v" and ro.get("k") == "v"
    assert ro._get_raw("k") is None
    with pytest.raises(lmdbcache.ReadOnlyError):
        ro["x"] = 1


def test_three_machines_share_results(tmp_path, url):
    ctx = mp.get_context("spawn")
    n = 50
    args = [(url, str(tmp_path / f"m{m}"), m, 3, n) for m in range(3)]
    with ctx.Pool(3) as pool:
        results = pool.map(W.machine_put_get, args, chunksize=1)
    for out, local in results:
        assert out == {(mm, i): i for mm in range(3) for i in range(n)}
        assert local == 3 * n  # every value now also lives in each machine's LMDB


def test_incr_from_3_machines_times_4_processes_is_exact(tmp_path, url):
    ctx = mp.get_context("spawn")
    n = 200
    args = [(url, str(tmp_path / f"m{m}"), n) for m in range(3) for _ in range(4)]
    with ctx.Pool(12) as pool:
        pool.map(W.incr_worker, args, chunksize=1)
    for m in range(3):
        c = lmdbcache.Cache(str(tmp_path / f"m{m}"), remote=url)
        assert wait_for(lambda: c.get("counter") == 3 * 4 * n, 2), c.get("counter")


def test_stampede_across_machines_computes_once(tmp_path, url, server):
    ctx = mp.get_context("spawn")
    start_at = time.time() + 3
    args = [(url, str(tmp_path / f"m{m}"), start_at) for m in range(3) for _ in range(2)]
    with ctx.Pool(6) as pool:
        results = pool.map(W.stampede_worker, args, chunksize=1)
    assert results == [70] * 6
    assert int(server.client().get("test:computations")) == 1


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pools_with_remote(tmp_path, url, method):
    ctx = mp.get_context(method)
    path = str(tmp_path / "m")
    with ctx.Pool(4) as pool:
        out = pool.map(W.pool_task, [(url, path, i) for i in range(40)])
    assert [v for v, _ in out] == [i * i for i in range(40)]
    other = machine(tmp_path, "other", url)
    assert all(other[("pool", i)] == i * i for i in range(40))
    if method == "fork":
        W.GLOBAL_CACHE = machine(tmp_path, "inh", url)
        W.GLOBAL_CACHE["warm"] = 1
        with ctx.Pool(4) as pool:
            assert pool.map(W.pool_task_inherited, range(20)) == [i + 1 for i in range(20)]
        assert all(other[("inh", i)] == i + 1 for i in range(20))
        W.GLOBAL_CACHE = None


def test_coherence_bound(tmp_path, url):
    """Another machine reads the new value within 100 ms (p99) of the write returning."""
    ctx = mp.get_context("spawn")
    n = 200
    writer = machine(tmp_path, "w", url)
    writer["key"] = -1
    q, ready = ctx.Queue(), ctx.Event()
    p = ctx.Process(target=W.coherence_reader, args=(url, str(tmp_path / "r"), "key", n, q, ready))
    p.start()
    assert ready.wait(30)
    time.sleep(0.2)
    returned = {}
    for i in range(n):
        writer["key"] = i
        returned[i] = time.time()
        time.sleep(0.01)
    seen = q.get(timeout=60)
    p.join(30)
    # when the reader first saw value i or a newer one
    lat = []
    for i in range(n):
        t = min((t for v, t in seen if isinstance(v, int) and v >= i), default=None)
        assert t is not None, f"value {i} never seen"
        lat.append(max(0.0, t - returned[i]))
    lat.sort()
    p99 = lat[int(len(lat) * 0.99) - 1]
    print(f"coherence: p50 {lat[len(lat) // 2] * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms")
    # The 100 ms p99 bound is a speed target, measured on a quiet machine (see the
    # distributed guide); here, under the test suite's load and the sanitizer
    # build, the test asserts that every write reaches the other machine promptly.
    assert p99 < 2.0, f"p99 {p99:.3f} s"


# ---- failure ----------------------------------------------------------------------------


def test_redis_killed_and_restarted(tmp_path, url, server):
    a, b = machine(tmp_path, "a", url), machine(tmp_path, "b", url)
    for i in range(20):
        a[("k", i)] = i

    def b_holds_local_copies():
        # A remote hit is not kept while invalidations of it are in flight (here
        # a's own, delivered to this process's listener): read until all are kept.
        return all(b[("k", i)] == i for i in range(20)) and all(
            _core.Store._get_raw(b, ("k", i)) is not None for i in range(20))

    assert wait_for(b_holds_local_copies, 10)
    server.kill()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.time()
        # reads serve the local tier, writes go local only, nothing raises
        assert all(b[("k", i)] == i for i in range(20))
        assert b.get("absent") is None
        b["during"] = "outage"
        assert b["during"] == "outage"
        assert b.incr("ctr") == 1
        for _ in range(50):
            b.get("absent")
        assert time.time() - t0 < 5
    outage = [w for w in caught if "unreachable" in str(w.message)]
    assert len(outage) == 1, [str(w.message) for w in caught]
    # a read during the outage never blocks longer than remote_timeout (0.25 s)
    t0 = time.time()
    b.get("absent2")
    assert time.time() - t0 < 0.35
    server.start()
    assert wait_for(lambda: not a._r().down and a._r().listening(a), 5)
    # a writes new values after the restart; b's listener missed nothing it keeps
    for i in range(20):
        a[("k", i)] = i + 100
    assert wait_for(lambda: all(b[("k", i)] == i + 100 for i in range(20)), 5)
    assert b.get("during") is None  # the outage's local-only write did not survive
    # acknowledged after the restart: nothing lost
    cl = server.client()
    assert all(cl.exists(b"lmdbcache:\0" + a._key_raw(("k", i))) for i in range(20))


def test_stale_copy_is_not_served_after_reconnect(tmp_path, url, server):
    a, b = machine(tmp_path, "a", url), machine(tmp_path, "b", url)
    a["k"] = "old"
    assert b["k"] == "old"
    server.kill()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b.get("x")
        server.start()
        # written by another machine while b was disconnected: b never gets
        # this invalidation (it is not even published)
        server.client().set(b"lmdbcache:\0" + a._key_raw("k"), a._encode_raw("k", "new")[1])
        # once b talks to Redis again its local tier is a new generation
        ok = wait_for(lambda: b.get("k") == "new", 5)
        r = b._r()
        assert ok, (b.get("k"), b._gen, r.down, r.listening(b), r.listener.is_alive(),
                    len(r.caches), b._gen_store().get(("gen", "lmdbcache:")))
        assert b["k"] == "new"


def test_remote_errors_raise(tmp_path, url, server):
    c = machine(tmp_path, "c", url, remote_errors="raise")
    c["k"] = 1
    server.kill()
    try:
        assert c["k"] == 1  # a local hit never touches the network
        with pytest.raises(lmdbcache.remote.RemoteError):
            c.get("absent")
        with pytest.raises(lmdbcache.remote.RemoteError):
            c["k"] = 2
    finally:
        server.start()


def test_signed_machines_refuse_records_planted_in_redis(tmp_path, url, server):
    """With secret=, the records in Redis carry the MAC: one planted by
    whoever can write Redis (here: a valid record of an unsigned machine, a
    pickle that would run code) is refused, never unpickled."""
    secret = b"shared-by-the-machines-0123456789"
    a = machine(tmp_path, "a", url, secret=secret)
    b = machine(tmp_path, "b", url, secret=secret)
    a["k"] = {"from": "a"}
    assert b["k"] == {"from": "a"}  # signed records travel between machines
    rogue = lmdbcache.Cache(str(tmp_path / "rogue"))  # no secret, not remote
    marker = tmp_path / "payload-ran"
    kb, rec, _ = rogue._encode_raw("k2", _Payload(str(marker)))
    server.client().set(b"lmdbcache:\0" + kb, rec)
    with pytest.warns(RuntimeWarning, match="corrupt remote record"):
        assert b.get("k2") is None  # the remote tier's policy: a bad record is a miss
    assert not marker.exists()
    with pytest.raises(lmdbcache.CorruptError, match="not signed"):
        b._put_raw("k2", rec)  # the reason, seen directly
    rogue.close()


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_writes_survive_a_script_flush(tmp_path, url, server):
    """set() is one script call (SET + PUBLISH): a server that forgot the
    script (SCRIPT FLUSH, a restart) gets it again, and the other machine's
    copy is still invalidated."""
    a, b = machine(tmp_path, "a", url), machine(tmp_path, "b", url)
    a["k"] = 1
    assert b["k"] == 1
    server.client().script_flush()
    a["k"] = 2
    assert server.client().get(b"lmdbcache:\0" + a._key_raw("k")) == b"2"
    assert wait_for(lambda: b.get("k") == 2, 5)
    a.set("t", "x", ttl=30)
    assert 0 < server.client().pttl(b"lmdbcache:\0" + a._key_raw("t")) <= 30000


# ---- invalidation channels: every other node once, never the writer's own ----------------


def test_invalidation_patterns_match_every_other_node_exactly_once(server):
    """A node listens on 12 glob patterns; PUBLISH reports how many receivers
    matched: 1 for every other node's channel, 0 for its own."""
    import random

    from lmdbcache.remote import _TOKEN_ALPHABET, _glob_escape, _patterns, _token

    cl = server.client()
    base = b"we*ird?[pre]\\fix:__inval__:"  # glob characters in the prefix are literal
    mine = _token(b"boot:/some/path")
    assert len(mine) == 12 and set(mine) <= set(_TOKEN_ALPHABET)
    ps = cl.pubsub()
    ps.psubscribe(*_patterns(_glob_escape(base), mine))
    deadline = time.time() + 5
    while len(ps.patterns) < 12 or ps.get_message(timeout=0.05) is not None:
        assert time.time() < deadline
    others = set()
    rnd = random.Random(7)
    for i in range(12):  # differing at one position, and from it on
        for c in _TOKEN_ALPHABET:
            if c != mine[i]:
                others.add(mine[:i] + bytes([c]) + mine[i + 1:])
                others.add(mine[:i] + bytes([c]) * (12 - i))
    others |= {bytes(rnd.choice(_TOKEN_ALPHABET) for _ in range(12)) for _ in range(300)}
    others |= {_token(f"boot:/path/{i}".encode()) for i in range(100)}
    others.discard(mine)
    try:
        assert cl.publish(base + mine, b"x") == 0
        counts = {t: cl.publish(base + t, b"x") for t in others}
        assert set(counts.values()) == {1}, [t for t, n in counts.items() if n != 1][:5]
        # a channel of another prefix, or a longer one, is not ours either
        assert cl.publish(b"other:__inval__:" + others.pop(), b"x") == 0
        assert cl.publish(base + mine + b"0", b"x") == 0
    finally:
        ps.close()


def test_a_write_never_wakes_its_own_nodes_listener(tmp_path, url):
    """Writes of this node -- this process or another one on the same local
    path -- are not delivered to its listener (nothing to apply, and no wake-up
    on the write path); another node's writes are, once each."""
    # a prefix of its own: a listener of this process that hears only a
    a = machine(tmp_path, "a", url, remote_prefix="wake:")
    r = a._r()
    start = r.invalidations
    for i in range(50):
        a[("k", i)] = i
    a.delete(("k", 0))
    a.pop(("k", 1))
    a.set_many({"m": 1})
    a.incr("n")
    a.touch(("k", 2), ttl=60)

    def other_process(path, prefix):
        code = ("import lmdbcache, sys; c = lmdbcache.Cache(sys.argv[1], remote=sys.argv[2], "
                "remote_prefix='wake:'); [c.set((sys.argv[3], i), i) for i in range(20)]")
        subprocess.run([sys.executable, *SAFE_PATH, "-c", code, str(path), url, prefix],
                       check=True, timeout=60, cwd=tmp_path)

    other_process(tmp_path / "a", "p")  # the same node
    # the other process's local copies stay: nothing of this node dropped them
    assert all(a._get_raw(("p", i)) is not None for i in range(20))
    time.sleep(0.3)
    assert r.invalidations == start
    other_process(tmp_path / "b", "q")  # another node
    assert wait_for(lambda: r.invalidations == start + 20, 5), r.invalidations - start
    time.sleep(0.3)
    assert r.invalidations == start + 20


def test_a_closed_paths_patterns_are_dropped(tmp_path, url, server):
    """When the last cache of a local path goes away, the listener stops
    listening for it: its patterns would match this node's own writes."""
    import gc

    a = machine(tmp_path, "a", url, remote_prefix="drop:")
    b = machine(tmp_path, "b", url, remote_prefix="drop:")
    r = a._r()
    assert len(r.origins) == 2
    # let the listener's periodic generation check (every 0.5 s) visit b: it
    # must not keep a reference to it afterwards
    time.sleep(1.2)
    del b
    gc.collect()
    assert wait_for(lambda: len(r.origins) == 1, 5)
    cl = server.client()
    # only a's own patterns are left at the server: a's channel matches none
    assert wait_for(lambda: cl.publish(r.channel(a), b"x") == 0, 5)
    start = r.invalidations
    for i in range(20):
        a[("k", i)] = i
    time.sleep(0.3)
    assert r.invalidations == start
    # and a path that comes back is listened for again
    b = machine(tmp_path, "b", url, remote_prefix="drop:")
    b["k"] = 1
    assert wait_for(lambda: a.get("k") == 1, 5)


def test_nothing_redis_acknowledged_is_lost_across_a_sigkill(tmp_path):
    """A server that persists every write (AOF, fsync always) is SIGKILLed
    while a machine writes and restarted: every write that returned (Redis
    acknowledged it; remote_errors="raise" makes the others raise) is read back
    by another machine, and by the writer after its reconnect."""
    import threading

    srv = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    srv.start()
    try:
        a = machine(tmp_path, "a", srv.url, remote_errors="raise", remote_prefix="aof:")
        acked, refused = {}, 0
        stop = threading.Event()

        def write():
            nonlocal refused
            i = 0
            while not stop.is_set():
                try:
                    a[("k", i)] = {"i": i}
                    acked[i] = True
                except lmdbcache.remote.RemoteError:
                    refused += 1
                    time.sleep(0.005)
                i += 1

        t = threading.Thread(target=write)
        t.start()
        try:
            assert wait_for(lambda: len(acked) >= 200, 30)
            srv.kill()
            assert wait_for(lambda: refused >= 5, 10)
            srv.start()
            n = len(acked)
            assert wait_for(lambda: len(acked) >= n + 200, 30)
        finally:
            stop.set()
            t.join(30)
        assert refused >= 5 and len(acked) >= 400
        b = machine(tmp_path, "b", srv.url, remote_prefix="aof:")
        got = b.get_many([("k", i) for i in acked])
        lost = [i for i in acked if got.get(("k", i)) != {"i": i}]
        assert not lost, f"{len(lost)} of {len(acked)} acknowledged writes lost: {lost[:10]}"
        assert wait_for(lambda: a._r().listening(a), 5)
        assert all(a[("k", i)] == {"i": i} for i in acked)
    finally:
        srv.kill()


def test_memoize_cache_clear_reaches_every_machine(tmp_path, url, server):
    """cache_clear() on one machine deletes the function's results in Redis
    and drops the other machines' local copies: the next call anywhere
    computes again (before, the cleared result came back from Redis)."""
    a, b = machine(tmp_path, "a", url), machine(tmp_path, "b", url)
    calls = []

    def make(cache):
        @cache.memoize()
        def square(x):
            calls.append(x)
            return x * x + len(calls) * 1000
        return square

    fa, fb = make(a), make(b)
    first = [fa(i) for i in range(5)]
    assert calls == list(range(5))
    assert [fb(i) for i in range(5)] == first  # served by Redis, kept locally on b
    assert len(calls) == 5

    @b.memoize()
    def other(x):
        return -x

    assert other(1) == -1
    assert fa.cache_clear() == 5
    # a neighbour's results stay in Redis
    assert any(k.startswith(b"lmdbcache:__memo__") for k in server.client().keys())
    again = [fa(i) for i in range(5)]
    assert again != first and len(calls) == 10
    # b's local copies of the old results were dropped: b sees the new ones
    assert wait_for(lambda: [fb(i) for i in range(5)] == again, 5)
    assert len(calls) == 10 and other(1) == -1
