"""The SyncConfig CRD on the real apiserver: defaults, CEL rules, columns, explain."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from localcluster.control_plane import Kube

from tests.support.operator_process import CRD_PATH, apply_crd
from trialsync import SyncConfig

pytestmark = pytest.mark.k8s


@pytest.fixture(scope="module", autouse=True)
def _crd(kube: Kube) -> None:
    apply_crd(kube)


def _apply(kube: Kube, namespace: str, name: str, spec: Any = None) -> Any:
    body: dict[str, Any] = {
        "apiVersion": "trialsync.io/v1alpha1",
        "kind": "SyncConfig",
        "metadata": {"name": name},
    }
    if spec is not None:
        body["spec"] = spec
    return kube.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body), check=False)


def test_the_apiserver_fills_in_the_seeds_defaults(kube: Kube, k8s_namespace: str) -> None:
    assert _apply(kube, k8s_namespace, "bare").returncode == 0
    got = json.loads(
        kube.kubectl("get", "syncconfig", "bare", "-n", k8s_namespace, "-o", "json").stdout
    )
    assert got["spec"] == {
        "syncer": "auto",
        "syncPeriod": 300,
        "syncTimeout": 1800,
        "syncArtifacts": True,
        "syncOnCheckpoint": True,
        "checkpointPattern": "checkpoint_[0-9]*",
        "checkpointSettleSeconds": 3,
        "finalSyncTimeoutSeconds": 25,
        "mirrorDeletes": False,
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"syncTimeout": 10**9}, "syncTimeout must be at most 604800 seconds"),
        (
            {"syncer": "pkg.mod:Class", "uploadDir": "s3://bucket/x"},
            "a custom syncer (package.module:Class) runs in a sidecar image",
        ),
        (
            {
                "syncer": "pkg.mod:Class",
                "uploadDir": "s3://bucket/x",
                "mirrorDeletes": True,
                "sidecar": {"image": "me/s:1"},
            },
            "mirrorDeletes needs syncer auto",
        ),
        (
            {"storage": {"endpoint": "minio:9000"}},
            "storage.endpoint must be an http:// or https:// URL",
        ),
        ({"storage": {"options": {"secret": "x"}}}, "credentials never go in a SyncConfig"),
        (
            {"credentials": {"secretRef": {"name": "a"}, "serviceAccount": {}}},
            "give credentials.secretRef or credentials.serviceAccount, not both",
        ),
        ({"checkpointPattern": "a/b"}, "checkpointPattern is a glob of a directory name"),
        ({"excludes": ["a,b"]}, "an exclude glob must not contain ','"),
    ],
)
def test_each_rule_refuses_with_a_message_that_says_what_to_fix(
    kube: Kube, k8s_namespace: str, spec: dict[str, Any], message: str
) -> None:
    refused = _apply(kube, k8s_namespace, "refused", spec)
    assert refused.returncode != 0
    assert message in refused.stderr
    assert refused.stderr.count("Invalid value") == 1, refused.stderr  # and nothing else
    assert (
        "refused"
        not in kube.kubectl("get", "syncconfigs", "-n", k8s_namespace, "-o", "name").stdout
    )


#: SyncConfigs the seed's validate_upload_dir refuses and a CEL rule catches first, with
#: the same configuration in the seed's Python API.
SEED_REFUSALS = [
    ({"syncPeriod": 0}, {"sync_period": 0}),
    ({"syncPeriod": -1}, {"sync_period": -1}),
    ({"syncTimeout": 0}, {"sync_timeout": 0}),
    (
        {"uploadDir": "s3://bucket/x", "syncer": "none"},
        {"upload_dir": "s3://bucket/x", "syncer": None},
    ),
    ({"uploadDir": "bucket/prefix"}, {"upload_dir": "bucket/prefix"}),
    ({"uploadDir": " s3://bucket/x"}, {"upload_dir": " s3://bucket/x"}),
    ({"uploadDir": "s3://bucket/x\n"}, {"upload_dir": "s3://bucket/x\n"}),
    ({"uploadDir": "bucket/a\nb"}, {"upload_dir": "bucket/a\nb"}),
    ({"uploadDir": "s3\n://bucket/x"}, {"upload_dir": "s3\n://bucket/x"}),
    ({"uploadDir": "c:\\data\\x"}, {"upload_dir": "c:\\data\\x"}),
    ({"uploadDir": "\tbucket/x"}, {"upload_dir": "\tbucket/x"}),
    ({"syncer": "not a class"}, {"syncer": "not a class"}),
    ({"syncer": "a\nb"}, {"syncer": "a\nb"}),
    ({"syncer": "m\u00f3dulo:C"}, {"syncer": "m\u00f3dulo:C"}),
    ({"syncer": "pkg.mod:Class", "sidecar": {"image": "me/s:1"}}, {"syncer": "pkg.mod:Class"}),
]


@pytest.mark.parametrize(("spec", "seed"), SEED_REFUSALS)
def test_the_seeds_checks_refuse_with_validate_upload_dirs_own_message(
    kube: Kube, k8s_namespace: str, spec: dict[str, Any], seed: dict[str, Any]
) -> None:
    try:
        SyncConfig(**seed).validate_upload_dir()
    except ValueError as exc:
        message = str(exc)
    else:
        raise AssertionError(f"validate_upload_dir accepts {seed}")
    refused = _apply(kube, k8s_namespace, "refused", spec)
    assert refused.returncode != 0
    assert message in refused.stderr
    assert refused.stderr.count("Invalid value") == 1, refused.stderr  # and nothing else


def test_spaces_inside_an_upload_dir_are_accepted_as_validate_upload_dir_accepts_them(
    kube: Kube, k8s_namespace: str
) -> None:
    assert SyncConfig(upload_dir="s3://bucket/my exp").validate_upload_dir()
    assert (
        _apply(kube, k8s_namespace, "spaced", {"uploadDir": "s3://bucket/my exp"}).returncode == 0
    )


def test_a_name_longer_than_a_label_value_is_refused(kube: Kube, k8s_namespace: str) -> None:
    refused = _apply(kube, k8s_namespace, "x" * 64)
    assert "a SyncConfig name must be at most 63 characters" in refused.stderr


def test_the_short_name_is_tsync_not_storageclass_sc(kube: Kube, k8s_namespace: str) -> None:
    crd = yaml.safe_load(CRD_PATH.read_text())
    assert "sc" not in crd["spec"]["names"]["shortNames"]
    assert _apply(kube, k8s_namespace, "short").returncode == 0
    listed = kube.kubectl("get", "tsync", "-n", k8s_namespace, "-o", "name").stdout.split()
    assert listed == ["syncconfig.trialsync.io/short"]


def test_kubectl_get_shows_the_printer_columns(kube: Kube, k8s_namespace: str) -> None:
    assert (
        _apply(
            kube, k8s_namespace, "cols", {"uploadDir": "s3://bucket/x", "syncPeriod": 60}
        ).returncode
        == 0
    )
    header, row = kube.kubectl("get", "syncconfigs", "-n", k8s_namespace).stdout.splitlines()[:2]
    assert header.split() == ["NAME", "UPLOAD", "DIR", "PERIOD", "TIMEOUT", "READY", "AGE"]
    # No operator runs in this module: the status columns (upload dir, ready) are blank.
    assert row.split()[:3] == ["cols", "60", "1800"]
    assert len(row.split()) == 4


def test_kubectl_explain_reads_as_a_reference(kube: Kube) -> None:
    spec = kube.kubectl("explain", "syncconfig.spec").stdout
    fields = yaml.safe_load(CRD_PATH.read_text())["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"
    ]["properties"]["spec"]["properties"]
    assert len(fields) == 14
    for field in fields:
        assert f"{field}\t" in spec or f"{field} " in spec, field
    upload = kube.kubectl("explain", "syncconfig.spec.uploadDir").stdout
    assert "URI that checkpoints, artifacts and experiment state are mirrored under" in upload
    crd = yaml.safe_load(CRD_PATH.read_text())
    missing = _undescribed(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], "")
    assert not missing, f"fields without a description: {missing}"


def _undescribed(schema: dict[str, Any], path: str) -> list[str]:
    out = []
    for name, sub in (schema.get("properties") or {}).items():
        where = f"{path}.{name}"
        if name != "metadata" and not sub.get("description"):
            out.append(where)
        out += _undescribed(sub, where)
    items = schema.get("items")
    if isinstance(items, dict):
        out += _undescribed(items, path + "[]")
    return out
