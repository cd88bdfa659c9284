"""``python -m lmdbcache``: the lmdbcache command (see :mod:`lmdbcache.cli`)."""
import sys

from .cli import main

sys.exit(main())
