"""SyncConfig mirrors the seed: its fields, defaults and validate_upload_dir."""

from __future__ import annotations

import dataclasses
import re

import pytest

from trialsync import SyncConfig, Syncer


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
    ["s3://bucket", "s3://bucket/exp/prefix", "gs://my-bucket/x", "gcs://b.c/d", "file:///data/x"],
)
def test_supported_upload_dirs_are_valid(uri: str) -> None:
    assert SyncConfig(upload_dir=uri).validate_upload_dir() is True


def test_no_upload_dir_is_valid() -> None:
    assert SyncConfig().validate_upload_dir() is True


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
        (" s3://bucket", "without spaces"),
        ("hdfs://namenode:8020/exp", "needs pyarrow"),
    ],
)
def test_invalid_upload_dir_is_refused_with_the_reason(uri: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        SyncConfig(upload_dir=uri).validate_upload_dir()


def test_syncer_none_with_an_upload_dir_is_an_error() -> None:
    with pytest.raises(ValueError, match="syncer=None disables syncing"):
        SyncConfig(upload_dir="s3://bucket/x", syncer=None).validate_upload_dir()


def test_syncer_none_without_upload_dir_disables_head_syncing() -> None:
    assert SyncConfig(syncer=None).validate_upload_dir() is True


@pytest.mark.parametrize(
    ("field", "value"), [("sync_period", 0), ("sync_period", -5), ("sync_timeout", 0)]
)
def test_non_positive_period_or_timeout_is_refused(field: str, value: int) -> None:
    config = dataclasses.replace(SyncConfig(), **{field: value})
    with pytest.raises(ValueError, match=f"{field} must be a positive number"):
        config.validate_upload_dir()


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
