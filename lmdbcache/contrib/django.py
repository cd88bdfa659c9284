"""A Django cache backend over an lmdbcache Cache.

    CACHES = {
        "default": {
            "BACKEND": "lmdbcache.contrib.django.LMDBCache",
            "LOCATION": "/var/cache/mysite",
            "TIMEOUT": 300,
            "OPTIONS": {"size_limit": 2 << 30},
        }
    }

Every worker process of the site (gunicorn, uWSGI, Celery, runserver's
reloader) shares the one cache directory.  ``OPTIONS`` takes the
:class:`lmdbcache.Cache` options ``size_limit``, ``eviction_policy``,
``map_size``, ``durability``, ``max_readers`` and ``namespace``.  The size of
the cache is bounded by ``size_limit`` (bytes, evicting least recently stored
entries first), not by Django's ``MAX_ENTRIES``/``CULL_FREQUENCY``, which this
backend ignores, like the memcached and Redis backends.

Timeouts follow Django: ``None`` never expires, ``0`` or less expires at once
(the key is removed), otherwise seconds.  ``add``, ``incr``/``decr``, ``touch``
and ``get_or_set``'s store are atomic across processes.
"""
from __future__ import annotations

from typing import Any, Optional

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache

from ..cache import Cache

_CACHE_OPTIONS = ("size_limit", "eviction_policy", "map_size", "durability", "max_readers",
                  "namespace")


class LMDBCache(BaseCache):
    """Django cache backend: ``BACKEND = "lmdbcache.contrib.django.LMDBCache"``."""

    def __init__(self, location: str, params: dict) -> None:
        super().__init__(params)
        if not location:
            raise ValueError("the lmdbcache Django backend needs LOCATION (a directory)")
        options = params.get("OPTIONS") or {}
        self._location = location
        self._cache_options = {k: options[k] for k in _CACHE_OPTIONS if k in options}
        self._cache_obj: Optional[Cache] = None

    @property
    def _cache(self) -> Cache:
        # opened on first use: settings are read at import, the cache may be
        # created after a fork (pre-fork servers) without any extra step
        if self._cache_obj is None:
            self._cache_obj = Cache(self._location, **self._cache_options)
        return self._cache_obj

    def _ttl(self, timeout: Any) -> Optional[float]:
        """None: never expires; 0: expires at once; else seconds."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return None
        timeout = float(timeout)
        return timeout if timeout > 0 else 0.0

    def add(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT,
            version: Any = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        ttl = self._ttl(timeout)
        if ttl == 0:
            return key not in self._cache
        return self._cache.add(key, value, ttl=ttl)

    def get(self, key: Any, default: Any = None, version: Any = None) -> Any:
        key = self.make_and_validate_key(key, version=version)
        return self._cache.get(key, default)

    def set(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT,
            version: Any = None) -> None:
        key = self.make_and_validate_key(key, version=version)
        ttl = self._ttl(timeout)
        if ttl == 0:
            self._cache.delete(key)
        else:
            self._cache.set(key, value, ttl=ttl)

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        ttl = self._ttl(timeout)
        if ttl == 0:
            return self._cache.delete(key)
        return self._cache.touch(key, ttl=ttl)

    def delete(self, key: Any, version: Any = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        return self._cache.delete(key)

    def has_key(self, key: Any, version: Any = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        return key in self._cache

    def get_many(self, keys: Any, version: Any = None) -> dict:
        made = {self.make_and_validate_key(k, version=version): k for k in keys}
        found = self._cache.get_many(list(made))
        return {made[k]: v for k, v in found.items()}

    def set_many(self, data: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> list:
        pairs = [(self.make_and_validate_key(k, version=version), v) for k, v in data.items()]
        ttl = self._ttl(timeout)
        if ttl == 0:
            self._cache.delete_many([k for k, _ in pairs])
        else:
            self._cache.set_many(pairs, ttl=ttl)
        return []

    def delete_many(self, keys: Any, version: Any = None) -> None:
        self._cache.delete_many([self.make_and_validate_key(k, version=version) for k in keys])

    def incr(self, key: Any, delta: int = 1, version: Any = None) -> int:
        key = self.make_and_validate_key(key, version=version)
        cache = self._cache
        with cache.transaction():  # exists-check and increment are one step
            if key not in cache:
                raise ValueError(f"Key '{key}' not found")
            try:
                return cache.incr(key, delta)  # keeps the entry's expiry
            except (TypeError, OverflowError):
                value = cache.get(key)
                if isinstance(value, bool) or not isinstance(value, int):
                    raise TypeError(
                        f"cannot increment {key!r}: its value is a "
                        f"{type(value).__name__}, not an int") from None
            # an int beyond 64 bits: stored pickled, incremented here (the
            # transaction keeps it atomic; the expiry is not carried over)
            cache.set(key, value + delta)
            return value + delta

    def decr(self, key: Any, delta: int = 1, version: Any = None) -> int:
        return self.incr(key, -delta, version=version)

    def clear(self) -> None:
        self._cache.clear()

    def close(self, **kwargs: Any) -> None:
        # Django calls this at the end of every request: keep the environment
        # open (reopening costs an mmap); it is released at process exit.
        pass
