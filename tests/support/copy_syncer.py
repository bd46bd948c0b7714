"""A custom Syncer as a user would write one: copies directories to a file:// target."""

from __future__ import annotations

import shutil

from trialsync import Syncer


def _path(uri: str) -> str:
    if not uri.startswith("file://"):
        raise ValueError(f"CopySyncer writes to file:// URIs only, got {uri!r}")
    return uri[len("file://") :]


class CopySyncer(Syncer):
    def sync_up(self, local_dir: str, remote_dir: str, exclude: list[str] | None = None) -> bool:
        shutil.copytree(local_dir, _path(remote_dir), dirs_exist_ok=True)
        return True

    def sync_down(self, remote_dir: str, local_dir: str, exclude: list[str] | None = None) -> bool:
        shutil.copytree(_path(remote_dir), local_dir, dirs_exist_ok=True)
        return True

    def delete(self, remote_dir: str) -> bool:
        shutil.rmtree(_path(remote_dir), ignore_errors=True)
        return True

    @classmethod
    def validate_upload_dir(cls, upload_dir: str) -> bool:
        _path(upload_dir)
        return True
