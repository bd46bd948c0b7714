"""The keep-alive HTTP/1.1 client against real sockets: framing, reuse, stale connections,
timeouts and malformed answers, each served by a small asyncio server scripted per test."""

from __future__ import annotations

import asyncio
import os
import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from trialsync._stores import http1

# A scripted server: called with each accepted connection.
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.accepted = 0
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted += 1
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self._server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return server_port(self)

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length) if length else b""
        self.requests.append(head.split(b"\r\n", 1)[0] + b" " + body)
        return body

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


#: Starts a scripted server and a pool of connections to it.
Serve = Callable[..., Awaitable[tuple[Server, http1.Pool]]]


def server_port(server: Server) -> int:
    assert server._server is not None
    return int(server._server.sockets[0].getsockname()[1])


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    made: list[tuple[Server, http1.Pool]] = []

    async def start(
        handler: Handler, limit: int = 4, read_timeout: float = 5
    ) -> tuple[Server, http1.Pool]:
        server = Server(handler)
        port = await server.start()
        pool = http1.Pool(http1.Endpoint("127.0.0.1", port, None, 5, read_timeout), limit)
        made.append((server, pool))
        return server, pool

    yield start
    for server, pool in made:
        pool.close()
        server.close()


HEADERS = {"Host": "test"}


def answer(status: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"HTTP/1.1 {status}\r\n{lines}\r\n".encode() + body


async def test_a_keep_alive_connection_carries_every_request(serve: Serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            body = await server.read_request(reader)
            writer.write(answer("200 OK", {"Content-Length": str(len(body)), "ETag": "e"}, body))

    server, pool = await serve(handler)
    for i in range(5):
        body = f"body {i}".encode()
        status, headers, data = await pool.request(
            "PUT", f"/b/k{i}", {**HEADERS, "Content-Length": str(len(body))}, body
        )
        assert (status, headers["etag"], data) == (200, "e", body)
    assert server.accepted == 1
    assert server.requests[4] == b"PUT /b/k4 HTTP/1.1 body 4"


async def test_a_chunked_answer_is_joined_and_its_trailers_read(serve: Serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_request(reader)
            chunks = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
            writer.write(answer("200 OK", {"Transfer-Encoding": "chunked"}, chunks))

    server, pool = await serve(handler)
    for _ in range(2):
        status, _, data = await pool.request("GET", "/b?list-type=2", HEADERS, b"")
        assert (status, data) == (200, b"hello world")
    assert server.accepted == 1  # the chunked framing left the connection reusable


async def test_connection_close_and_an_unframed_answer_end_the_connection(serve: Serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        if server.accepted == 1:
            writer.write(answer("200 OK", {"Content-Length": "2", "Connection": "close"}, b"ok"))
        else:  # no length: the body ends with the connection
            writer.write(answer("404 Not Found", {}, b"<Error/>"))
        await writer.drain()

    server, pool = await serve(handler)
    assert (await pool.request("GET", "/a", HEADERS, b""))[2] == b"ok"
    status, _, data = await pool.request("GET", "/b", HEADERS, b"")
    assert (status, data) == (404, b"<Error/>")
    assert server.accepted == 2


async def test_an_interim_answer_is_skipped_and_204_has_no_body(serve: Serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_request(reader)
            writer.write(answer("100 Continue", {}) + answer("204 No Content", {}))

    server, pool = await serve(handler)
    for _ in range(2):
        status, _, data = await pool.request("DELETE", "/b/k", HEADERS, b"")
        assert (status, data) == (204, b"")
    assert server.accepted == 1


async def test_an_idle_connection_the_server_closed_is_replaced_without_an_error(
    serve: Serve,
) -> None:
    closers: list[asyncio.StreamWriter] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(answer("200 OK", {"Content-Length": "0"}))
        await writer.drain()
        closers.append(writer)
        await reader.read()  # hold the connection until the test closes it

    server, pool = await serve(handler)
    await pool.request("PUT", "/b/1", {**HEADERS, "Content-Length": "0"}, b"")
    closers[0].close()  # the server ends the idle connection
    await asyncio.sleep(0.1)
    await pool.request("PUT", "/b/2", {**HEADERS, "Content-Length": "0"}, b"")
    assert server.accepted == 2
    assert len(server.requests) == 2


async def test_a_reused_connection_that_ends_before_answering_is_sent_again_once(
    serve: Serve,
) -> None:
    # The race the idle check cannot see: the server closes just as the request goes.
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        if server.accepted == 1 and len(server.requests) == 1:
            writer.write(answer("200 OK", {"Content-Length": "0"}))
            await server.read_request(reader)  # the second request: dropped unanswered
            return
        writer.write(answer("200 OK", {"Content-Length": "1"}, b"2"))
        await writer.drain()

    server, pool = await serve(handler)
    await pool.request("PUT", "/b/1", {**HEADERS, "Content-Length": "0"}, b"")
    _, _, data = await pool.request("GET", "/b/2", HEADERS, b"")
    assert data == b"2"
    assert server.accepted == 2
    assert len(server.requests) == 3  # the dropped one, and the same request again


async def test_a_post_on_a_dropped_connection_is_not_sent_again(serve: Serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(answer("200 OK", {"Content-Length": "0"}))
        await server.read_request(reader)  # the POST: dropped unanswered

    server, pool = await serve(handler)
    await pool.request("GET", "/b/1", HEADERS, b"")
    with pytest.raises(http1.TransportError, match="closed an idle connection"):
        await pool.request("POST", "/b/k?uploads=", {**HEADERS, "Content-Length": "0"}, b"")
    assert server.accepted == 1


async def test_a_silent_server_is_a_transport_error_at_the_read_timeout(serve: Serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        await asyncio.sleep(30)

    server, pool = await serve(handler, read_timeout=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(http1.TransportError, match=r"did not answer within 0\.3 s"):
        await pool.request("GET", "/b/k", HEADERS, b"")
    assert 0.25 < loop.time() - started < 2


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"SSH-2.0-OpenSSH\r\n", "not an HTTP/1.1 answer"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "a bad header"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "5 bytes read on a total of 10"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed answer"),
    ],
)
async def test_a_malformed_answer_is_a_transport_error(
    serve: Serve, reply: bytes, message: str
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(reply)
        await writer.drain()

    server, pool = await serve(handler)
    with pytest.raises(http1.TransportError, match=message):
        await pool.request("GET", "/b/k", HEADERS, b"")


async def test_a_refused_connection_is_a_transport_error() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    pool = http1.Pool(http1.Endpoint("127.0.0.1", port, None, 5, 5), 1)
    with pytest.raises(http1.TransportError, match=f"connecting to 127.0.0.1:{port}"):
        await pool.request("GET", "/", HEADERS, b"")


async def test_no_more_than_the_limit_of_connections_are_open_at_once(serve: Serve) -> None:
    open_now = 0
    most = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        try:
            while True:
                await server.read_request(reader)
                await asyncio.sleep(0.01)
                writer.write(answer("200 OK", {"Content-Length": "0"}))
        finally:
            open_now -= 1

    server, pool = await serve(handler, limit=3)
    await asyncio.gather(*(pool.request("GET", f"/b/{i}", HEADERS, b"") for i in range(30)))
    assert most == 3
    assert server.accepted == 3
    assert len(server.requests) == 30


async def test_a_cancelled_request_does_not_leave_its_connection_for_reuse(serve: Serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_request(reader)
            if len(server.requests) == 1:
                await asyncio.sleep(0.5)  # answered after the caller gave up
            writer.write(
                answer("200 OK", {"Content-Length": "1"}, str(len(server.requests)).encode())
            )

    server, pool = await serve(handler)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await pool.request("GET", "/b/slow", HEADERS, b"")
    _, _, data = await pool.request("GET", "/b/next", HEADERS, b"")
    assert data == b"2"  # not the late answer to the first request
    assert server.accepted == 2


# --- FilePool: downloads written into a file by a thread ---------------------------------


#: A body's length: short enough to be read and written, or long enough to be spliced.
both_ways = pytest.mark.parametrize(
    "length", [1000, 4 * http1.SPLICE_LEAST], ids=["read-and-written", "spliced"]
)


async def fetch(pool: http1.FilePool, call: http1.Call) -> tuple[int, bytes, int]:
    status, _, error, written = await asyncio.to_thread(pool.fetch, call)
    return status, error, written


def file_pool(server_port: int, read_timeout: float = 5) -> http1.FilePool:
    return http1.FilePool(http1.Endpoint("127.0.0.1", server_port, None, 5, read_timeout))


#: Starts a scripted server and a FilePool to it.
ServeFiles = Callable[..., Awaitable[tuple[Server, http1.FilePool]]]


@pytest.fixture
async def serve_files() -> AsyncIterator[ServeFiles]:
    made: list[tuple[Server, http1.FilePool]] = []

    async def start(handler: Handler, read_timeout: float = 5) -> tuple[Server, http1.FilePool]:
        server = Server(handler)
        made.append((server, file_pool(await server.start(), read_timeout)))
        return made[-1]

    yield start
    for server, pool in made:
        pool.close()
        server.close()


@pytest.fixture
def target(tmp_path: pathlib.Path) -> Iterator[int]:
    """A file descriptor of ``tmp_path/f``, open for writing."""
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    yield fd
    os.close(fd)


def get(target: str) -> bytes:
    return http1.request_message("GET", target, HEADERS)


async def test_a_download_lands_at_its_offset_over_one_kept_connection(
    serve_files: ServeFiles, target: int, tmp_path: pathlib.Path
) -> None:
    body = os.urandom(3 * http1.RECV_CHUNK + 17)  # more than one read's worth

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_request(reader)
            if len(server.requests) == 1:
                writer.write(answer("206 Partial Content", {"Content-Length": str(len(body))}))
                writer.write(body)
            else:  # chunked
                chunks = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
                writer.write(answer("206 Partial Content", {"Transfer-Encoding": "chunked"}))
                writer.write(chunks)
            await writer.drain()

    server, pool = await serve_files(handler)
    assert await fetch(pool, http1.Call(get("/b/k"), target, 10)) == (206, b"", len(body))
    assert await fetch(pool, http1.Call(get("/b/k2"), target, 0)) == (206, b"", 5)
    assert (tmp_path / "f").read_bytes() == b"abcde" + bytes(5) + body
    assert server.accepted == 1


async def test_an_error_answer_is_returned_and_nothing_is_written(
    serve_files: ServeFiles, target: int, tmp_path: pathlib.Path
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(answer("404 Not Found", {"Content-Length": "9"}, b"<Error/>\n"))
        await writer.drain()

    server, pool = await serve_files(handler)
    assert await fetch(pool, http1.Call(get("/b/k"), target, 0)) == (404, b"<Error/>\n", 0)
    assert (tmp_path / "f").read_bytes() == b""


async def test_a_download_after_the_server_closed_the_idle_connection_goes_at_once(
    serve_files: ServeFiles, target: int, tmp_path: pathlib.Path
) -> None:
    # The idle check must not wait for data (the read timeout here is 30 s).
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(answer("200 OK", {"Content-Length": "2"}, b"ok"))
        await writer.drain()  # then the connection ends: the server closes it

    server, pool = await serve_files(handler, read_timeout=30)
    loop = asyncio.get_running_loop()
    await fetch(pool, http1.Call(get("/b/1"), target, 0))
    await asyncio.sleep(0.1)
    started = loop.time()
    assert await fetch(pool, http1.Call(get("/b/2"), target, 2)) == (200, b"", 2)
    assert loop.time() - started < 2
    assert server.accepted == 2
    assert (tmp_path / "f").read_bytes() == b"okok"


@both_ways
async def test_a_cancelled_download_ends_at_once_and_a_stalled_one_at_the_read_timeout(
    serve_files: ServeFiles, target: int, length: int
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # a GET: no body
        writer.write(answer("200 OK", {"Content-Length": str(length)}, b"part"))
        await writer.drain()
        await asyncio.sleep(30)  # the rest never comes

    _, pool = await serve_files(handler, read_timeout=0.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(http1.TransportError, match=r"sent nothing for 0\.5 s"):
        await fetch(pool, http1.Call(get("/b/1"), target, 0))
    assert 0.4 < loop.time() - started < 3

    _, slow = await serve_files(handler, read_timeout=30)
    call = http1.Call(get("/b/2"), target, 0)
    running = asyncio.ensure_future(fetch(slow, call))
    await asyncio.sleep(0.3)
    started = loop.time()
    call.cancel()
    with pytest.raises(http1.TransportError, match="cancelled"):
        await running
    assert loop.time() - started < 2


@both_ways
async def test_a_body_cut_short_is_a_transport_error_and_its_connection_dropped(
    serve_files: ServeFiles, target: int, length: int
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer("206 Partial Content", {"Content-Length": str(length)}))
        writer.write(os.urandom(length // 2))
        await writer.drain()  # then the connection ends: half the body never comes

    server, pool = await serve_files(handler)
    with pytest.raises(http1.TransportError, match="the connection ended"):
        await fetch(pool, http1.Call(get("/b/k"), target, 0))
    assert not pool._idle  # never kept for another request
    assert server.accepted == 1


def test_nothing_is_written_once_a_call_is_cancelled(target: int, tmp_path: pathlib.Path) -> None:
    call = http1.Call(get("/b/k"), target, 2)
    call.write(0, memoryview(b"ab"))
    call.cancel()
    with pytest.raises(http1.TransportError, match="cancelled"):
        call.write(2, memoryview(b"cd"))
    assert (tmp_path / "f").read_bytes() == b"\0\0ab"


@pytest.fixture
def splices(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The byte counts of every splice(2) made, counted around the real call."""
    made: list[int] = []
    real = os.splice

    def counted(*args: object, **kwargs: object) -> int:
        moved = real(*args, **kwargs)  # type: ignore[arg-type]
        made.append(moved)
        return moved

    monkeypatch.setattr(os, "splice", counted)
    return made


async def large_body_server(serve_files: ServeFiles, body: bytes) -> http1.FilePool:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer("206 Partial Content", {"Content-Length": str(len(body))}))
            writer.write(body)
            await writer.drain()

    _, pool = await serve_files(handler)
    return pool


async def test_a_long_body_is_spliced_into_the_file_a_short_one_written(
    serve_files: ServeFiles, target: int, tmp_path: pathlib.Path, splices: list[int]
) -> None:
    body = os.urandom(3 * http1.SPLICE_LEAST + 5)
    pool = await large_body_server(serve_files, body)
    call = http1.Call(get("/b/k"), target, 7)
    assert await fetch(pool, call) == (206, b"", len(body))
    assert (tmp_path / "f").read_bytes() == bytes(7) + body
    # From the socket to the pipe and from the pipe to the file: all but what came with
    # the answer's head (if any), which was read with it.
    assert call.splices
    assert len(body) - http1.RECV_CHUNK <= sum(splices) // 2 <= len(body)


async def test_a_file_that_refuses_splice_gets_the_body_read_and_written(
    serve_files: ServeFiles, tmp_path: pathlib.Path, splices: list[int]
) -> None:
    # Linux refuses to splice into a file opened for appending (EINVAL).
    body = os.urandom(3 * http1.SPLICE_LEAST + 5)
    pool = await large_body_server(serve_files, body)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        call = http1.Call(get("/b/k"), fd, 0)
        assert await fetch(pool, call) == (206, b"", len(body))
    finally:
        os.close(fd)
    assert not call.splices
    assert splices  # from the socket into the pipe, still
    assert (tmp_path / "f").read_bytes() == body


def test_nothing_is_spliced_into_the_file_once_a_call_is_cancelled(
    target: int, tmp_path: pathlib.Path
) -> None:
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"abcd")
        call = http1.Call(get("/b/k"), target, 0)
        call.write_from_pipe(read_end, 2, 0)
        call.cancel()
        with pytest.raises(http1.TransportError, match="cancelled"):
            call.write_from_pipe(read_end, 2, 2)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert (tmp_path / "f").read_bytes() == b"ab"
