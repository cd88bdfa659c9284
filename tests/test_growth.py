"""Issue 9, parts 1 and 2: map growth under many processes, and size_limit
under concurrent load.

With durability="process" (MDB_WRITEMAP) LMDB sets the data file's size to the
opening (or growing) process's map size, so a process that opens with a
smaller map than another process already uses -- or grows its map to less
than the file already is -- cuts the file short under a live writer, whose
next store into the lost tail dies of SIGBUS.  These tests run real processes
and assert what a user relies on:

  * no process dies of a signal, and no write of a value that fits fails;
  * the data file never shrinks while writers are live (sampled every few ms
    by a monitor thread of the test), and with size_limit never exceeds the
    documented bound  size_limit + size_limit/4 + 4 MiB  (lmc_env_map_cap);
  * afterwards the cache opens (small and default map_size) and every entry
    reads back intact -- and, without size_limit, every committed key is there.

LMDBCACHE_STRESS_SECONDS scales the load phases (default 8 s and 12 s).
"""
import os
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _i9util import MiB, check_ok, finish_child, record_figures, run_child, start_child  # noqa: E402

SCALE = float(os.environ.get("LMDBCACHE_STRESS_SECONDS", "0") or 0)
GROW_SECONDS = SCALE or 8.0
LIMIT_SECONDS = SCALE or 12.0
DURABILITIES = ["process", "full"]


class SizeMonitor(threading.Thread):
    """Sample the size of `path` every ~2 ms; while `live` is set, any sample
    smaller than the one before is a shrink."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path = path
        self.live = threading.Event()
        self.stop = threading.Event()
        self.samples = 0
        self.max = 0
        self.shrinks = []
        self.last = None

    def run(self):
        while not self.stop.is_set():
            try:
                size = os.stat(self.path).st_size
            except FileNotFoundError:
                size = None
            if size is not None:
                self.samples += 1
                self.max = max(self.max, size)
                if self.live.is_set() and self.last is not None and size < self.last:
                    self.shrinks.append((self.last, size, round(time.monotonic(), 3)))
                self.last = size
            time.sleep(0.002)


def _bound(size_limit):
    # lmc_env_map_cap in csrc/lmdbcache.h: the documented largest file
    return size_limit + size_limit // 4 + 4 * MiB


def _summarise(results, kind):
    """Signals, failed exits, error counts (by type) and wrong values over children."""
    signals = [r.signal for r in results if r.signal]
    failed = [r for r in results if r.returncode != 0 or r.timed_out or r.data is None]
    errors = {}
    wrong = 0
    for r in results:
        if r.data:
            for name, n in r.data.get("errors", {}).items():
                errors[name] = errors.get(name, 0) + n
            wrong += r.data.get("wrong", 0)
    return signals, failed, errors, wrong


@pytest.mark.parametrize("durability", DURABILITIES)
def test_map_growth_stress(tmp_path, durability):
    """3 writers grow a 1 MiB map to >100 MiB with new 8-96 KB values while
    2 processes keep opening the cache with map_size 1 MiB and the default
    1 GiB and reading: no signal, no error, the file never shrinks, every
    committed key reads back."""
    path = str(tmp_path / "cache")
    data = os.path.join(path, "data.mdb")
    check_ok(run_child("setup", path, durability, MiB, "none"))
    mon = SizeMonitor(data)
    mon.live.set()
    mon.start()
    writers = [start_child("grow-writer", path, durability, MiB, w, GROW_SECONDS, 48 * MiB)
               for w in range(3)]
    openers = [start_child("grow-opener", path, durability, GROW_SECONDS, sizes, 3, "none")
               for sizes in (f"{MiB},default", f"default,{MiB}")]
    w_res = [finish_child(p, GROW_SECONDS + 120) for p in writers]
    o_res = [finish_child(p, GROW_SECONDS + 120) for p in openers]
    mon.live.clear()
    mon.stop.set()
    mon.join()

    w_sig, w_failed, w_err, w_wrong = _summarise(w_res, "writer")
    o_sig, o_failed, o_err, o_wrong = _summarise(o_res, "opener")
    written = {f"w{i}": r.data["written"] for i, r in enumerate(w_res) if r.data}
    after = [run_child("verify", path, durability, ms, "none",
                       __import__("json").dumps(written) if ms == MiB else "-", timeout=120)
             for ms in (MiB, "default")]
    a_bad = [r for r in after if r.returncode != 0 or r.data is None
             or r.data["nbad"] or r.data["missing"]]
    line = record_figures(
        f"growth/{durability}", processes=len(w_res) + len(o_res), signals=len(w_sig + o_sig),
        failed_exits=len(w_failed + o_failed), writes=sum(written.values()),
        write_errors=sum(w_err.values()), opens=sum(r.data["opens"] for r in o_res if r.data),
        open_errors=sum(o_err.values()), wrong=w_wrong + o_wrong, shrinks=len(mon.shrinks),
        max_file_mib=round(mon.max / MiB, 1), reopen_failures=len(a_bad))

    assert not w_sig and not o_sig, f"processes died of signals {w_sig + o_sig}\n{line}\n" + \
        "\n".join(r.describe() for r in w_failed + o_failed)[:6000]
    assert not w_failed and not o_failed, "\n".join(r.describe() for r in w_failed + o_failed)
    assert not w_err and not o_err, (
        f"errors: writers {w_err}, openers {o_err}\n"
        f"{[r.data.get('samples') for r in w_res + o_res if r.data]}")
    assert w_wrong + o_wrong == 0, line
    assert not mon.shrinks, f"the data file shrank under live writers: {mon.shrinks[:10]}\n{line}"
    assert mon.samples > 50
    assert not a_bad, "\n".join(r.describe() for r in a_bad)
    assert sum(written.values()) > 100, line


@pytest.mark.parametrize("durability", DURABILITIES)
def test_size_limit_under_concurrent_load(tmp_path, durability):
    """6 processes x 4 threads set (100 B..20 KB), get and delete under
    size_limit=32 MiB with eviction, while another process keeps reopening the
    cache with map_size 1 MiB and the default: zero errors (MapFullError or
    any other), no signal, file within size_limit + size_limit/4 + 4 MiB and
    never shrinking while writers are live; the cache reads cleanly after."""
    size_limit = 32 * MiB
    bound = _bound(size_limit)
    path = str(tmp_path / "cache")
    data = os.path.join(path, "data.mdb")
    check_ok(run_child("setup", path, durability, "default", size_limit))
    mon = SizeMonitor(data)
    mon.live.set()
    mon.start()
    writers = [start_child("limit-writer", path, durability, size_limit, p, 4, LIMIT_SECONDS,
                           "default" if p % 2 == 0 else MiB)
               for p in range(6)]
    openers = [start_child("grow-opener", path, durability, LIMIT_SECONDS, f"{MiB},default", 0,
                           size_limit)]
    w_res = [finish_child(p, LIMIT_SECONDS + 120) for p in writers]
    o_res = [finish_child(p, LIMIT_SECONDS + 120) for p in openers]
    mon.live.clear()
    time.sleep(0.05)
    mon.stop.set()
    mon.join()
    final = os.stat(data).st_size

    w_sig, w_failed, w_err, w_wrong = _summarise(w_res, "writer")
    o_sig, o_failed, o_err, o_wrong = _summarise(o_res, "opener")
    after = [run_child("verify", path, durability, ms, size_limit, "-", timeout=120)
             for ms in (MiB, "default")]
    a_bad = [r for r in after if r.returncode != 0 or r.data is None or r.data["nbad"]]
    ops = {}
    for r in w_res:
        if r.data:
            for k, v in r.data["ops"].items():
                ops[k] = ops.get(k, 0) + v
    line = record_figures(
        f"size_limit/{durability}", processes=len(w_res) + len(o_res),
        signals=len(w_sig + o_sig), failed_exits=len(w_failed + o_failed),
        ops=sum(ops.values()), map_full=w_err.get("MapFullError", 0),
        other_errors=sum(v for k, v in w_err.items() if k != "MapFullError") + sum(o_err.values()),
        wrong=w_wrong + o_wrong, shrinks=len(mon.shrinks), max_file_mib=round(mon.max / MiB, 2),
        bound_mib=round(bound / MiB, 2), reopen_failures=len(a_bad))

    assert not w_sig and not o_sig, f"processes died of signals {w_sig + o_sig}\n{line}\n" + \
        "\n".join(r.describe() for r in w_failed + o_failed)[:6000]
    assert not w_failed and not o_failed, "\n".join(r.describe() for r in w_failed + o_failed)
    assert not w_err and not o_err, (
        f"errors for values that fit: writers {w_err}, openers {o_err}\n{line}\n"
        f"{[r.data.get('samples') for r in w_res + o_res if r.data][:3]}")
    assert w_wrong + o_wrong == 0, line
    assert mon.max <= bound and final <= bound, (
        f"data file reached {mon.max} bytes (final {final}) > bound {bound}\n{line}")
    assert not mon.shrinks, f"the data file shrank under live writers: {mon.shrinks[:10]}\n{line}"
    assert not a_bad, "\n".join(r.describe() for r in a_bad)
    assert ops.get("set", 0) > 1000, line
