"""The public Cache class: options, validation, views, namespaces, transactions,
async wrappers and the durability guard in Python; every mapping and cache
operation is a slot or method of the C base class Store."""
from __future__ import annotations

# `import lmdbcache` stays cheap (a few ms): modules the hot path does not need
# (asyncio, warnings) are imported where they are used.
import math
import os
from collections.abc import ItemsView, Iterable, KeysView, Mapping, MutableMapping, ValuesView

from . import _core

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Iterator, Optional

    from typing import ParamSpec, TypeVar, overload

    from ._maint import CompactResult, VerifyReport
    from .memo import Memoized

    _P = ParamSpec("_P")
    _R = TypeVar("_R")

DEFAULT_MAP_SIZE = 2 << 20
MIN_SIZE_LIMIT = 1 << 16
MAX_NAMESPACE_BYTES = 200
_DURABILITY = ("process", "full")
_ON_INCOMPATIBLE = ("raise", "reset")
_POLICIES = {"none": 0, "least-recently-stored": 1, "least-recently-used": 2}
_MISSING = object()


class _KeysView(KeysView):
    __slots__ = ()

    def __iter__(self) -> Iterator[Any]:
        return self._mapping._iter(0)


class _ValuesView(ValuesView):
    __slots__ = ()

    def __iter__(self) -> Iterator[Any]:
        return self._mapping._iter(1)


class _ItemsView(ItemsView):
    __slots__ = ()

    def __iter__(self) -> Iterator[tuple]:
        return self._mapping._iter(2)


def _positive_int(name: str, value: Any, minimum: int = 1, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}{why}, got {value}")
    return value


def _check_ttl(ttl: Any) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"ttl must be a number of seconds or None, not {type(ttl).__name__}")
    if not ttl > 0 or math.isinf(ttl):
        raise ValueError(f"ttl must be a positive, finite number of seconds, got {ttl!r}")
    return float(ttl)


class _Internal(str):
    """The name of a namespace lmdbcache itself uses (e.g. memoize's)."""

    __slots__ = ()


def _check_namespace(name: Any) -> str:
    if isinstance(name, _Internal):
        return name
    if not isinstance(name, str):
        raise TypeError(f"namespace name must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError("namespace name must not be empty")
    if name.startswith("__"):
        raise ValueError(f"namespace names starting with '__' are reserved: {name!r}")
    if "\0" in name or len(name.encode("utf-8", "surrogatepass")) > MAX_NAMESPACE_BYTES:
        raise ValueError(
            f"namespace name must be at most {MAX_NAMESPACE_BYTES} UTF-8 bytes without NUL: {name!r}"
        )
    return name


# -- serializers, compression, secret ------------------------------------------------
# The C core decodes a serialized payload by its record tag with loads[kind]
# (kind: 0 pickle, 1 json, 2 msgpack, 3 custom; None refuses such records).

_SERIALIZER_KINDS = {"pickle": 0, "json": 1, "msgpack": 2}
SECRET_ENV = "LMDBCACHE_SECRET"


def _lazy_json_loads(data: bytes) -> Any:
    import json

    return json.loads(data)


def _msgpack_codec() -> tuple:
    """(dumps, loads) of msgspec, else of msgpack; ImportError naming the extra."""
    try:
        import msgspec.msgpack as mm
    except ImportError:
        pass
    else:
        return mm.Encoder().encode, mm.Decoder().decode
    try:
        import msgpack
    except ImportError:
        raise ImportError(
            "serializer='msgpack' needs msgspec or msgpack: pip install 'lmdbcache[msgpack]'"
        ) from None
    import functools

    return (
        functools.partial(msgpack.packb, use_bin_type=True),
        functools.partial(msgpack.unpackb, raw=False, strict_map_key=False),
    )


def _lazy_msgpack_loads(data: bytes) -> Any:
    try:
        loads = _msgpack_codec()[1]
    except ImportError as exc:
        raise _core.Error(f"a record was written with serializer='msgpack': {exc}") from None
    return loads(data)


def _zstd() -> Any:
    """A module with compress(data, level=) and decompress(data): the zstandard
    package, else the standard library's compression.zstd (Python 3.14+);
    None when neither is there.  Both make a context per call (thread-safe)."""
    try:
        import zstandard

        return zstandard
    except ImportError:
        pass
    try:
        from compression import zstd  # type: ignore[import-not-found]

        return zstd
    except ImportError:
        return None


def _zstd_decompress(data: bytes) -> bytes:
    zstd = _zstd()
    if zstd is None:
        raise _core.Error(
            "a record is zstd-compressed and the zstandard package is not installed: "
            "pip install 'lmdbcache[zstd]'"
        )
    return zstd.decompress(data)


def _codec_kwargs(serializer: Any, compress: Any, threshold: Any) -> dict:
    """The Store arguments for serializer=, compress= and compress_threshold=."""
    loads: list = [None, _lazy_json_loads, _lazy_msgpack_loads, None]
    dumps = None
    if isinstance(serializer, str):
        if serializer not in _SERIALIZER_KINDS:
            raise ValueError(
                "serializer must be 'pickle', 'json', 'msgpack' or an object with dumps and "
                f"loads, got {serializer!r}"
            )
        kind = _SERIALIZER_KINDS[serializer]
        if serializer == "json":
            import json

            dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
            loads[1] = json.loads
        elif serializer == "msgpack":
            dumps, loads[2] = _msgpack_codec()
    else:
        if not callable(getattr(serializer, "dumps", None)) or not callable(
            getattr(serializer, "loads", None)
        ):
            raise TypeError(
                "serializer must be 'pickle', 'json', 'msgpack' or an object with callable "
                f"dumps(value) -> bytes and loads(bytes) -> value, not {type(serializer).__name__}"
            )
        kind = 3
        dumps, loads[3] = serializer.dumps, serializer.loads
    if compress not in (None, "zstd"):
        raise ValueError(f"compress must be None or 'zstd', got {compress!r}")
    threshold = _positive_int("compress_threshold", threshold, 0)
    zc = None
    if compress == "zstd":
        zstd = _zstd()
        if zstd is None:
            raise ImportError(
                "compress='zstd' needs the zstandard package (or Python 3.14's "
                "compression.zstd): pip install 'lmdbcache[zstd]'"
            )
        import functools

        zc = functools.partial(zstd.compress, level=3)
    return dict(serializer=kind, dumps=dumps, loads=tuple(loads), compress=zc,
                decompress=_zstd_decompress, compress_threshold=threshold)


def _secret_bytes(secret: Any) -> bytes | None:
    """secret= as bytes (str: UTF-8), else LMDBCACHE_SECRET from the environment."""
    if secret is None:
        env = os.environ.get(SECRET_ENV)
        if not env:
            return None
        secret = env
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if not isinstance(secret, (bytes, bytearray, memoryview)):
        raise TypeError(f"secret must be bytes or str, not {type(secret).__name__}")
    secret = bytes(secret)
    if len(secret) < 16:
        raise ValueError("secret must be at least 16 bytes (use secrets.token_bytes(32))")
    return secret


def boot_id() -> str | None:
    """This boot of the machine, as the durability guard sees it.

    ``LMDBCACHE_BOOT_ID`` overrides it (for tests that simulate a reboot).
    ``None`` where the OS does not tell (the guard is then off).
    """
    override = os.environ.get("LMDBCACHE_BOOT_ID")
    if override:
        return override
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _makedirs_private(path: str) -> None:
    """Create *path* and its missing parents, each mode 0700 whatever the umask
    (os.makedirs applies its mode to the last directory only, and through the
    umask).  Existing directories are left as they are."""
    missing = []
    head = path
    while head and not os.path.isdir(head):
        missing.append(head)
        parent = os.path.dirname(head)
        if parent == head:
            break
        head = parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            if not os.path.isdir(d):
                raise
            continue  # made by a concurrent opener: its own mode stands
        os.chmod(d, 0o700)


class Cache(_core.Store, MutableMapping):
    """A persistent cache in the directory *path*, shared by processes and threads.

    ``Cache`` is a :class:`collections.abc.MutableMapping`: ``cache[key] = value``,
    ``cache[key]``, ``del cache[key]``, ``key in cache``, ``len(cache)``, iteration,
    and the ``keys()``/``values()``/``items()`` views behave as for a dict, except that
    iteration follows the stored key order, not insertion order.

    Keys are ``str``, ``bytes``, ``int``, ``float``, ``bool``, ``None``, tuples and
    frozensets of keys, or (with the pickle serializer) any other picklable
    hashable object.  Keys are equal when their encodings are: ``1``, ``1.0`` and
    ``True`` are three different keys.  Values are any picklable object; ``bytes``,
    ``str``, ``int``, ``float``, ``None`` and ``bool`` are stored without pickle.

    Options (keyword-only):

    map_size
        Bytes of address space mapped at first (default 2 MiB, or the file's size
        if larger).  The map doubles automatically when full, in every process
        using the cache, so the file's apparent size (``ls -l``) stays within
        about twice the data.
    size_limit
        Maximum bytes of stored data, or ``None`` (default) for no limit.  What
        happens at the limit is set by *eviction_policy*.
    eviction_policy
        ``"least-recently-stored"`` (default): the oldest-stored entries are
        evicted to make room.  ``"least-recently-used"``: entries read least
        recently go first (reads are recorded per process and written with the
        process's next write, never a write per read).  ``"none"``: a write that
        does not fit raises :class:`MapFullError`.
    ttl
        Default time-to-live in seconds for entries stored through this object
        (``None``: entries do not expire).
    readonly
        Open an existing cache for reading only; writes raise
        :class:`ReadOnlyError`.
    durability
        ``"process"`` (default): a committed write survives the crash of any
        process.  After an OS crash or power loss the cache detects that it may be
        torn, moves the file aside and starts empty (with a warning).
        ``"full"``: every write is flushed to disk before it returns (fsync).
    timeout
        Seconds an open waits for another process that holds the cache's
        ``guard.lock`` or LMDB's exclusive lock on ``lock.mdb`` (default 60)
        before raising :class:`LockError`.  A write waiting for another
        process's write transaction (LMDB's writer mutex) is not bounded.
    on_incompatible
        What to do with a cache written by an LMDB release of another data format
        (LMDB 0.9 and 1.0 cannot read each other's files): ``"raise"`` (default)
        raises :class:`FormatError` naming both versions; ``"reset"`` moves
        ``data.mdb`` and ``lock.mdb`` aside to ``<path>/incompatible-<time>/``
        with a :class:`RuntimeWarning` and starts an empty cache.
    readahead
        ``False`` (default): LMDB maps the file without the kernel's readahead
        (``MDB_NORDAHEAD``), so a cold open or a random read of a big cache
        reads only the pages it touches; a scan of the whole file (iteration
        past the first 64 entries, ``clear()``, ``expire()``) first reads the
        file sequentially, at most once a minute.  ``True``: the kernel's
        readahead (faster scans of a cold file, slower cold opens and reads).
    allow_shared
        ``False`` (default): the open raises :class:`UnsafeCacheError` when the
        cache directory, ``data.mdb``, ``lock.mdb``, ``guard.lock`` or ``unsynced``
        is writable by group or others or owned by another user (root excepted),
        since whoever can write the cache can run code in this process through
        pickle.  ``True``: use such a directory deliberately, trusting every user
        who can write it (symlinked files are refused either way).  See the
        Security page of the documentation.
    secret
        ``bytes`` or ``str`` (at least 16 bytes), default the environment
        variable ``LMDBCACHE_SECRET`` if set: every record carries a keyed
        BLAKE2b MAC over its namespace, key, flags, expiry and value, and a
        record that fails it raises :class:`CorruptError` unread (never
        unpickled).  A signed cache opened without its secret, or with another,
        raises :class:`SecretError`.
    serializer
        ``"pickle"`` (default), ``"json"``, ``"msgpack"`` (needs
        ``lmdbcache[msgpack]``) or an object with ``dumps(value) -> bytes`` and
        ``loads(bytes) -> value``, for values other than bytes/str/int/float/
        None/bool.  With anything but pickle nothing read is ever unpickled:
        pickled records are refused (:class:`CorruptError`), keys must be
        str/bytes/int/float/bool/None or tuples and frozensets of them, and a
        value the serializer cannot encode is a ``TypeError``.
    compress
        ``None`` (default) or ``"zstd"`` (needs ``lmdbcache[zstd]``, or Python
        3.14's ``compression.zstd``): payloads
        of at least ``compress_threshold`` bytes (default 4096) are stored
        compressed when that makes them smaller.  Every cache reads them.
    max_readers
        Size of LMDB's reader table (default 1024): how many processes and
        threads may read at once.  Slots of killed processes are reclaimed.
    namespace
        Name of an independent keyspace in the same file (see :meth:`namespace`).
    remote
        A ``redis://`` / ``rediss://`` / ``unix://`` URL or a ``redis.Redis``
        client: a shared Redis behind this node-local cache (needs
        ``lmdbcache[redis]``).  Local hits stay local; misses and writes go
        through Redis, and writes invalidate the other machines' copies.  With
        it: ``remote_prefix`` (default ``"lmdbcache:"``), ``remote_errors``
        (``"local"`` or ``"raise"``) and ``remote_timeout`` (seconds, default
        0.25).  See the guide "Many machines".

    A ``Cache`` can be closed and is a context manager; using it after ``close()``
    reopens it.  It may be created before ``fork()`` and used in parent and child
    alike, and pickles as its path and options, so it can be passed to
    ``multiprocessing`` workers of every start method.
    """

    def __new__(cls, *args: Any, remote: Any = None, **kwargs: Any) -> "Cache":
        if remote is not None and not getattr(cls, "_is_remote", False):
            from .remote import RemoteCache

            cls = RemoteCache
        return super().__new__(cls)

    def __init__(
        self,
        path: str | os.PathLike = "~/.cache/lmdbcache",
        *,
        remote: Any = None,
        map_size: int = DEFAULT_MAP_SIZE,
        size_limit: int | None = None,
        eviction_policy: str = "least-recently-stored",
        ttl: float | None = None,
        readonly: bool = False,
        durability: str = "process",
        max_readers: int = 1024,
        namespace: str | None = None,
        timeout: float = 60.0,
        on_incompatible: str = "raise",
        readahead: bool = False,
        allow_shared: bool = False,
        secret: bytes | str | None = None,
        serializer: Any = "pickle",
        compress: str | None = None,
        compress_threshold: int = 4096,
    ) -> None:
        if remote is not None and not getattr(self, "_is_remote", False):
            raise TypeError("remote= needs Cache itself (or lmdbcache.remote.RemoteCache)")
        path = os.path.abspath(os.path.expanduser(os.fspath(path)))
        map_size = _positive_int("map_size", map_size)
        if size_limit is not None:
            size_limit = _positive_int(
                "size_limit", size_limit, MIN_SIZE_LIMIT, " bytes (16 LMDB pages)"
            )
        if eviction_policy not in _POLICIES:
            raise ValueError(
                f"eviction_policy must be one of {sorted(_POLICIES)}, got {eviction_policy!r}"
            )
        ttl = _check_ttl(ttl)
        max_readers = _positive_int("max_readers", max_readers)
        if durability not in _DURABILITY:
            raise ValueError(f"durability must be 'process' or 'full', got {durability!r}")
        if namespace is not None:
            namespace = _check_namespace(namespace)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
        if not timeout >= 0 or math.isinf(timeout):
            raise ValueError(f"timeout must be a finite number of seconds >= 0, got {timeout!r}")
        if on_incompatible not in _ON_INCOMPATIBLE:
            raise ValueError(
                f"on_incompatible must be 'raise' or 'reset', got {on_incompatible!r}"
            )
        readonly = bool(readonly)
        readahead = bool(readahead)
        if os.path.exists(path) and not os.path.isdir(path):
            raise NotADirectoryError(f"cache path {path!r} exists and is not a directory")
        allow_shared = bool(allow_shared)
        codec = _codec_kwargs(serializer, compress, compress_threshold)
        secret_bytes = _secret_bytes(secret)
        if not readonly:
            _makedirs_private(path)
        self._options = {
            "map_size": map_size,
            "size_limit": size_limit,
            "eviction_policy": eviction_policy,
            "ttl": ttl,
            "readonly": readonly,
            "durability": durability,
            "max_readers": max_readers,
            "namespace": namespace,
            "timeout": timeout,
            "on_incompatible": on_incompatible,
            "readahead": readahead,
            "allow_shared": allow_shared,
            "secret": secret,  # as given: from LMDBCACHE_SECRET, each process reads its own
            "serializer": serializer,
            "compress": compress,
            "compress_threshold": compress_threshold,
        }
        kwargs = dict(
            map_size=map_size,
            size_limit=size_limit or 0,
            readonly=readonly,
            sync=durability == "full",
            max_readers=max_readers,
            namespace=namespace or "",
            ttl=ttl or 0.0,
            eviction_policy=_POLICIES[eviction_policy],
            boot_id=boot_id(),
            timeout=timeout,
            on_incompatible=on_incompatible,
            readahead=readahead,
            allow_shared=allow_shared,
            secret=secret_bytes,
            **codec,
        )
        self._store_kwargs = kwargs
        # The C core runs the torn-file guard (under guard.lock) on every open
        # of the environment, including a lazy reopen after close().
        super().__init__(path, **kwargs)

    # -- options and identity -------------------------------------------------

    @property
    def options(self) -> dict:
        """The options this cache was opened with (a secret shows as ``"<hidden>"``)."""
        options = dict(self._options)
        if options["secret"] is not None:
            options["secret"] = "<hidden>"
        return options

    def __repr__(self) -> str:
        ns = self._options["namespace"]
        extra = f", namespace={ns!r}" if ns else ""
        return f"{type(self).__name__}({self.path!r}{extra})"

    def __reduce__(self):
        # Pickles as path + options: a process that unpickles it opens its own
        # environment (spawn, forkserver, and Pool arguments under fork).
        return (_rebuild, (type(self), self.path, self._options))

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def namespace(self, name: str) -> "Cache":
        """An independent keyspace *name* in the same file, as a ``Cache``.

        Namespaces share the file, its options and its ``size_limit``, but not keys:
        ``clear()``, ``len()`` and iteration see one namespace only.  A
        ``transaction()`` covers every namespace of the file.  Names are non-empty
        str of at most 200 UTF-8 bytes; names starting with ``"__"`` are reserved.
        """
        options = dict(self._options, namespace=_check_namespace(name))
        return type(self)(self.path, **options)

    def _internal_namespace(self, name: str) -> "Cache":
        options = dict(self._options, namespace=_Internal(name), ttl=None)
        return type(self)(self.path, **options)

    if TYPE_CHECKING:
        @overload
        def memoize(
            self,
            func: Callable[_P, _R],
            *,
            ttl: float | None = None,
            ignore: tuple | list = (),
            typed: bool = False,
            stampede: bool = False,
            lease_timeout: float = 60.0,
            key: Callable[..., Any] | None = None,
        ) -> Memoized[_P, _R]: ...

        @overload
        def memoize(
            self,
            func: None = None,
            *,
            ttl: float | None = None,
            ignore: tuple | list = (),
            typed: bool = False,
            stampede: bool = False,
            lease_timeout: float = 60.0,
            key: Callable[..., Any] | None = None,
        ) -> Callable[[Callable[_P, _R]], Memoized[_P, _R]]: ...

    def memoize(
        self,
        func: Any = None,
        *,
        ttl: float | None = None,
        ignore: tuple | list = (),
        typed: bool = False,
        stampede: bool = False,
        lease_timeout: float = 60.0,
        key: Any = None,
    ) -> Any:
        """Decorator: cache a function's results here.  See :func:`lmdbcache.memoize`."""
        from .memo import memoize

        return memoize(self, func, ttl=ttl, ignore=ignore, typed=typed, stampede=stampede,
                       lease_timeout=lease_timeout, key=key)

    def expire_time(self, key: Any) -> float | None:
        """The absolute time (``time.time()`` scale) at which *key*'s entry
        expires, or ``None`` when it never does; ``KeyError`` when *key* is
        missing or expired."""
        return self._expire_time(key)

    # -- mapping protocol beyond the C slots ----------------------------------

    def keys(self) -> KeysView:
        return _KeysView(self)

    def values(self) -> ValuesView:
        return _ValuesView(self)

    def items(self) -> ItemsView:
        return _ItemsView(self)

    def popitem(self) -> tuple:
        """Remove and return some (key, value) pair; KeyError when empty."""
        while True:
            try:
                key = next(self._iter(0))
            except StopIteration:
                raise KeyError("popitem(): cache is empty") from None
            try:
                return key, self.pop(key)
            except KeyError:
                continue  # another process removed it first

    def update(self, other: Any = (), /, **kwds: Any) -> None:
        """Store every pair of *other* and *kwds*, in one transaction."""
        pairs = _pairs(other)
        if kwds:
            pairs = list(pairs)
            pairs.extend(kwds.items())
        self._set_many(pairs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return dict(self.items()) == dict(other.items())

    __hash__ = None  # type: ignore[assignment]

    # -- cache operations -------------------------------------------------------

    def set_many(self, mapping: Mapping | Iterable[tuple], ttl: float | None = None) -> None:
        """Store every (key, value) of *mapping* (or of an iterable of pairs) in one
        transaction: all or none are stored."""
        self._set_many(_pairs(mapping), ttl)

    def decr(self, key: Any, delta: int = 1, default: int = 0) -> int:
        """Subtract *delta* from the int under *key* (atomically); see :meth:`incr`."""
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise TypeError(f"delta must be an int, not {type(delta).__name__}")
        return self.incr(key, -delta, default)

    def transaction(self) -> Any:
        """``with cache.transaction():`` — every write inside commits together, or
        none does if the block raises.  Reads inside see the transaction's writes.

        The transaction belongs to the calling thread and holds the cache's write
        lock until it ends: other writers (threads and processes) wait.  It covers
        every namespace of the file.  Nested blocks join the outer transaction.
        The context manager is implemented in C, so an asynchronous exception
        (``KeyboardInterrupt`` from a signal) cannot leave it half-open.
        """
        return _core.Store.transaction(self)

    def info(self) -> dict:
        """Facts about the cache: entries, bytes, map size, readers, path, options."""
        env = self._env_info()
        return {
            "path": self.path,
            "namespace": self._options["namespace"],
            "entries": len(self),
            "bytes": env["namespace_bytes"],
            "file_bytes": env["used_bytes"],
            "map_size": env["map_size"],
            "page_size": env["page_size"],
            "readers": env["readers"],
            "max_readers": env["max_readers"],
            "options": self.options,
        }

    # -- maintenance -------------------------------------------------------------

    def _survey(self) -> dict:
        return self._maint("survey")

    def namespaces(self, internal: bool = False) -> list:
        """Names of the namespaces stored in the file (the default namespace,
        ``None``, first).  With *internal*, also the ones lmdbcache itself uses
        (names starting with ``"__"``, e.g. memoize's)."""
        from ._maint import _namespace_names

        names = _namespace_names(self._survey()["subdbs"])
        if not internal:
            names = [n for n in names if n is None or not n.startswith("__")]
        return names

    def _open_namespace(self, name: Optional[str]) -> "Cache":
        """A Cache on namespace *name* of this file (None: the default one)."""
        if name == self._options["namespace"]:
            return self
        if name is not None and name.startswith("__"):
            name = _Internal(name)
        return Cache(self.path, **dict(self._options, namespace=name, ttl=None))

    def copy(self, dest: str | os.PathLike, compact: bool = False, *,
             progress: Callable[[int, int], None] | None = None) -> None:
        """Write a consistent snapshot of the whole cache (every namespace) into
        the directory *dest*, created when missing; it must not hold a cache yet.

        Other threads and processes keep reading and writing meanwhile: the copy
        is the state of one moment (LMDB's ``mdb_env_copy2``).  With *compact*,
        free pages are left out and the copy is as small as the data allows.
        The copy is flushed to disk before this returns.

        *progress*, when given, is called from another thread as
        ``progress(bytes_written, bytes_expected)`` while the copy runs.
        """
        from . import _maint

        _maint.copy(self, dest, compact, progress)

    def compact(self, *, progress: Callable[[int, int], None] | None = None) -> CompactResult:
        """Rewrite the data file without its free pages and swap it in: the
        file on disk shrinks to what the data needs (an LMDB file never shrinks
        by itself).

        Compaction must not lose a write, so it refuses (:class:`LockError`)
        while any other process has the cache open, and (:class:`Error`) while
        other ``Cache`` objects of this process share it (namespaces, memoize)
        or inside a transaction.  The swap happens with this process's
        environment closed: this object reopens it on its next use.  Writers
        opening the cache meanwhile wait for the swap; one that appears before
        the swap makes compaction give up with nothing changed.  Do not use the
        cache from other threads while it runs.

        Returns the sizes before and after (:class:`CompactResult`).
        """
        from . import _maint

        return _maint.compact(self, progress)

    def verify(self, *, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
        """Walk every record of every namespace of the file, decode its key and
        value, and report the damaged ones (:class:`VerifyReport`).  Values are
        unpickled, so this runs the same code a read would.

        *progress*, when given, is called as ``progress(records_done, records)``.
        """
        from . import _maint

        return _maint.verify(self, progress)

    # -- asyncio -------------------------------------------------------------------

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self._in_txn():
            # inside this thread's transaction(): another thread would wait for
            # the write lock this thread holds
            return fn(*args, **kwargs)
        import asyncio  # here, not at the top: importing asyncio costs ~30 ms

        return await asyncio.to_thread(fn, *args, **kwargs)

    async def aget(self, key: Any, default: Any = None) -> Any:
        """``get`` without blocking the event loop."""
        return await self._run(self.get, key, default)

    async def aset(self, key: Any, value: Any, ttl: float | None = None) -> None:
        """``set`` in a worker thread: waiting for another process's write lock
        never blocks the event loop."""
        return await self._run(self.set, key, value, ttl=ttl)

    async def adelete(self, key: Any) -> bool:
        return await self._run(self.delete, key)

    async def aadd(self, key: Any, value: Any, ttl: float | None = None) -> bool:
        return await self._run(self.add, key, value, ttl=ttl)

    async def aincr(self, key: Any, delta: int = 1, default: int = 0) -> int:
        return await self._run(self.incr, key, delta, default)

    async def adecr(self, key: Any, delta: int = 1, default: int = 0) -> int:
        return await self._run(self.decr, key, delta, default)

    async def apop(self, key: Any, default: Any = _MISSING) -> Any:
        if default is _MISSING:
            return await self._run(self.pop, key)
        return await self._run(self.pop, key, default)

    async def atouch(self, key: Any, ttl: float | None = None) -> bool:
        return await self._run(self.touch, key, ttl=ttl)

    async def acontains(self, key: Any) -> bool:
        return await self._run(self.__contains__, key)

    async def aget_many(self, keys: Iterable) -> dict:
        return await self._run(self.get_many, list(keys))

    async def aset_many(self, mapping: Any, ttl: float | None = None) -> None:
        return await self._run(self.set_many, mapping, ttl)

    async def adelete_many(self, keys: Iterable) -> int:
        return await self._run(self.delete_many, list(keys))

    async def aexpire(self) -> int:
        return await self._run(self.expire)

    async def aclear(self) -> None:
        return await self._run(self.clear)


def _pairs(other: Any) -> Any:
    """(key, value) pairs of a mapping, of anything with keys(), or the iterable
    of pairs itself (the C side takes any iterable of 2-tuples or 2-lists)."""
    if isinstance(other, Mapping):
        return list(other.items())
    if hasattr(other, "keys"):
        return [(k, other[k]) for k in other.keys()]
    return other


def _rebuild(cls, path, options):
    return cls(path, **options)


# -- maintenance helpers -----------------------------------------------------------
