"""Making a file unreadable to a child process, also when the tests run as root."""

from __future__ import annotations

import os
import shutil


def drop_file_privileges() -> list[str]:
    """An argv prefix that runs a command unable to read files whatever their mode.

    As root: ``setpriv`` (util-linux) drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from
    the bounding set, then execs the command, which reads only what the file modes allow:
    a mode-000 file is unreadable to it, as to any other user. A process that is not root
    has neither already: no prefix.

    A program does it, not a ``preexec_fn``: Python code between fork and exec can hang
    in a process with other threads. The test that uses this hung there once (the child
    never reached exec), in a CI run whose test process also had hdfs-native's threads.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise RuntimeError("setpriv (util-linux) is needed to drop root's file privileges")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]
