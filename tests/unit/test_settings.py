"""Sidecar configuration: flags, their TRIALSYNC_* fallbacks, and clear errors."""

from __future__ import annotations

import pathlib
import re
from collections.abc import Callable

import pytest

from tests.support.sidecar_env import head_secret_files
from trialsync import cli, contract
from trialsync._process import settings
from trialsync._process.settings import ConfigError, Settings, parse, unknown_env
from trialsync_operator import names

# Every flag: its TRIALSYNC_* value, and where Settings shows it (not the default).
Check = tuple[str, Callable[[Settings], object], object]
CLOUD: dict[str, Check] = {
    "upload_dir": ("s3://bucket/exp", lambda s: s.config.upload_dir, "s3://bucket/exp"),
    "receiver_addr": ("127.0.0.1:7000", lambda s: s.receiver_addr, "127.0.0.1:7000"),
    "role": ("head", lambda s: s.role, "head"),
    "sync_period": ("60", lambda s: s.config.sync_period, 60),
    "sync_timeout": ("90", lambda s: s.config.sync_timeout, 90),
    "sync_artifacts": ("false", lambda s: s.config.sync_artifacts, False),
    "sync_on_checkpoint": ("no", lambda s: s.config.sync_on_checkpoint, False),
    "checkpoint_pattern": ("ckpt-*", lambda s: s.layout.checkpoint_pattern, "ckpt-*"),
    "exclude": ("*.tmp,*.lock", lambda s: s.layout.excludes, ("*.tmp", "*.lock")),
    "checkpoint_settle": ("7", lambda s: s.checkpoint_settle, 7),
    "once": ("true", lambda s: s.once, True),
    "final_sync_timeout": ("11", lambda s: s.final_sync_timeout, 11),
    "mirror_deletes": ("1", lambda s: s.mirror_deletes, True),
    "keep_checkpoints": ("3", lambda s: s.keep_checkpoints, 3),
    "bandwidth_limit": ("50Mi", lambda s: s.bandwidth_limit, 50 * 2**20),
    "restore": ("true", lambda s: s.restore, True),
    "restore_timeout": ("60", lambda s: s.restore_timeout, 60),
    "restore_key": ("ns/job/train", lambda s: s.restore_key, "ns/job/train"),
    "storage_option": ('{"anon": true}', lambda s: s.storage_options["anon"], True),
    "s3_client": ("botocore", lambda s: s.s3_client, "botocore"),
    "http_addr": ("127.0.0.1:7001", lambda s: s.http_addr, "127.0.0.1:7001"),
    "files_in_flight": ("7", lambda s: s.files_in_flight, 7),
    "part_size": (str(8 * 2**20), lambda s: s.part_size, 8 * 2**20),
    "upload_memory": (str(2**30), lambda s: s.upload_memory, 2**30),
    "share_files": ("true", lambda s: s.share_files, True),
    "create_root": ("true", lambda s: s.create_root, True),
    "reconcile_interval": ("0", lambda s: s.reconcile_interval, 0),
    "poll_interval": ("2", lambda s: s.poll_interval, 2),
    "max_backoff": ("9", lambda s: s.max_backoff, 9),
    "log_level": ("debug", lambda s: s.log_level, "debug"),
    "credentials_dir": ("/secret", lambda s: s.credentials_dir, "/secret"),
}
# A custom syncer: with an upload dir, and without --mirror-deletes (it cannot list).
CUSTOM: dict[str, Check] = {
    "syncer": ("pkg.mod:Cls", lambda s: s.config.syncer, "pkg.mod:Cls"),
    "upload_dir": CLOUD["upload_dir"],
}
# The flags that only fit a worker syncing to the head node, or the head serving it.
HEAD: dict[str, Check] = {
    "head_url": ("https://head:9747", lambda s: s.head_url, "https://head:9747"),
    "head_ca_file": ("<ca file>", lambda s: s.head_ca_file, "<ca file>"),
    "head_token_file": ("<token file>", lambda s: s.head_token, "s3cret"),
    "head_identity_file": ("/scratch/id", lambda s: s.head_identity_file, "/scratch/id"),
    "receiver_max_object_size": ("1000", lambda s: s.receiver_max_object_size, 1000),
    "receiver_max_uploads": ("3", lambda s: s.receiver_max_uploads, 3),
    "receiver_claim_lease": ("90", lambda s: s.receiver_claim_lease, 90),
    "receiver_state_dir": ("/state", lambda s: s.receiver_state_dir, "/state"),
    "restore_prefix": ("/exp/trial_1/", lambda s: s.restore_prefix, "exp/trial_1"),
}

# The head serving the head-node service over TLS.
SERVING: dict[str, Check] = {
    "role": CLOUD["role"],
    "head_token_file": HEAD["head_token_file"],
    "receiver_cert_file": ("<cert file>", lambda s: s.receiver_cert_file, "<cert file>"),
    "receiver_key_file": ("<key file>", lambda s: s.receiver_key_file, "<key file>"),
}


def secret_files(directory: pathlib.Path) -> dict[str, str]:
    """The token and a real TLS identity written in ``directory``, by placeholder."""
    files = {"<token file>": b"s3cret\n"}
    material = head_secret_files()
    files["<ca file>"] = material[names.HEAD_CA_KEY]
    files["<cert file>"] = material[names.HEAD_CERT_KEY]
    files["<key file>"] = material[names.HEAD_KEY_KEY]
    paths = {}
    for placeholder, data in files.items():
        path = directory / placeholder.strip("<>").replace(" ", "-")
        path.write_bytes(data)
        paths[placeholder] = str(path)
    return paths


#: Each flag's destination, and the variable it falls back to.
ENV = {settings._dest(setting): setting.env for setting in contract.SETTINGS}


def test_every_flag_falls_back_to_its_environment_variable(tmp_path: pathlib.Path) -> None:
    checked = {"root", *CLOUD, *HEAD, *CUSTOM, *SERVING}
    assert checked == set(ENV), "a flag without a check"
    files = secret_files(tmp_path)
    for checks in (CLOUD, HEAD, CUSTOM, SERVING):
        env = {ENV[dest]: files.get(raw, raw) for dest, (raw, _, _) in checks.items()}
        env["TRIALSYNC_ROOT"] = str(tmp_path)
        parsed = parse([], env)
        assert parsed.root == str(tmp_path)
        for dest, (raw, read, expected) in checks.items():
            assert read(parsed) == files.get(expected, expected), f"{ENV[dest]}={raw}"
    # The variable that is not a flag.
    env = {"TRIALSYNC_ROOT": str(tmp_path), "TRIALSYNC_HEAD_URL": "http://head:9747"}
    assert parse([], {**env, "TRIALSYNC_HEAD_TOKEN": "tok"}).head_token == "tok"


def test_storage_options_come_from_one_json_variable_and_flags_win_per_key(
    tmp_path: pathlib.Path,
) -> None:
    args = ["--root", str(tmp_path), "--upload-dir", "s3://bucket/x"]
    env = {"TRIALSYNC_STORAGE_OPTIONS": '{"anon": false, "client_kwargs": {"a": [1, 2]}}'}
    parsed = parse([*args, "--storage-option", "anon=true", "--storage-option", "k=v"], env)
    assert parsed.storage_options == {"anon": True, "client_kwargs": {"a": [1, 2]}, "k": "v"}
    # The singular name is no setting: it is reported as a likely typo, not half-parsed.
    assert unknown_env({"TRIALSYNC_STORAGE_OPTION": "anon=true"}, set()) == [
        "TRIALSYNC_STORAGE_OPTION"
    ]
    assert parse(args, {"TRIALSYNC_STORAGE_OPTION": "anon=true"}).storage_options == {}


def test_a_flag_wins_over_the_environment(tmp_path: pathlib.Path) -> None:
    env = {"TRIALSYNC_SYNC_PERIOD": "60", "TRIALSYNC_UPLOAD_DIR": "s3://bucket/b"}
    settings = parse(["--root", str(tmp_path), "--sync-period", "5"], env)
    assert settings.config.sync_period == 5


def test_seed_defaults_apply_when_nothing_is_given(tmp_path: pathlib.Path) -> None:
    settings = parse(["--root", str(tmp_path), "--upload-dir", "gs://bucket/x"], {})
    assert settings.config.sync_period == 300
    assert settings.config.sync_timeout == 1800
    assert settings.config.sync_artifacts is True
    assert settings.config.sync_on_checkpoint is True
    assert settings.config.syncer == "auto"


@pytest.mark.parametrize(
    ("env", "says"),
    [
        (
            {"TRIALSYNC_SYNC_PERIOD": "soon"},
            "TRIALSYNC_SYNC_PERIOD: sync_period must be a whole number of seconds from 1 to "
            "604800 (a week), got 'soon'",
        ),
        ({"TRIALSYNC_SYNC_PERIOD": "0.5"}, "sync_period must be a whole number"),
        ({"TRIALSYNC_SYNC_PERIOD": "1000000000"}, "from 1 to 604800 (a week), got 1000000000"),
        ({"TRIALSYNC_SYNC_ARTIFACTS": "maybe"}, "sync_artifacts must be true or false"),
        ({"TRIALSYNC_ROLE": "driver"}, "role must be one of worker, head, got 'driver'"),
        ({"TRIALSYNC_STORAGE_OPTIONS": "{nope"}, "TRIALSYNC_STORAGE_OPTIONS: storage_options is"),
        ({"TRIALSYNC_STORAGE_OPTIONS": '{"secret": "x"}'}, "credentials never go in storage"),
        ({"TRIALSYNC_STORAGE_OPTIONS": '{"token": "a-key.json"}'}, "credentials never go in"),
        ({"TRIALSYNC_STORAGE_OPTIONS": '{"token": "anon"}'}, None),
        ({"TRIALSYNC_STORAGE_OPTIONS": '{"endpoint_url": "s3:9000"}'}, "http:// or https://"),
        ({"TRIALSYNC_SYNC_TIMEOUT": "-1"}, "sync_timeout must be a whole number of seconds"),
        ({"TRIALSYNC_UPLOAD_DIR": "ftp:/x"}, "has no scheme"),
        ({"TRIALSYNC_CHECKPOINT_PATTERN": "a/b"}, "checkpoint_pattern must be a glob of a"),
        ({"TRIALSYNC_SYNCER": "none", "TRIALSYNC_UPLOAD_DIR": ""}, None),
    ],
)
def test_bad_values_are_configuration_errors(
    tmp_path: pathlib.Path, env: dict[str, str], says: str | None
) -> None:
    env = {"TRIALSYNC_UPLOAD_DIR": "s3://bucket/x", **env}
    if says is None:  # the control: the same call with a good value parses
        parse(["--root", str(tmp_path)], env)
        return
    with pytest.raises(ConfigError) as info:
        parse(["--root", str(tmp_path)], env)
    assert says in str(info.value)


def test_missing_root_says_it_is_required() -> None:
    with pytest.raises(ConfigError, match=r"--root \(or TRIALSYNC_ROOT\) is required"):
        parse(["--upload-dir", "s3://bucket/x"], {})


def test_cli_exits_2_with_the_error_and_runs_nothing(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        ["sync", "--root", str(tmp_path), "--upload-dir", "s3://b/x", "--syncer", "none"]
    )
    assert code == 2
    assert "syncer=None disables syncing" in capsys.readouterr().err


def test_the_command_line_without_a_command_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main([]) == 2
    assert "usage: trialsync sync" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0
    assert "usage: trialsync sync" in capsys.readouterr().out
    assert cli.main(["push"]) == 2
    assert "unknown command 'push'" in capsys.readouterr().err


def test_a_misspelled_flag_is_fatal(tmp_path: pathlib.Path) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["sync", "--root", str(tmp_path), "--sync-perod", "3"])
    assert info.value.code == 2


def test_unknown_trialsync_variables_are_reported() -> None:
    env = {"TRIALSYNC_SYNC_PERIOD": "3", "TRIALSYNC_SYNC_PERIDO": "3", "OTHER": "x"}
    assert unknown_env(env, set()) == ["TRIALSYNC_SYNC_PERIDO"]


def test_a_worker_needs_an_upload_dir_or_the_head_url(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match=r"a worker needs --upload-dir \(cloud syncing\)"):
        parse(["--root", str(tmp_path)], {})


def test_syncing_with_the_head_node_needs_a_token(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="needs a token"):
        parse(["--root", str(tmp_path), "--head-url", "http://head:9747"], {})
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    settings = parse(
        ["--root", str(tmp_path), "--head-url", "http://head:9747"],
        {"TRIALSYNC_HEAD_TOKEN_FILE": str(token_file)},
    )
    assert settings.head_token == "s3cret"


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (
            ["--reconcile-interval", "-1"],
            "--reconcile-interval: reconcile_interval must be a positive number of seconds, "
            "or 0 (never), got -1",
        ),
        (["--reconcile-interval", "nan"], "reconcile_interval must be a positive number"),
        (
            ["--checkpoint-settle", "0"],
            "--checkpoint-settle: checkpoint_settle must be a whole number of seconds from 1 to "
            "3600, got 0",
        ),
        (["--checkpoint-settle", "0.5"], "checkpoint_settle must be a whole number"),
        (["--final-sync-timeout", "inf"], "final_sync_timeout must be a whole number of"),
        (["--poll-interval", "nan"], "--poll-interval: poll_interval must be a positive number"),
        (["--http-addr", "localhost"], "http_addr must be HOST:PORT, e.g. 0.0.0.0:9746"),
        (["--part-size", "1024"], "at least 5 MiB"),
        (["--mirror-deletes", "--syncer", "pkg.mod:Cls"], "mirror_deletes needs syncer 'auto'"),
        # Nothing left of it would restore the whole upload dir, which no one asked for.
        (["--restore-prefix", "/"], "--restore-prefix '/' must be a path below the upload"),
        (["--restore-prefix", "exp//t"], "'exp//t' must be a path below the upload dir"),
        (["--restore-prefix", "exp/../x"], "'exp/../x' must be a path below the upload dir"),
        (["--restore-prefix", "s3:x"], "'s3:x' must be a path below the upload dir"),
        (["--restore-prefix", "exp/."], "none of them empty, '.' or '..', and no ':'"),
    ],
)
def test_bad_flags_say_what_to_fix(tmp_path: pathlib.Path, flags: list[str], says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        parse(["--root", str(tmp_path), "--upload-dir", "s3://bucket/x", *flags], {})


def test_the_s3_client_can_be_pinned_to_botocore(tmp_path: pathlib.Path) -> None:
    args = ["--root", str(tmp_path), "--upload-dir", "s3://bucket/x"]
    assert parse(args, {}).s3_client == "auto"
    assert parse(args, {"TRIALSYNC_S3_CLIENT": "botocore"}).s3_client == "botocore"
    with pytest.raises(ConfigError, match="TRIALSYNC_S3_CLIENT: s3_client must be one of auto"):
        parse(args, {"TRIALSYNC_S3_CLIENT": "boto"})


def test_head_service_flags_fall_back_to_the_environment_and_have_defaults(
    tmp_path: pathlib.Path,
) -> None:
    head = ["--root", str(tmp_path), "--role", "head"]
    token = {"TRIALSYNC_HEAD_TOKEN": "t"}
    settings = parse(head, token)
    assert settings.receiver_max_object_size == 16 * 2**30
    assert settings.receiver_max_uploads == 64
    assert settings.receiver_claim_lease == 600
    assert settings.receiver_state_dir == str(tmp_path / ".trialsync-head")
    env = {
        **token,
        "TRIALSYNC_RECEIVER_MAX_OBJECT_SIZE": "1000",
        "TRIALSYNC_RECEIVER_MAX_UPLOADS": "3",
        "TRIALSYNC_RECEIVER_CLAIM_LEASE": "90",
        "TRIALSYNC_RECEIVER_STATE_DIR": str(tmp_path / "state"),
    }
    settings = parse(head, env)
    assert (settings.receiver_max_object_size, settings.receiver_max_uploads) == (1000, 3)
    assert settings.receiver_claim_lease == 90
    assert settings.receiver_state_dir == str(tmp_path / "state")
    worker = ["--root", str(tmp_path / "trials"), "--head-url", "http://head:9747"]
    (tmp_path / "trials").mkdir()
    assert parse(worker, token).head_identity_file == "/tmp/trialsync/head-identity.json"
    identity = {**token, "TRIALSYNC_HEAD_IDENTITY_FILE": str(tmp_path / "scratch" / "id")}
    assert parse(worker, identity).head_identity_file == str(tmp_path / "scratch" / "id")


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--role=head", "--receiver-max-object-size=0"], "receiver_max_object_size must be a"),
        (["--role=head", "--receiver-max-uploads=0"], "receiver_max_uploads must be a whole num"),
        (["--role=head", "--receiver-claim-lease=0"], "receiver_claim_lease must be a positive"),
        (["--head-url", "http://h:1", "--head-identity-file", "{root}/id"], "is inside --root"),
        (["--head-url", "ftp://h:1"], "--head-url 'ftp://h:1' must start with https://"),
        (["--head-url", "http://h:1", "--head-ca-file", "<ca file>"], "is for a worker whose"),
        (["--role=head", "--head-ca-file", "<ca file>"], "is for a worker whose --head-url"),
        (["--head-url", "https://h:1", "--head-ca-file", "{root}/no"], "/no: no such file"),
        (["--head-url", "https://h:1", "--head-ca-file", "<token file>"], "not a PEM certifi"),
        (["--role=head", "--receiver-cert-file", "<cert file>"], "give both --receiver-cert"),
        (["--role=head", "--receiver-key-file", "<key file>"], "give both --receiver-cert"),
        (
            [
                "--role=head",
                "--receiver-cert-file",
                "<cert file>",
                "--receiver-key-file",
                "<ca file>",
            ],
            "not a PEM certificate and its private key",
        ),
        (
            ["--head-url", "https://h:1", "--receiver-cert-file", "<cert file>"],
            "are for the head serving the head-node service",
        ),
    ],
)
def test_bad_head_service_flags_say_what_to_fix(
    tmp_path: pathlib.Path, flags: list[str], says: str
) -> None:
    files = secret_files(tmp_path)
    flags = [files.get(flag, flag.replace("{root}", str(tmp_path))) for flag in flags]
    with pytest.raises(ConfigError, match=re.escape(says)):
        parse(["--root", str(tmp_path), *flags], {"TRIALSYNC_HEAD_TOKEN": "t"})


def _readme_default(value: object) -> str:
    """How the README's flag table writes a default."""
    if value is None or value == ():
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        if value >= 2**30:
            return f"{value // 2**30} GiB"
        return f"{value // 2**20} MiB" if value >= 2**20 else f"{value:g}"
    return f"`{value}`"


def test_the_readme_states_every_flag_its_variable_and_its_default(tmp_path: pathlib.Path) -> None:
    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows: dict[str, tuple[str, str]] = {}
    for line in readme.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| `--") and len(cells) >= 3:
            dest = cells[0].strip("`").split()[0].replace("--[no-]", "--")[2:].replace("-", "_")
            rows[dest] = (cells[1], cells[2])
    assert set(rows) == set(ENV)
    defaults = parse(["--root", str(tmp_path), "--upload-dir", "s3://bucket/x"], {})
    actual = {
        **{dest: getattr(defaults, dest, None) for dest in rows},
        **{
            name: getattr(defaults.config, name)
            for name in ("sync_period", "sync_timeout", "sync_artifacts", "sync_on_checkpoint")
        },
        "upload_dir": None,
        "syncer": defaults.config.syncer,
        "checkpoint_pattern": defaults.layout.checkpoint_pattern,
        "exclude": defaults.layout.excludes,
        "storage_option": None,
        "head_token_file": None,
        "receiver_state_dir": f"<root>/{contract.HEAD_STATE_DIR}",
    }
    for dest, (env, default) in rows.items():
        assert env.startswith(f"`{ENV[dest]}`"), dest
        expected = "(required)" if dest == "root" else _readme_default(actual[dest])
        assert default == expected, f"--{dest}: README says {default}, the code {expected}"


def test_the_kubelets_service_links_of_a_head_service_are_no_unknown_settings() -> None:
    # A head Service trialsync-head-exp gives every pod of the namespace these variables.
    links = {
        "TRIALSYNC_HEAD_EXP_SERVICE_HOST": "10.96.0.12",
        "TRIALSYNC_HEAD_EXP_SERVICE_PORT": "9747",
        "TRIALSYNC_HEAD_EXP_SERVICE_PORT_TRIALSYNC_HEAD": "9747",
        "TRIALSYNC_HEAD_EXP_PORT": "tcp://10.96.0.12:9747",
        "TRIALSYNC_HEAD_EXP_PORT_9747_TCP": "tcp://10.96.0.12:9747",
        "TRIALSYNC_HEAD_EXP_PORT_9747_TCP_PROTO": "tcp",
        "TRIALSYNC_HEAD_EXP_PORT_9747_TCP_PORT": "9747",
        "TRIALSYNC_HEAD_EXP_PORT_9747_TCP_ADDR": "10.96.0.12",
    }
    assert unknown_env({**links, "TRIALSYNC_SYNC_PERIODS": "3"}, set()) == [
        "TRIALSYNC_SYNC_PERIODS"
    ]
