"""The remote tier: ``Cache(path, remote="redis://host:6379/0")``.

A node-local LMDB cache in front of a shared Redis (or Valkey, KeyDB: any
server speaking its protocol).  Reads are local first; a local miss asks Redis
and fills the local tier with the same encoded record (no re-pickling).  Writes
go to Redis first, then to the local tier, and publish an invalidation that one
listener thread per process applies to its machine's local copy.

Layout in Redis (``P`` = remote_prefix, ``NS`` = the namespace, "" by default,
``KE`` = lmdbcache's key encoding)::

    P NS \\0 KE      the value's record (canonical form, see csrc/raw.c),
                     or a native integer string for ints (INCRBY works on them)
    P __inval__: T  the pub/sub channel a node's writes publish invalidations
                     on: NS \\0 KE  (or  NS \\0  for clear()).  T is a 12-character
                     token of the node's origin (boot id and local path).

Each listener subscribes to 12 patterns that together match the channel of
every *other* token exactly once (see _patterns), so a write is never
delivered back to the machine that made it: the writer pays for a SET, not
for waking its own listener.

Failure: when Redis cannot be reached, reads serve the local tier and writes
go local only (one RuntimeWarning per outage; remote_errors="raise" raises
RemoteError instead).  Invalidations were missed meanwhile, so when Redis
answers again the local tier moves to a new *generation* before it serves: the
local namespace's name carries a generation number kept in the local file
(``__remote__`` namespace), so bumping it is O(1) and old entries are simply no
longer looked at.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
import threading
import time
import warnings
import weakref
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from . import _core
from .cache import Cache, _Internal, _check_ttl

_SCHEMES = ("redis", "rediss", "unix")
_MISS = object()
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 63) - 1
_RECORD_VERSION = 3

# incr: create with the default when absent, then INCRBY; returns {value, pttl}
_INCR_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], ARGV[2]) end
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
return {v, redis.call('PTTL', KEYS[1])}
"""

# set: SET (with PX when ARGV[3] is not empty) and PUBLISH the invalidation in
# one command -- one reply to wait for and parse instead of two
_SET_LUA = b"""
if ARGV[3] == '' then redis.call('SET', KEYS[1], ARGV[1])
else redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3]) end
redis.call('PUBLISH', ARGV[2], ARGV[4])
return 1
"""


_TOKEN_LEN = 12
_TOKEN_ALPHABET = b"0123456789abcdefghijklmnopqrstuvwxyz"


def _token(origin: bytes) -> bytes:
    """A node's channel token: 12 base-36 characters of a hash of its origin
    (36**12 is about 4.7e18, so two nodes sharing one is not a practical risk)."""
    n = int.from_bytes(hashlib.blake2b(origin, digest_size=16).digest(), "big")
    out = bytearray()
    for _ in range(_TOKEN_LEN):
        n, d = divmod(n, 36)
        out.append(_TOKEN_ALPHABET[d])
    return bytes(out)


def _glob_escape(b: bytes) -> bytes:
    return re.sub(rb"([*?\[\]\\])", rb"\\\1", b)


def _patterns(base_glob: bytes, tok: bytes) -> list[bytes]:
    """Glob patterns matching ``base + T`` for every token T other than tok.
    Pattern i matches the tokens that agree with tok before position i and
    differ at i, so another token matches exactly one of them (one delivery)
    and tok itself none."""
    return [base_glob + tok[:i] + b"[^" + tok[i:i + 1] + b"]" + b"?" * (len(tok) - 1 - i)
            for i in range(len(tok))]


class RemoteError(_core.Error, ConnectionError):
    """The remote tier could not be reached (with ``remote_errors="raise"``)."""


class _Unavailable(Exception):
    """Redis is down (or backing off): the caller falls back to the local tier."""


def _import_redis() -> Any:
    try:
        import redis
    except ImportError:
        raise ImportError(
            "Cache(remote=...) needs the redis client: pip install 'lmdbcache[redis]'"
        ) from None
    return redis


def check_remote(remote: Any) -> str | Any:
    """Validate remote= at construction: a URL (returned normalised) or a client."""
    if isinstance(remote, str):
        try:
            parts = urlsplit(remote)
            port = parts.port  # ValueError for a bad port
        except ValueError as exc:
            raise ValueError(f"remote: malformed URL {remote!r}: {exc}") from None
        if parts.scheme not in _SCHEMES:
            raise ValueError(
                f"remote: unsupported URL scheme {parts.scheme!r} in {remote!r} "
                f"(use redis://, rediss:// or unix://)"
            )
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError(f"remote: URL {remote!r} names no host")
        if parts.scheme == "unix" and not parts.path:
            raise ValueError(f"remote: URL {remote!r} names no socket path")
        db = parts.path.strip("/") if parts.scheme != "unix" else ""
        if db and not db.isdigit():
            raise ValueError(f"remote: the database in {remote!r} must be a number")
        del port
        _import_redis()
        return remote
    redis = _import_redis()
    if isinstance(remote, redis.Redis):
        return remote
    raise TypeError(
        f"remote must be a redis:// URL or a redis.Redis client, not {type(remote).__name__}"
    )


def _client_url(client: Any) -> str:
    """A URL that reconnects like client (for pickling a Cache)."""
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        return urlunsplit(("unix", "", kw["path"], f"db={kw.get('db', 0)}", ""))
    auth = ""
    if kw.get("password"):
        from urllib.parse import quote

        auth = f"{quote(kw.get('username') or '')}:{quote(kw['password'])}@"
    redis = _import_redis()
    ssl = issubclass(client.connection_pool.connection_class, redis.SSLConnection)
    scheme = "rediss" if ssl else "redis"
    return f"{scheme}://{auth}{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


# -- one connection per (server, process) -----------------------------------------------


class _Remote:
    """A Redis client and its health, shared by every remote Cache of this
    process that uses the same server and prefix; owns the listener thread."""

    def __init__(self, spec: Any, prefix: str, timeout: float, key: tuple) -> None:
        redis = _import_redis()
        self.redis = redis
        self.key = key
        if isinstance(spec, str):
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            self.url = spec
            self.client = redis.Redis.from_url(
                spec, socket_timeout=timeout, socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0), health_check_interval=0,
            )
        else:
            self.url = _client_url(spec)
            self.client = spec
        self.timeout = timeout
        self.prefix = prefix.encode()
        self.base = self.prefix + b"__inval__:"
        self.base_glob = _glob_escape(self.base)
        # token -> set once the listener's patterns for it are confirmed: only
        # then may a value from (or written to) Redis be kept in that node's
        # local tier, since only then will a later write elsewhere invalidate it
        self.origins: dict[bytes, threading.Event] = {}
        self.pid = os.getpid()
        self.down = False
        self.warned = False
        self.next_try = 0.0
        self.backoff = 0.05
        self.lock = threading.Lock()
        self.caches: "weakref.WeakValueDictionary[int, RemoteCache]" = (
            weakref.WeakValueDictionary())
        self.invalidations = 0  # applied by the listener (miss path race check)
        self.listener: threading.Thread | None = None
        self.stop = threading.Event()
        self.incr_script = self.client.register_script(_INCR_LUA)
        import hashlib

        self.set_sha = hashlib.sha1(_SET_LUA).hexdigest().encode()
        self.lock_fds: dict[str, int] = {}
        # redis-py >= 5.3 deprecates get_connection's command name
        version = tuple(int(x) for x in redis.__version__.split(".")[:2] if x.isdigit())
        self.plain_get = version >= (5, 3)
        kw = self.client.get_connection_kwargs() if hasattr(self.client, "get_connection_kwargs") \
            else self.client.connection_pool.connection_kwargs
        if kw.get("decode_responses"):
            raise ValueError("remote: the redis client must not decode responses "
                             "(decode_responses=False): records are bytes")

    def set_publish(self, rk: bytes, wire: bytes, px: int | None, channel: bytes,
                    message: bytes) -> Any:
        """SET rk wire [PX px] and PUBLISH message, in one script call (loaded
        by EVAL when the server does not know it yet: a restart, SCRIPT FLUSH)."""
        args = (1, rk, wire, channel, b"" if px is None else b"%d" % px, message)
        out = self.run((b"EVALSHA", self.set_sha) + args)[0]
        if isinstance(out, self.redis.exceptions.NoScriptError):
            out = self.run((b"EVAL", _SET_LUA) + args)[0]
        return out

    def run(self, *cmds: tuple) -> list:
        """Commands in one round trip on one pooled connection: redis-py's
        Pipeline costs about as much as a second round trip on loopback.
        Error replies come back as ResponseError objects in the list."""
        pool = self.client.connection_pool
        conn = pool.get_connection() if self.plain_get else pool.get_connection("GET")
        try:
            conn.send_packed_command(conn.pack_commands(cmds))
            out = []
            for _ in cmds:
                try:
                    out.append(conn.read_response())
                except self.redis.ResponseError as exc:
                    out.append(exc)
            return out
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    # health ----------------------------------------------------------------------
    def errors(self) -> tuple:
        r = self.redis
        return (r.ConnectionError, r.TimeoutError, OSError)

    def call(self, cache: "RemoteCache", fn: Any) -> Any:
        """fn(client), or _Unavailable (policy local) / RemoteError (raise)."""
        if self.down and time.monotonic() < self.next_try:
            return self._fail(cache, None)
        try:
            result = fn(self.client)
        except self.errors() as exc:
            return self._fail(cache, exc)
        if self.down:
            self.recovered()
        return result

    def _fail(self, cache: "RemoteCache", exc: BaseException | None) -> Any:
        with self.lock:
            if exc is not None:
                if not self.down:
                    self.down = True
                    self.backoff = 0.05
                else:
                    self.backoff = min(self.backoff * 2, 1.0)
                self.next_try = time.monotonic() + self.backoff
        if cache._remote_errors == "raise":
            raise RemoteError(f"remote cache {self.url} unreachable: {exc or 'backing off'}") from exc
        if not self.warned:
            self.warned = True
            warnings.warn(
                f"lmdbcache: remote cache {self.url} unreachable ({exc}); serving the "
                f"local tier until it answers again",
                RuntimeWarning,
                stacklevel=4,
            )
        raise _Unavailable

    def recovered(self) -> None:
        """Redis answers again: invalidate every local tier (O(1)) before serving."""
        with self.lock:
            if not self.down:
                return
            for cache in list(self.caches.values()):
                try:
                    cache._bump_generation()
                except Exception as exc:  # noqa: BLE001 - one broken cache must not stop the rest
                    warnings.warn(f"lmdbcache: could not invalidate the local tier of "
                                  f"{cache.path!r}: {exc}", RuntimeWarning, stacklevel=2)
            self.down = False
            self.warned = False
            self.backoff = 0.05

    # listener --------------------------------------------------------------------
    def add_origin(self, tok: bytes) -> None:
        """Listen for the writes of every node but the one whose token is tok."""
        with self.lock:
            if tok not in self.origins:
                self.origins[tok] = threading.Event()

    def listening(self, cache: "RemoteCache") -> bool:
        ev = self.origins.get(cache._token)
        return ev is not None and ev.is_set()

    def start_listener(self) -> None:
        if self.listener is not None or os.getpid() != self.pid:
            return
        with self.lock:
            if self.listener is not None:
                return
            self.listener = threading.Thread(
                target=self._listen, name="lmdbcache-remote-invalidations", daemon=True
            )
            self.listener.start()

    def _listen(self) -> None:
        ready_once = False
        while not self.stop.is_set():
            pubsub = None
            try:
                pubsub = self.client.pubsub()
                owner: dict[bytes, bytes] = {}  # pattern asked for -> its token
                pending: dict[bytes, bytes] = {}  # a token's last pattern -> the token

                def subscribe_new() -> None:
                    """Subscribe for new local paths; unsubscribe for the ones
                    whose last cache is gone (their patterns would match this
                    node's own channel and wake the listener for nothing)."""
                    with self.lock:
                        live = {c._token for c in list(self.caches.values())}
                        gone = [t for t in self.origins if t not in live]
                        for tok in gone:
                            del self.origins[tok]
                        sent = set(owner.values())
                        new = [t for t in self.origins if t not in sent]
                    for tok in gone:
                        if tok in sent:
                            pats = _patterns(self.base_glob, tok)
                            for p in pats:
                                del owner[p]
                            pubsub.punsubscribe(*pats)
                    for tok in new:
                        pats = _patterns(self.base_glob, tok)
                        owner.update(dict.fromkeys(pats, tok))
                        pubsub.psubscribe(*pats)
                        pending[pats[-1]] = tok

                def handle(msg: Any, confirmed: list) -> None:
                    kind = msg.get("type")
                    if kind == "pmessage":
                        self._apply(owner.get(msg["pattern"]), msg["data"])
                    elif kind == "psubscribe":
                        tok = pending.pop(msg["channel"], None)
                        if tok is not None:
                            confirmed.append(tok)

                # subscribe, and wait until Redis confirms every pattern
                subscribe_new()
                confirmed: list = []
                deadline = time.monotonic() + self.timeout
                while pending:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise self.redis.ConnectionError("subscription not confirmed")
                    msg = pubsub.get_message(timeout=left)
                    if msg is not None:
                        handle(msg, confirmed)
                if self.down or ready_once:
                    # invalidations may have been missed while disconnected
                    with self.lock:
                        self.down = True
                    self.recovered()
                ready_once = True
                for tok in confirmed:
                    self.origins[tok].set()
                last_check = time.monotonic()
                while not self.stop.is_set():
                    subscribe_new()  # a cache of another local path joined
                    msg = pubsub.get_message(timeout=0.1)
                    if msg is not None:
                        confirmed = []
                        handle(msg, confirmed)
                        for tok in confirmed:
                            self.origins[tok].set()
                    now = time.monotonic()
                    if now - last_check > 0.5:
                        last_check = now
                        self._check_generations()
            except Exception as exc:  # noqa: BLE001 - the listener must survive
                for ev in list(self.origins.values()):
                    ev.clear()
                if isinstance(exc, self.errors()):
                    with self.lock:
                        if not self.down:
                            self.down = True
                            self.backoff = 0.05
                self.stop.wait(min(self.backoff, 0.2))
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001
                        pass

    def _check_generations(self) -> None:
        # a function of its own: a loop variable left in the listener's
        # long-lived frame would keep the last cache alive (and its patterns
        # subscribed) after the user dropped it
        for cache in list(self.caches.values()):
            try:
                cache._check_generation()
            except Exception:  # noqa: BLE001
                pass

    def _apply(self, tok: bytes | None, data: bytes) -> None:
        """Another node wrote: drop the copies in the local tiers of node tok."""
        ns, sep, kb = data.partition(b"\0")
        if tok is None or not sep:
            return
        self.invalidations += 1
        for cache in list(self.caches.values()):
            if cache._token != tok or cache._ns_bytes != ns or cache._readonly:
                continue
            try:
                if kb:
                    _core.Store._delete_raw(cache, kb)
                else:
                    _core.Store.clear(cache)
            except Exception:  # noqa: BLE001 - closed, or the file went away
                pass

    def keeps_local(self, cache: "RemoteCache") -> bool:
        """May a value be kept in cache's local tier now (the listener hears
        every other node's writes)?"""
        ev = self.origins.get(cache._token)
        return ev is not None and (ev.is_set() or ev.wait(self.timeout))

    def channel(self, cache: "RemoteCache") -> bytes:
        return self.base + cache._token

    def message(self, cache: "RemoteCache", kb: bytes) -> bytes:
        return cache._ns_bytes + b"\0" + kb

    def publish(self, cache: "RemoteCache", kb: bytes, pipe: Any = None) -> None:
        (pipe or self.client).publish(self.channel(cache), self.message(cache, kb))


_remotes: dict[tuple, _Remote] = {}
_remotes_lock = threading.Lock()


def _remote_for(spec: Any, prefix: str, timeout: float) -> _Remote:
    key = (spec if isinstance(spec, str) else id(spec), prefix, timeout, os.getpid())
    r = _remotes.get(key)
    if r is None:
        with _remotes_lock:
            r = _remotes.get(key)
            if r is None:
                r = _remotes[key] = _Remote(spec, prefix, timeout, key)
    return r


_live: "weakref.WeakValueDictionary[int, RemoteCache]" = weakref.WeakValueDictionary()


def _after_fork() -> None:
    # threads and sockets do not survive fork: the child builds its own
    # connection and listener for every remote cache it inherited
    _remotes.clear()
    for cache in list(_live.values()):
        cache._remote_obj = None
        try:
            cache._r()
        except Exception:  # noqa: BLE001 - the first use retries
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


# -- the Cache -------------------------------------------------------------------------


class RemoteCache(Cache):
    """A :class:`Cache` whose misses and writes go through a shared Redis.
    Built by ``Cache(path, remote=...)``; see docs/guides/distributed.md."""

    _is_remote = True

    def __init__(
        self,
        path: Any = "~/.cache/lmdbcache",
        *,
        remote: Any,
        remote_prefix: str = "lmdbcache:",
        remote_errors: str = "local",
        remote_timeout: float = 0.25,
        **options: Any,
    ) -> None:
        remote = check_remote(remote)
        if not isinstance(remote_prefix, str) or "\0" in remote_prefix:
            raise ValueError(f"remote_prefix must be a str without NUL, got {remote_prefix!r}")
        if remote_errors not in ("local", "raise"):
            raise ValueError(f"remote_errors must be 'local' or 'raise', got {remote_errors!r}")
        if isinstance(remote_timeout, bool) or not isinstance(remote_timeout, (int, float)) \
                or not remote_timeout > 0:
            raise ValueError(f"remote_timeout must be a positive number of seconds, got "
                             f"{remote_timeout!r}")
        super().__init__(path, **options)
        self._remote_spec = remote
        self._remote_prefix = remote_prefix
        self._remote_errors = remote_errors
        self._remote_timeout = float(remote_timeout)
        self._options.update(remote=remote if isinstance(remote, str) else _client_url(remote),
                             remote_prefix=remote_prefix, remote_errors=remote_errors,
                             remote_timeout=float(remote_timeout))
        ns = self._options["namespace"] or ""
        self._user_ns = ns
        self._ns_bytes = ns.encode("utf-8", "surrogatepass")
        self._rprefix = remote_prefix.encode() + self._ns_bytes + b"\0"
        self._readonly = bool(self._options["readonly"])
        self._origin = f"{boot_or_host()}:{self.path}".encode("utf-8", "surrogateescape")
        self._token = _token(self._origin)
        self._gen = 0
        self._remote_obj: _Remote | None = None
        self._set_miss_hook(_miss_hook(weakref.ref(self)))
        self._check_generation()
        _live[id(self)] = self
        self._r()  # the listener runs from now on (local hits never reach Python)

    # -- plumbing ------------------------------------------------------------------------

    def _r(self) -> _Remote:
        r = self._remote_obj
        if r is None or r.pid != os.getpid():
            r = _remote_for(self._remote_spec, self._remote_prefix, self._remote_timeout)
            with r.lock:  # the listener prunes tokens without a cache under it
                r.caches[id(self)] = self
            r.add_origin(self._token)
            self._remote_obj = r
            if not self._readonly:
                self._watch(r)
            r.start_listener()
        return r

    def _watch(self, r: _Remote) -> None:
        """Hold a shared flock on <path>/remote.lock while this process listens.
        The first listener on the machine finds no other holder: nobody applied
        invalidations meanwhile, so the local tier starts a new generation."""
        if self.path in r.lock_fds:
            return
        fd = os.open(os.path.join(self.path, "remote.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except OSError:
            alone = False
        if alone and self._has_local_data():
            # nobody on this machine applied invalidations since the last run
            self._bump_generation()
            for cache in list(r.caches.values()):
                cache._check_generation()
        fcntl.flock(fd, fcntl.LOCK_SH)
        r.lock_fds[self.path] = fd

    def _has_local_data(self) -> bool:
        try:
            return len(self) > 0 or self._gen_store().get(("gen", self._remote_prefix), 0) > 0
        except Exception:  # noqa: BLE001
            return True

    def _rkey(self, kb: bytes) -> bytes:
        return self._rprefix + kb

    def _gen_store(self) -> Cache:
        gs = self.__dict__.get("_gs")
        if gs is None:
            options = {k: v for k, v in self._options.items() if not k.startswith("remote")}
            options.update(namespace=_Internal("__remote__"), ttl=None)
            gs = self.__dict__["_gs"] = Cache(self.path, **options)
        return gs

    def _local_ns(self, gen: int) -> str:
        if gen == 0:
            return self._user_ns
        name = f"__g{gen}__{self._user_ns}"
        if len(name.encode("utf-8", "surrogatepass")) > 200:
            import hashlib

            name = f"__g{gen}__" + hashlib.sha256(self._ns_bytes).hexdigest()
        return _Internal(name)

    def _switch(self, gen: int) -> None:
        if gen == self._gen:
            return
        self._gen = gen
        # not Store.__init__: another thread may be inside a call on this Store
        self._set_namespace(self._local_ns(gen))

    def _check_generation(self) -> None:
        if self._readonly:
            try:
                gen = self._gen_store().get(("gen", self._remote_prefix), 0)
            except Exception:  # noqa: BLE001 - a read-only file without the namespace
                gen = 0
        else:
            gen = self._gen_store().get(("gen", self._remote_prefix), 0)
        if gen != self._gen:
            self._switch(gen)

    def _bump_generation(self) -> None:
        if self._readonly:
            return self._check_generation()
        gs = self._gen_store()
        key = ("gen", self._remote_prefix)
        with gs.transaction():
            cur = gs.get(key, 0)
            if cur == self._gen:  # not bumped yet by another process of this machine
                cur += 1
                gs[key] = cur
        self._switch(cur)

    # -- reads ---------------------------------------------------------------------------

    def _on_miss(self, key: Any) -> tuple | None:
        """The miss hook (called by the C get, [] and in): ask Redis."""
        r = self._r()
        kb = self._key_raw(key)
        rk = self._rprefix + kb
        seen = r.invalidations

        try:
            rec, pttl = r.call(self, lambda c: r.run((b"GET", rk), (b"PTTL", rk)))
        except _Unavailable:
            return None
        if rec is None:
            return None
        value = self._fill(key, rec, pttl, r.keeps_local(self))
        if value is _MISS:
            return None
        if r.invalidations != seen and not self._readonly:
            _core.Store.delete(self, key)  # invalidated while we fetched: do not keep it
        return (value,)

    def _fill(self, key: Any, rec: bytes, pttl: int, keep: bool = True) -> Any:
        """Store a remote record locally (with the remaining TTL); its value."""
        expires = time.time() + pttl / 1000.0 if pttl > 0 else (0.0 if pttl == -1 else -1.0)
        store = keep and not self._readonly
        if not rec or rec[0] != _RECORD_VERSION:
            try:
                n = int(rec)  # a counter: a native integer for INCRBY
            except ValueError:
                warnings.warn(f"lmdbcache: unreadable remote record under {rec[:40]!r}",
                              RuntimeWarning, stacklevel=3)
                return _MISS
            if store:
                _, record, _ = self._encode_raw(key, n)
                try:
                    self._put_raw(key, record, expires, 2)
                except KeyError:
                    return _MISS
            return n
        try:
            return self._put_raw(key, rec, expires, store)
        except KeyError:  # expired in transit
            return _MISS
        except _core.CorruptError:
            warnings.warn(f"lmdbcache: corrupt remote record for {key!r} ignored",
                          RuntimeWarning, stacklevel=3)
            return _MISS

    def get_many(self, keys: Any) -> dict:
        keys = list(keys)
        found = _core.Store.get_many(self, keys)
        missing = [k for k in keys if k not in found]
        if not missing:
            return found
        r = self._r()
        rks = [self._rprefix + self._key_raw(k) for k in missing]

        cmds = []
        for rk in rks:
            cmds += [(b"GET", rk), (b"PTTL", rk)]
        try:
            out = r.call(self, lambda c: r.run(*cmds))
        except _Unavailable:
            return found
        keep = r.keeps_local(self)
        for i, k in enumerate(missing):
            rec, pttl = out[2 * i], out[2 * i + 1]
            if rec is not None:
                v = self._fill(k, rec, pttl, keep)
                if v is not _MISS:
                    found[k] = v
        return found

    # -- writes ----------------------------------------------------------------------------

    def _record(self, key: Any, value: Any, ttl: Any) -> tuple:
        kb, record, expires = self._encode_raw(key, value, ttl)
        wire = record
        if type(value) is int and _INT_MIN <= value <= _INT_MAX:
            wire = str(value).encode()
        px = max(1, int(round((expires - time.time()) * 1000))) if expires else None
        return kb, record, wire, px

    def _remote_write(self, fn: Any) -> Any:
        """fn(client) on Redis; _MISS when the write went local only."""
        if self._readonly:
            self._check_writable()
        try:
            return self._r().call(self, fn)
        except _Unavailable:
            return _MISS

    def _local_put(self, key: Any, record: bytes, remote_ok: bool) -> None:
        """The local half of a write.  Kept only while invalidations arrive;
        otherwise the local copy is dropped (the next read asks Redis)."""
        if not remote_ok or self._r().keeps_local(self):
            self._put_raw(key, record, -1.0, 2)
        else:
            _core.Store.delete(self, key)

    def _check_writable(self) -> None:
        raise _core.ReadOnlyError(
            f"cannot write to '{self.path}': the cache was opened with readonly=True")

    def set(self, key: Any, value: Any, ttl: Any = None) -> None:
        kb, record, wire, px = self._record(key, value, ttl)
        rk = self._rprefix + kb
        r = self._r()
        chan, msg = r.channel(self), r.message(self, kb)
        ok = self._remote_write(lambda c: r.set_publish(rk, wire, px, chan, msg)) is not _MISS
        self._local_put(key, record, ok)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.set(key, value)

    def add(self, key: Any, value: Any, ttl: Any = None) -> bool:
        kb, record, wire, px = self._record(key, value, ttl)
        rk = self._rprefix + kb
        r = self._r()
        added = self._remote_write(lambda c: c.set(rk, wire, px=px, nx=True))
        if added is _MISS:
            return _core.Store.add(self, key, value, ttl=ttl)
        if not added:
            return False
        self._remote_write(lambda c: r.publish(self, kb))
        self._local_put(key, record, True)
        return True

    def delete(self, key: Any) -> bool:
        kb = self._key_raw(key)
        rk = self._rprefix + kb
        r = self._r()
        got = self._remote_write(
            lambda c: r.run((b"DEL", rk), (b"PUBLISH", r.channel(self), r.message(self, kb))))
        local = _core.Store.delete(self, key)
        return bool(got[0]) if got is not _MISS else local

    def __delitem__(self, key: Any) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def pop(self, key: Any, default: Any = _MISS) -> Any:
        kb = self._key_raw(key)
        rk = self._rprefix + kb
        r = self._r()

        def write(c: Any) -> Any:
            with c.pipeline(transaction=False) as p:
                p.pttl(rk)
                p.getdel(rk)
                r.publish(self, kb, p)
                return p.execute()[:2]

        got = self._remote_write(write)
        local = _core.Store.pop(self, key, _MISS)
        if got is not _MISS:
            pttl, rec = got
            if rec is None:
                value = _MISS
            else:
                if rec and rec[0] == _RECORD_VERSION:
                    try:
                        value = self._put_raw(key, rec, -1.0, False)
                    except (KeyError, _core.CorruptError):
                        value = _MISS
                else:
                    value = int(rec)
        else:
            value = local
        if value is _MISS:
            if default is _MISS:
                raise KeyError(key)
            return default
        return value

    def _set_many(self, pairs: Any, ttl: Any = None) -> None:
        items = [tuple(p) for p in pairs]
        for p in items:
            if len(p) != 2:
                raise ValueError("set_many needs (key, value) pairs")
        encoded = [(k, *self._record(k, v, ttl)) for k, v in items]
        r = self._r()

        def write(c: Any) -> Any:
            with c.pipeline(transaction=True) as p:
                for _k, kb, _rec, wire, px in encoded:
                    p.set(self._rprefix + kb, wire, px=px)
                for _k, kb, _rec, _w, _px in encoded:
                    r.publish(self, kb, p)
                return p.execute()

        ok = self._remote_write(write) is not _MISS
        with self.transaction():
            for k, _kb, rec, _w, _px in encoded:
                self._local_put(k, rec, ok)

    def delete_many(self, keys: Any) -> int:
        keys = list(keys)
        kbs = [self._key_raw(k) for k in keys]
        r = self._r()

        def write(c: Any) -> Any:
            with c.pipeline(transaction=True) as p:
                p.delete(*[self._rprefix + kb for kb in kbs]) if kbs else p.ping()
                for kb in kbs:
                    r.publish(self, kb, p)
                return p.execute()[0]

        n = self._remote_write(write) if kbs else 0
        local = _core.Store.delete_many(self, keys)
        return int(n) if n is not _MISS and not isinstance(n, bool) else local

    def _unlink_matching(self, pattern: bytes) -> Any:
        """UNLINK every Redis key matching pattern (SCAN, in batches), then
        tell the other nodes to drop this namespace's local copies (there is
        no prefix message: a node then re-reads from Redis what it needs).
        The number of keys unlinked, or _MISS when Redis is unavailable."""
        r = self._r()

        def write(c: Any) -> Any:
            n, batch = 0, []
            for k in c.scan_iter(match=pattern, count=1000):
                batch.append(k)
                if len(batch) >= 1000:
                    n += c.unlink(*batch)
                    batch = []
            if batch:
                n += c.unlink(*batch)
            r.publish(self, b"")
            return n

        return self._remote_write(write)

    def clear(self) -> None:
        self._unlink_matching(_glob_escape(self._rprefix) + b"*")
        _core.Store.clear(self)

    def _prefix_delete(self, prefix: Any) -> int:
        """Delete the keys extending the tuple key prefix, on Redis too (memoize's
        cache_clear: otherwise the next call would find the result in Redis).
        A tuple key's encoding is a byte prefix of every key extending it."""
        if not isinstance(prefix, tuple):
            raise TypeError(f"prefix must be a tuple, not {type(prefix).__name__}")
        pb = self._key_raw(prefix)
        n = self._unlink_matching(_glob_escape(self._rprefix + pb) + b"*")
        local = _core.Store._prefix_delete(self, prefix)
        return int(n) if n is not _MISS else local

    def incr(self, key: Any, delta: int = 1, default: int = 0) -> int:
        for name, v in (("delta", delta), ("default", default)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, not {type(v).__name__}")
        kb = self._key_raw(key)
        rk = self._rprefix + kb
        r = self._r()
        redis = r.redis

        def write(c: Any) -> Any:
            try:
                return r.incr_script(keys=[rk], args=[delta, default], client=c)
            except redis.ResponseError as exc:
                return exc

        got = self._remote_write(write)
        if got is _MISS:
            return _core.Store.incr(self, key, delta, default)
        if isinstance(got, Exception):
            if "overflow" in str(got):
                raise OverflowError(f"incr of {key!r} overflows 64 bits") from None
            raise TypeError(f"the value under {key!r} is not an int (in {r.url})") from None
        value, pttl = int(got[0]), int(got[1])
        self._remote_write(lambda c: r.publish(self, kb))
        _, record, _ = self._encode_raw(key, value)
        expires = time.time() + pttl / 1000.0 if pttl > 0 else 0.0
        try:
            if r.keeps_local(self):
                self._put_raw(key, record, expires, 2)
            else:
                _core.Store.delete(self, key)
        except KeyError:
            pass
        return value

    def touch(self, key: Any, ttl: Any = None) -> bool:
        if ttl is not None:
            _check_ttl(ttl)
        t = ttl if ttl is not None else self._options["ttl"]
        kb = self._key_raw(key)
        rk = self._rprefix + kb
        r = self._r()

        def write(c: Any) -> Any:
            with c.pipeline(transaction=False) as p:
                p.pexpire(rk, max(1, int(t * 1000))) if t else p.persist(rk)
                p.exists(rk)
                r.publish(self, kb, p)
                return p.execute()[1]

        found = self._remote_write(write)
        local = _core.Store.touch(self, key, ttl=ttl)
        return bool(found) if found is not _MISS else local

    # -- identity --------------------------------------------------------------------------

    def __repr__(self) -> str:
        base = super().__repr__()
        return base[:-1] + f", remote={self._options['remote']!r})"

    def _internal_namespace(self, name: str) -> "Cache":
        options = dict(self._options, namespace=_Internal(name), ttl=None)
        return RemoteCache(self.path, **options)

    def _open_namespace(self, name: Any) -> "Cache":
        if name == self._options["namespace"]:
            return self
        if name is not None and name.startswith("__"):
            name = _Internal(name)
        return RemoteCache(self.path, **dict(self._options, namespace=name, ttl=None))


def _miss_hook(ref: Any) -> Any:
    def hook(key: Any) -> Any:
        cache = ref()
        return None if cache is None else cache._on_miss(key)

    return hook


def boot_or_host() -> str:
    from .cache import boot_id

    import socket

    return boot_id() or socket.gethostname()
