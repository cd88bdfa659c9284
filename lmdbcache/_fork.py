"""Fork hook: invalidate environments inherited from the parent process.

The C module also registers a pthread_atfork child handler, which covers forks
that do not go through os.fork (a C library calling fork() directly).  Both
only bump a counter and forget the parent's registry; neither calls LMDB.
"""
import os

from . import _core

_registered = False


def register() -> None:
    global _registered
    if not _registered and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_core._after_fork_in_child)
        _registered = True
