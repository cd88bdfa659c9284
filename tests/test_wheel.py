"""The self-contained wheel: LMDB compiled in, installed with --no-deps into a
fresh venv, passes a smoke script and the core tests run against it (not
against the source tree), and its extension needs no liblmdb.so."""
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the wheel build is Linux's"),
    pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                       reason="needs a C compiler"),
    # make sanitize preloads ASan into every child: pip and gcc included
    pytest.mark.skipif(bool(os.environ.get("LMDBCACHE_SANITIZED")),
                       reason="not under the sanitizer build"),
]

SMOKE = textwrap.dedent("""
    import os, sys, importlib.resources
    import lmdbcache
    venv = os.path.realpath(sys.argv[1])
    assert os.path.realpath(lmdbcache.__file__).startswith(venv), lmdbcache.__file__
    assert lmdbcache.lmdb_version() >= (0, 9, 0), lmdbcache.lmdb_version()
    lic = importlib.resources.files("lmdbcache").joinpath("LICENSE.lmdb").read_text()
    assert "OpenLDAP Public License" in lic and "Howard Chu" in lic
    with lmdbcache.Cache(sys.argv[2]) as c:
        c["k"] = {"v": [1, 2]}
        c.set("n", 41)
        c.incr("n")
        assert c["k"] == {"v": [1, 2]} and c["n"] == 42 and len(c) == 2
    with lmdbcache.Cache(sys.argv[2], readonly=True) as c:
        assert c["n"] == 42
    print("smoke ok", lmdbcache.lmdb_version())
""")


def run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    out = run(["bash", str(ROOT / "scripts" / "build-wheel.sh"), sys.executable, str(tmp / "dist")],
              timeout=600)
    whl = out.stdout.strip().splitlines()[-1]
    assert whl.endswith(".whl") and os.path.exists(whl), out.stdout + out.stderr
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    vpy = str(venv / "bin" / "python")
    pip = [vpy, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    run([*pip, "--no-deps", whl], timeout=300)
    # what the core tests import beside lmdbcache (py-lmdb reads the files back)
    run([*pip, "pytest", "lmdb"], timeout=300)
    return whl, venv, vpy, out.stderr


def test_wheel_is_self_contained(wheel_venv):
    whl, venv, vpy, log = wheel_venv
    if "auditwheel" in log or "manylinux" in whl:
        assert "manylinux" in os.path.basename(whl), log
    so = next((venv / "lib").glob("python*/site-packages/lmdbcache/_core*.so"))
    if shutil.which("readelf"):
        dyn = run(["readelf", "-d", str(so)]).stdout
        needed = [ln for ln in dyn.splitlines() if "NEEDED" in ln]
        assert needed and not any("lmdb" in ln for ln in needed), dyn
        assert "RPATH" not in dyn and "RUNPATH" not in dyn, dyn


def test_smoke_against_the_wheel(wheel_venv, tmp_path):
    _, venv, vpy, _ = wheel_venv
    script = tmp_path / "smoke.py"
    script.write_text(SMOKE)
    out = run([vpy, str(script), str(venv), str(tmp_path / "cache")], cwd=tmp_path, timeout=120)
    assert "smoke ok" in out.stdout


def test_core_tests_against_the_wheel(wheel_venv, tmp_path):
    _, venv, vpy, _ = wheel_venv
    # From an empty directory: the installed wheel is imported, never ROOT/lmdbcache.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run(
        [vpy, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--import-mode=importlib",
         str(TESTS / "test_core.py"), str(TESTS / "test_semantics.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout
