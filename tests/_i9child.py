"""Child processes of the issue-9 tests.  Run as

    python -P -B _i9child.py MODE ARGS...

Each mode does one thing to a cache and prints one JSON line (its last line of
stdout) describing what happened; the parent checks the exit status (a
negative returncode is a signal) and the JSON.  Exceptions the parent must see
are caught and reported in the JSON, so "exited 0" means "no signal, no
unexpected traceback".
"""
import collections
import json
import os
import random
import sys
import threading
import time
import traceback
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _i9util import MiB, check_value, make_value  # noqa: E402

import lmdbcache  # noqa: E402
from lmdbcache import Cache  # noqa: E402


def emit(**data):
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def describe(exc):
    """(kind, details) of an exception: kind is the class name; errno for OSError."""
    d = {"type": type(exc).__name__, "msg": str(exc)[:300],
         "documented": isinstance(exc, (lmdbcache.Error, OSError))}
    if isinstance(exc, OSError):
        d["errno"] = exc.errno
    return d


def opt_int(s):
    return None if s in ("", "none", "None", "default") else int(s)


def cache_kwargs(durability, map_size=None, size_limit=None, readonly=False):
    kw = {"durability": durability}
    if map_size:
        kw["map_size"] = map_size
    if size_limit:
        kw["size_limit"] = size_limit
    if readonly:
        kw["readonly"] = True
    return kw


# ---- growth --------------------------------------------------------------------------


def mode_setup(path, durability, map_size, size_limit):
    with Cache(path, **cache_kwargs(durability, opt_int(map_size), opt_int(size_limit))) as c:
        c["hello"] = make_value("hello", 100)
    emit(ok=True)


def mode_grow_writer(path, durability, map_size, wid, seconds, max_bytes):
    """Write ever new keys ("w", wid, i) of 8..96 KB until `seconds` pass or
    `max_bytes` are written; check a random earlier key now and then."""
    wid, seconds, max_bytes = int(wid), float(seconds), int(max_bytes)
    rng = random.Random(wid)
    errors = collections.Counter()
    samples = []
    wrong = 0
    written = 0
    nbytes = 0
    cache = Cache(path, **cache_kwargs(durability, opt_int(map_size)))
    deadline = time.monotonic() + seconds
    next_report = time.monotonic() + 0.5
    while time.monotonic() < deadline and nbytes < max_bytes and sum(errors.values()) < 50:
        if time.monotonic() > next_report:  # progress, in case a signal ends us
            emit(progress=True, written=written, errors=errors, wrong=wrong)
            next_report = time.monotonic() + 0.5
        size = rng.randrange(8 << 10, 96 << 10)
        tag = f"w{wid}.{written}"
        try:
            cache[("w", wid, written)] = make_value(tag, size)
        except Exception as exc:  # noqa: BLE001 -- reported to the parent
            errors[type(exc).__name__] += 1
            if len(samples) < 5:
                samples.append(describe(exc))
            continue
        written += 1
        nbytes += size
        if written % 8 == 0:
            j = rng.randrange(written)
            try:
                why = check_value(f"w{wid}.{j}", cache.get(("w", wid, j)))
            except Exception as exc:  # noqa: BLE001
                errors[type(exc).__name__] += 1
                samples.append(describe(exc))
                continue
            if why:
                wrong += 1
                samples.append({"wrong": why, "key": j})
    info = cache.info()
    cache.close()
    emit(written=written, bytes=nbytes, errors=errors, samples=samples, wrong=wrong,
         map_size=info["map_size"])


def mode_grow_opener(path, durability, seconds, sizes, writers, size_limit):
    """Open the cache again and again (map_size alternating over `sizes`), read
    a few keys, check them, close."""
    seconds, writers = float(seconds), int(writers)
    sizes = [opt_int(s) for s in sizes.split(",")]
    rng = random.Random(os.getpid())
    errors = collections.Counter()
    samples = []
    opens = reads = wrong = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and sum(errors.values()) < 50:
        ms = sizes[opens % len(sizes)]
        try:
            with Cache(path, **cache_kwargs(durability, ms, opt_int(size_limit))) as c:
                opens += 1
                for _ in range(10):
                    if writers:
                        wid = rng.randrange(writers)
                        j = rng.randrange(200)
                        key, tag = ("w", wid, j), f"w{wid}.{j}"
                    else:  # the size_limit load: keys of limit-writer
                        p, t, j = rng.randrange(6), rng.randrange(4), rng.randrange(400)
                        key, tag = ("p", p, t, j), None
                    v = c.get(key)
                    reads += 1
                    if v is not None:
                        why = check_value(tag or v.split(b"|", 1)[0].decode(), v)
                        if why or (tag is None and not v.startswith(f"p{p}.{t}.{j}|".encode())):
                            wrong += 1
                            samples.append({"wrong": why or "key mismatch", "key": repr(key)})
        except Exception as exc:  # noqa: BLE001
            errors[type(exc).__name__] += 1
            if len(samples) < 5:
                samples.append(describe(exc))
        time.sleep(rng.random() * 0.02)
    emit(opens=opens, reads=reads, errors=errors, samples=samples, wrong=wrong)


def mode_limit_writer(path, durability, size_limit, pidx, threads, seconds, map_size):
    """`threads` threads sharing one Cache: set values of 100 B..20 KB (70 %),
    get (20 %), delete (10 %), keys ("p", pidx, thread, 0..399)."""
    pidx, threads, seconds = int(pidx), int(threads), float(seconds)
    cache = Cache(path, **cache_kwargs(durability, opt_int(map_size), int(size_limit)))
    errors = collections.Counter()
    samples = []
    ops = collections.Counter()
    wrong = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def work(t):
        rng = random.Random(pidx * 100 + t)
        version = 0
        while time.monotonic() < deadline:
            j = rng.randrange(400)
            tag = f"p{pidx}.{t}.{j}"
            r = rng.random()
            try:
                if r < 0.7:
                    version += 1
                    cache[("p", pidx, t, j)] = make_value(tag, rng.randrange(100, 20_000), version)
                    op = "set"
                elif r < 0.9:
                    v = cache.get(("p", pidx, t, j))
                    op = "get"
                    if v is not None and check_value(tag, v):
                        with lock:
                            wrong[0] += 1
                            samples.append({"wrong": check_value(tag, v)})
                else:
                    cache.delete(("p", pidx, t, j))
                    op = "delete"
            except Exception as exc:  # noqa: BLE001
                with lock:
                    errors[type(exc).__name__] += 1
                    if len(samples) < 8:
                        samples.append(describe(exc))
                continue
            with lock:
                ops[op] += 1

    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    while any(t.is_alive() for t in ts):
        ts[0].join(0.5)
        with lock:  # progress, in case a signal ends us
            emit(progress=True, ops=ops, errors=errors, wrong=wrong[0])
    for t in ts:
        t.join()
    cache.close()
    emit(ops=ops, errors=errors, samples=samples, wrong=wrong[0])


def mode_verify(path, durability, map_size, size_limit, expected):
    """Open, iterate every item and check it; with `expected` (JSON
    {"w<wid>": count}) also check that every written key is there."""
    expected = json.loads(expected) if expected not in ("", "-") else {}
    bad = []
    n = 0
    with Cache(path, **cache_kwargs(durability, opt_int(map_size), opt_int(size_limit))) as c:
        for key, value in c.items():
            n += 1
            if key == "hello":
                tag = "hello"
            elif key[0] == "w":
                tag = f"w{key[1]}.{key[2]}"
            else:
                tag = f"p{key[1]}.{key[2]}.{key[3]}"
            why = check_value(tag, value)
            if why:
                bad.append([repr(key), why])
        missing = 0
        for w, count in expected.items():
            wid = int(w[1:])
            for i in range(count):
                v = c.get(("w", wid, i))
                if v is None:
                    missing += 1
                elif check_value(f"w{wid}.{i}", v):
                    bad.append([repr(("w", wid, i)), check_value(f"w{wid}.{i}", v)])
        size = c.info()["file_bytes"]
    emit(items=n, bad=bad[:20], nbad=len(bad), missing=missing, used=size)


# ---- full disk -------------------------------------------------------------------------


def mode_create(path, durability):
    """Create a cache (on a full disk): report the outcome."""
    try:
        with Cache(path, durability=durability) as c:
            c["k"] = b"v" * 100
            ok = c["k"] == b"v" * 100
        emit(outcome="ok", ok=ok)
    except Exception as exc:  # noqa: BLE001
        emit(outcome="error", error=describe(exc))


def mode_openers(path, durability, n, hold):
    """Fork n children at once; each opens the cache, reads "hello", holds it
    open `hold` seconds, closes.  Reports every child's exit status and what
    it saw (through a pipe: the disk is full)."""
    n, hold = int(n), float(hold)
    rfd, wfd = os.pipe()
    go_r, go_w = os.pipe()
    pids = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:
            os.close(rfd)
            os.close(go_w)
            os.read(go_r, 1)  # all start together
            try:
                c = Cache(path, durability=durability)
                v = c.get("hello")
                res = {"i": i, "outcome": "ok" if check_value("hello", v) is None else "wrong"}
                time.sleep(hold)
                c.close()
            except Exception as exc:  # noqa: BLE001
                res = {"i": i, "outcome": "error", "error": describe(exc)}
            os.write(wfd, (json.dumps(res) + "\n").encode())
            os._exit(0)
        pids.append(pid)
    os.close(wfd)
    os.close(go_r)
    os.write(go_w, b"x" * n)
    os.close(go_w)
    statuses = {}
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        statuses[pid] = os.waitstatus_to_exitcode(status)
    data = b""
    while True:
        chunk = os.read(rfd, 65536)
        if not chunk:
            break
        data += chunk
    results = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    emit(codes=sorted(statuses.values()), results=results)


def mode_fill_recover(path, durability, value_size):
    """Fill the cache until the disk is full, then delete, clear and write again."""
    value_size = int(value_size)
    steps = {}
    c = Cache(path, durability=durability)
    n = 0
    fill_error = None
    while n < 100_000:
        try:
            c[("k", n)] = make_value(f"k{n}", value_size)
        except Exception as exc:  # noqa: BLE001
            fill_error = describe(exc)
            break
        n += 1
    steps["written"] = n
    steps["fill_error"] = fill_error

    def step(name, fn):
        try:
            fn()
            steps[name] = "ok"
            return True
        except Exception as exc:  # noqa: BLE001
            steps[name] = describe(exc)
            return False

    def read_back():
        for i in range(0, n, max(1, n // 20)):
            why = check_value(f"k{i}", c[("k", i)])
            assert why is None, why

    step("read_after_full", read_back)
    step("delete", lambda: [c.delete(("k", i)) for i in range(0, min(n, 10))])

    def small_write():
        c["after-delete"] = make_value("after-delete", 1000)
        assert check_value("after-delete", c["after-delete"]) is None

    step("write_after_delete", small_write)
    step("clear", c.clear)

    def refill():
        for i in range(min(n, 20)):
            c[("again", i)] = make_value(f"again{i}", value_size)
        for i in range(min(n, 20)):
            assert check_value(f"again{i}", c[("again", i)]) is None

    step("write_after_clear", refill)
    c.close()
    emit(**steps)


def mode_readall(path, durability):
    """Open and iterate every item: how many, or the error."""
    try:
        with Cache(path, durability=durability) as c:
            n = sum(1 for _ in c.items())
        emit(outcome="ok", items=n)
    except Exception as exc:  # noqa: BLE001
        emit(outcome="error", error=describe(exc))


# ---- guard -----------------------------------------------------------------------------


def mode_guard_store(path, count):
    """Create a cache (durability process) holding `count` keys; close it."""
    with Cache(path) as c:
        for i in range(int(count)):
            c[("g", i)] = make_value(f"g{i}", 200)
    emit(ok=True)


def mode_guard_open(path, count, then):
    """Open (durability process), check the keys, then `then`: "close",
    "exit" (os._exit, leaving the marker) or "kill" (SIGKILL)."""
    count = int(count)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            c = Cache(path)
        except Exception as exc:  # noqa: BLE001
            emit(outcome="error", error=describe(exc), warnings=[str(w.message) for w in caught])
            return
    missing = sum(1 for i in range(count) if c.get(("g", i)) is None)
    bad = sum(1 for i in range(count)
              if c.get(("g", i)) is not None and check_value(f"g{i}", c.get(("g", i))))
    res = dict(outcome="ok", missing=missing, bad=bad, entries=len(c),
               warnings=[str(w.message) for w in caught])
    if then == "exit":
        emit(**res)
        os._exit(0)
    if then == "kill":
        emit(**res)
        os.kill(os.getpid(), 9)
    c.close()
    emit(**res)


def mode_guard_readonly(path, count):
    count = int(count)
    try:
        with Cache(path, readonly=True) as c:
            missing = sum(1 for i in range(count) if c.get(("g", i)) is None)
        emit(outcome="ok", missing=missing)
    except Exception as exc:  # noqa: BLE001
        emit(outcome="error", error=describe(exc))


def main(argv):
    mode = argv[1].replace("-", "_")
    fn = globals().get("mode_" + mode)
    if fn is None:
        raise SystemExit(f"unknown mode {argv[1]!r}")
    try:
        fn(*argv[2:])
    except Exception:
        traceback.print_exc()
        sys.exit(3)


if __name__ == "__main__":
    main(sys.argv)
