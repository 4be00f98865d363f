"""Child processes that die with their parent (Linux PR_SET_PDEATHSIG): a worker of the middleware, the WebUI
of the webui image. Standard library only.

The signal fires when the *thread* that started the child exits, so start children from a thread that lives
as long as the parent (the main thread, or a long-lived pool thread)."""

from __future__ import annotations

import ctypes
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """`preexec_fn` of subprocess.Popen: the child gets SIGKILL when its parent goes."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
