"""The lmdbcache command: every subcommand, exit codes, one-line errors, and the
progress bar as a person sees it in a real terminal (tmux)."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

import lmdbcache

# Python 3.10 has no -P; its test run starts in tests/, where no source package can shadow.
SAFE_PATH = ["-P"] if sys.version_info >= (3, 11) else []

TIMEOUT = 120


def run(*args, input=None):
    """Run the command as a user would (python -m lmdbcache), stdout a pipe."""
    proc = subprocess.run([sys.executable, *SAFE_PATH, "-m", "lmdbcache", *args], capture_output=True,
                          text=True, timeout=TIMEOUT, input=input)
    # never a traceback, errors on one line
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") <= 1, proc.stderr
    return proc


def make_cache(path, n=100):
    with lmdbcache.Cache(path) as c:
        c.update({i: f"value {i}" for i in range(n)})
        c["text"] = "hello"
        c[("tuple", 1)] = [1, 2, 3]
        c.namespace("users")["alice"] = {"id": 1}
        c.namespace("users")["bob"] = {"id": 2}
    return path


@pytest.fixture
def path(tmp_path):
    return make_cache(str(tmp_path / "cache"))


def test_console_script_is_installed():
    exe = shutil.which("lmdbcache", path=os.path.dirname(sys.executable))
    assert exe is not None
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"lmdbcache {lmdbcache.__version__}"


def test_stat_text(path):
    proc = run("stat", path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"path         {path}" in out
    assert "entries      104  ((default): 102, users: 2)" in out
    assert "readers" in out and "of 1024 slots" in out
    assert f"format       {lmdbcache.FORMAT_VERSION}" in out
    assert "LMDB " + ".".join(map(str, lmdbcache.lmdb_version())) in out
    # the release that created the cache, from its __meta__
    assert "created by LMDB " + ".".join(map(str, lmdbcache.lmdb_version())) + ")" in out


def test_stat_json(path):
    proc = run("stat", path, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["entries"] == 104
    assert info["namespaces"] == {"(default)": 102, "users": 2}
    for field in ("used_bytes", "file_bytes", "apparent_bytes", "map_size", "data_bytes"):
        assert isinstance(info[field], int) and info[field] > 0, field
    assert info["used_bytes"] >= info["data_bytes"]
    assert info["apparent_bytes"] == os.stat(os.path.join(path, "data.mdb")).st_size
    assert info["format_version"] == lmdbcache.FORMAT_VERSION
    assert info["created_by_lmdb"] == ".".join(map(str, lmdbcache.lmdb_version()))
    assert info["other_pids"] == []


def test_stat_never_creates_a_cache(tmp_path):
    missing = str(tmp_path / "nothing")
    proc = run("stat", missing)
    assert proc.returncode == 1
    assert proc.stderr == f"lmdbcache stat: {missing}: no such cache directory\n"
    assert not os.path.exists(missing)
    os.mkdir(missing)
    proc = run("ls", missing)
    assert proc.returncode == 1
    assert "not an lmdbcache cache" in proc.stderr
    assert os.listdir(missing) == []


def test_ls(path):
    proc = run("ls", path)
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert len(lines) == 102
    assert "'text'" in lines and "('tuple', 1)" in lines and "0" in lines
    assert run("ls", path, "--limit", "5").stdout.count("\n") == 5
    assert run("ls", path, "--limit", "0").stdout == ""
    assert run("ls", path, "-n", "users").stdout == "'alice'\n'bob'\n"
    assert run("ls", path, "--namespace", "").stdout.count("\n") == 102
    proc = run("ls", path, "-n", "nope")
    assert proc.returncode == 1 and "no namespace 'nope'" in proc.stderr


def test_ls_into_a_closed_pipe(tmp_path):
    path = make_cache(str(tmp_path / "c"), n=50000)
    cmd = " ".join([sys.executable, *SAFE_PATH, "-m", "lmdbcache", "ls", path]) + " | head -2"
    proc = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.stdout.count("\n") == 2
    assert proc.stderr == ""


def test_get(path):
    assert run("get", path, "text").stdout == "'hello'\n"
    assert run("get", path, "text", "--raw").stdout == "hello"
    assert run("get", path, "7").stdout == "'value 7'\n"          # 7 is an int literal
    assert run("get", path, "('tuple', 1)").stdout == "[1, 2, 3]\n"
    assert run("get", path, "alice", "-n", "users").stdout == "{'id': 1}\n"
    proc = run("get", path, "'7'")                                # the str '7'
    assert proc.returncode == 1
    assert proc.stderr == "lmdbcache get: key not found: '7'\n"


def test_rm(path):
    proc = run("rm", path, "1", "2", "text")
    assert proc.returncode == 0 and proc.stdout == "removed 3 of 3\n"
    proc = run("rm", path, "3", "missing")
    assert proc.returncode == 1
    assert proc.stdout == "removed 1 of 2\n"
    assert proc.stderr == "lmdbcache rm: not found: 'missing'\n"
    assert run("rm", path, "alice", "-n", "users").returncode == 0
    with lmdbcache.Cache(path) as c:
        assert 1 not in c and 3 not in c and "text" not in c and 4 in c
        assert list(c.namespace("users")) == ["bob"]


def test_clear(path):
    proc = run("clear", path, "-n", "users")
    assert proc.returncode == 0 and proc.stdout == "removed 2 entries\n"
    with lmdbcache.Cache(path) as c:
        assert len(c) == 102 and len(c.namespace("users")) == 0
    proc = run("clear", path)
    assert proc.returncode == 0 and proc.stdout == "removed 102 entries\n"
    with lmdbcache.Cache(path) as c:
        assert len(c) == 0


def test_expire(path):
    with lmdbcache.Cache(path) as c:
        c.set("soon", 1, ttl=0.05)
        c.namespace("users").set("soon", 1, ttl=0.05)
    time.sleep(0.1)
    proc = run("expire", path)
    assert proc.returncode == 0 and proc.stdout == "removed 2 expired entries\n"
    assert run("expire", path).stdout == "removed 0 expired entries\n"


@pytest.mark.parametrize("compact", [False, True])
def test_copy(path, tmp_path, compact):
    dest = str(tmp_path / "dest")
    proc = run("copy", path, dest, *(["--compact"] if compact else []))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"copied {path} to {dest} (")
    assert "\r" not in proc.stdout  # no progress bar into a pipe
    with lmdbcache.Cache(dest) as c:
        assert len(c) == 102 and c["text"] == "hello"
        assert c.namespace("users")["bob"] == {"id": 2}
    proc = run("copy", path, dest)
    assert proc.returncode == 1
    assert "already holds a cache" in proc.stderr


def test_copy_while_another_process_writes(path, tmp_path):
    writer = subprocess.Popen([sys.executable, *SAFE_PATH, "-c", textwrap.dedent(f"""
        import sys, lmdbcache
        c = lmdbcache.Cache({path!r})
        print("ready", flush=True)
        i = 0
        while True:
            c[("w", i)] = i
            i += 1
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "ready\n"
        dest = str(tmp_path / "snap")
        proc = run("copy", path, dest, "--compact")
        assert proc.returncode == 0, proc.stderr
    finally:
        writer.kill()
        writer.wait()
    with lmdbcache.Cache(dest) as c:
        n = sum(1 for k in c if isinstance(k, tuple) and k[0] == "w")
        assert all(("w", i) in c for i in range(n))  # a prefix of the writes: consistent
        assert c["text"] == "hello"
    assert run("verify", dest).returncode == 0


def test_compact(tmp_path):
    path = make_cache(str(tmp_path / "c"), n=20000)
    with lmdbcache.Cache(path) as c:
        c.delete_many(range(19000))
    before = os.stat(os.path.join(path, "data.mdb")).st_blocks
    proc = run("compact", path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"compacted {path}: ")
    after = os.stat(os.path.join(path, "data.mdb")).st_blocks
    assert after < before / 2
    assert [n for n in os.listdir(path) if n.startswith(".compact")] == []
    with lmdbcache.Cache(path) as c:
        assert len(c) == 1002 and c[19999] == "value 19999"
        assert c.namespace("users")["alice"] == {"id": 1}
        c["after"] = 1  # writable after the swap
    assert run("verify", path).returncode == 0


def test_compact_refuses_while_another_process_has_it_open(path):
    holder = subprocess.Popen([sys.executable, *SAFE_PATH, "-c", textwrap.dedent(f"""
        import sys, lmdbcache
        c = lmdbcache.Cache({path!r}, readonly=True)
        len(c)
        print("ready", flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "ready\n"
        before = os.stat(os.path.join(path, "data.mdb"))
        proc = run("compact", path)
        assert proc.returncode == 1
        assert proc.stderr.startswith("lmdbcache compact: cannot compact")
        assert f"other processes have it open (pid {holder.pid})" in proc.stderr
        after = os.stat(os.path.join(path, "data.mdb"))
        assert after.st_ino == before.st_ino  # untouched
    finally:
        holder.stdin.close()
        holder.wait(TIMEOUT)
    assert run("compact", path).returncode == 0  # the holder is gone


def damage(path):
    """Write three broken records with py-lmdb (in another process, the way a
    bug or a bad disk would): a bad header, a bad pickle, an undecodable key.
    The last two are well-formed records with a valid checksum, so
    only decoding them finds the damage."""
    script = textwrap.dedent(f"""
        import sys
        import lmdb

        sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
        from _records import make_record

        def record(key, tag, payload):
            return make_record(b"", key, tag, payload)

        env = lmdb.open({path!r}, max_dbs=64, map_size=1 << 30)
        with env.begin(write=True) as txn:
            txn.put(b"sbad-header", b"\\x09zz")
            txn.put(b"sbad-pickle", record(b"sbad-pickle", "p", b"not a pickle"))
            key = b"p" + b"\\x80garbage"
            txn.put(key, record(key, "N", b""))
        env.close()
    """)
    subprocess.run([sys.executable, *SAFE_PATH, "-c", script], check=True, timeout=TIMEOUT)


def test_verify(path):
    proc = run("verify", path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "104 records in 2 namespaces, 0 expired, 0 damaged\n"
    damage(path)
    proc = run("verify", path)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[-1] == "107 records in 2 namespaces, 0 expired, 3 damaged"
    damaged = [line for line in lines if line.startswith("damaged: ")]
    assert len(damaged) == 3
    assert any("b'sbad-header'" in d for d in damaged)
    assert any("b'sbad-pickle'" in d and "value cannot be decoded" in d for d in damaged)
    assert any("key cannot be decoded" in d for d in damaged)


def test_verify_method_reports(path):
    damage(path)
    with lmdbcache.Cache(path) as c:
        report = c.verify()
        assert not report.ok and report.damaged == 3
        assert report.records == 107 and report.namespaces == {None: 105, "users": 2}
        keys = {p.key for p in report.problems}
        assert b"sbad-header" in keys and b"sbad-pickle" in keys
        assert all(p.namespace is None for p in report.problems)


def test_usage_errors_exit_2(path):
    for args in ([], ["bogus"], ["ls"], ["ls", path, "--limit", "-1"], ["get", path],
                 ["stat", path, "--nope"], ["rm", path]):
        proc = run(*args)
        assert proc.returncode == 2, args
        assert proc.stdout == ""
        assert proc.stderr.startswith("lmdbcache"), args


def test_errors_are_one_line(path, tmp_path):
    not_dir = tmp_path / "file"
    not_dir.write_text("x")
    for args in (["stat", str(not_dir)], ["copy", path, str(not_dir)], ["copy", path, path]):
        proc = run(*args)
        assert proc.returncode == 1, args
        assert proc.stderr.startswith(f"lmdbcache {args[0]}: "), proc.stderr


def test_quiet_and_pipe_print_no_bar(path, tmp_path):
    proc = run("verify", path, "--quiet")
    assert proc.returncode == 0 and "\r" not in proc.stdout and "[" not in proc.stdout
    proc = run("copy", path, str(tmp_path / "q"), "--quiet")
    assert proc.returncode == 0 and proc.stdout == ""


# -- the progress bar in a real terminal -------------------------------------------------

tmux = shutil.which("tmux")


class Terminal:
    """A tmux server of our own running one command in a 120x30 terminal."""

    def __init__(self, tmp_path):
        self.sockets = []
        self.tmp = tmp_path

    def tmux(self, *args, socket=None):
        return subprocess.run([tmux, "-L", socket or self.sockets[-1], *args],
                              capture_output=True, text=True, timeout=30)

    def run(self, *args, wait=TIMEOUT):
        cmd = " ".join([sys.executable, *SAFE_PATH, "-m", "lmdbcache", *args])
        script = self.tmp / f"run-{uuid.uuid4().hex[:6]}.sh"
        script.write_text(f"cd {self.tmp}\n{cmd}\necho EXIT=$?\nsleep 600\n")
        if self.sockets:
            self.tmux("kill-server")
        # a server of its own per command: no reuse of a server shutting down
        self.sockets.append(f"lmdbcache-test-{uuid.uuid4().hex[:8]}")
        started = self.tmux("new-session", "-d", "-x", "120", "-y", "30", "sh", str(script))
        assert started.returncode == 0, started.stderr
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            screen = self.tmux("capture-pane", "-p").stdout
            if "EXIT=" in screen:
                return [line.rstrip() for line in screen.splitlines() if line.strip()]
            time.sleep(0.1)
        pytest.fail(f"command did not finish: {self.tmux('capture-pane', '-p').stdout}")

    def close(self):
        for socket in self.sockets:
            self.tmux("kill-server", socket=socket)


@pytest.fixture
def terminal(tmp_path):
    if tmux is None:
        pytest.skip("tmux is not installed")
    t = Terminal(tmp_path)
    try:
        yield t
    finally:
        t.close()


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("big") / "cache")
    with lmdbcache.Cache(path) as c:
        for start in range(0, 200000, 20000):
            c.update({i: b"x" * 200 for i in range(start, start + 20000)})
        c.delete_many(range(150000))
    return path


def bar_line(screen, label):
    lines = [line for line in screen if line.startswith(label + " [")]
    assert len(lines) == 1, screen
    return lines[0]


def test_progress_bar_copy_on_a_terminal(terminal, big, tmp_path):
    screen = terminal.run("copy", big, str(tmp_path / "snap"))
    line = bar_line(screen, "copy")
    assert line.startswith("copy [" + "#" * 20)
    assert "] 100%" in line and "MiB / " in line
    assert any(s.startswith(f"copied {big} to ") for s in screen)
    assert screen[-1] == "EXIT=0"


def test_progress_bar_verify_and_compact_on_a_terminal(terminal, big, tmp_path):
    dest = str(tmp_path / "work")
    assert run("copy", big, dest).returncode == 0
    screen = terminal.run("verify", dest)
    line = bar_line(screen, "verify")
    assert "] 100%  50,000 / 50,000 records" in line
    assert "50,000 records in 1 namespaces, 0 expired, 0 damaged" in screen
    assert screen[-1] == "EXIT=0"
    screen = terminal.run("compact", dest)
    assert "] 100%" in bar_line(screen, "compact")
    assert any(s.startswith(f"compacted {dest}: ") for s in screen)
    assert screen[-1] == "EXIT=0"


def test_progress_bar_clear_on_a_terminal(terminal, big, tmp_path):
    dest = str(tmp_path / "clear")
    assert run("copy", big, dest).returncode == 0
    screen = terminal.run("clear", dest)
    assert "] 100%  50,000 / 50,000 entries" in bar_line(screen, "clear")
    assert "removed 50,000 entries" in screen


def test_progress_bar_clear_namespace_on_a_terminal(terminal, tmp_path):
    path = str(tmp_path / "ns")
    with lmdbcache.Cache(path) as c:
        c["kept"] = 1
        c.namespace("users").update({i: b"x" * 100 for i in range(3000)})
    screen = terminal.run("clear", path, "--namespace", "users")
    assert "] 100%  3,000 / 3,000 entries" in bar_line(screen, "clear")
    assert "removed 3,000 entries" in screen
    assert screen[-1] == "EXIT=0"
    with lmdbcache.Cache(path) as c:
        assert len(c) == 1 and len(c.namespace("users")) == 0
        c.namespace("users")["again"] = 1
    screen = terminal.run("clear", path, "-n", "users", "-q")
    assert screen == ["EXIT=0"]


def test_quiet_help_says_what_still_prints():
    proc = run("verify", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "no summary line" not in text
    assert "rm, clear, copy and compact also print nothing" in text


def test_quiet_on_a_terminal(terminal, big, tmp_path):
    screen = terminal.run("copy", big, str(tmp_path / "quiet"), "--quiet")
    assert screen == ["EXIT=0"]
    screen = terminal.run("verify", big, "-q")
    assert screen == ["50,000 records in 1 namespaces, 0 expired, 0 damaged", "EXIT=0"]


def test_error_on_a_terminal_is_one_line(terminal, tmp_path):
    screen = terminal.run("compact", str(tmp_path / "missing"))
    assert screen == [f"lmdbcache compact: {tmp_path / 'missing'}: no such cache directory",
                      "EXIT=1"]
