"""The head-node receiver over real HTTP on loopback: the object API, paths, atomic writes.

Access control (identities, claims) is in test_head_access.py, bounds in test_head_limits.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.support.head_service import (
    TOKEN,
    Receiver,
    eventually_equal,
    open_put,
    options,
    raw_request,
    tree,
)
from trialsync._engine.engine import EngineOptions, SyncEngine
from trialsync._engine.layout import MANIFEST_NAME
from trialsync._head import files as head_files
from trialsync._head import receiver as head_receiver
from trialsync._head.store import HeadStore, HeadStoreError
from trialsync.metrics import Metrics

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def outside(tmp_path: pathlib.Path) -> pathlib.Path:
    """A sibling of the root holding a file no request may touch."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret").write_bytes(b"keep me")
    return path


@pytest.fixture
async def auth(head: Receiver) -> dict[str, str]:
    """A registered worker's Authorization header."""
    return await head.register()


async def short_put(
    head: Receiver, auth: dict[str, str]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A PUT that declares 100 bytes and sends 10, on a raw connection left open."""
    return await open_put(head.port, "exp/t/x", auth, {"Content-Length": "100"}, b"0123456789")


def temp_files(path: pathlib.Path) -> list[str]:
    return [p.name for p in path.rglob(f"*{head_files.TEMP_MARKER}*")]


# -- start-up and authentication -------------------------------------------------------------


async def test_start_serves_healthz_without_token_and_refuses_an_empty_token(
    root: pathlib.Path, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(ValueError, match="token"):
        await head_receiver.start(str(root), "127.0.0.1:0", options(root, token=""))
    runner, port = await head_receiver.start(str(root), "127.0.0.1:0", options(root))
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
    root: pathlib.Path, head: Receiver, session: aiohttp.ClientSession, authorization: str | None
) -> None:
    (root / "exp" / "t").mkdir(parents=True)
    (root / "exp" / "t" / "kept").write_bytes(b"original")
    headers = {"Authorization": authorization} if authorization is not None else {}
    calls = [
        ("POST", f"{head.url}/v1/register", b"{}"),
        ("PUT", head.objects("exp/t/new"), b"data"),
        ("PUT", head.objects("exp/t/kept"), b"overwritten"),
        ("GET", head.objects("exp/t/kept"), None),
        ("GET", f"{head.objects()}?prefix=", None),
        ("DELETE", head.objects("exp/t/kept"), None),
        ("DELETE", f"{head.url}/v1/claims", None),
    ]
    for method, url, data in calls:
        async with session.request(method, url, data=data, headers=headers) as response:
            assert response.status == 401, (method, url)
            assert "token" in (await response.json())["error"]
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert tree(root) == {"exp/t/kept": b"original"}


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
        "exp/t/.x.trialsync-tmp-0123456789abcdef",
        ".trialsync-head/key",
        ".trialsync-head/x/y",
    ],
)
async def test_unsafe_paths_get_400_naming_the_path_and_write_nothing(
    tmp_path: pathlib.Path,
    root: pathlib.Path,
    outside: pathlib.Path,
    head: Receiver,
    auth: dict[str, str],
    rel: str,
) -> None:
    key = (root / ".trialsync-head" / "key").read_bytes()
    for method in ("PUT", "GET", "DELETE"):
        status, body = await raw_request(head.port, method, f"/v1/objects/{rel}", auth, b"evil")
        assert status == 400, (method, rel)
        assert "error" in json.loads(body)
    status, _ = await raw_request(head.port, "GET", f"/v1/objects?prefix={rel}", auth)
    assert status == 400
    assert tree(tmp_path) == {"outside/secret": b"keep me"}
    assert (root / ".trialsync-head" / "key").read_bytes() == key


def test_resolve_refuses_the_empty_path_and_accepts_plain_ones(root: pathlib.Path) -> None:
    real = os.path.realpath(root)
    with pytest.raises(head_receiver.PathError, match="empty"):
        head_receiver.resolve(real, "")
    assert head_receiver.resolve(real, "", allow_root=True) == real
    assert head_receiver.resolve(real, "exp/t_lr=0.1,b=2/x") == f"{real}/exp/t_lr=0.1,b=2/x"
    with pytest.raises(head_receiver.PathError, match="state dir"):
        head_receiver.resolve(real, "state/key", reserved=f"{real}/state")


async def test_symlinks_out_of_the_root_are_never_followed(
    root: pathlib.Path, outside: pathlib.Path, head: Receiver, auth: dict[str, str]
) -> None:
    (root / "dirlink").symlink_to(outside, target_is_directory=True)
    (root / "filelink").symlink_to(outside / "secret")
    (root / "inner").mkdir()
    (root / "inner" / "up").symlink_to("../../outside", target_is_directory=True)
    (root / "exp" / "t").mkdir(parents=True)
    (root / "exp" / "t" / "state").symlink_to(root / ".trialsync-head", target_is_directory=True)
    paths = ("dirlink/new", "dirlink/secret", "filelink", "inner/up/secret", "inner/up/x/y")
    for rel in (*paths, "exp/t/state/key"):
        for method in ("PUT", "GET", "DELETE"):
            status, body = await raw_request(head.port, method, f"/v1/objects/{rel}", auth, b"evil")
            assert status == 400, (method, rel)
            assert rel in json.loads(body)["error"]
    for prefix in ("dirlink", "inner/up", "exp/t/state"):
        status, _ = await raw_request(head.port, "GET", f"/v1/objects?prefix={prefix}", auth)
        assert status == 400
    assert tree(outside) == {"secret": b"keep me"}


async def test_listing_the_root_does_not_descend_into_symlinks_or_the_state_dir(
    root: pathlib.Path,
    outside: pathlib.Path,
    head: Receiver,
    auth: dict[str, str],
    session: aiohttp.ClientSession,
) -> None:
    (root / "dirlink").symlink_to(outside, target_is_directory=True)
    (root / "filelink").symlink_to(outside / "secret")
    (root / "own").write_bytes(b"1")
    async with session.get(head.objects(), headers=auth) as response:
        assert set((await response.json())["objects"]) == {"own"}


# -- atomic writes ----------------------------------------------------------------------------


async def test_upload_cut_short_by_a_disconnect_leaves_no_file_and_no_temp_file(
    root: pathlib.Path, head: Receiver, auth: dict[str, str]
) -> None:
    (root / "exp" / "t").mkdir(parents=True)
    (root / "exp" / "t" / "old").write_bytes(b"previous version")
    for rel in ("exp/t/new", "exp/t/old"):
        length = {"Content-Length": "1000000"}
        _, writer = await open_put(head.port, rel, auth, length, b"x" * 300_000)
        for _ in range(500):  # until the server holds the body's start in its temp file
            if temp_files(root):
                break
            await asyncio.sleep(0.01)
        assert temp_files(root), "the server never started writing the upload"
        writer.transport.abort()  # reset, mid-body
    await eventually_equal(root, {"exp/t/old": b"previous version"})


async def test_upload_with_content_length_larger_than_the_body_is_discarded(
    root: pathlib.Path, head: Receiver, auth: dict[str, str]
) -> None:
    reader, writer = await short_put(head, auth)
    writer.write_eof()  # the client says it is done after 10 of 100 bytes
    await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await eventually_equal(root, {})


async def test_stalled_upload_times_out_with_408_and_leaves_nothing(
    root: pathlib.Path, head: Receiver, auth: dict[str, str]
) -> None:
    reader, writer = await short_put(head, auth)
    status_line = await asyncio.wait_for(reader.readline(), 5)  # idle timeout is 1 s
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 408")
    await eventually_equal(root, {})


async def test_slow_upload_is_never_partially_visible_at_its_final_path(
    root: pathlib.Path, head: Receiver, auth: dict[str, str], session: aiohttp.ClientSession
) -> None:
    chunks = [bytes([i]) * 200_000 for i in range(6)]
    payload = b"".join(chunks)
    final = root / "exp" / "trial" / "model.bin"

    async def slow_body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk
            await asyncio.sleep(0.1)

    async def upload() -> int:
        headers = {**auth, "Content-Length": str(len(payload))}
        url = head.objects("exp/trial/model.bin")
        async with session.put(url, data=slow_body(), headers=headers) as response:
            return response.status

    task = asyncio.create_task(upload())
    seen_temp = False
    listing_url = f"{head.objects()}?prefix=exp"
    while not task.done():
        with contextlib.suppress(FileNotFoundError):
            assert final.read_bytes() == payload
        temps = temp_files(root)
        if temps:
            seen_temp = True
            assert temps[0].startswith(".model.bin.trialsync-tmp-")
            async with session.get(listing_url, headers=auth) as response:
                listed = (await response.json())["objects"]
            # Not listed while it arrives; complete if the rename happened meanwhile.
            assert [info["size"] for info in listed.values()] in ([], [len(payload)])
        await asyncio.sleep(0.01)
    assert await task == 201
    assert seen_temp, "the body was streamed to a temp file while it arrived"
    assert tree(root) == {"exp/trial/model.bin": payload}


async def test_concurrent_puts_of_one_path_leave_one_complete_version(
    root: pathlib.Path, head: Receiver
) -> None:
    store = HeadStore(head.url, TOKEN)
    versions = [bytes([i]) * (1_500_000 + i) for i in range(8)]
    try:
        await asyncio.gather(*(store.put_bytes("exp/t/state.json", v) for v in versions))
    finally:
        await store.close()
    files = tree(root)
    assert list(files) == ["exp/t/state.json"]
    assert files["exp/t/state.json"] in versions


# -- the object API ---------------------------------------------------------------------------


async def test_put_get_delete_and_listing_with_sizes_mtimes_and_no_temp_files(
    root: pathlib.Path, head: Receiver, auth: dict[str, str], session: aiohttp.ClientSession
) -> None:
    mtime_ns = 1_700_000_000_123_456_789
    headers = {**auth, head_receiver.MTIME_HEADER: str(mtime_ns)}
    url = head.objects("exp/t1/ck/a.txt")
    async with session.put(url, data=b"hello", headers=headers) as response:
        assert response.status == 201
        assert await response.json() == {"size": 5}
    async with session.put(head.objects("exp/t2/b.txt"), data=b"xy", headers=auth) as response:
        assert response.status == 201
    (root / "exp" / "t2" / ".c.trialsync-tmp-abcd").write_bytes(b"partial")
    assert (root / "exp" / "t1" / "ck" / "a.txt").stat().st_mtime_ns == mtime_ns

    async def listing(prefix: str) -> dict[str, dict[str, float]]:
        async with session.get(f"{head.objects()}?prefix={prefix}", headers=auth) as response:
            assert response.status == 200
            objects: dict[str, dict[str, float]] = (await response.json())["objects"]
            return objects

    everything = await listing("")
    assert set(everything) == {"exp/t1/ck/a.txt", "exp/t2/b.txt"}
    assert everything["exp/t1/ck/a.txt"] == {"size": 5, "mtime": pytest.approx(mtime_ns / 1e9)}
    assert everything["exp/t2/b.txt"]["size"] == 2
    assert set(await listing("exp/t1")) == {"exp/t1/ck/a.txt"}
    assert set(await listing("exp/t1/ck/a.txt")) == {"exp/t1/ck/a.txt"}
    assert await listing("exp/t") == {}  # a path prefix, not a string prefix
    assert await listing("missing") == {}

    async with session.get(head.objects("exp/t1/ck/a.txt"), headers=auth) as response:
        assert response.status == 200
        assert await response.read() == b"hello"
    async with session.get(head.objects("exp/t1/nope"), headers=auth) as response:
        assert response.status == 404
    async with session.get(head.objects("exp/t1/ck"), headers=auth) as response:
        assert response.status == 404  # a directory is not an object
    for conflicting in ("exp/t1/ck", "exp/t2/b.txt/under-a-file"):
        async with session.put(head.objects(conflicting), data=b"x", headers=auth) as response:
            assert response.status == 409, conflicting
    bad_mtime = {**auth, head_receiver.MTIME_HEADER: "soon"}
    async with session.put(head.objects("exp/t1/z"), data=b"x", headers=bad_mtime) as response:
        assert response.status == 400
    for _ in range(2):
        async with session.delete(head.objects("exp/t1/ck/a.txt"), headers=auth) as response:
            assert response.status == 204
    async with session.delete(head.objects("exp/t1/ck"), headers=auth) as response:
        assert response.status == 204  # the emptied dir was pruned: nothing to delete
    assert not (root / "exp" / "t1" / "ck").exists(), "emptied directories are pruned"
    assert set(await listing("")) == {"exp/t2/b.txt"}


# -- pruning ----------------------------------------------------------------------------------


async def test_delete_never_removes_the_trial_or_experiment_dir_the_trainer_made(
    root: pathlib.Path, head: Receiver, auth: dict[str, str], session: aiohttp.ClientSession
) -> None:
    (root / "exp" / "trial_0").mkdir(parents=True)  # as Ray's driver makes each trial's dir
    rel = "exp/trial_0/checkpoint_000001/model.pt"
    async with session.put(head.objects(rel), data=b"weights", headers=auth) as response:
        assert response.status == 201
    async with session.delete(head.objects(rel), headers=auth) as response:
        assert response.status == 204
    assert not (root / "exp" / "trial_0" / "checkpoint_000001").exists()
    assert (root / "exp" / "trial_0").is_dir(), "the trainer may be about to write in it"


async def test_an_upload_that_fails_in_a_new_checkpoint_dir_leaves_no_empty_dir(
    root: pathlib.Path, head: Receiver, auth: dict[str, str]
) -> None:
    (root / "exp" / "t").mkdir(parents=True)
    rel = "exp/t/checkpoint_000002/model.pt"
    _, writer = await open_put(head.port, rel, auth, {"Content-Length": "1000"}, b"x" * 10)
    for _ in range(100):  # the upload made its dir
        if (root / "exp" / "t" / "checkpoint_000002").exists():
            break
        await asyncio.sleep(0.02)
    writer.transport.abort()
    for _ in range(100):
        if not (root / "exp" / "t" / "checkpoint_000002").exists():
            break
        await asyncio.sleep(0.05)
    assert not (root / "exp" / "t" / "checkpoint_000002").exists(), (
        "an empty checkpoint dir looks like a checkpoint to a restoring trainer"
    )
    assert (root / "exp" / "t").is_dir()


async def test_a_prune_leaves_a_dir_an_upload_is_about_to_use(tmp_path: pathlib.Path) -> None:
    """The window between an upload's makedirs and its open: the dir is announced first."""
    trial = tmp_path / "exp" / "t"
    checkpoint = trial / "checkpoint_000001"
    checkpoint.mkdir(parents=True)
    tree_ = head_files.Tree()
    async with tree_.using([str(checkpoint)]):
        await tree_.prune(str(checkpoint), str(trial))
        assert checkpoint.is_dir(), "pruned while an upload was about to open a file in it"
    await tree_.prune(str(checkpoint), str(trial))
    assert not checkpoint.exists()
    assert trial.is_dir()


async def test_concurrent_puts_and_deletes_in_one_dir_lose_no_upload(
    root: pathlib.Path, head: Receiver, auth: dict[str, str], session: aiohttp.ClientSession
) -> None:
    async def put(rel: str) -> int:
        async with session.put(head.objects(rel), data=b"x", headers=auth) as response:
            return response.status

    async def delete(rel: str) -> int:
        async with session.delete(head.objects(rel), headers=auth) as response:
            return response.status

    for i in range(100):
        # Each DELETE empties the dir the PUTs beside it are making files in.
        checkpoint = f"exp/t/checkpoint_{i:06d}"
        await put(f"{checkpoint}/old")
        news = [f"{checkpoint}/new_{n}" for n in range(3)]
        statuses = await asyncio.gather(delete(f"{checkpoint}/old"), *map(put, news))
        assert statuses == [204, 201, 201, 201], checkpoint
        for rel in news:
            assert (root / rel).read_bytes() == b"x"


# -- start-up ---------------------------------------------------------------------------------


async def test_start_up_removes_temp_files_left_by_a_killed_writer_and_nothing_else(
    root: pathlib.Path, outside: pathlib.Path
) -> None:
    marker = "0123456789abcdef"
    left = [
        f".model.pt.trialsync-tmp-{marker}",
        f"exp/t/checkpoint_000001/.model.pt.trialsync-tmp-{marker}",
        f"exp/.state.json.trialsync-tmp-{marker}",
    ]
    kept = [
        "exp/t/model.pt",
        ".x.trialsync-tmp-notours",  # not a name this service gives
        f"x.trialsync-tmp-{marker}",  # no leading dot
        f".x.trialsync-tmp-{marker}.bak",
    ]
    for rel in left + kept:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"data")
    # Nothing through a symlink: not a link named like a temp file, nor a dir beyond one.
    (outside / f".secret.trialsync-tmp-{marker}").write_bytes(b"keep me")
    (root / f".link.trialsync-tmp-{marker}").symlink_to(outside / "secret")
    (root / "exp" / "elsewhere").symlink_to(outside, target_is_directory=True)
    state_temp = root / ".trialsync-head" / f".key.trialsync-tmp-{marker}"
    state_temp.parent.mkdir()
    state_temp.write_bytes(b"state")

    receiver = await Receiver.start(root)
    await receiver.stop()
    assert tree(root) == {rel: b"data" for rel in kept}
    assert (root / f".link.trialsync-tmp-{marker}").is_symlink()
    assert tree(outside) == {"secret": b"keep me", f".secret.trialsync-tmp-{marker}": b"keep me"}
    assert state_temp.exists()


async def test_a_second_receiver_on_the_root_waits_and_spares_the_first_ones_uploads(
    root: pathlib.Path,
) -> None:
    # An idle timeout well past the test's pause: the upload must outlive it, even when a
    # busy machine stalls this process.
    head = await Receiver.start(root, idle_timeout=30.0)
    second: asyncio.Task[Receiver] | None = None
    try:
        auth = await head.register()
        rel = "exp/t/model.pt"
        reader, writer = await open_put(head.port, rel, auth, {"Content-Length": "20"}, b"x" * 10)
        for _ in range(100):
            if temp_files(root):
                break
            await asyncio.sleep(0.02)
        second = asyncio.create_task(Receiver.start(root))
        await asyncio.sleep(0.5)  # a sweep now would remove the upload's temp file
        assert not second.done(), "a second receiver started on a root another one serves"
        writer.write(b"y" * 10)
        status_line = await asyncio.wait_for(reader.readline(), 5)
        assert status_line.startswith(b"HTTP/1.1 201")
        writer.close()
        assert (root / "exp" / "t" / "model.pt").read_bytes() == b"x" * 10 + b"y" * 10
        await head.stop()
        receiver = await asyncio.wait_for(second, 10)  # starts once the first one is gone
        await receiver.stop()
    finally:
        await head.stop()
        if second is not None and not second.done():
            second.cancel()


# -- HeadStore --------------------------------------------------------------------------------


async def test_head_store_round_trip_keeps_mtimes_under_its_prefix(
    tmp_path: pathlib.Path, root: pathlib.Path, head: Receiver
) -> None:
    local = tmp_path / "local" / "weights.bin"
    local.parent.mkdir()
    local.write_bytes(os.urandom(3 * 2**20 + 7))  # several read chunks
    os.utime(local, ns=(1_600_000_000_000_000_000, 1_650_000_000_987_654_321))
    empty = tmp_path / "local" / "empty"
    empty.write_bytes(b"")
    store = HeadStore(f"{head.url}/", TOKEN, prefix="worker-1/")
    assert store.verifiable
    rel = "exp/train_fn_0_lr=0.01,bs=32/checkpoint_000001/weights.bin"
    try:
        await store.put_file(str(local), rel)
        await store.put_file(str(empty), "exp/t/empty")
        await store.put_bytes("exp/state.json", b"{}")
        assert (root / "worker-1" / rel).read_bytes() == local.read_bytes()
        assert (root / "worker-1" / rel).stat().st_mtime_ns == local.stat().st_mtime_ns
        assert (root / "worker-1" / "exp" / "t" / "empty").read_bytes() == b""
        assert await store.read_bytes("exp/state.json") == b"{}"

        listing = await store.list()
        assert set(listing) == {rel, "exp/t/empty", "exp/state.json"}
        assert listing[rel].size == local.stat().st_size
        assert listing[rel].mtime == pytest.approx(local.stat().st_mtime)
        assert set(await store.list(rel.rsplit("/", 1)[0])) == {rel}
        assert await store.list("nothing/here") == {}

        await store.delete([rel, "exp/never-existed"])
        assert set(await store.list()) == {"exp/t/empty", "exp/state.json"}
        assert store.url("exp/state.json") == f"{head.url}/v1/objects/worker-1/exp/state.json"
    finally:
        await store.close()


async def test_head_store_raises_with_status_and_body(root: pathlib.Path, head: Receiver) -> None:
    wrong = HeadStore(head.url, "not-the-token")
    store = HeadStore(head.url, TOKEN)
    try:
        with pytest.raises(PermissionError, match="401"):
            await wrong.put_bytes("exp/t/x", b"x")
        with pytest.raises(FileNotFoundError, match="404"):
            await store.read_bytes("exp/t/missing")
        await store.put_bytes("exp/t/dir/file", b"x")
        with pytest.raises(HeadStoreError, match=r"409.*conflicts") as caught:
            await store.put_bytes("exp/t/dir", b"x")
        assert caught.value.status == 409
    finally:
        await wrong.close()
        await store.close()
    assert tree(root) == {"exp/t/dir/file": b"x"}


async def test_engine_publishes_a_checkpoint_to_the_head_node_marker_last(
    tmp_path: pathlib.Path, root: pathlib.Path, head: Receiver
) -> None:
    local = tmp_path / "trials"
    checkpoint = local / "exp" / "trial_0" / "checkpoint_000000"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.pt").write_bytes(os.urandom(50_000))
    (checkpoint / "meta.json").write_bytes(b"{}")
    store = HeadStore(head.url, TOKEN)
    engine = SyncEngine(EngineOptions(root=str(local)), store, Metrics())
    try:
        await engine.publish("exp/trial_0/checkpoint_000000")
    finally:
        await store.close()
    published = root / "exp" / "trial_0" / "checkpoint_000000"
    manifest = json.loads((published / MANIFEST_NAME).read_bytes())
    assert set(manifest["files"]) == {"model.pt", "meta.json"}
    assert (published / "model.pt").read_bytes() == (checkpoint / "model.pt").read_bytes()
