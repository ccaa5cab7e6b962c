"""Child processes of the simulator's commands die with them, whatever ends them.

`swapctl demo`, `sim` and `simulate` start a broker, pseudo-terminal pairs (socat) and the
daemon. They stop them in order on SIGINT, SIGTERM and SIGHUP; for what nothing can catch
(SIGKILL, a crash), each child asks the kernel to send it SIGTERM when its parent dies
(Linux `prctl(PR_SET_PDEATHSIG)`), so that none is left running orphaned, holding ports and
pseudo-terminals that later runs then cannot have.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def die_with_parent(sig: int = signal.SIGTERM, parent: int | None = None) -> None:
    """`preexec_fn` of a child: `sig` to it when the process that started it dies.

    Runs in the child between fork and exec (or first thing in a worker process, given the
    `parent` that started it). The parent may already be gone by then (killed in that
    instant): then the child ends itself at once.
    """
    parent = os.getppid() if parent is None else parent
    _libc.prctl(PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def worker_dies_with_parent(parent: int) -> None:
    """A study's worker process is killed when the study's command dies, whatever ends it.

    The pool's `initializer`, with `initargs=(os.getpid(),)`: a worker has nothing to save.
    """
    die_with_parent(signal.SIGKILL, parent)
