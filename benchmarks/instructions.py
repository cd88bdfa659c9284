"""Instructions per operation, counted by valgrind's callgrind (stable on a noisy
machine, unlike seconds).

    python benchmarks/instructions.py            # table for this build
    python benchmarks/instructions.py get_hit get_hit+secret   # some operations
    python benchmarks/instructions.py --child OP N   (internal)

Each operation runs in its own process twice under callgrind, with N and 2N
iterations; the difference divided by N is the cost of one call, loop included,
without start-up.  Run it with another build on PYTHONPATH to compare builds.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

OPS = ("get_hit", "get_miss", "set", "contains", "get_bytes",
       "get_hit+secret", "set+secret", "get_hit+json", "set+json")
# "+secret": the cache is opened with secret= (record MACs); "+json": with
# serializer="json".


def child(op: str, n: int) -> None:
    import lmdbcache

    d = tempfile.mkdtemp()
    op, _, variant = op.partition("+")
    options = {"secret": {"secret": b"instructions-secret-0123456789ab"},
               "json": {"serializer": "json"}, "": {}}[variant]
    c = lmdbcache.Cache(d, **options)
    value = {"id": 1, "name": "x" * 20, "tags": [1, 2, 3]}
    keys = ["key:%d" % i for i in range(1000)]
    for k in keys:
        c[k] = value
    c["b"] = b"x" * 64
    get = c.get
    if op == "get_hit":
        for i in range(n):
            get(keys[i % 1000])
    elif op == "get_miss":
        for i in range(n):
            get("missing")
    elif op == "set":
        for i in range(n):
            c[keys[i % 1000]] = value
    elif op == "contains":
        for i in range(n):
            keys[i % 1000] in c
    elif op == "get_bytes":
        for i in range(n):
            get("b")
    c.close()
    shutil.rmtree(d)


def count(op: str, n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             sys.executable, "-P", os.path.abspath(__file__), "--child", op, str(n)],
            check=True, capture_output=True)
        with open(out) as f:
            text = f.read()
        m = re.search(r"^summary:\s+(\d+)", text, re.M) or re.search(r"^totals:\s+(\d+)", text, re.M)
        return int(m.group(1))


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]))
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    import lmdbcache

    n = 20000
    print(f"lmdbcache from {os.path.dirname(lmdbcache.__file__)}")
    ops = sys.argv[1:] or OPS
    unknown = set(ops) - set(OPS)
    if unknown:
        sys.exit(f"unknown operations {sorted(unknown)}; known: {', '.join(OPS)}")
    print(f"{'operation':<16} {'instructions/op':>16}")
    for op in ops:
        per = (count(op, 2 * n) - count(op, n)) / n
        print(f"{op:<16} {per:>16.0f}")


if __name__ == "__main__":
    main()
