"""lmdbcache: a fast, persistent, fork-safe cache for Python over LMDB.

    >>> import lmdbcache
    >>> cache = lmdbcache.Cache("~/.cache/myproj")
    >>> cache["answer"] = {"value": 42}
    >>> cache["answer"]
    {'value': 42}
"""
import sys as _sys

if _sys.platform == "win32":
    raise ImportError(
        "lmdbcache does not support Windows yet: it relies on fcntl file locks and "
        "fork hooks. It runs on Linux (tested) and macOS (expected to work). "
        "On Windows, use it under WSL."
    )

from . import _fork
from ._core import (
    FORMAT_VERSION,
    CorruptError,
    Error,
    FormatError,
    LockError,
    MapFullError,
    ReadOnlyError,
    SecretError,
    UnsafeCacheError,
    lmdb_version,
)
from .cache import Cache

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._maint import CompactResult, Problem, VerifyReport
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
    "UnsafeCacheError",
    "SecretError",
    "FORMAT_VERSION",
    "lmdb_version",
]

_fork.register()


def __getattr__(name: str):
    # memoize lives in .memo, which imports inspect, hashlib and threading:
    # loaded on first use, so that `import lmdbcache` stays cheap.
    if name == "memoize":
        from .memo import memoize

        globals()["memoize"] = memoize
        return memoize
    if name in ("CompactResult", "Problem", "VerifyReport"):
        from . import _maint

        globals()[name] = getattr(_maint, name)
        return globals()[name]
    if name == "Memory":
        from .contrib.joblib import Memory

        globals()["Memory"] = Memory
        return Memory
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {"memoize", "Memory", "CompactResult", "Problem", "VerifyReport"})
