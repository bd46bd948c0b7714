"""A SyncConfig object read and validated by the operator (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.pods import SIDECAR
from trialsync_operator import names
from trialsync_operator.syncconfig import SidecarImage, view_of


def _config(spec: Any, name: str = "exp") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ml", "uid": "u1", "generation": 4},
        "spec": spec,
    }


def test_an_empty_spec_has_the_seeds_defaults_and_syncs_to_the_head_node() -> None:
    view = view_of(_config({}), SIDECAR)
    assert view.valid, view.message
    assert (view.upload_dir, view.syncer, view.sync_period, view.sync_timeout) == (
        None,
        "auto",
        300,
        1800,
    )
    assert view.sync_artifacts
    assert view.sync_on_checkpoint
    assert (view.mode, view.destination) == ("head", "head node")
    assert (view.key, view.uid, view.generation) == (("ml", "exp"), "u1", 4)


def test_a_backend_the_sidecar_image_serves_is_valid_whatever_the_operator_has() -> None:
    # gcsfs need not be installed beside the operator: the sidecar image serves gs://.
    assert view_of(_config({"uploadDir": "gs://bucket/x"}), SIDECAR).valid


def test_a_backend_the_sidecar_image_lacks_is_refused_saying_how_to_fix_it() -> None:
    view = view_of(_config({"uploadDir": "abfs://container/x"}), SIDECAR)
    assert not view.valid
    assert "cannot serve abfs:// (it needs adlfs)" in view.message
    assert "spec.sidecar.image" in view.message
    assert view.reason == "SchemeNotServed"


def test_hdfs_is_served_both_ways_by_the_image() -> None:
    hdfs = view_of(_config({"uploadDir": "hdfs://namenode:8020/x"}), SIDECAR)
    assert hdfs.valid, hdfs.message
    # Hadoop configuration in spec.storage.options: single values, passed on as they are.
    options = {"dfs.client.use.datanode.hostname": "true", "user": "hdfs"}
    configured = view_of(
        _config({"uploadDir": "hdfs://namenode:8020/x", "storage": {"options": options}}),
        SIDECAR,
    )
    assert configured.valid, configured.message
    webhdfs = view_of(_config({"uploadDir": "webhdfs://namenode:9870/x"}), SIDECAR)
    assert webhdfs.valid, webhdfs.message
    no_port = view_of(_config({"uploadDir": "webhdfs://namenode/x"}), SIDECAR)
    assert not no_port.valid
    assert "must name the NameNode's HTTP host and port" in no_port.message


@pytest.mark.parametrize("uri", ["file:///data/checkpoints", "FILE:///x"])
def test_a_local_path_is_refused_as_one_the_sidecar_cannot_write(uri: str) -> None:
    view = view_of(_config({"uploadDir": uri}), SIDECAR)
    assert not view.valid
    assert (view.reason, view.mode) == ("PathNotWritable", "upload")
    assert f"upload_dir {uri!r}" in view.message or f'upload_dir "{uri}"' in view.message
    assert "read-only" in view.message


def test_an_invalid_spec_has_the_generic_reason_and_a_deleted_one_says_so() -> None:
    assert view_of(_config({"syncPeriod": 0}), SIDECAR).reason == "InvalidSpec"
    body = _config({})
    assert not view_of(body, SIDECAR).terminating
    body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert view_of(body, SIDECAR).terminating


def test_a_custom_image_is_trusted_with_its_backends() -> None:
    spec = {"uploadDir": "abfs://container/x", "sidecar": {"image": "me/sidecar:azure"}}
    assert view_of(_config(spec), SIDECAR).valid


ADMIN_ALLOWS = SidecarImage(
    "docker.io/trialsync/sidecar:0.1.0",
    frozenset({"s3"}),
    allowed=("registry.example.com/team/*", "mirror.example.com/trialsync/sidecar:0.1.0"),
)


@pytest.mark.parametrize(
    "image",
    [
        "docker.io/trialsync/sidecar:0.1.0",  # the operator's own, always
        "registry.example.com/team/sidecar:2",  # under an allowed prefix
        "registry.example.com/team/sub/sidecar@sha256:" + "0" * 64,
        "mirror.example.com/trialsync/sidecar:0.1.0",  # an exact entry
    ],
)
def test_an_image_the_cluster_admin_allows_is_valid(image: str) -> None:
    view = view_of(_config({"sidecar": {"image": image}}), ADMIN_ALLOWS)
    assert view.valid, view.message


@pytest.mark.parametrize(
    "image",
    [
        "me/sidecar:1",
        "registry.example.com/team",  # the prefix is the text before the *, slash included
        "registry.example.com/teams/sidecar:1",
        "mirror.example.com/trialsync/sidecar:0.1.1",  # an exact entry allows only itself
        "docker.io/trialsync/sidecar:0.1.0x",
    ],
)
def test_an_image_the_cluster_admin_does_not_allow_is_refused_naming_the_value(image: str) -> None:
    view = view_of(_config({"sidecar": {"image": image}}), ADMIN_ALLOWS)
    assert not view.valid
    assert view.message.startswith(f"spec.sidecar.image {image} is not an allowed sidecar image")
    assert "registry.example.com/team/*" in view.message
    assert "sidecar.allowedImages" in view.message


def test_by_default_only_the_operators_own_image_is_allowed() -> None:
    own = SidecarImage("docker.io/trialsync/sidecar:0.1.0", frozenset({"s3"}))
    assert view_of(_config({"sidecar": {"image": own.image}}), own).valid
    assert not view_of(_config({"sidecar": {"image": "me/sidecar:hdfs"}}), own).valid


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ({"uploadDir": "s3://bucket/x", "syncer": "none"}, "syncer=None disables syncing"),
        ({"uploadDir": "bucket/x"}, "has no scheme"),
        ({"uploadDir": "s3://B/x"}, "no valid bucket name"),
        ({"syncPeriod": 0}, "spec.syncPeriod: sync_period must be a whole number of seconds"),
        ({"syncTimeout": 10**12}, "from 1 to 604800 (a week), got 1000000000000"),
        ({"syncPeriod": "300"}, "sync_period must be a whole number of seconds from 1 to"),
        ({"syncArtifacts": "yes"}, "spec.syncArtifacts: sync_artifacts must be true or false"),
        ({"syncer": "pkg.mod:Class", "uploadDir": "s3://bucket/x"}, "set sidecar.image"),
        ({"syncer": "pkg.mod"}, "'package.module:Class'"),
        ({"storage": {"options": {"secret": "hunter2"}}}, "credentials never go in storage"),
        ({"storage": {"endpoint": "minio:9000"}}, "must be an http:// or https:// URL"),
        (
            {"uploadDir": "hdfs://nn:8020/x", "storage": {"region": "eu-west-1"}},
            "spec.storage.region does not apply to an hdfs:// upload dir",
        ),
        (
            {"uploadDir": "hdfs://nn:8020/x", "storage": {"options": {"a.b": '{"c": 1}'}}},
            "storage option 'a.b' of an hdfs:// upload dir must be a Hadoop configuration",
        ),
        ({"credentials": {"secretRef": {"name": "a"}, "serviceAccount": {}}}, "not both"),
        ({"excludes": ["a,b"]}, "a glob must not contain ','"),
        ({"checkpointPattern": "a/b"}, "glob of a directory name"),
        ({"sidecar": {"resources": {"limits": {"gpu": "1"}}}}, "only cpu, memory"),
        ([], "spec must be an object"),
        (
            {"sidecar": {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "500m"}}}},
            "the cpu request 2 is above its limit 500m",
        ),
        ({"sidecar": {"resources": {"limits": {"memory": "lots"}}}}, "not a resource quantity"),
        ({"sidecar": {"resources": {"limits": {"memory": "1e999"}}}}, "too large"),
        ({"checkpointSettleSeconds": 3601}, "from 1 to 3600, got 3601"),
        ({"finalSyncTimeoutSeconds": 86401}, "from 1 to 86400, got 86401"),
        ({"mirrorDeletes": True, "syncer": "none"}, "mirror_deletes needs syncer 'auto'"),
        ({"credentials": {"secretRef": {"name": "My Secret"}}}, "must name a Secret"),
        ({"syncPeriod": 10**5000}, "from 1 to 604800 (a week), got (a number too long"),
    ],
)
def test_an_invalid_spec_is_refused_with_a_message_that_says_what_to_fix(
    spec: Any, says: str
) -> None:
    view = view_of(_config(spec), SIDECAR)
    assert not view.valid
    assert says in view.message


def test_storage_settings_become_fsspec_storage_options() -> None:
    spec = {
        "uploadDir": "s3://bucket/x",
        "storage": {
            "endpoint": "http://seaweedfs:8333",
            "region": "eu-west-1",
            "addressingStyle": "path",
            "options": {"use_ssl": "false", "default_block_size": "5242880"},
        },
    }
    options = json.loads(view_of(_config(spec), SIDECAR).storage_options)
    assert options == {
        "endpoint_url": "http://seaweedfs:8333",
        "client_kwargs": {"region_name": "eu-west-1"},
        "config_kwargs": {"s3": {"addressing_style": "path"}},
        "use_ssl": False,
        "default_block_size": 5242880,
    }


def test_the_webhdfs_options_the_readme_names_reach_fsspec_as_its_keywords() -> None:
    # README, "Upload dir schemes": the user, HTTPS and DataNode addresses of WebHDFS.
    spec = {
        "uploadDir": "webhdfs://namenode:9870/x",
        "storage": {
            "options": {
                "user": "hdfs",
                "use_https": "true",
                "data_proxy": '{"http://dn-0:9864": "http://dn-0.hdfs.svc:9864"}',
            }
        },
    }
    view = view_of(_config(spec), SIDECAR)
    assert view.valid, view.message
    assert json.loads(view.storage_options) == {
        "user": "hdfs",
        "use_https": True,
        "data_proxy": {"http://dn-0:9864": "http://dn-0.hdfs.svc:9864"},
    }


def test_names_of_head_objects_are_valid_service_names_and_distinct() -> None:
    long = "a" * 63
    dotted = "exp.v2"
    for name in (long, dotted, "7days"):
        service = names.head_service_name(name)
        assert len(service) <= 63
        assert service[0].isalpha()
        assert service.replace("-", "").isalnum()
    assert names.head_service_name("exp.v2") != names.head_service_name("exp-v2")
    assert names.head_url("exp", "ml") == "https://trialsync-head-exp.ml.svc:9747"
    uid = "0b6a5c1e-0000-4000-8000-000000000004"
    for name in (long, dotted, "exp"):
        secret = names.head_secret_name(name, uid)
        assert len(secret) <= 63
        # Never the name an earlier version gave its token-only Secret.
        assert secret != names.dns_label("trialsync-head", f"{name}-{uid[:8]}")
    assert names.head_secret_name("exp", uid) == "trialsync-head-exp-0b6a5c1e-tls"
