"""The chart as GitOps tools install it, and two releases side by side.

Argo CD and Flux render the chart with ``helm template`` (no cluster, so no ``lookup``) and
apply the result with server-side apply, again at every sync. The chart's webhook
configurations carry no caBundle: the operator writes it as its own field manager, so those
applies, and a client-side ``helm upgrade``, leave it where it is and no opted-in pod is
refused while they run.

With ``operator.watchNamespaces`` both webhooks select only those namespaces, so two
releases watching disjoint namespaces each review only their own pods and SyncConfigs.

Pods never run on this control plane: a post-renderer (the same for ``helm template``,
``install`` and ``upgrade``) points each webhook at the operator process on 127.0.0.1
instead of the release's Service, and the operator runs as the chart's ServiceAccount, as
in test_chart.py.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml

from localcluster.control_plane import REPO_ROOT, Kube
from localcluster.processes import free_ports
from tests.support.operator_process import Operator, start_operator
from tests.support.pods import opted_in_pod, sidecars, syncconfig
from tests.support.requirements import external_cluster_only, unavailable
from tests.support.sidecar_process import wait_for

pytestmark = pytest.mark.k8s
CHART = REPO_ROOT / "charts" / "trialsync"
KUBE_VERSION = "1.37.2"
#: The field manager Argo CD applies with.
ARGO = "argocd-controller"
CONFIG_KINDS = ("mutatingwebhookconfiguration", "validatingwebhookconfiguration")

#: A helm post-renderer: each webhook's clientConfig becomes a url on 127.0.0.1:<argv[1]>
#: (the operator process) instead of the Service; everything else is left as rendered.
POST_RENDERER = """\
import sys
import yaml

port = sys.argv[1]
docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
for doc in docs:
    if doc["kind"] in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        for hook in doc["webhooks"]:
            config = hook["clientConfig"]
            path = config.pop("service")["path"]
            config["url"] = f"https://127.0.0.1:{port}{path}"
sys.stdout.write(yaml.safe_dump_all(docs))
"""


def _helm(kube: Kube, *args: str, check: bool = True) -> Any:
    if kube.helm_path is None:
        unavailable("no helm: run `make tools`")
    return kube.helm(*args, check=check)


def _render(kube: Kube, *sets: str, namespace: str = "trialsync-system") -> list[dict[str, Any]]:
    out = _helm(
        kube,
        "template", "trialsync", str(CHART), "-n", namespace, "--kube-version", KUBE_VERSION,
        *(f"--set={s}" for s in sets),
    ).stdout  # fmt: skip
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _webhooks(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        hook
        for d in docs
        if d["kind"] in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
        for hook in d["webhooks"]
    ]


@pytest.mark.parametrize(
    "sets",
    [(), ("certificates.certManager.enabled=true",), ("operator.watchNamespaces={ml}",)],
    ids=["self", "cert-manager", "watched"],
)
def test_the_chart_never_renders_a_ca_bundle(kube: Kube, sets: tuple[str, ...]) -> None:
    hooks = _webhooks(_render(kube, *sets))
    assert len(hooks) == 2
    for hook in hooks:
        assert "caBundle" not in hook["clientConfig"], hook["name"]


def test_watched_namespaces_narrow_both_webhooks_and_keep_the_exclusions(kube: Kube) -> None:
    default = _webhooks(_render(kube))
    for hook in default:  # every namespace but the excluded ones
        assert [e["operator"] for e in hook["namespaceSelector"]["matchExpressions"]] == [
            "NotIn",
            "NotIn",
        ]
    docs = _render(kube, "operator.watchNamespaces={ml,tune}", "webhook.excludeNamespaces={batch}")
    for hook in _webhooks(docs):
        narrowed, excluded, opt_out = hook["namespaceSelector"]["matchExpressions"]
        assert narrowed == {
            "key": "kubernetes.io/metadata.name",
            "operator": "In",
            "values": ["ml", "tune"],
        }, hook["name"]
        assert excluded["key"] == "kubernetes.io/metadata.name"
        assert excluded["operator"] == "NotIn"
        assert set(excluded["values"]) == {
            "kube-system",
            "kube-public",
            "kube-node-lease",
            "trialsync-system",
            "batch",
        }
        assert opt_out == {
            "key": "trialsync.io/injection",
            "operator": "NotIn",
            "values": ["disabled"],
        }


@pytest.mark.parametrize("namespace", ["trialsync-system", "kube-system", "batch"])
def test_watching_a_namespace_the_webhooks_leave_out_is_refused_saying_which(
    kube: Kube, namespace: str
) -> None:
    result = _helm(
        kube,
        "template", "trialsync", str(CHART), "-n", "trialsync-system",
        "--kube-version", KUBE_VERSION, "--set=webhook.excludeNamespaces={batch}",
        f"--set=operator.watchNamespaces={{ml,{namespace}}}",
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert f"operator.watchNamespaces lists {namespace}, whose pods never reach" in result.stderr
    assert "remove it from one of the two lists" in result.stderr


@dataclasses.dataclass(frozen=True)
class Release:
    """A release of the chart, and the ports its operator process will listen on."""

    name: str  # contains "trialsync": the chart's objects are named after it
    namespace: str
    watched: tuple[str, ...]
    health_port: int
    webhook_port: int

    def sets(self) -> list[str]:
        return [f"--set=operator.watchNamespaces={{{','.join(self.watched)}}}"]

    def post_render(self, script: Path) -> list[str]:
        return ["--post-renderer", str(script), "--post-renderer-args", str(self.webhook_port)]


def _release(kube: Kube, watched: tuple[str, ...]) -> Release:
    name = f"trialsync-{uuid.uuid4().hex[:6]}"
    namespace = kube.create_namespace(f"ts-{name[-6:]}")  # a short user name
    health, webhook = free_ports(2)
    return Release(name, namespace, watched, health, webhook)


def _post_renderer(tmp_path: Path) -> Path:
    script = tmp_path / "post-render"
    script.write_text(f"#!{sys.executable}\n{POST_RENDERER}")
    script.chmod(0o755)
    return script


def _start(kube: Kube, release: Release, workdir: Path, *extra: str) -> Operator:
    """The operator of ``release``, as its ServiceAccount, with the chart's names."""
    account = f"system:serviceaccount:{release.namespace}:{release.name}-operator"
    groups = [
        "system:serviceaccounts",
        f"system:serviceaccounts:{release.namespace}",
        "system:authenticated",
    ]
    return start_operator(
        kube,
        workdir / release.name,
        extra_args=[
            "--lease-name", f"{release.name}-operator",
            "--tls-secret", f"{release.name}-webhook-tls",
            "--service", f"{release.name}-webhook",
            *(a for ns in release.watched for a in ("--watch-namespace", ns)),
            *extra,
        ],
        webhook_name=release.name,
        install_webhooks=False,
        kubeconfig=kube.user_kubeconfig(account, groups),
        namespace=release.namespace,
        ports=(release.health_port, release.webhook_port),
    )  # fmt: skip


def _configs(kube: Kube, release: Release) -> list[dict[str, Any]]:
    return [
        json.loads(
            kube.kubectl("get", kind, release.name, "-o", "json", "--show-managed-fields").stdout
        )
        for kind in CONFIG_KINDS
    ]


def _ca_bundles(kube: Kube, release: Release) -> list[str]:
    return [
        hook["clientConfig"].get("caBundle", "")
        for config in _configs(kube, release)
        for hook in config["webhooks"]
    ]


def _wait_for_ca_bundles(kube: Kube, release: Release) -> list[str]:
    def written() -> list[str] | None:
        bundles = _ca_bundles(kube, release)
        return bundles if all(bundles) else None

    return wait_for(written, 30, what="the caBundles the operator writes")


def _ready(kube: Kube, namespace: str, name: str) -> None:
    def condition() -> bool:
        out = kube.kubectl("get", "syncconfig", name, "-n", namespace, "-o", "json").stdout
        conditions = (json.loads(out).get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    wait_for(condition, 30, what=f"SyncConfig {namespace}/{name} Ready")


def _pod(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return json.loads(kube.kubectl("get", "pod", name, "-n", namespace, "-o", "json").stdout)


def _ca_bundle_managers(config: dict[str, Any]) -> set[str]:
    """The field managers that own a caBundle of ``config``."""
    owners = set()
    for entry in config["metadata"].get("managedFields") or []:
        webhooks = (entry.get("fieldsV1") or {}).get("f:webhooks") or {}
        for fields in webhooks.values():
            if "f:caBundle" in ((fields.get("f:clientConfig")) or {}):
                owners.add(entry["manager"])
    return owners


class PodCreator(threading.Thread):
    """Creates opted-in pods in ``namespace`` one after another until stopped; records
    each refusal with the apiserver's message."""

    def __init__(self, kube: Kube, namespace: str, config: str) -> None:
        super().__init__(daemon=True)
        self.api = kube.api_client()
        self.namespace, self.config = namespace, config
        self.created: list[str] = []
        self.refused: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        pods = kubernetes.client.CoreV1Api(self.api)
        while not self.stopping.is_set():
            name = f"gitops-{len(self.created) + len(self.refused)}"
            try:
                pods.create_namespaced_pod(self.namespace, opted_in_pod(name, self.config))
                self.created.append(name)
            except kubernetes.client.ApiException as exc:
                self.refused.append(f"{name}: {exc.status} {exc.body}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)
        self.api.close()


@pytest.fixture
def local(kube: Kube) -> Kube:
    if not kube.local:
        external_cluster_only("the operator process serves webhooks on this host's 127.0.0.1")
    return kube


def test_server_side_applies_of_the_rendered_chart_keep_the_ca_bundle_and_refuse_no_pod(
    local: Kube, tmp_path: Path
) -> None:
    kube = local
    workload = kube.create_namespace(f"gitops-{uuid.uuid4().hex[:8]}")
    release = _release(kube, (workload,))
    # What Argo CD applies: `helm template` with the CRDs, no cluster lookups.
    rendered = _helm(
        kube,
        "template", release.name, str(CHART), "-n", release.namespace, "--include-crds",
        "--kube-version", KUBE_VERSION, *release.sets(),
        *release.post_render(_post_renderer(tmp_path)),
    ).stdout  # fmt: skip
    assert "kind: CustomResourceDefinition" in rendered
    assert "caBundle" not in rendered

    def sync(*flags: str) -> None:
        kube.kubectl(
            "apply", "--server-side", f"--field-manager={ARGO}", *flags, "-f", "-",
            input=rendered,
        )  # fmt: skip

    sync()
    operator = _start(kube, release, tmp_path)
    creator: PodCreator | None = None
    try:
        written = _wait_for_ca_bundles(kube, release)
        assert len(set(written)) == 1
        kube.kubectl("apply", "-n", workload, "-f", "-", input=json.dumps(syncconfig("exp", {})))
        _ready(kube, workload, "exp")
        creator = PodCreator(kube, workload, "exp")
        creator.start()
        seen = []
        # Two syncs, then one as Argo CD makes them (--force-conflicts), while pods come.
        for flags in ((), (), ("--force-conflicts",)):
            time.sleep(1.0)
            sync(*flags)
            seen.append(_ca_bundles(kube, release))
        time.sleep(1.0)
        creator.stop()
        assert creator.refused == [], creator.refused[:3]
        assert len(creator.created) >= 10, "too few pods were created to show anything"
        assert seen == [written] * 3, "a sync changed or emptied a caBundle"
        for config in _configs(kube, release):
            assert _ca_bundle_managers(config) == {"trialsync-operator"}, config["kind"]
        for name in creator.created:
            assert len(sidecars(_pod(kube, workload, name))) == 1, name

        # The loop above would have seen it: an apply that does carry a caBundle (here an
        # empty one) takes the field, and the next opted-in pod is refused.
        docs = [d for d in yaml.safe_load_all(rendered) if d]
        for hook in _webhooks(docs):
            hook["clientConfig"]["caBundle"] = ""
        rendered = yaml.safe_dump_all(docs)
        sync("--force-conflicts")
        assert _ca_bundles(kube, release) == ["", ""]
        refused = kube.kubectl(
            "apply", "-n", workload, "-f", "-",
            input=json.dumps(opted_in_pod("after-empty", "exp")), check=False,
        )  # fmt: skip
        assert refused.returncode != 0
        assert "pods.trialsync.io" in refused.stderr
    finally:
        if creator is not None and creator.is_alive():
            creator.stop()
        operator.stop()
        for kind in CONFIG_KINDS:
            kube.kubectl("delete", kind, release.name, "--ignore-not-found")


@pytest.fixture
def post_renderer(tmp_path: Path) -> Path:
    return _post_renderer(tmp_path)


@pytest.fixture
def two_releases(local: Kube) -> Iterator[tuple[Release, Release]]:
    kube = local
    a_ns, b_ns = (
        kube.create_namespace(f"{x}-{uuid.uuid4().hex[:8]}") for x in ("team-a", "team-b")
    )
    releases = (_release(kube, (a_ns,)), _release(kube, (b_ns,)))
    yield releases
    for release in releases:
        _helm(kube, "uninstall", release.name, "-n", release.namespace, check=False)


def test_two_releases_watching_disjoint_namespaces_each_serve_only_their_own(
    local: Kube, two_releases: tuple[Release, Release], post_renderer: Path, tmp_path: Path
) -> None:
    kube = local
    a, b = two_releases
    for release in (a, b):
        _helm(
            kube, "install", release.name, str(CHART), "-n", release.namespace,
            *release.sets(), *release.post_render(post_renderer),
        )  # fmt: skip
    # Each operator injects its own image, so a pod says which release reviewed it.
    images = {a.name: "example.test/team-a/sidecar:1", b.name: "example.test/team-b/sidecar:1"}
    operators = [_start(kube, r, tmp_path, "--sidecar-image", images[r.name]) for r in (a, b)]
    try:
        for release in (a, b):
            _wait_for_ca_bundles(kube, release)
        unwatched = kube.create_namespace(f"nobody-{uuid.uuid4().hex[:8]}")
        for namespace in (*a.watched, *b.watched, unwatched):
            kube.kubectl(
                "apply", "-n", namespace, "-f", "-", input=json.dumps(syncconfig("exp", {}))
            )
        for release in (a, b):
            _ready(kube, release.watched[0], "exp")
        for release in (a, b):
            [namespace] = release.watched
            kube.kubectl(
                "apply", "-n", namespace, "-f", "-", input=json.dumps(opted_in_pod("p", "exp"))
            )
            [sidecar] = sidecars(_pod(kube, namespace, "p"))
            assert sidecar["image"] == images[release.name], namespace
        # Neither release reviews a namespace it does not watch: the pod is admitted as is.
        kube.kubectl(
            "apply", "-n", unwatched, "-f", "-", input=json.dumps(opted_in_pod("p", "exp"))
        )
        assert sidecars(_pod(kube, unwatched, "p")) == []

        # A client-side `helm upgrade` that changes the configurations keeps the caBundle.
        before = _ca_bundles(kube, a)
        _helm(
            kube, "upgrade", a.name, str(CHART), "-n", a.namespace, *a.sets(),
            "--set=webhook.timeoutSeconds=4", *a.post_render(post_renderer),
        )  # fmt: skip
        configs = _configs(kube, a)
        assert [h["timeoutSeconds"] for c in configs for h in c["webhooks"]] == [4, 4]
        assert _ca_bundles(kube, a) == before
        # It renders the live caBundle, so an upgrade from a release whose stored manifest
        # carried another (or none) leaves the field as the operator wrote it.
        manifest = kube.helm("get", "manifest", a.name, "-n", a.namespace).stdout
        assert all(f"caBundle: {bundle}" in manifest for bundle in before), before
        [namespace] = a.watched
        kube.kubectl(
            "apply", "-n", namespace, "-f", "-", input=json.dumps(opted_in_pod("q", "exp"))
        )
        assert len(sidecars(_pod(kube, namespace, "q"))) == 1
    finally:
        for operator in operators:
            operator.stop()
