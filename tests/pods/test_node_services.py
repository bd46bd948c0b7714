"""What pods get from the cluster: DNS, Services that route, and an apiserver they reach
with their service account's token."""

from __future__ import annotations

import json

import pytest

from localcluster.harness import Cluster
from tests.pods.trial_pods import RESTRICTED
from tests.support.requirements import unavailable

pytestmark = pytest.mark.timeout(300)

#: Run in the client pod; prints what it found as one JSON object. A new Service routes
#: once kube-proxy synced its endpoints (a second or so after the backend is Ready), so
#: each step is retried for a while, as any client of a just-created Service must.
CLIENT = """
import json, socket, ssl, time, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
ns = open(sa + "/namespace").read()
def retried(step):
    deadline = time.monotonic() + 30
    while True:
        try:
            return step()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
def get(url, **kwargs):
    with urllib.request.urlopen(url, timeout=10, **kwargs) as r:
        return r.read()
out = {
    "web_ip": retried(lambda: socket.gethostbyname("web")),
    "web_fqdn_ip": retried(lambda: socket.gethostbyname(f"web.{ns}.svc.cluster.local")),
    "api_ip": retried(lambda: socket.gethostbyname("kubernetes.default.svc")),
    "web_body": retried(lambda: get("http://web/hello.txt")).decode(),
}
ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
req = urllib.request.Request(
    f"https://kubernetes.default.svc/api/v1/namespaces/{ns}/pods",
    headers={"Authorization": "Bearer " + open(sa + "/token").read()},
)
pods = json.loads(retried(lambda: get(req, context=ctx)))
out["pods"] = sorted(p["metadata"]["name"] for p in pods["items"])
print(json.dumps(out))
"""

#: Serves one file from a directory it writes to its own emptyDir.
SERVER = """
import http.server, os, functools
os.makedirs("/srv/www", exist_ok=True)
open("/srv/www/hello.txt", "w").write("hello from web")
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory="/srv/www")
http.server.ThreadingHTTPServer(("", 8080), handler).serve_forever()
"""


def _container(name: str, image: str, script: str) -> dict[str, object]:
    return {
        "name": name,
        "image": image,
        "command": ["python3", "-c", script],
        "securityContext": {**RESTRICTED, "runAsUser": 65532, "readOnlyRootFilesystem": True},
        "volumeMounts": [{"name": "srv", "mountPath": "/srv"}],
    }


def test_pods_resolve_services_reach_them_and_call_the_apiserver(
    cluster: Cluster, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    image = cluster.images.sidecar
    srv = [{"name": "srv", "emptyDir": {}}]
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"containers": [_container("web", image, SERVER)], "volumes": srv},
        },
        ns,
    )
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
        ns,
    )
    # The default service account may list pods here, and nothing else.
    cluster.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "list-pods"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
        },
        ns,
    )
    cluster.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "list-pods"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "list-pods",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}],
        },
        ns,
    )
    cluster.wait_for("pod", "web", ns, "condition=Ready")
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "client"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [_container("client", image, CLIENT)],
                "volumes": srv,
            },
        },
        ns,
    )
    finished = cluster.poll_pod(
        "client", ns, lambda p: p["status"].get("phase") in ("Succeeded", "Failed"), "finished"
    )
    output = cluster.logs("client", ns, "client")
    assert finished["status"]["phase"] == "Succeeded", output

    found = json.loads(output)
    service_ip = cluster.get("service", "web", ns)["spec"]["clusterIP"]
    assert found["web_ip"] == service_ip  # the search path of the pod's namespace
    assert found["web_fqdn_ip"] == service_ip
    assert found["api_ip"] == cluster.get("service", "kubernetes", "default")["spec"]["clusterIP"]
    assert found["web_body"] == "hello from web"  # kube-proxy routed the ClusterIP
    assert found["pods"] == ["client", "web"]  # the token authenticated; RBAC allowed


def test_host_clients_reach_the_apiserver(cluster: Cluster) -> None:
    """kubectl (every other test), the Python client and helm, from the host."""
    from kubernetes import client

    with cluster.kube.api_client() as api:
        nodes = client.CoreV1Api(api).list_node().items
    (node,) = nodes
    assert node.status is not None
    assert node.status.node_info is not None
    assert node.status.node_info.kubelet_version == "v1.37.2"
    if cluster.kube.helm_path is None:
        unavailable("no helm in TRIALSYNC_TOOLS_BIN or on PATH")
    listed = cluster.kube.helm("list", "--all-namespaces", "--output", "json")
    assert json.loads(listed.stdout) == []
