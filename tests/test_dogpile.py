"""The dogpile.cache backend, run through dogpile's own generic backend, mutex
and serializer suites (dogpile.testing.fixtures), plus the cross-process mutex."""
import atexit
import pickle
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

pytest.importorskip("dogpile.cache")

from dogpile.cache import make_region  # noqa: E402
from dogpile.testing.fixtures import (  # noqa: E402
    _GenericBackendTestSuite,
    _GenericMutexTestSuite,
    _GenericSerializerTestSuite,
)

from lmdbcache.contrib.dogpile import LMDBBackend, LMDBMutex  # noqa: E402

# Python 3.10 has no -P; its test run starts in tests/, where no source package can shadow.
SAFE_PATH = ["-P"] if sys.version_info >= (3, 11) else []

_DIR = tempfile.mkdtemp(prefix="lmdbcache-dogpile-")
atexit.register(shutil.rmtree, _DIR, True)


class TestLMDBBackend(_GenericBackendTestSuite):
    backend = "lmdbcache"  # found through the entry point
    config_args = {"arguments": {"path": _DIR + "/generic"}}


class TestLMDBBackendSerializer(_GenericSerializerTestSuite, _GenericBackendTestSuite):
    backend = "lmdbcache"
    config_args = {"arguments": {"path": _DIR + "/serializer"}}


class TestLMDBMutex(_GenericMutexTestSuite):
    backend = "lmdbcache"
    config_args = {"arguments": {"path": _DIR + "/mutex"}}


def test_entry_point_resolves_to_the_backend(tmp_path):
    region = make_region().configure("lmdbcache", arguments={"path": str(tmp_path / "c")})
    assert isinstance(region.backend, LMDBBackend)
    assert isinstance(region.backend.get_mutex("k"), LMDBMutex)
    region.set("k", {"v": 1})
    assert region.get("k") == {"v": 1}


def test_values_persist_across_processes(tmp_path):
    path = str(tmp_path / "c")
    region = make_region().configure("lmdbcache", expiration_time=60,
                                      arguments={"path": path})
    region.set("answer", 42)
    script = textwrap.dedent(f"""
        from dogpile.cache import make_region
        r = make_region().configure("lmdbcache", expiration_time=60,
                                    arguments={{"path": {path!r}}})
        print(r.get("answer"))
    """)
    out = subprocess.run([sys.executable, *SAFE_PATH, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "42", out.stderr


def test_mutex_excludes_other_processes(tmp_path):
    path = str(tmp_path / "c")
    backend = LMDBBackend({"path": path})
    mutex = backend.get_mutex("shared")
    assert mutex.acquire()
    script = textwrap.dedent(f"""
        from lmdbcache.contrib.dogpile import LMDBBackend
        m = LMDBBackend({{"path": {path!r}}}).get_mutex("shared")
        print(m.locked(), m.acquire(False))
    """)
    run = lambda: subprocess.run([sys.executable, *SAFE_PATH, "-c", script], capture_output=True,
                                 text=True, timeout=60).stdout.strip()
    assert run() == "True False"
    mutex.release()
    assert run() == "False True"


def test_lock_of_a_dead_holder_expires(tmp_path):
    backend = LMDBBackend({"path": str(tmp_path / "c"), "lock_timeout": 0.2})
    held = backend.get_mutex("k")
    assert held.acquire()
    other = backend.get_mutex("k")
    assert not other.acquire(False)
    assert other.acquire()  # waits for the ttl of the abandoned lock
    other.release()


def test_release_never_frees_another_holders_lock(tmp_path):
    backend = LMDBBackend({"path": str(tmp_path / "c"), "lock_timeout": 0.1})
    first = backend.get_mutex("k")
    assert first.acquire()
    second = backend.get_mutex("k")
    assert second.acquire()  # first's lock expired
    first.release()          # too late: must not free second's lock
    assert second.locked()
    second.release()
    assert not second.locked()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="path"):
        LMDBBackend({})
    backend = LMDBBackend({"path": str(tmp_path / "d"), "other_backends_arg": 1,
                           "size_limit": 1 << 20})
    assert backend.cache.options["size_limit"] == 1 << 20
    backend.cache.close()
    backend = LMDBBackend({"path": str(tmp_path / "e"), "distributed_lock": False})
    assert backend.get_mutex("k") is None
