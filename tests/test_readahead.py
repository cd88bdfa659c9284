"""MDB_NORDAHEAD by default, with a sequential warm-up before whole-file scans
(issue 12, item 5; measurements in docs/architecture.md, "Readahead")."""
import os
import sys

import pytest

import lmdbcache


@pytest.mark.parametrize("readahead", [False, True])
def test_scans_with_and_without_readahead(tmp_path, readahead):
    path = str(tmp_path / "c")
    with lmdbcache.Cache(path, readahead=readahead) as c:
        assert c.options["readahead"] is readahead
        c.set_many({i: b"x" * 200 for i in range(1000)})
    with lmdbcache.Cache(path, readahead=readahead) as c:
        assert sorted(c) == list(range(1000))       # past the first chunk: warms up
        assert sum(1 for _ in c.items()) == 1000    # again, within the minute: no warm-up
        c.set("t", 1, ttl=0.001)
        assert c.expire() >= 0
        c.clear()
        assert len(c) == 0


def test_warm_up_keeps_lock_file_locks(tmp_path):
    """The warm-up opens and closes data.mdb only: the process keeps its reader
    slot (the fcntl lock on lock.mdb), so another process sees it alive."""
    path = str(tmp_path / "c")
    with lmdbcache.Cache(path) as c:
        c.set_many({i: i for i in range(500)})
        assert sum(1 for _ in c) == 500
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                lmdb = __import__("lmdb")
                env = lmdb.open(path, max_dbs=8)
                dead = env.reader_check()
                env.close()
                os._exit(0 if dead == 0 else 1)
            except BaseException:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        if os.WEXITSTATUS(status) == 2:
            pytest.skip("py-lmdb unavailable")
        assert os.WEXITSTATUS(status) == 0, "the parent's reader slot was reclaimed"
        assert c[3] == 3


def data_map_vmflags(path):
    """VmFlags of every mapping of *path*/data.mdb in this process."""
    target = os.path.realpath(os.path.join(path, "data.mdb"))
    found, name = [], None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(None, 5)
            if head and head[0].count("-") == 1 and not head[0].endswith(":"):
                name = head[5].strip() if len(head) > 5 else None
            elif line.startswith("VmFlags:") and name == target:
                found.append(set(line.split()[1:]))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.exists("/proc/self/smaps"),
                    reason="reads the mapping's VmFlags in /proc/self/smaps")
@pytest.mark.parametrize("durability", ["process", "full"])
def test_default_maps_without_readahead(tmp_path, durability):
    """MDB_NORDAHEAD is the default: LMDB then madvise(MADV_RANDOM)s its map,
    which /proc/self/smaps shows as the VmFlag "rr" -- on the first map, and
    again after the map grew.  readahead=True leaves the map as the kernel
    made it (no "rr")."""
    for readahead, want in ((None, True), (False, True), (True, False)):
        path = str(tmp_path / f"c-{readahead}")
        kw = {} if readahead is None else {"readahead": readahead}
        with lmdbcache.Cache(path, durability=durability, **kw) as c:
            c["k"] = b"v"
            assert c["k"] == b"v"
            first = c.info()["map_size"]
            flags = data_map_vmflags(path)
            assert flags, "no mapping of data.mdb in /proc/self/smaps"
            assert all(("rr" in f) is want for f in flags), (readahead, flags)
            c.set_many({i: os.urandom(2000) for i in range(3000)})  # ~6 MiB: the map grows
            assert c.info()["map_size"] > first
            flags = data_map_vmflags(path)
            assert flags and all(("rr" in f) is want for f in flags), (readahead, "grown", flags)
