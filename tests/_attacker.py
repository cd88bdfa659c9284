"""The attacker of the security tests: a forked child that drops to uid
65534 (nobody) and runs a function.  Root only (tests/test_security.py,
tests/test_secret.py)."""
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import pytest

NOBODY = 65534

needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="the attacker is a child dropping to uid 65534: needs root",
)


def as_attacker(fn, *args):
    """Run fn(*args) in a forked child as uid/gid 65534; fail if it fails."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            fn(*args)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the attacker's child failed"


def make_arena(mode):
    """A root-owned directory of the given mode that the attacker can reach
    (pytest's tmp_path is under a 0700 directory of root's); a generator for
    a fixture."""
    d = tempfile.mkdtemp(prefix="lmc-sec-")
    os.chmod(d, mode)
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)
