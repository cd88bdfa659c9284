"""A text lint over csrc/*.c: paired calls are balanced inside every function.

The parser is deliberately simple: comments, string and character literals
and preprocessor lines are blanked out, then brace counting finds each
function body (a top-level ``{`` whose header ends in a parameter list).
Within each body:

* ``Py_BEGIN_ALLOW_THREADS`` / ``Py_END_ALLOW_THREADS`` occur equally often,
  and no ``return`` (nor ``goto``) appears between a BEGIN and its END (the
  macros open and close a C block, so they nest lexically like braces);
* ``Py_BLOCK_THREADS`` / ``Py_UNBLOCK_THREADS`` occur equally often;
* ``pthread_mutex_lock`` / ``pthread_mutex_unlock`` occur equally often,
  unless the function is in LOCK_ALLOWLIST with the reason why;
* every cursor ``mdb_cursor_open(..., &name)`` has an ``mdb_cursor_close(name)``
  in the same function (one close per open at least), unless the function is
  in CURSOR_ALLOWLIST (the cursor is handed over by contract);
* every ``lmc_read_begin`` has an ``lmc_read_end`` in the same function.

And ``csrc/txnops.c`` (the GIL-free file of the split layout), when it
exists, calls no Python C API at all; and no ``csrc/*.c`` or ``*.h`` file is
longer than MAX_LINES lines.
"""
import glob
import os
import re

import pytest

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")

# function name -> why its lock and unlock counts may differ
LOCK_ALLOWLIST = {
    "lmc_env_txn_end": "releases the write_lock that lmc_env_txn_begin took: an explicit "
                       "transaction (Cache.transaction()) holds it across Python calls",
}

# function name -> why a cursor it opens may be closed elsewhere
CURSOR_ALLOWLIST = {}

# ---- the parser -------------------------------------------------------------------


def strip_c(text):
    """Blank comments, string/char literals and preprocessor lines, keeping
    every newline (so offsets map to the same line numbers)."""
    out = []
    i, n = 0, len(text)
    at_line_start = True
    while i < n:
        ch = text[i]
        if at_line_start and ch == "#":
            # a preprocessor line, with its backslash continuations
            while i < n and text[i] != "\n":
                if text[i] == "\\" and i + 1 < n and text[i + 1] == "\n":
                    out.append(" \n")
                    i += 2
                    continue
                out.append(" ")
                i += 1
            continue
        if ch == "\n":
            out.append(ch)
            i += 1
            at_line_start = True
            continue
        if ch in " \t":
            out.append(ch)
            i += 1
            continue
        at_line_start = False
        if text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append("".join(c if c == "\n" else " " for c in text[i:end]))
            i = end
        elif text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            out.append(" " * (end - i))
            i = end
        elif ch in "\"'":
            j = i + 1
            while j < n and text[j] != ch:
                j += 2 if text[j] == "\\" else 1
            out.append(ch + " " * (min(j, n) - i - 1) + (ch if j < n else ""))
            i = j + 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


HEADER = re.compile(r"(\w+)\s*\([^;{}]*\)\s*$")


def functions(text):
    """Yield (name, body, first line) of each function defined in C source."""
    clean = strip_c(text)
    depth, start, i = 0, 0, 0
    last_stmt_end = 0
    while i < len(clean):
        ch = clean[i]
        if ch == "{":
            if depth == 0:
                header = clean[last_stmt_end:i]
                m = HEADER.search(header)
                is_func = m is not None and "=" not in header and m.group(1) not in (
                    "if", "while", "for", "switch", "sizeof")
                start = i
                name = m.group(1) if is_func else None
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                if name is not None:
                    yield name, clean[start:i + 1], clean.count("\n", 0, start) + 1
                last_stmt_end = i + 1
            if depth < 0:
                raise ValueError("unbalanced braces at offset %d" % i)
        elif ch == ";" and depth == 0:
            last_stmt_end = i + 1
        i += 1
    if depth != 0:
        raise ValueError("unbalanced braces at end of file")


def _count(body, word):
    return len(re.findall(r"\b%s\b" % word, body))


def _calls(body, fn):
    """Argument strings of each call fn(...) in body (no nested parens needed
    beyond one level)."""
    return re.findall(r"\b%s\s*\(((?:[^()]|\([^()]*\))*)\)" % fn, body)


def lint_function(name, body):
    """Problems found in one function body (a list of strings)."""
    problems = []
    for a, b in [("Py_BEGIN_ALLOW_THREADS", "Py_END_ALLOW_THREADS"),
                 ("Py_BLOCK_THREADS", "Py_UNBLOCK_THREADS")]:
        na, nb = _count(body, a), _count(body, b)
        if na != nb:
            problems.append("%s: %d %s but %d %s" % (name, na, a, nb, b))
    # no return/goto inside a BEGIN/END region
    for m in re.finditer(r"\bPy_BEGIN_ALLOW_THREADS\b", body):
        end = re.compile(r"\bPy_END_ALLOW_THREADS\b").search(body, m.end())
        region = body[m.end():end.start() if end else len(body)]
        for bad in ("return", "goto", "break", "continue"):
            if re.search(r"\b%s\b" % bad, region):
                if bad in ("break", "continue") and re.search(r"\b(for|while|do|switch)\b",
                                                              region):
                    continue  # a loop or switch of its own inside the region
                problems.append("%s: `%s` between Py_BEGIN_ALLOW_THREADS and "
                                "Py_END_ALLOW_THREADS" % (name, bad))
    nl, nu = _count(body, "pthread_mutex_lock"), _count(body, "pthread_mutex_unlock")
    if nl != nu and name not in LOCK_ALLOWLIST:
        problems.append("%s: %d pthread_mutex_lock but %d pthread_mutex_unlock"
                        % (name, nl, nu))
    if name not in CURSOR_ALLOWLIST:
        opened = [re.sub(r"\s+", "", args.rsplit(",", 1)[-1]).lstrip("&")
                  for args in _calls(body, "mdb_cursor_open")]
        closed = [re.sub(r"\s+", "", args) for args in _calls(body, "mdb_cursor_close")]
        for cur in set(opened):
            if closed.count(cur) < opened.count(cur):
                problems.append("%s: mdb_cursor_open(..., &%s) %d time(s) but "
                                "mdb_cursor_close(%s) %d time(s)"
                                % (name, cur, opened.count(cur), cur, closed.count(cur)))
        if len(closed) < len(opened):
            problems.append("%s: %d mdb_cursor_open but %d mdb_cursor_close"
                            % (name, len(opened), len(closed)))
    nb, ne = _count(body, "lmc_read_begin"), _count(body, "lmc_read_end")
    if nb and ne < nb:
        problems.append("%s: %d lmc_read_begin but %d lmc_read_end" % (name, nb, ne))
    return problems


def lint_source(text, filename="<string>"):
    problems = []
    for name, body, line in functions(text):
        problems.extend("%s:%d: %s" % (filename, line, p) for p in lint_function(name, body))
    return problems


PY_CALL = re.compile(r"\bPy[A-Z_]\w*\s*\(")


def py_calls(text):
    return sorted(set(m.group(0).rstrip("( \t\n") for m in PY_CALL.finditer(strip_c(text))))


# ---- the lint on csrc -------------------------------------------------------------

C_FILES = sorted(glob.glob(os.path.join(CSRC, "*.c")))


def test_there_are_c_files():
    assert C_FILES, CSRC


@pytest.mark.parametrize("path", C_FILES, ids=os.path.basename)
def test_paired_calls_balanced(path):
    with open(path) as f:
        text = f.read()
    found = list(functions(text))
    assert found, "no function found in %s: the parser is broken" % path
    problems = lint_source(text, os.path.basename(path))
    assert not problems, "\n".join(problems)


def test_allowlists_name_existing_functions():
    names = set()
    for path in C_FILES:
        with open(path) as f:
            names.update(name for name, _, _ in functions(f.read()))
    stale = sorted((set(LOCK_ALLOWLIST) | set(CURSOR_ALLOWLIST)) - names)
    assert not stale, "allowlisted functions that no longer exist: %s" % stale


MAX_LINES = 800
SOURCE_FILES = sorted(glob.glob(os.path.join(CSRC, "*.c")) + glob.glob(os.path.join(CSRC, "*.h")))


@pytest.mark.parametrize("path", SOURCE_FILES, ids=os.path.basename)
def test_file_length(path):
    """No C file over MAX_LINES lines: a file that grows past it is split by
    topic (as codec.c/keys.c, env.c/envopen.c, store.c/storewrite.c were)."""
    with open(path) as f:
        n = sum(1 for _ in f)
    assert n <= MAX_LINES, "%s has %d lines (at most %d)" % (os.path.basename(path), n, MAX_LINES)


def test_txnops_calls_no_python_api():
    path = os.path.join(CSRC, "txnops.c")
    if not os.path.exists(path):
        pytest.skip("csrc/txnops.c does not exist (yet): nothing to check")
    with open(path) as f:
        calls = py_calls(f.read())
    assert not calls, "csrc/txnops.c runs without the GIL but calls: %s" % ", ".join(calls)


# ---- the lint itself: it must catch injected imbalances ---------------------------

GOOD = r'''
/* Py_BEGIN_ALLOW_THREADS in a comment does not count; neither does "return" */
static PyMethodDef methods[] = {
    {"get", (PyCFunction)get, METH_O, "get(key) { Py_BEGIN_ALLOW_THREADS"},
    {NULL, NULL, 0, NULL},
};
struct thing { int a; };
#define LOCKED(e) do { pthread_mutex_lock(&(e)->m); } while (0)

static int good(lmc_env *e, MDB_txn *txn)
{
    MDB_cursor *cur;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&e->write_lock);
    rc = mdb_cursor_open(txn, e->main_dbi, &cur);
    if (rc == 0) {
        for (;;) { if (mdb_cursor_get(cur, NULL, NULL, MDB_NEXT)) break; }
        mdb_cursor_close(cur);
    }
    pthread_mutex_unlock(&e->write_lock);
    Py_END_ALLOW_THREADS
    if (rc != 0)
        return rc;
    return 0;
}

static PyObject *reader(StoreObject *self)
{
    MDB_txn *txn;
    if (lmc_read_begin(self->env, &txn) != 0)
        return NULL;
    lmc_read_end(self->env, txn);
    Py_RETURN_NONE;
}
'''

BAD = {
    "begin-without-end": (r'''
static int f(void)
{
    Py_BEGIN_ALLOW_THREADS
    work();
    return 0;
}
''', "Py_END_ALLOW_THREADS"),
    "return-inside-allow-threads": (r'''
static int f(int x)
{
    Py_BEGIN_ALLOW_THREADS
    if (x)
        return -1;
    Py_END_ALLOW_THREADS
    return 0;
}
''', "`return` between"),
    "goto-inside-allow-threads": (r'''
static int f(int x)
{
    Py_BEGIN_ALLOW_THREADS
    if (x)
        goto error;
    Py_END_ALLOW_THREADS
    return 0;
error:
    return -1;
}
''', "`goto` between"),
    "block-without-unblock": (r'''
static int f(int x)
{
    Py_BEGIN_ALLOW_THREADS
    if (x) { Py_BLOCK_THREADS PyErr_NoMemory(); }
    Py_END_ALLOW_THREADS
    return 0;
}
''', "Py_UNBLOCK_THREADS"),
    "lock-without-unlock": (r'''
static int f(lmc_env *e)
{
    pthread_mutex_lock(&e->write_lock);
    if (e->wtxn != NULL)
        return 1;
    pthread_mutex_unlock(&e->write_lock);
    pthread_mutex_lock(&e->lru_lock);
    return 0;
}
''', "pthread_mutex_unlock"),
    "cursor-not-closed": (r'''
static int f(MDB_txn *txn, MDB_dbi dbi)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, dbi, &cur);
    if (rc != 0)
        return rc;
    return mdb_cursor_get(cur, NULL, NULL, MDB_FIRST);
}
''', "mdb_cursor_close"),
    "other-cursor-closed": (r'''
static int f(MDB_txn *txn, MDB_dbi dbi, MDB_cursor *other)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, dbi, &cur);
    mdb_cursor_close(other);
    return rc;
}
''', "mdb_cursor_close(cur)"),
    "read-not-ended": (r'''
static PyObject *f(StoreObject *self)
{
    MDB_txn *txn;
    if (lmc_read_begin(self->env, &txn) != 0)
        return NULL;
    Py_RETURN_NONE;
}
''', "lmc_read_end"),
}


def test_lint_accepts_balanced_code():
    names = [name for name, _, _ in functions(GOOD)]
    assert names == ["good", "reader"]
    assert lint_source(GOOD) == []


@pytest.mark.parametrize("case", sorted(BAD))
def test_lint_catches_injected_imbalance(case):
    snippet, expected = BAD[case]
    problems = lint_source(GOOD + snippet)
    assert problems, "the lint missed: %s" % case
    assert any(expected in p for p in problems), problems
    assert all(": f: " in p for p in problems), problems  # none in the good code


def test_lint_catches_imbalance_injected_into_real_source():
    """Delete one Py_END_ALLOW_THREADS / unlock / cursor close from the real
    csrc and the lint must notice."""
    text = "".join(open(p).read() for p in C_FILES)
    for word in ("Py_END_ALLOW_THREADS", "pthread_mutex_unlock", "mdb_cursor_close"):
        m = re.search(r"\b%s\b[^;\n]*;?" % word, strip_c(text))
        if m is None:
            continue
        broken = text[:m.start()] + " " * (m.end() - m.start()) + text[m.end():]
        assert lint_source(broken), "removing one %s went unnoticed" % word


def test_python_api_grep():
    assert py_calls("int f(void) { return PyLong_AsLong(x) + Py_INCREF (y); }") == [
        "PyLong_AsLong", "Py_INCREF"]
    assert py_calls("/* PyErr_SetString(x) */ int f(PyObject *o) { return g(\"Py_X(\"); }") \
        == []
