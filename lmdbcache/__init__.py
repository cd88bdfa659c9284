"""lmdbcache: a fast, persistent, fork-safe cache for Python over LMDB.

    >>> import lmdbcache
    >>> cache = lmdbcache.Cache("~/.cache/myproj")
    >>> cache["answer"] = {"value": 42}
    >>> cache["answer"]
    {'value': 42}
"""
from . import _fork
from ._core import (
    FORMAT_VERSION,
    CorruptError,
    Error,
    FormatError,
    LockError,
    MapFullError,
    ReadOnlyError,
    lmdb_version,
)
from .cache import Cache, CompactResult, Problem, VerifyReport
from .contrib.joblib import Memory
from .memo import memoize

LMDBCache = Cache  # the name used by the document lmdbcache grew from

__version__ = "0.1.0"

__all__ = [
    "Cache",
    "LMDBCache",
    "memoize",
    "Memory",
    "VerifyReport",
    "Problem",
    "CompactResult",
    "Error",
    "MapFullError",
    "ReadOnlyError",
    "CorruptError",
    "LockError",
    "FormatError",
    "FORMAT_VERSION",
    "lmdb_version",
]

_fork.register()
