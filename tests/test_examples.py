"""The runnable examples of docs/guides/multiprocessing.md run and say OK."""
import os
import subprocess
import sys

import pytest

import lmdbcache

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                        "docs", "guides", "_lmdb_examples")
# -P (3.11+): the child does not import lmdbcache from its working directory;
# on 3.10 the suite runs from a directory without the source package instead.
SAFE_PATH = ["-P"] if sys.version_info >= (3, 11) else []
TIMEOUT = 120


def run_example(name, *args):
    script = os.path.join(EXAMPLES, name)
    try:
        out = subprocess.run([sys.executable, *SAFE_PATH, script, *args], capture_output=True,
                             text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name} hung for {TIMEOUT} s")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stderr == "", out.stderr
    lines = out.stdout.splitlines()
    assert lines and lines[-1].startswith("OK: "), out.stdout
    return lines


def test_correct_usage(tmp_path):
    path = str(tmp_path / "cache")
    lines = run_example("correct_usage.py", path)
    assert f"cache directory: {path}" in lines
    assert "the parent reads them back: square(7) = 49, square(19) = 361" in lines
    with lmdbcache.Cache(path) as cache:
        assert {cache[("square", x)] for x in range(20)} == {x * x for x in range(20)}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_inherited_close(tmp_path):
    path = str(tmp_path / "cache")
    lines = run_example("inherited_close.py", path)
    assert sum("children closed their inherited Cache" in line for line in lines) == 3
    assert "base = 103" in lines[-2]
    with lmdbcache.Cache(path) as cache:
        assert cache["base"] == 103
        assert [cache[("child", x)] for x in range(30)] == [100 + x // 10 + x for x in range(30)]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_inherited_gc(tmp_path):
    path = str(tmp_path / "cache")
    lines = run_example("inherited_gc.py", path)
    assert sum("garbage-collected the inherited Cache" in line for line in lines) == 3
    assert "parent counter = 3" in lines[-2]
    with lmdbcache.Cache(path) as cache:
        assert cache["counter"] == 3


@pytest.mark.parametrize("name", ["correct_usage.py", "inherited_close.py", "inherited_gc.py"])
def test_example_defaults_to_a_temporary_directory(name):
    lines = run_example(name)
    assert lines[-1].startswith("OK: ")
