"""Readahead (docs/architecture.md): open + first get, 100 random gets, full iteration of a
1M-entry cache, cold (needs root: drop_caches) and warm, readahead=True vs False.
Usage: python benchmarks/readahead.py [reps]  (builds /tmp/ra/cache1m first)."""
import json, os, random, subprocess, sys, time

PY = sys.executable
PATH = os.environ.get("LMDBCACHE_RA_PATH", "/tmp/ra/cache1m")
N = 1_000_000

CHILD = r'''
import json, os, random, sys, time
import lmdbcache
path, mode, ra = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
def rb():
    with open("/proc/self/io") as f:
        return dict(l.split(": ") for l in f.read().splitlines())
def io():
    d = rb(); return int(d["read_bytes"])
random.seed(int(sys.argv[4]))
keys = ["key-%d" % random.randrange(%N%) for _ in range(100)]
out = {}
b0 = io(); t0 = time.perf_counter()
c = lmdbcache.Cache(path, readahead=ra)
x = c.get(keys[0])
t1 = time.perf_counter(); b1 = io()
out["open_first_get_ms"] = (t1 - t0) * 1e3; out["open_mib"] = (b1 - b0) / 2**20
if mode == "gets":
    t0 = time.perf_counter()
    for k in keys:
        assert c.get(k) is not None
    t1 = time.perf_counter()
    out["gets_ms"] = (t1 - t0) * 1e3; out["gets_mib"] = (io() - b1) / 2**20
elif mode == "iter":
    t0 = time.perf_counter()
    n = sum(1 for _ in c.keys())
    t1 = time.perf_counter()
    assert n == %N%, n
    out["iter_ms"] = (t1 - t0) * 1e3; out["iter_mib"] = (io() - b1) / 2**20
c.close()
print(json.dumps(out))
'''.replace("%N%", str(N))

def build():
    import lmdbcache
    if os.path.exists(PATH):
        return
    c = lmdbcache.Cache(PATH)
    v = b"x" * 100
    for i in range(0, N, 10000):
        c.set_many({"key-%d" % j: v for j in range(i, i + 10000)})
    c.close()

def drop():
    subprocess.run(["sync"]); open("/proc/sys/vm/drop_caches", "w").write("3\n")

def run(mode, ra, cold, seed):
    if cold:
        drop()
    r = subprocess.run([PY, "-c", CHILD, PATH, mode, "1" if ra else "0", str(seed)],
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr)
    return json.loads(r.stdout)

if __name__ == "__main__":
    build()
    print("data.mdb MiB:", os.path.getsize(PATH + "/data.mdb") / 2**20)
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    for cold in (True, False):
        for ra in (True, False):
            res = {}
            for mode in ("open", "gets", "iter"):
                for rep in range(reps):
                    if not cold:
                        run(mode, ra, False, rep)  # prime
                    r = run(mode, ra, cold, rep)
                    for k, v in r.items():
                        if mode != "open" and k.startswith("open"):
                            continue
                        res.setdefault(k, []).append(v)
            print("cold" if cold else "warm", "readahead" if ra else "NORDAHEAD+warmup",
                  {k: "%.2f-%.2f" % (min(v), max(v)) for k, v in res.items()}, flush=True)
