"""Hypothesis strategies for SyncConfigs and pods: plausible, odd and hostile input.

Each strategy mixes values a user would write with wrong types, huge numbers, unicode,
missing fields and conflicting annotations, so the validation and mutation code meet
what a cluster can really send them.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from trialsync_operator import names

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
JUNK = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
NAMES = st.one_of(
    st.sampled_from(["exp", "local-exp", "exp.v2", "7days", "a" * 63]),
    st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,20}[a-z0-9])?", fullmatch=True),
)
URIS = st.one_of(
    st.sampled_from(
        [
            "s3://bucket/exp",
            "s3://bucket",
            "gs://my-bucket/x",
            "gcs://b.c/d",
            "hdfs://namenode:8020/exp",
            "file:///data/exp",
            "file://relative",
            "bucket/prefix",
            "s3://B/x",
            "s3://bucket//x",
            "nosuch://x/y",
            " s3://bucket",
            "s3://bucket/exp with space",
            "memory://x",
        ]
    ),
    st.text(max_size=40),
    st.builds(
        lambda s, p: f"{s}://{p}",
        st.from_regex(r"[a-z][a-z0-9+.-]{0,6}", fullmatch=True),
        st.text(max_size=20),
    ),
)


def _maybe(strategy: st.SearchStrategy[Any], odds: int = 12) -> st.SearchStrategy[Any]:
    """``strategy``, or junk one time in ``odds``: most specs stay valid enough to reach
    the code behind the first check."""
    return st.sampled_from([True] * (odds - 1) + [False]).flatmap(
        lambda good: strategy if good else JUNK
    )


SECONDS = st.sampled_from(["good"] * 8 + ["low", "high", "float"]).flatmap(
    lambda kind: {
        "good": st.integers(min_value=1, max_value=3600),
        "low": st.integers(min_value=-5, max_value=0),
        "high": st.integers(min_value=604800, max_value=2**63),
        "float": st.floats(allow_nan=True, allow_infinity=True),
    }[kind]
)
SPEC = st.fixed_dictionaries(
    {},
    optional={
        "uploadDir": _maybe(URIS),
        "syncer": _maybe(
            st.sampled_from(["auto", "none", "pkg.mod:Class", "bad syncer", "a:b", ""])
        ),
        "syncPeriod": _maybe(SECONDS),
        "syncTimeout": _maybe(SECONDS),
        "syncArtifacts": _maybe(st.booleans()),
        "syncOnCheckpoint": _maybe(st.booleans()),
        "storage": _maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "endpoint": _maybe(
                        st.sampled_from(["http://s3:8333", "minio:9000", "https://x"])
                    ),
                    "region": _maybe(st.text(max_size=10)),
                    "addressingStyle": _maybe(st.sampled_from(["auto", "path", "virtual", "dns"])),
                    "options": _maybe(
                        st.dictionaries(
                            st.sampled_from(["use_ssl", "secret", "x", "Key"]),
                            st.text(max_size=8),
                            max_size=3,
                        )
                    ),
                },
            )
        ),
        "credentials": _maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "secretRef": _maybe(st.fixed_dictionaries({"name": _maybe(NAMES)})),
                    "serviceAccount": _maybe(st.just({})),
                },
            )
        ),
        "sidecar": _maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "image": _maybe(
                        st.sampled_from(
                            ["me/sidecar:1", "", " x", "registry:5000/a/b@sha256:" + "0" * 64]
                        )
                    ),
                    "imagePullPolicy": _maybe(
                        st.sampled_from(["Always", "IfNotPresent", "Never", "Sometimes"])
                    ),
                    "resources": _maybe(
                        st.fixed_dictionaries(
                            {},
                            optional={
                                "requests": _maybe(
                                    st.dictionaries(
                                        st.sampled_from(["cpu", "memory", "gpu"]),
                                        st.sampled_from(["100m", "1", "2Gi", "lots", "1e3"]),
                                        max_size=2,
                                    )
                                ),
                                "limits": _maybe(
                                    st.dictionaries(
                                        st.sampled_from(["cpu", "memory"]),
                                        st.sampled_from(["50m", "4", "64Mi", "1Ei"]),
                                        max_size=2,
                                    )
                                ),
                            },
                        )
                    ),
                },
            )
        ),
        "checkpointPattern": _maybe(st.sampled_from(["checkpoint_[0-9]*", "ckpt-*", "a/b", ""])),
        "excludes": _maybe(st.lists(st.sampled_from(["*.tmp", "*/logs/*", "a,b", ""]), max_size=3)),
        "checkpointSettleSeconds": _maybe(SECONDS),
        "finalSyncTimeoutSeconds": _maybe(SECONDS),
        "mirrorDeletes": _maybe(st.booleans()),
    },
)


@st.composite
def syncconfigs(draw: st.DrawFn, namespace: str = "ml") -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {
            "name": draw(NAMES),
            "namespace": namespace,
            "uid": draw(st.uuids()).hex,
            "generation": draw(st.integers(min_value=1, max_value=2**40)),
        },
        "spec": draw(_maybe(SPEC, odds=20)),
    }


CONTAINER_NAMES = st.sampled_from(["trainer", "ray-head", "main", "autoscaler", "mesh-proxy"])


@st.composite
def containers(draw: st.DrawFn, volumes: list[str]) -> dict[str, Any]:
    container: dict[str, Any] = {"name": draw(CONTAINER_NAMES), "image": "example.com/trainer:1"}
    if volumes and draw(st.booleans()):
        container["volumeMounts"] = [
            {
                "name": draw(st.sampled_from(volumes)),
                "mountPath": draw(st.sampled_from(["/data", "/results", "/root/ray_results"])),
            }
        ]
    if draw(st.booleans()):
        container["securityContext"] = {
            "runAsUser": draw(_maybe(st.integers(min_value=0, max_value=2**31)))
        }
    return container


@st.composite
def pods(draw: st.DrawFn, config_names: list[str]) -> dict[str, Any]:
    volumes = draw(
        st.lists(
            st.sampled_from(["data", "results", "trialsync-trial", "cache"]),
            max_size=3,
            unique=True,
        )
    )
    annotations: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        annotations[names.CONFIG_ANNOTATION] = draw(
            st.one_of(st.sampled_from(config_names or ["exp"]), NAMES, st.text(max_size=10))
        )
    if draw(st.booleans()):
        role = draw(st.sampled_from(["worker", "head", "worker", "head", "driver", ""]))
        annotations[names.ROLE_ANNOTATION] = role
    where = draw(st.sampled_from(["path", "volume", "path", "volume", "path", "both", "none"]))
    if where in ("volume", "both"):
        annotations[names.VOLUME_ANNOTATION] = draw(
            st.one_of(st.sampled_from(volumes or ["data"]), st.text(max_size=8))
        )
    if where in ("path", "both"):
        annotations[names.MOUNT_PATH_ANNOTATION] = draw(
            st.sampled_from(
                ["/root/ray_results", "/data", "relative", "/", "/a/../b", "/x:y", "/results/"]
            )
        )
    unique_names = draw(st.lists(CONTAINER_NAMES, min_size=1, max_size=3, unique=True))
    spec: dict[str, Any] = {
        "containers": [{**draw(containers(volumes)), "name": name} for name in unique_names],
        "volumes": [{"name": v, "emptyDir": {}} for v in volumes],
    }
    if draw(st.booleans()):
        spec["initContainers"] = [{"name": "mesh-init", "image": "example.com/init:1"}]
    if draw(st.booleans()):
        spec["securityContext"] = {
            "runAsUser": draw(_maybe(st.integers(min_value=0, max_value=2**31))),
            "runAsGroup": draw(_maybe(st.integers(min_value=0, max_value=2**31))),
        }
    if draw(st.booleans()):
        spec["terminationGracePeriodSeconds"] = draw(st.integers(min_value=0, max_value=3600))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "trial-",
            "labels": {names.INJECT_LABEL: "true"},
            "annotations": annotations,
        },
        "spec": spec,
    }


VALID_SPEC = st.fixed_dictionaries(
    {},
    optional={
        "uploadDir": st.sampled_from(["s3://bucket/exp", "gs://my-bucket/x", "file:///data/exp"]),
        "syncPeriod": st.integers(min_value=1, max_value=604800),
        "syncTimeout": st.integers(min_value=1, max_value=604800),
        "syncArtifacts": st.booleans(),
        "syncOnCheckpoint": st.booleans(),
        "storage": st.fixed_dictionaries(
            {}, optional={"endpoint": st.just("http://s3:8333"), "region": st.just("eu-west-1")}
        ),
        "credentials": st.sampled_from([{"secretRef": {"name": "creds"}}, {"serviceAccount": {}}]),
        "sidecar": st.fixed_dictionaries(
            {},
            optional={
                "image": st.just("me/sidecar:1"),
                "resources": st.fixed_dictionaries(
                    {},
                    optional={
                        "requests": st.fixed_dictionaries(
                            {},
                            optional={
                                "cpu": st.sampled_from(["100m", "1"]),
                                "memory": st.sampled_from(["128Mi", "1Gi"]),
                            },
                        ),
                        "limits": st.fixed_dictionaries(
                            {},
                            optional={
                                "cpu": st.sampled_from(["2", "4"]),
                                "memory": st.sampled_from(["2Gi", "8Gi"]),
                            },
                        ),
                    },
                ),
            },
        ),
        "excludes": st.lists(st.sampled_from(["*.tmp", "*/logs/*"]), max_size=2),
        "finalSyncTimeoutSeconds": st.integers(min_value=1, max_value=120),
    },
)


@st.composite
def valid_syncconfigs(draw: st.DrawFn, name: str = "exp") -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": name, "namespace": "ml", "uid": "u", "generation": 1},
        "spec": draw(VALID_SPEC),
    }


@st.composite
def well_formed_pods(draw: st.DrawFn, config_name: str = "exp") -> dict[str, Any]:
    """Pods whose annotations are right, so each reaches the injection itself."""
    pod = draw(pods([config_name]))
    annotations = {names.CONFIG_ANNOTATION: config_name}
    annotations[names.ROLE_ANNOTATION] = draw(st.sampled_from(["worker", "head"]))
    volumes = [v["name"] for v in pod["spec"]["volumes"] if v["name"] != "trialsync-trial"]
    pod["spec"]["volumes"] = [{"name": v, "emptyDir": {}} for v in volumes]
    for container in pod["spec"]["containers"]:
        container["volumeMounts"] = [
            m for m in container.get("volumeMounts", []) if m["name"] in volumes
        ]
    if volumes and draw(st.booleans()):
        annotations[names.VOLUME_ANNOTATION] = draw(st.sampled_from(volumes))
    else:
        annotations[names.MOUNT_PATH_ANNOTATION] = draw(
            st.sampled_from(["/root/ray_results", "/results", "/home/ray/ray_results"])
        )
    pod["metadata"]["annotations"] = annotations
    return pod
