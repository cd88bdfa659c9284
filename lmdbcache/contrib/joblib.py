"""``lmdbcache.Memory``: joblib.Memory's ``cache()`` interface over an lmdbcache
Cache, so code written for joblib (scikit-learn's ``Pipeline(memory=...)`` and
everything else that goes through ``sklearn.utils.validation.check_memory``)
stores results in one LMDB file shared by every process.

    from sklearn.pipeline import Pipeline
    pipe = Pipeline(steps, memory=lmdbcache.Memory("~/.cache/pipelines"))

Results are keyed like :func:`lmdbcache.memoize` keys them: the function's
module and qualified name, a fingerprint of its code, and the arguments (large
ones, such as arrays and estimators, by a 128-bit non-cryptographic hash of
their pickle, ``_core._hash128``; NumPy arrays by dtype, shape and content).  It needs neither joblib nor scikit-learn.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Optional

from ..cache import Cache
from ..memo import memoize


class Memory:
    """A joblib.Memory-like object: ``Memory(location).cache(func, ignore=[...])``.

    *location* is the cache directory (created when missing).  *ttl* bounds how
    long a result stays valid (seconds, ``None``: until the code changes).
    Other keyword arguments are :class:`lmdbcache.Cache` options (e.g.
    ``size_limit``).  *verbose* is accepted for joblib compatibility and
    ignored.
    """

    def __init__(self, location: str | os.PathLike, *, ttl: Optional[float] = None,
                 verbose: int = 0, **cache_options: Any) -> None:
        self._cache = location if isinstance(location, Cache) else Cache(location,
                                                                          **cache_options)
        self.location = self._cache.path
        self.ttl = ttl
        self.verbose = verbose

    def cache(self, func: Optional[Callable] = None, ignore: Optional[Iterable[str]] = None,
              verbose: Optional[int] = None, mmap_mode: Optional[str] = None,
              cache_validation_callback: Any = None) -> Callable:
        """Decorate *func* so that its results are stored in this cache.

        *ignore*: names of arguments left out of the key.  *verbose* and
        *mmap_mode* are accepted for joblib compatibility and ignored;
        *cache_validation_callback* is not supported (use *ttl*).

        The returned function has joblib's ``check_call_in_cache(*args,
        **kwargs)``, ``clear()`` and ``func``, besides memoize's
        ``cache_info()``/``lookup()``.
        """
        if cache_validation_callback is not None:
            raise NotImplementedError(
                "lmdbcache.Memory does not support cache_validation_callback; use ttl=")
        if func is None:
            return lambda f: self.cache(f, ignore=ignore, verbose=verbose,
                                        mmap_mode=mmap_mode)
        wrapper = memoize(self._cache, func, ttl=self.ttl, ignore=tuple(ignore or ()))
        wrapper.clear = wrapper.cache_clear
        wrapper.func = func
        return wrapper

    def clear(self, warn: bool = True) -> None:
        """Delete every stored result (of every function) in this cache."""
        self._cache._internal_namespace("__memo__").clear()

    def reduce_size(self, *args: Any, **kwargs: Any) -> None:
        """Remove expired results (the size is bounded by the cache's size_limit)."""
        self._cache._internal_namespace("__memo__").expire()

    def eval(self, func: Callable, *args: Any, **kwargs: Any) -> Any:
        """``func(*args, **kwargs)``, through the cache."""
        return self.cache(func)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Memory(location={self.location!r})"

    def __reduce__(self):
        return (_rebuild, (self._cache, self.ttl, self.verbose))


def _rebuild(cache: Cache, ttl: Optional[float], verbose: int) -> Memory:
    return Memory(cache, ttl=ttl, verbose=verbose)
