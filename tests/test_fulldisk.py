"""Issue 9, part 3: a full disk, on a real 16 MiB tmpfs.

Every operation runs in a child process whose exit status is checked: a full
disk must surface as a clean ``OSError`` with errno ENOSPC -- never a signal
(SIGBUS from a store into an unallocated page of a mapped file), never EIO --
and deleting entries must always make room again, without freeing anything
outside the cache.

Needs root (mount -t tmpfs); skipped with the reason where mounting fails.
"""
import collections
import errno
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _i9util import MiB, check_ok, fill_disk, free_bytes, record_figures, run_child, small_tmpfs  # noqa: E402

DURABILITIES = ["process", "full"]
OPENERS = 80


@pytest.fixture
def disk(tmp_path):
    """A fresh 16 MiB tmpfs, unmounted at teardown."""
    where = str(tmp_path / "mnt")
    try:
        cm = small_tmpfs(where)
        mounted = cm.__enter__()
    except OSError as exc:
        pytest.skip(f"cannot mount a 16 MiB tmpfs for the full-disk tests: {exc}")
    try:
        yield mounted
    finally:
        cm.__exit__(None, None, None)


def _is_enospc(err):
    """An OSError (or subclass) with errno ENOSPC."""
    return err is not None and err.get("errno") == errno.ENOSPC and err.get("documented")


@pytest.mark.parametrize("leave", [0, 16 << 10, 160 << 10])
@pytest.mark.parametrize("durability", DURABILITIES)
def test_create_on_full_disk(disk, durability, leave):
    """Creating a cache on a full (or all but full) disk: a clean
    OSError(ENOSPC) or a working cache -- and on a completely full disk the
    error, never a signal."""
    fill_disk(disk, leave=leave)
    res = run_child("create", os.path.join(disk, "cache"), durability, timeout=60)
    outcome = "signal" if res.signal else (res.data or {}).get("outcome")
    record_figures(f"fulldisk-create/{durability}/leave={leave}", trials=1,
                   signal=res.signal, outcome=outcome,
                   error=(res.data or {}).get("error", {}).get("errno"))
    assert res.signal == 0, res.describe()
    data = check_ok(res)
    if leave == 0:
        assert data["outcome"] == "error", f"a cache was created on a full disk: {data}"
    if data["outcome"] == "error":
        assert _is_enospc(data["error"]), f"expected OSError(ENOSPC), got {data['error']}"
    else:
        assert data["ok"] is True


@pytest.mark.parametrize("durability", DURABILITIES)
def test_concurrent_openers_on_full_disk(disk, durability):
    """80 processes open an existing cache at once on a full disk: none dies
    of a signal; each reads the value or gets OSError(ENOSPC)."""
    path = os.path.join(disk, "cache")
    check_ok(run_child("setup", path, durability, "default", "none"))
    fill_disk(disk, leave=0)
    res = run_child("openers", path, durability, OPENERS, 1.0, timeout=180)
    assert res.returncode == 0 and res.data is not None, res.describe()
    codes = collections.Counter(res.data["codes"])
    outcomes = collections.Counter()
    bad = []
    for r in res.data["results"]:
        if r["outcome"] == "ok":
            outcomes["ok"] += 1
        elif r["outcome"] == "error" and _is_enospc(r["error"]):
            outcomes["ENOSPC"] += 1
        else:
            outcomes["other"] += 1
            bad.append(r)
    signals = sum(n for c, n in codes.items() if c < 0)
    line = record_figures(f"fulldisk-openers/{durability}", trials=OPENERS, signals=signals,
                          ok=outcomes["ok"], enospc=outcomes["ENOSPC"], other=outcomes["other"],
                          codes=dict(codes))
    assert signals == 0, f"{signals} of {OPENERS} openers died of a signal\n{line}"
    assert set(codes) == {0}, line
    assert len(res.data["results"]) == OPENERS, line
    assert not bad, f"errors other than ENOSPC: {bad[:5]}\n{line}"


@pytest.mark.parametrize("value_size", [3000, 70_000])
@pytest.mark.parametrize("durability", DURABILITIES)
def test_full_disk_recovery_by_delete(disk, durability, value_size):
    """Fill the cache until the disk is full: the write fails with
    OSError(ENOSPC) (not EIO, not MapFullError); what is stored still reads
    back; deleting some keys and clear() succeed and writes resume -- with the
    space outside the cache (a filler file) untouched."""
    filler = fill_disk(disk, leave=6 * MiB)
    filler_size = os.stat(filler).st_size
    path = os.path.join(disk, "cache")
    res = run_child("fill-recover", path, durability, value_size, timeout=120)
    steps = ("read_after_full", "delete", "write_after_delete", "clear", "write_after_clear")
    data = res.data or {}
    failed = [s for s in steps if data.get(s) != "ok"]
    line = record_figures(
        f"fulldisk-recover/{durability}/{value_size}", trials=1, signal=res.signal,
        written=data.get("written"),
        fill_error=(data.get("fill_error") or {}).get("errno", (data.get("fill_error") or {}).get("type")),
        failed_steps=",".join(failed) or "-", free_kib=free_bytes(disk) >> 10)
    assert res.signal == 0, res.describe()
    check_ok(res)
    assert os.stat(filler).st_size == filler_size
    assert data["written"] > 0, line
    assert _is_enospc(data["fill_error"]), (
        f"filling the disk must end in OSError(ENOSPC), got {data['fill_error']}\n{line}")
    for s in steps:
        assert data[s] == "ok", f"{s} failed after ENOSPC: {data[s]}\n{line}\n{data}"
    after = run_child("readall", path, durability, timeout=60)
    assert after.signal == 0, after.describe()
    assert check_ok(after)["outcome"] == "ok", after.data
