"""``trialsync_store_requests_total``: every store counts the requests it really sends, by
operation, on real servers (SeaweedFS for S3 through both clients, the GCS emulator, the
local file system) and on the head-node service."""

from __future__ import annotations

import collections
import os
import pathlib
from typing import Any

from tests.servers.conftest import Backend
from tests.support.head_service import TOKEN, Receiver
from trialsync._head.store import HeadStore
from trialsync._stores.fsspec_store import RemoteStore
from trialsync.metrics import STORE_OPERATIONS, Metrics

MiB = 2**20
PART = 5 * MiB  # S3's smallest part; GCS chunks are 256 KiB multiples of it


async def test_each_store_counts_its_requests_by_operation(
    backend: Backend, tmp_path: pathlib.Path, monkeypatch: Any
) -> None:
    for key, value in backend.env.items():
        monkeypatch.setenv(key, value)
    sent: collections.Counter[str] = collections.Counter()
    store = RemoteStore(
        backend.url,
        backend.storage_options,
        part_size=PART,
        on_request=lambda operation: sent.update([operation]),
        **backend.store_options,
    )
    small, large = tmp_path / "small.bin", tmp_path / "large.bin"
    small.write_bytes(os.urandom(1000))
    large.write_bytes(os.urandom(2 * PART + 7))  # three parts or chunks
    try:
        await store.connect()
        await store.put_bytes("exp/a.json", b"{}")
        await store.put_file(str(small), "exp/small.bin", 1000)
        await store.put_file(str(large), "exp/large.bin", 2 * PART + 7)
        listed = await store.list("exp")
        assert await store.read_bytes("exp/a.json") == b"{}"
        assert len(await store.read_range("exp/large.bin", 0, 10)) == 10
        assert await store.stat("exp/small.bin") is not None
        await store.delete(["exp/a.json", "exp/small.bin"])
    finally:
        await store.close()
    assert set(listed) == {"exp/a.json", "exp/small.bin", "exp/large.bin"}
    assert set(sent) <= set(STORE_OPERATIONS)
    if backend.name in ("s3", "s3-botocore"):
        # Every HTTP request: a part each, the listing page that probes and the one that
        # stats, one DELETE per object.
        expected = {
            "list": 3,
            "put": 2,
            "multipart_start": 1,
            "put_part": 3,
            "multipart_complete": 1,
            "get": 2,
            "delete": 2,
        }
        if backend.name == "s3-botocore":
            expected["head"] = 1  # s3fs heads an object before reading it whole
    elif backend.name == "gs":
        # Uploads request by request (a resumable upload's chunks); the rest a call each.
        expected = {
            "list": 2,
            "put": 2,
            "multipart_start": 1,
            "put_part": 3,
            "get": 2,
            "head": 1,
            "delete": 1,
        }
    elif backend.name in ("webhdfs", "hdfs"):
        # A file goes up under a temporary name (WebHDFS: one CREATE, the NameNode's
        # redirect and the DataNode's PUT, counted as one put), renamed into place (other);
        # one delete per path.
        expected = {"list": 2, "put": 3, "other": 3, "get": 2, "head": 1, "delete": 2}
    else:
        expected = {"list": 2, "put": 3, "get": 2, "head": 1, "delete": 1}
    assert dict(sent) == expected


def test_counting_a_request_is_one_increment_of_a_bound_child() -> None:
    metrics = Metrics()
    for operation in STORE_OPERATIONS:
        metrics.count_request(operation)
    metrics.count_request("something new")  # a backend's own: other
    samples = {
        s.labels["operation"]: s.value
        for family in metrics.registry.collect()
        if family.name == "trialsync_store_requests"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert samples == {**dict.fromkeys(STORE_OPERATIONS, 1.0), "other": 2.0}


async def test_the_head_node_client_counts_its_requests(
    head: Receiver, tmp_path: pathlib.Path
) -> None:
    metrics = Metrics()
    store = HeadStore(head.url, TOKEN, metrics=metrics)
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    try:
        await store.connect()  # registers: other
        await store.put_file(str(model), "exp/t/checkpoint_000001/model.pt")
        await store.put_bytes("exp/t/result.json", b"{}")
        assert set(await store.list("exp/t")) == {
            "exp/t/checkpoint_000001/model.pt",
            "exp/t/result.json",
        }
        assert await store.read_bytes("exp/t/result.json") == b"{}"
        assert await store.read_range("exp/t/result.json", 0, 1) == b"{"
        await store.delete(["exp/t/result.json"])
    finally:
        await store.close()  # releases its claims: other
    counted = {
        s.labels["operation"]: s.value
        for family in metrics.registry.collect()
        if family.name == "trialsync_store_requests"
        for s in family.samples
        if s.name.endswith("_total") and s.value
    }
    assert counted == {"other": 2, "put": 2, "list": 1, "get": 2, "delete": 1}
