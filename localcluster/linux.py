"""The few Linux system calls the cluster needs that Python 3.11's os module lacks.

``setns`` moves only the calling thread into a namespace, which is what lets one host
process keep its own network while a helper thread opens sockets in the cluster's.
"""

from __future__ import annotations

import ctypes
import os
import signal
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong]


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def setns(path: Path, nstype: int) -> None:
    """Move the calling thread into the namespace that ``path`` (``/proc/PID/ns/...``) names."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, nstype), f"setns({path})")
    finally:
        os.close(fd)


def mount(source: str, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    """mount(2); raises OSError naming the target."""
    _check(
        _libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {source} on {target}",
    )


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL the calling process when its parent thread exits.

    For ``preexec_fn``: it runs between fork and exec, where only async-signal-safe work is
    allowed; the function object is resolved at import time, so this is one plain syscall.
    """
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
