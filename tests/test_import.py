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


def test_windows_is_refused_with_a_clear_message(tmp_path):
    # sys.platform is faked: the check runs before anything Windows would lack.
    code = """
import sys
sys.platform = "win32"
try:
    import lmdbcache
except ImportError as e:
    print(e)
"""
    out = _run(tmp_path, code)
    assert "does not support Windows" in out and "WSL" in out


def test_setup_py_refuses_windows(tmp_path):
    import pathlib

    setup_py = pathlib.Path(__file__).resolve().parent.parent / "setup.py"
    code = f"""
import sys
sys.platform = "win32"
sys.argv = ["setup.py", "--version"]
try:
    exec(compile(open({str(setup_py)!r}).read(), "setup.py", "exec"), {{"__name__": "__main__"}})
except SystemExit as e:
    print(e.code)
"""
    out = _run(tmp_path, code)
    assert "does not support Windows" in out
