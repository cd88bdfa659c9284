"""Build the C extension lmdbcache._core.

Against a system liblmdb (the default).  It is found, in this order, from
LMDB_INCLUDEDIR / LMDB_LIBDIR, pkg-config (Debian's liblmdb-dev ships lmdb.pc),
or an active conda environment ($CONDA_PREFIX/include/lmdb.h, which has no
lmdb.pc).  CC, CFLAGS, CPPFLAGS and LDFLAGS are honoured, by the probe below as
by the build.

With LMDB linked in statically (LMDBCACHE_STATIC=1): LMDB's C sources are
compiled into the extension, which then needs no liblmdb at run time (the
wheel `make wheel` builds).  LMDBCACHE_LMDB_SRC names the sources: a directory
holding mdb.c, midl.c, lmdb.h and midl.h, or an sdist of py-lmdb (lmdb-*.tar.gz,
whose lib/ carries them).  LMDB's license text is put next to the extension as
lmdbcache/LICENSE.lmdb.

LMDBCACHE_STRICT=1 adds -Werror (the test build); LMDBCACHE_SANITIZE=1 builds
with AddressSanitizer and UndefinedBehaviorSanitizer; LMDBCACHE_DEBUG=1 builds
with -O0 -g3 and assertions on.
"""
import sys

if sys.platform == "win32":
    sys.exit(
        "lmdbcache does not support Windows yet: it relies on fcntl file locks and fork "
        "hooks. It runs on Linux (tested) and macOS (expected to work); on Windows, use WSL."
    )

import glob  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402

from setuptools import Extension, setup  # noqa: E402
from setuptools.command.build_ext import build_ext  # noqa: E402

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

STATIC_HINT = """
LMDBCACHE_STATIC=1 compiles LMDB's C sources into the extension, and needs them:
set LMDBCACHE_LMDB_SRC to a directory with mdb.c, midl.c, lmdb.h and midl.h, or to
py-lmdb's sdist (pip download lmdb --no-binary :all: --no-deps). `make wheel` does this.
"""

LMDB_FILES = ("mdb.c", "midl.c", "lmdb.h", "midl.h")


def env_flags(*names):
    return [f for n in names for f in shlex.split(os.environ.get(n, ""))]


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
    """(include_dirs, library_dirs, runtime_library_dirs) of the system LMDB."""
    inc, lib = os.environ.get("LMDB_INCLUDEDIR"), os.environ.get("LMDB_LIBDIR")
    if inc or lib:
        return [inc] if inc else [], [lib] if lib else [], []
    cflags, libs = pkg_config("--cflags"), pkg_config("--libs")
    if cflags is not None and libs is not None:
        return ([f[2:] for f in cflags if f.startswith("-I")],
                [f[2:] for f in libs if f.startswith("-L")], [])
    prefix = os.environ.get("CONDA_PREFIX")
    if prefix and os.path.isfile(os.path.join(prefix, "include", "lmdb.h")):
        # conda's lmdb package has no lmdb.pc.  The rpath lets the extension
        # find liblmdb.so in the environment without LD_LIBRARY_PATH.
        lib = os.path.join(prefix, "lib")
        return [os.path.join(prefix, "include")], [lib], [lib]
    return [], [], []


def lmdb_available(include_dirs, library_dirs):
    """Compile and link a one-line program against liblmdb."""
    cc = shlex.split(os.environ.get("CC", "cc")) or ["cc"]
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write("#include <lmdb.h>\nint main(void){return mdb_version(0,0,0)==0;}\n")
        cmd = [*cc, *env_flags("CPPFLAGS", "CFLAGS"), src, "-o", os.path.join(tmp, "probe")]
        cmd += ["-I" + d for d in include_dirs] + ["-L" + d for d in library_dirs]
        cmd += [*env_flags("LDFLAGS"), "-llmdb"]
        try:
            return subprocess.run(cmd, capture_output=True).returncode == 0
        except OSError:
            return True  # no usable compiler probe; let the real build report


def lmdb_sources(dest):
    """Lay LMDB's sources (and LICENSE) out in dest; return dest."""
    src = os.environ.get("LMDBCACHE_LMDB_SRC", "")
    if not src:
        sys.exit(STATIC_HINT)
    src = os.path.abspath(src)
    os.makedirs(dest, exist_ok=True)
    if os.path.isdir(src):
        for name in LMDB_FILES + ("LICENSE",):
            for cand in (os.path.join(src, name), os.path.join(src, "..", name)):
                if os.path.isfile(cand):
                    shutil.copyfile(cand, os.path.join(dest, name))
                    break
    elif tarfile.is_tarfile(src):
        # py-lmdb's sdist: lmdb-X/lib/<file> (LMDB 0.9.x; lib1/ is 1.0) and lmdb-X/LICENSE.
        with tarfile.open(src) as tf:
            for member in tf.getmembers():
                parts = member.name.split("/")
                if not member.isfile() or len(parts) < 2:
                    continue
                if (len(parts) == 3 and parts[1] == "lib" and parts[2] in LMDB_FILES) or \
                        (len(parts) == 2 and parts[1] == "LICENSE"):
                    with tf.extractfile(member) as f, open(os.path.join(dest, parts[-1]), "wb") as out:
                        out.write(f.read())
    missing = [n for n in LMDB_FILES if not os.path.isfile(os.path.join(dest, n))]
    if missing:
        sys.exit(f"LMDBCACHE_LMDB_SRC={src} lacks {', '.join(missing)}\n{STATIC_HINT}")
    return dest


def notices(path):
    """The copyright notices of the comment blocks at the top of a C file."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read(8192)
    out = []
    for block in re.findall(r"/\*(.*?)\*/", text, re.S):
        if "Copyright" in block:
            lines = [re.sub(r"^\s*\*? ?", "", ln).rstrip() for ln in block.splitlines()]
            out.append("\n".join(lines).strip("\n"))
    return out


def write_lmdb_license(srcdir, path):
    """LICENSE.lmdb: LMDB's copyright notices, then its license (OpenLDAP
    Public License 2.8), as binary redistributions must carry them."""
    with open(os.path.join(srcdir, "lmdb.h"), encoding="utf-8", errors="replace") as f:
        header = f.read()
    version = ".".join(
        (re.findall(rf"#define\s+MDB_VERSION_{part}\s+(\d+)", header) or ["?"])[0]
        for part in ("MAJOR", "MINOR", "PATCH"))
    parts = [f"lmdbcache's extension module lmdbcache/_core contains LMDB {version}\n"
             "(Lightning Memory-Mapped Database, https://www.symas.com/lmdb), linked in\n"
             "statically, under the following notices and license.\n"]
    for name in ("mdb.c", "midl.c"):
        parts += [f"---- {name} ----\n\n" + n + "\n" for n in notices(os.path.join(srcdir, name))]
    lic = os.path.join(srcdir, "LICENSE")
    if os.path.isfile(lic):
        with open(lic, encoding="utf-8") as f:
            parts.append("---- LICENSE ----\n\n" + f.read())
    else:
        sys.exit(f"LMDB's LICENSE is missing from {srcdir}: it must ship with a static build")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))


class BuildExt(build_ext):
    """With LMDBCACHE_STATIC: compile LMDB into the extension (position
    independent, its symbols hidden) and put its license beside it."""

    def build_extensions(self):
        if STATIC:
            # Python's LDSHARED may carry the rpath of its own lib/ (pyenv's
            # does): meaningless where the wheel is installed, and the static
            # build needs no rpath at all.
            self.compiler.linker_so = [a for a in self.compiler.linker_so
                                       if not a.startswith("-Wl,-rpath")]
        super().build_extensions()

    def build_extension(self, ext):
        if STATIC:
            srcdir = lmdb_sources(os.path.join(self.build_temp, "lmdb-src"))
            ext.include_dirs.insert(0, srcdir)
            objects = self.compiler.compile(
                [os.path.join(srcdir, "mdb.c"), os.path.join(srcdir, "midl.c")],
                output_dir=self.build_temp,
                include_dirs=[srcdir],
                # LMDB's own Makefile flags: its warnings are shown (not ours to
                # fix, so not errors), never silenced.
                extra_postargs=["-O2", "-fPIC", "-pthread", "-fvisibility=hidden", "-W", "-Wall",
                                "-Wno-unused-parameter"]
                + STATIC_SAN,
            )
            ext.extra_objects = objects + list(ext.extra_objects or [])
            super().build_extension(ext)
            out = os.path.dirname(self.get_ext_fullpath(ext.name))
            write_lmdb_license(srcdir, os.path.join(out, "LICENSE.lmdb"))
        else:
            super().build_extension(ext)


STATIC = os.environ.get("LMDBCACHE_STATIC", "") not in ("", "0")
building = any(a in sys.argv for a in ("build_ext", "build", "bdist_wheel", "install", "develop", "editable_wheel", "bdist_editable"))

extra_compile_args = ["-std=c11", "-Wall", "-Wextra", "-fvisibility=hidden"]
extra_link_args = []
STATIC_SAN = []
if os.environ.get("LMDBCACHE_STRICT"):
    extra_compile_args.append("-Werror")
if os.environ.get("LMDBCACHE_DEBUG") or os.environ.get("LMDBCACHE_SANITIZE"):
    extra_compile_args += ["-O0", "-g3", "-UNDEBUG"]
if os.environ.get("LMDBCACHE_SANITIZE"):
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
    extra_compile_args += san
    extra_link_args += san
    STATIC_SAN = san

if STATIC:
    include_dirs, library_dirs, runtime_dirs, libraries = [], [], [], []
    extra_link_args += ["-pthread"]
else:
    include_dirs, library_dirs, runtime_dirs = lmdb_paths()
    libraries = ["lmdb"]
    if building and not lmdb_available(include_dirs, library_dirs):
        sys.exit(INSTALL_HINT)

setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=[
        Extension(
            "lmdbcache._core",
            sources=sorted(glob.glob("csrc/*.c")),
            depends=["csrc/lmdbcache.h", "csrc/compat.h"],
            include_dirs=include_dirs,
            library_dirs=library_dirs,
            runtime_library_dirs=runtime_dirs,
            libraries=libraries,
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ],
)
