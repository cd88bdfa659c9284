"""`import lmdbcache` stays cheap: what only some calls need is imported lazily."""
import subprocess
import sys


def _run(tmp_path, code):
    # A fresh interpreter, run from an empty directory: the installed package
    # is imported, and nothing the test process already loaded counts.
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_import_does_not_load_asyncio_or_memo(tmp_path):
    out = _run(tmp_path, "import sys, lmdbcache\n"
                         "print(sorted(m for m in ('asyncio', 'lmdbcache.memo', 'inspect')"
                         " if m in sys.modules))")
    assert out.strip() == "[]"


def test_lazy_names_still_work(tmp_path):
    code = f"""
import asyncio, sys, lmdbcache
from lmdbcache import memoize
assert memoize is lmdbcache.memoize is sys.modules['lmdbcache.memo'].memoize
assert set(lmdbcache.__all__) <= set(dir(lmdbcache)) | {{'memoize'}}
with lmdbcache.Cache({str(tmp_path / 'c')!r}) as c:
    asyncio.run(c.aset('k', 1))
    assert asyncio.run(c.aget('k')) == 1
    @c.memoize
    def f(x):
        return x * 2
    assert f(21) == 42
ns = {{}}
exec('from lmdbcache import *', ns)
assert ns['memoize'] is lmdbcache.memoize
try:
    lmdbcache.no_such_name
except AttributeError as e:
    assert 'no_such_name' in str(e)
else:
    raise AssertionError('no AttributeError')
print('ok')
"""
    assert _run(tmp_path, code).strip() == "ok"
