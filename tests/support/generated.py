"""Hypothesis strategies for SyncConfigs and pods: plausible, odd and hostile input.

``syncconfigs`` and ``pods`` are mostly what a user would write, valid and well formed, so
most examples get past the first check to the code behind it (the view's every field,
the whole injection); a minority are hostile: wrong types, huge numbers, unicode, missing
fields and conflicting annotations, so the validation and mutation code also meet what a
cluster can really send them. ``valid_syncconfigs`` and ``well_formed_pods`` are the
plausible part alone.
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
#: Junk that is not a string (None among it: as good as absent).
NOT_TEXT = JUNK.filter(lambda value: not isinstance(value, str))
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
            "abfs://container/exp",
            "webhdfs://namenode:9870/exp",
            "webhdfs://hdfs@namenode:9870/exp",
            "webhdfs://namenode/exp",
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
#: Any spec: each field plausible, out of range, of a wrong type or junk.
HOSTILE_SPEC = st.fixed_dictionaries(
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
        "keepCheckpoints": _maybe(st.sampled_from([1, 3, 0, -2, True, "2"])),
        "bandwidthLimit": _maybe(st.sampled_from(["50Mi", "0", "1.5G", "5", "fast", 3])),
    },
)


def _weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each ``weight`` times in ``sum(weights)``; the first is what
    a failing example shrinks towards."""
    indices = [i for i, (weight, _) in enumerate(choices) for _ in range(weight)]
    return st.sampled_from(indices).flatmap(lambda i: choices[i][1])


# -- valid SyncConfigs ---------------------------------------------------------------------

#: Upload dirs the default sidecar image serves (and this Python too, for the round trip).
UPLOAD_DIRS = st.sampled_from(
    [
        "s3://bucket/exp",
        "s3://bucket",
        "s3a://bucket/a/b",
        "gs://my-bucket/x",
        "gcs://b.c/d",
        "hdfs://namenode:8020/exp",
        "webhdfs://namenode:9870/exp",
    ]
)
#: A custom syncer's name, which needs an upload dir and a sidecar image that ships it.
CUSTOM_SYNCER = "my_pkg.syncers:CopySyncer"
SECRET_NAMES = st.sampled_from(["creds", "s3-creds", "store.keys", "a" * 63])
RESOURCES = st.fixed_dictionaries(
    {},
    optional={
        "requests": st.fixed_dictionaries(
            {},
            optional={
                "cpu": st.sampled_from(["50m", "100m", "1"]),
                "memory": st.sampled_from(["64Mi", "128Mi", "1Gi"]),
                "ephemeral-storage": st.sampled_from(["100Mi", "1Gi"]),
            },
        ),
        "limits": st.fixed_dictionaries(
            {},
            optional={
                "cpu": st.sampled_from(["2", "4"]),
                "memory": st.sampled_from(["2Gi", "8Gi"]),
                "ephemeral-storage": st.sampled_from(["2Gi"]),
            },
        ),
    },
)
STORAGE = st.fixed_dictionaries(
    {},
    optional={
        "endpoint": st.sampled_from(["http://s3:8333", "https://storage.example.com:9000"]),
        "region": st.sampled_from(["eu-west-1", "us-east-2", "auto"]),
        "addressingStyle": st.sampled_from(["auto", "path", "virtual"]),
        "options": st.dictionaries(
            st.sampled_from(["use_ssl", "requester_pays", "default_block_size", "anon"]),
            st.sampled_from(["true", "false", "5242880", "plain text"]),
            max_size=3,
        ),
    },
)


ALL_MODES = ("upload", "head", "disabled")
_MODE_WEIGHTS = {"upload": 5, "head": 3, "disabled": 1}
_SYNCERS = {
    "upload": st.sampled_from([None, "auto", None, CUSTOM_SYNCER]),
    "head": st.sampled_from([None, "auto"]),
    "disabled": st.just("none"),
}
#: The optional fields of a valid spec (mirrorDeletes only with the auto syncer).
_VALID_FIELDS = {
    "syncPeriod": st.integers(min_value=1, max_value=604800),
    "syncTimeout": st.integers(min_value=1, max_value=604800),
    "syncArtifacts": st.booleans(),
    "syncOnCheckpoint": st.booleans(),
    "storage": STORAGE,
    "credentials": st.one_of(
        st.builds(lambda name: {"secretRef": {"name": name}}, SECRET_NAMES),
        st.just({"serviceAccount": {}}),
    ),
    "checkpointPattern": st.sampled_from(["checkpoint_[0-9]*", "ckpt-*", "checkpoint_*"]),
    "excludes": st.lists(st.sampled_from(["*.tmp", "*/logs/*", "*.lock"]), max_size=2),
    "checkpointSettleSeconds": st.integers(min_value=1, max_value=3600),
    "finalSyncTimeoutSeconds": st.integers(min_value=1, max_value=120),
    "mirrorDeletes": st.booleans(),
    "keepCheckpoints": st.integers(min_value=1, max_value=100),
    "bandwidthLimit": st.sampled_from(["0", "1Ki", "50Mi", "200M", "1.5Gi", "1048576"]),
}
_IMAGES = st.sampled_from(["me/sidecar:1", "r:5000/s@sha256:" + "0" * 64])
_PULL_POLICIES = st.sampled_from(["Always", "IfNotPresent", "Never"])


@st.composite
def valid_specs(draw: st.DrawFn, modes: tuple[str, ...] = ALL_MODES) -> dict[str, Any]:
    """A spec the operator accepts, in one of ``modes``: upload (an uploadDir, the auto or
    a custom syncer), head (no uploadDir) or disabled (syncer none, no uploadDir); upload
    five times and head three times as often as disabled."""
    mode = draw(st.sampled_from([m for m in modes for _ in range(_MODE_WEIGHTS[m])]))
    spec: dict[str, Any] = {}
    sidecar: dict[str, Any] = {}
    if mode == "upload":
        spec["uploadDir"] = draw(UPLOAD_DIRS)
    syncer = draw(_SYNCERS[mode])
    if syncer is not None:
        spec["syncer"] = syncer
    if syncer == CUSTOM_SYNCER:
        sidecar["image"] = "registry.example.com/trialsync-custom:1"
    for field, strategy in _VALID_FIELDS.items():
        if draw(st.booleans()):
            spec[field] = draw(strategy)
    if spec.get("uploadDir", "").startswith("hdfs://") and "storage" in spec:
        # An hdfs:// upload dir takes Hadoop configuration alone (its NameNode is in it).
        spec["storage"] = {k: v for k, v in spec["storage"].items() if k == "options"}
    if syncer not in (None, "auto"):
        spec.pop("mirrorDeletes", None)  # it needs the auto syncer
        spec.pop("keepCheckpoints", None)  # so does this
    if draw(st.booleans()):
        sidecar.setdefault("image", draw(_IMAGES))
    if draw(st.booleans()):
        sidecar["imagePullPolicy"] = draw(_PULL_POLICIES)
    if draw(st.booleans()):
        sidecar["resources"] = draw(RESOURCES)
    if sidecar:
        spec["sidecar"] = sidecar
    return spec


def _syncconfig(name: str, namespace: str, uid: str, generation: int, spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "generation": generation},
        "spec": spec,
    }


@st.composite
def valid_syncconfigs(
    draw: st.DrawFn, name: str = "exp", namespace: str = "ml", modes: tuple[str, ...] = ALL_MODES
) -> dict[str, Any]:
    return _syncconfig(name, namespace, "u", 1, draw(valid_specs(modes)))


@st.composite
def syncconfigs(
    draw: st.DrawFn,
    namespace: str = "ml",
    name: st.SearchStrategy[str] = NAMES,
    valid: int = 3,
    hostile: int = 1,
) -> dict[str, Any]:
    """A valid spec ``valid`` times in ``valid + hostile``; otherwise any spec, hostile or
    junk (about a third of those valid too)."""
    spec = draw(_weighted((valid, valid_specs()), (hostile, _maybe(HOSTILE_SPEC, odds=20))))
    return _syncconfig(
        draw(name),
        namespace,
        draw(st.uuids()).hex,
        draw(st.integers(min_value=1, max_value=2**40)),
        spec,
    )


# -- pods ----------------------------------------------------------------------------------

CONTAINER_NAMES = st.sampled_from(["trainer", "ray-head", "main", "autoscaler", "mesh-proxy"])
#: Where containers mount the pod's volumes. Two are also trial mount paths below, so a few
#: well-formed pods ask for the trial dir where a container already mounts a volume.
CONTAINER_MOUNT_PATHS = st.sampled_from(["/data", "/cache", "/results", "/root/ray_results"])
TRIAL_MOUNT_PATHS = st.sampled_from(
    ["/root/ray_results", "/home/ray/ray_results", "/mnt/trials", "/results"]
)
#: A uid or gid the apiserver accepts.
IDS = st.integers(min_value=0, max_value=2**31 - 1)


@st.composite
def containers(draw: st.DrawFn, volumes: list[str], junk: bool = True) -> dict[str, Any]:
    container: dict[str, Any] = {"name": draw(CONTAINER_NAMES), "image": "example.com/trainer:1"}
    if bool(volumes) and draw(st.booleans()):
        container["volumeMounts"] = [
            {"name": draw(st.sampled_from(volumes)), "mountPath": draw(CONTAINER_MOUNT_PATHS)}
        ]
    if draw(st.booleans()):
        container["securityContext"] = {"runAsUser": draw(_maybe(IDS) if junk else IDS)}
    return container


@st.composite
def _pod_spec(draw: st.DrawFn, volume_names: st.SearchStrategy[str], junk: bool) -> dict[str, Any]:
    volumes = draw(st.lists(volume_names, max_size=3, unique=True))
    unique_names = draw(st.lists(CONTAINER_NAMES, min_size=1, max_size=3, unique=True))
    spec: dict[str, Any] = {
        "containers": [{**draw(containers(volumes, junk)), "name": name} for name in unique_names],
        "volumes": [{"name": v, "emptyDir": {}} for v in volumes],
    }
    if draw(st.booleans()):
        spec["initContainers"] = [{"name": "mesh-init", "image": "example.com/init:1"}]
    if draw(st.booleans()):
        ids = _maybe(IDS) if junk else IDS
        spec["securityContext"] = {"runAsUser": draw(ids), "runAsGroup": draw(ids)}
    if draw(st.booleans()):
        spec["terminationGracePeriodSeconds"] = draw(st.integers(min_value=0, max_value=3600))
    return spec


def _pod(annotations: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
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


@st.composite
def well_formed_pods(draw: st.DrawFn, config_name: str | list[str] = "exp") -> dict[str, Any]:
    """Pods whose annotations are right (a SyncConfig of ``config_name``, a role or none,
    and an existing volume or a mount path), so each reaches the injection itself. Only
    a trial mount path where a container already mounts a volume is refused."""
    choices = [config_name] if isinstance(config_name, str) else config_name
    spec = draw(_pod_spec(st.sampled_from(["data", "results", "cache", "shm"]), junk=False))
    annotations = {names.CONFIG_ANNOTATION: draw(st.sampled_from(choices))}
    role = draw(st.sampled_from(["worker", "head", None]))
    if role is not None:
        annotations[names.ROLE_ANNOTATION] = role
    volumes = [v["name"] for v in spec["volumes"]]
    if bool(volumes) and draw(st.booleans()):
        annotations[names.VOLUME_ANNOTATION] = draw(st.sampled_from(volumes))
    else:
        annotations[names.MOUNT_PATH_ANNOTATION] = draw(TRIAL_MOUNT_PATHS)
    return _pod(annotations, spec)


@st.composite
def hostile_pods(draw: st.DrawFn, config_names: list[str], junk: bool = True) -> dict[str, Any]:
    """Pods with odd annotations: missing, conflicting, naming what is not there, relative
    or root paths, volumes named as the sidecar's own; with ``junk``, values of wrong types
    too (what no apiserver lets through, but a body from elsewhere may hold)."""
    spec = draw(
        _pod_spec(
            st.sampled_from(["data", "results", "trialsync-trial", "trialsync-tmp", "cache"]),
            junk=junk,
        )
    )
    volumes = [v["name"] for v in spec["volumes"]]
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
    if junk and not draw(st.integers(0, 9)):
        key = draw(
            st.sampled_from(
                [
                    names.CONFIG_ANNOTATION,
                    names.ROLE_ANNOTATION,
                    names.VOLUME_ANNOTATION,
                    names.MOUNT_PATH_ANNOTATION,
                ]
            )
        )
        annotations[key] = draw(NOT_TEXT)
    return _pod(annotations, spec)


def pods(config_names: list[str], junk: bool = True) -> st.SearchStrategy[dict[str, Any]]:
    """Four in five well formed, naming one of ``config_names``; the rest hostile
    (``hostile_pods``). ``junk=False`` keeps to what the apiserver lets through to the
    webhook: annotations are strings, ids in range."""
    return _weighted(
        (4, well_formed_pods(config_names or ["exp"])), (1, hostile_pods(config_names, junk))
    )
