"""Fork and multiprocess safety, with real processes.

What a user relies on: one Cache object, created before any fork, keeps working
in the parent whatever its children do with their inherited copy (use it, close
it, drop it, exit, crash, get SIGKILLed), works in the children too, travels to
spawn/forkserver workers, survives writers and readers killed with SIGKILL, and
leaks no LMDB descriptor into exec'd programs.

Every wait has a timeout, so a hang fails the test instead of blocking it.
"""
import gc
import json
import multiprocessing as mp
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import weakref
from concurrent.futures import ProcessPoolExecutor

import pytest

from lmdbcache import Cache

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _workers  # noqa: E402  (functions that spawn/forkserver workers import)

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()"),
    # Python >= 3.12 warns when a multi-threaded process forks: that is the point here.
    pytest.mark.filterwarnings("ignore:.*multi-threaded.*:DeprecationWarning"),
]

# -P (3.11+): the child does not import lmdbcache from its working directory;
# on 3.10 the suite runs from a directory without the source package instead.
SAFE_PATH = ["-P"] if sys.version_info >= (3, 11) else []
TIMEOUT = 60  # seconds any single wait may take before the test fails
ROUNDS = 20  # repetitions of the seed's two broken cases
WORKERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_workers.py")


# ---- helpers ------------------------------------------------------------------------


class Child:
    """A process forked with fork_call(): wait() returns its exit code (-N for a
    signal), check() also asserts it succeeded and shows the child's traceback."""

    live = set()  # not waited for yet: killed at the end of a failed test

    def __init__(self, pid, err_fd):
        self.pid = pid
        self.err_fd = err_fd
        self.code = None
        Child.live.add(self)

    def wait(self, timeout=TIMEOUT):
        if self.code is not None:
            return self.code
        status = _waitpid(self.pid, timeout)
        Child.live.discard(self)
        self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def error_text(self):
        chunks = []
        while True:
            chunk = os.read(self.err_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(self.err_fd)
        self.err_fd = None
        return b"".join(chunks).decode(errors="replace")

    def check(self, expected=0, timeout=TIMEOUT):
        code = self.wait(timeout)
        err = self.error_text() if self.err_fd is not None else ""
        assert code == expected, f"child {self.pid} exited with {code}, expected {expected}\n{err}"


def _waitpid(pid, timeout):
    """waitpid with a deadline; a child still running at the deadline is killed
    and the test fails."""
    deadline = time.monotonic() + timeout
    pidfd = None
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pidfd = None
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"process {pid} did not finish within {timeout} s (killed)")
            if pidfd is not None:
                select.select([pidfd], [], [], min(left, 1.0))
            else:
                time.sleep(min(left, 0.005))
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _wait_until(predicate, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for progress"
        time.sleep(0.001)


def fork_call(fn, *args):
    """Fork; the child runs fn(*args) and leaves with os._exit: 0 when it
    returned, 1 (traceback sent to the parent) when it raised."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            fn(*args)
            code = 0
        except BaseException:
            try:
                os.write(w, traceback.format_exc().encode())
            except BaseException:
                pass
        finally:
            os._exit(code)
    os.close(w)
    return Child(pid, r)


@pytest.fixture(autouse=True)
def _reap_children():
    """A failed test must not leave forked children behind."""
    yield
    while Child.live:
        child = Child.live.pop()
        try:
            os.kill(child.pid, signal.SIGKILL)
            os.waitpid(child.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        if child.err_fd is not None:
            os.close(child.err_fd)


def mp_fork_call(fn, *args):
    """The same through multiprocessing's 'fork' start method: the child ends
    the way multiprocessing ends it (exit code 1 on an exception)."""
    p = mp.get_context("fork").Process(target=fn, args=args, daemon=True)
    p.start()
    return p


def join(p, expected=0, timeout=TIMEOUT):
    p.join(timeout)
    if p.exitcode is None:
        p.kill()
        p.join(10)
        pytest.fail(f"{p} did not finish within {timeout} s (killed)")
    assert p.exitcode == expected, f"{p} exited with {p.exitcode}, expected {expected}"


def run_python(code, *args, timeout=TIMEOUT):
    """Run `code` in a fresh interpreter; a hang fails the test."""
    try:
        out = subprocess.run([sys.executable, *SAFE_PATH, "-c", textwrap.dedent(code), *args],
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"subprocess hung for {timeout} s:\n{code}")
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


# A new process opens the cache, reads what the test wrote and writes a key: the
# proof that no lock is stuck and no reader slot is lost for good.
FRESH_PROCESS_CHECK = """
    import sys, lmdbcache
    path, key, value = sys.argv[1], sys.argv[2], sys.argv[3]
    c = lmdbcache.Cache(path, max_readers=int(sys.argv[4]), durability=sys.argv[5])
    assert c[key] == value, c.get(key)
    c["fresh-process"] = value
    assert c["fresh-process"] == value
    c.close()
    print("fresh process ok")
"""


def check_from_fresh_process(path, key, value, max_readers=1024, durability="process"):
    out = run_python(FRESH_PROCESS_CHECK, str(path), key, value, str(max_readers), durability)
    assert "fresh process ok" in out


class ReaderTable:
    """Lists the pids in LMDB's reader table, from another process (py-lmdb), so a
    child that ended the parent's read txn through its inherited copy -- freeing
    the parent's slot -- is seen even though lmdbcache would silently begin a new
    read txn in the parent on its next read."""

    def __init__(self, path):
        pytest.importorskip("lmdb")
        self.proc = subprocess.Popen(
            [sys.executable, *SAFE_PATH, WORKERS, "reader-table", str(path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def pids(self):
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT)
        assert ready, "reader-table helper did not answer"
        line = self.proc.stdout.readline()
        assert line, "reader-table helper died"
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def reader_table_of():
    tables = []

    def make(path):
        tables.append(ReaderTable(path))
        return tables[-1]

    yield make
    for t in tables:
        t.close()


def fd_targets_of_exec():
    """Code for an exec'd program: print the targets of all its descriptors."""
    return ("import json, os\n"
            "fds = {}\n"
            "for fd in os.listdir('/proc/self/fd'):\n"
            "    try:\n"
            "        fds[fd] = os.readlink('/proc/self/fd/' + fd)\n"
            "    except OSError:\n"
            "        pass\n"
            "print(json.dumps(fds))\n")


def lmdb_files(path):
    return {os.path.realpath(os.path.join(path, "data.mdb")),
            os.path.realpath(os.path.join(path, "lock.mdb"))}


def inside(path, targets):
    """The descriptor targets that are files in the cache directory `path`."""
    prefix = os.path.realpath(path) + os.sep
    return {t for t in targets if t.startswith(prefix)}


# ---- the seed's case 1: the child uses, then closes, the inherited cache ------------


def _child_uses_then_closes(cache, i):
    assert cache["parent"] == i
    cache[("child", i)] = i
    assert cache[("child", i)] == i
    cache.close()
    assert cache["parent"] == i  # reopens after close()
    cache.close()


@pytest.mark.parametrize("starter", ["os.fork", "mp-fork"])
def test_child_closes_inherited_cache(tmp_path, starter, reader_table_of):
    cache = Cache(tmp_path / "c")
    cache["parent"] = 0
    table = reader_table_of(cache.path)
    me = os.getpid()
    for i in range(ROUNDS):
        # The parent holds a reader slot when it forks: the seed's precondition.
        assert cache["parent"] == i
        if starter == "os.fork":
            fork_call(_child_uses_then_closes, cache, i).check()
        else:
            join(mp_fork_call(_child_uses_then_closes, cache, i))
        # The child did not end the parent's read txn: its slot is still there.
        assert me in table.pids()
        # The parent carries on, and sees what the child wrote.
        assert cache["parent"] == i
        assert cache[("child", i)] == i
        cache["parent"] = i + 1
        assert cache["parent"] == i + 1
        assert len(cache) == i + 2
    cache.close()


# ---- the seed's case 2: the child just drops the inherited cache --------------------

DROP_MODES = ["gc", "os._exit", "exception", "sigkill", "return"]


def _child_drops(holder, mode, i, touch):
    if touch:
        cache = holder["node"]["cache"]
        assert cache["parent"] == i
        cache[("child", i)] = i
        del cache
    if mode == "gc":
        ref = weakref.ref(holder["node"]["cache"])
        holder.clear()  # the node is in a reference cycle: only the collector frees it
        gc.collect()
        assert ref() is None, "the inherited Cache was not freed"
    elif mode == "os._exit":
        os._exit(0)
    elif mode == "exception":
        raise RuntimeError("raised on purpose in the child")
    elif mode == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    # "return": the child ends normally (multiprocessing: exit code 0)


def _cache_in_cycle(path):
    """A Cache reachable only through a reference cycle, held by a dict the child
    can empty: then garbage collection in the child frees the inherited Cache."""
    node = {"cache": Cache(path)}
    node["self"] = node
    return {"node": node}


@pytest.mark.parametrize("mode", DROP_MODES)
@pytest.mark.parametrize("starter", ["os.fork", "mp-fork"])
def test_child_drops_inherited_cache(tmp_path, starter, mode, reader_table_of, capfd):
    holder = _cache_in_cycle(tmp_path / "c")

    def cache():  # this frame keeps no reference to the Cache itself
        return holder["node"]["cache"]

    cache()["parent"] = 0
    table = reader_table_of(cache().path)
    me = os.getpid()
    expected = {"exception": 1, "sigkill": -signal.SIGKILL}.get(mode, 0)
    for i in range(ROUNDS):
        touch = i % 2 == 1  # every other child uses the cache before dropping it
        assert cache()["parent"] == i
        if starter == "os.fork":
            fork_call(_child_drops, holder, mode, i, touch).check(expected)
        else:
            join(mp_fork_call(_child_drops, holder, mode, i, touch), expected)
        assert me in table.pids()
        assert cache()["parent"] == i
        assert cache().get(("child", i)) == (i if touch else None)
        cache()["parent"] = i + 1
        assert cache()["parent"] == i + 1
    assert len(cache()) == 1 + ROUNDS // 2
    cache().close()
    capfd.readouterr()  # multiprocessing prints the children's expected tracebacks


def test_children_exit_through_the_interpreter(tmp_path):
    # sys.exit, falling off the end of the script, an uncaught exception: the
    # interpreter's own teardown frees the inherited Cache in the child.
    path = str(tmp_path / "c")
    try:
        out = subprocess.run([sys.executable, *SAFE_PATH, WORKERS, "fork-exits", path, str(ROUNDS)],
                             capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail("fork-exits scenario hung")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("OK:"), out.stdout + out.stderr
    cache = Cache(path)
    assert cache["parent"] == ROUNDS
    cache.close()


# ---- many children doing random things while the parent's threads work -------------


def _stress_child(cache, action, k):
    if action == "sigkill-untouched":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "close-untouched":
        cache.close()
        return
    if action == "gc-untouched":
        gc.collect()
        return
    assert cache[("base", k % 100)] == k % 100 * 3
    if action == "read":
        assert len(list(cache.keys())) >= 100
        return
    cache[("child", k)] = k
    assert cache[("child", k)] == k
    if action == "write-close":
        cache.close()
        assert cache[("child", k)] == k
    elif action == "write-gc":
        gc.collect()
    elif action == "write-exit":
        os._exit(0)
    elif action == "write-sigkill":
        os.kill(os.getpid(), signal.SIGKILL)


STRESS_ACTIONS = {  # action -> (expected exit code, writes ("child", k))
    "read": (0, False),
    "write": (0, True),
    "write-close": (0, True),
    "write-gc": (0, True),
    "write-exit": (0, True),
    "write-sigkill": (-signal.SIGKILL, True),
    "sigkill-untouched": (-signal.SIGKILL, False),
    "close-untouched": (0, False),
    "gc-untouched": (0, False),
}


def test_fork_stress_with_reading_and_writing_threads(tmp_path):
    cache = Cache(tmp_path / "c")
    for i in range(100):
        cache[("base", i)] = i * 3
    stop = threading.Event()
    errors = []
    counts = {"reads": 0, "writes": 0}

    def reader():
        rng = random.Random(1)
        try:
            while not stop.is_set():
                i = rng.randrange(100)
                assert cache[("base", i)] == i * 3
                counts["reads"] += 1
        except BaseException as e:  # noqa: BLE001
            errors.append(("reader", repr(e)))

    def writer():
        try:
            while not stop.is_set():
                n = counts["writes"]
                cache[("writer", n)] = "w" * (n % 5000)
                counts["writes"] = n + 1
        except BaseException as e:  # noqa: BLE001
            errors.append(("writer", repr(e)))

    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    rng = random.Random(20240611)
    children = []
    try:
        _wait_until(lambda: counts["reads"] and counts["writes"] or errors)
        for k in range(50):
            action = rng.choice(sorted(STRESS_ACTIONS))
            children.append((k, action, fork_call(_stress_child, cache, action, k)))
            time.sleep(rng.uniform(0, 0.01))
        for k, action, child in children:
            child.check(STRESS_ACTIONS[action][0])
    finally:
        stop.set()
        for t in threads:
            t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a parent thread hung"
    assert errors == []
    assert counts["reads"] > 0 and counts["writes"] > 0
    for k, action, _ in children:
        assert cache.get(("child", k)) == (k if STRESS_ACTIONS[action][1] else None), action
    for i in range(100):
        assert cache[("base", i)] == i * 3
    for n in range(counts["writes"]):
        assert cache[("writer", n)] == "w" * (n % 5000)
    cache.close()


# ---- pools and executors -------------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_pool_with_cache_as_argument(tmp_path, method):
    cache = Cache(tmp_path / "c")
    cache["parent"] = "from the parent"
    assert cache["parent"] == "from the parent"
    ctx = mp.get_context(method)
    pool = ctx.Pool(2, maxtasksperchild=2)
    try:
        results = pool.starmap_async(_workers.pool_task,
                                     [(cache, i) for i in range(8)], chunksize=1).get(TIMEOUT)
        pool.close()
    finally:
        pool.terminate()
    assert [seen for _, seen in results] == ["from the parent"] * 8
    assert len({pid for pid, _ in results}) >= 3  # workers were replaced (maxtasksperchild)
    for i in range(8):
        assert cache[("task", i)] == i * i
    cache["parent"] = "still writable"
    assert cache["parent"] == "still writable"
    cache.close()


def test_fork_pool_with_module_global_cache(tmp_path):
    cache = Cache(tmp_path / "c")
    cache["parent"] = "global"
    assert cache["parent"] == "global"
    _workers.GLOBAL_CACHE = cache
    try:
        pool = mp.get_context("fork").Pool(2, maxtasksperchild=2)
        try:
            results = pool.map_async(_workers.global_pool_task, range(8), chunksize=1).get(TIMEOUT)
            pool.close()
        finally:
            pool.terminate()
    finally:
        _workers.GLOBAL_CACHE = None
    assert [seen for _, seen in results] == ["global"] * 8
    for i in range(8):
        assert cache[("global", i)] == i * i
    cache["parent"] = "after"
    assert cache["parent"] == "after"
    cache.close()


def _kill_executor(ex):
    """After a failure: do not wait for workers that may hang."""
    processes = list((getattr(ex, "_processes", None) or {}).values())
    ex.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        if p.is_alive():
            p.kill()
            p.join(10)


@pytest.mark.parametrize("method", [None, "spawn", "forkserver"])
def test_process_pool_executor(tmp_path, method):
    cache = Cache(tmp_path / "c")
    cache["parent"] = 7
    ctx = None if method is None else mp.get_context(method)
    ex = ProcessPoolExecutor(max_workers=2, mp_context=ctx)
    try:
        futures = [ex.submit(_workers.pool_task, cache, i) for i in range(6)]
        results = [f.result(timeout=TIMEOUT) for f in futures]
        ex.shutdown(wait=True)
    finally:
        _kill_executor(ex)
    assert [seen for _, seen in results] == [7] * 6
    for i in range(6):
        assert cache[("task", i)] == i * i
    cache.close()


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_process_with_cache_as_argument(tmp_path, method):
    cache = Cache(tmp_path / "c")
    cache["parent"] = [1, 2, 3]
    assert cache["parent"] == [1, 2, 3]
    procs = [mp.get_context(method).Process(target=_workers.process_main,
                                            args=(cache, n, [1, 2, 3]), daemon=True)
             for n in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        join(p)
    for n, p in enumerate(procs):
        assert cache[("process", n)] == p.pid
    cache.close()


# ---- fork of a fork, fork from a thread, fork during I/O ----------------------------


def _grandchild(cache):
    assert cache["grandparent"] == 1
    assert cache["child"] == 2
    cache["grandchild"] = 3
    assert cache["grandchild"] == 3


def _child_forks_grandchild(cache, child_uses_first):
    if child_uses_first:
        assert cache["grandparent"] == 1  # the child's own environment, then inherited
    cache["child"] = 2
    fork_call(_grandchild, cache).check()
    assert cache["grandchild"] == 3
    cache.close()


@pytest.mark.parametrize("child_uses_first", [True, False])
def test_grandchild_writes_grandparent_reads(tmp_path, child_uses_first):
    cache = Cache(tmp_path / "c")
    cache["grandparent"] = 1
    assert cache["grandparent"] == 1
    fork_call(_child_forks_grandchild, cache, child_uses_first).check()
    assert cache["grandchild"] == 3
    assert cache["child"] == 2
    cache["grandparent"] = 4
    assert cache["grandparent"] == 4
    cache.close()


def _child_of_thread(cache, n):
    assert cache["main"] == "m"
    cache[("from-thread-child", n)] = n


def test_fork_from_a_non_main_thread(tmp_path):
    cache = Cache(tmp_path / "c")
    cache["main"] = "m"
    assert cache["main"] == "m"
    codes = []

    def in_thread():
        assert cache["main"] == "m"  # this thread used the cache before forking
        for n in range(5):
            codes.append(fork_call(_child_of_thread, cache, n).wait())

    t = threading.Thread(target=in_thread)
    t.start()
    t.join(TIMEOUT)
    assert not t.is_alive()
    assert codes == [0] * 5
    for n in range(5):
        assert cache[("from-thread-child", n)] == n
    cache["main"] = "still fine"
    assert cache["main"] == "still fine"
    cache.close()


BIG = 20 << 20


def _big_ok(value):
    return value is None or (len(value) == BIG and value == value[:1] * BIG)


def _child_during_big_write(cache, k):
    assert cache["small"] == "s"
    assert _big_ok(cache.get("big"))
    cache[("child", k)] = k
    assert cache[("child", k)] == k
    # a write of its own, > 1 page, under a key of its own: the children run
    # at the same time, and a shared key may hold a sibling's value by now
    cache[("child-big", k)] = bytes([k]) * (1 << 20)
    assert cache[("child-big", k)] == bytes([k]) * (1 << 20)


def test_fork_while_other_threads_write_and_read(tmp_path):
    cache = Cache(tmp_path / "c")
    cache["small"] = "s"
    stop = threading.Event()
    errors = []
    counts = {"writes": 0, "reads": 0, "in_write": False}

    def writer():  # 20 MB values: the write runs for a while with the GIL released
        try:
            n = 0
            while not stop.is_set():
                value = bytes([n % 256]) * BIG
                counts["in_write"] = True
                cache["big"] = value
                counts["in_write"] = False
                n += 1
                counts["writes"] = n
        except BaseException as e:  # noqa: BLE001
            errors.append(("writer", repr(e)))

    def reader():
        try:
            while not stop.is_set():
                assert _big_ok(cache.get("big"))
                assert cache["small"] == "s"
                counts["reads"] += 1
        except BaseException as e:  # noqa: BLE001
            errors.append(("reader", repr(e)))

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    during_write = 0
    try:
        _wait_until(lambda: counts["writes"] and counts["reads"] or errors)
        rng = random.Random(5)
        children = []
        for k in range(8):
            # This thread holds the GIL here, so a writer that is in_write is
            # inside the LMDB write (which runs with the GIL released).
            during_write += counts["in_write"]
            children.append(fork_call(_child_during_big_write, cache, k))
            time.sleep(rng.uniform(0, 0.03))
        for child in children:
            child.check()
    finally:
        stop.set()
        for t in threads:
            t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert counts["writes"] > 0 and counts["reads"] > 0
    assert during_write > 0  # the premise of the test: forks landed inside writes
    for k in range(8):
        assert cache[("child", k)] == k
    assert _big_ok(cache["big"])
    cache["small"] = "after"
    assert cache["small"] == "after"
    cache.close()


def test_iterator_continues_in_child_and_parent(tmp_path):
    cache = Cache(tmp_path / "c")
    for i in range(300):
        cache[i] = str(i)
    it = iter(cache.items())
    head = [next(it) for _ in range(10)]
    assert head == [(i, str(i)) for i in range(10)]

    def child():
        assert list(it) == [(i, str(i)) for i in range(10, 300)]

    fork_call(child).check()
    assert list(it) == [(i, str(i)) for i in range(10, 300)]
    cache.close()


def test_fork_that_bypasses_os_fork(tmp_path):
    # libc fork() called directly runs only the pthread_atfork handler, not the
    # os.register_at_fork hooks: the cache must notice the fork all the same.
    # (In a fresh interpreter: a raw fork is only safe in a single-threaded one.)
    out = run_python("""
        import ctypes, os, sys
        import lmdbcache
        cache = lmdbcache.Cache(sys.argv[1])
        cache["k"] = "v"
        assert cache["k"] == "v"
        before = lmdbcache._core._fork_generation()
        pid = ctypes.PyDLL(None).fork()  # PyDLL keeps the GIL across the call, like os.fork
        if pid == 0:
            code = 1
            try:
                assert lmdbcache._core._fork_generation() == before + 1
                assert cache["k"] == "v"
                cache["raw-fork-child"] = os.getpid()
                code = 0
            finally:
                os._exit(code)
        assert pid > 0
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert cache["raw-fork-child"] == pid
        assert cache["k"] == "v"
        cache["parent"] = "p"
        print("raw fork ok")
    """, str(tmp_path / "c"))
    assert "raw fork ok" in out


def _child_writes_beyond_the_map(cache, n):
    assert cache["small"] == 1
    cache[("big", n)] = bytes([n]) * ((4 << 20) * (n + 1))


@pytest.mark.parametrize("durability", ["process", "full"])
def test_children_grow_the_map_parent_follows(tmp_path, durability):
    # A child's write grows the map past the parent's size: the parent must adopt
    # the new size to read it, and keep writing.
    cache = Cache(tmp_path / "c", map_size=1 << 20, durability=durability)
    cache["small"] = 1
    assert cache["small"] == 1
    for n in range(3):
        fork_call(_child_writes_beyond_the_map, cache, n).check()
        assert cache[("big", n)] == bytes([n]) * ((4 << 20) * (n + 1))
        cache[("parent", n)] = bytes([n]) * (3 << 20)
        assert cache[("parent", n)] == bytes([n]) * (3 << 20)
    assert cache._env_info()["map_size"] >= 24 << 20
    cache.close()


# ---- SIGKILL --------------------------------------------------------------------------


def _value(wid, n):
    return f"{wid}:{n}:" + "x" * ((n * 7919 + wid * 104729) % 150_000)


def _writer_process(cache, wid, log_path):
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    n = 0
    while True:
        cache[("w", wid, n)] = _value(wid, n)
        os.write(log, b"%d\n" % n)  # acknowledged: the write has returned
        n += 1


def _acknowledged(log_path):
    try:
        with open(log_path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    return [int(line) for line in data.split(b"\n")[:-1]]  # complete lines only


@pytest.mark.parametrize("durability", ["process", "full"])
def test_sigkill_writers_at_random_moments(tmp_path, durability):
    cache = Cache(tmp_path / "c", durability=durability)
    cache["k"] = "v"
    rng = random.Random(7)
    writers = []  # (wid, log path)
    for rnd in range(3):
        batch = []
        for j in range(3):
            wid = rnd * 10 + j
            log_path = str(tmp_path / f"writer-{wid}.log")
            batch.append((wid, log_path, fork_call(_writer_process, cache, wid, log_path)))
        writers += [(wid, log_path) for wid, log_path, _ in batch]
        # Every writer must make progress: a writer lock left behind by a writer
        # killed in an earlier round would stop them all.
        deadline = time.monotonic() + TIMEOUT
        for wid, log_path, child in batch:
            while not _acknowledged(log_path):
                assert time.monotonic() < deadline, f"writer {wid} made no progress"
                time.sleep(0.002)
        for wid, log_path, child in batch:
            time.sleep(rng.uniform(0, 0.25))
            os.kill(child.pid, signal.SIGKILL)
        for wid, log_path, child in batch:
            child.check(-signal.SIGKILL)
        # A new process can write promptly after the kills.
        check_from_fresh_process(cache.path, "k", "v", durability=durability)
    total = 0
    for wid, log_path in writers:
        acked = _acknowledged(log_path)
        assert acked == list(range(len(acked)))
        total += len(acked)
        for n in acked:
            assert cache[("w", wid, n)] == _value(wid, n), (wid, n)
        # The write in flight when it was killed is all there or not at all.
        nxt = cache.get(("w", wid, len(acked)))
        assert nxt is None or nxt == _value(wid, len(acked))
        assert ("w", wid, len(acked) + 1) not in cache
    assert total >= 9
    cache["after"] = "written"
    assert cache["after"] == "written"
    cache.close()


def _reader_until_killed(cache, ready_fd, hold_fd, hold_w):
    os.close(hold_w)  # so that the read below ends if the test process dies
    try:
        assert cache["k"] == "v"  # takes a reader slot, kept while the process lives
        os.write(ready_fd, b"+")
    except BaseException:
        os.write(ready_fd, b"-")
        raise
    os.read(hold_fd, 1)  # until SIGKILL (or EOF if the test process dies)


def _start_readers(cache, count):
    """Fork `count` readers that each hold a reader slot; returns them and how many
    got a slot."""
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    kids = [fork_call(_reader_until_killed, cache, ready_w, hold_r, hold_w)
            for _ in range(count)]
    os.close(ready_w)
    os.close(hold_r)
    got = b""
    deadline = time.monotonic() + TIMEOUT
    while len(got) < count:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([ready_r], [], [], max(left, 0))
        if not ready:
            break
        chunk = os.read(ready_r, count)
        if not chunk:
            break
        got += chunk
    os.close(ready_r)
    return kids, hold_w, got.count(b"+"), got.count(b"-")


def _kill_all(kids, hold_w):
    for kid in kids:
        try:
            os.kill(kid.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    codes = [kid.wait() for kid in kids]
    os.close(hold_w)
    return codes


def test_sigkilled_readers_exceeding_the_reader_table(tmp_path):
    path = str(tmp_path / "c")
    cache = Cache(path, max_readers=126)  # the creator of lock.mdb sizes the table
    cache["k"] = "v"
    assert cache["k"] == "v"
    slots = cache._env_info()["max_readers"]
    assert slots < 150
    killed = 0
    for _ in range(3):
        kids, hold_w, ok, failed = _start_readers(cache, 100)
        codes = _kill_all(kids, hold_w)
        assert (ok, failed) == (100, 0)
        assert codes == [-signal.SIGKILL] * 100
        killed += 100
    assert killed > slots  # only possible if dead readers' slots were reclaimed
    assert cache["k"] == "v"
    cache["after"] = "a"
    assert cache["after"] == "a"
    check_from_fresh_process(path, "k", "v", max_readers=126)
    cache.close()


def test_reader_table_full_of_dead_readers(tmp_path):
    # A process opened the cache before the table filled with readers that were
    # then killed: its first read meets MDB_READERS_FULL and must reclaim the slots.
    path = str(tmp_path / "c")
    cache = Cache(path, max_readers=126)
    cache["k"] = "v"
    slots = cache._env_info()["max_readers"]
    late = subprocess.Popen(
        [sys.executable, *SAFE_PATH, "-c", textwrap.dedent("""
            import sys, lmdbcache
            c = lmdbcache.Cache(sys.argv[1], max_readers=126)
            print("opened", flush=True)
            sys.stdin.readline()
            assert c["k"] == "v"
            c["late"] = "l"
            print("late reader ok", c["late"], flush=True)
        """), path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert late.stdout.readline() == "opened\n"
        kids, hold_w, ok, failed = _start_readers(cache, slots + 2)
        codes = _kill_all(kids, hold_w)
        # The table was full: nearly every slot was taken by a reader now dead (a
        # few are this test's own processes), and the last readers were refused.
        assert failed >= 2 and ok >= slots - 4, (ok, failed, slots)
        assert codes.count(-signal.SIGKILL) >= ok
        out, _ = late.communicate("go\n", timeout=TIMEOUT)
    finally:
        if late.poll() is None:
            late.kill()
            late.wait()
    assert late.returncode == 0 and "late reader ok l" in out, out
    assert cache["k"] == "v" and cache["late"] == "l"
    cache["after"] = "a"
    check_from_fresh_process(path, "k", "v", max_readers=126)
    cache.close()


# ---- exec inherits no LMDB descriptor ---------------------------------------------------


def _open_for_exec(path, options):
    if options.get("readonly"):
        writer = Cache(path)
        writer["k"] = 1
        writer.close()  # the last Cache on the path: the environment is closed
        cache = Cache(path, **options)
        assert cache["k"] == 1
    else:
        cache = Cache(path, **options)
        cache["k"] = 1
        assert cache["k"] == 1
    return cache


def _exec_listing(child_setup=None):
    """fork + execv a Python that prints its descriptors; returns their targets."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            if child_setup is not None:
                child_setup()
            os.dup2(w, 1)
            os.execv(sys.executable, [sys.executable, *SAFE_PATH, "-c", fd_targets_of_exec()])
        finally:
            os._exit(127)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    assert os.waitstatus_to_exitcode(_waitpid(pid, TIMEOUT)) == 0
    return set(json.loads(out).values())


def _subprocess_listing():
    out = subprocess.run([sys.executable, *SAFE_PATH, "-c", fd_targets_of_exec()],
                         close_fds=False, capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout).values())


@pytest.mark.parametrize("options", [{}, {"durability": "full"}, {"readonly": True}],
                         ids=["process", "full", "readonly"])
def test_exec_inherits_no_lmdb_descriptor(tmp_path, options):
    path = str(tmp_path / "c")
    cache = _open_for_exec(path, options)
    files = lmdb_files(path)
    mine = {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")}
    assert files <= {os.path.realpath(p) for p in mine if p.startswith("/")}, mine

    def child_uses_cache():
        assert cache["k"] == 1  # the child's own environment, opened before exec

    for how, listing in [("subprocess close_fds=False", _subprocess_listing),
                         ("fork+execv", _exec_listing),
                         ("fork, use, execv", lambda: _exec_listing(child_uses_cache))]:
        leaked = inside(path, listing())  # data.mdb, lock.mdb or anything else in there
        assert not leaked, f"{how}: the exec'd program inherited {sorted(leaked)}"
    cache.close()


def test_exec_listing_detects_an_inherited_descriptor(tmp_path):
    # The control for the test above: an inheritable descriptor is seen.
    path = str(tmp_path / "c")
    Cache(path)["k"] = 1
    fd = os.open(os.path.join(path, "data.mdb"), os.O_RDONLY)
    try:
        os.set_inheritable(fd, True)
        data = os.path.realpath(os.path.join(path, "data.mdb"))
        assert data in _subprocess_listing()
        assert data in _exec_listing()
    finally:
        os.close(fd)


# ---- threads ----------------------------------------------------------------------------


def test_threads_read_and_write_one_cache(tmp_path):
    path = tmp_path / "c"
    cache = Cache(path)
    for i in range(200):
        cache[("base", i)] = i
    stop = threading.Event()
    errors = []
    written = {}

    def work(t):
        rng = random.Random(t)
        mine = {}
        other = Cache(path) if t % 2 else cache  # a second Cache on the same path shares the env
        try:
            n = 0
            while not stop.is_set():
                size = rng.choice([1, 100, 5000, 200_000]) if n % 20 == 0 else rng.randrange(200)
                value = (t, n, "v" * size)
                other[("t", t, n)] = value
                mine[n] = value
                assert other[("t", t, n)] == value
                i = rng.randrange(200)
                assert cache[("base", i)] == i
                if n % 10 == 9:
                    old = rng.choice(list(mine))
                    assert other.pop(("t", t, old)) == mine.pop(old)
                if t % 2 and n % 50 == 49:
                    other.close()  # the next use reopens it
                n += 1
        except BaseException:  # noqa: BLE001
            errors.append((t, traceback.format_exc()))
        written[t] = mine

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads)
    assert errors == [], errors[0][1]
    assert sum(len(m) for m in written.values()) > 0
    for t, mine in written.items():
        for n, value in mine.items():
            assert cache[("t", t, n)] == value
    assert len(cache) == 200 + sum(len(m) for m in written.values())
    cache.close()
