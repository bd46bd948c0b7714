"""Runs the real ``trialsync sync`` command as a process and observes it from outside."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from localcluster.processes import free_port

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float, interval: float = 0.05, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(interval)


class Sidecar:
    """A ``trialsync sync`` process with its HTTP port; stop() sends SIGTERM."""

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str],
        log_path: str,
        port: int | None = None,
        wrapper: Sequence[str] = (),
    ) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.args = [*args, "--http-addr", f"127.0.0.1:{self.port}"]
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "trialsync.cli", "sync", *self.args],
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @classmethod
    def start(
        cls, args: Sequence[str], env: Mapping[str, str], log_path: str, **options: Any
    ) -> Sidecar:
        """Start the process (``options``: see ``__init__``) and wait until it serves
        /healthz."""
        sidecar = cls(args, env, log_path, **options)
        wait_for(sidecar.healthy, 30, what="the sidecar's /healthz")
        return sidecar

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def post(self, path: str) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method="POST")
        with urllib.request.urlopen(request, timeout=5) as r:
            return int(r.status)

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"sidecar exited with {self.proc.returncode}:\n{self.log()}")
        return self.get("/healthz")[0] == 200

    def metric(self, name: str) -> float:
        """Sum of every sample of ``name`` (all label sets); 0 if absent."""
        _, text = self.get("/metrics")
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name)] in " {":
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log(self) -> str:
        with open(self.log_path, "rb") as handle:
            return handle.read().decode(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no final sync, no clean-up, as the kernel's OOM killer or a node loss."""
        self.proc.kill()
        self.proc.wait()
        self._log.close()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()
        return code


def run_once(args: Sequence[str], env: Mapping[str, str], timeout: float = 120) -> tuple[int, str]:
    """``trialsync sync --once``: (exit code, combined output)."""
    done = subprocess.run(
        [sys.executable, "-m", "trialsync.cli", "sync", "--once", *args],
        env={**os.environ, **env},
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace")
