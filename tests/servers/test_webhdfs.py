"""HDFS through WebHDFS, on a real HDFS (the session's MiniDFSCluster): a file is replaced
whole, never seen in part; a writer's temporary files are never listed; the user the store
acts as is the one its options or its URL name."""

from __future__ import annotations

import asyncio
import os
import pathlib
import time
import uuid

import pytest

from localcluster.hdfs_server import HdfsServer
from localcluster.processes import free_ports
from trialsync._stores import webhdfs_io
from trialsync._stores.fsspec_store import RemoteStore

MiB = 2**20


async def test_a_file_rewritten_is_read_old_or_new_never_in_part(
    hdfs: HdfsServer, tmp_path: pathlib.Path
) -> None:
    # fsspec's own writes create the file empty and append to it: a reader there would see
    # b"", then a prefix of the new content.
    url = hdfs.url(f"{hdfs.make_dir()}/run")
    store = RemoteStore(url, hdfs.storage_options())
    old, new = os.urandom(3 * MiB), os.urandom(24 * MiB)
    (tmp_path / "new.bin").write_bytes(new)
    reads: list[bytes] = []
    try:
        await store.put_bytes("exp/state.bin", old)
        upload = asyncio.create_task(
            store.put_file(str(tmp_path / "new.bin"), "exp/state.bin", len(new))
        )
        while not upload.done():
            reads.append(await store.read_bytes("exp/state.bin"))
            listed = await store.list("exp")
            assert set(listed) == {"exp/state.bin"}, listed  # never the temporary name
        await upload
        reads.append(await store.read_bytes("exp/state.bin"))
    finally:
        await store.close()
    assert len(reads) >= 2
    assert all(data in (old, new) for data in reads), sorted({len(d) for d in reads})
    assert reads[-1] == new
    fs = hdfs.filesystem()
    root = url.split(hdfs.namenode, 1)[1]
    # Nothing left beside it: the temporary file was renamed into place.
    assert [p.rsplit("/", 1)[1] for p in fs.ls(f"{root}/exp")] == ["state.bin"]


async def test_a_temporary_file_a_dead_writer_left_is_not_listed(hdfs: HdfsServer) -> None:
    path = f"{hdfs.make_dir()}/run"
    fs = hdfs.filesystem()
    fs.pipe_file(f"{path}/exp/{webhdfs_io.TEMP_PREFIX}{uuid.uuid4().hex}", b"half")
    fs.pipe_file(f"{path}/exp/kept.json", b"{}")
    store = RemoteStore(hdfs.url(path), hdfs.storage_options())
    try:
        assert set(await store.list("exp")) == {"exp/kept.json"}
        assert await store.read_bytes("exp/kept.json") == b"{}"
    finally:
        await store.close()


async def test_a_listing_deletes_the_temporary_files_of_writers_dead_for_a_day(
    hdfs: HdfsServer,
) -> None:
    path = f"{hdfs.make_dir()}/run"
    fs = hdfs.filesystem()
    stale = f"{path}/exp/{webhdfs_io.TEMP_PREFIX}{uuid.uuid4().hex}"
    fresh = f"{path}/exp/trial/{webhdfs_io.TEMP_PREFIX}{uuid.uuid4().hex}"
    fs.pipe_file(stale, b"half")
    fs.pipe_file(fresh, b"being written")
    fs.pipe_file(f"{path}/exp/kept.json", b"{}")
    age_ms = int((time.time() - webhdfs_io.STALE_AFTER - 60) * 1000)
    fs._call("SETTIMES", "put", stale, modificationtime=age_ms)
    store = RemoteStore(hdfs.url(path), hdfs.storage_options())
    try:
        assert set(await store.list("exp")) == {"exp/kept.json"}
    finally:
        await store.close()
    assert not fs.exists(stale)
    assert fs.cat_file(fresh) == b"being written"  # its writer may still be at work


async def test_the_store_acts_as_the_user_its_options_or_its_url_name(
    hdfs: HdfsServer, tmp_path: pathlib.Path
) -> None:
    path = hdfs.make_dir()
    (tmp_path / "f").write_bytes(b"x" * 100)
    by_option = RemoteStore(hdfs.url(f"{path}/a"), {"user": "alice"})
    by_url = RemoteStore(f"webhdfs://bob@{hdfs.namenode}{path}/b", {})
    try:
        await by_option.put_file(str(tmp_path / "f"), "f", 100)
        await by_url.put_bytes("f", b"y")
        assert await by_url.stat("f") is not None
    finally:
        await by_option.close()
        await by_url.close()
    fs = hdfs.filesystem()
    assert fs.info(f"{path}/a/f")["owner"] == "alice"
    assert fs.info(f"{path}/b/f")["owner"] == "bob"


async def test_a_listing_reports_size_and_mtime_and_a_missing_file_reads_as_missing(
    hdfs: HdfsServer,
) -> None:
    store = RemoteStore(hdfs.url(f"{hdfs.make_dir()}/run"), hdfs.storage_options())
    try:
        await store.put_bytes("a/b/c.json", b"12345")
        (listed,) = (await store.list()).values()
        assert listed.size == 5
        assert listed.mtime is not None
        assert abs(listed.mtime - time.time()) < 300
        assert await store.read_range("a/b/c.json", 1, 3) == b"23"
        assert await store.list("nothing/here") == {}
        assert await store.stat("a/b") is None  # a directory
        await store.delete(["a/b/c.json", "a/b/gone.json"])  # one already gone: no error
        assert await store.list() == {}
        with pytest.raises(FileNotFoundError):
            await store.read_bytes("a/b/c.json")
    finally:
        await store.close()


async def test_data_proxy_rewrites_the_datanode_a_redirect_names(
    hdfs: HdfsServer, tmp_path: pathlib.Path
) -> None:
    # A pod reaches DataNodes by other names than those the NameNode redirects to.
    datanode = f"http://127.0.0.1:{hdfs.datanode_http_port}"
    path = hdfs.make_dir()
    (tmp_path / "f").write_bytes(b"z" * 1000)
    reachable = RemoteStore(
        hdfs.url(f"{path}/ok"),
        {
            **hdfs.storage_options(),
            "data_proxy": {datanode: f"http://localhost:{hdfs.datanode_http_port}"},
        },
    )
    (closed,) = free_ports(1)
    unreachable = RemoteStore(
        hdfs.url(f"{path}/no"),
        {**hdfs.storage_options(), "data_proxy": {datanode: f"http://127.0.0.1:{closed}"}},
    )
    try:
        await reachable.put_file(str(tmp_path / "f"), "f", 1000)
        assert await reachable.read_bytes("f") == b"z" * 1000
        with pytest.raises(OSError, match=str(closed)):
            await unreachable.put_file(str(tmp_path / "f"), "f", 1000)
        # Nothing left, not even the temporary file (the DataNode creates a file).
        assert hdfs.filesystem().find(f"{path}/no") == []
    finally:
        await reachable.close()
        await unreachable.close()
