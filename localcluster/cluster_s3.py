"""A local S3 server (SeaweedFS on the host's loopback) served to the cluster's pods."""

from __future__ import annotations

import json
from dataclasses import dataclass

from localcluster.harness import Cluster
from localcluster.object_stores import S3Server


@dataclass(frozen=True)
class ClusterS3:
    """The session's SeaweedFS, served to pods at ``(host, port)``.

    It runs on the host's loopback (the ``seaweedfs`` fixture; tests read buckets through
    ``server.client()``); a forwarder listening on the node's address inside the cluster's
    namespace (or on TRIALSYNC_CLUSTER_HOST_IP for kind) carries pods' connections to it.
    Pods address it through a Service, so DNS and kube-proxy are on the path too.
    """

    server: S3Server
    host: str
    port: int

    #: The Service port pods connect to.
    SERVICE_PORT = 8333
    CREDENTIALS_SECRET = "s3-credentials"

    def install(
        self, cluster: Cluster, namespace: str, name: str = "s3", ready: bool = True
    ) -> str:
        """Create Service ``name`` (and the credentials Secret) in ``namespace``; return the
        endpoint URL pods use. ``ready=False`` leaves the Service without endpoints (its
        connections are refused) until :meth:`open` is called."""
        cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": self.CREDENTIALS_SECRET},
                "stringData": {
                    "AWS_ACCESS_KEY_ID": self.server.access_key,
                    "AWS_SECRET_ACCESS_KEY": self.server.secret_key,
                },
            },
            namespace,
        )
        cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name},
                "spec": {
                    "ports": [{"name": "s3", "port": self.SERVICE_PORT, "targetPort": self.port}]
                },
            },
            namespace,
        )
        if ready:
            self.open(cluster, namespace, name)
        return f"http://{name}.{namespace}.svc:{self.SERVICE_PORT}"

    def open(self, cluster: Cluster, namespace: str, name: str = "s3") -> None:
        """Give Service ``name`` its endpoint: the forwarder in front of SeaweedFS."""
        cluster.apply(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{name}-seaweedfs",
                    "labels": {
                        "kubernetes.io/service-name": name,
                        "endpointslice.kubernetes.io/managed-by": "tests.trialsync.io",
                    },
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": [self.host], "conditions": {"ready": True}}],
                "ports": [{"name": "s3", "port": self.port, "protocol": "TCP"}],
            },
            namespace,
        )

    def storage_options(self, endpoint_url: str) -> str:
        """TRIALSYNC_STORAGE_OPTIONS for a pod that reaches S3 at ``endpoint_url``."""
        return json.dumps(
            {
                "endpoint_url": endpoint_url,
                "client_kwargs": {"region_name": self.server.region},
                "config_kwargs": {"s3": {"addressing_style": "path"}},
            }
        )

    def credentials(self) -> dict[str, tuple[str, str]]:
        """The sidecar's secret environment: variable -> (Secret, key)."""
        return {
            k: (self.CREDENTIALS_SECRET, k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        }
