"""Attacks on a cache directory by another user (issue 10), and the trust check.

The victim is the test process (root); the attacker is a forked child that
drops to uid 65534 (nobody).  Payloads are harmless: unpickling one creates a
marker file, so "the payload ran" is "the marker exists".  The "careless"
setup is a cache directory (and its files) made writable by everyone.
"""
import fcntl
import json
import os
import pickle
import select
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

import lmdbcache
import lmdbcache.memo  # noqa: F401  (the attacker, as nobody, may not read the stdlib)
from lmdbcache import Cache, LockError, UnsafeCacheError

# Python 3.10 has no -P; its test run starts in tests/, where no source package can shadow.
SAFE_PATH = ["-P"] if sys.version_info >= (3, 11) else []

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _attacker import NOBODY, as_attacker, make_arena, needs_root  # noqa: E402

pytestmark = needs_root


class Payload:
    """Unpickling this creates (opens for writing) the file *path*."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))

    def __hash__(self):
        return hash(self.path)

    def __eq__(self, other):
        return isinstance(other, Payload) and other.path == self.path


_RESULT = {"value": 42}


def expensive(x):
    return _RESULT["value"]


@pytest.fixture
def arena():
    """A root-owned 0755 directory the attacker can reach."""
    yield from make_arena(0o755)


def careless(path):
    """The careless setup: the directory and its files writable by everyone."""
    os.chmod(path, 0o777)
    for name in os.listdir(path):
        p = os.path.join(path, name)
        if os.path.isfile(p) and not os.path.islink(p):
            os.chmod(p, 0o666)


def victim_cache(arena, data=True):
    path = str(arena / "cache")
    with Cache(path) as c:
        if data:
            c["k"] = b"victim's bytes"
            c["n"] = 1
    return path


def _plant_value(path, marker):
    with Cache(path, allow_shared=True) as c:
        c["k"] = Payload(marker)  # the victim only ever stored bytes under "k"


def _plant_key(path, marker):
    with Cache(path, allow_shared=True) as c:
        c[Payload(marker)] = 1


def _plant_memo(path, marker):
    _RESULT["value"] = Payload(marker)
    with Cache(path, allow_shared=True) as c:
        c.memoize()(expensive)(1)


# ---- planted pickles: refused before anything is read -------------------------


@pytest.mark.parametrize(
    "plant, use",
    [
        (_plant_value, lambda c: c.get("k")),
        (_plant_key, lambda c: list(c)),
        (_plant_memo, lambda c: c.memoize()(expensive)(1)),
    ],
    ids=["value", "key", "memoize"],
)
def test_planted_pickle_is_refused(arena, plant, use):
    path = victim_cache(arena)
    marker = arena / "payload-ran"
    careless(path)
    as_attacker(plant, path, str(marker))
    with pytest.raises(UnsafeCacheError) as info:
        c = Cache(path)
        use(c)  # not reached
    assert path in str(info.value) and "writable by others" in str(info.value)
    assert not marker.exists(), "the attacker's payload ran"
    # the control: allow_shared=True trusts the directory -- and runs the
    # attacker's code, which is what the option means
    with Cache(path, allow_shared=True) as c:
        use(c)
    assert marker.exists(), "the planted pickle was not effective (the test proves nothing)"


def test_planted_pickle_refused_after_the_directory_is_fixed(arena):
    """chmod 0700 on the directory afterwards does not make planted files
    trusted: they belong to the attacker."""
    path = victim_cache(arena)
    marker = arena / "payload-ran"
    os.chmod(path, 0o777)
    for name in ("data.mdb", "lock.mdb"):
        os.unlink(os.path.join(path, name))  # the attacker could do this too

    def plant():
        # the attacker makes a cache of its own and moves its files in
        own = os.path.join(path, "own")
        with Cache(own) as c:
            c["k"] = Payload(marker)
        for name in ("data.mdb", "lock.mdb"):
            os.rename(os.path.join(own, name), os.path.join(path, name))

    as_attacker(plant)
    os.chmod(path, 0o700)
    with pytest.raises(UnsafeCacheError, match="owned by uid 65534"):
        Cache(path).get("k")
    with pytest.raises(UnsafeCacheError):
        Cache(path, readonly=True).get("k")
    assert not marker.exists()


# ---- symlinks -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["lock.mdb", "data.mdb", "guard.lock", "unsynced"])
@pytest.mark.parametrize("readonly", [False, True], ids=["rw", "readonly"])
def test_symlinked_file_is_refused(arena, name, readonly):
    path = victim_cache(arena)
    secret = arena / "root-only"
    secret.write_bytes(b"root's secret\n" * 100)
    os.chmod(secret, 0o600)
    before = (secret.read_bytes(), os.stat(secret).st_mtime_ns)
    os.chmod(path, 0o777)

    def plant():
        p = os.path.join(path, name)
        if os.path.lexists(p):
            os.unlink(p)
        os.symlink(secret, p)

    as_attacker(plant)
    for allow_shared in (False, True):
        with pytest.raises(UnsafeCacheError):
            Cache(path, readonly=readonly, allow_shared=allow_shared)
    os.chmod(path, 0o700)  # a private directory holding a planted symlink
    for allow_shared in (False, True):
        with pytest.raises(UnsafeCacheError, match="symlink"):
            Cache(path, readonly=readonly, allow_shared=allow_shared)
    assert (secret.read_bytes(), os.stat(secret).st_mtime_ns) == before, "target touched"


def test_dangling_symlink_target_is_not_created(arena):
    path = str(arena / "cache")
    os.mkdir(path, 0o700)
    target = arena / "elsewhere" / "data.mdb"
    target.parent.mkdir()
    os.symlink(target, os.path.join(path, "data.mdb"))
    with pytest.raises(UnsafeCacheError, match="symlink"):
        Cache(path)
    assert not target.exists()


def test_symlinked_directory_of_our_own_is_accepted(arena):
    real = arena / "real"
    link = arena / "link"
    Cache(str(real)).close()
    os.symlink(real, link)
    with Cache(str(link)) as c:
        c["k"] = 1
    # ... but not one another user made
    os.chmod(arena, 0o777)
    as_attacker(lambda: os.symlink(real, arena / "theirs"))
    os.chmod(arena, 0o755)
    with pytest.raises(UnsafeCacheError, match="symlink owned by another user"):
        Cache(str(arena / "theirs"))


# ---- markers, locks -----------------------------------------------------------


def test_planted_unsynced_marker_is_refused(arena):
    path = victim_cache(arena)
    os.chmod(path, 0o777)

    def plant():
        with open(os.path.join(path, "unsynced"), "w") as f:
            f.write("00000000-0000-0000-0000-000000000000")

    as_attacker(plant)
    with pytest.raises(UnsafeCacheError):
        Cache(path)
    os.chmod(path, 0o700)
    with pytest.raises(UnsafeCacheError, match="'unsynced' is owned by uid 65534"):
        Cache(path)
    # nothing was moved aside: the victim's data is where it was
    assert not [n for n in os.listdir(path) if n.startswith("torn-")]
    os.unlink(os.path.join(path, "unsynced"))
    with Cache(path) as c:
        assert c["k"] == b"victim's bytes"


@pytest.mark.parametrize("which, readonly", [("guard.lock", False), ("lock.mdb", False),
                                             ("lock.mdb", True)])
def test_held_lock_times_out(arena, which, readonly):
    """Even where the attacker may open guard.lock or lock.mdb (a shared
    directory), a lock held forever makes the open give up after `timeout`
    with LockError, instead of hanging (LMDB itself would wait on lock.mdb
    without a bound)."""
    path = victim_cache(arena)
    careless(path)
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            fd = os.open(os.path.join(path, which), os.O_RDWR)
            if which == "guard.lock":
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:  # LMDB's own exclusive lock: byte 0, fcntl
                fcntl.lockf(fd, fcntl.LOCK_EX, 1, 0, os.SEEK_SET)
            os.write(w, b"x")
            time.sleep(60)
        finally:
            os._exit(0)
    try:
        os.close(w)
        assert select.select([r], [], [], 10)[0] and os.read(r, 1) == b"x"
        t0 = time.monotonic()
        with pytest.raises(LockError, match=which) as err:
            Cache(path, allow_shared=True, timeout=1, readonly=readonly)
        if which == "lock.mdb":  # the message names the bound it gave up after
            assert "more than 1 s" in str(err.value), str(err.value)
        took = time.monotonic() - t0
        assert 0.9 <= took < 10, took
        with pytest.raises(UnsafeCacheError):  # and without allow_shared, no wait at all
            Cache(path, timeout=1, readonly=readonly)
    finally:
        os.close(r)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


# ---- directories --------------------------------------------------------------


@pytest.mark.parametrize("mode, problem", [(0o777, "writable by others"),
                                           (0o770, "writable by its group"),
                                           (0o1777, "writable by others")])
def test_writable_directory_is_refused(arena, mode, problem):
    path = str(arena / "cache")
    os.mkdir(path)
    os.chmod(path, mode)
    with pytest.raises(UnsafeCacheError) as info:
        Cache(path)
    assert path in str(info.value) and problem in str(info.value)
    assert isinstance(info.value, lmdbcache.Error)
    assert isinstance(info.value, PermissionError)
    assert os.listdir(path) == [], "a file was created before the check"
    with Cache(path, allow_shared=True) as c:
        c["k"] = 1
        assert c["k"] == 1
        assert c.options["allow_shared"] is True


def test_foreign_owned_directory_is_refused(arena):
    path = str(arena / "cache")
    os.mkdir(path, 0o700)
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(UnsafeCacheError, match="owned by uid 65534"):
        Cache(path)
    with pytest.raises(UnsafeCacheError):
        Cache(path, readonly=True)
    with Cache(path, allow_shared=True) as c:
        c["k"] = 1


@pytest.mark.parametrize("name", ["data.mdb", "lock.mdb", "guard.lock"])
def test_foreign_owned_or_writable_file_is_refused(arena, name):
    path = victim_cache(arena)
    f = os.path.join(path, name)
    os.chmod(f, 0o606)
    with pytest.raises(UnsafeCacheError, match=f"'{name}' is writable by others"):
        Cache(path)
    os.chmod(f, 0o600)
    os.chown(f, NOBODY, NOBODY)
    with pytest.raises(UnsafeCacheError, match=f"'{name}' is owned by uid 65534"):
        Cache(path)
    with Cache(path, allow_shared=True) as c:
        assert c["n"] == 1


def test_lazy_reopen_is_checked(arena):
    """The check runs in the C core at every open, the lazy reopen after
    close() included."""
    path = victim_cache(arena)
    c = Cache(path)
    c.close()
    os.chmod(path, 0o777)
    with pytest.raises(UnsafeCacheError):
        c.get("k")
    os.chmod(path, 0o700)
    assert c.get("k") == b"victim's bytes"
    c.close()


def test_allow_shared_travels_with_the_cache(arena):
    path = str(arena / "cache")
    os.mkdir(path)
    os.chmod(path, 0o777)
    with Cache(path, allow_shared=True) as c:
        ns = c.namespace("other")
        ns["x"] = 1
        ns.close()
        clone = pickle.loads(pickle.dumps(c))
        clone["y"] = 2
        assert c["y"] == 2
        clone.close()
    assert c.get("y") == 2  # the lazy reopen keeps the option
    c.close()
    with pytest.raises(UnsafeCacheError):
        Cache(path)



# ---- umask 000 ----------------------------------------------------------------

_UMASK_SCRIPT = textwrap.dedent(
    """
    import gc, json, os, sys, warnings
    import lmdbcache
    os.umask(0)
    base = sys.argv[1]
    path = os.path.join(base, "a", "b", "cache")
    modes = {}
    def walk():
        for root, dirs, files in os.walk(base):
            for n in dirs + files:
                p = os.path.join(root, n)
                modes[os.path.relpath(p, base)] = os.lstat(p).st_mode
    c = lmdbcache.Cache(path)
    c["k"] = {"v": 1}
    memo = c.memoize()(len)
    memo("abc")
    walk()  # open: the unsynced marker exists
    c.copy(os.path.join(base, "x", "y", "copy"))
    c.close()
    del memo, c
    gc.collect()  # memoize's own Cache object
    assert not os.path.exists(os.path.join(path, "unsynced"))  # the last closer removed it
    # a torn cache: a marker of another boot
    fd = os.open(os.path.join(path, "unsynced"), os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"00000000-0000-0000-0000-000000000000")
    os.close(fd)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        lmdbcache.Cache(path).close()
    assert any("torn" in str(x.message) for x in w), [str(x.message) for x in w]
    walk()
    print(json.dumps(modes))
    """
)


def test_umask_000_creates_only_private_files(arena):
    out = subprocess.run([sys.executable, *SAFE_PATH, "-c", _UMASK_SCRIPT, str(arena)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    modes = json.loads(out.stdout.splitlines()[-1])
    names = set(modes)
    assert "a/b/cache/unsynced" in names, names
    assert any(n.startswith("a/b/cache/torn-") for n in names), names
    assert "x/y/copy/data.mdb" in names, names
    bad = {}
    for name, mode in modes.items():
        want = 0o700 if stat.S_ISDIR(mode) else 0o600
        if stat.S_IMODE(mode) != want:
            bad[name] = oct(stat.S_IMODE(mode))
    assert not bad, f"not private under umask 000: {bad}"


# ---- the command line -----------------------------------------------------------


def test_cli_refuses_a_shared_directory_unless_told(arena):
    path = victim_cache(arena)
    os.chmod(path, 0o777)
    cmd = [sys.executable, *SAFE_PATH, "-m", "lmdbcache", "stat", path]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out
    assert "writable by others" in out.stderr and len(out.stderr.splitlines()) == 1
    out = subprocess.run(cmd + ["--allow-shared"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
