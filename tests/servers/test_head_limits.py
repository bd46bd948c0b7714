"""The head-node service bounds each body and the uploads it takes at once; workers retry."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
from collections.abc import AsyncIterator, Callable

import pytest

from tests.support.fault_proxy import FaultProxy
from tests.support.head_service import TOKEN, Receiver, open_put, read_answer, tree
from trialsync._head import store as head_store
from trialsync._head.store import HeadStore, HeadStoreError
from trialsync._stores.base import ObjectRefused
from trialsync.metrics import Metrics

pytestmark = pytest.mark.timeout(60)

LIMIT = 100_000


@pytest.fixture
async def small(root: pathlib.Path) -> AsyncIterator[Receiver]:
    """A receiver taking objects of at most LIMIT bytes and two uploads at once."""
    receiver = await Receiver.start(root, max_object_size=LIMIT, max_uploads=2, idle_timeout=20)
    yield receiver
    await receiver.stop()


def chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class Held:
    """An upload in progress on a raw connection: 10 of 20 bytes sent."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def start(cls, receiver: Receiver, auth: dict[str, str], rel: str) -> Held:
        length = {"Content-Length": "20"}
        held = cls(*await open_put(receiver.port, rel, auth, length, b"x" * 10))
        await asyncio.sleep(0.3)  # admitted by now
        return held

    async def finish(self, rest: bytes) -> int:
        """Send the other 10 bytes; the status of the answer."""
        self.writer.write(rest)
        status = (await read_answer(self.reader))[0]
        self.writer.close()
        return status


async def wait_metric(read: object, at_least: float) -> None:
    for _ in range(200):
        if read() >= at_least:  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"metric stayed below {at_least}")


@pytest.mark.parametrize("expect", [False, True])
async def test_a_content_length_over_the_limit_gets_413_before_any_body_byte(
    root: pathlib.Path, small: Receiver, expect: bool
) -> None:
    auth = await small.register()
    headers = {"Content-Length": str(LIMIT + 1), **({"Expect": "100-continue"} if expect else {})}
    reader, writer = await open_put(small.port, "exp/t/big", auth, headers)  # no body sent
    status, _, answer = await read_answer(reader)
    writer.close()
    assert status == 413
    assert answer["reason"] == "too_large"
    assert "exp/t/big" in answer["error"]
    assert tree(root) == {}


async def test_a_chunked_body_over_the_limit_gets_413_and_leaves_no_temp_file(
    root: pathlib.Path, small: Receiver
) -> None:
    auth = await small.register()
    headers = {"Transfer-Encoding": "chunked"}
    reader, writer = await open_put(small.port, "exp/t/big", auth, headers)
    for _ in range(3):  # 120 kB in all, over the 100 kB limit
        writer.write(chunked(b"x" * 40_000))
        await writer.drain()
    status, _, answer = await read_answer(reader)
    writer.close()
    assert (status, answer["reason"]) == (413, "too_large")
    for _ in range(100):
        if tree(root) == {}:
            break
        await asyncio.sleep(0.05)
    assert tree(root) == {}, "the temp file of the refused body was kept"


async def test_a_chunked_body_within_the_limit_is_stored(
    root: pathlib.Path, small: Receiver
) -> None:
    auth = await small.register()
    reader, writer = await open_put(small.port, "exp/t/ok", auth, {"Transfer-Encoding": "chunked"})
    writer.write(chunked(b"a" * LIMIT) + chunked(b""))
    status, _, answer = await read_answer(reader)
    writer.close()
    assert (status, answer) == (201, {"size": LIMIT})
    assert tree(root) == {"exp/t/ok": b"a" * LIMIT}


async def test_uploads_over_the_bound_get_503_with_retry_after_before_any_body_byte(
    root: pathlib.Path, small: Receiver
) -> None:
    auth = await small.register()
    first = await Held.start(small, auth, "exp/t/a")
    second = await Held.start(small, auth, "exp/t/b")
    headers = {"Content-Length": "5", "Expect": "100-continue"}
    reader, writer = await open_put(small.port, "exp/t/c", auth, headers)
    status, answer_headers, answer = await read_answer(reader)  # not a 100 Continue first
    writer.close()
    assert status == 503
    assert answer_headers["retry-after"] == "1"
    assert answer["reason"] == "busy"
    assert await first.finish(b"y" * 10) == 201  # the uploads end: their slots are free
    assert await second.finish(b"z" * 10) == 201
    reader, writer = await open_put(small.port, "exp/t/c", auth, headers)
    assert (await read_answer(reader))[0] == 100
    writer.write(b"hello")
    assert (await read_answer(reader))[0] == 201
    writer.close()
    assert tree(root) == {
        "exp/t/a": b"x" * 10 + b"y" * 10,
        "exp/t/b": b"x" * 10 + b"z" * 10,
        "exp/t/c": b"hello",
    }


async def test_failed_and_refused_uploads_give_their_slot_back(
    root: pathlib.Path, small: Receiver
) -> None:
    owner, other = await small.register("owner"), await small.register("other")
    store = HeadStore(small.url, TOKEN)
    try:
        await store.put_bytes("exp/theirs/x", b"x")  # claimed by the store's identity
        for _ in range(3):
            # 413 at the header, 413 mid-body, 403, a disconnect and a stall: none keeps a slot.
            big = {"Content-Length": str(LIMIT + 1)}
            reader, writer = await open_put(small.port, "exp/t/big", owner, big)
            assert (await read_answer(reader))[0] == 413
            writer.close()
            reader, writer = await open_put(
                small.port, "exp/t/chunks", owner, {"Transfer-Encoding": "chunked"}
            )
            writer.write(chunked(b"x" * (LIMIT + 1)))
            assert (await read_answer(reader))[0] == 413
            writer.close()
            reader, writer = await open_put(
                small.port, "exp/theirs/y", other, {"Content-Length": "1"}
            )
            assert (await read_answer(reader))[0] == 403
            writer.close()
            _, writer = await open_put(
                small.port, "exp/t/cut", owner, {"Content-Length": "9"}, b"x"
            )
            await asyncio.sleep(0.1)
            writer.transport.abort()
        await asyncio.gather(*(store.put_bytes(f"exp/theirs/{i}", b"ok") for i in range(6)))
        assert small.runner.app is not None
    finally:
        await store.close()
    assert {rel for rel in tree(root) if rel.startswith("exp/theirs/")} == {
        "exp/theirs/x",
        *(f"exp/theirs/{i}" for i in range(6)),
    }


@contextlib.asynccontextmanager
async def waiting_upload(
    small: Receiver, tmp_path: pathlib.Path
) -> AsyncIterator[tuple[asyncio.Task[None], list[Held], pathlib.Path]]:
    """A HeadStore upload of a 50 kB file turned away at least once: both slots are held."""
    local = tmp_path / "model.pt"
    local.write_bytes(b"m" * 50_000)
    auth = await small.register()
    held = [await Held.start(small, auth, f"exp/t/{i}") for i in range(2)]
    metrics = Metrics()
    store = HeadStore(small.url, TOKEN, metrics=metrics)
    try:
        upload = asyncio.create_task(store.put_file(str(local), "exp/mine/model.pt"))
        await wait_metric(metrics.head_busy_retries._value.get, 1)
        yield upload, held, local
    finally:
        await store.close()
        for one in held:
            one.writer.close()


async def test_head_store_retries_a_busy_head_until_an_upload_slot_frees(
    tmp_path: pathlib.Path, root: pathlib.Path, small: Receiver
) -> None:
    async with waiting_upload(small, tmp_path) as (upload, held, local):
        assert not upload.done(), "a 503 failed the upload instead of being retried"
        assert await held[0].finish(b"y" * 10) == 201
        await asyncio.wait_for(upload, 20)
    assert (root / "exp" / "mine" / "model.pt").read_bytes() == local.read_bytes()


async def test_a_head_busy_for_good_fails_the_request_after_bounded_retries(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path, small: Receiver
) -> None:
    monkeypatch.setattr(head_store, "RETRIES", 2)
    async with waiting_upload(small, tmp_path) as (upload, _, _):
        with pytest.raises(HeadStoreError, match=r"503.*uploads in progress") as caught:
            await asyncio.wait_for(upload, 20)
    assert caught.value.status == 503


async def test_a_file_that_shrinks_before_a_retried_upload_raises_its_own_error(
    tmp_path: pathlib.Path, root: pathlib.Path, small: Receiver
) -> None:
    async with waiting_upload(small, tmp_path) as (upload, held, local):
        os.truncate(local, 10_000)  # shrinks while the upload waits for a slot
        assert await held[0].finish(b"y" * 10) == 201
        with pytest.raises(OSError, match=r"truncated while uploading \(10000 of 50000 bytes\)"):
            await asyncio.wait_for(upload, 20)
    assert "exp/mine/model.pt" not in tree(root)


async def test_head_store_reports_an_object_over_the_limit_as_refused_for_good(
    tmp_path: pathlib.Path, root: pathlib.Path, small: Receiver
) -> None:
    local = tmp_path / "model.pt"
    local.write_bytes(b"m" * (LIMIT + 1))
    metrics = Metrics()
    store = HeadStore(small.url, TOKEN, metrics=metrics)
    try:
        with pytest.raises(ObjectRefused, match="over the limit") as refused:
            await store.put_file(str(local), "exp/t/model.pt")
    finally:
        await store.close()
    assert (refused.value.rel, refused.value.reason) == ("exp/t/model.pt", "too_large")
    assert metrics.head_refusals.labels("too_large")._value.get() == 1
    assert metrics.head_busy_retries._value.get() == 0
    assert tree(root) == {}


async def test_a_head_that_stops_answering_ends_an_upload_at_the_write_timeout(
    head: Receiver,
    tmp_path: pathlib.Path,
    stall_proxy_factory: Callable[[str, int], FaultProxy],
) -> None:
    proxy = stall_proxy_factory("127.0.0.1", head.port)
    store = HeadStore(proxy.endpoint_url, TOKEN, write_timeout=1)
    small, large = tmp_path / "small", tmp_path / "large"
    small.write_bytes(b"x")
    large.write_bytes(bytes(32 * 2**20))
    try:
        await store.put_file(str(small), "exp/trial_0/small")  # registered, connection kept
        proxy.stall()  # the head's answers, "100 Continue" included, never come
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError, match="took no more of the body for 1 s"):
            # The outer bound only keeps a regression from hanging the suite (the read
            # timeout alone would end it after 300 s).
            await asyncio.wait_for(store.put_file(str(large), "exp/trial_0/large"), 30)
        assert asyncio.get_running_loop().time() - started < 10
    finally:
        proxy.resume()
        await store.close()


async def test_a_head_that_stops_reading_mid_body_ends_the_upload_at_the_write_timeout(
    tmp_path: pathlib.Path,
) -> None:
    """A peer that lets the body start ("100 Continue") and then reads no more of it."""
    stalled = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            # (a request's small body, if any, is read as the start of the next head)
            if b"PUT /" in head and b"100-continue" in head.lower():
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await writer.drain()
                stalled.set()
                await asyncio.sleep(60)  # reads nothing: the socket buffers fill up
            answer = b'{"id": "w-1", "identity": "w-1.mac", "released": []}'
            writer.write(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n")
            writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer))
            await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = HeadStore(f"http://127.0.0.1:{port}", TOKEN, write_timeout=1)
    large = tmp_path / "large"
    large.write_bytes(bytes(64 * 2**20))
    try:
        with pytest.raises(TimeoutError, match="took no more of the body for 1 s"):
            await asyncio.wait_for(store.put_file(str(large), "exp/trial_0/large"), 30)
        assert stalled.is_set()
    finally:
        await store.close()
        server.close()
