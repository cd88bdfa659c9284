"""The public Cache class: options, validation, views and pickling in Python;
every mapping operation is a slot or method of the C base class Store."""
from __future__ import annotations

import os
from collections.abc import ItemsView, KeysView, MutableMapping, ValuesView
from typing import Any, Iterator

from . import _core

DEFAULT_MAP_SIZE = 1 << 30
MIN_SIZE_LIMIT = 1 << 16
_DURABILITY = ("process", "full")


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


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


class Cache(_core.Store, MutableMapping):
    """A persistent cache in the directory *path*, shared by processes and threads.

    ``Cache`` is a :class:`collections.abc.MutableMapping`: ``cache[key] = value``,
    ``cache[key]``, ``del cache[key]``, ``key in cache``, ``len(cache)``, iteration,
    and the ``keys()``/``values()``/``items()`` views behave as for a dict, except that
    iteration follows the stored key order, not insertion order.

    Keys are ``str``, ``bytes``, ``int``, tuples of keys, or any other picklable
    hashable object.  Keys are equal when their encodings are: ``1``, ``1.0`` and
    ``True`` are three different keys.  Values are any picklable object; ``bytes``,
    ``str``, ``int``, ``float``, ``None`` and ``bool`` are stored without pickle.

    Options (keyword-only):

    map_size
        Bytes of address space reserved up front (default 1 GiB).  The file only
        grows as data is written, and the reservation doubles automatically when
        full, in every process using the cache.
    size_limit
        Maximum size of the data file in bytes, or ``None`` (default) for no limit.
        A write that would grow the file past it raises :class:`MapFullError`;
        reads keep working and deleting entries makes room.  Deletions may use a
        reserve of up to 1 MiB beyond the limit, so a full cache can always be
        emptied.
    readonly
        Open an existing cache for reading only; writes raise
        :class:`ReadOnlyError`.
    durability
        ``"process"`` (default): a committed write survives the crash of any
        process, but not necessarily an OS crash or power loss (LMDB ``MDB_NOSYNC``).
        ``"full"``: every write is flushed to disk before it returns (fsync).
    max_readers
        Size of LMDB's reader table (default 1024): how many read transactions all
        processes together may hold at once.  Slots of killed processes are reclaimed.

    A ``Cache`` can be closed and is a context manager; using it after ``close()``
    reopens it.  It may be created before ``fork()`` and used in parent and child
    alike, and pickles as its path and options, so it can be passed to
    ``multiprocessing`` workers of every start method.
    """

    def __init__(
        self,
        path: str | os.PathLike = "~/.cache/lmdbcache",
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        size_limit: int | None = None,
        readonly: bool = False,
        durability: str = "process",
        max_readers: int = 1024,
    ) -> None:
        path = os.path.abspath(os.path.expanduser(os.fspath(path)))
        map_size = _positive_int("map_size", map_size)
        if size_limit is not None:
            size_limit = _positive_int("size_limit", size_limit, MIN_SIZE_LIMIT)
        max_readers = _positive_int("max_readers", max_readers)
        if durability not in _DURABILITY:
            raise ValueError(f"durability must be 'process' or 'full', got {durability!r}")
        readonly = bool(readonly)
        if os.path.exists(path) and not os.path.isdir(path):
            raise NotADirectoryError(
                f"cache path {path!r} exists and is not a directory"
            )
        if not readonly:
            os.makedirs(path, mode=0o700, exist_ok=True)
        self._options = {
            "map_size": map_size,
            "size_limit": size_limit,
            "readonly": readonly,
            "durability": durability,
            "max_readers": max_readers,
        }
        super().__init__(
            path,
            map_size=map_size,
            size_limit=size_limit or 0,
            readonly=readonly,
            sync=durability == "full",
            max_readers=max_readers,
        )

    # -- options and identity -------------------------------------------------

    @property
    def options(self) -> dict:
        """The options this cache was opened with."""
        return dict(self._options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    def __reduce__(self):
        # Pickles as path + options: a process that unpickles it opens its own
        # environment (spawn, forkserver, and Pool arguments under fork).
        return (_rebuild, (type(self), self.path, self._options))

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

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

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (Cache, MutableMapping, dict)) and not hasattr(other, "items"):
            return NotImplemented
        return MutableMapping.__eq__(self, other)

    __hash__ = None  # type: ignore[assignment]


def _rebuild(cls, path, options):
    return cls(path, **options)
