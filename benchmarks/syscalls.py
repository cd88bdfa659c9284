"""Show that a cache read makes no system call -- not even after fork().

lmdbcache notices a fork by comparing an integer (the fork generation) on every
call; it never asks the kernel for its pid.  This script proves it with strace:
it runs the same program twice under ``strace -f -c``, once doing 0 gets and once
doing N gets (default 100 000), and prints the system calls of both runs and the
difference.  Everything the interpreter does to start, import and open the cache
cancels out; what is left is what the gets cost.

    .venv/bin/python benchmarks/syscalls.py                # gets in the process that opened the cache
    .venv/bin/python benchmarks/syscalls.py --after-fork   # gets in a forked child (inherited Cache)
    .venv/bin/python benchmarks/syscalls.py --gets 1000000

Needs strace (``apt-get install strace``); prints a note and exits 0 without it.
Under some containers strace needs the ptrace capability.  Exit status 1 when the
gets cost more than 0.01 system calls each.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

PROGRAM = r"""
import os, sys
import lmdbcache

path, n, after_fork = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
cache = lmdbcache.Cache(path)
cache["key"] = b"value"
for _ in range(1000):          # warm up: the first get opens the read txn
    cache["key"]

def gets():
    get = cache.get
    for _ in range(n):
        get("key")
    assert cache["key"] == b"value"

if after_fork:
    pid = os.fork()
    if pid == 0:
        for _ in range(1000):  # the child reopens the cache on its first use
            cache["key"]
        gets()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
gets()
"""

# "% time     seconds  usecs/call     calls    errors syscall"
ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:(\d+)\s+)?(\w+)\s*$")


def count_syscalls(strace, path, gets, after_fork):
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
        cmd = [strace, "-f", "-c", "-o", out.name, sys.executable, "-P", "-c", PROGRAM,
               path, str(gets), "1" if after_fork else "0"]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"strace run failed ({run.returncode}):\n{run.stderr}")
        counts = {}
        for line in out.read().splitlines():
            m = ROW.match(line)
            if m and m.group(3) != "total":
                counts[m.group(3)] = int(m.group(1))
        return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gets", type=int, default=100_000, help="gets in the measured run")
    ap.add_argument("--after-fork", action="store_true",
                    help="do the gets in a forked child that inherited the Cache")
    ap.add_argument("--dir", help="cache directory (default: a temporary one)")
    args = ap.parse_args()

    strace = shutil.which("strace")
    if strace is None:
        print("strace is not installed: nothing to measure (apt-get install strace)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = args.dir or os.path.join(tmp, "cache")
        # Create the cache first, so that both measured runs open an existing one.
        subprocess.run([sys.executable, "-P", "-c", PROGRAM, path, "0", "0"], check=True)
        base = count_syscalls(strace, path, 0, args.after_fork)
        loop = count_syscalls(strace, path, args.gets, args.after_fork)

    where = "a forked child" if args.after_fork else "the process that opened the cache"
    print(f"system calls of a whole run, 0 gets vs {args.gets:,} gets, in {where}")
    print(f"{'syscall':<20}{'0 gets':>10}{f'{args.gets:,} gets':>14}{'difference':>12}")
    for name in sorted(set(base) | set(loop), key=lambda s: (-loop.get(s, 0), s)):
        b, n = base.get(name, 0), loop.get(name, 0)
        print(f"{name:<20}{b:>10}{n:>14}{n - b:>+12}")
    total_b, total_n = sum(base.values()), sum(loop.values())
    print(f"{'total':<20}{total_b:>10}{total_n:>14}{total_n - total_b:>+12}")
    per_get = (total_n - total_b) / args.gets if args.gets else 0.0
    print(f"system calls per get: {per_get:.5f}")
    if per_get > 0.01:
        print("FAIL: gets make system calls")
        return 1
    print("OK: a get makes no system call (the fork check is an integer compare)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
