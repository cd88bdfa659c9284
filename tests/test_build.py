"""Building without liblmdb stops with a message that says what to install."""
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_build_without_liblmdb_names_the_package_to_install(tmp_path):
    # A compiler that fails stands in for a machine without lmdb.h / liblmdb.
    env = dict(os.environ, CC="false", LMDB_INCLUDEDIR=str(tmp_path), LMDB_LIBDIR=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "setup.py"), "build_ext", "--build-temp", str(tmp_path / "t"),
         "--build-lib", str(tmp_path / "l")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "could not find" in out
    for hint in ("liblmdb-dev", "lmdb-devel", "brew install lmdb", "conda install"):
        assert hint in out, out
    assert not list((tmp_path / "l").glob("**/*.so"))
