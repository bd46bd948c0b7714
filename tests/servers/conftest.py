"""Backends for the conformance suite: the same behaviour proven on every store."""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec
import pytest

from tests.support.sidecar_process import Sidecar


@dataclasses.dataclass
class Backend:
    """An upload dir on a real store, with a separate client to inspect what landed."""

    name: str
    url: str
    storage_options: dict[str, Any]
    env: dict[str, str]
    # RemoteStore keywords: "s3-botocore" runs the suite on the botocore fallback path.
    store_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    @functools.cached_property
    def _reader_and_root(self) -> tuple[Any, str]:
        # Never fsspec's instance cache: a fork whose child runs Python (a preexec_fn)
        # clears it there, and dropping an hdfs-native client in that child hangs.
        fs, root = fsspec.core.url_to_fs(self.url, skip_instance_cache=True, **self.storage_options)
        return fs, str(root).rstrip("/")

    def reader(self) -> Any:
        """One client for the test's own reads, with nothing cached from earlier reads."""
        fs = self._reader_and_root[0]
        fs.invalidate_cache()
        return fs

    def _root(self) -> str:
        return self._reader_and_root[1]

    def listing(self) -> dict[str, int]:
        """{root-relative path: size} of every object under the upload dir."""
        fs = self.reader()
        root = self._root()
        try:
            found = fs.find(root, detail=True)
        except FileNotFoundError:
            return {}
        return {
            fs._strip_protocol(name)[len(root) + 1 :]: int(info["size"])
            for name, info in found.items()
            if info.get("type", "file") == "file"
        }

    def read(self, rel: str) -> bytes:
        data: bytes = self.reader().cat_file(f"{self._root()}/{rel}")
        return data


@pytest.fixture
def root(tmp_path: pathlib.Path) -> pathlib.Path:
    """An empty local root, the trial volume a sidecar watches."""
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def sidecars() -> Iterator[list[Sidecar]]:
    """Sidecar processes a test starts; each is stopped (SIGTERM) at teardown."""
    started: list[Sidecar] = []
    yield started
    for sidecar in started:
        sidecar.stop()


@pytest.fixture
def s3(seaweedfs: Any) -> Backend:
    """An upload dir on the session's SeaweedFS, through the lean S3 client."""
    return Backend(
        "s3",
        f"s3://{seaweedfs.make_bucket()}/run-{uuid.uuid4().hex[:8]}",
        seaweedfs.storage_options(),
        seaweedfs.env(),
    )


@pytest.fixture(params=["s3", "s3-botocore", "gs", "webhdfs", "hdfs", "file"])
def backend(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Backend:
    run = uuid.uuid4().hex[:8]
    if request.param in ("s3", "s3-botocore"):
        server = request.getfixturevalue("seaweedfs")
        bucket = server.make_bucket()
        botocore = request.param == "s3-botocore"
        return Backend(
            request.param,
            f"s3://{bucket}/run-{run}",
            server.storage_options(),
            {**server.env(), "TRIALSYNC_S3_CLIENT": "botocore" if botocore else "auto"},
            {"s3_botocore": botocore},
        )
    if request.param == "gs":
        server = request.getfixturevalue("fake_gcs")
        bucket = server.make_bucket()
        return Backend("gs", f"gs://{bucket}/run-{run}", server.storage_options(), server.env())
    if request.param == "webhdfs":
        server = request.getfixturevalue("hdfs")
        options = server.storage_options()
        # A sidecar process takes the same options (the user it acts as) from its environment.
        env = {"TRIALSYNC_STORAGE_OPTIONS": json.dumps(options)}
        return Backend("webhdfs", server.url(f"{server.make_dir()}/run-{run}"), options, env)
    if request.param == "hdfs":
        # HDFS's own RPC protocol (hdfs-native), as the user this process runs as.
        server = request.getfixturevalue("hdfs")
        return Backend("hdfs", server.url(f"{server.make_dir()}/run-{run}", "hdfs"), {}, {})
    remote = tmp_path / "remote"
    remote.mkdir()
    return Backend("file", f"file://{remote}", {}, {})
