"""``python -m lmdbcache``: the lmdbcache command (see :mod:`lmdbcache.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":  # not when a documentation tool imports it
    sys.exit(main())
