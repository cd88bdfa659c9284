"""Never crash the interpreter (issue 8): adversarial scenarios, each in its own
interpreter.

Every scenario runs in a child process (``sys.executable -c CODE``) that
inherits this process's environment, so an ASan/UBSan run (LD_PRELOAD, ...)
covers the child too.  A segfault or abort in the child fails the test naming
the signal; a hang fails it as a timeout (the child dumps its threads' stacks
first, through faulthandler); a wrong exception fails it with the child's
output.  Each scenario is bounded to a few seconds.

Intended behaviour these tests pin down (the C core must satisfy it):

* a Store call keeps its environment alive from its first line to its last:
  ``close()`` from another thread or from user code run by the call (key
  ``__hash__``/``__eq__``/``__reduce__``, value ``__reduce__``/``__setstate__``)
  never frees what the call still uses, and the cache reopens on next use;
* one process never holds two LMDB environments on one path, and after the
  last ``close()`` none is left open (no descriptor on data.mdb/lock.mdb);
* batch calls work on the keys as they were when called, whatever user code
  does to the caller's list meanwhile;
* ``transaction()`` never leaks its write txn / write lock, even when a
  KeyboardInterrupt arrives at any bytecode boundary;
* a key that cannot be decoded -- a garbage pickle, or a pickle naming a class
  its module no longer has -- raises ``CorruptError`` from ``items()`` and
  ``keys()`` (``values()`` may skip decoding keys: it yields every value, or
  raises ``CorruptError`` for that one entry), and an iterator the caller keeps
  using after catching it resumes right after that entry;
* LMDB's 511-byte key limit and the namespace limit (200 UTF-8 bytes) hold in
  C for every index the C core keeps, whatever the key and namespace;
* ``update()`` raises like ``dict.update`` (CPython's test.mapping_tests);
* a corrupt value record raises ``CorruptError`` from every read (get,
  ``[]``, ``in``, get_many, incr, touch, pop) and is overwritten or removed by
  set/add/delete.
"""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

# Prepended to every child's code.
PRELUDE = r'''
import faulthandler, os, pickle, random, sys, threading, time
faulthandler.enable()
import lmdbcache
from lmdbcache import Cache


def env_fds(path):
    """This process's descriptors open on path's data.mdb or lock.mdb."""
    targets = {os.path.realpath(os.path.join(path, n)) for n in ("data.mdb", "lock.mdb")}
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.path.realpath(os.readlink("/proc/self/fd/" + fd))
        except OSError:
            continue
        if target in targets:
            found.append((int(fd), os.path.basename(target)))
    return sorted(found)


def many_switches():
    """Hand the GIL between threads as often as possible (races show up)."""
    sys.setswitchinterval(1e-6)


def step(*what):
    print("step:", *what, flush=True)


FAILURES = []
JUNK = []


def churn():
    """Reuse freed memory: a use-after-free then reads 0xff bytes, which
    crashes a release build too instead of passing silently."""
    for size in range(8, 4200, 8):
        JUNK.append(b"\xff" * size)


def check(cond, *what):
    if not cond:
        FAILURES.append(" ".join(str(w) for w in what))
        print("FAILED:", *what, flush=True)


def finish():
    if FAILURES:
        print("%d check(s) failed:" % len(FAILURES), *FAILURES, sep="\n  ", flush=True)
        sys.stdout.flush()
        os._exit(1)
    print("CHILD-OK", flush=True)
    sys.stdout.flush()
    os._exit(0)  # no interpreter teardown: a thread stuck in C must not hang the exit
'''


def _tail(text, n=4000):
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return text if len(text) <= n else "..." + text[-n:]


def run_child(code, *args, cwd, timeout=30):
    """Run PRELUDE + code in a fresh interpreter; fail the test on a signal,
    a hang, a non-zero exit, or a missing CHILD-OK line.  Returns stdout."""
    full = PRELUDE + textwrap.dedent(code)
    if timeout > 6:
        # dump every thread's stack a little before the hard timeout
        full = full.replace(
            "faulthandler.enable()\n",
            f"faulthandler.enable()\nfaulthandler.dump_traceback_later({timeout - 3}, exit=True)\n",
            1,
        )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", full, *[str(a) for a in args]],
            capture_output=True, text=True, timeout=timeout, cwd=str(cwd), env=dict(os.environ),
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"child HUNG: still running after {timeout}s (killed)\n"
            f"--- stdout ---\n{_tail(exc.stdout)}\n--- stderr ---\n{_tail(exc.stderr)}",
            pytrace=False,
        )
    out, err = proc.stdout, proc.stderr
    report = f"--- stdout ---\n{_tail(out)}\n--- stderr ---\n{_tail(err)}"
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        pytest.fail(f"child CRASHED: killed by {name}\n{report}", pytrace=False)
    if "ERROR: AddressSanitizer" in err or "runtime error:" in err:
        pytest.fail(f"child CRASHED: sanitizer report (exit status {proc.returncode})\n{report}",
                    pytrace=False)
    if "Timeout (0:" in err:
        pytest.fail(f"child HUNG: no progress for {timeout - 3}s (faulthandler dump)\n{report}",
                    pytrace=False)
    if proc.returncode != 0:
        pytest.fail(f"child exited with status {proc.returncode}\n{report}", pytrace=False)
    if "CHILD-OK" not in out:
        pytest.fail(f"child exited 0 without finishing\n{report}", pytrace=False)
    return out


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "cache")


# ---- 1. threads: open/close/reopen one path, close() racing every operation ------


@pytest.mark.parametrize("durability", ["process", "full"])
def test_threads_open_and_close_one_path(tmp_path, path, durability):
    run_child(r'''
        path, durability = sys.argv[1], sys.argv[2]
        many_switches()
        N, DURATION = 8, 2.5
        errors, counts = [], [0] * N
        barrier = threading.Barrier(N)
        stop = [0.0]

        def worker(i):
            try:
                barrier.wait()
                while time.monotonic() < stop[0]:
                    with Cache(path, durability=durability) as c:
                        c.get("k")
                        c["k"] = (i, counts[i])
                        c.get("k")
                    counts[i] += 1
            except BaseException as exc:
                errors.append("thread %d: %r" % (i, exc))

        stop[0] = time.monotonic() + DURATION
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(N)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        step("opened and closed", sum(counts), "times")
        check(not errors, "errors in threads:", errors[:5])
        check(min(counts) > 0, "a thread never completed a round", counts)
        with Cache(path, durability=durability) as c:
            check(isinstance(c["k"], tuple), "last value", c.get("k"))
        check(env_fds(path) == [], "LMDB files still open after the last close:", env_fds(path))
        finish()
    ''', path, durability, cwd=tmp_path, timeout=25)


def test_close_races_every_operation(tmp_path, path):
    run_child(r'''
        path = sys.argv[1]
        many_switches()
        c = Cache(path)
        c["n"] = 0
        for i in range(40):
            c["k%d" % i] = i
        DURATION = 2.5
        errors = []
        done = [0]

        def rk(rnd):
            return "k%d" % rnd.randrange(40)

        def getitem(rnd):
            try:
                return c[rk(rnd)]
            except KeyError:  # deleted by another thread: fine
                return None

        OPS = [
            ("get", lambda r: c.get(rk(r))),
            ("getitem", getitem),
            ("set", lambda r: c.set(rk(r), r.random())),
            ("setitem", lambda r: c.__setitem__(rk(r), [r.random()])),
            ("add", lambda r: c.add(rk(r), 1)),
            ("incr", lambda r: c.incr("n")),
            ("delete", lambda r: c.delete(rk(r))),
            ("pop", lambda r: c.pop(rk(r), None)),
            ("contains", lambda r: rk(r) in c),
            ("touch", lambda r: c.touch(rk(r), ttl=100)),
            ("items", lambda r: list(c.items())),
            ("keys", lambda r: list(c)),
            ("values", lambda r: list(c.values())),
            ("len", lambda r: len(c)),
            ("get_many", lambda r: c.get_many([rk(r) for _ in range(5)])),
            ("set_many", lambda r: c.set_many({rk(r): i for i in range(5)})),
            ("delete_many", lambda r: c.delete_many([rk(r) for _ in range(3)])),
        ]

        def operate(seed, stop):
            rnd = random.Random(seed)
            name = "?"
            try:
                while time.monotonic() < stop:
                    name, fn = OPS[rnd.randrange(len(OPS))]
                    fn(rnd)
                    done[0] += 1
            except BaseException as exc:
                errors.append("%s: %r" % (name, exc))

        def closer(stop):
            while time.monotonic() < stop:
                c.close()
                time.sleep(0.0002)

        stop = time.monotonic() + DURATION
        threads = [threading.Thread(target=operate, args=(i, stop)) for i in range(6)]
        threads += [threading.Thread(target=closer, args=(stop,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        step("operations done:", done[0])
        check(not errors, "operations raised:", errors[:5])
        c.close()
        check(env_fds(path) == [], "LMDB files still open after close():", env_fds(path))
        c["final"] = 1  # reopens
        check(c["final"] == 1, "cache unusable after the race")
        c.close()
        check(env_fds(path) == [], "LMDB files still open after the final close():",
              env_fds(path))
        finish()
    ''', path, cwd=tmp_path, timeout=25)


def test_close_then_eight_threads_reopen_at_once(tmp_path, path):
    run_child(r'''
        path = sys.argv[1]
        many_switches()
        c = Cache(path)
        c["k"] = "v"
        one_env = len(env_fds(path))  # descriptors of one open environment
        check(one_env > 0, "no descriptor on data.mdb/lock.mdb while open")
        for rnd in range(60):
            c.close()
            barrier = threading.Barrier(8)
            results, errors = [], []

            def get():
                try:
                    barrier.wait()
                    results.append(c.get("k"))
                except BaseException as exc:
                    errors.append(repr(exc))

            threads = [threading.Thread(target=get) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            check(not errors, "round", rnd, "errors", errors[:3])
            check(results == ["v"] * 8, "round", rnd, "results", results)
            n = len(env_fds(path))
            check(n == one_env, "round", rnd, ": %d descriptors on the LMDB files, one "
                  "environment has %d (several environments opened)" % (n, one_env))
            if FAILURES:
                break
        c.close()
        check(env_fds(path) == [], "LMDB files still open after the final close():",
              env_fds(path))
        finish()
    ''', path, cwd=tmp_path, timeout=25)


# ---- 2. user code closing the cache in the middle of a call ---------------------

USER_CLOSES = r'''
path, where, policy = sys.argv[1], sys.argv[2], sys.argv[3]
kw = {} if policy == "default" else dict(size_limit=1 << 22,
                                         eviction_policy="least-recently-used")
CACHE = Cache(path, **kw)
ARMED = [False]


def maybe_close(site):
    if ARMED[0] and where == site:
        CACHE.close()
        churn()


class Key:
    def __init__(self, name):
        self.name = name

    def __hash__(self):
        maybe_close("key-hash")
        return hash(self.name)

    def __eq__(self, other):
        maybe_close("key-eq")
        return isinstance(other, Key) and other.name == self.name

    def __reduce__(self):
        maybe_close("key-reduce")
        return (Key, (self.name,))


class Value:
    def __init__(self, payload=None):
        self.payload = payload

    def __reduce__(self):
        maybe_close("value-reduce")
        return (Value, (), {"payload": self.payload})

    def __setstate__(self, state):
        maybe_close("value-setstate")
        if ARMED[0] and where == "value-setstate-raises":
            # the first value unpickled closes the cache, the next ones fail:
            # the error path after the close must not use the freed Env
            CALLS[0] += 1
            if CALLS[0] == 1:
                CACHE.close()
                churn()
            else:
                raise pickle.UnpicklingError("refused by __setstate__")
        self.payload = state["payload"]

    def __eq__(self, other):
        return isinstance(other, Value) and other.payload == self.payload


CALLS = [0]


def seed():
    CACHE.set_many([(Key(n), Value(n)) for n in ("a", "b", "c", "d", "e")])
    CACHE[Key("n")] = 1
    for i in range(3):
        CACHE["plain%d" % i] = Value(i)


def transaction():
    with CACHE.transaction():
        CACHE[Key("t")] = Value("t")
        CACHE.get(Key("a"))


OPS = [
    ("set", lambda: CACHE.set(Key("a"), Value(1))),
    ("setitem", lambda: CACHE.__setitem__(Key("b"), Value(2))),
    ("add", lambda: CACHE.add(Key("new"), Value(3))),
    ("get", lambda: CACHE.get(Key("a"))),
    ("get-plain-key", lambda: CACHE.get("plain1")),
    ("getitem", lambda: CACHE[Key("b")]),
    ("contains", lambda: Key("a") in CACHE),
    ("get_many", lambda: CACHE.get_many([Key("a"), Key("b"), Key("a"), Key("zz"), "plain0"])),
    ("set_many", lambda: CACHE.set_many([(Key("d"), Value(4)), (Key("e"), Value(5)),
                                         (Key("f"), Value(6))])),
    ("update", lambda: CACHE.update({Key("g"): Value(7), Key("h"): Value(8)})),
    ("incr", lambda: CACHE.incr(Key("n"))),
    ("touch", lambda: CACHE.touch(Key("a"), ttl=100)),
    ("items", lambda: list(CACHE.items())),
    ("keys", lambda: list(CACHE.keys())),
    ("values", lambda: list(CACHE.values())),
    ("pop", lambda: CACHE.pop(Key("b"), None)),
    ("pop-plain-key", lambda: CACHE.pop("plain2", None)),
    ("delete", lambda: CACHE.delete(Key("c"))),
    ("delitem", lambda: CACHE.__delitem__(Key("d"))),
    ("delete_many", lambda: CACHE.delete_many([Key("d"), Key("e"), Key("a")])),
    ("transaction", transaction),
]

for name, fn in OPS:
    ARMED[0] = False
    seed()
    step(where, policy, name)
    CALLS[0] = 0
    ARMED[0] = True
    try:
        fn()
    except Exception as exc:  # a normal exception is allowed; a crash is not
        step("  raised", repr(exc)[:200])
    ARMED[0] = False
    JUNK.clear()
    check(not CACHE._in_txn(), name, ": a transaction is still open afterwards")
    wrote = []
    t = threading.Thread(target=lambda: wrote.append(CACHE.set("other-thread", 1)),
                         daemon=True)
    t.start()
    t.join(5)
    check(wrote == [None], name, ": another thread cannot write within 5 s afterwards "
          "(a leaked write txn holds the write lock)")
    if not wrote:
        break
    try:
        CACHE["after"] = name
        check(CACHE["after"] == name, name, ": cache unusable afterwards")
        check(CACHE.get(Key("e")) == Value("e") or name in ("delete_many", "set_many"),
              name, ": cache unusable afterwards", CACHE.get(Key("e")))
        CACHE.clear()
    except Exception as exc:
        check(False, name, ": cache unusable afterwards:", repr(exc))
CACHE.close()
check(env_fds(path) == [], "LMDB files still open after close():", env_fds(path))
finish()
'''


@pytest.mark.parametrize("policy", ["default", "lru"])
@pytest.mark.parametrize(
    "where",
    ["key-hash", "key-eq", "key-reduce", "value-reduce", "value-setstate",
     "value-setstate-raises"],
)
def test_user_code_closes_the_cache_mid_call(tmp_path, path, where, policy):
    run_child(USER_CLOSES, path, where, policy, cwd=tmp_path, timeout=20)


# ---- 3. user code mutating the list given to get_many / delete_many -------------

LIST_MUTATION = r'''
path, op, how = sys.argv[1], sys.argv[2], sys.argv[3]
c = Cache(path)
LST = []
ARMED = [False]
NAMES = ["k%02d" % i for i in range(20)]
EXTRA = ["extra%04d" % i for i in range(1000)]


def mutate():
    if not ARMED[0]:
        return
    ARMED[0] = False  # once
    if how.endswith("clear"):
        LST.clear()
    else:  # grow: the list's storage moves
        LST.extend(Key(n) for n in EXTRA)
    churn()


class Key:
    def __init__(self, name):
        self.name = name

    def __hash__(self):
        if how.startswith("hash-"):
            mutate()
        return hash(self.name)

    def __eq__(self, other):
        return isinstance(other, Key) and other.name == self.name

    def __reduce__(self):
        if how.startswith("reduce-"):
            mutate()
        return (Key, (self.name,))


class Value:
    def __init__(self, payload=None):
        self.payload = payload

    def __reduce__(self):
        return (Value, (), {"payload": self.payload})

    def __setstate__(self, state):
        if how.startswith("setstate-"):
            mutate()
        self.payload = state["payload"]


c.set_many([(Key(n), Value(n)) for n in NAMES + EXTRA])
for rnd in range(20):
    # the list holds the only references to its keys
    LST[:] = [Key(n) for n in NAMES]
    ARMED[0] = True
    step(op, how, "round", rnd)
    if op == "get_many":
        res = c.get_many(LST)
        got = {k.name: v.payload for k, v in res.items()}
        check(got == {n: n for n in NAMES}, "get_many returned", sorted(got)[:5], "...",
              len(got), "entries, not the", len(NAMES), "keys it was called with")
    else:
        n = c.delete_many(LST)
        check(n == len(NAMES), "delete_many returned", n, "for", len(NAMES), "keys")
        left = [k for k in NAMES if Key(k) in c]
        check(not left, "delete_many left", left[:5])
        missing = [k for k in EXTRA if Key(k) not in c]
        check(not missing, "delete_many removed keys appended during the call", missing[:5])
        c.set_many([(Key(n), Value(n)) for n in NAMES])
    JUNK.clear()
    if FAILURES:
        break
finish()
'''


@pytest.mark.parametrize(
    "op,how",
    [
        ("get_many", "reduce-clear"),
        ("get_many", "reduce-grow"),
        ("get_many", "hash-clear"),
        ("get_many", "hash-grow"),
        ("get_many", "setstate-clear"),
        ("get_many", "setstate-grow"),
        ("delete_many", "reduce-clear"),
        ("delete_many", "reduce-grow"),
        ("delete_many", "hash-clear"),
        ("delete_many", "hash-grow"),
    ],
)
def test_key_list_mutated_during_batch_call(tmp_path, path, op, how):
    run_child(LIST_MUTATION, path, op, how, cwd=tmp_path, timeout=20)


# ---- 4. KeyboardInterrupt around transaction() ------------------------------------


def test_keyboard_interrupt_never_leaks_a_transaction(tmp_path, path):
    run_child(r'''
        import signal
        path = sys.argv[1]
        c = Cache(path)
        ARMED = [False]
        stats = {"interrupted": 0, "completed": 0, "i": 0}

        def on_alarm(signum, frame):
            if ARMED[0]:
                ARMED[0] = False
                raise KeyboardInterrupt

        signal.signal(signal.SIGALRM, on_alarm)
        rnd = random.Random(8)
        deadline = time.monotonic() + 3.0

        def loop():
            while stats["i"] < 6000 and time.monotonic() < deadline:
                stats["i"] += 1
                try:
                    signal.setitimer(signal.ITIMER_REAL, rnd.uniform(1e-6, 6e-5))
                    ARMED[0] = True
                    with c.transaction():
                        # a body long enough for the timer to land in it, in
                        # __enter__ or in __exit__ often
                        for j in range(8):
                            c[("a", j)] = stats["i"]
                    ARMED[0] = False
                    stats["completed"] += 1
                except KeyboardInterrupt:
                    ARMED[0] = False
                    stats["interrupted"] += 1
                except Exception as exc:
                    ARMED[0] = False
                    check(False, "iteration", stats["i"], "raised", repr(exc),
                          "(after", stats["interrupted"], "interrupts)")
                    return

        while True:
            try:
                loop()
                break
            except KeyboardInterrupt:  # landed outside the inner try
                ARMED[0] = False
        ARMED[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        step("iterations", stats)
        check(FAILURES or stats["interrupted"] > 50, "too few interrupts to mean anything", stats)
        check(not c._in_txn(), "the main thread still holds a transaction after the loop")

        wrote = []

        def writer():
            c["b"] = 2
            wrote.append(True)

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        t.join(5)
        check(wrote == [True], "another thread could not write within 5 s "
              "(a leaked write txn holds the write lock)")
        if wrote:
            check(c["b"] == 2, "value written by the other thread")
        finish()
    ''', path, cwd=tmp_path, timeout=25)


# ---- 5. undecodable keys in iteration -------------------------------------------

KEYMOD = '''
class G:
    """A key class that stays importable."""
    def __init__(self, s):
        self.s = s
    def __eq__(self, other):
        return type(other) is G and other.s == self.s
    def __hash__(self):
        return hash(self.s)
    def __repr__(self):
        return "G(%d)" % len(self.s)
'''

KEYMOD_BAD = '''
class B:
    """A key class that the reader's version of this module no longer has."""
    def __init__(self, s):
        self.s = s
    def __eq__(self, other):
        return type(other) is B and other.s == self.s
    def __hash__(self):
        return hash(self.s)
'''

N_GOOD = 150  # more than one iteration chunk of the C iterator


@pytest.mark.parametrize("variant", ["class-removed", "garbage-pickle"])
def test_undecodable_key_in_iteration(tmp_path, path, variant):
    with open(tmp_path / "keymod.py", "w") as f:
        f.write(KEYMOD + KEYMOD_BAD)
    run_child(r'''
        import struct
        import keymod
        path, variant, n_good = sys.argv[1], sys.argv[2], int(sys.argv[3])
        with Cache(path) as c:
            for i in range(n_good):
                c[keymod.G("x" * i)] = i
            if variant == "class-removed":
                c[keymod.B("x" * 70)] = -1
        if variant == "garbage-pickle":
            import lmdb
            good = pickle.dumps(keymod.G("x" * 70), protocol=5)
            bad = b"p" + good[:-4] + b"\xff\xfe\xfd\xfc"  # sorts beside G("x"*70)
            env = lmdb.open(path, max_dbs=64)
            with env.begin(write=True) as txn:
                txn.put(bad, b"\x01i\x00" + struct.pack("=q", -1))
            env.close()
        finish()
    ''', path, variant, N_GOOD, cwd=tmp_path, timeout=20)
    with open(tmp_path / "keymod.py", "w") as f:
        f.write(KEYMOD)  # class B is gone
    run_child(r'''
        import keymod
        path, variant, n_good = sys.argv[1], sys.argv[2], int(sys.argv[3])
        encs = sorted((b"p" + pickle.dumps(keymod.G("x" * i), protocol=5), i)
                      for i in range(n_good))
        order = [i for _, i in encs]
        with Cache(path) as c:
            check(len(c) == n_good + 1, "entries:", len(c))
            for mode in ("items", "keys", "values"):
                step("list(cache.%s())" % mode)
                try:
                    list(getattr(c, mode)())
                except lmdbcache.CorruptError:
                    raised = "CorruptError"
                except BaseException as exc:
                    raised = repr(exc)
                else:
                    raised = None
                if mode != "values":
                    check(raised == "CorruptError", "list(%s()) raised %s, not CorruptError"
                          % (mode, raised))
                else:  # values() need not decode keys: no error, or CorruptError
                    check(raised in (None, "CorruptError"), "list(values()) raised", raised)

                step("catch and continue:", mode)
                it = iter(getattr(c, mode)())
                got, errors = [], []
                while len(errors) < 5:
                    try:
                        x = next(it)
                    except StopIteration:
                        break
                    except lmdbcache.CorruptError as exc:
                        errors.append("CorruptError")
                        continue
                    except BaseException as exc:
                        errors.append(repr(exc))
                        break
                    got.append(x)
                if mode == "items":
                    want = [(keymod.G("x" * i), i) for i in order]
                elif mode == "keys":
                    want = [keymod.G("x" * i) for i in order]
                else:
                    want = order
                    if errors == [] and got.count(-1) == 1:
                        got.remove(-1)  # the value of the entry with the bad key
                check(errors == ["CorruptError"] or (mode == "values" and errors == []),
                      mode, ": errors while iterating:", errors)
                check(got == want, mode, ": after catching CorruptError the iterator gave",
                      len(got), "of the", len(want), "good entries",
                      "(skipped: %s)" % [x for x in want if x not in got][:5])
            # the good entries are readable one by one
            check(all(c[keymod.G("x" * i)] == i for i in range(n_good)), "lookups")
        finish()
    ''', path, variant, N_GOOD, cwd=tmp_path, timeout=20)


# ---- 6. near-limit keys with LRU and long namespaces ----------------------------


def test_near_limit_keys_with_lru_and_long_namespaces(tmp_path, path):
    run_child(r'''
        path = sys.argv[1]
        base = Cache(path, size_limit=1 << 20, eviction_policy="least-recently-used")
        spaces = [("default", base), ("n*200", base.namespace("n" * 200)),
                  ("é*100", base.namespace("é" * 100))]
        for label, c in spaces:
            for klen in (505, 509, 510, 511, 600):  # str key encoding = 1 + klen bytes
                key = "k" * klen
                step(label, "key of", klen, "chars")
                try:
                    c[key] = "near"
                    check(c[key] == "near", label, klen, ": read back")  # an LRU hit
                    c["small-%d" % klen] = 1  # the write that flushes the LRU log
                    check(c["small-%d" % klen] == 1, label, klen, ": unrelated write")
                    check(c[key] == "near", label, klen, ": read again")
                except Exception as exc:
                    check(False, label, klen, ": raised", repr(exc))
        # many near-limit keys with eviction active (about 4x the size limit)
        for label, c in spaces:
            step(label, "eviction with near-limit keys")
            try:
                for i in range(1200):
                    key = ("%05d" % i) + "v" * 500
                    c[key] = b"x" * 3000
                    if i % 3 == 0:
                        c.get(("%05d" % (i // 2)) + "v" * 500)  # LRU hits, some evicted
                    if i % 50 == 0:
                        c.get_many([("%05d" % j) + "v" * 500 for j in range(i - 10, i)])
                last = ("%05d" % 1199) + "v" * 500
                check(c[last] == b"x" * 3000, label, ": the newest entry was evicted")
                check(len(c) < 1200, label, ": nothing was evicted", len(c))
            except Exception as exc:
                check(False, label, ": raised", repr(exc))
        for _, c in spaces:
            c.close()
        finish()
    ''', path, cwd=tmp_path, timeout=30)


# ---- 7. the namespace limit is enforced in C ---------------------------------------


def test_namespace_length_enforced_in_c(tmp_path, path):
    run_child(r'''
        from lmdbcache import _core
        path = sys.argv[1]
        os.makedirs(path)
        for label, ns in [("x*600", "x" * 600), ("x*300", "x" * 300), ("x*201", "x" * 201),
                          ("é*101 (202 bytes)", "é" * 101)]:
            step("Store(namespace=%s)" % label)
            try:
                s = _core.Store(path, namespace=ns, size_limit=1 << 20, eviction_policy=1)
            except ValueError:
                continue
            except Exception as exc:
                check(False, label, ": raised", repr(exc), "not ValueError")
                continue
            check(False, label, ": accepted, not ValueError")
            # what the missing check lets through: an eviction-index entry
            # [len][db name][key] larger than its fixed buffer
            try:
                s["k" * 500] = b"v"
                s["k" * 500]
            except Exception as exc:
                step("  then:", repr(exc))
            s.close()
        # the limit itself is allowed, from C too
        s = _core.Store(path, namespace="x" * 200, size_limit=1 << 20, eviction_policy=2)
        s["k" * 505] = b"v"
        check(s["k" * 505] == b"v", "200-byte namespace, 505-char key")
        s["other"] = 1
        check(s["other"] == 1, "200-byte namespace, next write")
        s.close()
        finish()
    ''', path, cwd=tmp_path, timeout=20)


# ---- 8. dict conformance ----------------------------------------------------------------


def test_update_rejects_bad_pairs_like_dict(tmp_path, path):
    run_child(r'''
        path = sys.argv[1]
        c = Cache(path)
        for label, arg, exc_type in [
            ("[(1, 2, 3)]", [(1, 2, 3)], ValueError),
            ("[(1,)]", [(1,)], ValueError),
            ("[('a', 1), (1, 2, 3)]", [("a", 1), (1, 2, 3)], ValueError),
            ("[1]", [1], TypeError),
            ("[('a', 1), 1]", [("a", 1), 1], TypeError),
            ("[None]", [None], TypeError),
        ]:
            d = {}
            try:
                d.update(arg)
            except exc_type:
                pass
            else:
                raise AssertionError("dict.update(%s) did not raise" % label)
            for method in ("update", "set_many"):
                try:
                    getattr(c, method)(arg)
                except exc_type:
                    pass
                except Exception as exc:
                    check(False, "cache.%s(%s) raised %r, dict.update raises %s"
                          % (method, label, exc, exc_type.__name__))
                else:
                    check(False, "cache.%s(%s) did not raise" % (method, label))
                check(len(c) == 0, "cache.%s(%s) stored" % (method, label), dict(c.items()))
                c.clear()
        c.update([("a", 1), ["b", 2]], e=5)
        check(dict(c.items()) == {"a": 1, "b": 2, "e": 5}, "update", dict(c.items()))
        c.close()
        finish()
    ''', path, cwd=tmp_path, timeout=20)


def test_cpython_mapping_tests(tmp_path):
    try:
        import test.mapping_tests  # noqa: F401
    except ImportError:
        pytest.fail("CPython's test package (test.mapping_tests) is not installed "
                    "for this interpreter")
    cmd = [sys.executable, os.path.join(HERE, "_mapping_conformance.py")]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
                              env=dict(os.environ))
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"mapping tests HUNG\n{_tail(exc.stderr)}", pytrace=False)
    if proc.returncode < 0:
        pytest.fail(f"mapping tests CRASHED: {signal.Signals(-proc.returncode).name}\n"
                    f"{_tail(proc.stderr)}", pytrace=False)
    if proc.returncode != 0:
        failed = [line for line in proc.stderr.splitlines()
                  if line.startswith(("ERROR:", "FAIL:"))]
        pytest.fail("CPython mapping tests failed:\n" + "\n".join(failed) + "\n\n" +
                    _tail(proc.stderr, 6000), pytrace=False)


# ---- 9. one policy for corrupt records ---------------------------------------------

CORRUPT_OPS = ["get", "get-default", "getitem", "contains", "get_many", "incr", "decr",
               "touch", "pop", "pop-default"]
REPAIR_OPS = ["set", "setitem", "add", "delete", "delitem", "incr-after-set"]


def test_corrupt_record_policy(tmp_path, path):
    keys = ["bad-" + op for op in CORRUPT_OPS + REPAIR_OPS]
    run_child(r'''
        path, keys = sys.argv[1], sys.argv[2:]
        with Cache(path) as c:
            c["good"] = "fine"
            for k in keys:
                c[k] = "was fine"
        finish()
    ''', path, *keys, cwd=tmp_path)
    run_child(r'''
        import lmdb
        path, keys = sys.argv[1], sys.argv[2:]
        env = lmdb.open(path, max_dbs=64)
        with env.begin(write=True) as txn:
            for k in keys:  # version 1, unknown tag 'Z', no flags
                check(txn.get(b"s" + k.encode()) is not None, "planted over nothing", k)
                txn.put(b"s" + k.encode(), b"\x01Z\x00")
        env.close()
        finish()
    ''', path, *keys, cwd=tmp_path)
    run_child(r'''
        path = sys.argv[1]
        c = Cache(path)
        reads = {
            "get": lambda k: c.get(k),
            "get-default": lambda k: c.get(k, "dflt"),
            "getitem": lambda k: c[k],
            "contains": lambda k: k in c,
            "get_many": lambda k: c.get_many(["good", k]),
            "incr": lambda k: c.incr(k),
            "decr": lambda k: c.decr(k),
            "touch": lambda k: c.touch(k, ttl=100),
            "pop": lambda k: c.pop(k),
            "pop-default": lambda k: c.pop(k, "dflt"),
        }
        for op, fn in reads.items():
            step(op)
            try:
                r = fn("bad-" + op)
            except lmdbcache.CorruptError:
                continue
            except Exception as exc:
                check(False, "%s of a corrupt record raised %r, not CorruptError" % (op, exc))
            else:
                check(False, "%s of a corrupt record returned %r, not CorruptError" % (op, r))

        def expect(op, got, want):
            check(got == want, "%s over a corrupt record: got %r, want %r" % (op, got, want))

        try:
            step("set")
            c.set("bad-set", "new")
            expect("set then get", c.get("bad-set"), "new")
            step("setitem")
            c["bad-setitem"] = "new"
            expect("setitem then get", c["bad-setitem"], "new")
            step("add")
            expect("add", c.add("bad-add", "added"), True)
            expect("add then get", c.get("bad-add"), "added")
            step("delete")
            expect("delete", c.delete("bad-delete"), True)
            expect("delete then in", "bad-delete" in c, False)
            expect("delete then get", c.get("bad-delete", "gone"), "gone")
            step("delitem")
            del c["bad-delitem"]
            expect("del then in", "bad-delitem" in c, False)
            step("incr after set")
            c["bad-incr-after-set"] = 41
            expect("incr after set", c.incr("bad-incr-after-set"), 42)
        except Exception as exc:
            check(False, "repairing a corrupt record raised", repr(exc))
        expect("the good entry", c.get("good"), "fine")
        c.close()
        finish()
    ''', path, cwd=tmp_path)


# ---- audit additions: a writer waiting on a closed cache, an aborted namespace,
# ---- eviction over corrupt records ------------------------------------------------


def test_writer_waiting_on_write_lock_survives_the_holder_closing(tmp_path, path):
    """Issue 8 item 3: one thread holds transaction(), others wait to write
    (in set() and in transaction()); the holder commits and closes the cache
    (then churns memory).  The waiters wake on a live Env, finish, and every
    write is there."""
    run_child(r'''
        path = sys.argv[1]
        many_switches()
        c = Cache(path)
        for rnd in range(150):
            holding = threading.Event()
            done = []

            def waiter_set(i=rnd):
                holding.wait()
                c.set(("s", i), i)
                done.append("set")

            def waiter_txn(i=rnd):
                holding.wait()
                with c.transaction():
                    c[("t", i)] = i
                done.append("txn")

            ws = [threading.Thread(target=waiter_set), threading.Thread(target=waiter_txn)]
            for w in ws:
                w.start()
            with c.transaction():
                c[("h", rnd)] = rnd
                holding.set()
                time.sleep(0.001)  # the waiters block on the write lock now
            c.close()
            churn()
            for w in ws:
                w.join(10)
                check(not w.is_alive(), "waiter stuck in round", rnd)
            check(sorted(done) == ["set", "txn"], "round", rnd, done)
            del JUNK[:]
        for rnd in range(150):
            for kind in "hst":
                check(c.get((kind, rnd)) == rnd, "lost", kind, rnd)
        c.close()
        finish()
    ''', path, cwd=tmp_path, timeout=120)


def test_namespace_created_in_an_aborted_transaction_is_usable(tmp_path, path):
    """Issue 8 item 9: a namespace first created inside a transaction that is
    then aborted: its Store's handle is gone with the txn.  The next call on
    that Store (here, from several threads) looks the name up again, creates
    the namespace anew, and nothing written in the aborted txn shows."""
    run_child(r'''
        path = sys.argv[1]
        many_switches()
        c = Cache(path)
        for rnd in range(40):
            name = "ns%d" % rnd
            n = c.namespace(name)
            try:
                with c.transaction():
                    n["aborted"] = 1
                    c["aborted"] = 1
                    raise KeyError("abort")
            except KeyError:
                pass
            churn()
            check(n.get("aborted") is None and c.get("aborted") is None, "aborted write shows")
            errs = []

            def use(t):
                try:
                    for i in range(20):
                        n[(t, i)] = i
                        check(n[(t, i)] == i, "namespace", name, t, i)
                except Exception as exc:
                    errs.append(repr(exc))

            ts = [threading.Thread(target=use, args=(t,)) for t in range(3)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(10)
            check(not errs, name, errs)
            check(len(n) == 60, name, len(n))
            del JUNK[:]
        check(len(c.namespaces()) >= 40, c.namespaces())
        c.close()
        finish()
    ''', path, cwd=tmp_path, timeout=120)


@pytest.mark.parametrize("policy", ["least-recently-stored", "least-recently-used"])
def test_eviction_over_corrupt_records(tmp_path, path, policy):
    """Issue 8 item 9: eviction reaching records that are damaged (planted
    with the CRC-less version-1 layout) drops them; it never crashes, never
    makes a write fail, and the cache stays within its limit."""
    run_child(r'''
        path, policy = sys.argv[1], sys.argv[2]
        with Cache(path, size_limit=1 << 20, eviction_policy=policy) as c:
            for i in range(200):
                c[("old", i)] = "v" * 100
        finish()
    ''', path, policy, cwd=tmp_path)
    run_child(r'''
        import lmdb
        from lmdbcache import _core
        path = sys.argv[1]
        probe = Cache(path + "-probe")
        kbs = [probe._key_raw(("old", i)) for i in range(0, 200, 3)]
        probe.close()
        env = lmdb.open(path, max_dbs=64)
        with env.begin(write=True) as txn:
            for kb in kbs:
                check(txn.get(kb) is not None, "planted over nothing")
                txn.put(kb, b"\x01Z\x00")
        env.close()
        finish()
    ''', path, cwd=tmp_path)
    run_child(r'''
        path, policy = sys.argv[1], sys.argv[2]
        c = Cache(path, size_limit=1 << 20, eviction_policy=policy)
        for i in range(4000):
            c[("new", i)] = os.urandom(600)  # several times the limit: evicts everything old
        check(all(c.get(("new", i)) is not None for i in range(3990, 4000)), "newest gone")
        olds = 0
        for i in range(200):
            try:
                olds += c.get(("old", i)) is not None
            except lmdbcache.CorruptError:
                olds += 1
        check(olds == 0, "old entries not evicted:", olds)
        cap = (1 << 20) * 5 // 4 + (4 << 20)  # the documented bound of the map
        check(os.path.getsize(os.path.join(path, "data.mdb")) <= cap, "file grew past cap")
        c.close()
        finish()
    ''', path, policy, cwd=tmp_path, timeout=120)
