#!/usr/bin/env bash
# make test-all: run the whole test suite on every CPython 3.10-3.13 this
# machine has (pyenv's versions directory, then python3.X on PATH), each in its
# own venv (.venv-3.X), built from this tree with the test extra.  Versions not
# found are reported and skipped (unless PY_REQUIRE=1); the run fails when a
# found version fails, when none is found at all, or -- with PY_REQUIRE=1 --
# when any requested version is not found.
#
# Environment:
#   PY_VERSIONS  the versions to run (default "3.10 3.11 3.12 3.13")
#   PY_REQUIRE=1 every version in PY_VERSIONS is required: one not found is a
#                failure (reported as "not found (required)"), not a skip:
#                for CI, where a missing interpreter must not pass silently.
#   PIP_FLAGS    flags for pip install (default "-q --disable-pip-version-check")
set -uo pipefail
cd "$(dirname "$0")/.."

VERSIONS=${PY_VERSIONS:-"3.10 3.11 3.12 3.13"}
PIP_FLAGS=${PIP_FLAGS:-"-q --disable-pip-version-check"}
PY_REQUIRE=${PY_REQUIRE:-0}
case $PY_REQUIRE in
    0|1) ;;
    *) echo "test-all: PY_REQUIRE must be 0 or 1, not '$PY_REQUIRE'" >&2; exit 2 ;;
esac

pyenv_root=""
if command -v pyenv >/dev/null 2>&1; then
    pyenv_root=$(pyenv root 2>/dev/null || true)
fi
pyenv_root=${pyenv_root:-${PYENV_ROOT:-$HOME/.pyenv}}

# Print a working interpreter of version $1 (e.g. 3.10) that has venv.
find_python() {
    local v=$1 c
    local cands=()
    if [ -d "$pyenv_root/versions" ]; then
        while IFS= read -r d; do
            cands+=("$d/bin/python$v")
        done < <(ls -d "$pyenv_root/versions/$v".* 2>/dev/null | sort -V -r)
    fi
    c=$(command -v "python$v" 2>/dev/null || true)
    [ -n "$c" ] && cands+=("$c")
    for c in "${cands[@]}"; do
        [ -x "$c" ] || continue
        # A pyenv shim of a version not selected fails here (exit 127).
        if "$c" -c "import sys, venv, ensurepip; sys.exit(sys.version_info[:2] != tuple(map(int, '$v'.split('.'))))" >/dev/null 2>&1; then
            echo "$c"
            return 0
        fi
    done
    return 1
}

passed=() failed=() skipped=() missing=()
for v in $VERSIONS; do
    if ! py=$(find_python "$v"); then
        if [ "$PY_REQUIRE" = 1 ]; then
            echo "=== Python $v: not found (required: PY_REQUIRE=1)"
            missing+=("$v")
        else
            echo "=== Python $v: not found, skipped"
            skipped+=("$v")
        fi
        continue
    fi
    echo "=== Python $v: $py"
    venv=".venv-$v"
    ok=1
    if [ ! -x "$venv/bin/python" ]; then
        "$py" -m venv "$venv" && "$venv/bin/pip" install $PIP_FLAGS --upgrade pip setuptools wheel || ok=0
    fi
    if [ $ok = 1 ]; then
        rm -rf build
        LMDBCACHE_STRICT=1 "$venv/bin/pip" install $PIP_FLAGS --no-build-isolation ".[test]" || ok=0
    fi
    if [ $ok = 1 ]; then
        # From tests/: Python 3.10 has no -P, and the source package (without
        # its extension) must not shadow the installed one.
        (cd tests && "../$venv/bin/python" -m pytest -q -p no:cacheprovider --import-mode=importlib .) || ok=0
    fi
    if [ $ok = 1 ]; then passed+=("$v"); else failed+=("$v"); echo "=== Python $v: FAILED"; fi
done

if [ "$PY_REQUIRE" = 1 ]; then
    echo "=== test-all: passed: ${passed[*]:-none}; failed: ${failed[*]:-none}; not found (required): ${missing[*]:-none}"
else
    echo "=== test-all: passed: ${passed[*]:-none}; failed: ${failed[*]:-none}; not found (skipped): ${skipped[*]:-none}"
fi
if [ ${#failed[@]} -gt 0 ] || [ ${#missing[@]} -gt 0 ]; then
    exit 1
fi
if [ ${#passed[@]} -eq 0 ]; then
    echo "=== test-all: no Python 3.10-3.13 found"
    exit 1
fi
exit 0
