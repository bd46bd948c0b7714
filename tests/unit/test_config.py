"""SyncConfig mirrors the seed: its fields, defaults and validate_upload_dir."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest

from trialsync import SyncConfig, Syncer, config


def test_defaults_are_the_seeds() -> None:
    config = SyncConfig()
    assert dataclasses.asdict(config) == {
        "upload_dir": None,
        "syncer": "auto",
        "sync_period": 300,
        "sync_timeout": 1800,
        "sync_artifacts": True,
        "sync_on_checkpoint": True,
    }


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket",
        "s3://bucket/exp/prefix",
        "gs://my-bucket/x",
        "gcs://b.c/d",
        "file:///data/x",
        "webhdfs://namenode:9870/exp",
        "webhdfs://alice@namenode.hdfs.svc:9870/exp",
        "webhdfs://namenode:9870",
    ],
)
def test_supported_upload_dirs_are_valid(uri: str) -> None:
    assert SyncConfig(upload_dir=uri).validate_upload_dir() is True


def test_no_upload_dir_is_valid() -> None:
    assert SyncConfig().validate_upload_dir() is True


def test_a_path_given_to_validate_upload_dir_is_validated_instead_as_in_ray() -> None:
    assert SyncConfig().validate_upload_dir("s3://bucket/x") is True
    with pytest.raises(ValueError, match="'bucket/x' has no scheme"):
        SyncConfig(upload_dir="s3://bucket/x").validate_upload_dir("bucket/x")
    with pytest.raises(ValueError, match="syncer=None disables syncing"):
        SyncConfig(syncer=None).validate_upload_dir("s3://bucket/x")


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("bucket/prefix", "has no scheme"),
        ("s3:/bucket", "has no scheme"),
        ("nosuch://bucket/x", "unknown scheme 'nosuch'"),
        ("s3://", "no valid bucket name"),
        ("s3://Bad_Bucket!/x", "no valid bucket name"),
        ("s3://bucket//x", "empty path segment"),
        ("file://relative/path", "must be an absolute path"),
        (" s3://bucket", "without leading or trailing spaces"),
        ("s3://bucket/x\u3000", "without leading or trailing spaces"),
        ("s3\n://bucket/x", "upload_dir 's3\\n://bucket/x' has no scheme"),
        ("s3://bucket\n/x", "no valid bucket name"),
        ("c:\\data", "upload_dir 'c:\\\\data' has no scheme"),
        ("az://container/exp", "needs adlfs"),
        ("webhdfs://namenode/exp", "must name the NameNode's HTTP host and port"),
        ("webhdfs://namenode/exp", "fsspec's webhdfs would use 50070"),
        ("webhdfs:///exp", "webhdfs://namenode:9870/path"),
        ("webhdfs://:9870/exp", "must name the NameNode's HTTP host and port"),
        ("webhdfs://a@b@nn:9870/exp", "must name the NameNode's HTTP host and port"),
    ],
)
def test_invalid_upload_dir_is_refused_with_the_reason(uri: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        SyncConfig(upload_dir=uri).validate_upload_dir()


def test_hdfs_is_served_by_hdfs_native_and_refused_without_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert SyncConfig(upload_dir="hdfs://namenode:8020/exp").validate_upload_dir()
    # Without hdfs-native, fsspec would still find pyarrow's HDFS class (libhdfs, a JVM):
    # the store's client is hdfs-native's, so the URI is refused, naming the package.
    real = config.importlib.util.find_spec
    monkeypatch.setattr(
        config.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "hdfs_native" else real(name, *a),
    )
    with pytest.raises(ValueError, match="needs hdfs_native, which is not installed"):
        SyncConfig(upload_dir="hdfs://namenode:8020/exp").validate_upload_dir()


def test_syncer_none_with_an_upload_dir_is_an_error() -> None:
    with pytest.raises(ValueError, match="syncer=None disables syncing"):
        SyncConfig(upload_dir="s3://bucket/x", syncer=None).validate_upload_dir()


def test_syncer_none_without_upload_dir_disables_head_syncing() -> None:
    assert SyncConfig(syncer=None).validate_upload_dir() is True
    assert SyncConfig(syncer="none").validate_upload_dir() is True


def test_syncer_none_by_name_with_an_upload_dir_is_an_error_too() -> None:
    with pytest.raises(ValueError, match="syncer=None disables syncing"):
        SyncConfig(upload_dir="s3://bucket/x", syncer="none").validate_upload_dir()


@pytest.mark.parametrize("syncer", ["pkg.mod:Class", "instance"])
def test_a_custom_syncer_without_an_upload_dir_is_an_error(syncer: str) -> None:
    # As in Ray: a custom syncer moves checkpoints to and from an upload_dir; without one
    # it would be silently replaced by the head-node syncing.
    spec = _OnlyMemory() if syncer == "instance" else syncer
    with pytest.raises(ValueError, match="is a custom Syncer, which needs an upload_dir"):
        SyncConfig(syncer=spec).validate_upload_dir()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sync_period", 0),
        ("sync_period", -5),
        ("sync_period", 0.5),
        ("sync_period", 604801),
        ("sync_timeout", 0),
        ("sync_timeout", float("nan")),
        ("sync_timeout", True),
    ],
)
def test_a_period_or_timeout_out_of_bounds_is_refused(field: str, value: float) -> None:
    config = dataclasses.replace(SyncConfig(), **{field: value})
    with pytest.raises(
        ValueError,
        match=rf"{field} must be a whole number of seconds from 1 to 604800 \(a week\), got ",
    ):
        config.validate_upload_dir()


@pytest.mark.parametrize(("field", "value"), [("sync_period", 1), ("sync_timeout", 604800.0)])
def test_a_period_or_timeout_at_its_bounds_is_accepted(field: str, value: float) -> None:
    assert dataclasses.replace(SyncConfig(), **{field: value}).validate_upload_dir()


class _OnlyMemory(Syncer):
    def sync_up(self, local_dir: str, remote_dir: str, exclude: list[str] | None = None) -> bool:
        return True

    def sync_down(self, remote_dir: str, local_dir: str, exclude: list[str] | None = None) -> bool:
        return True

    def delete(self, remote_dir: str) -> bool:
        return True

    @classmethod
    def validate_upload_dir(cls, upload_dir: str) -> bool:
        if not upload_dir.startswith("memory://"):
            raise ValueError("this syncer writes to memory:// only")
        return True


def test_a_syncer_instance_validates_the_upload_dir_itself() -> None:
    assert SyncConfig(upload_dir="memory://x/y", syncer=_OnlyMemory()).validate_upload_dir()
    with pytest.raises(ValueError, match="memory:// only"):
        SyncConfig(upload_dir="s3://bucket/x", syncer=_OnlyMemory()).validate_upload_dir()


def test_the_seed_model_and_the_cli_load_no_storage_client() -> None:
    # A fresh interpreter: this test process has long imported fsspec.
    code = (
        "import sys, trialsync, trialsync.config, trialsync.cli\n"
        "trialsync.SyncConfig(upload_dir=None).validate_upload_dir()\n"
        "heavy = {'fsspec', 'aiohttp', 'botocore', 's3fs', 'gcsfs', 'trialsync._engine.engine'}\n"
        "print(sorted(m for m in sys.modules if m in heavy or m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_the_public_names_resolve_lazily() -> None:
    import trialsync
    from trialsync.syncer import FsspecSyncer

    assert trialsync.FsspecSyncer is FsspecSyncer
    assert "SyncConfig" in dir(trialsync)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = trialsync.Nope  # type: ignore[attr-defined]


def test_a_backend_check_decides_which_schemes_are_served() -> None:
    def only_s3(scheme: str, uri: str) -> None:
        if scheme != "s3":
            raise ValueError(f"{uri}: the sidecar image serves s3 only")

    assert SyncConfig(upload_dir="s3://bucket/x").validate_upload_dir(backend=only_s3)
    with pytest.raises(ValueError, match="serves s3 only"):
        SyncConfig(upload_dir="gs://bucket/x").validate_upload_dir(backend=only_s3)
    # The form is checked before the backend is asked.
    with pytest.raises(ValueError, match="no valid bucket name"):
        SyncConfig(upload_dir="s3://B/x").validate_upload_dir(backend=only_s3)


@pytest.mark.parametrize("syncer", ["auto", "none", "pkg.mod:Class", "a:B"])
def test_syncer_names_of_the_three_forms_are_valid(syncer: str) -> None:
    assert SyncConfig(upload_dir="s3://bucket/x" if syncer != "none" else None, syncer=syncer)


@pytest.mark.parametrize("syncer", ["", "pyarrow", "pkg.mod:", ":Class", "pkg..mod:C", "a b:C"])
def test_a_malformed_syncer_name_is_refused(syncer: str) -> None:
    with pytest.raises(ValueError, match=r"'package\.module:Class'"):
        SyncConfig(upload_dir="s3://bucket/x", syncer=syncer).validate_upload_dir()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), True, "300"])
def test_a_period_that_is_not_a_finite_number_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="sync_period must be a"):
        SyncConfig(sync_period=value).validate_upload_dir()  # type: ignore[arg-type]
