"""The contract between the operator and the sidecar (``trialsync.contract``) against the
CRD, the operator's reading of a SyncConfig and the sidecar's parser.

The CRD is a YAML file the apiserver reads, so it carries its own copy of each default
and rule; these tests fail when it differs from the contract (the apiserver's own
messages are compared with the contract's in tests/apiserver/test_syncconfig_crd.py).
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st

from tests.support.pods import SIDECAR
from trialsync import contract
from trialsync._process import settings
from trialsync.contract import CelRule, SettingError
from trialsync_operator import syncconfig
from trialsync_operator.syncconfig import view_of

REPO = pathlib.Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((REPO / "crds" / "syncconfig.yaml").read_text())["spec"]["versions"][0][
    "schema"
]["openAPIV3Schema"]
SPEC = SCHEMA["properties"]["spec"]
FIELDS = SPEC["properties"]


def _rules(schema: dict[str, Any]) -> list[CelRule]:
    return [
        CelRule(r["rule"], r["message"], r.get("messageExpression"))
        for r in schema.get("x-kubernetes-validations", [])
    ]


def _expected(rules: list[CelRule]) -> str:
    """The YAML the CRD should hold, for the failure message."""
    return yaml.safe_dump(
        {
            "x-kubernetes-validations": [
                {k: v for k, v in vars(r).items() if v is not None} for r in rules
            ]
        },
        width=90,
        sort_keys=False,
    )


@pytest.mark.parametrize("field", sorted(contract.BY_CRD_FIELD))
def test_each_crd_field_has_the_contracts_default(field: str) -> None:
    setting = contract.BY_CRD_FIELD[field]
    if setting.default in (None, ()):
        assert "default" not in FIELDS[field]
    else:
        assert FIELDS[field]["default"] == setting.default


@pytest.mark.parametrize("field", sorted(contract.BY_CRD_FIELD))
def test_each_crd_field_has_the_contracts_rules_and_messages(field: str) -> None:
    setting = contract.BY_CRD_FIELD[field]
    assert _rules(FIELDS[field]) == setting.cel(), _expected(setting.cel())
    # Bounds the schema states itself would refuse with the apiserver's message, not ours.
    assert not {"minimum", "maximum"} & set(FIELDS[field]), field


def test_the_rules_across_fields_and_of_nested_fields_are_the_contracts() -> None:
    assert _rules(SPEC)[:5] == contract.seed_cel_rules(), _expected(contract.seed_cel_rules())
    assert _rules(FIELDS["excludes"]["items"]) == contract.EXCLUDE.cel_item()
    storage = FIELDS["storage"]["properties"]
    assert _rules(storage["endpoint"]) == [contract.ENDPOINT_RULE]
    assert _rules(storage["options"]) == [contract.CREDENTIAL_OPTIONS_RULE]


def test_the_rules_only_kubernetes_has_say_what_the_operator_says() -> None:
    spec_messages = [rule.message for rule in _rules(SPEC)]
    assert syncconfig.NEEDS_IMAGE in spec_messages
    credentials = _rules(FIELDS["credentials"])
    assert [rule.message for rule in credentials] == [syncconfig.ONE_CREDENTIAL_SOURCE]


def test_the_crd_states_the_grace_period_margin_the_webhook_asks_for() -> None:
    description = " ".join(FIELDS["finalSyncTimeoutSeconds"]["description"].split())
    assert f"at least this plus {contract.EXIT_MARGIN} s" in description


def test_every_setting_has_its_own_variable_and_flag() -> None:
    envs = [s.env for s in contract.SETTINGS]
    assert len(envs) == len(set(envs))
    assert all(env.startswith(contract.ENV_PREFIX) for env in envs)
    assert {s.flag for s in contract.SETTINGS} == {
        a.option_strings[0] if a.option_strings[0] != "--storage-option" else "--storage-options"
        for a in settings.parser()._actions
        if a.dest != "help"
    }


# -- one check, one message, whoever asks ---------------------------------------------------

#: Values of each SyncConfig field, good and bad, as a SyncConfig body can hold them.
WHOLE = st.one_of(
    st.integers(min_value=-3, max_value=5),
    st.integers(min_value=3590, max_value=3610),
    st.integers(min_value=86395, max_value=86405),
    st.integers(min_value=604795, max_value=604805),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=5),
)
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "syncPeriod": WHOLE,
    "syncTimeout": WHOLE,
    "checkpointSettleSeconds": WHOLE,
    "finalSyncTimeoutSeconds": WHOLE,
    "syncArtifacts": st.one_of(st.booleans(), st.text(max_size=5), st.integers()),
    "syncOnCheckpoint": st.one_of(st.booleans(), st.sampled_from(["yes", "true", 1])),
    "mirrorDeletes": st.one_of(st.booleans(), st.sampled_from(["no", 0])),
    "syncer": st.one_of(
        st.sampled_from(["auto", "none", "pkg.mod:Class", "pkg.mod", "m\u00f3d:C", "a\nb", ""]),
        st.text(max_size=12),
    ),
    "checkpointPattern": st.one_of(
        st.sampled_from(["checkpoint_*", "ckpt-[0-9]*", "a/b", "", "x" * 257]), st.text()
    ),
    "excludes": st.lists(
        st.one_of(st.sampled_from(["*.tmp", "a,b", "", "x" * 257]), st.text(max_size=8)),
        max_size=66,
    ),
}
#: How many generated values each branch saw: both must be reached (counted below).
SEEN: dict[str, int] = {"accepted": 0, "refused": 0}


@examples(max_examples=600, deadline=None)
@given(st.sampled_from(sorted(VALUES)).flatmap(lambda f: st.tuples(st.just(f), VALUES[f])))
def test_the_operator_and_the_sidecar_accept_and_refuse_alike(item: tuple[str, Any]) -> None:
    """A value the operator accepts reaches the sidecar as the operator read it; a value it
    refuses, written in the environment, the sidecar refuses with the same message (the
    operator adds the field's path, as the apiserver does)."""
    field, value = item
    setting = contract.BY_CRD_FIELD[field]
    spec = {field: value, "syncer": "auto"} if field == "mirrorDeletes" else {field: value}
    view = view_of({"metadata": {"name": "x", "namespace": "ns"}, "spec": spec}, SIDECAR)
    expected = _outcome(setting.check, value)
    if isinstance(expected, SettingError):
        SEEN["refused"] += 1
        assert not view.valid
        assert view.message == f"spec.{field}: {expected}"
        text = _rendered(setting, value)
        if text is not None:
            parsed = _outcome(setting.parse, text)
            assert isinstance(parsed, SettingError), text
            assert _core(str(parsed)) == _core(str(expected))
        return
    SEEN["accepted"] += 1
    # Valid on its own (another rule may refuse its combination with the defaults: a
    # custom syncer needs an upload dir).
    assert not view.message.startswith(f"spec.{field}"), view.message
    assert setting.parse(setting.render(expected)) == expected


def test_the_property_reached_both_branches() -> None:
    # Runs after the property above (pytest keeps file order).
    assert SEEN["accepted"] >= 100, SEEN
    assert SEEN["refused"] >= 100, SEEN


def _outcome(check: Any, value: Any) -> Any:
    """What ``check(value)`` returns, or the SettingError it raises."""
    try:
        return check(value)
    except SettingError as exc:
        return exc


def _rendered(setting: contract.Setting[Any], value: Any) -> str | None:
    """A refused value of the field's own JSON type as the environment would hold it; None
    for a value of another type, which the CRD's schema refuses before any rule (and which
    has another meaning as a text: the string "no" is a fine flag in the environment)."""
    if isinstance(setting, contract.WholeSeconds):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return repr(value) if isinstance(value, float) and math.isfinite(value) else str(value)
    if isinstance(setting, contract.Globs):
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            return None
        return None if any("," in v for v in value) else ",".join(value)
    if isinstance(setting, contract.Text):
        return value if isinstance(value, str) and value else None
    return None  # a flag: a bool is never refused, and anything else is the wrong type


def _core(message: str) -> str:
    """A message without the value it shows: the environment holds texts, so the sidecar
    shows ``'5'`` where the operator shows ``5``."""
    return message.rsplit(", got ", 1)[0]


@pytest.mark.parametrize(
    ("spec", "env"),
    [
        ({"syncPeriod": 0}, {"TRIALSYNC_SYNC_PERIOD": "0"}),
        ({"syncPeriod": 10**9}, {"TRIALSYNC_SYNC_PERIOD": "1000000000"}),
        ({"checkpointSettleSeconds": 0}, {"TRIALSYNC_CHECKPOINT_SETTLE": "0"}),
        ({"checkpointPattern": "a/b"}, {"TRIALSYNC_CHECKPOINT_PATTERN": "a/b"}),
        ({"excludes": ["a,b"]}, None),
        (
            {"mirrorDeletes": True, "syncer": "none"},
            {
                "TRIALSYNC_MIRROR_DELETES": "true",
                "TRIALSYNC_SYNCER": "none",
                "TRIALSYNC_UPLOAD_DIR": "",
            },
        ),
        ({"uploadDir": "s3://bucket/x", "syncer": "none"}, {"TRIALSYNC_SYNCER": "none"}),
        ({"storage": {"options": {"token": "x"}}}, {"TRIALSYNC_STORAGE_OPTIONS": '{"token": 1}'}),
        (
            {"storage": {"endpoint": "minio:9000"}},
            {"TRIALSYNC_STORAGE_OPTIONS": '{"endpoint_url": "minio:9000"}'},
        ),
    ],
)
def test_the_sidecar_refuses_what_the_operator_refuses_with_its_message(
    tmp_path: pathlib.Path, spec: dict[str, Any], env: dict[str, str] | None
) -> None:
    view = view_of({"metadata": {"name": "x", "namespace": "ns"}, "spec": spec}, SIDECAR)
    assert not view.valid
    message = view.message.split(": ", 1)[1] if view.message.startswith("spec.") else view.message
    if env is None:
        return  # the environment cannot hold the value at all (a comma in a glob)
    environ = {"TRIALSYNC_UPLOAD_DIR": "s3://bucket/x", "TRIALSYNC_ROOT": str(tmp_path), **env}
    with pytest.raises(settings.ConfigError) as refused:
        settings.parse([], environ)
    assert _core(message) in str(refused.value)
