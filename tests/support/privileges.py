"""Making a file unreadable to a child process, also when the tests run as root."""

from __future__ import annotations

import ctypes
import os

_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE = 1
_CAP_DAC_READ_SEARCH = 2
# Loaded here, not in the child: between fork and exec only the prctl calls run.
_LIBC = ctypes.CDLL(None, use_errno=True)


def drop_file_privileges() -> None:
    """``preexec_fn``: as root, give up reading files whatever their mode.

    Drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so after exec
    the process reads only what the file modes allow: a mode-000 file is unreadable to
    it, as to any other user. A process that is not root has neither already.
    """
    if os.geteuid() != 0:
        return
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if _LIBC.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
