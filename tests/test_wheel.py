"""The self-contained wheel: LMDB compiled in, installed with --no-deps into a
fresh venv, passes a smoke script and the core, semantics, fork-safety and
crash tests run against it (not against the source tree), and its extension
needs no liblmdb.so."""
import os
import pathlib
import shutil
import signal
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
    # what the core, fork and crash tests import beside lmdbcache (py-lmdb reads
    # the files back; tests/_workers.py and the crash scenarios need nothing else)
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


def run_suites_against_the_wheel(vpy, tmp_path, *names, timeout):
    # From an empty directory: the installed wheel is imported, never ROOT/lmdbcache
    # (the tests' children and spawned workers start there too).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    # its own session: a hang kills the whole group (the suites' children too)
    proc = subprocess.Popen(
        [vpy, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--import-mode=importlib",
         "-rs", *[str(TESTS / n) for n in names]],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(names)} against the wheel: still running after {timeout} s\n"
                    + out[-5000:] + err[-3000:], pytrace=False)
    assert proc.returncode == 0, out[-5000:] + err[-3000:]
    assert " passed" in out
    return out


def test_core_tests_against_the_wheel(wheel_venv, tmp_path):
    _, venv, vpy, _ = wheel_venv
    run_suites_against_the_wheel(vpy, tmp_path, "test_core.py", "test_semantics.py", timeout=900)


def test_fork_and_crash_tests_against_the_wheel(wheel_venv, tmp_path):
    """Fork safety and never-crash scenarios with the statically linked LMDB
    (35-45 s on a shared 2-core machine).  Every test of both files runs:
    none may skip.  They catch what the core tests do not: built with
    -DMDB_USE_ROBUST=0 the wheel passes test_core/test_semantics, but a
    SIGKILLed writer leaves the write mutex locked and these hang."""
    _, venv, vpy, _ = wheel_venv
    out = run_suites_against_the_wheel(vpy, tmp_path, "test_fork.py", "test_crash.py", timeout=300)
    assert "skipped" not in out, out[-3000:]
