"""Helpers of tests/test_damage.py: the golden cache, and the pool worker that
damages a copy of it and reads it in a forked child.

    python -P -B _i9damage.py golden DIR    build DIR/cache and DIR/golden.pickle
    python -P -B _i9damage.py open DIR MODE open DIR, report the outcome (JSON)

Pool workers (spawn) import this module, load the golden data once
(``init``), and run ``trial(kind, seed)``: the damaged file is written once
per open mode ("process", "full", "readonly"); each is opened in a child
forked from the worker (which has imported lmdbcache but opened nothing), so
a crash, a hang or an abort takes down only that child.  The child reads
every golden key and iterates every namespace and reports through a pipe; a
crash handler (_crashwhere.c, loaded with ctypes) names where it died.
"""
import collections
import ctypes
import datetime
import decimal
import fractions
import json
import os
import pickle
import random
import select
import shutil
import signal
import struct
import sys
import time

import lmdbcache
from lmdbcache import Cache

MODES = ("process", "full", "readonly")
NAMESPACES = (None, "ns1")
CHILD_TIMEOUT = 20.0
_MISSING = object()

_G = {}  # worker state: golden values, golden bytes, page types, work dir, crash lib


# ---- the golden cache -------------------------------------------------------------------


def golden_items():
    """{namespace: {key: value}}: native values of every type, pickled values,
    long keys (> 511 bytes), overflow-page values, entries with a TTL, and a
    namespace."""
    rng = random.Random(1234)
    main, ttl, ns1 = {}, {}, {}
    natives = [
        lambda i: bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300))),
        lambda i: "".join(chr(rng.choice((rng.randrange(32, 127), rng.randrange(0xA0, 0x3000))))
                          for _ in range(rng.randrange(0, 120))),
        lambda i: rng.randrange(-2**63, 2**63),
        lambda i: rng.uniform(-1e9, 1e9),
        lambda i: None,
        lambda i: True,
        lambda i: False,
        lambda i: 2**80 + i,  # an int beyond 64 bits is pickled
    ]
    pickled = [
        lambda i: {"i": i, "name": f"item-{i}", "tags": ["a", "b", i]},
        lambda i: [i, i * 1.5, f"s{i}", (i, b"x" * (i % 7))],
        lambda i: (i, frozenset({i, i + 1}), {"nested": {"deep": [i] * 3}}),
        lambda i: {i, i * 2, i * 3},
        lambda i: bytearray(b"ba" * (i % 50)),
        # objects of other modules: a flip in a module or class name must be
        # CorruptError, not ModuleNotFoundError / AttributeError
        lambda i: collections.OrderedDict([("a", i), ("b", str(i))]),
        lambda i: datetime.datetime(2020, 1 + i % 12, 1 + i % 28, i % 24, i % 60),
        lambda i: fractions.Fraction(i + 1, 7),
        lambda i: decimal.Decimal(f"{i}.{i:03d}"),
        lambda i: collections.deque([i, "x", b"y"]),
    ]
    for i in range(160):
        main[f"s{i}"] = natives[i % len(natives)](i)
    for i in range(60):
        main[("t", i, f"k{i}")] = pickled[i % len(pickled)](i)
    for i in range(20):
        main[i * 7919 - 50_000] = f"int key {i}"
        main[b"bytes-key-%d" % i] = bytes(range(i, i + 40))
    for i in range(16):  # long keys: stored as a digest, full key in the record
        main["L" * 600 + str(i)] = {"long": i}
        main[b"B" * 900 + bytes([i])] = b"long-bytes-%d" % i
    for i in range(10):  # overflow pages
        main[f"big{i}"] = bytes(rng.randrange(256) for _ in range(9000 + i * 700))
    for i in range(30):
        ttl[f"ttl{i}"] = f"expires in a day {i}"
    for i in range(60):
        ns1[f"n{i}"] = natives[i % len(natives)](i) if i % 3 else pickled[i % len(pickled)](i)
    ns1["L" * 700] = "long key in a namespace"
    return {"main": main, "ttl": ttl, "ns1": ns1}


def build_golden(directory):
    items = golden_items()
    path = os.path.join(directory, "cache")
    with Cache(path, durability="full") as c:
        for k, v in items["main"].items():
            c[k] = v
        for k, v in items["ttl"].items():
            c.set(k, v, ttl=86400)
        ns = c.namespace("ns1")
        for k, v in items["ns1"].items():
            ns[k] = v
        ns.close()
        # some churn: freed pages, a deeper free list
        for i in range(40):
            c[("churn", i)] = b"c" * 2000
        for i in range(40):
            del c[("churn", i)]
    golden = {None: dict(items["main"], **{k: v for k, v in items["ttl"].items()}),
              "ns1": items["ns1"]}
    with open(os.path.join(directory, "golden.pickle"), "wb") as f:
        pickle.dump(golden, f)
    return path


# ---- page map of the golden file ------------------------------------------------------------


def page_types(data):
    """Type of every page of an LMDB file as its header says: 'meta',
    'branch', 'leaf', 'overflow' (head and continuation pages), or 'other'."""
    psize = struct.unpack_from("<I", data, 16 + 24)[0] or 4096
    n = len(data) // psize
    types = ["other"] * n
    pg = 0
    while pg < n:
        flags = struct.unpack_from("<H", data, pg * psize + 10)[0]
        if flags & 0x08:
            types[pg] = "meta"
        elif flags & 0x04:
            count = struct.unpack_from("<I", data, pg * psize + 12)[0]
            for q in range(pg, min(n, pg + max(1, count))):
                types[q] = "overflow"
            pg += max(1, count)
            continue
        elif flags & 0x01:
            types[pg] = "branch"
        elif flags & 0x02:
            types[pg] = "leaf"
        pg += 1
    return psize, types


# ---- pool worker ------------------------------------------------------------------------------


def init(golden_dir, work_dir, crash_lib):
    with open(os.path.join(golden_dir, "golden.pickle"), "rb") as f:
        _G["golden"] = pickle.load(f)
    with open(os.path.join(golden_dir, "cache", "data.mdb"), "rb") as f:
        _G["data"] = f.read()
    _G["psize"], _G["types"] = page_types(_G["data"])
    _G["work"] = work_dir
    _G["lib"] = ctypes.CDLL(crash_lib) if crash_lib else None
    _G["lib_path"] = crash_lib


def damage(kind, seed):
    """(damaged bytes, what was done, page type hit)."""
    data = _G["data"]
    rng = random.Random(f"{kind}-{seed}")
    if kind == "truncate":
        off = rng.randrange(0, len(data))
        return data[:off], f"truncated at {off} of {len(data)}", "cut"
    off = rng.randrange(0, len(data))
    bit = rng.randrange(1, 256)
    out = bytearray(data)
    out[off] ^= bit
    ptype = _G["types"][off // _G["psize"]]
    return bytes(out), f"byte {off} (page {off // _G['psize']}, {ptype}) ^= {bit:#04x}", ptype


def _same(a, b):
    return type(a) is type(b) and a == b


def _read_all(path, mode, report):
    """The child's work: open every namespace, get every golden key, iterate."""
    golden = _G["golden"]
    kw = {"readonly": True} if mode == "readonly" else {"durability": mode}
    for ns in NAMESPACES:
        expected = golden[ns]
        try:
            c = Cache(path, namespace=ns, **kw)
        except Exception as exc:  # noqa: BLE001
            report["errors"].append(_exc("open", exc))
            continue
        try:
            for key, value in expected.items():
                try:
                    got = c.get(key, _MISSING)
                except Exception as exc:  # noqa: BLE001
                    report["errors"].append(_exc("get", exc))
                    continue
                report["reads"] += 1
                if got is _MISSING:
                    report["missing"] += 1
                elif not _same(got, value):
                    report["wrong"].append(f"get {key!r:.60}: {got!r:.80} != {value!r:.80}")
                else:
                    report["ok"] += 1
            try:
                for key, got in c.items():
                    try:
                        known = key in expected
                    except TypeError:
                        known = False
                    if not known:
                        report["wrong"].append(f"iteration yielded unknown key {key!r:.80}")
                    elif not _same(got, expected[key]):
                        report["wrong"].append(f"iteration {key!r:.60}: {got!r:.80}")
            except Exception as exc:  # noqa: BLE001
                report["errors"].append(_exc("iterate", exc))
        finally:
            try:
                c.close()
            except Exception as exc:  # noqa: BLE001
                report["errors"].append(_exc("close", exc))


def _exc(where, exc):
    documented = isinstance(exc, (lmdbcache.Error, OSError))
    return {"where": where, "type": type(exc).__name__, "documented": documented,
            "msg": str(exc)[:200]}


def _run_child(path, mode):
    """Fork, read everything in the child; returns (exit code, report, crash line)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(rfd)
            if _G["lib"] is not None:
                _G["lib"].cw_install(wfd)
            report = {"reads": 0, "ok": 0, "missing": 0, "wrong": [], "errors": []}
            _read_all(path, mode, report)
            report["wrong"] = report["wrong"][:5] + ([f"... {len(report['wrong'])} in all"]
                                                     if len(report["wrong"]) > 5 else [])
            report["nwrong"] = len(report["wrong"])
            os.write(wfd, (json.dumps(report) + "\n").encode())
        except BaseException as exc:  # noqa: BLE001 -- the harness itself failed
            try:
                os.write(wfd, (json.dumps({"harness": repr(exc)}) + "\n").encode())
            except BaseException:  # noqa: BLE001
                pass
            code = 70
        os._exit(code)
    os.close(wfd)
    chunks = []
    deadline = time.monotonic() + CHILD_TIMEOUT
    timed_out = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            os.kill(pid, signal.SIGKILL)
            break
        ready, _, _ = select.select([rfd], [], [], left)
        if ready:
            chunk = os.read(rfd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    os.close(rfd)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    report, crash = None, None
    for line in b"".join(chunks).decode(errors="replace").splitlines():
        if line.startswith("CRASHWHERE"):
            crash = line
        elif line.startswith("{"):
            report = json.loads(line)
    return code, report, crash, timed_out


def crash_site(crash_line):
    """Who faulted: 'lmdb' when the faulting instruction is in liblmdb (or in
    libc called by liblmdb), 'lmdbcache' when it is in lmdbcache's _core (or
    in libc/libpython called by it), else the first other library, or '?'."""
    if not crash_line or "frames=" not in crash_line:
        return "?"
    frames = crash_line.split("frames=", 1)[1].split("|")
    first = frames[0].split("!", 1)[0]
    # frames[1:] start with the handler's own frames and the signal trampoline
    rest = [f.split("!", 1)[0] for f in frames[1:]]
    while rest and (rest[0] == _G.get("lib_path") or "crashwhere" in rest[0]):
        rest.pop(0)
    if rest and os.path.basename(rest[0]).startswith("libc.so"):
        rest.pop(0)  # the sigreturn trampoline
    for obj in [first] + rest:
        base = os.path.basename(obj)
        if base.startswith("liblmdb"):
            return "lmdb"
        if base.startswith("_core"):
            return "lmdbcache"
        if base.startswith(("libc.so", "libpython", "ld-linux")) or obj == "?":
            continue  # a helper called by whoever comes next
        return "other:" + base
    return "?"


def classify(code, report, crash, timed_out):
    if timed_out:
        return "hang"
    if code < 0:
        return "crash"
    if report is None or "harness" in (report or {}) or code != 0:
        return "harness"
    if report["nwrong"]:
        return "wrong"
    if any(not e["documented"] for e in report["errors"]):
        return "undocumented"
    if report["missing"] and not report["errors"]:
        return "lost"  # keys silently gone, no error: reported, not asserted
    return "clean"


def trial(kind, seed):
    """Damage a copy once, open it in each mode; one result per mode."""
    blob, what, ptype = damage(kind, seed)
    results = []
    for mode in MODES:
        d = os.path.join(_G["work"], f"{kind}-{seed}-{mode}")
        os.makedirs(d)
        try:
            with open(os.path.join(d, "data.mdb"), "wb") as f:
                f.write(blob)
            code, report, crash, timed_out = _run_child(d, mode)
        finally:
            shutil.rmtree(d, ignore_errors=True)
        cls = classify(code, report, crash, timed_out)
        site = crash_site(crash) if cls == "crash" else None
        results.append({
            "kind": kind, "seed": seed, "mode": mode, "what": what, "page": ptype,
            "class": cls, "code": code, "site": site, "crash": (crash or "")[:600],
            "errors": sorted({f"{e['where']}:{e['type']}" for e in (report or {}).get("errors", [])}),
            "undocumented": [e for e in (report or {}).get("errors", []) if not e["documented"]][:2],
            "wrong": (report or {}).get("wrong", [])[:3],
            "missing": (report or {}).get("missing"),
            "any_undocumented": any(not e["documented"] for e in (report or {}).get("errors", [])),
        })
    return results


# ---- script mode ----------------------------------------------------------------------------


def open_outcome(path, mode):
    kw = {"readonly": True} if mode == "readonly" else {"durability": mode}
    try:
        with Cache(path, **kw) as c:
            n = len(c)
        return {"outcome": "opened", "entries": n}
    except Exception as exc:  # noqa: BLE001
        return {"outcome": "error", "error": _exc("open", exc)}


def unpickle_errors(directory):
    """Store values whose classes live in modules of our own, then change or
    delete those modules (as a renamed class or a removed package does) and
    read the values back: each get must raise CorruptError, chained to the
    unpickler's own error.  The records themselves stay intact, so their
    checksums pass and the unpickler really runs."""
    import importlib

    sys.dont_write_bytecode = True
    mods = os.path.join(directory, "mods")
    os.makedirs(mods, exist_ok=True)
    sys.path.insert(0, mods)

    def write(name, text):
        with open(os.path.join(mods, name + ".py"), "w") as f:
            f.write(text)

    write("lmc_gone_mod", "class Thing:\n    pass\n")
    write("lmc_changed_mod", (
        "class Renamed:\n    pass\n"
        "def make(a, b):\n    return (a, b)\n"
        "class Point:\n"
        "    def __init__(self, x):\n        self.x = x\n"
        "    def __reduce__(self):\n        return (make, (self.x, 2))\n"
        "def check(a):\n    return a\n"
        "class Checked:\n"
        "    def __init__(self, x):\n        self.x = x\n"
        "    def __reduce__(self):\n        return (check, (self.x,))\n"
        "class State:\n    pass\n"))
    gone = importlib.import_module("lmc_gone_mod")
    changed = importlib.import_module("lmc_changed_mod")
    st = changed.State()
    st.v = 1
    values = {
        "module": gone.Thing(),                 # its module is deleted
        "attribute": changed.Renamed(),         # its class is renamed away
        "type": changed.Point(1),               # make() now takes one argument
        "value": ("ok", changed.Checked(5)),    # check() now rejects the value
        "setstate": st,                         # __setstate__ now raises
    }
    path = os.path.join(directory, "cache")
    with Cache(path, durability="full") as c:
        for k, v in values.items():
            c[k] = v
    os.unlink(os.path.join(mods, "lmc_gone_mod.py"))
    write("lmc_changed_mod", (
        "def make(a):\n    return a\n"
        "def check(a):\n    raise ValueError(f'{a} is not allowed now')\n"
        "class State:\n"
        "    def __setstate__(self, state):\n        raise TypeError('state layout changed')\n"))
    for name in ("lmc_gone_mod", "lmc_changed_mod"):
        sys.modules.pop(name, None)
    importlib.invalidate_caches()
    out = {}
    with Cache(path, durability="full") as c:
        for k in values:
            try:
                out[k] = {"returned": repr(c.get(k))[:80]}
            except Exception as exc:  # noqa: BLE001
                out[k] = _exc("get", exc)
                out[k]["cause"] = type(exc.__cause__).__name__ if exc.__cause__ else None
            # the damaged entry can still be replaced, and others still read
            c[k] = "replaced"
            out[k]["replaced"] = c[k] == "replaced"
    return out


def main(argv):
    if argv[1] == "unpickle":
        print(json.dumps(unpickle_errors(argv[2])))
    elif argv[1] == "golden":
        build_golden(argv[2])
        print(json.dumps({"ok": True}))
    elif argv[1] == "open":
        print(json.dumps(open_outcome(argv[2], argv[3])))
    else:
        raise SystemExit(f"unknown mode {argv[1]!r}")


if __name__ == "__main__":
    main(sys.argv)
