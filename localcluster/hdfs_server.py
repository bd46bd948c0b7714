"""A real HDFS on loopback for tests: Hadoop's MiniDFSCluster (one NameNode, one DataNode,
WebHDFS on) in one JVM, the upload dir of ``webhdfs://`` tests.

``start_hdfs()`` (:class:`HdfsServer`) builds it if needed (``tools/hdfs.sh``: the jars of
``localcluster/hdfs/pom.xml`` from Maven Central and ``MiniHdfs.java`` compiled, cached in
``$TRIALSYNC_CACHE/hdfs/<key>``), starts it on ports the kernel picks on 127.0.0.1, and waits
until a file can be written and read back through WebHDFS; ``stop()`` stops it (terminate,
then kill) and deletes its directory. The tests' fixture is in
``tests/support/store_fixtures.py``.

The cluster runs with permissions off and replication 1; a client names the user it acts as
(WebHDFS's ``user.name``) with the fsspec option ``user``. WebHDFS answers a read or a write
with a redirect to the DataNode, which MiniDFSCluster binds to 127.0.0.1, so the redirect is
reachable from this host.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localcluster.processes import stop, tail

__all__ = ["HDFS_USER", "HdfsServer", "HdfsUnavailable", "hdfs_build_dir", "start_hdfs"]

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO_ROOT / "tools" / "hdfs.sh"
#: The user the tests' clients act as (any name works: permissions are off).
HDFS_USER = "trialsync"
#: A cold start (format, NameNode, DataNode, out of safe mode) takes ~9 s on 2 cores.
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 5.0
#: The JVM's options: a small heap is plenty for a test cluster, and the serial collector
#: uses no extra threads on 2 cores.
JVM_OPTIONS = ("-Xmx768m", "-XX:+UseSerialGC", "-Djava.net.preferIPv4Stack=true")


class HdfsError(RuntimeError):
    """The tests' HDFS failed to build or start; the message says why."""


class HdfsUnavailable(HdfsError):
    """Something the tests' HDFS needs is not on this machine (a JDK, Maven)."""


def hdfs_build_dir() -> Path:
    """The built MiniHdfs (``lib/`` and ``classes/``): ``tools/hdfs.sh --dir``, which builds it
    the first time (a download of ~105 MB from Maven Central) and answers at once after."""
    if shutil.which("java") is None:
        raise HdfsUnavailable("java is not on PATH (the tests' HDFS runs in a JVM: Java 17)")
    try:
        done = subprocess.run(
            ["bash", str(BUILD_SCRIPT), "--dir"],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            timeout=900,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HdfsError(f"tools/hdfs.sh failed: {exc}") from exc
    if done.returncode == 3:
        raise HdfsUnavailable(done.stderr.strip())
    if done.returncode != 0:
        raise HdfsError(f"tools/hdfs.sh exited with {done.returncode}:\n{done.stderr[-4000:]}")
    return Path(done.stdout.strip())


@dataclass
class HdfsServer:
    """A running MiniDFSCluster; clients reach it through WebHDFS on ``http_port`` and
    through HDFS's RPC protocol on ``rpc_port``."""

    http_port: int
    rpc_port: int
    datanode_http_port: int
    user: str = HDFS_USER
    workdir: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log_path: Path | None = None
    startup_seconds: float = 0.0

    @property
    def namenode(self) -> str:
        """``host:port`` of the NameNode's HTTP server (WebHDFS)."""
        return f"{HOST}:{self.http_port}"

    def url(self, path: str, scheme: str = "webhdfs") -> str:
        """The ``webhdfs://`` (or ``hdfs://``: the NameNode's RPC port) URL of an absolute
        HDFS path."""
        if scheme == "hdfs":
            return f"hdfs://{HOST}:{self.rpc_port}/{path.lstrip('/')}"
        return f"webhdfs://{self.namenode}/{path.lstrip('/')}"

    def storage_options(self) -> dict[str, Any]:
        """fsspec options for ``webhdfs`` URLs of this server: the user to act as."""
        return {"user": self.user}

    def filesystem(self, **overrides: Any) -> Any:
        """A fresh (uncached) fsspec ``WebHDFS`` client of this server."""
        from fsspec.implementations.webhdfs import WebHDFS

        return WebHDFS(
            host=HOST,
            port=self.http_port,
            **{**self.storage_options(), **overrides},
            skip_instance_cache=True,
        )

    def make_dir(self) -> str:
        """A fresh, empty, uniquely named directory (its absolute path), as a bucket."""
        path = f"/t-{uuid.uuid4().hex[:16]}"
        self.filesystem().mkdir(path)
        return path

    def stop(self) -> None:
        """Stop the cluster and delete its data; idempotent."""
        stop(self.process, timeout=STOP_TIMEOUT_S)
        self.process = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def start_hdfs(workdir: Path | None = None) -> HdfsServer:
    """Build (if needed) and start MiniHdfs on loopback; return once WebHDFS writes a file.

    Raises HdfsUnavailable if a JDK or Maven is missing, HdfsError (with the tail of the log)
    if it does not come up within READY_TIMEOUT_S.
    """
    build = hdfs_build_dir()
    own_dir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="minihdfs-")) if workdir is None else workdir
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    ready = workdir / "ready.json"
    log_path = workdir / "minihdfs.log"
    argv = [
        "java",
        *JVM_OPTIONS,
        f"-Djava.io.tmpdir={workdir / 'tmp'}",
        "-cp",
        f"{build / 'lib'}/*:{build / 'classes'}",
        "MiniHdfs",
        str(workdir / "cluster"),
        str(ready),
    ]
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=workdir
        )
    server = HdfsServer(
        0, 0, 0, workdir=workdir if own_dir else None, process=proc, log_path=log_path
    )
    try:
        _wait_ready(server, proc, ready, log_path)
    except BaseException:
        server.stop()
        raise
    server.startup_seconds = time.monotonic() - started
    return server


def _wait_ready(
    server: HdfsServer, proc: subprocess.Popen[bytes], ready: Path, log_path: Path
) -> None:
    # The ready file says the NameNode left safe mode with the DataNode registered; a real
    # write and read through WebHDFS (NameNode, then the DataNode it redirects to) says the
    # rest.
    deadline = time.monotonic() + READY_TIMEOUT_S
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HdfsError(f"MiniHdfs exited with {proc.returncode}; log tail:\n{tail(log_path)}")
        if not ready.is_file():
            time.sleep(0.1)
            continue
        ports = json.loads(ready.read_text())
        server.http_port = int(ports["http_port"])
        server.rpc_port = int(ports["rpc_port"])
        server.datanode_http_port = int(ports["datanode_http_port"])
        try:
            fs = server.filesystem()
            probe = f"/.ready-{uuid.uuid4().hex[:12]}"
            fs.pipe_file(probe, b"ok")
            if fs.cat_file(probe) == b"ok":
                fs.rm(probe)
                return
        except (OSError, RuntimeError, ValueError) as exc:  # requests' errors are OSErrors
            last = exc
        time.sleep(0.2)
    raise HdfsError(
        f"MiniHdfs not ready within {READY_TIMEOUT_S:.0f}s (last error: {last!r}); "
        f"log tail:\n{tail(log_path)}"
    )
