"""The ``lmdbcache`` command: look inside a cache, copy, compact and verify it.

    lmdbcache stat PATH [--json]
    lmdbcache ls PATH [--namespace NS] [--limit N]
    lmdbcache get PATH KEY [--namespace NS] [--raw]
    lmdbcache rm PATH KEY... [--namespace NS]
    lmdbcache clear PATH [--namespace NS]
    lmdbcache expire PATH
    lmdbcache copy PATH DEST [--compact]
    lmdbcache compact PATH
    lmdbcache verify PATH

Exit status: 0 ok, 1 a problem (an error, a missing key, a damaged record),
2 a usage error.  Errors are one line on stderr.  Long operations draw a
progress bar when stdout is a terminal, unless ``--quiet``.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import sys
import time
from typing import Any, Callable, Optional

from . import _core
from ._maint import _file_sizes, _namespace_names
from .cache import Cache

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2
DEFAULT = "(default)"


class Failure(Exception):
    """A problem to report on one line, with exit status 1."""


# -- output helpers ------------------------------------------------------------------


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


class ProgressBar:
    """A one-line bar redrawn in place on a terminal; silent otherwise.

    ``bar(done, total)`` may be called from any thread.  The finished bar stays
    on screen (followed by a newline) so the result of the step remains visible.
    """

    def __init__(self, label: str, enabled: bool, stream: Any = None, unit: str = "bytes"):
        self.label, self.enabled, self.unit = label, enabled, unit
        self.stream = stream or sys.stdout
        self.last = 0.0
        self.drawn = False
        self.start = time.monotonic()

    def _text(self, done: int, total: int) -> str:
        width = shutil.get_terminal_size((80, 24)).columns
        frac = 0.0 if total <= 0 else min(done / total, 1.0)
        if self.unit == "bytes":
            counts = f"{human(done)} / {human(total)}"
        else:
            counts = f"{done:,} / {total:,} {self.unit}"
        tail = f" {frac * 100:3.0f}%  {counts}"
        head = f"{self.label} "
        cells = max(10, min(40, width - len(head) - len(tail) - 3))
        full = int(frac * cells)
        return f"{head}[{'#' * full}{'.' * (cells - full)}]{tail}"[: width - 1]

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done < total and now - self.last < 0.05:
            return
        self.last = now
        self.stream.write("\r" + self._text(done, total) + "\x1b[K")
        self.stream.flush()
        self.drawn = True

    def finish(self, done: Optional[int] = None, total: Optional[int] = None) -> None:
        if not self.enabled:
            return
        if done is not None and total is not None:
            self.last = 0.0
            self(done, total)
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


def parse_key(text: str) -> Any:
    """KEY on the command line: a Python literal when it is one (``42``,
    ``'42'``, ``b'x'``, ``('a', 1)``), else the text itself as a str."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
    try:
        hash(value)
    except TypeError:
        return text
    return value


# -- opening --------------------------------------------------------------------------


def open_cache(path: str, write: bool = False, namespace: Optional[str] = None,
               allow_shared: bool = False) -> Cache:
    """Open an existing cache: never create one where a command reads."""
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(full):
        raise Failure(f"{path}: no such cache directory")
    if not os.path.exists(os.path.join(full, "data.mdb")):
        raise Failure(f"{path}: not an lmdbcache cache (no data.mdb)")
    cache = Cache(full, readonly=not write, allow_shared=allow_shared)
    if namespace is None:
        return cache
    names = _namespace_names(cache._survey()["subdbs"])
    if namespace in ("", DEFAULT):
        return cache
    if namespace not in names:
        cache.close()
        raise Failure(f"{path}: no namespace {namespace!r} (see 'lmdbcache stat {path}')")
    ns = cache._open_namespace(namespace)
    cache.close()
    return ns


def show_ns(name: Optional[str]) -> str:
    return DEFAULT if name is None else name


# -- commands ---------------------------------------------------------------------------


def cmd_stat(args: argparse.Namespace) -> int:
    cache = open_cache(args.path, allow_shared=args.allow_shared)
    try:
        survey = cache._survey()
        names = _namespace_names(survey["subdbs"])
        per_ns, data_bytes = {}, 0
        for name in names:
            store = cache._open_namespace(name)
            try:
                per_ns[name] = len(store)
                data_bytes += store._env_info()["namespace_bytes"]
            finally:
                if store is not cache:
                    store.close()
        data_file = os.path.join(cache.path, "data.mdb")
        apparent, on_disk = _file_sizes(data_file)
        marker = os.path.join(cache.path, "unsynced")
        try:
            with open(marker) as f:
                unsynced = f.read().strip() or None
        except OSError:
            unsynced = None
        subdbs = set(survey["subdbs"])
        if "__atime__" in subdbs:
            policy = "least-recently-used"
        elif "__order__" in subdbs:
            policy = "least-recently-stored"
        else:
            policy = None
        from . import __version__

        info = {
            "path": cache.path,
            "entries": sum(per_ns.values()),
            "namespaces": {show_ns(n): c for n, c in per_ns.items()},
            "used_bytes": survey["used_bytes"],
            "data_bytes": data_bytes,
            "file_bytes": on_disk,
            "apparent_bytes": apparent,
            "map_size": survey["map_size"],
            "page_size": survey["page_size"],
            "size_limit": None,
            "eviction_index": policy,
            "readers": survey["readers"],
            "max_readers": survey["max_readers"],
            "other_pids": survey["other_pids"],
            "format_version": survey["format"],
            "lmdb_version": ".".join(map(str, _core.lmdb_version())),
            "created_by_lmdb": survey["created_lmdb"] or None,
            "lmdbcache_version": __version__,
            "unsynced_boot_id": unsynced,
        }
    finally:
        cache.close()
    if args.json:
        print(json.dumps(info, indent=None if args.compact_json else 2))
        return EXIT_OK
    ns_text = ", ".join(f"{k}: {v:,}" for k, v in info["namespaces"].items())
    rows = [
        ("path", info["path"]),
        ("entries", f"{info['entries']:,}  ({ns_text})"),
        ("data", f"{human(data_bytes)} in pages of keys and values"),
        ("used", f"{human(info['used_bytes'])} (highest page in use; free pages included)"),
        ("file", f"{human(on_disk)} on disk, {human(apparent)} apparent (ls -l"
                 f"{'; sparse' if on_disk < apparent else ''})"),
        ("map size", human(info["map_size"])),
        ("size_limit", "set by each process when it opens the cache (not stored)"),
        ("eviction", f"{policy} index present" if policy else "no eviction index"),
        ("readers", f"{info['readers']} of {info['max_readers']} slots in use; other "
                    f"processes: {', '.join(map(str, info['other_pids'])) or 'none'}"),
        ("format", f"{info['format_version']} (lmdbcache {__version__}, "
                   f"LMDB {info['lmdb_version']}"
                   + (f"; created by LMDB {info['created_by_lmdb']}" if info["created_by_lmdb"]
                      else "") + ")"),
        ("last writer", f"boot {unsynced} holds unsynced writes" if unsynced
                        else "all writes synced (no unsynced marker)"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return EXIT_OK


def cmd_ls(args: argparse.Namespace) -> int:
    cache = open_cache(args.path, allow_shared=args.allow_shared, namespace=args.namespace)
    try:
        out = sys.stdout
        for i, key in enumerate(cache.keys()):
            if args.limit is not None and i >= args.limit:
                break
            out.write(repr(key) + "\n")
    finally:
        cache.close()
    return EXIT_OK


def cmd_get(args: argparse.Namespace) -> int:
    cache = open_cache(args.path, allow_shared=args.allow_shared, namespace=args.namespace)
    key = parse_key(args.key)
    missing = object()
    try:
        value = cache.get(key, missing)
    finally:
        cache.close()
    if value is missing:
        raise Failure(f"key not found: {key!r}")
    if args.raw and isinstance(value, bytes):
        sys.stdout.flush()
        sys.stdout.buffer.write(value)
    elif args.raw and isinstance(value, str):
        sys.stdout.write(value)
    else:
        print(repr(value))
    return EXIT_OK


def cmd_rm(args: argparse.Namespace) -> int:
    cache = open_cache(args.path, allow_shared=args.allow_shared, write=True,
                       namespace=args.namespace)
    missing = []
    removed = 0
    try:
        for text in args.keys:
            key = parse_key(text)
            if cache.delete(key):
                removed += 1
            else:
                missing.append(key)
    finally:
        cache.close()
    if not args.quiet:
        print(f"removed {removed} of {len(args.keys)}")
    if missing:
        raise Failure("not found: " + ", ".join(map(repr, missing)))
    return EXIT_OK


def _each_namespace(cache: Cache, fn: Callable[[Cache], Any], label: str, quiet: bool) -> list:
    names = _namespace_names(cache._survey()["subdbs"])
    return _each_store(cache, [cache._open_namespace(n) for n in names], fn, label, quiet)


def _each_store(cache: Cache, stores: list, fn: Callable[[Cache], Any], label: str,
                quiet: bool) -> list:
    """fn(store) for each store, with a progress bar counting their entries;
    closes the stores other than *cache*."""
    try:
        sizes = [len(s) for s in stores]
        total = sum(sizes)
        bar = ProgressBar(label, not quiet and total > 0, unit="entries")
        done = 0
        results = []
        bar(0, total)
        for store, size in zip(stores, sizes):
            results.append(fn(store))
            done += size
            bar(done, total)
        bar.finish()
        return results
    finally:
        for s in stores:
            if s is not cache:
                s.close()


def _count_and_clear(store: Cache) -> int:
    n = len(store)
    store.clear()
    return n


def cmd_clear(args: argparse.Namespace) -> int:
    cache = open_cache(args.path, allow_shared=args.allow_shared, write=True,
                       namespace=args.namespace)
    quiet = quiet_of(args)
    try:
        if args.namespace is not None:
            n = sum(_each_store(cache, [cache], _count_and_clear, "clear", quiet))
        else:
            n = sum(_each_namespace(cache, _count_and_clear, "clear", quiet))
    finally:
        cache.close()
    if not args.quiet:
        print(f"removed {n:,} entries")
    return EXIT_OK


def cmd_expire(args: argparse.Namespace) -> int:
    cache = open_cache(args.path, allow_shared=args.allow_shared, write=True)
    try:
        n = sum(_each_namespace(cache, lambda s: s.expire(), "expire", quiet_of(args)))
    finally:
        cache.close()
    print(f"removed {n:,} expired entries")
    return EXIT_OK


def cmd_copy(args: argparse.Namespace) -> int:
    cache = open_cache(args.path, allow_shared=args.allow_shared)
    bar = ProgressBar("copy", not quiet_of(args))
    try:
        cache.copy(args.dest, compact=args.compact, progress=bar)
    finally:
        bar.finish()
        cache.close()
    size = _file_sizes(os.path.join(os.path.abspath(args.dest), "data.mdb"))[0]
    if not args.quiet:
        print(f"copied {args.path} to {args.dest} ({human(size)}"
              f"{', compacted' if args.compact else ''})")
    return EXIT_OK


def cmd_compact(args: argparse.Namespace) -> int:
    cache = open_cache(args.path, allow_shared=args.allow_shared, write=True)
    bar = ProgressBar("compact", not quiet_of(args))
    try:
        result = cache.compact(progress=bar)
    finally:
        bar.finish()
        cache.close()
    if not args.quiet:
        print(f"compacted {args.path}: {human(result.before_disk)} -> "
              f"{human(result.after_disk)} on disk, {human(result.before_bytes)} -> "
              f"{human(result.after_bytes)} apparent")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    cache = open_cache(args.path, allow_shared=args.allow_shared)
    bar = ProgressBar("verify", not quiet_of(args), unit="records")
    try:
        report = cache.verify(progress=bar)
    finally:
        bar.finish()
        cache.close()
    for problem in report.problems[:1000]:
        print(f"damaged: {problem}")
    if len(report.problems) > 1000:
        print(f"... and {len(report.problems) - 1000} more")
    print(f"{report.records:,} records in {len(report.namespaces)} namespaces, "
          f"{report.expired:,} expired, {report.damaged:,} damaged")
    return EXIT_OK if report.ok else EXIT_PROBLEM


def quiet_of(args: argparse.Namespace) -> bool:
    return args.quiet or not sys.stdout.isatty()


# -- parser ----------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, status 2
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lmdbcache", description="Look inside, copy, compact and verify an "
                "lmdbcache cache directory.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"lmdbcache {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name: str, fn: Callable, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("path", metavar="PATH", help="the cache directory")
        sp.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bar; rm, clear, copy and compact also print "
                             "nothing on success (the other commands still print their "
                             "result)")
        sp.add_argument("--allow-shared", action="store_true",
                        help="open a directory other users can write (they can run code "
                             "in this process: see the Security page)")
        sp.set_defaults(func=fn)
        return sp

    sp = add("stat", cmd_stat, "entries, sizes, readers and format of a cache")
    sp.add_argument("--json", action="store_true", help="one JSON object")
    sp.add_argument("--compact-json", action="store_true", help=argparse.SUPPRESS)
    nshelp = "a namespace ('' for the default one)"
    sp = add("ls", cmd_ls, "list the keys of a namespace (the default one unless --namespace)")
    sp.add_argument("--namespace", "-n", metavar="NS", help=nshelp)
    sp.add_argument("--limit", type=_nonneg, metavar="N", help="at most N keys")
    sp = add("get", cmd_get, "print the value under KEY (a Python literal, or a str)")
    sp.add_argument("key", metavar="KEY")
    sp.add_argument("--namespace", "-n", metavar="NS", help=nshelp)
    sp.add_argument("--raw", action="store_true", help="str and bytes values as they are")
    sp = add("rm", cmd_rm, "remove keys")
    sp.add_argument("keys", metavar="KEY", nargs="+")
    sp.add_argument("--namespace", "-n", metavar="NS", help=nshelp)
    sp = add("clear", cmd_clear, "remove every entry (of every namespace unless --namespace)")
    sp.add_argument("--namespace", "-n", metavar="NS", help=nshelp)
    add("expire", cmd_expire, "remove expired entries and print how many")
    sp = add("copy", cmd_copy, "write a consistent snapshot into DEST while the cache is in use")
    sp.add_argument("dest", metavar="DEST", help="a new or empty directory")
    sp.add_argument("--compact", action="store_true", help="leave free pages out")
    add("compact", cmd_compact, "shrink the file to its data (refused while other "
        "processes have it open)")
    add("verify", cmd_verify, "decode every record; exit status 1 if any is damaged")
    return p


def _nonneg(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {n}")
    return n


def main(argv: Optional[list] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Failure as e:
        msg = str(e)
    except KeyboardInterrupt:
        sys.stderr.write("\nlmdbcache: interrupted\n")
        return 130
    except BrokenPipeError:
        # `lmdbcache ls PATH | head`: the reader went away
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK
    except (_core.Error, OSError, ValueError, TypeError) as e:
        msg = _one_line(e)
    except Exception as e:  # never a traceback: still one line
        msg = f"unexpected {type(e).__name__}: {_one_line(e)}"
    sys.stderr.write(f"lmdbcache {args.command}: {msg}\n")
    return EXIT_PROBLEM


def _one_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, OSError) and e.filename and e.filename not in text:
        text = f"{text}: {e.filename}"
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
