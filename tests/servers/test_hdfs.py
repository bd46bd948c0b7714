"""HDFS both ways, ``webhdfs://`` (HTTP) and ``hdfs://`` (RPC, hdfs-native), on a real HDFS
(the session's MiniDFSCluster): a file is replaced whole, never seen in part; a writer's
temporary files are never listed; the user the store acts as is the one its options or its
URL name; a NameNode that refuses connections fails a call in seconds."""

from __future__ import annotations

import asyncio
import os
import pathlib
import time
import uuid

import pytest

from localcluster.hdfs_server import HdfsServer
from localcluster.processes import free_ports
from tests.support.fault_proxy import FaultProxy
from trialsync._stores import hdfs_rpc_io, hdfs_temp
from trialsync._stores.fsspec_store import RemoteStore

MiB = 2**20


@pytest.fixture(params=["webhdfs", "hdfs"])
def scheme(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _options(hdfs: HdfsServer, scheme: str) -> dict[str, str]:
    # hdfs:// acts as this process's user: its ``user`` option would set HADOOP_USER_NAME
    # for the whole process (the test of users below sets and restores it).
    return hdfs.storage_options() if scheme == "webhdfs" else {}


async def test_a_file_rewritten_is_read_old_or_new_never_in_part(
    hdfs: HdfsServer, scheme: str, tmp_path: pathlib.Path
) -> None:
    # fsspec's own writes create the file empty and append to it: a reader there would see
    # b"", then a prefix of the new content. So do hdfs-native's.
    path = f"{hdfs.make_dir()}/run"
    store = RemoteStore(hdfs.url(path, scheme), _options(hdfs, scheme))
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
    # Nothing left beside it: the temporary file was renamed into place.
    assert [p.rsplit("/", 1)[1] for p in fs.ls(f"{path}/exp")] == ["state.bin"]


async def test_a_temporary_file_a_dead_writer_left_is_not_listed(
    hdfs: HdfsServer, scheme: str
) -> None:
    path = f"{hdfs.make_dir()}/run"
    fs = hdfs.filesystem()
    fs.pipe_file(f"{path}/exp/{hdfs_temp.TEMP_PREFIX}{uuid.uuid4().hex}", b"half")
    fs.pipe_file(f"{path}/exp/kept.json", b"{}")
    store = RemoteStore(hdfs.url(path, scheme), _options(hdfs, scheme))
    try:
        assert set(await store.list("exp")) == {"exp/kept.json"}
        assert await store.read_bytes("exp/kept.json") == b"{}"
    finally:
        await store.close()


async def test_a_listing_deletes_the_temporary_files_of_writers_dead_for_a_day(
    hdfs: HdfsServer, scheme: str
) -> None:
    path = f"{hdfs.make_dir()}/run"
    fs = hdfs.filesystem()
    stale = f"{path}/exp/{hdfs_temp.TEMP_PREFIX}{uuid.uuid4().hex}"
    fresh = f"{path}/exp/trial/{hdfs_temp.TEMP_PREFIX}{uuid.uuid4().hex}"
    fs.pipe_file(stale, b"half")
    fs.pipe_file(fresh, b"being written")
    fs.pipe_file(f"{path}/exp/kept.json", b"{}")
    age_ms = int((time.time() - hdfs_temp.STALE_AFTER - 60) * 1000)
    fs._call("SETTIMES", "put", stale, modificationtime=age_ms)
    store = RemoteStore(hdfs.url(path, scheme), _options(hdfs, scheme))
    try:
        assert set(await store.list("exp")) == {"exp/kept.json"}
    finally:
        await store.close()
    assert not fs.exists(stale)
    assert fs.cat_file(fresh) == b"being written"  # its writer may still be at work


async def test_the_store_acts_as_the_user_its_options_or_its_url_name(
    hdfs: HdfsServer, scheme: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # hdfs:// sets HADOOP_USER_NAME for the process: restored after the test.
    monkeypatch.setenv(hdfs_rpc_io.USER_VARIABLE, "nobody-yet")
    path = hdfs.make_dir()
    (tmp_path / "f").write_bytes(b"x" * 100)
    fs = hdfs.filesystem()
    by_option = RemoteStore(hdfs.url(f"{path}/a", scheme), {"user": "alice"})
    try:
        await by_option.put_file(str(tmp_path / "f"), "f", 100)
    finally:
        await by_option.close()
    assert fs.info(f"{path}/a/f")["owner"] == "alice"
    address = hdfs.namenode if scheme == "webhdfs" else f"127.0.0.1:{hdfs.rpc_port}"
    by_url = RemoteStore(f"{scheme}://bob@{address}{path}/b", {})
    try:
        await by_url.put_bytes("f", b"y")
        assert await by_url.stat("f") is not None
    finally:
        await by_url.close()
    assert fs.info(f"{path}/b/f")["owner"] == "bob"


async def test_a_listing_reports_size_and_mtime_and_a_missing_file_reads_as_missing(
    hdfs: HdfsServer, scheme: str
) -> None:
    store = RemoteStore(hdfs.url(f"{hdfs.make_dir()}/run", scheme), _options(hdfs, scheme))
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


async def test_a_namenode_that_refuses_connections_fails_a_call_in_seconds(
    tmp_path: pathlib.Path,
) -> None:
    # hdfs-native on its own defaults was still trying after 90 s, in a thread that no
    # timeout stops; DEFAULT_CONFIG gives up after three tries. The error names the cause
    # in one line (no Java stack trace) and the store reports it from connect(), at start.
    (closed,) = free_ports(1)
    store = RemoteStore(f"hdfs://127.0.0.1:{closed}/exp", {})
    started = time.monotonic()
    try:
        with pytest.raises(OSError, match="Connection refused"):
            await store.connect()
    finally:
        await store.close()
    assert time.monotonic() - started < 20


async def test_a_namenode_that_cannot_be_reached_fails_a_listing_instead_of_emptying_it(
    hdfs: HdfsServer,
) -> None:
    # fsspec's find passes over a directory it cannot list: an empty listing, from which a
    # restore would bring back nothing and report ready. The store's listings raise.
    path = hdfs.make_dir()
    hdfs.filesystem().pipe_file(f"{path}/exp/t/a", b"x")
    host, port = hdfs.namenode.rsplit(":", 1)
    with FaultProxy(host, int(port), 0, error_rate=1.0) as failing:  # every answer a 5xx
        webhdfs = RemoteStore(
            f"webhdfs://127.0.0.1:{failing.port}/{path.lstrip('/')}", hdfs.storage_options()
        )
        try:
            with pytest.raises(OSError, match="Server Error"):
                await webhdfs.list()
        finally:
            await webhdfs.close()
    (closed,) = free_ports(1)
    rpc = RemoteStore(f"hdfs://127.0.0.1:{closed}/exp", {})
    try:
        with pytest.raises(OSError, match="Connection refused"):
            await rpc.list()
    finally:
        await rpc.close()


def with_a_file(hdfs: HdfsServer) -> tuple[str, RemoteStore]:
    """A fresh upload dir holding the file ``d/f``, and a store of it."""
    path = hdfs.make_dir()
    hdfs.filesystem().pipe_file(f"{path}/d/f", b"x")
    return path, RemoteStore(hdfs.url(path, "hdfs"), {})


async def test_a_hadoop_error_is_one_line_of_the_same_type(hdfs: HdfsServer) -> None:
    # The NameNode's answers carry its Java stack trace.
    _, store = with_a_file(hdfs)
    try:
        with pytest.raises(FileNotFoundError, match="File does not exist") as missing:
            await store.read_bytes("nothing")
        with pytest.raises(FileNotFoundError, match="Path is not a file") as directory:
            await store.read_bytes("d")
    finally:
        await store.close()
    for raised in (missing.value, directory.value):
        assert "\n" not in str(raised), str(raised)
        assert isinstance(raised.__cause__, type(raised))  # the whole one, kept as the cause
        assert "\n" in str(raised.__cause__)


async def test_a_namenode_error_the_client_passes_on_raw_is_one_line_of_its_java_class(
    hdfs: HdfsServer,
) -> None:
    # Listing below a file: hdfs-native raises a RuntimeError holding the NameNode's
    # AccessControlException and its whole stack trace.
    path, store = with_a_file(hdfs)
    try:
        with pytest.raises(OSError, match="is not a directory") as raised:
            await store.list("d/f/x")
    finally:
        await store.close()
    assert str(raised.value) == f"AccessControlException: {path}/d/f (is not a directory)"
    assert type(raised.value) is OSError  # not a denied permission
    assert isinstance(raised.value.__cause__, RuntimeError)
    assert "FSDirectory" in str(raised.value.__cause__)  # the trace, kept as the cause


def test_hdfs_storage_options_are_hadoop_configuration() -> None:
    config, user = hdfs_rpc_io.hadoop_config(
        {"dfs.client.use.datanode.hostname": True, "user": "alice", "x.y": 3}
    )
    assert user == "alice"
    assert config == {
        **hdfs_rpc_io.DEFAULT_CONFIG,
        "dfs.client.use.datanode.hostname": "true",
        "x.y": "3",
    }
    overridden, _ = hdfs_rpc_io.hadoop_config({"dfs.client.failover.max.attempts": "15"})
    assert overridden["dfs.client.failover.max.attempts"] == "15"
    with pytest.raises(ValueError, match="must be a Hadoop configuration value"):
        hdfs_rpc_io.hadoop_config({"data_proxy": {"a": "b"}})


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
