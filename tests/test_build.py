"""Building without liblmdb stops with a message that says what to install; the
build finds conda's LMDB and honours CFLAGS and LDFLAGS."""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

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


def test_build_finds_conda_lmdb_and_honours_cflags_ldflags(tmp_path):
    # A conda environment's layout: include/lmdb.h and lib/liblmdb.so, no lmdb.pc.
    # pkg-config is pointed at an empty directory so that only $CONDA_PREFIX can
    # lead the build to LMDB.
    header = "/usr/include/lmdb.h"
    libs = sorted(pathlib.Path("/usr/lib").glob("*/liblmdb.so")) + sorted(pathlib.Path("/usr/lib").glob("liblmdb.so"))
    if not os.path.exists(header) or not libs or shutil.which("readelf") is None:
        pytest.skip("needs the system liblmdb-dev and readelf to stand in for conda's")
    prefix = tmp_path / "conda"
    (prefix / "include").mkdir(parents=True)
    (prefix / "lib").mkdir()
    (prefix / "include" / "lmdb.h").symlink_to(header)
    (prefix / "lib" / "liblmdb.so").symlink_to(libs[0])
    env = dict(os.environ, CONDA_PREFIX=str(prefix), PKG_CONFIG_LIBDIR=str(tmp_path / "nopc"),
               PKG_CONFIG_PATH="", CFLAGS="-MD",
               LDFLAGS="-Wl,-rpath,/lmc-seen-ldflags")
    for var in ("LMDB_INCLUDEDIR", "LMDB_LIBDIR", "LMDBCACHE_STATIC"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "setup.py"), "build_ext", "--build-temp", str(tmp_path / "t"),
         "--build-lib", str(tmp_path / "l")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    so = next((tmp_path / "l").glob("**/_core*.so"))
    dyn = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True).stdout
    assert str(prefix / "lib") in dyn, dyn           # found via $CONDA_PREFIX, with an rpath
    assert "/lmc-seen-ldflags" in dyn, dyn           # LDFLAGS reached the link
    assert list((tmp_path / "t").glob("**/module.d"))  # CFLAGS (-MD) reached the compiler
