"""MDB_NORDAHEAD by default, with a sequential warm-up before whole-file scans
(issue 12, item 5; measurements in docs/architecture.md, "Readahead")."""
import os

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
