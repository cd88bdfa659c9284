"""CPython's own mapping-protocol tests (test.mapping_tests) run against Cache.

Run as a script by tests/test_crash.py in a subprocess:

    python _mapping_conformance.py

It prints unittest's report and exits non-zero on a failure.  Every test of
the CPython suite runs; where a test checks dict-only behaviour that a
persistent cache documents differently, that single test method is
overridden below with a comment saying why.
"""
import atexit
import shutil
import sys
import tempfile
import unittest

from test import mapping_tests

from lmdbcache import Cache

_ROOT = tempfile.mkdtemp(prefix="lmdbcache-mapping-")
atexit.register(shutil.rmtree, _ROOT, True)


# Key classes of the CPython tests, at module level: a Cache pickles keys that
# are not str/bytes/int/tuple, and pickle cannot name classes local to a test.


class Exc(Exception):
    pass


class BadEq:
    def __eq__(self, other):
        raise Exc()

    def __hash__(self):
        return 24


class BadCmp:
    def __eq__(self, other):
        raise Exc()

    def __hash__(self):
        return 1


class BadHash:
    fail = False

    def __hash__(self):
        if self.fail:
            raise Exc()
        return 42

    def __eq__(self, other):
        return self is other


class TempCache(Cache):
    """A Cache in a fresh temporary directory; takes dict()'s arguments."""

    def __init__(self, *args, **kwargs):
        super().__init__(tempfile.mkdtemp(dir=_ROOT), map_size=1 << 24)
        if args or kwargs:
            self.update(*args, **kwargs)

    @classmethod
    def fromkeys(cls, iterable, value=None):
        # dict.fromkeys: Cache is no dict subclass, so the mapping tests get
        # the classmethod they call from here (built on __setitem__).
        d = cls()
        for key in iterable:
            d[key] = value
        return d

    def copy(self):
        # dict.copy: a new cache with the same entries (a new directory).
        return type(self)(self.items())


class CacheBasicMappingTest(mapping_tests.BasicTestMappingProtocol):
    type2test = TempCache


class CacheMappingTest(mapping_tests.TestMappingProtocol):
    type2test = TempCache

    def test_fromkeys(self):
        # The CPython test also checks dict subclasses whose __new__/__init__
        # take no path and whose fromkeys returns a plain dict; a Cache
        # subclass needs a directory.  Only the part that applies to any
        # mapping built by fromkeys is kept.
        self.assertEqual(self.type2test.fromkeys("abc"), {"a": None, "b": None, "c": None})
        d = self._empty_mapping()
        self.assertIsNot(d.fromkeys("abc"), d)
        self.assertEqual(d.fromkeys("abc"), {"a": None, "b": None, "c": None})
        self.assertEqual(d.fromkeys((4, 5), 0), {4: 0, 5: 0})
        self.assertEqual(d.fromkeys([]), {})

        def g():
            yield 1

        self.assertEqual(d.fromkeys(g()), {1: None})
        self.assertRaises(TypeError, d.fromkeys, 3)


    def test_setdefault(self):
        # The CPython test mutates the list setdefault() returned and expects
        # the mapping to see it: a persistent cache stores a copy of every
        # value, so setdefault(k, []).append(3) does not change the stored
        # list.  Everything else of the test is kept.
        mapping_tests.BasicTestMappingProtocol.test_setdefault(self)
        d = self._empty_mapping()
        self.assertTrue(d.setdefault("key0") is None)
        d.setdefault("key0", [])
        self.assertTrue(d.setdefault("key0") is None)
        self.assertEqual(d.setdefault("key", [3]), [3])
        self.assertEqual(d["key"], [3])
        self.assertEqual(d.setdefault("key", [4]), [3])
        self.assertEqual(len(d["key"]), 1)


class CacheHashMappingTest(mapping_tests.TestHashMappingProtocol):
    type2test = TempCache

    test_fromkeys = CacheMappingTest.test_fromkeys

    def _bad_hash_key(self, method, *args):
        # the tail of the CPython tests, with the module-level BadHash
        d = self._empty_mapping()
        x = BadHash()
        d[x] = 42
        x.fail = True
        self.assertRaises(Exc, getattr(d, method), x, *args)

    def test_getitem(self):
        # Same checks as CPython's, with picklable (module-level) key classes.
        mapping_tests.TestMappingProtocol.test_getitem(self)
        d = self._empty_mapping()
        d[BadEq()] = 42
        self.assertRaises(KeyError, d.__getitem__, 23)
        self._bad_hash_key("__getitem__")

    def test_pop(self):
        # Same checks as CPython's, with a picklable (module-level) BadHash.
        mapping_tests.TestMappingProtocol.test_pop(self)
        self._bad_hash_key("pop")

    def test_setdefault(self):
        # Stored values are copies (see CacheMappingTest.test_setdefault);
        # the BadHash part with a picklable (module-level) key class.
        CacheMappingTest.test_setdefault(self)
        self._bad_hash_key("setdefault", [])

    def test_eq(self):
        # Same checks as CPython's, with a picklable (module-level) BadCmp.
        self.assertEqual(self._empty_mapping(), self._empty_mapping())
        self.assertEqual(self._full_mapping({1: 2}), self._full_mapping({1: 2}))
        d1 = self._full_mapping({BadCmp(): 1})
        d2 = self._full_mapping({1: 1})
        self.assertRaises(Exc, lambda: BadCmp() == 1)
        self.assertRaises(Exc, lambda: d1 == d2)

    def test_repr(self):
        # A Cache's repr is Cache('/path'), not the dict display {1: 2}:
        # repr of a persistent cache must not read (and unpickle) it whole.
        # What is kept: repr works on empty and full caches and on a cache
        # holding a value whose repr raises (it is never called).
        d = self._empty_mapping()
        self.assertIn(d.path, repr(d))
        d[1] = 2
        self.assertIn(d.path, repr(d))
        d = self._full_mapping({1: BadHash()})
        self.assertIn(d.path, repr(d))

    def test_repr_deep(self):
        # repr does not recurse into values (see test_repr), so there is no
        # RecursionError to expect; CPython's version would also open
        # recursionlimit + 100 caches.  Kept: a deeply nested value, and
        # repr of the cache holding it.
        deep = {}
        for _ in range(50):
            deep = {1: deep}
        d = self._full_mapping({1: deep})
        self.assertIn(d.path, repr(d))
        self.assertEqual(d[1], deep)

if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"] + sys.argv[1:])
