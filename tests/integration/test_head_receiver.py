"""The head-node receiver and HeadStore over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from trialsync import head_receiver
from trialsync.engine import EngineOptions, SyncEngine
from trialsync.head_store import HeadStore, HeadStoreError
from trialsync.layout import MANIFEST_NAME
from trialsync.metrics import Metrics

pytestmark = pytest.mark.timeout(30)

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def outside(tmp_path: pathlib.Path) -> pathlib.Path:
    """A sibling of the root holding a file no request may touch."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret").write_bytes(b"keep me")
    return path


@pytest.fixture
async def port(root: pathlib.Path) -> AsyncIterator[int]:
    """A receiver on 127.0.0.1 with a short idle timeout, so stalled uploads end quickly."""
    app = head_receiver.make_app(str(root), TOKEN, idle_timeout=1.0)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield client


async def raw_request(
    port: int, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> tuple[int, bytes]:
    """Send exactly ``target`` (no client-side path normalisation); returns status and body."""
    head = {"Host": "127.0.0.1", "Connection": "close", "Content-Length": str(len(body))}
    head.update(headers or {})
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
    writer.write(f"{method} {target} HTTP/1.1\r\n{lines}\r\n".encode() + body)
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def short_put(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A PUT that declares 100 bytes and sends 10, on a raw connection left open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"PUT /v1/objects/exp/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Length: 100\r\n\r\n0123456789".encode()
    )
    return reader, writer


def tree(path: pathlib.Path) -> dict[str, bytes]:
    """Every regular file below ``path`` (hidden ones included) with its content."""
    return {
        p.relative_to(path).as_posix(): p.read_bytes()
        for p in path.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


def temp_files(path: pathlib.Path) -> list[str]:
    return [p.name for p in path.rglob(f"*{head_receiver.TEMP_MARKER}*")]


async def eventually_equal(path: pathlib.Path, expected: dict[str, bytes]) -> None:
    """The server cleans up after its handler sees the disconnect; give it a moment."""
    for _ in range(100):
        if tree(path) == expected:
            return
        await asyncio.sleep(0.05)
    assert tree(path) == expected


# -- start-up and authentication -------------------------------------------------------------


async def test_start_serves_healthz_without_token_and_refuses_an_empty_token(
    root: pathlib.Path, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(ValueError, match="token"):
        await head_receiver.start(str(root), "127.0.0.1:0", "")
    runner, port = await head_receiver.start(str(root), "127.0.0.1:0", TOKEN)
    try:
        assert port > 0
        async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
            assert response.status == 200
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer "],
)
async def test_requests_without_the_right_token_get_401_and_change_nothing(
    root: pathlib.Path, port: int, session: aiohttp.ClientSession, authorization: str | None
) -> None:
    (root / "exp").mkdir()
    (root / "exp" / "kept").write_bytes(b"original")
    headers = {"Authorization": authorization} if authorization is not None else {}
    base = f"http://127.0.0.1:{port}/v1/objects"
    calls = [
        ("PUT", f"{base}/exp/new", b"data"),
        ("PUT", f"{base}/exp/kept", b"overwritten"),
        ("GET", f"{base}/exp/kept", None),
        ("GET", f"{base}?prefix=", None),
        ("DELETE", f"{base}/exp/kept", None),
    ]
    for method, url, data in calls:
        async with session.request(method, url, data=data, headers=headers) as response:
            assert response.status == 401, (method, url)
            assert "token" in (await response.json())["error"]
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert tree(root) == {"exp/kept": b"original"}


# -- path validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rel",
    [
        "../x",
        "a/../../x",
        "%2E%2E/x",
        "a/%2e%2e/%2e%2e/x",
        "/etc/passwd",
        "%2Fetc%2Fpasswd",
        "a//b",
        "a%2F%2Fb",
        "./a",
        "a/",
        "a%5C..%5Cx",
        "a%00b",
        ".x.trialsync-tmp-1234",
    ],
)
async def test_unsafe_paths_get_400_naming_the_path_and_write_nothing(
    tmp_path: pathlib.Path, root: pathlib.Path, outside: pathlib.Path, port: int, rel: str
) -> None:
    for method in ("PUT", "GET", "DELETE"):
        status, body = await raw_request(port, method, f"/v1/objects/{rel}", AUTH, b"evil")
        assert status == 400, (method, rel)
        assert "error" in json.loads(body)
    status, _ = await raw_request(port, "GET", f"/v1/objects?prefix={rel}", AUTH)
    assert status == 400
    assert tree(tmp_path) == {"outside/secret": b"keep me"}


def test_resolve_refuses_the_empty_path_and_accepts_plain_ones(root: pathlib.Path) -> None:
    real = os.path.realpath(root)
    with pytest.raises(head_receiver.PathError, match="empty"):
        head_receiver.resolve(real, "")
    assert head_receiver.resolve(real, "", allow_root=True) == real
    assert head_receiver.resolve(real, "exp/t_lr=0.1,b=2/x") == f"{real}/exp/t_lr=0.1,b=2/x"


async def test_symlinks_out_of_the_root_are_never_followed(
    root: pathlib.Path, outside: pathlib.Path, port: int
) -> None:
    (root / "dirlink").symlink_to(outside, target_is_directory=True)
    (root / "filelink").symlink_to(outside / "secret")
    (root / "inner").mkdir()
    (root / "inner" / "up").symlink_to("../../outside", target_is_directory=True)
    for rel in ("dirlink/new", "dirlink/secret", "filelink", "inner/up/secret", "inner/up/x/y"):
        for method in ("PUT", "GET", "DELETE"):
            status, body = await raw_request(port, method, f"/v1/objects/{rel}", AUTH, b"evil")
            assert status == 400, (method, rel)
            assert rel in json.loads(body)["error"]
    for prefix in ("dirlink", "inner/up"):
        status, _ = await raw_request(port, "GET", f"/v1/objects?prefix={prefix}", AUTH)
        assert status == 400
    assert tree(outside) == {"secret": b"keep me"}


async def test_listing_the_root_does_not_descend_into_symlinks(
    root: pathlib.Path, outside: pathlib.Path, port: int, session: aiohttp.ClientSession
) -> None:
    (root / "dirlink").symlink_to(outside, target_is_directory=True)
    (root / "filelink").symlink_to(outside / "secret")
    (root / "own").write_bytes(b"1")
    async with session.get(f"http://127.0.0.1:{port}/v1/objects", headers=AUTH) as response:
        assert set((await response.json())["objects"]) == {"own"}


# -- atomic writes ----------------------------------------------------------------------------


async def test_upload_cut_short_by_a_disconnect_leaves_no_file_and_no_temp_file(
    root: pathlib.Path, port: int
) -> None:
    (root / "exp").mkdir()
    (root / "exp" / "old").write_bytes(b"previous version")
    for rel in ("exp/new", "exp/old"):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"PUT /v1/objects/{rel} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Length: 1000000\r\n\r\n".encode()
            + b"x" * 300_000
        )
        await writer.drain()
        await asyncio.sleep(0.2)  # the server has created its temp file by now
        writer.transport.abort()  # reset, mid-body
    await eventually_equal(root, {"exp/old": b"previous version"})


async def test_upload_with_content_length_larger_than_the_body_is_discarded(
    root: pathlib.Path, port: int
) -> None:
    reader, writer = await short_put(port)
    writer.write_eof()  # the client says it is done after 10 of 100 bytes
    await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await eventually_equal(root, {})


async def test_stalled_upload_times_out_with_408_and_leaves_nothing(
    root: pathlib.Path, port: int
) -> None:
    reader, writer = await short_put(port)
    status_line = await asyncio.wait_for(reader.readline(), 5)  # idle timeout is 1 s
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 408")
    await eventually_equal(root, {})


async def test_slow_upload_is_never_partially_visible_at_its_final_path(
    root: pathlib.Path, port: int, session: aiohttp.ClientSession
) -> None:
    chunks = [bytes([i]) * 200_000 for i in range(6)]
    payload = b"".join(chunks)
    final = root / "exp" / "trial" / "model.bin"

    async def slow_body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk
            await asyncio.sleep(0.1)

    async def upload() -> int:
        headers = {**AUTH, "Content-Length": str(len(payload))}
        url = f"http://127.0.0.1:{port}/v1/objects/exp/trial/model.bin"
        async with session.put(url, data=slow_body(), headers=headers) as response:
            return response.status

    task = asyncio.create_task(upload())
    seen_temp = False
    listing_url = f"http://127.0.0.1:{port}/v1/objects?prefix=exp"
    while not task.done():
        with contextlib.suppress(FileNotFoundError):
            assert final.read_bytes() == payload
        temps = temp_files(root)
        if temps:
            seen_temp = True
            assert temps[0].startswith(".model.bin.trialsync-tmp-")
            async with session.get(listing_url, headers=AUTH) as response:
                listed = (await response.json())["objects"]
            # Not listed while it arrives; complete if the rename happened meanwhile.
            assert [info["size"] for info in listed.values()] in ([], [len(payload)])
        await asyncio.sleep(0.01)
    assert await task == 201
    assert seen_temp, "the body was streamed to a temp file while it arrived"
    assert tree(root) == {"exp/trial/model.bin": payload}


async def test_concurrent_puts_of_one_path_leave_one_complete_version(
    root: pathlib.Path, port: int
) -> None:
    store = HeadStore(f"http://127.0.0.1:{port}", TOKEN)
    versions = [bytes([i]) * (1_500_000 + i) for i in range(8)]
    try:
        await asyncio.gather(*(store.put_bytes("exp/state.json", v) for v in versions))
    finally:
        await store.close()
    files = tree(root)
    assert list(files) == ["exp/state.json"]
    assert files["exp/state.json"] in versions


# -- the object API ---------------------------------------------------------------------------


async def test_put_get_delete_and_listing_with_sizes_mtimes_and_no_temp_files(
    root: pathlib.Path, port: int, session: aiohttp.ClientSession
) -> None:
    base = f"http://127.0.0.1:{port}/v1/objects"
    mtime_ns = 1_700_000_000_123_456_789
    headers = {**AUTH, head_receiver.MTIME_HEADER: str(mtime_ns)}
    async with session.put(f"{base}/exp/t1/a.txt", data=b"hello", headers=headers) as response:
        assert response.status == 201
        assert await response.json() == {"size": 5}
    async with session.put(f"{base}/exp/b.txt", data=b"xy", headers=AUTH) as response:
        assert response.status == 201
    (root / "exp" / ".c.trialsync-tmp-abcd").write_bytes(b"partial")
    assert (root / "exp" / "t1" / "a.txt").stat().st_mtime_ns == mtime_ns

    async def listing(prefix: str) -> dict[str, dict[str, float]]:
        url = f"{base}?prefix={prefix}"
        async with session.get(url, headers=AUTH) as response:
            assert response.status == 200
            objects: dict[str, dict[str, float]] = (await response.json())["objects"]
            return objects

    everything = await listing("")
    assert set(everything) == {"exp/t1/a.txt", "exp/b.txt"}
    assert everything["exp/t1/a.txt"] == {"size": 5, "mtime": pytest.approx(mtime_ns / 1e9)}
    assert everything["exp/b.txt"]["size"] == 2
    assert set(await listing("exp/t1")) == {"exp/t1/a.txt"}
    assert set(await listing("exp/t1/a.txt")) == {"exp/t1/a.txt"}
    assert await listing("exp/t") == {}  # a path prefix, not a string prefix
    assert await listing("missing") == {}

    async with session.get(f"{base}/exp/t1/a.txt", headers=AUTH) as response:
        assert response.status == 200
        assert await response.read() == b"hello"
    async with session.get(f"{base}/exp/nope", headers=AUTH) as response:
        assert response.status == 404
    async with session.get(f"{base}/exp/t1", headers=AUTH) as response:
        assert response.status == 404  # a directory is not an object
    for conflicting in ("exp/t1", "exp/b.txt/under-a-file"):
        async with session.put(f"{base}/{conflicting}", data=b"x", headers=AUTH) as response:
            assert response.status == 409, conflicting
    bad_mtime = {**AUTH, head_receiver.MTIME_HEADER: "soon"}
    async with session.put(f"{base}/exp/z", data=b"x", headers=bad_mtime) as response:
        assert response.status == 400
    for _ in range(2):
        async with session.delete(f"{base}/exp/t1/a.txt", headers=AUTH) as response:
            assert response.status == 204
    assert not (root / "exp" / "t1").exists(), "emptied directories are pruned"
    assert set(await listing("")) == {"exp/b.txt"}


# -- HeadStore --------------------------------------------------------------------------------


async def test_head_store_round_trip_keeps_mtimes_under_its_prefix(
    tmp_path: pathlib.Path, root: pathlib.Path, port: int
) -> None:
    local = tmp_path / "local" / "weights.bin"
    local.parent.mkdir()
    local.write_bytes(os.urandom(3 * 2**20 + 7))  # several read chunks
    os.utime(local, ns=(1_600_000_000_000_000_000, 1_650_000_000_987_654_321))
    store = HeadStore(f"http://127.0.0.1:{port}/", TOKEN, prefix="worker-1/")
    assert store.verifiable
    rel = "exp/train_fn_0_lr=0.01,bs=32/checkpoint_000001/weights.bin"
    try:
        await store.put_file(str(local), rel)
        await store.put_bytes("exp/state.json", b"{}")
        assert (root / "worker-1" / rel).read_bytes() == local.read_bytes()
        assert (root / "worker-1" / rel).stat().st_mtime_ns == local.stat().st_mtime_ns
        assert await store.read_bytes("exp/state.json") == b"{}"

        listing = await store.list()
        assert set(listing) == {rel, "exp/state.json"}
        assert listing[rel].size == local.stat().st_size
        assert listing[rel].mtime == pytest.approx(local.stat().st_mtime)
        assert set(await store.list(rel.rsplit("/", 1)[0])) == {rel}
        assert await store.list("nothing/here") == {}

        await store.delete([rel, "exp/never-existed"])
        assert set(await store.list()) == {"exp/state.json"}
        assert store.url("exp/state.json") == (
            f"http://127.0.0.1:{port}/v1/objects/worker-1/exp/state.json"
        )
    finally:
        await store.close()


async def test_head_store_raises_with_status_and_body(root: pathlib.Path, port: int) -> None:
    base = f"http://127.0.0.1:{port}"
    wrong = HeadStore(base, "not-the-token")
    store = HeadStore(base, TOKEN)
    try:
        with pytest.raises(PermissionError, match="401"):
            await wrong.put_bytes("exp/x", b"x")
        with pytest.raises(FileNotFoundError, match="404"):
            await store.read_bytes("exp/missing")
        await store.put_bytes("exp/dir/file", b"x")
        with pytest.raises(HeadStoreError, match=r"409.*conflicts") as caught:
            await store.put_bytes("exp/dir", b"x")
        assert caught.value.status == 409
    finally:
        await wrong.close()
        await store.close()
    assert tree(root) == {"exp/dir/file": b"x"}


async def test_engine_publishes_a_checkpoint_to_the_head_node_marker_last(
    tmp_path: pathlib.Path, root: pathlib.Path, port: int
) -> None:
    local = tmp_path / "trials"
    checkpoint = local / "exp" / "trial_0" / "checkpoint_000000"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.pt").write_bytes(os.urandom(50_000))
    (checkpoint / "meta.json").write_bytes(b"{}")
    store = HeadStore(f"http://127.0.0.1:{port}", TOKEN, prefix="w0")
    engine = SyncEngine(EngineOptions(root=str(local)), store, Metrics())
    try:
        await engine.publish("exp/trial_0/checkpoint_000000")
    finally:
        await store.close()
    published = root / "w0" / "exp" / "trial_0" / "checkpoint_000000"
    manifest = json.loads((published / MANIFEST_NAME).read_bytes())
    assert set(manifest["files"]) == {"model.pt", "meta.json"}
    assert (published / "model.pt").read_bytes() == (checkpoint / "model.pt").read_bytes()
