"""Copy, compaction and verification of a cache (Cache.copy/compact/verify and
the CLI): imported on first use, so that `import lmdbcache` stays cheap."""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import threading
from typing import Any, Callable, NamedTuple, Optional

from . import _core
from .cache import _Internal, _makedirs_private  # noqa: F401  (_Internal: namespaces named "__...")

def copy(self, dest, compact=False, progress=None) -> None:
    """The work of :meth:`Cache.copy` (see its docstring), for *self*, a Cache."""
    dest = os.path.abspath(os.path.expanduser(os.fspath(dest)))
    if self._in_txn():
        raise _core.Error("cannot copy the cache inside this thread's transaction()")
    if os.path.exists(dest):
        if not os.path.isdir(dest):
            raise NotADirectoryError(f"copy destination {dest!r} is not a directory")
        if os.path.samefile(dest, self.path):
            raise ValueError(f"cannot copy the cache {self.path!r} onto itself")
        if os.path.exists(os.path.join(dest, "data.mdb")):
            raise FileExistsError(
                f"copy destination {dest!r} already holds a cache (data.mdb)")
        created = False
    else:
        _makedirs_private(dest)
        created = True
    target = os.path.join(dest, "data.mdb")
    total = self._survey()["used_bytes"]
    try:
        with _Progress(progress, target, total):
            self._copy(dest, bool(compact))
        # LMDB creates the copy with the umask's mode: give it the cache's
        _copy_mode(os.path.join(self.path, "data.mdb"), target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(target)
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        raise

def compact(self, progress=None) -> "CompactResult":
    """The work of :meth:`Cache.compact` (see its docstring), for *self*, a Cache."""
    if self.readonly:
        raise _core.ReadOnlyError(
            f"cannot compact '{self.path}': the cache was opened with readonly=True")
    if self._in_txn():
        raise _core.Error("cannot compact the cache inside this thread's transaction()")
    path = self.path
    data = os.path.join(path, "data.mdb")
    # Open the environment (after close(), or a previous compact()) before
    # taking guard.lock: the C core takes it to open, from another
    # descriptor, and would wait for this very lock.
    self._survey()
    with open(os.path.join(path, "guard.lock"), "a") as guard:
        # Cache() openers of other processes wait here until the swap is done.
        fcntl.flock(guard, fcntl.LOCK_EX)
        survey = self._survey()
        _refuse_if_shared(path, survey)
        before = _file_sizes(data)
        tmp = tempfile.mkdtemp(prefix=".compact-", dir=path)
        try:
            with _Progress(progress, os.path.join(tmp, "data.mdb"), survey["used_bytes"]):
                self._copy(tmp, True)
            _copy_mode(data, os.path.join(tmp, "data.mdb"))
            again = self._survey()
            _refuse_if_shared(path, again)
            if again["last_txnid"] != survey["last_txnid"]:
                raise _core.Error(
                    f"cannot compact '{path}': it was written while being compacted; "
                    "nothing was changed, try again")
            self.close()
            _swap_exclusive(path, os.path.join(tmp, "data.mdb"), data)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        after = _file_sizes(data)
    return CompactResult(before[0], after[0], before[1], after[1],
                         survey["used_bytes"])

def verify(self, progress=None) -> "VerifyReport":
    """The work of :meth:`Cache.verify` (see its docstring), for *self*, a Cache."""
    names = _namespace_names(self._survey()["subdbs"])
    stores = {}
    try:
        for name in names:
            stores[name] = self._open_namespace(name)
        total = sum(len(s) for s in stores.values())
        report = VerifyReport(self.path)
        done = 0
        for name, store in stores.items():
            count = 0
            after = None
            while True:
                chunk = store._maint("scan", after, 1024)
                count += chunk["records"]
                report.records += chunk["records"]
                report.expired += chunk["expired"]
                report.bytes += chunk["bytes"]
                for raw, why, exc in chunk["problems"]:
                    error = f"{type(exc).__name__}: {exc}" if exc is not None else None
                    report.problems.append(Problem(name, raw, why, error))
                done += chunk["records"]
                if progress is not None:
                    progress(done, max(total, done))
                if chunk["done"]:
                    break
                after = chunk["last"]
            report.namespaces[name] = count
        return report
    finally:
        for store in stores.values():
            if store is not self:
                store.close()


class CompactResult(NamedTuple):
    """Sizes of the data file before and after :meth:`Cache.compact`.

    ``*_bytes``: apparent size (what ``ls -l`` shows; LMDB extends the file to
    the map size, sparsely).  ``*_disk``: bytes allocated on disk (``du``).
    ``used_bytes``: the pages in use before (the high-water mark)."""

    before_bytes: int
    after_bytes: int
    before_disk: int
    after_disk: int
    used_bytes: int


class Problem(NamedTuple):
    """A damaged record found by :meth:`Cache.verify`."""

    namespace: Optional[str]  #: None for the default namespace
    key: bytes                #: the raw stored key (its encoding)
    reason: str
    error: Optional[str]      #: the exception decoding raised, if any

    def __str__(self) -> str:
        ns = "(default)" if self.namespace is None else self.namespace
        text = f"namespace {ns}, key {self.key!r}: {self.reason}"
        return f"{text} ({self.error})" if self.error else text


class VerifyReport:
    """What :meth:`Cache.verify` found: counts and the damaged records."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.records = 0           #: records walked (expired ones included)
        self.expired = 0           #: expired records not removed yet
        self.bytes = 0             #: bytes of keys and values walked
        self.namespaces: dict = {}  #: records per namespace (None = default)
        self.problems: list = []   #: :class:`Problem` per damaged record

    @property
    def ok(self) -> bool:
        """True when no record is damaged."""
        return not self.problems

    @property
    def damaged(self) -> int:
        return len(self.problems)

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return (f"VerifyReport(records={self.records}, expired={self.expired}, "
                f"damaged={self.damaged}, namespaces={len(self.namespaces)})")


def _namespace_names(subdbs: list) -> list:
    prefix = "__ns__:"
    return [None] + sorted(n[len(prefix):] for n in subdbs if n.startswith(prefix))


def _refuse_if_shared(path: str, survey: dict) -> None:
    pids = survey["other_pids"]
    if pids:
        more = " and more" if survey["pids_truncated"] else ""
        raise _core.LockError(
            f"cannot compact '{path}': other processes have it open (pid "
            f"{', '.join(map(str, pids))}{more}); stop them first, or take a compacted "
            "copy with copy(dest, compact=True)")
    if survey["env_refs"] > 2:  # this object's reference and the call's own
        raise _core.Error(
            f"cannot compact '{path}': other Cache objects of this process use it "
            "(namespaces, memoize, iterators); close them first")


def _copy_mode(src: str, dst: str) -> None:
    try:
        os.chmod(dst, os.stat(src).st_mode & 0o7777)
    except FileNotFoundError:
        pass


def _file_sizes(path: str) -> tuple:
    st = os.stat(path)
    return st.st_size, getattr(st, "st_blocks", 0) * 512 or st.st_size


def _swap_exclusive(path: str, new: str, data: str) -> None:
    """Replace *data* by *new* while no process has the environment open.

    Every process with the environment open holds a shared lock on the first
    byte of lock.mdb (LMDB's own liveness lock): taking it exclusively proves
    nobody has the file open, and makes openers wait until it is released.
    """
    with open(new, "rb+") as f:
        os.fsync(f.fileno())
    fd = os.open(os.path.join(path, "lock.mdb"), os.O_RDWR | os.O_CLOEXEC)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0, os.SEEK_SET)
        except OSError:
            raise _core.LockError(
                f"cannot compact '{path}': another process opened it during compaction; "
                "nothing was changed") from None
        if _mapped_here(data):
            raise _core.Error(
                f"cannot compact '{path}': this process opened it again during compaction "
                "(another thread?); nothing was changed")
        os.replace(new, data)
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        os.close(fd)


def _mapped_here(file: str) -> bool:
    """Whether this process maps *file* (Linux; False where unknown)."""
    try:
        with open("/proc/self/maps") as f:
            return any(line.rstrip("\n").endswith(" " + file) for line in f)
    except OSError:
        return False


class _Progress:
    """Calls progress(size of file, total) from a thread while a C call runs."""

    def __init__(self, callback: Optional[Callable[[int, int], None]], file: str,
                 total: int) -> None:
        self.callback, self.file, self.total = callback, file, max(total, 1)
        self.stop = threading.Event()
        self.thread: Optional[threading.Thread] = None

    def _size(self) -> int:
        try:
            return os.stat(self.file).st_size
        except OSError:
            return 0

    def _run(self) -> None:
        while not self.stop.wait(0.1):
            self.callback(min(self._size(), self.total), self.total)

    def __enter__(self) -> "_Progress":
        if self.callback is not None:
            self.callback(0, self.total)
            self.thread = threading.Thread(target=self._run, daemon=True,
                                           name="lmdbcache-progress")
            self.thread.start()
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if self.thread is not None:
            self.stop.set()
            self.thread.join()
            if exc_type is None:
                self.callback(self.total, self.total)

