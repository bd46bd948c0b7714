"""The operator's flags and TRIALSYNC_OPERATOR_* variables, parsed in one place."""

from __future__ import annotations

import pytest

from trialsync_operator import settings
from trialsync_operator.settings import ConfigError, parse


def test_defaults() -> None:
    s = parse([], {})
    assert (s.webhook_port, s.health_port, s.cert_mode, s.on_config_error) == (
        9443,
        8080,
        "self",
        "refuse",
    )
    assert s.sidecar.image == "docker.io/trialsync/sidecar:0.1.0"
    assert "gs" in s.sidecar.schemes
    assert "abfs" not in s.sidecar.schemes
    assert s.namespaces == ()
    assert s.leader_election
    # Only the operator's own sidecar image may run, whatever a SyncConfig names.
    assert s.sidecar.allowed == ()
    assert s.sidecar.allows("docker.io/trialsync/sidecar:0.1.0")
    assert not s.sidecar.allows("docker.io/trialsync/sidecar:0.1.0-evil")


def test_every_flag_has_an_environment_fallback() -> None:
    parser = settings._parser()
    values = {
        "namespaces": "a,b",
        "kubeconfig": "/k",
        "webhook_addr": "127.0.0.1",
        "webhook_port": "1443",
        "health_addr": "127.0.0.1",
        "health_port": "1080",
        "cert_mode": "files",
        "cert_dir": "/certs",
        "tls_secret": "tls",
        "cert_hosts": "h1,10.0.0.1",
        "cert_validity_days": "30",
        "cert_rotate_before_days": "10",
        "cert_check_interval": "2.5",
        "mutating_webhook": "m",
        "validating_webhook": "v",
        "service": "svc",
        "namespace": "ops",
        "leader_election": "false",
        "lease_name": "lease",
        "identity": "me",
        "on_config_error": "admit",
        "sidecar_image": "img:1",
        "sidecar_image_pull_policy": "Always",
        "allowed_sidecar_images": "registry.example.com/team/*,me/s:1",
        "sidecar_schemes": "s3,abfs",
        "sidecar_resources": (
            '{"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}}'
        ),
        "log_level": "debug",
        "pod_status": "false",
        "pod_status_port": "19746",
    }
    dests = {a.dest for a in parser._actions if a.dest != "help"}
    assert dests == set(values), "a flag was added without a case here"
    s = parse([], {f"TRIALSYNC_OPERATOR_{k.upper()}": v for k, v in values.items()})
    assert s.namespaces == ("a", "b")
    assert s.cert_hosts == ("h1", "10.0.0.1")
    assert (s.webhook_port, s.health_port, s.cert_mode, s.leader_election) == (
        1443,
        1080,
        "files",
        False,
    )
    assert (s.namespace, s.identity, s.on_config_error, s.log_level) == (
        "ops",
        "me",
        "admit",
        "debug",
    )
    assert s.sidecar.schemes == {"s3", "abfs"}
    assert (s.pod_status, s.pod_status_port) == (False, 19746)
    assert s.sidecar.allowed == ("registry.example.com/team/*", "me/s:1")
    assert s.defaults.image == "img:1"
    assert s.defaults.pull_policy == "Always"
    assert s.defaults.limits == {"cpu": "2", "memory": "2Gi"}
    assert (s.cert_validity_days, s.cert_rotate_before_days, s.tls_secret) == (30, 10, "tls")
    assert s.cert_check_interval == 2.5


def test_a_flag_wins_over_the_environment() -> None:
    s = parse(["--webhook-port", "2443"], {"TRIALSYNC_OPERATOR_WEBHOOK_PORT": "1443"})
    assert s.webhook_port == 2443


@pytest.mark.parametrize(
    ("argv", "env", "says"),
    [
        ([], {"TRIALSYNC_OPERATOR_WEBHOOK_PORT": "x"}, "expected a number"),
        (["--webhook-port", "70000"], {}, "must be a port number"),
        ([], {"TRIALSYNC_OPERATOR_LEADER_ELECTION": "maybe"}, "expected true or false"),
        ([], {"TRIALSYNC_OPERATOR_ON_CONFIG_ERROR": "ignore"}, "expected one of refuse, admit"),
        (["--cert-rotate-before-days", "400"], {}, "less than --cert-validity-days"),
        (["--sidecar-schemes", "S3://"], {}, "--sidecar-schemes"),
        (["--allowed-sidecar-image", "registry.example.com/*/x"], {}, "a single trailing"),
        (["--allowed-sidecar-image", "me/s :1"], {}, "--allowed-sidecar-image"),
        (["--sidecar-resources", '{"requests": {"cpu": "1"}}'], {}, "requests and limits of"),
        (["--sidecar-resources", '{"limits": {"cpu": "lots"}}'], {}, "not a resource quantity"),
    ],
)
def test_a_bad_value_is_a_configuration_error_saying_what_to_fix(
    argv: list[str], env: dict[str, str], says: str
) -> None:
    with pytest.raises(ConfigError, match=says):
        parse(argv, env)


def test_an_unknown_variable_is_reported_as_a_likely_typo() -> None:
    env = {"TRIALSYNC_OPERATOR_WEBHOOK_PROT": "1", "TRIALSYNC_OPERATOR_WEBHOOK_PORT": "2"}
    assert settings.unknown_env(env) == ["TRIALSYNC_OPERATOR_WEBHOOK_PROT"]


def test_a_misspelled_flag_is_fatal() -> None:
    with pytest.raises(SystemExit) as info:
        parse(["--webhook-prot", "1"], {})
    assert info.value.code == 2


def test_the_command_reports_a_configuration_error_with_exit_code_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from trialsync_operator import cli

    assert cli.main(["--webhook-port", "0"]) == 2
    assert "configuration error: --webhook-port must be a port number" in capsys.readouterr().err
