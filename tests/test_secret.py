"""Cache(secret=...): authenticated records.

Every record of a signed cache carries a keyed BLAKE2b-128 MAC over its
namespace, key, flags, expiry and value.  The attacker here can write the
files (a careless, world-writable directory opened with allow_shared=True)
but does not know the secret: whatever it plants, copies or forges is refused
with CorruptError before anything is decoded -- never unpickled.

The attacks that need another uid run as uid 65534 in a forked child (root
only, like tests/test_security.py); the MAC itself is checked against
hashlib.blake2b(key=...) record by record.
"""
import os
import pickle
import struct
import sys

import lmdb
import pytest

import lmdbcache
import lmdbcache.memo  # noqa: F401  (the attacker, as nobody, may not read the stdlib)
from lmdbcache import Cache, CorruptError, SecretError

SECRET = b"s3cret-s3cret-s3cret-s3cret-0001"
OTHER = b"another-secret-another-secret-02"


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _attacker import as_attacker, make_arena, needs_root  # noqa: E402
from _records import drain, expected_mac, make_record, recrc  # noqa: E402

def raw_env(path):
    return lmdb.open(path, max_dbs=64, map_size=1 << 30, subdir=True)


def raw_items(path, db=None):
    env = raw_env(path)
    try:
        with env.begin() as txn:
            handle = env.open_db(db, txn=txn, create=False) if db else None
            return [(k, v) for k, v in txn.cursor(db=handle) if not k.startswith(b"__")]
    finally:
        env.close()


def raw_put(path, key, value, db=None):
    env = raw_env(path)
    try:
        with env.begin(write=True) as txn:
            handle = env.open_db(db, txn=txn, create=False) if db else None
            txn.put(key, value, db=handle)
    finally:
        env.close()


class Payload:
    """Unpickling this creates (opens for writing) the file *path*."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# ---- the MAC is keyed BLAKE2b, computed right -------------------------------------


@pytest.mark.parametrize("secret", [SECRET, b"k" * 64, b"a much longer secret " * 10],
                         ids=["32-byte", "64-byte", "hashed-long"])
def test_every_record_carries_the_blake2b_mac_of_its_key_and_bytes(tmp_path, secret):
    path = str(tmp_path / "c")
    values = {f"k{n}": b"v" * n for n in range(0, 300, 7)}  # messages across block edges
    values.update({"int": 5, "none": None, ("t", 1.5): "tuple key", "pickled": {"a": [1]}})
    with Cache(path, secret=secret) as c:
        for k, v in values.items():
            c.set(k, v, ttl=3600 if k == "int" else None)
        c.namespace("ns")["x"] = "in a namespace"
        c.incr("counter")
        c.touch("k7", ttl=60)
    checked = 0
    for db, dbname in ((None, b""), (b"__ns__:ns", b"__ns__:ns")):
        for key, rec in raw_items(path, db):
            assert rec[0] == 3 and rec[2] & 0x08, "a record of a signed cache without a MAC"
            assert rec[7:23] == expected_mac(secret, dbname, key, rec), key
            checked += 1
    assert checked == len(values) + 2
    with Cache(path, secret=secret) as c:
        assert {k: c[k] for k in values} == values


def test_unsigned_cache_records_carry_no_mac(tmp_path):
    path = str(tmp_path / "c")
    with Cache(path) as c:
        c["k"] = b"v"
    [(_, rec)] = raw_items(path)
    assert rec[2] & 0x08 == 0 and len(rec) == 7 + 1


# ---- opening ------------------------------------------------------------------------


def test_signed_cache_needs_its_secret(tmp_path, monkeypatch):
    monkeypatch.delenv("LMDBCACHE_SECRET", raising=False)
    path = str(tmp_path / "c")
    with Cache(path, secret=SECRET) as c:
        c["k"] = "v"
    with pytest.raises(SecretError, match="signed cache.*secret"):
        Cache(path)
    with pytest.raises(SecretError, match="another secret"):
        Cache(path, secret=OTHER)
    with pytest.raises(SecretError):
        Cache(path, readonly=True)
    assert issubclass(SecretError, lmdbcache.Error) and issubclass(SecretError, PermissionError)
    with Cache(path, secret=SECRET.decode()) as c:  # str: its UTF-8
        assert c["k"] == "v"
    monkeypatch.setenv("LMDBCACHE_SECRET", SECRET.decode())
    with Cache(path) as c:  # from the environment
        assert c["k"] == "v"
        assert c.options["secret"] is None  # a child reads its own environment
    with Cache(path, readonly=True) as c:
        assert c["k"] == "v"


def test_secret_given_for_an_unsigned_cache(tmp_path):
    path = str(tmp_path / "c")
    with Cache(path) as c:
        c["k"] = "v"
    with pytest.raises(SecretError, match="written without a secret"):
        Cache(path, secret=SECRET)
    with Cache(path) as c:  # nothing lost
        assert c["k"] == "v"
    # an existing cache that holds nothing is signed on the first open with a secret
    bare = str(tmp_path / "bare")
    Cache(bare).close()
    with Cache(bare, secret=SECRET) as c:
        c["k"] = 1
    with pytest.raises(SecretError):
        Cache(bare)


def test_one_process_one_secret_per_cache(tmp_path):
    path = str(tmp_path / "c")
    with Cache(path, secret=SECRET) as c:
        with pytest.raises(SecretError, match="another secret"):
            Cache(path, secret=OTHER)
        with pytest.raises(SecretError, match="signed"):
            Cache(path)
        with Cache(path, secret=SECRET) as d:
            d["k"] = 1
        assert c["k"] == 1
    plain = str(tmp_path / "plain")
    with Cache(plain):
        with pytest.raises(SecretError, match="without a secret"):
            Cache(plain, secret=SECRET)


def test_bad_secrets_are_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Cache(str(tmp_path / "c"), secret=b"short")
    with pytest.raises(TypeError, match="secret must be bytes or str"):
        Cache(str(tmp_path / "c"), secret=12345678901234567890)


def test_secret_is_hidden_but_travels_to_workers(tmp_path):
    path = str(tmp_path / "c")
    with Cache(path, secret=SECRET) as c:
        assert c.options["secret"] == "<hidden>"
        assert SECRET.decode() not in repr(c)
        c2 = pickle.loads(pickle.dumps(c))
        c2["k"] = 2
        assert c["k"] == 2
        c2.close()
        ns = c.namespace("other")
        ns["x"] = 1
        assert ns["x"] == 1


# ---- tampering, replay and forgery: refused, never decoded -------------------------


def _tamper_flip(path, marker):
    [(key, rec)] = [(k, v) for k, v in raw_items(path) if k == b"sk"]
    rec = bytearray(rec)
    rec[-1] ^= 1
    # recompute the CRC, as an attacker would: only the MAC can catch it
    raw_put(path, key, recrc(b"", key, rec))


def _tamper_plant_unsigned(path, marker):
    raw_put(path, b"sk", make_record(b"", b"sk", "p", pickle.dumps(Payload(marker))))


def _tamper_plant_forged_mac(path, marker):
    raw_put(path, b"sk", make_record(b"", b"sk", "p", pickle.dumps(Payload(marker)),
                                     mac=os.urandom(16)))


def _tamper_replay(path, marker):
    # the victim's own signed record of key "a", copied under "k"
    [rec] = [v for k, v in raw_items(path) if k == b"sa"]
    raw_put(path, b"sk", recrc(b"", b"sk", rec))  # the checksum an attacker can compute


def _tamper_replay_other_namespace(path, marker):
    [rec] = [v for k, v in raw_items(path, b"__ns__:ns") if k == b"sk"]
    raw_put(path, b"sk", recrc(b"", b"sk", rec))


def _tamper_foreign(path, marker):
    # a record signed with another secret (the attacker's own cache)
    own = os.path.join(os.path.dirname(path), "attackers")
    with Cache(own, secret=OTHER) as c:
        c["k"] = Payload(marker)
    [rec] = [v for k, v in raw_items(own) if k == b"sk"]
    raw_put(path, b"sk", recrc(b"", b"sk", rec))


def _tamper_pickled_key(path, marker):
    key = b"p" + pickle.dumps(Payload(marker))
    raw_put(path, key, make_record(b"", key, "i", struct.pack("=q", 1)))


def _tamper_memo(path, marker):
    # a result record planted under the memo key of expensive(1)
    [key] = [k for k, _ in raw_items(path, b"__ns__:__memo__") if k.startswith(b"t\x02sr")]
    rec = make_record(b"__ns__:__memo__", key, "p", pickle.dumps(Payload(marker)))
    raw_put(path, key, rec, db=b"__ns__:__memo__")


_RESULT = {"value": 42}


def expensive(x):
    return _RESULT["value"]


def _victim(arena):
    path = str(arena / "cache")
    with Cache(path, secret=SECRET) as c:
        c["k"] = b"victim's bytes"
        c["a"] = b"the value of a"
        c.namespace("ns")["k"] = b"namespaced"
        c.memoize()(expensive)(1)
    os.chmod(path, 0o777)
    for name in os.listdir(path):
        os.chmod(os.path.join(path, name), 0o666)
    return path


@pytest.fixture
def arena():
    """A root-owned 0777 directory: the careless setup."""
    yield from make_arena(0o777)


@needs_root
@pytest.mark.parametrize("tamper", [
    _tamper_flip, _tamper_plant_unsigned, _tamper_plant_forged_mac, _tamper_replay,
    _tamper_replay_other_namespace, _tamper_foreign,
], ids=["flipped-bit", "unsigned-pickle", "forged-mac", "replayed-from-another-key",
        "replayed-from-another-namespace", "signed-with-another-secret"])
def test_tampered_records_are_refused_unread(arena, tamper):
    path = _victim(arena)
    marker = arena / "payload-ran"
    as_attacker(tamper, path, str(marker))
    with Cache(path, secret=SECRET, allow_shared=True) as c:
        with pytest.raises(CorruptError, match="MAC|not signed"):
            c.get("k")
        with pytest.raises(CorruptError):
            c["k"]
        with pytest.raises(CorruptError):
            c.get_many(["a", "k"])
        with pytest.raises(CorruptError):
            dict(c.items())
        assert c["a"] == b"the value of a"  # the rest is intact
        problems = c.verify().problems
        assert [p.key for p in problems] == [b"sk"]
        c["k"] = b"rewritten"  # a write replaces the bad record
        assert c["k"] == b"rewritten"
    assert not marker.exists(), "the attacker's payload ran"


@needs_root
def test_planted_pickled_key_is_refused_unread(arena):
    path = _victim(arena)
    marker = arena / "payload-ran"
    as_attacker(_tamper_pickled_key, path, str(marker))
    with Cache(path, secret=SECRET, allow_shared=True) as c:
        seen, errors = drain(c, CorruptError)
        assert sorted(seen) == ["a", "k"]
        assert len(errors) == 1 and "not signed" in str(errors[0])
    assert not marker.exists()


@needs_root
def test_planted_memo_result_is_refused_unread(arena):
    path = _victim(arena)
    marker = arena / "payload-ran"
    as_attacker(_tamper_memo, path, str(marker))
    with Cache(path, secret=SECRET, allow_shared=True) as c:
        with pytest.raises(CorruptError):
            c.memoize()(expensive)(1)
    assert not marker.exists()
    # the control: the same planted bytes in an unsigned cache do run
    plain = str(arena / "plain")
    with Cache(plain) as c:
        c.memoize()(expensive)(1)
    _tamper_memo(plain, str(marker))
    with Cache(plain) as c:
        c.memoize()(expensive)(1)
    assert marker.exists(), "the planted record was not effective (the test proves nothing)"


@needs_root
def test_stripped_signature_record_is_refused(arena):
    path = _victim(arena)

    def strip():
        env = raw_env(path)
        with env.begin(write=True) as txn:
            txn.delete(b"signed", db=env.open_db(b"__meta__", txn=txn))
        env.close()

    as_attacker(strip)
    with pytest.raises(SecretError, match="written without a secret"):
        Cache(path, secret=SECRET, allow_shared=True)


def test_remote_records_are_signed_too(tmp_path):
    """The canonical record the remote tier ships carries the MAC of the
    namespace and key, and a record of another key is refused."""
    path = str(tmp_path / "c")
    with Cache(path, secret=SECRET) as c:
        kb, rec, _ = c._encode_raw("k", {"v": 1})
        assert rec[2] & 0x08 and rec[7:23] == expected_mac(SECRET, b"", kb, rec)
        assert c._put_raw("k", rec) == {"v": 1}
        _, other, _ = c._encode_raw("other", {"v": 2})
        with pytest.raises(CorruptError):
            c._put_raw("k", other)
        forged = make_record(b"", kb, "p", pickle.dumps({"v": 3}))
        with pytest.raises(CorruptError, match="not signed"):
            c._put_raw("k", forged)


def test_a_bare_cache_open_elsewhere_is_not_signed(tmp_path):
    """Signing an empty unsigned cache while another process has it open
    would let that process go on writing unsigned records: refused until it
    has closed the cache."""
    import subprocess
    import textwrap

    path = str(tmp_path / "c")
    Cache(path).close()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, lmdbcache
        c = lmdbcache.Cache({path!r})
        c.get("x")
        print("open", flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(tmp_path))
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(SecretError, match="other processes have open"):
            Cache(path, secret=SECRET)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    with Cache(path, secret=SECRET) as c:  # now it is nobody else's
        c["k"] = 1
    with pytest.raises(SecretError):
        Cache(path)
