"""The cgroup root of one instance's pods, in every hierarchy of the host.

cgroups are not namespaced here (no cgroup namespace, cgroup v1), so the kubelet's pod
cgroups live in the host's hierarchies. Each instance gets its own root
(``/trialsync-<id>``): instances never touch each other's pods, and the leftovers of a
dead one are found by name and removed once empty.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

CGROUP_FS_TYPES = ("cgroup", "cgroup2")


def hierarchies(mountinfo: Path = Path("/proc/self/mountinfo")) -> list[Path]:
    """Mount points of every cgroup hierarchy (v1 controllers and the v2 mount)."""
    found: list[Path] = []
    for line in mountinfo.read_text().splitlines():
        fields = line.split()
        # mountinfo: ... mount-point ... - fstype source options (proc(5))
        sep = fields.index("-")
        if fields[sep + 1] in CGROUP_FS_TYPES:
            found.append(Path(fields[4]))
    return found


def create_root(name: str) -> None:
    """Create ``/<name>`` in every hierarchy; the kubelet refuses a cgroupRoot that is
    missing in any of them. A new cpuset cgroup starts with no CPUs and no memory nodes,
    so it inherits its parent's."""
    for hierarchy in hierarchies():
        path = hierarchy / name.strip("/")
        path.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if (path / knob).exists() and not (path / knob).read_text().strip():
                (path / knob).write_text((hierarchy / knob).read_text())


def remove_root(name: str, timeout: float = 10.0) -> list[Path]:
    """Remove ``/<name>`` and everything below it in every hierarchy, deepest first.

    A cgroup whose last process is still exiting refuses rmdir with EBUSY for a moment,
    so this retries until ``timeout``. Returns the cgroups it could not remove.
    """
    deadline = time.monotonic() + timeout
    remaining: list[Path] = []
    for hierarchy in hierarchies():
        root = hierarchy / name.strip("/")
        if not root.is_dir():
            continue
        for dirpath, _, _ in sorted(os.walk(root), key=lambda w: -w[0].count("/")):
            while True:
                try:
                    os.rmdir(dirpath)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        remaining.append(Path(dirpath))
                        break
                    time.sleep(0.1)
    return remaining
