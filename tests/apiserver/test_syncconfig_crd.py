"""The SyncConfig CRD on the real apiserver: defaults, CEL rules, columns, explain."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from localcluster.control_plane import Kube
from tests.support.operator_process import CRD_PATH, apply_crd
from tests.support.pods import SIDECAR
from trialsync import SyncConfig, contract
from trialsync_operator.syncconfig import view_of

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
        field: setting.default
        for field, setting in contract.BY_CRD_FIELD.items()
        if setting.default not in (None, ())
    }
    assert got["spec"]["syncPeriod"] == 300  # Ray's own defaults
    assert got["spec"]["syncTimeout"] == 1800


#: SyncConfigs with one fault each, that a rule of the CRD catches.
REFUSED = [
    {"syncTimeout": 10**9},
    {"syncPeriod": 604801},
    {"checkpointSettleSeconds": 0},
    {"checkpointSettleSeconds": 3601},
    {"finalSyncTimeoutSeconds": 86401},
    {"syncer": "pkg.mod:Class", "uploadDir": "s3://bucket/x"},
    {
        "syncer": "pkg.mod:Class",
        "uploadDir": "s3://bucket/x",
        "mirrorDeletes": True,
        "sidecar": {"image": "me/s:1"},
    },
    {"mirrorDeletes": True, "syncer": "none"},
    {"storage": {"endpoint": "minio:9000"}},
    {"storage": {"endpoint": "minio\\9000\nx"}},
    {"storage": {"options": {"secret": "x"}}},
    {"storage": {"options": {"Session_Token": "x"}}},
    {"credentials": {"secretRef": {"name": "a"}, "serviceAccount": {}}},
    {"checkpointPattern": "a/b"},
    {"checkpointPattern": "a\\/b"},
    {"excludes": ["*.tmp", "a,b"]},
]


def _operators_message(spec: dict[str, Any]) -> str:
    """The message the operator (and the sidecar, for what crosses to it) refuses ``spec``
    with, without the field path the operator puts first (the apiserver writes its own)."""
    view = view_of({"metadata": {"name": "x", "namespace": "ns"}, "spec": spec}, SIDECAR)
    assert not view.valid, spec
    return view.message.split(": ", 1)[1] if view.message.startswith("spec.") else view.message


@pytest.mark.parametrize("spec", REFUSED, ids=[json.dumps(s)[:40] for s in REFUSED])
def test_each_rule_refuses_with_the_operators_own_message(
    kube: Kube, k8s_namespace: str, spec: dict[str, Any]
) -> None:
    refused = _apply(kube, k8s_namespace, "refused", spec)
    assert refused.returncode != 0
    assert _operators_message(spec) in refused.stderr
    assert refused.stderr.count("Invalid value") == 1, refused.stderr  # and nothing else
    assert (
        "refused"
        not in kube.kubectl("get", "syncconfigs", "-n", k8s_namespace, "-o", "name").stdout
    )


def _bounds() -> list[tuple[str, int]]:
    """Each duration field of the contract just inside and just outside its bounds."""
    out = []
    for setting in contract.SETTINGS:
        if isinstance(setting, contract.WholeSeconds) and setting.crd:
            for value in (setting.least - 1, setting.least, setting.most, setting.most + 1):
                out.append((setting.crd, value))
    return out


@pytest.mark.parametrize(("field", "value"), _bounds())
def test_the_apiserver_and_the_contract_draw_each_bound_at_the_same_value(
    kube: Kube, k8s_namespace: str, field: str, value: int
) -> None:
    setting = contract.BY_CRD_FIELD[field]
    name = f"b-{field.lower()}-{value}".replace("-", "m")[:63]
    applied = _apply(kube, k8s_namespace, name, {field: value})
    refusal = _refusal(setting, value)
    if refusal is None:
        assert applied.returncode == 0, applied.stderr
    else:
        assert applied.returncode != 0
        assert refusal in applied.stderr
        assert applied.stderr.count("Invalid value") == 1, applied.stderr


def _refusal(setting: contract.Setting[Any], value: object) -> str | None:
    try:
        setting.check(value)
    except contract.SettingError as exc:
        return str(exc)
    return None


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
    assert header.split() == [
        *("NAME", "UPLOAD", "DIR", "PERIOD", "TIMEOUT", "READY"),
        *("PODS", "SYNCED", "LAGGING", "FAILING", "NEWEST", "AGE"),
    ]
    # No operator runs in this module: the status columns (upload dir, ready, the pods'
    # counts and newest checkpoint) are blank.
    assert row.split()[:3] == ["cols", "60", "1800"]
    assert len(row.split()) == 4
    wide = kube.kubectl("get", "syncconfigs", "-n", k8s_namespace, "-o", "wide").stdout
    assert "NEWEST CHECKPOINT" in wide.splitlines()[0]
    assert "OLDEST UNSYNCED" in wide.splitlines()[0]


def test_kubectl_explain_reads_as_a_reference(kube: Kube) -> None:
    spec = kube.kubectl("explain", "syncconfig.spec").stdout
    fields = yaml.safe_load(CRD_PATH.read_text())["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"
    ]["properties"]["spec"]["properties"]
    # Every setting a SyncConfig holds, and the nested objects (storage, credentials, sidecar).
    assert set(contract.BY_CRD_FIELD) | {"storage", "credentials", "sidecar"} == set(fields)
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
