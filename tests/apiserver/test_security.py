"""Multi-tenant safety, through the apiserver: the chart installed, each identity's own RBAC.

A restricted user (may write SyncConfigs, may neither read Secrets nor create pods) gains
nothing through trialsync: a SyncConfig may name only a Secret its author may get, and
only a sidecar image the cluster admin allows. A stolen operator token is contained: the
operator's ServiceAccount writes only its own Secrets and ClusterIP head-node Services,
never in a system namespace. Users and the ServiceAccount are impersonated
(``kubectl --as``), so the apiserver's RBAC and the chart's ValidatingAdmissionPolicies
decide, as they would for a real client. The webhooks are installed with
``failurePolicy=Ignore`` and, but for the last test, no operator behind them: what is
refused here is refused by the apiserver alone, even while the operator is down.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster.control_plane import REPO_ROOT, Kube
from tests.support.operator_process import delete_webhooks, point_webhooks_at, start_operator
from tests.support.pods import opted_in_pod, syncconfig
from tests.support.requirements import external_cluster_only, unavailable
from tests.support.sidecar_process import wait_for
from trialsync_operator import names
from trialsync_operator.syncconfig import image_not_allowed

pytestmark = pytest.mark.k8s
CHART = REPO_ROOT / "charts" / "trialsync"
#: A release of its own (not test_chart.py's), so its objects' names are its own too.
RELEASE = "tsec"
FULLNAME = "tsec-trialsync"
RELEASE_NS = "tsec-system"
OWN_IMAGE = "docker.io/trialsync/sidecar:0.1.0"  # the chart's, appVersion 0.1.0
ALLOWED = ("registry.example.com/team/*",)
SECRET = "bucket-creds"
OPERATOR = f"system:serviceaccount:{RELEASE_NS}:{FULLNAME}-operator"
OPERATOR_GROUPS = ("system:serviceaccounts", f"system:serviceaccounts:{RELEASE_NS}")
SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")


@dataclasses.dataclass(frozen=True)
class Who:
    user: str
    groups: tuple[str, ...] = ()

    def kubectl(self, kube: Kube, *args: str, input: str | None = None) -> Any:
        flags = [f"--as={self.user}", *(f"--as-group={g}" for g in self.groups)]
        return kube.kubectl(*args, *flags, input=input, check=False)

    def apply(self, kube: Kube, namespace: str, obj: dict[str, Any]) -> Any:
        return self.kubectl(kube, "create", "-n", namespace, "-f", "-", input=json.dumps(obj))


ALICE = Who("alice")  # may write SyncConfigs; nothing on Secrets or pods
BOB = Who("bob")  # the same, and may get the Secret bucket-creds
OPERATOR_SA = Who(OPERATOR, (*OPERATOR_GROUPS, "system:authenticated"))


def _helm(kube: Kube, *args: str) -> None:
    if kube.helm_path is None:
        unavailable("no helm: run `make tools`")
    kube.helm(*args)


def _install(kube: Kube, allowed: Sequence[str]) -> None:
    _helm(
        kube,
        "upgrade", "--install", RELEASE, str(CHART), "-n", RELEASE_NS, "--create-namespace",
        "--set=webhook.failurePolicy=Ignore",
        f"--set-json=sidecar.allowedImages={json.dumps(list(allowed))}",
    )  # fmt: skip


@pytest.fixture(scope="module")
def tenant(kube: Kube) -> Iterator[str]:
    """The chart installed, and a tenant namespace with a Secret, alice's and bob's Roles.
    Its operator does not run: on a cluster with a node (kind) it would make the webhook
    certificate Secret that these tests create as its ServiceAccount."""
    _install(kube, ALLOWED)
    kube.kubectl("scale", "deployment", f"{FULLNAME}-operator", "-n", RELEASE_NS, "--replicas=0")
    kube.kubectl(
        "wait", "--for=delete", "pod", "-n", RELEASE_NS, "--all", "--timeout=60s", check=False
    )
    kube.kubectl(
        "delete", "secret", f"{FULLNAME}-webhook-tls", "-n", RELEASE_NS, "--ignore-not-found"
    )
    ns = kube.create_namespace(f"tenant-{uuid.uuid4().hex[:8]}")
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET},
        "stringData": {"AWS_SECRET_ACCESS_KEY": "not-for-alice"},
    }
    author = {
        "apiGroups": ["trialsync.io"],
        "resources": ["syncconfigs"],
        "verbs": ["get", "list", "create", "update", "patch"],
    }
    reader = {
        "apiGroups": [""],
        "resources": ["secrets"],
        "resourceNames": [SECRET],
        "verbs": ["get"],
    }
    objects: list[dict[str, Any]] = [secret]
    for name, rules, users in (
        ("syncconfig-author", [author], ["alice", "bob"]),
        ("bucket-creds-reader", [reader], ["bob"]),
    ):
        objects.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": name},
                "rules": rules,
            }
        )
        objects.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": u}
                    for u in users
                ],
            }
        )
    for obj in objects:
        kube.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(obj))
    yield ns
    kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    kube.helm("uninstall", RELEASE, "-n", RELEASE_NS, check=False)


def _can(kube: Kube, who: Who, *args: str) -> str:
    return str(who.kubectl(kube, "auth", "can-i", *args).stdout.strip())


def _refused_by(result: Any, policy: str) -> str:
    """The refusal's message, asserting it is the chart's policy (not RBAC) that refused."""
    assert result.returncode != 0, result.stdout
    assert f"ValidatingAdmissionPolicy '{FULLNAME}-{policy}'" in result.stderr, result.stderr
    return str(result.stderr)


def _with_secret(name: str) -> dict[str, Any]:
    return syncconfig(
        name, {"uploadDir": "s3://bucket/exp", "credentials": {"secretRef": {"name": SECRET}}}
    )


def test_the_restricted_user_may_neither_read_secrets_nor_create_pods(
    kube: Kube, tenant: str
) -> None:
    # The premise of what follows: alice's RBAC alone gives her neither.
    assert _can(kube, ALICE, "get", f"secret/{SECRET}", "-n", tenant) == "no"
    assert _can(kube, ALICE, "create", "pods", "-n", tenant) == "no"
    assert _can(kube, ALICE, "create", "syncconfigs.trialsync.io", "-n", tenant) == "yes"
    assert _can(kube, BOB, "get", f"secret/{SECRET}", "-n", tenant) == "yes"


def test_a_syncconfig_may_name_only_a_secret_its_author_may_get(kube: Kube, tenant: str) -> None:
    message = _refused_by(ALICE.apply(kube, tenant, _with_secret("alices")), "syncconfig-secrets")
    assert (
        f"spec.credentials.secretRef names the Secret {tenant}/{SECRET}, which alice may not get"
        in message
    )
    assert "Ask the Secret's owner for get on it" in message
    # Not a refusal of everything alice writes: without a Secret, or from bob, it passes.
    plain = syncconfig("alices", {"uploadDir": "s3://bucket/exp"})
    assert ALICE.apply(kube, tenant, plain).returncode == 0
    created = BOB.apply(kube, tenant, _with_secret("bobs"))
    assert created.returncode == 0, created.stderr


def test_editing_the_spec_of_a_syncconfig_that_hands_out_a_secret_needs_that_secret_too(
    kube: Kube, tenant: str
) -> None:
    assert BOB.apply(kube, tenant, _with_secret("shared")).returncode == 0
    # Pointing bob's credentials at alice's bucket would hand her their use: refused.
    redirect = {"spec": {"uploadDir": "s3://alices-bucket/exp"}}
    edited = ALICE.kubectl(
        kube,
        "patch",
        "syncconfig",
        "shared",
        "-n",
        tenant,
        "--type=merge",
        "-p",
        json.dumps(redirect),
    )
    _refused_by(edited, "syncconfig-secrets")
    # Naming the Secret in her own SyncConfig after the fact is refused the same way.
    named = {"spec": {"credentials": {"secretRef": {"name": SECRET}}}}
    assert ALICE.apply(kube, tenant, syncconfig("later", {})).returncode == 0
    _refused_by(
        ALICE.kubectl(
            kube,
            "patch",
            "syncconfig",
            "later",
            "-n",
            tenant,
            "--type=merge",
            "-p",
            json.dumps(named),
        ),
        "syncconfig-secrets",
    )
    # A write that leaves the spec alone (labels; the operator's status and finalizers) passes.
    labelled = ALICE.kubectl(kube, "label", "syncconfig", "shared", "-n", tenant, "team=ml")
    assert labelled.returncode == 0, labelled.stderr


@pytest.mark.parametrize(
    "image",
    [
        OWN_IMAGE,
        "registry.example.com/team/sidecar:2",
        "registry.example.com/team/nested/sidecar@sha256:" + "0" * 64,
    ],
)
def test_the_charts_own_image_and_an_allowed_prefix_are_admitted(
    kube: Kube, tenant: str, image: str
) -> None:
    name = f"img-{uuid.uuid4().hex[:8]}"
    created = ALICE.apply(kube, tenant, syncconfig(name, {"sidecar": {"image": image}}))
    assert created.returncode == 0, created.stderr


@pytest.mark.parametrize(
    "image",
    ["evil.example.com/miner:1", "registry.example.com/teams/sidecar:1", OWN_IMAGE + "-rc1"],
)
def test_an_image_the_cluster_admin_did_not_allow_is_refused_by_the_apiserver(
    kube: Kube, tenant: str, image: str
) -> None:
    name = f"img-{uuid.uuid4().hex[:8]}"
    created = ALICE.apply(kube, tenant, syncconfig(name, {"sidecar": {"image": image}}))
    message = _refused_by(created, "syncconfig-images")
    # The operator's own words (its view refuses the same image the same way).
    assert image_not_allowed(image, (OWN_IMAGE, *ALLOWED)) in message
    # Nor can an admitted SyncConfig be switched to it.
    assert ALICE.apply(kube, tenant, syncconfig(name, {})).returncode == 0
    patch = json.dumps({"spec": {"sidecar": {"image": image}}})
    switched = ALICE.kubectl(
        kube, "patch", "syncconfig", name, "-n", tenant, "--type=merge", "-p", patch
    )
    _refused_by(switched, "syncconfig-images")


def _secret(name: str, type_: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": type_,
        "stringData": data or {"token": "x"},
    }


def _service(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": "x"}, "ports": [{"port": 80}], **spec},
    }


BOOTSTRAP_TOKEN = _secret(
    "bootstrap-token-abcdef",
    "bootstrap.kubernetes.io/token",
    **{
        "token-id": "abcdef",
        "token-secret": "0123456789abcdef",
        "usage-bootstrap-authentication": "true",
    },
)


def _contained(tenant: str) -> list[tuple[str, str, dict[str, Any], str]]:
    """(what, namespace, object, the refusal's words) the operator's token may not create."""
    head = "trialsync-head-x-12345678"
    return [
        *[
            (
                f"a head-node Secret in {ns}",
                ns,
                _secret(head, "trialsync.io/head-node"),
                "writes no Secret in",
            )
            for ns in SYSTEM_NAMESPACES
        ],
        ("a bootstrap token", "kube-system", BOOTSTRAP_TOKEN, "writes no Secret in kube-system"),
        ("an Opaque Secret", tenant, _secret(head, "Opaque"), "only head-node Secrets"),
        (
            "a service-account token",
            tenant,
            {
                **_secret(head, "kubernetes.io/service-account-token"),
                "metadata": {
                    "name": head,
                    "annotations": {"kubernetes.io/service-account.name": "default"},
                },
            },
            "only head-node Secrets",
        ),
        (
            "a head-node type under another name",
            tenant,
            _secret("app-config", "trialsync.io/head-node"),
            "only head-node Secrets",
        ),
        (
            "another Secret in its own namespace",
            RELEASE_NS,
            _secret("other", "kubernetes.io/tls", **{"tls.crt": "", "tls.key": ""}),
            "only its webhook certificate",
        ),
        (
            "an Opaque Secret in its own namespace",
            RELEASE_NS,
            _secret(f"{FULLNAME}-webhook-tls", "Opaque"),
            "only its webhook certificate",
        ),
        *[
            (f"a Service in {ns}", ns, _service("trialsync-head-x"), "manages no Service in")
            for ns in (*SYSTEM_NAMESPACES, RELEASE_NS)
        ],
        (
            "a NodePort Service",
            tenant,
            _service("trialsync-head-x", type="NodePort"),
            "of type ClusterIP, not NodePort",
        ),
        (
            "a LoadBalancer Service",
            tenant,
            _service("trialsync-head-x", type="LoadBalancer"),
            "of type ClusterIP, not LoadBalancer",
        ),
        (
            "an ExternalName Service",
            tenant,
            {
                **_service("trialsync-head-x", type="ExternalName", externalName="example.com"),
                "spec": {"type": "ExternalName", "externalName": "example.com"},
            },
            "of type ClusterIP, not ExternalName",
        ),
        (
            "a Service with externalIPs",
            tenant,
            _service("trialsync-head-x", externalIPs=["203.0.113.7"]),
            "has no externalIPs",
        ),
        ("a Service not its own", tenant, _service("kube-dns"), "only head-node Services"),
    ]


def test_a_stolen_operator_token_may_not_create_what_the_operator_never_does(
    kube: Kube, tenant: str
) -> None:
    refusals = []
    for what, ns, obj, words in _contained(tenant):
        # Its RBAC alone would allow it: the policy is what refuses.
        kind = obj["kind"].lower() + "s"
        assert _can(kube, OPERATOR_SA, "create", kind, "-n", ns) == "yes", what
        result = OPERATOR_SA.apply(kube, ns, obj)
        if (
            result.returncode == 0
            or "ValidatingAdmissionPolicy" not in result.stderr
            or words not in result.stderr
        ):
            refusals.append(f"{what}: {result.returncode} {result.stderr.strip()}")
    assert refusals == [], "\n".join(refusals)


def test_the_operator_token_may_still_do_its_work_and_no_more(kube: Kube, tenant: str) -> None:
    head = names.head_service_name("job")
    secret = OPERATOR_SA.apply(kube, tenant, _secret(f"{head}-12345678", "trialsync.io/head-node"))
    assert secret.returncode == 0, secret.stderr
    service = OPERATOR_SA.apply(kube, tenant, _service(head))
    assert service.returncode == 0, service.stderr
    # Its head Service's patches pass; one that would expose it does not.
    labelled = OPERATOR_SA.kubectl(kube, "label", "service", head, "-n", tenant, "trialsync.io/x=y")
    assert labelled.returncode == 0, labelled.stderr
    for patch, words in (
        ({"spec": {"type": "NodePort"}}, "of type ClusterIP, not NodePort"),
        ({"spec": {"type": "LoadBalancer"}}, "of type ClusterIP, not LoadBalancer"),
        ({"spec": {"externalIPs": ["203.0.113.7"]}}, "has no externalIPs"),
    ):
        patched = OPERATOR_SA.kubectl(
            kube, "patch", "service", head, "-n", tenant, "--type=merge", "-p", json.dumps(patch)
        )
        assert words in _refused_by(patched, "operator-services")
    # It deletes its own Services, and no other (kube-system's included).
    kube.kubectl("apply", "-n", tenant, "-f", "-", input=json.dumps(_service("app")))
    kube.kubectl("apply", "-n", "kube-system", "-f", "-", input=json.dumps(_service("dns-test")))
    for ns, name in ((tenant, "app"), ("kube-system", "dns-test")):
        deleted = OPERATOR_SA.kubectl(kube, "delete", "service", name, "-n", ns)
        _refused_by(deleted, "operator-services")
    kube.kubectl("delete", "service", "dns-test", "-n", "kube-system")
    assert OPERATOR_SA.kubectl(kube, "delete", "service", head, "-n", tenant).returncode == 0
    # In its own namespace: its webhook certificate, created and updated.
    tls = _secret(f"{FULLNAME}-webhook-tls", "kubernetes.io/tls", **{"tls.crt": "", "tls.key": ""})
    created = OPERATOR_SA.apply(kube, RELEASE_NS, tls)
    assert created.returncode == 0, created.stderr
    current = json.loads(
        OPERATOR_SA.kubectl(
            kube, "get", "secret", tls["metadata"]["name"], "-n", RELEASE_NS, "-o", "json"
        ).stdout
    )
    current["metadata"].setdefault("annotations", {})["trialsync.io/rotated"] = "1"
    replaced = OPERATOR_SA.kubectl(
        kube, "replace", "-n", RELEASE_NS, "-f", "-", input=json.dumps(current)
    )
    assert replaced.returncode == 0, replaced.stderr
    kube.kubectl("delete", "secret", tls["metadata"]["name"], "-n", RELEASE_NS)

    # Whether a credentials Secret exists: a dry-run create of its name and the operator's
    # type passes the policy and writes nothing; of another type it is refused.
    def dry_run(type_: str) -> Any:
        body = json.dumps(_secret("app-config", type_))
        return OPERATOR_SA.kubectl(
            kube, "create", "-n", tenant, "--dry-run=server", "-f", "-", input=body
        )

    # A namespace's labels (the missed-injection scan's namespaceSelector check): get,
    # not list.
    assert OPERATOR_SA.kubectl(kube, "get", "namespace", tenant).returncode == 0
    assert OPERATOR_SA.kubectl(kube, "get", "namespaces").returncode != 0

    probe = dry_run("trialsync.io/head-node")
    assert probe.returncode == 0, probe.stderr
    assert kube.kubectl("get", "secret", "app-config", "-n", tenant, check=False).returncode != 0
    opaque = dry_run("Opaque")
    _refused_by(opaque, "operator-secrets")


def test_narrowing_the_allowlist_makes_the_operator_refuse_what_was_admitted(
    kube: Kube, tenant: str, tmp_path: Path
) -> None:
    """An image admitted while allowed stops running once the admin removes it: the
    operator's own view refuses it (Ready=False saying why, and every pod naming it)."""
    if not kube.local:
        external_cluster_only("the operator process serves webhooks on this host's 127.0.0.1")
    image = "registry.example.com/team/sidecar:3"
    assert (
        ALICE.apply(kube, tenant, syncconfig("team", {"sidecar": {"image": image}})).returncode == 0
    )
    _install(kube, ())  # the admin's upgrade: only the chart's own image
    try:
        operator = start_operator(
            kube,
            tmp_path,
            extra_args=[
                "--lease-name",
                f"{FULLNAME}-operator",
                "--tls-secret",
                f"{FULLNAME}-webhook-tls",
                "--service",
                f"{FULLNAME}-webhook",
            ],
            webhook_name=FULLNAME,
            install_webhooks=False,
            kubeconfig=kube.user_kubeconfig(OPERATOR, (*OPERATOR_GROUPS, "system:authenticated")),
            namespace=RELEASE_NS,
            allowed_images=(),  # as the chart now runs it
        )
        try:
            point_webhooks_at(kube, operator.webhook_port, name=FULLNAME)

            def ready() -> Any:
                got = json.loads(
                    kube.kubectl("get", "syncconfig", "team", "-n", tenant, "-o", "json").stdout
                )
                conditions = (got.get("status") or {}).get("conditions") or []
                return conditions[0] if conditions else None

            condition = wait_for(ready, 30, what="the Ready condition")
            expected = image_not_allowed(image, (OWN_IMAGE,))
            assert (condition["status"], condition["message"]) == ("False", expected)
            pod = kube.kubectl(
                "create",
                "-n",
                tenant,
                "-f",
                "-",
                input=json.dumps(opted_in_pod("trainer", "team")),
                check=False,
            )
            assert pod.returncode != 0
            assert f"SyncConfig {tenant}/team is invalid: {expected}" in pod.stderr
            # The policy refuses a new one at once, operator or not.
            again = ALICE.apply(kube, tenant, syncconfig("team2", {"sidecar": {"image": image}}))
            assert expected in _refused_by(again, "syncconfig-images")
        finally:
            operator.stop()
    finally:
        delete_webhooks(kube, FULLNAME)  # they point at the process, not the Service
        _install(kube, ALLOWED)


def test_the_policies_fail_closed_and_look_where_the_webhooks_do(kube: Kube) -> None:
    if kube.helm_path is None:
        unavailable("no helm: run `make tools`")
    out = kube.helm(
        "template", RELEASE, str(CHART), "-n", RELEASE_NS, "--kube-version", "1.37.2",
        "--set=operator.watchNamespaces={ml}", "--set=webhook.excludeNamespaces={batch}",
    ).stdout  # fmt: skip
    docs = [d for d in yaml.safe_load_all(out) if d]
    policies = {
        d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "ValidatingAdmissionPolicy"
    }
    bindings = {
        d["spec"]["policyName"]: d["spec"]
        for d in docs
        if d["kind"] == "ValidatingAdmissionPolicyBinding"
    }
    assert set(policies) == {
        f"{FULLNAME}-{p}"
        for p in (
            "syncconfig-secrets",
            "syncconfig-images",
            "operator-secrets",
            "operator-services",
        )
    }
    for name, spec in policies.items():
        assert spec["failurePolicy"] == "Fail", name
        assert bindings[name]["validationActions"] == ["Deny"], name
    [webhooks] = [d for d in docs if d["kind"] == "ValidatingWebhookConfiguration"]
    excluded = webhooks["webhooks"][0]["namespaceSelector"]["matchExpressions"]
    for kind in ("secrets", "images"):
        selector = policies[f"{FULLNAME}-syncconfig-{kind}"]["matchConstraints"][
            "namespaceSelector"
        ]
        assert selector["matchExpressions"] == [
            *excluded,
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["ml"]},
        ]
    # The operator's own policies look everywhere: kube-system above all.
    for kind in ("secrets", "services"):
        assert (
            "namespaceSelector" not in policies[f"{FULLNAME}-operator-{kind}"]["matchConstraints"]
        )
