"""What pods get from the cluster: DNS, Services that route, and an apiserver they reach
with their service account's token."""

from __future__ import annotations

import json

import pytest

from tests.cluster.trial_pods import RESTRICTED
from tests.support.cluster.harness import Cluster

pytestmark = pytest.mark.timeout(300)

#: Run in the client pod; prints what it found as one JSON object.
CLIENT = """
import json, socket, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
ns = open(sa + "/namespace").read()
out = {
    "web_ip": socket.gethostbyname("web"),
    "web_fqdn_ip": socket.gethostbyname(f"web.{ns}.svc.cluster.local"),
    "api_ip": socket.gethostbyname("kubernetes.default.svc"),
}
with urllib.request.urlopen("http://web/hello.txt", timeout=10) as r:
    out["web_body"] = r.read().decode()
ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
req = urllib.request.Request(
    f"https://kubernetes.default.svc/api/v1/namespaces/{ns}/pods",
    headers={"Authorization": "Bearer " + open(sa + "/token").read()},
)
with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
    out["pods"] = sorted(p["metadata"]["name"] for p in json.load(r)["items"])
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
    cluster.wait_for("pod", "client", ns, "jsonpath={.status.phase}=Succeeded")

    found = json.loads(cluster.logs("client", ns, "client"))
    service_ip = cluster.get("service", "web", ns)["spec"]["clusterIP"]
    assert found["web_ip"] == service_ip  # the search path of the pod's namespace
    assert found["web_fqdn_ip"] == service_ip
    assert found["api_ip"] == cluster.get("service", "kubernetes", "default")["spec"]["clusterIP"]
    assert found["web_body"] == "hello from web"  # kube-proxy routed the ClusterIP
    assert found["pods"] == ["client", "web"]  # the token authenticated; RBAC allowed
