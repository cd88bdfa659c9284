"""scripts/test-all.sh (make test-all): a version it cannot find is skipped by
default, and is a failure with PY_REQUIRE=1.

Hermetic: the script runs on a copy of itself in a scratch tree, where the
"found" version 3.98 is a stub interpreter on PATH with a ready stub venv
(.venv-3.98, whose pip and pytest succeed), and 3.99 exists nowhere."""
import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def stub(path, body="exit 0"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho \"$0 $*\" >> \"$STUB_LOG\"\n{body}\n")
    path.chmod(0o755)


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "test-all.sh", tmp_path / "scripts" / "test-all.sh")
    (tmp_path / "tests").mkdir()
    stub(tmp_path / "bin" / "python3.98")
    stub(tmp_path / ".venv-3.98" / "bin" / "python")
    stub(tmp_path / ".venv-3.98" / "bin" / "pip")
    return tmp_path


def run(tree, versions, **env):
    log = tree / "stub.log"
    full_env = dict(os.environ, PATH=f"{tree / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
                    PYENV_ROOT=str(tree / "no-pyenv"), PY_VERSIONS=versions,
                    STUB_LOG=str(log), **env)
    if "PY_REQUIRE" not in env:
        full_env.pop("PY_REQUIRE", None)  # the caller's environment must not decide
    proc = subprocess.run(["bash", str(tree / "scripts" / "test-all.sh")], env=full_env,
                          capture_output=True, text=True, timeout=60)
    ran = log.read_text() if log.exists() else ""
    return proc, ran


def test_missing_version_is_skipped_by_default(tree):
    proc, ran = run(tree, "3.98 3.99")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Python 3.99: not found, skipped" in out
    assert "passed: 3.98" in out and "not found (skipped): 3.99" in out
    assert "-m pytest" in ran  # the found version's suite did run (the stub)


@pytest.mark.parametrize("versions", ["3.98 3.99", "3.99 3.98", "3.99"])
def test_py_require_fails_on_a_missing_version(tree, versions):
    proc, ran = run(tree, versions, PY_REQUIRE="1")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Python 3.99: not found (required" in out
    assert "not found (required): 3.99" in out
    if "3.98" in versions:
        # the versions that are there still run, and are reported
        assert "passed: 3.98" in out and "-m pytest" in ran


def test_py_require_passes_when_all_are_found(tree):
    proc, _ = run(tree, "3.98", PY_REQUIRE="1")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "passed: 3.98" in out and "not found (required): none" in out


def test_py_require_rejects_other_values(tree):
    proc, ran = run(tree, "3.98", PY_REQUIRE="yes")
    assert proc.returncode == 2 and "PY_REQUIRE must be 0 or 1" in proc.stderr
    assert ran == ""
