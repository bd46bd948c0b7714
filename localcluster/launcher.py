"""The cluster's pid 1: runs inside private pid, mount and network namespaces.

Started by :mod:`.control` as ``unshare --pid --fork --mount-proc --mount --net
--kill-child=SIGTERM python -m localcluster.launcher PLAN``. It

1. keeps the host's files as they are: /run becomes a private tmpfs, /var/lib and /var/log
   overlays with their upper layer in the state directory, and files holding the values
   the kubelet wants are bind-mounted over the global sysctls it writes;
2. gives the namespace a node address (a veth pair, both ends inside) and the per-namespace
   sysctls a bridge network needs;
3. forwards the host's 127.0.0.1:<api port> (a socket made on the host and inherited) to
   the apiserver on the same port inside;
4. starts the components in order, imports the images, creates the DNS Service, waits until
   the node is Ready, DNS answers, Services route and service accounts work, and reports
   ``ready`` on the inherited pipe;
5. reaps every orphan (it is init here) and stops when told (SIGTERM) or when a component
   dies, stopping the others first.

When it exits, for any reason, the kernel kills every process left in the pid namespace:
shims and containers included. The namespaces and their mounts go with the last of them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from localcluster import cgroups, layout, linux
from localcluster.components import ORDER, Component
from localcluster.forwarding import Forwarder
from localcluster.layout import ClusterFiles
from localcluster.plan import Plan

#: Bounds on each start-up phase; a warm start takes seconds on 2 cores.
PHASE_TIMEOUT_S = 120.0
#: Time the components get to exit on SIGTERM before the namespace is torn down. Nothing
#: in it is kept (etcd's data, images, pods), so there is nothing to wait for beyond
#: letting logs reach their files; the kernel kills whatever is left.
STOP_GRACE_S = 1.0


class LaunchError(RuntimeError):
    """The cluster could not start; the message says which part and why."""


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} launcher: {message}", file=sys.stderr, flush=True)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<no log: {exc}>"


class Launcher:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.files = ClusterFiles(Path(plan.root))
        self.running: dict[int, Component] = {}
        #: Short-lived commands run beside the components (image imports): pid -> name, and
        #: the exit codes of those that finished.
        self.helpers: dict[int, str] = {}
        self.helper_codes: dict[str, int] = {}
        self.stopping = False
        self.timings: dict[str, float] = {}
        self.started = time.monotonic()
        # Signals write to this pipe, so a sleep in select() wakes up at once for them.
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # ------------------------------------------------------------------ main line

    def run(self) -> int:
        report = os.fdopen(self.plan.report_fd, "w")
        for fd in (self.plan.api_listener_fd, self.plan.lock_fd):
            os.set_inheritable(fd, False)  # no component may keep the instance "alive"
        self._install_signals()
        try:
            self._start()
        except BaseException as exc:
            message = str(exc) if isinstance(exc, LaunchError) else f"{type(exc).__name__}: {exc}"
            log(f"start-up failed: {message}")
            with contextlib.suppress(OSError):
                report.write(json.dumps({"error": message}) + "\n")
                report.close()
            self._stop_all()
            return 1
        self.timings["total"] = time.monotonic() - self.started
        log(f"ready in {self.timings['total']:.1f}s: {self._timings_text()}")
        with contextlib.suppress(OSError):
            report.write(json.dumps({"ready": True, "timings": self.timings}) + "\n")
            report.close()
        code = self._supervise()
        self._stop_all()
        return code

    def _start(self) -> None:
        self._isolate_mounts()
        self._setup_network()
        listener = socket.socket(fileno=self.plan.api_listener_fd)
        Forwarder(listener, ("127.0.0.1", self.plan.api_port)).start()
        cgroups.create_root(self.files.cgroup_root)
        self._phase("namespaces")

        for name in ("etcd", "containerd", "kube-apiserver"):
            self._spawn(name)
        self._wait(self._containerd_answers, "containerd to answer")
        self._phase("containerd")
        # Importing (unpacking) images is the longest step: it runs while the apiserver
        # starts and the node registers.
        for archive in self.plan.images:
            self._spawn_helper(
                f"import {Path(archive).name}", self._ctr_argv("images", "import", archive)
            )
        self._wait(self._apiserver_ready, "kube-apiserver /readyz")
        self._phase("apiserver")
        self._kubectl("apply", "--server-side", "-f", str(self.files.etc / "bootstrap.yaml"))
        for name in ("kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"):
            self._spawn(name)
        self._spawn("coredns")
        self._wait(self._node_ready, "the node to be Ready")
        self._phase("node")
        self._wait(lambda: self._http_ok(layout.COREDNS_READY_PORT, "/ready"), "CoreDNS /ready")
        self._phase("dns")
        self._wait(
            lambda: self._http_ok(layout.KUBE_PROXY_HEALTHZ_PORT, "/healthz"),
            "kube-proxy /healthz",
        )
        self._phase("services")
        self._wait(self._service_accounts_work, "the default ServiceAccount and kube-root-ca.crt")
        self._phase("service-accounts")
        # KubeRay last: its CRDs first (server-side: they are too large for the annotation
        # a client-side apply writes), then its operator.
        crds = Path(self.plan.bin_dir) / layout.KUBERAY_CRDS
        self._kubectl("apply", "--server-side", "-f", str(crds))
        self._spawn("ray-operator")
        self._wait(
            lambda: self._http_ok(layout.RAY_OPERATOR_HEALTH_PORT, "/readyz"),
            "KubeRay's operator /readyz",
        )
        self._phase("kuberay")
        self._wait(self._helpers_done, "the image imports")
        self._phase("images")

    def _supervise(self) -> int:
        while not self.stopping:
            self._sleep(5.0)
            died = self._reap()
            if died:
                name, status = died
                log(f"{name} exited with {status}; stopping the cluster")
                log(f"last lines of {self.files.log(name)}:\n{tail(self.files.log(name))}")
                return 1
        log("stopping")
        return 0

    # ------------------------------------------------------------------ host isolation

    def _isolate_mounts(self) -> None:
        # Nothing mounted from here on may propagate to the host's mount namespace.
        linux.mount("none", "/", None, linux.MS_REC | linux.MS_PRIVATE)
        for target in layout.PRIVATE_TMPFS:
            linux.mount("tmpfs", target, "tmpfs", 0, "mode=755")
        for target in layout.OVERLAID:
            upper, work = self.files.overlay(target)
            upper.mkdir(parents=True, exist_ok=True)
            work.mkdir(parents=True, exist_ok=True)
            linux.mount(
                "overlay",
                target,
                "overlay",
                0,
                f"lowerdir={target},upperdir={upper},workdir={work}",
            )
        for name, value in layout.KUBELET_SYSCTLS.items():
            held = self.files.sysctls / name.replace("/", ".")
            held.write_text(f"{value}\n")
            linux.mount(str(held), f"/proc/sys/{name}", None, linux.MS_BIND)

    def _setup_network(self) -> None:
        node = f"{layout.NODE_IP}/{layout.NODE_PREFIX_LENGTH}"
        for args in (
            ["link", "set", "lo", "up"],
            ["link", "add", layout.NODE_INTERFACE, "type", "veth", "peer", "name",
             layout.GATEWAY_INTERFACE],
            ["addr", "add", node, "dev", layout.NODE_INTERFACE],
            ["link", "set", layout.NODE_INTERFACE, "up"],
            ["link", "set", layout.GATEWAY_INTERFACE, "up"],
            ["route", "add", "default", "via", layout.GATEWAY_IP, "dev", layout.NODE_INTERFACE],
        ):  # fmt: skip
            subprocess.run(["ip", *args], check=True, capture_output=True)
        # Per network namespace (kernel 5.3+ for the bridge ones), so the host's stay as
        # they are. Bridged pod-to-pod traffic must pass iptables for Service DNAT replies.
        for key in (
            "net/ipv4/ip_forward",
            "net/bridge/bridge-nf-call-iptables",
            "net/bridge/bridge-nf-call-ip6tables",
        ):
            Path("/proc/sys", key).write_text("1\n")

    # ------------------------------------------------------------------ processes

    def _spawn(self, name: str) -> None:
        component = self.plan.components[name]
        pid = self._posix_spawn(component.argv, component.env, self.files.log(name))
        self.running[pid] = component
        log(f"started {name} (pid {pid})")

    def _spawn_helper(self, name: str, argv: list[str]) -> None:
        """Run a command beside the components; :meth:`_helpers_done` tells when all ended.
        Spawned and reaped like a component: a subprocess.Popen would lose its exit status
        to this process's reaper."""
        self.helpers[self._posix_spawn(argv, {}, self.files.log("helpers"))] = name

    def _posix_spawn(self, argv: list[str], env: dict[str, str], log_path: Path) -> int:
        full_env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.files.root),
            "TMPDIR": str(self.files.tmp),
            **env,
        }
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            return os.posix_spawn(
                argv[0],
                argv,
                full_env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, fd, 1),
                    (os.POSIX_SPAWN_DUP2, fd, 2),
                ],
                setsigdef=(signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGPIPE),
                setsigmask=(),
            )
        finally:
            os.close(fd)

    def _helpers_done(self) -> bool:
        failed = {name: code for name, code in self.helper_codes.items() if code != 0}
        if failed:
            raise LaunchError(
                f"{', '.join(failed)} failed ({failed}); last lines of "
                f"{self.files.log('helpers')}:\n{tail(self.files.log('helpers'))}"
            )
        return not self.helpers

    def _reap(self) -> tuple[str, int] | None:
        """Collect every exited child; returns the first component that died, if any."""
        died: tuple[str, int] | None = None
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return died
            if pid == 0:
                return died
            helper = self.helpers.pop(pid, None)
            if helper is not None:
                self.helper_codes[helper] = os.waitstatus_to_exitcode(status)
                continue
            component = self.running.pop(pid, None)
            if component is not None and died is None and not self.stopping:
                died = (component.name, os.waitstatus_to_exitcode(status))

    def _stop_all(self) -> None:
        self.stopping = True
        for name in reversed(ORDER):
            for pid, component in list(self.running.items()):
                if component.name == name:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while self.running and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        # Whatever is left (shims, containers, slow components) dies with this process.

    def _run(self, argv: list[str], what: str, timeout: float = 120) -> str:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "TMPDIR": str(self.files.tmp)},
        )
        if done.returncode != 0:
            raise LaunchError(f"{what} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        return done.stdout

    def _ctr_argv(self, *args: str) -> list[str]:
        return [
            str(Path(self.plan.bin_dir) / "ctr"),
            f"--address={self.files.containerd_socket}",
            "--namespace=k8s.io",
            *args,
        ]

    def _ctr(self, *args: str) -> str:
        return self._run(self._ctr_argv(*args), "ctr " + " ".join(args))

    def _kubectl(self, *args: str) -> str:
        argv = [self.plan.kubectl, f"--kubeconfig={self.files.kubeconfig}", *args]
        return self._run(argv, "kubectl " + " ".join(args))

    # ------------------------------------------------------------------ readiness

    def _wait(self, check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while True:
            died = self._reap()
            if died:
                name, code = died
                raise LaunchError(
                    f"{name} exited with {code} while waiting for {what}; last lines of "
                    f"{self.files.log(name)}:\n{tail(self.files.log(name))}"
                )
            if self.stopping:
                raise LaunchError(f"stopped while waiting for {what}")
            if check():
                return
            if time.monotonic() > deadline:
                raise LaunchError(f"timed out after {PHASE_TIMEOUT_S:.0f}s waiting for {what}")
            self._sleep(0.1)

    def _containerd_answers(self) -> bool:
        if not self.files.containerd_socket.exists():
            return False
        try:
            self._ctr("version")
        except LaunchError:
            return False
        return True

    def _api(self, path: str) -> object:
        """GET ``path`` from the apiserver as the admin; the decoded JSON, or None."""
        ctx = ssl.create_default_context(cafile=str(self.files.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.files.pki / "admin.crt"), str(self.files.pki / "admin.key"))
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx)
        )
        try:
            with opener.open(f"https://127.0.0.1:{self.plan.api_port}{path}", timeout=5) as r:
                body = r.read()
        except (OSError, ssl.SSLError):
            return None
        try:
            decoded: object = json.loads(body)
        except ValueError:
            return body.decode(errors="replace")
        return decoded

    def _apiserver_ready(self) -> bool:
        return self._api("/readyz") == "ok"

    def _node_ready(self) -> bool:
        node = self._api(f"/api/v1/nodes/{layout.NODE_NAME}")
        if not isinstance(node, dict):
            return False
        conditions = node.get("status", {}).get("conditions", [])
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def _service_accounts_work(self) -> bool:
        sa = self._api("/api/v1/namespaces/default/serviceaccounts/default")
        ca = self._api("/api/v1/namespaces/default/configmaps/kube-root-ca.crt")
        return (
            isinstance(sa, dict)
            and sa.get("kind") == "ServiceAccount"
            and (isinstance(ca, dict) and ca.get("kind") == "ConfigMap")
        )

    @staticmethod
    def _http_ok(port: int, path: str) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                return int(r.status) == 200
        except (OSError, urllib.error.URLError):
            return False

    # ------------------------------------------------------------------ signals and time

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)

        def on_stop(signum: int, _frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        # A handler (not SIG_DFL) so SIGCHLD wakes the sleep below through the wakeup fd.
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def _sleep(self, seconds: float) -> None:
        """Sleep until ``seconds`` pass or a signal (a child exiting, SIGTERM) arrives."""
        ready, _, _ = select.select([self.wake_r], [], [], seconds)
        if ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self.wake_r, 4096)

    def _phase(self, name: str) -> None:
        self.timings[name] = time.monotonic() - self.started

    def _timings_text(self) -> str:
        return ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())


def main(argv: list[str]) -> int:
    if os.getpid() != 1:
        print(
            "launcher: must run as pid 1 of its own pid namespace (see control.py)", file=sys.stderr
        )
        return 2
    plan = Plan.load(Path(argv[1]))
    # The host created and locked this; holding the inherited descriptor keeps it locked
    # exactly as long as this process lives, which is how dead instances are recognised.
    fcntl.flock(plan.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return Launcher(plan).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
