"""Reference counts: no Store call leaks (or steals) a reference to its key,
value or default object.

Each case runs 1,000 calls in a fresh interpreter and compares
``sys.getrefcount`` of the objects passed in before and after.  The objects
are created by the test (no interned small ints or literals, whose counts
other code changes too).
"""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

CHILD = r'''
import sys
import lmdbcache

path, config = sys.argv[1], sys.argv[2]
kw = {}
if config == "lru":
    kw = dict(size_limit=1 << 24, eviction_policy="least-recently-used")
c = lmdbcache.Cache(path, **kw)
N = 1000


class Key:
    def __init__(self, name):
        self.name = name

    def __eq__(self, other):
        return isinstance(other, Key) and other.name == self.name

    def __hash__(self):
        return hash(self.name)

    def __reduce__(self):
        return (Key, (self.name,))


def unique_str(tag):
    return "".join(["refcount-", tag, "-", str(id(object()))])


# objects owned by this test only
str_key = unique_str("key")
str_key2 = unique_str("key2")
tuple_key = (unique_str("t"), 10 ** 20 + 1)
obj_key = Key(unique_str("obj"))
int_key = 10 ** 12 + 7
missing = unique_str("missing")
big_value = [unique_str("v"), 10 ** 30]
bytes_value = unique_str("b").encode()
str_value = unique_str("s")
int_value = 10 ** 9 + 11
default = object()
delta = 10 ** 6 + 3
int_default = 10 ** 7 + 5
ttl = 1000.5
keylist = [str_key, tuple_key, obj_key, missing]
pairs = {str_key2: big_value, obj_key: bytes_value}
TRACKED = dict(str_key=str_key, str_key2=str_key2, tuple_key=tuple_key, obj_key=obj_key,
               int_key=int_key, missing=missing, big_value=big_value,
               bytes_value=bytes_value, str_value=str_value, int_value=int_value,
               default=default, delta=delta, int_default=int_default, ttl=ttl,
               keylist=keylist, pairs=pairs)


def counter_key():
    c[int_key] = 5


CASES = {
    "set": lambda: c.set(str_key, big_value),
    "set-ttl": lambda: c.set(obj_key, str_value, ttl=ttl),
    "setitem": lambda: c.__setitem__(tuple_key, bytes_value),
    "setitem-int": lambda: c.__setitem__(int_key, int_value),
    "get-hit": lambda: c.get(str_key, default),
    "get-miss": lambda: c.get(missing, default),
    "getitem": lambda: c[tuple_key],
    "get-obj-key": lambda: c.get(obj_key),
    "add-present": lambda: c.add(str_key, big_value),
    "add-absent": lambda: (c.add(missing, str_value), c.delete(missing)),
    "incr": lambda: c.incr(int_key, delta, int_default),
    "incr-absent": lambda: (c.incr(missing, delta, int_default), c.delete(missing)),
    "delete-present": lambda: (c.delete(str_key2), c.set(str_key2, big_value)),
    "delete-absent": lambda: c.delete(missing),
    "pop-present": lambda: (c.pop(str_key2, default), c.set(str_key2, big_value)),
    "pop-absent": lambda: c.pop(missing, default),
    "get_many": lambda: c.get_many(keylist),
    "set_many": lambda: c.set_many(pairs),
    "delete_many": lambda: (c.delete_many(keylist), c.set(str_key, big_value),
                            c.set(tuple_key, bytes_value), c.set(obj_key, str_value)),
    "contains-hit": lambda: str_key in c,
    "contains-miss": lambda: missing in c,
    "touch": lambda: c.touch(str_key, ttl=ttl),
    "touch-miss": lambda: c.touch(missing, ttl=ttl),
}

c.set(str_key, big_value)
c.set(str_key2, big_value)
c.set(tuple_key, bytes_value)
c.set(obj_key, str_value)
c[int_key] = 5
bad = []
for in_txn in (False, True):
    for name, fn in CASES.items():
        for _ in range(3):  # warm-up: caches, lazily created state
            fn()
        before = {k: sys.getrefcount(v) for k, v in TRACKED.items()}
        if in_txn:
            with c.transaction():
                for _ in range(N):
                    fn()
        else:
            for _ in range(N):
                fn()
        after = {k: sys.getrefcount(v) for k, v in TRACKED.items()}
        for k in TRACKED:
            if after[k] != before[k]:
                bad.append("%s%s: refcount of %s went %d -> %d over %d calls"
                           % (name, " (in transaction)" if in_txn else "", k, before[k],
                              after[k], N))
c.close()
if bad:
    print("\n".join(bad))
    sys.exit(1)
print("CHILD-OK")
'''


@pytest.mark.parametrize("config", ["default", "lru"])
def test_no_refcount_change_over_1000_calls(tmp_path, config):
    try:
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(CHILD), str(tmp_path / "cache"), config],
            capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
            env=dict(os.environ),
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"child HUNG\n{exc.stderr!r}", pytrace=False)
    if proc.returncode < 0:
        pytest.fail(f"child CRASHED: {signal.Signals(-proc.returncode).name}\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}", pytrace=False)
    assert proc.returncode == 0 and "CHILD-OK" in proc.stdout, proc.stdout + proc.stderr
