"""A dogpile.cache backend over an lmdbcache Cache.

Registered under the entry point name ``lmdbcache``::

    from dogpile.cache import make_region

    region = make_region().configure(
        "lmdbcache",
        expiration_time=3600,
        arguments={"path": "/var/cache/myapp", "size_limit": 1 << 30},
    )

Arguments: ``path`` (required), the :class:`lmdbcache.Cache` options
``map_size``, ``size_limit``, ``eviction_policy``, ``durability``,
``namespace``, ``ttl`` (a hard expiry the cache enforces, on top of dogpile's
own ``expiration_time``), and for the mutex ``lock_timeout`` (seconds a held
lock lasts if its holder dies without releasing it; default 300) and
``distributed_lock`` (default True: the mutex works across processes; False
uses dogpile's in-process lock).  Other arguments are ignored.

The mutex is an atomic ``add`` of the lock key into the internal namespace
``__dogpile_locks__``: exactly one caller, in any thread or process, adds it.
It holds a token unique to the holder, so a release never frees another's lock.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any, Mapping, Optional, Sequence

from dogpile.cache.api import NO_VALUE, CacheBackend, CacheMutex

from ..cache import Cache

_CACHE_OPTIONS = ("map_size", "size_limit", "eviction_policy", "durability", "namespace",
                  "ttl", "max_readers")


class LMDBMutex(CacheMutex):
    """A lock shared by every process using the cache (atomic ``add``)."""

    def __init__(self, locks: Cache, key: Any, timeout: float) -> None:
        self._locks = locks
        self._key = key
        self._timeout = timeout
        self._token: Optional[str] = None

    def acquire(self, wait: bool = True) -> bool:
        token = f"{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex}"
        delay = 0.001
        while True:
            if self._locks.add(self._key, token, ttl=self._timeout):
                self._token = token
                return True
            if not wait:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def release(self) -> None:
        token, self._token = self._token, None
        if token is None:
            raise RuntimeError("release of an unacquired lmdbcache mutex")
        with self._locks.transaction():
            if self._locks.get(self._key) == token:
                self._locks.delete(self._key)

    def locked(self) -> bool:
        return self._key in self._locks


class LMDBBackend(CacheBackend):
    """dogpile.cache backend storing values in an lmdbcache :class:`~lmdbcache.Cache`."""

    def __init__(self, arguments: Mapping[str, Any]) -> None:
        arguments = dict(arguments)
        try:
            path = arguments.pop("path")
        except KeyError:
            raise ValueError("the lmdbcache backend needs arguments={'path': ...}") from None
        self.lock_timeout = float(arguments.pop("lock_timeout", 300))
        self.distributed_lock = bool(arguments.pop("distributed_lock", True))
        # other arguments are ignored, as dogpile backends do (one arguments
        # dict may configure several backends)
        options = {k: v for k, v in arguments.items() if k in _CACHE_OPTIONS}
        self.cache = Cache(path, **options)
        self._locks = self.cache._internal_namespace("__dogpile_locks__")

    def get_mutex(self, key: Any) -> Optional[CacheMutex]:
        if not self.distributed_lock:
            return None
        return LMDBMutex(self._locks, key, self.lock_timeout)

    def get(self, key: Any) -> Any:
        return self.cache.get(key, NO_VALUE)

    def get_multi(self, keys: Sequence[Any]) -> list:
        found = self.cache.get_many(keys)
        return [found.get(k, NO_VALUE) for k in keys]

    def set(self, key: Any, value: Any) -> None:
        self.cache.set(key, value)

    def set_multi(self, mapping: Mapping[Any, Any]) -> None:
        self.cache.set_many(mapping)

    def delete(self, key: Any) -> None:
        self.cache.delete(key)

    def delete_multi(self, keys: Sequence[Any]) -> None:
        self.cache.delete_many(list(keys))
