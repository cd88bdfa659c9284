"""The type stubs of the C module match what it really exports."""
import subprocess
import sys


def test_core_stubs_match_the_extension(tmp_path):
    # Run from an empty directory so the installed package is checked.
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "lmdbcache._core"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
