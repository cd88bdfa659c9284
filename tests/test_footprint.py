"""What `ls -l` and `du` show (issue 12, item 6): a small initial map that
grows, so that the data file's apparent size stays within ~2x of the pages in
use, and a 10k-entry cache's allocated size within 2x of py-lmdb's for the
same entries (the disk reservation step must not dominate)."""
import os

import lmdb  # py-lmdb, from the test extra: the reference figure, never skipped
import pytest

import lmdbcache
from lmdbcache.cache import DEFAULT_MAP_SIZE

MiB = 1 << 20
N = 10_000
VALUE = b"v" * 100


def keys():
    return (f"key{i:06d}" for i in range(N))


def sizes(path):
    st = os.stat(os.path.join(path, "data.mdb"))
    return st.st_size, st.st_blocks * 512


def test_default_initial_map_is_small(tmp_path):
    assert DEFAULT_MAP_SIZE <= 4 * MiB
    path = str(tmp_path / "c")
    with lmdbcache.Cache(path) as c:
        c["k"] = 1
        assert c.info()["map_size"] <= 4 * MiB
        apparent, allocated = sizes(path)
    assert apparent <= 4 * MiB, f"a fresh cache's data.mdb is {apparent:,} bytes"
    assert allocated <= 4 * MiB


@pytest.fixture(scope="module")
def pylmdb_allocated(tmp_path_factory):
    """Allocated bytes of py-lmdb's data.mdb holding the same N entries
    (defaults, one write transaction)."""
    path = str(tmp_path_factory.mktemp("pylmdb") / "l")
    env = lmdb.open(path, map_size=1 << 30)
    try:
        with env.begin(write=True) as txn:
            for k in keys():
                txn.put(k.encode(), VALUE)
    finally:
        env.close()
    return sizes(path)[1]


# one set() per entry, and one set_many(); with durability="full" (no
# MDB_WRITEMAP, the file extended by the reservation) only set_many: 10k
# fsyncs take half a minute on a shared disk
@pytest.mark.parametrize("durability, batch", [("process", False), ("process", True),
                                               ("full", True)],
                         ids=["process-set", "process-set_many", "full-set_many"])
def test_10k_entries_disk_footprint(tmp_path, pylmdb_allocated, durability, batch):
    path = str(tmp_path / "c")
    with lmdbcache.Cache(path, durability=durability) as c:
        if batch:
            c.set_many({k: VALUE for k in keys()})
        else:
            for k in keys():
                c.set(k, VALUE)
        assert len(c) == N
        used = c.info()["file_bytes"]  # (last page in use + 1) * page size
    apparent, allocated = sizes(path)
    figures = (f"apparent {apparent:,} B, allocated {allocated:,} B, in use {used:,} B, "
               f"py-lmdb allocated {pylmdb_allocated:,} B "
               f"({allocated / N:.0f} vs {pylmdb_allocated / N:.0f} B/entry)")
    assert used > 0 and pylmdb_allocated > 0
    assert apparent <= 2 * used, figures
    assert allocated <= 2 * pylmdb_allocated, figures
