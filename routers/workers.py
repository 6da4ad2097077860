"""Forked worker processes that do not outlive the process that started them.

``expertgate train`` forks workers (``auto``'s folds, the TF-IDF vocabulary pass). A
``ProcessPoolExecutor`` worker waits on a pipe whose write end it inherited at the fork, so
when its parent is killed without a chance to shut the pool down (``timeout``, ``kill``, an
out-of-memory kill) the worker never sees end-of-file and sleeps forever, holding its copy of
the parent's memory. :func:`die_with_parent`, run as the pool's initializer, asks Linux to send
the worker SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``).
"""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["die_with_parent"]

#: prctl option: the signal a process gets when its parent dies (linux/prctl.h)
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """In a worker forked by the process ``parent``: be sent SIGTERM when that process dies,
    and exit at once if it already has (it died between the fork and this call). Elsewhere
    than on Linux, nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # no libc symbol to call: leave the default
        return
    if os.getppid() != parent:
        os._exit(1)
