"""Run the test suite as two pytest processes side by side: the tests that need the node
(marker ``cluster``) and all the others.

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
from typing import TextIO

#: Each suite's name, which prefixes its lines, and its marker expression.
SUITES = (("node", "cluster"), ("rest", "not cluster"))


def _relay(name: str, stream: TextIO, out: TextIO, lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            out.write(f"[{name}] {line}")
            out.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    lock = threading.Lock()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started: list[tuple[str, subprocess.Popen[str], threading.Thread]] = []
    for name, marker in SUITES:
        process = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-m", marker, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        assert process.stdout is not None
        relay = threading.Thread(target=_relay, args=(name, process.stdout, sys.stdout, lock))
        relay.start()
        started.append((name, process, relay))
    statuses: list[tuple[str, int]] = []
    try:
        for name, process, relay in started:
            statuses.append((name, process.wait()))
            relay.join()
    except KeyboardInterrupt:
        for _, process, _ in started:
            process.terminate()
        raise
    for name, status in statuses:
        print(f"run_tests: {name} suite exited {status}")
    return next((status for _, status in statuses if status != 0), 0)


if __name__ == "__main__":
    sys.exit(main())
