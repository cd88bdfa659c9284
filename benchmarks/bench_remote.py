"""The remote tier on loopback: a local hit with remote= against a plain local
hit, a remote hit against a raw redis-py GET + decode, a write against a raw SET.

    .venv/bin/python benchmarks/bench_remote.py [--quick] [--url redis://...]

Without --url a redis-server (Debian's package, `make deps`) is started on a
free loopback port and killed at the end.  The value is a small dict (pickled
either way).  Targets (issue 14): local hit with remote= <= 1.1x a plain local
hit; remote hit <= 1.5x GET + decode; write <= 1.5x SET.
"""
from __future__ import annotations

import argparse
import gc
import os
import pickle
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import redis

import lmdbcache

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import cpu_model  # noqa: E402

VALUE = {"sum": 12345, "name": "x" * 10, "items": list(range(10))}


def start_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(500):
        try:
            redis.Redis(port=port).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.01)
    return proc, f"redis://127.0.0.1:{port}/0"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--url")
    args = ap.parse_args(argv)
    n = 2000 if args.quick else 20000
    nr = 500 if args.quick else 3000  # network round trips: fewer
    rounds = 3 if args.quick else 7
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server()
    root = tempfile.mkdtemp(prefix="lmdbcache-bench-remote-")
    try:
        raw = redis.Redis.from_url(url)
        raw.flushdb()
        plain = lmdbcache.Cache(f"{root}/plain")
        remote = lmdbcache.Cache(f"{root}/remote", remote=url)
        other = lmdbcache.Cache(f"{root}/other", remote=url)
        keys = [("k", i) for i in range(nr)]
        plain["hot"] = VALUE
        remote["hot"] = VALUE
        time.sleep(0.1)

        def plain_hit(n):
            g = plain.get
            for _ in range(n):
                g("hot")

        def remote_local_hit(n):
            g = remote.get
            for _ in range(n):
                g("hot")

        for k in keys:
            remote[k] = VALUE
            plain[k] = VALUE  # the same entries: a hit walks a B-tree of the same depth
        raw_keys = [f"raw:{i}".encode() for i in range(nr)]
        blob = pickle.dumps(VALUE, protocol=5)
        for k in raw_keys:
            raw.set(k, blob)

        def remote_hit(n):
            # every read is a local miss: the other machine's tier is dropped first
            g = other.get
            for k in keys[:n]:
                g(k)

        def raw_get(n):
            g = raw.get
            for k in raw_keys[:n]:
                pickle.loads(g(k))

        def remote_write(n):
            s = remote.set
            for k in keys[:n]:
                s(k, VALUE)

        def raw_set(n):
            s = raw.set
            for k in raw_keys[:n]:
                s(k, pickle.dumps(VALUE, protocol=5))

        def interleaved(fa, fb, n):
            """Medians of fa and fb measured in alternating rounds (the network's
            noise hits both alike)."""
            a, b = [], []
            for _ in range(rounds):
                a.append(fa(n))
                b.append(fb(n))
            return statistics.median(a), statistics.median(b)

        def timed(fn):
            def run(n):
                gc.disable()
                t0 = time.perf_counter()
                fn(n)
                dt = (time.perf_counter() - t0) / n * 1e6
                gc.enable()
                return dt
            return run

        rows = []
        t_rlocal, t_plain = interleaved(timed(remote_local_hit), timed(plain_hit), n)
        rows.append(("local hit, remote= vs plain Cache", t_rlocal, t_plain, 1.1))

        def remote_hit_round(n):
            # a fresh local directory each round: every get is a remote hit
            nonlocal other
            other.close()
            shutil.rmtree(f"{root}/other", ignore_errors=True)
            other = lmdbcache.Cache(f"{root}/other", remote=url)
            time.sleep(0.05)
            return timed(remote_hit)(n)

        t_rhit, t_rawget = interleaved(remote_hit_round, timed(raw_get), nr)
        rows.append(("remote hit vs redis-py GET + unpickle", t_rhit, t_rawget, 1.5))
        # only the writer's tier in this process: another machine's listener
        # would apply the invalidations on its own machine, not here
        other.close()
        del other
        gc.collect()
        t_w, t_rawset = interleaved(timed(remote_write), timed(raw_set), nr)
        rows.append(("write (set) vs redis-py SET of the pickle", t_w, t_rawset, 1.5))

        print(f"# bench_remote  python {sys.version.split()[0]}  {cpu_model()}  redis {url}")
        print()
        print("| operation | lmdbcache µs | baseline µs | ratio | target |")
        print("|---|---:|---:|---:|---:|")
        for name, t, base, target in rows:
            ratio = t / base
            mark = "ok" if ratio <= target else "MISSED"
            print(f"| {name} | {t:.2f} | {base:.2f} | {ratio:.2f}x | <= {target}x {mark} |")
        plain.close()
        remote.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if proc is not None:
            proc.kill()
            proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
