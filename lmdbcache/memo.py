"""memoize: cache a function's results in an lmdbcache Cache.

Keys.  An entry's key is the tuple ``("r", function id, code fingerprint, args)``
in the cache's internal ``__memo__`` namespace, where

- the function id is ``module.qualname`` (of the function a partial, a bound
  method or a callable instance runs);
- the fingerprint hashes the function's code: bytecode, constants (nested code
  objects included), names, defaults and keyword defaults.  It follows the
  function's *current* code object: ``f.__code__ = other`` (IPython's autoreload)
  is seen at the next call.  Changing any of them changes the fingerprint, so
  earlier results are never returned; the first call after a change deletes the
  function's older entries;
- args are the arguments bound to the signature (``f(1, 2)``, ``f(1, b=2)`` and
  ``f(a=1, b=2)`` are one entry; defaults are applied; names or positions in
  *ignore* are dropped), plus the state bound into the callable: a partial's
  args and keywords, a bound method's or a callable instance's ``self``, and the
  immutable values a nested function captures (numbers, str, bytes, None,
  tuples and frozensets of them; a captured function by its code fingerprint,
  defaults and own captured values, recursively; a class of a module by name,
  a class defined inside a function by its methods and class attributes).  Small scalar
  arguments stay in the key as they are; anything else is pickled and hashed
  (128-bit, ``_core._hash128``), so large arguments never bloat keys.  NumPy
  arrays are hashed by dtype, shape and content.  A function or class in an
  argument or a default is keyed by ``module.qualname`` when that name looks
  up to it (_importable), else by behaviour, like a captured one.

Stampede control.  With ``stampede=True`` a missing result is computed by the
caller that wins a lease (an atomic ``add`` of ``("l", id, fingerprint, args)``
holding its pid, with a ttl of *lease_timeout* seconds).  Other callers, in any
process, thread or asyncio task, wait and read the stored result.  A lease whose
process is gone (even killed with SIGKILL) is taken over at once; one that
outlives its ttl expires.  If the computation raises, the lease is released, the
exception propagates to the computing caller, and a waiter computes it itself.
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
import weakref
from typing import TYPE_CHECKING, Any, Callable, Generic, TypeVar, overload

from . import _core

if sys.version_info >= (3, 10):
    from typing import ParamSpec
else:  # pragma: no cover
    from typing_extensions import ParamSpec

P = ParamSpec("P")
R = TypeVar("R")

_MISS = object()
_NoneType = type(None)
_SHORT = 256  # longer str/bytes arguments are hashed
_KEY_VERSION = b"lmdbcache.memo key v2"  # part of every fingerprint

try:
    _hash128 = _core._hash128
except AttributeError:  # pragma: no cover - an older build of the extension
    def _hash128(data: Any) -> bytes:
        return hashlib.blake2b(data, digest_size=16).digest()


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
    qualname = getattr(func, "__qualname__", None)
    if not isinstance(qualname, str):
        qualname = type(func).__qualname__
    return f"{module}.{qualname}"


class _NoCode:
    """The code holder of a callable without Python code (a builtin, a class)."""

    __slots__ = ()
    __code__ = None


_NO_CODE = _NoCode()


def _fingerprint_of(target: Any, holder: Any) -> str:
    """A digest of the code of *holder* and the defaults of *target*."""
    h = hashlib.sha256(_KEY_VERSION)
    code = getattr(holder, "__code__", None)
    if isinstance(code, types.CodeType):
        _code_digest(code, h)
    for defaults in (getattr(target, "__defaults__", None), getattr(target, "__kwdefaults__", None)):
        try:
            h.update(_digest_value(defaults))
        except Exception:  # an unpicklable default (a lock, ...): its type stands in
            h.update(repr(type(defaults)).encode())
    return h.hexdigest()[:16]


def fingerprint(func: Callable) -> str:
    """A digest of *func*'s code, constants, defaults and keyword defaults."""
    target, holder, _ = _resolve(func)
    return _fingerprint_of(target, holder)


def _resolve(func: Any) -> tuple:
    """(target, code holder, bound state) of a callable.

    target is what the function id and the defaults come from; the holder's
    ``__code__`` is compared at each call; bound state is a list of
    ``(kind, value)``: ``("self", obj)`` for a bound method or a callable
    instance, ``("partial", (args, keywords))`` for a partial."""
    if isinstance(func, functools.partial):
        target, holder, state = _resolve(func.func)
        bound = (func.args, tuple(sorted(func.keywords.items())))
        return target, holder, state + [("partial", bound)]
    if isinstance(func, types.MethodType):
        target, holder, state = _resolve(func.__func__)
        return target, holder, state + [("self", func.__self__)]
    if isinstance(func, types.FunctionType):
        return func, func, []
    if isinstance(func, _Wrapper):
        return func, _NO_CODE, []
    if isinstance(func, (type, types.BuiltinFunctionType, types.BuiltinMethodType)):
        return func, _NO_CODE, []
    call = getattr(type(func), "__call__", None)
    if isinstance(call, types.FunctionType):  # a callable instance
        return call, call, [("self", func)]
    return func, _NO_CODE, []


_SCALARS = (int, float, complex, bool, str, bytes, _NoneType)


_FN_DEPTH = 8  # captured functions deeper than this are keyed without their closure
_CLASS_DEPTH = 4  # local classes nested deeper than this are keyed by name
_CUT = "<cut>"  # stands for a cycle or the depth limit

# Per function object: (code, defaults, kwdefaults, (id, fingerprint), deps).
# The fingerprint is computed once per code version, like the decorated
# function's; deps (None when empty) is what the keys of the functions in its
# defaults were read from (_deps_valid).
_FN_STATIC: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
# Per class defined inside a function: its key, computed when first seen.
_CLASS_KEYS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
# Per function (or memoized function) captured by a memoized closure, or passed
# as an argument or a default and not importable by name: (deps, compact key)
# (_arg_callable_key).
_ARG_KEYS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
# Thread-local: .classes, local classes whose key is being computed; .fns,
# (function, deps) whose fingerprint is being computed (_function_static).
_tls = threading.local()


def _captured_key(value: Any, depth: int = 0, seen: set | None = None,
                  deps: tuple | None = None) -> Any:
    """How a captured value enters the key, or _MISS when it is state (mutable
    objects, instances): numbers, str, bytes, None and tuples/frozensets of
    them are kept; a function by what it does (_function_key); a class of a
    module by name, a class defined inside a function by its methods
    (_class_key); a builtin by name.  *deps*, when given, collects what the
    key was read from (_deps_valid)."""
    t = type(value)
    if t in _SCALARS:
        return value
    if (t is tuple or t is frozenset) and depth < 20:
        items = [_captured_key(v, depth + 1, seen, deps) for v in value]
        if any(v is _MISS for v in items):
            return _MISS
        return tuple(items) if t is tuple else frozenset(items)
    if t is types.FunctionType:
        return _function_key(value, depth, seen, deps)
    if isinstance(value, _Wrapper):
        return _memoized_key(value, depth, seen, deps)
    if isinstance(value, type):
        return _class_key(value)
    if isinstance(value, types.BuiltinFunctionType):
        return ("<function>", function_id(value))
    return _MISS


def _fn_stack() -> list:
    stack = getattr(_tls, "fns", None)
    if stack is None:
        stack = _tls.fns = []
    return stack


def _merge_deps(deps: tuple | None, more: tuple | None) -> None:
    if deps is not None and more is not None:
        deps[0].extend(more[0])
        deps[1].extend(more[1])


def _function_static(func: types.FunctionType, deps: tuple | None = None) -> tuple:
    """(id, fingerprint of code and defaults) of func, cached per function
    object and recomputed when its code or defaults are replaced, or when a
    function in its defaults keyed by behaviour changed (its deps).  A function
    whose fingerprint is being computed (a default refers back to it) or more
    than _FN_DEPTH levels of defaults are cut: ``(id, _CUT)``."""
    code, defaults, kwdefaults = func.__code__, func.__defaults__, func.__kwdefaults__
    hit = _FN_STATIC.get(func)
    if hit is not None and hit[0] is code and hit[1] is defaults and hit[2] is kwdefaults \
            and (hit[4] is None or _deps_valid(hit[4])):
        _merge_deps(deps, hit[4])
        return hit[3]
    stack = _fn_stack()
    if len(stack) >= _FN_DEPTH or any(f is func for f, _ in stack):
        return (function_id(func), _CUT)
    outermost = not stack
    sdeps: tuple = ([], [])
    stack.append((func, sdeps))
    try:
        static = (function_id(func), _fingerprint_of(func, func))
    finally:
        stack.pop()
    _merge_deps(deps, sdeps)
    if outermost:  # a fingerprint computed inside another's may hold a cut
        try:
            _FN_STATIC[func] = (code, defaults, kwdefaults, static,
                                sdeps if sdeps[0] or sdeps[1] else None)
        except TypeError:  # pragma: no cover - not weak-referenceable
            pass
    return static


def _importable(obj: Any) -> bool:
    """Is obj what ``module.qualname`` names (so its name identifies it)?  Not
    when its qualname has ``<locals>`` or ``<lambda>`` in it, its module is not
    loaded, or the lookup finds another object (or none)."""
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(qualname, str) or "<locals>" in qualname or "<lambda>" in qualname:
        return False
    try:
        found = sys.modules.get(obj.__module__)
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception:
        return False
    return found is obj


def _arg_callable_key(value: Any) -> tuple:
    """The key of a function or a memoized function a memoized closure
    captures, or one passed as an argument or a default that is not
    importable by name: a captured function's key, in the
    compact ``(kind, id, digest)`` form, cached per object and reused while
    everything it was read from is unchanged (_deps_valid)."""
    try:
        hit = _ARG_KEYS.get(value)
    except TypeError:  # pragma: no cover - not weak-referenceable
        hit = None
    stack = _fn_stack()
    if hit is not None and _deps_valid(hit[0]):
        deps, key = hit
    else:
        outermost = not stack
        deps = ([], [])
        if isinstance(value, _Wrapper):
            full = _memoized_key(value, 0, None, deps)
        else:
            full = _function_key(value, 0, None, deps)
        key = (full[0], function_id(value), _digest_value(full).hex())
        if outermost:  # keys computed inside another's may hold a cut
            try:
                _ARG_KEYS[value] = (deps, key)
            except TypeError:  # pragma: no cover
                pass
    if stack:  # a default of a function whose fingerprint is being computed
        _merge_deps(stack[-1][1], deps)
    return key


def _function_key(func: types.FunctionType, depth: int, seen: set | None,
                  deps: tuple | None = None) -> tuple:
    """A captured function: its id, the fingerprint of its code and defaults
    (cached), and the immutable values it captures itself, read now (they can
    be rebound, like the decorated function's), recursively.  A cycle (a
    recursive function captures itself) or more than _FN_DEPTH levels cut the
    recursion: the function there is keyed without its closure."""
    if deps is not None:
        deps[0].append((func, func.__code__, func.__defaults__, func.__kwdefaults__))
    static = _function_static(func, deps)
    closure = func.__closure__
    if not closure:
        return ("<function>",) + static
    if seen is None:
        seen = set()
    if id(func) in seen or depth >= _FN_DEPTH:
        return ("<function>",) + static + (_CUT,)
    seen.add(id(func))
    try:
        captured = []
        for name, cell in zip(func.__code__.co_freevars, closure):
            try:
                v = cell.cell_contents
            except ValueError:  # an empty cell
                if deps is not None:
                    deps[1].append((cell, _MISS))
                continue
            if deps is not None:
                deps[1].append((cell, v))
            k = _captured_key(v, depth + 1, seen, deps)
            if k is not _MISS:
                captured.append((name, k))
    finally:
        seen.discard(id(func))
    return ("<function>",) + static + (tuple(captured),)


def _memoized_key(wrapper: "_Wrapper", depth: int, seen: set | None,
                  deps: tuple | None = None) -> tuple:
    """A captured memoized function: keyed as the function it wraps."""
    if seen is None:
        seen = set()
    if id(wrapper) in seen:
        return ("<memoized>", function_id(wrapper), _CUT)
    inner = wrapper._state.__wrapped__
    seen.add(id(wrapper))
    try:
        k = _captured_key(inner, depth + 1, seen, deps)
    finally:
        seen.discard(id(wrapper))
    if k is _MISS:  # a partial, a bound method, a callable instance
        k = function_id(wrapper)
    return ("<memoized>", k)


def _deps_valid(deps: tuple) -> bool:
    """Is a captured function's key still what it was computed from: the same
    code and defaults of every function it walked, the same object in every
    cell it read?  Identity checks only; the cache entry keeps the objects."""
    for func, code, defaults, kwdefaults in deps[0]:
        if (func.__code__ is not code or func.__defaults__ is not defaults
                or func.__kwdefaults__ is not kwdefaults):
            return False
    for cell, value in deps[1]:
        try:
            current = cell.cell_contents
        except ValueError:
            current = _MISS
        if current is not value:
            return False
    return True


def _class_key(cls: type) -> tuple:
    """A class of a module: by module.qualname.  A class that is not importable
    by name (_importable: one defined inside a function, ``<locals>`` in its
    qualname, so many classes can share it): by a
    digest of the keys of the attributes of each such class in its MRO --
    methods (static, class methods and properties included) as captured
    functions, immutable class attributes as they are.  Computed once per class
    object, when first seen: rebinding a method or a variable its methods
    capture later is not seen."""
    name = function_id(cls)
    if _importable(cls):
        return ("<class>", name)
    try:
        cached = _CLASS_KEYS.get(cls)
    except TypeError:  # pragma: no cover - an unhashable metaclass instance
        cached = None
    if cached is not None:
        return cached
    stack = getattr(_tls, "classes", None)
    if stack is None:
        stack = _tls.classes = []
    if any(c is cls for c in stack) or len(stack) >= _CLASS_DEPTH:
        return ("<class>", name, _CUT)
    outermost = not stack
    stack.append(cls)
    try:
        parts = []
        for klass in cls.__mro__:
            if _importable(klass):
                parts.append(("<base>", function_id(klass)))
                continue
            for attr, value in sorted(vars(klass).items()):
                if isinstance(value, (staticmethod, classmethod)):
                    value = value.__func__
                elif isinstance(value, property):
                    value = (value.fget, value.fset, value.fdel)
                # the methods' closures are walked afresh: the key does not
                # depend on where the class was first seen
                k = _captured_key(value)
                if k is not _MISS:
                    parts.append((attr, k))
        key = ("<class>", name, _digest_value(tuple(parts)).hex())
    finally:
        stack.pop()
    if outermost:  # keys of classes met inside another class's cycle are not kept
        try:
            _CLASS_KEYS[cls] = key
        except TypeError:  # pragma: no cover
            pass
    return key


def _canonical(value: Any, depth: int = 0) -> Any:
    """A form of value whose pickle does not depend on set order, dict insertion
    order or object identity of builtin containers, and that pickles functions
    and classes of a module by name, other functions and classes (lambdas,
    nested functions, classes defined inside a function) by behaviour, as
    captured ones."""
    if depth > 50:
        return value
    t = type(value)
    if t in _SCALARS:
        return value
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
    if t is types.FunctionType:
        if _importable(value):
            return ("<function>", function_id(value))
        return _arg_callable_key(value)
    if t is _Wrapper:  # a memoized function: keyed as the function it runs
        inner = value._state.__wrapped__
        if _importable(value) or type(inner) is types.FunctionType and _importable(inner):
            return ("<function>", function_id(value))
        if type(inner) is not types.FunctionType:  # a partial, a bound method, ...
            return ("<memoized>", _canonical(inner, depth + 1))
        return _arg_callable_key(value)
    if isinstance(value, types.BuiltinFunctionType):
        return ("<function>", function_id(value))
    if hasattr(value, "__wrapped__") and callable(value):
        if _importable(value):
            return ("<function>", function_id(value))
        # a wrapper object (an lru_cache, ...) that cannot be found by name:
        # its type and what it wraps
        return ("<wrapped>", function_id(value), function_id(type(value)),
                _canonical(value.__wrapped__, depth + 1))
    if isinstance(value, type) and not _importable(value):
        return _class_key(value)  # a class of a module pickles by name
    if isinstance(value, functools.partial):
        return ("<partial>", _canonical(value.func, depth + 1),
                _canonical(value.args, depth + 1), _canonical(value.keywords, depth + 1))
    return value


def _numpy_digest(value: Any) -> bytes | None:
    np = sys.modules.get("numpy")
    if np is None or not isinstance(value, np.ndarray) or value.dtype.hasobject:
        return None
    head = f"ndarray|{value.dtype.str}|{value.shape}|".encode()
    data = value if value.flags.c_contiguous else np.ascontiguousarray(value)
    try:
        body = _hash128(memoryview(data).cast("B"))
    except (TypeError, ValueError):  # a dtype memoryview cannot export
        body = _hash128(data.tobytes())
    return _hash128(head + body)


def _digest_value(value: Any) -> bytes:
    """A 128-bit digest of value: equal values, equal digests."""
    digest = _numpy_digest(value)
    if digest is None:
        digest = _hash128(pickle.dumps(_canonical(value), protocol=5))
    return digest


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


def _holder(pid: int, ident: int, where: str) -> str:
    """A lease's holder: a str, so every serializer stores it natively."""
    return f"{pid}:{ident}:{where}"


def _holder_pid(holder: Any) -> Any:
    try:
        return int(holder.split(":", 1)[0])
    except (AttributeError, ValueError):
        return None


def _local(holder: Any) -> bool:
    """Was the lease taken on this machine (a lease of another machine is
    reclaimed by its ttl, lease_timeout)?"""
    parts = holder.split(":", 2) if isinstance(holder, str) else ()
    return len(parts) < 3 or parts[2] == _machine()


class _Memoized:
    """The state behind a memoized function (the public wrapper is _Wrapper)."""

    def __init__(self, cache, func, ttl, ignore, typed, stampede, lease_timeout, key=None):
        from .cache import _check_ttl  # circular at import time

        if not callable(func):
            raise TypeError(f"memoize() needs a callable, not {type(func).__name__}")
        if key is not None and not callable(key):
            raise TypeError(f"key must be a callable, not {type(key).__name__}")
        self.__wrapped__ = func
        self._cache = cache
        self._store = cache._internal_namespace("__memo__")
        self._ttl = _check_ttl(ttl)
        self._typed = bool(typed)
        self._stampede = bool(stampede)
        self._lease_timeout = float(lease_timeout)
        if not self._lease_timeout > 0:
            raise ValueError(f"lease_timeout must be positive, got {lease_timeout!r}")
        self._keyfunc = key
        self._options = dict(ttl=ttl, ignore=tuple(ignore) if not isinstance(ignore, str) else ignore,
                             typed=typed, stampede=stampede, lease_timeout=lease_timeout, key=key)
        self._target, self._holder, bound_state = _resolve(func)
        self._is_async = inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
            self._target)
        self._id = function_id(self._target)
        if self._target is not func and isinstance(self._target, types.FunctionType) and \
                getattr(type(func), "__call__", None) is self._target:
            self._id = function_id(self._target)  # Class.__call__
        self._code = self._holder.__code__
        self._fp = _fingerprint_of(self._target, self._holder)
        self._prefix = ("r", self._id, self._fp)
        self._hits = 0
        self._misses = 0
        closure = getattr(self._target, "__closure__", None) if self._holder is self._target else None
        self._closure = closure or None
        try:
            sig = inspect.signature(func)
        except (TypeError, ValueError):
            sig = None
        self._sig = sig
        if isinstance(ignore, str):
            raise TypeError(f"ignore must be a sequence of argument names or positions, "
                            f"not the str {ignore!r}")
        ignore = tuple(ignore)
        params = list(sig.parameters) if sig is not None else []
        names = []
        for n in ignore:
            if isinstance(n, bool) or not isinstance(n, (str, int)):
                raise TypeError("ignore must be a sequence of argument names or positions")
            if isinstance(n, int):
                if sig is None or not -len(params) <= n < len(params):
                    raise ValueError(f"ignore: {self._id} has no parameter at position {n}")
                n = params[n]
            names.append(n)
        # "self" names the bound instance of a bound method or a callable instance.
        self._bound_state = bound_state
        if "self" in names and "self" not in params and any(k == "self" for k, _ in bound_state):
            names.remove("self")
            self._bound_state = [(k, v) for k, v in bound_state if k != "self"]
        if sig is not None:
            unknown = [n for n in names if n not in sig.parameters]
            if unknown:
                raise ValueError(f"ignore names no parameter of {self._id}: {unknown}")
        if key is not None and names:
            raise ValueError("ignore and key cannot be combined: the key function decides")
        self._ignore = frozenset(names)
        self._has_extra = bool(self._closure or self._bound_state)
        # Fast path: only positional-or-keyword parameters.
        self._names = None
        self._keep = None
        if key is None and sig is not None and all(
            p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in sig.parameters.values()
        ):
            self._names = tuple(sig.parameters)
            self._defaults = tuple(p.default for p in sig.parameters.values())
            if self._ignore:
                self._keep = tuple(i for i, n in enumerate(self._names) if n not in self._ignore)
        self._readonly = bool(cache.readonly)
        self._checked = self._readonly
        self._warned_size = False

    # -- keys ----------------------------------------------------------------------

    def _bound(self, args: tuple, kwargs: dict) -> tuple:
        if self._keyfunc is not None:
            return (self._keyfunc(*args, **kwargs),)
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

    def _extra(self) -> list:
        """(name, value) pairs of the state bound into the callable, read now."""
        out = []
        for kind, value in self._bound_state:
            out.append(("self" if kind == "self" else "<partial>", value))
        if self._closure:
            captured = []
            for cell in self._closure:
                try:
                    value = cell.cell_contents
                except ValueError:  # an empty cell
                    continue
                if type(value) is types.FunctionType or isinstance(value, _Wrapper):
                    # cached per function while what its key was read from holds
                    v = _arg_callable_key(value)
                else:
                    v = _captured_key(value)
                if v is not _MISS:
                    captured.append(v)
            if captured:
                out.append(("<closure>", tuple(captured)))
        return out

    def _key(self, args: tuple, kwargs: dict) -> tuple:
        """prefix + the bound argument values when they are all small scalars
        (ints, short str/bytes, None; floats and bools too, normalised when not
        typed), else prefix + one 128-bit digest of them all."""
        if self._holder.__code__ is not self._code or not self._checked:
            self._sync_version()
        values = self._bound(args, kwargs)
        extra = self._extra() if self._has_extra else ()
        simple = not extra
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
        names = self._arg_names(len(normalized))
        for name, value in extra:
            names.append(name)
            normalized.append(value)
        return self._prefix + (self._digest_args(names, normalized),)

    def _digest_args(self, names: list, values: list) -> bytes:
        parts = []
        for name, v in zip(names, values):
            if type(v) is float and not self._typed and v.is_integer():
                v = int(v)
            try:
                parts.append(_digest_value(v))
            except Exception as exc:
                raise TypeError(
                    f"argument {name!r} of type {type(v).__name__} cannot be pickled "
                    f"for the cache key ({exc})"
                ) from None
        return _hash128(b"".join(parts))

    def _arg_names(self, n: int) -> list:
        if self._keyfunc is not None:
            return ["<key>"][:n]
        if self._sig is None:
            names = []
        else:
            names = [p for p in self._sig.parameters if p not in self._ignore]
        return names[:n] + [f"#{i}" for i in range(len(names), n)]

    # -- invalidation ----------------------------------------------------------------

    def _sync_version(self) -> None:
        """Follow the current code object; on the first call of a code version,
        drop entries written by other versions."""
        code = self._holder.__code__
        if code is not self._code:
            self._code = code
            self._fp = _fingerprint_of(self._target, self._holder)
            self._prefix = ("r", self._id, self._fp)
            self._checked = self._readonly
        if self._checked:
            return
        store = self._store
        version_key = ("v", self._id)
        if store.get(version_key) != self._fp:
            with store.transaction():
                if store.get(version_key) != self._fp:
                    # local only (a remote tier keeps old versions' results:
                    # their keys hold the old fingerprint, so they are never served)
                    _core.Store._prefix_delete(store, ("r", self._id))
                    _core.Store._prefix_delete(store, ("l", self._id))
                    store[version_key] = self._fp
        self._checked = True

    _check_version = _sync_version

    # -- calls -----------------------------------------------------------------------

    def make_wrapper(self) -> "_Wrapper":
        """The function users call: the hit path kept short, in one closure."""
        get = self._store.get
        nparams = len(self._names) if self._names is not None else -1
        fast = self._names is not None and self._keep is None and not self._has_extra
        typed = self._typed
        key_of = self._key
        holder = self._holder
        func = self.__wrapped__
        state = self

        if self._is_async:
            async def call(*args, **kwargs):
                key = key_of(args, kwargs)
                value = get(key, _MISS)
                if value is not _MISS:
                    state._hits += 1
                    return value
                state._misses += 1
                if state._readonly:
                    return await func(*args, **kwargs)
                if state._stampede:
                    return await state._acompute_with_lease(key, args, kwargs)
                return await state._acompute(key, args, kwargs)
        else:
            def call(*args, **kwargs):
                if holder.__code__ is not state._code or not state._checked:
                    state._sync_version()
                if fast and not kwargs and len(args) == nparams:
                    key = state._prefix + args
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
                    return func(*args, **kwargs)
                if state._stampede:
                    return state._compute_with_lease(key, args, kwargs)
                return state._compute(key, args, kwargs)

        wrapper = _Wrapper(call)
        wrapper._state = self
        if isinstance(func, types.FunctionType):
            functools.update_wrapper(wrapper, func)
        else:
            functools.update_wrapper(wrapper, func, updated=())
        wrapper.__wrapped__ = func
        wrapper.cache_clear = self.cache_clear
        wrapper.cache_info = self.cache_info
        wrapper.check = self.check
        wrapper.check_call_in_cache = self.check
        wrapper.lookup = self.lookup
        wrapper.refresh = self.arefresh if self._is_async else self.refresh
        wrapper.bypass = func
        wrapper.cache = self._cache
        return wrapper

    def _compute(self, key: tuple, args: tuple, kwargs: dict, depth: int = 4) -> Any:
        value = self.__wrapped__(*args, **kwargs)
        self._store_result(key, value, depth)
        return value

    async def _acompute(self, key: tuple, args: tuple, kwargs: dict) -> Any:
        value = await self.__wrapped__(*args, **kwargs)
        self._store_result(key, value, 3)
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
        except _core.MapFullError as exc:
            if not self._warned_size:  # once per memoized function and process
                self._warned_size = True
                warnings.warn(
                    f"lmdbcache.memoize: the result of {self._id} was returned but not cached: "
                    f"it does not fit in the cache ({exc})",
                    RuntimeWarning,
                    stacklevel=depth,
                )

    def _compute_with_lease(self, key: tuple, args: tuple, kwargs: dict) -> Any:
        store = self._store
        lease_key = ("l",) + key[1:]
        # the machine too: with remote= the lease is shared by many machines,
        # and a pid says whether its process lives on its own machine only
        me = _holder(os.getpid(), threading.get_ident(), _machine())
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
            if holder is not None and _local(holder) and not _alive(_holder_pid(holder)):
                self._release(lease_key, holder)  # its process is gone: take over
                continue
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)

    async def _acompute_with_lease(self, key: tuple, args: tuple, kwargs: dict) -> Any:
        import asyncio

        store = self._store
        lease_key = ("l",) + key[1:]
        # One lease per task: tasks of one thread must not share a holder.
        me = _holder(os.getpid(), threading.get_ident(), f"task-{id(asyncio.current_task())}")
        delay = 0.002
        while True:
            if store.add(lease_key, me, ttl=self._lease_timeout):
                try:
                    value = store.get(key, _MISS)
                    if value is _MISS:
                        value = await self._acompute(key, args, kwargs)
                    return value
                finally:
                    self._release(lease_key, me)
            value = store.get(key, _MISS)
            if value is not _MISS:
                return value
            holder = store.get(lease_key)
            if holder is not None and not _alive(_holder_pid(holder)):
                self._release(lease_key, holder)
                continue
            await asyncio.sleep(delay)  # never blocks the event loop
            delay = min(delay * 1.5, 0.05)

    def _release(self, lease_key: tuple, holder: str) -> None:
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
        if self._holder.__code__ is not self._code:
            self._sync_version()
        return CacheInfo(self._hits, self._misses, None, self._store._prefix_count(self._prefix))

    def check(self, *args: Any, **kwargs: Any) -> bool:
        """Whether a result for these arguments is stored (nothing is computed)."""
        return self._key(args, kwargs) in self._store

    def lookup(self, *args: Any, **kwargs: Any) -> Any:
        """The stored result for these arguments; KeyError when there is none."""
        key = self._key(args, kwargs)
        value = self._store.get(key, _MISS)
        if value is _MISS:
            raise KeyError(f"{self._id}: no stored result for these arguments")
        return value

    def refresh(self, *args: Any, **kwargs: Any) -> Any:
        """Compute the result for these arguments again, store and return it."""
        key = self._key(args, kwargs)
        if self._readonly:
            return self.__wrapped__(*args, **kwargs)
        return self._compute(key, args, kwargs, depth=3)

    async def arefresh(self, *args: Any, **kwargs: Any) -> Any:
        """refresh for an async def function: await the recomputation."""
        key = self._key(args, kwargs)
        if self._readonly:
            return await self.__wrapped__(*args, **kwargs)
        return await self._acompute(key, args, kwargs)


class _Wrapper(functools.partial):
    """A memoized function: call it like the function it wraps.

    A partial over the closure that does the work, so a call costs no extra
    Python frame; it binds as a method, and pickles as (its cache, the function,
    the options) unless it can be found by name."""

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        return types.MethodType(self, obj)

    # joblib's ``func`` (the wrapped function), in place of partial's member:
    # calls go through the C struct, never through this attribute.
    @property
    def func(self) -> Any:  # type: ignore[override]
        return self.__dict__.get("_func", self._state.__wrapped__)

    @func.setter
    def func(self, value: Any) -> None:
        self.__dict__["_func"] = value

    @property
    def fingerprint(self) -> str:
        st = self._state
        if st._holder.__code__ is not st._code:
            st._sync_version()
        return st._fp

    def __reduce__(self) -> Any:
        st = self._state
        module = getattr(self, "__module__", None)
        qualname = self.__dict__.get("__qualname__")
        if isinstance(module, str) and isinstance(qualname, str):
            obj: Any = sys.modules.get(module)
            for part in qualname.split("."):
                obj = getattr(obj, part, None)
            if obj is self:
                return qualname  # pickled by reference, like a function
        return (_rebuild, (st._cache, st.__wrapped__, st._options))

    def __repr__(self) -> str:
        return f"<memoized {self._state._id}>"

    # partial's own state protocol is not ours
    def __setstate__(self, state: Any) -> None:  # pragma: no cover
        raise TypeError("a memoized function is rebuilt, not restored")


def _rebuild(cache: Any, func: Callable, options: dict) -> "_Wrapper":
    return memoize(cache, func, **options)


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


class Memoized(Generic[P, R]):
    """What type checkers see of a memoized function (the runtime class is a
    private ``functools.partial`` subclass): the wrapped function's signature,
    and the methods below."""

    __wrapped__: Callable[P, R]
    cache: Any
    fingerprint: str

    if TYPE_CHECKING:
        def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...
        def refresh(self, *args: P.args, **kwargs: P.kwargs) -> R: ...
        def bypass(self, *args: P.args, **kwargs: P.kwargs) -> R: ...
        def check(self, *args: P.args, **kwargs: P.kwargs) -> bool: ...
        def check_call_in_cache(self, *args: P.args, **kwargs: P.kwargs) -> bool: ...
        def lookup(self, *args: P.args, **kwargs: P.kwargs) -> Any: ...
        def cache_clear(self) -> int: ...
        def cache_info(self) -> CacheInfo: ...
        def __get__(self, obj: Any, objtype: Any = None) -> Any: ...


@overload
def memoize(
    cache: Callable[P, R],
    func: None = None,
) -> Memoized[P, R]: ...


@overload
def memoize(
    cache: Any,
    func: Callable[P, R],
    *,
    ttl: float | None = None,
    ignore: tuple | list = (),
    typed: bool = False,
    stampede: bool = False,
    lease_timeout: float = 60.0,
    key: Callable[..., Any] | None = None,
) -> Memoized[P, R]: ...


@overload
def memoize(
    cache: Any = None,
    func: None = None,
    *,
    ttl: float | None = None,
    ignore: tuple | list = (),
    typed: bool = False,
    stampede: bool = False,
    lease_timeout: float = 60.0,
    key: Callable[..., Any] | None = None,
) -> Callable[[Callable[P, R]], Memoized[P, R]]: ...


def memoize(
    cache: Any = None,
    func: Any = None,
    *,
    ttl: float | None = None,
    ignore: tuple | list = (),
    typed: bool = False,
    stampede: bool = False,
    lease_timeout: float = 60.0,
    key: Callable[..., Any] | None = None,
) -> Any:
    """Cache *func*'s results in *cache* (a ``Cache`` or a directory path).

    Use as ``@lmdbcache.memoize("~/.cache/proj")`` or ``@cache.memoize()``.
    *func* may be a function, an ``async def`` function, a ``functools.partial``,
    a bound method or a callable instance.

    ttl
        Seconds a result stays valid (``None``: until the code changes or it is
        evicted).
    ignore
        Names or positions of arguments left out of the key (``("self",)`` for
        methods, or a ``verbose`` flag that does not change the result).
    typed
        ``False`` (default): ``f(1)``, ``f(1.0)`` and ``f(True)`` share an entry, as
        with ``functools.lru_cache``.  ``True``: they are distinct.
    stampede
        Let only one caller at a time, across processes, compute a missing result;
        the others wait for it.  *lease_timeout* bounds how long a computation may
        hold the lease before another caller takes over.
    key
        A function called with the call's arguments whose (picklable) result
        stands for them in the key.

    The wrapper has ``cache_clear()``, ``cache_info()``, ``check(*args, **kw)``
    (also ``check_call_in_cache``), ``lookup(*args, **kw)``, ``refresh(*args,
    **kw)`` (recompute and store), ``bypass(*args, **kw)`` and ``__wrapped__``
    (call without the cache).
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
        raise TypeError(f"ignore must be a sequence of argument names or positions, "
                        f"not the str {ignore!r}")
    if key is not None and not callable(key):
        raise TypeError(f"key must be a callable, not {type(key).__name__}")

    def decorate(f: Any) -> Any:
        return _Memoized(cache, f, ttl, ignore, typed, stampede, lease_timeout, key).make_wrapper()

    if func is not None:
        return decorate(func)
    return decorate
