"""The Django cache backend, run through Django's own cache test suite.

Django's ``tests/cache/tests.py`` ships in its source distribution, not in the
wheel: the sdist of the installed Django version is downloaded from PyPI once
(pip download) into ``$LMDBCACHE_SUITES`` (default ``~/.cache/lmdbcache-suites``)
and its ``BaseCacheTests`` is subclassed here, the way third-party backends run
it.  Nothing of Django's suite is kept in this repository.
"""
import os
import subprocess
import sys
import tarfile
import tempfile

import pytest

django = pytest.importorskip("django")

SUITES = os.environ.get("LMDBCACHE_SUITES") or os.path.expanduser("~/.cache/lmdbcache-suites")


def _django_tests_dir() -> str:
    """Django's tests/ directory (cache app only) for the installed version."""
    version = django.__version__
    root = os.path.join(SUITES, f"django-{version}")
    tests = os.path.join(root, "tests")
    if os.path.exists(os.path.join(tests, "cache", "tests.py")):
        return tests
    os.makedirs(SUITES, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=SUITES) as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
             "--no-build-isolation", "--disable-pip-version-check", "-d", tmp,
             f"django=={version}"],
            capture_output=True, text=True, timeout=600)
        sdists = [f for f in os.listdir(tmp) if f.endswith(".tar.gz")]
        if proc.returncode != 0 or not sdists:
            pytest.skip(f"cannot download Django {version}'s sdist for its test suite: "
                        f"{proc.stderr.strip()[-300:]}", allow_module_level=True)
        prefix = f"{sdists[0][:-len('.tar.gz')]}/tests/cache/"
        with tarfile.open(os.path.join(tmp, sdists[0])) as tar:
            members = [m for m in tar.getmembers()
                       if m.name.startswith(prefix) and m.isfile() and ".." not in m.name]
            staging = os.path.join(tmp, "out")
            for m in members:
                m.name = os.path.join("tests", "cache", m.name[len(prefix):])
                tar.extract(m, staging)
        os.makedirs(root, exist_ok=True)
        os.replace(os.path.join(staging, "tests"), tests)
    return tests


sys.path.insert(0, _django_tests_dir())

from django.conf import settings  # noqa: E402

if not settings.configured:
    # A minimal settings module, as Django's own runtests.py sets up for the
    # cache tests: the "cache" test app (its Poll model), an in-memory SQLite
    # database and the Django template engine.
    settings.configure(
        DEBUG=False,
        SECRET_KEY="lmdbcache-tests",
        USE_TZ=True,
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "cache"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates",
                    "APP_DIRS": True}],
        MIDDLEWARE=[],
        ROOT_URLCONF=None,
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    )
    django.setup()

from django.db import connection  # noqa: E402
from django.test import TestCase, override_settings  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

from cache.tests import BaseCacheTests, caches_setting_for_tests  # noqa: E402

setup_test_environment()
connection.creation.create_test_db(verbosity=0, autoclobber=True)

import lmdbcache  # noqa: E402
from lmdbcache.contrib.django import LMDBCache  # noqa: E402

# Python 3.10 has no -P; its test run starts in tests/, where no source package can shadow.
SAFE_PATH = ["-P"] if sys.version_info >= (3, 11) else []

_LOCATION = tempfile.mkdtemp(prefix="lmdbcache-django-")

# The aliases Django's suite uses ("default", "prefix", "v2", "custom_key", ...)
# all on one directory, like its file-based tests; "cull" and "zero_cull" are
# left out as for the Redis backend: culling by MAX_ENTRIES is not this
# backend's bound (size_limit is), and Django's suite skips those tests then.
CACHES = caches_setting_for_tests(
    BACKEND="lmdbcache.contrib.django.LMDBCache",
    LOCATION=_LOCATION,
    exclude={"cull", "zero_cull"},
)


@override_settings(CACHES=CACHES)
class LMDBCacheTests(BaseCacheTests, TestCase):
    """Django's BaseCacheTests against lmdbcache.contrib.django.LMDBCache."""

    def test_backend_is_lmdbcache(self):
        from django.core.cache import caches

        self.assertIsInstance(caches["default"], LMDBCache)
        self.assertIsInstance(caches["default"]._cache, lmdbcache.Cache)
        self.assertEqual(caches["default"]._cache.path, _LOCATION)
        # every alias shares the one cache directory
        self.assertEqual(caches["v2"]._cache.path, _LOCATION)


def test_values_are_shared_between_processes(tmp_path):
    location = str(tmp_path / "site")
    backend = LMDBCache(location, {"TIMEOUT": None})
    backend.set("greeting", {"hello": "world"})
    script = (
        "import django; from django.conf import settings; settings.configure(); django.setup()\n"
        "from lmdbcache.contrib.django import LMDBCache\n"
        f"c = LMDBCache({location!r}, {{}})\n"
        "print(c.get('greeting'), c.incr('n', 1) if c.add('n', 1) else None)\n"
    )
    out = subprocess.run([sys.executable, *SAFE_PATH, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "{'hello': 'world'} 2", out.stderr
    assert backend.get("n") == 2


def test_options_reach_the_cache(tmp_path):
    backend = LMDBCache(str(tmp_path / "c"), {
        "OPTIONS": {"size_limit": 1 << 20, "eviction_policy": "least-recently-used",
                    "MAX_ENTRIES": 10, "namespace": "site"},
    })
    opts = backend._cache.options
    assert opts["size_limit"] == 1 << 20
    assert opts["eviction_policy"] == "least-recently-used"
    assert opts["namespace"] == "site"
    for i in range(50):  # MAX_ENTRIES does not bound this backend
        backend.set(i, i)
    assert all(backend.has_key(i) for i in range(50))


def test_location_is_required():
    with pytest.raises(ValueError, match="LOCATION"):
        LMDBCache("", {})


def test_incr_of_a_big_int_and_of_a_non_int(tmp_path):
    backend = LMDBCache(str(tmp_path / "c"), {})
    backend.set("big", 1 << 70)
    assert backend.incr("big", 5) == (1 << 70) + 5
    backend.set("s", "text")
    with pytest.raises(TypeError):
        backend.incr("s")
    with pytest.raises(ValueError):
        backend.incr("missing")
