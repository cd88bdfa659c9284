"""The documentation's runnable examples run, and its links stay in the
repository or go to public sites."""
import os
import re
import subprocess
import sys

import pytest

# Python 3.10 has no -P; its test run starts in tests/, where no source package can shadow.
SAFE_PATH = ["-P"] if sys.version_info >= (3, 11) else []

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
DOCS = os.path.join(ROOT, "docs")


def python_blocks(path):
    with open(path) as f:
        text = f.read()
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_moving_from_diskcache_examples_run(tmp_path):
    pytest.importorskip("diskcache")
    blocks = python_blocks(os.path.join(DOCS, "guides", "from-diskcache.md"))
    assert len(blocks) >= 8
    script = "\n".join(blocks) + "\nprint('OK')\n"
    out = subprocess.run([sys.executable, *SAFE_PATH, "-c", script], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("OK")
    assert out.stderr == ""


def test_links_leave_the_repository_only_for_public_sites():
    pages = [os.path.join(d, f) for d, _, fs in os.walk(DOCS) for f in fs if f.endswith(".md")]
    pages += [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "CHANGELOG.md")]
    for page in pages:
        with open(page) as f:
            text = f.read()
        for url in re.findall(r"\]\((https?://[^)\s]+)\)", text):
            host = re.match(r"https?://([^/:]+)", url).group(1)
            assert "." in host and not host.endswith((".local", ".internal", ".lan")), url
            assert not re.match(r"^(localhost|127\.|10\.|192\.168\.)", host), url
        for target in re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            assert os.path.exists(os.path.join(os.path.dirname(page), target)), (page, target)


def test_architecture_has_no_web_links():
    with open(os.path.join(DOCS, "architecture.md")) as f:
        text = f.read()
    assert not re.findall(r"https?://", text)


def test_mkdocs_build_strict(tmp_path):
    """The site builds with --strict: a page, a nav entry or an API reference
    (mkdocstrings' ::: lmdbcache.X) that points at something missing fails."""
    mkdocs = os.path.join(os.path.dirname(sys.executable), "mkdocs")
    if not os.path.exists(mkdocs):
        pytest.skip("mkdocs is not installed (it is in the test extra)")
    proc = subprocess.run([mkdocs, "build", "--strict", "--quiet", "--config-file",
                           os.path.join(ROOT, "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert os.path.exists(tmp_path / "site" / "reference" / "index.html")
