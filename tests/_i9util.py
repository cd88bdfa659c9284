"""Shared helpers of the issue-9 tests (test_growth, test_fulldisk, test_guard,
test_damage): child processes with checked exit status, self-checking values,
a small tmpfs, and the figures table.

Imported by the tests (by path, see the ``sys.path`` line in each test) and by
the child script ``_i9child.py``.  Nothing here imports lmdbcache, so the
parent stays free to fork.
"""
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

# Python 3.10 has no -P; its test run starts in tests/, where no source package can shadow.
SAFE_PATH = ["-P"] if sys.version_info >= (3, 11) else []

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "_i9child.py")
MiB = 1 << 20


# ---- child processes --------------------------------------------------------------


class Result:
    """A finished child: returncode (negative = killed by that signal), its
    stdout parsed as JSON when possible, and stderr for the failure message."""

    def __init__(self, argv, returncode, out, err, timed_out=False):
        self.argv = argv
        self.returncode = returncode
        self.out = out
        self.err = err
        self.timed_out = timed_out
        self.data = None
        for line in reversed(out.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    self.data = json.loads(line)
                except ValueError:
                    pass
                break

    @property
    def signal(self):
        return -self.returncode if self.returncode is not None and self.returncode < 0 else 0

    def describe(self):
        sig = ""
        if self.signal:
            try:
                sig = f" ({signal.Signals(self.signal).name})"
            except ValueError:
                pass
        tail = self.err[-3000:]
        return (f"child {' '.join(map(str, self.argv[-6:]))!r} exited {self.returncode}{sig}"
                f"{' after a timeout' if self.timed_out else ''}\nstdout: {self.out[-1500:]}"
                f"\nstderr: {tail}")


def child_argv(mode, *args, strace=None):
    argv = [sys.executable, *SAFE_PATH, "-B", CHILD, mode, *map(str, args)]
    if strace:
        argv = list(strace) + argv
    return argv


def child_env(extra=None):
    env = dict(os.environ)
    env["PYTHONHASHSEED"] = "0"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("LMDBCACHE_BOOT_ID", None)
    if extra:
        env.update(extra)
    return env


def start_child(mode, *args, env=None, strace=None, cwd=None):
    argv = child_argv(mode, *args, strace=strace)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=child_env(env), cwd=cwd or tempfile.gettempdir(),
                            text=True, errors="replace")
    proc.i9_argv = argv
    return proc


def finish_child(proc, timeout):
    try:
        out, err = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        timed_out = True
    return Result(proc.i9_argv, proc.returncode, out, err, timed_out)


def run_child(mode, *args, timeout=60, env=None, strace=None, cwd=None):
    return finish_child(start_child(mode, *args, env=env, strace=strace, cwd=cwd), timeout)


def check_ok(res):
    """The child exited 0, with no signal and no timeout, and printed its JSON."""
    assert not res.timed_out and res.returncode == 0 and res.data is not None, res.describe()
    return res.data


# ---- self-checking values ----------------------------------------------------------


def make_value(tag, size, version=0):
    """bytes of exactly `size` (>= 64) whose content proves which key and
    version it was written for: a header, then a keystream of the header."""
    head = f"{tag}|{size}|{version}|".encode()
    size = max(size, len(head) + 32)
    digest = hashlib.sha256(head).digest()
    body = digest * ((size - len(head)) // 32 + 1)
    return head + body[: size - len(head)]


def check_value(tag, value):
    """None if `value` is a well-formed make_value(tag, ...), else why not."""
    if not isinstance(value, bytes):
        return f"not bytes: {type(value).__name__}"
    parts = value.split(b"|", 3)
    if len(parts) != 4:
        return "no header"
    try:
        got_tag, size, version = parts[0].decode(), int(parts[1]), int(parts[2])
    except ValueError:
        return "bad header"
    if got_tag != tag:
        return f"value of {got_tag!r} under {tag!r}"
    if make_value(tag, size, version) != value:
        return f"damaged value ({len(value)} bytes, header says {size})"
    return None


# ---- a small tmpfs -------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(where, size="16m"):
    """Mount a tmpfs of `size` on the directory `where`; unmounted in finally.
    Raises OSError (with the reason) when mounting is impossible."""
    os.makedirs(where, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", where],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise OSError(f"mount -t tmpfs failed (uid {os.getuid()}): {res.stderr.strip()}")
    try:
        yield where
    finally:
        for attempt in range(50):
            r = subprocess.run(["umount", where], capture_output=True, text=True)
            if r.returncode == 0:
                break
            time.sleep(0.1)  # a child may still be exiting
        else:
            subprocess.run(["umount", "-l", where], capture_output=True)


def fill_disk(directory, leave=0, name="filler"):
    """Fill the filesystem of `directory` with one file until ENOSPC, then give
    back `leave` bytes.  Returns the filler's path."""
    path = os.path.join(directory, name)
    chunk = b"\xa5" * (1 << 16)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            try:
                n = os.write(fd, chunk)
            except OSError as exc:
                if exc.errno == 28:
                    break
                raise
            if n < len(chunk):
                try:
                    while os.write(fd, chunk[:4096]):
                        pass
                except OSError:
                    pass
                break
        size = os.fstat(fd).st_size
        if leave:
            os.ftruncate(fd, max(0, size - leave))
    finally:
        os.close(fd)
    return path


def free_bytes(directory):
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


# ---- the figures table ------------------------------------------------------------------

FIGURES_FILE = os.environ.get("LMDBCACHE_FIGURES", os.path.join(tempfile.gettempdir(),
                                                               "lmdbcache-issue9-figures.jsonl"))


def record_figures(scenario, **counts):
    """Print one row of the figures table and append it to FIGURES_FILE."""
    row = {"scenario": scenario, **counts}
    line = "FIGURES " + "  ".join(f"{k}={v}" for k, v in row.items())
    print("\n" + line, flush=True)
    try:
        with open(FIGURES_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")
    except OSError:
        pass
    return line
