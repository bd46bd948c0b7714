"""``trialsync inject`` and ``trialsync check-inject`` without a cluster: golden files of
the inject output, the webhook's own patch as its source, every reason check-inject
gives, the pod templates of each kind, and the command's exit codes.

Regenerate the golden files with ``TRIALSYNC_UPDATE_GOLDEN=1 pytest
tests/unit/test_offline_inject.py`` and review the diff.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.pods import DEFAULTS, TEST_ALLOWED_IMAGES, lookup_for, sidecars
from trialsync import cli
from trialsync_operator import names, selectors
from trialsync_operator.admission import injection, patch
from trialsync_operator.offline import checks, documents
from trialsync_operator.offline.checks import Facts, Verdict, Webhook, assess
from trialsync_operator.settings import parse

GOLDEN = Path(__file__).parent / "golden" / "inject"
SYNCCONFIGS = GOLDEN / "syncconfigs.yaml"
INPUTS = sorted(GOLDEN.glob("*.input.*"))
INJECTION_CASES = sorted(
    p
    for p in (Path(__file__).parent / "golden" / "injection").glob("*.yaml")
    if not p.name.endswith(".injected.yaml")
)
ALLOWED = [f"--allowed-sidecar-image={image}" for image in TEST_ALLOWED_IMAGES]


def _run(
    capsys: pytest.CaptureFixture[str], *argv: str, stdin: str | None = None
) -> tuple[int, str, str]:
    """The ``trialsync`` command in this process: exit code, stdout, stderr."""
    if stdin is not None:
        sys.stdin = io.StringIO(stdin)
    try:
        code = cli.main(list(argv))
    finally:
        sys.stdin = sys.__stdin__
    out, err = capsys.readouterr()
    return code, out, err


def _golden(path: Path, text: str) -> None:
    if os.environ.get("TRIALSYNC_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"no {path.name}: run with TRIALSYNC_UPDATE_GOLDEN=1"
    assert text == path.read_text(), path.name


@pytest.mark.parametrize("path", INPUTS, ids=[p.name.split(".")[0] for p in INPUTS])
def test_inject_prints_what_its_golden_files_say(
    path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    case = path.name.split(".")[0]
    output = "json" if path.suffix == ".json" else "yaml"
    # Relative paths, as a user gives them (the messages name the files as given).
    monkeypatch.chdir(GOLDEN)
    code, out, err = _run(
        capsys,
        "inject",
        "-f",
        path.name,
        "--syncconfig",
        SYNCCONFIGS.name,
        "-n",
        "ml",
        "-o",
        output,
    )
    assert code == 0, err
    _golden(GOLDEN / f"{case}.out.{output}", out)
    _golden(GOLDEN / f"{case}.err.txt", err)


def _webhook_result(pod: Mapping[str, Any], namespace: str, config: Mapping[str, Any]) -> Any:
    """The pod as the webhook's answer leaves it: ``plan``, its RFC 6902 patch, applied."""
    result = injection.plan(pod, namespace, lookup_for(config), DEFAULTS)
    assert result.patch is not None
    return patch.apply(pod, patch.json_patch(pod, result.patch))


@pytest.mark.parametrize("path", INJECTION_CASES, ids=[p.stem for p in INJECTION_CASES])
def test_inject_of_a_pod_is_the_webhooks_patch_applied_byte_for_byte(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = yaml.safe_load(path.read_text())
    config = {"apiVersion": names.API_VERSION, "kind": names.KIND, **case["config"]}
    pod = {"apiVersion": "v1", "kind": "Pod", **case["pod"]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "pod.json").write_text(json.dumps(pod))
    for output in ("json", "yaml"):
        code, out, err = _run(
            capsys,
            "inject",
            "-f",
            str(tmp_path / "pod.json"),
            "-n",
            case["namespace"],
            "--syncconfig",
            str(tmp_path / "config.yaml"),
            "-o",
            output,
            *ALLOWED,
        )
        assert code == 0, err
        assert out == documents.dump([_webhook_result(pod, case["namespace"], config)], output)
    # The webhook's warnings reach stderr.
    for warning in injection.plan(pod, case["namespace"], lookup_for(config), DEFAULTS).warnings:
        assert warning in err


def test_the_patch_applied_is_the_planned_pod_for_every_injection_case() -> None:
    from tests.support.pods import apply

    for path in INJECTION_CASES:
        case = yaml.safe_load(path.read_text())
        result = injection.plan(
            case["pod"], case["namespace"], lookup_for(case["config"]), DEFAULTS
        )
        assert result.patch is not None
        ops = patch.json_patch(case["pod"], result.patch)
        assert patch.apply(case["pod"], ops) == apply(case["pod"], result.patch), path.stem


@pytest.mark.parametrize(
    ("ops", "says"),
    [
        ([{"op": "remove", "path": "/spec"}], "only add operations"),
        ([{"op": "add", "path": "/spec/nothing/-", "value": 1}], "no 'nothing'"),
        ([{"op": "add", "path": "/spec/containers/5", "value": 1}], "no index"),
        ([{"op": "add", "path": "spec", "value": 1}], "no JSON pointer"),
    ],
)
def test_a_patch_that_the_apiserver_would_refuse_is_not_applied(
    ops: list[dict[str, Any]], says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        patch.apply({"spec": {"containers": []}}, ops)


def test_a_patch_keeps_the_document_it_was_given() -> None:
    pod = {"metadata": {"labels": {"a/b": "1"}}, "spec": {"containers": [{"name": "c"}]}}
    out = patch.apply(
        pod,
        [
            {"op": "add", "path": "/metadata/labels/x~1y~0z", "value": "2"},
            {"op": "add", "path": "/spec/containers/0", "value": {"name": "first"}},
        ],
    )
    assert out["metadata"]["labels"] == {"a/b": "1", "x/y~z": "2"}
    assert [c["name"] for c in out["spec"]["containers"]] == ["first", "c"]
    assert pod == {"metadata": {"labels": {"a/b": "1"}}, "spec": {"containers": [{"name": "c"}]}}


# The pod templates of each kind.


def _template(metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": dict(metadata or {"labels": {names.INJECT_LABEL: "true"}}),
        "spec": {"containers": [{"name": "c", "image": "x"}]},
    }


@pytest.mark.parametrize(
    ("obj", "paths"),
    [
        ({"kind": "Pod", "spec": {}}, [()]),
        ({"kind": "Job", "spec": {"template": _template()}}, [("spec", "template")]),
        (
            {"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": _template()}}}},
            [("spec", "jobTemplate", "spec", "template")],
        ),
        *(
            ({"kind": kind, "spec": {"template": _template()}}, [("spec", "template")])
            for kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet")
        ),
        (
            {
                "kind": "RayCluster",
                "spec": {
                    "headGroupSpec": {"template": _template()},
                    "workerGroupSpecs": [{"template": _template()}, {"template": _template()}],
                },
            },
            [
                ("spec", "headGroupSpec", "template"),
                ("spec", "workerGroupSpecs", 0, "template"),
                ("spec", "workerGroupSpecs", 1, "template"),
            ],
        ),
        (
            {
                "kind": "RayJob",
                "spec": {
                    "rayClusterSpec": {
                        "headGroupSpec": {"template": _template()},
                        "workerGroupSpecs": [{"template": _template()}],
                    }
                },
            },
            [
                ("spec", "rayClusterSpec", "headGroupSpec", "template"),
                ("spec", "rayClusterSpec", "workerGroupSpecs", 0, "template"),
            ],
        ),
        ({"kind": "ConfigMap", "data": {}}, []),
        ({"kind": "Job", "spec": {}}, []),
    ],
)
def test_the_pod_templates_of_each_kind_are_found(
    obj: dict[str, Any], paths: list[tuple[Any, ...]]
) -> None:
    found = documents.templates({"metadata": {"name": "o"}, **obj}, "ml")
    assert [t.path for t in found] == paths
    for template in found:
        assert template.pod["kind"] == "Pod"
        assert template.pod["metadata"]["namespace"] == "ml"


def test_a_templates_pod_carries_what_its_controller_adds_that_the_injection_reads() -> None:
    job = {
        "kind": "Job",
        "metadata": {"name": "sweep"},
        "spec": {
            "completionMode": "Indexed",
            "template": _template({"labels": {"a": "b"}, "annotations": {}}),
        },
    }
    [template] = documents.templates(job, "ml")
    assert template.pod["metadata"]["labels"] == {
        "a": "b",
        "batch.kubernetes.io/job-name": "sweep",
        "job-name": "sweep",
    }
    assert template.pod["metadata"]["annotations"] == {
        "batch.kubernetes.io/job-completion-index": "0"
    }
    assert "index 0" in template.per_pod
    ray = {
        "kind": "RayCluster",
        "metadata": {"name": "c"},
        "spec": {
            "headGroupSpec": {"template": _template()},
            "workerGroupSpecs": [{"template": _template()}],
        },
    }
    head, worker = documents.templates(ray, "ml")
    assert head.pod["metadata"]["labels"]["ray.io/node-type"] == "head"
    assert worker.pod["metadata"]["labels"]["ray.io/node-type"] == "worker"
    assert head.where == "spec.headGroupSpec.template"
    assert worker.where == "spec.workerGroupSpecs[0].template"


def test_input_that_is_not_objects_is_an_input_error() -> None:
    with pytest.raises(documents.InputError, match="not YAML or JSON"):
        documents.load("a: [", "f")
    with pytest.raises(documents.InputError, match="document 2 is not an object"):
        documents.load("a: 1\n---\n- 1\n", "f")
    assert [
        o["kind"] for o in documents.load('{"kind": "List", "items": [{"kind": "Pod"}]}', "f")
    ] == ["Pod"]


# check-inject, each reason.

SELECTOR = checks.CHART_WEBHOOK.namespace_selector


def _facts(**overrides: Any) -> Facts:
    configs = yaml.safe_load_all(SYNCCONFIGS.read_text())
    values: dict[str, Any] = {
        "settings": parse([], {}),
        "lookup": lookup_for(*configs),
        **overrides,
    }
    return Facts(**values)


def _pod(labels: Mapping[str, str] | None = None, /, **annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "p",
            "labels": dict({names.INJECT_LABEL: "true"} if labels is None else labels),
            "annotations": {
                names.CONFIG_ANNOTATION: "exp",
                names.MOUNT_PATH_ANNOTATION: "/r",
                **annotations,
            },
        },
        "spec": {"terminationGracePeriodSeconds": 60, "containers": [{"name": "c", "image": "x"}]},
    }


def _verdicts(report: checks.Report) -> dict[str, Verdict]:
    return {c.name: c.verdict for c in report.checks}


@pytest.mark.parametrize(
    ("pod", "namespace", "facts", "failed", "says"),
    [
        (
            _pod({}),
            "ml",
            {},
            "opt-in label",
            "trialsync.io/inject=true (it has no such label)",
        ),
        (
            _pod({names.INJECT_LABEL: "yes"}),
            "ml",
            {},
            "opt-in label",
            "it has trialsync.io/inject=yes",
        ),
        (
            _pod(),
            "kube-system",
            {},
            "namespace",
            "namespace kube-system is one the webhook leaves out",
        ),
        (
            _pod(),
            "ml",
            {"namespace_labels": {selectors.OPT_OUT_LABEL: "disabled"}},
            "namespace",
            "labelled trialsync.io/injection=disabled",
        ),
        (
            _pod(),
            "ml",
            {"settings": parse(["--watch-namespace=team-a"], {})},
            "namespace",
            "the operator watches only team-a",
        ),
        (
            _pod(),
            "ml",
            {
                "webhook": Webhook(
                    "trialsync",
                    checks.CHART_WEBHOOK.object_selector,
                    {
                        "matchExpressions": [
                            {"key": selectors.NAME_LABEL, "operator": "In", "values": ["a", "b"]}
                        ]
                    },
                )
            },
            "namespace",
            "not among those the webhook serves (a, b",
        ),
        (
            {"metadata": {"labels": {names.INJECT_LABEL: "true"}}, "spec": {"containers": []}},
            "ml",
            {},
            "config annotation",
            "has no trialsync.io/config annotation",
        ),
        (
            _pod(**{names.CONFIG_ANNOTATION: "nope"}),
            "ml",
            {},
            "SyncConfig",
            "ml/nope does not exist",
        ),
        (
            _pod(**{names.CONFIG_ANNOTATION: "broken"}),
            "ml",
            {},
            "SyncConfig",
            "ml/broken is invalid (SchemeNotServed)",
        ),
        (_pod(**{names.CONFIG_ANNOTATION: "off"}), "ml", {}, "syncing", "disables syncing"),
        (
            _pod(**{names.VOLUME_ANNOTATION: "v"}),
            "ml",
            {},
            "pod annotations",
            "conflict",
        ),
        (_pod(), "ml", {"webhook": None}, "webhook", "trialsync is not installed"),
    ],
)
def test_check_inject_fails_the_check_that_keeps_a_pod_from_its_sidecar(
    pod: dict[str, Any], namespace: str, facts: dict[str, Any], failed: str, says: str
) -> None:
    report = assess(pod, namespace, _facts(**facts))
    assert not report.injected
    assert report.ops == []
    failures = [c for c in report.checks if c.verdict is Verdict.FAIL]
    assert [c.name for c in failures] == [failed]
    assert says in failures[0].detail
    assert report.outcome == f"not injected: {failed}: {failures[0].detail}"


def test_a_refusal_says_whether_the_pod_is_refused_or_admitted_without_the_sidecar() -> None:
    pod = _pod(**{names.CONFIG_ANNOTATION: "nope"})
    assert "(the pod is refused)" in assess(pod, "ml", _facts()).outcome
    admit = _facts(settings=parse(["--on-config-error=admit"], {}))
    assert "(admitted without it: --on-config-error admit)" in assess(pod, "ml", admit).outcome


def test_a_pod_that_would_be_injected_passes_every_check_with_the_webhooks_patch() -> None:
    report = assess(_pod(), "ml", _facts())
    assert report.injected
    assert report.outcome == "would be injected"
    assert set(_verdicts(report).values()) == {Verdict.OK}
    result = injection.plan(_pod(), "ml", _facts().lookup, parse([], {}).defaults)
    assert result.patch is not None
    assert report.ops == patch.json_patch(_pod(), result.patch)


def test_admission_warnings_are_checks_of_their_own() -> None:
    pod = _pod()
    pod["spec"]["terminationGracePeriodSeconds"] = 5
    report = assess(pod, "ml", _facts())
    assert report.injected
    [warning] = [c for c in report.checks if c.verdict is Verdict.WARN]
    assert warning.name == "admission warning"
    assert "terminationGracePeriodSeconds=5" in warning.detail


def test_a_valid_syncconfig_that_is_not_ready_is_a_warning_with_its_reason() -> None:
    ready = {"type": "Ready", "status": "False", "reason": "SecretMissing", "message": "no Secret"}
    report = assess(_pod(), "ml", _facts(ready=lambda ns, name: ready))
    assert report.injected
    [syncconfig] = [c for c in report.checks if c.name == "SyncConfig"]
    assert syncconfig.verdict is Verdict.WARN
    assert "Ready=False (SecretMissing): no Secret" in syncconfig.detail


def test_a_pod_with_the_sidecar_is_injected_and_left_alone() -> None:
    pod = _pod()
    pod["spec"]["initContainers"] = [{"name": names.SIDECAR_NAME, "image": "x"}]
    pod["metadata"]["annotations"][names.STATUS_ANNOTATION] = json.dumps(
        {"config": "exp", "generation": 3, "role": "worker", "mode": "upload"}
    )
    report = assess(pod, "ml", _facts())
    assert report.injected
    assert report.ops == []
    assert report.outcome == "injected already (the webhook leaves it alone)"
    live = assess(pod, "ml", _facts(), live=True)
    assert live.outcome == "injected"
    assert "from SyncConfig exp generation 3" in live.checks[-1].detail


LIVE_WEBHOOK = Webhook(
    "trialsync",
    checks.CHART_WEBHOOK.object_selector,
    SELECTOR,
    failure_policy="Ignore",
    service=("trialsync", "trialsync-webhook"),
)


@pytest.mark.parametrize(
    ("webhook", "endpoints", "verdict", "says"),
    [
        (LIVE_WEBHOOK, 0, Verdict.FAIL, "has no ready endpoint: the operator is down"),
        (LIVE_WEBHOOK, 2, Verdict.FAIL, "has 2 ready endpoint(s) now"),
        (LIVE_WEBHOOK, None, Verdict.FAIL, "whether the operator is up now is not known"),
        (
            Webhook(
                "trialsync", LIVE_WEBHOOK.object_selector, SELECTOR, "Fail", LIVE_WEBHOOK.service
            ),
            1,
            Verdict.WARN,
            "created before the webhook selected it",
        ),
    ],
)
def test_a_live_pod_without_its_sidecar_is_explained_by_the_failure_policy(
    webhook: Webhook, endpoints: int | None, verdict: Verdict, says: str
) -> None:
    report = assess(_pod(), "ml", _facts(webhook=webhook, ready_endpoints=endpoints), live=True)
    assert not report.injected
    checked = _verdicts(report)
    assert checked["sidecar"] is Verdict.FAIL
    assert checked["failurePolicy"] is verdict
    detail = next(c.detail for c in report.checks if c.name == "failurePolicy")
    assert says in detail
    if verdict is Verdict.FAIL:  # the cause, not the symptom
        assert report.outcome == f"not injected: failurePolicy: {detail}"
    else:
        assert report.outcome.startswith("not injected: sidecar: the pod has no")


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({}, {}, None),
        ({"matchLabels": {"a": "1"}}, {"a": "1"}, None),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, "a=1 (it has a=2)"),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {}, "a label a (it has none)"),
        (
            {"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]},
            {"a": "x"},
            "no label a (it has a=x)",
        ),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["x"]}]}, {}, None),
        (
            {"matchExpressions": [{"key": "a", "operator": "In", "values": ["x"]}]},
            {},
            "a in (x) (it has no such label)",
        ),
    ],
)
def test_label_selectors_match_as_kubernetes_does(
    selector: dict[str, Any], labels: dict[str, str], expected: str | None
) -> None:
    assert selectors.mismatch(selector, labels) == expected


# The command.


def test_check_inject_of_a_file_prints_one_line_per_check_and_exits_by_the_verdict(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = _run(
        capsys,
        "check-inject",
        "-f",
        "-",
        "-n",
        "ml",
        "--syncconfig",
        str(SYNCCONFIGS),
        stdin=json.dumps(_pod()),
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[-1] == "verdict: would be injected"
    assert "ok      opt-in label: trialsync.io/inject=true" in lines
    assert lines[0].startswith("info    operator settings: the operator's defaults")
    code, out, _ = _run(
        capsys,
        "check-inject",
        "-f",
        "-",
        "-n",
        "ml",
        "--syncconfig",
        str(SYNCCONFIGS),
        stdin=json.dumps(_pod(**{names.CONFIG_ANNOTATION: "nope"})),
    )
    assert code == 1
    assert "FAIL    SyncConfig: ml/nope does not exist (not in" in out
    assert out.splitlines()[-1].startswith("verdict: not injected: SyncConfig: ml/nope")


def test_check_inject_of_several_pods_names_each_and_fails_if_one_is_not_injected(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = GOLDEN / "raycluster.input.yaml"
    code, out, _ = _run(capsys, "check-inject", "-f", str(path), "--syncconfig", str(SYNCCONFIGS))
    assert code == 1
    assert "RayCluster ml/tune spec.headGroupSpec.template:" in out
    assert out.count("verdict: would be injected") == 2
    assert out.count("verdict: not injected: opt-in label") == 1


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["check-inject"], "give a pod's name or -f FILE"),
        (["check-inject", "p", "-f", "x.yaml"], "give a pod's name or -f FILE"),
        (["check-inject", "p", "--syncconfig", "s.yaml"], "--syncconfig is for -f FILE"),
        (
            ["inject", "-f", "/nonexistent.yaml", "--syncconfig", str(SYNCCONFIGS)],
            "cannot read /nonexistent.yaml",
        ),
        (
            ["inject", "-f", str(SYNCCONFIGS), "--syncconfig", "/nonexistent.yaml"],
            "cannot read /nonexistent.yaml",
        ),
        (["inject", "-f", "-", "--syncconfig", str(GOLDEN / "job.input.yaml")], "no SyncConfig in"),
        (
            [
                "inject",
                "-f",
                str(SYNCCONFIGS),
                "--syncconfig",
                str(SYNCCONFIGS),
                "--sidecar-resources=x",
            ],
            "not JSON",
        ),
        (["inject", "--output=xml"], "invalid choice"),
        (
            ["check-inject", "-f", str(SYNCCONFIGS), "--syncconfig", str(SYNCCONFIGS)],
            "holds no pod",
        ),
    ],
)
def test_a_usage_error_exits_2_saying_what_is_wrong(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, *argv, stdin="")
    assert code == 2
    assert says in err


def test_inject_reads_stdin_and_a_multi_document_stream(capsys: pytest.CaptureFixture[str]) -> None:
    path = GOLDEN / "apps-workloads.input.yaml"
    code, out, _ = _run(
        capsys, "inject", "-f", "-", "--syncconfig", str(SYNCCONFIGS), stdin=path.read_text()
    )
    assert code == 0
    objects = list(yaml.safe_load_all(out))
    assert [o["kind"] for o in objects] == ["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"]
    for obj in objects:
        assert len(sidecars(obj["spec"]["template"])) == 1


def test_the_operators_flags_change_what_is_injected(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        capsys,
        "inject",
        "-f",
        "-",
        "-n",
        "ml",
        "--syncconfig",
        str(SYNCCONFIGS),
        "--sidecar-image=registry.example.com/trialsync/sidecar:9",
        "--sidecar-resources="
        + json.dumps(
            {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}}
        ),
        "-o",
        "json",
        stdin=json.dumps(_pod()),
    )
    assert code == 0
    [sidecar] = sidecars(json.loads(out))
    assert sidecar["image"] == "registry.example.com/trialsync/sidecar:9"
    assert sidecar["resources"]["limits"] == {"cpu": "2", "memory": "1Gi"}


def test_the_trialsync_command_loads_the_operator_only_for_its_subcommands() -> None:
    code = (
        "import sys, trialsync.cli\n"
        "operator = ('trialsync_operator', 'kopf', 'kube')\n"
        "loaded = [m for m in sys.modules if m.startswith(operator)]\n"
        "assert not loaded, loaded\n"
        "print(trialsync.cli.USAGE)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "trialsync inject -f FILE" in out
    assert "trialsync check-inject POD -n NS | -f FILE" in out


def test_without_the_operator_package_the_subcommands_say_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "_OPERATOR_MODULE", "trialsync_operator_not_installed.commands")
    for command in ("inject", "check-inject"):
        code, _, err = _run(capsys, command, "-f", "x")
        assert code == 2
        assert f"trialsync {command}: needs the operator's package" in err
        assert "pip install 'trialsync[operator]'" in err


def test_the_console_script_injects_from_stdin(tmp_path: Path) -> None:
    pod = _pod()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "trialsync.cli",
            "inject",
            "-f",
            "-",
            "-n",
            "ml",
            "--syncconfig",
            str(SYNCCONFIGS),
        ],
        input=json.dumps(pod),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == documents.dump(
        [patch.apply(pod, assess(pod, "ml", _facts()).ops)], "yaml"
    )


def test_a_syncconfig_file_without_a_uid_is_noted_as_not_the_clusters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = {"apiVersion": names.API_VERSION, "kind": names.KIND, "metadata": {"name": "exp"}}
    config["spec"] = {"uploadDir": "s3://bucket/x"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    argv = ["inject", "-f", "-", "-n", "ml", "--syncconfig", str(tmp_path / "config.yaml")]
    code, out, err = _run(capsys, *argv, stdin=json.dumps(_pod()))
    assert code == 0
    assert "note: SyncConfig ml/exp has no metadata.uid" in err
    status = json.loads(yaml.safe_load(out)["metadata"]["annotations"][names.STATUS_ANNOTATION])
    assert (status["uid"], status["generation"]) == ("", 0)


def test_a_cluster_that_cannot_be_reached_is_a_usage_error(tmp_path: Path) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "ml"}}],
        "current-context": "x",
    }
    (tmp_path / "kubeconfig").write_text(json.dumps(config))
    done = subprocess.run(
        [sys.executable, "-m", "trialsync.cli", "check-inject", "trainer"],
        env={**os.environ, "KUBECONFIG": str(tmp_path / "kubeconfig")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("trialsync check-inject: reading the cluster failed:")


def test_inject_without_a_file_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "inject", "--syncconfig", str(SYNCCONFIGS))
    assert code == 2
    assert "give the objects with -f FILE (- for stdin)" in err
