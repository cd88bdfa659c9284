"""Files of another LMDB data format (issue 12, item 3).

LMDB 0.9.x writes data format 1; LMDB 1.0.x writes format 3 (and the
2020-2024 development snapshots of mdb.master3, version 0.9.90, format 2),
with a 24-byte page header instead of 16.  Neither reads the other's files.
lmdbcache names both versions in a FormatError before LMDB maps the file, or
with on_incompatible="reset" moves the files aside and starts empty.

Real files of the other format come from py-lmdb (a test dependency), which
bundles LMDB 1.0 since its 3.0 (lmdb.open(..., lib_version=1)); when the
LMDB source mirror exists, a file of mdb.master3's format 2 is made too, by a
small C program built from it.  A forged file (a real 0.9 file whose meta
pages say another version) covers the check without either.
"""
import glob
import os
import shutil
import subprocess
import warnings

import pytest

import lmdbcache
from lmdbcache import _core

OURS = "%d.%d.%d" % _core.lmdb_version()
MIRROR = "/work/.mirror/LMDB+lmdb/repo"


def lmdb1():
    """py-lmdb's bundled LMDB 1.0 engine, or skip."""
    lmdb = pytest.importorskip("lmdb")
    try:
        version = lmdb.version(lib_version=1)
    except (TypeError, lmdb.Error) as e:
        pytest.skip(f"py-lmdb {lmdb.__version__} bundles no LMDB 1.0 engine ({e})")
    assert version[:2] == (1, 0)
    return lmdb


def write_lmdb1(path):
    lmdb = lmdb1()
    env = lmdb.open(path, lib_version=1, map_size=1 << 20)
    try:
        assert env.lib_version()[:2] == (1, 0)
        with env.begin(write=True) as txn:
            txn.put(b"written by", b"LMDB 1.0")
    finally:
        env.close()


def data_version(path):
    with open(os.path.join(path, "data.mdb"), "rb") as f:
        head = f.read(32)
    for hdr in (16, 24):
        if head[hdr:hdr + 4] == b"\xde\xc0\xef\xbe":
            return int.from_bytes(head[hdr + 4:hdr + 8], "little")
    return None


def test_real_lmdb1_file_raises(tmp_path):
    path = str(tmp_path / "c")
    write_lmdb1(path)
    assert data_version(path) == 3
    with pytest.raises(lmdbcache.FormatError) as info:
        lmdbcache.Cache(path)
    msg = str(info.value)
    assert "written by LMDB 1.0 (data format 3)" in msg
    assert f"LMDB {OURS} (data format 1)" in msg
    assert 'on_incompatible="reset"' in msg and "delete the directory" in msg
    assert data_version(path) == 3  # untouched
    assert not glob.glob(os.path.join(path, "incompatible-*"))


def test_real_lmdb1_file_reset(tmp_path):
    path = str(tmp_path / "c")
    write_lmdb1(path)
    with pytest.warns(RuntimeWarning, match=r"LMDB 1\.0 \(data format 3\).*moved to"):
        c = lmdbcache.Cache(path, on_incompatible="reset")
    try:
        assert len(c) == 0
        c["k"] = "v"
        assert c["k"] == "v"
    finally:
        c.close()
    moved = glob.glob(os.path.join(path, "incompatible-*"))
    assert len(moved) == 1
    assert sorted(os.listdir(moved[0])) == ["data.mdb", "lock.mdb"]
    assert data_version(moved[0]) == 3
    assert data_version(path) == 1
    # the new cache opens without the option, without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with lmdbcache.Cache(path) as c:
            assert c["k"] == "v"
    # py-lmdb still reads the moved file with its 1.0 engine
    lmdb = lmdb1()
    env = lmdb.open(moved[0], readonly=True, lock=False)
    try:
        with env.begin() as txn:
            assert txn.get(b"written by") == b"LMDB 1.0"
    finally:
        env.close()


def test_readonly_reset_refuses(tmp_path):
    path = str(tmp_path / "c")
    write_lmdb1(path)
    with pytest.raises(lmdbcache.FormatError, match="not readonly"):
        lmdbcache.Cache(path, readonly=True, on_incompatible="reset")
    assert data_version(path) == 3


def forge(path, version):
    """A real 0.9 cache whose two meta pages claim another data format."""
    with lmdbcache.Cache(path) as c:
        c["k"] = "v"
    with open(os.path.join(path, "data.mdb"), "r+b") as f:
        head = f.read(64)
        psize = int.from_bytes(head[16 + 24:16 + 28], "little")
        for page in (0, psize):
            f.seek(page + 16)
            assert f.read(4) == b"\xde\xc0\xef\xbe"
            f.write(version.to_bytes(4, "little"))


def test_forged_version_raises_and_resets(tmp_path):
    path = str(tmp_path / "c")
    forge(path, 3)
    with pytest.raises(lmdbcache.FormatError,
                       match=rf"LMDB 1\.0 \(data format 3\).*LMDB {OURS} \(data format 1\)"):
        lmdbcache.Cache(path)
    with pytest.warns(RuntimeWarning, match="moved to"):
        c = lmdbcache.Cache(path, on_incompatible="reset")
    try:
        assert "k" not in c
        c["k"] = 2
    finally:
        c.close()
    assert len(glob.glob(os.path.join(path, "incompatible-*"))) == 1


def test_forged_unknown_version_is_named(tmp_path):
    path = str(tmp_path / "c")
    forge(path, 7)
    with pytest.raises(lmdbcache.FormatError, match=r"unknown LMDB release \(data format 7\)"):
        lmdbcache.Cache(path)


WRITER = r"""
#include <stdio.h>
#include "lmdb.h"
#define CHECK(x) do { int rc_ = (x); if (rc_) { \
    fprintf(stderr, "%s: %s\n", #x, mdb_strerror(rc_)); return 1; } } while (0)
int main(int argc, char **argv)
{
    MDB_env *env; MDB_txn *txn; MDB_dbi dbi;
    MDB_val k = {3, "key"}, v = {5, "value"};
    if (argc != 2) return 2;
    CHECK(mdb_env_create(&env));
    CHECK(mdb_env_set_mapsize(env, 1 << 20));
    CHECK(mdb_env_open(env, argv[1], 0, 0600));
    CHECK(mdb_txn_begin(env, NULL, 0, &txn));
    CHECK(mdb_dbi_open(txn, NULL, 0, &dbi));
    CHECK(mdb_put(txn, dbi, &k, &v, 0));
    CHECK(mdb_txn_commit(txn));
    mdb_env_close(env);
    return 0;
}
"""


def test_real_master3_file(tmp_path):
    """A file of mdb.master3 (0.9.90, data format 2), built from the mirror."""
    if not os.path.isdir(MIRROR):
        pytest.skip(f"no LMDB source mirror at {MIRROR} (only on the development machine)")
    if shutil.which("gcc") is None or shutil.which("git") is None:
        pytest.skip("needs gcc and git")
    src = tmp_path / "src"
    src.mkdir()
    names = ["mdb.c", "midl.c", "midl.h", "lmdb.h", "module.c", "module.h"]
    for name in names:
        out = subprocess.run(["git", "--git-dir", MIRROR, "show",
                              f"mdb.master3:libraries/liblmdb/{name}"], capture_output=True)
        if out.returncode == 0:
            (src / name).write_bytes(out.stdout)
    (src / "w.c").write_text(WRITER)
    sources = [str(src / n) for n in ("w.c", "mdb.c", "midl.c", "module.c") if (src / n).exists()]
    exe = str(tmp_path / "w")
    subprocess.run(["gcc", "-O1", "-pthread", "-w", "-I", str(src), "-o", exe, *sources, "-ldl"],
                   check=True)
    path = str(tmp_path / "c")
    os.mkdir(path)
    subprocess.run([exe, path], check=True)
    assert data_version(path) == 2
    with pytest.raises(lmdbcache.FormatError, match=r"\(data format 2\).*\(data format 1\)"):
        lmdbcache.Cache(path)
    with pytest.warns(RuntimeWarning, match="moved to"):
        lmdbcache.Cache(path, on_incompatible="reset").close()


def test_creating_version_recorded(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    path = str(tmp_path / "c")
    lmdbcache.Cache(path).close()
    env = lmdb.open(path, readonly=True, lock=False, max_dbs=4)
    try:
        meta = env.open_db(b"__meta__", create=False)
        with env.begin() as txn:
            assert txn.get(b"lmdb", db=meta) == OURS.encode()
            assert txn.get(b"format", db=meta) == b"%d" % _core.FORMAT_VERSION
    finally:
        env.close()


def test_old_cache_without_record_opens(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    path = str(tmp_path / "c")
    with lmdbcache.Cache(path) as c:
        c["k"] = 1
    env = lmdb.open(path, max_dbs=4)
    try:
        meta = env.open_db(b"__meta__", create=False)
        with env.begin(write=True) as txn:
            assert txn.delete(b"lmdb", db=meta)
    finally:
        env.close()
    with lmdbcache.Cache(path) as c:
        assert c["k"] == 1


def test_on_incompatible_value(tmp_path):
    with pytest.raises(ValueError, match="on_incompatible"):
        lmdbcache.Cache(str(tmp_path / "c"), on_incompatible="ignore")
    assert not os.path.exists(tmp_path / "c")
    with pytest.raises(ValueError):
        _core.Store(str(tmp_path), on_incompatible="keep")
    with lmdbcache.Cache(str(tmp_path / "d"), on_incompatible="reset") as c:
        assert c.options["on_incompatible"] == "reset"
        assert c.namespace("n").options["on_incompatible"] == "reset"
