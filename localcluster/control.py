"""Start, find and stop local clusters from the host.

An instance is a state directory ``$TRIALSYNC_CACHE/clusters/<id>`` plus a launcher
process (see :mod:`.launcher`) that holds the directory's lock file for as long as it
lives. Whether an instance is alive is therefore one non-blocking ``flock`` away, with no
pid that could have been reused; a directory whose lock is free belongs to a dead instance
and :func:`clean_dead_instances` removes it and its cgroups.

The host reaches the cluster in three ways:

- the apiserver, on a host loopback port that the launcher forwards (``kubeconfig``);
- ``nsenter --net=<netns>`` (:meth:`LocalCluster.netns_command`), or a socket made in the
  namespace (:meth:`LocalCluster.socket_in_netns`), for a host process that must be
  reachable from the apiserver or from pods, such as the operator's webhook;
- :meth:`LocalCluster.forward`, a host loopback port connected to an address inside.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from localcluster import cgroups, forwarding, layout, linux
from localcluster.forwarding import Forwarder
from localcluster.layout import ClusterFiles
from localcluster.prepare import prepare

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Bound on a warm start (seconds on 2 cores) with room for a machine busy with builds.
READY_TIMEOUT_S = 300.0
#: A state directory without a lock file is being created right now, unless it is older.
UNLOCKED_GRACE_S = 600.0


class ClusterError(RuntimeError):
    """The cluster could not be started or used; the message says why."""


def unsupported_reason() -> str | None:
    """Why this machine cannot run the local cluster, or None if it can."""
    if sys.platform != "linux":
        return f"the local cluster needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "the local cluster needs root (namespaces, mounts, cgroups)"
    for tool in ("unshare", "nsenter", "ip", "iptables-restore"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            return f"the local cluster needs {tool} (run `make system-deps` as root)"
    return None


@dataclass(frozen=True)
class ClusterState:
    """What ``cluster.json`` records about a running instance."""

    instance_id: str
    root: str
    unshare_pid: int
    launcher_pid: int
    api_port: int
    started_at: float
    detached: bool
    timings: dict[str, float]

    @property
    def netns(self) -> Path:
        # unshare itself entered the new network namespace before forking the launcher.
        return Path(f"/proc/{self.unshare_pid}/ns/net")


class LocalCluster:
    """A running local cluster, started by this process or found by :func:`attach`."""

    def __init__(self, state: ClusterState, process: subprocess.Popen[bytes] | None = None) -> None:
        self.state = state
        self.files = ClusterFiles(Path(state.root))
        self._process = process

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig; the same file works on the host and inside the namespace."""
        return self.files.kubeconfig

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.state.api_port}"

    @property
    def netns(self) -> Path:
        """The cluster's network namespace, for ``nsenter --net=`` or ``setns``."""
        return self.state.netns

    @property
    def node_ip(self) -> str:
        """The node's address: pods and the apiserver reach host processes run in the
        namespace (:meth:`netns_command`) there."""
        return layout.NODE_IP

    @property
    def startup_seconds(self) -> float:
        return self.state.timings.get("total", 0.0)

    def alive(self) -> bool:
        return _is_locked(self.files.lock)

    def netns_command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed to run in the cluster's network namespace (and nothing else of
        it: the host's files, pids and cgroups stay in view)."""
        return ["nsenter", f"--net={self.netns}", "--", *argv]

    def popen_in_netns(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a host program inside the cluster's network namespace.

        It listens where pods and the apiserver can reach it (``node_ip``, or 127.0.0.1 for
        the apiserver). It is killed if the calling thread's process dies, so nothing is
        left behind by a crashed test run.
        """
        return subprocess.Popen(
            self.netns_command(argv), preexec_fn=linux.die_with_parent, **kwargs
        )

    def in_netns(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a thread inside the cluster's network namespace (sockets it makes
        stay there)."""
        return forwarding.in_netns(self.netns, fn)

    def socket_in_netns(self, host: str, port: int = 0) -> socket.socket:
        """A TCP socket listening at ``host:port`` inside the cluster's network namespace,
        for an in-process server (e.g. aiohttp's ``web.SockSite``)."""

        def make() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
            return sock

        return self.in_netns(make)

    def reach_host(
        self, port: int, bind: str = "127.0.0.1", bind_port: int | None = None
    ) -> Forwarder:
        """Make the host's ``127.0.0.1:port`` reachable inside the namespace at
        ``bind:bind_port`` (the same port number by default): a webhook server a test runs
        on the host's loopback then answers the apiserver at the very URL it has on the
        host. Bind the node address (and port 0) to reach it from pods. Close it when done;
        :attr:`Forwarder.address` is the namespace side."""
        listener = self.socket_in_netns(bind, port if bind_port is None else bind_port)
        # The listener is in the namespace; each connection is dialled from this thread's
        # (the host's) network.
        return Forwarder(listener, ("127.0.0.1", port)).start()

    def forward(self, host: str, port: int, local_port: int = 0) -> Forwarder:
        """Forward a host 127.0.0.1 port (free unless given) to ``host:port`` inside the
        namespace: a pod or Service IP, or a process on the node address. Close it when
        done; :attr:`Forwarder.address` is the host side."""
        return Forwarder(forwarding.listen_loopback(local_port), (host, port), self.netns).start()

    def import_image(self, archive: Path) -> None:
        """Import an OCI archive into the node's containerd (``ctr images import``)."""
        bin_dir = Path(json.loads(self.files.plan.read_text())["bin_dir"])
        done = subprocess.run(
            [
                str(bin_dir / "ctr"),
                f"--address={self.files.containerd_socket}",
                "--namespace=k8s.io",
                "images",
                "import",
                str(archive),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise ClusterError(f"importing {archive} failed: {done.stderr.strip()}")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the launcher (it stops the components), then remove the instance's files
        and cgroups. Idempotent."""
        # A dead launcher's pid may belong to another process by now: signal only while
        # the instance's lock says it lives.
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.state.launcher_pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout)
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.state.unshare_pid, signal.SIGKILL)
                os.kill(self.state.launcher_pid, signal.SIGKILL)
            while self.alive() and time.monotonic() < deadline + 10:
                time.sleep(0.1)
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(10)
        remove_instance(self.files)


def _is_locked(lock: Path) -> bool:
    """True while some process holds ``lock`` (i.e. the instance's launcher lives)."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def remove_instance(files: ClusterFiles) -> None:
    """Remove a stopped instance's cgroups and state directory."""
    stuck = cgroups.remove_root(files.cgroup_root)
    if stuck:
        print(f"cluster: could not remove cgroups {stuck}", file=sys.stderr)
    shutil.rmtree(files.root, ignore_errors=True)


def clean_dead_instances() -> list[str]:
    """Remove what instances whose launcher died (a crash, SIGKILL) left behind: state
    directories and cgroups. A live instance, of this checkout or another, is never
    touched. Returns the removed instance ids."""
    removed: list[str] = []
    parent = layout.clusters_dir()
    if not parent.is_dir():
        return removed
    for root in sorted(parent.iterdir()):
        files = ClusterFiles(root)
        if not root.is_dir():
            continue
        if not files.lock.exists() and time.time() - root.stat().st_mtime < UNLOCKED_GRACE_S:
            continue  # being created right now
        try:
            fd = os.open(files.lock, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = -1
        try:
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            remove_instance(files)
            removed.append(root.name)
        except BlockingIOError:
            continue
        finally:
            if fd >= 0:
                os.close(fd)
    # A cgroup root whose state directory is gone is left alone: it may belong to a live
    # instance of a checkout with another TRIALSYNC_CACHE, and an idle node's QoS cgroups
    # hold no process, so emptiness proves nothing.
    return removed


#: Unix socket paths (containerd's, the kubelet's) must fit in 108 bytes; the deepest one,
#: <state>/kubelet/pod-resources/kubelet.sock, adds 34 characters to the state directory.
MAX_STATE_PATH = 70


def _check_state_path(root: Path) -> None:
    """Refuse state directories the cluster cannot work in, with a message saying why."""
    if len(str(root)) > MAX_STATE_PATH:
        raise ClusterError(
            f"the state directory {root} is too long for the components' unix sockets: "
            f"set TRIALSYNC_CACHE to a shorter path (at most {MAX_STATE_PATH - 18} characters)"
        )
    hidden = (*layout.PRIVATE_TMPFS, *layout.OVERLAID)
    if any(root.resolve().is_relative_to(path) for path in hidden):
        raise ClusterError(
            f"the state directory {root} is below {', '.join(hidden)}, which the cluster "
            "mounts over in its namespace: set TRIALSYNC_CACHE elsewhere"
        )


def _launcher_pid(unshare_pid: int, timeout: float = 10.0) -> int:
    """The host pid of unshare's only child, the launcher (pid 1 in the namespace)."""
    children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            pids = children.read_text().split()
            if pids:
                return int(pids[0])
        time.sleep(0.01)
    raise ClusterError(f"unshare (pid {unshare_pid}) started no launcher")


def _read_report(fd: int, process: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    """The launcher's one-line JSON report, or an error if it died or took too long."""
    deadline = time.monotonic() + timeout
    buffer = b""
    while b"\n" not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ClusterError(f"the cluster was not ready within {timeout:.0f}s")
        ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buffer += chunk
        elif process.poll() is not None:
            break
    if not buffer:
        raise ClusterError(f"the launcher exited ({process.poll()}) without a report")
    report: dict[str, Any] = json.loads(buffer.splitlines()[0])
    return report


def start(
    *,
    bin_dir: Path,
    kubectl: Path,
    images: Sequence[Path],
    pause_image: str,
    detach: bool = False,
    timeout: float = READY_TIMEOUT_S,
) -> LocalCluster:
    """Start an instance and return once its node is Ready.

    ``detach``: the cluster outlives this process (``make cluster-up``); otherwise it is
    killed with this process, even by SIGKILL. On failure everything started is removed
    and ClusterError carries the launcher's log tail.
    """
    reason = unsupported_reason()
    if reason:
        raise ClusterError(reason)
    clean_dead_instances()
    files = ClusterFiles(layout.clusters_dir() / secrets.token_hex(4))
    _check_state_path(files.root)
    files.root.mkdir(parents=True)
    lock_fd = os.open(files.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    listener = forwarding.listen_loopback()
    api_port = int(listener.getsockname()[1])
    report_r, report_w = os.pipe()
    os.set_inheritable(report_r, False)
    started = time.time()
    process: subprocess.Popen[bytes] | None = None
    try:
        plan = prepare(
            files,
            bin_dir=bin_dir,
            kubectl=kubectl,
            api_port=api_port,
            images=list(images),
            pause_image=pause_image,
            api_listener_fd=listener.fileno(),
            report_fd=report_w,
            lock_fd=lock_fd,
        )
        launcher_log: IO[bytes]
        with files.log("launcher").open("ab") as launcher_log:
            process = subprocess.Popen(
                [
                    "unshare",
                    "--pid",
                    "--fork",
                    "--mount-proc",
                    "--mount",
                    "--net",
                    "--propagation=private",
                    # The launcher gets SIGTERM (and stops the cluster) if unshare dies.
                    "--kill-child=SIGTERM",
                    sys.executable,
                    "-m",
                    "localcluster.launcher",
                    str(files.plan),
                ],
                pass_fds=(plan.api_listener_fd, plan.report_fd, plan.lock_fd),
                stdin=subprocess.DEVNULL,
                stdout=launcher_log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"},
                start_new_session=detach,
                preexec_fn=None if detach else linux.die_with_parent,
            )
        # The launcher holds its own copies now.
        os.close(report_w)
        report_w = -1
        listener.close()
        os.close(lock_fd)
        lock_fd = -1
        launcher_pid = _launcher_pid(process.pid)
        report = _read_report(report_r, process, timeout)
        if "error" in report:
            raise ClusterError(f"the cluster did not start: {report['error']}")
        state = ClusterState(
            instance_id=files.instance_id,
            root=str(files.root),
            unshare_pid=process.pid,
            launcher_pid=launcher_pid,
            api_port=api_port,
            started_at=started,
            detached=detach,
            timings=report.get("timings", {}),
        )
        files.state.write_text(json.dumps(asdict(state), indent=2))
        return LocalCluster(state, None if detach else process)
    except BaseException as exc:
        log_tail = _tail(files.log("launcher"))
        if process is not None and process.poll() is None:
            with contextlib.suppress(ClusterError, ProcessLookupError):
                os.kill(_launcher_pid(process.pid, timeout=1), signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(30)
            if process.poll() is None:
                process.kill()
                process.wait()
        listener.close()
        for fd in (lock_fd, report_w):
            if fd >= 0:
                os.close(fd)
        kept = _keep_logs(files)
        remove_instance(files)
        if isinstance(exc, ClusterError):
            raise ClusterError(
                f"{exc}\ncomponent logs: {kept}\nlauncher log:\n{log_tail}"
            ) from None
        raise
    finally:
        with contextlib.suppress(OSError):
            os.close(report_r)


def _keep_logs(files: ClusterFiles, keep: int = 5) -> Path:
    """Move a failed instance's logs to ``$TRIALSYNC_CACHE/cluster-failures/<id>`` (the last
    few failures are kept) before its state directory is removed."""
    failures = layout.cache_dir() / "cluster-failures"
    failures.mkdir(parents=True, exist_ok=True)
    for old in sorted(failures.iterdir(), key=lambda p: p.stat().st_mtime)[: -keep + 1]:
        shutil.rmtree(old, ignore_errors=True)
    target = failures / files.instance_id
    with contextlib.suppress(OSError):
        shutil.copytree(files.logs, target)
    return target


def attach(state_file: Path) -> LocalCluster:
    """The live instance whose ``cluster.json`` is ``state_file`` (``make cluster-up``'s)."""
    try:
        raw = json.loads(state_file.read_text())
    except (OSError, ValueError) as exc:
        raise ClusterError(f"no cluster state in {state_file}: {exc}") from exc
    cluster = LocalCluster(ClusterState(**raw))
    if not cluster.alive():
        raise ClusterError(f"the cluster of {state_file} is not running")
    return cluster


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no launcher log>"
