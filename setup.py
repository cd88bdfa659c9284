"""Build the C extension lmdbcache._core against the system liblmdb.

liblmdb is found with pkg-config (Debian's liblmdb-dev ships lmdb.pc); set
LMDB_INCLUDEDIR / LMDB_LIBDIR to point at another installation.
LMDBCACHE_STRICT=1 adds -Werror (the test build); LMDBCACHE_SANITIZE=1 builds
with AddressSanitizer and UndefinedBehaviorSanitizer; LMDBCACHE_DEBUG=1 builds
with -O0 -g3 and assertions on.
"""
import os
import shutil
import subprocess
import sys
import tempfile

from setuptools import Extension, setup

INSTALL_HINT = """
lmdbcache needs the LMDB C library and its header (lmdb.h), and could not find them.
Install them, then build again:
    Debian/Ubuntu:  sudo apt-get install liblmdb-dev pkg-config
    Fedora/RHEL:    sudo dnf install lmdb-devel pkgconf-pkg-config
    Alpine:         apk add lmdb-dev pkgconf
    macOS:          brew install lmdb pkg-config
    conda:          conda install -c conda-forge lmdb
or point the build at an installation with LMDB_INCLUDEDIR=... LMDB_LIBDIR=...
"""


def pkg_config(*args):
    exe = shutil.which("pkg-config") or shutil.which("pkgconf")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, *args, "lmdb"], check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError:
        return None
    return out.stdout.split()


def lmdb_paths():
    include_dirs, library_dirs = [], []
    inc, lib = os.environ.get("LMDB_INCLUDEDIR"), os.environ.get("LMDB_LIBDIR")
    if inc or lib:
        include_dirs += [inc] if inc else []
        library_dirs += [lib] if lib else []
    else:
        cflags, libs = pkg_config("--cflags"), pkg_config("--libs")
        if cflags is not None and libs is not None:
            include_dirs += [f[2:] for f in cflags if f.startswith("-I")]
            library_dirs += [f[2:] for f in libs if f.startswith("-L")]
    return include_dirs, library_dirs


def lmdb_available(include_dirs, library_dirs):
    """Compile and link a one-line program against liblmdb."""
    cc = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write("#include <lmdb.h>\nint main(void){return mdb_version(0,0,0)==0;}\n")
        cmd = [cc, src, "-o", os.path.join(tmp, "probe")]
        cmd += ["-I" + d for d in include_dirs] + ["-L" + d for d in library_dirs] + ["-llmdb"]
        try:
            return subprocess.run(cmd, capture_output=True).returncode == 0
        except OSError:
            return True  # no usable compiler probe; let the real build report


include_dirs, library_dirs = lmdb_paths()
building = any(a in sys.argv for a in ("build_ext", "build", "bdist_wheel", "install", "develop", "editable_wheel", "bdist_editable"))
if building and not lmdb_available(include_dirs, library_dirs):
    sys.exit(INSTALL_HINT)

extra_compile_args = ["-std=c11", "-Wall", "-Wextra", "-fvisibility=hidden"]
extra_link_args = []
if os.environ.get("LMDBCACHE_STRICT"):
    extra_compile_args.append("-Werror")
if os.environ.get("LMDBCACHE_DEBUG") or os.environ.get("LMDBCACHE_SANITIZE"):
    extra_compile_args += ["-O0", "-g3", "-UNDEBUG"]
if os.environ.get("LMDBCACHE_SANITIZE"):
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
    extra_compile_args += san
    extra_link_args += san

setup(
    ext_modules=[
        Extension(
            "lmdbcache._core",
            sources=["csrc/module.c", "csrc/env.c", "csrc/codec.c", "csrc/evict.c", "csrc/store.c",
                     "csrc/maint.c"],
            depends=["csrc/lmdbcache.h"],
            include_dirs=include_dirs,
            library_dirs=library_dirs,
            libraries=["lmdb"],
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]
)
