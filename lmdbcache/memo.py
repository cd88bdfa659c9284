"""memoize: cache a function's results in an lmdbcache Cache.

Keys.  An entry's key is the tuple ``("r", function id, code fingerprint, args)``
in the cache's internal ``__memo__`` namespace, where

- the function id is ``module.qualname``;
- the fingerprint hashes the function's code: bytecode, constants (nested code
  objects included), names, defaults and keyword defaults.  Changing any of them
  changes the fingerprint, so earlier results are never returned; the first call
  after a change deletes the function's older entries;
- args are the arguments bound to the signature (``f(1, 2)``, ``f(1, b=2)`` and
  ``f(a=1, b=2)`` are one entry; defaults are applied; names in *ignore* are
  dropped), plus the values a nested function captures from enclosing scopes.
  Small scalar arguments stay in the key as they are; anything else is pickled
  and hashed (SHA-256), so large arguments never bloat keys.  NumPy arrays are
  hashed by dtype, shape and content.

Stampede control.  With ``stampede=True`` a missing result is computed by the
caller that wins a lease (an atomic ``add`` of ``("l", id, fingerprint, args)``
holding its pid, with a ttl of *lease_timeout* seconds).  Other callers, in any
process or thread, wait and read the stored result.  A lease whose process is
gone (even killed with SIGKILL) is taken over at once; one that outlives its
ttl expires.  If the computation raises, the lease is released, the exception
propagates to the computing caller, and a waiter computes it itself.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import os
import socket
import pickle
import sys
import threading
import time
import types
import warnings
from typing import Any, Callable

from . import _core

_MISS = object()
_NoneType = type(None)
_SHORT = 256  # longer str/bytes arguments are hashed


def _const_repr(const: Any) -> str:
    """repr of a code constant that does not depend on the hash seed."""
    if isinstance(const, frozenset):
        return "frozenset({" + ", ".join(sorted(_const_repr(c) for c in const)) + "})"
    if isinstance(const, tuple):
        return "(" + ", ".join(_const_repr(c) for c in const) + ",)"
    return repr(const)


def _code_digest(code: types.CodeType, h: "hashlib._Hash") -> None:
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    h.update(repr(code.co_varnames).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_digest(const, h)
        else:
            h.update(_const_repr(const).encode("utf-8", "surrogatepass"))


def function_id(func: Callable) -> str:
    """module.qualname; a script run as __main__ is __mp_main__ in spawn and
    forkserver workers, and both are keyed as __main__."""
    module = getattr(func, "__module__", None)
    if module == "__mp_main__":
        module = "__main__"
    return f"{module}.{getattr(func, '__qualname__', type(func).__qualname__)}"


def fingerprint(func: Callable) -> str:
    """A digest of *func*'s code, constants, defaults and keyword defaults."""
    h = hashlib.sha256()
    code = getattr(func, "__code__", None)
    if code is None:
        code = getattr(getattr(type(func), "__call__", None), "__code__", None)
    if code is not None:
        _code_digest(code, h)
    for defaults in (getattr(func, "__defaults__", None), getattr(func, "__kwdefaults__", None)):
        try:
            h.update(_digest_value(defaults))
        except Exception:  # an unpicklable default (a lock, ...): its type stands in
            h.update(repr(type(defaults)).encode())
    return h.hexdigest()[:16]


def _canonical(value: Any, depth: int = 0) -> Any:
    """A form of value whose pickle does not depend on set order, dict insertion
    order or object identity of builtin containers, and that pickles functions
    by name."""
    if depth > 50:
        return value
    t = type(value)
    if t in (list, tuple):
        items = [_canonical(v, depth + 1) for v in value]
        return items if t is list else tuple(items)
    if t is dict:
        items = [(_canonical(k, depth + 1), _canonical(v, depth + 1)) for k, v in value.items()]
        items.sort(key=lambda kv: pickle.dumps(kv[0], protocol=5))
        return ("<dict>", items)
    if t in (set, frozenset):
        items = [_canonical(v, depth + 1) for v in value]
        items.sort(key=lambda v: pickle.dumps(v, protocol=5))
        return ("<set>" if t is set else "<frozenset>", items)
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType)) or hasattr(
        value, "__wrapped__"
    ) and callable(value):
        return ("<function>", function_id(value))
    return value


def _numpy_digest(value: Any, h: "hashlib._Hash") -> bool:
    np = sys.modules.get("numpy")
    if np is None or not isinstance(value, np.ndarray) or value.dtype.hasobject:
        return False
    h.update(b"ndarray")
    h.update(str(value.dtype).encode())
    h.update(repr(value.shape).encode())
    h.update(np.ascontiguousarray(value).tobytes())
    return True


def _digest_value(value: Any) -> bytes:
    h = hashlib.sha256()
    if not _numpy_digest(value, h):
        h.update(pickle.dumps(_canonical(value), protocol=5))
    return h.digest()


def _alive(pid: Any) -> bool:
    """Does process pid still run?  A zombie (killed, not yet reaped) does not."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3] not in (b"Z", b"X")
    except (OSError, ValueError):
        return True


def _machine() -> str:
    from .cache import boot_id

    return boot_id() or socket.gethostname()


def _local(holder: Any) -> bool:
    """Was the lease taken on this machine (a lease of another machine is
    reclaimed by its ttl, lease_timeout)?"""
    return not isinstance(holder, tuple) or len(holder) < 3 or holder[2] == _machine()


class _Memoized:
    """The wrapper memoize returns (its public attributes are documented there)."""

    def __init__(self, cache, func, ttl, ignore, typed, stampede, lease_timeout):
        from .cache import _check_ttl  # circular at import time

        if not callable(func):
            raise TypeError(f"memoize() needs a callable, not {type(func).__name__}")
        self.__wrapped__ = func
        self._cache = cache
        self._store = cache._internal_namespace("__memo__")
        self._ttl = _check_ttl(ttl)
        self._typed = bool(typed)
        self._stampede = bool(stampede)
        self._lease_timeout = float(lease_timeout)
        if not self._lease_timeout > 0:
            raise ValueError(f"lease_timeout must be positive, got {lease_timeout!r}")
        self._id = function_id(func)
        self._fp = fingerprint(func)
        self._prefix = ("r", self._id, self._fp)
        self._hits = 0
        self._misses = 0
        self._closure = getattr(func, "__closure__", None)
        try:
            sig = inspect.signature(func)
        except (TypeError, ValueError):
            sig = None
        self._sig = sig
        if isinstance(ignore, str):
            raise TypeError(f"ignore must be a sequence of argument names, not the str {ignore!r}")
        ignore = tuple(ignore)
        if not all(isinstance(n, str) for n in ignore):
            raise TypeError("ignore must be a sequence of argument names")
        if sig is not None:
            unknown = [n for n in ignore if n not in sig.parameters]
            if unknown:
                raise ValueError(f"ignore names no parameter of {self._id}: {unknown}")
        self._ignore = frozenset(ignore)
        # Fast path: only positional-or-keyword parameters.
        self._names = None
        self._keep = None
        if sig is not None and all(
            p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in sig.parameters.values()
        ):
            self._names = tuple(sig.parameters)
            self._defaults = tuple(p.default for p in sig.parameters.values())
            if self._ignore:
                self._keep = tuple(i for i, n in enumerate(self._names) if n not in self._ignore)
        self._readonly = bool(cache.readonly)
        self._checked = self._readonly

    # -- keys ----------------------------------------------------------------------

    def _bound(self, args: tuple, kwargs: dict) -> tuple:
        names = self._names
        if names is not None:
            n = len(args)
            if not kwargs and n == len(names):
                return args if self._keep is None else tuple(args[i] for i in self._keep)
            if n <= len(names):
                values = list(args)
                empty = inspect.Parameter.empty
                for i in range(n, len(names)):
                    v = kwargs.get(names[i], _MISS)
                    if v is _MISS:
                        v = self._defaults[i]
                        if v is empty:
                            break
                    values.append(v)
                else:
                    if len(kwargs) == sum(1 for k in kwargs if k in names[n:]):
                        if self._keep is not None:
                            return tuple(values[i] for i in self._keep)
                        return tuple(values)
        if self._sig is None:
            return args + tuple(sorted(kwargs.items()))
        bound = self._sig.bind(*args, **kwargs)  # raises TypeError like a call would
        bound.apply_defaults()
        out = []
        for name, value in bound.arguments.items():
            if name in self._ignore:
                continue
            kind = self._sig.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                value = tuple(sorted(value.items()))
            out.append(value)
        return tuple(out)

    def _key(self, args: tuple, kwargs: dict) -> tuple:
        """prefix + the bound argument values when they are all small scalars
        (ints, short str/bytes, None; floats and bools too, normalised when not
        typed), else prefix + one SHA-256 digest of them all."""
        values = self._bound(args, kwargs)
        simple = not self._closure
        normalized = []
        for v in values:
            t = type(v)
            if t is str or t is bytes:
                if len(v) > _SHORT:
                    simple = False
            elif t is float or t is bool:
                if not self._typed and (t is bool or v.is_integer()):
                    v = int(v)
            elif t is not int and v is not None:
                simple = False
            normalized.append(v)
        if simple:
            return self._prefix + tuple(normalized)
        if self._closure:
            normalized.append(tuple(c.cell_contents for c in self._closure))
        return self._prefix + (self._digest_args(normalized),)

    def _digest_args(self, values: list) -> bytes:
        h = hashlib.sha256()
        names = self._arg_names(len(values))
        for name, v in zip(names, values):
            if type(v) is float and not self._typed and v.is_integer():
                v = int(v)
            try:
                h.update(_digest_value(v))
            except Exception as exc:
                raise TypeError(
                    f"argument {name!r} of type {type(v).__name__} cannot be pickled "
                    f"for the cache key ({exc})"
                ) from None
        return h.digest()

    def _arg_names(self, n: int) -> list:
        if self._sig is None:
            names = []
        else:
            names = [p for p in self._sig.parameters if p not in self._ignore]
        names = names[:n] + [f"#{i}" for i in range(len(names), n)]
        if self._closure:
            names[-1] = "<closure>"
        return names

    # -- invalidation ----------------------------------------------------------------

    def _check_version(self) -> None:
        """On the first call: drop entries written by other versions of the code."""
        store = self._store
        version_key = ("v", self._id)
        if store.get(version_key) != self._fp:
            with store.transaction():
                if store.get(version_key) != self._fp:
                    store._prefix_delete(("r", self._id))
                    store._prefix_delete(("l", self._id))
                    store[version_key] = self._fp
        self._checked = True

    # -- calls -----------------------------------------------------------------------

    def make_wrapper(self) -> Callable:
        """The function users call: the hit path kept short, in one closure."""
        get = self._store.get
        prefix = self._prefix
        nparams = len(self._names) if self._names is not None else -1
        fast = self._names is not None and self._keep is None and not self._closure
        typed = self._typed
        key_of = self._key
        state = self

        @functools.wraps(self.__wrapped__)
        def wrapper(*args, **kwargs):
            if not state._checked:
                state._check_version()
            if fast and not kwargs and len(args) == nparams:
                key = prefix + args
                for a in args:  # what _key would keep as it is?
                    t = type(a)
                    if t is int or t is _NoneType:
                        continue
                    if (t is str or t is bytes) and len(a) <= _SHORT:
                        continue
                    if typed and (t is float or t is bool):
                        continue
                    key = key_of(args, kwargs)
                    break
            else:
                key = key_of(args, kwargs)
            value = get(key, _MISS)
            if value is not _MISS:
                state._hits += 1
                return value
            state._misses += 1
            if state._readonly:
                return state.__wrapped__(*args, **kwargs)
            if state._stampede:
                return state._compute_with_lease(key, args, kwargs)
            return state._compute(key, args, kwargs)

        wrapper.cache_clear = self.cache_clear
        wrapper.cache_info = self.cache_info
        wrapper.check = self.check
        wrapper.check_call_in_cache = self.check
        wrapper.lookup = self.lookup
        wrapper.fingerprint = self._fp
        wrapper.cache = self._cache
        return wrapper

    def _compute(self, key: tuple, args: tuple, kwargs: dict, depth: int = 4) -> Any:
        value = self.__wrapped__(*args, **kwargs)
        self._store_result(key, value, depth)
        return value

    def _store_result(self, key: tuple, value: Any, depth: int) -> None:
        try:
            self._store.set(key, value, ttl=self._ttl)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            warnings.warn(
                f"lmdbcache.memoize: the result of {self._id} was returned but not cached: "
                f"it cannot be pickled ({exc})",
                RuntimeWarning,
                stacklevel=depth,  # the caller of the memoized function
            )

    def _compute_with_lease(self, key: tuple, args: tuple, kwargs: dict) -> Any:
        store = self._store
        lease_key = ("l",) + key[1:]
        # the machine too: with remote= the lease is shared by many machines,
        # and a pid says whether its process lives on its own machine only
        me = (os.getpid(), threading.get_ident(), _machine())
        delay = 0.002
        while True:
            if store.add(lease_key, me, ttl=self._lease_timeout):
                try:
                    value = store.get(key, _MISS)  # computed while we raced for the lease?
                    if value is _MISS:
                        value = self._compute(key, args, kwargs, depth=5)
                    return value
                finally:
                    self._release(lease_key, me)
            value = store.get(key, _MISS)
            if value is not _MISS:
                return value
            holder = store.get(lease_key)
            if holder is not None and _local(holder) and not _alive(holder[0]):
                self._release(lease_key, holder)  # its process is gone: take over
                continue
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)

    def _release(self, lease_key: tuple, holder: tuple) -> None:
        store = self._store
        with store.transaction():
            if store.get(lease_key) == holder:
                store.delete(lease_key)

    # -- the functools-like interface ----------------------------------------------

    def cache_clear(self) -> int:
        """Delete every stored result of this function (all code versions)."""
        self._hits = self._misses = 0
        return self._store._prefix_delete(("r", self._id))

    def cache_info(self) -> "CacheInfo":
        """Hits and misses of this process, and the entries stored for this code."""
        return CacheInfo(self._hits, self._misses, None, self._store._prefix_count(self._prefix))

    def check(self, *args: Any, **kwargs: Any) -> bool:
        """Whether a result for these arguments is stored (nothing is computed)."""
        if not self._checked:
            self._check_version()
        return self._key(args, kwargs) in self._store

    def lookup(self, *args: Any, **kwargs: Any) -> Any:
        """The stored result for these arguments; KeyError when there is none."""
        if not self._checked:
            self._check_version()
        key = self._key(args, kwargs)
        value = self._store.get(key, _MISS)
        if value is _MISS:
            raise KeyError(f"{self._id}: no stored result for these arguments")
        return value


class CacheInfo(tuple):
    """(hits, misses, maxsize, currsize), like functools.lru_cache's."""

    __slots__ = ()
    _fields = ("hits", "misses", "maxsize", "currsize")

    def __new__(cls, hits, misses, maxsize, currsize):
        return tuple.__new__(cls, (hits, misses, maxsize, currsize))

    hits = property(lambda self: self[0])
    misses = property(lambda self: self[1])
    maxsize = property(lambda self: self[2])
    currsize = property(lambda self: self[3])

    def __repr__(self) -> str:
        return "CacheInfo(hits={}, misses={}, maxsize={}, currsize={})".format(*self)


def memoize(
    cache: Any = None,
    func: Callable | None = None,
    *,
    ttl: float | None = None,
    ignore: tuple = (),
    typed: bool = False,
    stampede: bool = False,
    lease_timeout: float = 60.0,
):
    """Cache *func*'s results in *cache* (a ``Cache`` or a directory path).

    Use as ``@lmdbcache.memoize("~/.cache/proj")`` or ``@cache.memoize()``.

    ttl
        Seconds a result stays valid (``None``: until the code changes or it is
        evicted).
    ignore
        Names of arguments left out of the key (``("self",)`` for methods, or a
        ``verbose`` flag that does not change the result).
    typed
        ``False`` (default): ``f(1)``, ``f(1.0)`` and ``f(True)`` share an entry, as
        with ``functools.lru_cache``.  ``True``: they are distinct.
    stampede
        Let only one caller at a time, across processes, compute a missing result;
        the others wait for it.  *lease_timeout* bounds how long a computation may
        hold the lease before another caller takes over.

    The wrapper has ``cache_clear()``, ``cache_info()``, ``check(*args, **kw)``
    (also ``check_call_in_cache``), ``lookup(*args, **kw)`` and ``__wrapped__``.
    """
    from .cache import Cache, _check_ttl

    if func is None and callable(cache) and not isinstance(cache, _core.Store):
        cache, func = None, cache  # bare @memoize
    if cache is None:
        cache = Cache()
    elif isinstance(cache, (str, bytes, os.PathLike)):
        cache = Cache(cache)
    elif not isinstance(cache, _core.Store):
        raise TypeError(f"memoize() needs a Cache or a path, not {type(cache).__name__}")

    _check_ttl(ttl)  # bad options fail here, not when decorating
    if isinstance(ignore, str):
        raise TypeError(f"ignore must be a sequence of argument names, not the str {ignore!r}")

    def decorate(f: Callable) -> Callable:
        return _Memoized(cache, f, ttl, ignore, typed, stampede, lease_timeout).make_wrapper()

    if func is not None:
        return decorate(func)
    return decorate
