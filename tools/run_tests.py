"""Run the test suite in two lanes side by side: the tests that need the node (marker
``cluster``, then the kind test, marker ``kind``) and all the others.

The node's tests spend most of their time waiting on pods (image loads, kubelet syncs,
trainers that sleep between checkpoints), the others on the CPU, so together they take
little more than the longer of the two. Each process prints its lines with a prefix as they
come; the exit status is the first failing one's, or 0.

    python tools/run_tests.py [pytest arguments...]
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Sequence

#: Each lane's name, which prefixes its lines, and the marker expressions of the pytest
#: processes it runs one after the other. The kind test (the README's quickstart on a kind
#: cluster) follows the node's tests: the node is stopped by then, and the rest of the
#: suite takes longer than both. The tests that assert wall-clock bounds (``timing``) come
#: last in that lane: beside a node's or a kind cluster's start, two shared cores can
#: stall a process for seconds.
LANES = (
    ("node", ("cluster", "kind", "timing and not cluster and not kind")),
    ("rest", ("not cluster and not kind and not timing",)),
)


def _run_lane(
    name: str,
    markers: Sequence[str],
    args: Sequence[str],
    env: dict[str, str],
    lock: threading.Lock,
    statuses: list[tuple[str, int]],
    processes: list[subprocess.Popen[str]],
) -> None:
    for marker in markers:
        process = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-m", marker, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        processes.append(process)
        assert process.stdout is not None
        for line in process.stdout:
            with lock:
                sys.stdout.write(f"[{name}] {line}")
                sys.stdout.flush()
        statuses.append((f"{name} ({marker})", process.wait()))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    lock = threading.Lock()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    statuses: list[tuple[str, int]] = []
    processes: list[subprocess.Popen[str]] = []
    lanes = [
        threading.Thread(
            target=_run_lane, args=(name, markers, args, env, lock, statuses, processes)
        )
        for name, markers in LANES
    ]
    for lane in lanes:
        lane.start()
    try:
        for lane in lanes:
            lane.join()
    except KeyboardInterrupt:
        for process in processes:
            process.terminate()
        raise
    for name, status in statuses:
        print(f"run_tests: {name} suite exited {status}")
    return next((status for _, status in statuses if status != 0), 0)


if __name__ == "__main__":
    sys.exit(main())
