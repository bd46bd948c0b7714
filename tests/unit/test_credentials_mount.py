"""A credentials Secret volume read as the sidecar's environment (``_stores/credentials``),
laid out and updated as the kubelet does it (``tests/support/secret_volume.py``)."""

from __future__ import annotations

import threading
from pathlib import Path

from tests.support import secret_volume
from trialsync._stores import credentials


def test_keys_named_like_variables_become_variables_and_other_files_stay_files(
    tmp_path: Path,
) -> None:
    mount = tmp_path / "credentials"
    secret_volume.publish(
        mount,
        {
            "AWS_ACCESS_KEY_ID": "AK1\n",  # as `kubectl create secret --from-file` keeps it
            "AWS_SECRET_ACCESS_KEY": "s1",
            "key.json": "{}",
            "TRIALSYNC_SYNC_PERIOD": "1",
        },
    )
    env: dict[str, str] = {"TRIALSYNC_SYNC_PERIOD": "300"}
    secret = credentials.MountedSecret(str(mount), env)
    assert secret.refresh() == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    assert env == {
        "AWS_ACCESS_KEY_ID": "AK1",
        "AWS_SECRET_ACCESS_KEY": "s1",
        "TRIALSYNC_SYNC_PERIOD": "300",  # settings never come from the Secret
    }
    assert secret.refresh() == []  # the same version: one readlink, nothing read


def test_a_new_version_replaces_the_values_and_a_dropped_key_gives_back_the_started_one(
    tmp_path: Path,
) -> None:
    mount = tmp_path / "credentials"
    secret_volume.publish(mount, {"AWS_ACCESS_KEY_ID": "AK1", "AWS_SESSION_TOKEN": "tok"})
    env = {"AWS_SESSION_TOKEN": "from-the-start", "AWS_REGION": "eu-west-1"}
    secret = credentials.MountedSecret(str(mount), env)
    secret.refresh()
    first = credentials.fingerprint(mount=secret.identity)
    assert env["AWS_SESSION_TOKEN"] == "tok"
    secret_volume.publish(mount, {"AWS_ACCESS_KEY_ID": "AK2"})
    assert secret.refresh() == ["AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN"]
    assert env == {
        "AWS_ACCESS_KEY_ID": "AK2",
        "AWS_SESSION_TOKEN": "from-the-start",
        "AWS_REGION": "eu-west-1",
    }
    assert credentials.fingerprint(mount=secret.identity) != first


def test_without_a_mount_the_environment_is_left_as_it_is(tmp_path: Path) -> None:
    env = {"AWS_ACCESS_KEY_ID": "from-env"}
    secret = credentials.MountedSecret(str(tmp_path / "none"), env)
    assert secret.refresh() == []
    assert secret.identity is None
    assert env == {"AWS_ACCESS_KEY_ID": "from-env"}


def test_a_plain_directory_is_read_too_and_its_changes_are_seen(tmp_path: Path) -> None:
    mount = tmp_path / "plain"
    mount.mkdir()
    (mount / "AWS_ACCESS_KEY_ID").write_text("AK1")
    env: dict[str, str] = {}
    secret = credentials.MountedSecret(str(mount), env)
    secret.refresh()
    new = mount / "AWS_ACCESS_KEY_ID.new"
    new.write_text("AK2")
    new.rename(mount / "AWS_ACCESS_KEY_ID")
    assert secret.refresh() == ["AWS_ACCESS_KEY_ID"]
    assert env["AWS_ACCESS_KEY_ID"] == "AK2"


def test_a_key_and_its_secret_always_come_from_one_version_while_versions_are_swapped(
    tmp_path: Path,
) -> None:
    mount = tmp_path / "credentials"
    secret_volume.publish(mount, {"AWS_ACCESS_KEY_ID": "AK0", "AWS_SECRET_ACCESS_KEY": "s0"})
    done = threading.Event()

    def rotate() -> None:
        n = 0
        while not done.is_set():
            n += 1
            secret_volume.publish(
                mount, {"AWS_ACCESS_KEY_ID": f"AK{n}", "AWS_SECRET_ACCESS_KEY": f"s{n}"}
            )

    writer = threading.Thread(target=rotate)
    writer.start()
    seen = set()
    try:
        for _ in range(300):
            env: dict[str, str] = {}
            secret = credentials.MountedSecret(str(mount), env)
            try:
                secret.refresh()
            except OSError as exc:  # it kept changing: said so, nothing half-applied
                refused = str(exc)
            else:
                refused = ""
            if refused:
                assert "kept changing" in refused
                assert env == {}
                continue
            assert env["AWS_ACCESS_KEY_ID"][2:] == env["AWS_SECRET_ACCESS_KEY"][1:]
            seen.add(env["AWS_ACCESS_KEY_ID"])
    finally:
        done.set()
        writer.join()
    assert len(seen) > 1  # versions really changed under the reader
